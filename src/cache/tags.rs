//! Cache tags (surrogate keys): a response names the groups it belongs to in a configured
//! field, and an operator purges a whole group at once through the admin API.
//!
//! Two styles are read: `Surrogate-Key: a b c` (space-separated, Fastly's) and
//! `Cache-Tag: a,b,c` (comma-separated, Cloudflare's). Tags compare exactly (case kept).
//! Bounds: at most [`MAX_TAGS`] tags per response (the rest are ignored) and tags of at
//! most [`MAX_TAG_LEN`] bytes of visible ASCII (others are ignored).

use crate::http::codec::Headers;

pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 256;

/// How the tag field separates tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    Space,
    Comma,
}

/// The tags a response carries in field `name` (every line), deduplicated, in order.
pub fn parse(headers: &Headers, name: &str, sep: Separator) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in headers.get_all(name) {
        let line = String::from_utf8_lossy(line);
        let parts: Vec<&str> = match sep {
            Separator::Space => line.split([' ', '\t']).collect(),
            Separator::Comma => line.split(',').map(str::trim).collect(),
        };
        for t in parts {
            if out.len() == MAX_TAGS {
                return out;
            }
            let ok = !t.is_empty()
                && t.len() <= MAX_TAG_LEN
                && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if ok && !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testutil::resp;

    #[test]
    fn both_styles() {
        let h = resp(
            200,
            &[("Surrogate-Key", "a  b\tc"), ("Surrogate-Key", "b d")],
        )
        .headers;
        assert_eq!(
            parse(&h, "surrogate-key", Separator::Space),
            ["a", "b", "c", "d"]
        );
        let h = resp(200, &[("Cache-Tag", "Product-1, product-2 ,, x y")]).headers;
        assert_eq!(
            parse(&h, "cache-tag", Separator::Comma),
            ["Product-1", "product-2", "x y"]
        );
        assert!(parse(&h, "surrogate-key", Separator::Space).is_empty());
    }

    #[test]
    fn bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let h = resp(200, &[("Surrogate-Key", &many.join(" "))]).headers;
        let tags = parse(&h, "surrogate-key", Separator::Space);
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(tags[0], "t0");
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let h = resp(200, &[("Surrogate-Key", &format!("{long} ok caf\u{e9}"))]).headers;
        assert_eq!(parse(&h, "surrogate-key", Separator::Space), ["ok"]);
    }
}
