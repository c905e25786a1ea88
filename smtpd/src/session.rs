//! One SMTP session, from greeting to QUIT.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tambo_ipc::metrics::{self, Metric};
use tambo_ipc::proto::{
    AuthOutcome, AuthReply, AuthRequest, IncomingEnvelope, ListenerKind, MailLogEvent, QueueReply, QueueRequest,
    RcptVerdict, SecLevel, TlsInfo,
};
use tambo_ipc::worker::mail_log;

use crate::address::{PathError, parse_path_arg};
use crate::backend::{Backend, Settings};
use crate::conn::{Conn, ConnError, LineRead};
use crate::data::{DataDecoder, DataError, Progress};
use crate::emailauth::SpfCheck;
use crate::sasl;

mod bdat;

/// Recipients accepted per transaction at most.
pub const MAX_RCPTS: usize = 100;
/// Errors tolerated per session before it is closed.
pub const MAX_ERRORS: u32 = 10;
/// Flush the decoded body to the data file in pieces of this size.
const WRITE_CHUNK: usize = 64 * 1024;
/// Failed AUTH commands tolerated per session: the last one gets 421.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// Facts about the connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address (after a PROXY header, when there is one).
    pub ip: IpAddr,
    /// The client's port (likewise).
    pub port: u16,
    /// The listener it came in on.
    pub listener: ListenerKind,
}

/// How a command handler wants the session to go on.
enum Next {
    Continue,
    Close,
}

/// The state of one session.
pub struct Session {
    conn: Conn,
    peer: Peer,
    backend: Arc<Backend>,
    settings: Arc<Settings>,
    helo: Option<String>,
    esmtp: bool,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    auth_user: Option<String>,
    tls: Option<TlsInfo>,
    errors: u32,
    /// The TLS configuration when the session started (None: no TLS).
    tls_config: Option<Arc<ServerConfig>>,
    auth_failures: u32,
    /// A BDAT transaction in progress (CHUNKING, `session/bdat.rs`).
    bdat: Option<Box<bdat::Bdat>>,
    /// SPF result of the transaction (unauthenticated sessions).
    spf: Option<SpfCheck>,
}

impl Session {
    /// A session over `conn`.
    pub fn new(conn: Conn, peer: Peer, backend: Arc<Backend>) -> Session {
        let settings = backend.settings();
        Session {
            conn,
            peer,
            backend,
            settings,
            helo: None,
            esmtp: false,
            mail_from: None,
            rcpts: Vec::new(),
            auth_user: None,
            tls: None,
            errors: 0,
            tls_config: None,
            auth_failures: 0,
            bdat: None,
            spf: None,
        }
    }

    /// Run the session to its end.
    pub async fn run(mut self) {
        let limit = Duration::from_secs(self.settings.connection_timeout_secs);
        let ip = self.peer.ip;
        match tokio::time::timeout(limit, self.dialog()).await {
            Ok(Ok(())) => {}
            Ok(Err(ConnError::Timeout)) => {
                self.conn.reply("421 4.4.2 Timeout, closing connection");
                tracing::debug!(%ip, "command timeout");
            }
            Ok(Err(ConnError::Io(e))) => tracing::debug!(%ip, "connection error: {e}"),
            Err(_) => {
                self.conn.reply("421 4.4.2 Connection time limit reached");
                tracing::debug!(%ip, "connection time limit");
            }
        }
        self.conn.close().await;
    }

