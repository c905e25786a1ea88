//! The SMTP client: one session with one server, with bounded replies,
//! timeouts, STARTTLS, PIPELINING, SIZE, 8BITMIME and SMTPUTF8.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};
use tambo_common::domaininfo::SecLevel;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::body::Body;
use super::dane::{DaneVerifier, HostPolicy};
use super::tls::TlsClient;

/// The connection under a session: plain TCP, or TLS after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while switching to TLS.
    Gone,
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr, $gone:expr) => {
        match $self.get_mut() {
            Stream::Plain($s) => $e,
            Stream::Tls($s) => {
                let $s = &mut **$s;
                $e
            }
            Stream::Gone => $gone,
        }
    };
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection gone")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf), Poll::Ready(Err(gone())))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf), Poll::Ready(Err(gone())))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx), Poll::Ready(Ok(())))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

/// Limits and timeouts of a session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// TCP connect timeout.
    pub connect: Duration,
    /// How long to wait for each reply (and for each write).
    pub reply: Duration,
    /// Longest reply line accepted, in bytes.
    pub max_line: usize,
    /// Most lines in one reply.
    pub max_lines: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            connect: Duration::from_secs(30),
            reply: Duration::from_secs(300),
            max_line: 2048,
            max_lines: 100,
        }
    }
}

