//! The seccomp half of a worker's sandbox: one allowlist per worker,
//! compiled to BPF with `seccompiler` and installed on the (still single)
//! thread that every later thread and child inherits it from.
//!
//! A call outside the list traps (SIGSYS). The handler, installed just
//! before the filter, writes the call's number to the supervisor's
//! last-words pipe and a line naming it to stderr, and then dies of SIGSYS.
//! smtpd's and authd's filters refuse `rt_sigaction(SIGSYS, …)`, so code
//! that has taken over the worker cannot replace the handler and carry on
//! (blocking SIGSYS does not help: a blocked forced signal kills). A
//! runner's children must be free to set their own handlers (Go programs
//! such as chasquid's mda-lmtp set one for every signal), and a refused
//! call is never executed whatever its handler does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use super::SandboxError;
use super::syscalls;
use crate::proto::WorkerKind;

/// What a worker may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// smtpd: network I/O on the sockets it was handed and DNS; no
    /// `execve`, no `open`, no new Unix sockets, no ptrace.
    Smtpd,
    /// authd: its fds and Unix sockets (Dovecot) only: no IP socket at all.
    Authd,
    /// queued: its fds and the files of its queue (opened, written,
    /// synced, renamed, removed); no `execve`, no `fork`, no IP socket.
    Queued,
    /// A worker that runs operator programs (hookd's hooks and pipe
    /// aliases, deliverd's MDA), which inherit its filter: every call the
    /// kernel knows except those that reach across process or system
    /// boundaries (ptrace, process_vm_*, bpf, modules, mounts, keyrings,
    /// namespaces, clocks, reboot…).
    Runner,
}

impl Profile {
    /// The profile of a worker.
    pub fn of(kind: WorkerKind) -> Profile {
        match kind {
            WorkerKind::Smtpd => Profile::Smtpd,
            WorkerKind::Authd => Profile::Authd,
            WorkerKind::Queued => Profile::Queued,
            WorkerKind::Deliverd | WorkerKind::Hookd => Profile::Runner,
        }
    }

    /// Short name, for the start-up log line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smtpd => "smtpd allowlist",
            Profile::Authd => "authd allowlist",
            Profile::Queued => "queued allowlist",
            Profile::Runner => "runner allowlist",
        }
    }
}

/// What a Rust worker on tokio calls whatever its job: memory, threads,
/// futexes, epoll, time, randomness, reading and writing the fds it has,
/// fd passing over its Unix sockets, and dying.
const BASE: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "lseek",
    "close",
    "fstat",
    "newfstatat",
    "statx",
    "fcntl",
    "dup",
    "dup3",
    "pipe2",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "futex",
    "set_robust_list",
    "rseq",
    "sched_yield",
    "sched_getaffinity",
    "getpid",
    "gettid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getresuid",
    "getresgid",
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "getrandom",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd2",
    "ppoll",
    "recvmsg",
    "sendmsg",
    "recvfrom",
    "sendto",
    "shutdown",
    "getsockopt",
    "setsockopt",
    "getsockname",
    "getpeername",
    "uname",
    "getrlimit",
    "prlimit64",
    "restart_syscall",
    "set_tid_address",
    "socketpair",
    "openat",
    "openat2",
    "exit",
    "exit_group",
];

/// The x86_64-only spellings of calls in [`BASE`] (aarch64 has only the
/// newer ones).
#[cfg(target_arch = "x86_64")]
const BASE_X86_64: &[&str] = &["poll", "epoll_wait", "arch_prctl", "open"];
#[cfg(not(target_arch = "x86_64"))]
const BASE_X86_64: &[&str] = &[];

/// smtpd on top of [`BASE`]: accepting, and DNS over UDP and TCP.
const SMTPD: &[&str] = &["accept4", "connect", "bind", "listen"];

/// authd on top of [`BASE`]: connecting to Dovecot's auth sockets.
const AUTHD: &[&str] = &["connect"];

