//! chasquid's `users` file: a protobuf text-format map from user name to
//! password (scrypt, plain or denied).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::{ConfigError, decode_utf8, utf8_field};
use crate::names::{NameError, normalize_user};
use crate::textproto::{self, Field, Scalar, Value};

/// Largest accepted scrypt logN.
pub const MAX_LOG_N: u64 = 20;
/// Largest accepted scrypt key length.
pub const MAX_KEY_LEN: u32 = 128;
/// Largest accepted scrypt memory use (128 * r * N and 128 * r * p), bytes.
const MAX_SCRYPT_MEM: u64 = 1 << 30;

/// scrypt parameters for new entries.
const NEW_LOG_N: u8 = 14;
const NEW_R: u32 = 8;
const NEW_P: u32 = 1;
const NEW_KEY_LEN: u32 = 32;
const NEW_SALT_LEN: usize = 16;

/// A stored password.
#[derive(Clone, PartialEq, Eq)]
pub enum Password {
    /// scrypt-derived key with its parameters.
    Scrypt {
        /// log2 of the CPU/memory cost N.
        log_n: u8,
        /// Block size.
        r: u32,
        /// Parallelism.
        p: u32,
        /// Length of the derived key.
        key_len: u32,
        /// Salt.
        salt: Vec<u8>,
        /// The derived key.
        encrypted: Vec<u8>,
    },
    /// A plain-text password (discouraged, but chasquid supports it).
    Plain(Vec<u8>),
    /// The user exists as a recipient but cannot authenticate.
    Denied,
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Scrypt {
                log_n, r, p, key_len, ..
            } => write!(f, "Scrypt {{ log_n: {log_n}, r: {r}, p: {p}, key_len: {key_len}, .. }}"),
            Password::Plain(_) => write!(f, "Plain(..)"),
            Password::Denied => write!(f, "Denied"),
        }
    }
}

/// An error changing the user database.
#[derive(Debug, thiserror::Error)]
pub enum UserDbError {
    /// The user name is not valid.
    #[error("invalid user name: {0}")]
    Name(#[from] NameError),
    /// The system random number generator failed.
    #[error("random number generator failed: {0}")]
    Rng(String),
}

/// The user database of one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    users: BTreeMap<String, Password>,
}

fn scrypt_params(log_n: u8, r: u32, p: u32) -> Option<scrypt::Params> {
    // The length given here only matters for PHC strings; the output
    // buffer decides the real key length.
    scrypt::Params::new(log_n, r, p, 32).ok()
}

fn derive(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32, key_len: u32) -> Vec<u8> {
    let mut out = vec![0u8; key_len as usize];
    if let Some(params) = scrypt_params(log_n, r, p)
        && scrypt::scrypt(password, salt, &params, &mut out).is_ok()
    {
        return out;
    }
    Vec::new()
}

