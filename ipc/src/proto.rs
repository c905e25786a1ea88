//! The messages of every channel: one request and one reply enum each.
//!
//! | channel | client → server | requests | replies |
//! |---|---|---|---|
//! | `control` | supervisor → worker | [`ControlMsg`] | [`WorkerMsg`] |
//! | `smtpd-authd` | smtpd → authd | [`AuthRequest`] | [`AuthReply`] |
//! | `queued-authd` | queued → authd | [`AuthRequest`] | [`AuthReply`] |
//! | `smtpd-queued` | smtpd → queued | [`QueueRequest`] | [`QueueReply`] |
//! | `queued-deliverd` | queued → deliverd | [`DeliverRequest`] | [`DeliverReply`] |
//! | `deliverd-authd` | deliverd → authd | [`AuthRequest`] (only [`AuthRequest::RelayAuth`]) | [`AuthReply`] |
//! | `queued-hookd` | queued → hookd | [`HookRequest`] (the two hooks) | [`HookReply`] |
//! | `deliverd-hookd` | deliverd → hookd | [`HookRequest`] (only [`HookRequest::Pipe`]) | [`HookReply`] |
//!
//! Message bodies never travel inside frames: queued hands smtpd a writable
//! file descriptor ([`QueueReply::MessageSlot`]) and deliverd a read-only one
//! ([`DeliverRequest::Deliver`]).

use serde::{Deserialize, Serialize};
use tambo_common::config::Config;
pub use tambo_common::domaininfo::SecLevel;

/// The kinds of worker the supervisor starts.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    /// The network front end.
    Smtpd,
    /// Passwords and private keys.
    Authd,
    /// The queue manager.
    Queued,
    /// The delivery agents.
    Deliverd,
    /// The operator's hooks and pipe aliases, under their own user.
    Hookd,
}

impl WorkerKind {
    /// Every worker kind, in start-up order.
    pub const ALL: [WorkerKind; 5] = [
        WorkerKind::Authd,
        WorkerKind::Hookd,
        WorkerKind::Queued,
        WorkerKind::Deliverd,
        WorkerKind::Smtpd,
    ];

    /// Short name used in process titles, logs and binary names.
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Smtpd => "smtpd",
            WorkerKind::Authd => "authd",
            WorkerKind::Queued => "queued",
            WorkerKind::Deliverd => "deliverd",
            WorkerKind::Hookd => "hookd",
        }
    }

    /// Parse the short name back.
    pub fn from_name(name: &str) -> Option<WorkerKind> {
        WorkerKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A channel between two workers. The first worker named is the client.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerChannel {
    /// smtpd asks authd (AUTH, TLS signing).
    SmtpdAuthd,
    /// smtpd asks queued (recipients, enqueue).
    SmtpdQueued,
    /// queued asks deliverd (deliveries).
    QueuedDeliverd,
    /// queued asks authd (user lookups, DKIM signing).
    QueuedAuthd,
    /// deliverd asks authd for the smarthost credentials (and nothing
    /// else: authd refuses every other request on this channel).
    DeliverdAuthd,
    /// queued asks hookd to run the post-data and alias-resolve hooks.
    QueuedHookd,
    /// deliverd asks hookd to run pipe aliases (and nothing else).
    DeliverdHookd,
}

impl PeerChannel {
    /// Every peer channel.
    pub const ALL: [PeerChannel; 7] = [
        PeerChannel::SmtpdAuthd,
        PeerChannel::SmtpdQueued,
        PeerChannel::QueuedDeliverd,
        PeerChannel::QueuedAuthd,
        PeerChannel::DeliverdAuthd,
        PeerChannel::QueuedHookd,
        PeerChannel::DeliverdHookd,
    ];

    /// The name used in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            PeerChannel::SmtpdAuthd => "smtpd-authd",
            PeerChannel::SmtpdQueued => "smtpd-queued",
            PeerChannel::QueuedDeliverd => "queued-deliverd",
            PeerChannel::QueuedAuthd => "queued-authd",
            PeerChannel::DeliverdAuthd => "deliverd-authd",
            PeerChannel::QueuedHookd => "queued-hookd",
            PeerChannel::DeliverdHookd => "deliverd-hookd",
        }
    }

    /// (client, server) of this channel.
    pub fn ends(self) -> (WorkerKind, WorkerKind) {
        match self {
            PeerChannel::SmtpdAuthd => (WorkerKind::Smtpd, WorkerKind::Authd),
            PeerChannel::SmtpdQueued => (WorkerKind::Smtpd, WorkerKind::Queued),
            PeerChannel::QueuedDeliverd => (WorkerKind::Queued, WorkerKind::Deliverd),
            PeerChannel::QueuedAuthd => (WorkerKind::Queued, WorkerKind::Authd),
            PeerChannel::DeliverdAuthd => (WorkerKind::Deliverd, WorkerKind::Authd),
            PeerChannel::QueuedHookd => (WorkerKind::Queued, WorkerKind::Hookd),
            PeerChannel::DeliverdHookd => (WorkerKind::Deliverd, WorkerKind::Hookd),
        }
    }
}

