//! End-to-end: the disk tier across restarts. A graceful stop keeps what was stored; a
//! `kill -9` in the middle of writes, or damaged files, may cost a miss but never serve a
//! truncated or wrong body.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const BIG: usize = 4 << 20;

fn disk_config(dir: &Path) -> String {
    format!(
        "{}[cache]\nenabled = true\nmemory_size = \"64MiB\"\ndisk_dir = \"{}\"\n\
         disk_size = \"1GiB\"\nmax_object_size = \"8MiB\"\n",
        http_listener("http", "cache = true"),
        dir.display()
    )
}

/// A stable seed per path, so every URL has its own body.
fn seed(path: &str) -> u32 {
    path.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    })
}

/// An origin answering every path with a fresh body of `len` bytes unique to the path.
async fn pattern_origin(len: usize) -> Origin {
    Origin::start(Arc::new(move |s: &Seen| {
        response(
            200,
            &[("Cache-Control", "max-age=3600")],
            pattern(seed(&s.uri), len),
        )
    }))
    .await
}

fn stop(mut gh: Gatehouse) {
    gh.signal("TERM");
    let status = gh
        .wait_exit(Duration::from_secs(30))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn disk_tier_survives_a_restart() {
    let origin = pattern_origin(100 * 1024).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = disk_config(dir.path());
    let url = origin.url("/kept");
    let gh = Gatehouse::start(&cfg);
    let client = proxied_client(&gh, "http");
    fetch(&client, "GET", &url, &[]).await;
    gh.wait_log(&url);
    drop(client);
    stop(gh);

    let gh = Gatehouse::start(&cfg);
    let client = proxied_client(&gh, "http");
    let r = fetch(&client, "GET", &url, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == pattern(seed("/kept"), 100 * 1024), "body differs");
    assert!(r.header("age").is_some(), "a hit carries Age");
    let line = gh.wait_log(&url);
    assert_eq!(log_field(&line, 12), "hit", "{line}");
    assert_eq!(origin.count("/kept"), 1, "the restarted cache did not ask");
}

/// What a client got for one URL before the kill.
enum Outcome {
    Done,
    Failed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_never_serves_a_torn_body() {
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 6;
    let origin = pattern_origin(BIG).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = disk_config(dir.path());
    let mut paths = Vec::new();
    let mut torn_writes = 0;
    for round in 0..ROUNDS {
        let mut gh = Gatehouse::start(&cfg);
        let client = proxied_client(&gh, "http");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        let round_paths: Vec<String> = (0..PER_ROUND)
            .map(|i| format!("/big/{round}/{i}"))
            .collect();
        for path in &round_paths {
            let (client, url, tx) = (client.clone(), origin.url(path), tx.clone());
            tasks.spawn(async move {
                let done = match client.get(&url).send().await {
                    Ok(r) => r.bytes().await.map(|b| b.len() == BIG).unwrap_or(false),
                    Err(_) => false,
                };
                let _ = tx.send(if done { Outcome::Done } else { Outcome::Failed });
            });
        }
        // Kill at a different moment each round: once every transfer is under way (round
        // 0), just after the first client has its whole body and the store begins (1),
        // after half of them (2).
        let deadline = Instant::now() + Duration::from_secs(60);
        let wanted_done = [0, 1, PER_ROUND / 2][round % 3];
        let mut done = 0;
        if wanted_done == 0 {
            while round_paths.iter().any(|p| origin.count(p) == 0) {
                assert!(Instant::now() < deadline, "origin never asked");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        while done < wanted_done {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(Outcome::Done)) => done += 1,
                Ok(Some(Outcome::Failed)) => panic!("a transfer failed before the kill"),
                Ok(None) | Err(_) => panic!("transfers did not finish"),
            }
        }
        gh.signal("KILL");
        gh.wait_exit(Duration::from_secs(10)).expect("killed");
        tasks.abort_all();
        // A leftover `<id>.tmp` shows the kill landed inside a write (reported, not required).
        torn_writes += object_files(dir.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
            .count();
        paths.extend(round_paths);
    }

    // Each later start recovered the previous one's files; now read everything back.
    let gh = Gatehouse::start(&cfg);
    let client = proxied_client(&gh, "http");
    let (mut hits, mut misses) = (0, 0);
    for path in &paths {
        let before = origin.count(path);
        let url = origin.url(path);
        let r = fetch(&client, "GET", &url, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), BIG, "{path}: truncated body");
        assert!(r.body == pattern(seed(path), BIG), "{path}: wrong body");
        if origin.count(path) == before {
            assert!(r.header("age").is_some(), "{path}: a hit carries Age");
            hits += 1;
        } else {
            misses += 1;
        }
        gh.wait_log(&url);
    }
    eprintln!(
        "after kill -9 ({torn_writes} partial .tmp files left): \
         {hits} clean hits, {misses} clean misses"
    );
}

/// Every stored object file (the index database excluded).
fn object_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_none_or(|x| x != "redb") {
                out.push(p);
            }
        }
    }
    out
}

