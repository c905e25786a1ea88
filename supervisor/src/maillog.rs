//! The mail log (`mail_log_path`): one line per event, owned by the
//! supervisor. Workers send their events over the control channel
//! ([`tambo_ipc::proto::WorkerMsg::MailLog`]) because after dropping
//! privileges (and, for smtpd, chroot) they can reach neither `/dev/log`
//! nor the log file.
//!
//! Targets: `<syslog>` (datagrams to `/dev/log`, RFC 3164 format, facility
//! mail, as syslog(3) sends them), `<stdout>`, `<stderr>`, or a file,
//! appended to and reopened on SIGHUP so logrotate can move it away.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// tambod's stderr as it was started, before `--logfile` took fd 2.
static ORIGINAL_STDERR: std::sync::OnceLock<File> = std::sync::OnceLock::new();

/// Keep a duplicate of fd 2 as it is now (once): the `<stderr>` mail log
/// writes there.
pub fn keep_original_stderr() {
    if ORIGINAL_STDERR.get().is_some() {
        return;
    }
    if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
        let _ = ORIGINAL_STDERR.set(File::from(fd));
    }
}

/// Write a mail-log line to tambod's original stderr.
fn write_stderr(text: &str) -> std::io::Result<()> {
    match ORIGINAL_STDERR.get() {
        Some(mut f) => f.write_all(text.as_bytes()),
        None => std::io::stderr().lock().write_all(text.as_bytes()),
    }
}

/// Where syslog listens.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// Facility mail (2) × 8 + severity info (6).
const SYSLOG_PRI: u32 = 2 * 8 + 6;
/// Longest line sent to syslog (the usual datagram limit is larger, but
/// syslog daemons truncate around here).
const SYSLOG_MAX: usize = 8 * 1024;

enum Target {
    Syslog { socket: UnixDatagram, path: PathBuf },
    Stdout,
    Stderr,
    File(File),
}

/// The open mail log.
pub struct MailLog {
    spec: String,
    target: Target,
    /// Lines that could not be written (syslog down or busy, disk full).
    pub lost: u64,
    warned: bool,
}

fn open_file(path: &Path) -> Result<File, String> {
    // As chasquid: the log's directory is created when missing.
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("mail log {}: cannot create its directory: {e}", path.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("mail log {}: {e}", path.display()))
}

fn open_target(spec: &str, syslog_path: &Path) -> Result<Target, String> {
    Ok(match spec {
        "" | "<syslog>" => {
            let socket = UnixDatagram::unbound().map_err(|e| format!("mail log: syslog socket: {e}"))?;
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("mail log: syslog socket: {e}"))?;
            Target::Syslog {
                socket,
                path: syslog_path.to_path_buf(),
            }
        }
        "<stdout>" => Target::Stdout,
        "<stderr>" => Target::Stderr,
        path => Target::File(open_file(Path::new(path))?),
    })
}

impl MailLog {
    /// Open the mail log named by `mail_log_path`. A file that cannot be
    /// opened is an error (tambod does not start without its log).
    pub fn open(spec: &str) -> Result<MailLog, String> {
        Self::open_with_syslog(spec, Path::new(SYSLOG_SOCKET))
    }

    /// Like [`open`](Self::open) with another syslog socket (tests).
    pub fn open_with_syslog(spec: &str, syslog_path: &Path) -> Result<MailLog, String> {
        Ok(MailLog {
            spec: spec.to_string(),
            target: open_target(spec, syslog_path)?,
            lost: 0,
            warned: false,
        })
    }

    /// On SIGHUP: reopen the file (logrotate moved it), or switch to a new
    /// `mail_log_path`. On error the old target stays.
    pub fn reopen(&mut self, spec: &str) {
        let syslog_path = match &self.target {
            Target::Syslog { path, .. } => path.clone(),
            _ => PathBuf::from(SYSLOG_SOCKET),
        };
        match open_target(spec, &syslog_path) {
            Ok(t) => {
                self.target = t;
                self.spec = spec.to_string();
                self.warned = false;
            }
            Err(e) => tracing::error!("{e}; keeping the mail log {}", self.spec),
        }
    }

