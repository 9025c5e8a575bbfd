//! The policy at the HTTP door: proxy authentication (407 + Basic, RFC 9110 section 11.7),
//! the rule verdict for the request's destination, and the deny page. The rules themselves
//! are in `crate::policy`; this module asks them and answers the client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;

use super::codec::{self, Headers, RequestHead};
use super::error::ProxyError;
use super::proxy::{wants_keep_alive, Client, Exchange, HttpProxy};
use crate::connector::Host;
use crate::policy::ldap::DirectoryError;
use crate::policy::login::LoginRefusal;
use crate::policy::{
    headers::render_deny_page, AccessRequest, Action, Identity, Policy, Precheck, Protocol, Secret,
    Verdict,
};

/// Where the policy lets a request go.
pub(super) enum Access {
    /// Connect directly, only to these (checked) addresses.
    Direct {
        addrs: Vec<SocketAddr>,
        verdict: Verdict,
    },
    /// Through these parents, in failover order (`"direct"` means no parent).
    Route {
        parents: Arc<[String]>,
        verdict: Verdict,
    },
    /// The client has been answered (407, 403, 429, DNS error); whether to keep the connection.
    Answered(bool),
}

/// `Proxy-Authorization: Basic <base64(user:password)>`.
fn basic_credentials(h: &Headers) -> Option<(String, Secret)> {
    let v = h.get_str("proxy-authorization")?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), Secret::new(pass)))
}

