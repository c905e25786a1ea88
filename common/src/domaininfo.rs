//! Per-domain security levels, stored like chasquid's `domaininfo`: one
//! file per domain in `data_dir/domaininfo/`, named `s:` followed by the
//! URL query escape of the domain, holding a protobuf text-format `Domain`
//! message (`name`, `incoming_sec_level`, `outgoing_sec_level`).
//!
//! Only queued reads and writes these files in a running server (deliverd
//! learns the recorded level in each job and reports what it saw); the
//! `tambo domaininfo-remove` command asks a running server to forget a
//! domain, or removes its file directly when none runs.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::textproto::{self, Scalar, Value};

/// Security level of a connection, in increasing order (chasquid's
/// `SecLevel`). Outgoing connections use `Plain`, `TlsInsecure` (TLS whose
/// certificate did not verify for the MX name) and `TlsSecure`; incoming
/// ones use `Plain` and `TlsClient`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum SecLevel {
    /// No TLS.
    #[default]
    Plain,
    /// TLS, incoming (the client's certificate is not checked).
    TlsClient,
    /// TLS with a certificate that does not verify.
    TlsInsecure,
    /// TLS with a certificate valid for the host name.
    TlsSecure,
}

impl SecLevel {
    /// The enum name chasquid writes.
    pub fn name(self) -> &'static str {
        match self {
            SecLevel::Plain => "PLAIN",
            SecLevel::TlsClient => "TLS_CLIENT",
            SecLevel::TlsInsecure => "TLS_INSECURE",
            SecLevel::TlsSecure => "TLS_SECURE",
        }
    }

    /// Parse an enum name (or its number).
    pub fn from_name(s: &str) -> Option<SecLevel> {
        Some(match s {
            "PLAIN" | "0" => SecLevel::Plain,
            "TLS_CLIENT" | "1" => SecLevel::TlsClient,
            "TLS_INSECURE" | "2" => SecLevel::TlsInsecure,
            "TLS_SECURE" | "3" => SecLevel::TlsSecure,
            _ => return None,
        })
    }
}

/// What is known of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainRecord {
    /// The domain (as used in addresses, normalised).
    pub name: String,
    /// Highest level seen on incoming connections from this domain.
    pub incoming: SecLevel,
    /// Highest level reached delivering to this domain.
    pub outgoing: SecLevel,
}

/// A problem with a domaininfo file.
#[derive(Debug, thiserror::Error)]
pub enum DomainInfoError {
    /// The file cannot be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The file does not parse.
    #[error("{0}:{1}: {2}")]
    Parse(PathBuf, usize, String),
}

/// The file name (without directory) for `domain`.
pub fn file_name(domain: &str) -> String {
    let mut out = String::from("s:");
    for b in domain.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parse the text of one file; `path` is for error messages.
pub fn parse_record(text: &str, path: &Path) -> Result<DomainRecord, DomainInfoError> {
    let fields = textproto::parse(text).map_err(|e| DomainInfoError::Parse(path.into(), e.line, e.msg.clone()))?;
    let mut rec = DomainRecord::default();
    for f in fields {
        let bad = |what: &str| DomainInfoError::Parse(path.into(), f.line, what.to_string());
        match (f.name.as_str(), &f.value) {
            ("name", Value::Scalar(Scalar::Str(s))) => {
                rec.name = String::from_utf8(s.clone()).map_err(|_| bad("name is not UTF-8"))?;
            }
            ("incoming_sec_level" | "outgoing_sec_level", Value::Scalar(Scalar::Ident(s))) => {
                let level = SecLevel::from_name(s).ok_or_else(|| bad(&format!("unknown security level {s}")))?;
                if f.name == "incoming_sec_level" {
                    rec.incoming = level;
                } else {
                    rec.outgoing = level;
                }
            }
            ("incoming_sec_level" | "outgoing_sec_level", Value::Scalar(Scalar::Int(n))) => {
                let level =
                    SecLevel::from_name(&n.to_string()).ok_or_else(|| bad(&format!("unknown security level {n}")))?;
                if f.name == "incoming_sec_level" {
                    rec.incoming = level;
                } else {
                    rec.outgoing = level;
                }
            }
            (name, v) => return Err(bad(&format!("unexpected field {name} ({})", v.kind()))),
        }
    }
    if rec.name.is_empty() {
        return Err(DomainInfoError::Parse(path.into(), 1, "missing name".into()));
    }
    Ok(rec)
}

/// The text-format form of a record.
pub fn format_record(rec: &DomainRecord) -> String {
    format!(
        "name: {}\nincoming_sec_level: {}\noutgoing_sec_level: {}\n",
        textproto::quote_bytes(rec.name.as_bytes()),
        rec.incoming.name(),
        rec.outgoing.name()
    )
}

/// Load every record of `dir`. Files that do not parse are returned as
/// errors (and otherwise ignored); a missing directory is empty.
pub fn load_dir(dir: &Path) -> (HashMap<String, DomainRecord>, Vec<DomainInfoError>) {
    let mut map = HashMap::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (map, errors),
        Err(e) => {
            errors.push(DomainInfoError::Io(dir.into(), e));
            return (map, errors);
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("s:") {
            continue;
        }
        let path = entry.path();
        match std::fs::read(&path) {
            Ok(bytes) => match parse_record(&String::from_utf8_lossy(&bytes), &path) {
                Ok(rec) => {
                    map.insert(rec.name.clone(), rec);
                }
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(DomainInfoError::Io(path, e)),
        }
    }
    (map, errors)
}

/// Write a record durably (temporary file, fsync, rename, directory
/// fsync).
pub fn write_record(dir: &Path, rec: &DomainRecord) -> Result<(), DomainInfoError> {
    let path = dir.join(file_name(&rec.name));
    let tmp = dir.join(format!(".tmp.{}", file_name(&rec.name)));
    let io = |e| DomainInfoError::Io(path.clone(), e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(format_record(rec).as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    // The rename itself must survive a crash too.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DomainInfoError::Io(dir.into(), e))?;
    Ok(())
}

/// Remove the record of `domain`; `Ok(false)` when there was none.
pub fn remove_record(dir: &Path, domain: &str) -> Result<bool, DomainInfoError> {
    let path = dir.join(file_name(domain));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DomainInfoError::Io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_like_go_query_escape() {
        assert_eq!(file_name("example.com"), "s:example.com");
        assert_eq!(file_name("ñandú.com"), "s:%C3%B1and%C3%BA.com");
        assert_eq!(file_name("a/b"), "s:a%2Fb");
    }

    #[test]
    fn round_trip_and_chasquid_format() {
        let dir = tempfile::tempdir().unwrap();
        let rec = DomainRecord {
            name: "example.org".into(),
            incoming: SecLevel::TlsClient,
            outgoing: SecLevel::TlsSecure,
        };
        write_record(dir.path(), &rec).unwrap();
        // A file as chasquid writes it (omitted fields are PLAIN).
        std::fs::write(
            dir.path().join("s:other.net"),
            "name: \"other.net\"\noutgoing_sec_level: TLS_INSECURE\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("s:broken"), "name: \"x\"\noutgoing_sec_level: BOGUS\n").unwrap();
        let (map, errors) = load_dir(dir.path());
        assert_eq!(map.get("example.org"), Some(&rec));
        assert_eq!(map["other.net"].outgoing, SecLevel::TlsInsecure);
        assert_eq!(map["other.net"].incoming, SecLevel::Plain);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("s:broken:2"), "{}", errors[0]);
        assert!(remove_record(dir.path(), "example.org").unwrap());
        assert!(!remove_record(dir.path(), "example.org").unwrap());
    }
}
