//! Bandwidth limits on real loopback sockets, measured in real time: the relay with
//! throttles, alone and with two streams sharing one client's bucket.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use gatehouse::limits::{LimitSet, Limits, LimitsConfig, Throttle};
use gatehouse::relay::{relay_limited, RelayEnd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KIB: u64 = 1024;

/// A connected loopback pair.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
    (a.expect("connect"), b.expect("accept").0)
}

/// client <-> [relay] <-> server over two loopback pairs. Sends `up` bytes from the client
/// and `down` bytes from the server at once; returns how long each direction took.
async fn transfer(
    up_bytes: usize,
    down_bytes: usize,
    up: Option<Throttle>,
    down: Option<Throttle>,
) -> (Duration, Duration) {
    let (client, relay_a) = pair().await;
    let (relay_b, server) = pair().await;
    let relay = tokio::spawn(relay_limited(
        relay_a,
        relay_b,
        Duration::from_secs(30),
        up,
        down,
    ));
    let start = Instant::now();
    let one_way = |mut from: TcpStream, n: usize| async move {
        let (mut r, mut w) = from.split();
        let send = async {
            let chunk = vec![7u8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                w.write_all(&chunk[..k]).await.expect("write");
                left -= k;
            }
            w.shutdown().await.expect("shutdown");
        };
        let recv = async {
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            let mut done_at = None;
            loop {
                let k = r.read(&mut buf).await.expect("read");
                if k == 0 {
                    break;
                }
                got += k;
                done_at = Some(Instant::now());
            }
            (got, done_at)
        };
        let ((), got) = tokio::join!(send, recv);
        got
    };
    let (at_server, at_client) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(one_way(client, up_bytes), one_way(server, down_bytes))
    })
    .await
    .expect("transfer within 20s");
    assert_eq!(at_server.0, down_bytes, "client received everything");
    assert_eq!(at_client.0, up_bytes, "server received everything");
    let (end, stats) = relay.await.expect("join");
    assert!(matches!(end, RelayEnd::Done), "{end:?}");
    assert_eq!(stats.a_to_b, up_bytes as u64);
    assert_eq!(stats.b_to_a, down_bytes as u64);
    let took = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| t - start);
    (took(at_client.1), took(at_server.1))
}

fn assert_near(what: &str, got: Duration, want: Duration) {
    let (lo, hi) = (want.mul_f64(0.75), want.mul_f64(1.25));
    eprintln!("{what}: {got:?} (expected {want:?})");
    assert!(
        got >= lo && got <= hi,
        "{what}: took {got:?}, expected {want:?} +-25%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_limited_each_way() {
    // 1.5 MiB up at 512 KiB/s and 0.75 MiB down at 256 KiB/s, at the same time: about 3 s
    // each (less the first burst of 1/8 s).
    let (up, down) = transfer(
        1536 * KIB as usize,
        768 * KIB as usize,
        Some(Throttle::new(512 * KIB)),
        Some(Throttle::new(256 * KIB)),
    )
    .await;
    assert_near("upload", up, Duration::from_millis(2875));
    assert_near("download", down, Duration::from_millis(2875));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_one_client_share_its_bandwidth() {
    let limits = Limits::new(&LimitsConfig {
        per_client: LimitSet {
            bandwidth_down: Some(512 * KIB),
            ..LimitSet::default()
        },
        ..LimitsConfig::default()
    });
    let client: IpAddr = "192.0.2.7".parse().expect("ip");
    // Two streams of 768 KiB each: 1.5 MiB through one 512 KiB/s bucket, about 3 s - not
    // the 1.5 s two separate buckets would take.
    let a = limits.throttles(client, None);
    let b = limits.throttles(client, None);
    let (ta, tb) = tokio::join!(
        transfer(0, 768 * KIB as usize, a.up, a.down),
        transfer(0, 768 * KIB as usize, b.up, b.down),
    );
    let slowest = ta.1.max(tb.1);
    assert_near("both streams", slowest, Duration::from_millis(2875));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_relay_is_not_slowed() {
    let (up, down) = transfer(4 << 20, 4 << 20, None, None).await;
    assert!(
        up < Duration::from_secs(2) && down < Duration::from_secs(2),
        "{up:?} {down:?}"
    );
}
