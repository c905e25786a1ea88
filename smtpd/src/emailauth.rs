//! Email authentication of unauthenticated mail: SPF at MAIL FROM
//! (RFC 7208), DKIM verification (RFC 6376, RFC 8463) and DMARC (RFC 7489)
//! after DATA. mail-auth does the record parsing and the cryptography;
//! the policy is here:
//!
//! - SPF `fail` refuses MAIL FROM with 550 5.7.23 and the domain's
//!   explanation; every other result is accepted and recorded.
//! - DKIM: at most [`MAX_SIGNATURES`] signatures are checked; signatures
//!   with `l=` are not trusted (reported as neutral), so content appended
//!   after a signed body can never pass; a body hash mismatch is `fail`.
//!   Messages over [`MAX_VERIFY_SIZE`] are not verified (`dkim=neutral`,
//!   with a comment), and at most [`VERIFY_SLOTS`] messages are verified at
//!   once, so memory stays bounded whatever the load.
//! - DMARC: the result is always recorded; a `p=reject` failure is refused
//!   at DATA with 550 5.7.1 only when `reject_dmarc_failures` is set.
//! - ARC (RFC 8617): the chain is verified (at most 50 sets, within the
//!   same time bound) and reported as `arc=pass|fail|none`, with
//!   `temperror` for DNS trouble and `neutral` when the message is too
//!   large to verify; never a rejection. The result travels to queued in
//!   the envelope, where it becomes the `cv=` of tambo's own seal when the
//!   message is forwarded.
//! - DNS temporary errors give `temperror` and never a rejection by
//!   themselves.
//!
//! smtpd is chrooted and cannot read /etc/resolv.conf: the supervisor
//! passes the name servers in the start message.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    MessageAuthenticator, ReceivedSpf, SpfOutput, SpfResult,
};
use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::ArcChain;
use tokio::sync::Semaphore;

/// Signatures verified per message at most; later ones are ignored.
pub const MAX_SIGNATURES: usize = 10;
/// Messages larger than this are not DKIM-verified.
pub const MAX_VERIFY_SIZE: u64 = 16 * 1024 * 1024;
/// Messages verified at the same time at most.
pub const VERIFY_SLOTS: usize = 4;
/// Largest header section read for DMARC when the message is too large to
/// verify.
const MAX_HEADER_READ: usize = 256 * 1024;
/// Time allowed for the DNS work of one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The SPF verdict of a transaction.
#[derive(Debug, Clone)]
pub struct SpfCheck {
    /// What mail-auth found.
    pub output: SpfOutput,
    /// The MAIL FROM address (empty for `<>`, then the HELO identity was
    /// checked).
    pub mail_from: String,
    /// The HELO/EHLO name.
    pub helo: String,
    /// The client's address.
    pub ip: IpAddr,
}

impl SpfCheck {
    /// The result as a word ("pass", "fail", ...), as in headers.
    pub fn word(&self) -> &'static str {
        spf_word(self.output.result())
    }

    /// The reply refusing MAIL FROM, when SPF says `fail`.
    pub fn rejection(&self) -> Option<String> {
        if self.output.result() != SpfResult::Fail {
            return None;
        }
        let who = if self.mail_from.is_empty() {
            format!("the HELO name {}", self.helo)
        } else {
            self.mail_from.clone()
        };
        let mut text = format!(
            "SPF check failed: {} does not allow {} to send mail for {who}",
            // A single-label domain was asked about as an absolute name.
            self.output.domain().trim_end_matches('.'),
            self.ip
        );
        if let Some(exp) = self.output.explanation() {
            let exp: String = exp.chars().filter(|c| !c.is_control()).take(200).collect();
            if !exp.trim().is_empty() {
                text = format!("{text}: {}", exp.trim());
            }
        }
        Some(format!("550 5.7.23 {text}"))
    }
}

/// The RFC 8601 result words that follow `key` (e.g. `dkim=`) in a piece
/// of an Authentication-Results header, for the metrics; only the known
/// words, so a label can never carry message data.
fn result_words<'a>(part: &'a str, key: &str) -> Vec<&'static str> {
    const WORDS: [&str; 9] = [
        "pass",
        "fail",
        "softfail",
        "neutral",
        "none",
        "temperror",
        "permerror",
        "policy",
        "hardfail",
    ];
    part.match_indices(key)
        .filter_map(|(i, _)| {
            let rest = &part[i + key.len()..];
            let word: &'a str = rest.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
            WORDS.iter().copied().find(|w| *w == word)
        })
        .collect()
}

