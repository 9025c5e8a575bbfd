//! End-to-end: CONNECT tunnels (TLS through the proxy), bounded memory for large bodies,
//! graceful and immediate shutdown, the admin listener, the access log, and the CLI.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TLS server on 127.0.0.1 answering one fixed HTTP response, with a self-signed certificate
/// for "localhost" written to `dir`. Returns its address and the certificate path.
async fn tls_origin(dir: &std::path::Path) -> (std::net::SocketAddr, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_path = dir.join("origin.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    let chain = vec![cert.cert.der().clone()];
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        cert.signing_key.serialize_der().into(),
    );
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, cert_path)
}

#[tokio::test]
async fn connect_tunnel_to_local_tls_server_with_curl() {
    let dir = tempfile::tempdir().expect("tmp");
    let (origin, cert) = tls_origin(dir.path()).await;
    let gh = Gatehouse::start(&http_listener(
        "http",
        &format!("connect_ports = [{}]", origin.port()),
    ));
    let url = format!("https://localhost:{}/", origin.port());
    let (code, body, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "--cacert",
        &cert.display().to_string(),
        &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(body, b"secret");
    let line = gh.wait_log("CONNECT");
    assert!(
        line.contains(&format!("localhost:{}", origin.port())) && line.contains(" 200 "),
        "{line}"
    );
}

#[tokio::test]
async fn tunnel_half_close_keeps_the_other_direction() {
    // The server reads to EOF, then answers: the client's FIN must not end the tunnel.
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        let _ = s
            .write_all(format!("got {} bytes", got.len()).as_bytes())
            .await;
    })
    .await;
    let gh = Gatehouse::start(&http_listener(
        "http",
        &format!("connect_ports = [{}]", origin.port()),
    ));
    let mut t = open_tunnel(gh.addr("http"), origin).await;
    t.write_all(&[7u8; 1000]).await.expect("write");
    t.shutdown().await.expect("half-close");
    let mut answer = String::new();
    t.read_to_string(&mut answer).await.expect("read");
    assert_eq!(answer, "got 1000 bytes");
}

/// Peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test]
async fn large_bodies_stream_in_bounded_memory() {
    const SIZE: u64 = 1 << 30; // 1 GiB each way
    let origin = raw_origin(|mut s: TcpStream| async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if head.starts_with("put") {
            // Swallow the upload, then report its size.
            let mut total = 0u64;
            while total < SIZE {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            let body = total.to_string();
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        } else {
            let _ = s
                .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes())
                .await;
            let mut left = SIZE;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    })
    .await;
    let gh = Gatehouse::start(&http_listener("http", ""));
    let before = gh.rss_kib();
    let (code, out, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        "--max-time",
        "120",
        &format!("http://{origin}/big"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), SIZE.to_string());
    // Upload from a sparse file of the same size.
    let file = gh.path("upload.bin");
    std::fs::File::create(&file)
        .expect("create")
        .set_len(SIZE)
        .expect("sparse file");
    let (code, out, err) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-T",
        &file.display().to_string(),
        "--max-time",
        "120",
        &format!("http://{origin}/up"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), SIZE.to_string());
    let peak = peak_rss_kib(gh.pid());
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} KiB to a peak of {peak} KiB moving 2 GiB"
    );
}

