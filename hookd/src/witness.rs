//! A witness of one program's run that outlives the runner.
//!
//! deliverd can be killed while a delivery agent runs. The agent (in a
//! process group of its own) goes on and delivers, but its exit status
//! would reach nobody, and the restarted deliverd would deliver again. With
//! a [`Witness`], the runner's child forks once more: the grandchild
//! becomes the program, and the child stays as its watcher. The watcher
//! appends two records to a log file: `start` plus its own pid when the
//! program starts, and `end` plus the raw wait status when it ends. Then
//! it exits as the program did, so the runner sees the program's status
//! as before. A restarted deliverd reads the log to learn what its
//! predecessor's agents did (see `tambo_deliverd::agent_log`).
//!
//! The watcher also feeds the program its message (from the data file),
//! so a runner killed half-way does not leave the program with a cut-off
//! message, which it would deliver as if it were whole.
//!
//! The watcher runs between fork and exec of a multi-threaded process, so
//! it only makes async-signal-safe calls (pipe2, fork, dup2, close, prctl,
//! pread, write, waitpid, kill, _exit) and allocates nothing.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

/// Where and what the watcher writes.
#[derive(Clone)]
pub struct Witness {
    /// The log, opened with `O_APPEND` (each record is one `write(2)`).
    pub log: Arc<std::fs::File>,
    /// The start record up to the pid, e.g. `S <token> <id> <index> `.
    pub start: Vec<u8>,
    /// The end record up to the status, e.g. `E <token> `.
    pub end: Vec<u8>,
}

/// What the watcher writes to the program's stdin: `prefix`, then `data`
/// from offset 0, as they are. The watcher feeds the program, not the
/// runner, so that a runner that dies half-way does not leave the program
/// with half a message that it would take for the whole one.
pub(crate) struct Feed {
    pub(crate) prefix: Vec<u8>,
    pub(crate) data: std::fs::File,
}

/// The watcher's process name (`/proc/PID/comm`), NUL-terminated.
pub const WATCHER_NAME: &[u8; 14] = b"tambo-watcher\0";

/// The longest record the watcher writes.
const RECORD_MAX: usize = 256;

impl Witness {
    /// Install the watcher on `cmd` (it must run in a process group of its
    /// own, so that a timeout kills the watcher and the program together,
    /// and with stdin from /dev/null when there is a `feed`).
    pub(crate) fn install(&self, cmd: &mut tokio::process::Command, feed: Option<Feed>) {
        let log = self.log.clone();
        let start = self.start.clone();
        let end = self.end.clone();
        // SAFETY: the closure runs in the child between fork and exec and
        // makes only async-signal-safe calls on memory it does not free.
        // The files it captures stay open (their fd numbers valid) as long
        // as `cmd`.
        unsafe {
            cmd.pre_exec(move || {
                let feed = feed.as_ref().map(|f| (f.data.as_raw_fd(), &f.prefix[..]));
                watch(log.as_raw_fd(), &start, &end, feed)
            });
        }
    }
}

/// In the forked child: fork again; the grandchild returns (and goes on to
/// exec the program, its stdin a pipe from us when there is a feed); this
/// process feeds and watches it and never returns.
unsafe fn watch(log: RawFd, start: &[u8], end: &[u8], feed: Option<(RawFd, &[u8])>) -> std::io::Result<()> {
    // SAFETY: fork in a single-threaded child; the rest is plain syscalls
    // on descriptors and buffers this process owns.
    unsafe {
        let mut pipe = [-1; 2];
        if feed.is_some() && libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // dup2 clears close-on-exec on the copy; both ends close at exec.
            if feed.is_some() && libc::dup2(pipe[0], 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            return Ok(());
        }
        // The program's stdio and every other inherited descriptor (the
        // runner's pipes, the standard library's exec-error pipe, the
        // worker's sockets) but the log, the data and the feeding pipe: the
        // runner must see EOF when the program ends, and peers must not
        // find a dead worker's channels kept open.
        let mut keep = [log, feed.map_or(-1, |f| f.0), pipe[1]];
        keep.sort_unstable();
        for fd in 0..3 {
            libc::close(fd);
        }
        let mut from = 3;
        for fd in keep {
            if fd >= from {
                if fd > from {
                    libc::syscall(libc::SYS_close_range, from as u32, (fd - 1) as u32, 0u32);
                }
                from = fd + 1;
            }
        }
        libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32);
        // Our name, by which a restarted runner tells us from a process
        // that reused our pid.
        libc::prctl(libc::PR_SET_NAME, WATCHER_NAME.as_ptr());
        // A program that exits without reading everything must not kill us.
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        record(log, start, libc::getpid() as i64);
        if let Some((data, prefix)) = feed {
            copy(data, prefix, pipe[1]);
            libc::close(pipe[1]);
        }
        let mut status = 0;
        let status = loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break status;
            }
            if *libc::__errno_location() != libc::EINTR {
                // Cannot happen for our own child; report "killed".
                break libc::SIGKILL;
            }
        };
        record(log, end, status as i64);
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig)
    }
}

/// Write `prefix`, then `data` from offset 0, to `out`; stop at the first
/// error (a program that stopped reading).
unsafe fn copy(data: RawFd, prefix: &[u8], out: RawFd) {
    // SAFETY: reads and writes of buffers this process owns.
    unsafe {
        if !write_all(out, prefix) {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        let mut off: libc::off_t = 0;
        loop {
            let n = libc::pread(data, buf.as_mut_ptr().cast(), buf.len(), off);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 || !write_all(out, &buf[..n as usize]) {
                return;
            }
            off += n as libc::off_t;
        }
    }
}

/// write(2) until all of `bytes` is written; false on an error.
unsafe fn write_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: a write of a buffer we own.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            // SAFETY: reading errno.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

/// Append `prefix`, the decimal `n` and a newline, in one write.
fn record(log: RawFd, prefix: &[u8], n: i64) {
    let mut buf = [0u8; RECORD_MAX];
    let mut digits = [0u8; 24];
    let text = decimal(n, &mut digits);
    let len = prefix.len() + text.len() + 1;
    if len > RECORD_MAX {
        return;
    }
    buf[..prefix.len()].copy_from_slice(prefix);
    buf[prefix.len()..len - 1].copy_from_slice(text);
    buf[len - 1] = b'\n';
    // SAFETY: write(2) of a buffer we own.
    unsafe {
        libc::write(log, buf.as_ptr().cast(), len);
    }
}

/// `n` in decimal, in `out`, without allocating.
fn decimal(n: i64, out: &mut [u8; 24]) -> &[u8] {
    let mut v = n.unsigned_abs();
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        out[i] = b'-';
    }
    &out[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        let mut b = [0u8; 24];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(19200, &mut b), b"19200");
        assert_eq!(decimal(-3, &mut b), b"-3");
        assert_eq!(decimal(i64::MIN, &mut b), b"-9223372036854775808");
    }
}
