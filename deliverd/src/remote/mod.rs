//! Remote delivery over SMTP: routing (MX, A/AAAA, null MX, alias `via`,
//! `relay_host`), the SMTP client, TLS with per-domain security levels,
//! MTA-STS ([`sts`]; chasquid's cache imported by [`sts_chasquid`]), connection reuse and concurrency limits.
//!
//! The courier never touches the queue or the domaininfo store: queued
//! sends the recorded level of each domain with the job and records what
//! the courier reports back ([`DeliveryReport::levels_seen`]).

pub mod body;
pub mod client;
pub mod dane;
pub mod dns;
pub mod pool;
pub mod sts;
pub mod sts_chasquid;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::config::Config;
use tambo_common::domaininfo::SecLevel;
use tambo_common::names::{domain_to_ascii, split_address};
use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::{AuthReply, AuthRequest, DeliveryJob, DeliveryOutcome, DeliveryReport, JobRcpt, RcptRoute};
use tambo_ipc::worker::PeerSlot;

use body::Body;
use client::{Envelope, RcptResult, Session, SessionLimits, SmtpError};
use dane::{DaneResolver, HostPolicy};
use dns::{Dns, DnsError, MxAnswer};
use pool::{Limits, Pool};
use sts::{Sts, StsDecision, StsSettings};
use tls::TlsClient;

/// Where the smarthost's `AUTH PLAIN` response comes from: authd, over
/// the `deliverd-authd` channel (deliverd never reads the file).
pub trait RelayCredentialSource: Send + Sync {
    /// The base64 initial response; `Ok(None)` when none is configured.
    fn auth_plain(&self) -> Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + '_>>;
}

/// How long to wait for authd's credentials (it may be restarting).
const AUTHD_WAIT: Duration = Duration::from_secs(5);

impl RelayCredentialSource for PeerSlot<AuthRequest, AuthReply> {
    fn auth_plain(&self) -> Pin<Box<dyn Future<Output = Result<Option<String>, String>> + Send + '_>> {
        Box::pin(async move {
            match self.call(AuthRequest::RelayAuth, Vec::new(), AUTHD_WAIT).await {
                Ok((AuthReply::RelayAuth(r), _)) => Ok(r),
                Ok((AuthReply::Error(e), _)) => Err(format!("authd: {e}")),
                Ok((
                    AuthReply::Exists(_)
                    | AuthReply::Auth(_)
                    | AuthReply::DkimSignatures(_)
                    | AuthReply::Certificates { .. }
                    | AuthReply::Signature(_)
                    | AuthReply::ArcSet { .. },
                    _,
                )) => Err("authd: unexpected reply".into()),
                Err(e) => Err(format!("authd: {e}")),
            }
        })
    }
}

/// Settings of the courier, from the configuration (tests change the
/// timeouts).
#[derive(Debug, Clone)]
pub struct Settings {
    /// EHLO name.
    pub hostname: String,
    /// Port for MX hosts (`outgoing_smtp_port`).
    pub port: u16,
    /// Smarthost ("host" or "host:port"), when set.
    pub relay_host: Option<String>,
    /// Authenticate to the smarthost (`relay_auth_file` is set): only
    /// after STARTTLS with a certificate valid for its name.
    pub relay_auth: bool,
    /// `dns_servers`.
    pub dns_servers: Vec<String>,
    /// `tls_extra_ca_file`.
    pub tls_extra_ca_file: String,
    /// Session limits (connect and reply timeouts, reply bounds).
    pub session: SessionLimits,
    /// Bound on one whole attempt for one domain (all its MXs).
    pub attempt_timeout: Duration,
    /// How long idle connections are kept (zero: no reuse).
    pub idle_timeout: Duration,
    /// Sessions at once, in total.
    pub max_sessions: usize,
    /// Sessions at once to one domain.
    pub max_sessions_per_domain: usize,
    /// DNS query timeout.
    pub dns_timeout: Duration,
    /// MTA-STS: the policy cache (`data_dir/sts-cache`, written by
    /// deliverd), the policy servers' HTTPS port (`mta_sts_port`) and the
    /// fetch timeout.
    pub sts: StsSettings,
}

