//! Every start-up check short of binding, in one place: `gatehouse check`, the start and a
//! reload all run [`prepare`], so a file `check` calls ok is one that starts.
//!
//! Each problem is a [`ConfigError`] with the key path and line of the setting at fault, like
//! the config reader's own: files that cannot be read or parsed (users file, deny page, TLS
//! certificate and key, admin token file), an access log that cannot be opened, and a listener
//! the open-proxy guard refuses.

use std::path::Path;

use crate::config::{AdminToken, Config, ConfigError, ListenerKind, LogTarget, Password};
use crate::policy::users::{Users, UsersError};
use crate::policy::{Policy, PolicyError};

/// What the checks produced that the start goes on to use.
#[derive(Debug)]
pub struct Prepared {
    pub policy: Policy,
    /// The admin bearer token, read from the config or its file.
    pub admin_token: Option<Password>,
    /// Not fatal, but worth saying (e.g. a world-readable token file).
    pub warnings: Vec<ConfigError>,
}

/// A users file others can read leaks password hashes to every local account.
pub fn users_file_warning(config: &Config) -> Option<String> {
    let path = config.policy.users_file.as_deref()?;
    crate::policy::passwd::readable_by_others(path)
}

/// Runs every start-up check and reports every problem found.
pub fn prepare(config: &Config) -> Result<Prepared, Vec<ConfigError>> {
    let lines = &config.lines;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let pc = &config.policy;
    let users = match &pc.users_file {
        Some(path) => match Users::load(path, pc.auth_cache) {
            Ok(u) => Some(u),
            Err(e) => {
                let msg = match e {
                    UsersError::Io { source, .. } => {
                        format!("cannot read {}: {source}", path.display())
                    }
                    other => other.to_string(),
                };
                errors.push(lines.error("policy.users_file", msg));
                None
            }
        },
        None => None,
    };
    let own = crate::server::own_addresses(config);
    let policy = match Policy::compile_with_users(pc, own, users) {
        Ok(p) => Some(p),
        Err(e) => {
            let path = match &e {
                PolicyError::DenyPage { .. } => "policy.deny_page",
                PolicyError::Users(_) => "policy.users_file",
                PolicyError::Regex(_) => "policy.rules",
                PolicyError::Ldap(_) => "policy.ldap",
            };
            errors.push(lines.error(path, e.to_string()));
            None
        }
    };
    for (i, l) in config.listeners.iter().enumerate() {
        // A balancing listener's (and a reverse proxy's) destinations are its pools: it cannot
        // be an open proxy.
        // Nor can a tunnel listener (agents only) or a published port (one service).
        let balancer = matches!(
            l.kind,
            ListenerKind::Tcp(_)
                | ListenerKind::Udp(_)
                | ListenerKind::Reverse(_)
                | ListenerKind::Tunnel(_)
                | ListenerKind::Published(_)
        );
        for (key, e) in crate::tunnel::check_listener(l) {
            errors.push(lines.error(&format!("listeners[{i}].{key}"), format!("{e:#}")));
        }
        if let Some(p) = policy.as_ref().filter(|_| !balancer) {
            if let Err(e) = p.open_proxy_check(&l.name, l.listen.ip()) {
                errors.push(lines.error(&format!("listeners[{i}].listen"), e.to_string()));
            }
        }
        let tls = match &l.kind {
            ListenerKind::Socks(s) => s.tls.as_ref(),
            ListenerKind::Tcp(t) => t.tls.as_ref(),
            ListenerKind::Reverse(r) => r.tls.as_ref(),
            _ => None,
        };
        // With termination, a tcp listener's SNI routes match the handshake's name: a route
        // name no certificate lists is worth a warning.
        let routed: Vec<String> = match &l.kind {
            ListenerKind::Tcp(t) => t.sni.iter().flat_map(|r| r.names.clone()).collect(),
            // A reverse listener's virtual hosts are reached by these names.
            ListenerKind::Reverse(r) => r
                .hosts
                .iter()
                .flat_map(|h| &h.names)
                .map(|n| match n {
                    crate::config::HostName::Exact(e) => e.clone(),
                    crate::config::HostName::Suffix(s) => format!("*.{s}"),
                })
                .collect(),
            _ => Vec::new(),
        };
        match tls.map(|t| (t, crate::tls::server::check(t, &routed))) {
            Some((t, Err(e))) => {
                let key = e.key(t.listed);
                errors.push(lines.error(&format!("listeners[{i}].tls.{key}"), e.to_string()));
            }
            Some((_, Ok(ws))) => {
                for w in ws {
                    warnings.push(lines.error(&format!("listeners[{i}].tls"), w));
                }
            }
            None => {}
        }
    }
    for (i, p) in config.pools.iter().enumerate() {
        let Some(tls) = &p.tls else { continue };
        if let Err(e) = crate::tls::TlsClient::new(tls) {
            errors.push(lines.error(&format!("pools[{i}].tls.{}", e.key), e.to_string()));
        }
        if !tls.verify {
            warnings.push(lines.error(
                &format!("pools[{i}].tls.verify"),
                format!(
                    "pool {:?}: verify = false: any server certificate is accepted, so anyone \
                     on the path can read and change this traffic",
                    p.name
                ),
            ));
        }
    }
    if let Some(agent) = &config.agent {
        for (key, e) in crate::tunnel::check_agent(agent) {
            errors.push(lines.error(&format!("agent.{key}"), format!("{e:#}")));
        }
    }
    if let LogTarget::File(path) = &config.access_log.target {
        if let Err(e) = access_log_writable(path) {
            errors.push(lines.error(
                "access_log.path",
                format!("cannot open {}: {e}", path.display()),
            ));
        }
    }
    if let Some(w) = users_file_warning(config) {
        warnings.push(lines.error("policy.users_file", w));
    }
    let ldap_password = pc
        .ldap
        .as_ref()
        .and_then(|l| l.bind_password_file.as_deref());
    if let Some(w) = ldap_password.and_then(crate::policy::passwd::readable_by_others) {
        let w = w.replacen("users file", "LDAP password file", 1);
        warnings.push(lines.error("policy.ldap.bind_password_file", w));
    }
    let admin_token = match config.admin.as_ref().and_then(|a| a.token.as_ref()) {
        None => None,
        Some(AdminToken::Inline(t)) => Some(t.clone()),
        Some(AdminToken::File(path)) => match read_token(path) {
            Ok((token, world_readable)) => {
                if world_readable {
                    warnings.push(lines.error(
                        "admin.token_file",
                        format!("{} is readable by every user; chmod o-r it", path.display()),
                    ));
                }
                Some(token)
            }
            Err(e) => {
                errors.push(lines.error("admin.token_file", e));
                None
            }
        },
    };
    match policy {
        Some(policy) if errors.is_empty() => Ok(Prepared {
            policy,
            admin_token,
            warnings,
        }),
        _ => Err(errors),
    }
}