/// Starts gatehouse, fetches every path (checking the body and that the origin has now
/// answered it `asked` times), then stops it gracefully.
async fn get_all_and_stop(cfg: &str, origin: &Origin, paths: &[&str], len: usize, asked: usize) {
    let gh = Gatehouse::start(cfg);
    let client = proxied_client(&gh, "http");
    for path in paths {
        let url = origin.url(path);
        let r = fetch(&client, "GET", &url, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.body == pattern(seed(path), len),
            "{path}: damaged body served"
        );
        assert_eq!(origin.count(path), asked, "{path}");
        gh.wait_log(&url);
    }
    drop(client);
    stop(gh);
}

#[tokio::test]
async fn damaged_object_files_are_misses() {
    const LEN: usize = 256 * 1024;
    let origin = pattern_origin(LEN).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = disk_config(dir.path());
    let paths = ["/d/1", "/d/2"];
    get_all_and_stop(&cfg, &origin, &paths, LEN, 1).await;

    // Same length, one byte changed in the middle of the body: the checksum catches it.
    let files = object_files(dir.path());
    assert!(
        !files.is_empty(),
        "no object files under {}",
        dir.path().display()
    );
    for f in &files {
        let mut bytes = std::fs::read(f).expect("read object");
        if bytes.len() > LEN {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(f, bytes).expect("write object");
        }
    }
    get_all_and_stop(&cfg, &origin, &paths, LEN, 2).await; // each damaged file: a miss

    // The tail lost: the length check catches it.
    for f in object_files(dir.path()) {
        let len = std::fs::metadata(&f).expect("stat").len();
        if len > LEN as u64 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .expect("open object");
            file.set_len(len / 2).expect("truncate");
        }
    }
    get_all_and_stop(&cfg, &origin, &paths, LEN, 3).await;
}

/// Disk tier only (no memory tier): every hit is read from the disk tier.
fn disk_only_config(dir: &Path) -> String {
    format!(
        "{}[cache]\nenabled = true\nmemory_size = \"0\"\ndisk_dir = \"{}\"\n\
         disk_size = \"1GiB\"\nmax_object_size = \"8MiB\"\n",
        http_listener("http", "cache = true"),
        dir.display()
    )
}

