//! SRS: mail from a remote sender that an alias forwards to a remote
//! address leaves with a rewritten envelope sender, and a bounce to that
//! address comes back to the original sender.
//!
//! tambo serves example.com with `fwd: carol@remote.test`; the fake DNS
//! points remote.test and far.test (the original sender's domain) at a
//! capturing SMTP server on loopback, which records every command.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tambo_tests::fakedns::FakeDns;
use tambo_tests::{RawClient, TestEnv, wait_for};

/// One transaction seen by the capture server.
#[derive(Debug, Clone, Default)]
struct Txn {
    mail_from: String,
    rcpts: Vec<String>,
    data: String,
}

/// A plain SMTP server that accepts everything and records it.
struct Capture {
    port: u16,
    seen: Arc<Mutex<Vec<Txn>>>,
}

impl Capture {
    fn start() -> Capture {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let seen: Arc<Mutex<Vec<Txn>>> = Arc::default();
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        Capture { port, seen }
    }

    fn txns(&self) -> Vec<Txn> {
        self.seen.lock().expect("lock").clone()
    }

    /// Wait for a transaction to `rcpt` and return it.
    fn wait_for_rcpt(&self, rcpt: &str) -> Txn {
        let mut found = None;
        wait_for(Duration::from_secs(30), &format!("a message to {rcpt}"), || {
            found = self.txns().into_iter().find(|t| t.rcpts.iter().any(|r| r == rcpt));
            found.is_some()
        });
        found.expect("found")
    }
}

fn serve(conn: TcpStream, seen: &Mutex<Vec<Txn>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"220 capture.test ESMTP\r\n")?;
    let mut txn = Txn::default();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let path = || {
            let start = cmd.find('<').map(|i| i + 1).unwrap_or(0);
            let end = cmd[start..].find('>').map(|i| start + i).unwrap_or(cmd.len());
            cmd[start..end].to_string()
        };
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            w.write_all(b"250-capture.test\r\n250-8BITMIME\r\n250 PIPELINING\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            txn = Txn {
                mail_from: path(),
                ..Txn::default()
            };
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            txn.rcpts.push(path());
            w.write_all(b"250 2.1.5 ok\r\n")?;
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n")?;
            loop {
                let mut l = String::new();
                if r.read_line(&mut l)? == 0 {
                    return Ok(());
                }
                if l == ".\r\n" {
                    break;
                }
                txn.data.push_str(&l);
            }
            seen.lock().expect("lock").push(std::mem::take(&mut txn));
            w.write_all(b"250 2.0.0 queued\r\n")?;
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            txn = Txn::default();
            w.write_all(b"250 ok\r\n")?;
        } else {
            w.write_all(b"502 5.5.2 not here\r\n")?;
        }
    }
}

/// Send one message with a raw client; returns the final reply.
fn send(port: u16, from: &str, rcpts: &[&str], body: &str) -> String {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.far.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("From: {from}\r\nSubject: srs test\r\n\r\n{body}\r\n.\r\n").as_bytes());
    let r = c.reply();
    c.cmd("QUIT");
    r
}

