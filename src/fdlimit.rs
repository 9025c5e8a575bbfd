//! Running out of file descriptors without hurting connections already accepted.
//!
//! - At start the open-files limit is raised to its hard limit (`main.rs`), and the
//!   listeners' `max_connections` are compared with it ([`fit`]): `check` and the start log
//!   warn when they cannot all be served.
//! - One descriptor is kept in reserve ([`Reserve`]). When `accept` fails with EMFILE or
//!   ENFILE, the listener closes the reserve, accepts the waiting client, answers it (HTTP
//!   503, a SOCKS refusal) and closes it, then reopens the reserve: the client gets an answer
//!   instead of waiting in the backlog, and no accepted connection is closed to make room.
//!   With per-core workers each accepting on its own, another worker may take the freed
//!   descriptor first: a worker that accepts while the reserve is lent refuses that client
//!   the same way, and a reserve whose refill found no descriptor is taken back from the
//!   next one freed ([`Reserve::recover`]). Best effort under that race, exact with one
//!   worker.
//! - A tunnel that cannot get a pipe copies that burst instead (`splice.rs`); an upstream
//!   connect that fails for want of descriptors is answered 503 / SOCKS general failure.

use std::fs::File;
use std::io;
use std::sync::Mutex;

/// Descriptors one proxied connection holds at most while idle: the client's socket and the
/// upstream's (pipes are pooled and taken only while bytes move).
pub const PER_CONNECTION: u64 = 2;

/// Descriptors the process needs besides its connections: standard streams, the runtime's
/// epoll and wakers, listening sockets, the access log, DNS sockets, cache files, the reserve
/// and the pipe pool's idle pipes.
pub const HEADROOM: u64 = 256;

/// Whether an error means the process or the system is out of descriptors.
pub fn is_exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

/// Checks that `max_connections` of every listener fit in `limit` open files: `None` if
/// they do, otherwise the warning to print.
pub fn fit(max_connections: impl IntoIterator<Item = usize>, limit: u64) -> Option<String> {
    let sum = max_connections
        .into_iter()
        .fold(0u64, |s, m| s.saturating_add(m as u64));
    let needed = sum.saturating_mul(PER_CONNECTION).saturating_add(HEADROOM);
    (needed > limit).then(|| {
        let fits = limit.saturating_sub(HEADROOM) / PER_CONNECTION;
        format!(
            "the listeners' max_connections add up to {sum}, which needs about {needed} open \
             files ({PER_CONNECTION} per connection + {HEADROOM}), but the open-files limit is \
             {limit}: about {fits} connections fit; clients beyond that are refused at accept. \
             Raise the limit (LimitNOFILE=, ulimit -n) or lower max_connections"
        )
    })
}

/// The hard open-files limit, which the server raises its soft limit to at start.
pub fn nofile_hard() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(_, hard)| hard)
}

/// The process's reserve, opened when the first listener starts.
pub static RESERVE: std::sync::LazyLock<Reserve> = std::sync::LazyLock::new(Reserve::new);

/// One descriptor held back for answering clients when the process is out of them.
pub struct Reserve {
    file: Mutex<Option<File>>,
    /// Released by a listener that is answering with it now (until its `refill`).
    lent: std::sync::atomic::AtomicBool,
}

impl Default for Reserve {
    fn default() -> Self {
        Reserve::new()
    }
}

