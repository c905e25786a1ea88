//! Import of chasquid's MTA-STS policy cache at deliverd's start: each
//! `sts-cache/pol:<domain>` that chasquid wrote becomes our cache file
//! `sts-cache/<domain>` (see [`super::sts`]), keeping its expiry, so a
//! switch from chasquid does not forget the policies it had learnt (they
//! stay in force while unexpired when a fetch fails, RFC 8461 §5.1).
//!
//! chasquid's file holds the policy as JSON,
//! `{"version":"STSv1","mode":"enforce","mx":["mx.example.com"],"max_age":86400000000000}`
//! (`max_age` in nanoseconds, Go's `time.Duration`), and the file's
//! modification time is when the policy expires. chasquid does not keep
//! the TXT record's id: the imported policy gets the id
//! [`IMPORTED_POLICY_ID`], which no TXT record has, so the first delivery
//! to the domain that finds a TXT record fetches the policy again, and the
//! imported one stays in force if that fetch fails.
//!
//! Each original, once handled (imported, expired or unusable), is moved
//! to `sts-cache/chasquid-imported/`; one that cannot be read is left in
//! place for the next start. A crash in between imports the same file
//! again, which writes the same cache file.

use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::Deserialize;
use tambo_common::names::domain_to_ascii;

use super::sts::{
    CachedPolicy, MAX_AGE_CAP, MAX_POLICY_BYTES, cache_file_name_ok, parse_policy, read_cache_file, unix_now,
    write_cache_file,
};

/// Prefix of chasquid's cache file names.
pub const FILE_PREFIX: &str = "pol:";
/// Where the originals go, under the cache directory.
pub const IMPORTED_DIR: &str = "chasquid-imported";
/// The id of an imported policy: not 1 to 32 letters and digits, so never
/// a TXT record's.
pub const IMPORTED_POLICY_ID: &str = "chasquid-import";

/// chasquid's `sts.Policy` as its cache stores it.
#[derive(Deserialize)]
struct ChasquidPolicy {
    version: String,
    mode: String,
    #[serde(default)]
    mx: Option<Vec<String>>,
    max_age: i64,
}

/// Why a chasquid cache file was not imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The name after `pol:` is not a domain.
    #[error("{0:?} is not a domain name")]
    Domain(String),
    /// Not chasquid's JSON.
    #[error("not a chasquid policy: {0}")]
    Json(String),
    /// The policy is not valid.
    #[error("invalid policy: {0}")]
    Policy(String),
}

/// What one file gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// Our cache entry for the (ASCII) domain.
    Policy(String, CachedPolicy),
    /// The policy expired: dropped.
    Expired(String),
}

/// Convert one chasquid cache file: its name after `pol:`, its content
/// and its modification time (the expiry, Unix seconds). The expiry is
/// kept, but never more than a year from `now`.
pub fn convert(name: &str, json: &[u8], expires: u64, now: u64) -> Result<Converted, ImportError> {
    let domain = domain_to_ascii(name.trim_end_matches('.'))
        .map(|d| d.to_ascii_lowercase())
        .ok()
        .filter(|d| cache_file_name_ok(d) && d.contains('.'))
        .ok_or_else(|| ImportError::Domain(name.to_string()))?;
    let p: ChasquidPolicy = serde_json::from_slice(json).map_err(|e| ImportError::Json(e.to_string()))?;
    let mx = p.mx.unwrap_or_default();
    let fields = [&p.version, &p.mode].into_iter().chain(mx.iter());
    if fields.clone().any(|v| v.chars().any(char::is_control)) {
        return Err(ImportError::Policy("a control character in a field".into()));
    }
    const NANOS: i64 = 1_000_000_000;
    if p.max_age < NANOS || p.max_age / NANOS > MAX_AGE_CAP as i64 {
        return Err(ImportError::Policy(format!("max_age of {} ns", p.max_age)));
    }
    let max_age = (p.max_age / NANOS) as u64;
    let mut text = format!("version: {}\r\nmode: {}\r\n", p.version, p.mode);
    for m in &mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str(&format!("max_age: {max_age}\r\n"));
    let policy = parse_policy(&text).map_err(|e| ImportError::Policy(e.to_string()))?;
    if expires <= now {
        return Ok(Converted::Expired(domain));
    }
    let expires = expires.min(now + MAX_AGE_CAP);
    Ok(Converted::Policy(
        domain,
        CachedPolicy {
            id: IMPORTED_POLICY_ID.to_string(),
            fetched: expires.saturating_sub(max_age).min(now),
            expires,
            policy,
            text,
        },
    ))
}

