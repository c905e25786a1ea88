//! RFC 5321 paths (`<local@domain>`, `<>`) and the parameters after them.

use tambo_common::names::{normalize_domain, normalize_user};

/// The longest path accepted (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// A parsed and normalised address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Local part: normalised (case-mapped) when it is a plain dot-string,
    /// kept as given (with its quotes) when quoted.
    pub local: String,
    /// Domain, normalised to lowercase Unicode NFC; address literals kept.
    pub domain: String,
}

impl Address {
    /// `local@domain`.
    pub fn full(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Why a path is refused; each maps to an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Syntax error in the path (501 5.1.3 / 5.1.7).
    #[error("{0}")]
    Syntax(&'static str),
    /// Over [`MAX_PATH`] (501 5.1.3).
    #[error("path too long")]
    TooLong,
    /// The domain does not normalise (501 5.1.2).
    #[error("bad domain: {0}")]
    Domain(String),
}

/// A parsed `MAIL FROM:` / `RCPT TO:` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathArg {
    /// `None` for the null path `<>`.
    pub address: Option<Address>,
    /// ESMTP parameters, names upper-cased: (NAME, value).
    pub params: Vec<(String, Option<String>)>,
}

/// Parse what follows `FROM:` or `TO:`.
pub fn parse_path_arg(arg: &str) -> Result<PathArg, PathError> {
    let arg = arg.trim_start();
    let (path, rest) = if let Some(inner) = arg.strip_prefix('<') {
        let end = find_closing(inner).ok_or(PathError::Syntax("missing >"))?;
        (&inner[..end], &inner[end + 1..])
    } else {
        // Bare address without brackets: tolerated, as most MTAs do.
        match arg.find(' ') {
            Some(i) => (&arg[..i], &arg[i..]),
            None => (arg, ""),
        }
    };
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(PathError::Syntax("garbage after the path"));
    }
    let params = parse_params(rest)?;
    if path.is_empty() {
        return Ok(PathArg { address: None, params });
    }
    Ok(PathArg {
        address: Some(parse_mailbox(strip_source_route(path))?),
        params,
    })
}

