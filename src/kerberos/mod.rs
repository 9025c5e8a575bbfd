//! Kerberos logins: SOCKS5 GSSAPI (RFC 1961) and HTTP Negotiate (SPNEGO, RFC 4559), through
//! the system's GSSAPI library (MIT krb5) with the `gssapi` cargo feature.
//!
//! Pure parts here, unit-tested without sockets: the RFC 1961 message framing
//! ([`decode_frame`], [`encode_frame`], and [`decode_datagram`] for UDP), the protection-level
//! choice ([`Protection::choose`]) and check ([`Protection::admits`]),
//! the `Negotiate` header value ([`negotiate_token`]) and the principal-to-user mapping
//! ([`map_principal`]). The GSSAPI calls are in [`gss`] (a stub without the feature, which
//! refuses every context); [`socks`] drives RFC 1961 on a SOCKS connection.
//!
//! The service keytab is found the system's way (`KRB5_KTNAME`, else the default keytab) and
//! the realm configuration from `KRB5_CONFIG`; `[policy.kerberos] keytab` sets `KRB5_KTNAME`
//! at start-up.

use base64::Engine as _;

pub mod gss;
pub mod socks;

/// RFC 1961 section 3: a token's length is two octets, so no token is longer.
pub const MAX_TOKEN: usize = u16::MAX as usize;

/// RFC 1961 message types.
pub const MTYP_AUTH: u8 = 1;
pub const MTYP_PROTECTION: u8 = 2;
pub const MTYP_DATA: u8 = 3;
/// The failure message `[1, 0xff]` (no length, no token).
pub const MTYP_ABORT: u8 = 0xff;

/// One RFC 1961 message: `ver(1)=1 | mtyp(1) | len(2, big-endian) | token(len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub mtyp: u8,
    pub token: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("GSSAPI message incomplete")]
    Incomplete,
    #[error("GSSAPI message version {0}, not 1")]
    Version(u8),
    #[error("GSSAPI message type {0:#04x} where {1:#04x} was expected")]
    Type(u8, u8),
    #[error("the client aborted the GSSAPI exchange")]
    Aborted,
    #[error("GSSAPI token longer than {0} bytes")]
    TooLong(usize),
    #[error("{0} bytes after the GSSAPI message in one datagram")]
    Trailing(usize),
}

/// Decodes one message of type `want` from `buf`: the frame and the bytes used. `max` bounds
/// the token (at most [`MAX_TOKEN`]); a longer one is refused as soon as its length is read.
/// The client's abort `[1, 0xff]` is [`FrameError::Aborted`].
pub fn decode_frame(buf: &[u8], want: u8, max: usize) -> Result<(Frame, usize), FrameError> {
    let (token, used) = frame_token(buf, want, max)?;
    Ok((
        Frame {
            mtyp: want,
            token: token.to_vec(),
        },
        used,
    ))
}

