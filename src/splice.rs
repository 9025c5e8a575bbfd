//! The relay's zero-copy path for two plain TCP sockets (Linux `splice(2)`): bytes move
//! socket -> pipe -> socket inside the kernel and never through user space. Same contract as
//! [`crate::relay::relay`]: half-close passed on, idle timeout, byte counts each way.
//!
//! On loopback a user-space copy costs as much as the kernel's own, so copying through the
//! proxy roughly halves single-stream throughput; splicing does not. Anything that must see
//! the bytes (TLS, HTTP framing) uses the copying relay.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::relay::{RelayEnd, RelayStats};

/// Pipe capacity asked for; the kernel may grant less (then its default, 64 KiB, is used).
const PIPE_SIZE: usize = 256 * 1024;

/// Splices `a <-> b` until both directions finish, one fails, or nothing moves for `idle`.
pub async fn relay_tcp(a: &TcpStream, b: &TcpStream, idle: Duration) -> (RelayEnd, RelayStats) {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let a_to_b = AtomicU64::new(0);
    let b_to_a = AtomicU64::new(0);
    let up = splice_half(a, b, &a_to_b, &last, epoch);
    let down = splice_half(b, a, &b_to_a, &last, epoch);
    let both = async { tokio::try_join!(up, down).map(|_| ()) };
    crate::relay::drive(both, &last, epoch, idle, [&a_to_b, &b_to_a]).await
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    let size = fcntl_setpipe_size(&w, PIPE_SIZE).unwrap_or(64 * 1024);
    Ok((r, w, size))
}

async fn splice_half(
    src: &TcpStream,
    dst: &TcpStream,
    count: &AtomicU64,
    last: &AtomicU64,
    epoch: Instant,
) -> io::Result<()> {
    let (pipe_r, pipe_w, size) = pipe()?;
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                Ok(splice(src, None, &pipe_w, None, size, flags)?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // Half-close: pass the EOF on; the other direction keeps going.
            let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                Ok(splice(&pipe_r, None, dst, None, left, flags)?)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected loopback pairs: (client, proxy side A), (proxy side B, server).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c1 = TcpStream::connect(addr).await.expect("connect");
        let (s1, _) = l.accept().await.expect("accept");
        let c2 = TcpStream::connect(addr).await.expect("connect");
        let (s2, _) = l.accept().await.expect("accept");
        ((c1, s1), (c2, s2))
    }

    #[tokio::test]
    async fn bulk_both_ways_with_half_close() {
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay = tokio::spawn(async move { relay_tcp(&a, &b, Duration::from_secs(10)).await });
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read");
            back
        });
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert!(got == data, "bytes arrive intact and in order");
        // The server answers after the client's EOF: must still arrive.
        server.write_all(b"pong").await.expect("write");
        server.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("join"), b"pong");
        let (end, stats) = relay.await.expect("join");
        assert!(matches!(end, RelayEnd::Done), "{end:?}");
        assert_eq!(
            stats,
            RelayStats {
                a_to_b: 4_000_000,
                b_to_a: 4
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pair_closes() {
        let ((_client, a), (b, _server)) = pairs().await;
        let (end, _) = relay_tcp(&a, &b, Duration::from_secs(30)).await;
        assert!(matches!(end, RelayEnd::Idle));
    }
}
