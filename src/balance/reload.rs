//! A pool changed by a reload: which servers stay, and the state they keep.
//!
//! A server *stays* when the new server list has one with the same name (its `host:port`)
//! in the same pool; duplicates pair up in order. A server that stays keeps its health
//! (active up/down and its rise/fall streak, passive ejection and back-off, the slow-start
//! clock), its requests in flight and its latency estimate; it takes the new weight. A new
//! server starts up on probation and ramps over slow start ([`ServerState::added`]). When
//! the pool no longer has active checks, the active verdict is reset to up; when it no
//! longer has passive checks, an ejection ends. The algorithm's own memory (round-robin
//! turns) is kept only when the algorithm is the same; a hash ring is rebuilt from the new
//! names, so keys on servers that stay mostly stay there.

use std::time::Instant;

use super::health::{ActiveHealth, PassiveHealth};
use super::{Algorithm, Balancer, ServerSpec, Settings};

/// The new pool's settings a reload carries state into.
#[derive(Debug, Clone, Copy)]
pub struct NewPool<'a> {
    pub algo: Algorithm,
    pub servers: &'a [ServerSpec],
    pub settings: Settings,
    /// The pool has active checks (`[pools.health]`).
    pub checks: bool,
    /// The pool has passive checks (`max_failures > 0`).
    pub passive: bool,
    pub seed: u64,
}

/// What a reload makes of a pool.
#[derive(Debug)]
pub struct Carried {
    pub balancer: Balancer,
    /// For each old server, its index in the new pool (`None`: removed).
    pub moved: Vec<Option<usize>>,
    /// For each new server, whether it was added (not in the old pool).
    pub added: Vec<bool>,
}

/// Which old server each new one continues: the first old server of the same name not
/// taken yet.
pub fn pair(old: &[&str], new: &[ServerSpec]) -> Vec<Option<usize>> {
    let mut taken = vec![false; old.len()];
    new.iter()
        .map(|s| {
            let i = (0..old.len()).find(|&i| !taken[i] && old[i] == s.name)?;
            taken[i] = true;
            Some(i)
        })
        .collect()
}