/// [`decode_frame`] without the copy: the token, borrowed, and the bytes used.
fn frame_token(buf: &[u8], want: u8, max: usize) -> Result<(&[u8], usize), FrameError> {
    let Some(&ver) = buf.first() else {
        return Err(FrameError::Incomplete);
    };
    if ver != 1 {
        return Err(FrameError::Version(ver));
    }
    let Some(&mtyp) = buf.get(1) else {
        return Err(FrameError::Incomplete);
    };
    if mtyp == MTYP_ABORT {
        return Err(FrameError::Aborted);
    }
    if mtyp != want {
        return Err(FrameError::Type(mtyp, want));
    }
    let Some(len) = buf.get(2..4) else {
        return Err(FrameError::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if len > max.min(MAX_TOKEN) {
        return Err(FrameError::TooLong(max.min(MAX_TOKEN)));
    }
    match buf.get(4..4 + len) {
        Some(token) => Ok((token, 4 + len)),
        None => Err(FrameError::Incomplete),
    }
}

/// RFC 1961 section 5 for UDP: "The token is produced by encapsulating an entire SOCKS V5
/// request or response, or UDP datagram" -- a datagram between client and proxy is exactly
/// one data message `[1, 3, len(2), token]`, nothing before or after it. The token.
pub fn decode_datagram(datagram: &[u8]) -> Result<&[u8], FrameError> {
    let (token, used) = frame_token(datagram, MTYP_DATA, MAX_TOKEN)?;
    match datagram.len() - used {
        0 => Ok(token),
        extra => Err(FrameError::Trailing(extra)),
    }
}

/// Whether a Kerberos wrap token carries its data encrypted: the `Sealed` flag of an RFC 4121
/// token (section 4.2.6.2: `05 04`, flags, where 0x02 is Sealed), or the SEAL_ALG of an RFC
/// 1964 token (section 1.2.2: `0xffff` is none) inside its `0x60` framing. `None` for a token
/// of another form (another mechanism's).
///
/// Read from the header before `gss_unwrap`, which then authenticates it (both token forms
/// cover the header with their checksum), so the answer only ever refuses a message.
pub fn wrap_token_sealed(token: &[u8]) -> Option<bool> {
    if let [0x05, 0x04, flags, ..] = token {
        return Some(flags & 0x02 != 0);
    }
    // RFC 1964: 0x60, a DER length, the Kerberos v5 mechanism OID, TOK_ID 02 01, SGN_ALG,
    // SEAL_ALG.
    const KRB5_OID: [u8; 11] = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
    ];
    let rest = token.strip_prefix(&[0x60])?;
    let (&first, rest) = rest.split_first()?;
    let rest = match first {
        0..=0x7f => rest,
        0x81..=0x84 => rest.get(usize::from(first & 0x7f)..)?,
        _ => return None,
    };
    let rest = rest.strip_prefix(&KRB5_OID)?;
    match rest {
        [0x02, 0x01, _, _, seal_hi, seal_lo, ..] => Some([*seal_hi, *seal_lo] != [0xff, 0xff]),
        _ => None,
    }
}

/// Appends one message; `None` when the token does not fit the two-octet length.
pub fn encode_frame(mtyp: u8, token: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let len = u16::try_from(token.len()).ok()?;
    out.extend_from_slice(&[1, mtyp]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(token);
    Some(())
}

/// The failure message the server sends when the context cannot be established.
pub const ABORT: [u8; 2] = [1, MTYP_ABORT];

/// RFC 1961 section 4 protection levels (`0`, no protection, as Dante and curl use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// Nothing is wrapped after the negotiation.
    None = 0,
    /// Every later message is wrapped for integrity (gss_wrap without confidentiality).
    Integrity = 1,
    /// Every later message is wrapped and encrypted.
    Confidentiality = 2,
}

impl Protection {
    pub fn parse(s: &str) -> Option<Protection> {
        match s {
            "none" => Some(Protection::None),
            "integrity" => Some(Protection::Integrity),
            "confidentiality" => Some(Protection::Confidentiality),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protection::None => "none",
            Protection::Integrity => "integrity",
            Protection::Confidentiality => "confidentiality",
        }
    }

    /// The server's choice for the client's requested level: at least `minimum`, and at
    /// least what the client asked for. Per-message selection (3) is not offered: such a
    /// client gets confidentiality. `None` for a level that does not exist.
    pub fn choose(requested: u8, minimum: Protection) -> Option<Protection> {
        let asked = match requested {
            0 => Protection::None,
            1 => Protection::Integrity,
            2 | 3 => Protection::Confidentiality,
            _ => return None,
        };
        Some(asked.max(minimum))
    }

    pub fn wraps(self) -> bool {
        self != Protection::None
    }

    /// Whether a client's wrap token meets this negotiated level: under confidentiality, a
    /// Kerberos token that is not encrypted is refused (RFC 1961 section 4: the level applies
    /// to every later message). A token of a form [`wrap_token_sealed`] cannot read is let
    /// through to `gss_unwrap`.
    pub fn admits(self, token: &[u8]) -> bool {
        self != Protection::Confidentiality || wrap_token_sealed(token) != Some(false)
    }
}

/// How a principal becomes a user name the policy sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RealmMapping {
    /// `alice@EXAMPLE.ORG` -> `alice` (any realm).
    #[default]
    Strip,
    /// The full principal is the name.
    Keep,
    /// Only this realm is stripped; principals of other realms keep theirs.
    StripOnly(String),
}

/// The user name of `principal` under `mapping`; `None` for a name the policy cannot take
/// (empty, control characters, or a user part that is not a valid user name).
pub fn map_principal(principal: &str, mapping: &RealmMapping) -> Option<String> {
    let (user, realm) = match principal.rsplit_once('@') {
        Some((u, r)) => (u, Some(r)),
        None => (principal, None),
    };
    if user.is_empty() || principal.chars().any(|c| c.is_control()) {
        return None;
    }
    let strip = match (mapping, realm) {
        (_, None) => true,
        (RealmMapping::Strip, _) => true,
        (RealmMapping::Keep, _) => false,
        (RealmMapping::StripOnly(r), Some(realm)) => r == realm,
    };
    let name = if strip { user } else { principal };
    crate::policy::users::check_user_name(name).ok()?;
    Some(name.to_string())
}