/// Result words of RFC 8601.
/// `user@domain` with a single-label domain (`srv-a`, as in test set-ups
/// and private networks) written absolute (`user@srv-a.`): mail-auth
/// evaluates SPF only for names with a dot, and chasquid evaluates these.
fn absolute_single_label(mail_from: &str) -> String {
    match mail_from.rsplit_once('@') {
        Some((user, domain)) if !domain.is_empty() && !domain.contains('.') && !domain.starts_with('[') => {
            format!("{user}@{domain}.")
        }
        _ => mail_from.to_string(),
    }
}

/// What DKIM verification found in one message, as a metrics label.
fn dkim_message_word(signed: bool, verified: bool, outputs: &[DkimOutput]) -> &'static str {
    if !signed {
        "unsigned"
    } else if outputs.iter().any(|o| *o.result() == DkimResult::Pass) {
        "valid"
    } else if !verified {
        "unverified"
    } else {
        "invalid"
    }
}

/// The metrics label of an SPF result.
pub fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// What the DATA checks decided.
#[derive(Debug, Default)]
pub struct DataVerdict {
    /// Header lines for queued to add (Received-SPF,
    /// Authentication-Results), each ending in CRLF.
    pub headers: String,
    /// The reply refusing the message, when DMARC enforcement applies.
    pub reject: Option<String>,
    /// The ARC chain's verdict.
    pub arc: ArcChain,
}

/// The shared checker: the DNS resolver (replaced on reload) and the
/// verification slots.
pub struct EmailAuth {
    resolver: RwLock<Option<Arc<MessageAuthenticator>>>,
    slots: Semaphore,
}

/// Build a resolver that asks exactly `servers` ("ip:port").
pub fn build_resolver(servers: &[String]) -> Result<MessageAuthenticator, String> {
    let mut ns = Vec::new();
    for s in servers {
        let sa: SocketAddr = s.parse().map_err(|_| format!("bad DNS server address {s:?}"))?;
        let mut cfg = NameServerConfig::udp_and_tcp(sa.ip());
        for c in &mut cfg.connections {
            c.port = sa.port();
        }
        ns.push(cfg);
    }
    if ns.is_empty() {
        return Err("no DNS server".into());
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    opts.ndots = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    // The resolver never uses DNS over TLS, but hickory builds a TLS
    // configuration anyway and, by default, from the platform's
    // certificate store, which does not exist in smtpd's empty chroot: an
    // empty root store is given instead.
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let resolver = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], ns),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .with_tls_config(tls)
    .build()
    .map_err(|e| e.to_string())?;
    Ok(MessageAuthenticator(resolver))
}

impl EmailAuth {
    /// A checker using `servers`.
    pub fn new(servers: &[String]) -> EmailAuth {
        let e = EmailAuth {
            resolver: RwLock::new(None),
            slots: Semaphore::new(VERIFY_SLOTS),
        };
        e.set_servers(servers);
        e
    }

