//! MTA-STS (RFC 8461): the `_mta-sts.<domain>` TXT record, the policy
//! fetched over HTTPS from `https://mta-sts.<domain>/.well-known/mta-sts.txt`,
//! its cache under `data_dir/sts-cache`, and what a policy means for the
//! MXs of a delivery.
//!
//! Who writes the cache: deliverd (user `tambo-deliver`), the only process
//! that fetches policies; tambod makes `data_dir/sts-cache` belong to that
//! user. The cache is a cache: losing it costs a fetch, and while a policy
//! in it is unexpired it is used when the fetch fails (RFC 8461 §5.1).
//!
//! What a policy does (see [`StsDecision`]): `enforce` keeps only the MXs
//! that match the policy and requires TLS with a certificate valid for the
//! MX name ([`SecLevel::TlsSecure`]); anything less is a temporary failure,
//! never a downgrade. `testing` only logs and counts what `enforce` would
//! have refused. `none` does nothing. DANE takes precedence over MTA-STS
//! (RFC 8461 §2): the courier applies [`StsDecision::check_host`] and
//! [`StsDecision::floor`] only to MX hosts that DANE does not authenticate.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tambo_common::domaininfo::SecLevel;
use tambo_ipc::metrics::{self, Metric};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::dns::Dns;
use super::tls::TlsClient;

/// Largest policy body accepted (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// Largest HTTP status line plus headers accepted.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most `mx` lines kept from one policy.
const MAX_MX_PATTERNS: usize = 64;
/// A policy is never kept longer than this (RFC 8461's maximum max_age,
/// about one year), whatever its max_age says.
pub const MAX_AGE_CAP: u64 = 31_557_600;
/// A policy is kept at least this long (one hour), so a domain with a tiny
/// max_age does not make every delivery refetch it. A changed TXT id still
/// refreshes it at once.
pub const MAX_AGE_FLOOR: u64 = 3600;
/// After a failed fetch, the same domain and id are not fetched again for
/// this long (the cached policy, if any, stays in force meanwhile).
const FAILURE_BACKOFF: Duration = Duration::from_secs(300);
/// Most policies (and failures) remembered in memory.
const MAX_MEMORY_ENTRIES: usize = 4096;
/// First line of a cache file.
const CACHE_MAGIC: &str = "# tambo MTA-STS policy cache v1";

/// The `mode` of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Refuse MXs that do not match or lack a valid certificate.
    Enforce,
    /// Report only.
    Testing,
    /// No policy (the domain withdrew it).
    None,
}

impl Mode {
    /// The name used in policies and logs.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// `mx` patterns, lower case ("mx.example.com" or "*.example.com").
    pub mx: Vec<String>,
    /// `max_age` as published, in seconds.
    pub max_age: u64,
}

