//! Dovecot authentication: user lookups through Dovecot's auth-userdb
//! socket and password checks through its auth-client socket.
//!
//! Every exchange has a 5 s deadline, reads are bounded (line length and
//! line count), and any protocol surprise counts as "no".

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Deadline for one whole exchange with Dovecot.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest line accepted from Dovecot.
const MAX_LINE: usize = 16 * 1024;
/// Most lines read in one exchange (handshake included).
const MAX_LINES: usize = 64;

const USERDB_CANDIDATES: &[&str] = &["/run/dovecot/auth-userdb", "/var/run/dovecot/auth-userdb"];
const CLIENT_CANDIDATES: &[&str] = &["/run/dovecot/auth-client", "/var/run/dovecot/auth-client"];

/// Errors talking to Dovecot (logged; the answer is then "no").
#[derive(Debug, thiserror::Error)]
pub enum DovecotError {
    /// No socket path configured and none found at the usual places.
    #[error("no Dovecot {0} socket found (set dovecot_{0}_path)")]
    NoSocket(&'static str),
    /// Connecting, reading or writing failed.
    #[error("Dovecot socket {path}: {err}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        err: std::io::Error,
    },
    /// Dovecot did not answer within the deadline.
    #[error("Dovecot socket {0}: no answer within 5 s")]
    Timeout(PathBuf),
    /// Dovecot said something we do not understand, or too much of it.
    #[error("Dovecot socket {path}: {what}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// Dovecot reported an internal failure (`FAIL` from the userdb).
    #[error("Dovecot socket {0}: lookup failed on Dovecot's side")]
    Failed(PathBuf),
}

/// A Dovecot auth server, reached through its two unix sockets.
#[derive(Debug)]
pub struct Dovecot {
    userdb: String,
    client: String,
    next_id: AtomicU32,
}

impl Dovecot {
    /// Sockets from the configuration; an empty path means auto-detect
    /// (at each request, so Dovecot may start after tambo).
    pub fn new(userdb: &str, client: &str) -> Dovecot {
        Dovecot {
            userdb: userdb.to_string(),
            client: client.to_string(),
            next_id: AtomicU32::new(1),
        }
    }

    fn id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn path(configured: &str, candidates: &[&str], what: &'static str) -> Result<PathBuf, DovecotError> {
        if !configured.is_empty() {
            return Ok(PathBuf::from(configured));
        }
        candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or(DovecotError::NoSocket(what))
    }

    /// Does Dovecot know `address` (user@domain)?
    pub async fn exists(&self, address: &str) -> Result<bool, DovecotError> {
        if !safe(address) {
            return Ok(false);
        }
        let path = Self::path(&self.userdb, USERDB_CANDIDATES, "userdb")?;
        let id = self.id();
        let request = format!("VERSION\t1\t0\nUSER\t{id}\t{address}\tservice=smtp\n");
        let line = exchange(&path, &request, false, |l| {
            let mut f = l.split('\t');
            let (kind, rid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            (matches!(kind, "USER" | "NOTFOUND" | "FAIL") && rid == id.to_string()).then(|| kind.to_string())
        })
        .await?;
        match line.as_str() {
            "USER" => Ok(true),
            "NOTFOUND" => Ok(false),
            _ => Err(DovecotError::Failed(path)),
        }
    }

    /// Does Dovecot accept `password` for `address` (user@domain)?
    pub async fn authenticate(&self, address: &str, password: &str) -> Result<bool, DovecotError> {
        if !safe(address) || password.contains('\0') {
            return Ok(false);
        }
        let path = Self::path(&self.client, CLIENT_CANDIDATES, "client")?;
        let id = self.id();
        let resp = base64::engine::general_purpose::STANDARD.encode(format!("\0{address}\0{password}"));
        let handshake = format!("VERSION\t1\t1\nCPID\t{}\n", std::process::id());
        // The session is over TLS by the time smtpd passes credentials on
        // (smtpd refuses AUTH in clear), hence "secured".
        let auth = format!("AUTH\t{id}\tPLAIN\tservice=smtp\tsecured\tresp={resp}\n");
        let line = exchange(&path, &format!("{handshake}{auth}"), true, |l| {
            let mut f = l.split('\t');
            let (kind, rid) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
            (matches!(kind, "OK" | "FAIL" | "CONT") && rid == id.to_string()).then(|| kind.to_string())
        })
        .await?;
        Ok(line == "OK")
    }
}

/// Nothing Dovecot's tab-separated protocol would misread.
fn safe(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control())
}

