//! SOCKS5 (RFC 1928, RFC 1929) and SOCKS4/4a messages: pure decoders over a buffer and
//! encoders into one. No I/O here.
//!
//! Every decoder takes the bytes received so far and returns the message plus how many bytes
//! it used, [`DecodeError::Incomplete`] when more bytes are needed, or
//! [`DecodeError::Invalid`] as soon as the bytes cannot be a valid message (a wrong version is
//! reported from the first byte, without waiting for the rest). Every message has a fixed upper
//! size, so a caller that buffers at most [`MAX_MESSAGE`] bytes never needs more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use crate::connector::Host;

/// No SOCKS handshake message is longer: a SOCKS4a request with a 255-byte user id and a
/// 255-byte name is 8 + 256 + 256 bytes.
pub const MAX_MESSAGE: usize = 520;
/// SOCKS4 user ids and SOCKS4a names: at most this many bytes before their NUL.
pub const MAX_SOCKS4_FIELD: usize = 255;

pub const METHOD_NONE: u8 = 0x00;
/// RFC 1961.
pub const METHOD_GSSAPI: u8 = 0x01;
pub const METHOD_PASSWORD: u8 = 0x02;
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// A decoder: the message and the bytes it used.
pub type Decoded<T> = Result<(T, usize), DecodeError>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message incomplete")]
    Incomplete,
    #[error(transparent)]
    Invalid(#[from] Malformed),
}

/// Why bytes are not a valid message. [`super::reply`] maps each to the reply that is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("no authentication methods offered")]
    NoMethods,
    #[error("empty user name or password")]
    EmptyCredential,
    #[error("unknown command {0:#04x}")]
    Command(u8),
    #[error("reserved byte is {0:#04x}, not zero")]
    Reserved(u8),
    #[error("unknown address type {0:#04x}")]
    AddressType(u8),
    #[error("invalid domain name")]
    Domain,
    #[error("SOCKS4 field longer than 255 bytes")]
    FieldTooLong,
}

/// Where a request points: an address or a name, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub fn ip(addr: SocketAddr) -> Target {
        Target {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// The socket address, when the target is not a name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Bind,
    UdpAssociate,
}

/// RFC 1928 section 3, the client's greeting.
///
/// ```text
/// +----+----------+----------+
/// |VER | NMETHODS | METHODS  |
/// +----+----------+----------+
/// | 1  |    1     | 1 to 255 |
/// +----+----------+----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: Vec<u8>,
}

pub fn decode_greeting(buf: &[u8]) -> Result<(Greeting, usize), DecodeError> {
    let mut r = Reader::new(buf);
    version(r.u8()?, 5)?;
    let n = r.u8()? as usize;
    if n == 0 {
        return Err(Malformed::NoMethods.into());
    }
    let methods = r.take(n)?.to_vec();
    Ok((Greeting { methods }, r.pos))
}

/// RFC 1928 section 3, the server's choice: `VER | METHOD`.
pub fn encode_method(method: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[5, method]);
}

/// RFC 1929 section 2, username/password request.
///
/// ```text
/// +----+------+----------+------+----------+
/// |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
/// +----+------+----------+------+----------+
/// | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
/// +----+------+----------+------+----------+
/// ```
/// The password is kept as bytes and never formatted: `Debug` masks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Vec<u8>,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &String::from_utf8_lossy(&self.user))
            .field("password", &"***")
            .finish()
    }
}

pub fn decode_credentials(buf: &[u8]) -> Result<(Credentials, usize), DecodeError> {
    let mut r = Reader::new(buf);
    version(r.u8()?, 1)?;
    let ulen = r.u8()? as usize;
    if ulen == 0 {
        return Err(Malformed::EmptyCredential.into());
    }
    let user = r.take(ulen)?.to_vec();
    let plen = r.u8()? as usize;
    if plen == 0 {
        return Err(Malformed::EmptyCredential.into());
    }
    let password = r.take(plen)?.to_vec();
    Ok((Credentials { user, password }, r.pos))
}

/// RFC 1929 section 2, the server's verdict: `VER(1) | STATUS` (0 = success).
pub fn encode_auth_status(ok: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&[1, if ok { 0 } else { 1 }]);
}

/// RFC 1928 section 4, the request.
///
/// ```text
/// +----+-----+-------+------+----------+----------+
/// |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
/// +----+-----+-------+------+----------+----------+
/// | 1  |  1  | X'00' |  1   | Variable |    2     |
/// +----+-----+-------+------+----------+----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: Target,
}