    async fn dialog(&mut self) -> Result<(), ConnError> {
        self.tls_config = self.backend.tls.config().await;
        // Implicit TLS: the handshake comes before the greeting.
        if self.peer.listener == ListenerKind::SubmissionTls && !self.start_tls().await {
            return Ok(());
        }
        self.conn.reply(&format!("220 {} ESMTP tambo", self.settings.hostname));
        loop {
            let line = match self.conn.read_line().await? {
                LineRead::Line(l) => l,
                LineRead::TooLong => {
                    self.conn.reply("500 5.5.2 Line too long");
                    return Ok(());
                }
                LineRead::Eof => return Ok(()),
            };
            let Ok(line) = String::from_utf8(line) else {
                if self.error("500 5.5.2 Invalid UTF-8 in command") {
                    return Ok(());
                }
                continue;
            };
            let (verb, args) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            metrics::inc(Metric::SmtpCommands, &[("command", command_label(&verb))]);
            let next = match verb.as_str() {
                "EHLO" => self.cmd_helo(&args, true),
                "HELO" => self.cmd_helo(&args, false),
                "MAIL" => self.cmd_mail(&args).await,
                "RCPT" => self.cmd_rcpt(&args).await,
                "DATA" => self.cmd_data(&args).await?,
                "STARTTLS" => self.cmd_starttls(&args).await?,
                "AUTH" => self.cmd_auth(&args).await?,
                "BDAT" => self.cmd_bdat(&args).await?,
                "RSET" => {
                    self.reset();
                    self.conn.reply("250 2.0.0 Ok");
                    Next::Continue
                }
                "NOOP" => {
                    self.conn.reply("250 2.0.0 Ok");
                    Next::Continue
                }
                "HELP" => {
                    self.conn
                        .reply("214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP HELP VRFY QUIT");
                    self.conn.reply("214 2.0.0 See RFC 5321");
                    Next::Continue
                }
                "VRFY" => {
                    self.conn
                        .reply("252 2.5.0 Cannot VRFY user, but will accept the message");
                    Next::Continue
                }
                "EXPN" => self.fail("502 5.5.1 EXPN not supported"),
                "QUIT" => {
                    self.conn.reply("221 2.0.0 Bye");
                    Next::Close
                }
                // Another protocol talking to us (cross-protocol attacks).
                "GET" | "POST" | "PUT" | "HEAD" | "CONNECT" | "OPTIONS" | "DELETE" | "USER" | "PASS" => {
                    metrics::inc(Metric::WrongProtocol, &[("command", command_label(&verb))]);
                    self.protocol_error(&verb, "502 5.7.0 This is an SMTP server");
                    self.conn.reply("502 5.7.0 This is an SMTP server");
                    Next::Close
                }
                _ => {
                    self.protocol_error(&verb, "500 5.5.1 Unknown command");
                    self.fail("500 5.5.1 Unknown command")
                }
            };
            if let Next::Close = next {
                return Ok(());
            }
        }
    }

