//! The compiled policy and its evaluation: first matching rule wins, host conditions indexed.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::config::{
    DefaultAction, ListenerPolicy, ParentSpec, PolicyConfig, RuleAction, RuleSpec,
};
use super::guard::Refusal;
use super::headers::{Rewrite, DEFAULT_DENY_PAGE};
use super::index::HostIndex;
use super::local::LocalAddrs;
use super::matcher::{canonical, normalise_name, CidrSet, Schedule};
use super::users::{Users, UsersError};
use super::{AccessRequest, Action, Precheck, Verdict};
use crate::config::PortRange;
use crate::connector::Host;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("cannot read deny page {path}: {source}")]
    DenyPage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host regexes: {0}")]
    Regex(String),
    #[error("{0}")]
    Ldap(String),
}

/// Returned by [`Policy::open_proxy_check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "listener {listener:?} on {bind} would be an open proxy: it requires no login and the \
     default is allow, or a rule allows any client. Require auth, restrict clients, or set \
     [policy.listeners.{listener}] open = true"
)]
pub struct OpenProxyError {
    pub listener: String,
    pub bind: IpAddr,
}

#[derive(Debug)]
struct Rule {
    listeners: Vec<String>,
    clients: Option<CidrSet>,
    users: HashSet<String>,
    groups: HashSet<String>,
    dest_addrs: Option<CidrSet>,
    ports: Vec<PortRange>,
    /// Bit set of `Protocol::bit`; 0 means any.
    protocols: u8,
    methods: Vec<String>,
    schedule: Option<Schedule>,
    verdict: Verdict,
}

enum Match {
    No,
    Yes,
    NeedsAddress,
}

/// An immutable, compiled policy. Cheap to share (`Arc<Policy>`); see the module docs of
/// [`crate::policy`] for the evaluation sequence.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    index: HostIndex,
    /// Rules without a host condition, in order.
    hostless: Vec<u32>,
    listeners: HashMap<String, ListenerPolicy>,
    default_action: DefaultAction,
    refuse_private: bool,
    own_addrs: Vec<IpAddr>,
    /// The live set of interface and listener addresses, shared with every other policy.
    local: Arc<LocalAddrs>,
    time_zone: jiff::tz::TimeZone,
    users: Option<Arc<Users>>,
    /// `[policy.ldap]`: the directory users log in against instead of the users file.
    ldap: Option<Arc<super::ldap::Directory>>,
    parents: Vec<ParentSpec>,
    deny_page: String,
    realm: String,
    kerberos: super::config::KerberosConfig,
    allow_default: Verdict,
    deny_default: Verdict,
}

impl Policy {
    /// Builds the policy: reads the users file and deny page, indexes the rules.
    /// `own_addrs` are the proxy's own addresses, refused as destinations.
    pub fn compile(cfg: &PolicyConfig, own_addrs: Vec<IpAddr>) -> Result<Policy, PolicyError> {
        let users = match &cfg.users_file {
            Some(path) => Some(Users::load(path, cfg.auth_cache)?),
            None => None,
        };
        Self::compile_with_users(cfg, own_addrs, users)
    }

