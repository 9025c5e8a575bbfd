//! Which certificate a ClientHello gets: its SNI against each certificate's SAN DNS names.
//!
//! Order: an exact name (the first certificate that lists it), then a wildcard `*.suffix`
//! (the longest suffix; as in RFC 6125 section 6.4.3 a wildcard covers exactly one label, so
//! `*.b.test` matches `x.b.test` but neither `b.test` nor `y.x.b.test`), then the default
//! certificate, or nothing when the listener is strict about names.

use std::collections::HashMap;

/// The SNI names of a listener's certificates, by index.
#[derive(Debug, Clone, Default)]
pub struct CertNames {
    exact: HashMap<String, usize>,
    /// (suffix after `*.`, certificate), longest suffix first.
    wildcards: Vec<(String, usize)>,
    default: Option<usize>,
}

impl CertNames {
    /// `names[i]` are certificate `i`'s SAN DNS names; `default` is served when none matches.
    pub fn new(names: &[Vec<String>], default: Option<usize>) -> CertNames {
        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for (i, list) in names.iter().enumerate() {
            for n in list {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                match n.strip_prefix("*.") {
                    Some(suffix) if !suffix.is_empty() => wildcards.push((suffix.to_string(), i)),
                    Some(_) => {}
                    None => {
                        exact.entry(n).or_insert(i);
                    }
                }
            }
        }
        // Stable: among equal suffixes the first certificate stays first.
        wildcards.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        CertNames {
            exact,
            wildcards,
            default: default.filter(|&d| d < names.len()),
        }
    }

    /// The certificate for a ClientHello's server name (`None`: it sent none).
    pub fn choose(&self, sni: Option<&str>) -> Option<usize> {
        let Some(sni) = sni else {
            return self.default;
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&sni) {
            return Some(i);
        }
        // One label, then the suffix: `x.b.test` -> `b.test`.
        if let Some((label, parent)) = sni.split_once('.') {
            if !label.is_empty() {
                if let Some(&(_, i)) = self.wildcards.iter().find(|(s, _)| s == parent) {
                    return Some(i);
                }
            }
        }
        self.default
    }

    /// Whether a certificate lists any name at all.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }
}

/// The DNS names in a certificate's subject alternative names (exact and `*.` wildcards).
pub fn san_dns_names(
    cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
) -> Result<Vec<String>, String> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("{e:?}"))?;
    Ok(ee.valid_dns_names().map(str::to_ascii_lowercase).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(lists: &[&[&str]], default: Option<usize>) -> CertNames {
        let v: Vec<Vec<String>> = lists
            .iter()
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .collect();
        CertNames::new(&v, default)
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let n = names(
            &[&["a.test"], &["*.b.test", "b.test"], &["x.b.test"]],
            Some(0),
        );
        assert_eq!(n.choose(Some("a.test")), Some(0));
        assert_eq!(n.choose(Some("A.Test.")), Some(0), "case and trailing dot");
        assert_eq!(n.choose(Some("b.test")), Some(1));
        assert_eq!(n.choose(Some("y.b.test")), Some(1));
        assert_eq!(n.choose(Some("x.b.test")), Some(2), "exact beats wildcard");
        assert_eq!(n.choose(Some("z.y.b.test")), Some(0), "one label only");
        assert_eq!(n.choose(Some("c.test")), Some(0));
        assert_eq!(n.choose(None), Some(0));
    }

    #[test]
    fn longest_wildcard_and_first_listed_win() {
        let n = names(
            &[
                &["*.test"],
                &["*.b.test"],
                &["*.b.test", "a.test"],
                &["a.test"],
            ],
            None,
        );
        assert_eq!(n.choose(Some("x.b.test")), Some(1));
        assert_eq!(n.choose(Some("b.test")), Some(0));
        assert_eq!(n.choose(Some("a.test")), Some(2));
        assert_eq!(n.choose(Some(".b.test")), None, "empty label");
    }

    #[test]
    fn strict_refuses_unknown_and_missing_names() {
        let n = names(&[&["a.test"]], None);
        assert_eq!(n.choose(Some("a.test")), Some(0));
        assert_eq!(n.choose(Some("b.test")), None);
        assert_eq!(n.choose(None), None);
        assert_eq!(names(&[&["a.test"]], Some(5)).choose(None), None);
        assert!(names(&[&[]], Some(0)).is_empty());
        assert!(!names(&[&["*.a.test"]], None).is_empty());
    }

    #[test]
    fn san_names_are_read_from_the_certificate() {
        let c = rcgen::generate_simple_self_signed(vec!["A.test".into(), "*.b.test".into()])
            .expect("cert");
        let got = san_dns_names(c.cert.der()).expect("parses");
        assert_eq!(got, ["a.test", "*.b.test"]);
        let junk = tokio_rustls::rustls::pki_types::CertificateDer::from(vec![1, 2, 3]);
        assert!(san_dns_names(&junk).is_err());
    }
}
