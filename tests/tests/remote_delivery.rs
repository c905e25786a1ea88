//! Remote delivery (deliverd's courier) against real peers: a fake DNS
//! server in process, scripted SMTP servers (the harness's `smtp_peer`: with
//! STARTTLS, misbehaviour and connection counting), Postfix's smtp-sink, and a second
//! tambo. One last test goes through the whole server and needs smtpd's
//! AUTH: it checks at run time and says so when AUTH is not there yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tambo_common::domaininfo::SecLevel;
use tambo_deliverd::remote::Courier;
use tambo_ipc::proto::{DeliveryJob, DeliveryOutcome, DeliveryReport};
use tambo_tests::certs::TestCa;
use tambo_tests::courier::{data_fd, remote_job, settings};
use tambo_tests::fakedns::FakeDns;
use tambo_tests::smtp_peer::{Peer, Script};
use tambo_tests::{TestEnv, free_port, is_root};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------- helpers

fn job(from: &str, rcpts: &[&str], levels: &[(&str, SecLevel)]) -> DeliveryJob {
    DeliveryJob {
        header_prefix: b"Received: from test\r\n".to_vec(),
        outgoing_levels: levels.iter().map(|(d, l)| (d.to_string(), *l)).collect(),
        ..remote_job("testid", from, rcpts)
    }
}

async fn send(courier: &Courier, job: &DeliveryJob, body: &[u8]) -> DeliveryReport {
    courier.deliver(job, &job.rcpts, data_fd(body)).await
}

fn outcome(r: &DeliveryReport, index: u32) -> DeliveryOutcome {
    r.results
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, o)| o.clone())
        .expect("result for every recipient")
}

fn is_temp(o: &DeliveryOutcome, needle: &str) -> bool {
    matches!(o, DeliveryOutcome::TempFail(m) if m.contains(needle))
}

fn is_perm(o: &DeliveryOutcome, needle: &str) -> bool {
    matches!(o, DeliveryOutcome::PermFail(m) if m.contains(needle))
}

/// A test CA, and a server certificate for `name` signed by it.
fn ca_and_cert(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("tambo test CA");
    (ca.pem(), ca.server(&[name]))
}

fn self_signed(name: &str) -> Arc<rustls::ServerConfig> {
    tambo_tests::certs::self_signed(&[name])
}

