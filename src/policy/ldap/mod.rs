//! LDAP as a user source for proxy logins (HTTP Basic, SOCKS5 RFC 1929), and a user's groups
//! for logins checked elsewhere (Kerberos: [`Directory::groups_of`]).
//!
//! The decisions are pure and unit-tested without a directory: escaping names into filters
//! and DNs ([`escape`]), the answer cache ([`cache`]), the group mapping ([`map_groups`]),
//! the result codes ([`bind_outcome`]). [`Directory`] is the thin async part, on `ldap3`.
//!
//! One login: the name is checked (no control characters: refused without asking), the
//! cache is asked (keyed by a salted hash of name and password), then a connection slot is
//! taken (at most `max_connections` logins talk to the directory at once, at most
//! `max_waiting` wait for a slot; beyond that the login is refused at once as "busy", like a
//! full hashing queue), and on an idle connection or a fresh one (TCP, then StartTLS or
//! ldaps with the configured CA): bind as the user (template) or search for the user as the service account
//! and bind as the DN found; then read the user's name attribute and groups. Every network
//! step is bounded by `timeout`. An answer from the directory is cached; a directory that
//! cannot be reached, answers late or answers with a server error is *unavailable*: never a
//! success, never cached, and not charged as a wrong password.

pub mod cache;
pub mod config;
pub mod escape;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

use self::cache::{Cached, LoginCache};
pub use self::config::{BindMode, GroupSource, LdapConfig};
use self::escape::{check_login_name, dn_value, fill, filter_value, first_rdn_value};
use super::{Identity, Secret};

/// Why the directory gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Too many logins already talking to or waiting for the directory: not asked.
    #[error("too many directory logins waiting")]
    Busy,
    /// Unreachable, too slow, TLS failure, or a server-side error.
    #[error("user directory unavailable: {0}")]
    Unavailable(String),
}

/// What a simple bind's result code means for a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindOutcome {
    Bound,
    /// Wrong name or password (or an account the directory will not let in).
    Refused,
    /// The directory could not decide (busy, unavailable, other error).
    Failed,
}

/// RFC 4511 result codes of a bind: 0 success; 49 invalidCredentials, 48
/// inappropriateAuthentication, 50 insufficientAccessRights, 53 unwillingToPerform (e.g. a
/// locked account or an unauthenticated bind), 32 noSuchObject: refused; anything else (51
/// busy, 52 unavailable, 80 other, ...) is the directory's problem, not the user's.
pub fn bind_outcome(rc: u32) -> BindOutcome {
    match rc {
        0 => BindOutcome::Bound,
        32 | 48 | 49 | 50 | 53 => BindOutcome::Refused,
        _ => BindOutcome::Failed,
    }
}

/// Policy group names from a user's directory groups, each given as (DN, name attribute
/// value if read): `map` (keys lower-case) is asked for the DN, then for the name (the
/// attribute's value, else the DN's first RDN value); an unmapped group keeps its name.
/// Names with control characters are dropped; duplicates are removed, order kept.
pub fn map_groups(
    groups: &[(String, Option<String>)],
    map: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (dn, name) in groups {
        let name = name.clone().or_else(|| first_rdn_value(dn));
        let mapped = map.get(&dn.to_ascii_lowercase()).cloned().or_else(|| {
            let n = name.as_ref()?;
            map.get(&n.to_ascii_lowercase())
                .cloned()
                .or(Some(n.clone()))
        });
        if let Some(g) = mapped {
            if !g.is_empty() && !g.chars().any(char::is_control) && !out.contains(&g) {
                out.push(g);
            }
        }
    }
    out
}

/// The user's name in the policy: the entry's value of the name attribute that equals the
/// login name ignoring case (the directory's spelling), else its first value, else the
/// login name as given.
pub fn canonical_name(login: &str, values: Option<&Vec<String>>) -> String {
    let Some(values) = values else {
        return login.to_string();
    };
    values
        .iter()
        .find(|v| v.eq_ignore_ascii_case(login))
        .or(values.first())
        .filter(|v| check_login_name(v).is_ok())
        .cloned()
        .unwrap_or_else(|| login.to_string())
}

