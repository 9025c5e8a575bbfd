//! Targeted cache control (RFC 9213): `CDN-Cache-Control` and fields like it, for the
//! reverse proxy's cache.
//!
//! > A cache that implements this specification maintains a target list. A target list is an
//! > ordered list of the targeted field names that it uses for caching policy, with the order
//! > reflecting priority from most applicable to least. (section 2.2)
//!
//! > When a cache that implements this specification receives a response with one or more of
//! > the header field names on its target list, the cache MUST select the first (in target
//! > list order) field with a valid, non-empty value and use it to determine the caching
//! > policy for the response, and it MUST ignore the Cache-Control and Expires header fields
//! > in that response, unless no valid, non-empty value is available from the listed header
//! > fields. (section 2.2)
//!
//! > Targeted fields are Dictionary Structured Fields ... If a targeted field in a given
//! > response is empty, or a parsing error is encountered, that field MUST be ignored by the
//! > cache (i.e., it behaves as if the field were not present, likely falling back to other
//! > cache-control mechanisms present). (section 2.1)
//!
//! The chosen field's directives are turned into an ordinary [`CacheControl`] and put in
//! place of `Cache-Control` (with `Expires` gone) in a *decision head*
//! ([`decision_head`]): every RFC 9111 rule (storable, freshness, reuse, stale) then reads
//! the targeted policy unchanged. The head sent to clients keeps the origin's own
//! `Cache-Control`; the targeted fields are removed from it ([`strip`]).

use std::borrow::Cow;

use super::directives::{CacheControl, Directive};
use crate::http::codec::{Headers, ResponseHead};

/// Longest targeted field value read (longer: invalid, ignored).
const MAX_FIELD: usize = 4096;

/// Parses a targeted field's combined value (RFC 8941 section 4.2.2 Dictionary) into
/// directives. `None` for an empty value or any parsing error. Parameters are ignored; a
/// member whose value is Boolean false is left out; Boolean true is a directive without
/// argument; integers, decimals, tokens and strings become the argument; an inner list of
/// strings or tokens (`no-cache=("a" "b")`) becomes their comma-separated list.
pub fn parse(value: &str) -> Option<CacheControl> {
    if value.len() > MAX_FIELD {
        return None;
    }
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    p.ows();
    if p.done() {
        return None;
    }
    let mut directives: Vec<Directive> = Vec::new();
    loop {
        let name = p.key()?;
        let value = if p.eat(b'=') {
            p.member_value()?
        } else {
            Value::True
        };
        p.params()?;
        // A later member of the same name replaces an earlier one (RFC 8941 4.2.2).
        directives.retain(|d| d.name != name);
        match value {
            Value::False => {}
            Value::True => directives.push(Directive { name, value: None }),
            Value::Text(v) => directives.push(Directive {
                name,
                value: Some(v),
            }),
        }
        p.ows();
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return None;
        }
        p.ows();
        if p.done() {
            return None; // trailing comma
        }
    }
    Some(CacheControl { directives })
}

/// The first field of `targets` (lower-case names, most applicable first) that the
/// response carries with a valid, non-empty value, parsed. Field lines of one name are
/// combined with `, ` before parsing (RFC 8941 section 4.2).
pub fn select(headers: &Headers, targets: &[String]) -> Option<CacheControl> {
    targets.iter().find_map(|name| {
        if !headers.contains(name) {
            return None;
        }
        let lines: Vec<String> = headers
            .get_all(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        parse(&lines.join(", "))
    })
}

/// The head the caching rules read: with a valid targeted field, `Cache-Control` holds its
/// directives and `Expires` is gone; otherwise the head itself.
pub fn decision_head<'a>(head: &'a ResponseHead, targets: &[String]) -> Cow<'a, ResponseHead> {
    let Some(cc) = select(&head.headers, targets) else {
        return Cow::Borrowed(head);
    };
    let mut h = head.clone();
    h.headers.remove("cache-control");
    h.headers.remove("expires");
    if !cc.is_empty() {
        h.headers.push("Cache-Control", render(&cc));
    }
    Cow::Owned(h)
}

