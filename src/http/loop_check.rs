//! Forwarding-loop detection (as Squid does): a request whose `Via` already names this proxy
//! has been through it once and came back, so forwarding it again would go round forever.
//!
//! The token is the listener's `via` pseudonym, compared with each `Via` element's
//! received-by (RFC 9110 section 7.6.3: `received-protocol RWS received-by [RWS comment]`),
//! ASCII case-insensitively. Instances that forward to each other need distinct pseudonyms
//! (as Squid needs distinct `visible_hostname`s). With `via = false` nothing is added, so
//! nothing can be recognised: no detection (a loop back into the same process is still
//! refused by the destination guard, which never lets the proxy connect to its own listeners).

use super::codec::Headers;

/// Whether any `Via` element was received by `pseudonym`.
pub(super) fn via_names(headers: &Headers, pseudonym: &str) -> bool {
    headers
        .get_all("via")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| element.split_ascii_whitespace().nth(1))
        .any(|by| by.eq_ignore_ascii_case(pseudonym))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(vias: &[&str]) -> Headers {
        let mut h = Headers::default();
        h.push("Host", "a.example");
        for v in vias {
            h.push("Via", *v);
        }
        h
    }

    #[test]
    fn finds_the_pseudonym_in_any_element_of_any_field() {
        let yes: &[&[&str]] = &[
            &["1.1 gatehouse"],
            &["1.0 GateHouse"],
            &["1.1 edge, 1.1 gatehouse (Gatehouse/0.1)"],
            &["1.1 edge", "HTTP/1.1 gatehouse"],
            &["  1.1   gatehouse  ,1.1 other"],
        ];
        for v in yes {
            assert!(via_names(&headers(v), "gatehouse"), "{v:?}");
        }
        let no: &[&[&str]] = &[
            &[],
            &["1.1 edge"],
            &["1.1 gatehouse2"],
            &["1.1 edge (gatehouse)"],
            &["gatehouse"],
            &["1.1 proxy.gatehouse.example"],
        ];
        for v in no {
            assert!(!via_names(&headers(v), "gatehouse"), "{v:?}");
        }
        assert!(via_names(&headers(&["1.1 edge-7"]), "edge-7"));
    }

    #[test]
    fn bytes_that_are_not_text_are_not_a_match() {
        let mut h = Headers::default();
        h.push("Via", b"1.1 gate\xffhouse".to_vec());
        assert!(!via_names(&h, "gatehouse"));
    }
}
