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
    /// HTTP listeners: the request's version (`HTTP/1.1`), Referer and User-Agent.
    pub version: Option<&'static str>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    /// Reverse listeners: the route that took the request, its pool, and the pool server
    /// that answered (`host:port` as configured).
    pub route: Option<Arc<str>>,
    pub pool: Option<Arc<str>>,
    pub server: Option<Arc<str>>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

impl AccessRecord {
    /// One line of 14 space-separated fields, and three more (route, pool, server) for a
    /// request a reverse listener's route took. Every field that can hold text from a
    /// client or the config (listener, user, method, target, rule, route, pool, server)
    /// goes through [`escape_field`], so a field never holds a space, quote, control byte
    /// or newline: one record, one line, and a fixed number of fields.
    pub fn to_text(&self) -> String {
        fn opt(o: Option<&str>) -> Cow<'_, str> {
            o.map_or(Cow::Borrowed("-"), escape_field)
        }
        format!(
            "{} {} {} {} {} {} {} {} {} {:.3}ms {} {} {} {}{}",
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
            self.routed_fields(),
        )
    }

    /// ` route pool server` (escaped, `-` for no server) when a reverse listener's route
    /// took the request, else nothing: the trailing fields of `text` and `squid` lines.
    fn routed_fields(&self) -> String {
        let Some(route) = self.route.as_deref() else {
            return String::new();
        };
        let (pool, server) = (self.pool.as_deref(), self.server.as_deref());
        format!(
            " {} {} {}",
            escape_field(route),
            pool.map_or(Cow::Borrowed("-"), escape_field),
            server.map_or(Cow::Borrowed("-"), escape_field)
        )
    }

    /// The record's status as an HTTP status: SOCKS reply codes mapped (success 200,
    /// refused by the rules 403, unsupported command or address type 400, TTL expired 504,
    /// other failures 502); HTTP and TCP statuses as they are.
    pub fn http_status(&self) -> u16 {
        match self.method.split('-').next() {
            Some("SOCKS5") => match self.status {
                0 => 200,
                2 => 403,
                7 | 8 => 400,
                6 => 504,
                _ => 502,
            },
            Some("SOCKS4") => match (self.status, self.error) {
                (90, _) => 200,
                (_, Some("denied")) => 403,
                _ => 502,
            },
            _ => self.status,
        }
    }

    /// Squid's result code: from the cache word on cached listeners, `TCP_TUNNEL` for a
    /// CONNECT, SOCKS or TCP session that got through, `TCP_DENIED` for 403 and 407 (and a
    /// refused session), `NONE` when no status was sent, `TCP_MISS` otherwise.
    pub fn squid_code(&self) -> &'static str {
        let status = self.http_status();
        let tunnel =
            self.method == "CONNECT" || self.method == "TCP" || self.method.starts_with("SOCKS");
        match (self.cache, status) {
            (_, 0) => "NONE",
            (_, 403 | 407) => "TCP_DENIED",
            (Some("hit"), _) => "TCP_HIT",
            (Some("stale"), _) => "TCP_REFRESH_FAIL_OLD",
            (Some("revalidated"), _) => "TCP_REFRESH_UNMODIFIED",
            (Some("expired"), _) => "TCP_REFRESH_MODIFIED",
            (Some("refresh"), _) => "TCP_CLIENT_REFRESH_MISS",
            (Some(_), _) => "TCP_MISS",
            (None, _) if tunnel => "TCP_TUNNEL",
            (None, _) => "TCP_MISS",
        }
    }

    /// Squid's native `access.log` line (`logformat squid %ts.%03tu %6tr %>a %Ss/%03>Hs
    /// %<st %rm %ru %[un %Sh/%<a %mt`): end time in seconds with milliseconds, duration in
    /// milliseconds, client IP, result code/status, bytes to the client, method, URL, user,
    /// hierarchy code/upstream IP, content type (always `-`: the record has none). A
    /// request a reverse listener's route took gets three more fields at the end (route,
    /// pool, server), as a Squid `logformat` that appends fields to the native ones would
    /// write: readers of the native format take the first ten.
    pub fn to_squid(&self) -> String {
        let since = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let hier = match self.upstream {
            Some(a) => format!("HIER_DIRECT/{}", a.ip()),
            None => "HIER_NONE/-".to_string(),
        };
        format!(
            "{}.{:03} {:6} {} {}/{:03} {} {} {} {} {} -{}",
            since.as_secs(),
            since.subsec_millis(),
            self.duration.as_millis(),
            self.client.ip(),
            self.squid_code(),
            self.http_status(),
            self.bytes_out,
            // Squid's word for a request it could not parse.
            match self.method.as_str() {
                "-" => Cow::Borrowed("NONE"),
                m => escape_field(m),
            },
            match self.target.as_str() {
                "-" => Cow::Borrowed("-"),
                t => escape_field(t),
            },
            self.user
                .as_deref()
                .map_or(Cow::Borrowed("-"), escape_field),
            hier,
            self.routed_fields(),
        )
    }

    /// The Apache combined format (`%h %l %u %t "%r" %>s %b "%{Referer}i"
    /// "%{User-agent}i"`). The request line is method, target and protocol: the HTTP
    /// version for HTTP (a CONNECT's target is `host:port`), `CONNECT host:port SOCKS5` (or
    /// `BIND`, `UDP`, and `SOCKS4`) for SOCKS sessions, `TCP target TCP` for layer-4
    /// connections. `%b` is all bytes sent to the client (`-` for none); SOCKS reply codes
    /// become HTTP statuses ([`Self::http_status`]).
    pub fn to_combined(&self) -> String {
        let (method, proto) = match self.method.split_once('-') {
            Some((v @ ("SOCKS4" | "SOCKS5"), cmd)) => (cmd, v),
            _ if self.method.starts_with("SOCKS") => ("-", self.method.as_str()),
            _ => (
                self.method.as_str(),
                self.version
                    .unwrap_or(if self.method == "TCP" { "TCP" } else { "-" }),
            ),
        };
        let time = jiff::Timestamp::try_from(self.time)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .strftime("%d/%b/%Y:%H:%M:%S +0000");
        // A request whose head could not be read has no request line: Apache writes `"-"`.
        let request = if self.method == "-" {
            "-".to_string()
        } else {
            format!(
                "{} {} {}",
                escape_field(method),
                escape_field(&self.target),
                escape_field(proto)
            )
        };
        let bytes = match self.bytes_out {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        format!(
            "{} - {} [{}] \"{}\" {:03} {} \"{}\" \"{}\"",
            self.client.ip(),
            self.user
                .as_deref()
                .map_or(Cow::Borrowed("-"), escape_field),
            time,
            request,
            self.http_status(),
            bytes,
            escape_quoted(self.referer.as_deref().unwrap_or("-")),
            escape_quoted(self.user_agent.as_deref().unwrap_or("-")),
        )
    }
}