/// Removes every field on the target list (they are addressed to this cache).
pub fn strip(headers: &mut Headers, targets: &[String]) {
    for t in targets {
        headers.remove(t);
    }
}

/// Cache-Control syntax for directives: arguments that are not tokens are quoted.
fn render(cc: &CacheControl) -> String {
    let mut out = String::new();
    for d in &cc.directives {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(&d.name);
        if let Some(v) = &d.value {
            out.push('=');
            if !v.is_empty() && v.bytes().all(is_tchar) {
                out.push_str(v);
            } else {
                out.push('"');
                for c in v.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

enum Value {
    True,
    False,
    Text(String),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    /// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
    fn key(&mut self) -> Option<String> {
        let start = self.i;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.i += 1,
            _ => return None,
        }
        while matches!(
            self.peek(),
            Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*')
        ) {
            self.i += 1;
        }
        Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn member_value(&mut self) -> Option<Value> {
        if self.eat(b'(') {
            let mut items = Vec::new();
            loop {
                self.sp();
                if self.eat(b')') {
                    break;
                }
                match self.bare_item()? {
                    Value::Text(t) => items.push(t),
                    _ => return None,
                }
                self.params()?;
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return None;
                }
            }
            return Some(Value::Text(items.join(", ")));
        }
        self.bare_item()
    }

    /// `;key[=bare-item]` parameters: parsed (they must be valid) and dropped.
    fn params(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.sp();
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn bare_item(&mut self) -> Option<Value> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.i += 1;
                match self.peek()? {
                    b'1' => {
                        self.i += 1;
                        Some(Value::True)
                    }
                    b'0' => {
                        self.i += 1;
                        Some(Value::False)
                    }
                    _ => None,
                }
            }
            b':' => {
                self.i += 1;
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                {
                    self.i += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.eat(b':').then_some(Value::Text(text))
            }
            b if b.is_ascii_alphabetic() || b == b'*' => {
                let start = self.i;
                while self
                    .peek()
                    .is_some_and(|b| is_tchar(b) || b == b':' || b == b'/')
                {
                    self.i += 1;
                }
                Some(Value::Text(
                    String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
                ))
            }
            _ => None,
        }
    }

    /// Integer (at most 15 digits) or decimal (at most 12 + 3 digits).
    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        self.eat(b'-');
        let digits = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let int_len = self.i - digits;
        if int_len == 0 {
            return None;
        }
        if self.eat(b'.') {
            let frac = self.i;
            while self.peek().is_some_and(|b| b.is_ascii_digit()) {
                self.i += 1;
            }
            let frac_len = self.i - frac;
            if int_len > 12 || frac_len == 0 || frac_len > 3 {
                return None;
            }
        } else if int_len > 15 {
            return None;
        }
        Some(Value::Text(
            String::from_utf8_lossy(&self.s[start..self.i]).into_owned(),
        ))
    }

    fn string(&mut self) -> Option<Value> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let b = self.peek()?;
            self.i += 1;
            match b {
                b'"' => return Some(Value::Text(out)),
                b'\\' => {
                    let e = self.peek()?;
                    if e != b'"' && e != b'\\' {
                        return None;
                    }
                    self.i += 1;
                    out.push(char::from(e));
                }
                0x20..=0x7e => out.push(char::from(b)),
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::directives::Seconds;
    use crate::cache::freshness::freshness_lifetime;
    use crate::cache::testutil::{resp, t};

    fn targets() -> Vec<String> {
        vec!["gatehouse-cache-control".into(), "cdn-cache-control".into()]
    }

    #[test]
    fn dictionary_members_become_directives() {
        let cc = parse("max-age=60, no-cache=\"Set-Cookie\", private=?1, public=?0, x;p=1")
            .expect("valid");
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(60));
        assert_eq!(cc.field_names("no-cache"), Some(vec!["set-cookie".into()]));
        assert!(cc.has("private") && cc.has("x"));
        assert!(!cc.has("public"), "?0 is false: not present");
        let cc = parse("no-cache=(\"a\" \"b\"), max-age=1.5").expect("valid");
        assert_eq!(
            cc.field_names("no-cache"),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            cc.seconds("max-age"),
            Seconds::Invalid,
            "not an integer: stale"
        );
        let cc = parse("max-age=5, max-age=10").expect("valid");
        assert_eq!(
            cc.seconds("max-age"),
            Seconds::Valid(10),
            "the last one wins"
        );
    }

    #[test]
    fn invalid_or_empty_fields_are_ignored() {
        for bad in [
            "",
            "  ",
            "Max-Age=60",
            "max-age=60,",
            "max-age=60 s-maxage=1",
            "max-age=\"6",
            "max-age=1234567890123456",
            "max-age=?2",
            "max-age==1",
            ",max-age=1",
            "max-age=\"\u{7f}\"",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse(&"a,".repeat(3000)), None, "too long");
    }

    #[test]
    fn the_first_valid_target_wins_over_cache_control() {
        let head = resp(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("CDN-Cache-Control", "max-age=60"),
                ("Gatehouse-Cache-Control", "max-age=600"),
            ],
        );
        let d = decision_head(&head, &targets());
        let cc = CacheControl::from_headers(&d.headers);
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(600));
        assert!(!cc.has("no-store"));
        assert!(!d.headers.contains("expires"), "Expires is ignored too");
        assert_eq!(freshness_lifetime(&d, &cc, t(0)), 600);

        // Our own field is invalid: CDN-Cache-Control is next.
        let head = resp(
            200,
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60"),
                ("Gatehouse-Cache-Control", "max-age=\"x"),
            ],
        );
        let d = decision_head(&head, &targets());
        assert_eq!(
            CacheControl::from_headers(&d.headers).seconds("max-age"),
            Seconds::Valid(60)
        );
    }

    #[test]
    fn without_a_valid_target_cache_control_rules() {
        let head = resp(
            200,
            &[("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "")],
        );
        assert!(matches!(decision_head(&head, &targets()), Cow::Borrowed(_)));
        let head = resp(200, &[("CDN-Cache-Control", "max-age=60")]);
        assert!(
            matches!(decision_head(&head, &[]), Cow::Borrowed(_)),
            "no target list (the forward proxy): untouched"
        );
        let head = resp(200, &[("Other-Cache-Control", "max-age=60")]);
        assert!(matches!(decision_head(&head, &targets()), Cow::Borrowed(_)));
    }

    #[test]
    fn lines_combine_and_quoted_arguments_survive_rendering() {
        let head = resp(
            200,
            &[
                ("CDN-Cache-Control", "max-age=60"),
                ("CDN-Cache-Control", "no-cache=\"a, b\", ext=\"q\\\"x\""),
            ],
        );
        let d = decision_head(&head, &targets());
        let cc = CacheControl::from_headers(&d.headers);
        assert_eq!(cc.seconds("max-age"), Seconds::Valid(60));
        assert_eq!(
            cc.field_names("no-cache"),
            Some(vec!["a".into(), "b".into()])
        );
        assert!(cc.has("ext"));
    }

    #[test]
    fn strip_removes_the_target_list_only() {
        let mut h = resp(
            200,
            &[
                ("CDN-Cache-Control", "max-age=1"),
                ("Gatehouse-Cache-Control", "max-age=1"),
                ("Other-Cache-Control", "max-age=1"),
            ],
        )
        .headers;
        strip(&mut h, &targets());
        assert!(!h.contains("cdn-cache-control") && !h.contains("gatehouse-cache-control"));
        assert!(h.contains("other-cache-control"));
    }
}