    /// Use these DNS servers from now on (reload).
    pub fn set_servers(&self, servers: &[String]) {
        let r = match build_resolver(servers) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::error!("SPF/DKIM/DMARC resolver: {e}; every check will be temperror");
                None
            }
        };
        *self.resolver.write().unwrap_or_else(|p| p.into_inner()) = r;
    }

    fn resolver(&self) -> Option<Arc<MessageAuthenticator>> {
        self.resolver.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SPF for a MAIL FROM (the HELO identity for `<>`).
    pub async fn check_spf(&self, ip: IpAddr, helo: &str, hostname: &str, mail_from: &str) -> SpfCheck {
        let ip = canonical_ip(ip);
        let domain = if mail_from.is_empty() {
            helo.to_string()
        } else {
            mail_from
                .rsplit_once('@')
                .map(|(_, d)| d.to_string())
                .unwrap_or_default()
        };
        let output = match self.resolver() {
            None => SpfOutput::new(domain).with_result(SpfResult::TempError),
            // An address literal or a bare word in HELO has no SPF record.
            Some(_) if mail_from.is_empty() && (helo.starts_with('[') || !helo.contains('.')) => {
                SpfOutput::new(domain).with_result(SpfResult::None)
            }
            Some(r) => {
                let sender = absolute_single_label(mail_from);
                let params = if mail_from.is_empty() {
                    SpfParameters::verify_ehlo(ip, helo, hostname)
                } else {
                    SpfParameters::verify_mail_from(ip, helo, hostname, &sender)
                };
                match tokio::time::timeout(CHECK_TIMEOUT, r.verify_spf(params)).await {
                    Ok(o) => o,
                    Err(_) => SpfOutput::new(domain).with_result(SpfResult::TempError),
                }
            }
        };
        metrics::inc(Metric::SpfResults, &[("result", spf_word(output.result()))]);
        SpfCheck {
            output,
            mail_from: mail_from.to_string(),
            helo: helo.to_string(),
            ip,
        }
    }

    /// DKIM and DMARC for a received message in `file` (`size` bytes), and
    /// the headers to add. `spf` is the transaction's SPF check.
    pub async fn check_data(
        &self,
        file: &File,
        size: u64,
        spf: &SpfCheck,
        hostname: &str,
        enforce_dmarc: bool,
    ) -> DataVerdict {
        let _slot = self.slots.acquire().await;
        let too_large = size > MAX_VERIFY_SIZE;
        let raw = match read_message(file, size, too_large) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the message back for DKIM: {e}");
                Vec::new()
            }
        };
        let resolver = self.resolver();
        let mut spf_part = AuthenticationResults::new(hostname);
        spf_part = if spf.mail_from.is_empty() {
            spf_part.with_spf_ehlo_result(&spf.output, spf.ip, &spf.helo)
        } else {
            spf_part.with_spf_mailfrom_result(&spf.output, spf.ip, &spf.mail_from, &spf.helo)
        };
        let mut results = strip_host(&spf_part.to_string(), hostname);
        let mut reject = None;
        let mut arc = ArcChain::Unknown;
        match AuthenticatedMessage::parse(&raw) {
            None => {
                metrics::inc(Metric::DkimMessages, &[("result", "unverified")]);
                results.push_str(";\r\n\tdkim=none (no header section)")
            }
            Some(mut msg) => {
                msg.dkim_headers.truncate(MAX_SIGNATURES);
                let signed = !msg.dkim_headers.is_empty();
                let dkim: Vec<DkimOutput> = match (&resolver, too_large) {
                    (_, true) => Vec::new(),
                    (None, false) => Vec::new(),
                    (Some(r), false) => match tokio::time::timeout(CHECK_TIMEOUT, r.verify_dkim(&msg)).await {
                        Ok(o) => o.into_iter().map(|o| tambo_dkim_policy(&msg, o)).collect(),
                        Err(_) => Vec::new(),
                    },
                };
                let dkim_start = results.len();
                if too_large {
                    results.push_str(&format!(
                        ";\r\n\tdkim=neutral (message larger than {} MiB not verified)",
                        MAX_VERIFY_SIZE >> 20
                    ));
                } else if resolver.is_none() {
                    results.push_str(";\r\n\tdkim=temperror (no DNS resolver)");
                } else if dkim.is_empty() {
                    results.push_str(";\r\n\tdkim=none");
                } else {
                    for o in &dkim {
                        results.push_str(&dkim_result(o));
                    }
                }
                for word in result_words(&results[dkim_start..], "dkim=") {
                    metrics::inc(Metric::DkimResults, &[("result", word)]);
                }
                let verified = !too_large && resolver.is_some() && (dkim.len() == msg.dkim_headers.len());
                metrics::inc(
                    Metric::DkimMessages,
                    &[("result", dkim_message_word(signed, verified, &dkim))],
                );
                let mail_from_domain = if spf.mail_from.is_empty() {
                    spf.helo.clone()
                } else {
                    spf.mail_from
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_string())
                        .unwrap_or_default()
                };
                let (chain, part) = check_arc(resolver.as_deref(), &msg, too_large, spf.ip).await;
                arc = chain;
                for word in result_words(&part, "arc=") {
                    metrics::inc(Metric::ArcResults, &[("result", word)]);
                }
                results.push_str(&part);
                if let Some(r) = &resolver {
                    let params = DmarcParameters::new(&msg, &dkim, &mail_from_domain, &spf.output);
                    let dmarc: DmarcOutput = tokio::time::timeout(CHECK_TIMEOUT, r.verify_dmarc(params))
                        .await
                        .unwrap_or_default();
                    let dmarc_start = results.len();
                    if !dmarc.domain().is_empty() {
                        let part = AuthenticationResults::new(hostname).with_dmarc_result(&dmarc);
                        results.push_str(&strip_host(&part.to_string(), hostname));
                    } else {
                        results.push_str(";\r\n\tdmarc=none");
                    }
                    for word in result_words(&results[dmarc_start..], "dmarc=") {
                        metrics::inc(Metric::DmarcResults, &[("result", word)]);
                    }
                    if enforce_dmarc
                        && dmarc.policy() == Policy::Reject
                        && matches!(dmarc.result(), DmarcResult::Fail(_))
                    {
                        reject = Some(format!(
                            "550 5.7.1 Message rejected by the DMARC policy of {}",
                            clean(dmarc.domain())
                        ));
                    }
                }
            }
        }
        let received_spf = ReceivedSpf::new(&spf.output, spf.ip, &spf.helo, &spf.mail_from, hostname).to_header();
        let mut headers = received_spf;
        if !headers.ends_with("\r\n") {
            headers.push_str("\r\n");
        }
        headers.push_str(&format!("Authentication-Results: {hostname}{results}\r\n"));
        DataVerdict { headers, reject, arc }
    }
}

