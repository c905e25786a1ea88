//! smtpd's view of the other processes: the channels to queued and authd,
//! and the settings the supervisor sent (replaced on reload).

use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tambo_ipc::proto::{AuthReply, AuthRequest, PeerChannel, QueueReply, QueueRequest, WorkerStart};
use tambo_ipc::worker::PeerSlot;

use crate::emailauth::EmailAuth;

/// How long a session waits for queued or authd when they are restarting;
/// past it, the client gets a 4xx.
const PEER_WAIT: Duration = Duration::from_secs(5);

/// What sessions need from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name in the greeting and EHLO.
    pub hostname: String,
    /// Largest message, in bytes.
    pub max_data_size: u64,
    /// Local domains (normalised).
    pub local_domains: Vec<String>,
    /// Seconds a client may stay silent.
    pub command_timeout_secs: u64,
    /// Seconds a connection may last.
    pub connection_timeout_secs: u64,
    /// Concurrent connections at most.
    pub max_connections: usize,
    /// Concurrent connections per client IP at most.
    pub max_connections_per_ip: usize,
    /// Refuse DMARC `p=reject` failures at DATA.
    pub reject_dmarc_failures: bool,
    /// DNS servers ("ip:port") for SPF, DKIM and DMARC.
    pub dns_servers: Vec<String>,
    /// A HAProxy PROXY header (v1 or v2) starts every connection.
    pub haproxy_incoming: bool,
    /// More Received headers than this: a mail loop (`554 5.4.6`).
    pub max_received_headers: usize,
}

impl Settings {
    /// Derive from the start message.
    pub fn from_start(start: &WorkerStart) -> Settings {
        let c = &start.config;
        Settings {
            hostname: c.hostname.clone(),
            max_data_size: c.max_data_size_bytes(),
            local_domains: start.local_domains.clone(),
            command_timeout_secs: c.command_timeout_secs.max(1) as u64,
            connection_timeout_secs: c.connection_timeout_secs.max(1) as u64,
            max_connections: c.max_connections.max(1) as usize,
            max_connections_per_ip: c.max_connections_per_ip.max(1) as usize,
            reject_dmarc_failures: c.reject_dmarc_failures,
            dns_servers: start.dns_servers.clone(),
            haproxy_incoming: c.haproxy_incoming,
            max_received_headers: c.max_received_headers.max(1) as usize,
        }
    }

    /// Whether mail for `domain` is delivered here.
    pub fn is_local(&self, domain: &str) -> bool {
        domain == "localhost" || self.local_domains.iter().any(|d| d == domain)
    }
}

/// The shared back end of every session.
pub struct Backend {
    settings: RwLock<Arc<Settings>>,
    /// Client of queued.
    pub queued: Arc<PeerSlot<QueueRequest, QueueReply>>,
    /// Client of authd.
    pub authd: Arc<PeerSlot<AuthRequest, AuthReply>>,
    /// SPF, DKIM and DMARC checks.
    pub emailauth: EmailAuth,
    /// TLS certificates (from authd) and handshake signing (by authd).
    pub tls: crate::tls::Tls,
}

impl Backend {
    /// A back end with no peers connected yet.
    pub fn new(settings: Settings) -> Arc<Backend> {
        let authd = PeerSlot::new(PeerChannel::SmtpdAuthd.name());
        Arc::new(Backend {
            emailauth: EmailAuth::new(&settings.dns_servers),
            settings: RwLock::new(Arc::new(settings)),
            queued: PeerSlot::new(PeerChannel::SmtpdQueued.name()),
            tls: crate::tls::Tls::new(authd.clone()),
            authd,
        })
    }

    /// The current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the settings (reload); running sessions keep theirs.
    pub fn set_settings(&self, s: Settings) {
        if s.dns_servers != self.settings().dns_servers {
            self.emailauth.set_servers(&s.dns_servers);
        }
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    /// Ask queued; `Err(())` when it is unreachable.
    pub async fn queue_call(&self, req: QueueRequest) -> Result<(QueueReply, Vec<OwnedFd>), ()> {
        self.queued.call(req, Vec::new(), PEER_WAIT).await.map_err(|e| {
            tracing::warn!("queued: {e}");
        })
    }
}