/// `Proxy-Authorization: Negotiate <base64>`: the decoded token; `None` for another scheme
/// or a value that is not base64 (or longer than `max` decoded bytes).
pub fn negotiate_token(value: &str, max: usize) -> Option<Vec<u8>> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("negotiate") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() || token.len() > max.div_ceil(3) * 4 + 4 {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= max)
}

/// `Negotiate <base64>` for a `Proxy-Authenticate` header (bare `Negotiate` without a token).
pub fn negotiate_header(token: Option<&[u8]>) -> String {
    match token.filter(|t| !t.is_empty()) {
        Some(t) => format!(
            "Negotiate {}",
            base64::engine::general_purpose::STANDARD.encode(t)
        ),
        None => "Negotiate".to_string(),
    }
}

/// The `Proxy-Authenticate` values of a 407, in the listener's order; a listener with no
/// method listed (`auth = true`) offers Basic.
pub fn offers(
    negotiate: bool,
    basic: bool,
    negotiate_first: bool,
    basic_value: &str,
) -> Vec<String> {
    let mut v = Vec::with_capacity(2);
    if basic || !negotiate {
        v.push(basic_value.to_string());
    }
    if negotiate {
        let at = if negotiate_first { 0 } else { v.len() };
        v.insert(at, negotiate_header(None));
    }
    v
}

