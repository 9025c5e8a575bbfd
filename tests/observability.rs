//! Logs and metrics through real traffic: every access log format parsed the way log
//! analysers parse it, the metric families counting what happened, and the Grafana dashboard
//! using only documented metrics.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICY: &str = r#"
[[policy.rules]]
name = "no-blocked"
action = "deny"
hosts = ["blocked.test"]
[[policy.rules]]
name = "loopback"
action = "allow"
dest_addrs = ["127.0.0.0/8", "::1/128"]
"#;

const AGENT: &str = "probe/1.0 (test; \"quoted\")";

/// The same traffic through a gatehouse logging in `format` to stdout: a cache miss, a hit, a
/// second miss (on a pooled upstream connection), a request the rules refuse, a CONNECT tunnel
/// and a SOCKS5 tunnel, 5 bytes each way. Returns one log line per step, in that order.
async fn traffic(format: &str) -> (Vec<String>, Gatehouse, Origin) {
    let origin = Origin::start(Arc::new(|_: &Seen| {
        response(200, &[("Cache-Control", "max-age=600")], "hello")
    }))
    .await;
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n[access_log]\nformat = \"{format}\"\n{POLICY}",
        http_listener(
            "http",
            &format!("cache = true\nconnect_ports = [{}]", echo.port())
        ),
        socks_listener("socks", ""),
    ));
    let proxy = gh.proxy_url("http");
    let mut lines = Vec::new();
    for url in [
        origin.url("/a"),
        origin.url("/a"),
        origin.url("/b"),
        "http://blocked.test/".to_string(),
    ] {
        let (code, _, err) = curl(&[
            "-x",
            &proxy,
            "-e",
            "http://ref.test/page",
            "-A",
            AGENT,
            &url,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        lines.push(gh.next_log_line());
    }

    let mut tunnel = open_tunnel(gh.addr("http"), echo).await;
    roundtrip(&mut tunnel).await;
    drop(tunnel);
    lines.push(gh.next_log_line());

    let mut socks = socks5_open(gh.addr("socks")).await;
    socks
        .write_all(&socks5_request(1, echo))
        .await
        .expect("request");
    assert_eq!(socks5_reply(&mut socks).await.0, 0);
    roundtrip(&mut socks).await;
    drop(socks);
    lines.push(gh.next_log_line());
    (lines, gh, origin)
}

async fn roundtrip(s: &mut tokio::net::TcpStream) {
    s.write_all(b"ping!").await.expect("write");
    let mut back = [0u8; 5];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo within 10s")
        .expect("read");
    assert_eq!(&back, b"ping!");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_native_lines_have_ten_fields_and_squid_result_codes() {
    let (lines, gh, origin) = traffic("squid").await;
    let codes: Vec<&str> = lines.iter().map(|l| log_field(l, 4)).collect();
    assert_eq!(
        codes,
        [
            "TCP_MISS/200",
            "TCP_HIT/200",
            "TCP_MISS/200",
            "TCP_DENIED/403",
            "TCP_TUNNEL/200",
            "TCP_TUNNEL/200"
        ],
        "{lines:#?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for line in &lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 10, "{line}");
        let t: f64 = f[0].parse().expect("time");
        assert!((now - t).abs() < 60.0, "{line}");
        assert_eq!(f[0].split_once('.').map(|(_, ms)| ms.len()), Some(3));
        f[1].parse::<u64>().expect("elapsed ms");
        assert_eq!(f[2], "127.0.0.1", "{line}");
        f[4].parse::<u64>().expect("bytes");
        assert_eq!(f[7], "-", "no user: {line}");
        assert_eq!(f[9], "-", "{line}");
    }
    let f = |i: usize, n: usize| log_field(&lines[i], n).to_string();
    assert_eq!(f(0, 6), "GET");
    assert_eq!(f(0, 7), origin.url("/a"));
    assert_eq!(f(0, 9), "HIER_DIRECT/127.0.0.1");
    assert_eq!(f(3, 9), "HIER_NONE/-");
    assert_eq!(f(4, 6), "CONNECT");
    assert_eq!(f(5, 6), "SOCKS5-CONNECT");
    // Bytes to the client include the CONNECT's 200 head and the SOCKS replies.
    assert!(f(4, 5).parse::<u64>().expect("bytes") > 5 + 30);
    assert!(f(5, 5).parse::<u64>().expect("bytes") > 5);

    // The same traffic in the metrics.
    let text = metrics_text(gh.addr("admin")).await;
    for want in [
        "gatehouse_policy_denials_total{rule=\"no-blocked\"} 1\n",
        "gatehouse_cache_results_total{result=\"miss\"} 2\n",
        "gatehouse_cache_results_total{result=\"hit\"} 1\n",
        "gatehouse_upstream_pool_requests_total{reused=\"false\"} 1\n",
        "gatehouse_upstream_pool_requests_total{reused=\"true\"} 1\n",
        "gatehouse_relay_bytes_total{kind=\"connect\",direction=\"in\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"connect\",direction=\"out\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"socks\",direction=\"in\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"socks\",direction=\"out\"} 5\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_parse_with_the_log_analysers_regex() {
    let (lines, _gh, origin) = traffic("combined").await;
    // The combined-format pattern of log analysers (logstash's COMBINEDAPACHELOG, GoAccess).
    let re = regex::Regex::new(
        r#"^(\S+) (\S+) (\S+) \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(\S+) (\S+) (\S+)" (\d{3}) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$"#,
    )
    .expect("regex");
    let caps: Vec<_> = lines
        .iter()
        .map(|l| {
            re.captures(l)
                .unwrap_or_else(|| panic!("not combined: {l}"))
        })
        .collect();
    let got = |i: usize, g: usize| caps[i].get(g).map_or("", |m| m.as_str()).to_string();
    let requests: Vec<String> = (0..6)
        .map(|i| format!("{} {} {} {}", got(i, 5), got(i, 6), got(i, 7), got(i, 8)))
        .collect();
    let a = origin.url("/a");
    let b = origin.url("/b");
    let echo = got(4, 6);
    assert_eq!(
        requests,
        [
            format!("GET {a} HTTP/1.1 200"),
            format!("GET {a} HTTP/1.1 200"),
            format!("GET {b} HTTP/1.1 200"),
            "GET http://blocked.test/ HTTP/1.1 403".to_string(),
            format!("CONNECT {echo} HTTP/1.1 200"),
            format!("CONNECT {echo} SOCKS5 200"),
        ]
    );
    for i in 0..4 {
        assert_eq!(got(i, 1), "127.0.0.1");
        assert_eq!(got(i, 3), "-");
        assert_eq!(got(i, 10), "http://ref.test/page");
        assert_eq!(got(i, 11), r#"probe/1.0 (test; \"quoted\")"#);
        assert_ne!(got(i, 9), "-");
    }
    assert!(got(5, 9).parse::<u64>().expect("bytes") > 5);
    assert_eq!((got(5, 10), got(5, 11)), ("-".into(), "-".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_every_documented_field() {
    let (lines, _gh, _origin) = traffic("json").await;
    let doc = include_str!("../docs/access-log.md");
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    for (i, (line, v)) in lines.iter().zip(&values).enumerate() {
        let obj = v.as_object().expect("object");
        for key in obj.keys() {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "field {key} is not in docs/access-log.md"
            );
        }
        assert_eq!(obj.len(), 20, "{line}");
        assert!(v["duration"].is_f64(), "{line}");
        if i < 4 {
            assert_eq!(v["user_agent"], AGENT);
            assert_eq!(v["referer"], "http://ref.test/page");
            assert_eq!(v["version"], "HTTP/1.1");
        } else if i == 5 {
            assert!(
                v["user_agent"].is_null() && v["version"].is_null(),
                "{line}"
            );
        }
    }
    assert_eq!(values[1]["cache"], "hit");
    assert_eq!(values[3]["rule"], "no-blocked");
    assert_eq!(values[5]["method"], "SOCKS5-CONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_lookups_are_timed_and_failures_counted_by_kind() {
    let origin = Origin::fixed("x").await;
    let dns = Dns::start(&[("known.test", IpAddr::V4(Ipv4Addr::LOCALHOST))], 60).await;
    let gh = Gatehouse::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n{}{POLICY}",
        http_listener("http", ""),
        dns.config()
    ));
    let proxy = gh.proxy_url("http");
    let port = origin.addr.port();
    let (code, _, err) = curl(&["-x", &proxy, &format!("http://known.test:{port}/")]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = curl(&[
        "-x",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://missing.test/",
    ])
    .await;
    assert_eq!((code, out.as_slice()), (0, b"502".as_slice()));
    let admin = gh.addr("admin");
    assert_eq!(
        metric(admin, "gatehouse_dns_lookup_seconds_count").await,
        Some(2.0)
    );
    let text = metrics_text(admin).await;
    assert!(
        text.contains("gatehouse_dns_failures_total{kind=\"nxdomain\"} 1\n"),
        "{text}"
    );
    // Names from [dns.hosts], localhost and literals are not lookups.
    let (code, _, err) = curl(&["-x", &proxy, &origin.url("/")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        metric(admin, "gatehouse_dns_lookup_seconds_count").await,
        Some(2.0)
    );
}

/// Every metric name in the Grafana dashboard is one the README documents, so the dashboard
/// cannot drift from the metrics.
#[test]
fn grafana_dashboard_uses_only_documented_metrics() {
    let text = include_str!("../contrib/grafana/gatehouse.json");
    let dash: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    assert!(dash["title"].is_string());
    let readme = include_str!("../README.md");
    let documented: std::collections::HashSet<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `gatehouse_"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let name = regex::Regex::new(r"gatehouse_([a-z0-9_]+)").expect("regex");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = 0;
    for panel in panels {
        assert!(
            panel["title"].is_string() && panel["gridPos"].is_object(),
            "{panel}"
        );
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            exprs += 1;
            let mut found = false;
            for m in name.captures_iter(expr) {
                found = true;
                let full = &m[1];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| full.strip_suffix(s))
                    .filter(|b| documented.contains(b))
                    .unwrap_or(full);
                assert!(
                    documented.contains(base),
                    "gatehouse_{full} in panel {} is not in the README metrics table",
                    panel["title"]
                );
            }
            assert!(found, "no gatehouse metric in {expr}");
        }
    }
    assert!(exprs >= 14, "{exprs} queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bytes_of_tcp_listeners_and_upgrades_and_guard_denials() {
    // An origin that switches to an echo protocol after a 101.
    let origin = raw_origin(|mut s: tokio::net::TcpStream| async move {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            head.push(b[0]);
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n\r\n")
            .await;
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await;
    let echo = tcp_echo().await;
    let gh = Gatehouse::start(&format!(
        "{}[[listeners]]\nname = \"tcp\"\nkind = \"tcp\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{echo}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[policy.rules]]\nname = \"origins\"\naction = \"allow\"\ndest_addrs = [\"127.0.0.1/32\"]\n",
        http_listener("http", "upgrade_protocols = [\"echo\"]"),
    ));

    let mut s = tokio::net::TcpStream::connect(gh.addr("http"))
        .await
        .expect("connect");
    let req = format!(
        "GET http://{origin}/ws HTTP/1.1\r\nHost: {origin}\r\nUpgrade: echo/1\r\nConnection: Upgrade\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    assert!(read_head(&mut s).await);
    roundtrip(&mut s).await;
    drop(s);
    gh.wait_log(" GET ");

    let mut s = tokio::net::TcpStream::connect(gh.addr("tcp"))
        .await
        .expect("connect");
    roundtrip(&mut s).await;
    drop(s);
    gh.wait_log(" TCP ");

    // The guard refuses a loopback address no rule allows.
    let (code, out, _) = curl(&[
        "-x",
        &gh.proxy_url("http"),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.2:9/",
    ])
    .await;
    assert_eq!((code, out.as_slice()), (0, b"403".as_slice()));
    assert!(gh.wait_log("127.0.0.2").ends_with(" guard"));

    let text = metrics_text(gh.addr("admin")).await;
    for want in [
        "gatehouse_relay_bytes_total{kind=\"upgrade\",direction=\"in\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"upgrade\",direction=\"out\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"tcp\",direction=\"in\"} 5\n",
        "gatehouse_relay_bytes_total{kind=\"tcp\",direction=\"out\"} 5\n",
        "gatehouse_policy_denials_total{rule=\"guard\"} 1\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
