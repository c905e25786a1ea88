//! `tambo-deliverd`: runs the delivery agents. It gets each message as a
//! read-only fd from queued and never opens the queue directory.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tambo_common::config::Config;
use tambo_deliverd::agent_log::AgentLog;
use tambo_deliverd::ledger::{Keep, Ledger};
use tambo_deliverd::remote::{Courier, RelayCredentialSource, Settings};
use tambo_deliverd::{lmtp, mda};
use tambo_ipc::proto::{
    AuthReply, AuthRequest, ControlMsg, DeliverReply, DeliverRequest, DeliveryJob, DeliveryOutcome, DeliveryReport,
    HookReply, HookRequest, JobRcpt, PeerChannel, RcptRoute, WorkerKind, WorkerMsg,
};
use tambo_ipc::worker::{ControlLink, PeerSlot, single_stream};

fn main() {
    tambo_ipc::worker::worker_main(WorkerKind::Deliverd, run)
}

/// deliverd's state: the configuration and the remote courier, replaced
/// on reload.
struct Deliverer {
    config: RwLock<Arc<Config>>,
    /// tambod's environment, for the delivery agent.
    agent_env: Vec<(String, String)>,
    courier: RwLock<Result<Arc<Courier>, String>>,
    /// The channel to authd, for the smarthost credentials only.
    authd: Arc<PeerSlot<AuthRequest, AuthReply>>,
    /// The channel to hookd, which runs pipe aliases.
    hookd: Arc<PeerSlot<HookRequest, HookReply>>,
    /// Outcomes queued has not settled yet.
    ledger: Arc<Ledger>,
    /// Where the delivery agents' runs are recorded for a successor;
    /// `None` when `data_dir/deliverd` cannot be written.
    agents: Option<AgentLog>,
}

/// How long to wait for hookd when it is restarting.
const HOOKD_WAIT: Duration = Duration::from_secs(5);

fn make_courier(config: &Config, authd: &Arc<PeerSlot<AuthRequest, AuthReply>>) -> Result<Arc<Courier>, String> {
    let credentials: Arc<dyn RelayCredentialSource> = authd.clone();
    Courier::with_credentials(Settings::from_config(config), Some(credentials)).map_err(|e| {
        tracing::error!("remote delivery unavailable: {e}");
        e.to_string()
    })
}

impl Deliverer {
    fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn courier(&self) -> Result<Arc<Courier>, String> {
        self.courier.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn handle(self: Arc<Self>, req: DeliverRequest, fds: Vec<OwnedFd>) -> DeliverReply {
        match req {
            DeliverRequest::Deliver(job) => {
                let mut fds = fds.into_iter();
                let (Some(fd), None) = (fds.next(), fds.next()) else {
                    let outcome = DeliveryOutcome::TempFail("internal: job without exactly one data fd".into());
                    return DeliverReply::Report(DeliveryReport {
                        results: job.rcpts.iter().map(|r| (r.index, outcome.clone())).collect(),
                        levels_seen: Vec::new(),
                    });
                };
                DeliverReply::Report(self.deliver(job, Arc::new(fd)).await)
            }
        }
    }

    /// Deliver a job's recipients that the ledger does not already answer
    /// for (see [`Ledger`]), and keep their outcomes until queued settles
    /// them.
    async fn deliver(&self, job: DeliveryJob, data: Arc<OwnedFd>) -> DeliveryReport {
        let kept = self.ledger.settle(&job.settled);
        if let Some(agents) = &self.agents {
            agents.settled(&kept);
        }
        let mut claim = self.ledger.claim(&job.id, &job.rcpts);
        for (index, _) in &claim.known {
            let to = job.rcpts.iter().find(|r| r.index == *index).map(|r| r.address.as_str());
            tracing::info!(id = job.id, to, "already done; the outcome kept for queued answers");
        }
        let (mut report, keeps) = if claim.fresh.is_empty() {
            (DeliveryReport::default(), HashMap::new())
        } else {
            let fresh = DeliveryJob {
                rcpts: std::mem::take(&mut claim.fresh),
                ..job
            };
            self.deliver_fresh(&fresh, data).await
        };
        for (index, outcome) in &report.results {
            claim.finish(*index, outcome, keeps.get(index).cloned());
        }
        report.results.append(&mut claim.known);
        report.results.extend(claim.wait_running().await);
        report
    }

    /// Deliver to every recipient of `job`; with the report, the agent log
    /// files that recorded each outcome (see [`Deliverer::record`]).
    async fn deliver_fresh(&self, job: &DeliveryJob, data: Arc<OwnedFd>) -> (DeliveryReport, HashMap<u32, Keep>) {
        let mut keeps = HashMap::new();
        let config = self.config();
        let mut results = Vec::new();
        let remote: Vec<JobRcpt> = job
            .rcpts
            .iter()
            .filter(|r| matches!(r.route, RcptRoute::Remote { .. }))
            .cloned()
            .collect();
        let mut levels_seen = Vec::new();
        if !remote.is_empty() {
            let report = match self.courier() {
                Ok(c) => {
                    let recorded: std::sync::Mutex<HashMap<u32, Keep>> = Default::default();
                    let record = |results: &[(u32, DeliveryOutcome)]| {
                        let mut kept = HashMap::new();
                        self.record(&job.id, results, &mut kept);
                        recorded.lock().unwrap_or_else(|p| p.into_inner()).extend(kept);
                    };
                    let report = c.deliver_recording(job, &remote, data.clone(), &record).await;
                    keeps.extend(recorded.into_inner().unwrap_or_else(|p| p.into_inner()));
                    report
                }
                Err(e) => DeliveryReport {
                    results: remote
                        .iter()
                        .map(|r| {
                            (
                                r.index,
                                DeliveryOutcome::TempFail(format!("remote delivery unavailable: {e}")),
                            )
                        })
                        .collect(),
                    levels_seen: Vec::new(),
                },
            };
            levels_seen = report.levels_seen;
            for (index, outcome) in report.results {
                let to = remote
                    .iter()
                    .find(|r| r.index == index)
                    .map(|r| r.address.as_str())
                    .unwrap_or("?");
                log_outcome(&job.id, to, &outcome);
                results.push((index, outcome));
            }
            self.record(&job.id, &results, &mut keeps);
        }
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
                let done: Vec<(u32, DeliveryOutcome)> = lmtp_done.iter().map(|(i, o)| (*i, o.clone())).collect();
                self.record(&job.id, &done, &mut keeps);
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
                    let witness = self.agents.as_ref().and_then(|a| a.witness(&job.id, rcpt.index));
                    let cmd = mda::Command {
                        argv: &argv,
                        env: &self.agent_env,
                        witness: witness.as_ref().map(|(w, _)| w),
                    };
                    let outcome = mda::run_command(&cmd, &job.header_prefix, data.clone()).await;
                    if let Some((_, run)) = witness {
                        keeps.insert(rcpt.index, run.keep());
                    }
                    outcome
                }
                RcptRoute::Pipe { argv } => {
                    let outcome = self.pipe(argv, &job.header_prefix, &data).await;
                    self.record(&job.id, &[(rcpt.index, outcome.clone())], &mut keeps);
                    outcome
                }
                // Done above, all recipients of a domain together.
                RcptRoute::Remote { .. } => continue,
            };
            log_outcome(&job.id, &rcpt.address, &outcome);
            results.push((rcpt.index, outcome));
        }
        (DeliveryReport { results, levels_seen }, keeps)
    }
}

