//! `tambo-authd`: the only process that reads the users databases and the
//! TLS private keys. It answers yes/no questions and signs TLS handshakes
//! for smtpd; it never reveals a hash or a key.

mod arc;
mod dkim;
use tambo_authd::dovecot;
mod keys;
#[cfg(test)]
mod python;
mod service;
mod throttle;

use std::sync::Arc;

use tambo_ipc::proto::{AuthReply, AuthRequest, ControlMsg, PeerChannel, WorkerKind, WorkerMsg};
use tambo_ipc::secrets::SecretSet;
use tambo_ipc::worker::{ControlLink, single_stream};

use crate::service::AuthService;

fn main() {
    tambo_ipc::worker::worker_main(WorkerKind::Authd, run)
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start, secrets) = ControlLink::start_with_secrets(control).await?;
    let service = Arc::new(
        link.started(AuthService::load(&start, &secrets))
            .await
            .map_err(anyhow::Error::msg)?,
    );
    drop(secrets);
    tracing::info!("authd ready: {} domain(s)", start.local_domains.len());
    // The files of the next reload, as the supervisor sends them.
    let mut pending = SecretSet::default();
    let mut start = start;
    loop {
        let (msg, fds) = match link.recv().await {
            Ok(m) => m,
            Err(tambo_ipc::IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControlMsg::Peer(
                ch @ (PeerChannel::SmtpdAuthd | PeerChannel::QueuedAuthd | PeerChannel::DeliverdAuthd),
            ) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("{}: expected one fd", ch.name());
                    continue;
                };
                let svc = service.clone();
                tokio::spawn(async move {
                    let handler = move |req, _fds| {
                        let svc = svc.clone();
                        async move {
                            let reply = if allowed(&req, ch) {
                                svc.handle(req).await
                            } else {
                                tracing::warn!("{}: {} is not allowed on this channel: refused", ch.name(), req.name());
                                AuthReply::Error("not allowed on this channel".into())
                            };
                            (reply, Vec::new())
                        }
                    };
                    if let Err(e) = tambo_ipc::rpc::serve(stream, ch.name(), handler).await {
                        tracing::warn!("{}: {e}", ch.name());
                    }
                });
            }
            ControlMsg::Peer(
                ch @ (PeerChannel::SmtpdQueued
                | PeerChannel::QueuedDeliverd
                | PeerChannel::QueuedHookd
                | PeerChannel::DeliverdHookd),
            ) => {
                tracing::warn!("authd was handed {}, which is not its channel", ch.name());
            }
            ControlMsg::Secrets(files) => pending.extend(files, fds)?,
            ControlMsg::Reload(new) => {
                start = *new;
                let secrets = std::mem::take(&mut pending);
                let (ok, message) = match service.reload(&start, &secrets) {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, format!("{e:#}")),
                };
                link.send(WorkerMsg::Reloaded { ok, message }).await?;
            }
            ControlMsg::ReloadUsers => {
                let secrets = std::mem::take(&mut pending);
                let (ok, message) = match service.reload_users(&start, &secrets) {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, format!("{e:#}")),
                };
                link.send(WorkerMsg::Reloaded { ok, message }).await?;
            }
            ControlMsg::Shutdown { .. } => return Ok(()),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } | ControlMsg::SandboxProbe(_) => {}
            ControlMsg::MonitorListener { .. } | ControlMsg::MetricsPage { .. } => {
                tracing::warn!("authd: unexpected monitoring message ignored")
            }
            ControlMsg::Start(_) | ControlMsg::Listener { .. } | ControlMsg::AdminClient { .. } => {
                tracing::warn!("authd: unexpected control message ignored");
            }
        }
    }
}

/// Which peer may ask what. Only smtpd does TLS, so only smtpd gets the
/// certificate chains and handshake signatures. Only queued has messages
/// DKIM-signed or ARC-sealed: smtpd faces the network and must not get a
/// signing oracle. deliverd gets the smarthost credentials and nothing
/// else; nobody else gets them.
fn allowed(req: &AuthRequest, ch: PeerChannel) -> bool {
    match req {
        AuthRequest::Certificates | AuthRequest::Sign { .. } => ch == PeerChannel::SmtpdAuthd,
        AuthRequest::DkimSign { .. } | AuthRequest::ArcSeal { .. } => ch == PeerChannel::QueuedAuthd,
        AuthRequest::RelayAuth => ch == PeerChannel::DeliverdAuthd,
        AuthRequest::UserExists { .. } | AuthRequest::Authenticate { .. } => {
            matches!(ch, PeerChannel::SmtpdAuthd | PeerChannel::QueuedAuthd)
        }
    }
}