/// What went wrong in a session. Every one of these is temporary for the
/// message: the next MX, or a later attempt, may do better.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Connecting failed.
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    /// Reading or writing failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// No reply (or write) within the timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server closed the connection.
    #[error("connection closed by the server during {0}")]
    Closed(&'static str),
    /// The reply is longer than allowed or malformed.
    #[error("bad reply to {0}: {1}")]
    BadReply(&'static str, String),
    /// The server refused the session (greeting, EHLO, STARTTLS).
    #[error("{0} refused: {1}")]
    Refused(&'static str, Reply),
    /// TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(String),
    /// TLS is required here (DANE) and could not be had: no plain-text
    /// fallback.
    #[error("{0}")]
    TlsRequired(String),
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Text of each line, after the code.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// One printable line: the code and the text, bounded.
    pub fn summary(&self) -> String {
        let text = self.lines.join(" ");
        let clean: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        format!("{} {}", self.code, clean)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

/// The ESMTP extensions a server announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870), with its limit (0: none given).
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH (RFC 4954): the mechanisms offered, upper case.
    pub auth: Vec<String>,
}

impl Extensions {
    /// Parse the lines of a 250 reply to EHLO (the first is the greeting).
    pub fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => e.auth = words.take(32).map(|m| m.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        e
    }
}

/// The result of a transaction for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// Accepted by the server.
    Accepted,
    /// Refused with this reply (4xx or 5xx).
    Refused(Reply),
}

/// What a transaction should carry.
pub struct Envelope<'a> {
    /// MAIL FROM address as it must be sent ("" for `<>`).
    pub from: &'a str,
    /// RCPT TO addresses as they must be sent.
    pub rcpts: &'a [String],
    /// Add SMTPUTF8 to MAIL FROM.
    pub smtputf8: bool,
}

/// An open session, after EHLO (and STARTTLS when offered).
pub struct Session {
    io: BufReader<Stream>,
    /// The server's host name (MX name), used for TLS and messages.
    pub host: String,
    /// The address connected to.
    pub addr: SocketAddr,
    /// What the server announced (after TLS, when TLS is on).
    pub ext: Extensions,
    /// The security level of the connection.
    pub level: SecLevel,
    /// Why the certificate did not verify, at [`SecLevel::TlsInsecure`].
    pub tls_problem: Option<String>,
    /// The certificate was authenticated by DANE TLSA records.
    pub dane: bool,
    /// Completed transactions on this connection.
    pub transactions: u32,
    limits: SessionLimits,
}

impl Session {
    /// Connect to `addr` (the server `host`), read the greeting, say EHLO
    /// as `helo`, and start TLS when offered and `tls` is given.
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        helo: &str,
        tls: Option<&TlsClient>,
        limits: &SessionLimits,
    ) -> Result<Session, SmtpError> {
        Self::connect_with(addr, host, helo, tls, &HostPolicy::Opportunistic, limits).await
    }

    /// [`Session::connect`] under a DANE policy: when it requires TLS,
    /// a server without STARTTLS or a failed handshake is an error (no
    /// plain text), and with TLSA records the certificate must match them.
    pub async fn connect_with(
        addr: SocketAddr,
        host: &str,
        helo: &str,
        tls: Option<&TlsClient>,
        policy: &HostPolicy,
        limits: &SessionLimits,
    ) -> Result<Session, SmtpError> {
        let tcp = match tokio::time::timeout(limits.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SmtpError::Connect(addr, e.to_string())),
            Err(_) => return Err(SmtpError::Connect(addr, "timed out".into())),
        };
        let _ = tcp.set_nodelay(true);
        let mut s = Session {
            io: BufReader::with_capacity(16 * 1024, Stream::Plain(tcp)),
            host: host.to_string(),
            addr,
            ext: Extensions::default(),
            level: SecLevel::Plain,
            tls_problem: None,
            dane: false,
            transactions: 0,
            limits: limits.clone(),
        };
        let greeting = s.read_reply("greeting").await?;
        if greeting.code != 220 {
            let _ = s.quit().await;
            return Err(SmtpError::Refused("greeting", greeting));
        }
        s.hello(helo).await?;
        if policy.requires_tls() && (tls.is_none() || !s.ext.starttls) {
            let _ = s.quit().await;
            return Err(SmtpError::TlsRequired(format!(
                "{host} does not offer STARTTLS, and its DANE TLSA records require TLS"
            )));
        }
        if let Some(tls) = tls
            && s.ext.starttls
        {
            let r = s.command("STARTTLS\r\n", "STARTTLS").await?;
            if r.code != 220 {
                return Err(SmtpError::Refused("STARTTLS", r));
            }
            // Anything buffered past the 220 was sent before TLS and must
            // not be taken as coming from inside it (STARTTLS injection).
            if !s.io.buffer().is_empty() {
                return Err(SmtpError::BadReply("STARTTLS", "data after the 220 reply".into()));
            }
            let Stream::Plain(tcp) = std::mem::replace(&mut s.io, BufReader::new(Stream::Gone)).into_inner() else {
                return Err(SmtpError::Tls("STARTTLS on a connection that is not plain TCP".into()));
            };
            let name = host.trim_end_matches('.');
            let verifier = match policy {
                HostPolicy::Dane(check) => Some(Arc::new(DaneVerifier::new(check.clone(), tls.provider()))),
                _ => None,
            };
            let handshake = async {
                match &verifier {
                    Some(v) => {
                        let stream = tls.handshake_with(tcp, name, v.clone()).await?;
                        Ok((stream, SecLevel::TlsSecure, None))
                    }
                    None => tls.handshake(tcp, name).await,
                }
            };
            let (stream, level, problem) = match tokio::time::timeout(limits.reply, handshake).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) if policy.requires_tls() => {
                    let why = verifier.and_then(|v| v.refusal()).unwrap_or_else(|| e.to_string());
                    return Err(SmtpError::TlsRequired(format!(
                        "TLS handshake (required by DANE): {why}"
                    )));
                }
                Ok(Err(e)) => return Err(SmtpError::Tls(e.to_string())),
                Err(_) => return Err(SmtpError::Timeout("the TLS handshake")),
            };
            s.io = BufReader::with_capacity(16 * 1024, Stream::Tls(Box::new(stream)));
            s.level = level;
            s.tls_problem = problem;
            s.dane = policy.is_dane();
            s.hello(helo).await?;
        }
        Ok(s)
    }

    /// The TLS version and cipher suite negotiated, once TLS is on.
    pub fn tls_parameters(&self) -> Option<(rustls::ProtocolVersion, rustls::CipherSuite)> {
        match self.io.get_ref() {
            Stream::Tls(t) => {
                let (_, conn) = t.get_ref();
                Some((conn.protocol_version()?, conn.negotiated_cipher_suite()?.suite()))
            }
            _ => None,
        }
    }

    async fn hello(&mut self, helo: &str) -> Result<(), SmtpError> {
        let r = self.command(&format!("EHLO {helo}\r\n"), "EHLO").await?;
        if r.is_positive() {
            self.ext = Extensions::parse(&r);
            return Ok(());
        }
        // An old server: HELO, without any extension.
        let r = self.command(&format!("HELO {helo}\r\n"), "HELO").await?;
        if !r.is_positive() {
            return Err(SmtpError::Refused("HELO", r));
        }
        self.ext = Extensions::default();
        Ok(())
    }

    /// `AUTH PLAIN` with the base64 initial response `response` (RFC
    /// 4954, 4616). The credentials are never logged.
    pub async fn auth_plain(&mut self, response: &str) -> Result<(), SmtpError> {
        let r = self.command(&format!("AUTH PLAIN {response}\r\n"), "AUTH").await?;
        if r.code == 235 {
            Ok(())
        } else {
            Err(SmtpError::Refused("AUTH", r))
        }
    }

    /// Send a command and read its reply.
    pub async fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, SmtpError> {
        self.write(line.as_bytes(), what).await?;
        self.read_reply(what).await
    }

    async fn write(&mut self, bytes: &[u8], what: &'static str) -> Result<(), SmtpError> {
        let io = self.io.get_mut();
        let fut = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(self.limits.reply, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SmtpError::Io(what, e)),
            Err(_) => Err(SmtpError::Timeout(what)),
        }
    }

    /// Read one (possibly multi-line) reply, bounded in size and time.
    pub async fn read_reply(&mut self, what: &'static str) -> Result<Reply, SmtpError> {
        let limits = self.limits.clone();
        match tokio::time::timeout(limits.reply, read_reply(&mut self.io, &limits, what)).await {
            Ok(r) => r,
            Err(_) => Err(SmtpError::Timeout(what)),
        }
    }

    /// RSET, to check that a pooled connection still works.
    pub async fn reset(&mut self) -> Result<(), SmtpError> {
        let r = self.command("RSET\r\n", "RSET").await?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(SmtpError::Refused("RSET", r))
        }
    }

    /// QUIT, politely and briefly.
    pub async fn quit(mut self) -> Result<(), SmtpError> {
        self.limits.reply = self.limits.reply.min(Duration::from_secs(5));
        let _ = self.command("QUIT\r\n", "QUIT").await;
        let _ = self.io.get_mut().shutdown().await;
        Ok(())
    }

    /// One mail transaction. Returns one result per recipient (in order)
    /// and whether the session may be used again.
    pub async fn send(&mut self, env: &Envelope<'_>, body: &Body) -> Result<Vec<RcptResult>, SmtpError> {
        let mut mail = format!("MAIL FROM:<{}>", env.from);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.size()));
        }
        if body.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && self.ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let mut results: Vec<RcptResult> = Vec::with_capacity(env.rcpts.len());
        let data_reply;
        if self.ext.pipelining {
            let mut batch = mail;
            for r in env.rcpts {
                batch.push_str(&format!("RCPT TO:<{r}>\r\n"));
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes(), "MAIL FROM").await?;
            let mail_reply = self.read_reply("MAIL FROM").await?;
            for _ in env.rcpts {
                let r = self.read_reply("RCPT TO").await?;
                results.push(if r.is_positive() && mail_reply.is_positive() {
                    RcptResult::Accepted
                } else if mail_reply.is_positive() {
                    RcptResult::Refused(r)
                } else {
                    RcptResult::Refused(mail_reply.clone())
                });
            }
            data_reply = self.read_reply("DATA").await?;
            let any = results.contains(&RcptResult::Accepted);
            if data_reply.code == 354 && !any {
                // The server wants data it will not deliver: end it empty.
                self.write(b".\r\n", "end of data").await?;
                let _ = self.read_reply("end of data").await?;
                self.reset().await?;
                return Ok(results);
            }
            if !any {
                self.reset().await?;
                return Ok(results);
            }
        } else {
            let mail_reply = self.command(&mail, "MAIL FROM").await?;
            if !mail_reply.is_positive() {
                self.reset().await?;
                return Ok(env
                    .rcpts
                    .iter()
                    .map(|_| RcptResult::Refused(mail_reply.clone()))
                    .collect());
            }
            for r in env.rcpts {
                let reply = self.command(&format!("RCPT TO:<{r}>\r\n"), "RCPT TO").await?;
                results.push(if reply.is_positive() {
                    RcptResult::Accepted
                } else {
                    RcptResult::Refused(reply)
                });
            }
            if !results.contains(&RcptResult::Accepted) {
                self.reset().await?;
                return Ok(results);
            }
            data_reply = self.command("DATA\r\n", "DATA").await?;
        }
        if data_reply.code != 354 {
            for r in results.iter_mut() {
                if *r == RcptResult::Accepted {
                    *r = RcptResult::Refused(data_reply.clone());
                }
            }
            self.reset().await?;
            return Ok(results);
        }
        self.send_body(body).await?;
        let final_reply = self.read_reply("end of data").await?;
        if !final_reply.is_positive() {
            for r in results.iter_mut() {
                if *r == RcptResult::Accepted {
                    *r = RcptResult::Refused(final_reply.clone());
                }
            }
        }
        self.transactions += 1;
        Ok(results)
    }

    async fn send_body(&mut self, body: &Body) -> Result<(), SmtpError> {
        let mut stuffer = super::body::DotStuffer::default();
        let mut pos = 0u64;
        let mut out = Vec::with_capacity(80 * 1024);
        stuffer.push(&body.prefix, &mut out);
        loop {
            let chunk = body
                .read_chunk(pos, 64 * 1024)
                .await
                .map_err(|e| SmtpError::Io("reading the message", e))?;
            if chunk.is_empty() {
                break;
            }
            pos += chunk.len() as u64;
            stuffer.push(&chunk, &mut out);
            if out.len() >= 64 * 1024 {
                self.write(&out, "DATA").await?;
                out.clear();
            }
        }
        stuffer.finish(&mut out);
        self.write(&out, "DATA").await
    }
}