    /// Count an error and queue its reply; true when the session must end.
    fn error(&mut self, reply: &str) -> bool {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.protocol_error("", "421 4.7.0 Too many errors, bye");
            self.conn.reply("421 4.7.0 Too many errors, bye");
            return true;
        }
        self.conn.reply(reply);
        false
    }

    fn fail(&mut self, reply: &str) -> Next {
        if self.error(reply) { Next::Close } else { Next::Continue }
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
        self.spf = None;
        self.bdat = None;
    }

    fn cmd_helo(&mut self, args: &str, esmtp: bool) -> Next {
        let name = args.trim();
        if name.is_empty() || name.contains(' ') {
            return self.fail("501 5.5.4 Syntax: EHLO hostname");
        }
        self.reset();
        self.helo = Some(name.to_string());
        self.esmtp = esmtp;
        let host = self.settings.hostname.clone();
        if !esmtp {
            self.conn.reply(&format!("250 {host}"));
            return Next::Continue;
        }
        let mut lines = vec![
            host,
            "8BITMIME".to_string(),
            "PIPELINING".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            format!("SIZE {}", self.settings.max_data_size),
        ];
        if self.tls.is_none() && self.tls_config.is_some() {
            lines.push("STARTTLS".to_string());
        }
        if self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        // Last, as chasquid has it: scripts that talk to chasquid read
        // the EHLO reply up to "250 HELP".
        lines.push("HELP".to_string());
        let last = lines.pop().unwrap_or_default();
        for l in lines {
            self.conn.reply(&format!("250-{l}"));
        }
        self.conn.reply(&format!("250 {last}"));
        Next::Continue
    }

    async fn cmd_mail(&mut self, args: &str) -> Next {
        if self.helo.is_none() {
            return self.fail("503 5.5.1 Send HELO/EHLO first");
        }
        if self.mail_from.is_some() {
            return self.fail("503 5.5.1 Sender already specified");
        }
        if self.auth_user.is_none()
            && matches!(
                self.peer.listener,
                ListenerKind::Submission | ListenerKind::SubmissionTls
            )
        {
            return self.fail("530 5.7.0 Authentication required");
        }
        let Some(rest) = strip_keyword(args, "FROM:") else {
            return self.fail("501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let parsed = match parse_path_arg(rest) {
            Ok(p) => p,
            Err(e) => return self.fail(&path_error_reply(&e, "5.1.7")),
        };
        for (name, value) in &parsed.params {
            match (name.as_str(), value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.settings.max_data_size => {
                        return self.fail("552 5.3.4 Message too big");
                    }
                    Ok(_) => {}
                    Err(_) => return self.fail("501 5.5.4 Bad SIZE parameter"),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") || v.eq_ignore_ascii_case("7BIT") => {}
                ("SMTPUTF8", None) | ("AUTH", Some(_)) => {}
                _ => return self.fail("555 5.5.4 Unsupported MAIL parameter"),
            }
        }
        let mail_from = parsed.address.map(|a| a.full()).unwrap_or_default();
        if self.auth_user.is_none() {
            let helo = self.helo.clone().unwrap_or_default();
            let check = self
                .backend
                .emailauth
                .check_spf(self.peer.ip, &helo, &self.settings.hostname, &mail_from)
                .await;
            if let Some(reply) = check.rejection() {
                tracing::info!(ip = %self.peer.ip, from = mail_from, "SPF fail: MAIL FROM refused");
                self.mail_from = Some(mail_from);
                self.rejected(Vec::new(), &reply);
                self.mail_from = None;
                return self.fail(&reply);
            }
            let spf_pass = check.word() == "pass";
            self.spf = Some(check);
            if spf_pass && let Some(reply) = self.incoming_level_check(&mail_from).await {
                self.mail_from = Some(mail_from);
                self.rejected(Vec::new(), &reply);
                self.mail_from = None;
                self.spf = None;
                return self.fail(&reply);
            }
        }
        self.mail_from = Some(mail_from);
        self.conn.reply("250 2.1.0 Ok");
        Next::Continue
    }

    async fn cmd_rcpt(&mut self, args: &str) -> Next {
        if self.mail_from.is_none() {
            return self.fail("503 5.5.1 Need MAIL first");
        }
        if self.bdat.is_some() {
            return self.fail("503 5.5.1 RCPT is not allowed after BDAT");
        }
        let Some(rest) = strip_keyword(args, "TO:") else {
            return self.fail("501 5.5.4 Syntax: RCPT TO:<address>");
        };
        let parsed = match parse_path_arg(rest) {
            Ok(p) => p,
            Err(e) => return self.fail(&path_error_reply(&e, "5.1.3")),
        };
        for (name, _) in &parsed.params {
            if !matches!(name.as_str(), "NOTIFY" | "ORCPT") {
                return self.fail("555 5.5.4 Unsupported RCPT parameter");
            }
        }
        let Some(addr) = parsed.address else {
            return self.fail("501 5.1.3 The null address is not a recipient");
        };
        if self.rcpts.len() >= MAX_RCPTS {
            self.conn.reply("452 4.5.3 Too many recipients");
            return Next::Continue;
        }
        let full = addr.full();
        if self.settings.is_local(&addr.domain) {
            match self.backend.check_recipient(&full).await {
                RcptVerdict::Accept => {}
                RcptVerdict::Unknown => {
                    self.rejected(vec![full], "550 5.1.1 User unknown");
                    return self.fail("550 5.1.1 User unknown");
                }
                RcptVerdict::Refused(r) => {
                    let reply = r.line();
                    self.rejected(vec![full], &reply);
                    return self.fail(&reply);
                }
                RcptVerdict::TempFail(why) => {
                    tracing::warn!("recipient check failed: {why}");
                    self.conn
                        .reply("451 4.4.3 Temporary error checking the recipient, try again later");
                    return Next::Continue;
                }
            }
        } else if self.auth_user.is_none() {
            self.rejected(vec![full], "550 5.7.1 Relaying not allowed");
            return self.fail("550 5.7.1 Relaying not allowed");
        }
        self.rcpts.push(full);
        self.conn.reply("250 2.1.5 Ok");
        Next::Continue
    }

    async fn cmd_data(&mut self, args: &str) -> Result<Next, ConnError> {
        if !args.trim().is_empty() {
            return Ok(self.fail("501 5.5.4 DATA takes no arguments"));
        }
        if self.mail_from.is_none() {
            return Ok(self.fail("503 5.5.1 Need MAIL first"));
        }
        if self.bdat.is_some() {
            return Ok(self.fail("503 5.5.1 DATA is not allowed after BDAT"));
        }
        if self.rcpts.is_empty() {
            return Ok(self.fail("503 5.5.1 Need RCPT first"));
        }
        let (id, fd) = match self.backend.new_message().await {
            Ok(v) => v,
            Err(reply) => {
                self.conn.reply(&reply);
                return Ok(Next::Continue);
            }
        };
        self.conn.reply("354 Go ahead, end with <CRLF>.<CRLF>");
        self.count_transfer();
        let mut file = std::fs::File::from(fd);
        let mut decoder = DataDecoder::new(self.settings.max_data_size);
        let mut out = Vec::with_capacity(WRITE_CHUNK);
        let mut write_error = None;
        loop {
            let chunk = match self.conn.read_chunk().await {
                Ok(c) => c,
                Err(e) => {
                    self.backend.abort(&id).await;
                    return Err(e);
                }
            };
            if chunk.is_empty() {
                self.backend.abort(&id).await;
                return Ok(Next::Close);
            }
            let progress = match decoder.feed(&chunk, &mut out) {
                Ok(p) => p,
                Err(e) => {
                    self.backend.abort(&id).await;
                    let what = match e {
                        DataError::BareCr => "bare CR",
                        DataError::BareLf => "bare LF",
                        DataError::Nul => "NUL byte",
                    };
                    tracing::info!(ip = %self.peer.ip, "DATA with a {what}: closing");
                    let reply = format!("521 5.5.2 Message contains a {what}; lines must end in CRLF");
                    self.rejected(self.rcpts.clone(), &reply);
                    self.conn.reply(&reply);
                    return Ok(Next::Close);
                }
            };
            if out.len() >= WRITE_CHUNK || matches!(progress, Progress::End(_)) {
                if write_error.is_none()
                    && let Err(e) = std::io::Write::write_all(&mut file, &out)
                {
                    write_error = Some(e);
                }
                out.clear();
            }
            if let Progress::End(used) = progress {
                self.conn.unread(&chunk[used..]);
                break;
            }
        }
        if decoder.stored().overflow() {
            self.backend.abort(&id).await;
            self.rejected(self.rcpts.clone(), "552 5.3.4 Message too big");
            self.reset();
            self.conn.reply("552 5.3.4 Message too big");
            return Ok(Next::Continue);
        }
        if decoder.stored().looping(self.settings.max_received_headers) {
            metrics::inc(Metric::LoopsDetected, &[]);
            self.backend.abort(&id).await;
            self.rejected(self.rcpts.clone(), "554 5.4.6 Too many Received headers: mail loop?");
            self.reset();
            self.conn.reply("554 5.4.6 Too many Received headers: mail loop?");
            return Ok(Next::Continue);
        }
        if let Some(e) = write_error {
            tracing::error!("writing the data file: {e}");
            self.backend.abort(&id).await;
            self.reset();
            self.conn.reply(&storing_failed(&e));
            return Ok(Next::Continue);
        }
        self.commit_transaction(id, file, decoder.stored().size()).await
    }

    /// The incoming security-level check (chasquid's "check connection
    /// security level"), for an unauthenticated sender whose SPF passed:
    /// a domain whose mail once reached us over TLS may not come back in
    /// plain text. `Some(reply)` refuses the sender. Only plain-text
    /// sessions are asked about: TLS is the highest incoming level.
    async fn incoming_level_check(&mut self, mail_from: &str) -> Option<String> {
        let (_, domain) = tambo_common::names::split_address(mail_from);
        if domain.is_empty() || self.tls.is_some() {
            return None;
        }
        let req = QueueRequest::IncomingLevel {
            domain: domain.to_string(),
            level: SecLevel::Plain,
        };
        match self.backend.queue_call(req).await {
            Ok((QueueReply::IncomingLevel { allowed: true, .. }, _)) => None,
            Ok((
                QueueReply::IncomingLevel {
                    allowed: false,
                    recorded,
                },
                _,
            )) => {
                tracing::info!(
                    ip = %self.peer.ip,
                    domain,
                    "security level check failed: plain text, {} recorded",
                    recorded.name()
                );
                Some(format!(
                    "550 5.7.3 Security level check failed: mail from {domain} has reached us over TLS \
                     before; use STARTTLS"
                ))
            }
            Ok(_) | Err(()) => Some("451 4.3.0 Cannot check the security level now, try again later".to_string()),
        }
    }

    /// Write a rejection to the mail log.
    /// Count a message transfer (DATA, or a transaction's first BDAT) by
    /// whether it comes over TLS.
    fn count_transfer(&self) {
        let transport = if self.tls.is_some() { "tls" } else { "plain" };
        metrics::inc(Metric::SmtpTransfers, &[("transport", transport)]);
    }

    /// Log a command that is no SMTP, or a session closed for errors
    /// (`verb` empty), for fail2ban.
    fn protocol_error(&self, verb: &str, reply: &str) {
        let command = if verb.is_empty() {
            "session"
        } else {
            command_label(verb)
        };
        mail_log(MailLogEvent::ProtocolError {
            ip: self.peer.ip.to_string(),
            command: command.to_string(),
            reply: reply.to_string(),
        });
    }

    fn rejected(&self, to: Vec<String>, reason: &str) {
        mail_log(MailLogEvent::Rejected {
            ip: self.peer.ip.to_string(),
            from: self.mail_from.clone().unwrap_or_default(),
            to,
            reason: reason.to_string(),
        });
    }

    /// Hand the finished data file to queued and give the client its
    /// answer; shared by DATA and BDAT.
    async fn commit_transaction(&mut self, id: String, file: std::fs::File, data_size: u64) -> Result<Next, ConnError> {
        // SPF, DKIM, DMARC of unauthenticated mail (emailauth.rs).
        let mut auth_headers = String::new();
        let mut arc = tambo_ipc::proto::ArcChain::Unknown;
        if self.auth_user.is_none()
            && let Some(spf) = &self.spf
        {
            let verdict = self
                .backend
                .emailauth
                .check_data(
                    &file,
                    data_size,
                    spf,
                    &self.settings.hostname,
                    self.settings.reject_dmarc_failures,
                )
                .await;
            if let Some(reply) = verdict.reject {
                tracing::info!(ip = %self.peer.ip, "DMARC policy reject: message refused");
                self.backend.abort(&id).await;
                self.rejected(self.rcpts.clone(), &reply);
                self.reset();
                self.conn.reply(&reply);
                return Ok(Next::Continue);
            }
            auth_headers = verdict.headers;
            arc = verdict.arc;
        }
        drop(file);
        let envelope = IncomingEnvelope {
            mail_from: self.mail_from.clone().unwrap_or_default(),
            rcpts: self.rcpts.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            remote_ip: self.peer.ip.to_string(),
            remote_port: self.peer.port,
            auth_user: self.auth_user.clone(),
            tls: self.tls.clone(),
            protocol: self.protocol().to_string(),
            data_size,
            listener: self.peer.listener,
            spf_pass: self.spf.as_ref().map(|s| s.word() == "pass"),
            auth_headers,
            arc,
        };
        let reply = self.backend.commit(&id, envelope).await;
        if !reply.starts_with('2') {
            self.rejected(self.rcpts.clone(), &reply);
        }
        self.conn.reply(&reply);
        self.reset();
        Ok(Next::Continue)
    }

    /// Run the TLS handshake on the connection (STARTTLS or implicit TLS).
    /// Whatever the client sent before it is discarded. False when the
    /// connection is unusable afterwards.
    async fn start_tls(&mut self) -> bool {
        let ip = self.peer.ip;
        let Some(config) = self.tls_config.clone() else {
            tracing::warn!(%ip, "TLS connection but no certificate: closing");
            return false;
        };
        let stream = self.conn.take_stream();
        match crate::tls::accept(config, stream, self.conn.read_timeout).await {
            Ok((stream, info)) => {
                tracing::debug!(%ip, "TLS: {} {}", info.version, info.cipher);
                self.conn.replace_stream(stream);
                let version = match info.version.as_str() {
                    "TLSv1.3" => "TLSv1.3",
                    "TLSv1.2" => "TLSv1.2",
                    _ => "other",
                };
                metrics::inc(Metric::TlsHandshakes, &[("version", version)]);
                self.tls = Some(info);
                true
            }
            Err(e) => {
                tracing::info!(%ip, "TLS handshake failed: {e}");
                false
            }
        }
    }

    async fn cmd_starttls(&mut self, args: &str) -> Result<Next, ConnError> {
        if !args.trim().is_empty() {
            return Ok(self.fail("501 5.5.4 STARTTLS takes no arguments"));
        }
        if self.tls.is_some() {
            return Ok(self.fail("503 5.5.1 TLS already active"));
        }
        if self.tls_config.is_none() {
            return Ok(self.fail("454 4.7.0 TLS not available"));
        }
        self.conn.reply("220 2.0.0 Ready to start TLS");
        self.conn.flush().await?;
        if !self.start_tls().await {
            return Ok(Next::Close);
        }
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.helo = None;
        self.esmtp = false;
        self.reset();
        Ok(Next::Continue)
    }

    /// Queue a reply to a failed AUTH; the last one allowed closes.
    fn auth_failed(&mut self, reply: &str) -> Next {
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            self.conn
                .reply("421 4.7.0 Too many failed authentication attempts, closing");
            return Next::Close;
        }
        self.conn.reply(reply);
        Next::Continue
    }

    /// Send a 334 challenge and read the client's response line. `None`
    /// means the session must end (reply already queued when needed).
    async fn sasl_response(&mut self, challenge: &str) -> Result<Option<String>, ConnError> {
        self.conn.reply(challenge);
        match self.conn.read_line().await? {
            LineRead::Line(l) => Ok(Some(String::from_utf8_lossy(&l).into_owned())),
            LineRead::TooLong => {
                self.conn.reply("500 5.5.2 Line too long");
                Ok(None)
            }
            LineRead::Eof => Ok(None),
        }
    }

    async fn cmd_auth(&mut self, args: &str) -> Result<Next, ConnError> {
        if self.helo.is_none() || !self.esmtp {
            return Ok(self.fail("503 5.5.1 Send EHLO first"));
        }
        if self.tls.is_none() {
            return Ok(self.fail("538 5.7.11 Encryption required for requested authentication mechanism"));
        }
        if self.auth_user.is_some() {
            return Ok(self.fail("503 5.5.1 Already authenticated"));
        }
        if self.mail_from.is_some() {
            return Ok(self.fail("503 5.5.1 AUTH not allowed during a mail transaction"));
        }
        let mut words = args.split_whitespace();
        let (Some(mech), initial, None) = (words.next(), words.next(), words.next()) else {
            return Ok(self.fail("501 5.5.4 Syntax: AUTH mechanism [initial-response]"));
        };
        const CANCEL: &str = "501 5.7.0 Authentication cancelled";
        const BAD: &str = "501 5.5.2 Invalid base64 or SASL data";
        let (login, authzid, password) = match mech.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => r.to_string(),
                    None => match self.sasl_response("334 ").await? {
                        Some(r) => r,
                        None => return Ok(Next::Close),
                    },
                };
                if resp.trim() == "*" {
                    return Ok(self.auth_failed(CANCEL));
                }
                match sasl::decode_base64(&resp).and_then(|raw| sasl::parse_plain(&raw)) {
                    Ok(c) => (c.authcid, c.authzid, c.password),
                    Err(_) => return Ok(self.auth_failed(BAD)),
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r.to_string(),
                    // "Username:"
                    None => match self.sasl_response("334 VXNlcm5hbWU6").await? {
                        Some(r) => r,
                        None => return Ok(Next::Close),
                    },
                };
                if user.trim() == "*" {
                    return Ok(self.auth_failed(CANCEL));
                }
                let Ok(user) = sasl::decode_text(&user) else {
                    return Ok(self.auth_failed(BAD));
                };
                // "Password:"
                let Some(pass) = self.sasl_response("334 UGFzc3dvcmQ6").await? else {
                    return Ok(Next::Close);
                };
                if pass.trim() == "*" {
                    return Ok(self.auth_failed(CANCEL));
                }
                let Ok(pass) = sasl::decode_text(&pass) else {
                    return Ok(self.auth_failed(BAD));
                };
                (user, String::new(), pass)
            }
            _ => return Ok(self.fail("504 5.5.4 Unrecognized authentication mechanism")),
        };
        let (user, domain) = sasl::split_identity(&login);
        if !authzid.is_empty() && sasl::split_identity(&authzid) != (user.clone(), domain.clone()) {
            tracing::info!(ip = %self.peer.ip, "AUTH: authorization identity differs from the login");
            return Ok(self.auth_failed("535 5.7.8 Authorization identity must match the login"));
        }
        let req = AuthRequest::Authenticate {
            user: user.clone(),
            domain: domain.clone(),
            password,
            client_ip: self.peer.ip.to_string(),
        };
        let reply = self.backend.authd.call(req, Vec::new(), AUTHD_WAIT).await;
        let ip = self.peer.ip;
        match reply {
            Ok((AuthReply::Auth(AuthOutcome::Success { identity }), _)) => {
                tracing::info!(%ip, user = %identity, "AUTH succeeded");
                self.auth_user = Some(identity);
                self.conn.reply("235 2.7.0 Authentication successful");
                Ok(Next::Continue)
            }
            Ok((AuthReply::Auth(AuthOutcome::Failure), _)) => {
                tracing::info!(%ip, user = %format!("{user}@{domain}"), "AUTH failed");
                Ok(self.auth_failed("535 5.7.8 Authentication credentials invalid"))
            }
            Ok((AuthReply::Auth(AuthOutcome::Throttled), _)) => {
                tracing::info!(%ip, user = %format!("{user}@{domain}"), "AUTH throttled");
                Ok(self.auth_failed("454 4.7.0 Too many failed attempts, try again later"))
            }
            Ok((AuthReply::Error(e), _)) => {
                tracing::warn!("authd: {e}");
                self.conn.reply("454 4.7.0 Temporary authentication failure");
                Ok(Next::Continue)
            }
            Ok((
                AuthReply::Exists(_)
                | AuthReply::Certificates { .. }
                | AuthReply::Signature(_)
                | AuthReply::DkimSignatures(_)
                | AuthReply::ArcSet { .. }
                | AuthReply::RelayAuth(_),
                _,
            ))
            | Err(_) => {
                if let Err(e) = reply {
                    tracing::warn!("authd: {e}");
                }
                self.conn.reply("454 4.7.0 Temporary authentication failure");
                Ok(Next::Continue)
            }
        }
    }

    /// The protocol name for the Received header (RFC 3848).
    fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