fn dummy_work(password: &str) {
    let k = derive(
        password.as_bytes(),
        b"tambo-dummy-salt",
        NEW_LOG_N,
        NEW_R,
        NEW_P,
        NEW_KEY_LEN,
    );
    std::hint::black_box(k);
}

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, line: usize, msg: impl Into<String>) -> ConfigError {
        ConfigError::parse(self.file, line, msg)
    }

    fn message<'f>(&self, f: &'f Field) -> Result<&'f [Field], ConfigError> {
        match &f.value {
            Value::Message(m) => Ok(m),
            v => Err(self.err(
                f.line,
                format!("field {:?}: expected a message, got {}", f.name, v.kind()),
            )),
        }
    }

    fn bytes<'f>(&self, f: &'f Field) -> Result<&'f [u8], ConfigError> {
        match &f.value {
            Value::Scalar(Scalar::Str(b)) => Ok(b),
            v => Err(self.err(
                f.line,
                format!("field {:?}: expected a string, got {}", f.name, v.kind()),
            )),
        }
    }

    fn int(&self, f: &Field, min: i128, max: i128) -> Result<i128, ConfigError> {
        match &f.value {
            Value::Scalar(Scalar::Int(i)) if (min..=max).contains(i) => Ok(*i),
            Value::Scalar(Scalar::Int(i)) => {
                Err(self.err(f.line, format!("field {:?}: {i} out of range ({min}..={max})", f.name)))
            }
            v => Err(self.err(
                f.line,
                format!("field {:?}: expected an integer, got {}", f.name, v.kind()),
            )),
        }
    }

    /// Checks that the fields of a message are known and not repeated.
    fn check_fields(&self, fields: &[Field], known: &[&str], what: &str) -> Result<(), ConfigError> {
        let mut seen: Vec<(&str, usize)> = Vec::new();
        for f in fields {
            if !known.contains(&f.name.as_str()) {
                return Err(self.err(f.line, format!("unknown field {:?} in {what}", f.name)));
            }
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == f.name) {
                return Err(self.err(
                    f.line,
                    format!("field {:?} given more than once (first on line {first})", f.name),
                ));
            }
            seen.push((&f.name, f.line));
        }
        Ok(())
    }

    fn password(&self, f: &Field) -> Result<Password, ConfigError> {
        let fields = self.message(f)?;
        self.check_fields(fields, &["scrypt", "plain", "denied"], "password")?;
        let [scheme] = fields else {
            return Err(self.err(
                f.line,
                if fields.is_empty() {
                    "password has no scheme (scrypt, plain or denied)".to_string()
                } else {
                    "password has more than one scheme".to_string()
                },
            ));
        };
        let inner = self.message(scheme)?;
        match scheme.name.as_str() {
            "denied" => {
                self.check_fields(inner, &[], "denied")?;
                Ok(Password::Denied)
            }
            "plain" => {
                self.check_fields(inner, &["password"], "plain")?;
                let pw = match inner.first() {
                    Some(p) => self.bytes(p)?.to_vec(),
                    None => Vec::new(),
                };
                Ok(Password::Plain(pw))
            }
            _ => self.scrypt(scheme, inner),
        }
    }

    fn scrypt(&self, f: &Field, inner: &[Field]) -> Result<Password, ConfigError> {
        self.check_fields(inner, &["logN", "r", "p", "keyLen", "salt", "encrypted"], "scrypt")?;
        let (mut log_n, mut r, mut p, mut key_len) = (0u64, 0u32, 0u32, 0u32);
        let (mut salt, mut encrypted) = (Vec::new(), Vec::new());
        for x in inner {
            match x.name.as_str() {
                "logN" => log_n = self.int(x, 0, u64::MAX.into())? as u64,
                "r" => r = self.int(x, i32::MIN.into(), i32::MAX.into())?.max(0) as u32,
                "p" => p = self.int(x, i32::MIN.into(), i32::MAX.into())?.max(0) as u32,
                "keyLen" => key_len = self.int(x, i32::MIN.into(), i32::MAX.into())?.max(0) as u32,
                "salt" => salt = self.bytes(x)?.to_vec(),
                _ => encrypted = self.bytes(x)?.to_vec(),
            }
        }
        let bad = |m: String| self.err(f.line, format!("bad scrypt parameters: {m}"));
        if log_n == 0 || log_n > MAX_LOG_N {
            return Err(bad(format!("logN {log_n} not in 1..={MAX_LOG_N}")));
        }
        if r == 0 || p == 0 {
            return Err(bad("r and p must be positive".to_string()));
        }
        let r128 = 128 * u64::from(r);
        if r128.saturating_mul(1 << log_n) > MAX_SCRYPT_MEM || r128.saturating_mul(u64::from(p)) > MAX_SCRYPT_MEM {
            return Err(bad(format!("logN {log_n}, r {r}, p {p} need too much memory")));
        }
        if scrypt_params(log_n as u8, r, p).is_none() {
            return Err(bad(format!("invalid combination logN {log_n}, r {r}, p {p}")));
        }
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(bad(format!("keyLen {key_len} not in 1..={MAX_KEY_LEN}")));
        }
        if encrypted.len() != key_len as usize {
            return Err(bad(format!(
                "encrypted is {} bytes but keyLen is {key_len}",
                encrypted.len()
            )));
        }
        Ok(Password::Scrypt {
            log_n: log_n as u8,
            r,
            p,
            key_len,
            salt,
            encrypted,
        })
    }
}

