//! Idle connections kept for the next message to the same server, and the
//! concurrency limits (total and per destination domain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::Session;

/// A session is retired after this many transactions.
pub const MAX_TRANSACTIONS_PER_SESSION: u32 = 1000;

/// Idle sessions by destination key ("host:port").
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Instant, Session)>>>,
    timeout: Duration,
    max_per_key: usize,
    max_total: usize,
}

impl Pool {
    /// A pool keeping sessions for `timeout`, at most `max_per_key` per
    /// destination and `max_total` in all.
    pub fn new(timeout: Duration, max_per_key: usize, max_total: usize) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            timeout,
            max_per_key,
            max_total,
        })
    }

    /// A fresh-enough idle session for `key`, if any.
    pub fn take(&self, key: &str) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((at, s)) = list.pop() {
            if at.elapsed() < self.timeout {
                return Some(s);
            }
            spawn_quit(s);
        }
        None
    }

    /// Keep `s` for later (or close it when the pool is full).
    pub fn put(&self, key: &str, s: Session) {
        if self.timeout.is_zero() || s.transactions >= MAX_TRANSACTIONS_PER_SESSION {
            spawn_quit(s);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = idle.values().map(Vec::len).sum();
        let list = idle.entry(key.to_string()).or_default();
        if list.len() >= self.max_per_key || total >= self.max_total {
            spawn_quit(s);
            return;
        }
        list.push((Instant::now(), s));
    }

    /// Close the sessions idle for longer than the timeout.
    pub fn sweep(&self) {
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            for list in idle.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|(at, _)| at.elapsed() >= self.timeout);
                *list = keep;
                expired.extend(old.into_iter().map(|(_, s)| s));
            }
            idle.retain(|_, l| !l.is_empty());
        }
        for s in expired {
            spawn_quit(s);
        }
    }

    /// Number of idle sessions.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}

fn spawn_quit(s: Session) {
    tokio::spawn(async move {
        let _ = s.quit().await;
    });
}

/// Concurrency limits: a total number of sessions in use and a number per
/// recipient domain.
pub struct Limits {
    total: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_domain_max: usize,
}

/// Permits held while a session is in use.
pub struct Permits {
    _domain: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Limits {
    /// At most `total` sessions at once, `per_domain` for one domain.
    pub fn new(total: usize, per_domain: usize) -> Limits {
        Limits {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_domain: Mutex::new(HashMap::new()),
            per_domain_max: per_domain.max(1),
        }
    }

    /// Wait for a slot for `domain` (the domain first, then the total, so
    /// that a busy domain does not hold total slots while it waits).
    pub async fn acquire(&self, domain: &str) -> Permits {
        let sem = {
            let mut map = self.per_domain.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() > 10_000 {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            map.entry(domain.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_domain_max)))
                .clone()
        };
        let d = sem.acquire_owned().await.expect("semaphore never closed");
        let t = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        Permits { _domain: d, _total: t }
    }
}
