//! Sticky sessions by cookie: the first response carries `Set-Cookie: NAME=TOKEN`, and later
//! requests with that cookie go to the same server while it is healthy.
//!
//! The token names a server without revealing it: a short keyed hash of the pool's name, the
//! server's label and an optional secret from the config, never its address. It is stable
//! across restarts and across Gatehouse instances with the same config, so a client keeps its
//! server behind several balancers. Without a secret someone who knows the pool's name could
//! test guesses of addresses against a token; set `secret` where that matters.

use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A fixed seed so tokens are stable; the secret (if any) is mixed into the hashed bytes.
const SEED: u64 = 0x6761_7465_686f_7573; // "gatehous"

/// The opaque token for one server: 16 lowercase hex digits.
pub fn token(pool: &str, server: &str, secret: &str) -> String {
    let mut input = Vec::with_capacity(pool.len() + server.len() + secret.len() + 2);
    input.extend_from_slice(secret.as_bytes());
    input.push(0);
    input.extend_from_slice(pool.as_bytes());
    input.push(0);
    input.extend_from_slice(server.as_bytes());
    format!("{:016x}", xxh3_64_with_seed(&input, SEED))
}

/// The `Set-Cookie` field value that pins a client to the server with `token`:
/// `NAME=TOKEN; Path=/; HttpOnly; SameSite=Lax`, with `Max-Age` when given (a session
/// cookie otherwise) and `Secure` when the client came over TLS.
pub fn set_cookie(name: &str, token: &str, max_age: Option<Duration>, secure: bool) -> String {
    let mut v = format!("{name}={token}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        v.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    if secure {
        v.push_str("; Secure");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stable_distinct_and_hide_the_address() {
        let a = token("web", "10.0.0.1:8080", "");
        assert_eq!(a, token("web", "10.0.0.1:8080", ""));
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!a.contains("10.0.0.1"));
        assert_ne!(a, token("web", "10.0.0.2:8080", ""));
        assert_ne!(a, token("api", "10.0.0.1:8080", ""));
        assert_ne!(a, token("web", "10.0.0.1:8080", "s3cret"));
        // The separators keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(token("ab", "c", ""), token("a", "bc", ""));
    }

    #[test]
    fn set_cookie_has_the_safe_attributes() {
        assert_eq!(
            set_cookie("GH_SRV", "abc", None, false),
            "GH_SRV=abc; Path=/; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            set_cookie("GH_SRV", "abc", Some(Duration::from_secs(3600)), true),
            "GH_SRV=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"
        );
    }
}