/// Fuzzing entry point: any name, content and times; a converted policy
/// has a valid domain file name and an expiry after `now`, within a year.
pub fn fuzz_convert(data: &[u8]) {
    let (name, json) = match data.iter().position(|b| *b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => (String::new(), data),
    };
    let now = 1_800_000_000;
    for expires in [0, now, now + 1, u64::MAX] {
        if let Ok(Converted::Policy(domain, c)) = convert(&name, json, expires, now) {
            assert!(cache_file_name_ok(&domain));
            assert!(c.expires > now && c.expires <= now + MAX_AGE_CAP);
            assert!(c.fetched <= now);
            assert_eq!(parse_policy(&c.text).ok(), Some(c.policy.clone()));
        }
    }
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Policies now in our cache.
    pub imported: usize,
    /// Expired policies dropped.
    pub expired: usize,
    /// Unusable files dropped.
    pub invalid: usize,
    /// Domains whose own (newer) cache file was kept.
    pub kept: usize,
    /// Files left for the next start (unreadable, or the cache not
    /// writable).
    pub left: usize,
}

fn move_aside(dir: &Path, name: &str) {
    if let Err(e) = std::fs::rename(dir.join(name), dir.join(IMPORTED_DIR).join(name)) {
        tracing::error!(
            "MTA-STS cache {}: cannot move to {IMPORTED_DIR}/: {e}",
            dir.join(name).display()
        );
    }
}

/// Read one file, bounded; its content and modification time.
fn read(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    let f = std::fs::File::open(path)?;
    let mtime = f
        .metadata()?
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut content = Vec::new();
    f.take(MAX_POLICY_BYTES as u64 * 2).read_to_end(&mut content)?;
    Ok((content, mtime))
}

