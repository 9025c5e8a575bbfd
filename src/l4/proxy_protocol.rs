//! The PROXY protocol (HAProxy, versions 1 and 2) as pure code over bytes: the header a load
//! balancer puts in front of a TCP stream to say who the client is.
//!
//! [`decode`] is fed the bytes read so far and answers "need more", a whole header (and how
//! many bytes it took), or an error; it never reads past the header, so what follows is the
//! client's own stream. [`encode_v1`] / [`encode_v2`] write the header Gatehouse sends to
//! servers.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 line, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;
/// Longest v2 address block plus TLVs accepted (the spec allows 64 KiB of TLVs; load
/// balancers send a few hundred bytes at most).
const V2_MAX_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The real client (source) and the address it connected to (destination).
    Proxied { src: SocketAddr, dst: SocketAddr },
    /// v2 LOCAL (a health check from the balancer itself) or v1 UNKNOWN / an unsupported
    /// family: use the connection's own addresses.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// A header of `len` bytes.
    Done { header: Header, len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY protocol v1 line")]
    BadV1,
    #[error("malformed PROXY protocol v2 header")]
    BadV2,
    #[error("PROXY protocol header too long")]
    TooLong,
}

/// Decodes a header at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Decoded, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return decode_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return decode_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn decode_v1(buf: &[u8]) -> Result<Decoded, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else if window.contains(&b'\n') {
            Err(ProxyError::BadV1)
        } else {
            Ok(Decoded::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::BadV1)?;
    let len = end + 2;
    let parts: Vec<&str> = line.split(' ').collect();
    let header = match parts.as_slice() {
        ["UNKNOWN", ..] => Header::Local,
        [fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| ProxyError::BadV1)?;
            let dst: IpAddr = dst.parse().map_err(|_| ProxyError::BadV1)?;
            let v4 = *fam == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ProxyError::BadV1);
            }
            Header::Proxied {
                src: SocketAddr::new(src, port(sport)?),
                dst: SocketAddr::new(dst, port(dport)?),
            }
        }
        _ => return Err(ProxyError::BadV1),
    };
    Ok(Decoded::Done { header, len })
}

/// A decimal port: digits only, no leading zero (spec), at most 65535.
fn port(s: &str) -> Result<u16, ProxyError> {
    let ok = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !ok {
        return Err(ProxyError::BadV1);
    }
    s.parse().map_err(|_| ProxyError::BadV1)
}

fn decode_v2(buf: &[u8]) -> Result<Decoded, ProxyError> {
    if buf.len() < 16 {
        return Ok(Decoded::Incomplete);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    if body_len > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(Decoded::Incomplete);
    }
    let body = &buf[16..len];
    let header = match ver_cmd & 0x0f {
        0 => Header::Local,
        1 => match fam {
            // TCP or UDP over IPv4.
            0x11 | 0x12 => {
                let a = body.get(..12).ok_or(ProxyError::BadV2)?;
                let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
                Header::Proxied {
                    src: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                    dst: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
                }
            }
            0x21 | 0x22 => {
                let a = body.get(..36).ok_or(ProxyError::BadV2)?;
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&a[o..o + 16]);
                    IpAddr::from(Ipv6Addr::from(b))
                };
                Header::Proxied {
                    src: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                    dst: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
                }
            }
            // UNSPEC, UNIX: no address Gatehouse can use.
            0x00 | 0x31 | 0x32 => Header::Local,
            _ => return Err(ProxyError::BadV2),
        },
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Decoded::Done { header, len })
}

/// Both addresses in one family: IPv4 is mapped into IPv6 when the other side is IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let six = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (src, dst) = (unmap(src), unmap(dst));
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (six(src), six(dst))
    }
}

