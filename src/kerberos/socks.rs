//! RFC 1961 section 5: once integrity or confidentiality is chosen, every later byte of the
//! SOCKS connection travels in `[1, 3, len(2), gss_wrap(bytes)]` messages, both ways, and so
//! does every UDP datagram between the client and the proxy (one message per datagram, the
//! token wrapping the SOCKS UDP header and data). [`Sealed`] is that layer's state;
//! [`relay_sealed`] is the relay that unwraps the client's messages to the other side and
//! wraps what comes back (the kernel splice cannot be used).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::gss::{Acceptor, GssError};
use super::{
    decode_datagram, decode_frame, encode_frame, FrameError, Protection, MAX_TOKEN, MTYP_DATA,
};
use crate::relay::{RelayEnd, RelayStats};

/// Plain bytes per wrapped message from the server: with the wrap overhead (a few dozen
/// bytes) well inside the two-octet length.
pub const CHUNK: usize = 16 * 1024;

/// The largest UDP payload (over IPv4): a wrapped datagram for the client must fit it.
pub const MAX_DATAGRAM: usize = 65_507;

/// An established, protected session: the context and the client's bytes not yet unwrapped.
pub struct Sealed {
    pub ctx: Acceptor,
    pub level: Protection,
    /// Raw bytes from the client: the start of the next message(s).
    pub raw: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Gss(#[from] GssError),
    #[error("the message does not fit an RFC 1961 token or a datagram")]
    TooLarge,
    #[error("a message below the negotiated protection (not encrypted)")]
    Unprotected,
}

impl Sealed {
    /// `plain` as one or more data messages, appended to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SealedError> {
        let encrypt = self.level == Protection::Confidentiality;
        for chunk in plain.chunks(CHUNK) {
            let token = self.ctx.wrap(encrypt, chunk)?;
            encode_frame(MTYP_DATA, &token, out).ok_or(SealedError::TooLarge)?;
        }
        Ok(())
    }