impl UserDb {
    /// An empty database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a users file. Errors name the file and line.
    pub fn load(path: &Path) -> Result<UserDb, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::io(path, e))?;
        let text = decode_utf8(bytes, &path.display().to_string())?;
        Self::parse(&text, path)
    }

    /// Like [`UserDb::load`], but a missing file is an empty database
    /// (as chasquid does).
    pub fn load_if_exists(path: &Path) -> Result<UserDb, ConfigError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserDb::new()),
            _ => Self::load(path),
        }
    }

    /// Parses the text of a users file (`path` is used in errors).
    pub fn parse(text: &str, path: &Path) -> Result<UserDb, ConfigError> {
        let file = path.display().to_string();
        let ctx = Ctx { file: &file };
        let fields = textproto::parse(text).map_err(|e| ConfigError::from_textproto(&file, e))?;
        let mut db = UserDb::new();
        let mut lines: BTreeMap<String, usize> = BTreeMap::new();
        for f in &fields {
            if f.name != "users" {
                return Err(ctx.err(f.line, format!("unknown field {:?}", f.name)));
            }
            let entry = ctx.message(f)?;
            ctx.check_fields(entry, &["key", "value"], "users entry")?;
            let Some(key) = entry.iter().find(|x| x.name == "key") else {
                return Err(ctx.err(f.line, "users entry without a key"));
            };
            let Some(value) = entry.iter().find(|x| x.name == "value") else {
                return Err(ctx.err(f.line, "users entry without a value"));
            };
            let raw = ctx.bytes(key)?;
            let name = utf8_field(key, raw).map_err(|m| ctx.err(key.line, m))?;
            let user =
                normalize_user(&name).map_err(|e| ctx.err(key.line, format!("invalid user name {name:?}: {e}")))?;
            let pw = ctx.password(value)?;
            if let Some(first) = lines.get(&user) {
                return Err(ctx.err(key.line, format!("duplicate user {user:?} (first on line {first})")));
            }
            lines.insert(user.clone(), key.line);
            db.users.insert(user, pw);
        }
        Ok(db)
    }

    /// Whether the user exists (a denied user exists too).
    pub fn exists(&self, user: &str) -> bool {
        normalize_user(user).is_ok_and(|u| self.users.contains_key(&u))
    }

    /// Returns the stored password of a user, if any.
    pub fn get(&self, user: &str) -> Option<&Password> {
        let u = normalize_user(user).ok()?;
        self.users.get(&u)
    }

    /// Checks a password. Unknown and denied users always fail, after the
    /// same amount of work, so timing does not reveal whether a user exists.
    pub fn authenticate(&self, user: &str, password: &str) -> bool {
        match self.get(user) {
            Some(Password::Scrypt {
                log_n,
                r,
                p,
                key_len,
                salt,
                encrypted,
            }) => {
                let k = derive(password.as_bytes(), salt, *log_n, *r, *p, *key_len);
                !k.is_empty() && bool::from(k.ct_eq(encrypted))
            }
            Some(Password::Plain(pw)) => bool::from(password.as_bytes().ct_eq(pw)),
            Some(Password::Denied) | None => {
                dummy_work(password);
                false
            }
        }
    }

    /// Adds (or replaces) a user with an scrypt-hashed password.
    pub fn add_user(&mut self, user: &str, password: &str) -> Result<(), UserDbError> {
        let user = normalize_user(user)?;
        let mut salt = vec![0u8; NEW_SALT_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| UserDbError::Rng(e.to_string()))?;
        let encrypted = derive(password.as_bytes(), &salt, NEW_LOG_N, NEW_R, NEW_P, NEW_KEY_LEN);
        self.users.insert(
            user,
            Password::Scrypt {
                log_n: NEW_LOG_N,
                r: NEW_R,
                p: NEW_P,
                key_len: NEW_KEY_LEN,
                salt,
                encrypted,
            },
        );
        Ok(())
    }

    /// Adds (or replaces) a user that exists but cannot authenticate.
    pub fn add_denied(&mut self, user: &str) -> Result<(), UserDbError> {
        let user = normalize_user(user)?;
        self.users.insert(user, Password::Denied);
        Ok(())
    }

    /// Removes a user; returns whether it existed.
    pub fn remove_user(&mut self, user: &str) -> bool {
        match normalize_user(user) {
            Ok(u) => self.users.remove(&u).is_some(),
            Err(_) => false,
        }
    }

    /// The (normalised) user names, sorted.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Serialises the database in text format, sorted by user.
    pub fn to_text(&self) -> String {
        let q = textproto::quote_bytes;
        let mut out = String::new();
        for (user, pw) in &self.users {
            out.push_str("users: {\n");
            out.push_str(&format!("  key: {}\n", q(user.as_bytes())));
            out.push_str("  value: {\n");
            match pw {
                Password::Scrypt {
                    log_n,
                    r,
                    p,
                    key_len,
                    salt,
                    encrypted,
                } => {
                    out.push_str("    scrypt: {\n");
                    out.push_str(&format!("      logN: {log_n}\n"));
                    out.push_str(&format!("      r: {r}\n"));
                    out.push_str(&format!("      p: {p}\n"));
                    out.push_str(&format!("      keyLen: {key_len}\n"));
                    out.push_str(&format!("      salt: {}\n", q(salt)));
                    out.push_str(&format!("      encrypted: {}\n", q(encrypted)));
                    out.push_str("    }\n");
                }
                Password::Plain(pw) => {
                    out.push_str(&format!("    plain: {{\n      password: {}\n    }}\n", q(pw)));
                }
                Password::Denied => out.push_str("    denied: {}\n"),
            }
            out.push_str("  }\n}\n");
        }
        out
    }

    /// Writes the database to `path` atomically: a temporary file in the
    /// same directory, fsync, rename, fsync of the directory. Keeps the
    /// mode (and, where permitted, the owner) of an existing file; new
    /// files get mode 0640.
    pub fn write_atomic(&self, path: &Path) -> Result<(), ConfigError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
        let io = |e| ConfigError::io(path, e);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let fname = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "users".to_string());
        let old = std::fs::metadata(path).ok();
        let mode = old.as_ref().map(|m| m.mode() & 0o7777).unwrap_or(0o640);
        let mut rnd = [0u8; 8];
        rand::rngs::OsRng
            .try_fill_bytes(&mut rnd)
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let tmp_name = format!(
            ".{fname}.tmp.{}.{}",
            std::process::id(),
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let tmp = dir.join(tmp_name);
        let result = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            if let Some(m) = &old {
                // Best effort: only root (or the owner) can do this.
                let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            }
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(self.to_text().as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("domains/example.com/users")
    }

    fn err(text: &str) -> String {
        UserDb::parse(text, &p()).unwrap_err().to_string()
    }

    /// RFC 7914 test vector: scrypt("password", "NaCl", N=1024, r=8, p=16,
    /// dkLen=64), written as a chasquid users entry with octal escapes.
    const RFC7914: &str = r#"
users: {
  key: "rfc"
  value: {
    scrypt: {
      logN: 10
      r: 8
      p: 16
      keyLen: 64
      salt: "NaCl"
      encrypted: "\375\272\276\034\2354r\000xV\347\031\015\001\351\376|j\327\313\310#x0\347svcK71b.\2570\331.\"\243\210o\361\011'\235\2300\332\307'\257\271J\203\356m\203`\313\337\242\314\006@"
    }
  }
}
users {
  key: "plainuser"
  value { plain { password: "s3cr\303\251t" } }
}
users: < key: "nobody" value: < denied: {} > >
"#;

    #[test]
    fn rfc7914_vector() {
        let db = UserDb::parse(RFC7914, &p()).unwrap();
        assert_eq!(db.users().collect::<Vec<_>>(), vec!["nobody", "plainuser", "rfc"]);
        let Some(Password::Scrypt { encrypted, .. }) = db.get("rfc") else {
            panic!("not scrypt")
        };
        let hex: String = encrypted.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b3731622eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        );
        assert!(db.authenticate("rfc", "password"));
        assert!(db.authenticate("RFC", "password"));
        assert!(!db.authenticate("rfc", "Password"));
        assert!(!db.authenticate("rfc", ""));
    }

    #[test]
    fn plain_and_denied() {
        let db = UserDb::parse(RFC7914, &p()).unwrap();
        assert!(db.authenticate("plainuser", "s3crét"));
        assert!(!db.authenticate("plainuser", "s3cret"));
        assert!(!db.authenticate("plainuser", "s3crét "));
        assert!(db.exists("nobody"));
        assert!(db.exists("NoBody"));
        assert!(!db.authenticate("nobody", ""));
        assert!(!db.exists("ghost"));
        assert!(!db.exists("bad user"));
        assert!(!db.authenticate("ghost", "password"));
        assert!(!format!("{:?}", db).contains("s3cr"));
    }

    #[test]
    fn text_roundtrip() {
        let mut db = UserDb::parse(RFC7914, &p()).unwrap();
        db.add_user("Alice", "correct horse").unwrap();
        db.add_denied("zed").unwrap();
        assert!(db.add_user("a b", "x").is_err());
        assert!(db.exists("alice"));
        let text = db.to_text();
        let back = UserDb::parse(&text, &p()).unwrap();
        assert_eq!(back, db);
        assert!(back.authenticate("alice", "correct horse"));
        assert!(!back.authenticate("alice", "correct horse!"));
        let Some(Password::Scrypt {
            log_n,
            r,
            p,
            key_len,
            salt,
            encrypted,
        }) = back.get("alice")
        else {
            panic!()
        };
        assert_eq!((*log_n, *r, *p, *key_len), (14, 8, 1, 32));
        assert_eq!((salt.len(), encrypted.len()), (16, 32));
        // Sorted output.
        let keys: Vec<_> = text.lines().filter(|l| l.contains("key:")).collect();
        assert_eq!(keys.len(), 5);
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);

        assert!(db.remove_user("ALICE"));
        assert!(!db.remove_user("alice"));
        assert!(!db.exists("alice"));
        assert_eq!(db.len(), 4);
    }

    #[test]
    fn errors() {
        let e = err("users: {\n key: \"a\"\n value: { denied: {} }\n}\nfoo: 1\n");
        assert_eq!(e, "domains/example.com/users:5: unknown field \"foo\"");
        let e = err("users: { key: \"a\"\n value: { denied: { x: 1 } } }");
        assert!(e.contains(":2: unknown field \"x\" in denied"), "{e}");
        let e = err("users: { key: \"a\" value: { scrypt: { logN: 14\n bogus: 1 } } }");
        assert!(e.contains(":2:") && e.contains("bogus"), "{e}");
        let e = err("users: { key: 3 value: { denied: {} } }");
        assert!(e.contains("expected a string"), "{e}");
        let e = err("users: 3");
        assert!(e.contains("expected a message"), "{e}");
        let e = err("users: { key: \"a\" value: { denied: {} } }\n\nusers: { key: \"A\" value: { denied: {} } }");
        assert!(e.contains(":3: duplicate user \"a\" (first on line 1)"), "{e}");
        let e = err("users: { key: \"a b\" value: { denied: {} } }");
        assert!(e.contains("invalid user name"), "{e}");
        let e = err("users: { key: \"\\377\" value: { denied: {} } }");
        assert!(e.contains("invalid UTF-8"), "{e}");
        let e = err("users: { value: { denied: {} } }");
        assert!(e.contains("without a key"), "{e}");
        let e = err("users: { key: \"a\" }");
        assert!(e.contains("without a value"), "{e}");
        let e = err("users: { key: \"a\" value: {} }");
        assert!(e.contains("no scheme"), "{e}");
        let e = err("users: { key: \"a\" value: { denied: {} plain: {} } }");
        assert!(e.contains("more than one scheme"), "{e}");
        let e = err("users: { key: \"a\" key: \"b\" value: { denied: {} } }");
        assert!(e.contains("more than once"), "{e}");
        let e = err("users: { key: \"a\" value: { denied: 1 } }");
        assert!(e.contains("expected a message"), "{e}");
        let e = err("users: {");
        assert!(e.starts_with("domains/example.com/users:1: column"), "{e}");

        let sc = |params: &str, enc_len: usize| {
            format!(
                "users: {{ key: \"a\" value: {{ scrypt: {{ {params} salt: \"s\" encrypted: \"{}\" }} }} }}",
                "x".repeat(enc_len)
            )
        };
        assert!(UserDb::parse(&sc("logN: 14 r: 8 p: 1 keyLen: 32", 32), &p()).is_ok());
        for (params, len, what) in [
            ("logN: 21 r: 8 p: 1 keyLen: 32", 32, "logN 21"),
            ("logN: 0 r: 8 p: 1 keyLen: 32", 32, "logN 0"),
            ("logN: 14 r: 8 p: 1 keyLen: 0", 0, "keyLen 0"),
            ("logN: 14 r: 8 p: 1 keyLen: 129", 129, "keyLen 129"),
            ("logN: 14 r: 8 p: 1 keyLen: 32", 31, "31 bytes"),
            ("logN: 14 r: 0 p: 1 keyLen: 32", 32, "positive"),
            ("logN: 14 r: 8 keyLen: 32", 32, "positive"),
            ("logN: 14 r: -1 p: 1 keyLen: 32", 32, "positive"),
            ("logN: 20 r: 100 p: 1 keyLen: 32", 32, "memory"),
            ("logN: 14 r: 8 p: 99999999 keyLen: 32", 32, "memory"),
            ("logN: -1 r: 8 p: 1 keyLen: 32", 32, "out of range"),
            ("logN: 14 r: 8 p: 1 keyLen: \"32\"", 32, "expected an integer"),
        ] {
            let e = err(&sc(params, len));
            assert!(e.contains(what), "{params}: {e}");
        }
    }

    #[test]
    fn mutated_inputs_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let conf = "hostname: \"a\"\nsmtp_address: \":25\"\nmax_queue_items: 3\ngive_up_send_after: \"1h\"\n";
        for i in 0..3000 {
            let base = if i % 2 == 0 { RFC7914 } else { conf };
            let mut b = base.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let pos = rng.gen_range(0..b.len());
                match rng.gen_range(0..3) {
                    0 => b[pos] = rng.r#gen(),
                    1 => {
                        b.remove(pos);
                    }
                    _ => {
                        let alphabet = b"{}:\"\\0-9x#\n";
                        b.insert(pos, alphabet[rng.gen_range(0..alphabet.len())]);
                    }
                }
            }
            let text = String::from_utf8_lossy(&b);
            let _ = UserDb::parse(&text, &p());
            let _ = crate::config::parse_config(&text, &p());
        }
    }

    #[test]
    fn files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let e = UserDb::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(UserDb::load_if_exists(&path).unwrap().is_empty());

        let mut db = UserDb::new();
        db.add_denied("bob").unwrap();
        db.write_atomic(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(UserDb::load(&path).unwrap(), db);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        db.add_denied("carol").unwrap();
        db.write_atomic(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(UserDb::load(&path).unwrap().len(), 2);
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(&path, b"\nusers: { key: \"\xff\" }").unwrap();
        let e = UserDb::load(&path).unwrap_err().to_string();
        assert!(e.ends_with("users:2: invalid UTF-8"), "{e}");

        // Writing into a missing directory fails cleanly.
        assert!(db.write_atomic(&dir.path().join("nope/users")).is_err());
    }
}
