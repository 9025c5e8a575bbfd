//! `[pools.health] type = "http"` end to end: the real binary checks real HTTP servers on
//! loopback; a server answering 500 on /healthz goes down and comes back on 200, and bad
//! answers (garbage, an oversized head, silence) take a server down without disturbing the
//! rest. The transitions are watched in `/metrics` and the log, polled with a deadline.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy)]
enum Answer {
    /// A well-formed response with this status.
    Status(u16),
    Garbage,
    /// A head far larger than the check reads.
    HugeHead,
    /// Reads the request, never answers.
    Silent,
}

/// An HTTP server whose answer to every request is `mode` (changeable while it runs); it
/// records each request head it read.
struct HealthServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl HealthServer {
    async fn start(answer: Answer) -> HealthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(match answer {
            Answer::Status(s) => s,
            _ => 0,
        }));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (st, hs) = (status.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (st, hs) = (st.clone(), hs.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&b[..n]),
                            _ => return,
                        }
                    }
                    hs.lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let reply = match answer {
                        Answer::Status(_) => {
                            let code = st.load(Ordering::SeqCst);
                            format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok").into_bytes()
                        }
                        Answer::Garbage => b"\x16\x03\x01 not http at all\r\n\r\n".to_vec(),
                        Answer::HugeHead => {
                            let mut r = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
                            r.extend(std::iter::repeat_n(b'a', 100_000));
                            r.extend_from_slice(b"\r\n\r\n");
                            r
                        }
                        Answer::Silent => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                    };
                    let _ = s.write_all(&reply).await;
                });
            }
        });
        HealthServer {
            addr,
            status,
            heads,
        }
    }
}

fn config(servers: &[SocketAddr]) -> String {
    let mut c = String::from(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n\
         [pools.health]\ntype = \"http\"\npath = \"/healthz\"\ninterval = \"100ms\"\n\
         timeout = \"400ms\"\nfall = 2\nrise = 2\nexpect_status = \"200-299\"\n\
         [pools.passive]\nmax_failures = 0\n",
    );
    for s in servers {
        c.push_str(&format!("[[pools.servers]]\naddress = \"{s}\"\n"));
    }
    c
}

/// Polls `gatehouse_pool_server_up` (the number of servers up) until it is `want`, for at
/// most 10 s.
async fn wait_up(admin: SocketAddr, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(admin, "gatehouse_pool_server_up").await;
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gatehouse_pool_server_up stayed {now:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_goes_down_and_200_brings_it_back() {
    let flaky = HealthServer::start(Answer::Status(200)).await;
    let steady = HealthServer::start(Answer::Status(204)).await;
    let gh = Gatehouse::start(&config(&[flaky.addr, steady.addr]));
    let admin = gh.addr("admin");
    wait_up(admin, 2.0).await;

    flaky.status.store(500, Ordering::SeqCst);
    wait_up(admin, 1.0).await;
    let down = gh.wait_stderr("server down");
    assert!(down.contains(&flaky.addr.to_string()), "{down}");
    assert!(down.contains("status 500"), "{down}");
    // The admin API agrees.
    let (code, body, err) = curl(&[&format!("http://{admin}/api/v1/status")]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let servers = status["pools"]["p"].as_array().expect("pool p");
    assert_eq!(servers[0]["up"], false, "{servers:?}");
    assert_eq!(servers[0]["checks_up"], false, "{servers:?}");
    assert_eq!(servers[0]["ejected"], false, "{servers:?}");
    assert_eq!(servers[1]["up"], true, "{servers:?}");

    flaky.status.store(200, Ordering::SeqCst);
    wait_up(admin, 2.0).await;
    let up = gh.wait_stderr("server up");
    assert!(up.contains(&flaky.addr.to_string()), "{up}");

    // The checks asked for /healthz with the server's address as Host, and closed.
    let heads = flaky.heads.lock().expect("lock").clone();
    assert!(heads.len() >= 4, "{heads:?}");
    let host = format!("Host: {}\r\n", flaky.addr);
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("GET /healthz HTTP/1.1\r\n") && h.contains(&host)),
        "{heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_heads_and_silence_fail_the_check() {
    let good = HealthServer::start(Answer::Status(200)).await;
    let garbage = HealthServer::start(Answer::Garbage).await;
    let huge = HealthServer::start(Answer::HugeHead).await;
    let silent = HealthServer::start(Answer::Silent).await;
    let gh = Gatehouse::start(&config(&[good.addr, garbage.addr, huge.addr, silent.addr]));
    let admin = gh.addr("admin");
    wait_up(admin, 1.0).await;
    // Each bad server was checked (more than once) and is down; the good one stays up, and
    // the listener still relays to it.
    for s in [&garbage, &huge, &silent] {
        assert!(s.heads.lock().expect("lock").len() >= 2);
    }
    let mut c = tokio::net::TcpStream::connect(gh.addr("tcp"))
        .await
        .expect("connect");
    c.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // Still checking, still alive: the bad servers stay down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_backs_off_and_readmits_without_traffic() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let live = HealthServer::start(Answer::Status(200)).await;
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[pools]]\nname = \"p\"\n\
         [pools.passive]\nmax_failures = 1\nejection = \"300ms\"\nmax_ejection = \"1s\"\n\
         [[pools.servers]]\naddress = \"{dead}\"\n[[pools.servers]]\naddress = \"{}\"\n",
        live.addr
    ));
    let admin = gh.addr("admin");
    let through = || async {
        let mut c = tokio::net::TcpStream::connect(gh.addr("tcp"))
            .await
            .expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got)).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "the retry reaches the live server"
        );
    };
    // Round-robin sends the first connection to the dead server: ejected, retried elsewhere.
    through().await;
    let down = gh.wait_stderr("server down");
    assert!(
        down.contains(&dead.to_string()) && down.contains("ejected for 300ms"),
        "{down}"
    );
    // Readmitted when the ejection ends, with no request needed to notice.
    let up = gh.wait_stderr("server up");
    assert!(up.contains("ejection over"), "{up}");
    wait_up(admin, 2.0).await;
    // Failing again before any success: twice as long.
    through().await;
    through().await;
    let down = gh.wait_stderr("server down");
    assert!(down.contains("ejected for 600ms"), "{down}");
}

/// `init_state = "down"`: a server starts down (no request goes to it before a check passed),
/// a server that fails its checks stays down without ever having been up, and one passed
/// check brings a server up (without the setting, a server starts up and needs `fall`
/// failed checks to go down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_state_down_holds_servers_back_until_a_check_passes() {
    let failing = HealthServer::start(Answer::Status(500)).await;
    let gh = Gatehouse::start(
        &config(&[failing.addr])
            .replace("[pools.passive]", "init_state = \"down\"\n[pools.passive]"),
    );
    let admin = gh.addr("admin");
    // Down from the start: before, during and after its first failed checks.
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(0.0));
    tokio::time::timeout(Duration::from_secs(10), async {
        while failing.heads.lock().expect("lock").len() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("checked three times");
    assert_eq!(metric(admin, "gatehouse_pool_server_up").await, Some(0.0));
    // A client is refused at once: no server up.
    let mut c = tokio::net::TcpStream::connect(gh.addr("tcp"))
        .await
        .expect("connect");
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    // One passed check brings it up (rise is 2).
    failing.status.store(200, Ordering::SeqCst);
    wait_up(admin, 1.0).await;
    let lines = gh.stderr_until("server up");
    assert!(
        !lines.iter().any(|l| l.contains("server down")),
        "it never was up, so it never went down: {lines:?}"
    );
}
