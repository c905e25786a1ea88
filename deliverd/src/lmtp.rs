//! Local delivery over LMTP (RFC 2033) to a Unix socket or a TCP address
//! (`lmtp_address`): LHLO, MAIL FROM, one RCPT TO per local recipient of
//! the job, DATA (dot-stuffed), and then one reply per accepted recipient,
//! each mapped to that recipient's outcome (2xx delivered, 4xx temporary,
//! 5xx permanent). Every read is bounded in size and time.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tambo_ipc::proto::DeliveryOutcome;

use crate::mda::read_at;
use crate::remote::body::DotStuffer;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for each reply to a command (and for the greeting).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for the replies after the final dot (the server is saving).
const DATA_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest reply line accepted.
pub const MAX_LINE: usize = 2048;
/// Most lines in one reply.
pub const MAX_REPLY_LINES: usize = 100;

/// Where the LMTP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpAddress {
    /// A Unix-domain socket path.
    Unix(String),
    /// "host:port" over TCP.
    Tcp(String),
}

/// Errors in `lmtp_address`.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not "unix:/path" nor "host:port".
    #[error("lmtp_address {0:?}: expected \"unix:/path\" or \"host:port\"")]
    Bad(String),
}

impl LmtpAddress {
    /// Parse the configuration value.
    pub fn parse(s: &str) -> Result<LmtpAddress, AddressError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.starts_with('/') {
                return Ok(LmtpAddress::Unix(path.to_string()));
            }
            return Err(AddressError::Bad(s.to_string()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Ok(LmtpAddress::Tcp(s.to_string()))
            }
            _ => Err(AddressError::Bad(s.to_string())),
        }
    }
}

/// One SMTP/LMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn outcome(&self, server: &str) -> DeliveryOutcome {
        let msg = format!("LMTP server {server} said: {} {}", self.code, self.text);
        match self.code {
            200..=299 => DeliveryOutcome::Delivered,
            500..=599 => DeliveryOutcome::PermFail(msg),
            _ => DeliveryOutcome::TempFail(msg),
        }
    }
}

/// A connection-level failure: every recipient without an answer yet
/// fails temporarily with this text.
#[derive(Debug)]
struct Broken(String);

/// The server's answer for one recipient, and the command it answered
/// (empty for the reply after the final dot).
#[derive(Debug, Clone)]
struct Answer {
    command: String,
    reply: Reply,
}

/// Why [`deliver_one`] did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LmtpFailure {
    /// The server refused: its greeting (`command` empty and `greeting`
    /// set), a command, or the message after the final dot (`command`
    /// empty).
    #[error("{code} {text}")]
    Refused {
        /// Whether this is the greeting.
        greeting: bool,
        /// The command refused ("" after the final dot).
        command: String,
        /// The reply code.
        code: u16,
        /// The reply text (lines joined with newlines).
        text: String,
    },
    /// The connection failed, timed out, or the server spoke garbage.
    #[error("{0}")]
    Broken(String),
}

/// The message to send.
pub struct Message<'a> {
    /// Envelope sender; empty for `<>`.
    pub from: &'a str,
    /// Final addresses, in job order.
    pub rcpts: &'a [String],
    /// Header lines added by tambo (CRLF).
    pub header_prefix: &'a [u8],
    /// The data file (read-only).
    pub data: Arc<OwnedFd>,
}

/// Deliver to every recipient in one LMTP transaction; one outcome per
/// recipient, in order.
pub async fn deliver(address: &str, hostname: &str, msg: Message<'_>) -> Vec<DeliveryOutcome> {
    let addr = match LmtpAddress::parse(address) {
        Ok(a) => a,
        Err(e) => return vec![DeliveryOutcome::TempFail(e.to_string()); msg.rcpts.len()],
    };
    let mut outcomes: Vec<Option<Answer>> = vec![None; msg.rcpts.len()];
    let mut refused = None;
    let result = match &addr {
        LmtpAddress::Unix(path) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(s)) => session(s, address, hostname, &msg, &mut outcomes, &mut refused, true).await,
                Ok(Err(e)) => Err(Broken(format!("cannot connect to LMTP server {address}: {e}"))),
                Err(_) => Err(Broken(format!("timed out connecting to LMTP server {address}"))),
            }
        }
        LmtpAddress::Tcp(hp) => match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(hp)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                session(s, address, hostname, &msg, &mut outcomes, &mut refused, true).await
            }
            Ok(Err(e)) => Err(Broken(format!("cannot connect to LMTP server {address}: {e}"))),
            Err(_) => Err(Broken(format!("timed out connecting to LMTP server {address}"))),
        },
    };
    let broken = match result {
        Ok(()) => "LMTP server gave no answer for this recipient".to_string(),
        Err(Broken(e)) => e,
    };
    outcomes
        .into_iter()
        .map(|o| match o {
            Some(a) => a.reply.outcome(address),
            None => DeliveryOutcome::TempFail(broken.clone()),
        })
        .collect()
}

