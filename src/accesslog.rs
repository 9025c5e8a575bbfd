//! One access log line per request or tunnel, written off the request path.
//!
//! Handlers hand a record to a bounded channel; one writer task formats and writes them, so a
//! slow disk never stalls a connection. If the writer falls behind, records are dropped and
//! counted (`gatehouse_access_log_dropped`), never queued without bound.

use std::borrow::Cow;
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
    /// One line of space-separated fields. Every field that can hold text from a client or
    /// the config (listener, user, method, target, rule) goes through [`escape_field`], so a
    /// field never holds a space, quote, control byte or newline: one record, one line, and
    /// the same number of fields on every line.
    pub fn to_text(&self) -> String {
        fn opt(o: Option<&str>) -> Cow<'_, str> {
            o.map_or(Cow::Borrowed("-"), escape_field)
        }
        format!(
            "{} {} {} {} {} {} {} {} {} {:.3}ms {} {} {} {}",
            humantime::format_rfc3339_millis(self.time),
            escape_field(&self.listener),
            self.client,
            opt(self.user.as_deref()),
            escape_field(&self.method),
            escape_field(&self.target),
            self.status,
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64() * 1000.0,
            self.upstream
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            self.cache.unwrap_or("-"),
            self.error.unwrap_or("-"),
            opt(self.rule.as_deref()),
        )
    }
}

/// A text-log field: bytes outside printable ASCII, the space, `"`, `'` and `\` become
/// `\xHH` (as nginx does), so a field is one whitespace-free token. An empty field and a
/// lone `-` (which means "none") are escaped too, so neither can pass for the other.
pub fn escape_field(s: &str) -> Cow<'_, str> {
    let plain = |b: u8| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\');
    if !s.is_empty() && s != "-" && s.bytes().all(plain) {
        return Cow::Borrowed(s);
    }
    if s.is_empty() {
        return Cow::Borrowed("\"\"");
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if plain(b) && s != "-" {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Cow::Owned(out)
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
        self.metrics.stats.record(&rec);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_into_single_tokens() {
        assert_eq!(escape_field("alice"), "alice");
        assert_eq!(escape_field("GET"), "GET");
        assert_eq!(
            escape_field("http://a.test/x?y=1&z=%20"),
            "http://a.test/x?y=1&z=%20"
        );
        assert_eq!(escape_field("eve\nforged line"), "eve\\x0aforged\\x20line");
        assert_eq!(escape_field("a\r\t\0\x7f"), "a\\x0d\\x09\\x00\\x7f");
        assert_eq!(
            escape_field("say \"hi\" 'x' \\"),
            "say\\x20\\x22hi\\x22\\x20\\x27x\\x27\\x20\\x5c"
        );
        assert_eq!(
            escape_field("é"),
            "\\xc3\\xa9",
            "non-ASCII as its UTF-8 bytes"
        );
        assert_eq!(escape_field("\u{2028}"), "\\xe2\\x80\\xa8");
        assert_eq!(escape_field(""), "\"\"");
        assert_eq!(escape_field("-"), "\\x2d", "a lone dash is not 'none'");
        assert_eq!(escape_field("a-b"), "a-b");
        // The escape character itself is escaped, so an escape can always be undone.
        assert_eq!(escape_field("\\x0a"), "\\x5cx0a");
    }

    fn record(user: &str, method: &str, target: &str) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            listener: "s".into(),
            client: "127.0.0.1:1".parse().expect("addr"),
            user: Some(user.to_string()),
            rule: None,
            method: method.to_string(),
            target: target.to_string(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            upstream: None,
            cache: None,
            error: Some("auth_failed"),
        }
    }

    #[test]
    fn a_record_is_one_line_of_fourteen_fields_whatever_the_client_sent() {
        let r = record("eve\n2026 s 6.6.6.6:1 admin", "GE T\r\n", "a b\u{85}\"c");
        let text = r.to_text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(text.split(' ').count(), 14, "{text}");
        assert!(text.contains(" eve\\x0a2026\\x20s\\x20"), "{text}");
        // JSON: serde escapes control characters and quotes; one line per record too.
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json.lines().count(), 1, "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(back["user"], "eve\n2026 s 6.6.6.6:1 admin");
        assert_eq!(back["target"], "a b\u{85}\"c");
    }
}