fn attr<'a>(entry: &'a SearchEntry, name: &str) -> Option<&'a Vec<String>> {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The LDAP user source. One per compiled policy; cheap to share.
pub struct Directory {
    cfg: LdapConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    service_password: Option<Secret>,
    cache: Mutex<LoginCache>,
    slots: Semaphore,
    /// Connections that finished a conversation cleanly, with when; at most
    /// `max_connections` (each in use holds a slot, so no more are ever open).
    idle: Mutex<Vec<(ldap3::Ldap, Instant)>>,
    waiting: AtomicUsize,
    down: AtomicBool,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

/// What one conversation with the directory found.
type Found = Option<Identity>;

/// An idle connection older than this is closed rather than reused (servers and firewalls
/// drop idle connections; a stale one costs a retry).
const IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// What a conversation is for.
#[derive(Clone, Copy)]
enum Job<'a> {
    Login(&'a str, &'a Secret),
    Lookup(&'a str),
}

impl Directory {
    /// Reads the CA and service password files; no connection is made here.
    pub fn new(cfg: &LdapConfig) -> Result<Directory, String> {
        let tls = if cfg.url.starts_with("ldaps:") || cfg.starttls {
            Some(tls_config(cfg)?)
        } else {
            None
        };
        let service_password = match (&cfg.bind_password, &cfg.bind_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let pw = text.lines().next().unwrap_or_default();
                if pw.is_empty() {
                    return Err(format!("{} holds no password", path.display()));
                }
                Some(Secret::new(pw))
            }
            (None, None) => None,
        };
        let mut salt = [0u8; 32];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut salt)
            .map_err(|_| "no random numbers for the login cache".to_string())?;
        Ok(Directory {
            cfg: cfg.clone(),
            tls,
            service_password,
            cache: Mutex::new(LoginCache::new(cfg.cache, salt)),
            slots: Semaphore::new(cfg.max_connections),
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &LdapConfig {
        &self.cfg
    }

    /// Checks `name` and `password` against the directory: `Ok(Some(identity))` with the
    /// directory's spelling of the name and the mapped groups, `Ok(None)` for a wrong name
    /// or password (also an empty password, which LDAP would take as an anonymous bind, and
    /// a name with control characters, which is never sent).
    pub async fn log_in(&self, name: &str, password: &Secret) -> Result<Found, DirectoryError> {
        if check_login_name(name).is_err() || password.expose().is_empty() {
            return Ok(None);
        }
        let key = self.cache_key(name, password);
        if let Some(answer) = self.cached(&key) {
            return Ok(answer);
        }
        let found = self.talk(Job::Login(name, password)).await?;
        self.remember(key, &found);
        Ok(found)
    }

    /// A user's identity and groups without a password, for logins proven elsewhere
    /// (Kerberos): found as the service account (or anonymously), `Ok(None)` when the
    /// directory has no such user. Cached like a login.
    pub async fn groups_of(&self, name: &str) -> Result<Found, DirectoryError> {
        if check_login_name(name).is_err() {
            return Ok(None);
        }
        // NUL never appears in a login name: this key space is apart from logins'.
        let key = self.cache_key(&format!("\0groups\0{name}"), &Secret::new(""));
        if let Some(answer) = self.cached(&key) {
            return Ok(answer);
        }
        let found = self.talk(Job::Lookup(name)).await?;
        self.remember(key, &found);
        Ok(found)
    }

    fn cache_key(&self, name: &str, password: &Secret) -> cache::Key {
        match self.cache.lock() {
            Ok(c) => c.key(name, password),
            Err(p) => p.into_inner().key(name, password),
        }
    }

    fn cached(&self, key: &cache::Key) -> Option<Found> {
        let mut c = self.cache.lock().ok()?;
        match c.get(key, Instant::now())? {
            Cached::Valid(id) => Some(Some(id)),
            Cached::Refused => Some(None),
        }
    }

    fn remember(&self, key: cache::Key, found: &Found) {
        let answer = match found {
            Some(id) => Cached::Valid(id.clone()),
            None => Cached::Refused,
        };
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, answer, Instant::now());
        }
    }