/// Name of the supervisor ↔ worker channel in the handshake.
pub const CONTROL_CHANNEL: &str = "control";

/// The kind of a listening socket, which decides the session's rules.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Port 25: STARTTLS offered, AUTH after TLS, local recipients only
    /// without AUTH.
    Smtp,
    /// Port 587: STARTTLS, AUTH required for MAIL.
    Submission,
    /// Port 465: implicit TLS, AUTH required for MAIL.
    SubmissionTls,
}

impl ListenerKind {
    /// The name systemd's LISTEN_FDNAMES uses for this kind.
    pub fn fd_name(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::SubmissionTls => "submission_tls",
        }
    }
}

/// Everything a worker needs to start, sent once by the supervisor.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkerStart {
    /// The parsed configuration.
    pub config: Config,
    /// The configuration directory (absolute).
    pub config_dir: String,
    /// Local domains, normalised (the sub-directories of `domains/`).
    pub local_domains: Vec<String>,
    /// Each local domain's directory name under `domains/` as it is on
    /// disk (`ñoñOS` for the domain `ñoños`).
    #[serde(default)]
    pub domain_dirs: Vec<(String, String)>,
    /// Verbosity level from `-v`.
    pub verbosity: u8,
    /// True when the server runs without root (development, tests).
    pub unprivileged: bool,
    /// DNS servers ("ip:port") for SPF, DKIM and DMARC lookups: the
    /// configured `dns_servers`, or the `nameserver` lines of
    /// /etc/resolv.conf read by the supervisor (smtpd is chrooted and
    /// cannot read it).
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// tambod's own environment, as it was started (chasquid runs its
    /// delivery agent and pipe aliases with its environment, and hooks with
    /// its USER, SHELL, PATH and PWD). Sent to queued and deliverd only;
    /// empty for the other workers.
    #[serde(default)]
    pub agent_env: Vec<(String, String)>,
}

impl WorkerStart {
    /// The directory of local domain `domain`:
    /// `config_dir/domains/<its directory>`.
    pub fn domain_dir(&self, domain: &str) -> std::path::PathBuf {
        let dir = self
            .domain_dirs
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, dir)| dir.as_str())
            .unwrap_or(domain);
        std::path::Path::new(&self.config_dir).join("domains").join(dir)
    }

    /// The value of `name` in [`agent_env`](Self::agent_env).
    pub fn agent_var(&self, name: &str) -> Option<&str> {
        self.agent_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Supervisor → worker, on the control channel.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlMsg {
    /// To authd, before [`Start`](Self::Start) and before each reload:
    /// secret files, one fd attached per entry, in order (see
    /// [`crate::secrets`]). Several frames may come in a row.
    Secrets(Vec<crate::secrets::SecretFile>),
    /// First message (after the secrets, for authd): the configuration.
    Start(Box<WorkerStart>),
    /// A fresh socket to a peer worker (one fd attached). Replaces any earlier
    /// socket of the same channel.
    Peer(PeerChannel),
    /// A listening TCP socket for smtpd (one fd attached).
    Listener {
        /// What the socket is for.
        kind: ListenerKind,
        /// The address it is bound to, for logs.
        addr: String,
    },
    /// Reload users, aliases, domaininfo, certificates and keys.
    Reload(Box<WorkerStart>),
    /// To authd: a users file changed (the supervisor checks them every
    /// 30 s, as chasquid reloads them); the users files came just before
    /// in [`Secrets`](Self::Secrets). Answered with
    /// [`WorkerMsg::Reloaded`].
    ReloadUsers,
    /// Stop accepting work, finish what runs within `grace_secs`, exit 0.
    Shutdown {
        /// Seconds allowed for running transactions.
        grace_secs: u32,
    },
    /// To queued: a connection accepted on the control socket whose peer
    /// credentials the supervisor checked (one fd attached). queued speaks
    /// the [`ADMIN_CHANNEL`] protocol on it.
    AdminClient {
        /// The client's uid, for the log.
        uid: u32,
        /// Its user name, as the supervisor found it in the password
        /// database (queued, sandboxed, cannot read it); `None` when the
        /// uid has no name.
        user: Option<String>,
    },
    /// Send a [`WorkerMsg::Metrics`] snapshot back, tagged with `seq`.
    /// Answered inside [`crate::worker::ControlLink::recv`]; workers never
    /// see it.
    CollectMetrics {
        /// Echoed in the answer.
        seq: u64,
    },
    /// To smtpd: the listening socket of `monitoring_address` (one fd
    /// attached), bound by the supervisor. smtpd serves the HTTP endpoint;
    /// the supervisor never reads from the network.
    MonitorListener {
        /// The address it is bound to, for logs.
        addr: String,
    },
    /// To smtpd: the metrics page, answer to [`WorkerMsg::MetricsWanted`],
    /// rendered by the supervisor from every worker's snapshot.
    MetricsPage {
        /// The highest `req` of [`WorkerMsg::MetricsWanted`] this page
        /// answers (its collection started after that request).
        answers: u64,
        /// The exposition, in OpenMetrics text format.
        openmetrics: String,
        /// Workers that are not running now (by name), for `/healthz`.
        down: Vec<String>,
        /// chasquid's debug pages, rendered with the same collection.
        debug: DebugPages,
    },
    /// Tests only: attempt something the worker's sandbox must refuse, and
    /// log the outcome (see [`crate::sandbox::probe`]; acted on only in
    /// builds with the `sandbox-probe` feature).
    SandboxProbe(SandboxProbe),
}

/// What a [`ControlMsg::SandboxProbe`] attempts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum SandboxProbe {
    /// Open this path for reading.
    Open(String),
    /// Connect over TCP to this `ip:port`.
    Connect(String),
    /// Run this program with `-c true`.
    Exec(String),
}