#[test]
fn forwarded_mail_is_rewritten_and_bounces_come_back() {
    let capture = Capture::start();
    let dns = FakeDns::start();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for d in ["remote.test", "far.test"] {
        dns.mx(d, 10, &format!("mx.{d}"));
        dns.addr(&format!("mx.{d}"), lo);
    }
    let env = TestEnv::new(&format!(
        "dns_servers: \"{}\"\noutgoing_smtp_port: {}\n",
        dns.addr, capture.port
    ));
    env.set_aliases("fwd: carol@remote.test\n");
    let mut server = env.start();

    // The secret exists, private to queued.
    let secret = env.data_dir.join("srs/secret");
    // queued creates it as it starts, which may be just after smtpd answers.
    wait_for(Duration::from_secs(10), "queued to create data_dir/srs/secret", || {
        secret.exists()
    });
    let meta = std::fs::metadata(&secret).expect("data_dir/srs/secret exists");
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if tambo_tests::is_root() {
        let q = nix::unistd::User::from_name("tambo-queue")
            .expect("lookup")
            .expect("tambo-queue");
        assert_eq!(meta.uid(), q.uid.as_raw(), "the secret belongs to tambo-queue");
    }

    // A remote sender, a local and a forwarded recipient in one message.
    let r = send(
        env.smtp_port,
        "Dave@far.test",
        &["bob@example.com", "fwd@example.com"],
        "forward me",
    );
    assert!(r.starts_with("250"), "{r}");
    let t = capture.wait_for_rcpt("carol@remote.test");
    let srs = t.mail_from.clone();
    assert!(t.data.contains("forward me"), "{t:?}");
    let (user, domain) = srs.rsplit_once('@').expect("address");
    assert_eq!(domain, "example.com", "{srs}");
    let parts: Vec<&str> = user.splitn(5, '=').collect();
    assert_eq!(parts.len(), 5, "{srs}");
    assert_eq!(parts[0], "SRS0");
    assert_eq!(parts[1].len(), 8, "hash of 8 base32 characters: {srs}");
    assert_eq!(parts[2].len(), 2, "timestamp of 2 base32 characters: {srs}");
    assert_eq!(&parts[3..], ["far.test", "dave"], "{srs}");
    // The local copy keeps the original sender.
    let local = env.wait_delivered("bob@example.com", "forward me");
    assert!(!local.contains("SRS0"), "{local}");

    // The bounce comes back to the SRS address: accepted, and forwarded to
    // the original sender, from <>.
    let r = send(
        env.smtp_port,
        "",
        &[&srs],
        "Subject: bounce\r\n\r\nyour message to carol could not be delivered",
    );
    assert!(r.starts_with("250"), "{r}");
    let b = capture.wait_for_rcpt("dave@far.test");
    assert_eq!(b.mail_from, "", "a bounce is forwarded from <>: {b:?}");
    assert!(b.data.contains("could not be delivered"), "{b:?}");

    // A forged hash, an SRS address with its user changed: 550 5.1.1.
    let mut c = RawClient::connect(env.smtp_port);
    c.cmd("EHLO client.far.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    let forged = format!("SRS0=aaaaaaaa={}={}={}@example.com", parts[2], parts[3], parts[4]);
    let r = c.cmd(&format!("RCPT TO:<{forged}>"));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let tampered = srs.replace("=dave@", "=root@");
    let r = c.cmd(&format!("RCPT TO:<{tampered}>"));
    assert!(r.starts_with("550 5.1.1"), "{r}");
    c.cmd("QUIT");

    // A local sender is not rewritten (alice's own mail, and a message
    // from a local address through the smtp port alike).
    let before = capture.txns().len();
    let r = send(env.smtp_port, "bob@example.com", &["fwd@example.com"], "from bob");
    assert!(r.starts_with("250"), "{r}");
    wait_for(Duration::from_secs(30), "the message from bob", || {
        capture.txns().len() > before
    });
    let t = capture
        .txns()
        .into_iter()
        .find(|t| t.data.contains("from bob"))
        .expect("found");
    assert_eq!(t.mail_from, "bob@example.com");

    // A forwarded bounce (<>) stays <>.
    let before = capture.txns().len();
    let r = send(env.smtp_port, "", &["fwd@example.com"], "null sender");
    assert!(r.starts_with("250"), "{r}");
    wait_for(Duration::from_secs(30), "the bounce", || capture.txns().len() > before);
    let t = capture
        .txns()
        .into_iter()
        .find(|t| t.data.contains("null sender"))
        .expect("found");
    assert_eq!(t.mail_from, "");

    // An SRS sender of another forwarder becomes SRS1, which resolves
    // back to the first forwarder's SRS0 address.
    let first = "SRS0=abcdefgh=aa=far.test=dave@one.test";
    let r = send(env.smtp_port, first, &["fwd@example.com"], "second hop");
    assert!(r.starts_with("250"), "{r}");
    let mut t = Txn::default();
    wait_for(Duration::from_secs(30), "the second-hop message", || {
        match capture.txns().into_iter().find(|t| t.data.contains("second hop")) {
            Some(x) => {
                t = x;
                true
            }
            None => false,
        }
    });
    assert!(t.mail_from.starts_with("SRS1="), "{t:?}");
    assert!(
        t.mail_from
            .ends_with("=one.test==abcdefgh=aa=far.test=dave@example.com"),
        "{t:?}"
    );
    dns.mx("one.test", 10, "mx.far.test");
    let r = send(env.smtp_port, "", &[&t.mail_from], "bounce of the second hop");
    assert!(r.starts_with("250"), "{r}");
    let b = capture.wait_for_rcpt(&first.to_lowercase());
    assert!(b.data.contains("bounce of the second hop"), "{b:?}");
    server.stop();
}
