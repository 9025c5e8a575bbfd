//! Many keep-alive clients, each served one request, then held idle so the proxy's resident
//! memory per idle connection can be read from outside.
//!
//! Prints `READY open=N failed=F announced_close=C` once every connection has its response,
//! holds them for `--hold` seconds, then prints `HELD open=N closed=C` (how many the server
//! kept open through the hold). With `--connect-only` the clients send nothing: the figure is
//! then the cost of a bare accepted connection, and the difference to a served one shows what
//! a request leaves behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::args::Args;
use crate::throughput::read_head;

const MAX_COUNT: usize = 50_000;
const MAX_HOLD_SECS: u64 = 3600;
/// One connection's request and response must be done within this.
const PER_CONN: Duration = Duration::from_secs(20);

struct Held {
    stream: TcpStream,
    announced_close: bool,
}

pub async fn run(args: &Args) -> Result<(), String> {
    let proxy: SocketAddr = args.req("proxy")?;
    let url: String = args.req("url")?;
    let count: usize = args.req("count")?;
    let hold: u64 = args.req("hold")?;
    let parallel: usize = args.opt("parallel")?.unwrap_or(64);
    let connect_only = args.flag("connect-only");
    if !proxy.ip().is_loopback() {
        return Err("loopback addresses only".into());
    }
    if count == 0 || count > MAX_COUNT || hold > MAX_HOLD_SECS || parallel == 0 {
        return Err(format!(
            "need 1..={MAX_COUNT} clients, a hold of at most {MAX_HOLD_SECS} s, parallel >= 1"
        ));
    }
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .filter(|a| !a.is_empty())
        .ok_or("--url must be http://HOST[:PORT]/PATH")?;
    let request: Option<Arc<[u8]>> = (!connect_only).then(|| {
        format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: httpbench\r\n\r\n")
            .into_bytes()
            .into()
    });

    let limit = Arc::new(Semaphore::new(parallel));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let permit = limit
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let request = request.clone();
        tasks.spawn(async move {
            let r = timeout(PER_CONN, one(proxy, request.as_deref()))
                .await
                .unwrap_or(Err("timed out".into()));
            drop(permit);
            r
        });
    }
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(h) => held.push(h),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let announced = held.iter().filter(|h| h.announced_close).count();
    println!(
        "READY open={} failed={failed} announced_close={announced}",
        held.len()
    );
    if let Some(e) = first_error {
        eprintln!("idle-clients: first failure: {e}");
    }
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let open = held.iter().filter(|h| still_open(&h.stream)).count();
    println!("HELD open={open} closed={}", held.len() - open);
    Ok(())
}

/// One client: connect, one request, the whole response; the connection is then kept.
async fn one(proxy: SocketAddr, request: Option<&[u8]>) -> Result<Held, String> {
    let mut s = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Some(request) = request else {
        return Ok(Held {
            stream: s,
            announced_close: false,
        });
    };
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head = read_head(&mut s, &mut buf).await?;
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    let body = head
        .content_length
        .ok_or("response without Content-Length")?;
    let mut left = body.saturating_sub((buf.len() - head.len) as u64);
    let mut chunk = [0u8; 4096];
    while left > 0 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("body: {e}"))?;
        if n == 0 {
            return Err("closed mid-body".into());
        }
        left = left.saturating_sub(n as u64);
    }
    Ok(Held {
        stream: s,
        announced_close: head.close,
    })
}

/// Neither data nor EOF waiting: the server still holds the connection.
fn still_open(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