impl SandboxProbe {
    /// Parse `open:PATH`, `connect:IP:PORT` or `exec:PATH`.
    pub fn parse(text: &str) -> Option<SandboxProbe> {
        let (what, arg) = text.split_once(':')?;
        let arg = arg.to_string();
        match what {
            "open" => Some(SandboxProbe::Open(arg)),
            "connect" => Some(SandboxProbe::Connect(arg)),
            "exec" => Some(SandboxProbe::Exec(arg)),
            _ => None,
        }
    }
}

/// chasquid's pages on the monitoring endpoint besides `/metrics`,
/// rendered by the supervisor and served by smtpd as they are. They hold
/// nothing smtpd may not see: no envelope of queued mail, no secret.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct DebugPages {
    /// `/`: the server, its workers, and the list of pages (text).
    pub index: String,
    /// `/debug/vars`: chasquid's expvars (`chasquid/queue/putCount`…)
    /// as JSON, as Go's expvar serves them.
    pub vars: String,
    /// `/debug/flags`: tambod's flags, one `name=value` per line.
    pub flags: String,
    /// `/debug/config`: the configuration in force (text format).
    pub config: String,
    /// `/debug/queue`: how many messages are queued and the oldest's age
    /// (the envelopes stay in queued; `tambo queue` lists them).
    pub queue: String,
}

/// Worker → supervisor, on the control channel.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum WorkerMsg {
    /// The worker has processed its start message.
    Ready,
    /// The worker could not start (a file that does not load, a directory
    /// it cannot use): why, naming the file. It exits next. At tambod's
    /// start this stops tambod with the message.
    Failed {
        /// What went wrong.
        message: String,
    },
    /// Outcome of a reload.
    Reloaded {
        /// Whether the new state is in effect.
        ok: bool,
        /// Why not, when it is not.
        message: String,
    },
    /// One mail-log event; the supervisor owns the mail log (workers cannot
    /// reach `/dev/log` or the log file after dropping privileges).
    MailLog(MailLogEvent),
    /// Answer to [`ControlMsg::CollectMetrics`].
    Metrics {
        /// The `seq` of the request.
        seq: u64,
        /// Current values of this worker's metrics.
        samples: Vec<crate::metrics::MetricSample>,
    },
    /// From smtpd: a client of the monitoring endpoint wants the metrics;
    /// the supervisor collects every worker's snapshot and answers with a
    /// [`ControlMsg::MetricsPage`]. Requests are coalesced.
    MetricsWanted {
        /// Increases with each request.
        req: u64,
    },
}

/// One event of the mail log (`mail_log_path`): one line each, in a format
/// close to chasquid's.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum MailLogEvent {
    /// A listening socket is ready.
    Listening {
        /// The address (as configured, or `systemd`).
        addr: String,
        /// Its role.
        kind: ListenerKind,
    },
    /// A password check (emitted by authd, which sees every one).
    Auth {
        /// Whether it succeeded.
        ok: bool,
        /// `user@domain` as given.
        user: String,
        /// The client's IP address.
        ip: String,
    },
    /// smtpd refused a recipient or a message.
    Rejected {
        /// The client's IP address.
        ip: String,
        /// MAIL FROM (empty for `<>` or when not given yet).
        from: String,
        /// Recipients concerned (may be empty).
        to: Vec<String>,
        /// The reply given.
        reason: String,
    },
    /// smtpd answered a command that is no SMTP (another protocol, an
    /// unknown verb) or closed a session for too many errors: what
    /// fail2ban's filter (`packaging/fail2ban/tambo.conf`) looks for.
    ProtocolError {
        /// The client's IP address.
        ip: String,
        /// The command (a known verb, or `other`).
        command: String,
        /// The reply given.
        reply: String,
    },
    /// A message was accepted into the queue.
    Queued {
        /// Queue ID.
        id: String,
        /// MAIL FROM.
        from: String,
        /// RCPT TO, as given.
        to: Vec<String>,
        /// The client's IP address.
        ip: String,
    },
    /// Delivered to one recipient.
    Sent {
        /// Queue ID.
        id: String,
        /// MAIL FROM.
        from: String,
        /// The recipient.
        to: String,
    },
    /// A delivery attempt failed; it will be retried.
    TempFail {
        /// Queue ID.
        id: String,
        /// MAIL FROM.
        from: String,
        /// The recipient.
        to: String,
        /// What went wrong.
        err: String,
    },
    /// Delivery to one recipient failed for good.
    PermFail {
        /// Queue ID.
        id: String,
        /// MAIL FROM.
        from: String,
        /// The recipient.
        to: String,
        /// What went wrong.
        err: String,
    },
    /// Every recipient of a message is done; it left the queue.
    AllDone {
        /// Queue ID.
        id: String,
        /// MAIL FROM.
        from: String,
    },
}

