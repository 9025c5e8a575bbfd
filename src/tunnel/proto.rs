//! The tunnel's own bytes, as pure code: the hello an agent sends after TLS (its name and
//! token), the relay's one-byte answer, and what an opened stream asks for.
//!
//! ```text
//! agent -> relay   "GHTUN1" | name len (u8) | name | token len (u16 BE) | token
//!              or  "GHTUN2" | the same | session id (16 bytes) | link index (u8) | links (u8)
//!                  (an agent keeping several links: `connections` > 1)
//! relay -> agent   status (u8): 0 accepted, 1 bad name or token, 2 name already connected,
//!                  3 TLS wanted, 4 too many links of this session
//! then HTTP/2 with reversed roles: the agent is the server, the relay the client.
//! A stream is one CONNECT request, :authority = what to open:
//!   "host:port"            a TCP destination (the agent's allow-list and guard apply)
//!   "NAME:0" + header gatehouse-service: NAME    a service the agent publishes
//!   "udp:0" + header gatehouse-open: udp          a UDP relay (framed datagrams)
//!   "host:port" + gatehouse-open: bind + gatehouse-timeout: MS
//!                          a SOCKS BIND: listen for one connection from host (0.0.0.0:0:
//!                          anyone), answered 200 with gatehouse-bound: ip:port, then a
//!                          SOCKS5 reply (the peer, or why not) as the stream's first bytes
//! the agent answers 200 (bytes flow both ways), or an error status (see [`OpenError`]).
//! ```

use std::fmt;

pub const MAGIC: &[u8; 6] = b"GHTUN1";
/// The magic of a hello that names its link ([`Link`]): the same first five bytes.
pub const MAGIC_LINKS: &[u8; 6] = b"GHTUN2";
/// Longest agent name and token accepted in a hello.
pub const MAX_NAME: usize = 64;
pub const MAX_TOKEN: usize = 1024;
/// Most links one agent process keeps to one relay (`connections`), and most a relay takes
/// from one session (`max_links`).
pub const MAX_LINKS: u8 = 16;
/// Bytes of an agent's session id.
pub const SESSION_LEN: usize = 16;
/// Bytes a [`MAGIC_LINKS`] hello carries after the token: session id, index, links.
const LINK_LEN: usize = SESSION_LEN + 2;
/// The header naming a published service.
pub const SERVICE_HEADER: &str = "gatehouse-service";
/// The header asking for a UDP relay (`gatehouse-open: udp`).
pub const OPEN_HEADER: &str = "gatehouse-open";
/// The header of a BIND: how long the agent waits for the connection (milliseconds).
pub const TIMEOUT_HEADER: &str = "gatehouse-timeout";
/// The header of the agent's answer to a BIND: the address it listens on.
pub const BOUND_HEADER: &str = "gatehouse-bound";
/// Largest datagram (SOCKS UDP header and payload) carried in one frame.
pub const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub name: String,
    pub token: Vec<u8>,
    /// Which link of which agent process this is; `None`: a one-link agent (the
    /// [`MAGIC`] hello, as every agent before `connections` sent).
    pub link: Option<Link>,
}

/// One of the several connections ("links") an agent process keeps to a relay: links with the
/// same `session` are one agent, not duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Random, made once per agent process (and again when a reload changes `[agent]`).
    pub session: [u8; SESSION_LEN],
    /// This link's index, below `count`.
    pub index: u8,
    /// How many links the agent keeps (its `connections`), 1 to [`MAX_LINKS`].
    pub count: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// More bytes are needed.
    Incomplete,
    BadMagic,
    BadName,
    BadToken,
    /// A link index or count out of range.
    BadLink,
}