/// Deliver to one recipient over a connected `stream` (`mda-lmtp`):
/// `Ok` once the server accepted the message after the final dot.
pub async fn deliver_one<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    hostname: &str,
    from: &str,
    rcpt: &str,
    data: Arc<OwnedFd>,
) -> Result<(), LmtpFailure> {
    let rcpts = [rcpt.to_string()];
    let msg = Message {
        from,
        rcpts: &rcpts,
        header_prefix: b"",
        data,
    };
    let mut outcomes = vec![None];
    let mut refused = None;
    let result = session(stream, "", hostname, &msg, &mut outcomes, &mut refused, false).await;
    let (answer, greeting) = match (result, refused, outcomes.pop().flatten()) {
        (Err(_), Some(a), _) => {
            let greeting = a.command.is_empty();
            (a, greeting)
        }
        (Err(Broken(why)), None, _) => return Err(LmtpFailure::Broken(why)),
        (Ok(()), _, Some(a)) => (a, false),
        (Ok(()), _, None) => return Err(LmtpFailure::Broken("LMTP server gave no answer".into())),
    };
    match answer.reply.code {
        200..=299 => Ok(()),
        code => Err(LmtpFailure::Refused {
            greeting,
            command: answer.command,
            code,
            text: answer.reply.text,
        }),
    }
}

/// One LMTP transaction on a connected stream: each recipient's answer
/// goes in `outcomes`; a refused greeting or LHLO goes in `refused`
/// (and is also the `Broken` text). `wait_quit`: see [`quit`].
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    server: &str,
    hostname: &str,
    msg: &Message<'_>,
    outcomes: &mut [Option<Answer>],
    refused: &mut Option<Answer>,
    wait_quit: bool,
) -> Result<(), Broken> {
    let (r, w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    let greeting = read_reply(&mut r, COMMAND_TIMEOUT).await?;
    if greeting.code != 220 {
        let why = format!("LMTP server {server} greeted with {} {}", greeting.code, greeting.text);
        *refused = Some(Answer {
            command: String::new(),
            reply: greeting,
        });
        return Err(Broken(why));
    }
    let lhlo_cmd = format!("LHLO {hostname}");
    let lhlo = command(&mut r, &mut w, &lhlo_cmd).await?;
    if lhlo.code != 250 {
        let why = format!("LMTP server {server} refused LHLO: {} {}", lhlo.code, lhlo.text);
        *refused = Some(Answer {
            command: lhlo_cmd,
            reply: lhlo,
        });
        return Err(Broken(why));
    }
    let exts: Vec<String> = lhlo.text.lines().map(|l| l.to_ascii_uppercase()).collect();
    let has = |e: &str| exts.iter().any(|l| l.split_whitespace().next() == Some(e));
    let mut mail = format!("MAIL FROM:<{}>", msg.from);
    if has("8BITMIME") {
        mail.push_str(" BODY=8BITMIME");
    }
    let non_ascii = !msg.from.is_ascii() || msg.rcpts.iter().any(|r| !r.is_ascii());
    if non_ascii && has("SMTPUTF8") {
        mail.push_str(" SMTPUTF8");
    }
    let reply = command(&mut r, &mut w, &mail).await?;
    if reply.code != 250 {
        // The sender is refused: that answer is every recipient's.
        for o in outcomes.iter_mut() {
            *o = Some(Answer {
                command: mail.clone(),
                reply: reply.clone(),
            });
        }
        let _ = quit(&mut r, &mut w, wait_quit).await;
        return Ok(());
    }
    let mut accepted = Vec::new();
    for (i, rcpt) in msg.rcpts.iter().enumerate() {
        let cmd = format!("RCPT TO:<{rcpt}>");
        let reply = command(&mut r, &mut w, &cmd).await?;
        if (200..300).contains(&reply.code) {
            accepted.push(i);
        } else {
            outcomes[i] = Some(Answer { command: cmd, reply });
        }
    }
    if accepted.is_empty() {
        let _ = quit(&mut r, &mut w, wait_quit).await;
        return Ok(());
    }
    let reply = command(&mut r, &mut w, "DATA").await?;
    if reply.code != 354 {
        for &i in &accepted {
            outcomes[i] = Some(Answer {
                command: "DATA".into(),
                reply: reply.clone(),
            });
        }
        let _ = quit(&mut r, &mut w, wait_quit).await;
        return Ok(());
    }
    send_data(&mut w, msg)
        .await
        .map_err(|e| Broken(format!("sending the message to LMTP server {server}: {e}")))?;
    for &i in &accepted {
        let reply = read_reply(&mut r, DATA_TIMEOUT).await?;
        outcomes[i] = Some(Answer {
            command: String::new(),
            reply,
        });
    }
    let all_delivered = outcomes.iter().flatten().all(|a| (200..300).contains(&a.reply.code));
    let _ = quit(&mut r, &mut w, wait_quit || all_delivered).await;
    Ok(())
}

/// QUIT, and its reply when `wait` (deliverd always waits; mda-lmtp waits
/// only after a success, like chasquid's, and otherwise does not keep its
/// caller waiting on a server that has said no).
async fn quit<R, W>(r: &mut BufReader<R>, w: &mut BufWriter<W>, wait: bool) -> Result<(), Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !wait {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            w.write_all(b"QUIT\r\n").await?;
            w.flush().await
        })
        .await;
        return Ok(());
    }
    command(r, w, "QUIT").await.map(|_| ())
}

