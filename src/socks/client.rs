//! The client side of one SOCKS session: its stream, the bytes read but not yet decoded, where
//! the handshake is (so a failure gets the answer that fits the moment), and byte counts.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, DecodeError, Decoded, Malformed, MAX_MESSAGE};
use super::reply::{Reply, SocksError};
use crate::kerberos::socks::{read_open, Sealed};

/// The plain TCP socket under a client stream, when there is one: the relay splices between
/// two plain sockets and copies otherwise (TLS must see the bytes).
pub trait PlainTcp {
    fn plain_tcp(&self) -> Option<&TcpStream>;
}

impl PlainTcp for TcpStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl PlainTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V4,
    V5,
}

/// Where the handshake is, which decides how a failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Nothing to answer with: version unknown, or the answer was already sent.
    Silent,
    /// SOCKS5 greeting: a failure is answered with method 0xFF.
    Greeting,
    /// RFC 1929 sub-negotiation: a failure is answered with status 1.
    Auth,
    /// A request was (being) read: a failure is answered with a reply code.
    Request,
    /// RFC 1961 context or protection negotiation: a failure is answered with `[1, 0xff]`.
    Gssapi,
}

pub struct Client<S> {
    pub stream: S,
    pub buf: BytesMut,
    pub peer: SocketAddr,
    /// The listener address the client reached (BIND and UDP relays open beside it).
    pub local: SocketAddr,
    pub version: Option<Version>,
    pub stage: Stage,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// RFC 1961 integrity or confidentiality: every later byte is wrapped both ways.
    pub sealed: Option<Box<Sealed>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S, peer: SocketAddr, local: SocketAddr) -> Self {
        Client {
            stream,
            buf: BytesMut::new(),
            peer,
            local,
            version: None,
            stage: Stage::Silent,
            bytes_in: 0,
            bytes_out: 0,
            sealed: None,
        }
    }

    /// Reads until `decode` yields a message, rejects the bytes, or the client closes.
    pub async fn read_msg<T>(&mut self, decode: fn(&[u8]) -> Decoded<T>) -> Result<T, SocksError> {
        loop {
            match decode(&self.buf) {
                Ok((msg, used)) => {
                    self.buf.advance(used);
                    return Ok(msg);
                }
                Err(DecodeError::Invalid(m)) => return Err(m.into()),
                Err(DecodeError::Incomplete) if self.buf.len() >= MAX_MESSAGE => {
                    // The codec bounds every message below this; reaching it is a codec bug.
                    return Err(Malformed::FieldTooLong.into());
                }
                Err(DecodeError::Incomplete) => {
                    if self.read_some(MAX_MESSAGE - self.buf.len()).await? == 0 {
                        return Err(SocksError::Truncated);
                    }
                }
            }
        }
    }

    /// The first byte, without consuming it.
    pub async fn first_byte(&mut self) -> Result<u8, SocksError> {
        while self.buf.is_empty() {
            if self.read_some(MAX_MESSAGE).await? == 0 {
                return Err(SocksError::Truncated);
            }
        }
        Ok(self.buf[0])
    }

    /// One read of at most `limit` more bytes into the buffer; 0 at EOF. On a protected
    /// session: the next whole message, unwrapped (however long).
    pub async fn read_some(&mut self, limit: usize) -> io::Result<usize> {
        if let Some(sealed) = self.sealed.as_deref_mut() {
            return match read_open(sealed, &mut self.stream, &mut self.bytes_in).await {
                Ok(Some(plain)) => {
                    self.buf.extend_from_slice(&plain);
                    // An empty message is not the end of the stream.
                    Ok(plain.len().max(1))
                }
                Ok(None) => Ok(0),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            };
        }
        let mut tmp = [0u8; MAX_MESSAGE];
        let n = self
            .stream
            .read(&mut tmp[..limit.clamp(1, MAX_MESSAGE)])
            .await?;
        self.buf.extend_from_slice(&tmp[..n]);
        self.bytes_in += n as u64;
        Ok(n)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(sealed) = self.sealed.as_deref_mut() {
            let mut out = Vec::with_capacity(bytes.len() + 128);
            sealed
                .seal(bytes, &mut out)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
            self.bytes_out += out.len() as u64;
            return Ok(());
        }
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    /// A request reply in the session's version. SOCKS4 carries only IPv4: other addresses
    /// are sent as 0.0.0.0 (clients ignore the address in a CONNECT reply).
    pub async fn reply(&mut self, rep: Reply, bound: SocketAddr) -> io::Result<()> {
        let mut out = Vec::with_capacity(22);
        match self.version {
            Some(Version::V4) => {
                let v4 = match bound.ip().to_canonical() {
                    std::net::IpAddr::V4(ip) => SocketAddrV4::new(ip, bound.port()),
                    std::net::IpAddr::V6(_) => {
                        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, bound.port())
                    }
                };
                codec::encode_socks4_reply(rep.socks4(), v4, &mut out);
            }
            _ => codec::encode_reply(rep.code(), bound, &mut out),
        }
        self.send(&out).await
    }

    /// Answers a failure as the stage requires, then closes cleanly: half-close, and read
    /// (briefly, boundedly) what the client still sends so the answer is not lost to a reset.
    pub async fn fail(&mut self, err: &SocksError) {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        if !matches!(err, SocksError::Truncated) {
            let _ = match self.stage {
                Stage::Silent => Ok(()),
                Stage::Greeting => self.send(&[5, codec::METHOD_NO_ACCEPTABLE]).await,
                Stage::Auth => {
                    let mut out = Vec::new();
                    codec::encode_auth_status(false, &mut out);
                    self.send(&out).await
                }
                Stage::Request => self.reply(err.reply(), unspecified).await,
                Stage::Gssapi => {
                    // Never wrapped: the client may not have the context.
                    self.sealed = None;
                    self.send(&crate::kerberos::ABORT).await
                }
            };
        }
        self.stage = Stage::Silent;
        self.linger_close().await;
    }

    pub async fn linger_close(&mut self) {
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut tmp = [0u8; 4096];
            let mut left = 64 * 1024usize;
            while left > 0 {
                match self.stream.read(&mut tmp).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    }
}
