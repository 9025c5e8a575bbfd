use std::net::IpAddr;
use std::time::SystemTime;

use super::*;
use crate::policy::{Identity, PolicyConfig, Precheck, Protocol, Refusal};

const LISTENERS: &[&str] = &["http", "socks", "public"];

fn policy(toml: &str) -> Policy {
    policy_with_own(toml, vec![])
}

fn policy_with_own(toml: &str, own: Vec<IpAddr>) -> Policy {
    let cfg = PolicyConfig::from_toml(toml, LISTENERS).unwrap_or_else(|e| panic!("config: {e:?}"));
    Policy::compile_with_users(&cfg, own, None).expect("policy")
}

fn at(s: &str) -> SystemTime {
    let ts = s.parse::<jiff::Timestamp>().expect("timestamp");
    SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(ts.as_second()).expect("after 1970"))
}

/// A request description; `host` may be a name (kept exactly as given) or an address.
#[derive(Clone)]
struct Req {
    listener: &'static str,
    client: &'static str,
    user: Option<Identity>,
    host: &'static str,
    port: u16,
    proto: Protocol,
    method: Option<&'static str>,
    at: SystemTime,
}

fn req(host: &'static str) -> Req {
    Req {
        listener: "http",
        client: "10.1.2.3",
        user: None,
        host,
        port: 443,
        proto: Protocol::Connect,
        method: Some("CONNECT"),
        at: at("2026-11-23T10:00:00Z"),
    }
}

fn host_of(s: &str) -> Host {
    match s.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(s.to_string()),
    }
}

/// Runs the documented sequence; `addrs` is what DNS would answer. Returns "action:rule".
fn eval(p: &Policy, r: &Req, addrs: &[&str]) -> String {
    let host = host_of(r.host);
    let a = AccessRequest {
        listener: r.listener,
        client: r.client.parse().expect("client"),
        user: r.user.as_ref(),
        dest_host: Some(&host),
        dest_port: r.port,
        protocol: r.proto,
        method: r.method,
        at: r.at,
    };
    let v = match p.precheck(&a) {
        Precheck::Decided(v) => v,
        Precheck::Resolve => {
            let ips: Vec<IpAddr> = addrs.iter().map(|s| s.parse().expect("addr")).collect();
            p.decide(&a, &ips)
        }
    };
    match (&v.action, v.refusal) {
        (_, Some(r)) => format!("deny:guard:{r}"),
        (Action::Route(parents), _) => format!("route:{}:{}", v.rule, parents.join(",")),
        (a, None) => format!("{}:{}", a.as_str(), v.rule),
    }
}

