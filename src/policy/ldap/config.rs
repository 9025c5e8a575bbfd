//! `[policy.ldap]`: typed, checked values (every problem reported with its key path).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::cache::LdapCacheLimits;
use crate::config::reader::Section;
use crate::policy::Secret;

/// How a login is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindMode {
    /// Bind as `template` with `{user}` (DN-escaped) filled in.
    Template(String),
    /// Find the user's entry under `base` with `filter` (`{user}` filter-escaped), as the
    /// service account (or anonymously), then bind as the DN found.
    Search { base: String, filter: String },
}

/// Where a user's groups come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSource {
    /// An attribute of the user's entry holding group DNs (`memberOf`).
    Attribute(String),
    /// Groups found under `base` with `filter` (`{dn}` the user's DN, `{user}` the name,
    /// both filter-escaped); the group's name is its `name_attribute`, else its first RDN.
    Search {
        base: String,
        filter: String,
        name_attribute: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    pub starttls: bool,
    /// PEM CA certificates to verify the directory's certificate with; the system's roots
    /// when absent.
    pub ca_file: Option<PathBuf>,
    pub bind: BindMode,
    /// The service account for searches (absent: anonymous).
    pub bind_dn: Option<String>,
    pub bind_password: Option<Secret>,
    pub bind_password_file: Option<PathBuf>,
    /// The attribute whose value is the user's name in the policy (`uid`): the directory's
    /// spelling, so `ALICE` and `alice` are one user for rules and limits.
    pub name_attribute: String,
    pub groups: GroupSource,
    /// Directory group (a DN, compared case-insensitively, or a group name) -> policy group.
    pub group_map: BTreeMap<String, String>,
    pub cache: LdapCacheLimits,
    /// Connect (TCP, TLS, StartTLS) and each operation.
    pub timeout: Duration,
    /// Logins talking to the directory at once (each on its own connection).
    pub max_connections: usize,
    /// Logins waiting for one of those; beyond, a login is refused at once (429 / failure).
    pub max_waiting: usize,
}