impl Settings {
    /// The settings a configuration asks for.
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            hostname: c.hostname.clone(),
            port: u16::try_from(c.outgoing_smtp_port).unwrap_or(25),
            relay_host: (!c.relay_host.is_empty()).then(|| c.relay_host.clone()),
            relay_auth: !c.relay_auth_file.is_empty(),
            dns_servers: c.dns_servers.clone(),
            tls_extra_ca_file: c.tls_extra_ca_file.clone(),
            session: SessionLimits::default(),
            attempt_timeout: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(30),
            max_sessions: 100,
            max_sessions_per_domain: 20,
            dns_timeout: Duration::from_secs(5),
            sts: StsSettings {
                cache_dir: Some(PathBuf::from(&c.data_dir).join("sts-cache")),
                port: u16::try_from(c.mta_sts_port).unwrap_or(443),
                fetch_timeout: Duration::from_secs(30),
            },
        }
    }
}

/// Why the courier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CourierError {
    /// DNS configuration.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// MTA-STS client configuration.
    #[error("{0}")]
    Sts(String),
    /// `relay_host` or a `via` server is not "host" or "host:port".
    #[error("bad server {0:?}: {1}")]
    Server(String, String),
}

/// Told the outcomes (recipient index, outcome) of each transaction as
/// soon as they are known; see [`Courier::deliver_recording`].
pub type Recorder<'a> = &'a (dyn Fn(&[(u32, DeliveryOutcome)]) + Sync);

/// The remote courier.
pub struct Courier {
    settings: Settings,
    dns: Dns,
    dane: DaneResolver,
    tls: TlsClient,
    pool: Arc<Pool>,
    limits: Limits,
    sts: Sts,
    credentials: Option<Arc<dyn RelayCredentialSource>>,
}

/// Where to send mail for one group of recipients.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    /// Through DNS (MX) for this domain (ASCII form).
    Mx(String),
    /// Through these servers ("host" or "host:port"): alias `via`.
    Servers(Vec<String>),
    /// Through the smarthost (`relay_host`), with AUTH when configured.
    Relay(String),
}

/// The outcome of trying one server.
enum HostOutcome {
    /// The transaction ran; the recipients have their results.
    Done(Vec<DeliveryOutcome>, SecLevel),
    /// Try the next server; this is why this one did not do.
    Next(String),
}

/// Split "host", "host:port", "[v6]:port" into host and port.
pub fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("missing ]")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected {after:?}")),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| format!("bad port {p:?}"))?)),
        Some(_) => Ok((s.to_string(), default_port)), // a bare IPv6 address
        None => Ok((s.to_string(), default_port)),
    }
}

fn is_ascii_local(addr: &str) -> bool {
    split_address(addr).0.is_ascii()
}

impl Courier {
    /// Set up DNS and TLS. Needs a tokio runtime.
    pub fn new(settings: Settings) -> Result<Arc<Courier>, CourierError> {
        Courier::with_credentials(settings, None)
    }

