//! The client side of SOCKS5 (RFC 1928) with username/password (RFC 1929): pure encoders and
//! decoders over bytes. No I/O here; [`super::handshake`] drives them.
//!
//! Decoders take the bytes received so far and return `Ok(None)` while more are needed, or the
//! message and how many bytes it used. Every reply has a fixed upper size ([`MAX_REPLY`]).
//!
//! (The SOCKS server's codec, `src/socks/codec.rs`, decodes the other side of the same
//! messages; once both are on one branch the address encoding can be shared.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::connector::Host;

/// The longest server message: a reply with a 255-byte domain name.
pub const MAX_REPLY: usize = 4 + 1 + 255 + 2;

pub const METHOD_NONE: u8 = 0x00;
pub const METHOD_PASSWORD: u8 = 0x02;
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    #[error("not a SOCKS5 answer (version {0})")]
    Version(u8),
    #[error("reserved byte is {0:#04x}")]
    Reserved(u8),
    #[error("unknown address type {0:#04x}")]
    AddressType(u8),
    #[error("the server chose method {0:#04x}, which was not offered")]
    UnofferedMethod(u8),
}

/// RFC 1928 section 3: `VER | NMETHODS | METHODS`. Offers password only when we have
/// credentials (a server must not be invited to skip them).
pub fn encode_greeting(with_password: bool, out: &mut Vec<u8>) {
    if with_password {
        out.extend_from_slice(&[5, 1, METHOD_PASSWORD]);
    } else {
        out.extend_from_slice(&[5, 1, METHOD_NONE]);
    }
}

/// The server's choice: `VER | METHOD`. `METHOD_NO_ACCEPTABLE` is returned as is.
pub fn decode_method(buf: &[u8], with_password: bool) -> Result<Option<(u8, usize)>, Socks5Error> {
    let Some(&[ver, method]) = buf.get(..2) else {
        return match buf.first() {
            Some(&v) if v != 5 => Err(Socks5Error::Version(v)),
            _ => Ok(None),
        };
    };
    if ver != 5 {
        return Err(Socks5Error::Version(ver));
    }
    let offered = if with_password {
        METHOD_PASSWORD
    } else {
        METHOD_NONE
    };
    if method != offered && method != METHOD_NO_ACCEPTABLE {
        return Err(Socks5Error::UnofferedMethod(method));
    }
    Ok(Some((method, 2)))
}

/// RFC 1929 section 2: `VER=1 | ULEN | UNAME | PLEN | PASSWD`. The config reader bounds both
/// to 1..=255 bytes; longer input is cut to 255 (and will then fail at the server).
pub fn encode_password(user: &str, password: &str, out: &mut Vec<u8>) {
    out.push(1);
    for field in [user.as_bytes(), password.as_bytes()] {
        let f = &field[..field.len().min(255)];
        out.push(f.len() as u8);
        out.extend_from_slice(f);
    }
}

/// RFC 1929: `VER | STATUS`; `true` when STATUS is 0. (Servers answer VER 1 or, some, 5.)
pub fn decode_password_status(buf: &[u8]) -> Result<Option<(bool, usize)>, Socks5Error> {
    match buf.get(..2) {
        None => Ok(None),
        Some(&[ver, status]) if ver == 1 || ver == 5 => Ok(Some((status == 0, 2))),
        Some(&[ver, _]) => Err(Socks5Error::Version(ver)),
        Some(_) => Ok(None),
    }
}

/// RFC 1928 section 4, CONNECT: `VER | CMD=1 | RSV | ATYP | DST.ADDR | DST.PORT`. Names go as
/// ATYP 3, so the parent resolves them (remote DNS); IPv4-mapped IPv6 goes as IPv4.
pub fn encode_connect(host: &Host, port: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[5, 1, 0]);
    let target = crate::socks::codec::Target {
        host: host.clone(),
        port,
    };
    crate::socks::codec::encode_target(&target, out);
}

/// The reply to CONNECT: `VER | REP | RSV | ATYP | BND.ADDR | BND.PORT`. Returns `REP` and
/// the bound address (`None` when the server gave a name).
pub type Reply = (u8, Option<SocketAddr>);

pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, Socks5Error> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != 5 {
        return Err(Socks5Error::Version(ver));
    }
    let Some(&[_, rep, rsv, atyp]) = buf.get(..4) else {
        return Ok(None);
    };
    if rsv != 0 {
        return Err(Socks5Error::Reserved(rsv));
    }
    let addr_len = match atyp {
        ATYP_V4 => 4,
        ATYP_V6 => 16,
        ATYP_DOMAIN => match buf.get(4) {
            Some(&n) => 1 + usize::from(n),
            None => return Ok(None),
        },
        other => return Err(Socks5Error::AddressType(other)),
    };
    let total = 4 + addr_len + 2;
    let Some(msg) = buf.get(..total) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([msg[total - 2], msg[total - 1]]);
    let bound = match atyp {
        ATYP_V4 => {
            let o: [u8; 4] = msg[4..8].try_into().unwrap_or_default();
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        ATYP_V6 => {
            let o: [u8; 16] = msg[4..20].try_into().unwrap_or_default();
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    };
    Ok(Some(((rep, bound), total)))
}

/// RFC 1928 section 6, the meaning of `REP`, for logs.
pub fn reply_text(rep: u8) -> &'static str {
    match rep {
        0x00 => "succeeded",
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned reply code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_and_method_choice() {
        let mut out = Vec::new();
        encode_greeting(false, &mut out);
        encode_greeting(true, &mut out);
        assert_eq!(out, [5, 1, 0, 5, 1, 2]);
        assert_eq!(decode_method(&[], false), Ok(None));
        assert_eq!(decode_method(&[5], false), Ok(None));
        assert_eq!(decode_method(&[4], false), Err(Socks5Error::Version(4)));
        assert_eq!(decode_method(&[5, 0, 9], false), Ok(Some((0, 2))));
        assert_eq!(decode_method(&[5, 0xFF], true), Ok(Some((0xFF, 2))));
        // A server that skips the password we offered is not trusted.
        assert_eq!(
            decode_method(&[5, 0], true),
            Err(Socks5Error::UnofferedMethod(0))
        );
    }

    #[test]
    fn password_subnegotiation() {
        let mut out = Vec::new();
        encode_password("ann", "s3cret", &mut out);
        assert_eq!(out, b"\x01\x03ann\x06s3cret");
        let mut long = Vec::new();
        encode_password(&"u".repeat(300), "p", &mut long);
        assert_eq!(long[1], 255);
        assert_eq!(decode_password_status(&[1]), Ok(None));
        assert_eq!(decode_password_status(&[1, 0]), Ok(Some((true, 2))));
        assert_eq!(decode_password_status(&[1, 1]), Ok(Some((false, 2))));
        assert_eq!(decode_password_status(&[5, 0]), Ok(Some((true, 2))));
        assert_eq!(
            decode_password_status(&[0x48, 0x54]),
            Err(Socks5Error::Version(0x48))
        );
    }

    #[test]
    fn connect_requests() {
        let mut out = Vec::new();
        encode_connect(&Host::Name("example.test".into()), 443, &mut out);
        assert_eq!(out, b"\x05\x01\x00\x03\x0cexample.test\x01\xbb");
        out.clear();
        encode_connect(&Host::Ip("192.0.2.1".parse().expect("ip")), 80, &mut out);
        assert_eq!(out, [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]);
        out.clear();
        encode_connect(
            &Host::Ip("::ffff:192.0.2.1".parse().expect("ip")),
            80,
            &mut out,
        );
        assert_eq!(out, [5, 1, 0, 1, 192, 0, 2, 1, 0, 80]);
        out.clear();
        encode_connect(&Host::Ip("2001:db8::1".parse().expect("ip")), 1, &mut out);
        assert_eq!(out.len(), 4 + 16 + 2);
        assert_eq!(out[3], ATYP_V6);
    }

    #[test]
    fn replies_of_every_address_type_and_every_prefix() {
        let v4 = [5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90, b'X'];
        let mut v6 = vec![5, 5, 0, 4];
        v6.extend_from_slice(&[0; 15]);
        v6.extend_from_slice(&[1, 0, 22]);
        let name = b"\x05\x00\x00\x03\x04host\x00\x50".to_vec();
        let cases: [(&[u8], Reply, usize); 3] = [
            (&v4, (0, Some("127.0.0.1:8080".parse().expect("a"))), 10),
            (&v6, (5, Some("[::1]:22".parse().expect("a"))), 22),
            (&name, (0, None), 11),
        ];
        for (bytes, want, used) in cases {
            assert_eq!(decode_reply(bytes), Ok(Some((want, used))));
            for cut in 0..used {
                assert_eq!(decode_reply(&bytes[..cut]), Ok(None), "prefix {cut}");
            }
        }
        assert_eq!(
            decode_reply(b"HTTP/1.1 400"),
            Err(Socks5Error::Version(b'H'))
        );
        assert_eq!(decode_reply(&[5, 0, 1, 1]), Err(Socks5Error::Reserved(1)));
        assert_eq!(
            decode_reply(&[5, 0, 0, 9]),
            Err(Socks5Error::AddressType(9))
        );
        assert_eq!(reply_text(2), "connection not allowed by ruleset");
    }
}
