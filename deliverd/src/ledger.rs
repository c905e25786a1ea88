//! What deliverd has delivered that queued may not have recorded yet.
//!
//! queued can die (kill -9, a crash) while deliverd works on one of its
//! jobs, or after the reply left and before the result reached queued's
//! journal. The restarted queued finds those recipients pending and sends
//! their jobs again. The ledger keeps every outcome until queued says, in
//! a later job's `settled`, that it has recorded that message. Meanwhile a
//! job for a recipient already delivered (or failed for good) is answered
//! from the ledger, and one for a recipient whose delivery is still running
//! waits for that delivery's outcome. So queued's death never hands a
//! recipient to its delivery agent twice.
//!
//! A temporary failure is kept too but never answers a later job: that
//! job is the retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tambo_ipc::proto::{DeliveryOutcome, JobRcpt};
use tokio::sync::watch;

/// Most recipients kept. Only what queued never settles stays (the results
/// of a queued that died after recording them): the oldest go first.
const MAX_RCPTS: usize = 100_000;
/// Recipients older than this are forgotten: a restarted queued asks again
/// within seconds (unless the message is on hold for longer).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The outcomes of one delivery, shared by the delivery and its waiters.
type Outcome = watch::Receiver<Option<DeliveryOutcome>>;

/// Something kept alive as long as an outcome is kept: the agent log file
/// that records how the outcome was reached (see `agent_log`).
pub type Keep = Arc<dyn std::any::Any + Send + Sync>;

enum Slot {
    Running(Outcome),
    Done(DeliveryOutcome, Option<Keep>),
}

struct Entry {
    since: Instant,
    rcpts: HashMap<u32, Slot>,
}

#[derive(Default)]
struct Inner {
    messages: HashMap<String, Entry>,
    rcpts: usize,
}

/// The outcomes deliverd has reached (or is reaching), by queue ID and
/// recipient index, until queued settles them.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

/// What the ledger knows of a job's recipients.
pub struct Claim {
    ledger: Arc<Ledger>,
    id: String,
    /// Recipients to deliver now: nobody has, or only temporarily failed.
    pub fresh: Vec<JobRcpt>,
    /// Outcomes already reached for good.
    pub known: Vec<(u32, DeliveryOutcome)>,
    /// Deliveries still running (of an earlier job of the same message).
    running: Vec<(u32, Outcome)>,
    /// The senders of `fresh`'s outcomes, until [`Claim::finish`].
    mine: HashMap<u32, watch::Sender<Option<DeliveryOutcome>>>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget the messages queued has recorded. Returns those of them
    /// that had something kept with an outcome.
    pub fn settle(&self, ids: &[String]) -> Vec<String> {
        let mut inner = self.lock();
        let mut kept = Vec::new();
        for id in ids {
            if let Some(e) = inner.messages.remove(id) {
                inner.rcpts -= e.rcpts.len();
                if e.rcpts.values().any(|s| matches!(s, Slot::Done(_, Some(_)))) {
                    kept.push(id.clone());
                }
            }
        }
        kept
    }