async fn command<R, W>(r: &mut BufReader<R>, w: &mut BufWriter<W>, line: &str) -> Result<Reply, Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = async {
        w.write_all(line.as_bytes()).await?;
        w.write_all(b"\r\n").await?;
        w.flush().await
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, io).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Broken(format!("LMTP write error: {e}"))),
        Err(_) => return Err(Broken("LMTP write timed out".into())),
    }
    read_reply(r, COMMAND_TIMEOUT).await
}

/// Read one (multi-line) reply, bounded in line length, line count and
/// time. The text of each line (after the code) is joined with newlines.
async fn read_reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>, timeout: Duration) -> Result<Reply, Broken> {
    let read = async {
        let mut text = String::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = read_line(r).await?;
            let bytes = line.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(Broken(format!("malformed LMTP reply line {line:?}")));
            }
            let code: u16 = line[..3].parse().map_err(|_| Broken("bad reply code".into()))?;
            let sep = bytes.get(3).copied();
            let rest = line.get(4..).unwrap_or("");
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(rest);
            match sep {
                Some(b'-') => continue,
                None | Some(b' ') => return Ok(Reply { code, text }),
                Some(_) => return Err(Broken(format!("malformed LMTP reply line {line:?}"))),
            }
        }
        Err(Broken(format!("LMTP reply longer than {MAX_REPLY_LINES} lines")))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(Broken(format!(
            "LMTP server did not answer within {}s",
            timeout.as_secs()
        ))),
    }
}

