//! Large bodies of the memory tier, kept in sealed memory files (Linux `memfd_create(2)`).
//!
//! A hit on a large object is mostly the kernel copying its bytes. From a `Bytes` buffer a
//! plain TCP client's hit costs two copies (user space into the socket, the socket into the
//! client); from a memory file the body goes out with `sendfile(2)`, the file's pages handed
//! to the socket by reference, so one copy is left. The file is sealed (no write, grow or
//! shrink, and no further seals), so the pages a socket still references keep the stored
//! bytes until the last reference goes, whatever happens to the entry. TLS and HTTP/2
//! clients, which must see the bytes, read them back (a memory read, never a disk wait).
//!
//! The pages are the process's memory like any other body: the tier weighs them the same.
//! Each such body holds one descriptor; if one cannot be made (out of descriptors, or not
//! Linux), the body stays in a buffer.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use super::object::{FileBody, StoredResponse};

/// Bodies of at least this many bytes go into a memory file (the disk tier's threshold
/// for leaving bodies in its files: below it, a copy costs less than a descriptor).
pub const SEALED_BODY_MIN: usize = 64 * 1024;

/// A sealed memory file holding `bytes`.
#[cfg(target_os = "linux")]
pub fn seal(bytes: &[u8]) -> io::Result<File> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create(
        "gatehouse-cache",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
pub fn seal(_: &[u8]) -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}

/// `stored` with a large in-memory body moved into a sealed memory file; anything else (a
/// small body, a body already in a file, or no file to be had) as it is.
pub fn large_body_sealed(stored: Arc<StoredResponse>) -> Arc<StoredResponse> {
    if stored.file.is_some() || stored.body.len() < SEALED_BODY_MIN {
        return stored;
    }
    match seal(&stored.body) {
        Ok(file) => {
            let mut r = (*stored).clone();
            r.file = Some(FileBody {
                file: Arc::new(file),
                offset: 0,
                len: r.body.len() as u64,
                in_memory: true,
            });
            r.body = bytes::Bytes::new();
            Arc::new(r)
        }
        Err(e) => {
            tracing::debug!(error = %e, "cache: no memory file for a large body; kept in a buffer");
            stored
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_sealed_file_holds_the_bytes_and_refuses_changes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = seal(&data).expect("memory file");
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 0).expect("read");
        assert!(back == data);
        assert!(f.write_all(b"x").is_err(), "writes are sealed off");
        assert!(f.set_len(10).is_err(), "shrinking is sealed off");
        assert!(f.set_len(1 << 20).is_err(), "growing is sealed off");
    }
}