/// Connect, send `request`, and read lines until `answer` recognises
/// one. With `wait_done`, the request's AUTH line is understood only after
/// the server's handshake ends with `DONE` (it is sent up front anyway:
/// Dovecot queues it).
async fn exchange<F>(path: &Path, request: &str, wait_done: bool, answer: F) -> Result<String, DovecotError>
where
    F: Fn(&str) -> Option<String>,
{
    let work = async {
        let io = |err| DovecotError::Io {
            path: path.to_path_buf(),
            err,
        };
        let proto = |what: &str| DovecotError::Protocol {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        let stream = UnixStream::connect(path).await.map_err(io)?;
        let (r, mut w) = stream.into_split();
        w.write_all(request.as_bytes()).await.map_err(io)?;
        let mut reader = BufReader::new(r);
        let mut done = !wait_done;
        let mut buf = Vec::new();
        for _ in 0..MAX_LINES {
            buf.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(proto("connection closed before an answer"));
            }
            if buf.last() != Some(&b'\n') {
                return Err(proto("line too long"));
            }
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]);
            let line = line.trim_end_matches('\r');
            if line.starts_with("VERSION\t") {
                if !line.starts_with("VERSION\t1\t") {
                    return Err(proto(&format!("unsupported protocol {line:?}")));
                }
                continue;
            }
            if line == "DONE" {
                done = true;
                continue;
            }
            if done && let Some(a) = answer(line) {
                return Ok(a);
            }
        }
        Err(proto("too many lines without an answer"))
    };
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(DovecotError::Timeout(path.to_path_buf())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake server answering one connection with `reply` after reading
    /// the client's request lines; returns what the client sent.
    fn serve(dir: &Path, name: &str, reply: &'static str) -> (PathBuf, tokio::task::JoinHandle<String>) {
        let path = dir.join(name);
        let l = UnixListener::bind(&path).unwrap();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(reply.as_bytes()).await.unwrap();
            let mut got = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut got))
                .await
                .unwrap_or(Ok(0))
                .unwrap_or(0);
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (path, h)
    }

    #[tokio::test]
    async fn userdb_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (p, h) = serve(dir.path(), "u1", "VERSION\t1\t1\nSPID\t7\nUSER\t1\tcarol@example.com\n");
        let d = Dovecot::new(p.to_str().unwrap(), "");
        assert!(d.exists("carol@example.com").await.unwrap());
        assert!(h.await.unwrap().contains("USER\t1\tcarol@example.com\tservice=smtp\n"));
        let (p, _h) = serve(dir.path(), "u2", "VERSION\t1\t1\nNOTFOUND\t1\n");
        let d = Dovecot::new(p.to_str().unwrap(), "");
        assert!(!d.exists("x@example.com").await.unwrap());
        let (p, _h) = serve(dir.path(), "u3", "VERSION\t1\t1\nFAIL\t1\n");
        let d = Dovecot::new(p.to_str().unwrap(), "");
        assert!(d.exists("x@example.com").await.is_err());
        assert!(!d.exists("a\tb@example.com").await.unwrap());
    }

    #[tokio::test]
    async fn client_answers_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let hs = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nSPID\t1\nCUID\t2\nCOOKIE\tab\nDONE\nOK\t1\tuser=carol\n";
        let (p, h) = serve(dir.path(), "c1", hs);
        let d = Dovecot::new("", p.to_str().unwrap());
        assert!(d.authenticate("carol@example.com", "pw").await.unwrap());
        let sent = h.await.unwrap();
        assert!(
            sent.contains("AUTH\t1\tPLAIN\tservice=smtp\tsecured\tresp=AGNhcm9sQGV4YW1wbGUuY29tAHB3\n"),
            "{sent}"
        );
        let (p, _h) = serve(dir.path(), "c2", "VERSION\t1\t2\nDONE\nFAIL\t1\tuser=carol\n");
        let d = Dovecot::new("", p.to_str().unwrap());
        assert!(!d.authenticate("carol@example.com", "pw").await.unwrap());
        let (p, _h) = serve(dir.path(), "c3", "VERSION\t2\t0\nDONE\n");
        let d = Dovecot::new("", p.to_str().unwrap());
        assert!(d.authenticate("carol@example.com", "pw").await.is_err());
        // A server that never answers: the deadline.
        let (p, _h) = serve(dir.path(), "c4", "VERSION\t1\t2\n");
        let d = Dovecot::new("", p.to_str().unwrap());
        let t = std::time::Instant::now();
        assert!(matches!(
            d.authenticate("carol@example.com", "pw").await,
            Err(DovecotError::Timeout(_)) | Err(DovecotError::Protocol { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(10));
        // A missing socket is an error, not a panic.
        let d = Dovecot::new("", dir.path().join("nope").to_str().unwrap());
        assert!(d.authenticate("carol@example.com", "pw").await.is_err());
    }
}