/// One reply read as a delivery reads it: the code and the text of its
/// lines joined with newlines, or why it was refused (for the fuzz target).
pub async fn read_reply_text<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<(u16, String), String> {
    read_reply(r, COMMAND_TIMEOUT)
        .await
        .map(|reply| (reply.code, reply.text))
        .map_err(|Broken(why)| why)
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Result<String, Broken> {
    let mut line = Vec::new();
    loop {
        let buf = r
            .fill_buf()
            .await
            .map_err(|e| Broken(format!("LMTP read error: {e}")))?;
        if buf.is_empty() {
            return Err(Broken("LMTP server closed the connection".into()));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE {
            return Err(Broken(format!("LMTP reply line longer than {MAX_LINE} bytes")));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
    }
}

async fn send_data<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, msg: &Message<'_>) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::with_capacity(72 * 1024);
    stuffer.push(msg.header_prefix, &mut out);
    let file = std::fs::File::from(msg.data.try_clone()?);
    let mut pos = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, b) = read_at(&file, buf, pos).await?;
        buf = b;
        if n == 0 {
            break;
        }
        pos += n as u64;
        stuffer.push(&buf[..n], &mut out);
        tokio::time::timeout(COMMAND_TIMEOUT, w.write_all(&out))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
        out.clear();
    }
    stuffer.finish(&mut out);
    tokio::time::timeout(COMMAND_TIMEOUT, async {
        w.write_all(&out).await?;
        w.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use tokio::io::AsyncReadExt;

    #[test]
    fn addresses() {
        assert_eq!(
            LmtpAddress::parse("unix:/run/dovecot/lmtp"),
            Ok(LmtpAddress::Unix("/run/dovecot/lmtp".into()))
        );
        assert_eq!(
            LmtpAddress::parse("127.0.0.1:24"),
            Ok(LmtpAddress::Tcp("127.0.0.1:24".into()))
        );
        assert!(LmtpAddress::parse("[::1]:24").is_ok());
        for bad in ["", "unix:relative", "host", "host:0", ":24", "host:x"] {
            assert!(LmtpAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        s.push(b".a\r\nb\r", &mut out);
        s.push(b"\n.", &mut out);
        s.push(b".c\r\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"..a\r\nb\r\n...c\r\n.\r\n");
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        s.push(b"no newline", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"no newline\r\n.\r\n");
    }

    /// A scripted LMTP server on a socket pair: checks what we send and
    /// answers per recipient.
    #[tokio::test]
    async fn per_recipient_replies() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(theirs);
            let mut r = BufReader::new(r);
            w.write_all(b"220 test LMTP\r\n").await.unwrap();
            let mut got = String::new();
            let mut line = String::new();
            let answers: [&[u8]; 6] = [
                b"250-test\r\n250-8BITMIME\r\n250 PIPELINING\r\n",
                b"250 ok\r\n",
                b"250 ok a\r\n",
                b"550 5.1.1 no such user b\r\n",
                b"250 ok c\r\n",
                b"354 go\r\n",
            ];
            for a in answers {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                got.push_str(&line);
                w.write_all(a).await.unwrap();
            }
            let mut data = Vec::new();
            loop {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                data.extend_from_slice(line.as_bytes());
                if line == ".\r\n" {
                    break;
                }
            }
            w.write_all(b"250 2.0.0 saved a\r\n452 4.2.2 over quota c\r\n")
                .await
                .unwrap();
            line.clear();
            r.read_line(&mut line).await.unwrap();
            got.push_str(&line);
            w.write_all(b"221 bye\r\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest).await;
            (got, data)
        });
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"Subject: t\r\n\r\n.dot line\r\nend\r\n").unwrap();
        let rcpts = vec!["a@l".to_string(), "b@l".to_string(), "c@l".to_string()];
        let msg = Message {
            from: "s@x",
            rcpts: &rcpts,
            header_prefix: b"Received: x\r\n",
            data: Arc::new(OwnedFd::from(f)),
        };
        let mut answers = vec![None; 3];
        let mut refused = None;
        session(ours, "test", "mx.test", &msg, &mut answers, &mut refused, true)
            .await
            .unwrap();
        assert!(refused.is_none());
        let outcomes: Vec<Option<DeliveryOutcome>> = answers
            .into_iter()
            .map(|a| a.map(|a| a.reply.outcome("test")))
            .collect();
        let (got, data) = server.await.unwrap();
        assert_eq!(
            got,
            "LHLO mx.test\r\nMAIL FROM:<s@x> BODY=8BITMIME\r\nRCPT TO:<a@l>\r\nRCPT TO:<b@l>\r\nRCPT TO:<c@l>\r\nDATA\r\nQUIT\r\n"
        );
        assert_eq!(
            String::from_utf8(data).unwrap(),
            "Received: x\r\nSubject: t\r\n\r\n..dot line\r\nend\r\n.\r\n"
        );
        assert_eq!(outcomes[0], Some(DeliveryOutcome::Delivered));
        assert!(matches!(&outcomes[1], Some(DeliveryOutcome::PermFail(m)) if m.contains("550 5.1.1")));
        assert!(matches!(&outcomes[2], Some(DeliveryOutcome::TempFail(m)) if m.contains("452 4.2.2")));
    }

    #[tokio::test]
    async fn connection_failures_are_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = format!("unix:{}/none", dir.path().display());
        let rcpts = vec!["a@l".to_string()];
        let f = tempfile::tempfile().unwrap();
        let out = deliver(
            &path,
            "h",
            Message {
                from: "",
                rcpts: &rcpts,
                header_prefix: b"",
                data: Arc::new(OwnedFd::from(f)),
            },
        )
        .await;
        assert!(matches!(&out[0], DeliveryOutcome::TempFail(m) if m.contains("cannot connect")));
    }
}
