//! Just enough of a TLS ClientHello to route on: the server name (SNI, RFC 6066 section 3)
//! and the offered ALPN protocols (RFC 7301). Pure code over the bytes read so far, bounded:
//! the hello may arrive split across TLS records and TCP segments ([`Hello::Incomplete`]
//! until it is whole), and anything larger than the caller's limit is refused.
//!
//! Nothing is decrypted or changed: the proxy forwards the same bytes to the chosen server.

/// What the router needs from a ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloInfo {
    /// The `host_name` entry, lower-cased, without a trailing dot.
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    Incomplete,
    Done(HelloInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("ClientHello larger than the limit")]
    TooLarge,
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// Largest TLS plaintext record (RFC 8446 section 5.1).
const MAX_RECORD: usize = 16 * 1024;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// Parses the ClientHello at the start of `buf` (the raw bytes from the client), allowing at
/// most `max` bytes of records.
pub fn parse(buf: &[u8], max: usize) -> Result<Hello, HelloError> {
    // Reassemble the handshake message from as many records as it spans.
    let mut hs = Vec::new();
    let mut pos = 0;
    loop {
        if pos >= max {
            return Err(HelloError::TooLarge);
        }
        let Some(head) = buf.get(pos..pos + 5) else {
            // Check what is there of the first header, so garbage is refused at once.
            if pos == 0 && !buf.is_empty() && buf[0] != HANDSHAKE {
                return Err(HelloError::NotTls);
            }
            return Ok(Hello::Incomplete);
        };
        if head[0] != HANDSHAKE || head[1] != 3 {
            return Err(if pos == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed
            });
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(HelloError::Malformed);
        }
        if pos + 5 + len > max {
            return Err(HelloError::TooLarge);
        }
        let Some(body) = buf.get(pos + 5..pos + 5 + len) else {
            return Ok(Hello::Incomplete);
        };
        hs.extend_from_slice(body);
        pos += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != CLIENT_HELLO {
                return Err(HelloError::Malformed);
            }
            let want =
                4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if want > max {
                return Err(HelloError::TooLarge);
            }
            if hs.len() >= want {
                return parse_body(&hs[4..want]).map(Hello::Done);
            }
        }
    }
}

/// A cursor that answers `None` instead of reading past the end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.buf.get(..n)?, self.buf.get(n..)?);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one- or two-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.bytes(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }
}

fn parse_body(body: &[u8]) -> Result<HelloInfo, HelloError> {
    parse_fields(body).ok_or(HelloError::Malformed)?
}

