//! HTTP/1.1 forward proxying: codecs (pure) and the connection driver.

mod access;
pub mod body;
mod cached;
pub mod chunked;
pub mod codec;
pub mod error;
mod exchange;
pub mod h2_server;
pub mod h2_stream;
mod h2_upstream;
mod loop_check;
pub mod pool;
pub mod proxy;
mod proxy_header;
mod refresh;
pub mod reverse;
pub mod stream;
pub mod target;
mod tunnel;