/// Make a value safe for one log line: control characters (CR, LF, …)
/// become `\xNN`, and the value is cut at 1000 characters.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(1000));
    for (n, c) in s.chars().enumerate() {
        if n >= 1000 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().take(100).map(|s| clean(s)).collect();
    let more = if v.len() > 100 { " …" } else { "" };
    format!("[{}{more}]", items.join(" "))
}

fn sender(from: &str) -> String {
    if from.is_empty() { "<>".to_string() } else { clean(from) }
}

impl MailLogEvent {
    /// The log line, without a trailing newline. Values coming from the
    /// network are cleaned, so one event is always one line.
    pub fn line(&self) -> String {
        match self {
            MailLogEvent::Listening { addr, kind } => {
                format!("daemon listening on {} ({})", clean(addr), kind.fd_name())
            }
            MailLogEvent::Auth { ok, user, ip } => format!(
                "{} auth {} for {}",
                clean(ip),
                if *ok { "succeeded" } else { "failed" },
                clean(user)
            ),
            MailLogEvent::Rejected { ip, from, to, reason } => {
                let mut s = format!("{} rejected", clean(ip));
                if !from.is_empty() {
                    s.push_str(&format!(" from={}", clean(from)));
                }
                if !to.is_empty() {
                    s.push_str(&format!(" to={}", list(to)));
                }
                s.push_str(&format!(" - {}", clean(reason)));
                s
            }
            MailLogEvent::ProtocolError { ip, command, reply } => {
                format!("{} protocol error on {} - {}", clean(ip), clean(command), clean(reply))
            }
            MailLogEvent::Queued { id, from, to, ip } => format!(
                "{} from={} queued ip={} to={}",
                clean(id),
                sender(from),
                clean(ip),
                list(to)
            ),
            MailLogEvent::Sent { id, from, to } => {
                format!("{} from={} to={} sent", clean(id), sender(from), clean(to))
            }
            MailLogEvent::TempFail { id, from, to, err } => format!(
                "{} from={} to={} failed (temporary): {}",
                clean(id),
                sender(from),
                clean(to),
                clean(err)
            ),
            MailLogEvent::PermFail { id, from, to, err } => format!(
                "{} from={} to={} failed (permanent): {}",
                clean(id),
                sender(from),
                clean(to),
                clean(err)
            ),
            MailLogEvent::AllDone { id, from } => format!("{} from={} all done", clean(id), sender(from)),
        }
    }
}

/// smtpd or queued → authd.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum AuthRequest {
    /// Does this local user exist (as a mailbox, denied users included)?
    UserExists {
        /// Normalised user part.
        user: String,
        /// Normalised local domain.
        domain: String,
    },
    /// Sign a message with every DKIM key of `domain` (queued only; authd
    /// refuses it from smtpd). The private keys never leave authd: queued
    /// sends the message's header section and the hash of its body.
    DkimSign {
        /// The signing domain (a local domain).
        domain: String,
        /// The header section as received (CRLF line endings, without the
        /// blank line that ends it).
        headers: Vec<u8>,
        /// SHA-256 of the body under relaxed canonicalization (32 bytes).
        body_hash: Vec<u8>,
    },
    /// Add an ARC set (RFC 8617) to a message that a local alias forwards
    /// to a remote address, with the first RSA DKIM key of `domain`
    /// (queued only, like [`AuthRequest::DkimSign`]).
    ArcSeal {
        /// The forwarding domain (a local domain): `d=` of the seal.
        domain: String,
        /// The header section as it will be sent (CRLF line endings,
        /// without the blank line), tambo's own headers included.
        headers: Vec<u8>,
        /// SHA-256 of the body under relaxed canonicalization (32 bytes).
        body_hash: Vec<u8>,
        /// The chain's state at receipt: the seal's `cv=`. Only
        /// [`ArcChain::None`] and [`ArcChain::Pass`] are sealed.
        chain: ArcChain,
        /// The value of tambo's Authentication-Results (`authserv-id;
        /// results`), copied into ARC-Authentication-Results.
        results: String,
    },
    /// Check a password.
    Authenticate {
        /// Normalised user part.
        user: String,
        /// Normalised domain.
        domain: String,
        /// The password as given.
        password: String,
        /// The client's IP address, for throttling.
        client_ip: String,
    },
    /// The public certificate chains of `certs/*/` (smtpd's TLS).
    Certificates,
    /// Sign a TLS handshake message with a certificate's private key.
    Sign {
        /// The set the certificate came from ([`AuthReply::Certificates`]).
        generation: u64,
        /// The certificate directory's name.
        name: String,
        /// The TLS SignatureScheme code point.
        scheme: u16,
        /// What to sign (a TLS server handshake message, bounded).
        message: Vec<u8>,
    },
    /// The `AUTH PLAIN` response for `relay_host` (deliverd only; authd
    /// refuses it from smtpd and queued).
    RelayAuth,
}