/// Why a policy file or TXT record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line is not valid.
    #[error("line {0}: {1}")]
    Line(usize, String),
    /// The whole is not valid (a field missing, too large).
    #[error("{0}")]
    Invalid(String),
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Whether `s` is a host name (or, with `wildcard`, `*.` and a host name):
/// LDH labels of 1 to 63 characters, at least two labels.
fn valid_mx_pattern(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    if name.is_empty() || name.len() > 253 || !name.contains('.') {
        return false;
    }
    name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Parse a policy file (RFC 8461 §3.2): `key: value` lines (CRLF or LF),
/// `version: STSv1`, `mode`, `max_age` and, unless the mode is `none`, at
/// least one `mx`. Field names and values are case-sensitive as in the
/// RFC's grammar; unknown fields are ignored; a known field given twice
/// (other than `mx`) is an error.
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Invalid(format!(
            "policy of {} bytes is larger than {MAX_POLICY_BYTES}",
            text.len()
        )));
    }
    let (mut version, mut mode, mut max_age) = (None::<()>, None, None);
    let mut mx = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim_matches(is_wsp).is_empty() {
            continue;
        }
        let bad = |m: String| PolicyError::Line(n, m);
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad("control character".into()));
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!("{line:?} is not \"key: value\"")));
        };
        let value = value.trim_matches(is_wsp);
        if key.is_empty() || key.len() > 32 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
            return Err(bad(format!("bad field name {key:?}")));
        }
        if value.is_empty() {
            return Err(bad(format!("{key}: empty value")));
        }
        let once = |seen: bool| {
            if seen {
                Err(bad(format!("{key} given more than once")))
            } else {
                Ok(())
            }
        };
        match key {
            "version" => {
                once(version.is_some())?;
                if value != "STSv1" {
                    return Err(bad(format!("version {value:?} is not STSv1")));
                }
                version = Some(());
            }
            "mode" => {
                once(mode.is_some())?;
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(bad(format!("unknown mode {value:?}"))),
                });
            }
            "max_age" => {
                once(max_age.is_some())?;
                if value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(format!("max_age {value:?} is not 1 to 10 digits")));
                }
                max_age = Some(value.parse::<u64>().map_err(|e| bad(format!("max_age: {e}")))?);
            }
            "mx" => {
                let pattern = value.to_ascii_lowercase();
                if !valid_mx_pattern(&pattern) {
                    return Err(bad(format!("mx {value:?} is not a host name or *.name")));
                }
                if mx.len() >= MAX_MX_PATTERNS {
                    return Err(bad(format!("more than {MAX_MX_PATTERNS} mx lines")));
                }
                if !mx.contains(&pattern) {
                    mx.push(pattern);
                }
            }
            _ => {} // extension fields (RFC 8461 §3.2)
        }
    }
    if version.is_none() {
        return Err(PolicyError::Invalid("no \"version: STSv1\"".into()));
    }
    let mode = mode.ok_or_else(|| PolicyError::Invalid("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| PolicyError::Invalid("no max_age".into()))?;
    if mode != Mode::None && mx.is_empty() {
        return Err(PolicyError::Invalid(format!("mode {} without any mx", mode.name())));
    }
    Ok(Policy { mode, mx, max_age })
}

/// The policy id of a domain's `_mta-sts` TXT records (RFC 8461 §3.1):
/// `Ok(None)` when no record starts with `v=STSv1`; an error when several
/// do or the one that does is not valid (`v=STSv1; id=<1-32 alphanumerics>`,
/// fields separated by `;`, other fields ignored).
pub fn parse_txt(records: &[String]) -> Result<Option<String>, PolicyError> {
    let ours: Vec<&String> = records.iter().filter(|r| r.starts_with("v=STSv1")).collect();
    let record = match ours.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => {
            return Err(PolicyError::Invalid(format!(
                "{} TXT records start with v=STSv1",
                ours.len()
            )));
        }
    };
    let bad = |m: String| PolicyError::Invalid(format!("TXT record {record:?}: {m}"));
    let mut id = None;
    for (i, field) in record.split(';').enumerate() {
        let field = field.trim_matches(is_wsp);
        if i == 0 {
            if field != "v=STSv1" {
                return Err(bad("does not start with \"v=STSv1;\"".into()));
            }
            continue;
        }
        if field.is_empty() {
            continue; // a trailing ";"
        }
        let Some((k, v)) = field.split_once('=') else {
            return Err(bad(format!("field {field:?} is not key=value")));
        };
        if k == "id" {
            if id.is_some() {
                return Err(bad("id given more than once".into()));
            }
            if v.is_empty() || v.len() > 32 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad(format!("id {v:?} is not 1 to 32 letters and digits")));
            }
            id = Some(v.to_string());
        }
    }
    id.map(Some).ok_or_else(|| bad("no id".into()))
}

/// Whether the MX host `host` matches the policy pattern `pattern`
/// (RFC 8461 §4.1): equal, or `*.rest` with exactly one label before
/// `rest`. Case-insensitive; trailing dots ignored.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        },
        None => host == pattern,
    }
}

impl Policy {
    /// Whether `host` matches one of the `mx` patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// How long the policy is kept, in seconds: max_age within
    /// [[`MAX_AGE_FLOOR`], [`MAX_AGE_CAP`]].
    pub fn lifetime(&self) -> u64 {
        self.max_age.clamp(MAX_AGE_FLOOR, MAX_AGE_CAP)
    }
}

/// A policy with its id and validity, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPolicy {
    /// The TXT record's id the policy was fetched under.
    pub id: String,
    /// When it was fetched (Unix seconds).
    pub fetched: u64,
    /// When it expires (Unix seconds).
    pub expires: u64,
    /// The policy.
    pub policy: Policy,
    /// The policy file as fetched.
    pub text: String,
}

