//! The proxy auto-config file (`/proxy.pac` on the admin listener), generated from the
//! listeners and a list of destinations reached directly. Pure: config in, JavaScript out.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{Config, ListenerKind, PacDirect};

/// `FindProxyForURL` for this config: plain host names and the configured destinations go
/// DIRECT; everything else goes through the HTTP listeners and the plain, password-less SOCKS
/// listeners, in config order. There is no
/// DIRECT fallback: a proxy that is part of the firewall must not be bypassed when it is down.
/// `bound` gives each listener's actual address (port 0 in the config becomes a real port).
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
            match &l.kind {
                ListenerKind::Http(_) => {
                    host_of(addr.ip()).map(|h| format!("PROXY {h}:{}", addr.port()))
                }
                // Browsers speak SOCKS5 without authentication only.
                ListenerKind::Socks(s) if s.users.is_empty() && s.tls.is_none() => {
                    host_of(addr.ip()).map(|h| format!("SOCKS5 {h}:{}", addr.port()))
                }
                // Socks with login, and balancers (not proxies for browsers).
                ListenerKind::Socks(_) | ListenerKind::Tcp(_) | ListenerKind::Udp(_) => None,
            }
        })
        .collect();
    let mut js = String::from("function FindProxyForURL(url, host) {\n");
    js.push_str("  if (isPlainHostName(host)) return \"DIRECT\";\n");
    for d in admin.map(|a| a.pac_direct.as_slice()).unwrap_or_default() {
        let cond = match d {
            PacDirect::Name(n) => format!("host == \"{n}\""),
            PacDirect::Suffix(s) => format!("host == \"{s}\" || dnsDomainIs(host, \".{s}\")"),
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
}