impl AuthRequest {
    /// The request's kind, for logs (never its contents: they may hold a
    /// password).
    pub fn name(&self) -> &'static str {
        match self {
            AuthRequest::UserExists { .. } => "UserExists",
            AuthRequest::DkimSign { .. } => "DkimSign",
            AuthRequest::ArcSeal { .. } => "ArcSeal",
            AuthRequest::Authenticate { .. } => "Authenticate",
            AuthRequest::Certificates => "Certificates",
            AuthRequest::Sign { .. } => "Sign",
            AuthRequest::RelayAuth => "RelayAuth",
        }
    }
}

/// authd's answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// Answer to [`AuthRequest::UserExists`].
    Exists(bool),
    /// Answer to [`AuthRequest::Authenticate`].
    Auth(AuthOutcome),
    /// Answer to [`AuthRequest::DkimSign`]: one `DKIM-Signature` header
    /// per key of the domain (folded, each ending in CRLF); empty when the
    /// domain has no key.
    DkimSignatures(Vec<String>),
    /// The request could not be answered (temporary).
    Error(String),
    /// Answer to [`AuthRequest::Certificates`], sorted by name.
    Certificates {
        /// Random identifier of this set of certificates (changes on reload
        /// and when authd restarts).
        generation: u64,
        /// One entry per usable certificate directory.
        chains: Vec<CertChain>,
    },
    /// Answer to [`AuthRequest::Sign`].
    Signature(Vec<u8>),
    /// Answer to [`AuthRequest::ArcSeal`]: ARC-Seal,
    /// ARC-Message-Signature and ARC-Authentication-Results (folded, each
    /// ending in CRLF), or empty when the message is not sealed (no RSA
    /// key, chain too long or not sealable), with the reason.
    ArcSet {
        /// The three header fields, or empty.
        headers: String,
        /// Why nothing was sealed (empty when sealed).
        skipped: String,
    },
    /// Answer to [`AuthRequest::RelayAuth`]: the base64 initial response
    /// of `AUTH PLAIN`, or `None` when `relay_auth_file` is not set.
    RelayAuth(Option<String>),
}

/// The ARC chain of an incoming message as verified at receipt (RFC 8617).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArcChain {
    /// Not verified: authenticated or local submission, DNS temporary
    /// error, message too large.
    #[default]
    Unknown,
    /// The message carried no ARC header.
    None,
    /// The chain validated.
    Pass,
    /// The chain is broken or a signature does not verify.
    Fail,
}

/// The public half of one `certs/<name>/` directory.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CertChain {
    /// The directory's name.
    pub name: String,
    /// DER certificates, the end-entity one first.
    pub chain: Vec<Vec<u8>>,
    /// The key's TLS SignatureAlgorithm code point.
    pub algorithm: u8,
    /// The TLS SignatureScheme code points the key can sign with, in order
    /// of preference.
    pub schemes: Vec<u16>,
}

/// The result of a password check.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Correct password, for this identity (`user@domain`; for a login
    /// without domain that Dovecot accepted, `user@`, as chasquid has it).
    Success {
        /// Who the session is authenticated as.
        identity: String,
    },
    /// Wrong user or password.
    Failure,
    /// Too many recent failures for this client or user.
    Throttled,
}

/// Information about the TLS layer of a session.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// e.g. "TLS13_AES_128_GCM_SHA256".
    pub cipher: String,
}

