//! The aliases file format, in chasquid's syntax, shared by queued (which
//! resolves aliases) and the supervisor (which refuses to start with a
//! broken file).
//!
//! One `user: target, target…` per line; `#` starts a comment line; blank
//! lines are ignored. A target is an address (`user@domain`, or `user`,
//! which takes the file's domain), `address via server1/server2`
//! (forwarding through those servers), or, as the whole right-hand side,
//! `| command args` (a pipe; arguments split on whitespace, no shell). A
//! left side of `*` is a catch-all; a target user `*` stands for the
//! original user. When the same left side appears twice, the last line
//! wins.

use std::collections::HashMap;
use std::path::Path;

use crate::names::{normalize_address, normalize_user};

/// One right-hand side element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasTarget {
    /// Deliver to this (normalised) address, resolving it further.
    Email(String),
    /// Pipe the message into this command (argv, no shell).
    Pipe(Vec<String>),
    /// Forward to this address through these servers; not resolved further.
    Forward {
        /// Normalised address.
        address: String,
        /// The servers, in order of preference.
        via: Vec<String>,
    },
}

/// A parse error, naming the file and the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// A line that does not parse.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The file's path.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file exists but cannot be read.
    #[error("{file}: {message}")]
    Io {
        /// The file's path.
        file: String,
        /// The I/O error.
        message: String,
    },
}

/// Longest aliases file accepted, in bytes (a bound on memory).
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024;

/// The aliases of one domain: lookup key (user with drop characters
/// removed before the first suffix separator, normalised; or `*`) →
/// targets.
pub type AliasMap = HashMap<String, Vec<AliasTarget>>;

/// Remove the drop characters from the part of `user` before its first
/// suffix separator; the suffix is kept as is (`juana.perez+a.b` →
/// `juanaperez+a.b`).
pub fn remove_drop_characters(user: &str, drop_characters: &str, suffix_separators: &str) -> String {
    let cut = user.find(|c| suffix_separators.contains(c)).unwrap_or(user.len());
    let mut out: String = user[..cut].chars().filter(|c| !drop_characters.contains(*c)).collect();
    out.push_str(&user[cut..]);
    out
}

/// Remove the drop characters and everything from the first suffix
/// separator on (`juana.perez+abc` → `juanaperez`).
pub fn remove_drops_and_suffix(user: &str, drop_characters: &str, suffix_separators: &str) -> String {
    let cut = user.find(|c| suffix_separators.contains(c)).unwrap_or(user.len());
    user[..cut].chars().filter(|c| !drop_characters.contains(*c)).collect()
}

/// Parse a right-hand side (from a file line or the `alias-resolve` hook's
/// output). Targets without a domain take `domain`. An empty string gives
/// no targets.
pub fn parse_rhs(rhs: &str, domain: &str) -> Result<Vec<AliasTarget>, String> {
    let rhs = rhs.trim();
    if rhs.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(cmd) = rhs.strip_prefix('|') {
        let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
        if argv.is_empty() {
            return Err("the pipe alias is missing a command".into());
        }
        return Ok(vec![AliasTarget::Pipe(argv)]);
    }
    let mut out = Vec::new();
    for raw in rhs.split(',') {
        let raw = raw.trim();
        if raw.is_empty() {
            // Allowed for convenience: "a: b,".
            continue;
        }
        let (addr, via) = match raw.split_once(" via ") {
            Some((a, v)) => {
                let servers: Vec<String> = v.split('/').map(|s| s.trim().to_string()).collect();
                if servers.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
                    return Err(format!("{raw:?}: the servers after \"via\" must be like host1/host2"));
                }
                (a.trim(), Some(servers))
            }
            None => (raw, None),
        };
        if addr.is_empty() {
            return Err(format!("{raw:?}: missing address"));
        }
        if addr.contains(char::is_whitespace) {
            return Err(format!("{addr:?}: an address cannot contain spaces (missing comma?)"));
        }
        let full = if addr.contains('@') {
            addr.to_string()
        } else {
            format!("{addr}@{domain}")
        };
        let address = normalize_address(&full).map_err(|e| format!("address {addr:?}: {e}"))?;
        out.push(match via {
            Some(via) => AliasTarget::Forward { address, via },
            None => AliasTarget::Email(address),
        });
    }
    Ok(out)
}

/// Parse the text of a domain's aliases file. `file` names it in errors.
pub fn parse_aliases(
    text: &str,
    file: &str,
    domain: &str,
    drop_characters: &str,
    suffix_separators: &str,
) -> Result<AliasMap, AliasError> {
    let mut map = AliasMap::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| AliasError::Syntax {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((lhs, rhs)) = line.split_once(':') else {
            return Err(err("missing ':' (expected \"user: target, target\")".into()));
        };
        let (lhs, rhs) = (lhs.trim(), rhs.trim());
        if lhs.is_empty() {
            return Err(err("missing user before ':'".into()));
        }
        if rhs.is_empty() {
            return Err(err(format!("alias {lhs:?} has no target")));
        }
        if lhs.contains('@') {
            return Err(err(format!(
                "{lhs:?}: the left side is a user without domain (the file's directory names the domain)"
            )));
        }
        if let Some(c) = lhs.chars().find(|c| c.is_whitespace() || *c == ',') {
            return Err(err(format!("{lhs:?}: a user name cannot contain {c:?}")));
        }
        let key = if lhs == "*" {
            "*".to_string()
        } else {
            let cleaned = remove_drop_characters(lhs, drop_characters, suffix_separators);
            normalize_user(&cleaned).map_err(|e| err(format!("user {lhs:?}: {e}")))?
        };
        let targets = parse_rhs(rhs, domain).map_err(err)?;
        if targets.is_empty() {
            return Err(err(format!("alias {lhs:?} has no target")));
        }
        map.insert(key, targets);
    }
    Ok(map)
}

