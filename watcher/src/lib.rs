//! `tambo-watcher`: a witness of one program's run that outlives the
//! runner.
//!
//! deliverd can be killed while a delivery agent runs. The agent (in a
//! process group of its own) goes on and delivers, but its exit status
//! would reach nobody, and the restarted deliverd would deliver again. With
//! a [`Witness`], the runner starts `tambo-watcher` (a small program of its
//! own, next to the runner's executable) instead of the program; the
//! watcher starts the program, feeds it the message from the data file (a
//! runner killed half-way cannot leave the program with a cut-off message
//! it would deliver as whole), and appends two records to a log file:
//! `start` plus its own pid when the program starts, `end` plus the raw
//! wait status when it ends. Then it exits as the program did, so the
//! runner sees the program's status as before. A restarted deliverd reads
//! the log to learn what its predecessor's agents did (see
//! `tambo_deliverd::agent_log`).
//!
//! The runner hands the watcher what it needs over a Unix socket on its
//! stdin ([`Handover`]): the log, the data file and a Landlock ruleset as
//! file descriptors, the records' prefixes and the header lines as bytes.
//! Nothing needs code between fork and exec, so both the runner's and the
//! watcher's spawns take the C library's fast `posix_spawn` path (a fork of
//! the big worker per delivery, as a first version did, halved local
//! delivery throughput).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

/// The watcher's program name, also its process name (`/proc/PID/comm`),
/// by which a restarted runner tells a watcher from a process that reused
/// its pid.
pub const WATCHER_NAME: &str = "tambo-watcher";

/// Where and what the watcher writes.
#[derive(Clone)]
pub struct Witness {
    /// The watcher program (`tambo-watcher`).
    pub program: PathBuf,
    /// The log, opened with `O_APPEND` (each record is one `write(2)`).
    pub log: Arc<std::fs::File>,
    /// The start record up to the pid, e.g. `S <token> <id> <index> `.
    pub start: Vec<u8>,
    /// The end record up to the status, e.g. `E <token> `.
    pub end: Vec<u8>,
}

/// The largest handover the watcher accepts (header lines included).
pub const HANDOVER_MAX: usize = 1024 * 1024;

/// What the runner sends the watcher: three byte strings (each a 4-byte
/// little-endian length, then the bytes) and, with the first byte, the
/// descriptors: log, data, and optionally a Landlock ruleset.
pub struct Handover {
    /// The start record's prefix.
    pub start: Vec<u8>,
    /// The end record's prefix.
    pub end: Vec<u8>,
    /// Written to the program before the data file.
    pub prefix: Vec<u8>,
    /// The log.
    pub log: OwnedFd,
    /// The data file, read from offset 0.
    pub data: OwnedFd,
    /// A Landlock ruleset the watcher (and so the program) restricts
    /// itself with.
    pub confine: Option<OwnedFd>,
}

impl Witness {
    /// Send the handover to the watcher over `sock` (the other end is its
    /// stdin), then close it.
    pub fn hand_over(
        &self,
        mut sock: UnixStream,
        prefix: &[u8],
        data: BorrowedFd<'_>,
        confine: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(12 + self.start.len() + self.end.len() + prefix.len());
        for part in [&self.start[..], &self.end[..], prefix] {
            bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        let mut fds = vec![self.log.as_raw_fd(), data.as_raw_fd()];
        fds.extend(confine.map(|c| c.as_raw_fd()));
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(&bytes)];
        let sent =
            nix::sys::socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, nix::sys::socket::MsgFlags::empty(), None)
                .map_err(std::io::Error::from)?;
        sock.write_all(&bytes[sent..])?;
        Ok(())
    }
}