/// queued on top of [`BASE`]: keeping its queue on disk (the journal,
/// the data files, domaininfo, the SRS secret, chasquid's items to
/// import) and reading the aliases files. Checked against what strace saw
/// queued call through the queue, crash, control, import, sendmail, SRS
/// and drop-in tests.
const QUEUED: &[&str] = &[
    "fsync",
    "fdatasync",
    "syncfs",
    "sync_file_range",
    "fallocate",
    "ftruncate",
    "truncate",
    "flock",
    "getdents64",
    "renameat",
    "renameat2",
    "unlinkat",
    "mkdirat",
    "linkat",
    "readlinkat",
    "faccessat",
    "faccessat2",
    "fchmod",
    "fchmodat",
    "fchown",
    "utimensat",
    "fstatfs",
    "statfs",
    "getcwd",
    "fadvise64",
    "copy_file_range",
    "sendfile",
];

/// The x86_64-only spellings of calls in [`QUEUED`].
#[cfg(target_arch = "x86_64")]
const QUEUED_X86_64: &[&str] = &[
    "rename", "unlink", "mkdir", "rmdir", "link", "readlink", "access", "stat", "lstat", "chmod",
];
#[cfg(not(target_arch = "x86_64"))]
const QUEUED_X86_64: &[&str] = &[];

/// What a [`Profile::Runner`] may never call.
const RUNNER_DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "add_key",
    "request_key",
    "keyctl",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "vhangup",
    "iopl",
    "ioperm",
    "fanotify_init",
];

/// The worker the handler reports for, and the last-words fd (-1: none).
static LAST_WORDS_FD: AtomicI32 = AtomicI32::new(-1);
static WORKER_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The name of the worker whose filter this process installed (`worker`
/// before that).
pub fn worker_name() -> &'static str {
    WORKER_NAME.get().copied().unwrap_or("worker")
}

/// The record a trapped worker leaves on its last-words pipe: this magic,
/// then the call's number as a little-endian u32. The supervisor reads it
/// when it reaps the worker.
pub const LAST_WORDS_MAGIC: [u8; 4] = *b"SYS\0";

/// Install the SIGSYS reporter and the profile's filter on this thread.
/// Must run before the worker starts any thread.
pub fn install(kind: WorkerKind, last_words_fd: Option<i32>) -> Result<Profile, SandboxError> {
    let profile = Profile::of(kind);
    let _ = WORKER_NAME.set(kind.name());
    if let Some(fd) = last_words_fd {
        LAST_WORDS_FD.store(fd, Ordering::Relaxed);
    }
    // A worker killed by its filter leaves no core: authd's would hold keys.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(SandboxError::Seccomp(format!(
            "setrlimit(RLIMIT_CORE): {}",
            std::io::Error::last_os_error()
        )));
    }
    install_reporter()?;
    for program in compile(profile)? {
        seccompiler::apply_filter(&program).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    Ok(profile)
}

/// The BPF programs of `profile` for this machine's architecture, in the
/// order they are installed. The kernel runs every installed program and
/// takes the strictest answer, which is how one list can allow, another
/// refuse with an errno, and the default trap:
/// - smtpd and authd: their allowlist (default: trap); `clone3` answered
///   ENOSYS (glibc then creates threads with `clone`, whose flags the
///   allowlist can check); and every `open` answered EACCES: they open no
///   file after start-up (Landlock would refuse it too), and a library
///   that tries (to read a cgroup limit, say) gets an error, not a kill;
/// - a runner: the refused calls trap, every other call the kernel knows
///   is allowed, and a number it does not know gets ENOSYS, as on an older
///   kernel (programs it runs probe new calls and fall back on ENOSYS).
pub fn compile(profile: Profile) -> Result<Vec<BpfProgram>, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let filters = match profile {
        Profile::Runner => vec![
            (refused_by_runner()?, SeccompAction::Allow, SeccompAction::Trap),
            (known_calls(), enosys, SeccompAction::Allow),
        ],
        // queued opens files (Landlock decides which).
        Profile::Queued => vec![
            (any_args(&[nr("clone3")?]), SeccompAction::Allow, enosys),
            (allowlist(profile)?, SeccompAction::Trap, SeccompAction::Allow),
        ],
        // The allowlist last: installing a filter needs calls (prctl,
        // seccomp) that it does not allow.
        Profile::Smtpd | Profile::Authd => vec![
            (any_args(&[nr("clone3")?]), SeccompAction::Allow, enosys),
            (
                opens()?,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EACCES as u32),
            ),
            (allowlist(profile)?, SeccompAction::Trap, SeccompAction::Allow),
        ],
    };
    filters
        .into_iter()
        .map(|(rules, mismatch, matched)| {
            let filter =
                SeccompFilter::new(rules, mismatch, matched, arch).map_err(|e| SandboxError::Seccomp(e.to_string()))?;
            filter
                .try_into()
                .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))
        })
        .collect()
}

