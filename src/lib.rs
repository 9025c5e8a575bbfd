//! Gatehouse: one proxy server for every job, from one config file.
//!
//! See `docs/architecture.md` for how a connection flows through these modules.

#![deny(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod balance;
pub mod cache;
pub mod config;
pub mod connector;
pub mod deadline;
pub mod fdlimit;
pub mod gather;
pub mod http;
pub mod ifwatch;
pub mod kerberos;
pub mod l4;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod pac;
pub mod policy;
pub mod pool;
pub mod relay;
pub mod reverse;
#[cfg(target_os = "linux")]
pub mod sendfile;
pub mod server;
pub mod shutdown;
pub mod socks;
pub mod splice;
pub mod startup;
pub mod stats;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod workers;