/// Import chasquid's cache files in `dir` (`data_dir/sts-cache`).
pub fn import_cache(dir: &Path) -> Report {
    let mut report = Report::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return report;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|d| d.file_type().is_ok_and(|t| t.is_file()))
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() > FILE_PREFIX.len() && n.starts_with(FILE_PREFIX))
        .collect();
    if names.is_empty() {
        return report;
    }
    names.sort();
    if let Err(e) = std::fs::create_dir_all(dir.join(IMPORTED_DIR)) {
        tracing::error!(
            "MTA-STS cache {}: {e}; chasquid's policies are not imported",
            dir.join(IMPORTED_DIR).display()
        );
        report.left = names.len();
        return report;
    }
    let now = unix_now();
    for name in &names {
        let path = dir.join(name);
        let (content, mtime) = match read(&path) {
            Ok(x) => x,
            Err(e) => {
                let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "; make chasquid's files in sts-cache belong to deliverd's user (tambo-deliver)"
                } else {
                    ""
                };
                tracing::error!("MTA-STS cache {}: {e}{fix}; left for the next start", path.display());
                report.left += 1;
                continue;
            }
        };
        match convert(&name[FILE_PREFIX.len()..], &content, mtime, now) {
            Ok(Converted::Policy(domain, c)) => {
                if let Some(ours) = read_cache_file(dir, &domain)
                    && ours.expires >= c.expires
                {
                    tracing::info!(
                        domain,
                        "MTA-STS: chasquid's policy from {name} is older than ours: ours kept"
                    );
                    report.kept += 1;
                } else if let Err(e) = write_cache_file(dir, &domain, &c) {
                    tracing::error!(
                        domain,
                        "MTA-STS cache: cannot write: {e}; {name} left for the next start"
                    );
                    report.left += 1;
                    continue;
                } else {
                    tracing::info!(
                        domain,
                        mode = c.policy.mode.name(),
                        mx = %c.policy.mx.join(","),
                        expires = c.expires,
                        "MTA-STS: policy imported from chasquid's cache ({name})"
                    );
                    report.imported += 1;
                }
            }
            Ok(Converted::Expired(domain)) => {
                tracing::info!(domain, "MTA-STS: chasquid's policy in {name} has expired: dropped");
                report.expired += 1;
            }
            Err(e) => {
                tracing::warn!("MTA-STS cache {}: {e}; dropped", path.display());
                report.invalid += 1;
            }
        }
        move_aside(dir, name);
    }
    for d in [dir.join(IMPORTED_DIR), dir.to_path_buf()] {
        if let Err(e) = std::fs::File::open(&d).and_then(|f| f.sync_all()) {
            tracing::warn!("{}: fsync: {e}", d.display());
        }
    }
    tracing::info!(
        "MTA-STS: chasquid's cache imported: {} policies, {} expired, {} invalid, {} older than ours, {} left; originals in {}",
        report.imported,
        report.expired,
        report.invalid,
        report.kept,
        report.left,
        dir.join(IMPORTED_DIR).display()
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const DAY_NS: i64 = 86_400 * 1_000_000_000;

    /// A cache file as chasquid's `PolicyCache.store` writes it: the policy
    /// marshalled by encoding/json, the expiry as the file's mtime.
    fn chasquid_file(dir: &Path, domain: &str, mode: &str, mx: &[&str], max_age_ns: i64, expires: u64) {
        let mx = if mx.is_empty() {
            "null".to_string()
        } else {
            format!(
                "[{}]",
                mx.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(",")
            )
        };
        let json = format!("{{\"version\":\"STSv1\",\"mode\":\"{mode}\",\"mx\":{mx},\"max_age\":{max_age_ns}}}");
        let path = dir.join(format!("pol:{domain}"));
        std::fs::write(&path, json).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn converts_keeping_the_expiry() {
        let json = br#"{"version":"STSv1","mode":"enforce","mx":["mx1.Example.com","*.example.net"],"max_age":604800000000000}"#;
        let Converted::Policy(domain, c) = convert("Example.COM", json, NOW + 3600, NOW).unwrap() else {
            panic!("not imported")
        };
        assert_eq!(domain, "example.com");
        assert_eq!((c.id.as_str(), c.expires), (IMPORTED_POLICY_ID, NOW + 3600));
        assert_eq!(c.fetched, NOW + 3600 - 604800);
        assert_eq!(c.policy.mx, vec!["mx1.example.com", "*.example.net"]);
        assert_eq!(c.policy.max_age, 604800);
        assert!(super::super::sts::parse_txt(&[format!("v=STSv1; id={IMPORTED_POLICY_ID}")]).is_err());
        // Unicode names become ASCII; mode none has no mx (null).
        let none = br#"{"version":"STSv1","mode":"none","mx":null,"max_age":86400000000000}"#;
        let Converted::Policy(d, c) = convert("ñandú.test", none, NOW + 1, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(d, "xn--and-6ma2c.test");
        assert!(c.policy.mx.is_empty());
        // Never more than a year ahead.
        let Converted::Policy(_, c) = convert("a.test", json, u64::MAX, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(c.expires, NOW + MAX_AGE_CAP);
    }

    #[test]
    fn expired_and_invalid() {
        let json = br#"{"version":"STSv1","mode":"enforce","mx":["mx.a.test"],"max_age":86400000000000}"#;
        assert_eq!(
            convert("a.test", json, NOW, NOW),
            Ok(Converted::Expired("a.test".into()))
        );
        let bad = |name: &str, json: &str| convert(name, json.as_bytes(), NOW + 10, NOW).unwrap_err();
        assert!(matches!(
            bad("../x", std::str::from_utf8(json).unwrap()),
            ImportError::Domain(_)
        ));
        assert!(matches!(
            bad("nodot", std::str::from_utf8(json).unwrap()),
            ImportError::Domain(_)
        ));
        assert!(matches!(bad("a.test", "{"), ImportError::Json(_)));
        assert!(matches!(
            bad(
                "a.test",
                r#"{"version":"STSv2","mode":"enforce","mx":["m.a.test"],"max_age":86400000000000}"#
            ),
            ImportError::Policy(_)
        ));
        assert!(matches!(
            bad(
                "a.test",
                r#"{"version":"STSv1","mode":"enforce","mx":null,"max_age":86400000000000}"#
            ),
            ImportError::Policy(_)
        ));
        assert!(matches!(
            bad(
                "a.test",
                r#"{"version":"STSv1","mode":"enforce","mx":["m.a.test\nmode: none"],"max_age":86400000000000}"#
            ),
            ImportError::Policy(_)
        ));
        assert!(matches!(
            bad(
                "a.test",
                r#"{"version":"STSv1","mode":"enforce","mx":["m.a.test"],"max_age":0}"#
            ),
            ImportError::Policy(_)
        ));
    }

    #[test]
    fn import_moves_originals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = unix_now();
        chasquid_file(dir, "live.test", "enforce", &["mx.live.test"], DAY_NS, now + 3000);
        chasquid_file(dir, "old.test", "enforce", &["mx.old.test"], DAY_NS, now - 10);
        chasquid_file(
            dir,
            "testing.test",
            "testing",
            &["*.testing.test"],
            7 * DAY_NS,
            now + 7 * 86400,
        );
        std::fs::write(dir.join("pol:broken.test"), "{\"version\":").unwrap();
        // Ours, newer than chasquid's: kept.
        let ours = CachedPolicy {
            id: "abc".into(),
            fetched: now,
            expires: now + 9000,
            policy: parse_policy("version: STSv1\nmode: none\nmax_age: 9000\n").unwrap(),
            text: "version: STSv1\nmode: none\nmax_age: 9000\n".into(),
        };
        write_cache_file(dir, "mine.test", &ours).unwrap();
        chasquid_file(dir, "mine.test", "enforce", &["mx.mine.test"], DAY_NS, now + 3000);
        let report = import_cache(dir);
        assert_eq!(
            report,
            Report {
                imported: 2,
                expired: 1,
                invalid: 1,
                kept: 1,
                left: 0
            }
        );
        let live = read_cache_file(dir, "live.test").unwrap();
        assert_eq!(
            (live.expires, live.policy.mx.clone()),
            (now + 3000, vec!["mx.live.test".to_string()])
        );
        assert!(read_cache_file(dir, "old.test").is_none());
        assert_eq!(read_cache_file(dir, "mine.test").unwrap(), ours);
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|d| d.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("pol:"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(std::fs::read_dir(dir.join(IMPORTED_DIR)).unwrap().count(), 5);
        // A second start has nothing to do.
        assert_eq!(import_cache(dir), Report::default());
    }
}
