//! `tambo-queued`: the queue manager. Owns `data_dir/queue`; makes every
//! accepted message durable before smtpd acknowledges it and drives its
//! delivery through deliverd.

mod admin;
mod aliases;
mod arc_seal;
mod capacity;
mod chasquid;
mod dkim_sign;
mod domaininfo;
mod dsn;
mod entry;
mod hooks;
mod journal;
mod manager;
mod received;
mod resolve;
mod srs;
mod store;
mod submit;

use tambo_ipc::proto::{ControlMsg, PeerChannel, WorkerKind, WorkerMsg};
use tambo_ipc::worker::{ControlLink, single_stream};

use crate::manager::Queue;

fn main() {
    tambo_ipc::worker::worker_main(WorkerKind::Queued, run)
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start) = ControlLink::start(control).await?;
    let queue = link
        .started(Queue::start(&start).await)
        .await
        .map_err(anyhow::Error::msg)?;
    let admin_gate = std::sync::Arc::new(admin::AdminGate::new());
    loop {
        let (msg, fds) = match link.recv().await {
            Ok(m) => m,
            Err(tambo_ipc::IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControlMsg::Peer(ch) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("{}: expected one fd", ch.name());
                    continue;
                };
                match ch {
                    PeerChannel::SmtpdQueued => {
                        let q = queue.clone();
                        tokio::spawn(async move {
                            let handler = move |req, _fds| {
                                let q = q.clone();
                                async move { q.handle(req).await }
                            };
                            if let Err(e) = tambo_ipc::rpc::serve(stream, ch.name(), handler).await {
                                tracing::warn!("{}: {e}", ch.name());
                            }
                        });
                    }
                    PeerChannel::QueuedDeliverd => {
                        let slot = queue.deliverd.clone();
                        tokio::spawn(async move {
                            if let Err(e) = slot.install(stream).await {
                                tracing::warn!("{}: {e}", ch.name());
                            }
                        });
                    }
                    PeerChannel::QueuedAuthd => {
                        let slot = queue.authd.clone();
                        tokio::spawn(async move {
                            if let Err(e) = slot.install(stream).await {
                                tracing::warn!("{}: {e}", ch.name());
                            }
                        });
                    }
                    PeerChannel::QueuedHookd => {
                        let slot = queue.hookd.clone();
                        tokio::spawn(async move {
                            if let Err(e) = slot.install(stream).await {
                                tracing::warn!("{}: {e}", ch.name());
                            }
                        });
                    }
                    PeerChannel::SmtpdAuthd | PeerChannel::DeliverdAuthd | PeerChannel::DeliverdHookd => {
                        tracing::warn!("queued was handed {}, not its channel", ch.name())
                    }
                }
            }
            ControlMsg::Reload(start) => {
                let (ok, message) = match queue.reload(&start) {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, e),
                };
                link.send(WorkerMsg::Reloaded { ok, message }).await?;
            }
            ControlMsg::AdminClient { uid, user } => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("control client: expected one fd");
                    continue;
                };
                let q = queue.clone();
                let gate = admin_gate.clone();
                tokio::spawn(async move { admin::serve(q, &gate, stream, uid, user).await });
            }
            ControlMsg::Shutdown { .. } => return Ok(()),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } | ControlMsg::SandboxProbe(_) => {}
            ControlMsg::MonitorListener { .. } | ControlMsg::MetricsPage { .. } => {
                tracing::warn!("queued: unexpected monitoring message ignored")
            }
            ControlMsg::Start(_) | ControlMsg::Listener { .. } | ControlMsg::Secrets(_) | ControlMsg::ReloadUsers => {
                tracing::warn!("queued: unexpected control message ignored");
            }
        }
    }
}
