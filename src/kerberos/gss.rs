//! The acceptor side of a GSSAPI security context, over the system library (`gssapi`
//! feature), or a stub that refuses every context when Gatehouse is built without it.
//!
//! The calls are synchronous and short (a keytab read, a decryption, a replay-cache write);
//! they run on the connection's task.

/// How one step of context establishment ended.
#[derive(Debug)]
pub enum Step {
    /// Send this token and wait for the client's next one.
    Continue(Vec<u8>),
    /// Established: the client's principal, and a last token for the client (mutual
    /// authentication) when the mechanism produced one.
    Done {
        principal: String,
        token: Option<Vec<u8>>,
    },
}

/// Why a context was not established, or a message not wrapped or unwrapped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct GssError(pub String);

/// Whether this build can accept Kerberos logins.
pub const AVAILABLE: bool = cfg!(feature = "gssapi");

/// What to say when a Kerberos login is configured in a build without it.
pub const MISSING: &str = "this gatehouse was built without the `gssapi` feature (Kerberos \
     logins); install libkrb5-dev and libclang-dev and build with default features";

#[cfg(feature = "gssapi")]
mod imp {
    use super::{GssError, Step};
    use libgssapi::context::{SecurityContext, ServerCtx};
    use libgssapi::credential::{Cred, CredUsage};
    use libgssapi::name::Name;
    use libgssapi::oid::GSS_NT_KRB5_PRINCIPAL;

    fn err(what: &str, e: libgssapi::error::Error) -> GssError {
        GssError(format!("{what}: {e}"))
    }

    /// One context being established, then established.
    pub struct Acceptor {
        ctx: ServerCtx,
    }

    impl Acceptor {
        /// A new context accepting tickets for `service` (`HTTP/localhost`, a principal name
        /// in the keytab), or for any principal in the keytab when `None`.
        pub fn new(service: Option<&str>) -> Result<Acceptor, GssError> {
            let cred = match service {
                Some(s) => {
                    let name = Name::new(s.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL))
                        .map_err(|e| err("service name", e))?;
                    Some(
                        Cred::acquire(Some(&name), None, CredUsage::Accept, None)
                            .map_err(|e| err(&format!("no key for {s} in the keytab"), e))?,
                    )
                }
                None => None,
            };
            Ok(Acceptor {
                ctx: ServerCtx::new(cred),
            })
        }

        /// Feeds the client's token.
        pub fn step(&mut self, token: &[u8]) -> Result<Step, GssError> {
            let out = self
                .ctx
                .step(token, None)
                .map_err(|e| err("security context", e))?;
            let out = out.map(|b| b.to_vec()).filter(|b| !b.is_empty());
            if !self.ctx.is_complete() {
                return Ok(Step::Continue(out.unwrap_or_default()));
            }
            let name = self.ctx.source_name().map_err(|e| err("client name", e))?;
            let shown = name.display_name().map_err(|e| err("client name", e))?;
            let principal = String::from_utf8(shown.to_vec())
                .map_err(|_| GssError("client name is not UTF-8".into()))?;
            Ok(Step::Done {
                principal,
                token: out,
            })
        }

        /// gss_wrap: with `encrypt`, integrity and confidentiality; otherwise integrity.
        pub fn wrap(&mut self, encrypt: bool, msg: &[u8]) -> Result<Vec<u8>, GssError> {
            self.ctx
                .wrap(encrypt, msg)
                .map(|b| b.to_vec())
                .map_err(|e| err("wrap", e))
        }

        /// gss_unwrap: the message, or why its token is bad (tampered, replayed, out of order).
        pub fn unwrap(&mut self, token: &[u8]) -> Result<Vec<u8>, GssError> {
            self.ctx
                .unwrap(token)
                .map(|b| b.to_vec())
                .map_err(|e| err("unwrap", e))
        }
    }
}

#[cfg(not(feature = "gssapi"))]
mod imp {
    use super::{GssError, Step, MISSING};

    /// Without the `gssapi` feature: no context is ever established.
    pub struct Acceptor;

    impl Acceptor {
        pub fn new(_service: Option<&str>) -> Result<Acceptor, GssError> {
            Err(GssError(MISSING.into()))
        }

        pub fn step(&mut self, _token: &[u8]) -> Result<Step, GssError> {
            Err(GssError(MISSING.into()))
        }

        pub fn wrap(&mut self, _encrypt: bool, _msg: &[u8]) -> Result<Vec<u8>, GssError> {
            Err(GssError(MISSING.into()))
        }

        pub fn unwrap(&mut self, _token: &[u8]) -> Result<Vec<u8>, GssError> {
            Err(GssError(MISSING.into()))
        }
    }
}

pub use imp::Acceptor;
