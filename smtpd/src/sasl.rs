//! SASL PLAIN (RFC 4616) and LOGIN decoding for AUTH (RFC 4954).

/// Why a client response was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not valid base64.
    #[error("invalid base64")]
    Base64,
    /// Not valid UTF-8 once decoded.
    #[error("invalid UTF-8")]
    Utf8,
    /// Not `authzid NUL authcid NUL password`.
    #[error("malformed PLAIN response")]
    Plain,
}

/// Decoded credentials.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// Authorization identity (empty when not given).
    pub authzid: String,
    /// Authentication identity (the user name).
    pub authcid: String,
    /// The password.
    pub password: String,
}

fn b64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decode standard base64 with padding. A response of `=` is the empty
/// string (RFC 4954 §4).
pub fn decode_base64(s: &str) -> Result<Vec<u8>, SaslError> {
    let s = s.trim();
    if s == "=" {
        return Ok(Vec::new());
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return Err(SaslError::Base64);
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, quad) in b.chunks(4).enumerate() {
        let last = i + 1 == b.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(SaslError::Base64);
        }
        let mut n: u32 = 0;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | b64_value(c).ok_or(SaslError::Base64)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// Base64-decode to a UTF-8 string.
pub fn decode_text(s: &str) -> Result<String, SaslError> {
    String::from_utf8(decode_base64(s)?).map_err(|_| SaslError::Utf8)
}

/// Parse a PLAIN response (already base64-decoded).
pub fn parse_plain(raw: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = raw.split(|&b| b == 0);
    let (Some(z), Some(c), Some(p), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Plain);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Utf8);
    let creds = Credentials {
        authzid: text(z)?,
        authcid: text(c)?,
        password: text(p)?,
    };
    if creds.authcid.is_empty() {
        return Err(SaslError::Plain);
    }
    Ok(creds)
}

/// Split a login name into (user, domain): `user@domain`, or a bare `user`
/// with an empty domain. Both are normalised as the users databases are;
/// a name that does not normalise is kept lowercase as given (it matches
/// no user, and authd still spends its usual time on it).
pub fn split_identity(login: &str) -> (String, String) {
    // A login without a domain keeps an empty one: authd tries the users
    // of `hostname`'s domain, then Dovecot with the bare name (chasquid).
    let (user, domain) = login.rsplit_once('@').unwrap_or((login, ""));
    let user = tambo_common::names::normalize_user(user).unwrap_or_else(|_| user.to_lowercase());
    let domain = tambo_common::names::normalize_domain(domain).unwrap_or_else(|_| domain.to_lowercase());
    (user, domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(decode_base64("=").unwrap(), b"");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode_base64("Zm9vYmE=").unwrap(), b"fooba");
        assert_eq!(decode_base64("AGFsaWNlAHNlY3JldA==").unwrap(), b"\0alice\0secret");
        for bad in ["Zm9", "Zm9v!A==", "Zg==Zm9v", "Z===", "*"] {
            assert_eq!(decode_base64(bad), Err(SaslError::Base64), "{bad}");
        }
    }

    #[test]
    fn plain() {
        let c = parse_plain(b"\0alice@example.com\0pw").unwrap();
        assert_eq!(
            (c.authzid.as_str(), c.authcid.as_str(), c.password.as_str()),
            ("", "alice@example.com", "pw")
        );
        let c = parse_plain(b"a@b\0a@b\0p\xc3\xa4ss").unwrap();
        assert_eq!(c.password, "päss");
        assert_eq!(parse_plain(b"alice\0pw"), Err(SaslError::Plain));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Plain));
        assert_eq!(parse_plain(b"\0a\0b\0c"), Err(SaslError::Plain));
    }

    #[test]
    fn identities() {
        assert_eq!(
            split_identity("Alice@Example.COM"),
            ("alice".into(), "example.com".into())
        );
        assert_eq!(split_identity("alice"), ("alice".into(), "".into()));
    }
}
