//! Throttling of repeated authentication failures, per client IP and per
//! user: past a number of failures within a window, further attempts are
//! refused without checking the password until the window moves on.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per client IP within [`WINDOW`].
pub const MAX_FAILURES_PER_IP: usize = 10;
/// Failures allowed per user within [`WINDOW`].
pub const MAX_FAILURES_PER_USER: usize = 10;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Keys tracked at most, so an attacker cannot grow authd's memory.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
struct Failures {
    by_key: HashMap<String, VecDeque<Instant>>,
}

impl Failures {
    fn count(&mut self, key: &str, now: Instant) -> usize {
        let Some(q) = self.by_key.get_mut(key) else { return 0 };
        while q.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            self.by_key.remove(key);
        }
        n
    }

    fn add(&mut self, key: &str, now: Instant, cap: usize) {
        if self.by_key.len() >= MAX_KEYS && !self.by_key.contains_key(key) {
            self.by_key
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= WINDOW));
            if self.by_key.len() >= MAX_KEYS {
                return;
            }
        }
        let q = self.by_key.entry(key.to_string()).or_default();
        q.push_back(now);
        while q.len() > cap {
            q.pop_front();
        }
    }
}

/// Failure counters for IPs and users.
#[derive(Default)]
pub struct Throttle {
    ips: Mutex<Failures>,
    users: Mutex<Failures>,
}

impl Throttle {
    /// Whether this IP or this user has failed too often lately.
    pub fn is_blocked(&self, ip: &str, user: &str) -> bool {
        let now = Instant::now();
        let by_ip = self.ips.lock().unwrap_or_else(|p| p.into_inner()).count(ip, now);
        let by_user = self.users.lock().unwrap_or_else(|p| p.into_inner()).count(user, now);
        by_ip >= MAX_FAILURES_PER_IP || by_user >= MAX_FAILURES_PER_USER
    }

    /// Count one failure for both.
    pub fn record_failure(&self, ip: &str, user: &str) {
        let now = Instant::now();
        self.ips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(ip, now, MAX_FAILURES_PER_IP);
        self.users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(user, now, MAX_FAILURES_PER_USER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_too_many_failures() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES_PER_IP {
            assert!(!t.is_blocked("1.2.3.4", "a@b"));
            t.record_failure("1.2.3.4", "a@b");
        }
        assert!(t.is_blocked("1.2.3.4", "other@b"));
        assert!(t.is_blocked("5.6.7.8", "a@b"));
        assert!(!t.is_blocked("5.6.7.8", "other@b"));
    }
}
