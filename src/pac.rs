//! The proxy auto-config file (`/proxy.pac` on the admin listener), generated from the
//! listeners and a list of destinations reached directly. Pure: config in, JavaScript out.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{AuthMethod, Config, ListenerConfig, ListenerKind, PacDirect};
use crate::policy::PolicyConfig;

/// Whether a browser can use this listener: every HTTP listener (browsers answer 407 with a
/// login), and SOCKS listeners that need no login and no TLS (browsers speak SOCKS5 without
/// authentication only).
pub fn offered(l: &ListenerConfig, policy: &PolicyConfig) -> bool {
    match &l.kind {
        ListenerKind::Http(_) => true,
        ListenerKind::Socks(s) => {
            s.users.is_empty()
                && s.tls.is_none()
                && s.auth.contains(&AuthMethod::None)
                && !policy.listeners.get(&l.name).is_some_and(|p| p.auth)
        }
        // Balancers are not proxies for browsers.
        ListenerKind::Tcp(_)
        | ListenerKind::Udp(_)
        | ListenerKind::Reverse(_)
        | ListenerKind::Tunnel(_)
        | ListenerKind::Published(_) => false,
    }
}

/// `FindProxyForURL` for this config: plain host names and the configured destinations go
/// DIRECT; everything else goes through the [`offered`] listeners in config order. There is no
/// DIRECT fallback: a proxy that is part of the firewall must not be bypassed when it is down.
/// `bound` gives each listener's actual address (port 0 in the config becomes a real port).
/// A listener bound to every address is named by `pac_host` (the config reader requires it).
pub fn generate(config: &Config, bound: &[(String, SocketAddr)]) -> String {
    let admin = config.admin.as_ref();
    let host_of = |ip: IpAddr| -> Option<String> {
        if ip.is_unspecified() {
            admin.and_then(|a| a.pac_host.clone())
        } else if ip.is_ipv6() {
            Some(format!("[{ip}]"))
        } else {
            Some(ip.to_string())
        }
    };
    let proxies: Vec<String> = config
        .listeners
        .iter()
        .filter_map(|l| {
            let addr = bound
                .iter()
                .find(|(n, _)| *n == l.name)
                .map_or(l.listen, |(_, a)| *a);
            if !offered(l, &config.policy) {
                return None;
            }
            let scheme = match &l.kind {
                ListenerKind::Http(_) => "PROXY",
                ListenerKind::Socks(_) => "SOCKS5",
                // Balancers are not proxies for browsers (`offered` says no).
                _ => return None,
            };
            host_of(addr.ip()).map(|h| format!("{scheme} {h}:{}", addr.port()))
        })
        .collect();
    let mut js = String::from("function FindProxyForURL(url, host) {\n");
    js.push_str("  if (isPlainHostName(host)) return \"DIRECT\";\n");
    for d in admin.map(|a| a.pac_direct.as_slice()).unwrap_or_default() {
        let cond = match d {
            PacDirect::Name(n) => format!("host == \"{n}\""),
            PacDirect::Subdomains(s) => format!("dnsDomainIs(host, \".{s}\")"),
            PacDirect::Domain(s) => format!("host == \"{s}\" || dnsDomainIs(host, \".{s}\")"),
            PacDirect::Net(ipnet::IpNet::V4(n)) => {
                format!(
                    "isInNet(dnsResolve(host), \"{}\", \"{}\")",
                    n.network(),
                    n.netmask()
                )
            }
            // PAC's isInNet is IPv4 only; IPv6 ranges need the isInNetEx extension.
            PacDirect::Net(ipnet::IpNet::V6(n)) => {
                format!("isInNetEx(dnsResolveEx(host), \"{n}\")")
            }
        };
        let _ = writeln!(js, "  if ({cond}) return \"DIRECT\";");
    }
    if proxies.is_empty() {
        js.push_str("  return \"DIRECT\";\n}\n");
    } else {
        let _ = writeln!(js, "  return \"{}\";\n}}", proxies.join("; "));
    }
    js
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pac_lists_direct_destinations_then_the_proxies() {
        let cfg = Config::parse(
            r#"
[[listeners]]
name = "a"
kind = "http"
listen = "10.0.0.5:3128"
[[listeners]]
name = "b"
kind = "http"
listen = "0.0.0.0:8080"
[admin]
listen = "127.0.0.1:9090"
pac_host = "proxy.corp.example"
pac_direct = ["intranet.example", "*.corp.example", "10.0.0.0/8"]
[policy.listeners.b]
open = true
"#,
        )
        .expect("valid");
        let js = generate(&cfg, &[]);
        assert!(
            js.contains("if (isPlainHostName(host)) return \"DIRECT\";"),
            "{js}"
        );
        assert!(js.contains("host == \"intranet.example\""), "{js}");
        assert!(js.contains("dnsDomainIs(host, \".corp.example\")"), "{js}");
        assert!(
            js.contains("isInNet(dnsResolve(host), \"10.0.0.0\", \"255.0.0.0\")"),
            "{js}"
        );
        assert!(
            js.contains("return \"PROXY 10.0.0.5:3128; PROXY proxy.corp.example:8080\";"),
            "{js}"
        );
    }

    #[test]
    fn bad_direct_entries_are_config_errors() {
        let errs = Config::parse(
            "[[listeners]]\nname=\"a\"\nkind=\"http\"\nlisten=\"127.0.0.1:1\"\n[admin]\nlisten=\"127.0.0.1:2\"\npac_direct=[\"bad name!\"]\n",
        )
        .expect_err("invalid");
        assert!(
            errs.iter().any(|e| e.path == "admin.pac_direct[0]"),
            "{errs:?}"
        );
    }

    fn pac(text: &str) -> String {
        generate(&Config::parse(text).expect("valid"), &[])
    }

    #[test]
    fn star_dot_is_subdomains_only_and_leading_dot_includes_the_name() {
        let js = pac(
            "[[listeners]]\nname=\"a\"\nkind=\"http\"\nlisten=\"127.0.0.1:3128\"\n[admin]\nlisten=\"127.0.0.1:2\"\npac_direct=[\"*.corp\", \".lan\"]\n",
        );
        assert!(
            js.contains("if (dnsDomainIs(host, \".corp\")) return"),
            "{js}"
        );
        assert!(
            !js.contains("host == \"corp\""),
            "*.corp must not match corp: {js}"
        );
        assert!(
            js.contains("if (host == \"lan\" || dnsDomainIs(host, \".lan\")) return"),
            "{js}"
        );
    }

    #[test]
    fn socks_listeners_that_need_a_login_are_never_offered() {
        let js = pac(r#"
[[listeners]]
name = "plain"
kind = "socks"
listen = "127.0.0.1:1080"
[[listeners]]
name = "policy-auth"
kind = "socks"
listen = "127.0.0.1:1081"
[[listeners]]
name = "own-users"
kind = "socks"
listen = "127.0.0.1:1082"
[[listeners.users]]
name = "u"
password = "p"
[admin]
listen = "127.0.0.1:9090"
[policy]
users_file = "/nonexistent"
[policy.listeners.policy-auth]
auth = true
"#);
        assert!(js.contains("return \"SOCKS5 127.0.0.1:1080\";"), "{js}");
        assert!(!js.contains("1081") && !js.contains("1082"), "{js}");
    }

    #[test]
    fn every_address_without_pac_host_is_a_config_error() {
        let text = "[[listeners]]\nname=\"a\"\nkind=\"http\"\nlisten=\"0.0.0.0:3128\"\n[admin]\nlisten=\"127.0.0.1:2\"\n[policy.listeners.a]\nopen = true\n";
        let errs = Config::parse(text).expect_err("invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "admin.pac_host");
        assert_eq!(errs[0].line, Some(5));
        // With pac_host, or without an admin listener (no PAC), it is fine.
        let ok = text.replace("[policy", "pac_host = \"proxy.example\"\n[policy");
        assert!(pac(&ok).contains("PROXY proxy.example:3128"));
        let no_admin = text.replace("[admin]\nlisten=\"127.0.0.1:2\"\n", "");
        assert!(Config::parse(&no_admin).is_ok());
    }
}
