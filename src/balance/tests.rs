use std::time::{Duration, Instant};

use super::*;

fn specs(weights: &[u32]) -> Vec<ServerSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| ServerSpec {
            name: format!("10.0.0.{}:80", i + 1),
            weight: *w,
        })
        .collect()
}

fn balancer(algo: Algorithm, weights: &[u32]) -> (Balancer, Instant) {
    let now = Instant::now();
    (
        Balancer::new(algo, &specs(weights), Settings::default(), 7, now),
        now,
    )
}

fn pick(b: &mut Balancer, now: Instant) -> usize {
    match b.pick(&Request::default(), now) {
        Pick::Server(i) => i,
        Pick::NoneEligible => panic!("no server"),
    }
}

fn counts(b: &mut Balancer, now: Instant, n: usize) -> Vec<usize> {
    let mut c = vec![0; b.len()];
    for _ in 0..n {
        c[pick(b, now)] += 1;
    }
    c
}

#[test]
fn smooth_round_robin_spreads_heavy_servers() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[5, 1, 1]);
    let seq: Vec<usize> = (0..7).map(|_| pick(&mut b, now)).collect();
    // nginx's documented sequence for weights 5,1,1: a a b a c a a.
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(counts(&mut b, now, 700), vec![500, 100, 100]);
}

#[test]
fn round_robin_alternates_equal_servers() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1]);
    let seq: Vec<usize> = (0..6).map(|_| pick(&mut b, now)).collect();
    assert_eq!(seq, vec![0, 1, 0, 1, 0, 1]);
}

#[test]
fn down_servers_are_skipped_and_none_eligible_unless_fail_open() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1, 1]);
    for _ in 0..2 {
        b.server_mut(1).active.observe(false, 2, 2);
    }
    assert!(!b.server(1).is_available(now));
    let c = counts(&mut b, now, 100);
    assert_eq!(c[1], 0);
    assert_eq!(c[0] + c[2], 100);

    for i in [0, 2] {
        b.server_mut(i).disabled = true;
    }
    assert_eq!(b.pick(&Request::default(), now), Pick::NoneEligible);
    let open = Request {
        fail_open: true,
        ..Request::default()
    };
    assert!(matches!(b.pick(&open, now), Pick::Server(_)));
}

#[test]
fn retries_exclude_servers_already_tried() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1, 1]);
    let req = Request {
        exclude: &[0, 1],
        ..Request::default()
    };
    for _ in 0..10 {
        assert_eq!(b.pick(&req, now), Pick::Server(2));
    }
    let all = Request {
        exclude: &[0, 1, 2],
        fail_open: true,
        ..Request::default()
    };
    assert_eq!(b.pick(&all, now), Pick::NoneEligible);
}

#[test]
fn sticky_preference_wins_while_eligible() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1, 1]);
    let req = Request {
        prefer: Some(2),
        ..Request::default()
    };
    for _ in 0..5 {
        assert_eq!(b.pick(&req, now), Pick::Server(2));
    }
    b.server_mut(2).disabled = true;
    assert_ne!(b.pick(&req, now), Pick::Server(2));
}

#[test]
fn least_requests_prefers_the_least_loaded_per_weight() {
    let (mut b, now) = balancer(Algorithm::LeastRequests, &[1, 1, 2]);
    // Ties rotate: with nothing in flight each server gets a turn.
    let first: Vec<usize> = (0..3).map(|_| pick(&mut b, now)).collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2]);
    // 2 in flight on server 0, 1 on server 1, 2 on server 2 (weight 2: load 1).
    b.started(0);
    b.started(0);
    b.started(1);
    b.started(2);
    b.started(2);
    let p = pick(&mut b, now);
    assert!(p == 1 || p == 2, "picked {p}");
    b.started(1);
    // Now 1 has 2 (load 2), 2 has 2 (load 1): server 2.
    assert_eq!(pick(&mut b, now), 2);
    b.finished(0, None, now);
    b.finished(0, None, now);
    assert_eq!(pick(&mut b, now), 0);
}

