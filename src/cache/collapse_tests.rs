use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::cache::testutil::resp;

fn shared(head: crate::http::codec::ResponseHead, vary: SecondaryKey) -> SharedHead {
    let t0 = crate::cache::testutil::t(0);
    SharedHead {
        head,
        vary,
        request_time: t0,
        response_time: t0,
    }
}

async fn drain(mut f: Follower) -> (Option<u16>, Vec<u8>, Event) {
    let mut status = None;
    let mut body = Vec::new();
    loop {
        match f.next().await {
            Event::Head(h) => status = Some(h.head.status),
            Event::Chunk(c) => body.extend_from_slice(&c),
            other => return (status, body, other),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_misses_make_one_fetch() {
    const N: usize = 300;
    let flights = Flights::new(1 << 20);
    let fetches = Arc::new(AtomicUsize::new(0));
    let joined = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for _ in 0..N {
        let (flights, fetches, joined) = (flights.clone(), fetches.clone(), joined.clone());
        tasks.push(tokio::spawn(async move {
            match flights.join("http://a.test/popular") {
                Join::Leader(mut leader) => {
                    // Every task has joined before the "upstream" answers.
                    joined.wait().await;
                    fetches.fetch_add(1, Ordering::SeqCst);
                    leader.publish_head(shared(resp(200, &[("Content-Length", "9")]), vec![]));
                    for part in [&b"abc"[..], b"def", b"ghi"] {
                        assert!(leader.push(Bytes::copy_from_slice(part)));
                        tokio::task::yield_now().await;
                    }
                    leader.finish();
                    (Some(200), b"abcdefghi".to_vec(), Event::End)
                }
                Join::Follower(f) => {
                    joined.wait().await;
                    drain(f).await
                }
            }
        }));
    }
    let deadline = Duration::from_secs(20);
    for t in tasks {
        let (status, body, end) = tokio::time::timeout(deadline, t)
            .await
            .expect("in time")
            .expect("task");
        assert_eq!(status, Some(200));
        assert_eq!(body, b"abcdefghi");
        assert_eq!(end, Event::End);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(flights.in_flight(), 0);
}

#[tokio::test]
async fn late_joiner_replays_from_the_start() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(mut leader) = flights.join("k") else {
        panic!("first is leader")
    };
    leader.publish_head(shared(resp(200, &[]), vec![]));
    leader.push(Bytes::from_static(b"early "));
    let Join::Follower(f) = flights.join("k") else {
        panic!("second follows")
    };
    leader.push(Bytes::from_static(b"late"));
    leader.finish();
    let (_, body, end) = drain(f).await;
    assert_eq!(body, b"early late");
    assert_eq!(end, Event::End);
}

#[tokio::test]
async fn not_shared_sends_followers_upstream() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(leader) = flights.join("k") else {
        panic!("leader")
    };
    let Join::Follower(mut f) = flights.join("k") else {
        panic!("follower")
    };
    leader.not_shared();
    assert_eq!(f.next().await, Event::GoUpstream);
    assert!(
        matches!(flights.join("k"), Join::Leader(_)),
        "a new request starts a new flight"
    );
}

#[tokio::test]
async fn leader_dropped_before_head_sends_followers_upstream() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(leader) = flights.join("k") else {
        panic!("leader")
    };
    let Join::Follower(mut f) = flights.join("k") else {
        panic!("follower")
    };
    let waiter = tokio::spawn(async move { f.next().await });
    tokio::task::yield_now().await;
    drop(leader);
    assert_eq!(waiter.await.expect("task"), Event::GoUpstream);
    assert_eq!(flights.in_flight(), 0);
}

#[tokio::test]
async fn leader_dropped_mid_body_aborts_followers() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(mut leader) = flights.join("k") else {
        panic!("leader")
    };
    let Join::Follower(f) = flights.join("k") else {
        panic!("follower")
    };
    leader.publish_head(shared(resp(200, &[]), vec![]));
    leader.push(Bytes::from_static(b"part"));
    let (status, body, end) = {
        let mut f = f;
        assert!(matches!(f.next().await, Event::Head(_)));
        drop(leader);
        let (_, body, end) = drain(f).await;
        (Some(200), body, end)
    };
    assert_eq!(
        (status, &body[..], end),
        (Some(200), &b"part"[..], Event::Aborted)
    );
}