pub(crate) fn read_ldap(s: &Section<'_>) -> Option<LdapConfig> {
    let url = s.parse(
        "url",
        "\"ldap://host:port\" or \"ldaps://host:port\"",
        |v| {
            let u = v.as_str().ok_or("not a string")?;
            let parsed = url::Url::parse(u).map_err(|e| e.to_string())?;
            if !matches!(parsed.scheme(), "ldap" | "ldaps") {
                return Err("the scheme must be ldap or ldaps".into());
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err("a host is required".into());
            }
            if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
                return Err("no path or query (use base and user_filter)".into());
            }
            Ok(u.to_string())
        },
    );
    if url.is_none() && !s.has("url") {
        s.error_at("url", "required");
    }
    let starttls = s.bool("starttls", false);
    let ca_file = s.string("ca_file").map(PathBuf::from);
    if starttls && url.as_deref().is_some_and(|u| u.starts_with("ldaps:")) {
        s.error_at(
            "starttls",
            "ldaps:// is TLS already; starttls goes with ldap://",
        );
    }
    let tls = starttls || url.as_deref().is_some_and(|u| u.starts_with("ldaps:"));
    if ca_file.is_some() && !tls {
        s.error_at("ca_file", "needs ldaps:// or starttls = true");
    }
    let template = s.string("bind_dn_template");
    let base = s.string("base");
    let filter = s.string("user_filter");
    let bind = match (template, base) {
        (Some(t), None) => {
            if !t.contains("{user}") {
                s.error_at("bind_dn_template", "must contain {user}");
            }
            if filter.is_some() {
                s.error_at("user_filter", "goes with base, not bind_dn_template");
            }
            Some(BindMode::Template(t))
        }
        (None, Some(base)) => {
            let filter = filter.unwrap_or_else(|| "(uid={user})".into());
            if !filter.contains("{user}") {
                s.error_at("user_filter", "must contain {user}");
            }
            if !(filter.starts_with('(') && filter.ends_with(')')) {
                s.error_at(
                    "user_filter",
                    "a filter in parentheses, e.g. \"(uid={user})\"",
                );
            }
            Some(BindMode::Search { base, filter })
        }
        (Some(_), Some(_)) => {
            s.error_here(
                "either bind_dn_template (bind as the user) or base (search, then bind), not both",
            );
            None
        }
        (None, None) => {
            s.error_here("set bind_dn_template (bind as the user) or base (search, then bind)");
            None
        }
    };
    let bind_dn = s.string("bind_dn");
    let bind_password = s.string("bind_password").map(Secret::new);
    let bind_password_file = s.string("bind_password_file").map(PathBuf::from);
    if bind_password.is_some() && bind_password_file.is_some() {
        s.error_at(
            "bind_password_file",
            "bind_password or bind_password_file, not both",
        );
    }
    if bind_dn.is_some() != (bind_password.is_some() || bind_password_file.is_some()) {
        s.error_at(
            "bind_dn",
            "bind_dn and a bind_password (or bind_password_file) go together",
        );
    }
    let name_attribute = s.string("name_attribute").unwrap_or_else(|| "uid".into());
    let group_base = s.string("group_base");
    let group_filter = s.string("group_filter");
    let group_name_attribute = s.string("group_name_attribute");
    let group_attribute = s.string("group_attribute");
    let groups = match group_base {
        Some(base) => {
            if group_attribute.is_some() {
                s.error_at("group_attribute", "group_attribute or group_base, not both");
            }
            let filter = group_filter.unwrap_or_else(|| "(member={dn})".into());
            if !(filter.starts_with('(') && filter.ends_with(')')) {
                s.error_at(
                    "group_filter",
                    "a filter in parentheses, e.g. \"(member={dn})\"",
                );
            }
            GroupSource::Search {
                base,
                filter,
                name_attribute: group_name_attribute.unwrap_or_else(|| "cn".into()),
            }
        }
        None => {
            if group_filter.is_some() || group_name_attribute.is_some() {
                s.error_at(
                    "group_base",
                    "group_filter and group_name_attribute need group_base",
                );
            }
            GroupSource::Attribute(group_attribute.unwrap_or_else(|| "memberOf".into()))
        }
    };
    let map = s.table("group_map");
    let mut group_map = BTreeMap::new();
    for key in map.keys() {
        if let Some(to) = map.string(&key) {
            if crate::policy::users::check_user_name(&to).is_err() {
                map.error_at(
                    &key,
                    "a group name: no ':', ',', spaces or control characters",
                );
            }
            group_map.insert(key.to_ascii_lowercase(), to);
        }
    }
    map.finish();
    let cache = LdapCacheLimits {
        ttl: s.duration("cache_ttl", Duration::from_secs(60)),
        negative_ttl: s.duration("negative_cache_ttl", Duration::from_secs(5)),
        max_entries: s.uint("cache_max_entries", 4096, 0, 1 << 20) as usize,
    };
    let timeout = s.duration("timeout", Duration::from_secs(5));
    if timeout.is_zero() {
        s.error_at("timeout", "must be more than 0");
    }
    let max_connections = s.uint("max_connections", 16, 1, 1024) as usize;
    let max_waiting = s.uint("max_waiting", 256, 0, 1 << 16) as usize;
    s.finish();
    Some(LdapConfig {
        url: url?,
        starttls,
        ca_file,
        bind: bind?,
        bind_dn,
        bind_password,
        bind_password_file,
        name_attribute,
        groups,
        group_map,
        cache,
        timeout,
        max_connections,
        max_waiting,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyConfig;

    fn parse(ldap: &str) -> Result<LdapConfig, Vec<String>> {
        PolicyConfig::from_toml(&format!("[policy.ldap]\n{ldap}"), &[])
            .map(|c| c.ldap.expect("ldap"))
            .map_err(|errs| {
                errs.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            })
    }

    #[test]
    fn bind_as_the_user_with_defaults() {
        let c = parse("url = \"ldap://127.0.0.1:389\"\nbind_dn_template = \"uid={user},dc=x\"")
            .expect("valid");
        assert_eq!(c.bind, BindMode::Template("uid={user},dc=x".into()));
        assert_eq!(c.groups, GroupSource::Attribute("memberOf".into()));
        assert_eq!(c.name_attribute, "uid");
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.cache.negative_ttl, Duration::from_secs(5));
        assert_eq!((c.max_connections, c.max_waiting), (16, 256));
        assert!(!c.starttls && c.ca_file.is_none() && c.bind_dn.is_none());
    }

    #[test]
    fn search_then_bind_with_a_group_search_and_a_map() {
        let c = parse(
            "url = \"ldaps://ldap.example\"\nca_file = \"/ca.pem\"\nbase = \"ou=p,dc=x\"\n\
             bind_dn = \"cn=svc,dc=x\"\nbind_password = \"pw\"\ngroup_base = \"ou=g,dc=x\"\n\
             [policy.ldap.group_map]\n\"CN=Admins,OU=G,DC=X\" = \"ops\"\n",
        )
        .expect("valid");
        assert_eq!(
            c.bind,
            BindMode::Search {
                base: "ou=p,dc=x".into(),
                filter: "(uid={user})".into()
            }
        );
        assert_eq!(
            c.groups,
            GroupSource::Search {
                base: "ou=g,dc=x".into(),
                filter: "(member={dn})".into(),
                name_attribute: "cn".into()
            }
        );
        assert_eq!(
            c.group_map.get("cn=admins,ou=g,dc=x").map(String::as_str),
            Some("ops")
        );
        assert_eq!(
            format!("{:?}", c.bind_password),
            "Some(***)",
            "never printed"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let cases: &[(&str, &str)] = &[
            (
                "bind_dn_template = \"uid={user}\"",
                "policy.ldap.url: required",
            ),
            (
                "url = \"http://x\"\nbind_dn_template = \"uid={user}\"",
                "policy.ldap.url",
            ),
            (
                "url = \"ldap://\"\nbind_dn_template = \"uid={user}\"",
                "policy.ldap.url",
            ),
            (
                "url = \"ldap://x/dc=x?uid\"\nbind_dn_template = \"uid={user}\"",
                "policy.ldap.url",
            ),
            (
                "url = \"ldap://x\"",
                "bind_dn_template (bind as the user) or base",
            ),
            (
                "url = \"ldap://x\"\nbind_dn_template = \"uid=a\"",
                "policy.ldap.bind_dn_template: must contain {user}",
            ),
            (
                "url = \"ldap://x\"\nbind_dn_template = \"uid={user}\"\nbase = \"dc=x\"",
                "not both",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\nuser_filter = \"uid={user}\"",
                "policy.ldap.user_filter",
            ),
            (
                "url = \"ldaps://x\"\nstarttls = true\nbind_dn_template = \"uid={user}\"",
                "policy.ldap.starttls",
            ),
            (
                "url = \"ldap://x\"\nca_file = \"/ca\"\nbind_dn_template = \"uid={user}\"",
                "policy.ldap.ca_file",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\nbind_dn = \"cn=s\"",
                "policy.ldap.bind_dn",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\ngroup_filter = \"(member={dn})\"",
                "policy.ldap.group_base",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\ntimeout = \"0s\"",
                "policy.ldap.timeout",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\nmax_connections = 0",
                "policy.ldap.max_connections",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\nbogus = 1",
                "policy.ldap.bogus: unknown key",
            ),
            (
                "url = \"ldap://x\"\nbase = \"dc=x\"\n[policy.ldap.group_map]\n\"cn=a\" = \"a b\"",
                "policy.ldap.group_map",
            ),
        ];
        for (toml, want) in cases {
            let errs = parse(toml).expect_err(toml);
            assert!(errs.iter().any(|e| e.contains(want)), "{toml}: {errs:?}");
        }
    }

    #[test]
    fn users_file_or_ldap_not_both_and_auth_needs_one() {
        let both =
            "[policy]\nusers_file = \"/u\"\n[policy.ldap]\nurl = \"ldap://x\"\nbase = \"dc=x\"\n";
        let errs = PolicyConfig::from_toml(both, &[]).expect_err("both");
        assert!(errs.iter().any(|e| e.path == "policy.ldap"), "{errs:?}");
        let ldap_only = "[policy.listeners.h]\nauth = true\n[policy.ldap]\nurl = \"ldap://x\"\nbase = \"dc=x\"\n";
        assert!(PolicyConfig::from_toml(ldap_only, &["h"]).is_ok());
        let neither = "[policy.listeners.h]\nauth = true\n";
        assert!(PolicyConfig::from_toml(neither, &["h"]).is_err());
    }
}