/// Waits until every object file last changed more than the disk tier's settle time (2 s)
/// ago: from then on a good check of a large object is remembered and its body is sent
/// from the file.
async fn until_settled(dir: &Path) {
    let files = object_files(dir);
    assert!(!files.is_empty(), "no object file");
    for f in files {
        let changed = std::fs::metadata(&f)
            .expect("stat")
            .modified()
            .expect("mtime");
        let ready = changed + Duration::from_millis(2100);
        if let Ok(wait) = ready.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

async fn curl_proxied(gh: &Gatehouse, args: &[&str]) -> (String, Vec<u8>) {
    let proxy = gh.proxy_url("http");
    let mut all = vec!["-x", proxy.as_str(), "-D", "/dev/stderr"];
    all.extend_from_slice(args);
    let (code, body, head) = curl(&all).await;
    assert_eq!(code, 0, "curl {args:?}: {head}");
    (head, body)
}

/// Large disk-tier hits leave the body in the object file and send it with `sendfile(2)`:
/// full, range and HEAD answers carry the right bytes, clients that leave mid-body cost
/// nothing, and an object damaged in place after its check is checked again, never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_disk_hits_are_sent_from_the_file() {
    const LEN: usize = (1 << 20) + 123;
    let origin = pattern_origin(LEN).await;
    let dir = tempfile::tempdir().expect("tmp");
    let gh = Gatehouse::start(&disk_only_config(dir.path()));
    let url = origin.url("/big");
    let want = pattern(seed("/big"), LEN);
    let (_, body) = curl_proxied(&gh, &[&url]).await;
    assert!(body == want, "miss body");
    gh.wait_log(&url);
    until_settled(dir.path()).await;
    // The first hit checks the whole object and remembers it; the later ones use the file.
    for _ in 0..3 {
        let (head, body) = curl_proxied(&gh, &[&url]).await;
        assert!(head.contains("hit"), "{head}");
        assert!(body == want, "full hit body differs");
    }
    let (head, body) = curl_proxied(&gh, &["-r", "1000-500999", &url]).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(head.contains("bytes 1000-500999/1048699"), "{head}");
    assert!(body == want[1000..501_000], "range body differs");
    let (head, body) = curl_proxied(&gh, &["-r", "-77", &url]).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(body == want[LEN - 77..], "suffix range body differs");
    let (head, body) = curl_proxied(&gh, &["-I", &url]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {LEN}")), "{head}");
    // -I prints the head on stdout too: nothing else came.
    assert!(body == head.as_bytes());
    assert_eq!(origin.count("/big"), 1);

    // Clients that go away mid-body: no descriptor kept, the next hit is whole.
    let fds = gh.open_fds();
    for _ in 0..20 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(gh.addr("http"))
            .await
            .expect("connect");
        let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut some = [0u8; 4096];
        let _ = s.read(&mut some).await.expect("read");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gh.open_fds() > fds {
        assert!(
            Instant::now() < deadline,
            "descriptors left: {} > {fds}",
            gh.open_fds()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = curl_proxied(&gh, &[&url]).await;
    assert!(body == want, "hit after aborted clients differs");

    // Damaged in place (same size) after its check: the identity changed, the object is
    // checked again, found bad, dropped and fetched again.
    for f in object_files(dir.path()) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open object");
        file.write_all_at(b"DAMAGED", 600_000).expect("damage");
    }
    let (_, body) = curl_proxied(&gh, &[&url]).await;
    assert!(body == want, "damaged body served");
    assert_eq!(origin.count("/big"), 2);
    stop(gh);
}

/// An HTTP/2 client (h2c on a reverse listener) cannot take `sendfile`: the large disk-tier
/// body is read into memory and sent through the HTTP/2 stream, bytes unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_disk_hits_to_http2_clients_are_copied() {
    const LEN: usize = 300_000;
    let origin = pattern_origin(LEN).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.http2]\nh2c = true\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         cache = true\n[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{}\"\n\
         [cache]\nenabled = true\nmemory_size = \"0\"\ndisk_dir = \"{}\"\ndisk_size = \"1GiB\"\n\
         max_object_size = \"8MiB\"\n",
        origin.addr,
        dir.path().display()
    );
    let gh = Gatehouse::start(&cfg);
    let port = gh.addr("rev").port();
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("http://app.test:{port}/h2big");
    let want = pattern(seed("/h2big"), LEN);
    let get = || async {
        let (code, out, err) = curl(&[
            "--http2-prior-knowledge",
            "--resolve",
            &resolve,
            "-D",
            "/dev/stderr",
            &url,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        (err, out)
    };
    let (_, body) = get().await;
    assert!(body == want, "miss body");
    gh.wait_log("/h2big");
    until_settled(dir.path()).await;
    for _ in 0..3 {
        let (head, body) = get().await;
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert!(head.contains("hit"), "{head}");
        assert!(body == want, "HTTP/2 hit body differs");
    }
    assert_eq!(origin.count("/h2big"), 1);
    stop(gh);
}