/// The metrics label of a command verb: known verbs as they are, anything
/// else `other` (so clients cannot create series at will).
fn command_label(verb: &str) -> &'static str {
    const KNOWN: [&str; 24] = [
        "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "HELP", "VRFY", "EXPN", "QUIT", "STARTTLS",
        "AUTH", "LHLO", "GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE", "USER", "PASS",
    ];
    KNOWN.iter().find(|k| **k == verb).copied().unwrap_or("other")
}

/// `FROM:<x>` with the keyword matched case-insensitively.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| &args[keyword.len()..])
}

fn path_error_reply(e: &PathError, syntax_code: &str) -> String {
    match e {
        PathError::TooLong => "501 5.1.3 Path too long".to_string(),
        PathError::Domain(d) => format!("501 5.1.2 Bad destination domain: {d}"),
        PathError::Syntax(s) => format!("501 {syntax_code} Bad address syntax: {s}"),
    }
}

/// How long a commit that got no answer waits for queued to be back and
/// say whether it happened.
const COMMIT_RECHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Helpers on the backend replies used by the session.
impl Backend {
    async fn new_message(&self) -> Result<(String, OwnedFd), String> {
        match self.queue_call(QueueRequest::NewMessage).await {
            Ok((QueueReply::MessageSlot { id }, mut fds)) if fds.len() == 1 => Ok((id, fds.remove(0))),
            Ok((QueueReply::Refused(r), _)) => Err(r.line()),
            Ok(_) => Err("451 4.3.0 Internal error, try again later".into()),
            Err(()) => Err("451 4.3.0 Queue unavailable, try again later".into()),
        }
    }