    /// Take over recipient `index` of message `id`, whose delivery was
    /// started elsewhere (by a deliverd that died): a claim to finish when
    /// its outcome is known, or to drop when it cannot be. `None` when the
    /// ledger already knows that recipient.
    pub fn adopt(self: &Arc<Self>, id: &str, index: u32) -> Option<Claim> {
        let mut inner = self.lock();
        inner.make_room(1);
        let Inner { messages, rcpts } = &mut *inner;
        let entry = messages.entry(id.to_string()).or_insert_with(|| Entry {
            since: Instant::now(),
            rcpts: HashMap::new(),
        });
        if entry.rcpts.contains_key(&index) {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        entry.rcpts.insert(index, Slot::Running(rx));
        *rcpts += 1;
        Some(Claim {
            ledger: self.clone(),
            id: id.to_string(),
            fresh: Vec::new(),
            known: Vec::new(),
            running: Vec::new(),
            mine: HashMap::from([(index, tx)]),
        })
    }

    /// How many recipients the ledger holds.
    pub fn len(&self) -> usize {
        self.lock().rcpts
    }

    /// Whether the ledger holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sort the recipients of a job of message `id`: those to deliver now
    /// are marked running until [`Claim::finish`] (or the claim is dropped).
    pub fn claim(self: &Arc<Self>, id: &str, rcpts: &[JobRcpt]) -> Claim {
        let mut claim = Claim {
            ledger: self.clone(),
            id: id.to_string(),
            fresh: Vec::new(),
            known: Vec::new(),
            running: Vec::new(),
            mine: HashMap::new(),
        };
        let mut inner = self.lock();
        inner.make_room(rcpts.len());
        let Inner { messages, rcpts: count } = &mut *inner;
        let entry = messages.entry(id.to_string()).or_insert_with(|| Entry {
            since: Instant::now(),
            rcpts: HashMap::new(),
        });
        for r in rcpts {
            match entry.rcpts.get(&r.index) {
                Some(Slot::Done(o @ (DeliveryOutcome::Delivered | DeliveryOutcome::PermFail(_)), _)) => {
                    claim.known.push((r.index, o.clone()));
                    continue;
                }
                Some(Slot::Running(rx)) => {
                    claim.running.push((r.index, rx.clone()));
                    continue;
                }
                Some(Slot::Done(DeliveryOutcome::TempFail(_), _)) | None => {}
            }
            let (tx, rx) = watch::channel(None);
            if entry.rcpts.insert(r.index, Slot::Running(rx)).is_none() {
                *count += 1;
            }
            claim.mine.insert(r.index, tx);
            claim.fresh.push(r.clone());
        }
        claim
    }
}

impl Inner {
    /// Drop what is too old, then the oldest messages not running, until
    /// `more` recipients fit under [`MAX_RCPTS`].
    fn make_room(&mut self, more: usize) {
        if self.rcpts + more <= MAX_RCPTS {
            return;
        }
        let running = |e: &Entry| e.rcpts.values().any(|s| matches!(s, Slot::Running(_)));
        let mut idle: Vec<(Instant, String)> = self
            .messages
            .iter()
            .filter(|(_, e)| !running(e))
            .map(|(id, e)| (e.since, id.clone()))
            .collect();
        idle.sort();
        let now = Instant::now();
        let mut dropped = 0;
        for (since, id) in idle {
            if self.rcpts + more <= MAX_RCPTS && now.duration_since(since) < MAX_AGE {
                break;
            }
            if let Some(e) = self.messages.remove(&id) {
                self.rcpts -= e.rcpts.len();
                dropped += 1;
            }
        }
        tracing::warn!("delivery ledger full: forgot {dropped} message(s) queued never settled");
    }
}

impl Claim {
    /// Record the outcome of a recipient of [`Claim::fresh`] (with what
    /// to keep alive as long as it), and pass it to whoever waits for it.
    pub fn finish(&mut self, index: u32, outcome: &DeliveryOutcome, keep: Option<Keep>) {
        let Some(tx) = self.mine.remove(&index) else {
            return;
        };
        let _ = tx.send(Some(outcome.clone()));
        let mut inner = self.ledger.lock();
        if let Some(e) = inner.messages.get_mut(&self.id) {
            e.rcpts.insert(index, Slot::Done(outcome.clone(), keep));
        }
    }