const MSG: &[u8] = b"Subject: hi\r\n\r\nline one\r\n.dot line\r\n";

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_mx_fallback_null_mx_idn_ipv6() {
    let dns = FakeDns::start();
    let peer = Peer::start(Script::default()).await;
    dns.mx("a.test", 20, "mx-dead.a.test");
    dns.mx("a.test", 10, "mx1.a.test");
    dns.addr("mx1.a.test", LOCALHOST);
    dns.addr("mx-dead.a.test", LOCALHOST);
    dns.addr("implicit.test", LOCALHOST); // no MX: A fallback
    dns.null_mx("null.test");
    dns.addr("null.test", LOCALHOST);
    dns.servfail("broken.test");
    dns.mx("xn--and-6ma2c.test", 10, "mx1.a.test"); // ñandú.test
    let courier = Courier::new(settings(&dns, peer.port)).expect("courier");

    let j = job(
        "sender@origin.test",
        &[
            "one@a.test",
            "two@a.test",
            "x@implicit.test",
            "y@null.test",
            "z@nowhere.test",
            "w@broken.test",
            "u@ñandú.test",
        ],
        &[],
    );
    let r = send(&courier, &j, MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(outcome(&r, 1), DeliveryOutcome::Delivered);
    assert_eq!(outcome(&r, 2), DeliveryOutcome::Delivered);
    assert!(is_perm(&outcome(&r, 3), "null MX"), "{:?}", outcome(&r, 3));
    assert!(is_perm(&outcome(&r, 4), "no such domain"), "{:?}", outcome(&r, 4));
    assert!(is_temp(&outcome(&r, 5), "broken.test"), "{:?}", outcome(&r, 5));
    assert_eq!(outcome(&r, 6), DeliveryOutcome::Delivered);
    let cmds = peer.commands();
    // Both a.test recipients in one transaction; the IDN domain in ASCII
    // (the peer has no SMTPUTF8).
    let a_txn: Vec<&String> = cmds.iter().filter(|c| c.contains("@a.test")).collect();
    assert_eq!(a_txn.len(), 2, "{cmds:?}");
    assert!(cmds.iter().any(|c| c == "RCPT TO:<u@xn--and-6ma2c.test>"), "{cmds:?}");
    assert!(cmds.iter().any(|c| c == "EHLO sender.test"), "{cmds:?}");
    // The message arrived with the prefix and dot-stuffing undone.
    let msgs = peer.messages();
    assert!(
        msgs.iter()
            .all(|m| m.starts_with(b"Received: from test\r\nSubject: hi"))
    );
    assert!(msgs.iter().all(|m| m.ends_with(b"line one\r\n.dot line\r\n")));
    for (d, l) in &r.levels_seen {
        assert_eq!(*l, SecLevel::Plain, "{d}");
    }

    // Non-ASCII local part: refused clearly when the peer lacks SMTPUTF8.
    let r = send(&courier, &job("sender@origin.test", &["josé@a.test"], &[]), MSG).await;
    assert!(is_perm(&outcome(&r, 0), "SMTPUTF8"), "{:?}", outcome(&r, 0));

    // A peer with SMTPUTF8 gets it as is, and 8-bit data is announced.
    let utf8_peer = Peer::start(Script {
        extensions: vec!["SMTPUTF8".into(), "8BITMIME".into()],
        ..Script::default()
    })
    .await;
    let c2 = Courier::new(settings(&dns, utf8_peer.port)).expect("courier");
    let r = send(
        &c2,
        &job("señor@origin.test", &["josé@a.test"], &[]),
        "Subject: ñ\r\n\r\nü\r\n".as_bytes(),
    )
    .await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    let cmds = utf8_peer.commands();
    assert!(
        cmds.iter()
            .any(|c| c == "MAIL FROM:<señor@origin.test> BODY=8BITMIME SMTPUTF8"),
        "{cmds:?}"
    );

    // IPv6: an MX with only an AAAA record.
    let v6_peer = Peer::start_on(Script::default(), SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0)).await;
    dns.mx("six.test", 10, "mx.six.test");
    dns.addr("mx.six.test", IpAddr::V6(Ipv6Addr::LOCALHOST));
    let c6 = Courier::new(settings(&dns, v6_peer.port)).expect("courier");
    let r = send(&c6, &job("", &["v@six.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered, "{r:?}");
    assert!(v6_peer.commands().iter().any(|c| c == "MAIL FROM:<>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_peers() {
    let dns = FakeDns::start();
    dns.mx("m.test", 10, "mx.m.test");
    dns.addr("mx.m.test", LOCALHOST);

    // 4xx, then 250 on the next attempt; 5xx is permanent, per recipient.
    let script = Script::default();
    script
        .rcpt_replies
        .lock()
        .unwrap()
        .extend(["451 4.3.0 try later".to_string(), "550 5.1.1 no such user".to_string()]);
    let peer = Peer::start(script).await;
    let courier = Courier::new(settings(&dns, peer.port)).expect("courier");
    let r = send(&courier, &job("s@o.test", &["a@m.test", "b@m.test"], &[]), MSG).await;
    assert!(is_temp(&outcome(&r, 0), "451 4.3.0 try later"), "{r:?}");
    assert!(is_perm(&outcome(&r, 1), "550 5.1.1 no such user"), "{r:?}");
    assert!(outcome(&r, 1).clone() != DeliveryOutcome::Delivered);
    assert!(peer.messages().is_empty(), "no DATA when nobody was accepted");
    let r = send(&courier, &job("s@o.test", &["a@m.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(peer.messages().len(), 1);

    // SIZE is checked before sending.
    let small = Peer::start(Script {
        extensions: vec!["SIZE 100".into()],
        ..Script::default()
    })
    .await;
    let c = Courier::new(settings(&dns, small.port)).expect("courier");
    let r = send(&c, &job("s@o.test", &["a@m.test"], &[]), &vec![b'x'; 500]).await;
    assert!(is_perm(&outcome(&r, 0), "larger than the 100 bytes"), "{r:?}");
    assert!(!small.commands().iter().any(|c| c.starts_with("MAIL")));

    // A peer that never answers: a timeout, bounded.
    let silent = Peer::start(Script {
        silent: true,
        ..Script::default()
    })
    .await;
    let c = Courier::new(settings(&dns, silent.port)).expect("courier");
    let t = Instant::now();
    let r = send(&c, &job("s@o.test", &["a@m.test"], &[]), MSG).await;
    assert!(is_temp(&outcome(&r, 0), "timed out"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(20));

    // A multi-megabyte reply: an error, not a crash or a memory hog.
    let huge = Peer::start(Script {
        huge_greeting: 8 << 20,
        ..Script::default()
    })
    .await;
    let c = Courier::new(settings(&dns, huge.port)).expect("courier");
    let r = send(&c, &job("s@o.test", &["a@m.test"], &[]), MSG).await;
    assert!(is_temp(&outcome(&r, 0), "more than 100 lines"), "{r:?}");

    // Nobody listening on the MX: temporary, names the address.
    let closed_port = free_port();
    let c = Courier::new(settings(&dns, closed_port)).expect("courier");
    let r = send(&c, &job("s@o.test", &["a@m.test"], &[]), MSG).await;
    assert!(is_temp(&outcome(&r, 0), "127.0.0.1"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_levels_and_refused_downgrade() {
    let dns = FakeDns::start();
    for d in ["sec.test", "insec.test", "plain.test"] {
        dns.mx(d, 10, &format!("mx.{d}"));
        dns.addr(&format!("mx.{d}"), LOCALHOST);
    }
    let (ca_pem, good) = ca_and_cert("mx.sec.test");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), ca_pem).expect("write ca");

    // A certificate from the trusted test CA for the MX name: secure.
    let secure = Peer::start(Script {
        tls: Some(good),
        ..Script::default()
    })
    .await;
    let mut s = settings(&dns, secure.port);
    s.tls_extra_ca_file = ca_file.path().display().to_string();
    let c = Courier::new(s.clone()).expect("courier");
    let r = send(&c, &job("s@o.test", &["a@sec.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(r.levels_seen, vec![("sec.test".to_string(), SecLevel::TlsSecure)]);
    assert_eq!(secure.tls_sessions(), 1);
    // Commands after STARTTLS were sent again with EHLO.
    assert_eq!(secure.commands().iter().filter(|c| c.starts_with("EHLO")).count(), 2);

    // Without the extra CA the same server is only "insecure".
    let mut s2 = settings(&dns, secure.port);
    s2.idle_timeout = Duration::ZERO;
    let c2 = Courier::new(s2).expect("courier");
    let r = send(&c2, &job("s@o.test", &["a@sec.test"], &[]), MSG).await;
    assert_eq!(r.levels_seen, vec![("sec.test".to_string(), SecLevel::TlsInsecure)]);

    // Self-signed: insecure, but the mail goes (encrypted).
    let insecure = Peer::start(Script {
        tls: Some(self_signed("mx.insec.test")),
        ..Script::default()
    })
    .await;
    let mut s3 = settings(&dns, insecure.port);
    s3.tls_extra_ca_file = s.tls_extra_ca_file.clone();
    let c3 = Courier::new(s3).expect("courier");
    let r = send(&c3, &job("s@o.test", &["a@insec.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(r.levels_seen, vec![("insec.test".to_string(), SecLevel::TlsInsecure)]);

    // Recorded secure, and now the MX offers an invalid certificate: the
    // connection is dropped before MAIL, the recipient retried later.
    let before = insecure.commands().len();
    let r = send(
        &c3,
        &job("s@o.test", &["b@insec.test"], &[("insec.test", SecLevel::TlsSecure)]),
        MSG,
    )
    .await;
    assert!(is_temp(&outcome(&r, 0), "below the TLS_SECURE recorded"), "{r:?}");
    assert!(!insecure.commands()[before..].iter().any(|c| c.starts_with("MAIL")));

    // Recorded TLS, and the MX no longer offers STARTTLS: refused too.
    let plain = Peer::start(Script::default()).await;
    let c4 = Courier::new(settings(&dns, plain.port)).expect("courier");
    let r = send(
        &c4,
        &job("s@o.test", &["a@plain.test"], &[("plain.test", SecLevel::TlsInsecure)]),
        MSG,
    )
    .await;
    assert!(is_temp(&outcome(&r, 0), "PLAIN is below the TLS_INSECURE"), "{r:?}");
    assert!(!plain.commands().iter().any(|c| c.starts_with("MAIL")));
    // With nothing recorded, plain is fine.
    let r = send(&c4, &job("s@o.test", &["a@plain.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(r.levels_seen, vec![("plain.test".to_string(), SecLevel::Plain)]);
}

/// A CA certificate (`CA:TRUE`) for `name` serving as the server's own,
/// as chasquid's `generate_cert -ca` makes them; its PEM and the server.
fn ca_as_server_cert(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("certificate");
    let server = tambo_tests::certs::server_config(vec![cert.der().clone()], key.serialize_der());
    (cert.pem(), server)
}

/// A trusted root presented as the server's certificate is secure for the
/// names it holds, as in Go's TLS (chasquid's t-14 relies on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_root_as_the_server_certificate() {
    let dns = FakeDns::start();
    for d in ["ca.test", "other.test"] {
        dns.mx(d, 10, &format!("mx.{d}"));
        dns.addr(&format!("mx.{d}"), LOCALHOST);
    }
    let (pem, server) = ca_as_server_cert("mx.ca.test");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), pem).expect("write ca");
    let peer = Peer::start(Script {
        tls: Some(server),
        ..Script::default()
    })
    .await;
    let mut s = settings(&dns, peer.port);
    s.tls_extra_ca_file = ca_file.path().display().to_string();
    s.idle_timeout = Duration::ZERO;
    let trusted = Courier::new(s).expect("courier");
    let r = send(&trusted, &job("s@o.test", &["a@ca.test"], &[]), MSG).await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered);
    assert_eq!(r.levels_seen, vec![("ca.test".to_string(), SecLevel::TlsSecure)]);
    // Not for another name.
    let r = send(&trusted, &job("s@o.test", &["a@other.test"], &[]), MSG).await;
    assert_eq!(r.levels_seen, vec![("other.test".to_string(), SecLevel::TlsInsecure)]);
    // Nor when it is not trusted.
    let mut s = settings(&dns, peer.port);
    s.idle_timeout = Duration::ZERO;
    let untrusted = Courier::new(s).expect("courier");
    let r = send(&untrusted, &job("s@o.test", &["b@ca.test"], &[]), MSG).await;
    assert_eq!(r.levels_seen, vec![("ca.test".to_string(), SecLevel::TlsInsecure)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_and_commands_pipelined() {
    let dns = FakeDns::start();
    dns.mx("r.test", 10, "mx.r.test");
    dns.addr("mx.r.test", LOCALHOST);
    let peer = Peer::start(Script::default()).await;
    let courier = Courier::new(settings(&dns, peer.port)).expect("courier");
    for i in 0..5 {
        let r = send(
            &courier,
            &job("s@o.test", &[&format!("u{i}@r.test"), "v@r.test"], &[]),
            MSG,
        )
        .await;
        assert!(r.results.iter().all(|(_, o)| *o == DeliveryOutcome::Delivered), "{r:?}");
    }
    assert_eq!(peer.messages().len(), 5);
    assert_eq!(peer.connections(), 1, "one connection for five messages");
    assert_eq!(courier.idle_connections(), 1);
    // Reuse is checked with RSET.
    assert_eq!(peer.commands().iter().filter(|c| *c == "RSET").count(), 4);
}

/// Postfix's smtp-sink as a fast peer: thousands of 10 KiB messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_into_smtp_sink() {
    if !tambo_tests::require("smtp-sink", "postfix") {
        return;
    }
    let port = free_port();
    let mut cmd = std::process::Command::new("smtp-sink");
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    let mut sink = cmd
        .args(["-c", &format!("127.0.0.1:{port}"), "256"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("smtp-sink");
    tambo_tests::wait_for(Duration::from_secs(10), "smtp-sink", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let dns = FakeDns::start();
    dns.mx("sink.test", 10, "mx.sink.test");
    dns.addr("mx.sink.test", LOCALHOST);
    let courier = Courier::new(settings(&dns, port)).expect("courier");
    let n: usize = std::env::var("TAMBO_DRAIN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut body = b"Subject: load\r\n\r\n".to_vec();
    while body.len() < 10 * 1024 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    let fd = data_fd(&body);
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (courier, fd, sem) = (courier.clone(), fd.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.expect("sem");
            let j = job("s@o.test", &[&format!("u{i}@sink.test")], &[]);
            courier.deliver(&j, &j.rcpts, fd).await
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.results.iter().all(|(_, o)| *o == DeliveryOutcome::Delivered) {
            delivered += 1;
        } else {
            println!("not delivered: {r:?}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = sink.kill();
    let _ = sink.wait();
    println!(
        "DRAIN: {n} messages of {} bytes into smtp-sink in {secs:.2}s: {:.0} messages/s",
        body.len(),
        n as f64 / secs
    );
    assert_eq!(delivered, n);
}

/// A second tambo as the receiving MX (its smtpd on outgoing_smtp_port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_a_second_tambo() {
    let receiver = TestEnv::new("");
    let mut server = receiver.start();
    let dns = FakeDns::start();
    dns.mx("example.com", 10, "mx.example.com");
    dns.addr("mx.example.com", LOCALHOST);
    let courier = Courier::new(settings(&dns, receiver.smtp_port)).expect("courier");
    let r = send(
        &courier,
        &job("someone@far.test", &["alice@example.com", "nobody@example.com"], &[]),
        b"Subject: across\r\n\r\nfrom one tambo to another\r\n",
    )
    .await;
    assert_eq!(outcome(&r, 0), DeliveryOutcome::Delivered, "{r:?}");
    assert!(is_perm(&outcome(&r, 1), "550"), "{r:?}");
    let got = receiver.wait_delivered("alice@example.com", "from one tambo to another");
    assert!(got.contains("Received: from test"), "{got}");
    server.stop();
}

/// Through the whole server: alice submits to a remote address, tambo
/// routes it through the fake DNS to a second tambo. Needs smtpd's AUTH.
#[test]
fn end_to_end_through_two_servers() {
    let dns = FakeDns::start();
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.addr("mx.remote.test", LOCALHOST);
    let receiver_port = free_port();
    let sender = TestEnv::new(&format!(
        "dns_servers: \"{}\"\noutgoing_smtp_port: {receiver_port}\n",
        dns.addr
    ));
    let mut tx = sender.start();
    let mut c = tambo_tests::RawClient::connect(sender.submission_port);
    let ehlo = c.cmd("EHLO client.test");
    drop(c);
    assert!(
        ehlo.contains("STARTTLS"),
        "the submission port must offer STARTTLS (AUTH comes after it): {ehlo}"
    );
    let mut receiver = TestEnv::new("");
    receiver.smtp_port = receiver_port;
    receiver.write_conf("");
    std::fs::create_dir_all(receiver.config_dir.join("domains/remote.test")).expect("mkdir");
    let status = std::process::Command::new(tambo_tests::bin("tambo"))
        .args([
            "-C",
            receiver.config_dir.to_str().expect("utf8"),
            "user-add",
            "carol@remote.test",
        ])
        .args(["--password", "x-password"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("tambo user-add");
    assert!(status.success());
    receiver.fix_permissions();
    if !tambo_tests::require("swaks", "swaks") {
        return;
    }
    let mut rx = receiver.start();
    let (ok, out) = tambo_tests::run(
        std::process::Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", sender.submission_port)])
            .args(["--from", "alice@example.com", "--to", "carol@remote.test"])
            .args(["--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password"])
            .arg(tambo_tests::PASSWORD)
            .args([
                "--tls",
                "--header",
                "Subject: end to end",
                "--body",
                "over the fake DNS",
            ]),
    );
    assert!(ok, "swaks failed:\n{out}");
    receiver.wait_delivered("carol@remote.test", "over the fake DNS");
    // The receiving tambo offers STARTTLS with a self-signed certificate:
    // queued recorded TLS_INSECURE for the domain, in chasquid's format.
    let info = sender.data_dir.join("domaininfo/s:remote.test");
    tambo_tests::wait_for(Duration::from_secs(10), "domaininfo for remote.test", || {
        std::fs::read_to_string(&info).is_ok_and(|t| t.contains("outgoing_sec_level: TLS_INSECURE"))
    });
    tx.stop();
    rx.stop();
}