    /// Runs one conversation within a connection slot, bounded in time, on an idle
    /// connection if there is one (retried once on a fresh connection if that fails: it may
    /// have gone stale); notes the directory going down and coming back in the log.
    async fn talk(&self, job: Job<'_>) -> Result<Found, DirectoryError> {
        let _permit = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_waiting {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(DirectoryError::Busy);
                }
                let got = tokio::time::timeout(self.cfg.timeout, self.slots.acquire()).await;
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    _ => return Err(DirectoryError::Busy),
                }
            }
        };
        // Each step has its own timeout; this bounds the whole (connect + up to five
        // operations) in case a step is slow without ever being late.
        let mut result = match self.checkout() {
            Some(mut ldap) => {
                let r = self.bounded(&mut ldap, job, true).await;
                if r.is_ok() {
                    self.checkin(ldap);
                }
                Some(r)
            }
            None => None,
        };
        if !matches!(result, Some(Ok(_))) {
            result = Some(match self.connect().await {
                Ok(mut ldap) => {
                    let r = self.bounded(&mut ldap, job, false).await;
                    if r.is_ok() {
                        self.checkin(ldap);
                    }
                    r
                }
                Err(e) => Err(e),
            });
        }
        let result =
            result.unwrap_or_else(|| Err(DirectoryError::Unavailable("no connection".into())));
        match &result {
            Err(DirectoryError::Unavailable(why)) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    tracing::warn!(url = %self.cfg.url, error = %why, "user directory unavailable: logins through it are refused");
                } else {
                    tracing::debug!(url = %self.cfg.url, error = %why, "user directory still unavailable");
                }
            }
            Ok(_) if self.down.swap(false, Ordering::AcqRel) => {
                tracing::info!(url = %self.cfg.url, "user directory reachable again");
            }
            _ => {}
        }
        result
    }

    /// One conversation, cut at 6 x `timeout` in case steps are slow without being late.
    async fn bounded(
        &self,
        ldap: &mut ldap3::Ldap,
        job: Job<'_>,
        reused: bool,
    ) -> Result<Found, DirectoryError> {
        let whole = self.cfg.timeout * 6;
        let run = async {
            match job {
                Job::Login(name, password) => {
                    self.check_password(ldap, name, password, reused).await
                }
                Job::Lookup(name) => self.look_up(ldap, name, reused).await,
            }
        };
        match tokio::time::timeout(whole, run).await {
            Ok(r) => r,
            Err(_) => Err(DirectoryError::Unavailable("timed out".into())),
        }
    }

    /// An idle connection that is still open and not too old.
    fn checkout(&self) -> Option<ldap3::Ldap> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((mut ldap, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && !ldap.is_closed() {
                return Some(ldap);
            }
        }
        None
    }

    /// Keeps a connection that finished a conversation cleanly for the next login.
    fn checkin(&self, ldap: ldap3::Ldap) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.cfg.max_connections {
                idle.push((ldap, Instant::now()));
            }
        }
    }

    async fn connect(&self) -> Result<ldap3::Ldap, DirectoryError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.cfg.timeout)
            .set_starttls(self.cfg.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.cfg.url)
            .await
            .map_err(unavailable)?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok(ldap)
    }

    /// Binds as the service account, if one is configured; else, with `anonymous`, binds
    /// anonymously (a reused connection may still be bound as the previous user).
    async fn bind_service(
        &self,
        ldap: &mut ldap3::Ldap,
        anonymous: bool,
    ) -> Result<(), DirectoryError> {
        let (dn, pw) = match (&self.cfg.bind_dn, &self.service_password) {
            (Some(dn), Some(pw)) => (dn.as_str(), pw.expose()),
            _ if anonymous => ("", ""),
            _ => return Ok(()),
        };
        let r = ldap
            .with_timeout(self.cfg.timeout)
            .simple_bind(dn, pw)
            .await
            .map_err(unavailable)?;
        match bind_outcome(r.rc) {
            BindOutcome::Bound => Ok(()),
            // A service account the directory refuses is a configuration problem, never a
            // reason to let anyone in or to blame the user's password.
            _ => Err(DirectoryError::Unavailable(format!(
                "the service account bind_dn was refused (result {}: {})",
                r.rc, r.text
            ))),
        }
    }

    /// Reads one entry (base scope) or searches for one (subtree); `None` when there is no
    /// entry, or more than one (an ambiguous filter lets nobody in).
    async fn find(
        &self,
        ldap: &mut ldap3::Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let result = ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .with_timeout(self.cfg.timeout)
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(unavailable)?;
        let (entries, res) = (result.0, result.1);
        match res.rc {
            0 => {}
            // noSuchObject (the base or the templated DN is not there): nobody.
            32 => return Ok(None),
            // sizeLimitExceeded: more than one entry matched.
            4 => {
                tracing::warn!(%filter, "LDAP user filter matches more than one entry: refused");
                return Ok(None);
            }
            rc => {
                return Err(DirectoryError::Unavailable(format!(
                    "search failed (result {rc}: {})",
                    res.text
                )))
            }
        }
        let mut entries = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate());
        let first = entries.next().map(SearchEntry::construct);
        if entries.next().is_some() {
            tracing::warn!(%filter, "LDAP user filter matches more than one entry: refused");
            return Ok(None);
        }
        Ok(first)
    }

    fn wanted_attrs(&self) -> Vec<&str> {
        let mut attrs = vec![self.cfg.name_attribute.as_str()];
        if let GroupSource::Attribute(a) = &self.cfg.groups {
            attrs.push(a);
        }
        attrs
    }

    /// The user's entry: the templated DN read, or the filter searched.
    async fn user_entry(
        &self,
        ldap: &mut ldap3::Ldap,
        name: &str,
    ) -> Result<Option<SearchEntry>, DirectoryError> {
        let attrs = self.wanted_attrs();
        match &self.cfg.bind {
            BindMode::Template(t) => {
                let dn = fill(t, &dn_value(name), "");
                self.find(ldap, &dn, Scope::Base, "(objectClass=*)", &attrs)
                    .await
            }
            BindMode::Search { base, filter } => {
                let filter = fill(filter, &filter_value(name), "");
                self.find(ldap, base, Scope::Subtree, &filter, &attrs).await
            }
        }
    }

    async fn check_password(
        &self,
        ldap: &mut ldap3::Ldap,
        name: &str,
        password: &Secret,
        reused: bool,
    ) -> Result<Found, DirectoryError> {
        let entry = match &self.cfg.bind {
            BindMode::Template(t) => {
                let dn = fill(t, &dn_value(name), "");
                if !self.bind_user(ldap, &dn, password).await? {
                    return Ok(None);
                }
                // Read as the user themself (or, with a service account, as that).
                self.bind_service(ldap, false).await?;
                match self.user_entry(ldap, name).await? {
                    Some(e) => e,
                    // Bound, but cannot read the own entry: a name, no groups.
                    None => SearchEntry {
                        dn,
                        attrs: HashMap::new(),
                        bin_attrs: HashMap::new(),
                    },
                }
            }
            BindMode::Search { .. } => {
                self.bind_service(ldap, reused).await?;
                let Some(entry) = self.user_entry(ldap, name).await? else {
                    return Ok(None);
                };
                if !self.bind_user(ldap, &entry.dn, password).await? {
                    return Ok(None);
                }
                self.bind_service(ldap, false).await?;
                entry
            }
        };
        self.identity(ldap, name, &entry).await.map(Some)
    }

    /// `true` when the directory accepts `password` for `dn`.
    async fn bind_user(
        &self,
        ldap: &mut ldap3::Ldap,
        dn: &str,
        password: &Secret,
    ) -> Result<bool, DirectoryError> {
        let r = ldap
            .with_timeout(self.cfg.timeout)
            .simple_bind(dn, password.expose())
            .await
            .map_err(unavailable)?;
        match bind_outcome(r.rc) {
            BindOutcome::Bound => Ok(true),
            BindOutcome::Refused => Ok(false),
            BindOutcome::Failed => Err(DirectoryError::Unavailable(format!(
                "bind failed (result {}: {})",
                r.rc, r.text
            ))),
        }
    }

    async fn look_up(
        &self,
        ldap: &mut ldap3::Ldap,
        name: &str,
        reused: bool,
    ) -> Result<Found, DirectoryError> {
        self.bind_service(ldap, reused).await?;
        let Some(entry) = self.user_entry(ldap, name).await? else {
            return Ok(None);
        };
        self.identity(ldap, name, &entry).await.map(Some)
    }

    /// The policy identity for an entry: its name, and its groups (from the attribute, or a
    /// group search).
    async fn identity(
        &self,
        ldap: &mut ldap3::Ldap,
        login: &str,
        entry: &SearchEntry,
    ) -> Result<Identity, DirectoryError> {
        let name = canonical_name(login, attr(entry, &self.cfg.name_attribute));
        let groups: Vec<(String, Option<String>)> = match &self.cfg.groups {
            GroupSource::Attribute(a) => attr(entry, a)
                .map(|dns| dns.iter().map(|dn| (dn.clone(), None)).collect())
                .unwrap_or_default(),
            GroupSource::Search {
                base,
                filter,
                name_attribute,
            } => {
                let filter = fill(filter, &filter_value(login), &filter_value(&entry.dn));
                let result = ldap
                    .with_search_options(SearchOptions::new().sizelimit(1000))
                    .with_timeout(self.cfg.timeout)
                    .search(base, Scope::Subtree, &filter, vec![name_attribute.as_str()])
                    .await
                    .map_err(unavailable)?;
                if !matches!(result.1.rc, 0 | 4 | 32) {
                    return Err(DirectoryError::Unavailable(format!(
                        "group search failed (result {}: {})",
                        result.1.rc, result.1.text
                    )));
                }
                result
                    .0
                    .into_iter()
                    .filter(|e| !e.is_ref() && !e.is_intermediate())
                    .map(SearchEntry::construct)
                    .map(|g| {
                        let n = attr(&g, name_attribute).and_then(|v| v.first().cloned());
                        (g.dn, n)
                    })
                    .collect()
            }
        };
        Ok(Identity {
            name,
            groups: map_groups(&groups, &self.cfg.group_map),
        })
    }
}

