//! Unit tests for the SOCKS codec: one group per message, then a seeded random sweep that runs
//! the same checks as the fuzz target.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Every strict prefix of a valid message is `Incomplete`.
fn prefixes_incomplete<T: std::fmt::Debug>(msg: &[u8], decode: fn(&[u8]) -> Decoded<T>) {
    for cut in 0..msg.len() {
        assert_eq!(
            decode(&msg[..cut]).map(|_| ()),
            Err(DecodeError::Incomplete),
            "prefix {cut} of {msg:?}"
        );
    }
}

#[test]
fn greeting() {
    let msg = [5, 2, 0, 2, 0xAA];
    let (g, used) = decode_greeting(&msg).expect("valid");
    assert_eq!(g.methods, [0, 2]);
    assert_eq!(used, 4, "trailing bytes are left for the next message");
    prefixes_incomplete(&msg[..4], decode_greeting);
    assert_eq!(decode_greeting(&[5, 0]), Err(Malformed::NoMethods.into()));
    assert_eq!(decode_greeting(&[4]), Err(Malformed::Version(4).into()));
    assert_eq!(
        decode_greeting(&[0x47, 0x45]),
        Err(Malformed::Version(0x47).into())
    );
    let mut out = Vec::new();
    encode_method(METHOD_NO_ACCEPTABLE, &mut out);
    assert_eq!(out, [5, 0xFF]);
}

#[test]
fn credentials() {
    let msg = [1, 3, b'b', b'o', b'b', 2, b'p', b'w'];
    let (c, used) = decode_credentials(&msg).expect("valid");
    assert_eq!(
        (c.user.as_slice(), c.password.as_slice(), used),
        (&b"bob"[..], &b"pw"[..], 8)
    );
    assert!(!format!("{c:?}").contains("pw"), "Debug masks the password");
    prefixes_incomplete(&msg, decode_credentials);
    assert_eq!(
        decode_credentials(&[1, 0]),
        Err(Malformed::EmptyCredential.into())
    );
    assert_eq!(
        decode_credentials(&[1, 1, b'a', 0]),
        Err(Malformed::EmptyCredential.into())
    );
    assert_eq!(
        decode_credentials(&[5, 1]),
        Err(Malformed::Version(5).into())
    );
    let mut out = Vec::new();
    encode_auth_status(false, &mut out);
    assert_eq!(out, [1, 1]);
}