// Multi-threaded: the echo server must keep running while the test blocks in wait_exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_tunnels_and_refuses_new_clients() {
    let echo = echo_server().await;
    let cfg = format!(
        "{}[shutdown]\ndrain_timeout = \"20s\"\n",
        http_listener("http", &format!("connect_ports = [{}]", echo.port()))
    );
    let mut gh = Gatehouse::start(&cfg);
    let proxy = gh.addr("http");
    let mut tunnel = open_tunnel(proxy, echo).await;
    echo_roundtrip(&mut tunnel, b"before").await;
    // An idle keep-alive client is closed when the drain starts.
    let mut idle = TcpStream::connect(proxy).await.expect("connect");
    gh.signal("TERM");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("idle client closed at drain")
        .expect("read");
    // New connections are refused once the listener has closed.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(proxy).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "listener still accepting during drain");
    // The tunnel in flight still works...
    echo_roundtrip(&mut tunnel, b"during drain").await;
    assert!(
        gh.child.try_wait().expect("try_wait").is_none(),
        "exited with a tunnel in flight"
    );
    // ...and once it ends, the process exits cleanly.
    drop(tunnel);
    let Some(status) = gh.wait_exit(Duration::from_secs(10)) else {
        let log: Vec<String> = gh.stderr.try_iter().collect();
        panic!(
            "still running 10s after the last tunnel closed:\n{}",
            log.join("\n")
        );
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sigint_exits_at_once() {
    let echo = echo_server().await;
    let cfg = format!(
        "{}[shutdown]\ndrain_timeout = \"60s\"\n",
        http_listener("http", &format!("connect_ports = [{}]", echo.port()))
    );
    let mut gh = Gatehouse::start(&cfg);
    let mut tunnel = open_tunnel(gh.addr("http"), echo).await;
    echo_roundtrip(&mut tunnel, b"x").await;
    gh.signal("INT");
    let status = gh
        .wait_exit(Duration::from_secs(5))
        .expect("SIGINT does not wait for tunnels");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn admin_health_and_metrics() {
    let origin = Origin::fixed("m").await;
    let cfg = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\npac_direct = [\"intranet.test\"]\n",
        http_listener("http", "")
    );
    let gh = Gatehouse::start(&cfg);
    let admin = gh.addr("admin");
    let (code, body, err) = curl(&[&format!("http://{admin}/healthz")]).await;
    assert_eq!((code, body.as_slice()), (0, &b"ok\n"[..]), "{err}");
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    gh.wait_log("GET");
    let (code, body, err) = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8_lossy(&body);
    for want in [
        "gatehouse_requests_total{listener=\"http\",class=\"2xx\"} 1",
        "gatehouse_connections_total{listener=\"http\"} 1",
        "gatehouse_connections_open{listener=\"http\"}",
        "gatehouse_bytes_total{listener=\"http\",direction=\"out\"}",
        "gatehouse_upstream_connect_seconds_count 1",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let (code, pac, err) = curl(&[&format!("http://{admin}/proxy.pac")]).await;
    assert_eq!(code, 0, "{err}");
    let pac = String::from_utf8_lossy(&pac);
    assert!(
        pac.contains(&format!("return \"PROXY {}\";", gh.addr("http"))),
        "{pac}"
    );
    assert!(pac.contains("host == \"intranet.test\""), "{pac}");
    let (code, body, _) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("http://{admin}/nope"),
    ])
    .await;
    assert_eq!((code, body.as_slice()), (0, &b"404"[..]));
}

#[tokio::test]
async fn json_access_log_to_a_file() {
    let origin = Origin::fixed("log me").await;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("access.log");
    let cfg = format!(
        "{}[access_log]\npath = \"{}\"\nformat = \"json\"\n",
        http_listener("http", ""),
        log.display()
    );
    let gh = Gatehouse::start(&cfg);
    let (code, _, err) = curl(&["-x", &gh.proxy_url("http"), &origin.url("/j")]).await;
    assert_eq!(code, 0, "{err}");
    // The writer flushes as soon as its queue is empty; wait for the line to land.
    let mut line = String::new();
    for _ in 0..200 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if line.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert_eq!(v["target"], origin.url("/j"));
    assert_eq!(v["upstream"], origin.addr.to_string());
    assert_eq!(v["bytes_out"].as_u64().map(|n| n > 6), Some(true));
    assert!(v["client"]
        .as_str()
        .expect("client")
        .starts_with("127.0.0.1:"));
    assert!(v["time"].as_str().expect("time").ends_with('Z'));
    assert!(v["duration"].as_f64().is_some());
    assert!(v["user"].is_null());
}

#[test]
fn check_reports_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nname = \"x\"\nkind = \"http\"\nlisten = \"nowhere\"\nkeepalive_timeout = \"soon\"\ntypo = 1\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "line 4: listeners[0].listen",
        "line 5: listeners[0].keepalive_timeout",
        "line 6: listeners[0].typo: unknown key",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    let version = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("gatehouse "));
}

