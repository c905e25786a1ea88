//! The messages of every channel: one request and one reply enum each.
//!
//! | channel | client → server | requests | replies |
//! |---|---|---|---|
//! | `control` | supervisor → worker | [`ControlMsg`] | [`WorkerMsg`] |
//! | `smtpd-authd` | smtpd → authd | [`AuthRequest`] | [`AuthReply`] |
//! | `queued-authd` | queued → authd | [`AuthRequest`] | [`AuthReply`] |
//! | `smtpd-queued` | smtpd → queued | [`QueueRequest`] | [`QueueReply`] |
//! | `queued-deliverd` | queued → deliverd | [`DeliverRequest`] | [`DeliverReply`] |
//!
//! Message bodies never travel inside frames: queued hands smtpd a writable
//! file descriptor ([`QueueReply::MessageSlot`]) and deliverd a read-only one
//! ([`DeliverRequest::Deliver`]).

use serde::{Deserialize, Serialize};
use tambo_common::config::Config;

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
}

impl WorkerKind {
    /// Every worker kind, in start-up order.
    pub const ALL: [WorkerKind; 4] = [
        WorkerKind::Authd,
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
}

impl PeerChannel {
    /// Every peer channel.
    pub const ALL: [PeerChannel; 4] = [
        PeerChannel::SmtpdAuthd,
        PeerChannel::SmtpdQueued,
        PeerChannel::QueuedDeliverd,
        PeerChannel::QueuedAuthd,
    ];

    /// The name used in the handshake.
    pub fn name(self) -> &'static str {
        match self {
            PeerChannel::SmtpdAuthd => "smtpd-authd",
            PeerChannel::SmtpdQueued => "smtpd-queued",
            PeerChannel::QueuedDeliverd => "queued-deliverd",
            PeerChannel::QueuedAuthd => "queued-authd",
        }
    }

    /// (client, server) of this channel.
    pub fn ends(self) -> (WorkerKind, WorkerKind) {
        match self {
            PeerChannel::SmtpdAuthd => (WorkerKind::Smtpd, WorkerKind::Authd),
            PeerChannel::SmtpdQueued => (WorkerKind::Smtpd, WorkerKind::Queued),
            PeerChannel::QueuedDeliverd => (WorkerKind::Queued, WorkerKind::Deliverd),
            PeerChannel::QueuedAuthd => (WorkerKind::Queued, WorkerKind::Authd),
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
    /// Verbosity level from `-v`.
    pub verbosity: u8,
    /// True when the server runs without root (development, tests).
    pub unprivileged: bool,
}

/// Supervisor → worker, on the control channel.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum ControlMsg {
    /// First message: the configuration.
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
    },
}

/// Worker → supervisor, on the control channel.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum WorkerMsg {
    /// The worker has processed its start message.
    Ready,
    /// Outcome of a reload.
    Reloaded {
        /// Whether the new state is in effect.
        ok: bool,
        /// Why not, when it is not.
        message: String,
    },
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
}

/// authd's answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// Answer to [`AuthRequest::UserExists`].
    Exists(bool),
    /// Answer to [`AuthRequest::Authenticate`].
    Auth(AuthOutcome),
    /// The request could not be answered (temporary).
    Error(String),
}

/// The result of a password check.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Correct password.
    Success,
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
    /// One outcome per recipient of the job, by index.
    Results(Vec<(u32, DeliveryOutcome)>),
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
}

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
