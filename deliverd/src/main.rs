//! `tambo-deliverd`: runs the delivery agents. It gets each message as a
//! read-only fd from queued and never opens the queue directory.

mod lmtp;
mod mda;

use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};

use tambo_common::config::Config;
use tambo_ipc::proto::{
    ControlMsg, DeliverReply, DeliverRequest, DeliveryJob, DeliveryOutcome, PeerChannel, RcptRoute, WorkerKind,
    WorkerMsg,
};
use tambo_ipc::worker::{ControlLink, bootstrap, single_stream};

fn main() {
    let (control, _plan) = match bootstrap(WorkerKind::Deliverd) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tambo-deliverd: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        match run(control).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// deliverd's state: the configuration, replaced on reload.
struct Deliverer {
    config: RwLock<Arc<Config>>,
}

impl Deliverer {
    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn handle(self: Arc<Self>, req: DeliverRequest, fds: Vec<OwnedFd>) -> DeliverReply {
        match req {
            DeliverRequest::Deliver(job) => {
                let mut fds = fds.into_iter();
                let (Some(fd), None) = (fds.next(), fds.next()) else {
                    let outcome = DeliveryOutcome::TempFail("internal: job without exactly one data fd".into());
                    return DeliverReply::Results(job.rcpts.iter().map(|r| (r.index, outcome.clone())).collect());
                };
                DeliverReply::Results(self.deliver(job, Arc::new(fd)).await)
            }
        }
    }

    async fn deliver(&self, job: DeliveryJob, data: Arc<OwnedFd>) -> Vec<(u32, DeliveryOutcome)> {
        let config = self.config();
        let mut results = Vec::new();
        // With lmtp_address, every local recipient goes in one LMTP
        // transaction, with one answer each.
        let mut lmtp_done: std::collections::HashMap<u32, DeliveryOutcome> = std::collections::HashMap::new();
        if !config.lmtp_address.is_empty() {
            let local: Vec<(u32, String)> = job
                .rcpts
                .iter()
                .filter_map(|r| match &r.route {
                    RcptRoute::Local { user, domain } => Some((r.index, format!("{user}@{domain}"))),
                    _ => None,
                })
                .collect();
            if !local.is_empty() {
                let addrs: Vec<String> = local.iter().map(|(_, a)| a.clone()).collect();
                let outcomes = lmtp::deliver(
                    &config.lmtp_address,
                    &config.hostname,
                    lmtp::Message {
                        from: &job.from,
                        rcpts: &addrs,
                        header_prefix: &job.header_prefix,
                        data: data.clone(),
                    },
                )
                .await;
                lmtp_done.extend(local.into_iter().map(|(i, _)| i).zip(outcomes));
            }
        }
        for rcpt in &job.rcpts {
            let outcome = match &rcpt.route {
                RcptRoute::Local { .. } if lmtp_done.contains_key(&rcpt.index) => {
                    lmtp_done.remove(&rcpt.index).expect("checked")
                }
                RcptRoute::Local { user, domain } => {
                    let to = format!("{user}@{domain}");
                    let mut argv = vec![config.mail_delivery_agent_bin.clone()];
                    argv.extend(mda::expand_args(
                        &config.mail_delivery_agent_args,
                        &mda::Placeholders {
                            from: &job.from,
                            to: &to,
                        },
                    ));
                    mda::run_command(&argv, &job.header_prefix, data.clone()).await
                }
                // As in chasquid, any failure of a pipe alias (exit 75 and
                // the 30 s timeout included) is permanent.
                RcptRoute::Pipe { argv } => match mda::run_command(argv, &job.header_prefix, data.clone()).await {
                    DeliveryOutcome::TempFail(e) => DeliveryOutcome::PermFail(e),
                    other => other,
                },
                RcptRoute::Remote { .. } => {
                    DeliveryOutcome::TempFail("remote delivery is not available in this version of tambo".into())
                }
            };
            match &outcome {
                DeliveryOutcome::Delivered => tracing::info!(id = job.id, to = rcpt.address, "delivered"),
                DeliveryOutcome::TempFail(e) => {
                    tracing::info!(id = job.id, to = rcpt.address, "temporary failure: {e}")
                }
                DeliveryOutcome::PermFail(e) => {
                    tracing::info!(id = job.id, to = rcpt.address, "permanent failure: {e}")
                }
            }
            results.push((rcpt.index, outcome));
        }
        results
    }
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start) = ControlLink::start(control).await?;
    let deliverer = Arc::new(Deliverer {
        config: RwLock::new(Arc::new(start.config)),
    });
    link.send(WorkerMsg::Ready).await?;
    loop {
        let (msg, fds) = match link.recv().await {
            Ok(m) => m,
            Err(tambo_ipc::IpcError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControlMsg::Peer(PeerChannel::QueuedDeliverd) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("queued-deliverd: expected one fd");
                    continue;
                };
                let d = deliverer.clone();
                tokio::spawn(async move {
                    let handler = move |req, fds| {
                        let d = d.clone();
                        async move { (d.handle(req, fds).await, Vec::new()) }
                    };
                    if let Err(e) = tambo_ipc::rpc::serve(stream, PeerChannel::QueuedDeliverd.name(), handler).await {
                        tracing::warn!("queued-deliverd: {e}");
                    }
                });
            }
            ControlMsg::Peer(ch @ (PeerChannel::SmtpdAuthd | PeerChannel::SmtpdQueued | PeerChannel::QueuedAuthd)) => {
                tracing::warn!("deliverd was handed {}, which is not its channel", ch.name());
            }
            ControlMsg::Reload(start) => {
                *deliverer.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(start.config);
                link.send(WorkerMsg::Reloaded {
                    ok: true,
                    message: String::new(),
                })
                .await?;
            }
            ControlMsg::Shutdown { .. } => return Ok(()),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } => {}
            ControlMsg::Start(_) | ControlMsg::Listener { .. } | ControlMsg::AdminClient { .. } => {
                tracing::warn!("deliverd: unexpected control message ignored");
            }
        }
    }
}