/// The header of version `v`: [`encode_v1`] or [`encode_v2`].
pub fn encode(v: crate::config::ProxyVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match v {
        crate::config::ProxyVersion::V1 => encode_v1(src, dst),
        crate::config::ProxyVersion::V2 => encode_v2(src, dst),
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
pub fn encode_v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A v2 PROXY command over TCP, no TLVs.
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6.octets(),
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s));
            out.extend_from_slice(&v6(d));
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// A header that names no client: v1 `PROXY UNKNOWN`, v2 LOCAL (what a health check from
/// the proxy itself sends; the server uses the connection's own addresses).
pub fn encode_local(v2: bool) -> Vec<u8> {
    if !v2 {
        return b"PROXY UNKNOWN\r\n".to_vec();
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn local_headers_decode_as_local() {
        for v2 in [false, true] {
            let wire = encode_local(v2);
            let len = wire.len();
            assert_eq!(
                decode(&wire),
                Ok(Decoded::Done {
                    header: Header::Local,
                    len
                })
            );
        }
    }

    #[test]
    fn v1_round_trip_and_every_prefix_incomplete() {
        for (src, dst) in [
            (sa("192.0.2.1:5000"), sa("198.51.100.2:443")),
            (sa("[2001:db8::1]:1"), sa("[2001:db8::2]:65535")),
        ] {
            let wire = encode_v1(src, dst);
            for cut in 0..wire.len() {
                assert_eq!(decode(&wire[..cut]), Ok(Decoded::Incomplete), "cut {cut}");
            }
            let mut more = wire.clone();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(
                decode(&more),
                Ok(Decoded::Done {
                    header: Header::Proxied { src, dst },
                    len: wire.len()
                })
            );
        }
        assert_eq!(
            encode_v1(sa("[::ffff:10.0.0.1]:1"), sa("10.0.0.2:2")),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
        );
    }

    #[test]
    fn v2_round_trip_and_every_prefix_incomplete() {
        for (src, dst) in [
            (sa("192.0.2.1:5000"), sa("198.51.100.2:443")),
            (sa("[2001:db8::1]:1"), sa("10.0.0.1:2")),
        ] {
            let wire = encode_v2(src, dst);
            for cut in 0..wire.len() {
                assert_eq!(decode(&wire[..cut]), Ok(Decoded::Incomplete), "cut {cut}");
            }
            let Ok(Decoded::Done {
                header: Header::Proxied { src: s, dst: d },
                len,
            }) = decode(&wire)
            else {
                panic!("decoded")
            };
            assert_eq!(len, wire.len());
            assert_eq!(s.port(), src.port());
            assert_eq!(d.port(), dst.port());
        }
    }

    #[test]
    fn v1_unknown_and_v2_local() {
        assert_eq!(
            decode(b"PROXY UNKNOWN\r\nrest"),
            Ok(Decoded::Done {
                header: Header::Local,
                len: 15
            })
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 3, 1, 2, 3]);
        assert_eq!(
            decode(&local),
            Ok(Decoded::Done {
                header: Header::Local,
                len: 19
            })
        );
        // TLVs after the addresses are skipped.
        let mut tlv = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        tlv[15] = 12 + 4;
        tlv.extend_from_slice(&[0x04, 0, 1, 0xaa]);
        assert!(matches!(decode(&tlv), Ok(Decoded::Done { len: 32, .. })));
    }

    #[test]
    fn bad_headers_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(decode(&long), Err(ProxyError::TooLong));
        let mut v = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        v[12] = 0x11; // version 1 in a v2 header
        assert_eq!(decode(&v), Err(ProxyError::BadV2));
        let mut v = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        v[12] = 0x22; // command 2
        assert_eq!(decode(&v), Err(ProxyError::BadV2));
        let mut v = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        v[15] = 4; // too short for IPv4 addresses
        assert_eq!(decode(&v), Err(ProxyError::BadV2));
        let mut v = encode_v2(sa("1.2.3.4:5"), sa("5.6.7.8:9"));
        v[14] = 0xff; // 65 KiB of TLVs
        assert_eq!(decode(&v), Err(ProxyError::TooLong));
        assert_eq!(decode(b"PRO"), Ok(Decoded::Incomplete));
        assert_eq!(decode(b"\r\n\r\n"), Ok(Decoded::Incomplete));
        assert_eq!(decode(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
    }

    /// Seeded random input and mutations of valid headers: never a panic, never a length
    /// past the input, and a decoder that answers the same whatever follows a whole header.
    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9);
        let seeds = [
            encode_v1(sa("192.0.2.1:5000"), sa("198.51.100.2:443")),
            encode_v2(sa("192.0.2.1:5000"), sa("198.51.100.2:443")),
            encode_v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2")),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ];
        for round in 0..20_000 {
            let buf: Vec<u8> = if round % 2 == 0 {
                let n = rng.usize(0..200);
                (0..n).map(|_| rng.u8(..)).collect()
            } else {
                let mut b = seeds[rng.usize(0..seeds.len())].clone();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(0..b.len());
                    b[i] = rng.u8(..);
                }
                b.truncate(rng.usize(0..=b.len()));
                b
            };
            if let Ok(Decoded::Done { len, header }) = decode(&buf) {
                assert!(len <= buf.len());
                let mut longer = buf.clone();
                longer.extend_from_slice(b"trailing");
                assert_eq!(decode(&longer), Ok(Decoded::Done { len, header }));
            }
        }
    }
}