/// A valid agent or service name: 1-64 of `[A-Za-z0-9._-]`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn encode_hello(h: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + LINK_LEN + h.name.len() + h.token.len());
    out.extend_from_slice(if h.link.is_some() { MAGIC_LINKS } else { MAGIC });
    out.push(h.name.len().min(255) as u8);
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(&(h.token.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(&h.token);
    if let Some(link) = &h.link {
        out.extend_from_slice(&link.session);
        out.push(link.index);
        out.push(link.count);
    }
    out
}

/// Whether `buf` starts like either magic (as far as it goes); `Some(true)` once it is
/// known to be [`MAGIC_LINKS`].
fn magic(buf: &[u8]) -> Result<Option<bool>, HelloError> {
    let n = buf.len().min(MAGIC.len() - 1);
    if buf[..n] != MAGIC[..n] {
        return Err(HelloError::BadMagic);
    }
    match buf.get(MAGIC.len() - 1) {
        None => Ok(None),
        Some(&b) if b == MAGIC[5] => Ok(Some(false)),
        Some(&b) if b == MAGIC_LINKS[5] => Ok(Some(true)),
        Some(_) => Err(HelloError::BadMagic),
    }
}

/// The length of the hello starting `buf`, as far as the bytes read tell (the fields whose
/// lengths are not read yet count as empty): what to read before decoding again. Call it
/// after [`decode_hello`] said [`HelloError::Incomplete`], so the lengths read are in bounds.
pub fn hello_needs(buf: &[u8]) -> usize {
    let at = MAGIC.len() + 1;
    let Some(&name_len) = buf.get(MAGIC.len()) else {
        return at;
    };
    let at = at + usize::from(name_len) + 2;
    let Some(len) = buf.get(at - 2..at) else {
        return at;
    };
    let links = matches!(magic(buf), Ok(Some(true)));
    at + usize::from(u16::from_be_bytes([len[0], len[1]])) + if links { LINK_LEN } else { 0 }
}

/// Decodes a hello from the start of `buf`: the hello and the bytes it took.
pub fn decode_hello(buf: &[u8]) -> Result<(Hello, usize), HelloError> {
    let Some(links) = magic(buf)? else {
        return Err(HelloError::Incomplete);
    };
    let Some(&name_len) = buf.get(MAGIC.len()) else {
        return Err(HelloError::Incomplete);
    };
    let name_len = usize::from(name_len);
    if name_len == 0 || name_len > MAX_NAME {
        return Err(HelloError::BadName);
    }
    let at = MAGIC.len() + 1;
    let Some(name) = buf.get(at..at + name_len) else {
        return Err(HelloError::Incomplete);
    };
    let name = match std::str::from_utf8(name) {
        Ok(s) if valid_name(s) => s.to_string(),
        _ => return Err(HelloError::BadName),
    };
    let at = at + name_len;
    let Some(len) = buf.get(at..at + 2) else {
        return Err(HelloError::Incomplete);
    };
    let token_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if token_len == 0 || token_len > MAX_TOKEN {
        return Err(HelloError::BadToken);
    }
    let at = at + 2;
    let Some(token) = buf.get(at..at + token_len) else {
        return Err(HelloError::Incomplete);
    };
    let at = at + token_len;
    let link = if links {
        let Some(l) = buf.get(at..at + LINK_LEN) else {
            return Err(HelloError::Incomplete);
        };
        let mut session = [0u8; SESSION_LEN];
        session.copy_from_slice(&l[..SESSION_LEN]);
        let (index, count) = (l[SESSION_LEN], l[SESSION_LEN + 1]);
        if count == 0 || count > MAX_LINKS || index >= count {
            return Err(HelloError::BadLink);
        }
        Some(Link {
            session,
            index,
            count,
        })
    } else {
        None
    };
    Ok((
        Hello {
            name,
            token: token.to_vec(),
            link,
        },
        at + if links { LINK_LEN } else { 0 },
    ))
}

/// The relay's answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloReply {
    Accepted = 0,
    BadCredentials = 1,
    Duplicate = 2,
    /// Sent in the clear by a TLS relay to an agent that spoke plain TCP to it.
    WantsTls = 3,
    /// The relay has as many links of this agent's session as it takes (`max_links`).
    TooManyLinks = 4,
}

/// What the first byte an agent sends says about its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstByte {
    /// A TLS handshake record (content type 22).
    Tls,
    /// The plain hello's magic.
    Plain,
    Other,
}

pub fn sniff(first: u8) -> FirstByte {
    match first {
        0x16 => FirstByte::Tls,
        b if b == MAGIC[0] => FirstByte::Plain,
        _ => FirstByte::Other,
    }
}