fn user(name: &str, groups: &[&str]) -> Option<Identity> {
    Some(Identity {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
}

const RULES: &str = r#"
[policy]
default = "allow"
time_zone = "UTC"
[policy.listeners.socks]
default = "deny"
[[policy.parents]]
name = "corp"
url = "http://proxy.corp.test:3128"
[[policy.rules]]
name = "social"
action = "deny"
hosts = ["*.facebook.com", ".fb.com", "*.bücher.example"]
[[policy.rules]]
name = "ads"
action = "deny"
hosts = ["re:^ads\\."]
[[policy.rules]]
name = "intranet-staff"
action = "allow"
hosts = ["intranet.corp.test"]
groups = ["staff"]
users = ["root"]
[[policy.rules]]
name = "intranet"
action = "deny"
hosts = ["intranet.corp.test"]
[[policy.rules]]
name = "mail"
action = "deny"
ports = [25, "465-587"]
[[policy.rules]]
name = "office-get"
action = "allow"
listeners = ["socks"]
clients = ["10.0.0.0/8", "2001:db8::/32"]
protocols = ["socks-connect"]
[[policy.rules]]
name = "partner"
action = "route"
hosts = [".partner.test"]
parents = ["corp", "direct"]
[[policy.rules]]
name = "dbnet"
action = "deny"
dest_addrs = ["203.0.113.0/24"]
[[policy.rules]]
name = "local-app"
action = "allow"
dest_addrs = ["127.0.0.1/32"]
ports = [9999]
[[policy.rules]]
name = "put-only-business-hours"
action = "deny"
protocols = ["http"]
methods = ["put", "DELETE"]
time = "18:00-08:00"
[[policy.rules]]
name = "weekend"
action = "deny"
listeners = ["public"]
days = ["sat-sun"]
"#;

#[test]
fn first_match_wins_over_every_condition() {
    let p = policy(RULES);
    let pub1 = &["93.184.216.34"];
    let r = req;
    let with = |f: &dyn Fn(&mut Req)| {
        let mut x = req("www.example.com");
        f(&mut x);
        x
    };
    let cases: Vec<(Req, &[&str], &str)> = vec![
        (r("www.example.com"), pub1, "allow:default"),
        (r("www.facebook.com"), &[], "deny:social"),
        (r("WWW.Facebook.COM."), &[], "deny:social"),
        (r("facebook.com"), pub1, "allow:default"),
        (r("fb.com"), &[], "deny:social"),
        (r("xn--bad-.facebook.com"), &[], "deny:social"),
        (r("m.fb.com"), &[], "deny:social"),
        (r("shop.xn--bcher-kva.example"), &[], "deny:social"),
        (r("shop.bücher.example"), &[], "deny:social"),
        (r("ads.example.net"), &[], "deny:ads"),
        (r("intranet.corp.test"), &[], "deny:intranet"),
        (
            Req {
                user: user("alice", &["staff"]),
                ..r("intranet.corp.test")
            },
            &["10.9.9.9"],
            "allow:intranet-staff",
        ),
        (
            Req {
                user: user("root", &[]),
                ..r("intranet.corp.test")
            },
            &["10.9.9.9"],
            "allow:intranet-staff",
        ),
        (
            Req {
                user: user("bob", &["dev"]),
                ..r("intranet.corp.test")
            },
            &[],
            "deny:intranet",
        ),
        (with(&|x| x.port = 25), &[], "deny:mail"),
        (with(&|x| x.port = 500), &[], "deny:mail"),
        (with(&|x| x.port = 588), pub1, "allow:default"),
        (with(&|x| x.listener = "socks"), pub1, "deny:default"),
        (
            with(&|x| {
                x.listener = "socks";
                x.proto = Protocol::SocksConnect
            }),
            pub1,
            "allow:office-get",
        ),
        (
            with(&|x| {
                x.listener = "socks";
                x.proto = Protocol::SocksConnect;
                x.client = "::ffff:10.7.7.7"
            }),
            pub1,
            "allow:office-get",
        ),
        (
            with(&|x| {
                x.listener = "socks";
                x.proto = Protocol::SocksConnect;
                x.client = "2001:db8::7"
            }),
            pub1,
            "allow:office-get",
        ),
        (
            with(&|x| {
                x.listener = "socks";
                x.proto = Protocol::SocksConnect;
                x.client = "192.0.2.1"
            }),
            pub1,
            "deny:default",
        ),
        (
            with(&|x| {
                x.listener = "socks";
                x.proto = Protocol::SocksBind
            }),
            pub1,
            "deny:default",
        ),
        (r("api.partner.test"), &[], "route:partner:corp,direct"),
        (r("db.example.com"), &["203.0.113.9"], "deny:dbnet"),
        (r("db.example.com"), &["::ffff:203.0.113.9"], "deny:dbnet"),
        (r("203.0.113.10"), &[], "deny:dbnet"),
        (
            r("mixed.example.com"),
            &["93.184.216.34", "203.0.113.9"],
            "deny:dbnet",
        ),
        (
            with(&|x| {
                x.proto = Protocol::Http;
                x.method = Some("PUT");
                x.at = at("2026-11-23T19:00:00Z")
            }),
            pub1,
            "deny:put-only-business-hours",
        ),
        (
            with(&|x| {
                x.proto = Protocol::Http;
                x.method = Some("put");
                x.at = at("2026-11-23T07:59:00Z")
            }),
            pub1,
            "deny:put-only-business-hours",
        ),
        (
            with(&|x| {
                x.proto = Protocol::Http;
                x.method = Some("PUT");
                x.at = at("2026-11-23T08:00:00Z")
            }),
            pub1,
            "allow:default",
        ),
        (
            with(&|x| {
                x.proto = Protocol::Http;
                x.method = Some("GET");
                x.at = at("2026-11-23T19:00:00Z")
            }),
            pub1,
            "allow:default",
        ),
        (
            with(&|x| {
                x.listener = "public";
                x.at = at("2026-11-28T12:00:00Z")
            }),
            pub1,
            "deny:weekend",
        ),
        (
            with(&|x| {
                x.listener = "public";
                x.at = at("2026-11-27T23:59:00Z")
            }),
            pub1,
            "allow:default",
        ),
    ];
    for (i, (r, addrs, want)) in cases.iter().enumerate() {
        assert_eq!(eval(&p, r, addrs), *want, "case {i}: {}", r.host);
    }
}

#[test]
fn the_guard_refuses_special_addresses_unless_a_rule_names_them() {
    let own: Vec<IpAddr> = vec!["192.0.2.10".parse().expect("ip")];
    let p = policy_with_own(RULES, own);
    let cases: &[(&str, u16, &[&str], &str)] = &[
        ("evil.example", 443, &["127.0.0.1"], "deny:guard:loopback"),
        ("evil.example", 443, &["::1"], "deny:guard:loopback"),
        (
            "evil.example",
            443,
            &["::ffff:127.0.0.1"],
            "deny:guard:loopback",
        ),
        (
            "metadata.example",
            80,
            &["169.254.169.254"],
            "deny:guard:link-local",
        ),
        ("169.254.169.254", 80, &[], "deny:guard:link-local"),
        ("[::1]", 80, &[], "deny:guard:loopback"),
        (
            "self.example",
            443,
            &["192.0.2.10"],
            "deny:guard:own-address",
        ),
        (
            "two.example",
            443,
            &["93.184.216.34", "127.0.0.2"],
            "deny:guard:loopback",
        ),
        ("zero.example", 443, &["0.0.0.0"], "deny:guard:unspecified"),
        ("intra.example", 443, &["10.0.0.1"], "allow:default"),
        ("local.example", 9999, &["127.0.0.1"], "allow:local-app"),
        ("127.0.0.1", 9999, &[], "allow:local-app"),
        ("local.example", 9998, &["127.0.0.1"], "deny:guard:loopback"),
        // Routed traffic is resolved by the parent; no local lookup, no guard.
        (
            "loop.partner.test",
            443,
            &["127.0.0.1"],
            "route:partner:corp,direct",
        ),
    ];
    for (host, port, addrs, want) in cases {
        let r = Req {
            port: *port,
            host: host.trim_start_matches('[').trim_end_matches(']'),
            ..req(host)
        };
        assert_eq!(eval(&p, &r, addrs), *want, "{host}:{port} -> {addrs:?}");
    }
    let strict = policy(&RULES.replace(
        "default = \"allow\"\ntime_zone",
        "default = \"allow\"\nrefuse_private = true\ntime_zone",
    ));
    assert_eq!(
        eval(&strict, &req("intra.example"), &["10.0.0.1"]),
        "deny:guard:private"
    );
    assert_eq!(
        eval(&strict, &req("cg.example"), &["100.64.1.1"]),
        "deny:guard:private"
    );
    assert_eq!(
        eval(&strict, &req("ula.example"), &["fd12::1"]),
        "deny:guard:private"
    );
    assert_eq!(
        eval(&strict, &req("www.example"), &["93.184.216.34"]),
        "allow:default"
    );
}

#[test]
fn precheck_decides_without_dns_only_when_no_address_can_change_the_answer() {
    let p = policy(RULES);
    let host = |s: &str| Host::Name(s.into());
    let check = |h: &Host, port: u16| {
        let a = AccessRequest {
            listener: "http",
            client: "10.1.2.3".parse().expect("ip"),
            user: None,
            dest_host: Some(h),
            dest_port: port,
            protocol: Protocol::Connect,
            method: Some("CONNECT"),
            at: at("2026-11-23T10:00:00Z"),
        };
        let pre = match p.precheck(&a) {
            Precheck::Decided(v) => Some(v),
            Precheck::Resolve => None,
        };
        // Whatever DNS answers, step 2 agrees with a decided step 1.
        for addr in ["93.184.216.34", "203.0.113.1", "127.0.0.1", "10.0.0.1"] {
            let v = p.decide(&a, &[addr.parse().expect("ip")]);
            if let Some(pre) = &pre {
                assert_eq!(
                    (&pre.action, &pre.rule),
                    (&v.action, &v.rule),
                    "{h}:{port} {addr}"
                );
            }
        }
        pre.map(|v| v.rule.to_string())
    };
    assert_eq!(
        check(&host("www.facebook.com"), 443).as_deref(),
        Some("social")
    );
    assert_eq!(
        check(&host("x.partner.test"), 443).as_deref(),
        Some("partner")
    );
    assert_eq!(check(&host("www.example.com"), 25).as_deref(), Some("mail"));
    // Allowed names and names an address rule may catch must be resolved first.
    assert_eq!(check(&host("www.example.com"), 443), None);
    assert_eq!(
        check(&host("intranet.corp.test"), 443).as_deref(),
        Some("intranet")
    );
    // With default deny and an address rule ahead, the name must still be resolved.
    let q = policy("[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"net\"\naction = \"allow\"\ndest_addrs = [\"93.184.216.0/24\"]\n");
    let h = host("www.example.com");
    let a = AccessRequest {
        listener: "http",
        client: "10.1.2.3".parse().expect("ip"),
        user: None,
        dest_host: Some(&h),
        dest_port: 443,
        protocol: Protocol::Connect,
        method: None,
        at: SystemTime::now(),
    };
    assert!(matches!(q.precheck(&a), Precheck::Resolve));
    assert_eq!(
        &*q.decide(&a, &["93.184.216.34".parse().expect("ip")]).rule,
        "net"
    );
    assert_eq!(
        &*q.decide(&a, &["93.184.217.34".parse().expect("ip")]).rule,
        "default"
    );
    assert_eq!(&*q.decide(&a, &[]).rule, "no-address");
}

#[test]
fn requests_without_a_destination_skip_host_and_address_rules() {
    let p = policy(RULES);
    let a = AccessRequest {
        listener: "socks",
        client: "10.1.2.3".parse().expect("ip"),
        user: None,
        dest_host: None,
        dest_port: 0,
        protocol: Protocol::SocksConnect,
        method: None,
        at: SystemTime::now(),
    };
    match p.precheck(&a) {
        Precheck::Decided(v) => assert_eq!(&*v.rule, "office-get"),
        Precheck::Resolve => panic!("nothing to resolve"),
    }
}

#[test]
fn verdicts_carry_the_rules_header_rewrites() {
    let p = policy(
        "[policy]\n[[policy.rules]]\nname = \"anon\"\naction = \"allow\"\nhosts = [\".example\"]\nanonymous = true\n\
         request_headers = { set = { \"X-Env\" = \"prod\" }, remove = [\"Cookie\"] }\n\
         response_headers = { add = { \"X-Seen\" = \"1\" } }\n",
    );
    let v = match p.precheck(&AccessRequest {
        listener: "http",
        client: "10.1.2.3".parse().expect("ip"),
        user: None,
        dest_host: Some(&Host::Ip("93.184.216.34".parse().expect("ip"))),
        dest_port: 443,
        protocol: Protocol::Connect,
        method: None,
        at: SystemTime::now(),
    }) {
        Precheck::Decided(v) => v,
        Precheck::Resolve => panic!("address destinations are decided at once"),
    };
    assert_eq!(
        &*v.rule, "default",
        "host rules never match an address destination"
    );
    let r = req("www.example");
    let h = host_of(r.host);
    let a = AccessRequest {
        listener: r.listener,
        client: "10.1.2.3".parse().expect("ip"),
        user: None,
        dest_host: Some(&h),
        dest_port: 443,
        protocol: Protocol::Connect,
        method: None,
        at: SystemTime::now(),
    };
    let v = p.decide(&a, &["93.184.216.34".parse().expect("ip")]);
    assert_eq!(&*v.rule, "anon");
    assert!(v.rewrite.anonymous);
    assert_eq!(
        v.rewrite.request.set,
        [("X-Env".to_string(), "prod".to_string())]
    );
    assert_eq!(v.rewrite.request.remove, ["Cookie"]);
    assert_eq!(
        v.rewrite.response.add,
        [("X-Seen".to_string(), "1".to_string())]
    );
}

#[test]
fn open_proxy_guard() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let cases: &[(&str, &str, &str, bool)] = &[
        // (policy body, listener, bind, refused)
        ("", "http", "127.0.0.1", false),
        ("", "http", "::1", false),
        ("", "http", "0.0.0.0", true),
        ("", "http", "192.0.2.1", true),
        ("[policy.listeners.http]\nopen = true\n", "http", "0.0.0.0", false),
        ("users_file = \"u\"\n[policy.listeners.http]\nauth = true\n", "http", "0.0.0.0", false),
        ("default = \"deny\"\n", "http", "0.0.0.0", false),
        ("default = \"deny\"\n[[policy.rules]]\nname = \"lan\"\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\n", "http", "0.0.0.0", false),
        ("default = \"deny\"\n[[policy.rules]]\nname = \"any\"\naction = \"allow\"\nclients = [\"0.0.0.0/0\"]\n", "http", "0.0.0.0", true),
        ("default = \"deny\"\n[[policy.rules]]\nname = \"web\"\naction = \"allow\"\nports = [443]\n", "http", "0.0.0.0", true),
        ("default = \"deny\"\n[[policy.rules]]\nname = \"web\"\naction = \"allow\"\nports = [443]\nlisteners = [\"socks\"]\n", "http", "0.0.0.0", false),
        ("default = \"deny\"\n[[policy.rules]]\nname = \"staff\"\naction = \"allow\"\ngroups = [\"staff\"]\n", "http", "0.0.0.0", false),
        ("[policy.listeners.http]\ndefault = \"deny\"\n", "http", "0.0.0.0", false),
        ("[policy.listeners.http]\ndefault = \"deny\"\n", "socks", "0.0.0.0", true),
        ("[[policy.rules]]\nname = \"lan\"\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\n", "http", "0.0.0.0", true),
    ];
    for (body, listener, bind, refused) in cases {
        let p = policy(&format!("[policy]\n{body}"));
        let got = p.open_proxy_check(listener, ip(bind));
        assert_eq!(
            got.is_err(),
            *refused,
            "{body:?} {listener} {bind}: {got:?}"
        );
    }
}

/// The indexed evaluation must agree with the obvious linear scan.
#[test]
fn the_index_agrees_with_a_linear_scan() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let labels = ["a", "b", "c", "www", "ads", "x"];
    let tlds = ["test", "example", "corp.test"];
    let mut toml = String::from("[policy]\ndefault = \"allow\"\n");
    for i in 0..400 {
        let name = format!("{}.{}", labels[rnd(6) as usize], tlds[rnd(3) as usize]);
        let pat = match rnd(4) {
            0 => name.clone(),
            1 => format!("*.{name}"),
            2 => format!(".{name}"),
            _ => format!("re:^{}\\.", labels[rnd(6) as usize]),
        };
        let action = if rnd(2) == 0 { "allow" } else { "deny" };
        let port = if rnd(3) == 0 {
            format!("ports = [{}]\n", 440 + rnd(5))
        } else {
            String::new()
        };
        toml.push_str(&format!(
            "[[policy.rules]]\nname = \"r{i}\"\naction = \"{action}\"\nhosts = [{pat:?}]\n{port}"
        ));
    }
    let p = policy(&toml);
    let cfg = PolicyConfig::from_toml(&toml, LISTENERS).expect("config");
    for _ in 0..500 {
        let name = format!(
            "{}{}.{}",
            if rnd(2) == 0 { "" } else { "www." },
            labels[rnd(6) as usize],
            tlds[rnd(3) as usize]
        );
        let port = 440 + rnd(6) as u16;
        let linear = cfg
            .rules
            .iter()
            .find(|r| {
                r.hosts.iter().any(|h| naive_match(h, &name))
                    && (r.ports.is_empty() || r.ports.iter().any(|pr| pr.contains(port)))
            })
            .map_or("default".to_string(), |r| r.name.clone());
        let host: &'static str = Box::leak(name.clone().into_boxed_str());
        let r = Req { port, ..req(host) };
        let got = eval(&p, &r, &["93.184.216.34"]);
        let got_rule = got.split_once(':').map(|x| x.1).unwrap_or_default();
        assert_eq!(got_rule, linear, "{name}:{port}");
    }
}

