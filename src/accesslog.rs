//! One access log line per request or tunnel, written off the request path.
//!
//! Handlers hand a record to a bounded channel; one writer task formats and writes them, so a
//! slow disk never stalls a connection. If the writer falls behind, records are dropped and
//! counted (`gatehouse_access_log_dropped`), never queued without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::config::{AccessLogConfig, LogFormat, LogTarget};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Serialize)]
pub struct AccessRecord {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub listener: Arc<str>,
    pub client: SocketAddr,
    /// The authenticated user (or the name a failed login claimed).
    pub user: Option<String>,
    /// The policy rule that decided (`default`, `guard`, or a rule's name).
    pub rule: Option<Arc<str>>,
    pub method: String,
    pub target: String,
    pub status: u16,
    /// Bytes received from the client (head and body).
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    pub upstream: Option<SocketAddr>,
    /// Cache status (hit, miss, ...) once a cache serves the listener.
    pub cache: Option<&'static str>,
    /// Proxy-Status error name when the request failed at the proxy.
    pub error: Option<&'static str>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

impl AccessRecord {
    pub fn to_text(&self) -> String {
        let dash = |o: Option<String>| o.unwrap_or_else(|| "-".to_string());
        format!(
            "{} {} {} {} {} {} {} {} {} {:.3}ms {} {} {} {}",
            humantime::format_rfc3339_millis(self.time),
            self.listener,
            self.client,
            dash(self.user.clone()),
            self.method,
            self.target,
            self.status,
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64() * 1000.0,
            dash(self.upstream.map(|a| a.to_string())),
            self.cache.unwrap_or("-"),
            self.error.unwrap_or("-"),
            self.rule.as_deref().unwrap_or("-"),
        )
    }
}

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<AccessRecord>>,
    metrics: Arc<Metrics>,
}

const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Opens the log target and starts the writer task.
    pub async fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> anyhow::Result<AccessLog> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match &cfg.target {
            LogTarget::Off => return Ok(AccessLog { tx: None, metrics }),
            LogTarget::Stdout => Box::new(tokio::io::stdout()),
            LogTarget::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open access log {}: {e}", path.display())
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(rx, BufWriter::new(out), cfg.format));
        Ok(AccessLog {
            tx: Some(tx),
            metrics,
        })
    }

    pub fn disabled(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog { tx: None, metrics }
    }

    pub fn log(&self, rec: AccessRecord) {
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

async fn write_loop(
    mut rx: mpsc::Receiver<AccessRecord>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    format: LogFormat,
) {
    while let Some(rec) = rx.recv().await {
        let mut batch = vec![rec];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 256 {
                break;
            }
        }
        for rec in batch {
            let mut line = match format {
                LogFormat::Text => rec.to_text(),
                LogFormat::Json => serde_json::to_string(&rec).unwrap_or_default(),
            };
            line.push('\n');
            if let Err(e) = out.write_all(line.as_bytes()).await {
                tracing::warn!("access log write failed: {e}");
            }
        }
        if rx.is_empty() {
            let _ = out.flush().await;
        }
    }
    let _ = out.flush().await;
}
