//! The Cache-Control field (RFC 9111 section 5.2), parsed once into a list of directives.
//!
//! ```text
//! Cache-Control   = #cache-directive
//! cache-directive = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! Parsing is forgiving the way the RFC asks: every field line is read, commas inside quoted
//! strings do not split, names compare case-insensitively, unknown (extension) directives are
//! kept (section 5.2.3: "Cache directives that are unrecognized ... MUST be ignored", which we
//! do by keeping them but giving them no meaning), and elements that are not even a token are
//! dropped. Argument *values* are judged by the getter that needs them.

use crate::http::codec::Headers;

/// "If a cache receives a delta-seconds value greater than the greatest integer it can
/// represent, or if any of its subsequent calculations overflows, the cache MUST consider the
/// value to be 2147483648 (2^31) or the greatest positive integer it can conveniently
/// represent." (RFC 9111 section 1.2.2)
pub const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased.
    pub name: String,
    /// The argument with any quoting removed; `None` when there was no `=`.
    pub value: Option<String>,
}

/// A delta-seconds argument as the freshness rules need to see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    Absent,
    Valid(u64),
    /// Present but not `1*DIGIT`, or repeated with differing values. Section 4.2.1: "Caches
    /// are encouraged to consider responses that have invalid freshness information ... to be
    /// stale"; section 4.2.1 also allows treating conflicting duplicates that way.
    Invalid,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub directives: Vec<Directive>,
}

impl CacheControl {
    /// Every `Cache-Control` field line of `headers`, in order.
    pub fn from_headers(headers: &Headers) -> CacheControl {
        let mut directives = Vec::new();
        for line in headers.get_all("cache-control") {
            parse_line(&String::from_utf8_lossy(line), &mut directives);
        }
        CacheControl { directives }
    }

    pub fn parse(value: &str) -> CacheControl {
        let mut directives = Vec::new();
        parse_line(value, &mut directives);
        CacheControl { directives }
    }

    pub fn is_empty(&self) -> bool {
        self.directives.is_empty()
    }

    /// Whether the directive appears at all, with or without an argument.
    pub fn has(&self, name: &str) -> bool {
        self.directives.iter().any(|d| d.name == name)
    }

    /// A delta-seconds argument (`max-age=60`, also `max-age="60"`).
    pub fn seconds(&self, name: &str) -> Seconds {
        let mut found: Option<Option<u64>> = None;
        for d in self.directives.iter().filter(|d| d.name == name) {
            let v = d.value.as_deref().and_then(delta_seconds);
            match found {
                None => found = Some(v),
                Some(prev) if prev != v => return Seconds::Invalid,
                Some(_) => {}
            }
        }
        match found {
            None => Seconds::Absent,
            Some(Some(n)) => Seconds::Valid(n),
            Some(None) => Seconds::Invalid,
        }
    }

    /// `max-stale` is the one directive whose argument is optional: `Some(None)` means "any
    /// staleness", `Some(Some(n))` at most `n` seconds. An invalid argument is taken as 0,
    /// the most restrictive reading (section 4.2.1: "the most restrictive directive should
    /// be honored").
    pub fn optional_seconds(&self, name: &str) -> Option<Option<u64>> {
        let d = self.directives.iter().find(|d| d.name == name)?;
        Some(match &d.value {
            None => None,
            Some(_) => match self.seconds(name) {
                Seconds::Valid(n) => Some(n),
                _ => Some(0),
            },
        })
    }

    /// Field names of the qualified form (`no-cache="Set-Cookie, X-Foo"`), lower-cased.
    /// `None` when the directive is absent; an empty list for the unqualified form.
    pub fn field_names(&self, name: &str) -> Option<Vec<String>> {
        let mut out: Option<Vec<String>> = None;
        for d in self.directives.iter().filter(|d| d.name == name) {
            let list = out.get_or_insert_with(Vec::new);
            if let Some(v) = &d.value {
                list.extend(
                    v.split(',')
                        .map(|f| f.trim().to_ascii_lowercase())
                        .filter(|f| !f.is_empty()),
                );
            }
        }
        out
    }
}

/// `delta-seconds = 1*DIGIT`, saturating at [`DELTA_SECONDS_MAX`].
pub fn delta_seconds(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
    )
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Splits one field line into directives, honouring quoted strings.
fn parse_line(line: &str, out: &mut Vec<Directive>) {
    let mut rest = line;
    loop {
        let (element, tail) = split_element(rest);
        parse_element(element, out);
        match tail {
            Some(t) => rest = t,
            None => break,
        }
    }
}