#[test]
fn p2c_ewma_avoids_a_slow_server() {
    let (mut b, now) = balancer(Algorithm::P2cEwma, &[1, 1, 1]);
    b.started(0);
    b.finished(0, Some(Duration::from_millis(200)), now);
    for i in [1, 2] {
        b.started(i);
        b.finished(i, Some(Duration::from_millis(2)), now);
    }
    let c = counts(&mut b, now, 1000);
    // The slow server wins no comparison: it is drawn only against a faster one.
    assert_eq!(c[0], 0);
    assert!(c[1] > 300 && c[2] > 300, "{c:?}");
    // Its cost fades while no sample comes, and the busy servers keep reporting theirs, so
    // later it is tried again.
    let later = now + Duration::from_secs(120);
    for i in [1, 2] {
        b.started(i);
        b.finished(i, Some(Duration::from_millis(2)), later);
    }
    let c = counts(&mut b, later, 1000);
    assert!(c[0] > 0, "{c:?}");
}

#[test]
fn p2c_peak_ewma_reacts_to_a_slow_sample_at_once() {
    let now = Instant::now();
    let mut s = ServerState::new(1, now);
    let decay = Duration::from_secs(10);
    s.start();
    s.finish(Some(Duration::from_millis(1)), now, decay);
    s.start();
    s.finish(Some(Duration::from_millis(50)), now, decay);
    let cost = s.ewma_cost(now, Duration::from_millis(1), decay);
    assert!((cost - 50e6).abs() < 1.0, "{cost}");
    // A fast sample 10 s later pulls it most of the way down (weight e^-1).
    let t = now + decay;
    s.start();
    s.finish(Some(Duration::from_millis(1)), t, decay);
    let cost = s.ewma_cost(t, Duration::from_millis(1), decay);
    let expected = 50e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp());
    assert!((cost - expected).abs() < 1.0, "{cost} vs {expected}");
}

#[test]
fn random_follows_weights() {
    let (mut b, now) = balancer(Algorithm::Random, &[3, 1]);
    let c = counts(&mut b, now, 4000);
    assert!(c[0] > 2700 && c[0] < 3300, "{c:?}");
}

fn hash_pick(b: &mut Balancer, key: &str, now: Instant) -> usize {
    let req = Request {
        key: Some(key.as_bytes()),
        ..Request::default()
    };
    match b.pick(&req, now) {
        Pick::Server(i) => i,
        Pick::NoneEligible => panic!("no server"),
    }
}

#[test]
fn hash_is_stable_and_follows_weights() {
    let hash = Algorithm::Hash {
        balance_factor: None,
    };
    let (mut b, now) = balancer(hash, &[1, 1, 2]);
    let keys: Vec<String> = (0..8000).map(|i| format!("192.0.2.{i}")).collect();
    let first: Vec<usize> = keys.iter().map(|k| hash_pick(&mut b, k, now)).collect();
    let again: Vec<usize> = keys.iter().map(|k| hash_pick(&mut b, k, now)).collect();
    assert_eq!(first, again);
    let mut c = [0usize; 3];
    for i in &first {
        c[*i] += 1;
    }
    // Shares within a few percent of 1/4, 1/4, 1/2.
    assert!(c[0] > 1600 && c[0] < 2400, "{c:?}");
    assert!(c[1] > 1600 && c[1] < 2400, "{c:?}");
    assert!(c[2] > 3400 && c[2] < 4600, "{c:?}");
    // A fresh balancer (another instance, a restart) maps keys the same way.
    let (mut other, _) = balancer(hash, &[1, 1, 2]);
    let theirs: Vec<usize> = keys.iter().map(|k| hash_pick(&mut other, k, now)).collect();
    assert_eq!(first, theirs);
}

