use super::*;
use crate::config::PortRange;
use crate::policy::matcher::{Days, HostPattern};
use crate::policy::Protocol;

const LISTENERS: &[&str] = &["http", "socks"];

const SAMPLE: &str = r#"
[policy]
users_file = "users.txt"
refuse_private = true
default = "deny"
time_zone = "UTC"
deny_page = "deny.html"
realm = "Corp proxy"
auth_cache = { ttl = "2m", max_entries = 100 }
failed_logins = { max_failures = 3, window = "5m", max_tracked = 1000 }

[policy.listeners.http]
auth = true
default = "allow"

[policy.listeners.socks]
socks4_userid = true
open = true

[[policy.parents]]
name = "corp"
url = "http://proxy.corp.test:3128"
username = "gw"
password = "s3cret"

[[policy.parents]]
name = "tor"
url = "socks5://127.0.0.1:9050"

[[policy.rules]]
name = "no-social"
action = "deny"
hosts = ["*.facebook.com", "re:^ads\\.", ".Bücher.example."]
ports = [80, "8000-9000"]
clients = ["10.0.0.0/8", "2001:db8::1"]
users = ["alice"]
groups = ["staff"]
dest_addrs = ["203.0.113.0/24"]
protocols = ["http", "connect", "socks-connect"]
methods = ["get", "POST"]
time = ["09:00-12:00", "13:00-17:00"]
days = ["mon-fri"]
listeners = ["http"]

[[policy.rules]]
name = "partner"
action = "route"
hosts = [".partner.test"]
parents = ["corp", "direct"]
anonymous = true
request_headers = { set = { "X-Env" = "prod" }, remove = ["Cookie"], add = { "X-Tag" = "a" } }
response_headers = { add = { "X-Via-Corp" = "1" } }

[[policy.rules]]
action = "allow"
"#;

#[test]
fn parses_every_key() {
    let cfg = PolicyConfig::from_toml(SAMPLE, LISTENERS).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.users_file, Some(PathBuf::from("users.txt")));
    assert!(cfg.refuse_private);
    assert_eq!(cfg.default_action, DefaultAction::Deny);
    assert_eq!(cfg.time_zone, jiff::tz::TimeZone::UTC);
    assert_eq!(cfg.deny_page, Some(PathBuf::from("deny.html")));
    assert_eq!(cfg.realm, "Corp proxy");
    assert_eq!(
        cfg.auth_cache,
        CacheLimits {
            ttl: std::time::Duration::from_secs(120),
            max_entries: 100
        }
    );
    assert_eq!(
        (
            cfg.login.max_failures,
            cfg.login.window.as_secs(),
            cfg.login.max_tracked
        ),
        (3, 300, 1000)
    );
    let http = &cfg.listeners["http"];
    assert_eq!(
        (http.auth, http.default, http.socks4_userid, http.open),
        (true, Some(DefaultAction::Allow), false, false)
    );
    let socks = &cfg.listeners["socks"];
    assert_eq!(
        (socks.auth, socks.default, socks.socks4_userid, socks.open),
        (false, None, true, true)
    );
    assert_eq!(cfg.parents.len(), 2);
    assert_eq!(cfg.parents[0].kind, ParentKind::Http);
    assert_eq!(cfg.parents[0].host, Host::Name("proxy.corp.test".into()));
    assert_eq!(cfg.parents[0].port, 3128);
    assert_eq!(
        cfg.parents[0].password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(
        format!("{:?}", cfg.parents[0]).matches("s3cret").count(),
        0,
        "password masked in Debug"
    );
    assert_eq!(cfg.parents[1].kind, ParentKind::Socks5);

    let r = &cfg.rules[0];
    assert_eq!(r.name, "no-social");
    assert_eq!(r.action, RuleAction::Deny);
    assert_eq!(
        r.hosts,
        [
            HostPattern::Subdomains("facebook.com".into()),
            HostPattern::Regex("^ads\\.".into()),
            HostPattern::Domain("xn--bcher-kva.example".into())
        ]
    );
    assert_eq!(
        r.ports,
        [
            PortRange {
                first: 80,
                last: 80
            },
            PortRange {
                first: 8000,
                last: 9000
            }
        ]
    );
    assert_eq!(
        r.clients
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.0/8", "2001:db8::1/128"]
    );
    assert_eq!(
        (r.users.as_slice(), r.groups.as_slice()),
        (&["alice".to_string()][..], &["staff".to_string()][..])
    );
    assert_eq!(r.dest_addrs[0].to_string(), "203.0.113.0/24");
    assert_eq!(
        r.protocols,
        [Protocol::Http, Protocol::Connect, Protocol::SocksConnect]
    );
    assert_eq!(r.methods, ["GET", "POST"]);
    let sched = r.schedule.as_ref().expect("schedule");
    assert_eq!(sched.windows.len(), 2);
    assert_eq!(sched.days, Days::parse("mon-fri").expect("days"));
    assert_eq!(r.listeners, ["http"]);

    let p = &cfg.rules[1];
    assert_eq!(
        p.action,
        RuleAction::Route(vec!["corp".into(), "direct".into()])
    );
    assert!(p.anonymous);
    assert_eq!(
        p.request_headers.set,
        [("X-Env".to_string(), "prod".to_string())]
    );
    assert_eq!(
        p.request_headers.add,
        [("X-Tag".to_string(), "a".to_string())]
    );
    assert_eq!(p.request_headers.remove, ["Cookie"]);
    assert_eq!(
        p.response_headers.add,
        [("X-Via-Corp".to_string(), "1".to_string())]
    );
    assert_eq!(
        cfg.rules[2].name, "rules[2]",
        "unnamed rules are named by position"
    );
}

