//! The command line's own documentation: `--help` names the signals, exit codes and
//! environment variables; `gatehouse man` and `gatehouse completions` generate from the same
//! definition (what the Debian package installs).

mod common;

use std::process::Command;

use common::BIN;

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run gatehouse");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn help_names_signals_exit_codes_environment_and_the_default_path() {
    let help = run(&["--help"]);
    for want in [
        "SIGHUP",
        "SIGUSR1",
        "SIGTERM",
        "SIGINT",
        "Exit codes:",
        "  2 ",
        "  3 ",
        "GATEHOUSE_LOG",
        "NOTIFY_SOCKET",
        "/etc/gatehouse/gatehouse.toml",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    let check = run(&["check", "--help"]);
    assert!(check.contains("[FILE]"), "{check}");
}

#[test]
fn man_pages_come_from_the_command_line() {
    let page = run(&["man"]);
    for want in [
        ".TH gatehouse 1",
        ".SH SIGNALS",
        ".SH EXIT STATUS",
        ".SH ENVIRONMENT",
        "SIGUSR1",
    ] {
        assert!(page.contains(want), "man page lacks {want:?}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 path");
    run(&["man", dir_arg]);
    for name in ["gatehouse.1", "gatehouse-check.1", "gatehouse-passwd.1"] {
        let text = std::fs::read_to_string(dir.path().join(name)).expect(name);
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{name}: {text}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("gatehouse.1")).expect("main page"),
        page
    );
}

#[test]
fn completions_for_each_packaged_shell() {
    for (shell, want) in [
        ("bash", "complete -F _gatehouse"),
        ("zsh", "#compdef gatehouse"),
        ("fish", "complete -c gatehouse"),
    ] {
        let script = run(&["completions", shell]);
        assert!(script.contains(want), "{shell}: lacks {want:?}");
        assert!(script.contains("default-config"), "{shell}: no subcommands");
    }
    let out = Command::new(BIN)
        .args(["completions", "no-such-shell"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
}

#[test]
fn check_takes_the_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nname = \"h\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .expect("write");
    let other = dir.path().join("other.toml");
    let out = Command::new(BIN)
        .arg("check")
        .arg(&path)
        .arg("--config")
        .arg(&other)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("give the file once"));
    let out = Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("g.toml: ok"));
}