#[test]
fn hash_adding_or_removing_a_server_moves_only_its_share() {
    let hash = Algorithm::Hash {
        balance_factor: None,
    };
    let now = Instant::now();
    let three = specs(&[1, 1, 1]);
    let four = specs(&[1, 1, 1, 1]);
    let mut b3 = Balancer::new(hash, &three, Settings::default(), 1, now);
    let mut b4 = Balancer::new(hash, &four, Settings::default(), 1, now);
    let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let mut moved = 0;
    for k in &keys {
        let a = hash_pick(&mut b3, k, now);
        let b = hash_pick(&mut b4, k, now);
        if a != b {
            // Every moved key moved to the new server, none between old ones.
            assert_eq!(b, 3, "key {k} moved from {a} to {b}");
            moved += 1;
        }
    }
    assert!(moved > 1_800 && moved < 3_200, "moved {moved} of 10000");

    // Removing server 1 (the remaining servers keep their names): only its keys move.
    let without: Vec<ServerSpec> = three
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, s)| s.clone())
        .collect();
    let mut b2 = Balancer::new(hash, &without, Settings::default(), 1, now);
    for k in &keys {
        let a = hash_pick(&mut b3, k, now);
        let b = hash_pick(&mut b2, k, now);
        let b_name = &without[b].name;
        if a != 1 {
            assert_eq!(
                &three[a].name, b_name,
                "key {k} moved off a surviving server"
            );
        }
    }
}

#[test]
fn hash_skips_unavailable_servers_to_the_next_on_the_ring() {
    let hash = Algorithm::Hash {
        balance_factor: None,
    };
    let (mut b, now) = balancer(hash, &[1, 1, 1]);
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let before: Vec<usize> = keys.iter().map(|k| hash_pick(&mut b, k, now)).collect();
    b.server_mut(0).disabled = true;
    for (k, was) in keys.iter().zip(&before) {
        let now_on = hash_pick(&mut b, k, now);
        assert_ne!(now_on, 0);
        if *was != 0 {
            assert_eq!(now_on, *was, "key {k} moved although its server is up");
        }
    }
}

#[test]
fn hash_bounded_load_spills_a_hot_key() {
    let hash = Algorithm::Hash {
        balance_factor: Some(125),
    };
    let (mut b, now) = balancer(hash, &[1, 1, 1, 1]);
    let home = hash_pick(&mut b, "hot", now);
    // Keep every request in flight: the hot key's home fills to its bound, then the
    // following requests go elsewhere, and no server exceeds the bound.
    let mut on = [0u64; 4];
    for _ in 0..40 {
        let i = hash_pick(&mut b, "hot", now);
        b.started(i);
        on[i] += 1;
    }
    assert!(on[home] < 40, "{on:?}");
    let bound = (40f64 * 1.25 / 4.0).ceil() as u64 + 1;
    assert!(on.iter().all(|n| *n <= bound), "{on:?} bound {bound}");
    // Without a hash key, the hash pool falls back to round-robin.
    assert!(matches!(b.pick(&Request::default(), now), Pick::Server(_)));
}

#[test]
fn active_health_needs_fall_failures_and_rise_successes() {
    let mut h = ActiveHealth::default();
    assert!(h.is_up());
    assert_eq!(h.observe(false, 2, 3), None);
    assert_eq!(h.observe(false, 2, 3), None);
    // A success in between resets the streak.
    assert_eq!(h.observe(true, 2, 3), None);
    assert_eq!(h.observe(false, 2, 3), None);
    assert_eq!(h.observe(false, 2, 3), None);
    assert_eq!(h.observe(false, 2, 3), Some(Transition::Down));
    assert!(!h.is_up());
    assert_eq!(h.observe(true, 2, 3), None);
    assert_eq!(h.observe(false, 2, 3), None);
    assert_eq!(h.observe(true, 2, 3), None);
    assert_eq!(h.observe(true, 2, 3), Some(Transition::Up));
    assert!(h.is_up());
}