    /// Like [`Policy::compile`] with the users given rather than read from `users_file`.
    pub fn compile_with_users(
        cfg: &PolicyConfig,
        own_addrs: Vec<IpAddr>,
        users: Option<Users>,
    ) -> Result<Policy, PolicyError> {
        let deny_page = match &cfg.deny_page {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|source| PolicyError::DenyPage {
                    path: path.clone(),
                    source,
                })?
            }
            None => DEFAULT_DENY_PAGE.to_string(),
        };
        let ldap = match &cfg.ldap {
            Some(l) => Some(Arc::new(
                super::ldap::Directory::new(l).map_err(PolicyError::Ldap)?,
            )),
            None => None,
        };
        let index = HostIndex::build(cfg.rules.iter().map(|r| r.hosts.as_slice()))
            .map_err(PolicyError::Regex)?;
        let hostless = (0..cfg.rules.len() as u32)
            .filter(|i| cfg.rules[*i as usize].hosts.is_empty())
            .collect();
        let verdict = |name: &str, action: Action| Verdict {
            action,
            rule: Arc::from(name),
            refusal: None,
            rewrite: Arc::new(Rewrite::default()),
        };
        Ok(Policy {
            rules: cfg.rules.iter().map(compile_rule).collect(),
            index,
            hostless,
            listeners: cfg.listeners.clone().into_iter().collect(),
            default_action: cfg.default_action,
            refuse_private: cfg.refuse_private,
            own_addrs: own_addrs.into_iter().map(super::guard::fold_v4).collect(),
            local: Arc::new(LocalAddrs::new()),
            time_zone: cfg.time_zone.clone(),
            users: users.map(Arc::new),
            ldap,
            parents: cfg.parents.clone(),
            deny_page,
            realm: cfg.realm.clone(),
            kerberos: cfg.kerberos.clone(),
            allow_default: verdict("default", Action::Allow),
            deny_default: verdict("default", Action::Deny),
        })
    }

    /// Reads the proxy's own addresses from `local` (the server's live set, kept current
    /// as interfaces change) besides the fixed `own_addrs` given to [`Policy::compile`].
    pub fn with_local(mut self, local: Arc<LocalAddrs>) -> Policy {
        self.local = local;
        self
    }

    /// Step 1, before any DNS lookup.
    pub fn precheck(&self, req: &AccessRequest<'_>) -> Precheck {
        match req.dest_host {
            Some(Host::Ip(ip)) => return Precheck::Decided(self.decide(req, &[*ip])),
            None => return Precheck::Decided(self.first_match(req, None)),
            Some(Host::Name(_)) => {}
        }
        let mut time = LazyTime::new(req, &self.time_zone);
        let mut outcome = None;
        let mut needs_address = false;
        self.for_candidates(req, |rule| match rule.check(req, None, &mut time) {
            Match::No => false,
            Match::NeedsAddress => {
                needs_address = true;
                true
            }
            Match::Yes => {
                outcome = Some(&rule.verdict);
                true
            }
        });
        let verdict = outcome.unwrap_or_else(|| self.default_for(req.listener));
        if needs_address || verdict.action == Action::Allow {
            Precheck::Resolve
        } else {
            Precheck::Decided(verdict.clone())
        }
    }

    /// Step 2: every resolved address checked; any denied address denies the request.
    pub fn decide(&self, req: &AccessRequest<'_>, addrs: &[IpAddr]) -> Verdict {
        let mut first = None;
        for ip in addrs.iter().map(|ip| canonical(*ip)) {
            let v = self.decide_one(req, ip);
            if v.action == Action::Deny {
                return v;
            }
            first.get_or_insert(v);
        }
        first.unwrap_or_else(|| Verdict {
            rule: Arc::from("no-address"),
            ..self.deny_default.clone()
        })
    }

    fn decide_one(&self, req: &AccessRequest<'_>, ip: IpAddr) -> Verdict {
        let mut time = LazyTime::new(req, &self.time_zone);
        let mut found: Option<&Rule> = None;
        self.for_candidates(req, |rule| {
            let yes = matches!(rule.check(req, Some(ip), &mut time), Match::Yes);
            if yes {
                found = Some(rule);
            }
            yes
        });
        let (verdict, explicit) = match found {
            Some(rule) => (&rule.verdict, rule.dest_addrs.is_some()),
            None => (self.default_for(req.listener), false),
        };
        if verdict.action == Action::Allow {
            let refused = match explicit {
                false => self.check_guard(ip).err(),
                true => None,
            };
            // Even a rule that names the address never lets the proxy connect to itself.
            // BIND's destination is the expected peer, not a connection target.
            let own_listener = || {
                (req.protocol != super::Protocol::SocksBind
                    && self.local.load().is_own_listener(ip, req.dest_port))
                .then_some(Refusal::OwnListener)
            };
            if let Some(refusal) = refused.or_else(own_listener) {
                return Verdict {
                    rule: Arc::from("guard"),
                    refusal: Some(refusal),
                    ..self.deny_default.clone()
                };
            }
        }
        verdict.clone()
    }

    /// For a destination reached through a tunnel agent: the rules, without the guard (the
    /// address is in the agent's network, whose own guard and allow-list apply there).
    /// `ip` when the client gave an address; a name is not resolved here, so rules on
    /// destination addresses cannot match it.
    pub fn decide_remote(&self, req: &AccessRequest<'_>, ip: Option<IpAddr>) -> Verdict {
        self.first_match(req, ip.map(canonical))
    }

    /// First match without a destination (no address rules can match).
    fn first_match(&self, req: &AccessRequest<'_>, ip: Option<IpAddr>) -> Verdict {
        self.first_match_ref(req, ip).clone()
    }

    /// [`Policy::first_match`], borrowed from the policy.
    fn first_match_ref(&self, req: &AccessRequest<'_>, ip: Option<IpAddr>) -> &Verdict {
        let mut time = LazyTime::new(req, &self.time_zone);
        let mut found = None;
        self.for_candidates(req, |rule| {
            let yes = matches!(rule.check(req, ip, &mut time), Match::Yes);
            if yes {
                found = Some(&rule.verdict);
            }
            yes
        });
        found.unwrap_or_else(|| self.default_for(req.listener))
    }

    /// The verdict of the rules about clients for a request with no destination to check
    /// (a reverse listener's: `req.dest_host` is ignored), borrowed: what
    /// [`Policy::precheck`] decides for it, without copying the verdict's shared parts
    /// (their reference counts are written by every request of every thread).
    pub fn client_verdict(&self, req: &AccessRequest<'_>) -> &Verdict {
        self.first_match_ref(req, None)
    }

    /// Calls `f` on the rules that can match, in order, until it returns true. Rules with a
    /// host condition come from the index; the others are all visited.
    fn for_candidates<'s>(&'s self, req: &AccessRequest<'_>, mut f: impl FnMut(&'s Rule) -> bool) {
        let mut hosted = Vec::new();
        if let Some(Host::Name(n)) = req.dest_host {
            if let Some(name) = normalise_name(n) {
                self.index.candidates(&name, &mut hosted);
            }
        }
        hosted.sort_unstable();
        hosted.dedup();
        let (mut a, mut b) = (hosted.iter().peekable(), self.hostless.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return,
            };
            if let Some(rule) = next.and_then(|i| self.rules.get(*i as usize)) {
                if f(rule) {
                    return;
                }
            }
        }
    }

    fn default_for(&self, listener: &str) -> &Verdict {
        let action = self
            .listeners
            .get(listener)
            .and_then(|l| l.default)
            .unwrap_or(self.default_action);
        match action {
            DefaultAction::Allow => &self.allow_default,
            DefaultAction::Deny => &self.deny_default,
        }
    }

    /// A listener's settings (all off when it has no `[policy.listeners.<name>]`).
    pub fn listener(&self, name: &str) -> ListenerPolicy {
        self.listeners.get(name).cloned().unwrap_or_default()
    }

    /// The open-proxy guard, for a listener about to bind `bind`. A listener is closed when
    /// bound to loopback, marked `open`, requiring auth, or when its default is deny and every
    /// allow/route rule that applies to it restricts clients (not to `0.0.0.0/0`) or users.
    pub fn open_proxy_check(&self, listener: &str, bind: IpAddr) -> Result<(), OpenProxyError> {
        let lp = self.listener(listener);
        let bind = canonical(bind);
        if bind.is_loopback() || lp.open || lp.auth {
            return Ok(());
        }
        let restricted = |r: &Rule| {
            r.clients.as_ref().is_some_and(|c| !c.covers_everything())
                || !r.users.is_empty()
                || !r.groups.is_empty()
        };
        let default_deny = self.default_for(listener).action == Action::Deny;
        let rules_closed = self
            .rules
            .iter()
            .filter(|r| r.listeners.is_empty() || r.listeners.iter().any(|l| l == listener))
            .filter(|r| r.verdict.action != Action::Deny)
            .all(restricted);
        if default_deny && rules_closed {
            Ok(())
        } else {
            Err(OpenProxyError {
                listener: listener.to_string(),
                bind,
            })
        }
    }

    /// The safe-by-default guard alone, with this policy's settings and own addresses, and
    /// the own-listener check for `ip:port`: for `direct` entries of a route, which the
    /// verdict did not check.
    pub fn guard(&self, ip: IpAddr, port: u16) -> Result<(), Refusal> {
        self.check_guard(ip)?;
        match self.local.load().is_own_listener(ip, port) {
            true => Err(Refusal::OwnListener),
            false => Ok(()),
        }
    }

    /// The address categories and own addresses (fixed and live).
    fn check_guard(&self, ip: IpAddr) -> Result<(), Refusal> {
        let local = self.local.load();
        super::guard::check_with(ip, self.refuse_private, |ip| {
            self.own_addrs.contains(&ip) || local.is_own_address(ip)
        })
    }

    pub fn users(&self) -> Option<&Arc<Users>> {
        self.users.as_ref()
    }

    /// The directory, when `[policy.ldap]` is the user source.
    pub fn ldap(&self) -> Option<&Arc<super::ldap::Directory>> {
        self.ldap.as_ref()
    }

    /// Where logins are checked: the directory, else the users file.
    pub fn user_source(&self) -> super::login::UserSource<'_> {
        match (&self.ldap, &self.users) {
            (Some(d), _) => super::login::UserSource::Ldap(d),
            (None, Some(u)) => super::login::UserSource::File(u),
            (None, None) => super::login::UserSource::Nobody,
        }
    }

    pub fn parent(&self, name: &str) -> Option<&ParentSpec> {
        self.parents.iter().find(|p| p.name == name)
    }

    /// The 403 page template (`super::headers::render_deny_page` fills it).
    pub fn deny_page(&self) -> &str {
        &self.deny_page
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// `[policy.kerberos]`.
    pub fn kerberos(&self) -> &super::config::KerberosConfig {
        &self.kerberos
    }

    /// Who a Kerberos user (a principal already mapped to `name`) is to the rules: with the
    /// groups of the user source -- the users file, or the directory (`[policy.ldap]`: the
    /// user found as the service account, with its spelling and mapped groups) -- or the name
    /// alone, with no groups, when the source does not list it (the ticket proved who it
    /// is). A directory that cannot answer is an error: the login is refused, never let in
    /// without the groups the rules may deny by.
    pub async fn kerberos_identity(
        &self,
        name: String,
    ) -> Result<super::Identity, super::ldap::DirectoryError> {
        let listed = match (&self.ldap, &self.users) {
            (Some(d), _) => d.groups_of(&name).await?,
            (None, Some(u)) => u.identity(&name),
            (None, None) => None,
        };
        Ok(listed.unwrap_or(super::Identity {
            name,
            groups: Vec::new(),
        }))
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

fn compile_rule(spec: &RuleSpec) -> Rule {
    let action = match &spec.action {
        RuleAction::Allow => Action::Allow,
        RuleAction::Deny => Action::Deny,
        RuleAction::Route(p) => Action::Route(p.clone().into()),
    };
    let set = |nets: &[ipnet::IpNet]| (!nets.is_empty()).then(|| CidrSet::new(nets));
    Rule {
        listeners: spec.listeners.clone(),
        clients: set(&spec.clients),
        users: spec.users.iter().cloned().collect(),
        groups: spec.groups.iter().cloned().collect(),
        dest_addrs: set(&spec.dest_addrs),
        ports: spec.ports.clone(),
        protocols: spec.protocols.iter().fold(0, |a, p| a | p.bit()),
        methods: spec.methods.clone(),
        schedule: spec.schedule.clone(),
        verdict: Verdict {
            action,
            rule: Arc::from(spec.name.as_str()),
            refusal: None,
            rewrite: Arc::new(Rewrite {
                request: spec.request_headers.clone(),
                response: spec.response_headers.clone(),
                anonymous: spec.anonymous,
            }),
        },
    }
}

impl Rule {
    /// Every condition but the host (the index already chose this rule for its host).
    fn check(&self, req: &AccessRequest<'_>, ip: Option<IpAddr>, time: &mut LazyTime<'_>) -> Match {
        if !self.listeners.is_empty() && !self.listeners.iter().any(|l| l == req.listener) {
            return Match::No;
        }
        if self
            .clients
            .as_ref()
            .is_some_and(|c| !c.contains(req.client))
        {
            return Match::No;
        }
        if !self.users.is_empty() || !self.groups.is_empty() {
            let Some(u) = req.user else { return Match::No };
            if !self.users.contains(&u.name) && !u.groups.iter().any(|g| self.groups.contains(g)) {
                return Match::No;
            }
        }
        if self.protocols != 0 && self.protocols & req.protocol.bit() == 0 {
            return Match::No;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(req.dest_port)) {
            return Match::No;
        }
        if !self.methods.is_empty()
            && !req
                .method
                .is_some_and(|m| self.methods.iter().any(|x| x.eq_ignore_ascii_case(m)))
        {
            return Match::No;
        }
        if let Some(s) = &self.schedule {
            if !time
                .get()
                .is_some_and(|(day, minute)| s.contains(day, minute))
            {
                return Match::No;
            }
        }
        match (&self.dest_addrs, ip) {
            (None, _) => Match::Yes,
            (Some(set), Some(ip)) if set.contains(ip) => Match::Yes,
            (Some(_), Some(_)) => Match::No,
            (Some(_), None) if matches!(req.dest_host, Some(Host::Name(_))) => Match::NeedsAddress,
            (Some(_), None) => Match::No,
        }
    }
}

/// The request's time in the policy's zone, computed at most once per evaluation.
struct LazyTime<'a> {
    at: std::time::SystemTime,
    tz: &'a jiff::tz::TimeZone,
    value: Option<Option<(u8, u16)>>,
}

impl<'a> LazyTime<'a> {
    fn new(req: &AccessRequest<'_>, tz: &'a jiff::tz::TimeZone) -> Self {
        LazyTime {
            at: req.at,
            tz,
            value: None,
        }
    }

    /// (weekday with Monday = 0, minute of the day).
    fn get(&mut self) -> Option<(u8, u16)> {
        *self.value.get_or_insert_with(|| {
            let ts = jiff::Timestamp::try_from(self.at).ok()?;
            let z = ts.to_zoned_datetime(self.tz.clone());
            let day = u8::try_from(z.weekday().to_monday_zero_offset()).ok()?;
            let minute = u16::try_from(i32::from(z.hour()) * 60 + i32::from(z.minute())).ok()?;
            Some((day, minute))
        })
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