fn parse_fields(body: &[u8]) -> Option<Result<HelloInfo, HelloError>> {
    let mut r = Reader { buf: body };
    let _version = r.u16()?;
    let _random = r.bytes(32)?;
    let session = r.vec8()?;
    let suites = r.vec16()?;
    let compression = r.vec8()?;
    if session.len() > 32 || suites.is_empty() || suites.len() % 2 != 0 || compression.is_empty() {
        return None;
    }
    let mut info = HelloInfo::default();
    if r.buf.is_empty() {
        return Some(Ok(info)); // no extensions at all
    }
    let mut exts = Reader { buf: r.vec16()? };
    if !r.buf.is_empty() {
        return None;
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.buf.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return None;
                }
                seen_sni = true;
                let mut list = Reader {
                    buf: Reader { buf: data }.vec16()?,
                };
                while !list.buf.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && info.sni.is_none() {
                        match host_name(name) {
                            Some(n) => info.sni = Some(n),
                            None => return None,
                        }
                    }
                }
            }
            EXT_ALPN => {
                if seen_alpn {
                    return None;
                }
                seen_alpn = true;
                let mut list = Reader {
                    buf: Reader { buf: data }.vec16()?,
                };
                while !list.buf.is_empty() {
                    let p = list.vec8()?;
                    if p.is_empty() {
                        return None;
                    }
                    info.alpn.push(p.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(Ok(info))
}

/// A DNS host name as SNI carries it: letters, digits, `-`, `_`, dots; lower-cased.
fn host_name(raw: &[u8]) -> Option<String> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && raw
            .split(|b| *b == b'.')
            .all(|l| !l.is_empty() && l.len() <= 63);
    ok.then(|| String::from_utf8_lossy(raw).to_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello with the given SNI and ALPN, split into records of at most `record` bytes.
    pub fn hello(sni: Option<&str>, alpn: &[&str], record: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0u8];
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name.as_bytes());
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            exts.extend_from_slice(&EXT_SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(&data);
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p.as_bytes());
            }
            let mut data = (list.len() as u16).to_be_bytes().to_vec();
            data.extend_from_slice(&list);
            exts.extend_from_slice(&EXT_ALPN.to_be_bytes());
            exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            exts.extend_from_slice(&data);
        }
        // An unknown extension, as real clients send many.
        exts.extend_from_slice(&[0xfa, 0xfa, 0, 1, 0]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in hs.chunks(record) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn sni_and_alpn_from_one_or_many_records() {
        for record in [16384, 7, 1] {
            let wire = hello(Some("A.Test."), &["h2", "http/1.1"], record);
            for cut in 0..wire.len() {
                assert_eq!(
                    parse(&wire[..cut], 1 << 16),
                    Ok(Hello::Incomplete),
                    "cut {cut}"
                );
            }
            assert_eq!(
                parse(&wire, 1 << 16),
                Ok(Hello::Done(HelloInfo {
                    sni: Some("a.test".into()),
                    alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                }))
            );
        }
        assert_eq!(
            parse(&hello(None, &[], 100), 4096),
            Ok(Hello::Done(HelloInfo::default()))
        );
    }

    #[test]
    fn bad_hellos_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n", 4096), Err(HelloError::NotTls));
        assert_eq!(parse(b"S", 4096), Err(HelloError::NotTls));
        assert_eq!(parse(b"SSH-2.0-x\r\n", 4096), Err(HelloError::NotTls));
        // Larger than the limit, whole or announced.
        let big = hello(Some(&"a.".repeat(120)), &[], 16384);
        let big = [big.as_slice(), &[]].concat();
        assert_eq!(parse(&big, 64), Err(HelloError::TooLarge));
        let mut wire = hello(Some("a.test"), &[], 16384);
        wire[6] = 0x7f; // handshake length ~8 MiB
        assert_eq!(parse(&wire, 16384), Err(HelloError::TooLarge));
        // Not a ClientHello (a ServerHello), a bad name, a duplicate extension.
        let mut wire = hello(Some("a.test"), &[], 16384);
        wire[5] = 2;
        assert_eq!(parse(&wire, 16384), Err(HelloError::Malformed));
        let wire = hello(Some("a b.test"), &[], 16384);
        assert_eq!(parse(&wire, 16384), Err(HelloError::Malformed));
        let wire = hello(Some("a..test"), &[], 16384);
        assert_eq!(parse(&wire, 16384), Err(HelloError::Malformed));
        // A record of the wrong type after the first.
        let mut wire = hello(Some("a.test"), &[], 10);
        wire[15] = 23;
        assert_eq!(parse(&wire, 16384), Err(HelloError::Malformed));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x5eed_c0de);
        let seeds = [
            hello(Some("a.test"), &["h2"], 16384),
            hello(Some("b.example.com"), &[], 13),
            hello(None, &["x"], 3),
        ];
        for round in 0..20_000 {
            let buf: Vec<u8> = if round % 3 == 0 {
                let n = rng.usize(0..300);
                let mut b: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                if let Some(first) = b.first_mut() {
                    *first = HANDSHAKE;
                }
                b
            } else {
                let mut b = seeds[rng.usize(0..seeds.len())].clone();
                for _ in 0..rng.usize(1..5) {
                    let i = rng.usize(0..b.len());
                    b[i] = rng.u8(..);
                }
                b.truncate(rng.usize(0..=b.len()));
                b
            };
            let max = rng.usize(5..400);
            if let Ok(Hello::Done(info)) = parse(&buf, max) {
                assert!(info.sni.as_ref().is_none_or(|s| s.len() <= 253));
            }
        }
    }
}