fn naive_match(p: &crate::policy::matcher::HostPattern, name: &str) -> bool {
    use crate::policy::matcher::HostPattern::*;
    match p {
        Exact(n) => name == n,
        Subdomains(n) => name.ends_with(&format!(".{n}")),
        Domain(n) => name == n || name.ends_with(&format!(".{n}")),
        Regex(r) => regex::Regex::new(r).expect("regex").is_match(name),
    }
}

#[test]
fn refusal_names_reach_the_verdict() {
    let p = policy("[policy]\n");
    let h = Host::Name("x.example".into());
    let a = AccessRequest {
        listener: "http",
        client: "10.1.2.3".parse().expect("ip"),
        user: None,
        dest_host: Some(&h),
        dest_port: 80,
        protocol: Protocol::Http,
        method: Some("GET"),
        at: SystemTime::now(),
    };
    let v = p.decide(&a, &["169.254.169.254".parse().expect("ip")]);
    assert_eq!(
        (v.action, &*v.rule, v.refusal),
        (Action::Deny, "guard", Some(Refusal::LinkLocal))
    );
}

#[test]
fn the_live_own_address_set_applies_without_recompiling() {
    let local = Arc::new(crate::policy::LocalAddrs::new());
    let p = policy(RULES).with_local(local.clone());
    let intra = req("intra.example");
    assert_eq!(eval(&p, &intra, &["10.0.0.1"]), "allow:default");
    // An address added to an interface after the policy was compiled.
    local.set_interfaces(vec!["10.0.0.1".parse().expect("ip")]);
    assert_eq!(eval(&p, &intra, &["10.0.0.1"]), "deny:guard:own-address");
    assert_eq!(
        eval(&p, &req("10.0.0.1"), &[]),
        "deny:guard:own-address",
        "a literal too"
    );
    assert_eq!(
        p.guard("10.0.0.1".parse().expect("ip"), 443),
        Err(Refusal::OwnAddress),
        "a route's direct entry"
    );
    local.set_interfaces(vec![]);
    assert_eq!(
        eval(&p, &intra, &["10.0.0.1"]),
        "allow:default",
        "and removed"
    );
}

