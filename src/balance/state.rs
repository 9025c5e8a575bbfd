//! One server's state inside a pool: load, latency, health, and when it last came back.

use std::time::{Duration, Instant};

use super::health::{ActiveHealth, InitState, PassiveHealth, Transition};

#[derive(Debug, Clone)]
pub struct ServerState {
    weight: u32,
    in_flight: u64,
    /// Peak-EWMA latency in nanoseconds and when it was last updated.
    ewma_ns: Option<f64>,
    ewma_at: Instant,
    /// From the active checks (up unless a check says otherwise).
    pub active: ActiveHealth,
    /// From real traffic: consecutive failures eject with back-off.
    pub passive: PassiveHealth,
    /// When the server last became available (start, health up, readmission): slow start.
    since: Instant,
    /// Taken out by an operator (admin API): never picked, health kept.
    pub disabled: bool,
}

impl ServerState {
    pub fn new(weight: u32, now: Instant) -> ServerState {
        ServerState {
            weight: weight.max(1),
            in_flight: 0,
            ewma_ns: None,
            ewma_at: now,
            active: ActiveHealth::default(),
            passive: PassiveHealth::default(),
            // A server present from the start needs no slow start.
            since: now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now),
            disabled: false,
        }
    }

    /// A server added to a running pool (a reload): it ramps up over slow start, and by
    /// default its first failed active check takes it down (HAProxy's `init-state up`);
    /// `init` (the pool's `init_state`) replaces that.
    pub fn added(weight: u32, now: Instant, init: Option<InitState>) -> ServerState {
        ServerState {
            active: ActiveHealth::initial(init.unwrap_or(InitState::Up)),
            since: now,
            ..ServerState::new(weight, now)
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// A reload changed the server's weight (at least 1); everything else is kept.
    pub fn set_weight(&mut self, weight: u32) {
        self.weight = weight.max(1);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Up by the active checks, not ejected by the passive ones, not disabled.
    pub fn is_available(&self, now: Instant) -> bool {
        !self.disabled && self.active.is_up() && !self.passive.is_ejected(now)
    }

    /// Applies a health transition's consequence: a server that comes back starts slow.
    pub fn note(&mut self, t: Option<Transition>, now: Instant) {
        if t == Some(Transition::Up) {
            self.since = now;
        }
    }

    /// A server that was ejected and whose back-off has run out is readmitted on its next
    /// pick; the caller marks that moment with this so slow start applies.
    pub fn readmitted(&mut self, now: Instant) {
        self.since = now;
    }

    /// The weight in force, scaled by 1000 so slow start can ramp smoothly: from a tenth of
    /// the weight to all of it, linearly over `slow_start` since the server came back.
    pub fn effective_weight(&self, now: Instant, slow_start: Duration) -> u64 {
        let full = u64::from(self.weight) * 1000;
        if slow_start.is_zero() {
            return full;
        }
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= slow_start {
            return full;
        }
        let frac = elapsed.as_secs_f64() / slow_start.as_secs_f64();
        let w = (full as f64) * (0.1 + 0.9 * frac);
        (w as u64).max(1)
    }

    pub fn start(&mut self) {
        self.in_flight += 1;
    }

    /// Peak EWMA (Finagle): a sample above the average replaces it at once, so a server that
    /// turns slow is avoided at once; lower samples pull it down with weight
    /// `1 - exp(-elapsed / decay)`.
    pub fn finish(&mut self, rtt: Option<Duration>, now: Instant, decay: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(rtt) = rtt {
            self.sample(rtt, now, decay);
        }
    }

    /// One latency sample (time to the response head) without ending a request: the reverse
    /// proxy reports it when the head arrives, before the body is relayed.
    pub fn sample(&mut self, rtt: Duration, now: Instant, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        self.ewma_ns = Some(match self.ewma_ns {
            None => sample,
            Some(old) if sample > old => sample,
            Some(old) => {
                let w = decay_weight(now.saturating_duration_since(self.ewma_at), decay);
                old * w + sample * (1.0 - w)
            }
        });
        self.ewma_at = now;
    }

    /// The latency estimate used as a cost: it fades toward zero while no sample comes, so a
    /// server that was slow once is tried again later.
    pub fn ewma_cost(&self, now: Instant, default_rtt: Duration, decay: Duration) -> f64 {
        match self.ewma_ns {
            None => default_rtt.as_nanos() as f64,
            Some(v) => v * decay_weight(now.saturating_duration_since(self.ewma_at), decay),
        }
    }
}

fn decay_weight(elapsed: Duration, decay: Duration) -> f64 {
    if decay.is_zero() {
        return 0.0;
    }
    (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp()
}