/// Every decoder of bytes a client controls (the RFC 1961 frame of each type, a datagram, a
/// wrap token's header, a `Negotiate` header value) over the same bytes, checking what a
/// caller relies on. The fuzz target `kerberos_decoders` and the property test run this.
pub fn check_all_decoders(data: &[u8]) {
    for want in [MTYP_AUTH, MTYP_PROTECTION, MTYP_DATA] {
        for max in [0, 16, MAX_TOKEN] {
            if let Ok((frame, used)) = decode_frame(data, want, max) {
                assert!(used <= data.len() && used == 4 + frame.token.len());
                assert!(frame.token.len() <= max && frame.mtyp == want);
                assert_eq!(&data[4..used], frame.token.as_slice());
            }
        }
    }
    if let Ok(token) = decode_datagram(data) {
        assert_eq!(
            token,
            &data[4..],
            "a datagram is one message, nothing after it"
        );
        let mut again = Vec::new();
        encode_frame(MTYP_DATA, token, &mut again).expect("a decoded token fits");
        assert_eq!(again, data, "round trip");
    }
    let sealed = wrap_token_sealed(data);
    assert!(Protection::Integrity.admits(data) && Protection::None.admits(data));
    assert_eq!(
        Protection::Confidentiality.admits(data),
        sealed != Some(false)
    );
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(token) = negotiate_token(text, 64) {
            assert!(!token.is_empty() && token.len() <= 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_with_bounds() {
        let mut out = Vec::new();
        encode_frame(MTYP_AUTH, b"tok", &mut out).expect("fits");
        assert_eq!(out, [1, 1, 0, 3, b't', b'o', b'k']);
        out.extend_from_slice(b"next");
        let (f, used) = decode_frame(&out, MTYP_AUTH, MAX_TOKEN).expect("frame");
        assert_eq!((f.mtyp, f.token.as_slice(), used), (1, &b"tok"[..], 7));
        for cut in 0..7 {
            assert_eq!(
                decode_frame(&out[..cut], MTYP_AUTH, MAX_TOKEN),
                Err(FrameError::Incomplete),
                "{cut}"
            );
        }
        assert_eq!(
            decode_frame(&[5, 1, 0, 0], 1, MAX_TOKEN),
            Err(FrameError::Version(5))
        );
        assert_eq!(
            decode_frame(&[1, 3], 1, MAX_TOKEN),
            Err(FrameError::Type(3, 1))
        );
        assert_eq!(
            decode_frame(&[1, 0xff], 1, MAX_TOKEN),
            Err(FrameError::Aborted)
        );
        // The length alone refuses an oversized token: nothing more is waited for.
        assert_eq!(
            decode_frame(&[1, 1, 0x40, 0x01], 1, 16 * 1024),
            Err(FrameError::TooLong(16 * 1024))
        );
        let empty = decode_frame(&[1, 2, 0, 0], 2, 10).expect("empty token");
        assert_eq!(empty.0.token, Vec::<u8>::new());
        assert!(encode_frame(3, &vec![0; MAX_TOKEN + 1], &mut Vec::new()).is_none());
        let mut big = Vec::new();
        encode_frame(3, &vec![7; MAX_TOKEN], &mut big).expect("the largest fits");
        assert_eq!(
            decode_frame(&big, 3, MAX_TOKEN).expect("max").1,
            MAX_TOKEN + 4
        );
    }

    #[test]
    fn a_datagram_is_exactly_one_data_message() {
        let mut d = Vec::new();
        encode_frame(MTYP_DATA, b"wrapped", &mut d).expect("fits");
        assert_eq!(decode_datagram(&d), Ok(&b"wrapped"[..]));
        let mut longer = d.clone();
        longer.extend_from_slice(b"xy");
        assert_eq!(decode_datagram(&longer), Err(FrameError::Trailing(2)));
        for cut in 0..d.len() {
            assert_eq!(
                decode_datagram(&d[..cut]),
                Err(FrameError::Incomplete),
                "{cut}"
            );
        }
        assert_eq!(decode_datagram(&[1, 1, 0, 0]), Err(FrameError::Type(1, 3)));
        assert_eq!(
            decode_datagram(&[0, 0, 0, 1, 127, 0, 0, 1, 0, 7]),
            Err(FrameError::Version(0)),
            "a plain SOCKS UDP header is not a message"
        );
        assert_eq!(decode_datagram(&[1, 0xff]), Err(FrameError::Aborted));
        assert_eq!(decode_datagram(&[1, 3, 0, 0]), Ok(&b""[..]));
    }

    #[test]
    fn sealed_flag_of_wrap_tokens() {
        // RFC 4121 wrap tokens: 05 04, flags (0x02 Sealed), filler ff, EC, RRC, SND_SEQ.
        let cfx = |flags: u8| [&[0x05, 0x04, flags, 0xff][..], &[0; 12]].concat();
        assert_eq!(wrap_token_sealed(&cfx(0x02)), Some(true));
        assert_eq!(wrap_token_sealed(&cfx(0x06)), Some(true));
        assert_eq!(wrap_token_sealed(&cfx(0x04)), Some(false));
        assert_eq!(wrap_token_sealed(&cfx(0x01)), Some(false));
        // RFC 1964 wrap tokens: 60 len OID, 02 01, SGN_ALG, SEAL_ALG (ffff: none).
        let oid = [
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
        ];
        let v1 = |len: &[u8], seal: [u8; 2]| {
            [
                &[0x60][..],
                len,
                &oid,
                &[0x02, 0x01, 0x00, 0x00],
                &seal,
                &[0xff, 0xff],
                &[0; 24],
            ]
            .concat()
        };
        assert_eq!(wrap_token_sealed(&v1(&[0x2b], [0x10, 0x00])), Some(true));
        assert_eq!(wrap_token_sealed(&v1(&[0x2b], [0xff, 0xff])), Some(false));
        assert_eq!(
            wrap_token_sealed(&v1(&[0x82, 0x01, 0x00], [0x00, 0x00])),
            Some(true),
            "long-form length"
        );
        // Other forms, or cut short: not known.
        assert_eq!(wrap_token_sealed(&[0x05]), None);
        assert_eq!(wrap_token_sealed(&[0x04, 0x04, 0x00]), None);
        assert_eq!(wrap_token_sealed(&v1(&[0x2b], [0xff, 0xff])[..16]), None);
        assert_eq!(wrap_token_sealed(&[0x60, 0x85, 0, 0, 0, 0, 0]), None);
        assert_eq!(wrap_token_sealed(b""), None);
        let mut other_oid = v1(&[0x2b], [0xff, 0xff]);
        other_oid[12] = 0x03;
        assert_eq!(wrap_token_sealed(&other_oid), None);
        // The negotiated level decides.
        let (conf, integ) = (Protection::Confidentiality, Protection::Integrity);
        assert!(!conf.admits(&cfx(0x00)));
        assert!(conf.admits(&cfx(0x02)));
        assert!(conf.admits(b"another mechanism's token"));
        assert!(integ.admits(&cfx(0x00)));
        assert!(integ.admits(&cfx(0x02)), "more than asked for is fine");
    }

    /// The fuzz target's checks over random bytes and over mutations of valid messages.
    #[test]
    fn random_inputs_never_panic() {
        let mut cfx = vec![1, 3, 0, 20, 0x05, 0x04, 0x06, 0xff];
        cfx.extend_from_slice(&[0; 16]);
        let seeds: Vec<Vec<u8>> = vec![
            vec![1, 1, 0, 3, b't', b'o', b'k'],
            vec![1, 2, 0, 1, 2],
            vec![1, 0xff],
            cfx,
            [
                &[1u8, 3, 0, 30, 0x60, 0x1c][..],
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
                ],
                &[0x02, 0x01, 0, 0, 0xff, 0xff],
                &[0; 13],
            ]
            .concat(),
            b"Negotiate YWJjZA==".to_vec(),
        ];
        let mut x: u64 = 0x6B72_6235_6765_7373;
        let mut next = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        for _ in 0..20_000 {
            let mut data = if next() % 3 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                seeds[next() as usize % seeds.len()].clone()
            };
            for _ in 0..next() % 4 {
                if data.is_empty() {
                    break;
                }
                let i = next() as usize % data.len();
                match next() % 3 {
                    0 => data[i] = next() as u8,
                    1 => data.truncate(i),
                    _ => data.insert(i, next() as u8),
                }
            }
            check_all_decoders(&data);
            // The token alone, as a wrap token (past the frame header).
            check_all_decoders(data.get(4..).unwrap_or_default());
        }
    }

    #[test]
    fn protection_is_at_least_the_minimum() {
        use Protection::*;
        assert_eq!(Protection::choose(0, None), Some(None));
        assert_eq!(Protection::choose(1, None), Some(Integrity));
        assert_eq!(Protection::choose(2, None), Some(Confidentiality));
        assert_eq!(Protection::choose(3, None), Some(Confidentiality));
        assert_eq!(Protection::choose(0, Integrity), Some(Integrity));
        assert_eq!(
            Protection::choose(1, Confidentiality),
            Some(Confidentiality)
        );
        assert_eq!(Protection::choose(4, None), Option::None);
        assert_eq!(Protection::parse("integrity"), Some(Integrity));
        assert_eq!(Protection::parse("clear"), Option::None);
    }

    #[test]
    fn principals_map_to_user_names() {
        let strip = RealmMapping::Strip;
        assert_eq!(
            map_principal("alice@EXAMPLE.ORG", &strip).as_deref(),
            Some("alice")
        );
        assert_eq!(map_principal("alice", &strip).as_deref(), Some("alice"));
        assert_eq!(
            map_principal("alice@EXAMPLE.ORG", &RealmMapping::Keep).as_deref(),
            Some("alice@EXAMPLE.ORG")
        );
        let only = RealmMapping::StripOnly("EXAMPLE.ORG".into());
        assert_eq!(
            map_principal("bob@EXAMPLE.ORG", &only).as_deref(),
            Some("bob")
        );
        assert_eq!(
            map_principal("bob@OTHER.ORG", &only).as_deref(),
            Some("bob@OTHER.ORG")
        );
        assert_eq!(map_principal("@EXAMPLE.ORG", &strip), None);
        assert_eq!(map_principal("a\nb@R", &strip), None);
        assert_eq!(map_principal("a:b@R", &strip), None, "not a user name");
    }

    #[test]
    fn offers_follow_the_listener() {
        let b = "Basic realm=\"r\"";
        assert_eq!(offers(false, true, false, b), [b]);
        assert_eq!(offers(true, false, true, b), ["Negotiate"]);
        assert_eq!(offers(true, true, true, b), ["Negotiate", b]);
        assert_eq!(offers(true, true, false, b), [b, "Negotiate"]);
    }

    #[test]
    fn negotiate_values() {
        assert_eq!(
            negotiate_token("Negotiate YWJj", 100),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            negotiate_token("negotiate  YWJj ", 100),
            Some(b"abc".to_vec())
        );
        assert_eq!(negotiate_token("Basic YWJj", 100), None);
        assert_eq!(negotiate_token("Negotiate", 100), None);
        assert_eq!(negotiate_token("Negotiate !!!", 100), None);
        assert_eq!(negotiate_token("Negotiate YWJj", 2), None, "over the bound");
        assert_eq!(negotiate_header(Some(b"abc")), "Negotiate YWJj");
        assert_eq!(negotiate_header(None), "Negotiate");
    }
}