    /// Write one line.
    pub fn write(&mut self, line: &str) {
        let res = match &mut self.target {
            Target::Syslog { socket, path } => {
                let mut msg = format!(
                    "<{SYSLOG_PRI}>{} tambo[{}]: {line}",
                    timestamp_3164(),
                    std::process::id()
                );
                if msg.len() > SYSLOG_MAX {
                    let mut cut = SYSLOG_MAX;
                    while !msg.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    msg.truncate(cut);
                }
                socket.send_to(msg.as_bytes(), &*path).map(|_| ())
            }
            Target::Stdout => writeln!(std::io::stdout().lock(), "{} {line}", timestamp_iso()),
            Target::Stderr => write_stderr(&format!("{} {line}\n", timestamp_iso())),
            Target::File(file) => file.write_all(format!("{} {line}\n", timestamp_iso()).as_bytes()),
        };
        if let Err(e) = res {
            self.lost += 1;
            if !self.warned {
                self.warned = true;
                tracing::warn!("mail log {}: {e}; lost lines go to this log", self.spec);
            }
            tracing::info!("maillog: {line}");
        }
    }
}

fn local_tm() -> (libc::tm, u32) {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    // SAFETY: gettimeofday with a valid out-pointer and no timezone.
    unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) };
    // SAFETY: tm is plain data; localtime_r fills it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time_t and a tm.
    unsafe { libc::localtime_r(&tv.tv_sec, &mut tm) };
    (tm, tv.tv_usec as u32)
}

/// `Mmm dd hh:mm:ss`, local time (RFC 3164).
fn timestamp_3164() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (tm, _) = local_tm();
    format!(
        "{} {:2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `YYYY-MM-DD hh:mm:ss.uuuuuu`, local time.
fn timestamp_iso() -> String {
    let (tm, usec) = local_tm();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{usec:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("log");
        let server = UnixDatagram::bind(&sock).unwrap();
        let mut log = MailLog::open_with_syslog("<syslog>", &sock).unwrap();
        log.write("abc from=a@b queued ip=192.0.2.1 to=[x@y]");
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(msg.starts_with("<22>"), "{msg}");
        assert!(
            msg.ends_with(&format!(
                "tambo[{}]: abc from=a@b queued ip=192.0.2.1 to=[x@y]",
                std::process::id()
            )),
            "{msg}"
        );
        assert_eq!(log.lost, 0);
        // syslog gone: the line is counted as lost, nothing panics.
        drop(server);
        std::fs::remove_file(&sock).unwrap();
        log.write("second");
        assert_eq!(log.lost, 1);
    }

    #[test]
    fn missing_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".logs/sub/mail_log");
        let mut log = MailLog::open(path.to_str().unwrap()).unwrap();
        log.write("one");
        assert!(std::fs::read_to_string(&path).unwrap().contains("one"));
    }

    #[test]
    fn file_reopened_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let spec = path.to_str().unwrap();
        let mut log = MailLog::open(spec).unwrap();
        log.write("one");
        std::fs::rename(&path, dir.path().join("mail.log.1")).unwrap();
        log.write("two");
        log.reopen(spec);
        log.write("three");
        let old = std::fs::read_to_string(dir.path().join("mail.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains(" one\n") && old.contains(" two\n"), "{old}");
        assert!(new.ends_with(" three\n") && !new.contains("two"), "{new}");
        // A missing directory is created, as chasquid does; one that
        // cannot be is an error.
        let nested = dir.path().join("a/b/mail.log");
        MailLog::open(nested.to_str().unwrap()).unwrap();
        assert!(nested.exists());
        // A directory that cannot be created: the error names the file.
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let under_file = file.join("dir/mail.log");
        let err = MailLog::open(under_file.to_str().unwrap()).err().unwrap();
        assert!(err.contains("a-file/dir/mail.log"), "{err}");
    }
}
