//! Normalisation of user names, domains and addresses, shared by every
//! process so that they all agree on what a name means.

use unicode_normalization::UnicodeNormalization;

/// Maximum length of a user name (local part), in bytes.
pub const MAX_USER_LEN: usize = 64;
/// Maximum length of a domain name in its ASCII form, in bytes.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Maximum length of one domain label in its ASCII form, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty name")]
    Empty,
    /// The name is too long.
    #[error("name too long ({0} bytes, at most {1})")]
    TooLong(usize, usize),
    /// The name contains a character that is not allowed.
    #[error("invalid character {0:?}")]
    InvalidChar(char),
    /// The domain is not a valid (internationalised) domain name.
    #[error("invalid domain: {0}")]
    InvalidDomain(String),
}

/// Normalises a user name (local part): Unicode NFC, then lowercase.
/// Rejects empty names, control characters, whitespace, `@`, and names
/// longer than 64 bytes.
pub fn normalize_user(s: &str) -> Result<String, NameError> {
    let n: String = s.nfc().collect::<String>().to_lowercase();
    if n.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = n.chars().find(|c| c.is_control() || c.is_whitespace() || *c == '@') {
        return Err(NameError::InvalidChar(c));
    }
    if n.len() > MAX_USER_LEN {
        return Err(NameError::TooLong(n.len(), MAX_USER_LEN));
    }
    Ok(n)
}

fn is_address_literal(s: &str) -> bool {
    s.starts_with('[') && s.ends_with(']') && s.len() >= 2
}

fn check_literal(s: &str) -> Result<(), NameError> {
    let inner = &s[1..s.len() - 1];
    if inner.is_empty() {
        return Err(NameError::InvalidDomain("empty address literal".into()));
    }
    if let Some(c) = inner
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '[' | ']' | '\\'))
    {
        return Err(NameError::InvalidChar(c));
    }
    Ok(())
}

/// Validates `s` and returns its ASCII (punycode) form.
fn to_checked_ascii(s: &str) -> Result<String, NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.starts_with('.') || s.ends_with('.') {
        return Err(NameError::InvalidDomain("leading or trailing dot".to_string()));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(NameError::InvalidChar(c));
    }
    let nfc: String = s.nfc().collect();
    let ascii = idna::domain_to_ascii(&nfc).map_err(|e| NameError::InvalidDomain(format!("{e:?}").to_lowercase()))?;
    if ascii.is_empty() {
        return Err(NameError::Empty);
    }
    if ascii.len() > MAX_DOMAIN_LEN {
        return Err(NameError::TooLong(ascii.len(), MAX_DOMAIN_LEN));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(NameError::InvalidDomain("empty label".to_string()));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::InvalidDomain(format!(
                "label longer than {MAX_LABEL_LEN} bytes"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::InvalidDomain(
                "label starts or ends with a hyphen".to_string(),
            ));
        }
        if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
            return Err(NameError::InvalidChar(c));
        }
    }
    Ok(ascii)
}

/// Normalises a domain: accepts ASCII (including `xn--` punycode) or
/// Unicode and returns the lowercase NFC Unicode form. An address literal
/// such as `[127.0.0.1]` is returned as is.
pub fn normalize_domain(s: &str) -> Result<String, NameError> {
    if is_address_literal(s) {
        check_literal(s)?;
        return Ok(s.to_string());
    }
    let ascii = to_checked_ascii(s)?;
    let (uni, res) = idna::domain_to_unicode(&ascii);
    res.map_err(|e| NameError::InvalidDomain(format!("{e:?}").to_lowercase()))?;
    Ok(uni.nfc().collect::<String>().to_lowercase())
}

/// Returns the ASCII (punycode) form of a domain, after validating it like
/// [`normalize_domain`]. Address literals are returned as is.
pub fn domain_to_ascii(s: &str) -> Result<String, NameError> {
    if is_address_literal(s) {
        check_literal(s)?;
        return Ok(s.to_string());
    }
    let uni = normalize_domain(s)?;
    to_checked_ascii(&uni)
}

/// Splits an address at its last `@` into (user, domain). Without `@`, the
/// domain part is empty.
pub fn split_address(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    }
}

/// Normalises an address: the user part with [`normalize_user`] and the
/// domain part with [`normalize_domain`]. An address without `@` is
/// normalised as a bare user name.
pub fn normalize_address(addr: &str) -> Result<String, NameError> {
    if !addr.contains('@') {
        return normalize_user(addr);
    }
    let (user, domain) = split_address(addr);
    let user = normalize_user(user)?;
    let domain = normalize_domain(domain)?;
    Ok(format!("{user}@{domain}"))
}