#[test]
fn a_route_to_an_agent_is_one_agent_entry() {
    let text = "[policy]\n[[policy.rules]]\naction = \"route\"\nagent = \"office\"\n";
    let cfg = PolicyConfig::from_toml(text, LISTENERS).expect("parses");
    let RuleAction::Route(route) = &cfg.rules[0].action else {
        panic!("a route: {:?}", cfg.rules[0].action)
    };
    assert_eq!(crate::upstream::route_agent(route), Some("office"));
    assert!(crate::upstream::agent_fallback(route).is_empty());
}

#[test]
fn parents_beside_an_agent_are_its_fallback_in_order() {
    let text = "[policy]\n[[policy.parents]]\nname = \"corp\"\n\
                url = \"http://127.0.0.1:3128\"\n[[policy.rules]]\naction = \"route\"\n\
                agent = \"office\"\nparents = [\"corp\", \"direct\"]\n";
    let cfg = PolicyConfig::from_toml(text, LISTENERS).expect("parses");
    let RuleAction::Route(route) = &cfg.rules[0].action else {
        panic!("a route: {:?}", cfg.rules[0].action)
    };
    assert_eq!(crate::upstream::route_agent(route), Some("office"));
    assert_eq!(crate::upstream::agent_fallback(route), ["corp", "direct"]);
    assert!(crate::upstream::agent_fallback(&["corp".to_string()]).is_empty());
}

#[test]
fn an_absent_section_is_the_safe_default() {
    let cfg = PolicyConfig::from_toml("", LISTENERS).expect("empty");
    assert_eq!(cfg.default_action, DefaultAction::Allow);
    assert!(!cfg.refuse_private && cfg.rules.is_empty() && cfg.users_file.is_none());
}