impl Handover {
    /// Receive the handover on `sock` (the watcher's stdin).
    pub fn receive(sock: BorrowedFd<'_>) -> std::io::Result<Handover> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("handover: {why}"));
        let mut first = vec![0u8; 64 * 1024];
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (n, fds) = {
            let mut iov = [std::io::IoSliceMut::new(&mut first)];
            let msg = nix::sys::socket::recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: descriptors just received are ours alone.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        };
        first.truncate(n);
        // The rest, to EOF (the runner closes after sending).
        let dup = sock.try_clone_to_owned()?;
        let mut rest = std::fs::File::from(dup);
        (&mut rest)
            .take((HANDOVER_MAX - first.len()) as u64 + 1)
            .read_to_end(&mut first)?;
        if first.len() > HANDOVER_MAX {
            return Err(bad("too large"));
        }
        let mut parts = Vec::with_capacity(3);
        let mut at = 0usize;
        for _ in 0..3 {
            let len = first.get(at..at + 4).ok_or_else(|| bad("cut off"))?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let part = first.get(at + 4..at + 4 + len).ok_or_else(|| bad("cut off"))?;
            parts.push(part.to_vec());
            at += 4 + len;
        }
        if at != first.len() {
            return Err(bad("trailing bytes"));
        }
        let mut fds = fds.into_iter();
        let (Some(log), Some(data)) = (fds.next(), fds.next()) else {
            return Err(bad("descriptors missing"));
        };
        let confine = fds.next();
        let prefix = parts.pop().unwrap_or_default();
        let end = parts.pop().unwrap_or_default();
        let start = parts.pop().unwrap_or_default();
        Ok(Handover {
            start,
            end,
            prefix,
            log,
            data,
            confine,
        })
    }
}

/// Append `prefix`, the decimal `n` and a newline to `log`, in one write.
pub fn record(log: BorrowedFd<'_>, prefix: &[u8], n: i64) -> std::io::Result<()> {
    let mut line = prefix.to_vec();
    line.extend_from_slice(n.to_string().as_bytes());
    line.push(b'\n');
    let written = nix::unistd::write(log, &line).map_err(std::io::Error::from)?;
    if written != line.len() {
        return Err(std::io::Error::other("agent log: short write"));
    }
    Ok(())
}

/// Restrict this process (and what it starts) with the Landlock ruleset
/// `ruleset` (`no_new_privs` is set already: the runner's sandbox set it).
pub fn restrict_self(ruleset: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: a system call on a descriptor we hold.
    if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Write `prefix`, then `data` from offset 0, to `out`; stops at the first
/// error (a program that stopped reading).
pub fn feed(out: &mut impl Write, prefix: &[u8], data: impl AsFd) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    out.write_all(prefix)?;
    let data = std::fs::File::from(data.as_fd().try_clone_to_owned()?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = data.read_at(&mut buf, off)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        off += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    #[test]
    fn a_handover_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.path().join("log"))
            .unwrap();
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(b"body\r\n").unwrap();
        data.rewind().unwrap();
        let w = Witness {
            program: PathBuf::from("/nonexistent"),
            log: Arc::new(log),
            start: b"S 1 Id 0 ".to_vec(),
            end: b"E 1 ".to_vec(),
        };
        let (a, b) = UnixStream::pair().unwrap();
        let prefix = vec![b'h'; 200_000];
        let sender = {
            let w = w.clone();
            let prefix = prefix.clone();
            let data = data.try_clone().unwrap();
            std::thread::spawn(move || w.hand_over(a, &prefix, data.as_fd(), None).unwrap())
        };
        let got = Handover::receive(b.as_fd()).unwrap();
        sender.join().unwrap();
        assert_eq!((&got.start[..], &got.end[..]), (&b"S 1 Id 0 "[..], &b"E 1 "[..]));
        assert_eq!(got.prefix, prefix);
        assert!(got.confine.is_none());
        record(got.log.as_fd(), &got.start, 42).unwrap();
        assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), b"S 1 Id 0 42\n");
        let mut out = Vec::new();
        feed(&mut out, b"P: 1\r\n", &got.data).unwrap();
        assert_eq!(out, b"P: 1\r\nbody\r\n");
    }

    #[test]
    fn a_cut_off_handover_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[9, 0, 0, 0, b'x']).unwrap();
        drop(a);
        assert!(Handover::receive(b.as_fd()).is_err());
    }
}
