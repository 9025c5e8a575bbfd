//! loadgen: the load client and the little servers the proxy benchmarks use. Loopback only;
//! every run is bounded in bytes or connections and in time. See README.md.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod tls;

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage:
  loadgen source --listen ADDR               read a byte count (u64 BE) per connection, send that many bytes, close
  loadgen echo   --listen ADDR               echo every connection
  loadgen free-port                          print a free loopback TCP port
  loadgen wait-port --addr ADDR              wait (up to 10 s) until ADDR accepts connections
  loadgen socks-throughput [--proxy ADDR] --target ADDR [--bytes N]
  loadgen http-connect-throughput --proxy ADDR --target ADDR [--bytes N]
  loadgen socks-rate [--proxy ADDR] --target ADDR [--count N] [--concurrency C] [--size B]
  loadgen idle-tunnels --proxy ADDR --kind socks|http --target ADDR [--count N] [--concurrency C] [--hold SECS]
  loadgen tls-handshakes --target ADDR [--secs S] [--concurrency C]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` lookup.
fn opt(args: &[String], key: &str) -> Option<String> {
    args.iter().position(|a| a == key).and_then(|i| args.get(i + 1).cloned())
}

fn addr(args: &[String], key: &str) -> Result<SocketAddr, Error> {
    let v = opt(args, key).ok_or_else(|| format!("{key} is required\n{USAGE}"))?;
    let a: SocketAddr = v.parse().map_err(|e| format!("{key} {v}: {e}"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{key} {a}: only loopback addresses are allowed").into());
    }
    Ok(a)
}

fn num(args: &[String], key: &str, default: u64) -> Result<u64, Error> {
    match opt(args, key) {
        None => Ok(default),
        Some(v) => Ok(v.parse().map_err(|e| format!("{key} {v}: {e}"))?),
    }
}

async fn run(args: Vec<String>) -> Result<(), Error> {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    match cmd {
        "source" => serve(addr(&args, "--listen")?, Server::Source).await,
        "echo" => serve(addr(&args, "--listen")?, Server::Echo).await,
        "free-port" => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", l.local_addr()?.port());
            Ok(())
        }
        "wait-port" => {
            let a = addr(&args, "--addr")?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(a).await.is_err() {
                if Instant::now() > deadline {
                    return Err(format!("{a} not accepting after 10 s").into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
        "socks-throughput" | "http-connect-throughput" => {
            let target = addr(&args, "--target")?;
            let bytes = num(&args, "--bytes", 4 << 30)?;
            let proxy = if opt(&args, "--proxy").is_some() { Some(addr(&args, "--proxy")?) } else { None };
            let started = Instant::now();
            let stream = match (cmd, proxy) {
                (_, None) => TcpStream::connect(target).await?,
                ("socks-throughput", Some(p)) => socks5_connect(p, target).await?,
                (_, Some(p)) => http_connect(p, target).await?,
            };
            let got = tokio::time::timeout(Duration::from_secs(300), stream_bytes(stream, bytes))
                .await
                .map_err(|_| "throughput run exceeded 300 s")??;
            let secs = started.elapsed().as_secs_f64();
            if got != bytes {
                return Err(format!("received {got} of {bytes} bytes").into());
            }
            println!(
                "bytes={bytes} secs={secs:.3} MiB_per_s={:.1} Gbit_per_s={:.3}",
                bytes as f64 / secs / 1048576.0,
                bytes as f64 * 8.0 / secs / 1e9
            );
            Ok(())
        }
        "socks-rate" => {
            let target = addr(&args, "--target")?;
            let proxy = if opt(&args, "--proxy").is_some() { Some(addr(&args, "--proxy")?) } else { None };
            let count = num(&args, "--count", 20_000)?;
            let conc = num(&args, "--concurrency", 50)?.max(1);
            let size = num(&args, "--size", 64)?.clamp(1, 65536) as usize;
            rate(proxy, target, count, conc, size).await
        }
        "idle-tunnels" => {
            let proxy = addr(&args, "--proxy")?;
            let target = addr(&args, "--target")?;
            let http = match opt(&args, "--kind").as_deref() {
                Some("socks") => false,
                Some("http") => true,
                _ => return Err(format!("--kind socks|http is required\n{USAGE}").into()),
            };
            let count = num(&args, "--count", 5_000)?.min(100_000);
            let conc = num(&args, "--concurrency", 50)?.clamp(1, 1_000);
            let hold = num(&args, "--hold", 10)?.min(600);
            idle_tunnels(proxy, target, http, count, conc, Duration::from_secs(hold)).await
        }
        "tls-handshakes" => {
            let target = addr(&args, "--target")?;
            let secs = num(&args, "--secs", 10)?.clamp(1, 300);
            let conc = num(&args, "--concurrency", 32)?.clamp(1, 1_000);
            tls::handshakes(target, Duration::from_secs(secs), conc).await
        }
        _ => Err(USAGE.into()),
    }
}

/// Opens `count` tunnels (`conc` handshakes at a time), each checked with one 16-byte echo,
/// and holds them idle: prints `opened= failed= secs=` and then `ready`, holds for `hold`,
/// checks every open tunnel still echoes and prints `still_ok= lost=`.
async fn idle_tunnels(proxy: SocketAddr, target: SocketAddr, http: bool, count: u64, conc: u64, hold: Duration) -> Result<(), Error> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (next, failed) = (next.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut open = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let one = async {
                    let mut s = if http { http_connect(proxy, target).await? } else { socks5_connect(proxy, target).await? };
                    echo_check(&mut s).await?;
                    Ok::<_, Error>(s)
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(s)) => open.push(s),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            open
        }));
    }
    let mut open = Vec::new();
    for w in workers {
        open.extend(w.await.map_err(|e| e.to_string())?);
    }
    println!("opened={} failed={} secs={:.3}", open.len(), failed.load(Ordering::Relaxed), started.elapsed().as_secs_f64());
    println!("ready");
    tokio::time::sleep(hold).await;
    let mut ok = 0u64;
    let total = open.len();
    for mut s in open {
        if matches!(tokio::time::timeout(Duration::from_secs(10), echo_check(&mut s)).await, Ok(Ok(()))) {
            ok += 1;
        }
    }
    println!("still_ok={ok} lost={}", total as u64 - ok);
    Ok(())
}

/// Writes 16 bytes and reads them back.
async fn echo_check(s: &mut TcpStream) -> Result<(), Error> {
    let msg = [0x42u8; 16];
    s.write_all(&msg).await?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err("echo mismatch".into());
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Server {
    Source,
    Echo,
}

async fn serve(listen: SocketAddr, kind: Server) -> Result<(), Error> {
    let l = TcpListener::bind(listen).await?;
    println!("listening {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            match kind {
                Server::Echo => {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                Server::Source => {
                    let Ok(mut left) = s.read_u64().await else { return };
                    let buf = vec![0x5Au8; 256 * 1024];
                    while left > 0 {
                        let n = left.min(buf.len() as u64) as usize;
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = s.shutdown().await;
                }
            }
        });
    }
}

/// Asks the source for `bytes` and reads them to EOF (no half-close needed: microsocks has
/// none); returns how many arrived.
async fn stream_bytes(mut s: TcpStream, bytes: u64) -> Result<u64, Error> {
    s.write_all(&bytes.to_be_bytes()).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).await? {
            0 => return Ok(got),
            n => got += n as u64,
        }
    }
}

/// SOCKS5, no authentication, CONNECT to an address. Returns the stream after the reply.
async fn socks5_connect(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, Error> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let mut req = vec![5, 1, 0, 5, 1, 0];
    match target {
        SocketAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    // Greeting, wait for the method, then the request: what curl and most clients do.
    s.write_all(&req[..3]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    if m != [5, 0] {
        return Err(format!("method refused: {m:?}").into());
    }
    s.write_all(&req[3..]).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[1] != 0 {
        return Err(format!("CONNECT refused with reply {}", head[1]).into());
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => s.read_u8().await? as usize + 2,
        t => return Err(format!("bad ATYP {t}").into()),
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip).await?;
    Ok(s)
}

/// HTTP CONNECT; returns the stream after a 2xx response head.
async fn http_connect(proxy: SocketAddr, target: SocketAddr) -> Result<TcpStream, Error> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read(&mut b).await? == 0 {
            return Err("bad CONNECT response".into());
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 2") && !status.starts_with("HTTP/1.0 2") {
        return Err(format!("CONNECT refused: {}", status.lines().next().unwrap_or("")).into());
    }
    Ok(s)
}

/// `count` short sessions, `conc` at a time: connect (+ SOCKS5 CONNECT), write `size` bytes,
/// read them back, close.
async fn rate(proxy: Option<SocketAddr>, target: SocketAddr, count: u64, conc: u64, size: usize) -> Result<(), Error> {
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (next, failed) = (next.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let payload = vec![7u8; size];
            let mut back = vec![0u8; size];
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                let one = async {
                    let mut s = match proxy {
                        Some(p) => socks5_connect(p, target).await?,
                        None => TcpStream::connect(target).await?,
                    };
                    s.write_all(&payload).await?;
                    s.read_exact(&mut back).await?;
                    Ok::<_, Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.await.map_err(|e| e.to_string())?);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default();
    println!(
        "ok={} failed={} secs={secs:.3} conn_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        lat.len(),
        failed.load(Ordering::Relaxed),
        lat.len() as f64 / secs,
        pct(0.50).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0
    );
    Ok(())
}