/// The text up to the next comma that is not inside a quoted string.
fn split_element(s: &str) -> (&str, Option<&str>) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => return (&s[..i], Some(&s[i + 1..])),
            _ => {}
        }
    }
    (s, None)
}

fn parse_element(element: &str, out: &mut Vec<Directive>) {
    let element = element.trim();
    if element.is_empty() {
        return;
    }
    let (name, value) = match element.split_once('=') {
        Some((n, v)) => (n.trim(), Some(unquote(v.trim()))),
        None => (element, None),
    };
    if name.is_empty() || !name.chars().all(is_tchar) {
        return;
    }
    out.push(Directive {
        name: name.to_ascii_lowercase(),
        value,
    });
}

/// Removes a quoted-string's quotes and backslash escapes; a token is returned as is.
fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"') else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '"' => break,
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> Headers {
        let mut h = Headers::default();
        for l in lines {
            h.push("Cache-Control", l.as_bytes());
        }
        h
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let cc = CacheControl::from_headers(&headers(&["Max-Age=60, PUBLIC", "no-transform"]));
        assert!(cc.has("public"));
        assert!(cc.has("no-transform"));
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(60));
        assert_eq!(cc.seconds("s-maxage"), Seconds::Absent);
    }

    #[test]
    fn quoted_strings_keep_commas_and_escapes() {
        let cc = CacheControl::parse(r#"private="Set-Cookie, X-A", ext="a\"b,c", max-age="30""#);
        assert_eq!(
            cc.field_names("private"),
            Some(vec!["set-cookie".to_string(), "x-a".to_string()])
        );
        assert_eq!(cc.directives[1].value.as_deref(), Some("a\"b,c"));
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(30));
        assert_eq!(cc.directives.len(), 3);
    }

    #[test]
    fn unqualified_field_list_is_empty() {
        let cc = CacheControl::parse("no-cache");
        assert_eq!(cc.field_names("no-cache"), Some(vec![]));
        assert_eq!(cc.field_names("private"), None);
    }

    #[test]
    fn malformed_elements_are_dropped_and_bad_values_invalid() {
        let cc = CacheControl::parse(",, =5, bad name, max-age=abc, s-maxage=-1, no-store");
        assert!(cc.has("no-store"));
        assert!(!cc.has("bad name"));
        assert_eq!(cc.seconds("max-age"), Seconds::Invalid);
        assert_eq!(cc.seconds("s-maxage"), Seconds::Invalid);
        assert_eq!(
            CacheControl::parse("max-age").seconds("max-age"),
            Seconds::Invalid
        );
    }

    #[test]
    fn duplicates_agreeing_are_fine_differing_are_invalid() {
        let cc = CacheControl::from_headers(&headers(&["max-age=10", "max-age=10"]));
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(10));
        let cc = CacheControl::from_headers(&headers(&["max-age=10", "max-age=20"]));
        assert_eq!(cc.seconds("max-age"), Seconds::Invalid);
    }

    #[test]
    fn huge_delta_seconds_saturate() {
        let cc = CacheControl::parse("max-age=99999999999999999999999");
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(DELTA_SECONDS_MAX));
    }

    #[test]
    fn max_stale_argument_is_optional() {
        assert_eq!(
            CacheControl::parse("max-stale").optional_seconds("max-stale"),
            Some(None)
        );
        assert_eq!(
            CacheControl::parse("max-stale=5").optional_seconds("max-stale"),
            Some(Some(5))
        );
        assert_eq!(
            CacheControl::parse("max-stale=x").optional_seconds("max-stale"),
            Some(Some(0))
        );
        assert_eq!(
            CacheControl::parse("public").optional_seconds("max-stale"),
            None
        );
    }

    #[test]
    fn extensions_are_kept() {
        let cc = CacheControl::parse("community=\"UCI\", immutable, stale-while-revalidate=30");
        assert!(cc.has("community"));
        assert!(cc.has("immutable"));
        assert_eq!(cc.seconds("stale-while-revalidate"), Seconds::Valid(30));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let alphabet = [
            ",", "=", "\"", "\\", " ", "max-age", "1", "no-cache", "é", "\t", ";",
        ];
        let mut seed: u64 = 42;
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..12 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let cc = CacheControl::parse(&s);
            let _ = (
                cc.seconds("max-age"),
                cc.optional_seconds("max-stale"),
                cc.field_names("no-cache"),
            );
        }
    }
}