/// Read one reply from `r`, enforcing the line and line-count limits.
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    limits: &SessionLimits,
    what: &'static str,
) -> Result<Reply, SmtpError> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        if lines.len() >= limits.max_lines {
            return Err(SmtpError::BadReply(
                what,
                format!("more than {} lines", limits.max_lines),
            ));
        }
        let mut line = Vec::new();
        loop {
            let buf = r.fill_buf().await.map_err(|e| SmtpError::Io(what, e))?;
            if buf.is_empty() {
                return Err(SmtpError::Closed(what));
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&buf[..i]);
                    r.consume(i + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    line.extend_from_slice(buf);
                    r.consume(n);
                }
            }
            if line.len() > limits.max_line {
                return Err(SmtpError::BadReply(
                    what,
                    format!("a line longer than {} bytes", limits.max_line),
                ));
            }
        }
        if line.len() > limits.max_line {
            return Err(SmtpError::BadReply(
                what,
                format!("a line longer than {} bytes", limits.max_line),
            ));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(&line);
        let (c, rest) = parse_line(&text)
            .ok_or_else(|| SmtpError::BadReply(what, format!("{:?}", text.chars().take(80).collect::<String>())))?;
        if code != 0 && c != code {
            return Err(SmtpError::BadReply(what, format!("code changed from {code} to {c}")));
        }
        code = c;
        let last = !rest.starts_with('-');
        lines.push(rest.get(1..).unwrap_or("").to_string());
        if last {
            return Ok(Reply { code, lines });
        }
    }
}