impl Deliverer {
    /// Put the final outcomes of deliveries without a watcher (remote,
    /// LMTP, pipes) in the agent log as soon as they are known, before
    /// anything else runs for the job: a deliverd killed later leaves them
    /// to its successor, which answers queued's repeated job with them.
    /// Those not yet recorded in `keeps` only.
    fn record(&self, id: &str, results: &[(u32, DeliveryOutcome)], keeps: &mut HashMap<u32, Keep>) {
        let Some(agents) = &self.agents else {
            return;
        };
        let fresh: Vec<(u32, DeliveryOutcome)> = results
            .iter()
            .filter(|(i, _)| !keeps.contains_key(i))
            .cloned()
            .collect();
        if let Some(keep) = agents.record_outcomes(id, &fresh) {
            for (index, outcome) in fresh {
                if !matches!(outcome, DeliveryOutcome::TempFail(_)) {
                    keeps.insert(index, keep.clone());
                }
            }
        }
    }

    /// Have hookd run a pipe alias. As in chasquid, any failure of the
    /// command (exit 75 and the 30 s timeout included) is permanent, and it
    /// reads the message with LF line endings (hookd converts). hookd being
    /// unreachable is temporary: the command did not run.
    async fn pipe(&self, argv: &[String], header_prefix: &[u8], data: &OwnedFd) -> DeliveryOutcome {
        let Some(bin) = argv.first() else {
            return DeliveryOutcome::PermFail("empty pipe command".into());
        };
        let fd = match data.try_clone() {
            Ok(fd) => fd,
            Err(e) => return DeliveryOutcome::TempFail(format!("data file: {e}")),
        };
        let req = HookRequest::Pipe {
            argv: argv.to_vec(),
            prefix: header_prefix.to_vec(),
            timeout_ms: mda::COMMAND_TIMEOUT.as_millis() as u32,
        };
        let answer = tokio::time::timeout(
            mda::COMMAND_TIMEOUT + HOOKD_WAIT + Duration::from_secs(10),
            self.hookd.call(req, vec![fd], HOOKD_WAIT),
        )
        .await;
        let result = match answer {
            Ok(Ok((HookReply::Ran(run), _))) => Ok(run),
            Ok(Ok((HookReply::Failed(e), _))) => Err(e),
            Ok(Ok((HookReply::Absent, _))) => {
                return DeliveryOutcome::TempFail("hookd: unexpected answer to a pipe".into());
            }
            Ok(Err(e)) => return DeliveryOutcome::TempFail(format!("hookd unreachable: {e}")),
            Err(_) => return DeliveryOutcome::TempFail("hookd did not answer in time".into()),
        };
        match mda::outcome(bin, result) {
            DeliveryOutcome::TempFail(e) => DeliveryOutcome::PermFail(e),
            other => other,
        }
    }
}