type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

fn any_args(calls: &[i64]) -> RuleMap {
    calls.iter().map(|c| (*c, Vec::new())).collect()
}

/// The calls that open a path (refused with EACCES in smtpd and authd).
fn opens() -> Result<RuleMap, SandboxError> {
    let mut names = vec!["openat", "openat2"];
    if cfg!(target_arch = "x86_64") {
        names.extend(["open", "creat"]);
    }
    Ok(any_args(&names.into_iter().map(nr).collect::<Result<Vec<_>, _>>()?))
}

fn known_calls() -> RuleMap {
    syscalls::ALL.iter().map(|(_, nr)| (*nr, Vec::new())).collect()
}

fn refused_by_runner() -> Result<RuleMap, SandboxError> {
    Ok(any_args(
        &RUNNER_DENIED.iter().map(|n| nr(n)).collect::<Result<Vec<_>, _>>()?,
    ))
}

fn nr(name: &str) -> Result<i64, SandboxError> {
    syscalls::number(name).ok_or_else(|| SandboxError::Seccomp(format!("unknown system call {name}")))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conds).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The allowlist of smtpd, authd or queued: call number → the argument
/// rules one of which must match (an empty list: any arguments).
fn allowlist(profile: Profile) -> Result<RuleMap, SandboxError> {
    let extra: &[&[&str]] = match profile {
        Profile::Smtpd => &[SMTPD],
        Profile::Authd => &[AUTHD],
        Profile::Queued => &[QUEUED, QUEUED_X86_64],
        Profile::Runner => return Err(SandboxError::Seccomp("a runner has no allowlist".into())),
    };
    let mut map = RuleMap::new();
    for name in BASE
        .iter()
        .chain(BASE_X86_64)
        .chain(extra.iter().flat_map(|l| l.iter()))
    {
        map.insert(nr(name)?, Vec::new());
    }
    // Answered by the other two filters (ENOSYS, EACCES): the strictest
    // answer wins, and a trap here would beat theirs.
    map.insert(nr("clone3")?, Vec::new());
    map.extend(opens()?);
    map.insert(nr("socket")?, socket_rules(profile)?);
    map.insert(nr("ioctl")?, ioctl_rules()?);
    map.insert(nr("prctl")?, prctl_rules()?);
    map.insert(nr("clone")?, clone_rules()?);
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    map.insert(nr("tgkill")?, vec![rule(vec![cond(0, SeccompCmpOp::Eq, pid)?])?]);
    // Any handler but the reporter's.
    map.insert(
        nr("rt_sigaction")?,
        vec![rule(vec![cond(0, SeccompCmpOp::Ne, libc::SIGSYS as u64)?])?],
    );
    Ok(map)
}

/// smtpd makes IP sockets (DNS); authd only Unix ones (Dovecot), and
/// queued likewise (it makes none today).
fn socket_rules(profile: Profile) -> Result<Vec<SeccompRule>, SandboxError> {
    let domains: &[i32] = match profile {
        Profile::Smtpd => &[libc::AF_INET, libc::AF_INET6],
        _ => &[libc::AF_UNIX],
    };
    domains
        .iter()
        .map(|d| rule(vec![cond(0, SeccompCmpOp::Eq, *d as u64)?]))
        .collect()
}

/// Only the fd-flag and readiness ioctls tokio and std use.
fn ioctl_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::FIONREAD]
        .iter()
        .map(|req| rule(vec![cond(1, SeccompCmpOp::Eq, *req)?]))
        .collect()
}

/// Naming threads, and reading (never raising) the privilege state.
fn prctl_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_GET_NO_NEW_PRIVS,
        libc::PR_GET_DUMPABLE,
        libc::PR_CAPBSET_READ,
    ]
    .iter()
    .map(|op| rule(vec![cond(0, SeccompCmpOp::Eq, *op as u64)?]))
    .collect()
}