#[test]
fn request_every_address_type() {
    let v4 = [5, 1, 0, 1, 10, 0, 0, 1, 0x01, 0xBB];
    let (r, used) = decode_request(&v4).expect("v4");
    assert_eq!((r.command, used), (Command::Connect, 10));
    assert_eq!(
        r.target,
        Target {
            host: Host::Ip(ip("10.0.0.1")),
            port: 443
        }
    );
    prefixes_incomplete(&v4, decode_request);

    let mut v6 = vec![5, 2, 0, 4];
    v6.extend_from_slice(
        &ip("2001:db8::1")
            .to_string()
            .parse::<Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    v6.extend_from_slice(&[0, 80]);
    let (r, _) = decode_request(&v6).expect("v6");
    assert_eq!(r.command, Command::Bind);
    assert_eq!(r.target.host, Host::Ip(ip("2001:db8::1")));
    prefixes_incomplete(&v6, decode_request);

    let mut name = vec![5, 3, 0, 3, 11];
    name.extend_from_slice(b"Example.COM");
    name.extend_from_slice(&[0, 53]);
    let (r, _) = decode_request(&name).expect("name");
    assert_eq!(r.command, Command::UdpAssociate);
    assert_eq!(
        r.target,
        Target {
            host: Host::Name("example.com".into()),
            port: 53
        }
    );
    prefixes_incomplete(&name, decode_request);
}

#[test]
fn request_rejects_bad_fields_early() {
    assert_eq!(decode_request(&[5, 9]), Err(Malformed::Command(9).into()));
    assert_eq!(
        decode_request(&[5, 1, 1]),
        Err(Malformed::Reserved(1).into())
    );
    assert_eq!(
        decode_request(&[5, 1, 0, 7]),
        Err(Malformed::AddressType(7).into())
    );
    assert_eq!(
        decode_request(&[5, 1, 0, 3, 0]),
        Err(Malformed::Domain.into())
    );
    assert_eq!(
        decode_request(&[5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80]),
        Err(Malformed::Domain.into())
    );
    assert_eq!(
        decode_request(&[5, 1, 0, 3, 2, 0xFF, 0xFE, 0, 80]),
        Err(Malformed::Domain.into())
    );
    assert_eq!(decode_request(&[4, 1]), Err(Malformed::Version(4).into()));
}

/// Found by the fuzz target: a v4-mapped IPv6 address did not survive encode/decode.
#[test]
fn v4_mapped_ipv6_is_the_ipv4_host() {
    let mut m = vec![5, 1, 0, 4];
    m.extend_from_slice(&"::ffff:10.1.2.3".parse::<Ipv6Addr>().expect("v6").octets());
    m.extend_from_slice(&[0, 4]);
    assert_eq!(
        decode_request(&m).expect("valid").0.target.host,
        Host::Ip(ip("10.1.2.3"))
    );
    check_all_decoders(&m);
}

#[test]
fn domain_holding_an_address_is_the_address() {
    let mut m = vec![5, 1, 0, 3, 3];
    m.extend_from_slice(b"::1");
    m.extend_from_slice(&[0, 80]);
    assert_eq!(
        decode_request(&m).expect("valid").0.target.host,
        Host::Ip(ip("::1"))
    );
}

#[test]
fn reply_round_trip() {
    for addr in ["127.0.0.1:1080", "[::1]:9", "[::ffff:10.1.2.3]:7"] {
        let a: SocketAddr = addr.parse().expect("addr");
        let mut out = Vec::new();
        encode_reply(0, a, &mut out);
        let ((rep, t), used) = decode_reply(&out).expect("decodes");
        assert_eq!((rep, used), (0, out.len()));
        let want = SocketAddr::new(a.ip().to_canonical(), a.port());
        assert_eq!(t.socket_addr(), Some(want));
    }
    let mut out = Vec::new();
    encode_reply(5, "0.0.0.0:0".parse().expect("addr"), &mut out);
    assert_eq!(out, [5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn udp_header_both_ways() {
    let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1, 0x1F, 0x90];
    d.extend_from_slice(b"payload");
    let (h, used) = decode_udp(&d).expect("valid");
    assert_eq!((h.frag, used), (0, 10));
    assert_eq!(&d[used..], b"payload");
    let mut out = Vec::new();
    encode_udp(&h.target, b"payload", &mut out);
    assert_eq!(out, d);

    let mut frag = d.clone();
    frag[2] = 1;
    assert_eq!(decode_udp(&frag).expect("parses").0.frag, 1);
    assert_eq!(
        decode_udp(&[0, 1, 0, 1]),
        Err(Malformed::Reserved(1).into())
    );
    assert_eq!(decode_udp(&d[..9]), Err(DecodeError::Incomplete));

    let mut named = Vec::new();
    encode_udp(
        &Target {
            host: Host::Name("echo.test".into()),
            port: 7,
        },
        b"x",
        &mut named,
    );
    assert_eq!(&named[..5], &[0, 0, 0, 3, 9]);
    assert_eq!(
        decode_udp(&named).expect("valid").0.target.host,
        Host::Name("echo.test".into())
    );
}

#[test]
fn socks4_and_4a() {
    let msg = [4, 1, 0, 80, 10, 0, 0, 1, b'u', 0];
    let (r, used) = decode_socks4(&msg).expect("socks4");
    assert_eq!(
        (r.command, used, r.user_id.as_slice()),
        (Command::Connect, 10, &b"u"[..])
    );
    assert_eq!(
        r.target.socket_addr(),
        Some("10.0.0.1:80".parse().expect("addr"))
    );
    prefixes_incomplete(&msg, decode_socks4);

    let mut a = vec![4, 2, 0, 21, 0, 0, 0, 9, 0];
    a.extend_from_slice(b"ftp.test\0");
    let (r, used) = decode_socks4(&a).expect("socks4a");
    assert_eq!((r.command, used), (Command::Bind, a.len()));
    assert_eq!(r.target.host, Host::Name("ftp.test".into()));
    prefixes_incomplete(&a, decode_socks4);

    assert_eq!(decode_socks4(&[4, 3]), Err(Malformed::Command(3).into()));
    let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
    long.extend(std::iter::repeat_n(b'x', 256));
    assert_eq!(decode_socks4(&long), Err(Malformed::FieldTooLong.into()));
    assert_eq!(decode_socks4(&long[..200]), Err(DecodeError::Incomplete));
    let mut bad_name = vec![4, 1, 0, 80, 0, 0, 0, 1, 0];
    bad_name.extend_from_slice(b"a b\0");
    assert_eq!(decode_socks4(&bad_name), Err(Malformed::Domain.into()));

    let mut out = Vec::new();
    encode_socks4_reply(90, "10.0.0.1:8080".parse().expect("addr"), &mut out);
    assert_eq!(out, [0, 90, 0x1F, 0x90, 10, 0, 0, 1]);
}

#[test]
fn largest_messages_fit_the_buffer_bound() {
    let mut a = vec![4, 1, 0, 80, 0, 0, 0, 1];
    a.extend(std::iter::repeat_n(b'u', 255));
    a.push(0);
    let label = "a".repeat(63);
    let name = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    a.extend_from_slice(name.as_bytes());
    a.push(0);
    assert!(a.len() <= MAX_MESSAGE);
    assert!(decode_socks4(&a).is_ok());
    let creds = [vec![1u8, 255], vec![b'u'; 255], vec![255], vec![b'p'; 255]].concat();
    assert!(creds.len() <= MAX_MESSAGE);
    assert!(decode_credentials(&creds).is_ok());
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The fuzz target's checks over random bytes and over mutations of valid messages.
#[test]
fn random_inputs_never_panic() {
    let seeds: Vec<Vec<u8>> = vec![
        vec![5, 2, 0, 2],
        vec![1, 3, b'b', b'o', b'b', 2, b'p', b'w'],
        vec![5, 1, 0, 1, 10, 0, 0, 1, 0x01, 0xBB],
        [&[5u8, 1, 0, 3, 8][..], b"echo.test", &[0, 7]].concat(),
        [&[0u8, 0, 0, 4][..], &[0; 16], &[0, 9], b"data"].concat(),
        [&[4u8, 1, 0, 80, 0, 0, 0, 1, b'u', 0][..], b"name.test\0"].concat(),
    ];
    let mut rng = Rng(0x005E_ED0F_50C5);
    for _ in 0..20_000 {
        let mut data = if rng.below(3) == 0 {
            (0..rng.below(64)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..rng.below(4) {
            if data.is_empty() {
                break;
            }
            let i = rng.below(data.len());
            match rng.below(3) {
                0 => data[i] = rng.next() as u8,
                1 => data.truncate(i),
                _ => data.insert(i, rng.next() as u8),
            }
        }
        check_all_decoders(&data);
    }
}
