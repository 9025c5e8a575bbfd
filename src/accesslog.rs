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
    /// Tells the writer to reopen its file (SIGUSR1, after logrotate moved it away).
    reopen: Arc<tokio::sync::Notify>,
}

async fn open_file(path: &std::path::Path) -> anyhow::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open access log {}: {e}", path.display()))
}

const QUEUE: usize = 16 * 1024;

impl AccessLog {
    /// Opens the log target and starts the writer task.
    pub async fn start(cfg: &AccessLogConfig, metrics: Arc<Metrics>) -> anyhow::Result<AccessLog> {
        let reopen = Arc::new(tokio::sync::Notify::new());
        let (out, path): (Box<dyn AsyncWrite + Send + Unpin>, _) = match &cfg.target {
            LogTarget::Off => return Ok(AccessLog::disabled(metrics)),
            LogTarget::Stdout => (Box::new(tokio::io::stdout()), None),
            LogTarget::File(path) => (Box::new(open_file(path).await?), Some(path.clone())),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let file = Reopen {
            path,
            signal: reopen.clone(),
        };
        tokio::spawn(write_loop(rx, BufWriter::new(out), cfg.format, file));
        Ok(AccessLog {
            tx: Some(tx),
            metrics,
            reopen,
        })
    }

    pub fn disabled(metrics: Arc<Metrics>) -> AccessLog {
        AccessLog {
            tx: None,
            metrics,
            reopen: Arc::default(),
        }
    }

    /// Reopens the log file at its configured path (records queued before go to the old
    /// one). Nothing to do for stdout or off.
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }

    pub fn log(&self, rec: AccessRecord) {
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

/// The writer's file and the signal to open it anew.
struct Reopen {
    path: Option<std::path::PathBuf>,
    signal: Arc<tokio::sync::Notify>,
}

async fn write_loop(
    mut rx: mpsc::Receiver<AccessRecord>,
    mut out: BufWriter<Box<dyn AsyncWrite + Send + Unpin>>,
    format: LogFormat,
    file: Reopen,
) {
    loop {
        let rec = tokio::select! {
            biased;
            _ = file.signal.notified() => {
                let _ = out.flush().await;
                if let Some(path) = &file.path {
                    match open_file(path).await {
                        Ok(f) => {
                            out = BufWriter::new(Box::new(f));
                            tracing::info!("access log reopened: {}", path.display());
                        }
                        Err(e) => tracing::error!("{e:#}; still writing to the old file"),
                    }
                }
                continue;
            }
            rec = rx.recv() => match rec {
                Some(rec) => rec,
                None => break,
            },
        };
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
