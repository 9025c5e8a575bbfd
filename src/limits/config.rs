//! The `[limits]` section: typed, checked values, every problem reported with its key path.

use std::num::NonZeroU32;

use toml_edit::Value;

use super::{LimitSet, LimitsConfig, DEFAULT_MAX_TRACKED};
use crate::config::reader::{parse_size, ConfigError, Problems, Section};

impl LimitsConfig {
    /// Parses a TOML document holding a `[limits]` table (tools, tests).
    pub fn from_toml(text: &str) -> Result<LimitsConfig, Vec<ConfigError>> {
        let doc = toml_edit::Document::parse(text.to_string()).map_err(|e| {
            vec![ConfigError {
                path: "<root>".into(),
                line: None,
                message: e.to_string(),
            }]
        })?;
        let problems = Problems::new(text);
        let root = Section::root(doc.as_table(), problems.clone());
        let cfg = read_limits(&root.table("limits"));
        root.finish();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems.into_vec())
        }
    }
}

/// Reads `[limits]` (an absent section gives [`LimitsConfig::default`]: only the per-client
/// connection default).
///
/// ```toml
/// [limits]
/// max_tracked = 65536
/// [limits.per_client]
/// max_connections = 64       # default 1000; 0: no limit
/// connections_per_second = 20
/// requests_per_second = 100
/// bandwidth_up = "1MiB"      # bytes per second; "1MiB/s" is accepted too
/// bandwidth_down = "10MiB"
/// [limits.per_user]
/// max_connections = 200
/// ```
pub(crate) fn read_limits(s: &Section<'_>) -> LimitsConfig {
    let max_tracked = s.uint("max_tracked", DEFAULT_MAX_TRACKED as u64, 16, 1 << 24) as usize;
    let per_client = read_set(
        &s.table("per_client"),
        Some(super::DEFAULT_PER_CLIENT_CONNECTIONS),
    );
    let per_user = read_set(&s.table("per_user"), None);
    s.finish();
    LimitsConfig {
        per_client,
        per_user,
        max_tracked,
    }
}

/// One scope's limits; `max_connections` is `default` when absent, and 0 turns it off.
fn read_set(s: &Section<'_>, default: Option<u32>) -> LimitSet {
    let set = LimitSet {
        max_connections: if s.has("max_connections") {
            match s.uint("max_connections", 0, 0, 1 << 24) as u32 {
                0 => None,
                n => Some(n),
            }
        } else {
            default
        },
        connections_per_second: rate(s, "connections_per_second"),
        requests_per_second: rate(s, "requests_per_second"),
        bandwidth_up: bandwidth(s, "bandwidth_up"),
        bandwidth_down: bandwidth(s, "bandwidth_down"),
    };
    s.finish();
    set
}

fn rate(s: &Section<'_>, key: &str) -> Option<NonZeroU32> {
    s.parse(key, "an integer from 1 to 1000000", |v| {
        let n = v.as_integer().ok_or("not an integer")?;
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= 1_000_000)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| "out of range".to_string())
    })
}

/// Bytes per second, at least 1 KiB/s (less would make every read a single segment).
fn bandwidth(s: &Section<'_>, key: &str) -> Option<u64> {
    s.parse(
        key,
        "bytes per second such as \"512KiB\" or \"10MiB/s\" (at least 1KiB)",
        |v| {
            let n = match v.as_str() {
                Some(text) => {
                    let text = text.trim();
                    let text = text.strip_suffix("/s").unwrap_or(text);
                    parse_size(&Value::from(text))?
                }
                None => parse_size(v)?,
            };
            if n < 1024 {
                return Err("below 1KiB".into());
            }
            Ok(n)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (LimitsConfig, Vec<ConfigError>) {
        match LimitsConfig::from_toml(text) {
            Ok(cfg) => (cfg, Vec::new()),
            Err(errs) => (LimitsConfig::default(), errs),
        }
    }

    #[test]
    fn absent_means_only_the_per_client_connection_default() {
        let (cfg, errs) = parse("");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg, LimitsConfig::default());
        assert_eq!(cfg.per_client.max_connections, Some(1000));
        assert_eq!(cfg.per_user, LimitSet::default());
        let (cfg, _) = parse("[limits]\n[limits.per_client]\nrequests_per_second = 5\n");
        assert_eq!(cfg.per_client.max_connections, Some(1000));
    }

    #[test]
    fn zero_turns_the_connection_limit_off() {
        let (cfg, errs) = parse(
            "[limits.per_client]\nmax_connections = 0\n[limits.per_user]\nmax_connections = 0\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.per_client.max_connections, None);
        assert_eq!(cfg.per_user.max_connections, None);
    }

    #[test]
    fn every_key() {
        let (cfg, errs) = parse(
            r#"
[limits]
max_tracked = 1000
[limits.per_client]
max_connections = 64
connections_per_second = 20
requests_per_second = 100
bandwidth_up = "1MiB"
bandwidth_down = "10MiB/s"
[limits.per_user]
max_connections = 200
bandwidth_down = 65536
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(cfg.max_tracked, 1000);
        let c = &cfg.per_client;
        assert_eq!(c.max_connections, Some(64));
        assert_eq!(c.connections_per_second, NonZeroU32::new(20));
        assert_eq!(c.requests_per_second, NonZeroU32::new(100));
        assert_eq!(c.bandwidth_up, Some(1 << 20));
        assert_eq!(c.bandwidth_down, Some(10 << 20));
        let u = &cfg.per_user;
        assert_eq!(u.max_connections, Some(200));
        assert_eq!(u.bandwidth_down, Some(65536));
        assert_eq!(u.connections_per_second, None);
        assert_eq!(u.bandwidth_up, None);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let (_, errs) = parse(
            r#"
[limits]
max_tracked = 1
[limits.per_client]
max_connections = 1.5
connections_per_second = 0
requests_per_second = "lots"
bandwidth_up = "12"
bandwidth_down = "fast"
burst = 3
[limits.per_user]
max_connections = -1
"#,
        );
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "limits.max_tracked",
            "limits.per_client.max_connections",
            "limits.per_client.connections_per_second",
            "limits.per_client.requests_per_second",
            "limits.per_client.bandwidth_up",
            "limits.per_client.bandwidth_down",
            "limits.per_client.burst",
            "limits.per_user.max_connections",
        ] {
            assert!(paths.contains(&want), "{want} missing from {errs:?}");
        }
        assert_eq!(errs.len(), 8, "{errs:?}");
        assert!(errs.iter().all(|e| e.line.is_some()), "{errs:?}");
    }
}