/// Whether the message carries any ARC header (well formed or not).
fn has_arc_headers(msg: &AuthenticatedMessage<'_>) -> bool {
    msg.has_arc_errors || !msg.ams_headers.is_empty() || !msg.as_headers.is_empty() || !msg.aar_headers.is_empty()
}

/// Verify the ARC chain of `msg`: the verdict, and the `arc=` part of
/// Authentication-Results (`;\r\n\tarc=…`).
async fn check_arc(
    resolver: Option<&MessageAuthenticator>,
    msg: &AuthenticatedMessage<'_>,
    too_large: bool,
    ip: IpAddr,
) -> (ArcChain, String) {
    let ip = pvalue(&ip.to_string());
    let part = |word: &str, comment: &str| {
        let comment = if comment.is_empty() {
            String::new()
        } else {
            let c: String = comment
                .chars()
                .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
                .take(100)
                .collect();
            format!(" ({c})")
        };
        format!(";\r\n\tarc={word}{comment} smtp.remote-ip={ip}")
    };
    if !has_arc_headers(msg) {
        return (ArcChain::None, part("none", ""));
    }
    if too_large {
        let why = format!("message larger than {} MiB not verified", MAX_VERIFY_SIZE >> 20);
        return (ArcChain::Unknown, part("neutral", &why));
    }
    let Some(r) = resolver else {
        return (ArcChain::Unknown, part("temperror", "no DNS resolver"));
    };
    let out = match tokio::time::timeout(CHECK_TIMEOUT, r.verify_arc(msg)).await {
        Ok(o) => o,
        Err(_) => return (ArcChain::Unknown, part("temperror", "timed out")),
    };
    let last = out
        .sets()
        .last()
        .map(|s| format!("i={} d={}", s.seal.header.i, pvalue(&s.seal.header.d)));
    match out.result() {
        DkimResult::Pass => (ArcChain::Pass, part("pass", last.as_deref().unwrap_or_default())),
        DkimResult::TempError(e) => (ArcChain::Unknown, part("temperror", &e.to_string())),
        // ARC headers without a message signature: a broken chain.
        DkimResult::None => (ArcChain::Fail, part("fail", "broken or incomplete ARC chain")),
        DkimResult::Fail(e) | DkimResult::Neutral(e) | DkimResult::PermError(e) => {
            (ArcChain::Fail, part("fail", &e.to_string()))
        }
    }
}

/// tambo's reading of a DKIM result: a body that does not match its hash
/// is a failed signature (mail-auth says neutral).
fn tambo_dkim_policy<'x>(msg: &'x AuthenticatedMessage<'x>, o: DkimOutput<'x>) -> DkimOutput<'x> {
    let DkimResult::Neutral(e @ mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) = o.result() else {
        return o;
    };
    let failed = DkimOutput::fail(e.clone());
    let sig = o
        .signature()
        .and_then(|s| msg.dkim_headers.iter().map(|h| &h.header).find(|h| std::ptr::eq(*h, s)));
    match sig {
        Some(s) => failed.with_signature(s),
        None => failed,
    }
}

