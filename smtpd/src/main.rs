//! `tambo-smtpd`: the network front end. Runs chrooted in an empty
//! directory as its own user; it opens no file after start-up (message
//! data goes into fds queued hands over) and holds no secret.

mod address;
mod backend;
mod chunking;
mod conn;
mod data;
mod emailauth;
mod listen;
mod monitor;
mod proxy;
mod sasl;
mod session;
mod tls;

use std::sync::Arc;

use tambo_ipc::proto::{ControlMsg, PeerChannel, WorkerKind, WorkerMsg};
use tambo_ipc::worker::{ControlLink, single_stream};

use crate::backend::{Backend, Settings};

fn main() {
    raise_nofile_limit();
    tambo_ipc::worker::worker_main(WorkerKind::Smtpd, run)
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start) = ControlLink::start(control).await?;
    let backend = Backend::new(Settings::from_start(&start));
    let listeners = listen::Listeners::new(backend.clone());
    let metrics = monitor::MetricsHub::new(link.tx.clone());
    link.started(Ok::<(), String>(())).await.map_err(anyhow::Error::msg)?;
    loop {
        let (msg, fds) = match link.recv().await {
            Ok(m) => m,
            Err(tambo_ipc::IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControlMsg::Listener { kind, addr } => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(fd), None) => listeners.add(kind, &addr, fd)?,
                    _ => tracing::warn!("listener {addr}: expected one fd"),
                }
            }
            ControlMsg::Peer(ch @ (PeerChannel::SmtpdQueued | PeerChannel::SmtpdAuthd)) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("{}: expected one fd", ch.name());
                    continue;
                };
                let b = backend.clone();
                tokio::spawn(async move {
                    let r = match ch {
                        PeerChannel::SmtpdQueued => b.queued.install(stream).await,
                        _ => {
                            let r = b.authd.install(stream).await;
                            b.tls.authd_restarted();
                            r
                        }
                    };
                    if let Err(e) = r {
                        tracing::warn!("{}: {e}", ch.name());
                    }
                });
            }
            ControlMsg::Peer(
                ch @ (PeerChannel::QueuedDeliverd
                | PeerChannel::QueuedAuthd
                | PeerChannel::DeliverdAuthd
                | PeerChannel::QueuedHookd
                | PeerChannel::DeliverdHookd),
            ) => {
                tracing::warn!("smtpd was handed {}, which is not its channel", ch.name());
            }
            ControlMsg::Reload(start) => {
                backend.set_settings(Settings::from_start(&start));
                backend.tls.reloaded();
                link.send(WorkerMsg::Reloaded {
                    ok: true,
                    message: String::new(),
                })
                .await?;
            }
            ControlMsg::Shutdown { grace_secs } => {
                listeners.stop_accepting();
                listeners.drain(std::time::Duration::from_secs(grace_secs.into())).await;
                return Ok(());
            }
            ControlMsg::Start(_) | ControlMsg::Secrets(_) | ControlMsg::ReloadUsers => {
                tracing::warn!("smtpd: unexpected control message ignored")
            }
            ControlMsg::AdminClient { .. } => tracing::warn!("smtpd: unexpected AdminClient ignored"),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } | ControlMsg::SandboxProbe(_) => {}
            ControlMsg::MonitorListener { addr } => {
                let mut fds = fds.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(fd), None) => {
                        if let Err(e) = monitor::spawn(std::net::TcpListener::from(fd), addr.clone(), metrics.clone()) {
                            tracing::error!("monitoring_address {addr}: {e}");
                        }
                    }
                    _ => tracing::warn!("monitoring listener {addr}: expected one fd"),
                }
            }
            ControlMsg::MetricsPage {
                answers,
                openmetrics,
                down,
                debug,
            } => metrics.deliver(answers, openmetrics, down, debug),
        }
    }
}

/// Each connection takes one fd: raise the soft limit on open files to the
/// hard limit (an unprivileged process may), so that the default soft limit
/// of 1024 does not cap the number of clients below `max_connections`.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("tambo-smtpd: raising the open-files limit from {soft} to {hard}: {e}");
    }
}

/// Used by tests and the listener module.
pub type SharedBackend = Arc<Backend>;