pub fn decode_request(buf: &[u8]) -> Result<(Request, usize), DecodeError> {
    let mut r = Reader::new(buf);
    version(r.u8()?, 5)?;
    let command = match r.u8()? {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        other => return Err(Malformed::Command(other).into()),
    };
    match r.u8()? {
        0 => {}
        other => return Err(Malformed::Reserved(other).into()),
    }
    let target = r.address()?;
    Ok((Request { command, target }, r.pos))
}

/// Encodes a request (used by tests and the fuzz round trip).
pub fn encode_request(req: &Request, out: &mut Vec<u8>) {
    let cmd = match req.command {
        Command::Connect => 1,
        Command::Bind => 2,
        Command::UdpAssociate => 3,
    };
    out.extend_from_slice(&[5, cmd, 0]);
    encode_target(&req.target, out);
}

/// RFC 1928 section 6, the reply.
///
/// ```text
/// +----+-----+-------+------+----------+----------+
/// |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
/// +----+-----+-------+------+----------+----------+
/// | 1  |  1  | X'00' |  1   | Variable |    2     |
/// +----+-----+-------+------+----------+----------+
/// ```
pub fn encode_reply(rep: u8, bound: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[5, rep, 0]);
    encode_target(&Target::ip(bound), out);
}

/// Decodes a reply: `(REP, bound address)`. The server never reads one; clients and the fuzz
/// target do.
pub fn decode_reply(buf: &[u8]) -> Result<((u8, Target), usize), DecodeError> {
    let mut r = Reader::new(buf);
    version(r.u8()?, 5)?;
    let rep = r.u8()?;
    match r.u8()? {
        0 => {}
        other => return Err(Malformed::Reserved(other).into()),
    }
    let target = r.address()?;
    Ok(((rep, target), r.pos))
}

/// RFC 1928 section 7, the header of every UDP datagram to and from the relay.
///
/// ```text
/// +----+------+------+----------+----------+----------+
/// |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
/// +----+------+------+----------+----------+----------+
/// | 2  |  1   |  1   | Variable |    2     | Variable |
/// +----+------+------+----------+----------+----------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    pub frag: u8,
    pub target: Target,
}

/// Decodes a datagram's header; the payload is `&buf[used..]`. A datagram is whole or
/// nothing, so `Incomplete` here means truncated.
pub fn decode_udp(buf: &[u8]) -> Result<(UdpHeader, usize), DecodeError> {
    let mut r = Reader::new(buf);
    let rsv = u16::from_be_bytes([r.u8()?, r.u8()?]);
    if rsv != 0 {
        return Err(Malformed::Reserved(1).into());
    }
    let frag = r.u8()?;
    let target = r.address()?;
    Ok((UdpHeader { frag, target }, r.pos))
}

/// Writes a UDP header (FRAG 0) for `from`, then the payload.
pub fn encode_udp(target: &Target, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    encode_target(target, out);
    out.extend_from_slice(payload);
}

/// SOCKS4 and SOCKS4a request.
///
/// ```text
/// +----+----+----+----+----+----+----+----+----+----+....+----+
/// | VN | CD | DSTPORT |      DSTIP        | USERID       |NULL|
/// +----+----+----+----+----+----+----+----+----+----+....+----+
///    1    1      2              4           variable       1
/// ```
/// SOCKS4a: a DSTIP of `0.0.0.x` (x != 0) means a NUL-terminated host name follows the user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    pub command: Command,
    pub target: Target,
    pub user_id: Vec<u8>,
}

pub fn decode_socks4(buf: &[u8]) -> Result<(Socks4Request, usize), DecodeError> {
    let mut r = Reader::new(buf);
    version(r.u8()?, 4)?;
    let command = match r.u8()? {
        1 => Command::Connect,
        2 => Command::Bind,
        other => return Err(Malformed::Command(other).into()),
    };
    let port = r.u16()?;
    let ip = Ipv4Addr::from(r.array::<4>()?);
    let user_id = r.nul_terminated()?.to_vec();
    let o = ip.octets();
    let host = if o[..3] == [0, 0, 0] && o[3] != 0 {
        let name = r.nul_terminated()?;
        domain(name)?
    } else {
        Host::Ip(IpAddr::V4(ip))
    };
    let target = Target { host, port };
    Ok((
        Socks4Request {
            command,
            target,
            user_id,
        },
        r.pos,
    ))
}

/// SOCKS4 reply: `VN=0 | CD | DSTPORT | DSTIP`; CD 90 granted, 91 rejected or failed.
pub fn encode_socks4_reply(cd: u8, addr: SocketAddrV4, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, cd]);
    out.extend_from_slice(&addr.port().to_be_bytes());
    out.extend_from_slice(&addr.ip().octets());
}

