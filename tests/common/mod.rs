//! Shared end-to-end harness: the real `gatehouse` binary on 127.0.0.1 port 0, readiness read
//! from its log (no sleeps), origin servers built on hyper, a raw TCP origin for misbehaving
//! upstreams, and a loopback DNS server so no test ever asks a real resolver.

#![allow(dead_code)]

pub mod ldap;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::{TcpListener, UdpSocket};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A running gatehouse process. Killed on drop.
pub struct Gatehouse {
    pub child: Child,
    pub addrs: HashMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Gatehouse {
    /// Starts gatehouse with `config` (TOML) and waits until every listener is ready.
    pub fn start(config: &str) -> Gatehouse {
        Self::try_start(config).unwrap_or_else(|e| panic!("gatehouse did not start: {e}"))
    }

    pub fn try_start(config: &str) -> Result<Gatehouse, String> {
        Self::try_start_with(config, None)
    }

    /// Starts gatehouse with its open-files limit (soft and hard) set to `nofile`.
    pub fn start_with_nofile(config: &str, nofile: u32) -> Gatehouse {
        Self::try_start_with(config, Some(nofile))
            .unwrap_or_else(|e| panic!("gatehouse did not start: {e}"))
    }

    fn try_start_with(config: &str, nofile: Option<u32>) -> Result<Gatehouse, String> {
        // Test origins live on loopback, which the safe-by-default guard refuses: unless a
        // test brings its own [policy], allow loopback destinations explicitly.
        let config = if config.contains("[policy") {
            config.to_string()
        } else {
            format!("{config}\n{LOOPBACK_POLICY}")
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, &config).map_err(|e| e.to_string())?;
        let mut cmd = match nofile {
            None => Command::new(BIN),
            Some(n) => {
                // `exec` keeps the pid: the child's id is gatehouse's.
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
                c
            }
        };
        let mut child = cmd
            .arg("--config")
            .arg(&path)
            .env("GATEHOUSE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (out_tx, stdout) = mpsc::channel();
        let out = child.stdout.take().ok_or("no stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().ok_or("no stderr")?;
        let (err_tx, stderr) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut addrs = HashMap::new();
            let mut ready_tx = Some(ready_tx);
            let mut log = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(tx) = &ready_tx {
                    log.push(line.clone());
                    if line.contains(" ready ") {
                        if let (Some(name), Some(addr)) =
                            (field(&line, "listener="), field(&line, "addr="))
                        {
                            if let Ok(a) = addr.parse::<SocketAddr>() {
                                addrs.insert(name, a);
                            }
                        }
                    }
                    if line.contains("all listeners ready") {
                        let _ = tx.send(Ok(std::mem::take(&mut addrs)));
                        ready_tx = None;
                    }
                }
                let _ = err_tx.send(line);
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(log.join("\n")));
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addrs)) => Ok(Gatehouse {
                child,
                addrs,
                dir,
                stdout,
                stderr,
            }),
            Ok(Err(log)) => {
                let _ = child.wait();
                Err(format!("exited before ready:\n{log}"))
            }
            Err(_) => {
                let _ = child.kill();
                Err("not ready within 30s".into())
            }
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .addrs
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener:?} in {:?}", self.addrs))
    }

    pub fn proxy_url(&self, listener: &str) -> String {
        format!("http://{}", self.addr(listener))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next access-log line written to stdout, waiting up to 10 s.
    pub fn next_log_line(&self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("an access log line within 10s")
    }

    /// Waits for an access-log line containing `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        loop {
            let line = self.next_log_line();
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits up to 10 s for a log line (stderr) containing `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within 10s"),
            }
        }
    }

    /// The first log line (stderr) containing each of `needles`, in the order of `needles`
    /// whatever order they come in (two tasks on different threads may log in either),
    /// waiting up to 10 s for all of them.
    pub fn wait_stderr_all(&self, needles: &[&str]) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        while found.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let slot = needles
                        .iter()
                        .zip(found.iter_mut())
                        .find(|(n, f)| f.is_none() && line.contains(**n));
                    if let Some((_, f)) = slot {
                        *f = Some(line);
                    }
                }
                Err(_) => panic!("not every one of {needles:?} logged within 10s: {found:?}"),
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Every log line (stderr) up to and including the first containing `needle`, waiting
    /// up to 10 s.
    pub fn stderr_until(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    lines.push(line);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!("no log line containing {needle:?} within 10s: {lines:?}"),
            }
        }
    }

    /// The config file the process was started with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.toml")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Descriptors the process holds open now, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("proc fd")
            .count()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The policy the harness adds to configs without one: loopback destinations allowed.
pub const LOOPBACK_POLICY: &str = r#"
[[policy.rules]]
name = "tests-reach-loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8", "::1/128"]
"#;

fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// A listener config block for an HTTP proxy on port 0, plus extra keys.
pub fn http_listener(name: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// A request as the hyper origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<hyper::HeaderMap>,
    /// The address the request came from (the proxy's outgoing address).
    pub peer: SocketAddr,
}

pub type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// An origin server built on hyper: records every request, counts connections.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl Origin {
    pub async fn start(handler: Handler) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, r) = (handler.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (handler, r) = (handler.clone(), r.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await.ok();
                            let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
                            let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                                trailers,
                                peer,
                            };
                            let resp = handler(&seen);
                            if let Ok(mut v) = r.lock() {
                                v.push(seen);
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
        }
    }

    /// An origin answering every request with `200` and `body`.
    pub async fn fixed(body: &'static str) -> Origin {
        Self::start(Arc::new(move |_| {
            Response::new(Full::new(Bytes::from_static(body.as_bytes())))
        }))
        .await
    }

    /// An origin that echoes the request body back.
    pub async fn echo() -> Origin {
        Self::start(Arc::new(|s: &Seen| {
            Response::new(Full::new(s.body.clone()))
        }))
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.requests.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A raw TCP origin: `script` gets each accepted connection.
pub async fn raw_origin<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind raw origin");
    let addr = listener.local_addr().expect("addr");
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(script(s));
        }
    });
    addr
}

/// A loopback DNS server: answers A/AAAA from `records`, NXDOMAIN for everything else.
/// Counts queries so tests can see the resolver's cache at work.
pub struct Dns {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicUsize>,
}

impl Dns {
    pub async fn start(records: &[(&str, IpAddr)], ttl: u32) -> Dns {
        use hickory_proto::op::{Message, OpCode, ResponseCode};
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = sock.local_addr().expect("addr");
        let queries = Arc::new(AtomicUsize::new(0));
        let q = queries.clone();
        let table: Vec<(Name, IpAddr)> = records
            .iter()
            .map(|(n, ip)| (Name::from_ascii(format!("{n}.")).expect("name"), *ip))
            .collect();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.metadata.recursion_desired = req.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                let mut known = false;
                let mut answered = false;
                for query in &req.queries {
                    resp.add_query(query.clone());
                    for (name, ip) in &table {
                        if name.eq_case(query.name()) || name == query.name() {
                            known = true;
                            let rdata = match (ip, query.query_type()) {
                                (IpAddr::V4(v4), RecordType::A) => Some(RData::A((*v4).into())),
                                (IpAddr::V6(v6), RecordType::AAAA) => {
                                    Some(RData::AAAA((*v6).into()))
                                }
                                _ => None,
                            };
                            if let Some(rdata) = rdata {
                                answered = true;
                                resp.add_answer(Record::from_rdata(name.clone(), ttl, rdata));
                            }
                        }
                    }
                }
                if !known {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                if !answered {
                    // Negative answers carry an SOA so resolvers may cache them (RFC 2308).
                    let zone = Name::from_ascii("test.").expect("zone");
                    let soa = hickory_proto::rr::rdata::SOA::new(
                        zone.clone(),
                        zone.clone(),
                        1,
                        60,
                        60,
                        60,
                        ttl,
                    );
                    resp.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        Dns { addr, queries }
    }

    /// The `[dns]` config section pointing at this server.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\nattempts = 1\n",
            self.addr
        )
    }
}

/// Runs curl with `args`; returns (exit code, stdout, stderr).
pub async fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- Cache tests (tests/cache*.rs) ----

impl Origin {
    /// How many requests the origin has answered for exactly `path` (path and query).
    pub fn count(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.uri == path).count()
    }

    /// The requests the origin saw for `path`, oldest first.
    pub fn seen_for(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.uri == path).collect()
    }
}

/// A response with `status`, header fields and body, for scripted origins.
pub fn response(
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).expect("valid response")
}

/// A reqwest client sending absolute-form requests through the listener `name`.
pub fn proxied_client(gh: &Gatehouse, name: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(gh.proxy_url(name)).expect("proxy url"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Our member of the Cache-Status list (RFC 9211), if any.
    pub fn cache_status(&self) -> Option<&str> {
        self.headers
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|m| m.starts_with("Gatehouse"))
    }
}

/// Sends `method url` with extra header fields and reads the whole response.
pub async fn fetch(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{url} body: {e}"));
    Fetched {
        status,
        headers,
        body,
    }
}

/// Field `n` (1-based) of a text access-log line. The 12th is the cache word.
pub fn log_field(line: &str, n: usize) -> &str {
    line.split_whitespace().nth(n - 1).unwrap_or("")
}

/// The sum of every sample of metric `name` (with any labels) on the admin listener, or
/// `None` when the metric is absent.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let text = metrics_text(admin).await;
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The admin listener's /metrics text.
pub async fn metrics_text(admin: SocketAddr) -> String {
    let (code, body, err) = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(code, 0, "{err}");
    String::from_utf8_lossy(&body).into_owned()
}

/// `len` bytes that differ with `seed` and position, so a torn or mixed-up body shows.
pub fn pattern(seed: u32, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Gatehouse with a caching listener "http" and one reqwest client through it.
pub struct Cached {
    pub gh: Gatehouse,
    pub client: reqwest::Client,
}

impl Cached {
    pub fn start() -> Cached {
        let cfg = format!(
            "{}[cache]\nenabled = true\nmemory_size = \"16MiB\"\n",
            http_listener("http", "cache = true")
        );
        let gh = Gatehouse::start(&cfg);
        let client = proxied_client(&gh, "http");
        Cached { gh, client }
    }

    /// Sends a request, reads the response and waits for its access-log line (written once
    /// the proxy is done with the request, store included). Returns the log's cache word.
    pub async fn send(&self, method: &str, url: &str, hs: &[(&str, &str)]) -> (Fetched, String) {
        let r = fetch(&self.client, method, url, hs).await;
        let line = self.gh.wait_log(&format!(" {method} {url} "));
        (r, log_field(&line, 12).to_string())
    }

    pub async fn get(&self, url: &str, hs: &[(&str, &str)]) -> Fetched {
        self.send("GET", url, hs).await.0
    }
}

/// A counter-numbered origin: the handler gets the request and its 1-based number.
pub async fn numbered(
    f: impl Fn(&Seen, usize) -> hyper::Response<Full<Bytes>> + Send + Sync + 'static,
) -> Origin {
    let n = AtomicUsize::new(0);
    Origin::start(Arc::new(move |s: &Seen| {
        f(s, n.fetch_add(1, Ordering::SeqCst) + 1)
    }))
    .await
}

/// Reads one request head (up to 16 KiB) from a raw origin's connection; `false` on EOF or
/// overflow.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return false;
        }
    }
    true
}

/// A listener config block for a SOCKS listener on port 0, plus extra keys.
pub fn socks_listener(name: &str, extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"{name}\"\nkind = \"socks\"\nlisten = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// A TCP echo server: every connection gets its own bytes back, then EOF after the client's.
pub async fn tcp_echo() -> SocketAddr {
    raw_origin(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A UDP echo server that records every payload it received.
pub struct UdpEcho {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl UdpEcho {
    pub async fn start(bind: &str) -> UdpEcho {
        let sock = UdpSocket::bind(bind).await.expect("bind udp echo");
        let addr = sock.local_addr().expect("addr");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if let Ok(mut v) = s.lock() {
                    v.push(buf[..n].to_vec());
                }
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        UdpEcho { addr, seen }
    }

    pub fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// SOCKS5 over raw bytes: connects and negotiates "no authentication".
pub async fn socks5_open(proxy: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to proxy");
    s.write_all(&[5, 1, 0]).await.expect("greeting");
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.expect("method choice");
    assert_eq!(m, [5, 0], "no-auth accepted");
    s
}

/// A SOCKS5 request for an address.
pub fn socks5_request(cmd: u8, addr: SocketAddr) -> Vec<u8> {
    let mut v = vec![5, cmd, 0];
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

/// A SOCKS5 request for a name.
pub fn socks5_request_name(cmd: u8, name: &str, port: u16) -> Vec<u8> {
    let mut v = vec![5, cmd, 0, 3, name.len() as u8];
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// Reads a SOCKS5 reply (IPv4 or IPv6 bound address): `(REP, BND)`.
pub async fn socks5_reply(s: &mut tokio::net::TcpStream) -> (u8, SocketAddr) {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.expect("reply head");
        assert_eq!((head[0], head[2]), (5, 0), "reply {head:?}");
        let ip: IpAddr = match head[3] {
            1 => {
                let mut a = [0u8; 4];
                s.read_exact(&mut a).await.expect("v4");
                a.into()
            }
            4 => {
                let mut a = [0u8; 16];
                s.read_exact(&mut a).await.expect("v6");
                a.into()
            }
            other => panic!("unexpected ATYP {other}"),
        };
        let mut p = [0u8; 2];
        s.read_exact(&mut p).await.expect("port");
        (head[1], SocketAddr::new(ip, u16::from_be_bytes(p)))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a reply within 10s")
}

/// UDP ASSOCIATE over a fresh control connection: `(control, relay address)`.
pub async fn socks5_associate(proxy: SocketAddr) -> (tokio::net::TcpStream, SocketAddr) {
    use tokio::io::AsyncWriteExt;
    let mut control = socks5_open(proxy).await;
    control
        .write_all(&socks5_request(3, "0.0.0.0:0".parse().expect("addr")))
        .await
        .expect("UDP ASSOCIATE");
    let (rep, relay) = socks5_reply(&mut control).await;
    assert_eq!(rep, 0, "UDP ASSOCIATE refused");
    (control, relay)
}

/// A SOCKS5 UDP request header (RFC 1928 section 7, no fragment) for an IPv4 target, then the
/// payload.
pub fn socks5_datagram(target: SocketAddr, payload: &[u8]) -> Vec<u8> {
    match target {
        SocketAddr::V4(a) => [
            &[0, 0, 0, 1][..],
            &a.ip().octets(),
            &a.port().to_be_bytes(),
            payload,
        ]
        .concat(),
        SocketAddr::V6(a) => [
            &[0, 0, 0, 4][..],
            &a.ip().octets(),
            &a.port().to_be_bytes(),
            payload,
        ]
        .concat(),
    }
}

/// Everything the server still sends, up to its close (at most 10 s).
pub async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("server closes within 10s")
        .expect("clean close");
    out
}

/// Reads until the peer closes, by EOF or by a reset (a balancer may close without reading
/// what the client sent); returns what came (at most 10 s).
pub async fn until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed within 10s");
    out
}

/// Writes a users file with `gatehouse passwd` (the real CLI): (name, password, groups).
pub fn users_file(dir: &std::path::Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let path = dir.join("users.txt");
    for (user, password, groups) in entries {
        let mut cmd = Command::new(BIN);
        cmd.args(["passwd", user, "--file"]).arg(&path);
        if !groups.is_empty() {
            cmd.args(["--groups", groups]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run passwd");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        assert!(child.wait().expect("wait").success());
    }
    path
}

/// A TCP echo server.
pub async fn echo_server() -> SocketAddr {
    raw_origin(|mut s: tokio::net::TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Opens a CONNECT tunnel through the proxy and returns the stream after the 200.
pub async fn open_tunnel(proxy: SocketAddr, target: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect proxy");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Sends `msg` through an echoing tunnel and checks it comes back within 10 s.
pub async fn echo_roundtrip(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, msg);
}

/// A throwaway CA and a leaf it signed for `name` (rcgen), as the TLS tests write them out.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    pub leaf_pem: String,
    pub leaf_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    pub key_pem: String,
}

/// [`TestPki`] for `name`: a CA "Gatehouse test CA" and a leaf with `name` as its only
/// subject alternative name and common name.
pub fn test_pki(name: &str) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
        KeyPair,
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let leaf = params.signed_by(&key, &ca).expect("sign");
    TestPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().clone(),
        key_pem: key.serialize_pem(),
    }
}