impl HelloReply {
    pub fn from_byte(b: u8) -> Option<HelloReply> {
        match b {
            0 => Some(HelloReply::Accepted),
            1 => Some(HelloReply::BadCredentials),
            2 => Some(HelloReply::Duplicate),
            3 => Some(HelloReply::WantsTls),
            4 => Some(HelloReply::TooManyLinks),
            _ => None,
        }
    }
}

/// What a stream asks the agent to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Open {
    /// A TCP destination, by name or address; the agent resolves names.
    Tcp { host: String, port: u16 },
    /// A service the agent publishes.
    Service(String),
    /// A UDP relay: the stream carries datagrams, each a [`encode_frame`] around a SOCKS5
    /// UDP datagram (RFC 1928 section 7: header naming the destination, or on the way back
    /// the source, then the payload).
    Udp,
    /// A SOCKS BIND: a listening socket for one connection from `host` (an unspecified
    /// address: from anyone the agent's allow-list admits), waited for at most `wait`.
    Bind {
        host: String,
        port: u16,
        wait: std::time::Duration,
    },
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Open::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Open::Tcp { host, port } => write!(f, "{host}:{port}"),
            Open::Service(name) => write!(f, "service {name}"),
            Open::Udp => f.write_str("udp"),
            Open::Bind { host, port, .. } if host.contains(':') => {
                write!(f, "bind from [{host}]:{port}")
            }
            Open::Bind { host, port, .. } => write!(f, "bind from {host}:{port}"),
        }
    }
}

impl Open {
    /// The request the relay sends for it.
    pub fn to_request(&self) -> Result<http::Request<()>, http::Error> {
        let b = http::Request::builder().method(http::Method::CONNECT);
        match self {
            Open::Tcp { .. } => b.uri(self.to_string()).body(()),
            Open::Service(name) => b
                .uri(format!("{name}:0"))
                .header(SERVICE_HEADER, name.as_str())
                .body(()),
            Open::Udp => b.uri("udp:0").header(OPEN_HEADER, "udp").body(()),
            Open::Bind { host, port, wait } => {
                let uri = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                b.uri(uri)
                    .header(OPEN_HEADER, "bind")
                    .header(TIMEOUT_HEADER, wait.as_millis().to_string())
                    .body(())
            }
        }
    }