fn unavailable(e: ldap3::LdapError) -> DirectoryError {
    DirectoryError::Unavailable(e.to_string())
}

/// The TLS client config: the CA file's certificates, or the system's roots.
fn tls_config(cfg: &LdapConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let certs = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn bind_result_codes() {
        assert_eq!(bind_outcome(0), BindOutcome::Bound);
        for rc in [32, 48, 49, 50, 53] {
            assert_eq!(bind_outcome(rc), BindOutcome::Refused, "{rc}");
        }
        for rc in [1, 2, 51, 52, 80] {
            assert_eq!(bind_outcome(rc), BindOutcome::Failed, "{rc}");
        }
    }

    #[test]
    fn groups_are_named_by_cn_or_the_map() {
        let groups = vec![
            ("cn=staff,ou=groups,dc=test".to_string(), None),
            ("CN=Admins,OU=Groups,DC=test".to_string(), None),
            ("cn=x,dc=test".to_string(), Some("web-users".to_string())),
            ("cn=a+uid=b,dc=test".to_string(), None),
            ("cn=staff,ou=other,dc=test".to_string(), None),
            ("cn=bad\\0a,dc=test".to_string(), None),
        ];
        let mut map = BTreeMap::new();
        assert_eq!(
            map_groups(&groups, &map),
            vec!["staff", "Admins", "web-users"],
            "CN (or the name attribute), duplicates and control characters dropped"
        );
        map.insert("cn=admins,ou=groups,dc=test".to_string(), "ops".to_string());
        map.insert("web-users".to_string(), "web".to_string());
        assert_eq!(map_groups(&groups, &map), vec!["staff", "ops", "web"]);
    }

    #[test]
    fn the_directory_spells_the_name() {
        let vals = vec!["x-alias".to_string(), "alice".to_string()];
        assert_eq!(canonical_name("ALICE", Some(&vals)), "alice");
        assert_eq!(canonical_name("bob", Some(&vals)), "x-alias");
        assert_eq!(canonical_name("bob", None), "bob");
        assert_eq!(canonical_name("bob", Some(&Vec::new())), "bob");
    }

    fn cfg(url: &str) -> LdapConfig {
        LdapConfig {
            url: url.into(),
            starttls: false,
            ca_file: None,
            bind: BindMode::Template("uid={user},dc=test".into()),
            bind_dn: None,
            bind_password: None,
            bind_password_file: None,
            name_attribute: "uid".into(),
            groups: GroupSource::Attribute("memberOf".into()),
            group_map: BTreeMap::new(),
            cache: cache::LdapCacheLimits {
                ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(5),
                max_entries: 16,
            },
            timeout: Duration::from_secs(2),
            max_connections: 1,
            max_waiting: 0,
        }
    }

    #[tokio::test]
    async fn nothing_is_sent_for_bad_names_or_empty_passwords() {
        // Port 9 on loopback: nothing listens, so any attempt to ask would be "unavailable".
        let d = Directory::new(&cfg("ldap://127.0.0.1:9")).expect("directory");
        assert_eq!(d.log_in("a\0b", &Secret::new("pw")).await, Ok(None));
        assert_eq!(d.log_in("a\nb", &Secret::new("pw")).await, Ok(None));
        assert_eq!(d.log_in("", &Secret::new("pw")).await, Ok(None));
        assert_eq!(
            d.log_in("alice", &Secret::new("")).await,
            Ok(None),
            "an empty password is an anonymous bind in LDAP: refused here"
        );
        assert!(matches!(
            d.log_in("alice", &Secret::new("pw")).await,
            Err(DirectoryError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_full_queue_is_busy_not_unavailable() {
        // A listener that accepts and never answers holds the one slot.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel(4);
        let hold = tokio::spawn(async move {
            let mut kept = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                kept.push(s);
                let _ = accepted_tx.send(()).await;
            }
        });
        let d = Arc::new(Directory::new(&cfg(&format!("ldap://{addr}"))).expect("directory"));
        let d2 = Arc::clone(&d);
        let first = tokio::spawn(async move { d2.log_in("alice", &Secret::new("pw")).await });
        // Connected: the first login holds the slot (taken before connecting).
        accepted.recv().await.expect("the first login connected");
        assert_eq!(d.slots.available_permits(), 0);
        assert_eq!(
            d.log_in("bob", &Secret::new("pw")).await,
            Err(DirectoryError::Busy),
            "max_waiting = 0: refused at once"
        );
        let r = first.await.expect("task");
        assert!(matches!(r, Err(DirectoryError::Unavailable(_))), "{r:?}");
        hold.abort();
    }
}