/// Each bad config yields exactly these (path, message fragment) problems.
#[test]
fn errors_name_their_key_paths() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("default = \"maybe\"", &[("policy.default", "unknown action")]),
        ("time_zone = \"Mars/Olympus\"", &[("policy.time_zone", "zone")]),
        ("bogus = 1", &[("policy.bogus", "unknown key")]),
        ("[policy.listeners.nope]\nauth = false", &[("policy.listeners.nope", "no listener")]),
        ("[policy.listeners.http]\nauth = true", &[("policy", "no users_file")]),
        ("[policy.listeners.http]\nauthh = true", &[("policy.listeners.http.authh", "unknown key")]),
        ("[[policy.rules]]\nname = \"a\"", &[("policy.rules[0].action", "needs an action")]),
        ("[[policy.rules]]\naction = \"block\"", &[("policy.rules[0].action", "\"block\"")]),
        ("[[policy.rules]]\naction = \"route\"", &[("policy.rules[0].parents", "needs parents")]),
        ("[[policy.rules]]\naction = \"route\"\nparents = [\"nope\"]", &[("policy.rules[0].parents[0]", "no [[policy.parents]]")]),
        ("[[policy.rules]]\naction = \"allow\"\nparents = [\"direct\"]", &[("policy.rules[0].parents", "only for")]),
        ("[[policy.rules]]\naction = \"allow\"\nagent = \"office\"", &[("policy.rules[0].agent", "only for")]),
        ("[[policy.rules]]\naction = \"route\"\nagent = \"of fice\"", &[("policy.rules[0].agent", "agent name")]),
        ("[[policy.rules]]\naction = \"deny\"\nhosts = [\"ok.test\", \"re:(\"]", &[("policy.rules[0].hosts[1]", "regex")]),
        ("[[policy.rules]]\naction = \"deny\"\nhosts = [\"10.0.0.1\"]", &[("policy.rules[0].hosts[0]", "dest_addrs")]),
        ("[[policy.rules]]\naction = \"deny\"\nhosts = []", &[("policy.rules[0].hosts", "empty list")]),
        ("[[policy.rules]]\naction = \"deny\"\nclients = [\"10.0.0.0/33\"]", &[("policy.rules[0].clients[0]", "CIDR")]),
        ("[[policy.rules]]\naction = \"deny\"\nports = [70000, \"9-1\"]", &[("policy.rules[0].ports[0]", "not a port"), ("policy.rules[0].ports[1]", "backwards")]),
        ("[[policy.rules]]\naction = \"deny\"\nprotocols = [\"gopher\"]", &[("policy.rules[0].protocols[0]", "unknown protocol")]),
        ("[[policy.rules]]\naction = \"deny\"\nlisteners = [\"ftp\"]", &[("policy.rules[0].listeners[0]", "no listener")]),
        ("[[policy.rules]]\naction = \"deny\"\ntime = \"9-17\"", &[("policy.rules[0].time", "HH:MM")]),
        ("[[policy.rules]]\naction = \"deny\"\ndays = [\"funday\"]", &[("policy.rules[0].days[0]", "unknown day")]),
        ("[[policy.rules]]\naction = \"deny\"\nusers = [\"a b\"]", &[("policy.rules[0].users[0]", "space")]),
        ("[[policy.rules]]\naction = \"deny\"\nmethods = [\"G ET\"]", &[("policy.rules[0].methods[0]", "not a method")]),
        ("[[policy.rules]]\naction = \"allow\"\nrequest_headers = { set = { \"Content-Length\" = \"1\" } }", &[("policy.rules[0].request_headers.set.Content-Length", "frames")]),
        ("[[policy.rules]]\naction = \"allow\"\nrequest_headers = { set = { \"X-A\" = \"a\\r\\nX-B: 1\" } }", &[("policy.rules[0].request_headers.set.X-A", "control")]),
        ("[[policy.rules]]\naction = \"allow\"\nresponse_headers = { replace = [] }", &[("policy.rules[0].response_headers.replace", "unknown key")]),
        ("[[policy.rules]]\nname = \"x\"\naction = \"allow\"\n[[policy.rules]]\nname = \"x\"\naction = \"deny\"", &[("policy.rules[1].name", "duplicate")]),
        ("[[policy.parents]]\nurl = \"ftp://x:1\"", &[("policy.parents[0].name", "needs a name"), ("policy.parents[0].url", "scheme")]),
        ("[[policy.parents]]\nname = \"direct\"\nurl = \"http://x:1\"", &[("policy.parents[0].name", "reserved")]),
        ("[[policy.parents]]\nname = \"p\"\nurl = \"http://x\"\nusername = \"u\"", &[("policy.parents[0].url", "port"), ("policy.parents[0]", "go together")]),
        ("realm = \"a\\\"b\"", &[("policy.realm", "realm")]),
        ("failed_logins = { max_failures = 0 }", &[("policy.failed_logins.max_failures", "from 1")]),
        ("[policy.listeners.http]\nauth = [\"negotiate\", \"basic\"]", &[("policy", "no users_file")]),
        ("[policy.listeners.http]\nauth = []", &[("policy.listeners.http.auth", "at least one")]),
        ("[policy.listeners.http]\nauth = [\"ntlm\"]", &[("policy.listeners.http.auth", "unknown method")]),
        ("[policy.listeners.socks]\nauth = [\"gssapi\"]\ngssapi_protection = \"clear\"", &[("policy.listeners.socks.gssapi_protection", "unknown level")]),
        ("[policy.listeners.http]\nauth = [\"negotiate\"]\nkerberos_service = \"HTTP/a b\"", &[("policy.listeners.http.kerberos_service", "spaces")]),
        ("[policy.kerberos]\nstrip_realm = \"A@B\"", &[("policy.kerberos.strip_realm", "realm")]),
        ("[policy.kerberos]\nkeytabs = \"x\"", &[("policy.kerberos.keytabs", "unknown key")]),
    ];
    for (body, want) in cases {
        let text = format!("[policy]\n{body}\n");
        let errs = PolicyConfig::from_toml(&text, LISTENERS).expect_err(body);
        let got: Vec<(String, String)> = errs
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        assert_eq!(got.len(), want.len(), "{body}: {got:?}");
        for (path, fragment) in *want {
            assert!(
                got.iter().any(|(p, m)| p == path && m.contains(fragment)),
                "{body}: expected {path} ~ {fragment:?}, got {got:?}"
            );
        }
        assert!(
            errs.iter().all(|e| e.line.is_some()),
            "{body}: every error has a line: {errs:?}"
        );
    }
}