    async fn commit(&self, id: &str, envelope: IncomingEnvelope) -> String {
        match self
            .queue_call(QueueRequest::Commit {
                id: id.to_string(),
                envelope: Box::new(envelope),
            })
            .await
        {
            Ok((QueueReply::Committed { id }, _)) => format!("250 2.0.0 Ok: queued as {id}"),
            Ok((QueueReply::Refused(r), _)) => r.line(),
            Ok(_) | Err(()) => self.was_committed(id).await,
        }
    }

    /// The commit got no answer (queued died while it ran): ask queued,
    /// restarted, whether it happened, rather than a 451 for a message
    /// that may be queued (the client would send it again). The client
    /// waits for the reply to its final dot, up to 10 minutes by RFC 5321;
    /// this waits [`COMMIT_RECHECK_WAIT`] for queued to be back.
    async fn was_committed(&self, id: &str) -> String {
        tracing::warn!(id, "queued did not answer the commit; asking it again once it is back");
        let req = QueueRequest::WasCommitted { id: id.to_string() };
        match self.queued.call(req, Vec::new(), COMMIT_RECHECK_WAIT).await {
            Ok((QueueReply::Committed { id }, _)) => format!("250 2.0.0 Ok: queued as {id}"),
            Ok((QueueReply::Refused(r), _)) => r.line(),
            Ok(_) | Err(_) => "451 4.3.0 Queue unavailable, try again later".into(),
        }
    }

