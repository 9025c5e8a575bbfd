//! Health as two small state machines, apart from the probing I/O.
//!
//! - **Active**: the results of periodic checks (HTTP or TCP connect). `fall` consecutive
//!   failures take an up server down; `rise` consecutive successes bring a down server up
//!   (HAProxy's `check inter rise fall`). A server starts up, so a pool serves at once.
//!   A server added by a reload starts up *on probation* (HAProxy's default `init-state
//!   up`): its first failed check takes it down at once, its first passed one ends the
//!   probation. `[pools.health] init_state` ([`InitState`]) chooses otherwise, at start and
//!   for added servers alike.
//! - **Passive**: what real traffic shows. `max_failures` consecutive failures (connect
//!   failures, resets, 5xx when the pool counts them) eject the server for a back-off that
//!   doubles with each ejection in a row, up to a ceiling; a success after readmission ends
//!   the series. An HTTP pool also counts resets, first-byte timeouts and (with `on_5xx`)
//!   5xx responses ([`HttpOutcome`]). An ejection that has run out readmits the server
//!   ([`PassiveHealth::expire`]); failing again before any success doubles the next one.
//!   Active checks do not cut an ejection short: a server that answers its health check but
//!   fails real traffic would otherwise be readmitted every check interval and the back-off
//!   would mean nothing.

use std::time::{Duration, Instant};

/// A change of state worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// A server's active health before its first check (`[pools.health] init_state`, HAProxy's
/// `init-state`): up or down, and whether the first check alone may change that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    /// Up; `fall` failed checks take it down (a server present at start, by default).
    FullyUp,
    /// Up; its first failed check takes it down (a server a reload adds, by default).
    Up,
    /// Down; its first passed check brings it up.
    Down,
    /// Down; `rise` passed checks bring it up.
    FullyDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHealth {
    up: bool,
    /// Consecutive results against the current state.
    streak: u32,
    /// Not yet checked, and the first check alone decides: one failure takes an up server
    /// down, one success brings a down one up.
    probation: bool,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            up: true,
            streak: 0,
            probation: false,
        }
    }
}

impl ActiveHealth {
    /// The state before the first check.
    pub fn initial(init: InitState) -> ActiveHealth {
        let (up, probation) = match init {
            InitState::FullyUp => (true, false),
            InitState::Up => (true, true),
            InitState::Down => (false, true),
            InitState::FullyDown => (false, false),
        };
        ActiveHealth {
            up,
            streak: 0,
            probation,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// One check's result. `rise` and `fall` are at least 1.
    pub fn observe(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let (rise, fall) = if std::mem::take(&mut self.probation) {
            (1, 1)
        } else {
            (rise, fall)
        };
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

/// Passive ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSettings {
    /// Consecutive failures that eject (0: passive checks off).
    pub max_failures: u32,
    /// First ejection's length; each further ejection in a row doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Whether 5xx responses count as failures (HTTP pools); resets and timeouts always do.
    pub on_5xx: bool,
}

impl Default for PassiveSettings {
    fn default() -> Self {
        PassiveSettings {
            max_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            on_5xx: true,
        }
    }
}

/// How one HTTP exchange with a server ended, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpOutcome {
    /// A response head with this status arrived.
    Status(u16),
    /// The connection failed or was reset (or closed) before a whole response head.
    Reset,
    /// No response head within the first-byte timeout.
    Timeout,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassiveHealth {
    failures: u32,
    /// Ejections in a row (reset by a success after readmission).
    ejections: u32,
    until: Option<Instant>,
}

impl PassiveHealth {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.until
    }

    /// Ends an ejection whose time has run out (the server is readmitted; the back-off series
    /// goes on until a success). `Up` when this call readmitted it.
    pub fn expire(&mut self, now: Instant) -> Option<Transition> {
        match self.until {
            Some(u) if u <= now => {
                self.until = None;
                Some(Transition::Up)
            }
            _ => None,
        }
    }

    /// Whether an HTTP exchange counts as a success (`true`) or a failure (`false`) for
    /// passive health: resets and timeouts fail, and 5xx fails when `on_5xx` is set.
    pub fn verdict(outcome: HttpOutcome, s: &PassiveSettings) -> bool {
        match outcome {
            HttpOutcome::Status(code) => !(s.on_5xx && (500..=599).contains(&code)),
            HttpOutcome::Reset | HttpOutcome::Timeout => false,
        }
    }

    /// A request (or connection) to the server succeeded.
    pub fn success(&mut self) -> Option<Transition> {
        self.failures = 0;
        self.ejections = 0;
        self.until.take().map(|_| Transition::Up)
    }

    /// A request failed in a way that counts against the server. Returns `Down` when this
    /// failure ejects it.
    pub fn failure(&mut self, now: Instant, s: &PassiveSettings) -> Option<Transition> {
        if s.max_failures == 0 || self.is_ejected(now) {
            return None;
        }
        self.failures += 1;
        if self.failures < s.max_failures {
            return None;
        }
        self.failures = 0;
        let factor = 1u32 << self.ejections.min(16);
        let length = s.base_ejection.saturating_mul(factor).min(s.max_ejection);
        self.ejections = self.ejections.saturating_add(1);
        self.until = Some(now + length);
        Some(Transition::Down)
    }
}
