//! Starting one worker: fork+exec its binary with exactly two inherited fds
//! (the control socket as fd 3, the write end of its last-words pipe as
//! fd 4), the ids it must switch to and its sandbox plan.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tambo_ipc::privdrop::{ENV_CHROOT, ENV_GID, ENV_UID};
use tambo_ipc::proto::WorkerKind;
use tambo_ipc::sandbox::{ENV_FS, ENV_LAST_WORDS_FD, FsPlan};
use tambo_ipc::sync_chan::SyncChannel;
use tambo_ipc::worker::{ENV_CONTROL_FD, ENV_LOG};

/// The identity a worker runs as, when tambod runs as root.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User name (for messages).
    pub user: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric gid (the user's primary group).
    pub gid: u32,
}

/// How to start workers.
#[derive(Debug, Clone)]
pub struct SpawnPlan {
    /// Directory holding `tambo-smtpd` and the others.
    pub workers_dir: PathBuf,
    /// Per worker identity; empty in unprivileged mode.
    pub identities: Vec<(WorkerKind, Identity)>,
    /// smtpd's empty chroot directory (privileged mode only).
    pub smtpd_chroot: Option<PathBuf>,
    /// Log filter passed to workers.
    pub log_filter: String,
    /// Niceness added to deliverd's (`delivery_nice`); its threads and the
    /// delivery agents it runs inherit it.
    pub delivery_nice: i32,
}

/// The binary name of a worker.
pub fn binary_name(kind: WorkerKind) -> String {
    format!("tambo-{}", kind.name())
}

/// Find the worker binaries: the explicit directory, else next to this
/// executable, else `/usr/lib/tambo`.
pub fn find_workers_dir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let probe = binary_name(WorkerKind::Smtpd);
    if let Some(dir) = explicit {
        return if dir.join(&probe).is_file() {
            Ok(dir.to_path_buf())
        } else {
            Err(format!("{}: no {probe} there", dir.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.to_path_buf());
    }
    candidates.push(PathBuf::from("/usr/lib/tambo"));
    for dir in &candidates {
        if dir.join(&probe).is_file() {
            return Ok(dir.clone());
        }
    }
    Err(format!(
        "cannot find the worker binaries ({probe}) in {}; use --workers_dir",
        candidates
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// A started worker and the supervisor's end of its control channel.
pub struct Started {
    /// The child process.
    pub child: Child,
    /// The control channel, handshake done.
    pub control: SyncChannel,
    /// The read end of its last-words pipe (non-blocking): what its
    /// seccomp reporter wrote before it died.
    pub last_words: std::fs::File,
}

impl Started {
    /// The system call the worker's seccomp filter refused, if that is
    /// what killed it.
    pub fn refused_call(&mut self) -> Option<u32> {
        use std::io::Read;
        let mut buf = [0u8; 16];
        let n = self.last_words.read(&mut buf).ok()?;
        tambo_ipc::sandbox::refused_call(&buf[..n])
    }
}

/// `fd` moved to a number above 4, so that placing the two inherited fds
/// at 3 and 4 in the child cannot overwrite one with the other.
fn above_four(fd: OwnedFd) -> Result<OwnedFd, String> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 5) };
    if new < 0 {
        return Err(format!("fcntl(F_DUPFD): {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `new` is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// fork+exec one worker and complete the control handshake.
pub fn spawn(kind: WorkerKind, plan: &SpawnPlan, fs: &FsPlan) -> Result<Started, String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let theirs = above_four(OwnedFd::from(theirs))?;
    let (words_read, words_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| format!("pipe: {e}"))?;
    let words_write = above_four(words_write)?;
    let path = plan.workers_dir.join(binary_name(kind));
    let mut cmd = Command::new(&path);
    cmd.arg0(format!("tambo: {}", kind.name()));
    cmd.env_clear();
    cmd.env(ENV_CONTROL_FD, "3");
    cmd.env(ENV_LOG, &plan.log_filter);
    cmd.env(ENV_FS, fs.encode().map_err(|e| format!("{}: {e}", kind.name()))?);
    cmd.env(ENV_LAST_WORDS_FD, "4");
    cmd.env(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    if let Some((_, id)) = plan.identities.iter().find(|(k, _)| *k == kind) {
        cmd.env(ENV_UID, id.uid.to_string());
        cmd.env(ENV_GID, id.gid.to_string());
        if kind == WorkerKind::Smtpd
            && let Some(dir) = &plan.smtpd_chroot
        {
            cmd.env(ENV_CHROOT, dir);
        }
    }
    // Where the system's trusted roots are, as Go programs (chasquid) and
    // OpenSSL read it: deliverd checks outgoing TLS against them.
    if kind == WorkerKind::Deliverd {
        for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
    }
    cmd.stdin(Stdio::null());
    let child_fd = theirs.as_raw_fd();
    let words_fd = words_write.as_raw_fd();
    let nice = if kind == WorkerKind::Deliverd {
        plan.delivery_nice
    } else {
        0
    };
    // SAFETY: only async-signal-safe calls (dup2, sigprocmask, nice) run
    // between fork and exec. Both fds are above 4 (above_four), so the
    // dup2 calls neither collide nor find them already in place.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(child_fd, 3) < 0 || libc::dup2(words_fd, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // The child has one thread here; the worker's threads and
            // children inherit its niceness. Raising it cannot fail for
            // lack of privilege (it stops at 19), so the result is not
            // checked (-1 is also a valid niceness).
            if nice != 0 {
                libc::nice(nice);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
    drop(theirs);
    drop(words_write);
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| format!("control socket: {e}"))?;
    let mut control = SyncChannel::new(ours);
    if let Err(e) = control.handshake(tambo_ipc::proto::CONTROL_CHANNEL) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{}: control handshake failed: {e}", kind.name()));
    }
    Ok(Started {
        child,
        control,
        last_words: std::fs::File::from(words_read),
    })
}

/// A fresh socket pair for a peer channel: (client end, server end).
pub fn peer_pair() -> Result<(OwnedFd, OwnedFd), String> {
    let (a, b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    Ok((OwnedFd::from(a), OwnedFd::from(b)))
}