/// One `dkim=` entry of Authentication-Results (RFC 8601, RFC 6008):
/// always `header.d` and `header.s`, `header.i` when the signature has
/// one, and the first 8 characters of `b=`.
fn dkim_result(o: &DkimOutput<'_>) -> String {
    let (word, reason) = match o.result() {
        DkimResult::Pass => ("pass", None),
        DkimResult::Fail(e) => ("fail", Some(e.to_string())),
        DkimResult::Neutral(e) => ("neutral", Some(e.to_string())),
        DkimResult::TempError(e) => ("temperror", Some(e.to_string())),
        DkimResult::PermError(e) => ("permerror", Some(e.to_string())),
        DkimResult::None => ("none", None),
    };
    let mut out = format!(";\r\n\tdkim={word}");
    if let Some(r) = reason {
        let r: String = r
            .chars()
            .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
            .take(100)
            .collect();
        out.push_str(&format!(" ({r})"));
    }
    if let Some(sig) = o.signature() {
        out.push_str(&format!(" header.d={}", pvalue(&sig.d)));
        if !sig.i.is_empty() {
            out.push_str(&format!(" header.i={}", pvalue(&sig.i)));
        }
        out.push_str(&format!(" header.s={}", pvalue(&sig.s)));
        let b = B64.encode(&sig.b);
        if b.len() >= 8 {
            out.push_str(&format!(" header.b={}", &b[..8]));
        }
    }
    out
}

/// A value safe in Authentication-Results: letters, digits and
/// `@.-_+=/`; anything else becomes `_`.
fn pvalue(s: &str) -> String {
    s.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_+=/".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// "host;\r\n\tspf=..." → ";\r\n\tspf=...".
fn strip_host(s: &str, hostname: &str) -> String {
    s.strip_prefix(hostname).unwrap_or(s).to_string()
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_graphic()).take(255).collect()
}

/// IPv4-mapped IPv6 addresses are IPv4 clients.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The message (or, when too large, its header section) read back from
/// the data file with pread.
fn read_message(file: &File, size: u64, headers_only: bool) -> std::io::Result<Vec<u8>> {
    if !headers_only {
        let mut buf = vec![0u8; size as usize];
        file.read_exact_at(&mut buf, 0)?;
        return Ok(buf);
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while buf.len() < MAX_HEADER_READ {
        let n = file.read_at(&mut chunk, buf.len() as u64)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(p + 4);
            return Ok(buf);
        }
    }
    buf.truncate(MAX_HEADER_READ);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_config() {
        assert!(build_resolver(&["127.0.0.1:5353".into()]).is_ok());
        assert!(build_resolver(&[]).is_err());
        assert!(build_resolver(&["nope".into()]).is_err());
    }

    #[test]
    fn rejection_text() {
        let c = SpfCheck {
            output: SpfOutput::new("fail.test".into())
                .with_result(SpfResult::Fail)
                .with_explanation("Not\r\nallowed".into()),
            mail_from: "a@fail.test".into(),
            helo: "h.test".into(),
            ip: "127.0.0.1".parse().unwrap(),
        };
        let r = c.rejection().unwrap();
        assert!(
            r.starts_with("550 5.7.23 SPF check failed: fail.test does not allow 127.0.0.1"),
            "{r}"
        );
        assert!(r.ends_with("Notallowed"), "{r}");
        assert!(!r.contains('\r'));
        let mut soft = c.clone();
        soft.output = SpfOutput::new("x".into()).with_result(SpfResult::SoftFail);
        assert!(soft.rejection().is_none());
    }

    #[test]
    fn reads_headers_only_when_large() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, b"A: 1\r\nB: 2\r\n\r\nbody\r\n").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read_message(&f, 20, true).unwrap(), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(read_message(&f, 20, false).unwrap().len(), 20);
    }

    #[test]
    fn mapped_ips() {
        let ip: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(canonical_ip(ip), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn single_label_senders_are_written_absolute() {
        assert_eq!(absolute_single_label("usera@srv-a"), "usera@srv-a.");
        assert_eq!(absolute_single_label("a@example.com"), "a@example.com");
        assert_eq!(absolute_single_label("a@[192.0.2.1]"), "a@[192.0.2.1]");
        assert_eq!(absolute_single_label(""), "");
    }
}

#[cfg(test)]
mod metric_word_tests {
    use super::result_words;

    #[test]
    fn only_known_result_words_become_labels() {
        let part = ";\r\n\tdkim=pass header.d=a.b;\r\n\tdkim=fail (bad) header.d=c;\r\n\tdkim=evil\"label";
        assert_eq!(result_words(part, "dkim="), ["pass", "fail"]);
        assert_eq!(result_words(";\r\n\tdmarc=none", "dmarc="), ["none"]);
        assert!(result_words("nothing here", "dkim=").is_empty());
    }
}
