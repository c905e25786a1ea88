//! Each worker's sandbox: a Landlock ruleset and a seccomp filter,
//! installed by [`install`] right after the privilege drop, while the
//! worker still has one thread and before it reads a byte from a peer.
//! Every thread and child it starts later inherits both.
//!
//! | worker   | seccomp | Landlock (files) | Landlock (TCP) |
//! |----------|---------|------------------|----------------|
//! | smtpd    | [`Profile::Smtpd`]: no execve, no open, IP sockets for DNS | nothing | connect to port 53 only, no bind |
//! | authd    | [`Profile::Authd`]: no execve, no open, Unix sockets only | nothing (its files come as fds) | — |
//! | queued   | [`Profile::Queued`]: no execve, no fork, Unix sockets only | `data_dir/{queue,domaininfo,srs}`, the domains' directories read-only | — |
//! | deliverd | [`Profile::Runner`] (it runs the MDA) | everything but `data_dir` and the secrets, and `data_dir/sts-cache`, `data_dir/deliverd` | — |
//! | hookd    | [`Profile::Runner`] (it runs the hooks and pipe aliases) | everything but `data_dir` and the secrets | — |
//!
//! Every ruleset also scopes signals and abstract Unix sockets to the
//! worker's own domain: a worker cannot signal, or connect to an abstract
//! socket of, a process outside its sandbox.

mod landlock;
pub mod probe;
mod seccomp;
pub mod syscalls;

pub use self::landlock::{FsPlan, PathAccess, TESTED_ABI, everything_but};
pub use self::probe::ALLOWED as PROBE_ALLOWED;
pub use self::seccomp::{LAST_WORDS_MAGIC, Profile, compile as compile_filters};

use crate::proto::WorkerKind;

/// Environment variable carrying the worker's [`FsPlan`].
pub const ENV_FS: &str = "TAMBO_SANDBOX_FS";
/// Environment variable naming the fd of the worker's last-words pipe (see
/// [`LAST_WORDS_MAGIC`]).
pub const ENV_LAST_WORDS_FD: &str = "TAMBO_LAST_WORDS_FD";

/// Errors while installing a sandbox; any of them is fatal for the worker.
#[derive(thiserror::Error, Debug)]
pub enum SandboxError {
    /// The plan in the environment is malformed.
    #[error("sandbox plan: {0}")]
    Plan(String),
    /// Landlock refused the ruleset.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter did not compile or install.
    #[error("seccomp: {0}")]
    Seccomp(String),
}

/// What was installed, for the worker's start-up log line.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The Landlock outcome, e.g. "landlock fully enforced (kernel ABI 7)".
    pub landlock: String,
    /// The seccomp profile.
    pub seccomp: Profile,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sandbox: {}; seccomp {}", self.landlock, self.seccomp.name())
    }
}

/// Install the sandbox of `kind` from the plan in the environment. Must run
/// before the worker starts a thread.
pub fn install(kind: WorkerKind) -> Result<Installed, SandboxError> {
    let plan = match std::env::var(ENV_FS) {
        Ok(text) => FsPlan::decode(&text)?,
        Err(_) => FsPlan::default(),
    };
    let last_words = match std::env::var(ENV_LAST_WORDS_FD) {
        Ok(v) => Some(
            v.parse::<i32>()
                .map_err(|_| SandboxError::Plan(format!("{ENV_LAST_WORDS_FD}={v:?} is not an fd")))?,
        ),
        Err(_) => None,
    };
    if kind == WorkerKind::Deliverd && !plan.all_but.is_empty() {
        let agents = FsPlan {
            allow: Vec::new(),
            all_but: plan.all_but.clone(),
        };
        if let Some(fd) = self::landlock::prepare(kind, &agents)? {
            let _ = AGENT_RULESET.set(fd);
        }
    }
    let status = self::landlock::restrict(kind, &plan)?;
    let seccomp = self::seccomp::install(kind, last_words)?;
    Ok(Installed {
        landlock: self::landlock::describe(&status),
        seccomp,
    })
}

/// The Landlock ruleset of deliverd's delivery agents, built before
/// deliverd's own: the whole file system but `data_dir` and the secret
/// files. deliverd itself may also use `data_dir/sts-cache` and
/// `data_dir/deliverd`; an agent, applying this on top, may not.
static AGENT_RULESET: std::sync::OnceLock<std::os::fd::OwnedFd> = std::sync::OnceLock::new();

/// The delivery agents' ruleset (see [`AGENT_RULESET`]), for the child to
/// apply between fork and exec; `None` outside deliverd or without Landlock.
pub fn agent_ruleset() -> Option<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::AsFd;
    AGENT_RULESET.get().map(|fd| fd.as_fd())
}

/// Read a trapped worker's last words: the number of the system call its
/// filter refused, if it left one. `bytes` is what the pipe held.
pub fn refused_call(bytes: &[u8]) -> Option<u32> {
    let record = bytes.get(..8)?;
    if record[..4] != LAST_WORDS_MAGIC {
        return None;
    }
    Some(u32::from_le_bytes([record[4], record[5], record[6], record[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_words_are_read_back() {
        let mut rec = LAST_WORDS_MAGIC.to_vec();
        rec.extend_from_slice(&59u32.to_le_bytes());
        assert_eq!(refused_call(&rec), Some(59));
        assert_eq!(refused_call(b"SYS\0\x01"), None);
        assert_eq!(refused_call(b"XYZ\0\x01\0\0\0"), None);
        assert_eq!(syscalls::name(libc::SYS_execve), "execve");
    }
}