/// Index of the `>` that ends the path, skipping quoted strings.
fn find_closing(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@a,@b:user@dom` → `user@dom` (source routes are ignored, RFC 5321 §3.3).
fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@')
        && let Some(i) = path.find(':')
    {
        return &path[i + 1..];
    }
    path
}

fn parse_params(rest: &str) -> Result<Vec<(String, Option<String>)>, PathError> {
    let mut out = Vec::new();
    for word in rest.split(' ').filter(|w| !w.is_empty()) {
        let (name, value) = match word.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (word, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(PathError::Syntax("bad parameter"));
        }
        out.push((name.to_ascii_uppercase(), value));
    }
    Ok(out)
}

/// Parse `local@domain`.
pub fn parse_mailbox(s: &str) -> Result<Address, PathError> {
    let (local, domain) = if s.starts_with('"') {
        let end = find_quote_end(s).ok_or(PathError::Syntax("unterminated quoted local part"))?;
        let (l, d) = s.split_at(end + 1);
        (
            l,
            d.strip_prefix('@')
                .ok_or(PathError::Syntax("missing @ after the quoted local part"))?,
        )
    } else {
        s.rsplit_once('@').ok_or(PathError::Syntax("missing @"))?
    };
    if local.is_empty() {
        return Err(PathError::Syntax("empty local part"));
    }
    if local.len() > 64 {
        return Err(PathError::Syntax("local part too long"));
    }
    let local = if local.starts_with('"') {
        check_quoted(local)?;
        // `"alice"` is the same mailbox as `alice` (RFC 5321 §4.1.2): a
        // quoted local part that needs no quotes is handled as a plain one.
        match unquote(local) {
            Some(plain) if check_dot_string(&plain).is_ok() => {
                normalize_user(&plain).map_err(|_| PathError::Syntax("bad local part"))?
            }
            _ => local.to_string(),
        }
    } else {
        check_dot_string(local)?;
        normalize_user(local).map_err(|_| PathError::Syntax("bad local part"))?
    };
    let domain = if domain.starts_with('[') {
        check_literal(domain)?;
        domain.to_ascii_lowercase()
    } else {
        normalize_domain(domain).map_err(|e| PathError::Domain(e.to_string()))?
    };
    Ok(Address { local, domain })
}

fn find_quote_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// The content of a quoted string, with its backslash escapes resolved.
fn unquote(q: &str) -> Option<String> {
    let inner = q.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

fn check_quoted(q: &str) -> Result<(), PathError> {
    if q.chars().any(|c| c.is_control()) {
        return Err(PathError::Syntax("control character in the local part"));
    }
    Ok(())
}

/// RFC 5321 Dot-string, with UTF-8 allowed (RFC 6531).
fn check_dot_string(s: &str) -> Result<(), PathError> {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    if s.starts_with('.') || s.ends_with('.') || s.contains("..") {
        return Err(PathError::Syntax("bad dots in the local part"));
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || SPECIALS.contains(c) || (!c.is_ascii() && !c.is_control()))
    {
        Ok(())
    } else {
        Err(PathError::Syntax("bad character in the local part"))
    }
}

fn check_literal(d: &str) -> Result<(), PathError> {
    let inner = d
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or(PathError::Syntax("bad address literal"))?;
    let ok = if let Some(v6) = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        inner.parse::<std::net::Ipv4Addr>().is_ok()
    };
    if ok {
        Ok(())
    } else {
        Err(PathError::Syntax("bad address literal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> String {
        parse_path_arg(s).unwrap().address.unwrap().full()
    }

    #[test]
    fn plain_and_null() {
        assert_eq!(addr("<User@Example.COM>"), "user@example.com");
        assert_eq!(parse_path_arg("<>").unwrap().address, None);
        assert_eq!(addr("<@relay.a,@relay.b:u@d.org>"), "u@d.org");
        assert_eq!(addr("bare@x.org"), "bare@x.org");
        assert_eq!(addr(" <u@xn--bcher-kva.example>"), "u@bücher.example");
    }

    #[test]
    fn quoted_local_parts() {
        assert_eq!(addr("<\"john doe\"@x.org>"), "\"john doe\"@x.org");
        assert_eq!(addr("<\"a>b\"@x.org>"), "\"a>b\"@x.org");
        assert_eq!(addr("<\"Alice\"@x.org>"), "alice@x.org");
        assert_eq!(addr("<\"al\\ice\"@x.org>"), "alice@x.org");
        assert_eq!(addr("<\"a..b\"@x.org>"), "\"a..b\"@x.org");
        assert!(parse_path_arg("<\"open@x.org>").is_err());
    }

    #[test]
    fn params() {
        let p = parse_path_arg("<a@b.c> SIZE=1000 body=8BITMIME SMTPUTF8").unwrap();
        assert_eq!(
            p.params,
            vec![
                ("SIZE".into(), Some("1000".into())),
                ("BODY".into(), Some("8BITMIME".into())),
                ("SMTPUTF8".into(), None)
            ]
        );
        assert!(parse_path_arg("<a@b.c>junk").is_err());
        assert!(parse_path_arg("<a@b.c> =x").is_err());
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_path_arg(&format!("<{}@b.c>", "a".repeat(300))),
            Err(PathError::TooLong)
        );
        assert!(parse_path_arg("<a@b.c").is_err());
        assert!(parse_path_arg("<nodomain>").is_err());
        assert!(parse_path_arg("<a..b@c.d>").is_err());
        assert!(parse_path_arg("<a b@c.d>").is_err());
        assert!(matches!(parse_path_arg("<a@-bad-.com>"), Err(PathError::Domain(_))));
        assert!(parse_path_arg("<a@[300.1.1.1]>").is_err());
        assert_eq!(addr("<a@[127.0.0.1]>"), "a@[127.0.0.1]");
        assert_eq!(addr("<a@[IPv6:::1]>"), "a@[ipv6:::1]");
    }
}