impl Reserve {
    /// Opens the reserve (`/dev/null`); if that fails, the reserve is empty until
    /// [`Reserve::refill`] or [`Reserve::recover`] succeeds.
    pub fn new() -> Reserve {
        Reserve {
            file: Mutex::new(File::open("/dev/null").ok()),
            lent: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Closes the reserve descriptor so the next descriptor the process needs can be had.
    /// Returns false if the reserve was already spent (another listener is using it, or
    /// it could not be reopened).
    pub fn release(&self) -> bool {
        let Ok(mut f) = self.file.lock() else {
            return false;
        };
        let had = f.take().is_some();
        if had {
            self.lent.store(true, std::sync::atomic::Ordering::Release);
        }
        had
    }

    /// Reopens the reserve after it was released; true if it is held again.
    pub fn refill(&self) -> bool {
        let Ok(mut f) = self.file.lock() else {
            return false;
        };
        if f.is_none() {
            *f = File::open("/dev/null").ok();
        }
        self.lent.store(false, std::sync::atomic::Ordering::Release);
        f.is_some()
    }

    /// Reopens a reserve that was lost, not one lent out now: another thread may take the
    /// descriptor a release freed (a worker's accept, a connect) before the refill, which
    /// then fails; the next time the process runs out, a descriptor freed since is taken
    /// back as the reserve. True if the reserve is held.
    pub fn recover(&self) -> bool {
        let Ok(mut f) = self.file.lock() else {
            return false;
        };
        if f.is_none() && !self.lent.load(std::sync::atomic::Ordering::Acquire) {
            *f = File::open("/dev/null").ok();
        }
        f.is_some()
    }

    /// Whether a listener is answering a client with the reserve's descriptor now.
    pub fn is_lent(&self) -> bool {
        self.lent.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_held(&self) -> bool {
        self.file.lock().is_ok_and(|f| f.is_some())
    }
}

/// What a listener answers a client it accepted only to refuse (out of descriptors), given
/// the bytes the client already sent: HTTP gets 503 with a Proxy-Status, SOCKS5 "no
/// acceptable methods", SOCKS4 "rejected". A client that said nothing gets a close.
pub fn refusal(http: bool, first: &[u8]) -> &'static [u8] {
    match (http, first.first()) {
        (_, None) => b"",
        (true, Some(_)) => {
            b"HTTP/1.1 503 Service Unavailable\r\n\
              Proxy-Status: gatehouse; error=proxy_internal_error; details=\"out of file descriptors\"\r\n\
              Retry-After: 1\r\n\
              Content-Length: 0\r\n\
              Connection: close\r\n\r\n"
        }
        (false, Some(5)) => &[5, 0xFF],
        (false, Some(4)) => &[0, 91, 0, 0, 0, 0, 0, 0],
        (false, Some(_)) => b"",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_errors() {
        assert!(is_exhausted(&io::Error::from_raw_os_error(24)));
        assert!(is_exhausted(&io::Error::from_raw_os_error(23)));
        assert!(!is_exhausted(&io::Error::from_raw_os_error(111)));
        assert!(!is_exhausted(&io::Error::other("x")));
    }

    #[test]
    fn fit_warns_only_when_connections_do_not_fit() {
        assert_eq!(fit([10_000], 20_256), None);
        assert_eq!(fit([5_000, 5_000], 1_000_000), None);
        let w = fit([10_000, 10_000], 20_000).expect("warning");
        assert!(w.contains("add up to 20000"), "{w}");
        assert!(w.contains("about 9872 connections fit"), "{w}");
        assert!(fit([10_000], 1024).is_some());
        assert!(
            fit([usize::MAX, usize::MAX], 1 << 20).is_some(),
            "no overflow"
        );
    }

    #[test]
    fn refusals_speak_the_client_protocol() {
        assert!(refusal(true, b"CONNECT a:1").starts_with(b"HTTP/1.1 503 "));
        assert_eq!(refusal(false, &[5, 1, 0]), &[5, 0xFF]);
        assert_eq!(refusal(false, &[4, 1])[..2], [0, 91]);
        assert!(refusal(false, b"GET").is_empty());
        assert!(refusal(true, b"").is_empty());
    }

    #[test]
    fn reserve_release_and_refill() {
        let r = Reserve::new();
        assert!(r.is_held());
        assert!(r.release());
        assert!(!r.release(), "spent once");
        assert!(r.refill());
        assert!(r.is_held());
    }

    #[test]
    fn a_lost_reserve_is_recovered_but_a_lent_one_is_not() {
        let r = Reserve::new();
        assert!(r.release());
        assert!(
            !r.recover(),
            "lent to a listener answering with it: left alone"
        );
        assert!(!r.is_held());
        // A refill that found no descriptor (another thread took it) leaves it lost.
        r.lent.store(false, std::sync::atomic::Ordering::Release);
        assert!(r.recover(), "lost: reopened");
        assert!(r.is_held());
        assert!(r.release(), "and usable again");
    }
}