    /// What a request received by the agent asks for; `None` answers 400.
    pub fn from_request<B>(req: &http::Request<B>) -> Option<Open> {
        if req.method() != http::Method::CONNECT {
            return None;
        }
        if let Some(v) = req.headers().get(OPEN_HEADER) {
            return match v.as_bytes() {
                b"udp" => Some(Open::Udp),
                b"bind" => {
                    let ms: u64 = req
                        .headers()
                        .get(TIMEOUT_HEADER)?
                        .to_str()
                        .ok()?
                        .parse()
                        .ok()?;
                    let auth = req.uri().authority()?;
                    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
                    if host.is_empty() {
                        return None;
                    }
                    Some(Open::Bind {
                        host: host.to_ascii_lowercase(),
                        port: auth.port_u16()?,
                        wait: std::time::Duration::from_millis(ms),
                    })
                }
                _ => None,
            };
        }
        if let Some(v) = req.headers().get(SERVICE_HEADER) {
            let name = v.to_str().ok()?;
            return valid_name(name).then(|| Open::Service(name.to_string()));
        }
        let auth = req.uri().authority()?;
        let port = auth.port_u16().filter(|p| *p != 0)?;
        let host = auth.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        Some(Open::Tcp {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Why the agent did not open a stream: the status it answers with, and what the relay makes
/// of it (a SOCKS reply code; a published port just closes the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// 400: the request named nothing the agent understands.
    BadRequest,
    /// 403: outside the agent's allow-list, or refused by its destination guard.
    NotAllowed,
    /// 404: no such published service.
    NoService,
    /// 502: the destination refused the connection.
    Refused,
    /// 503: the agent's network cannot reach it (or the relay has no agent of that name).
    NetworkUnreachable,
    /// 504: the name did not resolve, or the connection timed out.
    HostUnreachable,
    /// Anything else: the stream was reset, the agent went away.
    Failed,
}

impl OpenError {
    pub fn status(self) -> u16 {
        match self {
            OpenError::BadRequest => 400,
            OpenError::NotAllowed => 403,
            OpenError::NoService => 404,
            OpenError::Refused => 502,
            OpenError::NetworkUnreachable => 503,
            OpenError::HostUnreachable => 504,
            OpenError::Failed => 500,
        }
    }

    /// Whether another agent of the same name may do better: every failure but a request
    /// the relay itself got wrong (each agent would refuse it alike).
    pub fn retry_elsewhere(self) -> bool {
        self != OpenError::BadRequest
    }

    pub fn from_status(status: u16) -> OpenError {
        match status {
            400 => OpenError::BadRequest,
            403 => OpenError::NotAllowed,
            404 => OpenError::NoService,
            502 => OpenError::Refused,
            503 => OpenError::NetworkUnreachable,
            504 => OpenError::HostUnreachable,
            _ => OpenError::Failed,
        }
    }

    /// The RFC 1928 reply code a SOCKS client gets.
    pub fn socks_reply(self) -> u8 {
        match self {
            OpenError::NotAllowed | OpenError::NoService => 0x02,
            OpenError::NetworkUnreachable => 0x03,
            OpenError::HostUnreachable => 0x04,
            OpenError::Refused => 0x05,
            OpenError::BadRequest => 0x08,
            OpenError::Failed => 0x01,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpenError::BadRequest => "bad_request",
            OpenError::NotAllowed => "not_allowed",
            OpenError::NoService => "no_service",
            OpenError::Refused => "connection_refused",
            OpenError::NetworkUnreachable => "network_unreachable",
            OpenError::HostUnreachable => "host_unreachable",
            OpenError::Failed => "tunnel_failed",
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent answered {}: {}", self.status(), self.as_str())
    }
}

impl std::error::Error for OpenError {}

/// `sha256:` and 64 hex digits, optionally with colons between bytes (as `openssl x509
/// -fingerprint` prints); case does not matter.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| s.trim().strip_prefix("SHA256:"))?
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The form [`parse_fingerprint`] takes: `sha256:` and lower-case hex, colon-separated.
pub fn format_fingerprint(digest: &[u8]) -> String {
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{}", hex.join(":"))
}

/// One datagram on a UDP stream: its length (u16, big-endian), then its bytes.
pub fn encode_frame(datagram: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(len) = u16::try_from(datagram.len()) else {
        return false;
    };
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    true
}

/// The first whole frame in `buf`: its datagram's range and the bytes it took; `None` until
/// one is whole.
pub fn decode_frame(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some((2..2 + len, 2 + len))
}

/// Every decoder of untrusted tunnel input over arbitrary bytes (the fuzz target
/// `tunnel_decoders` and a seeded test run it): no panic, lengths within the input, and what
/// decodes re-encodes to the same bytes.
pub fn check_all_decoders(data: &[u8]) {
    if let Some((range, used)) = decode_frame(data) {
        assert!(used <= data.len() && range.end == used);
        let mut again = Vec::new();
        assert!(encode_frame(&data[range], &mut again));
        assert_eq!(again, data[..used]);
    }
    if let Ok((h, used)) = decode_hello(data) {
        assert!(used <= data.len());
        assert_eq!(encode_hello(&h), data[..used]);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(d) = parse_fingerprint(text) {
            assert_eq!(parse_fingerprint(&format_fingerprint(&d)), Some(d));
        }
        let _ = super::allow::AllowEntry::parse(text);
        if let Ok(req) = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(text)
            .body(())
        {
            if let Some(open) = Open::from_request(&req) {
                let again = open.to_request().ok();
                assert_eq!(again.as_ref().and_then(Open::from_request), Some(open));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_tells_tls_from_the_plain_hello() {
        let hello = encode_hello(&Hello {
            name: "a".into(),
            token: b"t".to_vec(),
            link: None,
        });
        assert_eq!(sniff(hello[0]), FirstByte::Plain);
        assert_eq!(sniff(0x16), FirstByte::Tls);
        assert_eq!(sniff(b'P'), FirstByte::Other);
        assert_eq!(HelloReply::from_byte(3), Some(HelloReply::WantsTls));
        assert_eq!(HelloReply::from_byte(4), Some(HelloReply::TooManyLinks));
        assert_eq!(HelloReply::from_byte(5), None);
    }

    #[test]
    fn only_a_bad_request_is_not_worth_another_agent() {
        use OpenError::*;
        for e in [
            NotAllowed,
            NoService,
            Refused,
            NetworkUnreachable,
            HostUnreachable,
            Failed,
        ] {
            assert!(e.retry_elsewhere(), "{e:?}");
        }
        assert!(!BadRequest.retry_elsewhere());
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        let valid = encode_hello(&Hello {
            name: "office".into(),
            token: b"t".to_vec(),
            link: None,
        });
        for _ in 0..20_000 {
            let mut data = if rng.bool() {
                valid.clone()
            } else {
                (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect()
            };
            if !data.is_empty() && rng.bool() {
                let i = rng.usize(..data.len());
                data[i] = rng.u8(..);
            }
            check_all_decoders(&data);
        }
        for text in [
            "10.0.0.1:80",
            "[fd00::1]:22",
            "a.b:1",
            "x:0",
            ":",
            "sha256:",
        ] {
            check_all_decoders(text.as_bytes());
        }
    }

    #[test]
    fn hello_round_trips_and_is_decoded_from_any_split() {
        let h = Hello {
            name: "office".into(),
            token: b"s3cret".to_vec(),
            link: None,
        };
        let bytes = encode_hello(&h);
        assert_eq!(&bytes[..6], MAGIC, "a one-link agent sends today's hello");
        assert_eq!(bytes.len(), 6 + 1 + 6 + 2 + 6);
        assert_eq!(decode_hello(&bytes), Ok((h.clone(), bytes.len())));
        for cut in 0..bytes.len() {
            assert_eq!(decode_hello(&bytes[..cut]), Err(HelloError::Incomplete));
        }
        let mut more = bytes.clone();
        more.extend_from_slice(b"PRI *");
        assert_eq!(decode_hello(&more), Ok((h, bytes.len())));
    }

    const LINK: Link = Link {
        session: [7; SESSION_LEN],
        index: 1,
        count: 2,
    };

    #[test]
    fn a_hello_with_a_session_round_trips_and_is_read_byte_exactly() {
        let h = Hello {
            name: "office".into(),
            token: b"s3cret".to_vec(),
            link: Some(LINK),
        };
        let bytes = encode_hello(&h);
        assert_eq!(&bytes[..6], MAGIC_LINKS);
        assert_eq!(bytes.len(), 6 + 1 + 6 + 2 + 6 + 16 + 2);
        assert_eq!(bytes[bytes.len() - 2..], [1, 2]);
        assert_eq!(decode_hello(&bytes), Ok((h.clone(), bytes.len())));
        // What a reader asks for next never goes past the hello, and reaches it.
        let mut read = 0;
        for cut in 0..bytes.len() {
            assert_eq!(decode_hello(&bytes[..cut]), Err(HelloError::Incomplete));
            let needs = hello_needs(&bytes[..cut]);
            assert!(needs > cut && needs <= bytes.len(), "{cut}: {needs}");
            read = read.max(needs);
        }
        assert_eq!(read, bytes.len());
        let mut more = bytes.clone();
        more.extend_from_slice(b"PRI *");
        assert_eq!(decode_hello(&more), Ok((h, bytes.len())));
    }

    #[test]
    fn bad_links_are_refused() {
        let with = |index: u8, count: u8| {
            let mut b = encode_hello(&Hello {
                name: "a".into(),
                token: b"t".to_vec(),
                link: Some(LINK),
            });
            let n = b.len();
            b[n - 2] = index;
            b[n - 1] = count;
            decode_hello(&b).map(|(h, _)| h.link)
        };
        assert_eq!(with(0, 0), Err(HelloError::BadLink));
        assert_eq!(with(2, 2), Err(HelloError::BadLink));
        assert_eq!(with(0, MAX_LINKS + 1), Err(HelloError::BadLink));
        assert_eq!(with(255, 255), Err(HelloError::BadLink));
        assert!(matches!(with(MAX_LINKS - 1, MAX_LINKS), Ok(Some(l)) if l.index == 15));
        assert_eq!(decode_hello(b"GHTUN3"), Err(HelloError::BadMagic));
        assert_eq!(decode_hello(b"GHTUN2\x00"), Err(HelloError::BadName));
    }

    #[test]
    fn bad_hellos_are_refused_not_waited_for() {
        assert_eq!(decode_hello(b"GET / "), Err(HelloError::BadMagic));
        assert_eq!(decode_hello(b"GH"), Err(HelloError::Incomplete));
        assert_eq!(decode_hello(b"GX"), Err(HelloError::BadMagic));
        assert_eq!(decode_hello(b"GHTUN1\x00"), Err(HelloError::BadName));
        assert_eq!(decode_hello(b"GHTUN1\x41"), Err(HelloError::BadName));
        assert_eq!(decode_hello(b"GHTUN1\x02a/"), Err(HelloError::BadName));
        assert_eq!(
            decode_hello(b"GHTUN1\x01a\x00\x00"),
            Err(HelloError::BadToken)
        );
        assert_eq!(
            decode_hello(b"GHTUN1\x01a\xff\xff"),
            Err(HelloError::BadToken)
        );
    }

    #[test]
    fn open_requests_round_trip() {
        for open in [
            Open::Tcp {
                host: "10.0.0.5".into(),
                port: 22,
            },
            Open::Tcp {
                host: "db.internal".into(),
                port: 5432,
            },
            Open::Tcp {
                host: "fd00::1".into(),
                port: 80,
            },
            Open::Service("web".into()),
            Open::Udp,
            Open::Bind {
                host: "0.0.0.0".into(),
                port: 0,
                wait: std::time::Duration::from_secs(120),
            },
            Open::Bind {
                host: "fd00::1".into(),
                port: 21,
                wait: std::time::Duration::from_millis(1500),
            },
        ] {
            let req = open.to_request().expect("request");
            assert_eq!(Open::from_request(&req), Some(open));
        }
    }

    #[test]
    fn odd_requests_are_rejected() {
        let get = http::Request::get("http://a/").body(()).expect("req");
        assert_eq!(Open::from_request(&get), None);
        let no_port = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("a:0")
            .body(())
            .expect("req");
        assert_eq!(Open::from_request(&no_port), None);
        let bad_service = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("a:1")
            .header(SERVICE_HEADER, "../x")
            .body(())
            .expect("req");
        assert_eq!(Open::from_request(&bad_service), None);
        // A BIND names how long to wait, as a number of milliseconds.
        for timeout in [None, Some("soon"), Some("-1")] {
            let mut b = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri("a:1")
                .header(OPEN_HEADER, "bind");
            if let Some(t) = timeout {
                b = b.header(TIMEOUT_HEADER, t);
            }
            assert_eq!(Open::from_request(&b.body(()).expect("req")), None);
        }
        let other = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("a:1")
            .header(OPEN_HEADER, "listen")
            .body(())
            .expect("req");
        assert_eq!(Open::from_request(&other), None);
    }

    #[test]
    fn frames_wait_for_their_whole_datagram() {
        let mut out = Vec::new();
        assert!(encode_frame(b"abc", &mut out));
        assert_eq!(out, b"\x00\x03abc");
        assert_eq!(decode_frame(&out), Some((2..5, 5)));
        assert_eq!(decode_frame(&out[..4]), None);
        assert_eq!(decode_frame(&[0]), None);
        assert!(!encode_frame(&vec![0; 70_000], &mut out));
    }

    #[test]
    fn statuses_map_to_socks_replies() {
        for e in [
            OpenError::BadRequest,
            OpenError::NotAllowed,
            OpenError::NoService,
            OpenError::Refused,
            OpenError::NetworkUnreachable,
            OpenError::HostUnreachable,
        ] {
            assert_eq!(OpenError::from_status(e.status()), e);
        }
        assert_eq!(OpenError::from_status(418), OpenError::Failed);
        assert_eq!(OpenError::NotAllowed.socks_reply(), 2);
        assert_eq!(OpenError::Refused.socks_reply(), 5);
    }

    #[test]
    fn fingerprints_parse_in_both_forms() {
        let d: Vec<u8> = (0..32).collect();
        let s = format_fingerprint(&d);
        assert_eq!(parse_fingerprint(&s).map(|a| a.to_vec()), Some(d.clone()));
        let hex: String = d.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{hex}")).map(|a| a.to_vec()),
            Some(d)
        );
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint("md5:00"), None);
    }
}
