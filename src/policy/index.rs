//! The host index: which rules' host conditions match a name, without visiting every rule.
//!
//! Exact names and `*.suffix` / `.domain` patterns go into hash maps from name to the rules
//! that hold them, so a lookup costs one probe per label of the name. All `re:` patterns form
//! one `RegexSet`, matched once per lookup.

use std::collections::HashMap;

use regex::RegexSet;

use super::matcher::HostPattern;

/// Compiled regex programs may take up to this much memory in total.
const REGEX_SIZE_LIMIT: usize = 64 << 20;

#[derive(Debug, Default)]
pub struct HostIndex {
    exact: HashMap<Box<str>, Vec<u32>>,
    /// `*.x`: strict subdomains of `x`.
    subdomains: HashMap<Box<str>, Vec<u32>>,
    /// `.x`: `x` and its subdomains.
    domains: HashMap<Box<str>, Vec<u32>>,
    regex: Option<RegexSet>,
    /// Rule index of each pattern in `regex`.
    regex_rules: Vec<u32>,
}

impl HostIndex {
    /// `rules` yields each rule's host patterns, in rule order.
    pub fn build<'a>(rules: impl Iterator<Item = &'a [HostPattern]>) -> Result<HostIndex, String> {
        let mut ix = HostIndex::default();
        let mut regexes = Vec::new();
        for (i, patterns) in rules.enumerate() {
            let i = u32::try_from(i).map_err(|_| "too many rules".to_string())?;
            for p in patterns {
                let (map, key) = match p {
                    HostPattern::Exact(n) => (&mut ix.exact, n),
                    HostPattern::Subdomains(n) => (&mut ix.subdomains, n),
                    HostPattern::Domain(n) => (&mut ix.domains, n),
                    HostPattern::Regex(r) => {
                        regexes.push(r.as_str());
                        ix.regex_rules.push(i);
                        continue;
                    }
                };
                let list = map.entry(key.as_str().into()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        if !regexes.is_empty() {
            let set = regex::RegexSetBuilder::new(regexes)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| e.to_string())?;
            ix.regex = Some(set);
        }
        Ok(ix)
    }

    /// Appends the rules whose host condition matches `name` (normalised) to `out`, unsorted
    /// and possibly repeated.
    pub fn candidates(&self, name: &str, out: &mut Vec<u32>) {
        let extend = |out: &mut Vec<u32>, map: &HashMap<Box<str>, Vec<u32>>, key: &str| {
            if let Some(v) = map.get(key) {
                out.extend_from_slice(v);
            }
        };
        extend(out, &self.exact, name);
        extend(out, &self.domains, name);
        if !self.subdomains.is_empty() || !self.domains.is_empty() {
            let mut rest = name;
            while let Some((_, parent)) = rest.split_once('.') {
                extend(out, &self.subdomains, parent);
                extend(out, &self.domains, parent);
                rest = parent;
            }
        }
        if let Some(set) = &self.regex {
            out.extend(
                set.matches(name)
                    .iter()
                    .filter_map(|i| self.regex_rules.get(i)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(rules: &[&[&str]]) -> HostIndex {
        let parsed: Vec<Vec<HostPattern>> = rules
            .iter()
            .map(|r| {
                r.iter()
                    .map(|p| HostPattern::parse(p).expect("pattern"))
                    .collect()
            })
            .collect();
        HostIndex::build(parsed.iter().map(Vec::as_slice)).expect("index")
    }

    fn hits(ix: &HostIndex, name: &str) -> Vec<u32> {
        let mut v = Vec::new();
        ix.candidates(name, &mut v);
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn exact_suffix_domain_and_regex() {
        let ix = index(&[
            &["example.com"],
            &["*.example.com"],
            &[".example.org"],
            &["re:^ads\\.", "re:tracker"],
            &["*.com"],
            &["bücher.example"],
        ]);
        let cases: &[(&str, &[u32])] = &[
            ("example.com", &[0, 4]),
            ("www.example.com", &[1, 4]),
            ("a.b.example.com", &[1, 4]),
            ("example.org", &[2]),
            ("x.example.org", &[2]),
            ("ads.example.org", &[2, 3]),
            ("my-tracker.net", &[3]),
            ("notexample.com", &[4]),
            ("example.net", &[]),
            ("com", &[]),
            ("xn--bcher-kva.example", &[5]),
        ];
        for (name, want) in cases {
            assert_eq!(hits(&ix, name), *want, "{name}");
        }
    }

    #[test]
    fn a_rule_listing_a_name_twice_is_indexed_once() {
        let ix = index(&[&["a.example", "a.example"]]);
        let mut v = Vec::new();
        ix.candidates("a.example", &mut v);
        assert_eq!(v, [0]);
    }
}
