//! The `cache` config section, read with the project's [`Section`] walker.
//!
//! ```toml
//! [listeners.cache]            # or a top-level [cache]: where it hangs is up to the caller
//! enabled = true
//! memory_size = "64MiB"
//! disk_dir = "/var/cache/gatehouse"   # optional: no disk tier without it
//! disk_size = "1GiB"
//! max_object_size = "8MiB"
//! methods = ["GET", "HEAD"]
//! stale_if_unreachable = false
//! background_refreshes = 32           # stale-while-revalidate refreshes at once
//! targeted_fields = ["Gatehouse-Cache-Control", "CDN-Cache-Control"]
//! ```

use std::path::PathBuf;

use crate::config::reader::Section;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Bytes of the memory tier; 0 for none.
    pub memory_size: u64,
    /// Directory of the disk tier; `None` for none.
    pub disk_dir: Option<PathBuf>,
    pub disk_size: u64,
    /// Responses with larger bodies are passed through, never stored.
    pub max_object_size: u64,
    /// Whether HEAD requests are answered from stored GET responses (GET is always on).
    pub head: bool,
    /// Serve a stale response when the origin cannot be reached or closes the connection
    /// (RFC 9111 section 4.2.4), unless a directive forbids it.
    pub stale_if_unreachable: bool,
    /// Most stale-while-revalidate refreshes running at once (one per key); 0: none, a
    /// stale response is then served until its window ends and revalidated in-line after.
    pub background_refreshes: usize,
    /// RFC 9213 target list of the reverse proxy's cached routes (lower case, most
    /// applicable first). The forward proxy reads Cache-Control only.
    pub targeted_fields: Vec<String>,
    /// The response field naming a response's tags (lower case); `None`: no tags.
    pub tag_header: Option<String>,
    pub tag_separator: super::tags::Separator,
}

/// The default target list: our own field, then CDN-Cache-Control.
pub const DEFAULT_TARGETED_FIELDS: &[&str] = &["gatehouse-cache-control", "cdn-cache-control"];

fn default_targets() -> Vec<String> {
    DEFAULT_TARGETED_FIELDS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub const DEFAULT_MEMORY_SIZE: u64 = 64 << 20;
pub const DEFAULT_DISK_SIZE: u64 = 1 << 30;
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 8 << 20;
pub const DEFAULT_BACKGROUND_REFRESHES: usize = 32;
/// The largest `background_refreshes` accepted (each holds an upstream connection).
pub const MAX_BACKGROUND_REFRESHES: usize = 4096;

impl Default for CacheConfig {
    /// The built-in default: a 64 MiB memory cache, no disk.
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            memory_size: DEFAULT_MEMORY_SIZE,
            disk_dir: None,
            disk_size: DEFAULT_DISK_SIZE,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            head: true,
            stale_if_unreachable: false,
            background_refreshes: DEFAULT_BACKGROUND_REFRESHES,
            targeted_fields: default_targets(),
            tag_header: Some("surrogate-key".into()),
            tag_separator: super::tags::Separator::Space,
        }
    }
}

impl CacheConfig {
    pub fn disabled() -> Self {
        CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        }
    }

    /// Whether requests with this method are looked up in the cache.
    pub fn handles(&self, method: &str) -> bool {
        self.enabled && (method == "GET" || (self.head && method == "HEAD"))
    }
}

