//! Big cache hits, byte for byte: 1 MiB and 10 MiB objects served from the memory tier (its
//! sealed memory files), from the disk tier and from both, whole (curl, HTTP/1.1 and h2) and
//! as ranges, compared by SHA-256 with what the origin
//! sent; and a damaged disk object is never served, even after it was served intact once.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

#[derive(Clone, Copy, Debug)]
enum Tier {
    /// Large bodies in sealed memory files, sent with sendfile.
    Memory,
    Disk,
    /// Both: hits from the memory tier's memory files, and the disk tier writes its file
    /// from them.
    Both,
}

fn config(tier: Tier, dir: &Path) -> String {
    let tier = match tier {
        Tier::Memory => "memory_size = \"64MiB\"\n".to_string(),
        Tier::Disk => format!(
            "memory_size = \"0\"\ndisk_dir = \"{}\"\ndisk_size = \"1GiB\"\n",
            dir.display()
        ),
        Tier::Both => format!(
            "memory_size = \"64MiB\"\ndisk_dir = \"{}\"\ndisk_size = \"1GiB\"\n",
            dir.display()
        ),
    };
    format!(
        "{}[cache]\nenabled = true\n{tier}max_object_size = \"16MiB\"\n",
        http_listener("http", "cache = true"),
    )
}

fn seed(path: &str) -> u32 {
    path.bytes().fold(2_166_136_261u32, |h, b| {
        (h ^ b as u32).wrapping_mul(16_777_619)
    })
}

