//! The discard server behind every CONNECT throughput run.
//!
//! ```text
//! client -> sink: N as 8 bytes big-endian, then N bytes
//! sink -> client: the count received, 8 bytes big-endian, once all N have arrived
//! ```
//!
//! The reply lets the client stop its clock only when the last byte has crossed the proxy,
//! without relying on half-close (which not every proxy passes through a tunnel).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::args::Args;

pub const BUF: usize = 256 * 1024;
/// No read may stall longer than this.
const STALL: Duration = Duration::from_secs(30);
/// Largest stream one client may announce.
const MAX_BYTES: u64 = 1 << 40;

pub async fn run(args: &Args) -> Result<(), String> {
    let listen: std::net::SocketAddr = args.req("listen")?;
    if !listen.ip().is_loopback() {
        return Err("the sink listens on loopback only".into());
    }
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    println!("LISTENING {}", l.local_addr().map_err(|e| e.to_string())?);
    loop {
        let (s, peer) = l.accept().await.map_err(|e| format!("accept: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = discard(s).await {
                eprintln!("sink: {peer}: {e}");
            }
        });
    }
}

async fn discard(mut s: TcpStream) -> Result<(), String> {
    let mut len = [0u8; 8];
    timeout(STALL, s.read_exact(&mut len))
        .await
        .map_err(|_| "no length in time")?
        .map_err(|e| format!("length: {e}"))?;
    let want = u64::from_be_bytes(len);
    if want > MAX_BYTES {
        return Err(format!("announced {want} bytes, more than {MAX_BYTES}"));
    }
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    while got < want {
        let n = timeout(STALL, s.read(&mut buf))
            .await
            .map_err(|_| format!("stalled after {got} bytes"))?
            .map_err(|e| format!("read after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {want} bytes"));
        }
        got += n as u64;
    }
    timeout(STALL, s.write_all(&got.to_be_bytes()))
        .await
        .map_err(|_| "reply stalled")?
        .map_err(|e| format!("reply: {e}"))?;
    // Wait for the client to close (bounded), so the reply is not cut by a reset.
    let _ = timeout(STALL, s.read(&mut buf)).await;
    Ok(())
}