fn log_outcome(id: &str, to: &str, outcome: &DeliveryOutcome) {
    match outcome {
        DeliveryOutcome::Delivered => tracing::info!(id, to, "delivered"),
        DeliveryOutcome::TempFail(e) => tracing::info!(id, to, "temporary failure: {e}"),
        DeliveryOutcome::PermFail(e) => tracing::info!(id, to, "permanent failure: {e}"),
    }
}

/// Open `data_dir/deliverd`'s agent log and adopt what the previous
/// deliverd's delivery agents did, before any job is taken.
fn open_agent_log(config: &Config, ledger: &Arc<Ledger>) -> Option<AgentLog> {
    let dir = std::path::Path::new(&config.data_dir).join("deliverd");
    // Installed next to tambo-deliverd.
    let watcher = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(tambo_hookd::witness::WATCHER_NAME)))
        .unwrap_or_default();
    match AgentLog::open(&dir, &watcher) {
        Ok((log, found)) => {
            let (unsettled, ended) = found.counts();
            if unsettled > 0 {
                tracing::info!(
                    "{unsettled} delivery agent run(s) of the previous deliverd not settled by queued ({ended} ended); \
                     their outcomes answer queued's next jobs"
                );
            }
            let bin = config.mail_delivery_agent_bin.clone();
            found.adopt(ledger, Arc::new(move |status| mda::outcome_of_status(&bin, status)));
            Some(log)
        }
        Err(e) => {
            tracing::error!(
                "{}: {e}; a delivery agent's outcome will not survive a restart of deliverd",
                dir.display()
            );
            None
        }
    }
}

async fn run(control: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    let (mut link, start) = ControlLink::start(control).await?;
    // chasquid's MTA-STS policies, once, before the first delivery.
    tambo_deliverd::remote::sts_chasquid::import_cache(&std::path::Path::new(&start.config.data_dir).join("sts-cache"));
    let authd = PeerSlot::new(PeerChannel::DeliverdAuthd.name());
    let ledger = Arc::new(Ledger::default());
    let agents = open_agent_log(&start.config, &ledger);
    let deliverer = Arc::new(Deliverer {
        courier: RwLock::new(make_courier(&start.config, &authd)),
        config: RwLock::new(Arc::new(start.config)),
        agent_env: start.agent_env,
        authd,
        hookd: PeerSlot::new(PeerChannel::DeliverdHookd.name()),
        ledger,
        agents,
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
            ControlMsg::Peer(PeerChannel::DeliverdAuthd) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("deliverd-authd: expected one fd");
                    continue;
                };
                let slot = deliverer.authd.clone();
                tokio::spawn(async move {
                    if let Err(e) = slot.install(stream).await {
                        tracing::warn!("deliverd-authd: {e}");
                    }
                });
            }
            ControlMsg::Peer(PeerChannel::DeliverdHookd) => {
                let Some(stream) = single_stream(fds) else {
                    tracing::warn!("deliverd-hookd: expected one fd");
                    continue;
                };
                let slot = deliverer.hookd.clone();
                tokio::spawn(async move {
                    if let Err(e) = slot.install(stream).await {
                        tracing::warn!("deliverd-hookd: {e}");
                    }
                });
            }
            ControlMsg::Peer(
                ch @ (PeerChannel::SmtpdAuthd
                | PeerChannel::SmtpdQueued
                | PeerChannel::QueuedAuthd
                | PeerChannel::QueuedHookd),
            ) => {
                tracing::warn!("deliverd was handed {}, which is not its channel", ch.name());
            }
            ControlMsg::Reload(start) => {
                *deliverer.courier.write().unwrap_or_else(|p| p.into_inner()) =
                    make_courier(&start.config, &deliverer.authd);
                *deliverer.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(start.config);
                link.send(WorkerMsg::Reloaded {
                    ok: true,
                    message: String::new(),
                })
                .await?;
            }
            ControlMsg::Shutdown { .. } => return Ok(()),
            // Answered by ControlLink::recv.
            ControlMsg::CollectMetrics { .. } | ControlMsg::SandboxProbe(_) => {}
            ControlMsg::MonitorListener { .. } | ControlMsg::MetricsPage { .. } => {
                tracing::warn!("deliverd: unexpected monitoring message ignored")
            }
            ControlMsg::Start(_)
            | ControlMsg::Listener { .. }
            | ControlMsg::AdminClient { .. }
            | ControlMsg::Secrets(_)
            | ControlMsg::ReloadUsers => {
                tracing::warn!("deliverd: unexpected control message ignored");
            }
        }
    }
}