impl HttpProxy {
    /// Authenticates the client if its listener asks for it, then evaluates the rules for
    /// `host:port` (resolving the name when an address condition or the guard needs it).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn authorize(
        &self,
        policy: &Policy,
        client: &mut Client,
        head: &RequestHead,
        host: &Host,
        port: u16,
        protocol: Protocol,
        close_on_error: bool,
        ex: &mut Exchange,
    ) -> Access {
        let ip = client.peer.ip().to_canonical();
        let identity = match self
            .authenticate(policy, client, head, ip, close_on_error, ex)
            .await
        {
            Ok(id) => id,
            Err(keep) => return Access::Answered(keep),
        };
        ex.user = identity.as_ref().map(|i| i.name.clone());
        // A loop is answered after the login, like every local answer on such a listener.
        if let Some(name) = self.cfg.via.as_deref() {
            if super::loop_check::via_names(&head.headers, name) {
                let detail = format!("the request already passed through {name} (Via)");
                let err = ProxyError::new(508, "proxy_loop_detected", detail);
                self.send_error(client, &err, close_on_error, ex).await;
                return Access::Answered(!close_on_error);
            }
        }
        let req = AccessRequest {
            listener: &self.name,
            client: ip,
            user: identity.as_ref(),
            dest_host: Some(host),
            dest_port: port,
            protocol,
            method: Some(&head.method),
            at: SystemTime::now(),
        };
        let (verdict, addrs) = match policy.precheck(&req) {
            // An allow for a name always carries checked addresses: resolve and decide.
            Precheck::Decided(v)
                if !(v.action == Action::Allow && matches!(host, Host::Name(_))) =>
            {
                let addrs = match host {
                    Host::Ip(ip) => vec![*ip],
                    Host::Name(_) => Vec::new(),
                };
                (v, addrs)
            }
            Precheck::Decided(_) | Precheck::Resolve => {
                match self.svc.connector.resolve(host).await {
                    Ok(addrs) => (policy.decide(&req, &addrs), addrs),
                    Err(e) => {
                        self.send_error(client, &ProxyError::from(e), close_on_error, ex)
                            .await;
                        return Access::Answered(!close_on_error);
                    }
                }
            }
        };
        ex.rule = Some(verdict.rule.clone());
        if verdict.action != Action::Deny {
            // A logged-in user's requests and tunnels in flight count against its limit.
            let user_slot = match &identity {
                Some(id) => self.svc.limits.user_connection(&id.name).map(Some),
                None => Ok(None),
            };
            let checked = user_slot.and_then(|slot| {
                ex.user_slot = slot;
                self.svc.limits.request(ip, ex.user.as_deref())
            });
            if let Err(e) = checked {
                let keep = self
                    .send_429(client, head, &e.to_string(), 1, close_on_error, ex)
                    .await;
                return Access::Answered(keep);
            }
        }
        match verdict.action.clone() {
            Action::Deny => {
                self.svc.metrics.denial(&verdict.rule);
                let keep = self
                    .send_denied(policy, client, head, &verdict, close_on_error, ex)
                    .await;
                Access::Answered(keep)
            }
            Action::Route(parents) => Access::Route { parents, verdict },
            Action::Allow => {
                let addrs = crate::connector::interleave(addrs)
                    .into_iter()
                    .map(|a| SocketAddr::new(a, port))
                    .collect();
                Access::Direct { addrs, verdict }
            }
        }
    }

    /// `Ok(identity)` when the client may go on (`None`: no login asked for); `Err(keep)`
    /// when it has been answered with 407 or 429.
    pub(super) async fn authenticate(
        &self,
        policy: &Policy,
        client: &mut Client,
        head: &RequestHead,
        ip: IpAddr,
        close_on_error: bool,
        ex: &mut Exchange,
    ) -> Result<Option<Identity>, bool> {
        let lp = policy.listener(&self.name);
        if !lp.auth {
            return Ok(None);
        }
        // Negotiate authenticates the connection (RFC 4559 section 4.4; what browsers and
        // curl expect): its later requests need no header.
        if let Some(id) = &client.login {
            return Ok(Some(id.clone()));
        }
        if lp.methods.kerberos {
            let token = head
                .headers
                .get_str("proxy-authorization")
                .and_then(|v| crate::kerberos::negotiate_token(v, crate::kerberos::MAX_TOKEN));
            if let Some(token) = token {
                // Boxed: a Negotiate leg (with its directory lookup) is rare on a connection;
                // an idle tunnel's task does not carry its state.
                let leg = self.negotiate(policy, client, head, ip, &token, close_on_error, ex);
                return Box::pin(leg).await;
            }
        }
        let basic = match lp.methods.password {
            true => basic_credentials(&head.headers),
            false => None,
        };
        let Some((user, password)) = basic else {
            client.negotiating = None;
            return Err(self
                .send_407(policy, client, head, None, close_on_error, ex)
                .await);
        };
        let users = policy.user_source();
        match self.svc.logins.log_in(ip, users, &user, &password).await {
            Ok(id) => Ok(Some(id)),
            Err(refused @ (LoginRefusal::Blocked(_) | LoginRefusal::Overloaded)) => {
                let (detail, secs) = match refused {
                    LoginRefusal::Blocked(retry) => (
                        "too many failed logins from this address",
                        retry.as_secs().max(1),
                    ),
                    _ => ("too many logins being checked; retry shortly", 1),
                };
                ex.user = Some(user);
                Err(self
                    .send_429(client, head, detail, secs, close_on_error, ex)
                    .await)
            }
            Err(LoginRefusal::Unavailable) => {
                // Never an open door: the login is refused, the client told why.
                tracing::info!(client = %client.peer, user = ?user, "login refused: the user directory is unavailable");
                ex.user = Some(user);
                let err = ProxyError::new(
                    503,
                    "proxy_internal_error",
                    "the user directory is unavailable; retry later",
                );
                Err(self.send_503(client, head, &err, close_on_error, ex).await)
            }
            Err(LoginRefusal::BadCredentials) => {
                tracing::info!(client = %client.peer, user = ?user, "proxy authentication failed");
                ex.user = Some(user);
                Err(self
                    .send_407(policy, client, head, None, close_on_error, ex)
                    .await)
            }
        }
    }

    /// One leg of a Negotiate (SPNEGO) exchange: the identity when the context is complete
    /// (the connection is then logged in), else a 407 carrying the next token, or a clean 407
    /// (charged in the failed-login limiter) when the token is refused.
    #[allow(clippy::too_many_arguments)]
    async fn negotiate(
        &self,
        policy: &Policy,
        client: &mut Client,
        head: &RequestHead,
        ip: IpAddr,
        token: &[u8],
        close_on_error: bool,
        ex: &mut Exchange,
    ) -> Result<Option<Identity>, bool> {
        let logins = &self.svc.logins;
        // A blocked address is refused before its ticket is looked at.
        if let Err(retry) = logins.limiter.reserve(ip) {
            let secs = retry.as_secs().max(1);
            let detail = "too many failed logins from this address";
            return Err(self
                .send_429(client, head, detail, secs, close_on_error, ex)
                .await);
        }
        logins.limiter.give_back(ip);
        let lp = policy.listener(&self.name);
        let ctx = match client.negotiating.take() {
            Some(ctx) => Ok(ctx),
            None => {
                crate::kerberos::gss::Acceptor::new(lp.kerberos_service.as_deref()).map(Box::new)
            }
        };
        let step = ctx.and_then(|mut ctx| ctx.step(token).map(|s| (ctx, s)));
        let refused = match step {
            Ok((ctx, crate::kerberos::gss::Step::Continue(out))) => {
                client.negotiating = Some(ctx);
                let next = crate::kerberos::negotiate_header(Some(&out));
                return Err(self
                    .send_407(policy, client, head, Some(next), close_on_error, ex)
                    .await);
            }
            Ok((_, crate::kerberos::gss::Step::Done { principal, token })) => {
                match crate::kerberos::map_principal(&principal, &policy.kerberos().names) {
                    Some(name) => {
                        let id = match policy.kerberos_identity(name.clone()).await {
                            Ok(id) => id,
                            Err(e) => {
                                // Not charged: the ticket was good. Never let in without
                                // the groups the rules may deny by.
                                tracing::info!(client = %client.peer, %principal, error = %e, "Negotiate login refused");
                                ex.user = Some(name);
                                return Err(self
                                    .directory_refused(client, head, &e, close_on_error, ex)
                                    .await);
                            }
                        };
                        if let Ok(id) = logins.log_in_checked(ip, || Some(id)) {
                            tracing::debug!(client = %client.peer, %principal, user = %id.name, "Negotiate login");
                            ex.auth_reply =
                                token.map(|t| crate::kerberos::negotiate_header(Some(&t)));
                            client.login = Some(id.clone());
                            return Ok(Some(id));
                        }
                        format!("principal {principal:?}: login refused")
                    }
                    None => format!("principal {principal:?} is not a user name"),
                }
            }
            Err(e) => e.0,
        };
        let _ = logins.log_in_checked(ip, || None);
        tracing::info!(client = %client.peer, error = %refused, "Negotiate authentication failed");
        Err(self
            .send_407(policy, client, head, None, close_on_error, ex)
            .await)
    }

    /// A Kerberos login the directory could not give groups for: 429 when too many logins
    /// wait for it, else 503 (never let in without the groups).
    async fn directory_refused(
        &self,
        client: &mut Client,
        head: &RequestHead,
        e: &DirectoryError,
        close_on_error: bool,
        ex: &mut Exchange,
    ) -> bool {
        match e {
            DirectoryError::Busy => {
                let detail = "too many logins being checked; retry shortly";
                self.send_429(client, head, detail, 1, close_on_error, ex)
                    .await
            }
            DirectoryError::Unavailable(_) => {
                let err = ProxyError::new(
                    503,
                    "proxy_internal_error",
                    "the user directory is unavailable; retry later",
                );
                self.send_503(client, head, &err, close_on_error, ex).await
            }
        }
    }

    /// 429 with Retry-After and Proxy-Status (a limit or the failed-login limiter).
    pub(super) async fn send_429(
        &self,
        client: &mut Client,
        head: &RequestHead,
        detail: &str,
        retry_secs: u64,
        close: bool,
        ex: &mut Exchange,
    ) -> bool {
        let err = ProxyError::new(429, "http_request_denied", detail);
        let mut h = Headers::default();
        h.push("Retry-After", retry_secs.to_string());
        h.push("Proxy-Status", err.proxy_status(self.proxy_name()));
        ex.error = Some(err.kind);
        let body = format!("429 Too Many Requests\n{detail}\n");
        let ctype = "text/plain; charset=utf-8";
        self.send_local(
            client,
            head,
            429,
            "Too Many Requests",
            h,
            ctype,
            &body,
            close,
            ex,
        )
        .await
    }

    /// 503 with Proxy-Status and Retry-After (the user directory did not answer).
    async fn send_503(
        &self,
        client: &mut Client,
        head: &RequestHead,
        err: &ProxyError,
        close: bool,
        ex: &mut Exchange,
    ) -> bool {
        let mut h = Headers::default();
        h.push("Retry-After", "5");
        h.push("Proxy-Status", err.proxy_status(self.proxy_name()));
        ex.error = Some(err.kind);
        let body = format!("503 Service Unavailable\n{}\n", err.detail);
        let ctype = "text/plain; charset=utf-8";
        self.send_local(
            client,
            head,
            503,
            "Service Unavailable",
            h,
            ctype,
            &body,
            close,
            ex,
        )
        .await
    }

    /// 407 offering the listener's login methods; `negotiate`: a Negotiate exchange's next
    /// token instead of the bare offer.
    async fn send_407(
        &self,
        policy: &Policy,
        client: &mut Client,
        head: &RequestHead,
        negotiate: Option<String>,
        close: bool,
        ex: &mut Exchange,
    ) -> bool {
        let body = "407 Proxy Authentication Required\n";
        let mut h = Headers::default();
        let m = policy.listener(&self.name).methods;
        let basic = format!("Basic realm=\"{}\", charset=\"UTF-8\"", policy.realm());
        let offers = match negotiate {
            Some(next) => vec![next],
            None => crate::kerberos::offers(m.kerberos, m.password, m.kerberos_first, &basic),
        };
        for v in offers {
            h.push("Proxy-Authenticate", v);
        }
        self.send_local(
            client,
            head,
            407,
            "Proxy Authentication Required",
            h,
            "text/plain; charset=utf-8",
            body,
            close,
            ex,
        )
        .await
    }

    async fn send_denied(
        &self,
        policy: &Policy,
        client: &mut Client,
        head: &RequestHead,
        v: &Verdict,
        close: bool,
        ex: &mut Exchange,
    ) -> bool {
        let page = render_deny_page(policy.deny_page(), &v.rule, &ex.target);
        let mut h = Headers::default();
        let detail = match &v.refusal {
            Some(r) => format!("refused by rule {}: {r}", v.rule),
            None => format!("denied by rule {}", v.rule),
        };
        let err = ProxyError::denied(detail);
        h.push("Proxy-Status", err.proxy_status(self.proxy_name()));
        ex.error = Some(err.kind);
        self.send_local(
            client,
            head,
            403,
            "Forbidden",
            h,
            "text/html; charset=utf-8",
            &page,
            close,
            ex,
        )
        .await
    }

    /// A response generated here, with a body; returns whether the connection stays open.
    #[allow(clippy::too_many_arguments)]
    async fn send_local(
        &self,
        client: &mut Client,
        head: &RequestHead,
        status: u16,
        reason: &str,
        mut h: Headers,
        ctype: &str,
        body: &str,
        close: bool,
        ex: &mut Exchange,
    ) -> bool {
        let keep = !close
            && wants_keep_alive(head)
            && client.body_drainable()
            && !self.svc.shutdown.is_draining();
        h.push("Content-Type", ctype);
        h.push("Content-Length", body.len().to_string());
        if !keep {
            h.push("Connection", "close");
        }
        let mut out = Vec::with_capacity(256 + body.len());
        codec::write_response_head(&mut out, status, reason, &h);
        out.extend_from_slice(body.as_bytes());
        ex.status = status;
        ex.bytes_out += out.len() as u64;
        super::body::write_all(&mut client.stream, &out, self.cfg.read_timeout)
            .await
            .is_ok()
            && keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse() {
        let mut h = Headers::default();
        h.push(
            "Proxy-Authorization",
            "Basic YWxpY2U6czNjcjN0OndpdGg6Y29sb25z",
        );
        let (u, p) = basic_credentials(&h).expect("parsed");
        assert_eq!((u.as_str(), p.expose()), ("alice", "s3cr3t:with:colons"));
        let mut h = Headers::default();
        h.push("Proxy-Authorization", "Bearer abc");
        assert!(basic_credentials(&h).is_none());
        let mut h = Headers::default();
        h.push("Proxy-Authorization", "Basic !!!notbase64");
        assert!(basic_credentials(&h).is_none());
    }
}
