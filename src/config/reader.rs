//! A small typed walker over a `toml_edit` document.
//!
//! Every value is read through a [`Section`], which knows the key path it is at, records each
//! problem (with the line the document gives) instead of stopping at the first, and at the end
//! reports every key nobody asked for as unknown. This is what lets `gatehouse check` list all
//! the mistakes in a file at once.

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `listeners[1].keepalive_timeout`.
    pub path: String,
    /// 1-based line in the file, where the TOML document gives one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Shared sink of problems plus the source text (to turn byte spans into line numbers).
#[derive(Clone)]
pub struct Problems {
    inner: Rc<RefCell<Vec<ConfigError>>>,
    source: Rc<str>,
    /// The line of every key path read, for problems found after parsing (start-up checks).
    lines: Rc<RefCell<KeyLines>>,
}

/// Where each key path read from the file is: `listeners[0].tls.cert` -> line. Start-up
/// checks that run after parsing (files, the open-proxy guard) report with these.
#[derive(Debug, Clone, Default)]
pub struct KeyLines(std::collections::BTreeMap<String, usize>);

impl KeyLines {
    /// The line of `path`, or of the nearest enclosing key that has one (`admin.pac_host`
    /// falls back to `[admin]` when the key is absent).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// A problem at `path`, with its line.
    pub fn error(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_string(),
            line: self.line(path),
            message: message.into(),
        }
    }
}

impl Problems {
    pub fn new(source: &str) -> Self {
        Problems {
            inner: Rc::default(),
            source: Rc::from(source),
            lines: Rc::default(),
        }
    }

    fn record(&self, path: String, span: Option<std::ops::Range<usize>>) {
        if let Some(s) = span {
            let line = line_of(&self.source, s.start);
            self.lines.borrow_mut().0.entry(path).or_insert(line);
        }
    }

    /// The line of every key path read so far.
    pub fn key_lines(&self) -> KeyLines {
        self.lines.borrow().clone()
    }

    pub fn push(
        &self,
        path: &str,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) {
        let line = span.map(|s| line_of(&self.source, s.start));
        self.inner.borrow_mut().push(ConfigError {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        let v = self.inner.borrow().clone();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.inner.borrow().is_empty()
    }
}

pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A view of one table at a key path.
pub struct Section<'a> {
    table: Option<&'a dyn TableLike>,
    span: Option<std::ops::Range<usize>>,
    path: String,
    seen: RefCell<Vec<String>>,
    problems: Problems,
}

impl<'a> Section<'a> {
    pub fn root(table: &'a dyn TableLike, problems: Problems) -> Self {
        Section {
            table: Some(table),
            span: None,
            path: String::new(),
            seen: RefCell::default(),
            problems,
        }
    }

    /// An absent section: every getter returns its default.
    fn empty(path: String, problems: Problems) -> Self {
        Section {
            table: None,
            span: None,
            path,
            seen: RefCell::default(),
            problems,
        }
    }

    pub fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Record a problem at this section itself.
    pub fn error_here(&self, message: impl Into<String>) {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        self.problems.push(path, self.span.clone(), message);
    }

    /// Record a problem at a key of this section.
    pub fn error_at(&self, key: &str, message: impl Into<String>) {
        let span = self.item(key).and_then(item_span).or(self.span.clone());
        self.problems.push(&self.path_of(key), span, message);
    }

    fn item(&self, key: &str) -> Option<&'a Item> {
        self.table?.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.item(key).is_some()
    }

