//! Shared HTTP cache (RFC 9111, with RFC 5861 stale extensions and RFC 9211 Cache-Status).
//!
//! Layout, from pure rules to I/O:
//! - [`directives`], [`freshness`], [`storable`], [`reuse`], [`vary`], [`validate`],
//!   [`conditional`], [`key`], [`status`]: the decisions, pure functions over our own
//!   request/response heads and an explicit clock, each beside the RFC text it obeys.
//! - [`object`]: what is stored per URL (variants) and its checksummed byte form.
//! - [`store`]: the storage tiers behind one small trait (memory: moka W-TinyLFU; disk:
//!   redb index plus atomically renamed, checksummed body files).
//! - [`collapse`]: request collapsing (one upstream fetch per key, followers stream it).
//! - [`refresh`]: background refreshes (stale-while-revalidate): one per key, bounded.
//! - [`engine`]: [`Cache`], the API the proxy calls (see its docs for the call sequence).
//! - [`config`]: the `cache` config section.

pub mod collapse;
pub mod conditional;
pub mod config;
pub mod directives;
pub mod engine;
pub mod freshness;
pub mod generation;
pub mod key;
pub mod object;
pub mod profile;
pub mod refresh;
pub mod reuse;
pub mod sealed;
pub mod serve;
pub mod stats;
pub mod status;
pub mod storable;
pub mod store;
pub mod tags;
pub mod targeted;
pub mod validate;
pub mod vary;

pub use config::CacheConfig;
pub use engine::{Cache, Lookup, Served};
pub use profile::Profile;
pub use status::{CacheStatus, Fwd};

#[cfg(test)]
pub(crate) mod testutil {
    use std::time::{Duration, SystemTime};

    use crate::http::codec::{Headers, RequestHead, ResponseHead, Version};

    /// The fixed test clock: 2024-01-01T00:00:00Z plus `secs` (may be negative).
    pub fn t(secs: i64) -> SystemTime {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        if secs >= 0 {
            base + Duration::from_secs(secs as u64)
        } else {
            base - Duration::from_secs(secs.unsigned_abs())
        }
    }

    pub fn date(secs: i64) -> String {
        httpdate::fmt_http_date(t(secs))
    }

    fn headers(hs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::default();
        for (n, v) in hs {
            h.push(n, v.as_bytes());
        }
        h
    }

    pub fn resp(status: u16, hs: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            version: Version::Http11,
            status,
            reason: String::new(),
            headers: headers(hs),
        }
    }

    pub fn req(method: &str, target: &str, hs: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: target.into(),
            version: Version::Http11,
            headers: headers(hs),
        }
    }
}