/// Read and parse `path`; a missing file is an empty map.
pub fn load_aliases(
    path: &Path,
    domain: &str,
    drop_characters: &str,
    suffix_separators: &str,
) -> Result<AliasMap, AliasError> {
    let file = path.display().to_string();
    let io = |e: std::io::Error| AliasError::Io {
        file: file.clone(),
        message: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AliasMap::new()),
        Err(e) => return Err(io(e)),
    };
    if meta.len() > MAX_FILE_SIZE {
        return Err(AliasError::Io {
            file: file.clone(),
            message: format!("larger than {MAX_FILE_SIZE} bytes"),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let before = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        AliasError::Syntax {
            file: file.clone(),
            line: before.iter().filter(|b| **b == b'\n').count() + 1,
            message: "not valid UTF-8".into(),
        }
    })?;
    parse_aliases(&text, &file, domain, drop_characters, suffix_separators)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AliasMap, AliasError> {
        parse_aliases(text, "aliases", "d.org", ".", "+")
    }

    fn email(a: &str) -> AliasTarget {
        AliasTarget::Email(a.into())
    }

    #[test]
    fn syntax() {
        let m = parse(
            "# comment\n\n  pepe: jose\nflowers: rose@backgarden, lilly@Pond ,\n\
             Juana.Perez: juana\njuana.perez+fruta: fruta\n\
             null: | /bin/cat -u  x\nfwd: out@remote.org via mx1.remote.org/mx2.remote.org:2525\n\
             *: *@other.org, pepe\n",
        )
        .unwrap();
        assert_eq!(m["pepe"], vec![email("jose@d.org")]);
        assert_eq!(m["flowers"], vec![email("rose@backgarden"), email("lilly@pond")]);
        assert_eq!(m["juanaperez"], vec![email("juana@d.org")]);
        assert_eq!(m["juanaperez+fruta"], vec![email("fruta@d.org")]);
        assert_eq!(
            m["null"],
            vec![AliasTarget::Pipe(vec!["/bin/cat".into(), "-u".into(), "x".into()])]
        );
        assert_eq!(
            m["fwd"],
            vec![AliasTarget::Forward {
                address: "out@remote.org".into(),
                via: vec!["mx1.remote.org".into(), "mx2.remote.org:2525".into()],
            }]
        );
        assert_eq!(m["*"], vec![email("*@other.org"), email("pepe@d.org")]);
        // The last definition wins.
        assert_eq!(parse("a: b\na: c\n").unwrap()["a"], vec![email("c@d.org")]);
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, line, what) in [
            ("a: b\nno colon here\n", 2, "missing ':'"),
            ("a: b\n\n: c\n", 3, "missing user"),
            ("a:\n", 1, "no target"),
            ("a@x.org: b\n", 1, "left side"),
            ("a b: c\n", 1, "cannot contain"),
            ("a: |\n", 1, "missing a command"),
            ("a: b c\n", 1, "spaces"),
            ("a: b via \n", 1, "spaces"),
            ("a: b via x//y\n", 1, "via"),
            ("a: ,\n", 1, "no target"),
            ("a: b@bad..domain\n", 1, "address"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("aliases:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn rhs_for_hooks() {
        assert_eq!(parse_rhs("", "d.org").unwrap(), vec![]);
        assert_eq!(
            parse_rhs("  x, y@z.org\n", "d.org").unwrap(),
            vec![email("x@d.org"), email("y@z.org")]
        );
        assert!(parse_rhs("a b", "d.org").is_err());
    }

    #[test]
    fn drops_and_suffixes() {
        assert_eq!(remove_drop_characters("ju.ana+a.b", ".", "+"), "juana+a.b");
        assert_eq!(remove_drops_and_suffix("ju.ana+a.b", ".", "+"), "juana");
        assert_eq!(remove_drops_and_suffix("a-b_c", "", "-_"), "a");
        assert_eq!(remove_drops_and_suffix("plain", "", ""), "plain");
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("aliases");
        assert!(load_aliases(&p, "d.org", ".", "+").unwrap().is_empty());
        std::fs::write(&p, b"a: b\nc: \xff\n").unwrap();
        let e = load_aliases(&p, "d.org", ".", "+").unwrap_err().to_string();
        assert!(e.ends_with(":2: not valid UTF-8"), "{e}");
    }
}
