//! The `[policy]` section: typed, checked values. Every problem is reported through the
//! [`Section`] with its key path; [`super::Policy::compile`] then only builds indexes and reads
//! the users file.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use toml_edit::Value;

use super::login::LoginLimits;
use super::rule_config::read_rule;
pub use super::rule_config::{RuleAction, RuleSpec};
use super::users::{CacheLimits, Secret};
use crate::config::reader::{ConfigError, Problems, Section};
use crate::connector::Host;

/// The whole `[policy]` section. `Default` is what an absent section means: everything
/// allowed except what the safe-by-default guard refuses, no users.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub users_file: Option<PathBuf>,
    /// Also refuse RFC 1918, CGNAT and ULA destinations (internet-facing deployments).
    pub refuse_private: bool,
    /// Zone of `time` conditions.
    pub time_zone: jiff::tz::TimeZone,
    /// HTML template of the 403 page (`{rule}`, `{target}`); the built-in one when `None`.
    pub deny_page: Option<PathBuf>,
    /// `Proxy-Authenticate: Basic realm="..."`.
    pub realm: String,
    /// Action when no rule matches, for listeners without their own `default`.
    pub default_action: DefaultAction,
    pub listeners: BTreeMap<String, ListenerPolicy>,
    pub rules: Vec<RuleSpec>,
    pub parents: Vec<ParentSpec>,
    pub auth_cache: CacheLimits,
    pub login: LoginLimits,
    /// `[policy.ldap]`: the directory as the user source instead of `users_file`.
    pub ldap: Option<super::ldap::LdapConfig>,
    /// `[policy.kerberos]`.
    pub kerberos: KerberosConfig,
}

/// `[policy.kerberos]`: what every Kerberos login (SOCKS5 GSSAPI, HTTP Negotiate) shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KerberosConfig {
    /// The service keytab; set as `KRB5_KTNAME` at start-up. `None`: the system's
    /// (`KRB5_KTNAME` from the environment, else the default keytab).
    pub keytab: Option<PathBuf>,
    /// Principal to user name (`strip_realm`).
    pub names: crate::kerberos::RealmMapping,
}

/// How a listener's clients may log in (`[policy.listeners.<name>] auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginMethods {
    /// Basic (HTTP) / RFC 1929 (SOCKS5) against the users file.
    pub password: bool,
    /// Negotiate (HTTP) / GSSAPI (SOCKS5) with Kerberos.
    pub kerberos: bool,
    /// Kerberos is offered (HTTP) or preferred (SOCKS) before the password.
    pub kerberos_first: bool,
}

impl LoginMethods {
    /// SOCKS5 methods in order of preference.
    pub fn socks(self) -> Vec<crate::config::AuthMethod> {
        use crate::config::AuthMethod;
        let mut m = Vec::with_capacity(2);
        if self.kerberos {
            m.push(AuthMethod::Gssapi);
        }
        if self.password {
            m.insert(
                usize::from(self.kerberos && self.kerberos_first),
                AuthMethod::Password,
            );
        }
        m
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            users_file: None,
            refuse_private: false,
            time_zone: jiff::tz::TimeZone::system(),
            deny_page: None,
            realm: "gatehouse".into(),
            default_action: DefaultAction::Allow,
            listeners: BTreeMap::new(),
            rules: Vec::new(),
            parents: Vec::new(),
            auth_cache: CacheLimits::default(),
            login: LoginLimits::default(),
            ldap: None,
            kerberos: KerberosConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Allow,
    Deny,
}

/// `[policy.listeners.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPolicy {
    /// Overrides the policy-wide `default`.
    pub default: Option<DefaultAction>,
    /// Every client must log in (HTTP: 407; SOCKS5: a login method), with `methods`.
    pub auth: bool,
    /// `auth = true` is the password alone; `auth = ["negotiate", "basic"]` lists them.
    pub methods: LoginMethods,
    /// The Kerberos service principal this listener accepts tickets for
    /// (`kerberos_service = "HTTP/localhost"`); `None`: any key in the keytab.
    pub kerberos_service: Option<std::sync::Arc<str>>,
    /// SOCKS5 GSSAPI: the least protection a session gets (`gssapi_protection`).
    pub gssapi_protection: crate::kerberos::Protection,
    /// SOCKS4: take the USERID field as the (unauthenticated) user name.
    pub socks4_userid: bool,
    /// Acknowledges that this listener is an open proxy (silences the open-proxy guard).
    pub open: bool,
}