/// The new pool's balancer from the old one (`old_names`: the old servers' names, in the
/// old order), at `now`.
pub fn carry(
    old: &Balancer,
    old_algo: Algorithm,
    old_names: &[&str],
    new: NewPool<'_>,
    now: Instant,
) -> Carried {
    let from = pair(old_names, new.servers);
    let mut balancer = Balancer::new(new.algo, new.servers, new.settings, new.seed, now);
    let mut moved = vec![None; old_names.len()];
    let same_algo = old_algo == new.algo;
    for (j, spec) in new.servers.iter().enumerate() {
        let state = match from[j] {
            Some(i) if i < old.len() => {
                moved[i] = Some(j);
                if same_algo {
                    balancer.current[j] = old.current[i];
                }
                let mut s = old.server(i).clone();
                s.set_weight(spec.weight);
                if !new.checks {
                    s.active = ActiveHealth::default();
                }
                if !new.passive {
                    s.passive = PassiveHealth::default();
                }
                s
            }
            _ => super::ServerState::added(spec.weight, now, new.settings.init),
        };
        *balancer.server_mut(j) = state;
    }
    let added = from.iter().map(Option::is_none).collect();
    Carried {
        balancer,
        moved,
        added,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::{PassiveSettings, Pick, Request};

    fn spec(name: &str, weight: u32) -> ServerSpec {
        ServerSpec {
            name: name.into(),
            weight,
        }
    }

    fn new_pool(algo: Algorithm, servers: &[ServerSpec]) -> NewPool<'_> {
        NewPool {
            algo,
            servers,
            settings: Settings::default(),
            checks: true,
            passive: true,
            seed: 3,
        }
    }

    fn names(specs: &[ServerSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }

    fn pick(b: &mut Balancer, now: Instant) -> Option<usize> {
        match b.pick(&Request::default(), now) {
            Pick::Server(i) => Some(i),
            Pick::NoneEligible => None,
        }
    }

    /// a (down by checks), b (ejected), c (two requests in flight).
    fn old_pool(now: Instant) -> (Balancer, Vec<ServerSpec>) {
        let specs = vec![spec("a:1", 1), spec("b:1", 1), spec("c:1", 1)];
        let mut b = Balancer::new(Algorithm::RoundRobin, &specs, Settings::default(), 1, now);
        b.server_mut(0).active.observe(false, 2, 2);
        b.server_mut(0).active.observe(false, 2, 2);
        let passive = PassiveSettings {
            max_failures: 1,
            ..PassiveSettings::default()
        };
        b.server_mut(1).passive.failure(now, &passive);
        b.started(2);
        b.started(2);
        (b, specs)
    }

    #[test]
    fn servers_that_stay_keep_their_state_wherever_they_move() {
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        // Reordered, and one added in front.
        let new = [
            spec("d:1", 1),
            spec("c:1", 1),
            spec("b:1", 1),
            spec("a:1", 1),
        ];
        let c = carry(
            &old,
            Algorithm::RoundRobin,
            &names(&specs),
            new_pool(Algorithm::RoundRobin, &new),
            now,
        );
        assert_eq!(c.moved, vec![Some(3), Some(2), Some(1)]);
        assert_eq!(c.added, vec![true, false, false, false]);
        let b = &c.balancer;
        assert!(!b.server(3).active.is_up(), "a stays down");
        assert!(b.server(2).passive.is_ejected(now), "b stays ejected");
        assert_eq!(b.server(1).in_flight(), 2, "c's requests still count");
        assert!(b.server(0).is_available(now), "d starts up");
    }

    #[test]
    fn a_down_server_keeps_its_streak_towards_rise() {
        let now = Instant::now();
        let (mut old, specs) = old_pool(now);
        old.server_mut(0).active.observe(true, 2, 2);
        let c = carry(
            &old,
            Algorithm::RoundRobin,
            &names(&specs),
            new_pool(Algorithm::RoundRobin, &specs),
            now,
        );
        let mut a = c.balancer.server(0).active;
        assert_eq!(
            a.observe(true, 2, 2),
            Some(crate::balance::Transition::Up),
            "one more success makes two in a row"
        );
    }

    #[test]
    fn removed_servers_map_to_nothing_and_take_no_traffic() {
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        let new = [spec("c:1", 1)];
        let mut c = carry(
            &old,
            Algorithm::RoundRobin,
            &names(&specs),
            new_pool(Algorithm::RoundRobin, &new),
            now,
        );
        assert_eq!(c.moved, vec![None, None, Some(0)]);
        assert_eq!(c.balancer.len(), 1);
        for _ in 0..5 {
            assert_eq!(pick(&mut c.balancer, now), Some(0));
        }
    }

    #[test]
    fn an_added_server_is_up_on_probation_and_starts_slow() {
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        let new = [spec("c:1", 1), spec("n:1", 1)];
        let mut np = new_pool(Algorithm::RoundRobin, &new);
        np.settings.slow_start = Duration::from_secs(10);
        let c = carry(&old, Algorithm::RoundRobin, &names(&specs), np, now);
        let n = c.balancer.server(1);
        assert!(n.is_available(now));
        assert_eq!(n.effective_weight(now, Duration::from_secs(10)), 100);
        let kept = c.balancer.server(0);
        assert_eq!(kept.effective_weight(now, Duration::from_secs(10)), 1000);
        // One failed check takes it down (a kept server needs `fall`).
        let mut active = n.active;
        assert_eq!(
            active.observe(false, 2, 3),
            Some(crate::balance::Transition::Down)
        );
        let mut passed = n.active;
        assert_eq!(passed.observe(true, 2, 3), None);
        assert_eq!(
            passed.observe(false, 2, 3),
            None,
            "probation over: fall applies"
        );
    }

    #[test]
    fn init_state_sets_health_before_the_first_check_at_start_and_when_added() {
        use crate::balance::{ActiveHealth, InitState, Transition};
        // (state, up before any check, the first check's verdict: a pass, a fail)
        let cases = [
            (InitState::FullyUp, true, [None, None]),
            (InitState::Up, true, [None, Some(Transition::Down)]),
            (InitState::Down, false, [Some(Transition::Up), None]),
            (InitState::FullyDown, false, [None, None]),
        ];
        for (init, up, first) in cases {
            let h = ActiveHealth::initial(init);
            assert_eq!(h.is_up(), up, "{init:?}");
            for (ok, want) in [true, false].into_iter().zip(first) {
                let mut h = h;
                assert_eq!(h.observe(ok, 3, 3), want, "{init:?}, first check {ok}");
            }
        }
        // After the first check, rise and fall apply: fully down needs `rise` passes.
        let mut h = ActiveHealth::initial(InitState::FullyDown);
        assert_eq!(h.observe(true, 2, 2), None);
        assert_eq!(h.observe(true, 2, 2), Some(Transition::Up));
        // The pool's setting applies at start and to a server a reload adds.
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        let new = [spec("c:1", 1), spec("n:1", 1)];
        let mut np = new_pool(Algorithm::RoundRobin, &new);
        np.settings.init = Some(InitState::Down);
        let c = carry(&old, Algorithm::RoundRobin, &names(&specs), np, now);
        assert!(!c.balancer.server(1).is_available(now), "added, down");
        assert!(
            c.balancer.server(0).is_available(now),
            "kept: its own state"
        );
        let fresh = Balancer::new(
            Algorithm::RoundRobin,
            &specs,
            Settings {
                init: Some(InitState::FullyDown),
                ..Settings::default()
            },
            1,
            now,
        );
        assert!(!fresh.server(0).is_available(now), "at start, down");
    }

    #[test]
    fn weights_change_and_round_robin_follows_them() {
        let now = Instant::now();
        let specs = vec![spec("a:1", 1), spec("b:1", 1)];
        let old = Balancer::new(Algorithm::RoundRobin, &specs, Settings::default(), 1, now);
        let new = [spec("a:1", 3), spec("b:1", 1)];
        let mut c = carry(
            &old,
            Algorithm::RoundRobin,
            &names(&specs),
            new_pool(Algorithm::RoundRobin, &new),
            now,
        );
        assert_eq!(c.balancer.server(0).weight(), 3);
        let mut on = [0; 2];
        for _ in 0..400 {
            on[pick(&mut c.balancer, now).unwrap_or(9)] += 1;
        }
        assert_eq!(on, [300, 100]);
    }

    #[test]
    fn a_new_algorithm_keeps_health_and_loads() {
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        let c = carry(
            &old,
            Algorithm::RoundRobin,
            &names(&specs),
            new_pool(Algorithm::LeastRequests, &specs),
            now,
        );
        let mut b = c.balancer;
        assert!(!b.server(0).active.is_up());
        assert!(b.server(1).passive.is_ejected(now));
        // Only c is eligible, and least-requests still sees its two requests.
        assert_eq!(pick(&mut b, now), Some(2));
        assert_eq!(b.server(2).in_flight(), 2);
    }

    #[test]
    fn hash_keys_mostly_stay_when_a_server_is_added() {
        let now = Instant::now();
        let specs = vec![spec("a:1", 1), spec("b:1", 1), spec("c:1", 1)];
        let algo = Algorithm::Hash {
            balance_factor: None,
        };
        let mut old = Balancer::new(algo, &specs, Settings::default(), 1, now);
        let new = [
            spec("a:1", 1),
            spec("b:1", 1),
            spec("c:1", 1),
            spec("d:1", 1),
        ];
        let mut c = carry(&old, algo, &names(&specs), new_pool(algo, &new), now);
        let mut kept = 0;
        for k in 0..1000u32 {
            let key = k.to_be_bytes();
            let req = Request {
                key: Some(&key),
                ..Request::default()
            };
            let (Pick::Server(a), Pick::Server(b)) =
                (old.pick(&req, now), c.balancer.pick(&req, now))
            else {
                panic!("no server");
            };
            if c.moved[a] == Some(b) {
                kept += 1;
            }
        }
        // About three quarters stay; a reshuffle would keep about a quarter.
        assert!(kept > 600, "{kept}");
    }

    #[test]
    fn checks_or_passive_turned_off_clear_their_verdicts() {
        let now = Instant::now();
        let (old, specs) = old_pool(now);
        let mut np = new_pool(Algorithm::RoundRobin, &specs);
        np.checks = false;
        np.passive = false;
        let c = carry(&old, Algorithm::RoundRobin, &names(&specs), np, now);
        assert!(c.balancer.server(0).is_available(now));
        assert!(c.balancer.server(1).is_available(now));
    }

    #[test]
    fn duplicate_names_pair_in_order() {
        let new = [spec("a:1", 1), spec("a:1", 1), spec("a:1", 1)];
        assert_eq!(
            pair(&["a:1", "b:1", "a:1"], &new),
            vec![Some(0), Some(2), None]
        );
    }
}
