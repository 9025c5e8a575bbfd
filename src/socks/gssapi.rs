//! SOCKS5 method 0x01, GSSAPI (RFC 1961): context establishment, then the protection
//! negotiation. The messages are [`crate::kerberos`]'s pure codec; the context is
//! [`crate::kerberos::gss::Acceptor`]. With integrity or confidentiality chosen, the client
//! gets a [`Sealed`] layer and every later byte (the request, the reply, the relay) is wrapped.
//!
//! A failure at any step is answered with `[1, 0xff]` and the connection closed
//! ([`Stage::Gssapi`]). Failed logins count in the failed-login limiter like wrong passwords.

use std::net::IpAddr;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{Client, Stage};
use super::reply::SocksError;
use super::server::{Session, SocksServer};
use crate::kerberos::gss::{Acceptor, Step};
use crate::kerberos::socks::Sealed;
use crate::kerberos::{
    decode_frame, encode_frame, map_principal, Frame, FrameError, Protection, MAX_TOKEN, MTYP_AUTH,
    MTYP_PROTECTION,
};
use crate::policy::ldap::DirectoryError;
use crate::policy::login::LoginRefusal;
use crate::policy::{Identity, Policy};

/// Most context-establishment round trips (Kerberos needs one).
const MAX_LEGS: usize = 4;

impl SocksServer {
    /// Runs RFC 1961 after the method choice: the client's identity, with `c.sealed` set when
    /// the session is protected.
    pub(super) async fn gssapi_login<S>(
        &self,
        policy: &Policy,
        c: &mut Client<S>,
        s: &mut Session,
    ) -> Result<Identity, SocksError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        c.stage = Stage::Gssapi;
        let client = c.peer.ip().to_canonical();
        let logins = &self.svc.logins;
        // A blocked address is refused before any ticket is looked at.
        if let Err(retry) = logins.limiter.reserve(client) {
            tracing::info!(%client, ?retry, "SOCKS GSSAPI login refused: blocked");
            return Err(SocksError::LoginBlocked);
        }
        logins.limiter.give_back(client);
        let lp = policy.listener(&self.name);
        let outcome = self.establish(c, lp.kerberos_service.as_deref()).await;
        let (ctx, principal) = match outcome {
            Ok(done) => done,
            Err(e @ (SocksError::Truncated | SocksError::Io(_))) => return Err(e),
            Err(e) => {
                let _ = charge(logins, client, None);
                tracing::info!(%client, error = %e, "SOCKS GSSAPI login refused");
                return Err(e);
            }
        };
        let name = map_principal(&principal, &policy.kerberos().names);
        s.login = Some(principal.clone());
        let Some(name) = name else {
            let _ = charge(logins, client, None);
            return Err(SocksError::Gssapi(format!(
                "principal {principal:?} is not a user name"
            )));
        };
        let identity = match Box::pin(policy.kerberos_identity(name)).await {
            Ok(id) => id,
            Err(e) => {
                // Not charged: the ticket was good. Never let in without the groups.
                tracing::info!(%client, %principal, error = %e, "SOCKS GSSAPI login refused");
                return Err(match e {
                    DirectoryError::Busy => SocksError::LoginBusy,
                    DirectoryError::Unavailable(_) => SocksError::LoginUnavailable,
                });
            }
        };
        charge(logins, client, Some(identity.clone()))?;
        self.protection(c, ctx, lp.gssapi_protection).await?;
        tracing::debug!(%client, %principal, user = %identity.name, "SOCKS GSSAPI login");
        Ok(identity)
    }

    /// Context establishment: the context and the client's principal.
    async fn establish<S>(
        &self,
        c: &mut Client<S>,
        service: Option<&str>,
    ) -> Result<(Acceptor, String), SocksError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut ctx = Acceptor::new(service).map_err(|e| SocksError::Gssapi(e.0))?;
        for _ in 0..MAX_LEGS {
            let frame = read_frame(c, MTYP_AUTH).await?;
            match ctx
                .step(&frame.token)
                .map_err(|e| SocksError::Gssapi(e.0))?
            {
                Step::Continue(token) => send_frame(c, MTYP_AUTH, &token).await?,
                Step::Done { principal, token } => {
                    if let Some(t) = token {
                        send_frame(c, MTYP_AUTH, &t).await?;
                    }
                    return Ok((ctx, principal));
                }
            }
        }
        Err(SocksError::Gssapi("too many context tokens".into()))
    }

    /// RFC 1961 section 4: the client's wrapped level, the server's wrapped choice.
    async fn protection<S>(
        &self,
        c: &mut Client<S>,
        mut ctx: Acceptor,
        minimum: Protection,
    ) -> Result<(), SocksError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = read_frame(c, MTYP_PROTECTION).await?;
        let asked = ctx
            .unwrap(&frame.token)
            .map_err(|e| SocksError::Gssapi(e.0))?;
        let [level] = asked.as_slice() else {
            return Err(SocksError::Gssapi(format!(
                "protection message of {} bytes, not 1",
                asked.len()
            )));
        };
        let chosen = Protection::choose(*level, minimum)
            .ok_or_else(|| SocksError::Gssapi(format!("unknown protection level {level}")))?;
        let token = ctx
            .wrap(false, &[chosen as u8])
            .map_err(|e| SocksError::Gssapi(e.0))?;
        send_frame(c, MTYP_PROTECTION, &token).await?;
        if chosen.wraps() {
            // Bytes already read are the start of the wrapped stream.
            let raw = std::mem::take(&mut c.buf);
            c.sealed = Some(Box::new(Sealed {
                ctx,
                level: chosen,
                raw,
            }));
        }
        c.stage = Stage::Request;
        Ok(())
    }
}

/// Settles a login in the limiter: `None` is charged as a failure.
fn charge(
    logins: &crate::policy::login::Logins,
    client: IpAddr,
    found: Option<Identity>,
) -> Result<Identity, SocksError> {
    logins
        .log_in_checked(client, || found)
        .map_err(|refused| match refused {
            LoginRefusal::Blocked(_) => SocksError::LoginBlocked,
            LoginRefusal::Overloaded => SocksError::LoginBusy,
            LoginRefusal::BadCredentials => SocksError::AuthFailed,
            LoginRefusal::Unavailable => SocksError::LoginUnavailable,
        })
}

async fn read_frame<S>(c: &mut Client<S>, mtyp: u8) -> Result<Frame, SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match decode_frame(&c.buf, mtyp, MAX_TOKEN) {
            Ok((frame, used)) => {
                c.buf.advance(used);
                return Ok(frame);
            }
            Err(FrameError::Incomplete) => {
                if c.read_some(super::codec::MAX_MESSAGE).await? == 0 {
                    return Err(SocksError::Truncated);
                }
            }
            Err(e) => return Err(SocksError::Gssapi(e.to_string())),
        }
    }
}

async fn send_frame<S>(c: &mut Client<S>, mtyp: u8, token: &[u8]) -> Result<(), SocksError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(4 + token.len());
    encode_frame(mtyp, token, &mut out)
        .ok_or_else(|| SocksError::Gssapi("token too long".into()))?;
    c.send(&out).await?;
    Ok(())
}