/// Every path gets its own body of `len` bytes.
async fn origin(len: usize) -> Origin {
    Origin::start(Arc::new(move |s: &Seen| {
        response(
            200,
            &[("Cache-Control", "max-age=3600")],
            pattern(seed(&s.uri), len),
        )
    }))
    .await
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// curl through the proxy: (status, headers as text, body).
async fn get(gh: &Gatehouse, url: &str, extra: &[&str], dir: &Path) -> (u16, String, Vec<u8>) {
    let heads = dir.join(format!("heads-{}", fastrand_name()));
    let proxy = gh.proxy_url("http");
    let mut args = vec!["--proxy", proxy.as_str(), "-D"];
    let heads_s = heads.display().to_string();
    args.push(&heads_s);
    args.extend_from_slice(extra);
    args.push(url);
    let (code, body, err) = curl(&args).await;
    assert_eq!(code, 0, "curl: {err}");
    let text = std::fs::read_to_string(&heads).expect("headers");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, text.to_ascii_lowercase(), body)
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Asks (HEAD, bounded in tries) until the entry is a hit: a disk write finishes after
/// the response that stored it.
async fn until_hit(gh: &Gatehouse, url: &str, dir: &Path) {
    for _ in 0..200 {
        let (_, heads, _) = get(gh, url, &["-I"], dir).await;
        if heads.contains("gatehouse; hit") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never became a hit");
}

async fn big_hits(tier: Tier, len: usize) {
    let o = origin(len).await;
    let dir = tempfile::tempdir().expect("tmp");
    let gh = Gatehouse::start(&config(tier, &dir.path().join("cache")));
    let path = format!("/big-{len}");
    let url = o.url(&path);
    let want = pattern(seed(&path), len);

    let (status, _, body) = get(&gh, &url, &[], dir.path()).await;
    assert_eq!(status, 200);
    assert_eq!(sha(&body), sha(&want), "{tier:?}: the miss");
    until_hit(&gh, &url, dir.path()).await;

    for round in 0..2 {
        let (status, heads, body) = get(&gh, &url, &[], dir.path()).await;
        assert_eq!(status, 200);
        assert!(heads.contains("gatehouse; hit"), "{tier:?}: {heads}");
        assert_eq!(body.len(), len, "{tier:?} round {round}");
        assert_eq!(sha(&body), sha(&want), "{tier:?} round {round}: whole body");
    }
    // Ranges: the first bytes, a middle run crossing 64 KiB boundaries, the tail.
    let mid = format!("{}-{}", len / 3, len / 3 + 300_000);
    for (range, first, last) in [
        ("0-99".to_string(), 0, 99),
        (mid, len / 3, len / 3 + 300_000),
        ("-1000".to_string(), len - 1000, len - 1),
    ] {
        let (status, heads, body) = get(&gh, &url, &["-r", &range], dir.path()).await;
        assert_eq!(status, 206, "{tier:?} {range}: {heads}");
        assert!(
            heads.contains(&format!("content-range: bytes {first}-{last}/{len}")),
            "{tier:?} {range}: {heads}"
        );
        assert_eq!(
            sha(&body),
            sha(&want[first..=last]),
            "{tier:?} range {range}"
        );
    }
    assert_eq!(o.count(&path), 1, "{tier:?}: every hit came from the cache");
    if let Tier::Both = tier {
        // The disk tier's object holds the whole body (read back from the memory file).
        let sizes: Vec<u64> = object_files(&dir.path().join("cache"))
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok().map(|m| m.len()))
            .collect();
        assert!(
            sizes.iter().any(|s| *s > len as u64),
            "a disk object with the body: {sizes:?}"
        );
    }
}

#[tokio::test]
async fn one_mib_from_both_tiers() {
    big_hits(Tier::Both, MIB).await;
}

/// An HTTP/2 client (curl, h2c) of a reverse route gets a 1 MiB memory-tier hit: the body
/// is read back from its memory file (no sendfile to an h2 stream), byte for byte.
#[tokio::test]
async fn one_mib_memory_hit_to_an_http2_client() {
    let o = origin(MIB).await;
    let dir = tempfile::tempdir().expect("tmp");
    let gh = Gatehouse::start(&format!(
        "[[listeners]]\nname = \"rev\"\nkind = \"reverse\"\nlisten = \"127.0.0.1:0\"\n\
         [listeners.http2]\nh2c = true\n\
         [[listeners.hosts]]\nnames = [\"app.test\"]\n[[listeners.hosts.routes]]\npool = \"p\"\n\
         cache = true\n[[pools]]\nname = \"p\"\n[[pools.servers]]\naddress = \"{}\"\n\
         [cache]\nenabled = true\nmemory_size = \"64MiB\"\nmax_object_size = \"16MiB\"\n",
        o.addr
    ));
    let url = format!("http://app.test:{}/h2big", gh.addr("rev").port());
    let resolve = format!("app.test:{}:127.0.0.1", gh.addr("rev").port());
    let want = pattern(seed("/h2big"), MIB);
    for round in 0..3 {
        let heads = dir.path().join(format!("h2-{round}"));
        let heads_s = heads.display().to_string();
        let (code, body, err) = curl(&[
            "--http2-prior-knowledge",
            "--resolve",
            &resolve,
            "-D",
            &heads_s,
            &url,
        ])
        .await;
        assert_eq!(code, 0, "curl: {err}");
        let text = std::fs::read_to_string(&heads)
            .expect("headers")
            .to_ascii_lowercase();
        assert!(text.starts_with("http/2 200"), "{text}");
        if round > 0 {
            assert!(text.contains("gatehouse; hit"), "round {round}: {text}");
        }
        assert_eq!(sha(&body), sha(&want), "round {round}");
    }
    assert_eq!(o.count("/h2big"), 1, "the hits came from the cache");
}

#[tokio::test]
async fn one_mib_from_memory() {
    big_hits(Tier::Memory, MIB).await;
}

#[tokio::test]
async fn ten_mib_from_memory() {
    big_hits(Tier::Memory, 10 * MIB).await;
}

#[tokio::test]
async fn one_mib_from_disk() {
    big_hits(Tier::Disk, MIB).await;
}

#[tokio::test]
async fn ten_mib_from_disk() {
    big_hits(Tier::Disk, 10 * MIB).await;
}

fn object_files(dir: &Path) -> Vec<PathBuf> {
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

/// A disk object served intact, then damaged in place (same length, one byte flipped in the
/// body): the next request must not get the damaged bytes; it goes to the origin.
#[tokio::test]
async fn a_damaged_disk_object_is_never_served_even_after_a_clean_hit() {
    let len = MIB;
    let o = origin(len).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cache = dir.path().join("cache");
    let gh = Gatehouse::start(&config(Tier::Disk, &cache));
    let path = "/damaged";
    let url = o.url(path);
    let want = pattern(seed(path), len);
    get(&gh, &url, &[], dir.path()).await;
    until_hit(&gh, &url, dir.path()).await;
    let (_, heads, body) = get(&gh, &url, &[], dir.path()).await;
    assert!(heads.contains("gatehouse; hit"), "{heads}");
    assert_eq!(sha(&body), sha(&want));

    let files = object_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).expect("read object");
    let at = bytes.len() - len / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&files[0], &bytes).expect("damage object");

    // The first request finds the damage and goes upstream (which stores the object again);
    // every answer, hit or not, is the origin's bytes.
    for (i, range) in [None, Some("0-99"), Some("-1000")].into_iter().enumerate() {
        let extra: Vec<&str> = range.map(|r| vec!["-r", r]).unwrap_or_default();
        let (status, heads, body) = get(&gh, &url, &extra, dir.path()).await;
        if i == 0 {
            assert!(!heads.contains("gatehouse; hit"), "{range:?}: {heads}");
        }
        let want = match range {
            None => &want[..],
            Some("0-99") => &want[..100],
            Some(_) => &want[len - 1000..],
        };
        // The origin answers a range with the whole body; the proxy passes that on.
        if status == 200 {
            assert_eq!(sha(&body), sha(&pattern(seed(path), len)), "{range:?}");
        } else {
            assert_eq!(status, 206);
            assert_eq!(sha(&body), sha(want), "{range:?}");
        }
    }
    assert!(
        o.count(path) >= 2,
        "the damaged object sent the request upstream"
    );
}