#[test]
fn passive_ejection_backs_off_exponentially_and_readmits() {
    let s = PassiveSettings {
        max_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(35),
        on_5xx: true,
    };
    let t0 = Instant::now();
    let mut p = PassiveHealth::default();
    assert_eq!(p.failure(t0, &s), None);
    assert_eq!(p.failure(t0, &s), None);
    assert_eq!(p.failure(t0, &s), Some(Transition::Down));
    assert!(p.is_ejected(t0 + Duration::from_secs(9)));
    let t1 = t0 + Duration::from_secs(10);
    assert!(!p.is_ejected(t1));
    // Failing again right after readmission: twice as long.
    for _ in 0..2 {
        assert_eq!(p.failure(t1, &s), None);
    }
    assert_eq!(p.failure(t1, &s), Some(Transition::Down));
    assert!(p.is_ejected(t1 + Duration::from_secs(19)));
    let t2 = t1 + Duration::from_secs(20);
    assert!(!p.is_ejected(t2));
    // Third ejection would be 40 s: capped at 35.
    for _ in 0..3 {
        p.failure(t2, &s);
    }
    assert!(p.is_ejected(t2 + Duration::from_secs(34)));
    assert!(!p.is_ejected(t2 + Duration::from_secs(35)));
    // A success ends the series: the next ejection is back to the base length.
    let t3 = t2 + Duration::from_secs(35);
    assert_eq!(p.success(), Some(Transition::Up));
    for _ in 0..3 {
        p.failure(t3, &s);
    }
    assert!(!p.is_ejected(t3 + Duration::from_secs(10)));
    // max_failures 0: passive checks off.
    let off = PassiveSettings {
        max_failures: 0,
        ..s
    };
    let mut q = PassiveHealth::default();
    for _ in 0..100 {
        assert_eq!(q.failure(t0, &off), None);
    }
    assert!(!q.is_ejected(t0));
}

#[test]
fn ejected_servers_get_no_traffic_until_readmitted() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1]);
    let s = PassiveSettings::default();
    for _ in 0..s.max_failures {
        b.server_mut(0).passive.failure(now, &s);
    }
    assert_eq!(counts(&mut b, now, 10), vec![0, 10]);
    let later = now + s.base_ejection;
    assert_eq!(counts(&mut b, later, 10), vec![5, 5]);
}

#[test]
fn slow_start_ramps_a_returning_server() {
    let now = Instant::now();
    let settings = Settings {
        slow_start: Duration::from_secs(30),
        ..Settings::default()
    };
    let mut b = Balancer::new(Algorithm::RoundRobin, &specs(&[1, 1]), settings, 1, now);
    for _ in 0..2 {
        let t = b.server_mut(1).active.observe(false, 2, 2);
        b.server_mut(1).note(t, now);
    }
    for _ in 0..2 {
        let t = b.server_mut(1).active.observe(true, 2, 2);
        b.server_mut(1).note(t, now);
    }
    // Just back: about a tenth of its weight.
    let c = counts(&mut b, now, 1100);
    assert!(c[1] > 50 && c[1] < 150, "{c:?}");
    // Half-way: about 0.55 of its weight.
    let c = counts(&mut b, now + Duration::from_secs(15), 1550);
    assert!(c[1] > 450 && c[1] < 650, "{c:?}");
    // Done: equal shares.
    let c = counts(&mut b, now + Duration::from_secs(30), 1000);
    assert_eq!(c, vec![500, 500]);
}

#[test]
fn http_outcomes_count_for_passive_health() {
    let s = PassiveSettings {
        max_failures: 2,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(60),
        on_5xx: true,
    };
    assert!(PassiveHealth::verdict(HttpOutcome::Status(200), &s));
    assert!(PassiveHealth::verdict(HttpOutcome::Status(404), &s));
    assert!(!PassiveHealth::verdict(HttpOutcome::Status(502), &s));
    assert!(!PassiveHealth::verdict(HttpOutcome::Reset, &s));
    assert!(!PassiveHealth::verdict(HttpOutcome::Timeout, &s));
    let lenient = PassiveSettings { on_5xx: false, ..s };
    assert!(PassiveHealth::verdict(HttpOutcome::Status(503), &lenient));
    assert!(!PassiveHealth::verdict(HttpOutcome::Reset, &lenient));
}

