//! Accepting connections: global and per-IP limits, then one task per
//! session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::ListenerKind;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::SharedBackend;
use crate::conn::Conn;
use crate::session::{Peer, Session};

/// Counts of open connections, in total and per client IP.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's place in [`Counts`] when dropped. The global
/// place is taken at accept; the per-IP one once the client's IP is known
/// (after a PROXY header, when there is one).
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
}

impl Slot {
    /// Take a place for `ip`; false when that IP already has `max`.
    fn claim_ip(&mut self, ip: IpAddr, max: usize) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = c.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
    }
}

/// Every listening socket of smtpd.
pub struct Listeners {
    backend: SharedBackend,
    counts: Arc<Mutex<Counts>>,
    accept_tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Listeners {
    /// No listener yet.
    pub fn new(backend: SharedBackend) -> Listeners {
        let (stop, _) = watch::channel(false);
        Listeners {
            backend,
            counts: Arc::default(),
            accept_tasks: Mutex::new(Vec::new()),
            stop,
        }
    }

    /// Start accepting on a socket the supervisor bound.
    pub fn add(&self, kind: ListenerKind, addr: &str, fd: OwnedFd) -> anyhow::Result<()> {
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        tracing::info!("accepting on {addr} ({kind:?})");
        let backend = self.backend.clone();
        let counts = self.counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, remote) = match listener.accept().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ip = canonical_ip(remote.ip());
                let settings = backend.settings();
                let slot = {
                    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                    if c.total >= settings.max_connections {
                        None
                    } else {
                        c.total += 1;
                        Some(Slot {
                            counts: counts.clone(),
                            ip: None,
                        })
                    }
                };
                if slot.is_some() {
                    metrics::inc(Metric::SmtpConnections, &[("listener", kind.fd_name())]);
                } else {
                    metrics::inc(Metric::SmtpConnectionsRefused, &[("listener", kind.fd_name())]);
                }
                let backend = backend.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let Some(mut slot) = slot else {
                        tracing::info!(%ip, "too many connections: refused");
                        refuse(&mut stream).await;
                        return;
                    };
                    // The PROXY header comes before anything else (the
                    // greeting, or the TLS handshake on the implicit-TLS
                    // port); its client IP replaces the proxy's everywhere.
                    let mut ip = ip;
                    let mut port = remote.port();
                    if settings.haproxy_incoming {
                        match crate::proxy::read_header(&mut stream, proxy_timeout(&settings)).await {
                            Ok(Some(client)) => {
                                ip = canonical_ip(client.ip());
                                port = client.port();
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::info!(proxy = %ip, "closing: {e}");
                                return;
                            }
                        }
                    }
                    if !slot.claim_ip(ip, settings.max_connections_per_ip) {
                        tracing::info!(%ip, "too many connections from this IP: refused");
                        metrics::inc(Metric::SmtpConnectionsRefused, &[("listener", kind.fd_name())]);
                        refuse(&mut stream).await;
                        return;
                    }
                    let timeout = Duration::from_secs(settings.command_timeout_secs);
                    let conn = Conn::new(Box::new(stream), timeout);
                    Session::new(
                        conn,
                        Peer {
                            ip,
                            port,
                            listener: kind,
                        },
                        backend,
                    )
                    .run()
                    .await;
                });
            }
        });
        self.accept_tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        Ok(())
    }

    /// Stop accepting new connections.
    pub fn stop_accepting(&self) {
        for t in self.accept_tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        let _ = self.stop.send(true);
    }

    /// Wait until running sessions end, at most `grace`.
    pub async fn drain(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.counts.lock().unwrap_or_else(|p| p.into_inner()).total > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::info!("shutting down with sessions still open");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Tell a client over the connection limits so, and close.
async fn refuse(stream: &mut tokio::net::TcpStream) {
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        stream.write_all(b"421 4.7.0 Too many connections, try again later\r\n"),
    )
    .await;
}

/// How long to wait for the PROXY header: the proxy sends it at once, so
/// this is short, and never longer than the command timeout.
fn proxy_timeout(settings: &crate::backend::Settings) -> Duration {
    Duration::from_secs(settings.command_timeout_secs.min(30))
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
