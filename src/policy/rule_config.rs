//! One `[[policy.rules]]` entry: its conditions, action and header rewrites, read and checked.

use ipnet::IpNet;

use super::headers::{check_name, check_value, HeaderEdits};
use super::matcher::{parse_net, Days, HostPattern, Schedule, TimeWindow};
use super::users::check_user_name;
use super::Protocol;
use crate::config::reader::Section;
use crate::config::PortRange;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
    /// Parent names in failover order; `"direct"` means connect directly.
    Route(Vec<String>),
}

/// One `[[policy.rules]]` entry. An empty list means "no condition".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub name: String,
    pub action: RuleAction,
    pub listeners: Vec<String>,
    pub clients: Vec<IpNet>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub hosts: Vec<HostPattern>,
    pub dest_addrs: Vec<IpNet>,
    pub ports: Vec<PortRange>,
    pub protocols: Vec<Protocol>,
    pub methods: Vec<String>,
    pub schedule: Option<Schedule>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub anonymous: bool,
}

fn strings(
    s: &Section<'_>,
    key: &str,
    what: &str,
    check: impl Fn(&str) -> Result<String, String>,
) -> Vec<String> {
    non_empty(
        s,
        key,
        s.array(key, what, |v| check(v.as_str().ok_or("not a string")?)),
    )
}

/// An absent key is no condition; a present but empty list is a mistake (it would read as
/// "match nothing" to some and "match anything" to others).
pub(super) fn non_empty<T>(s: &Section<'_>, key: &str, v: Option<Vec<T>>) -> Vec<T> {
    match v {
        Some(v) if v.is_empty() => {
            s.error_at(
                key,
                "an empty list matches nothing; leave the key out to match anything",
            );
            v
        }
        Some(v) => v,
        None => Vec::new(),
    }
}

pub(super) fn read_rule(
    r: &Section<'_>,
    i: usize,
    listeners: &[&str],
    parents: &[&str],
    agents: Option<&[&str]>,
) -> Option<RuleSpec> {
    let name = r.string("name").unwrap_or_else(|| format!("rules[{i}]"));
    let action_name = r.string("action");
    let parent_list = strings(r, "parents", "parent names", |p| {
        (p == "direct" || parents.contains(&p))
            .then(|| p.to_string())
            .ok_or_else(|| "no [[policy.parents]] entry has this name".into())
    });
    let agent = r.string("agent");
    if let Some(a) = &agent {
        if !crate::tunnel::proto::valid_name(a) {
            r.error_at("agent", "an agent name is 1-64 of A-Z a-z 0-9 . _ -");
        } else if agents.is_some_and(|known| !known.contains(&a.as_str())) {
            r.error_at(
                "agent",
                format!("no tunnel listener accepts an agent named {a:?}"),
            );
        }
    }
    let action = match action_name.as_deref() {
        Some("allow") => RuleAction::Allow,
        Some("deny") => RuleAction::Deny,
        // `parents` beside `agent`: the fallback, in order, when the agent is not there or
        // cannot open the stream.
        Some("route") if r.has("agent") => RuleAction::Route(
            std::iter::once(format!(
                "{}{}",
                crate::upstream::AGENT_PREFIX,
                agent.clone().unwrap_or_default()
            ))
            .chain(parent_list.clone())
            .collect(),
        ),
        Some("route") if !r.has("parents") => {
            r.error_at(
                "parents",
                "a route rule needs parents (names, or \"direct\") or an agent",
            );
            RuleAction::Deny
        }
        Some("route") => RuleAction::Route(parent_list.clone()),
        Some(other) => {
            r.error_at(
                "action",
                format!("expected \"allow\", \"deny\" or \"route\", found {other:?}"),
            );
            RuleAction::Deny
        }
        None => {
            r.error_at("action", "every rule needs an action");
            RuleAction::Deny
        }
    };
    if action_name.as_deref() != Some("route") && r.has("parents") {
        r.error_at("parents", "parents are only for action = \"route\"");
    }
    if action_name.as_deref() != Some("route") && r.has("agent") {
        r.error_at("agent", "an agent is only for action = \"route\"");
    }
    let nets = |key: &str| {
        non_empty(
            r,
            key,
            r.array(key, "a CIDR such as \"10.0.0.0/8\"", |v| {
                parse_net(v.as_str().ok_or("not a string")?)
            }),
        )
    };
    let spec = RuleSpec {
        listeners: strings(r, "listeners", "listener names", |l| {
            listeners
                .contains(&l)
                .then(|| l.to_string())
                .ok_or_else(|| "no listener has this name".into())
        }),
        clients: nets("clients"),
        users: strings(r, "users", "user names", |u| {
            check_user_name(u).map(|_| u.to_string())
        }),
        groups: strings(r, "groups", "group names", |g| {
            check_user_name(g).map(|_| g.to_string())
        }),
        hosts: non_empty(
            r,
            "hosts",
            r.array(
                "hosts",
                "a host pattern (\"example.com\", \"*.example.com\", \".example.com\", \"re:...\")",
                |v| HostPattern::parse(v.as_str().ok_or("not a string")?),
            ),
        ),
        dest_addrs: nets("dest_addrs"),
        ports: non_empty(
            r,
            "ports",
            r.array(
                "ports",
                "a port (443) or a range (\"8000-8999\")",
                crate::config::parse_port_range,
            ),
        ),
        protocols: non_empty(
            r,
            "protocols",
            r.array(
                "protocols",
                "http, connect, socks-connect, socks-bind, socks-udp, tcp or udp",
                |v| {
                    Protocol::parse(v.as_str().ok_or("not a string")?)
                        .ok_or_else(|| "unknown protocol".into())
                },
            ),
        ),
        methods: strings(r, "methods", "HTTP methods", |m| {
            check_name(m)
                .map(|_| m.to_ascii_uppercase())
                .map_err(|_| "not a method".into())
        }),
        schedule: read_schedule(r),
        request_headers: read_edits(&r.table("request_headers")),
        response_headers: read_edits(&r.table("response_headers")),
        anonymous: r.bool("anonymous", false),
        name,
        action,
    };
    Some(spec)
}