#[test]
fn an_own_listener_is_refused_even_when_a_rule_names_its_address() {
    let local = Arc::new(crate::policy::LocalAddrs::new());
    let p = policy(RULES).with_local(local.clone());
    let app = |host: &'static str, proto| Req {
        port: 9999,
        proto,
        ..req(host)
    };
    assert_eq!(
        eval(&p, &app("127.0.0.1", Protocol::Connect), &[]),
        "allow:local-app"
    );
    local.set_listeners(vec!["0.0.0.0:9999".parse().expect("addr")]);
    for proto in [
        Protocol::Connect,
        Protocol::Http,
        Protocol::SocksConnect,
        Protocol::SocksUdp,
    ] {
        assert_eq!(
            eval(&p, &app("127.0.0.1", proto), &[]),
            "deny:guard:own-listener",
            "{proto:?}"
        );
        assert_eq!(
            eval(&p, &app("local.example", proto), &["127.0.0.1"]),
            "deny:guard:own-listener",
            "{proto:?}"
        );
    }
    // BIND names the expected peer, not a connection target.
    assert_eq!(
        eval(&p, &app("127.0.0.1", Protocol::SocksBind), &[]),
        "allow:local-app"
    );
    // Other ports of the named address stay allowed by the rule.
    local.set_listeners(vec!["0.0.0.0:3128".parse().expect("addr")]);
    assert_eq!(
        eval(&p, &app("127.0.0.1", Protocol::Connect), &[]),
        "allow:local-app"
    );
}