/// Split "250-text" / "250 text" / "250" into the code and the rest
/// (starting with the separator).
fn parse_line(line: &str) -> Option<(u16, &str)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return None;
    }
    let rest = &line[3..];
    if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('-')) {
        return None;
    }
    Some((line[..3].parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(input: &[u8]) -> Result<Reply, SmtpError> {
        let mut r = BufReader::new(input);
        read_reply(&mut r, &SessionLimits::default(), "test").await
    }

    #[tokio::test]
    async fn replies() {
        let r = parse(b"250-mx.test hi\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.eight_bit_mime && !e.smtputf8 && !e.starttls);
        assert_eq!(e.size, Some(1000));
        assert!(e.auth.is_empty());
        let r = parse(b"250-mx.test\r\n250-AUTH login Plain\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        assert_eq!(Extensions::parse(&r).auth, vec!["LOGIN", "PLAIN"]);
        assert_eq!(parse(b"354\r\n").await.unwrap().code, 354);
        assert!(matches!(
            parse(b"250-a\r\n251 b\r\n").await,
            Err(SmtpError::BadReply(..))
        ));
        assert!(matches!(parse(b"hello\r\n").await, Err(SmtpError::BadReply(..))));
        assert!(matches!(parse(b"250-a\r\n").await, Err(SmtpError::Closed(_))));
        let long = vec![b'x'; 100_000];
        assert!(matches!(parse(&long).await, Err(SmtpError::BadReply(..))));
        let many = b"250-x\r\n".repeat(1000);
        assert!(matches!(parse(&many).await, Err(SmtpError::BadReply(..))));
    }
}