    /// The next whole message in `raw`, unwrapped, or `None` until more bytes come.
    pub fn open_next(&mut self) -> Result<Option<Vec<u8>>, SealedError> {
        match decode_frame(&self.raw, MTYP_DATA, MAX_TOKEN) {
            Ok((frame, used)) => {
                self.raw.advance(used);
                Ok(Some(self.open_token(&frame.token)?))
            }
            Err(FrameError::Incomplete) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A datagram from the client, unwrapped: the SOCKS UDP request header and its data. An
    /// error means the datagram is dropped; the association goes on.
    pub fn open_datagram(&mut self, datagram: &[u8]) -> Result<Vec<u8>, SealedError> {
        self.open_token(decode_datagram(datagram)?)
    }

    /// `plain` (a SOCKS UDP header and data) as one datagram for the client, in `out`.
    pub fn seal_datagram(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SealedError> {
        let encrypt = self.level == Protection::Confidentiality;
        let token = self.ctx.wrap(encrypt, plain)?;
        if 4 + token.len() > MAX_DATAGRAM {
            return Err(SealedError::TooLarge);
        }
        encode_frame(MTYP_DATA, &token, out).ok_or(SealedError::TooLarge)
    }

    /// One token from the client: refused below the negotiated level, else unwrapped (which
    /// checks its integrity and, as the client's context flags asked, its sequence).
    fn open_token(&mut self, token: &[u8]) -> Result<Vec<u8>, SealedError> {
        if !self.level.admits(token) {
            return Err(SealedError::Unprotected);
        }
        Ok(self.ctx.unwrap(token)?)
    }
}

/// Reads from `r` until one message is whole, and returns it unwrapped; `None` at a clean EOF
/// (between messages). A message cut short by EOF is an error.
pub async fn read_open<R: AsyncRead + Unpin>(
    sealed: &mut Sealed,
    r: &mut R,
    count: &mut u64,
) -> Result<Option<Vec<u8>>, SealedError> {
    loop {
        if let Some(plain) = sealed.open_next()? {
            return Ok(Some(plain));
        }
        let mut tmp = [0u8; 8192];
        let n = r
            .read(&mut tmp)
            .await
            .map_err(|e| SealedError::Gss(GssError(e.to_string())))?;
        if n == 0 {
            return match sealed.raw.is_empty() {
                true => Ok(None),
                false => Err(FrameError::Incomplete.into()),
            };
        }
        *count += n as u64;
        sealed.raw.extend_from_slice(&tmp[..n]);
    }
}

/// The relay of a protected session: the client's messages unwrapped to `other`, `other`'s
/// bytes wrapped to the client, half-close passed on, ended by `idle` without traffic either
/// way. `a_to_b` counts plain bytes from the client, `b_to_a` plain bytes to it.
pub async fn relay_sealed<C, O>(
    client: &mut C,
    other: &mut O,
    sealed: &mut Sealed,
    idle: Duration,
) -> (RelayEnd, RelayStats)
where
    C: AsyncRead + AsyncWrite + Unpin,
    O: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut or, mut ow) = tokio::io::split(other);
    // Milliseconds since `base` of the last traffic either way; byte counts.
    let base = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(base.elapsed().as_millis() as u64, Relaxed);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    // One context for both directions: the calls are short and never held across an await.
    let ctx = std::sync::Mutex::new(sealed);
    let c2o = async {
        let mut wire = 0u64;
        loop {
            let next = {
                // Unwrap what is buffered first; read only when no whole message is there.
                let buffered = match ctx.lock() {
                    Ok(mut s) => s.open_next(),
                    Err(_) => return Err(std::io::Error::other("poisoned")),
                };
                match buffered {
                    Ok(Some(p)) => Some(p),
                    Ok(None) => None,
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            };
            let plain = match next {
                Some(p) => p,
                None => {
                    let mut tmp = [0u8; 8192];
                    let n = cr.read(&mut tmp).await?;
                    touch();
                    if n == 0 {
                        let pending = ctx.lock().map(|s| s.raw.is_empty()).unwrap_or(false);
                        if !pending {
                            return Err(std::io::Error::other("message cut short"));
                        }
                        ow.shutdown().await?;
                        return Ok(wire);
                    }
                    wire += n as u64;
                    if let Ok(mut s) = ctx.lock() {
                        s.raw.extend_from_slice(&tmp[..n]);
                    }
                    continue;
                }
            };
            ow.write_all(&plain).await?;
            up.fetch_add(plain.len() as u64, Relaxed);
            touch();
        }
    };
    let o2c = async {
        let mut tmp = vec![0u8; CHUNK];
        loop {
            let n = or.read(&mut tmp).await?;
            touch();
            if n == 0 {
                cw.shutdown().await?;
                return Ok::<(), std::io::Error>(());
            }
            let mut out = Vec::with_capacity(n + 128);
            let sealed = match ctx.lock() {
                Ok(mut s) => s.seal(&tmp[..n], &mut out),
                Err(_) => return Err(std::io::Error::other("poisoned")),
            };
            sealed.map_err(|e| std::io::Error::other(e.to_string()))?;
            cw.write_all(&out).await?;
            down.fetch_add(n as u64, Relaxed);
            touch();
        }
    };
    let watch = async {
        loop {
            let due = base + Duration::from_millis(last.load(Relaxed)) + idle;
            tokio::time::sleep_until(due).await;
            if base + Duration::from_millis(last.load(Relaxed)) + idle <= Instant::now() {
                return;
            }
        }
    };
    let end = tokio::select! {
        r = async { tokio::try_join!(c2o, o2c) } => match r {
            Ok(_) => RelayEnd::Done,
            Err(e) => RelayEnd::Error(e),
        },
        _ = watch => RelayEnd::Idle,
    };
    let stats = RelayStats {
        a_to_b: up.load(Relaxed),
        b_to_a: down.load(Relaxed),
    };
    (end, stats)
}