/// What a reverse listener asks (no destination): `client_verdict` borrows the verdict
/// `precheck` decides, for clients, methods, listeners and times that match different rules.
#[test]
fn client_verdict_is_what_precheck_decides_without_a_destination() {
    let p = policy(
        r#"
[policy]
default = "allow"
time_zone = "UTC"
[policy.listeners.public]
default = "deny"
[[policy.rules]]
name = "office"
action = "allow"
clients = ["10.0.0.0/8"]
listeners = ["public"]
[[policy.rules]]
name = "no-delete"
action = "deny"
methods = ["DELETE"]
[[policy.rules]]
name = "weekend"
action = "deny"
listeners = ["http"]
days = ["sat-sun"]
"#,
    );
    let cases = [
        (
            "public",
            "10.1.2.3",
            "GET",
            "2026-11-23T10:00:00Z",
            "allow:office",
        ),
        (
            "public",
            "192.0.2.1",
            "GET",
            "2026-11-23T10:00:00Z",
            "deny:default",
        ),
        (
            "http",
            "192.0.2.1",
            "DELETE",
            "2026-11-23T10:00:00Z",
            "deny:no-delete",
        ),
        (
            "http",
            "192.0.2.1",
            "GET",
            "2026-11-28T10:00:00Z",
            "deny:weekend",
        ),
        (
            "http",
            "192.0.2.1",
            "GET",
            "2026-11-23T10:00:00Z",
            "allow:default",
        ),
    ];
    for (listener, client, method, time, want) in cases {
        let a = AccessRequest {
            listener,
            client: client.parse().expect("client"),
            user: None,
            dest_host: None,
            dest_port: 80,
            protocol: Protocol::Http,
            method: Some(method),
            at: at(time),
        };
        let Precheck::Decided(decided) = p.precheck(&a) else {
            panic!("no destination: decided at once");
        };
        let borrowed = p.client_verdict(&a);
        let show = |v: &Verdict| format!("{}:{}", v.action.as_str(), v.rule);
        assert_eq!(show(borrowed), show(&decided));
        assert_eq!(show(borrowed), want, "{listener} {client} {method} {time}");
    }
}
