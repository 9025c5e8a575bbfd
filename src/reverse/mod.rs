//! The reverse proxy's pure decisions: which route a request takes (`route.rs`) and how its
//! header fields change on the way up and down (`headers.rs`). The async driver is
//! `http::reverse`, on the HTTP pipeline the forward proxy uses.

pub mod headers;
pub mod route;

use crate::config::ReverseListenerConfig;

/// Whether any route of the listener caches (the shared cache is opened only then).
pub fn uses_cache(cfg: &ReverseListenerConfig) -> bool {
    cfg.hosts
        .iter()
        .flat_map(|h| &h.routes)
        .chain(&cfg.default)
        .any(|r| r.cache)
}