/// Whether the access log can be appended to, without creating it: an existing file must
/// open for appending, a new one needs its directory.
fn access_log_writable(path: &Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if std::fs::metadata(dir)?.is_dir() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// The token is the file's first line; also says whether other users can read the file.
fn read_token(path: &Path) -> Result<(Password, bool), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("{}: empty token", path.display()));
    }
    let world_readable = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o004 != 0)
        .unwrap_or(false);
    Ok((Password::new(token), world_readable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<ConfigError> {
        let config = Config::parse(text).expect("parses");
        prepare(&config).expect_err("start-up problems")
    }

    #[test]
    fn open_proxy_is_reported_at_its_listen_key() {
        let errs = problems(
            "[[listeners]]\nname = \"a\"\nkind = \"http\"\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"b\"\nkind = \"http\"\nlisten = \"192.0.2.1:0\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "listeners[1].listen");
        assert_eq!(errs[0].line, Some(9));
        assert!(errs[0].message.contains("open proxy"), "{errs:?}");
    }

    #[test]
    fn every_file_problem_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let text = format!(
            "[[listeners]]\nname = \"s\"\nkind = \"socks\"\nlisten = \"127.0.0.1:0\"\ntls = {{ cert = \"{d}/c.pem\", key = \"{d}/k.pem\" }}\n\
             [access_log]\npath = \"{d}/nodir/access.log\"\n\
             [policy]\nusers_file = \"{d}/users\"\ndeny_page = \"{d}/deny.html\"\n"
        );
        let errs = problems(&text);
        let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            paths,
            [
                ("policy.users_file", Some(9)),
                ("policy.deny_page", Some(10)),
                ("listeners[0].tls.cert", Some(5)),
                ("access_log.path", Some(7)),
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn a_clean_config_prepares() {
        let p = prepare(&Config::builtin()).expect("the default starts");
        assert!(p.admin_token.is_none() && p.warnings.is_empty());
    }
}