impl CachedPolicy {
    /// The cache file's content.
    fn to_file(&self) -> String {
        format!(
            "{CACHE_MAGIC}\nid: {}\nfetched: {}\nexpires: {}\n\n{}",
            self.id, self.fetched, self.expires, self.text
        )
    }

    /// Parse a cache file (the policy is parsed again).
    fn from_file(content: &str) -> Result<CachedPolicy, String> {
        let (head, text) = content.split_once("\n\n").ok_or("no blank line after the header")?;
        let mut lines = head.lines();
        if lines.next() != Some(CACHE_MAGIC) {
            return Err("not a tambo MTA-STS cache file".into());
        }
        let (mut id, mut fetched, mut expires) = (None, None, None);
        for l in lines {
            let (k, v) = l.split_once(": ").ok_or_else(|| format!("bad header line {l:?}"))?;
            match k {
                "id" => id = Some(v.to_string()),
                "fetched" => fetched = v.parse().ok(),
                "expires" => expires = v.parse().ok(),
                _ => return Err(format!("unknown header {k:?}")),
            }
        }
        let policy = parse_policy(text).map_err(|e| format!("cached policy: {e}"))?;
        Ok(CachedPolicy {
            id: id.ok_or("no id")?,
            fetched: fetched.ok_or("no fetched time")?,
            expires: expires.ok_or("no expiry")?,
            policy,
            text: text.to_string(),
        })
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether `domain` can name a cache file: an ASCII host name, no path
/// separator, no leading dot.
pub(crate) fn cache_file_name_ok(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && !domain.starts_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Read `dir/<domain>`; `None` when absent or unreadable (logged).
pub(crate) fn read_cache_file(dir: &Path, domain: &str) -> Option<CachedPolicy> {
    if !cache_file_name_ok(domain) {
        return None;
    }
    let path = dir.join(domain);
    let mut content = String::new();
    match std::fs::File::open(&path) {
        Ok(f) => {
            use std::io::Read;
            if let Err(e) = f.take(MAX_POLICY_BYTES as u64 + 4096).read_to_string(&mut content) {
                tracing::warn!("MTA-STS cache {}: {e}", path.display());
                return None;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("MTA-STS cache {}: {e}", path.display());
            return None;
        }
    }
    match CachedPolicy::from_file(&content) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("MTA-STS cache {}: {e}; ignored", path.display());
            None
        }
    }
}

/// Write `dir/<domain>` atomically: a temporary file in the same
/// directory, fsync, rename.
pub(crate) fn write_cache_file(dir: &Path, domain: &str, c: &CachedPolicy) -> std::io::Result<()> {
    if !cache_file_name_ok(domain) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{domain:?} cannot name a cache file"),
        ));
    }
    let tmp = dir.join(format!(".{domain}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(c.to_file().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(domain))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The cached policy when a fresh one cannot be had (logged and counted).
fn fall_back(domain: &str, cached: &Option<Arc<CachedPolicy>>, why: &str) -> Option<Arc<CachedPolicy>> {
    if let Some(c) = cached {
        tracing::info!(domain, id = %c.id, mode = c.policy.mode.name(), "MTA-STS: {why}; using the cached policy");
        count("cached_policy_used");
    }
    cached.clone()
}

fn count(decision: &str) {
    metrics::inc(Metric::MtaSts, &[("decision", decision)]);
}

/// What the policy of a domain means for one delivery attempt.
#[derive(Debug, Clone, Default)]
pub struct StsDecision {
    /// The domain (ASCII, lower case).
    pub domain: String,
    /// The policy in force (mode `enforce` or `testing`), if any.
    pub policy: Option<Arc<CachedPolicy>>,
}

impl StsDecision {
    /// Whether the policy is enforced.
    pub fn enforced(&self) -> bool {
        matches!(&self.policy, Some(p) if p.policy.mode == Mode::Enforce)
    }

    /// The security level a connection needs under this policy.
    pub fn floor(&self) -> SecLevel {
        if self.enforced() {
            SecLevel::TlsSecure
        } else {
            SecLevel::Plain
        }
    }

    /// Whether the MX `host` may be used: under `enforce`, one that no
    /// `mx` pattern matches is refused (`Err`, a temporary failure for
    /// this host); under `testing` it is only logged and counted.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        let Some(c) = &self.policy else {
            return Ok(());
        };
        if c.policy.allows(host) {
            return Ok(());
        }
        let domain = self.domain.as_str();
        if c.policy.mode == Mode::Enforce {
            tracing::warn!(domain, mx = %host, id = %c.id, "MTA-STS enforce: MX does not match the policy; skipped");
            count("mx_skipped");
            return Err(format!(
                "4.7.5 {host}: not allowed by the MTA-STS policy of {domain} (enforce, id {}; allowed: {})",
                c.id,
                c.policy.mx.join(", ")
            ));
        }
        tracing::warn!(domain, mx = %host, id = %c.id, "MTA-STS testing: MX does not match the policy (enforce would skip it)");
        count("testing_violation");
        Ok(())
    }

    /// Note the level a delivery actually went at (for `testing`, where
    /// a level below [`SecLevel::TlsSecure`] is what enforce would refuse).
    pub fn note_delivery(&self, level: SecLevel) {
        let domain = self.domain.as_str();
        if let Some(c) = &self.policy
            && c.policy.mode == Mode::Testing
            && level < SecLevel::TlsSecure
        {
            tracing::warn!(
                domain,
                id = %c.id,
                level = level.name(),
                "MTA-STS testing: delivered without a valid certificate (enforce would have deferred)"
            );
            count("testing_violation");
        }
    }

    /// Note that every MX failed under `enforce`.
    pub fn note_deferred(&self, why: &str) {
        let domain = self.domain.as_str();
        if self.enforced() {
            tracing::warn!(domain, "MTA-STS enforce: no MX met the policy; deferred: {why}");
            count("enforce_deferred");
        }
    }
}