fn read_schedule(r: &Section<'_>) -> Option<Schedule> {
    let windows = r
        .parse("time", "\"HH:MM-HH:MM\" or a list of them", |v| {
            match v.as_array() {
                Some(arr) => arr
                    .iter()
                    .map(|w| TimeWindow::parse(w.as_str().ok_or("not a string")?))
                    .collect::<Result<Vec<_>, _>>(),
                None => TimeWindow::parse(v.as_str().ok_or("not a string")?).map(|w| vec![w]),
            }
        })
        .unwrap_or_default();
    let days = r.array("days", "a day (\"mon\") or a range (\"mon-fri\")", |v| {
        Days::parse(v.as_str().ok_or("not a string")?)
    });
    let days = non_empty(r, "days", days);
    if windows.is_empty() && days.is_empty() {
        return None;
    }
    let days = if days.is_empty() {
        Days::ALL
    } else {
        Days(days.iter().fold(0, |a, d| a | d.0))
    };
    Some(Schedule { windows, days })
}

pub(crate) fn read_edits(t: &Section<'_>) -> HeaderEdits {
    let pairs = |key: &str| -> Vec<(String, String)> {
        let sub = t.table(key);
        let mut out = Vec::new();
        for name in sub.keys() {
            if let Err(e) = check_name(&name) {
                sub.error_at(&name, e);
            }
            if let Some(v) = sub.string(&name) {
                match check_value(&v) {
                    Ok(()) => out.push((name, v)),
                    Err(e) => sub.error_at(&name, e),
                }
            }
        }
        sub.finish();
        out
    };
    let edits = HeaderEdits {
        remove: strings(t, "remove", "header names", |n| {
            check_name(n).map(|_| n.to_string())
        }),
        set: pairs("set"),
        add: pairs("add"),
    };
    t.finish();
    edits
}