#[tokio::test]
async fn buffer_bound_abandons_the_flight() {
    let flights = Flights::new(10);
    let Join::Leader(mut leader) = flights.join("k") else {
        panic!("leader")
    };
    let Join::Follower(mut started) = flights.join("k") else {
        panic!("follower")
    };
    let Join::Follower(mut waiting) = flights.join("k") else {
        panic!("follower")
    };
    leader.publish_head(shared(resp(200, &[]), vec![]));
    assert!(matches!(started.next().await, Event::Head(_)));
    assert!(leader.push(Bytes::from_static(b"12345")));
    assert!(!leader.push(Bytes::from_static(b"678901")));
    assert!(!leader.push(Bytes::from_static(b"x")));
    let (_, body, end) = drain(started).await;
    assert_eq!(body, b"12345");
    assert_eq!(end, Event::Aborted);
    // One that had sent nothing yet can still make its own request.
    assert_eq!(waiting.next().await, Event::GoUpstream);
    assert_eq!(flights.in_flight(), 0);
}

#[tokio::test]
async fn follower_sees_the_leaders_vary_key() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(mut leader) = flights.join("k") else {
        panic!("leader")
    };
    let Join::Follower(mut f) = flights.join("k") else {
        panic!("follower")
    };
    let vary = vec![("accept".to_string(), Some("text/html".to_string()))];
    leader.publish_head(shared(resp(200, &[("Vary", "Accept")]), vary.clone()));
    match f.next().await {
        Event::Head(h) => assert_eq!(h.vary, vary),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn shared_head_is_the_stored_head_and_checks_vary() {
    use crate::cache::testutil::{req, t};
    let leader_req = req("GET", "http://a.test/", &[("Accept-Language", "en")]);
    let upstream = resp(
        200,
        &[
            ("Vary", "Accept-Language"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive"),
        ],
    );
    let shared = SharedHead::new(&leader_req, &upstream, t(0), t(0)).expect("shareable");
    assert!(!shared.head.headers.contains("transfer-encoding"));
    assert!(!shared.head.headers.contains("connection"));
    assert!(shared.head.headers.contains("date"));
    assert!(shared.accepts(&req("GET", "http://a.test/", &[("Accept-Language", "EN")])));
    assert!(!shared.accepts(&req("GET", "http://a.test/", &[("Accept-Language", "de")])));
    assert!(SharedHead::new(&leader_req, &resp(200, &[("Vary", "*")]), t(0), t(0)).is_none());
}

#[tokio::test]
async fn a_forgotten_flight_takes_no_new_followers() {
    let flights = Flights::new(1 << 20);
    let Join::Leader(mut leader) = flights.join("k") else {
        panic!("first is the leader")
    };
    let Join::Follower(early) = flights.join("k") else {
        panic!("second follows")
    };
    flights.forget("k");
    let Join::Leader(second) = flights.join("k") else {
        panic!("after forget, a new leader")
    };
    leader.publish_head(shared(resp(200, &[]), vec![]));
    assert!(leader.push(Bytes::from_static(b"ab")));
    leader.finish();
    // The early follower still gets the whole response; the new flight is untouched.
    let (status, body, end) = drain(early).await;
    assert_eq!(
        (status, body.as_slice(), end),
        (Some(200), &b"ab"[..], Event::End)
    );
    assert_eq!(flights.in_flight(), 1);
    second.not_shared();
    assert_eq!(flights.in_flight(), 0);
}
