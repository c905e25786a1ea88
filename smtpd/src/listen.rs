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

/// Releases a connection's place in [`Counts`] when dropped.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
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
                    let per_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
                    if c.total >= settings.max_connections || per_ip >= settings.max_connections_per_ip {
                        None
                    } else {
                        c.total += 1;
                        *c.per_ip.entry(ip).or_insert(0) += 1;
                        Some(Slot {
                            counts: counts.clone(),
                            ip,
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
                    let Some(_slot) = slot else {
                        tracing::info!(%ip, "too many connections: refused");
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            stream.write_all(b"421 4.7.0 Too many connections, try again later\r\n"),
                        )
                        .await;
                        return;
                    };
                    let timeout = Duration::from_secs(settings.command_timeout_secs);
                    let conn = Conn::new(Box::new(stream), timeout);
                    Session::new(conn, Peer { ip, listener: kind }, backend).run().await;
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

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