impl Default for ListenerPolicy {
    fn default() -> Self {
        ListenerPolicy {
            default: None,
            auth: false,
            methods: LoginMethods::default(),
            kerberos_service: None,
            gssapi_protection: crate::kerberos::Protection::None,
            socks4_userid: false,
            open: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentKind {
    /// An HTTP proxy: CONNECT for tunnels, absolute-form for plain requests.
    Http,
    Socks5,
}

/// One `[[policy.parents]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentSpec {
    pub name: String,
    pub kind: ParentKind,
    pub host: Host,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl PolicyConfig {
    /// Parses a TOML document holding a `[policy]` table (benchmarks, tools, tests).
    pub fn from_toml(
        text: &str,
        listener_names: &[&str],
    ) -> Result<PolicyConfig, Vec<ConfigError>> {
        let doc = toml_edit::Document::parse(text.to_string()).map_err(|e| {
            vec![ConfigError {
                path: "<root>".into(),
                line: None,
                message: e.to_string(),
            }]
        })?;
        let problems = Problems::new(text);
        let root = Section::root(doc.as_table(), problems.clone());
        let cfg = read_policy(&root.table("policy"), listener_names, None);
        root.finish();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems.into_vec())
        }
    }
}

/// Reads `[policy]`. `listener_names` are the configured listeners, so that rules and
/// `[policy.listeners.*]` naming an unknown one are reported; `agents`, when given, the
/// agents the tunnel listeners accept, so that a rule routing to another is reported.
pub(crate) fn read_policy(
    s: &Section<'_>,
    listener_names: &[&str],
    agents: Option<&[&str]>,
) -> PolicyConfig {
    let d = PolicyConfig::default();
    let default_action = s
        .parse("default", "\"allow\" or \"deny\"", default_action)
        .unwrap_or(DefaultAction::Allow);
    let time_zone = s
        .parse(
            "time_zone",
            "\"local\", \"UTC\" or a zone name such as \"Europe/Paris\"",
            |v| match v.as_str().ok_or("not a string")? {
                "local" => Ok(jiff::tz::TimeZone::system()),
                name => jiff::tz::TimeZone::get(name).map_err(|e| e.to_string()),
            },
        )
        .unwrap_or(d.time_zone);
    let parents = read_parents(s);
    let parent_names: Vec<&str> = parents.iter().map(|p| p.name.as_str()).collect();
    let users_file = s.string("users_file").map(PathBuf::from);
    let listeners = read_listeners(&s.table("listeners"), listener_names);
    let ldap = if s.has_table("ldap") {
        let l = s.table("ldap");
        super::ldap::config::read_ldap(&l)
    } else {
        None
    };
    if users_file.is_some() && s.has_table("ldap") {
        s.error_at(
            "ldap",
            "users come from users_file or [policy.ldap], not both",
        );
    }
    if users_file.is_none()
        && !s.has_table("ldap")
        && listeners.values().any(|l| l.methods.password)
    {
        s.error_here("a listener requires auth but no users_file or [policy.ldap] is set");
    }
    let kerberos = read_kerberos(&s.table("kerberos"));
    if listeners.values().any(|l| l.methods.kerberos) && !crate::kerberos::gss::AVAILABLE {
        s.error_here(crate::kerberos::gss::MISSING);
    }
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for (i, r) in s.tables("rules").iter().enumerate() {
        let rule = read_rule(r, i, listener_names, &parent_names, agents);
        r.finish();
        if let Some(rule) = rule {
            if !names.insert(rule.name.clone()) {
                r.error_at("name", format!("duplicate rule name {:?}", rule.name));
            }
            rules.push(rule);
        }
    }
    let cache = s.table("auth_cache");
    let auth_cache = CacheLimits {
        ttl: cache.duration("ttl", d.auth_cache.ttl),
        max_entries: cache.uint("max_entries", d.auth_cache.max_entries as u64, 0, 1 << 20)
            as usize,
    };
    cache.finish();
    let fl = s.table("failed_logins");
    let login = LoginLimits {
        max_failures: fl.uint("max_failures", u64::from(d.login.max_failures), 1, 1000) as u32,
        window: fl.duration("window", d.login.window),
        max_tracked: fl.uint("max_tracked", d.login.max_tracked as u64, 16, 1 << 24) as usize,
    };
    fl.finish();
    let realm = s
        .parse(
            "realm",
            "a realm name without quotes or control characters",
            |v| {
                let r = v.as_str().ok_or("not a string")?;
                let ok =
                    !r.is_empty() && r.chars().all(|c| !c.is_control() && c != '"' && c != '\\');
                ok.then(|| r.to_string())
                    .ok_or_else(|| "bad realm".to_string())
            },
        )
        .unwrap_or(d.realm);
    let cfg = PolicyConfig {
        users_file,
        refuse_private: s.bool("refuse_private", false),
        time_zone,
        deny_page: s.string("deny_page").map(PathBuf::from),
        realm,
        default_action,
        listeners,
        rules,
        parents,
        auth_cache,
        login,
        ldap,
        kerberos,
    };
    s.finish();
    cfg
}

fn default_action(v: &Value) -> Result<DefaultAction, String> {
    match v.as_str().ok_or("not a string")? {
        "allow" => Ok(DefaultAction::Allow),
        "deny" => Ok(DefaultAction::Deny),
        _ => Err("unknown action".into()),
    }
}

fn read_listeners(s: &Section<'_>, known: &[&str]) -> BTreeMap<String, ListenerPolicy> {
    let mut out = BTreeMap::new();
    for name in s.keys() {
        let l = s.table(&name);
        if !known.contains(&name.as_str()) {
            l.error_here(format!("no listener is named {name:?}"));
        }
        let methods = l
            .parse(
                "auth",
                "true, false or a list of \"basic\", \"negotiate\" (HTTP) / \"password\", \"gssapi\" (SOCKS)",
                login_methods,
            )
            .unwrap_or_default();
        let kerberos_service = l.parse(
            "kerberos_service",
            "a service principal such as \"HTTP/localhost\"",
            |v| {
                let p = v.as_str().ok_or("not a string")?;
                let ok = !p.is_empty() && !p.chars().any(|c| c.is_control() || c == ' ');
                ok.then(|| std::sync::Arc::from(p))
                    .ok_or_else(|| "empty or with spaces".to_string())
            },
        );
        let gssapi_protection = l
            .parse(
                "gssapi_protection",
                "\"none\", \"integrity\" or \"confidentiality\"",
                |v| {
                    v.as_str()
                        .and_then(crate::kerberos::Protection::parse)
                        .ok_or_else(|| "unknown level".to_string())
                },
            )
            .unwrap_or(crate::kerberos::Protection::None);
        let lp = ListenerPolicy {
            default: l.parse("default", "\"allow\" or \"deny\"", default_action),
            auth: methods.password || methods.kerberos,
            methods,
            kerberos_service,
            gssapi_protection,
            socks4_userid: l.bool("socks4_userid", false),
            open: l.bool("open", false),
        };
        l.finish();
        out.insert(name, lp);
    }
    out
}

/// `auth = true` (the password) or `auth = ["negotiate", "basic"]`.
fn login_methods(v: &Value) -> Result<LoginMethods, String> {
    if let Some(b) = v.as_bool() {
        return Ok(LoginMethods {
            password: b,
            ..LoginMethods::default()
        });
    }
    let list = v.as_array().ok_or("not a boolean or a list")?;
    let mut m = LoginMethods::default();
    for item in list.iter() {
        match item.as_str() {
            Some("basic" | "password") => m.password = true,
            Some("negotiate" | "gssapi" | "kerberos") => {
                m.kerberos_first |= !m.password;
                m.kerberos = true;
            }
            _ => return Err(format!("unknown method {item}")),
        }
    }
    if !m.password && !m.kerberos {
        return Err("at least one method".into());
    }
    Ok(m)
}

/// `[policy.kerberos]`.
fn read_kerberos(k: &Section<'_>) -> KerberosConfig {
    let names = k
        .parse("strip_realm", "true, false or a realm name", |v| {
            match (v.as_bool(), v.as_str()) {
                (Some(true), _) => Ok(crate::kerberos::RealmMapping::Strip),
                (Some(false), _) => Ok(crate::kerberos::RealmMapping::Keep),
                (_, Some(r)) if !r.is_empty() && !r.contains(['@', ' ']) => {
                    Ok(crate::kerberos::RealmMapping::StripOnly(r.to_string()))
                }
                _ => Err("not a realm".to_string()),
            }
        })
        .unwrap_or_default();
    let cfg = KerberosConfig {
        keytab: k.string("keytab").map(PathBuf::from),
        names,
    };
    k.finish();
    cfg
}

fn read_parents(s: &Section<'_>) -> Vec<ParentSpec> {
    let mut out: Vec<ParentSpec> = Vec::new();
    for p in s.tables("parents") {
        let name = p.string("name");
        let url = p.parse(
            "url",
            "\"http://host:port\" or \"socks5://host:port\"",
            parse_parent_url,
        );
        let username = p.string("username");
        let password = p.string("password").map(Secret::new);
        if username
            .as_ref()
            .is_some_and(|u| u.is_empty() || u.len() > 255)
        {
            p.error_at("username", "must be 1 to 255 bytes");
        }
        if username.is_some() != password.is_some() {
            p.error_here("username and password go together");
        }
        match &name {
            None => p.error_at("name", "every parent needs a name"),
            Some(n) if n == "direct" => {
                p.error_at("name", "\"direct\" is reserved (it means no parent)")
            }
            Some(n) if out.iter().any(|o| &o.name == n) => {
                p.error_at("name", format!("duplicate parent {n:?}"))
            }
            _ => {}
        }
        p.finish();
        if let (Some(name), Some((kind, host, port))) = (name, url) {
            out.push(ParentSpec {
                name,
                kind,
                host,
                port,
                username,
                password,
            });
        }
    }
    out
}

fn parse_parent_url(v: &Value) -> Result<(ParentKind, Host, u16), String> {
    let s = v.as_str().ok_or("not a string")?;
    let (scheme, rest) = s.split_once("://").ok_or("no scheme")?;
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "http" => ParentKind::Http,
        "socks5" | "socks5h" => ParentKind::Socks5,
        _ => return Err("scheme must be http or socks5".into()),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or("a port is required")?;
    let port: u16 = port.parse().map_err(|_| "bad port".to_string())?;
    let host = Host::parse(host).ok_or("bad host")?;
    Ok((kind, host, port))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
