//! A scripted SMTP server on loopback for the remote-delivery tests
//! (remote_delivery, mta_sts, dane): it offers the extensions and STARTTLS
//! it is given, answers RCPT TO from a script, can misbehave (stay silent,
//! send a huge greeting), and records connections, TLS sessions, command
//! lines and messages.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How a scripted SMTP server behaves.
#[derive(Clone)]
pub struct Script {
    /// EHLO extensions, in order (STARTTLS is added when `tls` is set).
    pub extensions: Vec<String>,
    /// Offer STARTTLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Replies to RCPT TO, in turn (then "250 ok" forever).
    pub rcpt_replies: Arc<Mutex<VecDeque<String>>>,
    /// Never send the greeting.
    pub silent: bool,
    /// Send a reply of this many bytes as the greeting.
    pub huge_greeting: usize,
    /// Close a connection whose client sends no line for this long.
    pub line_timeout: Option<Duration>,
}

impl Default for Script {
    /// PIPELINING and 8BITMIME, no STARTTLS, every RCPT accepted.
    fn default() -> Self {
        Script {
            extensions: vec!["PIPELINING".into(), "8BITMIME".into()],
            tls: None,
            rcpt_replies: Arc::new(Mutex::new(VecDeque::new())),
            silent: false,
            huge_greeting: 0,
            line_timeout: None,
        }
    }
}

impl Script {
    /// A well-behaved server offering PIPELINING, and STARTTLS with `tls`
    /// when given.
    pub fn starttls(tls: Option<Arc<rustls::ServerConfig>>) -> Script {
        Script {
            extensions: vec!["PIPELINING".into()],
            tls,
            ..Script::default()
        }
    }
}

/// What a scripted server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    tls_sessions: AtomicUsize,
    /// Every command line received.
    commands: Mutex<Vec<String>>,
    /// Every message received (after dot-unstuffing).
    messages: Mutex<Vec<Vec<u8>>>,
    /// Indexes in `messages` of those after whose 250 the client went
    /// away without another command (it may have died before it read the
    /// reply: RFC 1047's window), and how long after the 250.
    cut_after_250: Mutex<Vec<(usize, Duration)>>,
}

/// A running scripted server (it runs until the tokio runtime ends).
pub struct Peer {
    /// Its port.
    pub port: u16,
    seen: Arc<Seen>,
}

impl Peer {
    /// Start a server on 127.0.0.1, on a free port.
    pub async fn start(script: Script) -> Peer {
        Self::start_on(script, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await
    }

    /// Start a server on `addr` (port 0: a free one).
    pub async fn start_on(script: Script, addr: SocketAddr) -> Peer {
        let listener = TcpListener::bind(addr).await.expect("bind peer");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (script, seen) = (script.clone(), s.clone());
                tokio::spawn(async move { serve_conn(tcp, script, seen).await });
            }
        });
        Peer { port, seen }
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed after STARTTLS.
    pub fn tls_sessions(&self) -> usize {
        self.seen.tls_sessions.load(Ordering::SeqCst)
    }

    /// Every command line received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.seen.commands.lock().unwrap().clone()
    }

    /// Whether any client sent MAIL FROM.
    pub fn saw_mail_from(&self) -> bool {
        self.seen
            .commands
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with("MAIL FROM"))
    }

    /// Every message received (after dot-unstuffing).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.seen.messages.lock().unwrap().clone()
    }

    /// How many messages were received.
    pub fn message_count(&self) -> usize {
        self.seen.messages.lock().unwrap().len()
    }

    /// Messages after whose 250 the client went away without another
    /// command (it may not have read that reply), and how long after the
    /// 250 it went (a pooled session closed later had read it).
    pub fn messages_cut_after_250(&self) -> Vec<(Vec<u8>, Duration)> {
        let messages = self.seen.messages.lock().unwrap();
        let cut = self.seen.cut_after_250.lock().unwrap();
        cut.iter().map(|&(i, after)| (messages[i].clone(), after)).collect()
    }
}