#[test]
fn every_shipped_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    // The tunnel pair reads tunnel/relay.test.{crt,key}, made by `gatehouse cert`: those two
    // are checked where they are; the others from the repository root, as their paths say.
    let certs = tunnel_certs();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let uses_certs = std::fs::read_to_string(&path)
            .expect("read")
            .contains("\"tunnel/relay.test.");
        // Both spellings: `check --config FILE` and `check FILE`.
        for args in [&["check", "--config"][..], &["check"][..]] {
            let out = std::process::Command::new(BIN)
                .args(args)
                .arg(&path)
                .current_dir(if uses_certs { certs.path() } else { &root })
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{} {args:?}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        checked += 1;
    }
    // forward-proxy, lan-proxy, socks-users, disk-cache, parent-failover, pac.
    assert!(
        checked >= 6,
        "only {checked} example configs found in {}",
        dir.display()
    );
    // The built-in default is shipped too.
    let out = std::process::Command::new(BIN)
        .arg("default-config")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1:3128"), "{text}");
}

/// A directory holding tunnel/relay.test.{crt,key}, as the tunnel examples expect.
fn tunnel_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["cert", "--name", "relay.test", "--out"])
        .arg(dir.path().join("tunnel"))
        .output()
        .expect("run gatehouse cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The example configs, each with its text.
fn examples() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string();
            out.push((name, std::fs::read_to_string(&path).expect("read example")));
        }
    }
    out.sort();
    out
}

/// Every example listens on loopback only, on fixed ports no other example uses (so they
/// can run side by side as shipped), starts with a comment saying what it is, and is walked
/// through in docs/examples.md.
#[test]
fn examples_are_loopback_distinct_commented_and_documented() {
    let walkthrough = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples.md"),
    )
    .expect("docs/examples.md");
    let mut seen: std::collections::HashMap<u16, String> = std::collections::HashMap::new();
    for (name, text) in examples() {
        assert!(text.starts_with("# "), "{name}: no opening comment");
        assert!(
            walkthrough.contains(&format!("examples/{name}")),
            "docs/examples.md does not walk through examples/{name}"
        );
        let config =
            gatehouse::config::Config::parse(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let admin = config.admin.as_ref().map(|a| a.listen);
        for addr in config.listeners.iter().map(|l| l.listen).chain(admin) {
            assert!(addr.ip().is_loopback(), "{name}: {addr} is not loopback");
            assert_ne!(addr.port(), 0, "{name}: port 0 is not a fixed port");
            if let Some(other) = seen.insert(addr.port(), name.clone()) {
                panic!("{name} and {other} both use port {}", addr.port());
            }
        }
    }
}

/// Every example starts and serves (the real binary, from the repository root as the
/// examples say), with its fixed ports made 0 and its disk cache in a temporary directory so
/// the test cannot collide with anything running on the machine.
#[test]
fn every_example_starts() {
    let cache = tempfile::tempdir().expect("tempdir");
    let certs = tunnel_certs();
    for (name, text) in examples() {
        let mut text = text
            .replace(
                "/tmp/gatehouse-example-cache",
                &cache.path().join(&name).display().to_string(),
            )
            .replace(
                "\"tunnel/",
                &format!("\"{}/tunnel/", certs.path().display()),
            );
        for port in ports_in(&text) {
            text = text.replace(&format!("127.0.0.1:{port}\""), "127.0.0.1:0\"");
        }
        let g = Gatehouse::try_start(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Each listener and the admin endpoint logged its bound address.
        let want = text.matches("[[listeners]]").count() + usize::from(text.contains("\n[admin]"));
        assert_eq!(g.addrs.len(), want, "{name}: {:?}", g.addrs);
    }
}

/// The fixed loopback ports an example's `listen` keys name.
fn ports_in(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("listen = \"127.0.0.1:"))
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

/// The config the Debian package installs as /etc/gatehouse/gatehouse.toml passes every
/// start-up check (its log directory made a temporary one: the package creates the real one)
/// and is safe: loopback listeners only.
#[test]
fn the_packaged_config_is_valid_and_loopback_only() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("contrib/gatehouse.toml")).expect("read");
    assert!(text.contains("\"/var/log/gatehouse/access.log\""), "{text}");
    let logs = tempfile::tempdir().expect("tempdir");
    let text = text.replace("/var/log/gatehouse", &logs.path().display().to_string());
    let path = logs.path().join("gatehouse.toml");
    std::fs::write(&path, &text).expect("write");
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = gatehouse::config::Config::parse(&text).expect("parse");
    let admin = config.admin.as_ref().map(|a| a.listen);
    for addr in config.listeners.iter().map(|l| l.listen).chain(admin) {
        assert!(addr.ip().is_loopback(), "{addr}");
    }
}