    fn take(&self, key: &str) -> Option<&'a Item> {
        let item = self.item(key)?;
        self.seen.borrow_mut().push(key.to_string());
        let span = self
            .table
            .and_then(|t| t.key(key))
            .and_then(|k| k.span())
            .or_else(|| item_span(item));
        self.problems.record(self.path_of(key), span);
        Some(item)
    }

    /// Reads a raw value; `expected` names the wanted type in errors.
    fn value(&self, key: &str, expected: &str) -> Option<&'a Value> {
        let item = self.take(key)?;
        match item.as_value() {
            Some(v) => Some(v),
            None => {
                self.error_at(
                    key,
                    format!("expected {expected}, found {}", item.type_name()),
                );
                None
            }
        }
    }

    /// Reads a value and converts it; a failed conversion is recorded and yields `None`.
    pub fn get<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.value(key, expected)?;
        match convert(v) {
            Some(t) => Some(t),
            None => {
                self.error_at(key, format!("expected {expected}, found {}", show(v)));
                None
            }
        }
    }

    /// Like [`Section::get`] but the conversion explains its own failure.
    pub fn parse<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = self.value(key, expected)?;
        match convert(v) {
            Ok(t) => Some(t),
            Err(why) => {
                self.error_at(
                    key,
                    format!("expected {expected}, found {} ({why})", show(v)),
                );
                None
            }
        }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key, "a string", |v| v.as_str().map(str::to_string))
    }

    pub fn bool(&self, key: &str, default: bool) -> bool {
        self.get(key, "true or false", Value::as_bool)
            .unwrap_or(default)
    }

    /// A non-negative integer within `min..=max`.
    pub fn uint(&self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        self.parse(key, &format!("an integer from {min} to {max}"), |v| {
            let n = v.as_integer().ok_or("not an integer")?;
            u64::try_from(n)
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| "out of range".to_string())
        })
        .unwrap_or(default)
    }

    pub fn duration(&self, key: &str, default: Duration) -> Duration {
        self.parse(
            key,
            "a duration such as \"30s\", \"5m\" or \"250ms\"",
            parse_duration,
        )
        .unwrap_or(default)
    }

    pub fn size(&self, key: &str, default: u64) -> u64 {
        self.parse(key, "a size such as \"64KiB\" or \"10MiB\"", parse_size)
            .unwrap_or(default)
    }

    pub fn socket_addr(&self, key: &str) -> Option<SocketAddr> {
        self.parse(
            key,
            "an address such as \"127.0.0.1:3128\" or \"[::1]:3128\"",
            |v| {
                v.as_str()
                    .ok_or_else(|| "not a string".to_string())?
                    .parse::<SocketAddr>()
                    .map_err(|e| e.to_string())
            },
        )
    }

    pub fn ip_addr(&self, key: &str) -> Option<IpAddr> {
        self.parse(key, "an IP address", |v| {
            v.as_str()
                .ok_or_else(|| "not a string".to_string())?
                .parse::<IpAddr>()
                .map_err(|e| e.to_string())
        })
    }

    /// An array whose every element converts; bad elements are each reported.
    pub fn array<T>(
        &self,
        key: &str,
        expected: &str,
        convert: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let item = self.take(key)?;
        let Some(arr) = item.as_array() else {
            self.error_at(
                key,
                format!(
                    "expected an array of {expected}, found {}",
                    item.type_name()
                ),
            );
            return None;
        };
        let mut out = Vec::with_capacity(arr.len());
        let mut ok = true;
        for (i, v) in arr.iter().enumerate() {
            match convert(v) {
                Ok(t) => out.push(t),
                Err(why) => {
                    ok = false;
                    self.problems.push(
                        &format!("{}[{i}]", self.path_of(key)),
                        v.span(),
                        format!("expected {expected}, found {} ({why})", show(v)),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A sub-table (`[a.b]` or an inline table). Absent: an empty section.
    pub fn table(&self, key: &str) -> Section<'a> {
        let path = self.path_of(key);
        match self.take(key) {
            None => Section::empty(path, self.problems.clone()),
            Some(item) => match item.as_table_like() {
                Some(t) => Section {
                    table: Some(t),
                    span: item_span(item),
                    path,
                    seen: RefCell::default(),
                    problems: self.problems.clone(),
                },
                None => {
                    self.error_at(key, format!("expected a table, found {}", item.type_name()));
                    Section::empty(path, self.problems.clone())
                }
            },
        }
    }

    /// Whether a sub-table is present at all.
    pub fn has_table(&self, key: &str) -> bool {
        self.item(key).is_some()
    }

    /// `[[key]]` tables or an array of inline tables.
    pub fn tables(&self, key: &str) -> Vec<Section<'a>> {
        let Some(item) = self.take(key) else {
            return Vec::new();
        };
        let base = self.path_of(key);
        let mk = |i: usize, t: &'a dyn TableLike, span: Option<std::ops::Range<usize>>| {
            self.problems.record(format!("{base}[{i}]"), span.clone());
            Section {
                table: Some(t),
                span,
                path: format!("{base}[{i}]"),
                seen: RefCell::default(),
                problems: self.problems.clone(),
            }
        };
        if let Some(aot) = item.as_array_of_tables() {
            return aot
                .iter()
                .enumerate()
                .map(|(i, t)| mk(i, t, t.span()))
                .collect();
        }
        if let Some(arr) = item.as_array() {
            let mut out = Vec::new();
            for (i, v) in arr.iter().enumerate() {
                match v.as_inline_table() {
                    Some(t) => out.push(mk(i, t, v.span())),
                    None => {
                        self.problems
                            .push(&format!("{base}[{i}]"), v.span(), "expected a table")
                    }
                }
            }
            return out;
        }
        self.error_at(
            key,
            format!("expected an array of tables, found {}", item.type_name()),
        );
        Vec::new()
    }

    /// Every key of this table, for map-like sections (e.g. static hosts).
    pub fn keys(&self) -> Vec<String> {
        self.table
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// Reports every key that no getter asked for. Call once the section is fully read.
    pub fn finish(&self) {
        let Some(table) = self.table else { return };
        let seen = self.seen.borrow();
        for (key, item) in table.iter() {
            if !seen.iter().any(|s| s == key) {
                let span = table
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| item_span(item));
                self.problems.push(&self.path_of(key), span, "unknown key");
            }
        }
    }
}

fn item_span(item: &Item) -> Option<std::ops::Range<usize>> {
    item.span()
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.value()),
        Value::Integer(i) => i.value().to_string(),
        Value::Float(f) => f.value().to_string(),
        Value::Boolean(b) => b.value().to_string(),
        other => other.type_name().to_string(),
    }
}

