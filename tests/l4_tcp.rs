//! `kind = "tcp"` listeners end to end: distribution over a pool, a killed server ejected by
//! the active checks and readmitted, connect retry, PROXY protocol v1/v2 both ways (trusted
//! senders only, bad headers refused), per-server metrics, and the shipped example.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A server that greets every connection with its one-byte id, then echoes.
struct IdServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl IdServer {
    async fn start(id: u8) -> IdServer {
        Self::on("127.0.0.1:0".parse().expect("addr"), id)
    }

    /// On a given address (a restarted server keeps its port).
    fn on(addr: SocketAddr, id: u8) -> IdServer {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind");
        let listener = socket.listen(128).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if s.write_all(&[id]).await.is_ok() {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        IdServer { addr, task }
    }

    /// Stops accepting: the port refuses connections from now on.
    async fn kill(self) -> SocketAddr {
        self.task.abort();
        let _ = self.task.await;
        self.addr
    }
}

/// Connects through the balancer and returns the id of the server reached (`None`: closed
/// before any byte).
async fn which(proxy: SocketAddr) -> Option<u8> {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        Ok(_) => None,
        Err(_) => panic!("no byte and no close within 10s"),
    }
}

fn tcp_config(listener_extra: &str, servers: &[SocketAddr], pool_extra: &str) -> String {
    let mut c = format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n{listener_extra}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n{pool_extra}\n"
    );
    for s in servers {
        c.push_str(&format!("[[pools.servers]]\naddress = \"{s}\"\n"));
    }
    c
}

/// Polls a metric until `ok` holds (at most 5 s): counters are updated when a relay ends,
/// just after the client saw the close.
async fn wait_metric(admin: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..100 {
        if let Some(v) = metric(admin, name).await {
            if ok(v) {
                return v;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never reached the expected value");
}

/// A free loopback port nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_relays_both_ways() {
    let a = IdServer::start(b'a').await;
    let b = IdServer::start(b'b').await;
    let gh = Gatehouse::start(&tcp_config("", &[a.addr, b.addr], ""));
    let proxy = gh.addr("tcp");
    let mut counts = [0usize; 2];
    for _ in 0..20 {
        match which(proxy).await {
            Some(b'a') => counts[0] += 1,
            Some(b'b') => counts[1] += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(counts, [10, 10]);
    // Bytes go both ways, half-close passed on.
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    let mut id = [0u8; 1];
    s.read_exact(&mut id).await.expect("id");
    let payload = pattern(7, 300_000);
    s.write_all(&payload).await.expect("write");
    s.shutdown().await.expect("half-close");
    assert_eq!(read_to_close(&mut s).await, payload);
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_server_connections_total").await,
        Some(21.0)
    );
    wait_metric(admin, "gatehouse_pool_server_bytes_total", |v| {
        v >= 600_001.0
    })
    .await;
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_ejected_then_readmitted() {
    let a = IdServer::start(b'a').await;
    let b = IdServer::start(b'b').await;
    let health = "[pools.health]\ntype = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nfall = 2\nrise = 2\n\
                  [pools.passive]\nmax_failures = 0\n";
    // One attempt per connection: only the health checks keep clients off the dead server.
    let gh = Gatehouse::start(&tcp_config(
        "connect_attempts = 1",
        &[a.addr, b.addr],
        health,
    ));
    let proxy = gh.addr("tcp");
    let a_addr = a.kill().await;
    let down = gh.wait_stderr("server down");
    assert!(down.contains(&a_addr.to_string()), "{down}");
    for _ in 0..6 {
        assert_eq!(which(proxy).await, Some(b'b'));
    }
    let admin = gh.addr("admin");
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(1.0));
    let _a = IdServer::on(a_addr, b'a');
    let up = gh.wait_stderr("server up");
    assert!(up.contains(&a_addr.to_string()), "{up}");
    let mut seen_a = 0;
    for _ in 0..6 {
        if which(proxy).await == Some(b'a') {
            seen_a += 1;
        }
    }
    assert_eq!(seen_a, 3, "readmitted server takes its turn again");
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retry_goes_to_another_server() {
    let dead = dead_port().await;
    let live = IdServer::start(b'l').await;
    let no_eject = "[pools.passive]\nmax_failures = 0\n";
    let gh = Gatehouse::start(&tcp_config("", &[dead, live.addr], no_eject));
    for _ in 0..6 {
        assert_eq!(which(gh.addr("tcp")).await, Some(b'l'));
    }
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_pool_server_errors_total").await,
        Some(3.0)
    );
    assert_eq!(
        metric(admin, "gatehouse_listener_connect_errors_total").await,
        None
    );
    drop(gh);

    // Without the retry, the dead server's turns close the client's connection.
    let gh = Gatehouse::start(&tcp_config(
        "connect_attempts = 1",
        &[dead, live.addr],
        no_eject,
    ));
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(which(gh.addr("tcp")).await);
    }
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 2, "{got:?}");
    assert_eq!(
        metric(gh.addr("admin"), "gatehouse_listener_connect_errors_total").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_failing_server() {
    let dead = dead_port().await;
    let live = IdServer::start(b'l').await;
    let gh = Gatehouse::start(&tcp_config(
        "connect_attempts = 1",
        &[dead, live.addr],
        "[pools.passive]\nmax_failures = 1\nejection = \"1m\"\n",
    ));
    // The first turn on the dead server fails and ejects it; every later one goes to the
    // live server.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(which(gh.addr("tcp")).await);
    }
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 1, "{got:?}");
    gh.wait_stderr("server down");
}

/// A server that reads a PROXY header (v1 or v2), answers with what it decoded, then echoes.
async fn proxy_reader() -> SocketAddr {
    raw_origin(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let Ok(n) = s.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let header = if buf.starts_with(b"PROXY ") {
                buf.windows(2).position(|w| w == b"\r\n").map(|end| {
                    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                    (line, end + 2)
                })
            } else if buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n") && buf.len() >= 16 {
                let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                (buf.len() >= len).then(|| {
                    let a = &buf[16..];
                    let line = if buf[13] == 0x11 {
                        format!(
                            "V2 {}.{}.{}.{}:{} -> {}.{}.{}.{}:{}",
                            a[0],
                            a[1],
                            a[2],
                            a[3],
                            u16::from_be_bytes([a[8], a[9]]),
                            a[4],
                            a[5],
                            a[6],
                            a[7],
                            u16::from_be_bytes([a[10], a[11]])
                        )
                    } else {
                        format!("V2 family {:#x}", buf[13])
                    };
                    (line, len)
                })
            } else {
                Some(("NONE".to_string(), 0))
            };
            if let Some((line, len)) = header {
                let rest = buf.split_off(len);
                let _ = s.write_all(format!("{line}\n").as_bytes()).await;
                let _ = s.write_all(&rest).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                return;
            }
        }
    })
    .await
}

