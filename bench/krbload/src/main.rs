//! Kerberos logins per second through a proxy, for bench/logins.sh.
//!
//! `krbload negotiate|gssapi --proxy ADDR --service SVC@HOST --target ECHO [--count N]
//! [--concurrency C]`: N sessions, C at a time, each a new connection with a fresh AP-REQ
//! from the ticket cache in KRB5CCNAME (the service ticket is fetched once, then cached):
//! - negotiate: `CONNECT ECHO` with `Proxy-Authorization: Negotiate <token>`, then a 16-byte
//!   echo through the tunnel, close;
//! - gssapi: SOCKS5 method 0x01 (RFC 1961): context, protection "none", CONNECT ECHO, a 16-byte
//!   echo, close.
//!
//! `krbload basic --proxy ADDR --users U --target ECHO ...`: the same CONNECT as negotiate with
//! `Proxy-Authorization: Basic` of `user<i>:pw<i>`, i cycling over 1..=U (for an LDAP-backed
//! proxy: with more users than a cache TTL's worth of logins, each login is a directory bind).
//!
//! Prints `ok= failed= secs= logins_per_s= p50_ms= p99_ms=`. Loopback addresses only; each
//! session is capped at 10 s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_HOSTBASED_SERVICE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, String>;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn loopback(s: &str) -> Res<SocketAddr> {
    let a: SocketAddr = s.parse().map_err(|_| format!("not an address: {s}"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{a} is not loopback"));
    }
    Ok(a)
}

fn ctx(service: &str, spnego: bool) -> Res<ClientCtx> {
    let name =
        Name::new(service.as_bytes(), Some(GSS_NT_HOSTBASED_SERVICE)).map_err(|e| e.to_string())?;
    let mech = if spnego {
        GSS_MECH_SPNEGO
    } else {
        GSS_MECH_KRB5
    };
    Ok(ClientCtx::new(
        None,
        name,
        CtxFlags::GSS_C_MUTUAL_FLAG | CtxFlags::GSS_C_INTEG_FLAG,
        Some(mech),
    ))
}

async fn echo16(s: &mut TcpStream) -> Res<()> {
    let msg = *b"0123456789abcdef";
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back).await.map_err(|e| e.to_string())?;
    (back == msg).then_some(()).ok_or("echo differs".into())
}

async fn negotiate(proxy: SocketAddr, service: &str, target: SocketAddr) -> Res<()> {
    let mut c = ctx(service, true)?;
    let tok = c
        .step(None, None)
        .map_err(|e| e.to_string())?
        .ok_or("no token")?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&*tok);
    connect_with(proxy, &format!("Negotiate {b64}"), target).await
}

async fn basic(proxy: SocketAddr, user: usize, target: SocketAddr) -> Res<()> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("user{user}:pw{user}"));
    connect_with(proxy, &format!("Basic {b64}"), target).await
}

/// `CONNECT target` with `Proxy-Authorization: authz`, then the echo.
async fn connect_with(proxy: SocketAddr, authz: &str, target: SocketAddr) -> Res<()> {
    let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {authz}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16384 || s.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            return Err("no response head".into());
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        return Err(String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned());
    }
    echo16(&mut s).await
}

async fn frame(s: &mut TcpStream, mtyp: u8, tok: &[u8]) -> Res<()> {
    let mut out = vec![1, mtyp];
    out.extend_from_slice(&(tok.len() as u16).to_be_bytes());
    out.extend_from_slice(tok);
    s.write_all(&out).await.map_err(|e| e.to_string())
}

async fn read_frame(s: &mut TcpStream) -> Res<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.map_err(|e| e.to_string())?;
    if h[1] == 0xff {
        return Err("refused".into());
    }
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await.map_err(|e| e.to_string())?;
    let mut t = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut t).await.map_err(|e| e.to_string())?;
    Ok((h[1], t))
}

async fn gssapi(proxy: SocketAddr, service: &str, target: SocketAddr) -> Res<()> {
    let mut c = ctx(service, false)?;
    let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    s.write_all(&[5, 1, 1]).await.map_err(|e| e.to_string())?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.map_err(|e| e.to_string())?;
    if m != [5, 1] {
        return Err(format!("method {m:?}"));
    }
    let tok = c
        .step(None, None)
        .map_err(|e| e.to_string())?
        .ok_or("no token")?;
    frame(&mut s, 1, &tok).await?;
    while !c.is_complete() {
        let (_, t) = read_frame(&mut s).await?;
        if let Some(next) = c.step(Some(&t), None).map_err(|e| e.to_string())? {
            if !next.is_empty() {
                frame(&mut s, 1, &next).await?;
            }
        }
    }
    let level = c.wrap(false, &[0]).map_err(|e| e.to_string())?;
    frame(&mut s, 2, &level).await?;
    let (_, chosen) = read_frame(&mut s).await?;
    if *c.unwrap(&chosen).map_err(|e| e.to_string())? != [0] {
        return Err("protection other than none".into());
    }
    let mut req = vec![5, 1, 0, 1];
    match target.ip() {
        std::net::IpAddr::V4(ip) => req.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(_) => return Err("IPv4 target only".into()),
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut rep = [0u8; 10];
    s.read_exact(&mut rep).await.map_err(|e| e.to_string())?;
    if rep[1] != 0 {
        return Err(format!("reply {}", rep[1]));
    }
    echo16(&mut s).await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = run(&args).await {
        eprintln!("krbload: {e}");
        std::process::exit(1);
    }
}

async fn run(args: &[String]) -> Res<()> {
    let mode = args.get(1).cloned().ok_or("negotiate|gssapi|basic")?;
    let proxy = loopback(&arg(args, "--proxy").ok_or("--proxy")?)?;
    let target = loopback(&arg(args, "--target").ok_or("--target")?)?;
    let service = arg(args, "--service").unwrap_or_default();
    if mode != "basic" && service.is_empty() {
        return Err("--service".into());
    }
    let users: usize = arg(args, "--users")
        .map_or(Ok(1), |v| v.parse())
        .map_err(|_| "users")?;
    let count: usize = arg(args, "--count")
        .map_or(Ok(2000), |v| v.parse())
        .map_err(|_| "count")?;
    let conc: usize = arg(args, "--concurrency")
        .map_or(Ok(20), |v| v.parse())
        .map_err(|_| "concurrency")?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc.max(1) {
        let (next, mode, service) = (next.clone(), mode.clone(), service.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0usize;
            let mut last_err = String::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
                let one = async {
                    match mode.as_str() {
                        "negotiate" => negotiate(proxy, &service, target).await,
                        "gssapi" => gssapi(proxy, &service, target).await,
                        "basic" => basic(proxy, i % users.max(1) + 1, target).await,
                        other => Err(format!("unknown mode {other}")),
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), one).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    Ok(Err(e)) => {
                        failed += 1;
                        last_err = e;
                    }
                    Err(_) => failed += 1,
                }
            }
            (lat, failed, last_err)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    let mut last_err = String::new();
    for t in tasks {
        let (l, f, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        failed += f;
        if !e.is_empty() {
            last_err = e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "ok={} failed={} secs={:.2} logins_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        lat.len(),
        failed,
        secs,
        lat.len() as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    if !last_err.is_empty() {
        eprintln!("krbload: last failure: {last_err}");
    }
    Ok(())
}