/// The envelope smtpd hands to queued when the data is complete.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct IncomingEnvelope {
    /// MAIL FROM, normalised; empty for `<>`.
    pub mail_from: String,
    /// RCPT TO addresses, normalised, in order.
    pub rcpts: Vec<String>,
    /// The EHLO/HELO argument as given.
    pub helo: String,
    /// The client's IP address.
    pub remote_ip: String,
    /// The client's TCP port (0 for mail submitted locally).
    #[serde(default)]
    pub remote_port: u16,
    /// The authenticated user (`user@domain`), if any.
    pub auth_user: Option<String>,
    /// TLS parameters, when the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// "SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA" (RFC 3848).
    pub protocol: String,
    /// Bytes smtpd wrote into the data file.
    pub data_size: u64,
    /// The name of the listener kind, for the post-data hook.
    pub listener: ListenerKind,
    /// Header lines smtpd adds (Received-SPF, Authentication-Results),
    /// each ending in CRLF; queued puts them right under its Received.
    #[serde(default)]
    pub auth_headers: String,
    /// The SPF verdict for the sender: `Some(true)` on pass, `None` when
    /// no check was made (authenticated sessions; the post-data hook's
    /// SPF_PASS is then `0`, as in chasquid).
    pub spf_pass: Option<bool>,
    /// The ARC chain as smtpd verified it (decides `cv=` when queued has
    /// the message sealed for a forward).
    #[serde(default)]
    pub arc: ArcChain,
}

/// smtpd → queued.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum QueueRequest {
    /// May this address receive mail here? Only asked for local domains.
    CheckRecipient {
        /// Normalised address.
        address: String,
    },
    /// Open a fresh data file; the reply carries a writable fd.
    NewMessage,
    /// The data is written: make it durable and queue it.
    Commit {
        /// The ID from [`QueueReply::MessageSlot`].
        id: String,
        /// Who sends to whom.
        envelope: Box<IncomingEnvelope>,
    },
    /// Forget an uncommitted message.
    Abort {
        /// The ID from [`QueueReply::MessageSlot`].
        id: String,
    },
    /// After a [`QueueRequest::Commit`] got no answer (queued died while
    /// it ran): did that commit happen? Answered with
    /// [`QueueReply::Committed`] when queued holds the message (or found
    /// it in the queue at start), else [`QueueReply::Refused`]. smtpd asks
    /// the restarted queued, so that a message made durable just before
    /// queued died gets its 250, not a 451 that makes the client send it
    /// again.
    WasCommitted {
        /// The ID from [`QueueReply::MessageSlot`].
        id: String,
    },
    /// The incoming security-level check (chasquid's "check connection
    /// security level"), asked at MAIL FROM for an unauthenticated sender
    /// whose SPF passed: may `domain` send over a connection at `level`?
    /// Answered with [`QueueReply::IncomingLevel`]. Levels are raised by
    /// [`QueueRequest::Commit`] (unauthenticated, SPF pass, over TLS), not
    /// by this check.
    IncomingLevel {
        /// The MAIL FROM domain, normalised.
        domain: String,
        /// The connection's level: [`SecLevel::Plain`] or
        /// [`SecLevel::TlsClient`].
        level: SecLevel,
    },
}

/// What queued says of a recipient.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// The address is valid here.
    Accept,
    /// No such user or alias.
    Unknown,
    /// Cannot tell now; try later.
    TempFail(String),
    /// Refuse the recipient with this reply (e.g. an alias loop).
    Refused(SmtpReply),
}

/// An SMTP reply queued asks smtpd to give.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// Three-digit code.
    pub code: u16,
    /// Enhanced status code, e.g. "4.3.0".
    pub enhanced: String,
    /// Text after the codes (one line, no CR/LF).
    pub text: String,
}

impl SmtpReply {
    /// The reply line without CRLF: `code enhanced text`, or `code text`
    /// when there is no enhanced code (a post-data hook's own text, as
    /// chasquid sends it).
    pub fn line(&self) -> String {
        if self.enhanced.is_empty() {
            format!("{} {}", self.code, self.text)
        } else {
            format!("{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

/// queued's answers to smtpd.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum QueueReply {
    /// Answer to [`QueueRequest::CheckRecipient`].
    Recipient(RcptVerdict),
    /// Answer to [`QueueRequest::NewMessage`]: one writable fd attached.
    MessageSlot {
        /// The message's queue ID.
        id: String,
    },
    /// The message is on disk (fsynced): smtpd may answer 250.
    Committed {
        /// The queue ID.
        id: String,
    },
    /// The message was not queued: smtpd gives this reply.
    Refused(SmtpReply),
    /// Generic acknowledgement (Abort).
    Done,
    /// Answer to [`QueueRequest::IncomingLevel`].
    IncomingLevel {
        /// The level recorded for the domain.
        recorded: SecLevel,
        /// False when the connection is below `recorded`: smtpd refuses
        /// the sender with 550 5.7.3.
        allowed: bool,
    },
}

/// How deliverd must deliver to one recipient.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RcptRoute {
    /// To a local mailbox, through the MDA command or LMTP.
    Local {
        /// Normalised user part (suffixes and drop characters removed).
        user: String,
        /// Local domain.
        domain: String,
    },
    /// Pipe the message into a command (argv, no shell).
    Pipe {
        /// The command and its arguments.
        argv: Vec<String>,
    },
    /// Over SMTP to another host.
    Remote {
        /// Servers to use instead of the MX lookup (alias `via`).
        via: Vec<String>,
    },
}

/// One recipient of a delivery job.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct JobRcpt {
    /// Index of this recipient in the queue entry.
    pub index: u32,
    /// The final address.
    pub address: String,
    /// How to reach it.
    pub route: RcptRoute,
}

/// A delivery job: one message, some of its recipients.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DeliveryJob {
    /// Queue ID.
    pub id: String,
    /// Envelope sender; empty for `<>`.
    pub from: String,
    /// Recipients to attempt.
    pub rcpts: Vec<JobRcpt>,
    /// Header lines to send before the data file's content (CRLF endings).
    pub header_prefix: Vec<u8>,
    /// The outgoing security level recorded (by queued, in `domaininfo`)
    /// for each remote recipient domain of this job; a domain not listed is
    /// [`SecLevel::Plain`]. deliverd refuses connections below it.
    pub outgoing_levels: Vec<(String, SecLevel)>,
    /// IDs of messages whose earlier results queued has since recorded
    /// (in its journal), or no longer needs: deliverd forgets what it kept
    /// of them. Until then deliverd answers a job for a recipient it has
    /// already delivered, or is still delivering, from what it kept,
    /// without delivering again (a restarted queued sends such jobs).
    pub settled: Vec<String>,
}

