//! User names into LDAP filters and DNs, safely: pure functions, no I/O.
//!
//! A user name comes from the client (Basic credentials, RFC 1929). It is put into a search
//! filter (`user_filter = "(uid={user})"`, RFC 4515) or a DN (`bind_dn_template =
//! "uid={user},ou=people,dc=example"`, RFC 4514), so every character with a meaning there is
//! escaped as `\XX`. Names with NUL or other control characters are refused before any of
//! this ([`check_login_name`]): nothing legitimate has them, and refusing costs nothing.

/// Longest login name (RFC 1929 carries it in one length byte).
pub const MAX_LOGIN_NAME: usize = 255;

/// Why a login name is refused before the directory is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    TooLong,
    /// NUL, another control character, or a Unicode control (e.g. U+0085).
    Control,
}

/// A login name may go to the directory: 1 to 255 bytes, no control characters.
pub fn check_login_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name.len() > MAX_LOGIN_NAME {
        return Err(BadName::TooLong);
    }
    if name.chars().any(char::is_control) {
        return Err(BadName::Control);
    }
    Ok(())
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('\\');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// An assertion value for a filter (RFC 4515 section 3): `*`, `(`, `)`, `\` and NUL become
/// `\2a`, `\28`, `\29`, `\5c`, `\00`; everything else (UTF-8 included) stays as it is.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0' => push_hex(&mut out, c as u8),
            c => out.push(c),
        }
    }
    out
}

/// An attribute value for a DN (RFC 4514 section 2.4): `"`, `+`, `,`, `;`, `<`, `>`, `\`,
/// `=` and NUL anywhere, a leading space or `#` and a trailing space become `\XX`.
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let last = value.len().saturating_sub(1);
    for (i, c) in value.char_indices() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' | '\0')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            push_hex(&mut out, c as u8);
        } else {
            out.push(c);
        }
    }
    out
}

/// `template` with every `{user}` replaced by `escaped` (already escaped for its place) and
/// every `{dn}` by `dn` (a DN from the directory, escaped for a filter by the caller).
pub fn fill(template: &str, user: &str, dn: &str) -> String {
    template.replace("{user}", user).replace("{dn}", dn)
}

/// The value of a DN's first RDN (`cn=staff,ou=groups,dc=example` -> `staff`), unescaped;
/// `None` for a multi-valued first RDN (`cn=a+uid=b,...`) or a hex-encoded (`#...`) value.
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let (_, rest) = dn.split_once('=')?;
    if rest.starts_with('#') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(rest.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b',' => break,
            b'+' => return None,
            b'\\' => {
                let next = *bytes.get(i + 1)?;
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(next), bytes.get(i + 2).and_then(|b| hex(*b))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(next);
                        i += 2;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_escape_the_rfc4515_specials() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*"), "\\2a");
        assert_eq!(filter_value(")("), "\\29\\28");
        assert_eq!(
            filter_value("alice)(uid=*"),
            "alice\\29\\28uid=\\2a",
            "no filter can be closed or widened"
        );
        assert_eq!(
            filter_value("a\\2a"),
            "a\\5c2a",
            "a backslash is escaped first"
        );
        assert_eq!(filter_value("a\0b"), "a\\00b");
        assert_eq!(filter_value("jürgen"), "jürgen", "UTF-8 passes");
        assert_eq!(
            fill(
                "(&(objectClass=person)(uid={user}))",
                &filter_value("*)(|(uid=*"),
                ""
            ),
            "(&(objectClass=person)(uid=\\2a\\29\\28|\\28uid=\\2a))"
        );
    }

    #[test]
    fn dn_values_escape_the_rfc4514_specials() {
        assert_eq!(dn_value("alice"), "alice");
        assert_eq!(dn_value("a,ou=admins"), "a\\2cou\\3dadmins");
        assert_eq!(dn_value("a+cn=x"), "a\\2bcn\\3dx");
        assert_eq!(dn_value("\"<>;\\"), "\\22\\3c\\3e\\3b\\5c");
        assert_eq!(dn_value(" a "), "\\20a\\20");
        assert_eq!(dn_value("#a#"), "\\23a#", "only a leading #");
        assert_eq!(dn_value("a\0"), "a\\00");
        assert_eq!(dn_value("*"), "*", "no meaning in a DN");
        assert_eq!(
            fill("uid={user},ou=people,dc=test", &dn_value("x,dc=test"), ""),
            "uid=x\\2cdc\\3dtest,ou=people,dc=test"
        );
    }

    #[test]
    fn names_with_controls_are_refused() {
        assert_eq!(check_login_name("alice"), Ok(()));
        assert_eq!(
            check_login_name("alice)(uid=*"),
            Ok(()),
            "escaped, not refused"
        );
        assert_eq!(check_login_name(""), Err(BadName::Empty));
        assert_eq!(check_login_name("a\0"), Err(BadName::Control));
        assert_eq!(check_login_name("a\nb"), Err(BadName::Control));
        assert_eq!(check_login_name("a\u{85}"), Err(BadName::Control));
        assert_eq!(check_login_name(&"a".repeat(256)), Err(BadName::TooLong));
        assert_eq!(check_login_name(&"a".repeat(255)), Ok(()));
    }

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(
            first_rdn_value("cn=staff,ou=groups,dc=test").as_deref(),
            Some("staff")
        );
        assert_eq!(
            first_rdn_value("CN=Domain Users,CN=Users,DC=corp").as_deref(),
            Some("Domain Users")
        );
        assert_eq!(
            first_rdn_value("cn=a\\2cb,dc=test").as_deref(),
            Some("a,b"),
            "hex escapes"
        );
        assert_eq!(first_rdn_value("cn=a\\,b,dc=test").as_deref(), Some("a,b"));
        assert_eq!(first_rdn_value("cn=a+uid=b,dc=test"), None);
        assert_eq!(first_rdn_value("cn=#0403,dc=test"), None);
        assert_eq!(first_rdn_value("no-equals"), None);
        assert_eq!(first_rdn_value("cn=,dc=x"), None);
        assert_eq!(first_rdn_value("cn=\\"), None, "a dangling escape");
    }
}