/// Every decoder over the same bytes, checking the invariants a caller relies on. The fuzz
/// target and the property test run this.
pub fn check_all_decoders(data: &[u8]) {
    fn used_within<T>(r: &Result<(T, usize), DecodeError>, len: usize) {
        if let Ok((_, used)) = r {
            assert!(
                *used <= len && *used > 0,
                "decoder used {used} of {len} bytes"
            );
        }
    }
    let g = decode_greeting(data);
    used_within(&g, data.len());
    used_within(&decode_credentials(data), data.len());
    let req = decode_request(data);
    used_within(&req, data.len());
    if let Ok((req, used)) = &req {
        let mut out = Vec::new();
        encode_request(req, &mut out);
        let again = decode_request(&out).map(|(r, _)| r);
        assert_eq!(again.as_ref(), Ok(req), "request round trip");
        assert!(*used <= MAX_MESSAGE);
    }
    used_within(&decode_reply(data), data.len());
    let udp = decode_udp(data);
    if let Ok((h, used)) = &udp {
        assert!(*used <= data.len());
        let mut out = Vec::new();
        encode_udp(&h.target, &data[*used..], &mut out);
        let (h2, used2) = decode_udp(&out).expect("encoded header decodes");
        assert_eq!(h2.target, h.target);
        assert_eq!(&out[used2..], &data[*used..]);
    }
    let s4 = decode_socks4(data);
    used_within(&s4, data.len());
    if let Ok((_, used)) = s4 {
        assert!(used <= MAX_MESSAGE);
    }
    // Any prefix of the data is incomplete or a definite answer, never a panic.
    for cut in 0..data.len().min(16) {
        let _ = decode_request(&data[..cut]);
        let _ = decode_socks4(&data[..cut]);
    }
}

fn version(got: u8, want: u8) -> Result<(), DecodeError> {
    if got == want {
        Ok(())
    } else {
        Err(Malformed::Version(got).into())
    }
}

fn domain(name: &[u8]) -> Result<Host, DecodeError> {
    let s = std::str::from_utf8(name).map_err(|_| Malformed::Domain)?;
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Ok(Host::Ip(IpAddr::V6(ip)));
    }
    Host::parse(s).ok_or(Malformed::Domain.into())
}

/// `ATYP | ADDR | PORT`, shared with the SOCKS5 client for parent proxies.
pub(crate) fn encode_target(t: &Target, out: &mut Vec<u8>) {
    match &t.host {
        Host::Ip(IpAddr::V4(ip)) => {
            out.push(ATYP_V4);
            out.extend_from_slice(&ip.octets());
        }
        Host::Ip(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
            // A v4-mapped source (dual-stack socket) is written as the IPv4 it is.
            Some(v4) => {
                out.push(ATYP_V4);
                out.extend_from_slice(&v4.octets());
            }
            None => {
                out.push(ATYP_V6);
                out.extend_from_slice(&ip.octets());
            }
        },
        Host::Name(n) => {
            // Host::parse bounds names to 253 bytes, so the length fits in one byte.
            let bytes = &n.as_bytes()[..n.len().min(255)];
            out.push(ATYP_DOMAIN);
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
    }
    out.extend_from_slice(&t.port.to_be_bytes());
}

/// A cursor that reports `Incomplete` instead of reading past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Incomplete)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Bytes up to a NUL (consumed, not returned), at most [`MAX_SOCKS4_FIELD`] of them.
    fn nul_terminated(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        let window = &rest[..rest.len().min(MAX_SOCKS4_FIELD + 1)];
        match window.iter().position(|b| *b == 0) {
            Some(i) => {
                let s = &rest[..i];
                self.pos += i + 1;
                Ok(s)
            }
            None if window.len() > MAX_SOCKS4_FIELD => Err(Malformed::FieldTooLong.into()),
            None => Err(DecodeError::Incomplete),
        }
    }

    /// `ATYP | ADDR | PORT`.
    fn address(&mut self) -> Result<Target, DecodeError> {
        let host = match self.u8()? {
            ATYP_V4 => Host::Ip(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) names the IPv4 host it maps.
            ATYP_V6 => Host::Ip(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)).to_canonical()),
            ATYP_DOMAIN => {
                let len = self.u8()? as usize;
                if len == 0 {
                    return Err(Malformed::Domain.into());
                }
                domain(self.take(len)?)?
            }
            other => return Err(Malformed::AddressType(other).into()),
        };
        let port = self.u16()?;
        Ok(Target { host, port })
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