/// queued → deliverd.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum DeliverRequest {
    /// Deliver; one read-only fd of the data file attached.
    Deliver(DeliveryJob),
}

/// The outcome of one delivery attempt to one recipient.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Delivered.
    Delivered,
    /// Failed, try again later.
    TempFail(String),
    /// Failed for good.
    PermFail(String),
}

/// deliverd's answer to a job.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum DeliverReply {
    /// Outcomes, plus the security levels reached with remote domains,
    /// which queued records when they are higher than what it knew.
    Report(DeliveryReport),
}

/// deliverd's answer to a job: an outcome per recipient and, for remote
/// ones, the security levels reached.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DeliveryReport {
    /// One outcome per recipient of the job, by index.
    pub results: Vec<(u32, DeliveryOutcome)>,
    /// (domain, level reached) for each domain a connection was made for.
    pub levels_seen: Vec<(String, SecLevel)>,
}

/// queued or deliverd → hookd. hookd finds the hooks itself
/// (`config_dir/hooks/NAME`): no request names a program but
/// [`HookRequest::Pipe`], whose command comes from an aliases file.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HookRequest {
    /// Run `hooks/post-data` with the message on stdin (LF line endings):
    /// `prefix`, then the data file (one read-only fd attached).
    PostData {
        /// The hook's own variables (`REMOTE_ADDR`, `MAIL_FROM`…); hookd
        /// adds `USER`, `PWD`, `SHELL` and `PATH` of tambod's environment.
        vars: Vec<(String, String)>,
        /// Header lines written before the data file.
        prefix: Vec<u8>,
        /// Milliseconds it may run.
        timeout_ms: u32,
    },
    /// Run `hooks/alias-resolve ADDRESS` with tambod's environment and
    /// nothing on stdin.
    AliasResolve {
        /// The address asked about.
        address: String,
        /// Milliseconds it may run.
        timeout_ms: u32,
    },
    /// Run a pipe alias's command (argv, no shell) with tambod's
    /// environment and the message on stdin (LF line endings): `prefix`,
    /// then the data file (one read-only fd attached).
    Pipe {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Header lines written before the data file.
        prefix: Vec<u8>,
        /// Milliseconds it may run.
        timeout_ms: u32,
    },
}

/// hookd's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HookReply {
    /// The hook does not exist, or hookd's user cannot execute it.
    Absent,
    /// The program ran to its end.
    Ran(HookRun),
    /// The program did not run to its end: why (cannot start, timed out,
    /// request refused), one line.
    Failed(HookFailure),
}

/// What a program that ran produced.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Its stdout (bounded).
    pub stdout: Vec<u8>,
    /// Its stderr (bounded).
    pub stderr: Vec<u8>,
}

/// Why a program gave no result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookFailure {
    /// It could not be started.
    #[error("cannot run {program}: {why}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        why: String,
    },
    /// It ran too long; its whole process group was killed.
    #[error("{program} timed out after {secs}s")]
    Timeout {
        /// The program.
        program: String,
        /// The limit.
        secs: u32,
    },
    /// Anything else (waiting failed, the request was malformed or not
    /// allowed on its channel, hookd unreachable).
    #[error("{0}")]
    Other(String),
}

/// Name of the control-socket protocol in the handshake. A client sends its
/// `Hello` and one [`AdminRequest`] frame; the server answers with its
/// `Hello` and [`AdminReply`] frames, the last of which is
/// [`AdminReply::End`] or [`AdminReply::Error`], then closes.
pub const ADMIN_CHANNEL: &str = "admin";

