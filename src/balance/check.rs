//! The HTTP active health check's verdict: which statuses pass, and whether the body holds the
//! expected text. The probing I/O is `pool/check.rs`; this part is pure.

/// Response statuses that pass a check: ranges such as `200-399`, or single codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl Default for StatusRanges {
    /// `200-399`, HAProxy's and nginx's default.
    fn default() -> Self {
        StatusRanges(vec![(200, 399)])
    }
}

impl StatusRanges {
    /// One item: `"200"`, `"200-299"`; several may be joined by commas (`"200,204,301-302"`).
    pub fn parse(s: &str) -> Result<StatusRanges, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (code(a)?, code(b)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!("range {part:?} runs backwards"));
            }
            out.push((lo, hi));
        }
        Ok(StatusRanges(out))
    }

    /// Several items, each as [`StatusRanges::parse`] reads it.
    pub fn parse_list<'a>(
        items: impl IntoIterator<Item = &'a str>,
    ) -> Result<StatusRanges, String> {
        let mut out = Vec::new();
        for item in items {
            out.extend(StatusRanges::parse(item)?.0);
        }
        if out.is_empty() {
            return Err("no status given".into());
        }
        Ok(StatusRanges(out))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

fn code(s: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a three-digit status"));
    }
    let c: u16 = s.parse().map_err(|_| format!("{s:?} is not a status"))?;
    if !(100..=599).contains(&c) {
        return Err(format!("{c} is not a status from 100 to 599"));
    }
    Ok(c)
}

/// What an HTTP check expects of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expect {
    pub status: StatusRanges,
    /// A substring the first [`BODY_LIMIT`] bytes of the (decoded) body must contain.
    pub body: Option<Vec<u8>>,
}

/// Most body bytes a check reads looking for `expect_body`.
pub const BODY_LIMIT: usize = 64 * 1024;

impl Expect {
    /// Whether a response passes: its status first, then (when asked) its body, of which at
    /// most [`BODY_LIMIT`] bytes are looked at. `Err` says why not, for the log.
    pub fn judge(&self, status: u16, body: &[u8]) -> Result<(), String> {
        if !self.status.contains(status) {
            return Err(format!("status {status}"));
        }
        if let Some(want) = &self.body {
            let body = &body[..body.len().min(BODY_LIMIT)];
            if !want.is_empty() && !body.windows(want.len()).any(|w| w == want.as_slice()) {
                return Err(format!(
                    "body lacks {:?}",
                    String::from_utf8_lossy(want)
                        .chars()
                        .take(40)
                        .collect::<String>()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        let r = StatusRanges::parse("200-299, 304").expect("valid");
        assert!(r.contains(200) && r.contains(299) && r.contains(304));
        assert!(!r.contains(300) && !r.contains(199) && !r.contains(500));
        let d = StatusRanges::default();
        assert!(d.contains(200) && d.contains(399) && !d.contains(400));
        let l = StatusRanges::parse_list(["200", "301-302"]).expect("valid");
        assert!(l.contains(301) && !l.contains(303));
        for bad in [
            "", "2xx", "200-", "-200", "99", "600", "1000", "300-200", "200,,204",
        ] {
            assert!(StatusRanges::parse(bad).is_err(), "{bad:?}");
        }
        assert!(StatusRanges::parse_list([]).is_err());
    }

    #[test]
    fn judge_checks_status_then_body() {
        let e = Expect::default();
        assert_eq!(e.judge(200, b""), Ok(()));
        assert_eq!(e.judge(500, b""), Err("status 500".into()));
        let e = Expect {
            status: StatusRanges::parse("200").expect("valid"),
            body: Some(b"\"ok\"".to_vec()),
        };
        assert_eq!(e.judge(200, b"{\"status\":\"ok\"}"), Ok(()));
        assert!(e.judge(200, b"{\"status\":\"down\"}").is_err());
        assert!(e.judge(503, b"\"ok\"").is_err());
        // Only the first 64 KiB count.
        let mut late = vec![b' '; BODY_LIMIT];
        late.extend_from_slice(b"\"ok\"");
        assert!(e.judge(200, &late).is_err());
    }
}