/// Reads a `cache` table (absent keys take their defaults; a present section means
/// `enabled = true` unless it says otherwise). Reports unknown keys.
pub(crate) fn read_cache(s: &Section<'_>) -> CacheConfig {
    let enabled = s.bool("enabled", true);
    let memory_size = s.size("memory_size", DEFAULT_MEMORY_SIZE);
    let disk_dir = s.string("disk_dir").map(PathBuf::from);
    if disk_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
        s.error_at("disk_dir", "must not be empty");
    }
    if s.has("disk_size") && !s.has("disk_dir") {
        s.error_at("disk_size", "needs `disk_dir`");
    }
    let disk_size = s.size("disk_size", DEFAULT_DISK_SIZE);
    let max_object_size = s.size("max_object_size", DEFAULT_MAX_OBJECT_SIZE);
    if max_object_size == 0 {
        s.error_at("max_object_size", "must be larger than 0");
    }
    if memory_size > 0 && max_object_size > memory_size {
        s.error_at("max_object_size", "is larger than `memory_size`");
    }
    if disk_dir.is_some() && max_object_size > disk_size {
        s.error_at("max_object_size", "is larger than `disk_size`");
    }
    if enabled && memory_size == 0 && disk_dir.is_none() {
        s.error_at(
            "memory_size",
            "is 0 and there is no `disk_dir`: the cache would store nothing",
        );
    }
    let methods = s
        .array("methods", "\"GET\" or \"HEAD\"", |v| match v.as_str() {
            Some(m @ ("GET" | "HEAD")) => Ok(m.to_string()),
            Some(_) => Err("only GET and HEAD are cacheable".into()),
            None => Err("not a string".into()),
        })
        .unwrap_or_else(|| vec!["GET".into(), "HEAD".into()]);
    if !methods.iter().any(|m| m == "GET") {
        s.error_at(
            "methods",
            "must include \"GET\" (HEAD is answered from stored GET responses)",
        );
    }
    let stale_if_unreachable = s.bool("stale_if_unreachable", false);
    let background_refreshes = s.uint(
        "background_refreshes",
        DEFAULT_BACKGROUND_REFRESHES as u64,
        0,
        MAX_BACKGROUND_REFRESHES as u64,
    );
    let background_refreshes =
        usize::try_from(background_refreshes).unwrap_or(DEFAULT_BACKGROUND_REFRESHES);
    let targeted_fields = s
        .array("targeted_fields", "a response field name", |v| {
            let name = v.as_str().ok_or("not a string")?;
            crate::policy::headers::check_name(name)?;
            let name = name.to_ascii_lowercase();
            if matches!(name.as_str(), "cache-control" | "expires" | "pragma") {
                return Err("names a field the cache reads anyway".into());
            }
            Ok(name)
        })
        .unwrap_or_else(default_targets);
    let tag_header = match s.string("tag_header") {
        None => Some("surrogate-key".to_string()),
        Some(n) if n.is_empty() => None,
        Some(n) => {
            if let Err(e) = crate::policy::headers::check_name(&n) {
                s.error_at("tag_header", e);
            }
            Some(n.to_ascii_lowercase())
        }
    };
    use super::tags::Separator;
    let tag_separator = match s.string("tag_separator").as_deref() {
        None if tag_header.as_deref() == Some("cache-tag") => Separator::Comma,
        None | Some("space") => Separator::Space,
        Some("comma") => Separator::Comma,
        Some(other) => {
            s.error_at(
                "tag_separator",
                format!("unknown value {other:?}; expected \"space\" or \"comma\""),
            );
            Separator::Space
        }
    };
    s.finish();
    CacheConfig {
        enabled,
        memory_size,
        disk_dir,
        disk_size,
        max_object_size,
        head: methods.iter().any(|m| m == "HEAD"),
        stale_if_unreachable,
        background_refreshes,
        targeted_fields,
        tag_header,
        tag_separator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::reader::Problems;

    fn read(text: &str) -> (CacheConfig, Vec<String>) {
        let doc = toml_edit::Document::parse(text.to_string()).expect("toml");
        let problems = Problems::new(text);
        let root = Section::root(doc.as_table(), problems.clone());
        let cfg = read_cache(&root.table("cache"));
        let errs = problems
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        (cfg, errs)
    }

    #[test]
    fn defaults() {
        let (c, errs) = read("[cache]\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c, CacheConfig::default());
        assert!(c.handles("GET") && c.handles("HEAD") && !c.handles("POST"));
        assert!(!CacheConfig::disabled().handles("GET"));
    }

    #[test]
    fn every_key() {
        let (c, errs) = read(
            "[cache]\nenabled = true\nmemory_size = \"16MiB\"\ndisk_dir = \"/tmp/gh\"\ndisk_size = \"2GiB\"\n\
             max_object_size = \"1MiB\"\nmethods = [\"GET\"]\nstale_if_unreachable = true\n\
             background_refreshes = 4\n\
             targeted_fields = [\"Acme-Cache-Control\"]\ntag_header = \"Cache-Tag\"\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.memory_size, 16 << 20);
        assert_eq!(c.disk_dir.as_deref(), Some(std::path::Path::new("/tmp/gh")));
        assert_eq!(c.disk_size, 2 << 30);
        assert_eq!(c.max_object_size, 1 << 20);
        assert!(!c.head && !c.handles("HEAD"));
        assert!(c.stale_if_unreachable && !CacheConfig::default().stale_if_unreachable);
        assert_eq!(c.background_refreshes, 4);
        assert_eq!(c.targeted_fields, ["acme-cache-control"]);
        assert_eq!(c.tag_header.as_deref(), Some("cache-tag"));
        assert_eq!(c.tag_separator, crate::cache::tags::Separator::Comma);
        let (c, _) = read("[cache]\ntag_header = \"\"\n");
        assert_eq!(c.tag_header, None);
        assert_eq!(
            CacheConfig::default().targeted_fields,
            ["gatehouse-cache-control", "cdn-cache-control"]
        );
    }

    #[test]
    fn disabled_section() {
        let (c, errs) = read("[cache]\nenabled = false\n");
        assert!(errs.is_empty());
        assert!(!c.enabled);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let (_, errs) = read(
            "[cache]\nmemory_size = \"lots\"\ndisk_size = \"1GiB\"\nmax_object_size = 0\nmethods = [\"POST\", 3]\ncolour = 1\n\
             targeted_fields = [\"Cache-Control\", \"a b\"]\nbackground_refreshes = 5000\n",
        );
        let joined = errs.join("\n");
        for needle in [
            "cache.memory_size",
            "cache.disk_size: needs `disk_dir`",
            "cache.max_object_size: must be larger than 0",
            "cache.methods[0]",
            "cache.methods[1]",
            "cache.targeted_fields[0]",
            "cache.targeted_fields[1]",
            "cache.colour: unknown key",
            "cache.background_refreshes",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn inconsistent_sizes_and_methods() {
        let (_, errs) = read(
            "[cache]\nmemory_size = \"1MiB\"\nmax_object_size = \"2MiB\"\nmethods = [\"HEAD\"]\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("larger than `memory_size`")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("must include \"GET\"")),
            "{errs:?}"
        );
        let (_, errs) = read("[cache]\nmemory_size = 0\n");
        assert!(errs.iter().any(|e| e.contains("store nothing")), "{errs:?}");
        let (c, errs) = read("[cache]\nmemory_size = 0\ndisk_dir = \"/tmp/x\"\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(c.memory_size, 0);
    }
}
