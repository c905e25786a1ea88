//! Credentials for AUTH to the smarthost (`relay_host`), read from
//! `relay_auth_file` by authd only.
//!
//! The file holds one line `user:password` (the password is everything
//! after the first `:`, spaces included); blank lines and lines starting
//! with `#` are ignored. It should be readable by authd's user only.

use std::path::{Path, PathBuf};

use base64::Engine;

/// The smarthost credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayCredentials {
    /// The user name (often an address).
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for RelayCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCredentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Why the credentials file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum RelayAuthError {
    /// Cannot read the file.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A problem on one line.
    #[error("{0}:{1}: {2}")]
    Syntax(PathBuf, usize, String),
    /// No credentials line.
    #[error("{0}: no \"user:password\" line")]
    Empty(PathBuf),
}

impl RelayCredentials {
    /// The initial response of `AUTH PLAIN` (RFC 4616): base64 of
    /// NUL user NUL password.
    pub fn auth_plain(&self) -> String {
        let raw = format!("\0{}\0{}", self.user, self.password);
        base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
    }

    /// Parse the file's text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<RelayCredentials, RelayAuthError> {
        let mut found = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let syntax = |m: &str| RelayAuthError::Syntax(path.to_path_buf(), n, m.to_string());
            if found.is_some() {
                return Err(syntax("more than one credentials line"));
            }
            let (user, password) = line
                .split_once(':')
                .ok_or_else(|| syntax("expected \"user:password\""))?;
            let user = user.trim();
            if user.is_empty() {
                return Err(syntax("empty user"));
            }
            if password.is_empty() {
                return Err(syntax("empty password"));
            }
            if line.chars().any(|c| c.is_control() && c != '\t') {
                return Err(syntax("control characters are not allowed"));
            }
            found = Some(RelayCredentials {
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        found.ok_or_else(|| RelayAuthError::Empty(path.to_path_buf()))
    }

    /// Read `relay_auth_file` (relative paths are taken from `config_dir`).
    pub fn load(config_dir: &Path, file: &str) -> Result<RelayCredentials, RelayAuthError> {
        let path = resolve_path(config_dir, file);
        let text = std::fs::read_to_string(&path).map_err(|e| RelayAuthError::Io(path.clone(), e))?;
        RelayCredentials::parse(&text, &path)
    }
}

/// Where `relay_auth_file` points.
pub fn resolve_path(config_dir: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config_dir.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let p = Path::new("relay-auth");
        let c = RelayCredentials::parse("# smarthost\n\nme@isp.test:pa:ss word\n", p).unwrap();
        assert_eq!(c.user, "me@isp.test");
        assert_eq!(c.password, "pa:ss word");
        // RFC 4616 example: "\0tim\0tanstaaftanstaaf".
        let t = RelayCredentials {
            user: "tim".into(),
            password: "tanstaaftanstaaf".into(),
        };
        assert_eq!(t.auth_plain(), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let p = Path::new("/etc/tambo/relay-auth");
        let e = |t: &str| RelayCredentials::parse(t, p).unwrap_err().to_string();
        assert_eq!(e("# only\n"), "/etc/tambo/relay-auth: no \"user:password\" line");
        assert_eq!(e("\nnocolon\n"), "/etc/tambo/relay-auth:2: expected \"user:password\"");
        assert_eq!(e(":pw\n"), "/etc/tambo/relay-auth:1: empty user");
        assert_eq!(e("u:\n"), "/etc/tambo/relay-auth:1: empty password");
        assert_eq!(
            e("a:b\nc:d\n"),
            "/etc/tambo/relay-auth:2: more than one credentials line"
        );
        assert_eq!(resolve_path(Path::new("/c"), "x"), PathBuf::from("/c/x"));
        assert_eq!(resolve_path(Path::new("/c"), "/y"), PathBuf::from("/y"));
    }
}
