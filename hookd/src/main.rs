//! `tambo-hookd`: runs the operator's programs that read mail (the
//! post-data and alias-resolve hooks, pipe aliases) under its own user
//! (`tambo-hook`), in a sandbox that hides `data_dir` and the secret
//! files. It serves queued and deliverd; it holds no queue, no key and no
//! network socket of its own.

use std::sync::Arc;

use tambo_hookd::service::HookService;
use tambo_ipc::proto::{ControlMsg, PeerChannel, WorkerKind, WorkerMsg};
use tambo_ipc::worker::{ControlLink, single_stream};

fn main() {
    tambo_ipc::worker::worker_main(WorkerKind::Hookd, run)
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start) = ControlLink::start(control).await?;
    let service = Arc::new(HookService {
        config_dir: start.config_dir.into(),
        agent_env: start.agent_env,
    });
    link.send(WorkerMsg::Ready).await?;
    loop {
        let (msg, fds) = match link.recv().await {
            Ok(m) => m,
            Err(tambo_ipc::IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControlMsg::Peer(ch @ (PeerChannel::QueuedHookd | PeerChannel::DeliverdHookd)) => {
                let Some(stream) = single_stream(fds) else {
                    anyhow::bail!("{}: the supervisor sent no socket", ch.name());
                };
                let s = service.clone();
                tokio::spawn(async move {
                    let handler = move |req, fds| {
                        let s = s.clone();
                        async move { (s.handle(ch, req, fds).await, Vec::new()) }
                    };
                    if let Err(e) = tambo_ipc::rpc::serve(stream, ch.name(), handler).await {
                        tracing::warn!("{}: {e}", ch.name());
                    }
                });
            }
            // Nothing to reload: the hooks are found at each run, and
            // tambod's environment is fixed.
            ControlMsg::Reload(_) => {
                link.send(WorkerMsg::Reloaded {
                    ok: true,
                    message: String::new(),
                })
                .await?
            }
            ControlMsg::Shutdown { .. } => return Ok(()),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } | ControlMsg::SandboxProbe(_) => {}
            msg @ (ControlMsg::Peer(
                PeerChannel::SmtpdAuthd
                | PeerChannel::SmtpdQueued
                | PeerChannel::QueuedDeliverd
                | PeerChannel::QueuedAuthd
                | PeerChannel::DeliverdAuthd,
            )
            | ControlMsg::Start(_)
            | ControlMsg::Listener { .. }
            | ControlMsg::AdminClient { .. }
            | ControlMsg::Secrets(_)
            | ControlMsg::ReloadUsers
            | ControlMsg::MonitorListener { .. }
            | ControlMsg::MetricsPage { .. }) => {
                anyhow::bail!("unexpected control message for hookd: {msg:?}")
            }
        }
    }
}