async fn first_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let read = async {
        while s.read(&mut b).await.expect("read") == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a line within 10s");
    String::from_utf8_lossy(&line).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_sent_to_servers_v1_and_v2() {
    let server = proxy_reader().await;
    for (version, want) in [
        ("v1", "PROXY TCP4 127.0.0.1 127.0.0.1 "),
        ("v2", "V2 127.0.0.1:"),
    ] {
        let gh = Gatehouse::start(&tcp_config(
            &format!("send_proxy = \"{version}\""),
            &[server],
            "",
        ));
        let proxy = gh.addr("tcp");
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        let me = s.local_addr().expect("local");
        s.write_all(b"hello").await.expect("write");
        let line = first_line(&mut s).await;
        assert!(line.starts_with(want), "{version}: {line}");
        let ports = if version == "v1" {
            format!(" {} {}", me.port(), proxy.port())
        } else {
            format!("127.0.0.1:{} -> 127.0.0.1:{}", me.port(), proxy.port())
        };
        assert!(line.ends_with(&ports), "{version}: {line} lacks {ports}");
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_accepted_from_trusted_senders_only() {
    let server = proxy_reader().await;
    let trusted = Gatehouse::start(&tcp_config(
        "send_proxy = \"v2\"\naccept_proxy_from = [\"127.0.0.0/8\"]",
        &[server],
        "",
    ));
    let proxy = trusted.addr("tcp");
    // v1 and v2 from the trusted balancer: the server sees the client they name.
    let v2 = {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        h.extend_from_slice(&[203, 0, 113, 7, 198, 51, 100, 1]);
        h.extend_from_slice(&5555u16.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h
    };
    for header in [
        b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n".to_vec(),
        v2,
    ] {
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        let mut first = header.clone();
        first.extend_from_slice(b"data");
        s.write_all(&first).await.expect("write");
        let line = first_line(&mut s).await;
        assert_eq!(line, "V2 203.0.113.7:5555 -> 198.51.100.1:443");
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"data");
        drop(s);
        // The access log names the client the balancer vouched for.
        let log = trusted.wait_log(" TCP ");
        assert_eq!(log_field(&log, 3), "203.0.113.7:5555", "{log}");
    }
    // Bad headers from the trusted sender: closed, nothing relayed.
    for bad in [
        &b"HELLO THERE\r\n"[..],
        b"PROXY TCP4 203.0.113.7 198.51.100.1 5555\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        &[b'P'; 200],
    ] {
        let mut s = TcpStream::connect(proxy).await.expect("connect");
        s.write_all(bad).await.expect("write");
        assert_eq!(until_closed(&mut s).await, b"", "{bad:?}");
    }
    // A header that never completes: closed at the handshake timeout.
    drop(trusted);
    let slow = Gatehouse::start(&tcp_config(
        "handshake_timeout = \"300ms\"\naccept_proxy_from = [\"127.0.0.0/8\"]",
        &[server],
        "",
    ));
    let mut s = TcpStream::connect(slow.addr("tcp")).await.expect("connect");
    s.write_all(b"PROXY TCP4 1.2.3.4").await.expect("write");
    assert_eq!(until_closed(&mut s).await, b"");

    // An untrusted sender: refused, its header never reaches a server.
    let untrusted = Gatehouse::start(&tcp_config(
        "send_proxy = \"v1\"\naccept_proxy_from = [\"10.0.0.0/8\"]",
        &[server],
        "",
    ));
    let mut s = TcpStream::connect(untrusted.addr("tcp"))
        .await
        .expect("connect");
    let _ = s
        .write_all(b"PROXY TCP4 203.0.113.7 198.51.100.1 5555 443\r\n")
        .await;
    assert_eq!(until_closed(&mut s).await, b"");
    assert_eq!(
        metric(
            untrusted.addr("admin"),
            "gatehouse_pool_server_connections_total"
        )
        .await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_client_rules_apply() {
    let a = IdServer::start(b'a').await;
    let policy =
        "[policy]\ndefault = \"allow\"\n[[policy.rules]]\nname = \"no-tcp\"\naction = \"deny\"\n\
                  protocols = [\"tcp\"]\nclients = [\"127.0.0.0/8\"]\n";
    let gh = Gatehouse::start(&format!("{}\n{policy}", tcp_config("", &[a.addr], "")));
    assert_eq!(which(gh.addr("tcp")).await, None);
    let line = gh.wait_log(" TCP ");
    assert_eq!(log_field(&line, 7), "403", "{line}");
    assert_eq!(log_field(&line, 14), "no-tcp", "{line}");
}

#[test]
fn example_contract_parses() {
    use gatehouse::config::{Config, ListenerKind};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tcp-balancer.toml");
    let text = std::fs::read_to_string(path).expect("example");
    let c = Config::parse(&text).expect("valid example");
    let tcp = &c.listeners[0];
    assert_eq!(tcp.listen.to_string(), "127.0.0.1:7001");
    let ListenerKind::Tcp(t) = &tcp.kind else {
        panic!("tcp listener")
    };
    let pool = c
        .pools
        .iter()
        .find(|p| Some(&p.name) == t.pool.as_ref())
        .expect("pool");
    assert_eq!(pool.algorithm, gatehouse::balance::Algorithm::RoundRobin);
    let servers: Vec<String> = pool.servers.iter().map(|s| s.label()).collect();
    assert_eq!(servers, ["127.0.0.1:9101", "127.0.0.1:9102"]);
    let h = pool.health.as_ref().expect("health check");
    assert_eq!(h.kind, gatehouse::config::HealthCheckKind::Tcp);
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!((h.fall, h.rise), (2, 2));

    let sni = &c.listeners[1];
    assert_eq!(sni.listen.to_string(), "127.0.0.1:8443");
    let ListenerKind::Tcp(s) = &sni.kind else {
        panic!("tcp listener")
    };
    assert!(s.pool.is_none(), "other names are closed");
    let route = |name: &str| {
        let r = s.sni.iter().find(|r| r.matches_name(name))?;
        let p = c.pools.iter().find(|p| p.name == r.pool)?;
        Some(p.servers[0].label())
    };
    assert_eq!(route("a.test").as_deref(), Some("127.0.0.1:9443"));
    assert_eq!(route("b.test").as_deref(), Some("127.0.0.1:9444"));
    assert_eq!(route("c.test"), None);
    // Every key has a comment.
    for line in text.lines() {
        let t = line.trim();
        if t.contains(" = ") && !t.starts_with('#') {
            assert!(t.contains('#'), "uncommented key: {t}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_names_resolve_through_dns_hosts() {
    let a = IdServer::start(b'a').await;
    let config = format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"backend.test:{}\"\n\
         [dns.hosts]\n\"backend.test\" = \"127.0.0.1\"\n",
        a.addr.port()
    );
    let gh = Gatehouse::start(&config);
    assert_eq!(which(gh.addr("tcp")).await, Some(b'a'));
}

/// `addr=` of the log line.
fn logged_addr(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_udp_listener_and_keeps_connections() {
    let a = IdServer::start(b'a').await;
    let base = tcp_config("", &[a.addr], "");
    let gh = Gatehouse::start(&base);
    let mut s = TcpStream::connect(gh.addr("tcp")).await.expect("connect");
    let mut id = [0u8; 1];
    s.read_exact(&mut id).await.expect("id");
    // The same tcp listener, plus a udp listener over the existing pool.
    let added = format!(
        "{base}\n[[listeners]]\nname = \"udp2\"\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n"
    );
    std::fs::write(gh.config_path(), &added).expect("rewrite config");
    gh.signal("HUP");
    let udp_addr = logged_addr(&gh.wait_stderr("listener=udp2"));
    // The established connection goes on.
    echo_roundtrip(&mut s, b"after reload").await;
    // The new udp listener serves: its first datagram opens a session (pool p's server
    // answers TCP only, so no reply is expected).
    let c = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    c.send_to(b"x", udp_addr).await.expect("send");
    let admin = gh.addr("admin");
    wait_metric(admin, "gatehouse_connections_total", |v| v >= 2.0).await;
}