/// Settings of the MTA-STS client.
#[derive(Debug, Clone)]
pub struct StsSettings {
    /// Where policies are cached (`data_dir/sts-cache`); `None`: memory
    /// only.
    pub cache_dir: Option<PathBuf>,
    /// HTTPS port of the policy hosts (`mta_sts_port`, 443).
    pub port: u16,
    /// Bound on one policy fetch (DNS, connect, TLS, HTTP).
    pub fetch_timeout: Duration,
}

#[derive(Default)]
struct Memory {
    policies: HashMap<String, Arc<CachedPolicy>>,
    /// Domain → (id, when the failure was) of recent failed fetches.
    failures: HashMap<String, (String, std::time::Instant)>,
    /// Domains being fetched now: concurrent deliveries to one domain wait
    /// for a single fetch.
    fetching: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The MTA-STS client: TXT lookups, policy fetches, the cache.
pub struct Sts {
    dns: Dns,
    connector: Option<TlsConnector>,
    settings: StsSettings,
    memory: Mutex<Memory>,
}

/// Why a policy could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// DNS, connection, TLS or HTTP failure.
    #[error("{0}")]
    Failed(String),
    /// Took longer than the fetch timeout.
    #[error("timed out after {0}s")]
    Timeout(u64),
}

impl Sts {
    /// A client resolving with `dns` and verifying the policy hosts'
    /// certificates against the roots of `tls`.
    pub fn new(dns: Dns, tls: &TlsClient, settings: StsSettings) -> Result<Sts, String> {
        let connector = match tls.verifier() {
            None => None,
            Some(verifier) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("MTA-STS TLS configuration: {e}"))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsConnector::from(Arc::new(config)))
            }
        };
        Ok(Sts {
            dns,
            connector,
            settings,
            memory: Mutex::new(Memory::default()),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unexpired cached policy of `domain` (memory, then file).
    fn cached(&self, domain: &str, now: u64) -> Option<Arc<CachedPolicy>> {
        if let Some(c) = self.memory().policies.get(domain)
            && c.expires > now
        {
            return Some(c.clone());
        }
        let c = Arc::new(read_cache_file(self.settings.cache_dir.as_deref()?, domain)?);
        if c.expires <= now {
            return None;
        }
        self.remember(domain, c.clone());
        Some(c)
    }

    fn remember(&self, domain: &str, c: Arc<CachedPolicy>) {
        let mut m = self.memory();
        if m.policies.len() >= MAX_MEMORY_ENTRIES && !m.policies.contains_key(domain) {
            m.policies.clear(); // the files still have them
        }
        m.policies.insert(domain.to_string(), c);
        m.failures.remove(domain);
    }

    fn store(&self, domain: &str, c: CachedPolicy) -> Arc<CachedPolicy> {
        if let Some(dir) = &self.settings.cache_dir
            && let Err(e) = write_cache_file(dir, domain, &c)
        {
            tracing::warn!(
                "MTA-STS: cannot write the cache file {}: {e} (kept in memory only)",
                dir.join(domain).display()
            );
        }
        let c = Arc::new(c);
        self.remember(domain, c.clone());
        c
    }

    /// The policy in force for `domain` (ASCII, lower case), looking the
    /// TXT record up and fetching the policy when its id changed or the
    /// cached one expired. Failures fall back to the cached policy, or to
    /// none: MTA-STS never makes a delivery fail by itself being
    /// unreachable.
    pub async fn decide(&self, domain: &str) -> StsDecision {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let c = self.policy(&domain).await;
        if let Some(c) = &c {
            metrics::inc(Metric::MtaStsModes, &[("mode", c.policy.mode.name())]);
        }
        StsDecision {
            policy: c.filter(|c| c.policy.mode != Mode::None),
            domain,
        }
    }

    async fn policy(&self, domain: &str) -> Option<Arc<CachedPolicy>> {
        let now = unix_now();
        let cached = self.cached(domain, now);
        let use_cached = |why: &str| fall_back(domain, &cached, why);
        let id = match self.dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => match parse_txt(&records) {
                Ok(Some(id)) => id,
                Ok(None) => return use_cached("no _mta-sts TXT record"),
                Err(e) => {
                    tracing::warn!(domain, "MTA-STS: {e}");
                    return use_cached("invalid _mta-sts TXT record");
                }
            },
            Err(e) => {
                tracing::info!(domain, "MTA-STS: {e}");
                return use_cached("TXT lookup failed");
            }
        };
        if let Some(c) = &cached
            && c.id == id
        {
            return cached;
        }
        // One fetch per domain at a time; whoever waited finds the result.
        let lock = self.memory().fetching.entry(domain.to_string()).or_default().clone();
        let _fetching = lock.lock().await;
        let result = self.fetch_and_store(domain, id, now, &cached).await;
        self.memory().fetching.remove(domain);
        result
    }

    async fn fetch_and_store(
        &self,
        domain: &str,
        id: String,
        now: u64,
        cached: &Option<Arc<CachedPolicy>>,
    ) -> Option<Arc<CachedPolicy>> {
        let use_cached = |why: &str| fall_back(domain, cached, why);
        // The cached policy (if any) has another id: one in memory with
        // this id was fetched meanwhile by another delivery.
        if let Some(c) = self.memory().policies.get(domain)
            && c.id == id
            && c.expires > now
        {
            return Some(c.clone());
        }
        if let Some((failed_id, at)) = self.memory().failures.get(domain)
            && *failed_id == id
            && at.elapsed() < FAILURE_BACKOFF
        {
            return use_cached("the policy fetch failed recently");
        }
        let fetched = match self.fetch(domain).await {
            Ok(text) => parse_policy(&text).map(|p| (p, text)).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match fetched {
            Ok((policy, text)) => {
                tracing::info!(
                    domain,
                    id = %id,
                    mode = policy.mode.name(),
                    max_age = policy.max_age,
                    mx = %policy.mx.join(","),
                    "MTA-STS: policy fetched"
                );
                count("policy_fetched");
                let expires = now + policy.lifetime();
                Some(self.store(
                    domain,
                    CachedPolicy {
                        id,
                        fetched: now,
                        expires,
                        policy,
                        text,
                    },
                ))
            }
            Err(e) => {
                tracing::warn!(domain, id = %id, "MTA-STS: policy fetch from https://mta-sts.{domain}/.well-known/mta-sts.txt failed: {e}");
                count("fetch_failed");
                {
                    let mut m = self.memory();
                    if m.failures.len() >= MAX_MEMORY_ENTRIES {
                        m.failures.clear();
                    }
                    m.failures.insert(domain.to_string(), (id, std::time::Instant::now()));
                }
                use_cached("the policy fetch failed")
            }
        }
    }

    /// Fetch the policy file of `domain`, bounded by the fetch timeout.
    pub async fn fetch(&self, domain: &str) -> Result<String, FetchError> {
        let t = self.settings.fetch_timeout;
        match tokio::time::timeout(t, self.fetch_inner(domain)).await {
            Ok(r) => r.map_err(FetchError::Failed),
            Err(_) => Err(FetchError::Timeout(t.as_secs())),
        }
    }

    async fn fetch_inner(&self, domain: &str) -> Result<String, String> {
        let connector = self
            .connector
            .as_ref()
            .ok_or("no trusted root certificate to check the policy server with")?;
        let host = format!("mta-sts.{domain}");
        let addrs = self.dns.addresses(&host).await.map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        for ip in addrs.into_iter().take(4) {
            let addr = SocketAddr::new(ip, self.settings.port);
            match https_get(connector, &host, addr).await {
                Ok(body) => return Ok(body),
                Err(HttpError::Connect(e)) => errors.push(format!("{addr}: {e}")),
                // The server answered: another address would say the same.
                Err(HttpError::Response(e)) => return Err(format!("{addr}: {e}")),
            }
        }
        Err(errors.join("; "))
    }
}

enum HttpError {
    /// Could not reach the server or complete TLS: try another address.
    Connect(String),
    /// The server's answer is not a policy.
    Response(String),
}

/// GET the policy from `host` at `addr` over TLS (certificate checked for
/// `host`), HTTP/1.1, no redirects.
async fn https_get(connector: &TlsConnector, host: &str, addr: SocketAddr) -> Result<String, HttpError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| HttpError::Connect(format!("connect: {e}")))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| HttpError::Connect(format!("{host}: {e}")))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| HttpError::Connect(format!("TLS: {e}")))?;
    let host_header = if addr.port() == 443 {
        host.to_string()
    } else {
        format!("{host}:{}", addr.port())
    };
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tambo\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| HttpError::Connect(format!("sending the request: {e}")))?;
    tls.flush()
        .await
        .map_err(|e| HttpError::Connect(format!("sending the request: {e}")))?;
    read_response(&mut BufReader::new(tls))
        .await
        .map_err(HttpError::Response)
}