#[test]
fn expired_ejection_readmits_once_and_the_series_goes_on() {
    let s = PassiveSettings {
        max_failures: 1,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(300),
        on_5xx: true,
    };
    let t0 = Instant::now();
    let mut p = PassiveHealth::default();
    assert_eq!(p.failure(t0, &s), Some(Transition::Down));
    assert_eq!(p.expire(t0 + Duration::from_secs(9)), None);
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(p.expire(t1), Some(Transition::Up));
    assert_eq!(p.expire(t1), None, "readmitted once");
    assert_eq!(p.ejected_until(), None);
    // Failing again before any success: 20 s, then 40 s.
    assert_eq!(p.failure(t1, &s), Some(Transition::Down));
    assert!(p.is_ejected(t1 + Duration::from_secs(19)));
    let t2 = t1 + Duration::from_secs(20);
    assert_eq!(p.expire(t2), Some(Transition::Up));
    p.failure(t2, &s);
    assert!(p.is_ejected(t2 + Duration::from_secs(39)));
    assert!(!p.is_ejected(t2 + Duration::from_secs(40)));
    // A success after readmission ends the series: back to 10 s.
    let t3 = t2 + Duration::from_secs(40);
    p.expire(t3);
    assert_eq!(p.success(), None, "already readmitted");
    p.failure(t3, &s);
    assert!(!p.is_ejected(t3 + Duration::from_secs(10)));
}

#[test]
fn latency_samples_feed_p2c_without_ending_requests() {
    let (mut b, now) = balancer(Algorithm::P2cEwma, &[1, 1]);
    b.started(0);
    b.sample(0, Duration::from_millis(300), now);
    assert_eq!(b.server(0).in_flight(), 1);
    b.finished(0, None, now);
    let c = counts(&mut b, now, 100);
    assert_eq!(c[0], 0, "{c:?}");
}

#[test]
fn header_keys_move_only_the_changed_servers_share() {
    use crate::http::codec::Headers;
    let hash = Algorithm::Hash {
        balance_factor: None,
    };
    let key = HashKey::parse("header:X-User").expect("key");
    let now = Instant::now();
    let four = specs(&[1, 1, 1, 1]);
    let five = specs(&[1, 1, 1, 1, 1]);
    let mut b4 = Balancer::new(hash, &four, Settings::default(), 1, now);
    let mut b5 = Balancer::new(hash, &five, Settings::default(), 1, now);
    let mut moved = 0;
    let n = 10_000;
    for u in 0..n {
        let mut h = Headers::default();
        h.push("x-user", format!("user-{u}@example.com"));
        let input = hash_input(&key, &h, "/").expect("header present");
        let k = std::str::from_utf8(input).expect("utf8");
        let (a, b) = (hash_pick(&mut b4, k, now), hash_pick(&mut b5, k, now));
        if a != b {
            assert_eq!(b, 4, "moved between old servers");
            moved += 1;
        }
    }
    // The new server's share is a fifth.
    assert!(
        moved > n * 15 / 100 && moved < n * 25 / 100,
        "moved {moved} of {n}"
    );
    // Removing it again moves exactly those keys back.
    let mut back = 0;
    for u in 0..n {
        let k = format!("user-{u}@example.com");
        if hash_pick(&mut b4, &k, now) != hash_pick(&mut b5, &k, now) {
            back += 1;
        }
    }
    assert_eq!(back, moved);
}

#[test]
fn may_take_checks_a_sticky_server_without_touching_turns() {
    let (mut b, now) = balancer(Algorithm::RoundRobin, &[1, 1, 1]);
    let req = Request::default();
    assert!(b.may_take(1, &req, now));
    assert!(!b.may_take(3, &req, now), "no such server");
    let excl = Request {
        exclude: &[1],
        ..Request::default()
    };
    assert!(!b.may_take(1, &excl, now));
    b.server_mut(1).disabled = true;
    assert!(!b.may_take(1, &req, now));
    // Asking changed nothing: the turns go on from the start.
    assert_eq!(pick(&mut b, now), 0);
    // Failing open: only when no other server could take it.
    let open = Request {
        fail_open: true,
        ..Request::default()
    };
    assert!(!b.may_take(1, &open, now));
    b.server_mut(0).disabled = true;
    b.server_mut(2).disabled = true;
    assert!(b.may_take(1, &open, now));
    assert!(!b.may_take(1, &req, now));
}