async fn serve_conn(mut tcp: TcpStream, script: Script, seen: Arc<Seen>) {
    if script.silent {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return;
    }
    if script.huge_greeting > 0 {
        let line =
            b"220-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n";
        let mut sent = 0;
        while sent < script.huge_greeting {
            if tcp.write_all(line).await.is_err() {
                return;
            }
            sent += line.len();
        }
        return;
    }
    if tcp.write_all(b"220 peer.test ESMTP scripted\r\n").await.is_err() {
        return;
    }
    if let Some(reader) = dialog(BufReader::new(tcp), &script, &seen, script.tls.is_some()).await {
        let tcp = reader.into_inner();
        let acceptor = tokio_rustls::TlsAcceptor::from(script.tls.clone().expect("tls"));
        if let Ok(tls) = acceptor.accept(tcp).await {
            seen.tls_sessions.fetch_add(1, Ordering::SeqCst);
            dialog(BufReader::new(tls), &script, &seen, false).await;
        }
    }
}

/// One line into `line`; false at EOF, on error or after the script's
/// line timeout.
async fn read_line<S: AsyncRead + Unpin>(r: &mut BufReader<S>, line: &mut String, script: &Script) -> bool {
    let read = match script.line_timeout {
        Some(t) => match tokio::time::timeout(t, r.read_line(line)).await {
            Ok(read) => read,
            Err(_) => return false,
        },
        None => r.read_line(line).await,
    };
    matches!(read, Ok(n) if n > 0)
}

/// The SMTP dialog; returns the reader when the client asked for STARTTLS.
async fn dialog<S: AsyncRead + AsyncWrite + Unpin>(
    mut r: BufReader<S>,
    script: &Script,
    seen: &Seen,
    offer_tls: bool,
) -> Option<BufReader<S>> {
    let mut line = String::new();
    let mut accepted = 0;
    // The message whose 250 was the last thing sent, and when.
    let mut answered: Option<(usize, std::time::Instant)> = None;
    let cut = |answered: Option<(usize, std::time::Instant)>| {
        if let Some((i, at)) = answered {
            seen.cut_after_250.lock().unwrap().push((i, at.elapsed()));
        }
    };
    loop {
        line.clear();
        if !read_line(&mut r, &mut line, script).await {
            cut(answered);
            return None;
        }
        answered = None;
        let cmd = line.trim_end().to_string();
        seen.commands.lock().unwrap().push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let mut ext = script.extensions.clone();
            if offer_tls {
                ext.push("STARTTLS".into());
            }
            let mut s = String::from("250-peer.test hello\r\n");
            for (i, e) in ext.iter().enumerate() {
                s.push_str(&format!("250{}{e}\r\n", if i + 1 == ext.len() { ' ' } else { '-' }));
            }
            if ext.is_empty() {
                s = "250 peer.test hello\r\n".into();
            }
            s
        } else if upper.starts_with("STARTTLS") && offer_tls {
            let _ = r.get_mut().write_all(b"220 go ahead\r\n").await;
            return Some(r);
        } else if upper.starts_with("RSET") {
            accepted = 0;
            "250 ok\r\n".into()
        } else if upper.starts_with("MAIL") || upper.starts_with("HELO") {
            "250 ok\r\n".into()
        } else if upper.starts_with("RCPT") {
            let next = script.rcpt_replies.lock().unwrap().pop_front();
            let reply = next.unwrap_or_else(|| "250 ok".into());
            if reply.starts_with('2') {
                accepted += 1;
            }
            format!("{reply}\r\n")
        } else if upper.starts_with("DATA") && accepted == 0 {
            "554 5.5.1 no valid recipients\r\n".into()
        } else if upper.starts_with("DATA") {
            accepted = 0;
            let _ = r.get_mut().write_all(b"354 go\r\n").await;
            let mut msg = Vec::new();
            loop {
                let mut l = Vec::new();
                match r.read_until(b'\n', &mut l).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                if l == b".\r\n" {
                    break;
                }
                let body = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                msg.extend_from_slice(body);
            }
            let mut messages = seen.messages.lock().unwrap();
            messages.push(msg);
            answered = Some((messages.len() - 1, std::time::Instant::now()));
            "250 2.0.0 queued\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            return None;
        } else {
            "502 unknown\r\n".into()
        };
        if r.get_mut().write_all(reply.as_bytes()).await.is_err() {
            cut(answered);
            return None;
        }
    }
}
