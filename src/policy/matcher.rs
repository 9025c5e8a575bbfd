//! Condition matchers, parsed once from the config: host patterns, address sets, port ranges,
//! time-of-day windows. Everything here is pure and cheap to evaluate.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// Normalises a destination or pattern name for comparison: trailing dot dropped, ASCII
/// lower-cased, Unicode labels converted to punycode (IDNA, UTS #46). ASCII names are only
/// lower-cased, never rejected: a malformed `xn--` label must still meet the host rules (a
/// name that failed here would otherwise slip past every one of them). `None` for an empty
/// name or Unicode that is not a valid IDNA name.
pub fn normalise_name(name: &str) -> Option<Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    if name.is_ascii() {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(Cow::Owned(name.to_ascii_lowercase()));
        }
        return Some(Cow::Borrowed(name));
    }
    idna::domain_to_ascii(name)
        .ok()
        .filter(|n| !n.is_empty())
        .map(Cow::Owned)
}

/// One `hosts` entry of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `example.com`: this name only.
    Exact(String),
    /// `*.example.com`: names under `example.com`, not `example.com` itself.
    Subdomains(String),
    /// `.example.com`: `example.com` and every name under it.
    Domain(String),
    /// `re:^ads\.`: a regular expression over the whole normalised name (not anchored unless
    /// the pattern says so).
    Regex(String),
}

impl HostPattern {
    /// Parses a config entry. Regexes are checked here so that errors name the entry.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        if let Some(re) = s.strip_prefix("re:") {
            return regex::Regex::new(re)
                .map(|_| HostPattern::Regex(re.to_string()))
                .map_err(|e| e.to_string());
        }
        let (ctor, rest): (fn(String) -> HostPattern, &str) = if let Some(r) = s.strip_prefix("*.")
        {
            (HostPattern::Subdomains, r)
        } else if let Some(r) = s.strip_prefix('.') {
            (HostPattern::Domain, r)
        } else {
            (HostPattern::Exact, s)
        };
        if rest.parse::<IpAddr>().is_ok() || rest.starts_with('[') {
            return Err("an address: use dest_addrs for addresses".into());
        }
        if rest.contains('*') {
            return Err("'*' is only allowed as a leading \"*.\"".into());
        }
        let name = normalise_name(rest).ok_or("not a valid host name")?;
        Ok(ctor(name.into_owned()))
    }
}

/// A set of address ranges with IPv4-mapped IPv6 folded into IPv4. Lookup is a binary search
/// over merged, sorted ranges.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Folds `::ffff:a.b.c.d` into `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(e) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(e.to_string()),
        },
    };
    Ok(fold_mapped(net.trunc()))
}

fn fold_mapped(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let Some(v4) = n.addr().to_ipv4_mapped() {
            if n.prefix_len() >= 96 {
                if let Ok(v4net) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(v4net);
                }
            }
        }
    }
    net
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for net in nets.iter().map(|n| fold_mapped(*n)) {
            match net {
                IpNet::V4(n) => v4.push((n.network().into(), n.broadcast().into())),
                IpNet::V6(n) => v6.push((n.network().into(), n.broadcast().into())),
            }
        }
        CidrSet {
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    /// Whether the set holds every address of a family (`0.0.0.0/0` or `::/0`).
    pub fn covers_everything(&self) -> bool {
        self.v4.first() == Some(&(0, u32::MAX)) || self.v6.first() == Some(&(0, u128::MAX))
    }
}

fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.succ() => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && ranges[i - 1].1 >= x
}

mod num_like {
    /// Saturating successor, for merging adjacent ranges.
    pub trait Succ {
        fn succ(self) -> Self;
    }
    impl Succ for u32 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// Days of the week as a bit set, Monday = bit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(pub u8);

impl Days {
    pub const ALL: Days = Days(0x7f);
    const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Parses `"mon"` or a range `"mon-fri"` (wrapping allowed: `"fri-mon"`).
    pub fn parse(s: &str) -> Result<Days, String> {
        let day = |d: &str| {
            let d = d.trim().to_ascii_lowercase();
            Self::NAMES
                .iter()
                .position(|n| d.starts_with(n) && n.len() <= d.len())
                .ok_or_else(|| format!("unknown day {d:?}"))
        };
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => {
                let d = day(s)?;
                (d, d)
            }
        };
        let mut bits = 0u8;
        let mut i = a;
        loop {
            bits |= 1 << i;
            if i == b {
                break;
            }
            i = (i + 1) % 7;
        }
        Ok(Days(bits))
    }

    /// `weekday`: 0 = Monday.
    pub fn contains(self, weekday: u8) -> bool {
        weekday < 7 && self.0 & (1 << weekday) != 0
    }
}

/// `HH:MM-HH:MM` as minutes of the day; the end is exclusive. A window whose end is before
/// its start wraps past midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub start: u16,
    pub end: u16,
}