    /// The outcomes of the deliveries that were running elsewhere, once
    /// they end. One that ended without an outcome (its job was cancelled)
    /// is a temporary failure.
    pub async fn wait_running(&mut self) -> Vec<(u32, DeliveryOutcome)> {
        let mut out = Vec::with_capacity(self.running.len());
        for (index, mut rx) in std::mem::take(&mut self.running) {
            let outcome = match rx.wait_for(Option::is_some).await {
                Ok(o) => o.clone().expect("waited for Some"),
                Err(_) => DeliveryOutcome::TempFail("an earlier delivery of this message was interrupted".into()),
            };
            out.push((index, outcome));
        }
        out
    }
}

impl Drop for Claim {
    /// Recipients claimed but never finished (the job was cancelled) are
    /// not running any more: forget them, so a later job delivers them.
    fn drop(&mut self) {
        if self.mine.is_empty() {
            return;
        }
        let mut inner = self.ledger.lock();
        let Inner { messages, rcpts } = &mut *inner;
        if let Some(e) = messages.get_mut(&self.id) {
            for index in self.mine.keys() {
                if e.rcpts.remove(index).is_some() {
                    *rcpts -= 1;
                }
            }
            if e.rcpts.is_empty() {
                messages.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tambo_ipc::proto::RcptRoute;

    fn rcpt(index: u32) -> JobRcpt {
        JobRcpt {
            index,
            address: format!("u{index}@example.com"),
            route: RcptRoute::Local {
                user: format!("u{index}"),
                domain: "example.com".into(),
            },
        }
    }

    #[tokio::test]
    async fn a_second_job_is_answered_from_the_first() {
        let ledger = Arc::new(Ledger::default());
        let mut first = ledger.claim("A", &[rcpt(0), rcpt(1), rcpt(2)]);
        assert_eq!(first.fresh.len(), 3);
        first.finish(0, &DeliveryOutcome::Delivered, None);
        first.finish(1, &DeliveryOutcome::TempFail("later".into()), None);
        // Recipient 2 is still running when the job comes again.
        let mut second = ledger.claim("A", &[rcpt(0), rcpt(1), rcpt(2)]);
        assert_eq!(second.known, vec![(0, DeliveryOutcome::Delivered)]);
        assert_eq!(second.fresh.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1]);
        let waiter = tokio::spawn(async move {
            second.finish(1, &DeliveryOutcome::Delivered, None);
            second.wait_running().await
        });
        tokio::task::yield_now().await;
        first.finish(2, &DeliveryOutcome::PermFail("no".into()), None);
        assert_eq!(waiter.await.unwrap(), vec![(2, DeliveryOutcome::PermFail("no".into()))]);
        assert_eq!(ledger.len(), 3);
        assert!(ledger.settle(&["A".to_string()]).is_empty(), "nothing kept");
        assert!(ledger.is_empty());
        assert_eq!(ledger.claim("A", &[rcpt(0)]).fresh.len(), 1, "settled: deliver again");
    }

    #[tokio::test]
    async fn a_cancelled_job_is_not_waited_for_forever() {
        let ledger = Arc::new(Ledger::default());
        let first = ledger.claim("B", &[rcpt(0)]);
        let mut second = ledger.claim("B", &[rcpt(0)]);
        assert!(second.fresh.is_empty());
        drop(first);
        let got = second.wait_running().await;
        assert!(matches!(got[..], [(0, DeliveryOutcome::TempFail(_))]), "{got:?}");
        assert!(ledger.is_empty(), "the cancelled recipient is forgotten");
        assert_eq!(ledger.claim("B", &[rcpt(0)]).fresh.len(), 1);
    }

    #[test]
    fn an_adopted_delivery_answers_and_keeps_its_log() {
        let ledger = Arc::new(Ledger::default());
        let mut adopted = ledger.adopt("C", 1).expect("new");
        assert!(ledger.adopt("C", 1).is_none(), "adopted once");
        let log: Keep = Arc::new("the log file");
        adopted.finish(1, &DeliveryOutcome::Delivered, Some(log.clone()));
        let job = ledger.claim("C", &[rcpt(0), rcpt(1)]);
        assert_eq!(job.known, vec![(1, DeliveryOutcome::Delivered)]);
        assert_eq!(job.fresh.len(), 1);
        drop(job);
        assert_eq!(Arc::strong_count(&log), 2, "kept by the ledger");
        assert_eq!(ledger.settle(&["C".to_string()]), vec!["C".to_string()]);
        assert_eq!(Arc::strong_count(&log), 1, "released when settled");
    }

    #[test]
    fn a_full_ledger_forgets_the_oldest_settled_nothing() {
        let ledger = Arc::new(Ledger::default());
        let mut old = ledger.claim("old", &[rcpt(0)]);
        old.finish(0, &DeliveryOutcome::Delivered, None);
        drop(old);
        ledger.lock().rcpts = MAX_RCPTS;
        let running = ledger.claim("new", &[rcpt(0)]);
        assert!(!ledger.lock().messages.contains_key("old"));
        assert!(ledger.lock().messages.contains_key("new"));
        drop(running);
    }
}