/// "30s", "5m", "1h30m", "250ms".
pub fn parse_duration(v: &Value) -> Result<Duration, String> {
    let s = v.as_str().ok_or("not a string")?;
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// "64KiB", "10MiB", "1GB" or a plain integer number of bytes.
pub fn parse_size(v: &Value) -> Result<u64, String> {
    if let Some(n) = v.as_integer() {
        return u64::try_from(n).map_err(|_| "negative".to_string());
    }
    let s = v.as_str().ok_or("not a string or integer")?;
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(s: &str) -> toml_edit::Document<String> {
        toml_edit::Document::parse(s.to_string()).expect("valid toml")
    }

    #[test]
    fn reports_every_problem_with_lines() {
        let text = "a = \"30x\"\nb = 5\n[t]\nc = \"1MiB\"\nzzz = 1\n";
        let d = doc(text);
        let p = Problems::new(text);
        let root = Section::root(d.as_table(), p.clone());
        let _ = root.duration("a", Duration::ZERO);
        let t = root.table("t");
        assert_eq!(t.size("c", 0), 1024 * 1024);
        t.finish();
        root.finish();
        let errs = p.into_vec();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[0].path, "a");
        assert_eq!(errs[0].line, Some(1));
        assert_eq!(errs[1].path, "t.zzz");
        assert_eq!(errs[1].line, Some(5));
        assert_eq!(errs[2].path, "b");
        assert_eq!(errs[2].line, Some(2));
    }

    #[test]
    fn sizes_and_durations() {
        let d = doc("s1 = \"64KiB\"\ns2 = 100\nd = \"1m30s\"\nbad = \"-1s\"\n");
        let p = Problems::new("");
        let r = Section::root(d.as_table(), p.clone());
        assert_eq!(r.size("s1", 0), 65536);
        assert_eq!(r.size("s2", 0), 100);
        assert_eq!(r.duration("d", Duration::ZERO), Duration::from_secs(90));
        assert_eq!(
            r.duration("bad", Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        assert_eq!(p.into_vec().len(), 1);
    }
}