/// Makes a string safe to pass as one argument to a delivery agent: keeps
/// ASCII letters and digits, `@ . + - _ = %` and non-ASCII letters and
/// digits, replaces everything else with `_`, and strips leading `-` so the
/// result can never look like an option.
pub fn sanitize_for_argv(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            let keep = if c.is_ascii() {
                c.is_ascii_alphanumeric() || "@.+-_=%".contains(c)
            } else {
                c.is_alphanumeric()
            };
            if keep { c } else { '_' }
        })
        .collect();
    out.trim_start_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        assert_eq!(normalize_user("Alice").unwrap(), "alice");
        assert_eq!(normalize_user("ÑANDÚ").unwrap(), "ñandú");
        // NFD input becomes NFC.
        assert_eq!(normalize_user("n\u{303}").unwrap(), "\u{f1}");
        assert_eq!(normalize_user("a.b+c").unwrap(), "a.b+c");
        assert_eq!(normalize_user(""), Err(NameError::Empty));
        assert_eq!(normalize_user("a b"), Err(NameError::InvalidChar(' ')));
        assert_eq!(normalize_user("a@b"), Err(NameError::InvalidChar('@')));
        assert_eq!(normalize_user("a\tb"), Err(NameError::InvalidChar('\t')));
        assert_eq!(normalize_user("a\0"), Err(NameError::InvalidChar('\0')));
        assert_eq!(normalize_user("a\u{a0}b"), Err(NameError::InvalidChar('\u{a0}')));
        assert!(normalize_user(&"a".repeat(64)).is_ok());
        assert_eq!(normalize_user(&"a".repeat(65)), Err(NameError::TooLong(65, 64)));
        // 33 two-byte characters = 66 bytes.
        assert!(normalize_user(&"ñ".repeat(33)).is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(normalize_domain("Example.COM").unwrap(), "example.com");
        assert_eq!(normalize_domain("xn--and-6ma2c.com").unwrap(), "ñandú.com");
        assert_eq!(normalize_domain("ÑANDÚ.com").unwrap(), "ñandú.com");
        assert_eq!(normalize_domain("n\u{303}.com").unwrap(), "ñ.com");
        assert_eq!(normalize_domain("a-b.c1").unwrap(), "a-b.c1");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(normalize_domain("[127.0.0.1]").unwrap(), "[127.0.0.1]");
        assert_eq!(normalize_domain("[IPv6:::1]").unwrap(), "[IPv6:::1]");
        assert!(normalize_domain("[]").is_err());
        assert!(normalize_domain("[a b]").is_err());
        assert_eq!(normalize_domain(""), Err(NameError::Empty));
        assert!(normalize_domain(".example.com").is_err());
        assert!(normalize_domain("example.com.").is_err());
        assert!(normalize_domain("a..b").is_err());
        assert!(normalize_domain("a_b.com").is_err());
        assert!(normalize_domain("a b.com").is_err());
        assert!(normalize_domain("a@b.com").is_err());
        assert!(normalize_domain("a/b").is_err());
        assert!(normalize_domain(&format!("{}.com", "a".repeat(63))).is_ok());
        assert!(normalize_domain(&format!("{}.com", "a".repeat(64))).is_err());
        let long = vec!["a".repeat(50); 5].join(".");
        assert!(long.len() > 253);
        assert!(normalize_domain(&long).is_err());
        // Invalid punycode.
        assert!(normalize_domain("xn--zz--.com").is_err());
    }

    #[test]
    fn ascii_domains() {
        assert_eq!(domain_to_ascii("ñandú.com").unwrap(), "xn--and-6ma2c.com");
        assert_eq!(domain_to_ascii("EXAMPLE.com").unwrap(), "example.com");
        assert_eq!(domain_to_ascii("xn--and-6ma2c.com").unwrap(), "xn--and-6ma2c.com");
        assert_eq!(domain_to_ascii("[1.2.3.4]").unwrap(), "[1.2.3.4]");
        assert!(domain_to_ascii("").is_err());
        assert!(domain_to_ascii("a_b").is_err());
    }

    #[test]
    fn split() {
        assert_eq!(split_address("a@b"), ("a", "b"));
        assert_eq!(split_address("\"a@x\"@b"), ("\"a@x\"", "b"));
        assert_eq!(split_address("ab"), ("ab", ""));
        assert_eq!(split_address("a@"), ("a", ""));
        assert_eq!(split_address("@b"), ("", "b"));
        assert_eq!(split_address(""), ("", ""));
    }

    #[test]
    fn addresses() {
        assert_eq!(normalize_address("Ñandú@XN--AND-6MA2C.com").unwrap(), "ñandú@ñandú.com");
        assert_eq!(normalize_address("Bob").unwrap(), "bob");
        assert!(normalize_address("@example.com").is_err());
        assert!(normalize_address("bob@").is_err());
        assert!(normalize_address("a@b@c").is_err());
    }

    #[test]
    fn argv() {
        assert_eq!(sanitize_for_argv("user@example.com"), "user@example.com");
        assert_eq!(sanitize_for_argv("a+b=c%d_e.f"), "a+b=c%d_e.f");
        assert_eq!(sanitize_for_argv("-rf"), "rf");
        assert_eq!(sanitize_for_argv("--x-y"), "x-y");
        assert_eq!(sanitize_for_argv("a b;c|d$e`f'g\"h"), "a_b_c_d_e_f_g_h");
        assert_eq!(sanitize_for_argv("ñandú"), "ñandú");
        assert_eq!(sanitize_for_argv("a\nb\0c"), "a_b_c");
        assert_eq!(sanitize_for_argv("a/../b"), "a_.._b");
        assert_eq!(sanitize_for_argv("☃"), "_");
        assert_eq!(sanitize_for_argv(" -x"), "_-x");
        assert_eq!(sanitize_for_argv(""), "");
    }
}