    async fn abort(&self, id: &str) {
        let _ = self.queue_call(QueueRequest::Abort { id: id.to_string() }).await;
    }

    async fn check_recipient(&self, address: &str) -> RcptVerdict {
        match self
            .queue_call(QueueRequest::CheckRecipient {
                address: address.to_string(),
            })
            .await
        {
            Ok((QueueReply::Recipient(v), _)) => v,
            Ok(_) => RcptVerdict::TempFail("unexpected reply from queued".into()),
            Err(()) => RcptVerdict::TempFail("queued unavailable".into()),
        }
    }
}

/// How long AUTH waits for authd when it is restarting.
const AUTHD_WAIT: Duration = Duration::from_secs(5);

/// The reply when the message could not be written to its data file: 452
/// 4.3.1 for a full disk, else 451.
pub(crate) fn storing_failed(e: &std::io::Error) -> String {
    if tambo_common::is_storage_full(e) {
        tambo_common::storage_full_line()
    } else {
        "451 4.3.0 Error storing the message, try again later".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords() {
        assert_eq!(strip_keyword("from:<a@b>", "FROM:"), Some("<a@b>"));
        assert_eq!(strip_keyword("FROM: <a@b>", "FROM:"), Some(" <a@b>"));
        assert_eq!(strip_keyword("FRO", "FROM:"), None);
        assert_eq!(strip_keyword("TO:<x>", "FROM:"), None);
    }

    #[test]
    fn command_labels_are_bounded() {
        assert_eq!(command_label("EHLO"), "EHLO");
        assert_eq!(command_label("XYZZY"), "other");
    }
}
