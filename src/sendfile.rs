//! A response head and then bytes of a file, written to a plain TCP socket with the file's
//! bytes never copied through user space (Linux `sendfile(2)`). The head goes out with
//! `MSG_MORE`, so it leaves in the same segment as the first body bytes.
//!
//! The cache serves large bodies of disk-tier hits this way; TLS and HTTP/2 clients, which
//! must see the bytes, get them read into memory instead.

use std::fs::File;
use std::io;

use rustix::net::SendFlags;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes asked of one `sendfile` call (Linux moves at most 0x7ffff000 per call).
const MAX_CALL: u64 = 0x7fff_f000;

/// Writes `head`, then `len` bytes of `file` from `offset`, to `tcp`. Fails if the socket
/// does (the client went away) or the file is shorter than `offset + len`.
pub async fn send_head_and_file(
    tcp: &TcpStream,
    head: &[u8],
    file: &File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let end = offset
        .checked_add(len)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut head = head;
    let mut at = offset;
    while !head.is_empty() || at < end {
        tcp.writable().await?;
        match tcp.try_io(Interest::WRITABLE, || {
            step(tcp, file, &mut head, &mut at, end)
        }) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One system call: the rest of the head, or file bytes from `*at` (advanced by the kernel).
fn step(tcp: &TcpStream, file: &File, head: &mut &[u8], at: &mut u64, end: u64) -> io::Result<()> {
    if !head.is_empty() {
        let mut flags = SendFlags::NOSIGNAL;
        if *at < end {
            flags |= SendFlags::MORE;
        }
        let n = rustix::net::send(tcp, head, flags)?;
        *head = &head[n..];
        return Ok(());
    }
    let count = (end - *at).min(MAX_CALL) as usize;
    if rustix::fs::sendfile(tcp, file, Some(at), count)? == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        f
    }

    #[tokio::test]
    async fn head_then_a_range_of_the_file() {
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let f = file_of(&body);
        let (mut client, server) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            got
        });
        send_head_and_file(&server, b"HEAD\r\n", &f, 10, 2_500_000)
            .await
            .expect("sent");
        drop(server);
        let got = reader.await.expect("reader");
        assert_eq!(&got[..6], b"HEAD\r\n");
        assert_eq!(&got[6..], &body[10..2_500_010]);
    }

    #[tokio::test]
    async fn a_short_file_is_an_error() {
        let f = file_of(b"0123456789");
        let (_client, server) = pair().await;
        let e = send_head_and_file(&server, b"H", &f, 5, 10).await;
        assert_eq!(e.map_err(|e| e.kind()), Err(io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_an_error() {
        let body = vec![7u8; 8 << 20];
        let f = file_of(&body);
        let (client, server) = pair().await;
        drop(client);
        assert!(send_head_and_file(&server, b"H", &f, 0, body.len() as u64)
            .await
            .is_err());
    }
}