/// New threads only: `clone` with CLONE_THREAD. (clone3 passes its flags
/// in memory, out of the filter's sight, and is not allowed: glibc then
/// falls back to clone.)
fn clone_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    let thread = libc::CLONE_THREAD as u64;
    Ok(vec![rule(vec![cond(0, SeccompCmpOp::MaskedEq(thread), thread)?])?])
}

/// Install the SIGSYS handler (once for the whole process).
fn install_reporter() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler
    // only makes async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SandboxError::Seccomp(format!(
                "sigaction(SIGSYS): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// The number of the trapped call, from the SIGSYS siginfo: its union
/// starts at byte 16 on 64-bit targets, and the `_sigsys` member there is
/// `void *_call_addr; int _syscall; unsigned _arch`.
///
/// # Safety
/// `info` must point at the siginfo the kernel passed for a SIGSYS.
#[cfg(target_pointer_width = "64")]
unsafe fn trapped_call(info: *const libc::siginfo_t) -> i32 {
    // SAFETY: the kernel's siginfo is 128 bytes; this reads inside it.
    unsafe { std::ptr::read_unaligned((info as *const u8).add(16 + 8) as *const i32) }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: called by the kernel for SIGSYS with SA_SIGINFO.
    let call = unsafe { trapped_call(info) };
    let fd = LAST_WORDS_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let mut record = [0u8; 8];
        record[..4].copy_from_slice(&LAST_WORDS_MAGIC);
        record[4..].copy_from_slice(&(call as u32).to_le_bytes());
        // SAFETY: write(2) of a local buffer; async-signal-safe.
        unsafe { libc::write(fd, record.as_ptr().cast(), record.len()) };
    }
    let mut line = LineBuf::default();
    line.push(b"tambo-");
    line.push(worker_name().as_bytes());
    line.push(b": seccomp refused system call ");
    line.push_number(call as u32);
    line.push(b" (");
    line.push(syscalls::name(call as i64).as_bytes());
    line.push(b"); the worker dies\n");
    // SAFETY: write(2) to stderr and re-raising the (now default) signal
    // are async-signal-safe.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), libc::SIGSYS);
        libc::_exit(128 + libc::SIGSYS);
    }
}

/// A fixed buffer for the handler's line (no allocation in a handler).
struct LineBuf {
    buf: [u8; 160],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        LineBuf { buf: [0; 160], len: 0 }
    }
}

impl LineBuf {
    fn push(&mut self, bytes: &[u8]) {
        for b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = *b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_compiles() {
        for (p, n) in [
            (Profile::Smtpd, 3),
            (Profile::Authd, 3),
            (Profile::Queued, 2),
            (Profile::Runner, 2),
        ] {
            assert_eq!(compile(p).unwrap().len(), n, "{p:?}");
        }
    }

    #[test]
    fn runner_refuses_ptrace_and_knows_execve() {
        let refused = refused_by_runner().unwrap();
        assert!(refused.contains_key(&libc::SYS_ptrace));
        assert!(!refused.contains_key(&libc::SYS_execve));
        assert!(known_calls().contains_key(&libc::SYS_execve));
    }

    #[test]
    fn smtpd_has_no_open_exec_or_ptrace() {
        let map = allowlist(Profile::Smtpd).unwrap();
        for call in [libc::SYS_execve, libc::SYS_ptrace, libc::SYS_execveat, libc::SYS_kill] {
            assert!(!map.contains_key(&call), "{}", syscalls::name(call));
        }
        assert!(opens().unwrap().contains_key(&libc::SYS_openat));
    }

    #[test]
    fn queued_keeps_files_but_runs_nothing() {
        let map = allowlist(Profile::Queued).unwrap();
        for call in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_connect,
        ] {
            assert!(!map.contains_key(&call), "{}", syscalls::name(call));
        }
        for call in [
            libc::SYS_fsync,
            libc::SYS_renameat2,
            libc::SYS_openat,
            libc::SYS_unlinkat,
        ] {
            assert!(map.contains_key(&call), "{}", syscalls::name(call));
        }
    }

    #[test]
    fn line_buffer_formats_numbers() {
        let mut l = LineBuf::default();
        l.push_number(0);
        l.push(b" ");
        l.push_number(4_294_967_295);
        assert_eq!(&l.buf[..l.len], b"0 4294967295");
    }
}