#[test]
fn the_sample_compiles_into_a_policy() {
    use crate::policy::users::{hash_password, HashAlgorithm};
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.txt");
    let hash = hash_password(&Secret::new("pw"), HashAlgorithm::Bcrypt { cost: 4 }).expect("hash");
    std::fs::write(&users, format!("alice:{hash}:staff\n")).expect("write users");
    let page = dir.path().join("deny.html");
    std::fs::write(&page, "<p>{rule} {target}</p>").expect("write page");
    let text = SAMPLE
        .replace(
            "\"users.txt\"",
            &format!("{:?}", users.display().to_string()),
        )
        .replace(
            "\"deny.html\"",
            &format!("{:?}", page.display().to_string()),
        );
    let cfg = PolicyConfig::from_toml(&text, LISTENERS).expect("config");
    let p = crate::policy::Policy::compile(&cfg, vec![]).expect("policy");
    assert_eq!(p.rule_count(), 3);
    assert_eq!(p.realm(), "Corp proxy");
    assert_eq!(p.deny_page(), "<p>{rule} {target}</p>");
    assert!(p.parent("corp").is_some() && p.parent("direct").is_none());
    assert!(p.listener("http").auth && !p.listener("other").auth);
    let users = p.users().expect("users loaded");
    assert_eq!(
        users.verify("alice", &Secret::new("pw")).map(|i| i.groups),
        Some(vec!["staff".to_string()])
    );

    // A missing file is an error that names it.
    std::fs::remove_file(dir.path().join("users.txt")).expect("rm");
    let err = crate::policy::Policy::compile(&cfg, vec![]).expect_err("users file gone");
    assert!(err.to_string().contains("users.txt"), "{err}");
}

#[test]
fn kerberos_logins_need_no_users_file() {
    let text = r#"
[policy.kerberos]
keytab = "/etc/gatehouse/proxy.keytab"
strip_realm = "EXAMPLE.ORG"

[policy.listeners.http]
auth = ["negotiate"]
kerberos_service = "HTTP/proxy.example.org"

[policy.listeners.socks]
auth = ["password", "gssapi"]
gssapi_protection = "integrity"
"#;
    let text = format!("[policy]\nusers_file = \"u\"\n{text}");
    let cfg = PolicyConfig::from_toml(&text, LISTENERS).expect("parses");
    assert_eq!(
        cfg.kerberos.keytab.as_deref(),
        Some(std::path::Path::new("/etc/gatehouse/proxy.keytab"))
    );
    assert_eq!(
        cfg.kerberos.names,
        crate::kerberos::RealmMapping::StripOnly("EXAMPLE.ORG".into())
    );
    let http = &cfg.listeners["http"];
    assert!(http.auth && http.methods.kerberos && !http.methods.password);
    assert_eq!(
        http.kerberos_service.as_deref(),
        Some("HTTP/proxy.example.org")
    );
    let socks = &cfg.listeners["socks"];
    use crate::config::AuthMethod;
    assert_eq!(
        socks.methods.socks(),
        [AuthMethod::Password, AuthMethod::Gssapi]
    );
    assert_eq!(
        socks.gssapi_protection,
        crate::kerberos::Protection::Integrity
    );
    // Kerberos alone needs no users file; `auth = true` still does.
    let alone = "[policy.listeners.http]\nauth = [\"negotiate\"]\n";
    let cfg = PolicyConfig::from_toml(&format!("[policy]\n{alone}"), LISTENERS).expect("parses");
    assert!(cfg.listeners["http"].auth);
    let first = "[policy]\nusers_file = \"u\"\n[policy.listeners.socks]\nauth = [\"gssapi\", \"password\"]\n";
    let cfg = PolicyConfig::from_toml(first, LISTENERS).expect("parses");
    assert_eq!(
        cfg.listeners["socks"].methods.socks(),
        [AuthMethod::Gssapi, AuthMethod::Password]
    );
}
