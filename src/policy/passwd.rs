//! The users file on disk: written private by `gatehouse passwd`, and checked for group or
//! other read permission at start and by `gatehouse check` (the hashes are offline-crackable).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The two passwords typed at a terminal prompt: the password, or why not.
pub fn confirm(first: &str, second: &str) -> Result<(), &'static str> {
    if first.is_empty() {
        return Err("empty password");
    }
    if first != second {
        return Err("the passwords do not match");
    }
    Ok(())
}

/// A warning when `path` can be read by its group or by others, with the fix.
pub fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "users file {} is readable by others (mode {mode:04o}): run chmod 600 {}",
            path.display(),
            path.display()
        )
    })
}

/// Asks for a password on the terminal that is standard input, as glibc's `getpass` does:
/// echo goes off (typeahead discarded) *before* the prompt is written, so nothing typed after
/// the prompt appears, then the terminal is restored whatever happens.
pub fn prompt_without_echo(prompt: &str) -> std::io::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead as _, Write as _};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    struct Restore<'a>(&'a std::io::Stdin, rustix::termios::Termios);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = tcsetattr(self.0, OptionalActions::Now, &self.1);
        }
    }
    let _restore = Restore(&stdin, saved);
    let mut err = std::io::stderr();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "end of input before a password",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Adds `entry` (a whole users-file line) for `user` to the file at `path`, replacing the
/// user's old line; the file is replaced atomically and is 0600 afterwards, whatever it was.
pub fn update_file(path: &Path, user: &str, entry: &str) -> std::io::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut lines: Vec<&str> = old
        .lines()
        .filter(|l| l.split(':').next().map(str::trim) != Some(user))
        .collect();
    lines.push(entry);
    let tmp = path.with_extension("tmp");
    // A stale temporary file (an earlier run that died) might have a wider mode.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all((lines.join("\n") + "\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_prompts_must_agree() {
        assert_eq!(confirm("s3cret", "s3cret"), Ok(()));
        assert_eq!(
            confirm("s3cret", "s3cre"),
            Err("the passwords do not match")
        );
        assert_eq!(confirm("", ""), Err("empty password"));
    }

    #[test]
    fn update_replaces_the_line_and_writes_0600() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("users.txt");
        update_file(&path, "alice", "alice:h1").expect("write");
        assert_eq!(readable_by_others(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let warning = readable_by_others(&path).expect("a warning");
        assert!(
            warning.contains("mode 0644") && warning.contains("chmod 600"),
            "{warning}"
        );
        // A stale, world-readable temporary file is not reused.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, "junk").expect("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        update_file(&path, "bob", "bob:h2").expect("write");
        update_file(&path, "alice", "alice:h3").expect("write");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "bob:h2\nalice:h3\n"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(readable_by_others(&dir.path().join("absent")), None);
    }
}