/// Largest request frame queued accepts on the control socket.
pub const MAX_ADMIN_REQUEST: usize = 4096;

/// An operator's request on the control socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every queued message ([`AdminReply::Message`] each, then `End`).
    List,
    /// One message: its envelope and headers.
    Show {
        /// Queue ID.
        id: String,
    },
    /// Retry now: every message (`None`) or one.
    Flush {
        /// Queue ID, or every message.
        id: Option<String>,
    },
    /// Keep a message from being delivered until released.
    Hold {
        /// Queue ID.
        id: String,
    },
    /// Undo a hold.
    Release {
        /// Queue ID.
        id: String,
    },
    /// Delete a message durably, without a DSN.
    Remove {
        /// Queue ID.
        id: String,
    },
    /// Queue a message from a local program (`sendmail`). After the
    /// server's `Hello`, the client sends the message (CRLF line endings)
    /// as frames of `Vec<u8>`, each at most [`SUBMIT_CHUNK`] bytes, then an
    /// empty one. The answer is `Done("queued as ID")` and `End`, or an
    /// `Error` starting with an SMTP reply code ("550 5.1.1 …").
    Submit {
        /// Envelope sender; empty for `<>`.
        from: String,
        /// Envelope recipients.
        rcpts: Vec<String>,
    },
    /// Resolve an address as RCPT would (users, aliases, catch-all, the
    /// alias-resolve hook): one `Done("ADDRESS\tKIND")` per final
    /// recipient, then `End`; `Error` when it does not resolve.
    ResolveAddress {
        /// The address to resolve.
        address: String,
    },
    /// Forget the security levels recorded for a domain (`tambo
    /// domaininfo-remove`): queued removes its `domaininfo` file and its
    /// copy in memory. One `Done` with what happened, then `End`.
    DomainInfoRemove {
        /// The domain.
        domain: String,
    },
}

/// Largest data frame of an [`AdminRequest::Submit`].
pub const SUBMIT_CHUNK: usize = 64 * 1024;

/// One recipient in a queue listing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminRcpt {
    /// Final address.
    pub address: String,
    /// The address given at RCPT TO, when it differs.
    pub original: String,
    /// "pending", "delivered" or "failed".
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last error (bounded), empty if none.
    pub last_error: String,
    /// Unix time of the next attempt (pending recipients).
    pub next_attempt: u64,
}

/// One message in a queue listing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AdminMessage {
    /// Queue ID.
    pub id: String,
    /// Bytes of the data file.
    pub size: u64,
    /// Unix time it was accepted.
    pub created: u64,
    /// Envelope sender; empty for `<>`.
    pub from: String,
    /// Held by the operator.
    pub held: bool,
    /// Recipients (at most a bounded number).
    pub rcpts: Vec<AdminRcpt>,
    /// Recipients left out of `rcpts` to bound the frame.
    pub more_rcpts: u32,
}

/// queued's answers on the control socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// A message's summary (list, show).
    Message(Box<AdminMessage>),
    /// Details of a shown message: client, EHLO, authenticated user, the
    /// header lines tambo adds and the message's own header (bounded).
    Details {
        /// Client IP address.
        remote_ip: String,
        /// EHLO name.
        helo: String,
        /// Authenticated user, if any.
        auth_user: Option<String>,
        /// The header section as delivered (bounded, lossy UTF-8).
        headers: String,
    },
    /// An action was done; the text says what.
    Done(String),
    /// The request failed; the text says why. Last frame.
    Error(String),
    /// Last frame of a successful answer.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_log_lines() {
        let q = MailLogEvent::Queued {
            id: "abc".into(),
            from: "a@b".into(),
            to: vec!["x@y".into(), "z@y".into()],
            ip: "192.0.2.1".into(),
        };
        assert_eq!(q.line(), "abc from=a@b queued ip=192.0.2.1 to=[x@y z@y]");
        let r = MailLogEvent::Rejected {
            ip: "192.0.2.1".into(),
            from: String::new(),
            to: vec!["u@x".into()],
            reason: "550 5.1.1 User unknown".into(),
        };
        assert_eq!(r.line(), "192.0.2.1 rejected to=[u@x] - 550 5.1.1 User unknown");
        let f = MailLogEvent::TempFail {
            id: "i".into(),
            from: String::new(),
            to: "t@x".into(),
            err: "bad\r\nInjected: yes".into(),
        };
        assert_eq!(
            f.line(),
            "i from=<> to=t@x failed (temporary): bad\\x0d\\x0aInjected: yes"
        );
        let a = MailLogEvent::Auth {
            ok: false,
            user: "u@x".into(),
            ip: "::1".into(),
        };
        assert_eq!(a.line(), "::1 auth failed for u@x");
        assert!(!clean(&"x".repeat(5000)).contains('\n'));
        assert!(clean(&"x".repeat(5000)).chars().count() <= 1001);
    }
}
