//! One bulk stream through a CONNECT tunnel (or straight to the sink with `--direct`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::args::Args;
use crate::response::{self, Head};
use crate::sink::BUF;

/// The whole run, tunnel set-up to the sink's reply, must end within this.
const RUN_LIMIT: Duration = Duration::from_secs(600);

pub async fn run(args: &Args) -> Result<(), String> {
    let target: SocketAddr = args.req("target")?;
    let bytes: u64 = args.req("bytes")?;
    let direct = args.flag("direct");
    let proxy: Option<SocketAddr> = args.opt("proxy")?;
    let hop = match (direct, proxy) {
        (true, None) => target,
        (false, Some(p)) => p,
        _ => return Err("give exactly one of --proxy ADDR and --direct".into()),
    };
    if !hop.ip().is_loopback() || !target.ip().is_loopback() {
        return Err("loopback addresses only".into());
    }
    let (secs, acked) = timeout(RUN_LIMIT, stream(hop, (!direct).then_some(target), bytes))
        .await
        .map_err(|_| format!("not done within {RUN_LIMIT:?}"))??;
    if acked != bytes {
        return Err(format!("sink received {acked} of {bytes} bytes"));
    }
    let gbit = bytes as f64 * 8.0 / secs / 1e9;
    println!("bytes={bytes} secs={secs:.3} gbit={gbit:.2}");
    Ok(())
}

/// Returns the seconds from the first payload byte to the sink's reply, and the count it acked.
async fn stream(
    hop: SocketAddr,
    connect_to: Option<SocketAddr>,
    bytes: u64,
) -> Result<(f64, u64), String> {
    let mut s = TcpStream::connect(hop)
        .await
        .map_err(|e| format!("connect {hop}: {e}"))?;
    if let Some(t) = connect_to {
        let req = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("CONNECT: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        let head = read_head(&mut s, &mut buf).await?;
        if head.status != 200 {
            return Err(format!("CONNECT answered {}", head.status));
        }
        if buf.len() > head.len {
            return Err("tunnel bytes before any were sent".into());
        }
    }
    let block = vec![0x5au8; BUF];
    let start = Instant::now();
    s.write_all(&bytes.to_be_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BUF as u64) as usize;
        s.write_all(&block[..n])
            .await
            .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
        left -= n as u64;
    }
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack)
        .await
        .map_err(|e| format!("sink reply: {e}"))?;
    Ok((start.elapsed().as_secs_f64(), u64::from_be_bytes(ack)))
}

/// Reads until a whole response head is in `buf` (at most 64 KiB).
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Head, String> {
    loop {
        if let Some(h) = response::parse_head(buf)? {
            return Ok(h);
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        let mut chunk = [0u8; 4096];
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read head: {e}"))?;
        if n == 0 {
            return Err("closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