/// A quoted combined-log field, as Apache writes one: `"` and `\` get a backslash, bytes
/// outside printable ASCII become `\xHH`; spaces stay.
pub fn escape_quoted(s: &str) -> Cow<'_, str> {
    let plain = |b: u8| (b' '..=b'~').contains(&b) && !matches!(b, b'"' | b'\\');
    if s.bytes().all(plain) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if plain(b) => out.push(char::from(b)),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    Cow::Owned(out)
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
        self.log_at(rec, std::time::Instant::now());
    }

    /// [`AccessLog::log`] with the clock already read (`now`: when the request ended).
    pub fn log_at(&self, rec: AccessRecord, now: std::time::Instant) {
        self.metrics.stats.record_at(&rec, now);
        if let Some(tx) = &self.tx {
            if tx.try_send(rec).is_err() {
                self.metrics.access_log_dropped.inc();
            }
        }
    }
}

impl AccessLog {
    /// Whether records are written anywhere (`false`: `path = "off"`; the live statistics
    /// still see every record, but not its wall-clock `time`).
    pub fn writes(&self) -> bool {
        self.tx.is_some()
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
                LogFormat::Squid => rec.to_squid(),
                LogFormat::Combined => rec.to_combined(),
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
            version: None,
            referer: None,
            user_agent: None,
            route: None,
            pool: None,
            server: None,
        }
    }

    #[test]
    fn a_record_is_one_line_of_fourteen_fields_whatever_the_client_sent() {
        let mut r = record("eve\n2026 s 6.6.6.6:1 admin", "GE T\r\n", "a b\u{85}\"c");
        let text = r.to_text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(text.split(' ').count(), 14, "{text}");
        // A route took the request: its route, pool and server follow.
        r.route = Some("app test/".into());
        r.pool = Some("web".into());
        r.server = Some("10.0.0.5:80".into());
        let text = r.to_text();
        assert_eq!(text.split(' ').count(), 17, "{text}");
        assert!(text.ends_with(" app\\x20test/ web 10.0.0.5:80"), "{text}");
        assert!(text.contains(" eve\\x0a2026\\x20s\\x20"), "{text}");
        // JSON: serde escapes control characters and quotes; one line per record too.
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json.lines().count(), 1, "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("parse");
        assert_eq!(back["user"], "eve\n2026 s 6.6.6.6:1 admin");
        assert_eq!(back["target"], "a b\u{85}\"c");
    }

    fn http(method: &str, target: &str, status: u16, cache: Option<&'static str>) -> AccessRecord {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_993_799_042),
            listener: "web".into(),
            client: "127.0.0.1:50000".parse().expect("addr"),
            user: None,
            rule: Some("default".into()),
            method: method.to_string(),
            target: target.to_string(),
            status,
            bytes_in: 80,
            bytes_out: 1234,
            duration: Duration::from_micros(6_882),
            upstream: Some("10.0.0.7:8080".parse().expect("addr")),
            cache,
            error: None,
            version: Some("HTTP/1.1"),
            referer: Some("http://a.test/".into()),
            user_agent: Some("curl/8.5.0 (x86_64) \"quoted\"\n".into()),
            route: None,
            pool: None,
            server: None,
        }
    }

    #[test]
    fn squid_lines_of_routed_requests_end_with_route_pool_and_server() {
        let mut r = http("GET", "http://app.test/x", 200, None);
        r.route = Some("app.test/".into());
        r.pool = Some("web".into());
        r.server = Some("10.0.0.7:8080".into());
        assert_eq!(
            r.to_squid(),
            "1764993799.042      6 127.0.0.1 TCP_MISS/200 1234 GET http://app.test/x - HIER_DIRECT/10.0.0.7 - app.test/ web 10.0.0.7:8080"
        );
        // No server picked (503): `-`; names from the config are escaped into one field.
        r.server = None;
        r.route = Some("my route".into());
        assert!(
            r.to_squid().ends_with(" - my\\x20route web -"),
            "{}",
            r.to_squid()
        );
        assert_eq!(r.to_squid().split_whitespace().count(), 13);
        // The combined format stays Apache's.
        assert!(
            r.to_combined()
                .ends_with("\"http://a.test/\" \"curl/8.5.0 (x86_64) \\\"quoted\\\"\\x0a\""),
            "{}",
            r.to_combined()
        );
    }

    #[test]
    fn squid_native_line() {
        let r = http("GET", "http://a.test/x", 200, Some("hit"));
        assert_eq!(
            r.to_squid(),
            "1764993799.042      6 127.0.0.1 TCP_HIT/200 1234 GET http://a.test/x - HIER_DIRECT/10.0.0.7 -"
        );
        let words: Vec<_> = r
            .to_squid()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(words.len(), 10);
        let code = |r: &AccessRecord| {
            let line = r.to_squid();
            line.split_whitespace()
                .nth(3)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(code(&http("GET", "u", 200, Some("miss"))), "TCP_MISS/200");
        assert_eq!(code(&http("GET", "u", 200, Some("bypass"))), "TCP_MISS/200");
        assert_eq!(
            code(&http("GET", "u", 200, Some("stale"))),
            "TCP_REFRESH_FAIL_OLD/200"
        );
        assert_eq!(
            code(&http("GET", "u", 304, Some("revalidated"))),
            "TCP_REFRESH_UNMODIFIED/304"
        );
        assert_eq!(
            code(&http("GET", "u", 200, Some("expired"))),
            "TCP_REFRESH_MODIFIED/200"
        );
        assert_eq!(
            code(&http("GET", "u", 200, Some("refresh"))),
            "TCP_CLIENT_REFRESH_MISS/200"
        );
        assert_eq!(code(&http("GET", "u", 200, None)), "TCP_MISS/200");
        assert_eq!(code(&http("GET", "u", 403, None)), "TCP_DENIED/403");
        assert_eq!(code(&http("GET", "u", 407, None)), "TCP_DENIED/407");
        assert_eq!(
            code(&http("CONNECT", "a.test:443", 200, None)),
            "TCP_TUNNEL/200"
        );
        assert_eq!(
            code(&http("CONNECT", "a.test:443", 502, None)),
            "TCP_TUNNEL/502"
        );
        assert_eq!(code(&http("-", "-", 0, None)), "NONE/000");
        assert_eq!(
            code(&http("SOCKS5-CONNECT", "a.test:443", 0, None)),
            "TCP_TUNNEL/200"
        );
        assert_eq!(
            code(&http("SOCKS5-CONNECT", "a.test:443", 2, None)),
            "TCP_DENIED/403"
        );
        assert_eq!(
            code(&http("SOCKS5-CONNECT", "a.test:443", 5, None)),
            "TCP_TUNNEL/502"
        );
        assert_eq!(
            code(&http("SOCKS4-CONNECT", "1.2.3.4:80", 90, None)),
            "TCP_TUNNEL/200"
        );
        let mut denied4 = http("SOCKS4-CONNECT", "1.2.3.4:80", 91, None);
        denied4.error = Some("denied");
        assert_eq!(code(&denied4), "TCP_DENIED/403");
        // No upstream, a user, and client text that would split a field.
        let mut r = http("GE T", "http://a.test/a b", 502, None);
        r.upstream = None;
        r.user = Some("eve x".into());
        let line = r.to_squid();
        assert_eq!(line.split_whitespace().count(), 10, "{line}");
        assert!(
            line.ends_with(" GE\\x20T http://a.test/a\\x20b eve\\x20x HIER_NONE/- -"),
            "{line}"
        );
        assert!(http("-", "-", 0, None).to_squid().contains(" NONE - "));
    }

    #[test]
    fn combined_line() {
        let mut r = http("GET", "http://a.test/x", 200, None);
        r.user = Some("alice".into());
        assert_eq!(
            r.to_combined(),
            "127.0.0.1 - alice [06/Dec/2025:04:03:19 +0000] \"GET http://a.test/x HTTP/1.1\" 200 1234 \"http://a.test/\" \"curl/8.5.0 (x86_64) \\\"quoted\\\"\\x0a\""
        );
        let mut r = http("SOCKS5-CONNECT", "a.test:443", 0, None);
        (r.version, r.referer, r.user_agent, r.bytes_out) = (None, None, None, 0);
        assert!(
            r.to_combined()
                .ends_with("\"CONNECT a.test:443 SOCKS5\" 200 - \"-\" \"-\""),
            "{}",
            r.to_combined()
        );
        let mut r = http("TCP", "10.0.0.7:8080", 200, None);
        r.version = None;
        assert!(
            r.to_combined()
                .contains("\"TCP 10.0.0.7:8080 TCP\" 200 1234"),
            "{}",
            r.to_combined()
        );
        let r = http("GET", "http://a.test/", 0, None);
        assert!(
            r.to_combined().contains("HTTP/1.1\" 000 1234 "),
            "{}",
            r.to_combined()
        );
        let mut r = http("-", "-", 400, None);
        r.version = None;
        assert!(
            r.to_combined().contains("] \"-\" 400 "),
            "{}",
            r.to_combined()
        );
        let r = http("GE T\"", "/a b", 200, None);
        assert!(
            r.to_combined()
                .contains("\"GE\\x20T\\x22 /a\\x20b HTTP/1.1\""),
            "{}",
            r.to_combined()
        );
    }

    #[test]
    fn quoted_fields_escape_like_apache() {
        assert_eq!(escape_quoted("Mozilla/5.0 (X11)"), "Mozilla/5.0 (X11)");
        assert_eq!(escape_quoted("a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(escape_quoted("x\r\ny\u{e9}"), "x\\x0d\\x0ay\\xc3\\xa9");
    }
}