    /// Like [`Courier::new`], with the source of the smarthost credentials.
    pub fn with_credentials(
        settings: Settings,
        credentials: Option<Arc<dyn RelayCredentialSource>>,
    ) -> Result<Arc<Courier>, CourierError> {
        if let Some(r) = &settings.relay_host {
            parse_host_port(r, settings.port).map_err(|e| CourierError::Server(r.clone(), e))?;
        }
        let dns = Dns::new(&settings.dns_servers, settings.dns_timeout)?;
        let dane = DaneResolver::new(&settings.dns_servers, settings.dns_timeout)?;
        let tls = TlsClient::new(&settings.tls_extra_ca_file)?;
        tracing::debug!(roots = tls.root_count(), "remote delivery ready");
        let sts = Sts::new(dns.clone(), &tls, settings.sts.clone()).map_err(CourierError::Sts)?;
        let pool = Pool::new(settings.idle_timeout, 8, 256);
        let weak = Arc::downgrade(&pool);
        let every = settings.idle_timeout.max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match weak.upgrade() {
                    Some(p) => p.sweep(),
                    None => return,
                }
            }
        });
        Ok(Arc::new(Courier {
            limits: Limits::new(settings.max_sessions, settings.max_sessions_per_domain),
            settings,
            dns,
            dane,
            tls,
            pool,
            sts,
            credentials,
        }))
    }

    /// Number of idle connections kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Deliver the remote recipients `rcpts` of `job`. Recipients of one
    /// domain (or one `via` list) go in one transaction; groups run
    /// concurrently.
    pub async fn deliver(&self, job: &DeliveryJob, rcpts: &[JobRcpt], data: Arc<OwnedFd>) -> DeliveryReport {
        self.deliver_recording(job, rcpts, data, &|_| {}).await
    }

    /// [`Courier::deliver`], calling `record` with each transaction's
    /// outcomes (recipient index, outcome) the moment the server's replies
    /// are read, before the session can serve another transaction: deliverd
    /// writes them to its agent log there, so that its death later leaves
    /// them to its successor.
    pub async fn deliver_recording(
        &self,
        job: &DeliveryJob,
        rcpts: &[JobRcpt],
        data: Arc<OwnedFd>,
        record: Recorder<'_>,
    ) -> DeliveryReport {
        let mut report = DeliveryReport::default();
        let body = match Body::new(job.header_prefix.clone(), data).await {
            Ok(b) => b,
            Err(e) => {
                let o = DeliveryOutcome::TempFail(format!("cannot read the message: {e}"));
                report.results = rcpts.iter().map(|r| (r.index, o.clone())).collect();
                return report;
            }
        };
        let mut groups: BTreeMap<Target, Vec<&JobRcpt>> = BTreeMap::new();
        for r in rcpts {
            let (_, domain) = split_address(&r.address);
            let target = match &r.route {
                RcptRoute::Remote { via } if !via.is_empty() => Target::Servers(via.clone()),
                _ => match &self.settings.relay_host {
                    Some(relay) => Target::Relay(relay.clone()),
                    None => match domain_to_ascii(domain) {
                        Ok(d) => Target::Mx(d),
                        Err(e) => {
                            report.results.push((
                                r.index,
                                DeliveryOutcome::PermFail(format!("invalid domain {domain:?}: {e}")),
                            ));
                            continue;
                        }
                    },
                },
            };
            groups.entry(target).or_default().push(r);
        }
        let tasks = groups.into_iter().map(|(target, group)| {
            let body = &body;
            async move {
                let recorded = match &target {
                    Target::Mx(d) => recorded_level(job, d),
                    Target::Servers(_) | Target::Relay(_) => SecLevel::Plain,
                };
                let key = match &target {
                    Target::Mx(d) => d.clone(),
                    Target::Servers(s) => s.join("/"),
                    Target::Relay(s) => s.clone(),
                };
                let fut = self.deliver_group(job, &target, &group, body, recorded, &key, record);
                let (outcomes, level) = match tokio::time::timeout(self.settings.attempt_timeout, fut).await {
                    Ok(v) => v,
                    Err(_) => {
                        let o = DeliveryOutcome::TempFail(format!(
                            "delivery to {key} took longer than {}s",
                            self.settings.attempt_timeout.as_secs()
                        ));
                        (group.iter().map(|_| o.clone()).collect(), None)
                    }
                };
                let results: Vec<(u32, DeliveryOutcome)> = group.iter().map(|r| r.index).zip(outcomes).collect();
                let seen = match (&target, level) {
                    (Target::Mx(d), Some(l)) => Some((d.clone(), l)),
                    _ => None,
                };
                (results, seen)
            }
        });
        for (results, seen) in futures_join_all(tasks).await {
            report.results.extend(results);
            report.levels_seen.extend(seen);
        }
        report
    }

    /// One group: find the servers and try them in order.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_group(
        &self,
        job: &DeliveryJob,
        target: &Target,
        group: &[&JobRcpt],
        body: &Body,
        recorded: SecLevel,
        key: &str,
        record: Recorder<'_>,
    ) -> (Vec<DeliveryOutcome>, Option<SecLevel>) {
        let all = |o: DeliveryOutcome| (group.iter().map(|_| o.clone()).collect::<Vec<_>>(), None);
        // Addresses as the peer will see them, and the SMTPUTF8 need.
        let needs_utf8 = !is_ascii_local(&job.from) || group.iter().any(|r| !is_ascii_local(&r.address));
        let auth = matches!(target, Target::Relay(_)) && self.settings.relay_auth;
        // DANE applies when the MX answer is DNSSEC-authenticated.
        let mut dane_domain: Option<&str> = None;
        let (servers, implicit) = match target {
            Target::Relay(s) => match parse_host_port(s, self.settings.port) {
                Ok(hp) => (vec![hp], false),
                Err(e) => return all(DeliveryOutcome::PermFail(format!("bad server {s:?}: {e}"))),
            },
            Target::Servers(list) => {
                let mut v = Vec::new();
                for s in list {
                    match parse_host_port(s, self.settings.port) {
                        Ok(hp) => v.push(hp),
                        Err(e) => return all(DeliveryOutcome::PermFail(format!("bad server {s:?}: {e}"))),
                    }
                }
                (v, false)
            }
            Target::Mx(domain) => {
                let (mx, secure) = tokio::join!(self.dns.mx(domain), self.dane.mx_secure(domain));
                if secure {
                    dane_domain = Some(domain.as_str());
                }
                match mx {
                    Ok(MxAnswer::Hosts(h)) => (h.into_iter().map(|h| (h, self.settings.port)).collect(), false),
                    Ok(MxAnswer::Implicit) => (vec![(domain.clone(), self.settings.port)], true),
                    Err(e) if e.is_permanent() => return all(DeliveryOutcome::PermFail(e.to_string())),
                    Err(e) => return all(DeliveryOutcome::TempFail(e.to_string())),
                }
            }
        };
        // MTA-STS (RFC 8461) for MX routing, applied per MX host in
        // try_host where DANE does not authenticate the host.
        let sts = match target {
            Target::Mx(domain) => self.sts.decide(domain).await,
            Target::Servers(_) | Target::Relay(_) => StsDecision::default(),
        };
        let _permits = self.limits.acquire(key).await;
        let mut errors: Vec<String> = Vec::new();
        for (host, port) in servers.iter().take(dns::MAX_MX) {
            match self
                .try_host(
                    job,
                    host,
                    *port,
                    group,
                    body,
                    recorded,
                    needs_utf8,
                    implicit,
                    dane_domain,
                    &sts,
                    auth,
                    record,
                )
                .await
            {
                Ok(HostOutcome::Done(outcomes, level)) => {
                    sts.note_delivery(level);
                    return (outcomes, Some(level));
                }
                Ok(HostOutcome::Next(e)) => errors.push(e),
                Err(perm) => return all(DeliveryOutcome::PermFail(perm)),
            }
        }
        let why = errors.join("; ");
        sts.note_deferred(&why);
        all(DeliveryOutcome::TempFail(why))
    }

    /// Try one server: a pooled session or new connections to each of its
    /// addresses. `Err` is a permanent failure for the whole group.
    #[allow(clippy::too_many_arguments)]
    async fn try_host(
        &self,
        job: &DeliveryJob,
        host: &str,
        port: u16,
        group: &[&JobRcpt],
        body: &Body,
        recorded: SecLevel,
        needs_utf8: bool,
        implicit: bool,
        dane_domain: Option<&str>,
        sts: &StsDecision,
        auth: bool,
        record: Recorder<'_>,
    ) -> Result<HostOutcome, String> {
        let policy = match dane_domain {
            Some(domain) => match self.dane.host_policy(host, port, domain).await {
                Ok(p) => p,
                Err(e) => return Ok(HostOutcome::Next(format!("{host}: {e}"))),
            },
            None => HostPolicy::Opportunistic,
        };
        // MTA-STS where DANE does not authenticate this host (DANE takes
        // precedence, RFC 8461 §2): under enforce, an MX the policy does
        // not name is not contacted, and the others need TLS_SECURE.
        let mut floor_why = "recorded for this domain";
        let mut recorded = recorded;
        if !policy.is_dane() {
            if let Err(e) = sts.check_host(host) {
                return Ok(HostOutcome::Next(e));
            }
            if sts.floor() > recorded {
                recorded = sts.floor();
                floor_why = "required by the domain's MTA-STS policy (enforce)";
            }
        }
        // Authenticated sessions are pooled apart from the others.
        let pool_key = format!("{}{host}:{port}", if auth { "auth:" } else { "" });
        let mut session = None;
        while let Some(mut s) = self.pool.take(&pool_key) {
            let fits = match &policy {
                HostPolicy::Opportunistic => true,
                HostPolicy::EncryptOnly => s.level >= SecLevel::TlsInsecure,
                HostPolicy::Dane(_) => s.dane,
            };
            if fits && s.level >= recorded && s.reset().await.is_ok() {
                session = Some(s);
                break;
            }
        }
        let mut errors = Vec::new();
        if session.is_none() {
            let addrs = match self.dns.addresses(host).await {
                Ok(a) => a,
                Err(e) if implicit && e.is_permanent() => return Err(e.to_string()),
                Err(e) => return Ok(HostOutcome::Next(e.to_string())),
            };
            for ip in addrs.into_iter().take(4) {
                let addr = SocketAddr::new(ip, port);
                let opened = match self.open(addr, host, recorded, &policy).await {
                    Ok(s) if auth => self.authenticate(s).await,
                    other => other,
                };
                match opened {
                    Ok(s) => {
                        session = Some(s);
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        let Some(mut session) = session else {
            return Ok(HostOutcome::Next(format!("{host}: {}", errors.join("; "))));
        };
        let who = format!("{host}[{}]", session.addr.ip());
        let check = if session.level < recorded { "fail" } else { "pass" };
        metrics::inc(
            Metric::SecurityLevelChecks,
            &[("direction", "outgoing"), ("result", check)],
        );
        if session.level < recorded {
            let level = session.level;
            let problem = session
                .tls_problem
                .take()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            tokio::spawn(session.quit());
            return Ok(HostOutcome::Next(format!(
                "{who}: security level {} is below the {} {}; not sending{problem}",
                level.name(),
                recorded.name(),
                floor_why,
            )));
        }
        if let Some(limit) = session.ext.size
            && limit > 0
            && body.size() > limit
        {
            tokio::spawn(session.quit());
            return Err(format!(
                "5.3.4 message of {} bytes is larger than the {limit} bytes {who} accepts",
                body.size()
            ));
        }
        // Addresses: Unicode with SMTPUTF8 when needed and offered; else
        // the domains in ASCII, and non-ASCII local parts cannot go.
        let utf8 = needs_utf8 && session.ext.smtputf8;
        let convert = |addr: &str| -> Result<String, String> {
            if addr.is_empty() {
                return Ok(String::new());
            }
            if utf8 {
                return Ok(addr.to_string());
            }
            let (user, domain) = split_address(addr);
            if !user.is_ascii() {
                return Err(format!(
                    "5.6.7 the address {addr} has a non-ASCII local part and {who} does not support SMTPUTF8"
                ));
            }
            match domain_to_ascii(domain) {
                Ok(d) => Ok(format!("{user}@{d}")),
                Err(e) => Err(format!("invalid domain in {addr}: {e}")),
            }
        };
        let from = match convert(&job.from) {
            Ok(f) => f,
            Err(e) => {
                self.pool.put(&pool_key, session);
                return Err(e);
            }
        };
        let mut outcomes: Vec<Option<DeliveryOutcome>> = vec![None; group.len()];
        let mut sendable = Vec::new();
        let mut positions = Vec::new();
        for (i, r) in group.iter().enumerate() {
            match convert(&r.address) {
                Ok(a) => {
                    sendable.push(a);
                    positions.push(i);
                }
                Err(e) => outcomes[i] = Some(DeliveryOutcome::PermFail(e)),
            }
        }
        let level = session.level;
        if sendable.is_empty() {
            self.pool.put(&pool_key, session);
            return Ok(HostOutcome::Done(
                outcomes.into_iter().map(|o| o.expect("set")).collect(),
                level,
            ));
        }
        let env = Envelope {
            from: &from,
            rcpts: &sendable,
            smtputf8: utf8,
        };
        let results = match session.send(&env, body).await {
            Ok(r) => r,
            Err(e) => return Ok(HostOutcome::Next(format!("{who}: {e}"))),
        };
        let mut all_temp = true;
        for (pos, res) in positions.into_iter().zip(results) {
            let o = match res {
                RcptResult::Accepted => DeliveryOutcome::Delivered,
                RcptResult::Refused(r) if r.is_permanent() => {
                    DeliveryOutcome::PermFail(format!("{who} said: {}", r.summary()))
                }
                RcptResult::Refused(r) => DeliveryOutcome::TempFail(format!("{who} said: {}", r.summary())),
            };
            if !matches!(o, DeliveryOutcome::TempFail(_)) {
                all_temp = false;
            }
            outcomes[pos] = Some(o);
        }
        let outcomes: Vec<DeliveryOutcome> = outcomes.into_iter().map(|o| o.expect("set")).collect();
        if !all_temp {
            let indexed: Vec<(u32, DeliveryOutcome)> = group.iter().map(|r| r.index).zip(outcomes.clone()).collect();
            record(&indexed);
        }
        // Only now may another transaction use the session.
        self.pool.put(&pool_key, session);
        if all_temp {
            // Nothing got through and nothing was refused for good: the
            // next MX may do better.
            let text = outcomes
                .iter()
                .find_map(|o| match o {
                    DeliveryOutcome::TempFail(t) => Some(t.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            return Ok(HostOutcome::Next(text));
        }
        Ok(HostOutcome::Done(outcomes, level))
    }

    /// Authenticate a new session to the smarthost: never without TLS
    /// and a certificate valid for its name, so the password cannot go in
    /// clear or to an impostor.
    async fn authenticate(&self, mut s: Session) -> Result<Session, String> {
        let who = format!("{}[{}]", s.host, s.addr.ip());
        if s.level != SecLevel::TlsSecure {
            let why = match (&s.level, &s.tls_problem) {
                (SecLevel::Plain, _) => "the server did not offer STARTTLS".to_string(),
                (_, Some(p)) => format!("its certificate is not valid ({p})"),
                (_, None) => "its certificate is not valid".to_string(),
            };
            tokio::spawn(s.quit());
            return Err(format!(
                "{who}: relay credentials not sent: {why}; AUTH needs TLS with a certificate valid for the relay host"
            ));
        }
        if !s.ext.auth.iter().any(|m| m == "PLAIN") {
            tokio::spawn(s.quit());
            return Err(format!("{who}: the relay host does not offer AUTH PLAIN"));
        }
        let response = match &self.credentials {
            None => Err("no channel to authd".to_string()),
            Some(c) => c.auth_plain().await,
        };
        let response = match response {
            Ok(Some(r)) => r,
            Ok(None) => {
                tokio::spawn(s.quit());
                return Err(format!("{who}: relay_auth_file is set but authd has no credentials"));
            }
            Err(e) => {
                tokio::spawn(s.quit());
                return Err(format!("{who}: cannot get the relay credentials: {e}"));
            }
        };
        match s.auth_plain(&response).await {
            Ok(()) => {
                tracing::debug!(host = s.host, "authenticated to the relay host");
                Ok(s)
            }
            Err(e) => {
                tokio::spawn(s.quit());
                Err(format!("{who}: {e}"))
            }
        }
    }

    /// A new session to `addr`. When TLS fails and the domain has no
    /// recorded TLS level, try once more in plain text, as other MTAs do.
    async fn open(
        &self,
        addr: SocketAddr,
        host: &str,
        recorded: SecLevel,
        policy: &HostPolicy,
    ) -> Result<Session, String> {
        let s = &self.settings;
        match Session::connect_with(addr, host, &s.hostname, Some(&self.tls), policy, &s.session).await {
            Ok(sess) => {
                let tls = match sess.level {
                    SecLevel::Plain => "plain",
                    SecLevel::TlsClient | SecLevel::TlsInsecure => "insecure",
                    SecLevel::TlsSecure => "secure",
                };
                metrics::inc(Metric::RemoteTls, &[("result", tls)]);
                Ok(sess)
            }
            Err(SmtpError::Tls(e)) if recorded == SecLevel::Plain => {
                metrics::inc(Metric::RemoteTls, &[("result", "failed")]);
                tracing::info!(host, %addr, "TLS handshake failed ({e}); retrying without TLS");
                Session::connect(addr, host, &s.hostname, None, &s.session)
                    .await
                    .map_err(|e2| format!("{addr}: TLS failed ({e}), then {e2}"))
            }
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }
}

fn recorded_level(job: &DeliveryJob, domain_ascii: &str) -> SecLevel {
    job.outgoing_levels
        .iter()
        .filter(|(d, _)| domain_to_ascii(d).map(|a| a == domain_ascii).unwrap_or(false))
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(SecLevel::Plain)
}

/// Run futures concurrently and collect their outputs in order.
async fn futures_join_all<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        outputs[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(parse_host_port("mx.a.test", 25).unwrap(), ("mx.a.test".into(), 25));
        assert_eq!(
            parse_host_port("mx.a.test:2525", 25).unwrap(),
            ("mx.a.test".into(), 2525)
        );
        assert_eq!(parse_host_port("[::1]:26", 25).unwrap(), ("::1".into(), 26));
        assert_eq!(parse_host_port("::1", 25).unwrap(), ("::1".into(), 25));
        assert!(parse_host_port("h:x", 25).is_err());
        assert!(parse_host_port("", 25).is_err());
    }
}
