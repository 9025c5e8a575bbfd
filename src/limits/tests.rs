use std::time::Duration;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn limits(per_client: LimitSet, per_user: LimitSet) -> Limits {
    Limits::new(&LimitsConfig {
        per_client,
        per_user,
        max_tracked: 64,
    })
}

#[test]
fn nothing_configured_limits_nothing() {
    let l = limits(LimitSet::default(), LimitSet::default());
    assert!(l.is_empty());
    let guards: Vec<ConnGuard> = (0..1000)
        .map(|_| l.connection(ip("192.0.2.1")).expect("unlimited"))
        .collect();
    assert_eq!(guards.len(), 1000);
    for _ in 0..1000 {
        l.request(ip("192.0.2.1"), Some("ann")).expect("unlimited");
    }
    let t = l.throttles(ip("192.0.2.1"), Some("ann"));
    assert!(t.up.is_none() && t.down.is_none());
    assert_eq!(l.tracked(), 0);
}

#[test]
fn concurrent_connections_per_client_are_counted_and_released() {
    let l = limits(
        LimitSet {
            max_connections: Some(2),
            ..LimitSet::default()
        },
        LimitSet::default(),
    );
    let a = l.connection(ip("192.0.2.1")).expect("first");
    let _b = l.connection(ip("192.0.2.1")).expect("second");
    assert_eq!(
        l.connection(ip("192.0.2.1")).expect_err("third"),
        LimitError::Connections(Scope::Client, 2)
    );
    // Mapped IPv4 is the same client; another address is not.
    assert!(l.connection(ip("::ffff:192.0.2.1")).is_err());
    let _c = l.connection(ip("192.0.2.2")).expect("other client");
    drop(a);
    let _d = l.connection(ip("192.0.2.1")).expect("a slot came back");
    assert!(l.connection(ip("192.0.2.1")).is_err());
    assert_eq!(l.tracked(), 2);
}

#[test]
fn ipv6_clients_count_per_64() {
    let l = limits(
        LimitSet {
            max_connections: Some(1),
            ..LimitSet::default()
        },
        LimitSet::default(),
    );
    let _a = l.connection(ip("2001:db8:1:2::1")).expect("first");
    assert!(l.connection(ip("2001:db8:1:2:ffff::9")).is_err());
    let _b = l.connection(ip("2001:db8:1:3::1")).expect("another /64");
}

#[test]
fn user_connections_and_entries_go_away_with_the_last_guard() {
    let l = limits(
        LimitSet::default(),
        LimitSet {
            max_connections: Some(1),
            ..LimitSet::default()
        },
    );
    let g = l.user_connection("ann").expect("first");
    assert_eq!(
        l.user_connection("ann").expect_err("second"),
        LimitError::Connections(Scope::User, 1)
    );
    let _bob = l.user_connection("bob").expect("other user");
    assert_eq!(l.tracked(), 2);
    drop(g);
    assert_eq!(l.tracked(), 1);
    let _again = l.user_connection("ann").expect("released");
}

#[test]
fn connection_rate_is_a_burst_then_refused() {
    let l = limits(
        LimitSet {
            connections_per_second: NonZeroU32::new(5),
            ..LimitSet::default()
        },
        LimitSet::default(),
    );
    for i in 0..5 {
        let _g = l
            .connection(ip("198.51.100.7"))
            .unwrap_or_else(|e| panic!("{i}: {e}"));
    }
    let err = l
        .connection(ip("198.51.100.7"))
        .expect_err("sixth in the same second");
    assert_eq!(err, LimitError::ConnectionRate(Scope::Client, 5));
    assert_eq!(err.kind(), "connection_rate_limit");
    let _other = l.connection(ip("198.51.100.8")).expect("other client");
}

#[test]
fn a_refused_rate_check_gives_the_slot_back() {
    let l = limits(
        LimitSet {
            max_connections: Some(10),
            connections_per_second: NonZeroU32::new(1),
            ..LimitSet::default()
        },
        LimitSet::default(),
    );
    let _g = l.connection(ip("192.0.2.9")).expect("first");
    assert!(matches!(
        l.connection(ip("192.0.2.9")),
        Err(LimitError::ConnectionRate(..))
    ));
    // Only the first connection holds a slot.
    assert_eq!(l.client.counts.len(), 1);
    let Some(map) = lock(&l.client.counts.map) else {
        panic!("lock")
    };
    assert_eq!(map.get(&ip("192.0.2.9")), Some(&1));
}

#[test]
fn requests_per_second_per_client_and_per_user() {
    let l = limits(
        LimitSet {
            requests_per_second: NonZeroU32::new(3),
            ..LimitSet::default()
        },
        LimitSet {
            requests_per_second: NonZeroU32::new(4),
            ..LimitSet::default()
        },
    );
    for _ in 0..3 {
        l.request(ip("192.0.2.1"), Some("ann")).expect("within");
    }
    assert_eq!(
        l.request(ip("192.0.2.1"), Some("ann")),
        Err(LimitError::RequestRate(Scope::Client, 3))
    );
    // Ann from another address: her fourth request is the user limit's last one.
    l.request(ip("192.0.2.2"), Some("ann"))
        .expect("fourth for ann");
    assert_eq!(
        l.request(ip("192.0.2.3"), Some("ann")),
        Err(LimitError::RequestRate(Scope::User, 4))
    );
    l.request(ip("192.0.2.3"), None)
        .expect("anonymous from there");
}

#[test]
fn rate_state_is_bounded_and_fails_open_when_full() {
    let l = limits(
        LimitSet {
            requests_per_second: NonZeroU32::new(1),
            ..LimitSet::default()
        },
        LimitSet::default(),
    );
    for i in 0..10_000u32 {
        let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let _ = l.request(a, None);
        assert!(l.tracked() <= 64, "tracked {}", l.tracked());
    }
}

#[tokio::test(start_paused = true)]
async fn throttles_share_a_bucket_per_client_and_stay_bounded() {
    let l = limits(
        LimitSet {
            bandwidth_down: Some(100_000),
            ..LimitSet::default()
        },
        LimitSet {
            bandwidth_down: Some(10_000),
            bandwidth_up: Some(5_000),
            ..LimitSet::default()
        },
    );
    let anon = l.throttles(ip("192.0.2.1"), None);
    assert!(anon.up.is_none(), "no client upload limit, no user");
    let down = anon.down.expect("client download limit");
    assert_eq!(down.max_chunk(), 12_500);
    let ann = l.throttles(ip("192.0.2.1"), Some("ann"));
    assert_eq!(ann.up.expect("user upload").max_chunk(), 1460);
    assert_eq!(ann.down.expect("both").max_chunk(), 1460);
    // The same client's streams share one bucket: spending on one slows the other.
    let other = l.throttles(ip("192.0.2.1"), None).down.expect("down");
    let start = tokio::time::Instant::now();
    down.consume(12_500).await;
    other.consume(50_000).await;
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    // Many clients: the map keeps at most max_tracked buckets.
    drop((down, other));
    tokio::time::advance(Duration::from_secs(5)).await;
    for i in 0..1000u32 {
        let a = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        let t = l.throttles(a, None).down.expect("down");
        t.consume(10).await;
    }
    assert!(l.tracked() <= 64 * 3, "tracked {}", l.tracked());
}
