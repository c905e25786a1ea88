//! The queue manager: accepts messages from smtpd, keeps each queued
//! message's delivery going (per recipient, with back-off) and removes it
//! when every recipient is done.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tambo_common::config::Config;
use tambo_common::names::{normalize_address, split_address};
use tambo_ipc::metrics::{self, Metric, MetricSample};
use tambo_ipc::proto::{
    AuthReply, AuthRequest, DeliverReply, DeliverRequest, DeliveryJob, DeliveryOutcome, IncomingEnvelope, JobRcpt,
    MailLogEvent, QueueReply, QueueRequest, RcptRoute, RcptVerdict, SecLevel, SmtpReply, WorkerStart,
};
use tambo_ipc::worker::{PeerSlot, mail_log};
use tokio::sync::Notify;

use crate::aliases::AliasDb;
use crate::capacity::{Slot, Table, try_reserve};
use crate::dkim_sign::SignFailure;
use crate::domaininfo::DomainInfo;
use crate::dsn;
use crate::entry::{ENTRY_VERSION, QueueEntry, RcptEntry, RcptState};
use crate::hooks::{HookSlot, POST_DATA_TIMEOUT, PostData, PostDataEnv, hook_present};
use crate::journal::JournalSize;
use crate::received::{received_header, rfc5322_date};
use crate::resolve::{ResolveError, ResolverContext};
use crate::srs::{Srs, day_number};
use crate::store::{Store, valid_id};

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The retry schedule: 1, 5, 10 and then every 20 minutes (scaled so the
/// first step is `first`), each with ±10% jitter so a burst of failures
/// does not retry in lock-step.
pub fn retry_delay(attempts: u32, first: Duration) -> Duration {
    let factor = match attempts {
        0 | 1 => 1,
        2 => 5,
        3 => 10,
        _ => 20,
    };
    let base = first * factor;
    let jitter = rand::thread_rng().gen_range(0.9..1.1);
    base.mul_f64(jitter)
}

/// How long to wait before retrying after deliverd itself went away (the
/// attempt did not happen, or its result was lost).
const DELIVERD_LOST_RETRY: Duration = Duration::from_secs(2);
/// How long to wait for deliverd when it is restarting.
const DELIVERD_WAIT: Duration = Duration::from_secs(10);
/// An uncommitted data file older than this is abandoned (smtpd died).
const INCOMING_MAX_AGE: Duration = Duration::from_secs(4 * 3600);

/// Configuration that reloads replace.
pub struct Settings {
    /// The configuration.
    pub config: Config,
    /// Local domains.
    pub local_domains: Vec<String>,
    /// The configuration directory (hooks, aliases).
    pub config_dir: PathBuf,
}

impl Settings {
    fn from_start(start: &WorkerStart) -> Settings {
        Settings {
            config: start.config.clone(),
            local_domains: start.local_domains.clone(),
            config_dir: PathBuf::from(&start.config_dir),
        }
    }
}

/// A message in the queue, shared between its delivery task and the
/// admin commands.
pub struct Message {
    pub(crate) entry: Mutex<QueueEntry>,
    pub(crate) wake: Notify,
    /// Serialises the durable writes of this message's envelope, so an
    /// older snapshot never overwrites a newer one, and a removal is final.
    pub(crate) io: tokio::sync::Mutex<()>,
    /// Removed by the operator: the delivery task stops, writes nothing.
    pub(crate) removed: std::sync::atomic::AtomicBool,
}

impl Message {
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A copy of the envelope as it stands.
    pub(crate) fn snapshot(&self) -> QueueEntry {
        self.entry.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A data file handed to smtpd and not yet committed.
struct Incoming {
    file: File,
    created: Instant,
}

/// The queue manager.
pub struct Queue {
    pub(crate) store: Store,
    settings: RwLock<Arc<Settings>>,
    incoming: Mutex<HashMap<String, Incoming>>,
    /// The queued messages, and the places reserved by commits in
    /// progress (`max_queue_items` applies to both).
    pub(crate) messages: Mutex<Table<Arc<Message>>>,
    /// IDs of the messages found in the queue at start, delivered or
    /// not since: [`QueueRequest::WasCommitted`] answers for them even
    /// once a quick delivery removed them. At most the queue's size.
    recovered: Mutex<HashSet<String>>,
    /// Per-domain security levels (`data_dir/domaininfo`).
    domaininfo: DomainInfo,
    aliases: AliasDb,
    /// Users authd recently said exist.
    users: crate::resolve::UserCache,
    /// Sender rewriting for forwarded mail; `None` when the secret could
    /// not be read or created (forwarded mail then keeps its sender).
    srs: Option<Srs>,
    /// Client of deliverd.
    pub deliverd: Arc<PeerSlot<DeliverRequest, DeliverReply>>,
    /// Messages whose delivery results are now in the journal (or no
    /// longer needed), for the next job to tell deliverd
    /// ([`DeliveryJob::settled`]).
    settled: Mutex<Vec<String>>,
    /// Client of authd.
    pub authd: Arc<PeerSlot<AuthRequest, AuthReply>>,
    /// Client of hookd, which runs the hooks.
    pub hookd: Arc<HookSlot>,
}

/// Each local domain's aliases file: `domains/<its directory>/aliases`.
fn alias_paths(start: &WorkerStart) -> Vec<(String, PathBuf)> {
    start
        .local_domains
        .iter()
        .map(|d| (d.clone(), start.domain_dir(d).join("aliases")))
        .collect()
}

/// The reply to a transaction the store could not take: 452 for a full
/// disk, else 451.
fn store_error_reply(e: &std::io::Error) -> QueueReply {
    if tambo_common::is_storage_full(e) {
        let (code, enhanced, text) = tambo_common::STORAGE_FULL;
        reply(code, enhanced, text)
    } else {
        reply(451, "4.3.0", "Cannot queue the message now, try again later")
    }
}

fn reply(code: u16, enhanced: &str, text: impl Into<String>) -> QueueReply {
    QueueReply::Refused(SmtpReply {
        code,
        enhanced: enhanced.into(),
        text: text.into(),
    })
}

impl Queue {
    /// Open the queue, import chasquid's queue items if there are any
    /// (see [`crate::chasquid`]) and start delivering what it holds.
    pub async fn start(start: &WorkerStart) -> anyhow::Result<Arc<Queue>> {
        let dir = PathBuf::from(&start.config.data_dir).join("queue");
        // Spares for as many messages as the queue may hold, up to the
        // store's cap (see `Spares`).
        let spares = usize::try_from(start.config.max_queue_items).unwrap_or(0);
        let journal = JournalSize::from_mb(start.config.queue_journal_size_mb);
        let (store, mut entries) =
            Store::open(&dir, spares, journal).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        if store.corrupt_count() > 0 {
            tracing::warn!("{} corrupt queue entries moved aside", store.corrupt_count());
        }
        let srs_dir = PathBuf::from(&start.config.data_dir).join("srs");
        let srs = match Srs::load_or_create(&srs_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!("SRS disabled, forwarded mail keeps its sender: {e}");
                None
            }
        };
        let queue = Arc::new(Queue {
            srs,
            store,
            settings: RwLock::new(Arc::new(Settings::from_start(start))),
            incoming: Mutex::new(HashMap::new()),
            messages: Mutex::new(Table::default()),
            recovered: Mutex::new(HashSet::new()),
            domaininfo: DomainInfo::load(PathBuf::from(&start.config.data_dir).join("domaininfo")),
            aliases: AliasDb::new(alias_paths(start)),
            users: crate::resolve::UserCache::default(),
            deliverd: PeerSlot::new(tambo_ipc::proto::PeerChannel::QueuedDeliverd.name()),
            settled: Mutex::new(Vec::new()),
            authd: PeerSlot::new(tambo_ipc::proto::PeerChannel::QueuedAuthd.name()),
            hookd: PeerSlot::new(tambo_ipc::proto::PeerChannel::QueuedHookd.name()),
        });
        // As chasquid: an aliases file that cannot be read or parsed stops
        // the start, naming file and line.
        queue
            .aliases
            .reload(
                alias_paths(start),
                &start.config.drop_characters,
                &start.config.suffix_separators,
            )
            .map_err(|e| anyhow::anyhow!("aliases file error: {e}"))?;
        entries.extend(queue.import_chasquid(&entries).await);
        tracing::info!("queue loaded: {} message(s)", entries.len());
        *queue.recovered.lock().unwrap_or_else(|p| p.into_inner()) = entries.iter().map(|e| e.id.clone()).collect();
        // Series that exist from the start, at 0.
        metrics::global().add(Metric::QueueAccepted, &[], 0.0);
        metrics::global().add(Metric::DsnsSent, &[], 0.0);
        let weak = Arc::downgrade(&queue);
        metrics::global().register_gauges(Box::new(move || weak.upgrade().map(|q| q.gauges()).unwrap_or_default()));
        queue.launch_recovered(entries);
        let q = queue.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                q.sweep_incoming();
            }
        });
        Ok(queue)
    }

    /// Import chasquid's queue items (before any delivery starts); the
    /// new entries. `recovered`: the entries the store holds.
    async fn import_chasquid(&self, recovered: &[QueueEntry]) -> Vec<QueueEntry> {
        let s = self.settings();
        let ctx = self.resolver(&s);
        let now = unix_now();
        let srs = |from: &str, original: &str, route: &RcptRoute| self.srs_sender(&ctx, from, original, route, now);
        let conv = crate::chasquid::Conversion {
            local_domains: &s.local_domains,
            drop_characters: &s.config.drop_characters,
            suffix_separators: &s.config.suffix_separators,
            now,
            srs: &srs,
        };
        let ids: HashSet<String> = recovered.iter().map(|e| e.id.clone()).collect();
        let max =
            tambo_common::chasquid_queue::max_item_size(u64::try_from(s.config.max_data_size_mb).unwrap_or(50) << 20);
        match crate::chasquid::import(&self.store, &conv, &ids, max, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .await
        {
            Ok((entries, _)) => entries,
            Err(crate::chasquid::Stopped) => Vec::new(),
        }
    }

    /// Start delivering the entries found at start. A finished message
    /// whose DSN is queued too (queued died between queuing the DSN and
    /// removing the message) is removed first, and only then is its DSN
    /// delivered: so the DSN is neither sent twice nor lost.
    fn launch_recovered(self: &Arc<Self>, entries: Vec<QueueEntry>) {
        let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let reported: HashSet<String> = entries
            .iter()
            .filter(|e| e.is_dsn)
            .filter_map(|e| e.dsn_of.clone())
            .filter(|o| ids.contains(o.as_str()))
            .collect();
        let mut held = Vec::new();
        for e in entries {
            if reported.contains(&e.id) {
                continue;
            }
            if e.is_dsn && e.dsn_of.as_ref().is_some_and(|o| reported.contains(o)) {
                held.push(e);
            } else {
                self.launch(e);
            }
        }
        if held.is_empty() {
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            for dsn_entry in held {
                let original = dsn_entry.dsn_of.clone().unwrap_or_default();
                tracing::info!(
                    id = original,
                    dsn = dsn_entry.id,
                    "finished message already has its DSN queued: removing it"
                );
                q.remove_before_dsn(&original).await;
                q.launch(dsn_entry);
            }
        });
    }

    /// Remove a finished message whose DSN waits for that, retrying until
    /// the removal is durable (a DSN delivered before that could be sent
    /// again after a crash).
    async fn remove_before_dsn(&self, id: &str) {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.store.remove(id).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(id, "cannot remove (its DSN waits for that): {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Replace the settings and read the aliases files again (on
    /// reload). A broken aliases file keeps the previous aliases and is
    /// reported.
    pub fn reload(&self, start: &WorkerStart) -> Result<(), String> {
        self.domaininfo.reload();
        self.users.clear();
        let s = Arc::new(Settings::from_start(start));
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = s.clone();
        self.aliases
            .reload(
                alias_paths(start),
                &s.config.drop_characters,
                &s.config.suffix_separators,
            )
            .map_err(|e| e.to_string())
    }

    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The queue's size and the age of its oldest message, for metrics.
    fn gauges(&self) -> Vec<MetricSample> {
        let messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = messages
            .values()
            .map(|m| m.entry.lock().unwrap_or_else(|p| p.into_inner()).created)
            .min();
        let age = oldest.map(|c| unix_now().saturating_sub(c)).unwrap_or(0);
        vec![
            MetricSample {
                metric: Metric::QueueMessages,
                labels: Vec::new(),
                value: messages.len() as f64,
            },
            MetricSample {
                metric: Metric::QueueOldestAge,
                labels: Vec::new(),
                value: age as f64,
            },
        ]
    }

    /// Every message in the queue.
    pub(crate) fn all_messages(&self) -> Vec<Arc<Message>> {
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// One message by ID.
    pub(crate) fn message(&self, id: &str) -> Option<Arc<Message>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Whether the commit of `id`, whose answer smtpd never got, happened.
    fn was_committed(&self, id: &str) -> QueueReply {
        let known = self.message(id).is_some() || self.recovered.lock().unwrap_or_else(|p| p.into_inner()).contains(id);
        tracing::info!(id, known, "smtpd asks whether a commit it got no answer to happened");
        if known {
            QueueReply::Committed { id: id.to_string() }
        } else {
            reply(451, "4.3.0", "Queue unavailable, try again later")
        }
    }

    /// Drop a removed message from the table.
    pub(crate) fn forget(&self, id: &str) {
        self.messages.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Answer smtpd.
    pub async fn handle(self: &Arc<Self>, req: QueueRequest) -> (QueueReply, Vec<OwnedFd>) {
        match req {
            QueueRequest::CheckRecipient { address } => {
                (QueueReply::Recipient(self.check_recipient(&address).await), vec![])
            }
            QueueRequest::NewMessage => self.new_message(),
            QueueRequest::Commit { id, envelope } => (self.commit(&id, *envelope).await, vec![]),
            QueueRequest::Abort { id } => {
                if self
                    .incoming
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id)
                    .is_some()
                {
                    self.store.discard_data(&id);
                }
                (QueueReply::Done, vec![])
            }
            QueueRequest::WasCommitted { id } => (self.was_committed(&id), vec![]),
            QueueRequest::IncomingLevel { domain, level } => {
                let (recorded, allowed) = self.domaininfo.check_incoming(&domain, level);
                let check = if allowed { "pass" } else { "fail" };
                metrics::inc(
                    Metric::SecurityLevelChecks,
                    &[("direction", "incoming"), ("result", check)],
                );
                if !allowed {
                    tracing::info!(
                        domain,
                        "incoming security level check failed: {} connection, {} recorded",
                        level.name(),
                        recorded.name()
                    );
                }
                (QueueReply::IncomingLevel { recorded, allowed }, vec![])
            }
        }
    }

    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        let Ok(address) = normalize_address(address) else {
            return RcptVerdict::Unknown;
        };
        let s = self.settings();
        let ctx = self.resolver(&s);
        match ctx.resolve(&address).await {
            Ok(_) => RcptVerdict::Accept,
            Err(ResolveError::Unknown(_)) => RcptVerdict::Unknown,
            Err(e @ ResolveError::Temporary(..)) => RcptVerdict::TempFail(e.to_string()),
            Err(e @ ResolveError::Broken(..)) => {
                tracing::warn!("{e}");
                RcptVerdict::Refused(SmtpReply {
                    code: 550,
                    enhanced: "5.4.6".into(),
                    text: "Alias loop or too many aliases for this recipient".into(),
                })
            }
        }
    }

    /// Resolve an address for the operator (`tambo aliases-resolve`).
    pub(crate) async fn resolve_address(&self, address: &str) -> Result<Vec<crate::resolve::Resolved>, String> {
        let address = normalize_address(address).map_err(|e| format!("{address}: {e}"))?;
        let s = self.settings();
        self.resolver(&s).resolve(&address).await.map_err(|e| e.to_string())
    }

    fn resolver<'a>(&'a self, s: &'a Settings) -> ResolverContext<'a> {
        ResolverContext {
            local_domains: &s.local_domains,
            drop_characters: &s.config.drop_characters,
            suffix_separators: &s.config.suffix_separators,
            authd: &self.authd,
            users: &self.users,
            aliases: &self.aliases,
            config_dir: &s.config_dir,
            hookd: &self.hookd,
            srs: self.srs.as_ref(),
        }
    }

    /// `max_queue_items` as a count.
    fn max_items(&self) -> usize {
        usize::try_from(self.settings().config.max_queue_items).unwrap_or(0)
    }

    pub(crate) fn new_message(&self) -> (QueueReply, Vec<OwnedFd>) {
        // A cheap early refusal (before the client sends the data); the
        // place itself is reserved at commit.
        let full = self.messages.lock().unwrap_or_else(|p| p.into_inner()).occupied() >= self.max_items();
        if full {
            return (reply(451, "4.3.0", "Queue full, try again later"), vec![]);
        }
        let created = self.store.create_data().and_then(|(id, f)| Ok((id, f.try_clone()?, f)));
        match created {
            Ok((id, ours, theirs)) => {
                self.incoming.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    id.clone(),
                    Incoming {
                        file: ours,
                        created: Instant::now(),
                    },
                );
                (QueueReply::MessageSlot { id }, vec![OwnedFd::from(theirs)])
            }
            Err(e) => {
                tracing::error!("cannot create a data file: {e}");
                (store_error_reply(&e), vec![])
            }
        }
    }

    fn sweep_incoming(&self) {
        let stale: Vec<String> = {
            let mut inc = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<String> = inc
                .iter()
                .filter(|(_, i)| i.created.elapsed() > INCOMING_MAX_AGE)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                inc.remove(id);
            }
            ids
        };
        for id in stale {
            tracing::info!(id, "abandoned incoming message removed");
            self.store.discard_data(&id);
        }
    }

    pub(crate) async fn commit(self: &Arc<Self>, id: &str, env: IncomingEnvelope) -> QueueReply {
        let incoming = self.incoming.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let Some(incoming) = incoming.filter(|_| valid_id(id)) else {
            return reply(451, "4.3.0", "Unknown message, try again");
        };
        match self.commit_inner(id, &env, &incoming.file).await {
            Ok(reply) => reply,
            Err(r) => {
                self.store.discard_data(id);
                r
            }
        }
    }

    async fn commit_inner(
        self: &Arc<Self>,
        id: &str,
        env: &IncomingEnvelope,
        file: &File,
    ) -> Result<QueueReply, QueueReply> {
        let size = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if size != env.data_size {
            tracing::error!(id, "data file has {size} bytes, smtpd says {}", env.data_size);
            return Err(reply(451, "4.3.0", "Error writing the message, try again"));
        }
        // Check and reserve atomically: however many commits run at once,
        // queued messages plus commits in progress stay within the limit.
        let Some(slot) = try_reserve(&self.messages, self.max_items()) else {
            return Err(reply(451, "4.3.0", "Queue full, try again later"));
        };
        let s = self.settings();
        let ctx = self.resolver(&s);
        let now = unix_now();
        let mut rcpts = Vec::new();
        // The domain of the first alias that forwards this message to a
        // remote address: its key ARC-seals the message.
        let mut forwarder: Option<String> = None;
        for original in &env.rcpts {
            let resolved = match ctx.resolve(original).await {
                Ok(r) => r,
                Err(ResolveError::Unknown(a)) => return Err(reply(550, "5.1.1", format!("Unknown recipient {a}"))),
                Err(e @ ResolveError::Temporary(..)) => {
                    tracing::warn!(id, "{e}");
                    return Err(reply(451, "4.4.3", "Cannot resolve recipients now, try again later"));
                }
                Err(e @ ResolveError::Broken(..)) => {
                    tracing::warn!(id, "{e}");
                    return Err(reply(550, "5.4.6", "Alias loop or too many aliases for a recipient"));
                }
            };
            for r in resolved {
                if rcpts
                    .iter()
                    .any(|x: &RcptEntry| x.address == r.address && x.route == r.route)
                {
                    continue;
                }
                if forwarder.is_none()
                    && r.failure.is_none()
                    && let Some(d) = &r.forwarded_by
                {
                    forwarder = Some(d.clone());
                }
                let (state, last_error) = match r.failure {
                    Some(f) => (RcptState::Failed, f),
                    None => (RcptState::Pending, String::new()),
                };
                let sender = self.srs_sender(&ctx, &env.mail_from, original, &r.route, now);
                rcpts.push(RcptEntry {
                    sender,
                    address: r.address,
                    original: original.clone(),
                    route: r.route,
                    state,
                    attempts: 0,
                    last_error,
                    next_attempt: now,
                    last_attempt: 0,
                    gave_up: false,
                });
            }
        }
        if rcpts.is_empty() {
            return Err(reply(554, "5.1.1", "No valid recipients"));
        }
        let dkim_headers = self.dkim_sign(id, env, &s, file, size).await?;
        // Our Received first (the trace field of this hop), then the
        // signatures and the authentication results under it, as Postfix
        // with its milters and policy services lays them out. The post-data
        // hook's headers go on top.
        let mut header_prefix = format!(
            "{}{dkim_headers}{}",
            received_header(env, &s.config.hostname, id, now),
            env.auth_headers
        );
        let hook_headers = self.post_data_hook(id, env, &ctx, &header_prefix, file).await?;
        header_prefix.insert_str(0, &hook_headers);
        if env.auth_user.is_none()
            && let Some(domain) = &forwarder
        {
            let sealed = crate::arc_seal::seal(
                &self.authd,
                domain,
                &header_prefix,
                env.arc,
                &env.auth_headers,
                file,
                size,
            )
            .await;
            match sealed {
                Ok(set) => {
                    tracing::info!(id, domain = domain.as_str(), "ARC-sealed for a forward");
                    header_prefix.insert_str(0, &set);
                }
                Err(SignFailure::Skip(why)) => tracing::info!(id, "forward not ARC-sealed: {why}"),
                Err(SignFailure::Temporary(why)) => {
                    tracing::warn!(id, "ARC sealing failed: {why}");
                    return Err(reply(451, "4.3.0", "Cannot seal the message now, try again later"));
                }
            }
        }
        let entry = QueueEntry {
            version: ENTRY_VERSION,
            id: id.to_string(),
            from: env.mail_from.clone(),
            created: now,
            header_prefix,
            rcpts,
            remote_ip: env.remote_ip.clone(),
            helo: env.helo.clone(),
            auth_user: env.auth_user.clone(),
            data_size: size,
            held: false,
            is_dsn: false,
            dsn_of: None,
        };
        if let Err(e) = self.store.add(entry.clone()).await {
            tracing::error!(id, "cannot commit: {e}");
            return Err(store_error_reply(&e));
        }
        tracing::info!(
            id,
            from = entry.from,
            to = ?env.rcpts,
            ip = entry.remote_ip,
            "queued"
        );
        metrics::inc(Metric::QueueAccepted, &[]);
        self.record_incoming_level(env);
        mail_log(MailLogEvent::Queued {
            id: id.to_string(),
            from: entry.from.clone(),
            to: env.rcpts.clone(),
            ip: entry.remote_ip.clone(),
        });
        self.launch_in(entry, Some(slot));
        Ok(QueueReply::Committed { id: id.to_string() })
    }

    /// The rewritten envelope sender (SRS) for a recipient, when the
    /// message comes from a remote sender (not `<>`) and an alias of the
    /// local domain of `original` forwards it to a remote address.
    fn srs_sender(
        &self,
        ctx: &ResolverContext<'_>,
        from: &str,
        original: &str,
        route: &RcptRoute,
        now: u64,
    ) -> Option<String> {
        let srs = self.srs.as_ref()?;
        if from.is_empty() || !matches!(route, RcptRoute::Remote { .. }) {
            return None;
        }
        let (_, from_domain) = split_address(from);
        let (_, forwarding_domain) = split_address(original);
        if ctx.is_local(from_domain) || !ctx.is_local(forwarding_domain) || forwarding_domain == "localhost" {
            return None;
        }
        let rewritten = srs.forward(from, forwarding_domain, day_number(now));
        if split_address(&rewritten).0.len() > tambo_common::names::MAX_USER_LEN {
            tracing::warn!(
                "SRS: {from} is too long to rewrite (local parts have at most {} bytes); forwarded unchanged",
                tambo_common::names::MAX_USER_LEN
            );
            return None;
        }
        Some(rewritten)
    }

    /// The incoming security-level ratchet: an accepted message from an
    /// unauthenticated client, whose sender's domain passed SPF, received
    /// over TLS, raises that domain's incoming level to `TLS_CLIENT`; from
    /// then on smtpd refuses plain-text mail claiming the domain. Without
    /// an SPF pass anyone could raise the level of any domain.
    fn record_incoming_level(&self, env: &IncomingEnvelope) {
        if env.auth_user.is_some() || env.spf_pass != Some(true) || env.tls.is_none() {
            return;
        }
        let (_, domain) = tambo_common::names::split_address(&env.mail_from);
        self.domaininfo.record_incoming(domain, SecLevel::TlsClient);
    }

    /// Forget what is known of `domain`'s security levels (control socket).
    pub(crate) fn domaininfo_remove(&self, domain: &str) -> Result<bool, String> {
        self.domaininfo.remove(domain).map_err(|e| e.to_string())
    }

    /// Run the post-data hook, when there is one, on the message with our
    /// headers (`header_prefix`) on top; the header lines it adds, or the
    /// refusal it decided.
    async fn post_data_hook(
        &self,
        id: &str,
        env: &IncomingEnvelope,
        ctx: &ResolverContext<'_>,
        header_prefix: &str,
        file: &File,
    ) -> Result<String, QueueReply> {
        let count = |outcome| metrics::inc(Metric::HookRuns, &[("hook", "post-data"), ("outcome", outcome)]);
        if !hook_present(ctx.config_dir, "post-data") {
            count("absent");
            return Ok(String::new());
        }
        let data = file.try_clone().map_err(|e| {
            tracing::error!(id, "data file: {e}");
            reply(451, "4.3.0", "Error reading the message, try again")
        })?;
        let (_, from_domain) = tambo_common::names::split_address(&env.mail_from);
        let penv = PostDataEnv {
            envelope: env,
            from_local_domain: !from_domain.is_empty() && ctx.is_local(from_domain),
        };
        let verdict = crate::hooks::post_data(
            &self.hookd,
            &penv,
            header_prefix.as_bytes().to_vec(),
            data,
            POST_DATA_TIMEOUT,
        )
        .await;
        match verdict {
            None => {
                count("absent");
                Ok(String::new())
            }
            Some(PostData::Accept(headers)) => {
                count("accept");
                Ok(headers)
            }
            Some(PostData::BadOutput) => {
                count("bad_output");
                Ok(String::new())
            }
            Some(PostData::Refuse(r)) => {
                count(if r.code >= 500 { "permanent" } else { "temporary" });
                tracing::info!(
                    id,
                    from = env.mail_from,
                    "refused by the post-data hook: {} {}",
                    r.code,
                    r.text
                );
                Err(QueueReply::Refused(r))
            }
        }
    }

    /// DKIM-sign an authenticated submission with the keys of its user's
    /// domain (through authd); the headers to prepend. authd being away
    /// is a temporary failure: mail from a domain with keys is never queued
    /// unsigned because of it.
    async fn dkim_sign(
        &self,
        id: &str,
        env: &IncomingEnvelope,
        s: &Settings,
        file: &File,
        size: u64,
    ) -> Result<String, QueueReply> {
        let Some(domain) = env
            .auth_user
            .as_deref()
            .and_then(|u| u.rsplit_once('@'))
            .map(|(_, d)| d)
        else {
            return Ok(String::new());
        };
        if !s.local_domains.iter().any(|d| d == domain) {
            return Ok(String::new());
        }
        match crate::dkim_sign::sign(&self.authd, domain, file, size).await {
            Ok(h) => Ok(h),
            Err(SignFailure::Skip(why)) => {
                tracing::warn!(id, "not DKIM-signed: {why}");
                Ok(String::new())
            }
            Err(SignFailure::Temporary(why)) => {
                tracing::warn!(id, "DKIM signing failed: {why}");
                Err(reply(451, "4.3.0", "Cannot sign the message now, try again later"))
            }
        }
    }

    /// Start the delivery task of a queued message.
    fn launch(self: &Arc<Self>, entry: QueueEntry) {
        self.launch_in(entry, None);
    }

    /// Start the delivery task of a queued message, in the place `slot`
    /// reserved for it if any.
    fn launch_in(self: &Arc<Self>, entry: QueueEntry, slot: Option<Slot<'_, Arc<Message>>>) {
        let id = entry.id.clone();
        let msg = Arc::new(Message {
            entry: Mutex::new(entry),
            wake: Notify::new(),
            io: tokio::sync::Mutex::new(()),
            removed: std::sync::atomic::AtomicBool::new(false),
        });
        match slot {
            Some(slot) => slot.fill(id.clone(), msg.clone()),
            None => {
                self.messages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), msg.clone());
            }
        }
        let q = self.clone();
        tokio::spawn(async move {
            q.deliver_loop(&msg).await;
            q.messages.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    /// Deliver a message until no recipient is pending, then remove it.
    async fn deliver_loop(self: &Arc<Self>, msg: &Message) {
        loop {
            if msg.is_removed() {
                return;
            }
            let (job_entry, wait) = {
                let e = msg.entry.lock().unwrap_or_else(|p| p.into_inner());
                if !e.has_pending() {
                    break;
                }
                let now = unix_now();
                let next = e
                    .rcpts
                    .iter()
                    .filter(|r| r.state == RcptState::Pending)
                    .map(|r| r.next_attempt)
                    .min()
                    .unwrap_or(now);
                if e.held {
                    (None, None)
                } else if next <= now {
                    (Some(e.clone()), None)
                } else {
                    (None, Some(Duration::from_secs(next - now)))
                }
            };
            let Some(entry) = job_entry else {
                match wait {
                    Some(d) => {
                        let _ = tokio::time::timeout(d, msg.wake.notified()).await;
                    }
                    None => msg.wake.notified().await,
                }
                continue;
            };
            let (updated, replied) = self.attempt(entry).await;
            let changed = {
                let mut e = msg.entry.lock().unwrap_or_else(|p| p.into_inner());
                let changed = *e != updated;
                // Keep an operator's hold that arrived meanwhile.
                let held = e.held;
                *e = updated;
                e.held = held;
                changed
            };
            let _io = msg.io.lock().await;
            if msg.is_removed() {
                self.settle(&msg.entry.lock().unwrap_or_else(|p| p.into_inner()).id);
                return;
            }
            let snapshot = msg.entry.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // Record the results, unless every recipient was delivered (the
            // entry is removed next, which records that just as well). When
            // some failed, the record lets a restart send the DSN without
            // attempting anyone again. deliverd keeps the outcomes until
            // they are recorded (see `settle`).
            let all_delivered = snapshot.rcpts.iter().all(|r| r.state == RcptState::Delivered);
            // Settled only when deliverd answered every job: the outcomes
            // of a job whose answer was lost (deliverd died) are still to
            // come, from what the new deliverd adopted.
            let id = snapshot.id.clone();
            match (changed, all_delivered) {
                // The removal below records it.
                (true, true) => {}
                (true, false) => match self.store.write(snapshot).await {
                    Ok(()) if replied => self.settle(&id),
                    Ok(()) => {}
                    Err(err) => tracing::error!(id, "cannot record delivery results: {err}"),
                },
                (false, _) if replied => self.settle(&id),
                (false, _) => {}
            }
        }
        let _io = msg.io.lock().await;
        if msg.is_removed() {
            return;
        }
        let entry = msg.entry.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let failed: Vec<&RcptEntry> = entry.rcpts.iter().filter(|r| r.state == RcptState::Failed).collect();
        if !failed.is_empty() {
            tracing::info!(id = entry.id, "{} recipient(s) failed", failed.len());
        }
        // The DSN is queued durably while the message is still queued,
        // under an ID derived from the message's; it is delivered only
        // after the message's removal is durable. A crash before the DSN
        // is queued queues it at restart; a crash after finds both and
        // removes the message before delivering the DSN (see
        // `launch_recovered`): never lost, never sent twice.
        let dsn_entry = if dsn::wants_dsn(&entry) {
            self.queue_dsn(&entry).await
        } else {
            None
        };
        // Out of the count first, so a client that sees the envelope gone
        // also finds room in the queue.
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&entry.id);
        // With a DSN, the removal must be durable before the DSN may be
        // delivered; without one it rides on the next flush.
        let removed = match dsn_entry {
            Some(d) => {
                self.remove_before_dsn(&entry.id).await;
                self.launch(d);
                Ok(())
            }
            None => self.store.remove_lazily(&entry.id).await,
        };
        if let Err(e) = removed {
            tracing::error!(id = entry.id, "cannot remove: {e}");
        } else {
            // The removal's journal record is written (a killed queued
            // keeps it), so deliverd may forget the outcomes.
            self.settle(&entry.id);
            tracing::info!(id = entry.id, "all done");
            mail_log(MailLogEvent::AllDone {
                id: entry.id.clone(),
                from: entry.from.clone(),
            });
        }
    }

    /// One delivery attempt for every due recipient; returns the updated
    /// entry (not yet stored), and whether deliverd answered every job.
    async fn attempt(&self, mut entry: QueueEntry) -> (QueueEntry, bool) {
        let now = unix_now();
        // One job per envelope sender: forwarded recipients may have a
        // rewritten one (SRS).
        let mut jobs: Vec<(String, Vec<JobRcpt>)> = Vec::new();
        for (i, r) in entry.rcpts.iter().enumerate() {
            if r.state != RcptState::Pending || r.next_attempt > now {
                continue;
            }
            let from = r.sender.clone().unwrap_or_else(|| entry.from.clone());
            let rcpt = JobRcpt {
                index: i as u32,
                address: r.address.clone(),
                route: r.route.clone(),
            };
            match jobs.iter_mut().find(|(f, _)| *f == from) {
                Some((_, v)) => v.push(rcpt),
                None => jobs.push((from, vec![rcpt])),
            }
        }
        let mut results = Vec::new();
        let mut replied = !jobs.is_empty();
        for (from, due) in jobs {
            let answer = self.attempt_job(&entry, from, due.clone()).await;
            replied &= answer.is_ok();
            match answer {
                Ok(r) => results.extend(r),
                Err(NoAttempt::Data(e)) => {
                    for j in &due {
                        let r = &mut entry.rcpts[j.index as usize];
                        r.next_attempt = now + 60;
                        r.last_error = e.clone();
                    }
                }
                Err(NoAttempt::Deliverd(e)) => {
                    tracing::warn!(id = entry.id, "deliverd unreachable ({e}); retrying soon");
                    for j in &due {
                        entry.rcpts[j.index as usize].next_attempt = now + DELIVERD_LOST_RETRY.as_secs();
                    }
                }
            }
        }
        let s = self.settings();
        let give_up = s.config.give_up_send_after_duration();
        let first_retry = s.config.min_retry_delay_duration();
        let deadline = entry.created + give_up.as_secs();
        for (index, outcome) in results {
            let Some(r) = entry.rcpts.get_mut(index as usize) else {
                continue;
            };
            if r.state != RcptState::Pending {
                continue;
            }
            r.attempts += 1;
            let route = route_label(&r.route);
            r.last_attempt = unix_now();
            match outcome {
                DeliveryOutcome::Delivered => {
                    r.state = RcptState::Delivered;
                    r.last_error.clear();
                    metrics::inc(Metric::Deliveries, &[("result", "sent"), ("route", route)]);
                    mail_log(MailLogEvent::Sent {
                        id: entry.id.clone(),
                        from: entry.from.clone(),
                        to: r.address.clone(),
                    });
                }
                DeliveryOutcome::PermFail(e) => {
                    r.state = RcptState::Failed;
                    r.last_error = e;
                }
                DeliveryOutcome::TempFail(e) => {
                    let age = Duration::from_secs(unix_now().saturating_sub(entry.created));
                    if age >= give_up {
                        r.state = RcptState::Failed;
                        r.gave_up = true;
                        r.last_error = format!("gave up after {}s in the queue; last error: {e}", age.as_secs());
                    } else {
                        r.last_error = e;
                        // The last attempt happens at the deadline, not
                        // up to a whole retry interval after it.
                        let next = unix_now() + retry_delay(r.attempts, first_retry).as_secs().max(1);
                        r.next_attempt = next.min(deadline).max(unix_now() + 1);
                        metrics::inc(Metric::Deliveries, &[("result", "temporary"), ("route", route)]);
                        mail_log(MailLogEvent::TempFail {
                            id: entry.id.clone(),
                            from: entry.from.clone(),
                            to: r.address.clone(),
                            err: r.last_error.clone(),
                        });
                    }
                }
            }
            if r.state == RcptState::Failed {
                metrics::inc(Metric::Deliveries, &[("result", "permanent"), ("route", route)]);
                mail_log(MailLogEvent::PermFail {
                    id: entry.id.clone(),
                    from: entry.from.clone(),
                    to: r.address.clone(),
                    err: r.last_error.clone(),
                });
            }
        }
        (entry, replied)
    }

    /// One deliverd call for the recipients `due`, sent with the envelope
    /// sender `from`. `Err`: the attempt did not happen (data file or
    /// deliverd unavailable).
    async fn attempt_job(
        &self,
        entry: &QueueEntry,
        from: String,
        due: Vec<JobRcpt>,
    ) -> Result<Vec<(u32, DeliveryOutcome)>, NoAttempt> {
        let data = match self.store.open_data(&entry.id) {
            Ok(f) => OwnedFd::from(f),
            Err(e) => {
                tracing::error!(id = entry.id, "cannot open data file: {e}");
                return Err(NoAttempt::Data(format!("cannot open data file: {e}")));
            }
        };
        let mut outgoing_levels: Vec<(String, SecLevel)> = Vec::new();
        for j in &due {
            if let RcptRoute::Remote { .. } = j.route {
                let domain = split_address(&j.address).1;
                if !outgoing_levels.iter().any(|(d, _)| d == domain) {
                    outgoing_levels.push((domain.to_string(), self.domaininfo.outgoing(domain)));
                }
            }
        }
        let job = DeliveryJob {
            id: entry.id.clone(),
            from,
            rcpts: due,
            header_prefix: entry.header_prefix.as_bytes().to_vec(),
            outgoing_levels,
            settled: std::mem::take(&mut *self.settled.lock().unwrap_or_else(|p| p.into_inner())),
        };
        match self
            .deliverd
            .call(DeliverRequest::Deliver(job), vec![data], DELIVERD_WAIT)
            .await
        {
            Ok((DeliverReply::Report(report), _)) => {
                for (domain, level) in &report.levels_seen {
                    // deliverd reports ASCII domains; record them under the
                    // normalised (Unicode) name the queue uses.
                    let name = tambo_common::names::normalize_domain(domain).unwrap_or_else(|_| domain.clone());
                    self.domaininfo.record_outgoing(&name, *level);
                }
                Ok(report.results)
            }
            Err(e) => Err(NoAttempt::Deliverd(e.to_string())),
        }
    }

    /// Tell deliverd, with the next job, that the delivery results of
    /// message `id` are recorded in the journal: a write of the journal
    /// survives a killed queued (the kernel has it), so deliverd need not
    /// keep them for a restarted queued any more. Until then deliverd
    /// answers a repeated job from what it kept, instead of delivering
    /// again.
    fn settle(&self, id: &str) {
        self.settled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.to_string());
    }

    /// Queue (durably, without starting its delivery) the DSN for a
    /// finished entry, retrying while the sender's address cannot be
    /// resolved for a temporary reason. The DSN entry, to launch once the
    /// original is removed.
    async fn queue_dsn(self: &Arc<Self>, entry: &QueueEntry) -> Option<QueueEntry> {
        let mut delay = Duration::from_secs(5);
        for _ in 0..10 {
            match self.try_queue_dsn(entry).await {
                Ok(d) => return Some(d),
                Err(Some(e)) => {
                    tracing::warn!(id = entry.id, "cannot queue the DSN yet: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(600));
                }
                Err(None) => return None,
            }
        }
        tracing::error!(
            id = entry.id,
            "DSN to <{}> abandoned after repeated failures",
            entry.from
        );
        None
    }

    /// `Err(Some(why))`: try again later; `Err(None)`: no DSN can be sent.
    async fn try_queue_dsn(self: &Arc<Self>, entry: &QueueEntry) -> Result<QueueEntry, Option<String>> {
        let s = self.settings();
        let now = unix_now();
        let headers = match self.store.open_data(&entry.id) {
            Ok(mut f) => dsn::original_headers(&entry.header_prefix, &mut f),
            Err(e) => {
                tracing::warn!(id = entry.id, "data file: {e}; the DSN carries only our headers");
                dsn::original_headers(&entry.header_prefix, &mut std::io::empty())
            }
        };
        let body = dsn::build_dsn(entry, &s.config.hostname, now, &headers);
        let resolved = match self.resolver(&s).resolve(&entry.from).await {
            Ok(r) => r,
            Err(e @ ResolveError::Temporary(..)) => return Err(Some(e.to_string())),
            Err(e) => {
                tracing::warn!(id = entry.id, "no DSN sent: the sender's address does not resolve: {e}");
                return Err(None);
            }
        };
        let rcpts: Vec<RcptEntry> = resolved
            .into_iter()
            .filter(|r| r.failure.is_none())
            .map(|r| RcptEntry {
                sender: None,
                address: r.address,
                original: entry.from.clone(),
                route: r.route,
                state: RcptState::Pending,
                attempts: 0,
                last_error: String::new(),
                next_attempt: now,
                last_attempt: 0,
                gave_up: false,
            })
            .collect();
        if rcpts.is_empty() {
            tracing::warn!(
                id = entry.id,
                "no DSN sent: <{}> has no deliverable address",
                entry.from
            );
            return Err(None);
        }
        // The same ID on every attempt: a retry replaces what an earlier
        // attempt left, never adds a second DSN.
        let id = dsn::dsn_id(&entry.id);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.store.data_path(&id))
            .map_err(|e| Some(format!("data file: {e}")))?;
        if let Err(e) = std::io::Write::write_all(&mut file, &body) {
            self.store.discard_data(&id);
            return Err(Some(format!("writing the DSN: {e}")));
        }
        // A DSN comes from MAILER-DAEMON@hostname: signed with the
        // hostname's keys when it is a local domain that has some.
        let mut signature = String::new();
        if s.local_domains.iter().any(|d| *d == s.config.hostname) {
            match crate::dkim_sign::sign(&self.authd, &s.config.hostname, &file, body.len() as u64).await {
                Ok(h) => signature = h,
                Err(SignFailure::Skip(why)) => tracing::warn!(id, "DSN not DKIM-signed: {why}"),
                Err(SignFailure::Temporary(why)) => {
                    self.store.discard_data(&id);
                    return Err(Some(format!("DKIM signing: {why}")));
                }
            }
        }
        drop(file);
        let dsn_entry = QueueEntry {
            version: ENTRY_VERSION,
            id: id.clone(),
            from: String::new(),
            created: now,
            header_prefix: format!(
                "Received: by {} (tambo) id {id};\r\n\t{}\r\n{signature}",
                s.config.hostname,
                rfc5322_date(now)
            ),
            rcpts,
            remote_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            data_size: body.len() as u64,
            held: false,
            is_dsn: true,
            dsn_of: Some(entry.id.clone()),
        };
        if let Err(e) = self.store.add(dsn_entry.clone()).await {
            self.store.discard_data(&id);
            return Err(Some(format!("cannot queue: {e}")));
        }
        tracing::info!(id, original = entry.id, to = entry.from, "DSN queued");
        Ok(dsn_entry)
    }
}

/// Why a delivery attempt did not happen.
enum NoAttempt {
    /// The data file could not be opened (recorded as the last error).
    Data(String),
    /// deliverd is away or its answer was lost.
    Deliverd(String),
}

/// The metrics label of a route.
fn route_label(route: &RcptRoute) -> &'static str {
    match route {
        RcptRoute::Local { .. } => "local",
        RcptRoute::Pipe { .. } => "pipe",
        RcptRoute::Remote { .. } => "remote",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_schedule_grows() {
        let m = Duration::from_secs(60);
        let d1 = retry_delay(1, m).as_secs_f64();
        let d2 = retry_delay(2, m).as_secs_f64();
        let d4 = retry_delay(4, m).as_secs_f64();
        let d9 = retry_delay(9, m).as_secs_f64();
        assert!((54.0..=66.0).contains(&d1));
        assert!((270.0..=330.0).contains(&d2));
        assert!((1080.0..=1320.0).contains(&d4));
        assert!((1080.0..=1320.0).contains(&d9));
    }
}