/// Read one line ending in LF (CRLF or LF), at most `max` bytes, without
/// the line ending.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<String, String> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.map_err(|e| format!("reading: {e}"))?;
        if buf.is_empty() {
            return Err("connection closed in the middle of the response".into());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(format!("a response line is longer than {max} bytes"));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line).map_err(|_| "a response line is not UTF-8".into());
        }
    }
}

/// Read an HTTP/1.1 response: status 200 only (3xx and everything else are
/// failures: redirects are not followed, RFC 8461 §3.3), `Content-Type:
/// text/plain`, a body of at most [`MAX_POLICY_BYTES`] sent with
/// Content-Length, chunked, or up to the close.
pub async fn read_response<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut budget = MAX_HEADER_BYTES;
    let status = read_line(r, budget).await?;
    budget = budget.saturating_sub(status.len() + 2);
    let mut parts = status.splitn(3, ' ');
    let (proto, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !proto.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 response: {:.80}", status));
    }
    let code: u16 = code.parse().map_err(|_| format!("bad status line {:.80}", status))?;
    let (mut content_type, mut length, mut chunked, mut location) = (None, None, false, None);
    loop {
        let line = read_line(r, budget).await?;
        if line.is_empty() {
            break;
        }
        budget = budget.saturating_sub(line.len() + 2);
        if budget == 0 {
            return Err(format!("response headers longer than {MAX_HEADER_BYTES} bytes"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:.80}"));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(value.to_string()),
            "content-length" => {
                let n: usize = value.parse().map_err(|_| format!("bad Content-Length {value:.40}"))?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(format!("unsupported Transfer-Encoding {value:.40}"));
                }
                chunked = true;
            }
            "location" => location = Some(value.to_string()),
            _ => {}
        }
    }
    if (300..400).contains(&code) {
        return Err(format!(
            "HTTP {code} redirect to {:.200} (MTA-STS policies are not fetched through redirects)",
            location.unwrap_or_default()
        ));
    }
    if code != 200 {
        return Err(format!("HTTP status {code}"));
    }
    let media = content_type.as_deref().unwrap_or("");
    let media_type = media.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("text/plain") {
        return Err(format!("Content-Type {media:.80} is not text/plain"));
    }
    if chunked && length.is_some() {
        return Err("both Content-Length and chunked Transfer-Encoding".into());
    }
    let too_big = || format!("policy larger than {MAX_POLICY_BYTES} bytes");
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(r, 1024).await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {size_hex:.20}"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                let mut left = 16;
                while !read_line(r, 1024).await?.is_empty() {
                    left -= 1;
                    if left == 0 {
                        return Err("too many trailer lines".into());
                    }
                }
                break;
            }
            // `size` is the server's: compared without an addition that
            // could overflow (body.len() never exceeds the limit).
            if size > MAX_POLICY_BYTES - body.len() {
                return Err(too_big());
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])
                .await
                .map_err(|e| format!("reading a chunk: {e}"))?;
            if !read_line(r, 2).await?.is_empty() {
                return Err("chunk not followed by CRLF".into());
            }
        }
    } else if let Some(n) = length {
        if n > MAX_POLICY_BYTES {
            return Err(too_big());
        }
        body.resize(n, 0);
        r.read_exact(&mut body)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
    } else {
        (&mut *r)
            .take(MAX_POLICY_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        if body.len() > MAX_POLICY_BYTES {
            return Err(too_big());
        }
    }
    String::from_utf8(body).map_err(|_| "the policy is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn policy_parses() {
        let p = parse_policy(GOOD).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net", "backupmx.example.com"]);
        // LF only, fields in another order, WSP around values, an
        // extension field, a trailing blank line.
        let p = parse_policy(
            "mx:\tMX.Example.com \nmax_age: 86400\nfoo_ext: whatever value\nversion: STSv1\nmode: testing\n\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, ["mx.example.com"]);
        let p = parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        assert_eq!(p.lifetime(), MAX_AGE_FLOOR);
    }

    #[test]
    fn policy_errors() {
        let cases = [
            ("mode: enforce\nmx: a.example\nmax_age: 1\n", "version"),
            ("version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "line 1"),
            ("version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n", "line 2"),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "without any mx"),
            ("version: STSv1\nmode: enforce\nmx: a.example\n", "max_age"),
            ("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "line 4"),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
                "line 4",
            ),
            (
                "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n",
                "more than once",
            ),
            ("version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n", "line 3"),
            ("version: STSv1\nmode: enforce\nmx: a.example/x\nmax_age: 1\n", "line 3"),
            ("version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 1\n", "line 3"),
            ("version: STSv1\nmode enforce\n", "line 2"),
            ("<html><body>hello</body></html>", "line 1"),
            ("version: STSv1\nmode: enforce\nmx:\nmax_age: 1\n", "empty value"),
        ];
        for (text, needle) in cases {
            let e = parse_policy(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let huge = format!("{GOOD}{}", "x: y\n".repeat(MAX_POLICY_BYTES / 5 + 1));
        assert!(parse_policy(&huge).unwrap_err().to_string().contains("larger"));
    }

    #[test]
    fn max_age_bounds() {
        let p = |age: u64| Policy {
            mode: Mode::Enforce,
            mx: vec![],
            max_age: age,
        };
        assert_eq!(p(60).lifetime(), MAX_AGE_FLOOR);
        assert_eq!(p(86400).lifetime(), 86400);
        assert_eq!(p(9_999_999_999).lifetime(), MAX_AGE_CAP);
    }

    #[test]
    fn mx_matching() {
        assert!(mx_matches("mail.example.com", "mail.example.com"));
        assert!(mx_matches("mail.example.com", "MAIL.Example.COM."));
        assert!(!mx_matches("mail.example.com", "mail2.example.com"));
        assert!(mx_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_matches("*.example.com", "example.com"));
        assert!(!mx_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_matches("*.example.com", "mx1.example.com.evil.test"));
        assert!(!mx_matches("*.example.com", "mx1-example.com"));
        let p = parse_policy(GOOD).unwrap();
        assert!(p.allows("x.example.net"));
        assert!(p.allows("backupmx.example.com"));
        assert!(!p.allows("evil.example.org"));
    }

    #[test]
    fn txt_records() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_txt(&r(&["v=STSv1; id=20160831085700Z;"])).unwrap().as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(parse_txt(&r(&["v=STSv1;id=abc"])).unwrap().as_deref(), Some("abc"));
        assert_eq!(
            parse_txt(&r(&["v=spf1 -all", "v=STSv1; ext=1; id=x9"]))
                .unwrap()
                .as_deref(),
            Some("x9")
        );
        assert_eq!(parse_txt(&r(&["v=spf1 -all"])).unwrap(), None);
        assert_eq!(parse_txt(&[]).unwrap(), None);
        assert!(parse_txt(&r(&["v=STSv1; id=a", "v=STSv1; id=b"])).is_err());
        assert!(parse_txt(&r(&["v=STSv1;"])).is_err());
        assert!(parse_txt(&r(&["v=STSv1; id=has-dash"])).is_err());
        assert!(parse_txt(&r(&["v=STSv1; id=123456789012345678901234567890123"])).is_err());
        assert!(parse_txt(&r(&["v=STSv10; id=a"])).is_err());
        assert!(parse_txt(&r(&["v=STSv1; id=a; id=b"])).is_err());
    }

    #[test]
    fn cache_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let c = CachedPolicy {
            id: "abc1".into(),
            fetched: 100,
            expires: 200,
            policy: parse_policy(GOOD).unwrap(),
            text: GOOD.into(),
        };
        write_cache_file(dir.path(), "example.com", &c).unwrap();
        assert_eq!(read_cache_file(dir.path(), "example.com"), Some(c.clone()));
        assert_eq!(read_cache_file(dir.path(), "other.com"), None);
        assert!(write_cache_file(dir.path(), "../x", &c).is_err());
        assert_eq!(read_cache_file(dir.path(), "../x"), None);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(dir.path().join("bad.com"), "garbage").unwrap();
        assert_eq!(read_cache_file(dir.path(), "bad.com"), None);
    }

    async fn response(raw: &str) -> Result<String, String> {
        let mut r = BufReader::new(raw.as_bytes());
        read_response(&mut r).await
    }

    #[tokio::test]
    async fn http_responses() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(response(ok).await.unwrap(), "hello");
        let chunked = "HTTP/1.1 200 OK\r\ncontent-type: TEXT/PLAIN\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(response(chunked).await.unwrap(), "abcde");
        let to_close = "HTTP/1.0 200 OK\nContent-Type: text/plain\n\nuntil the end";
        assert_eq!(response(to_close).await.unwrap(), "until the end");
        let e = response("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\n\r\n")
            .await
            .unwrap_err();
        assert!(e.contains("redirect") && e.contains("elsewhere.test"), "{e}");
        let e = response("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1\r\n\r\nx")
            .await
            .unwrap_err();
        assert!(e.contains("not text/plain"), "{e}");
        let e = response("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
            .await
            .unwrap_err();
        assert!(e.contains("not text/plain"), "{e}");
        let e = response("HTTP/1.1 404 Not Found\r\n\r\n").await.unwrap_err();
        assert!(e.contains("404"), "{e}");
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            MAX_POLICY_BYTES + 1
        );
        assert!(response(&big).await.unwrap_err().contains("larger"));
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{}",
            "x".repeat(MAX_POLICY_BYTES + 1)
        );
        assert!(response(&big).await.unwrap_err().contains("larger"));
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            MAX_POLICY_BYTES + 1
        );
        assert!(response(&big).await.unwrap_err().contains("larger"));
        let long_header = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert!(response(&long_header).await.unwrap_err().contains("longer"));
        let e = response("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nshort")
            .await
            .unwrap_err();
        assert!(e.contains("reading the body"), "{e}");
        assert!(response("SSH-2.0-OpenSSH\r\n\r\n").await.is_err());
    }

    /// Found by the `mta_sts_http` fuzz target: a chunk size near
    /// `usize::MAX` after a first chunk overflowed the size check (a panic
    /// in debug builds, a slice out of range in release builds).
    #[tokio::test]
    async fn huge_chunk_size() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\nb\r\n0\r\n\r\n";
        assert!(response(raw).await.unwrap_err().contains("larger"));
    }
}