impl TimeWindow {
    pub fn parse(s: &str) -> Result<TimeWindow, String> {
        let (a, b) = s.split_once('-').ok_or("expected HH:MM-HH:MM")?;
        let minute = |t: &str| -> Result<u16, String> {
            let (h, m) = t.trim().split_once(':').ok_or("expected HH:MM")?;
            let h: u16 = h.parse().map_err(|_| format!("bad hour {h:?}"))?;
            let m: u16 = m.parse().map_err(|_| format!("bad minute {m:?}"))?;
            if h > 24 || m > 59 || (h == 24 && m != 0) {
                return Err(format!("{t:?} is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let w = TimeWindow {
            start: minute(a)?,
            end: minute(b)?,
        };
        if w.start == w.end {
            return Err("empty window".into());
        }
        Ok(w)
    }

    /// `minute`: minutes since midnight.
    pub fn contains(self, minute: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// The `time` condition: any of the windows, on any of the days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub windows: Vec<TimeWindow>,
    pub days: Days,
}

impl Schedule {
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        self.days.contains(weekday)
            && (self.windows.is_empty() || self.windows.iter().any(|w| w.contains(minute)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn names_normalise() {
        let cases = [
            ("Example.COM.", Some("example.com")),
            ("example.com", Some("example.com")),
            ("bücher.example", Some("xn--bcher-kva.example")),
            ("BÜCHER.example.", Some("xn--bcher-kva.example")),
            ("xn--bcher-kva.example", Some("xn--bcher-kva.example")),
            ("XN--BCHER-KVA.example", Some("xn--bcher-kva.example")),
            ("_srv.example", Some("_srv.example")),
            (
                "xn--invalid-.facebook.com",
                Some("xn--invalid-.facebook.com"),
            ),
            ("b\u{fc}cher\u{fffd}.example", None),
            (".", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalise_name(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn host_patterns_parse() {
        use HostPattern::*;
        let cases: [(&str, Result<HostPattern, ()>); 9] = [
            ("Example.com.", Ok(Exact("example.com".into()))),
            ("*.Example.com", Ok(Subdomains("example.com".into()))),
            (".example.com", Ok(Domain("example.com".into()))),
            (
                "*.bücher.example",
                Ok(Subdomains("xn--bcher-kva.example".into())),
            ),
            ("re:^ads\\.", Ok(Regex("^ads\\.".into()))),
            ("re:(", Err(())),
            ("10.0.0.1", Err(())),
            ("a.*.com", Err(())),
            ("*.", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(HostPattern::parse(input).map_err(|_| ()), want, "{input:?}");
        }
    }

    #[test]
    fn cidr_sets_match_and_fold_mapped_addresses() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "192.168.1.7",
            "2001:db8::/32",
            "::ffff:172.16.0.0/108",
            "11.0.0.0/8",
        ]
        .iter()
        .map(|s| parse_net(s).expect("net"))
        .collect();
        let set = CidrSet::new(&nets);
        let cases = [
            ("10.1.2.3", true),
            ("11.255.255.255", true),
            ("12.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("::ffff:10.9.9.9", true),
            ("172.16.3.4", true),
            ("172.32.0.1", false),
            ("2001:db8:1::1", true),
            ("2001:db9::1", false),
            ("::1", false),
        ];
        for (a, want) in cases {
            assert_eq!(set.contains(ip(a)), want, "{a}");
        }
        assert!(!set.covers_everything());
        assert!(CidrSet::new(&[parse_net("0.0.0.0/0").expect("net")]).covers_everything());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("nonsense").is_err());
        assert_eq!(
            parse_net("10.1.2.3/8").expect("net").to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn days_and_windows() {
        assert_eq!(Days::parse("mon-fri"), Ok(Days(0b0011111)));
        assert_eq!(Days::parse("Saturday"), Ok(Days(0b0100000)));
        assert_eq!(Days::parse("fri-mon"), Ok(Days(0b1110001)));
        assert!(Days::parse("funday").is_err());
        let day = TimeWindow::parse("09:00-17:30").expect("window");
        assert!(day.contains(9 * 60) && day.contains(17 * 60 + 29));
        assert!(!day.contains(17 * 60 + 30) && !day.contains(8 * 60 + 59));
        let night = TimeWindow::parse("22:00-06:00").expect("window");
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60) && !night.contains(12 * 60));
        assert!(TimeWindow::parse("00:00-24:00")
            .expect("window")
            .contains(24 * 60 - 1));
        for bad in ["9-17", "25:00-26:00", "10:00-10:00", "10:60-11:00", "x"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
        let s = Schedule {
            windows: vec![day],
            days: Days::parse("mon-fri").expect("days"),
        };
        assert!(s.contains(0, 10 * 60));
        assert!(!s.contains(5, 10 * 60));
    }
}
