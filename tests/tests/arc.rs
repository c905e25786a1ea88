//! ARC (RFC 8617) through real SMTP sessions against a running tambo,
//! with the harness's fake DNS on loopback and python3-dkim as the
//! independent ARC implementation: `dkim.arc_sign` (what `arcsign` runs)
//! makes the chains tambo verifies, and `dkim.arc_verify` (what
//! `arcverify` runs) checks the seals tambo adds to mail it forwards.
//! The forwarded copies are captured by a small SMTP sink in this file,
//! which the fake DNS names as the MX of `remote.test`.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tambo_tests::fakedns::FakeDns;
use tambo_tests::{RawClient, TestEnv, free_port, run};

const PYTHON: &str = "/usr/bin/python3";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn prerequisites() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import dkim, authres"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tambo_tests::skip("python3-dkim or python3-authres is missing (scripts/test installs them)");
        return false;
    }
    tambo_tests::require("openssl", "openssl")
}

/// One SMTP transaction from outside; the reply to the end of DATA.
fn transact(port: u16, from: &str, to: &str, message: &str) -> String {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.pass.test").starts_with("250"));
    let mail = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(mail.starts_with("250"), "MAIL: {mail}");
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    assert!(rcpt.starts_with("250"), "RCPT: {rcpt}");
    assert!(c.cmd("DATA").starts_with("354"));
    // Dot-stuffing, for messages captured from a previous hop.
    let body = tambo_tests::crlf_lines(message).replace("\r\n.", "\r\n..");
    c.send(body.as_bytes());
    let end = c.cmd(".");
    c.cmd("QUIT");
    end
}

fn message(subject: &str, tag: &str) -> String {
    format!(
        "From: Sender <x@list.test>\r\nTo: fwd@example.com\r\nSubject: {subject}\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{tag}@list.test>\r\n\r\n\
         Body of {tag}.\r\nSecond line.\r\n"
    )
}

/// The last message delivered to alice whose text contains `tag`.
fn delivered_with(env: &TestEnv, tag: &str) -> String {
    env.wait_last_delivered("alice@example.com", tag)
}

/// The first `arc=` entry of the topmost Authentication-Results.
fn arc_result(got: &str) -> String {
    let ar = &got[got.find("Authentication-Results: mx.example.com;").expect("our A-R")..];
    ar.lines()
        .map(str::trim)
        .find(|l| l.starts_with("arc="))
        .unwrap_or_else(|| panic!("no arc= result: {got}"))
        .trim_end_matches(';')
        .to_string()
}

/// A foreign RSA key (PKCS#1 PEM, as python3-dkim wants) and its record.
fn foreign_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("list.pem");
    let (ok, out) = run(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048"));
    assert!(ok, "{out}");
    let record = tambo_tests::dkim_rsa_record(&key);
    (key, record)
}

/// Run a python snippet with `input` on stdin; its stdout, trimmed.
fn python(script: &str, args: &[&str], input: &str) -> String {
    tambo_tests::filter(Command::new(PYTHON).arg("-c").arg(script).args(args), input.as_bytes())
        .trim()
        .to_string()
}

/// python3-dkim's `arc_sign`: a first ARC set by `domain` over `msg`,
/// which must carry an Authentication-Results of `domain` (the results
/// the set records).
fn arcsign(msg: &str, selector: &str, domain: &str, key: &Path) -> String {
    let script = "import sys, dkim\n\
        msg = sys.stdin.buffer.read()\n\
        key = open(sys.argv[3], 'rb').read()\n\
        s = dkim.arc_sign(msg, sys.argv[1].encode(), sys.argv[2].encode(), key, sys.argv[2].encode(),\n\
        \x20   include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])\n\
        sys.stdout.buffer.write(b''.join(s) + msg)\n";
    let with_ar = format!("Authentication-Results: {domain}; spf=pass smtp.mailfrom=x@{domain}\r\n{msg}");
    let signed = python(script, &[selector, domain, key.to_str().expect("utf8")], &with_ar);
    assert!(signed.starts_with("ARC-Seal: i=1;"), "arc_sign: {signed}");
    signed.replace("\r\n", "\n").replace('\n', "\r\n") + "\r\n"
}

/// python3-dkim's `arc_verify` with `records` (name → TXT) as the DNS:
/// "pass", "fail" or "none", then the reason.
fn arcverify(records: &[(String, String)], msg: &str) -> String {
    let script = "import sys, json, dkim\n\
        recs = json.loads(sys.argv[1])\n\
        def dns(name, timeout=5):\n\
        \x20   r = recs.get(name.decode().rstrip('.'))\n\
        \x20   return r.encode() if r else None\n\
        cv, results, reason = dkim.arc_verify(sys.stdin.buffer.read(), dnsfunc=dns)\n\
        print(cv.decode(), reason)\n";
    let json = format!(
        "{{{}}}",
        records
            .iter()
            .map(|(n, t)| format!("\"{n}\": \"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    python(script, &[&json], msg)
}

/// A plain HTTP GET on loopback; the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect monitoring");
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .expect("write");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// A minimal SMTP server that keeps every message it is given.
struct Sink {
    port: u16,
    got: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    fn start() -> Sink {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind sink");
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                    let mut w = stream.try_clone().expect("clone");
                    let mut r = BufReader::new(stream);
                    let _ = w.write_all(b"220 sink.remote.test ESMTP\r\n");
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 sink.remote.test\r\n",
                            "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 ok\r\n",
                            "QUIT" => {
                                let _ = w.write_all(b"221 bye\r\n");
                                return;
                            }
                            "DATA" => {
                                let _ = w.write_all(b"354 go on\r\n");
                                let mut data = String::new();
                                loop {
                                    line.clear();
                                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                                        return;
                                    }
                                    if line == ".\r\n" {
                                        break;
                                    }
                                    let l = line.strip_prefix('.').unwrap_or(&line);
                                    data.push_str(l);
                                }
                                keep.lock().expect("sink").push(data);
                                b"250 kept\r\n"
                            }
                            _ => b"502 no\r\n",
                        };
                        let _ = w.write_all(reply);
                    }
                });
            }
        });
        Sink { port, got }
    }

    /// The message containing `needle`, waiting up to 30 s for it.
    fn wait(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(m) = self.got.lock().expect("sink").iter().find(|m| m.contains(needle)) {
                return m.clone();
            }
            assert!(
                Instant::now() < deadline,
                "the sink never got a message with {needle:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Setup {
    dns: FakeDns,
    env: TestEnv,
    sink: Sink,
    /// The foreign signer's key (list.test, selector py).
    list_key: std::path::PathBuf,
    /// TXT records python's verifier uses.
    records: Vec<(String, String)>,
    _keydir: tempfile::TempDir,
}

/// The fake DNS, a tambo whose alias `fwd@example.com` forwards to
/// `carol@remote.test` (MX: the sink) and which has the RSA DKIM key
/// `arc1` for example.com (made by `tambo dkim-keygen`), and a foreign
/// signer `list.test`.
fn setup(extra_conf: &str) -> Setup {
    let keydir = tempfile::tempdir().expect("tempdir");
    let (list_key, list_rec) = foreign_key(keydir.path());
    let dns = FakeDns::start();
    let sink = Sink::start();
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.addr("mx.remote.test", LOCALHOST);
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.txt("list.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.txt("py._domainkey.list.test", &list_rec);
    dns.servfail("py._domainkey.tempfail.test");
    let env = TestEnv::new(&format!(
        "dns_servers: \"{}\"\noutgoing_smtp_port: {}\n{extra_conf}\n",
        dns.addr, sink.port
    ));
    env.set_aliases("fwd: carol@remote.test\n");
    let cdir = env.config_dir.to_str().expect("utf8");
    let tambo = tambo_tests::bin("tambo");
    let (ok, out) =
        run(Command::new(&tambo).args(["-C", cdir, "dkim-keygen", "example.com", "arc1", "--algo=rsa2048"]));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new(&tambo).args(["-C", cdir, "dkim-dns", "example.com", "arc1"]));
    assert!(ok, "{out}");
    let rec: String = out.split('"').skip(1).step_by(2).collect();
    assert!(rec.starts_with("v=DKIM1; k=rsa; p="), "{out}");
    dns.txt("arc1._domainkey.example.com", &rec);
    let records = vec![
        ("arc1._domainkey.example.com".to_string(), rec),
        ("py._domainkey.list.test".to_string(), list_rec),
    ];
    Setup {
        dns,
        env,
        sink,
        list_key,
        records,
        _keydir: keydir,
    }
}

/// Mail from outside to an alias that forwards it to a remote address is
/// sealed with the forwarding domain's key; python3-dkim's verifier
/// accepts the seal (i=1 on a message without a chain, i=2 on top of a
/// valid one), and refuses it once the message is changed. A broken chain
/// is forwarded unsealed. tambo's own verifier accepts its seal too.
#[test]
fn forwards_are_sealed() {
    if !prerequisites() {
        return;
    }
    let s = setup("");
    let mut server = s.env.start();
    let port = s.env.smtp_port;

    // No chain: i=1, cv=none.
    let end = transact(port, "x@pass.test", "fwd@example.com", &message("plain", "arcplain"));
    assert!(end.starts_with("250"), "{end}");
    let got = s.sink.wait("arcplain");
    assert!(
        got.starts_with("ARC-Seal: i=1; a=rsa-sha256; d=example.com; s=arc1; cv=none;"),
        "{got}\n{}",
        server.log()
    );
    assert!(
        got.contains("\r\nARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=arc1;"),
        "{got}"
    );
    // The AAR repeats tambo's Authentication-Results.
    let aar = &got[got
        .find("ARC-Authentication-Results: i=1; mx.example.com;")
        .expect("AAR")..];
    assert!(aar.contains("spf=pass"), "{got}");
    assert!(aar.contains("arc=none"), "{got}");
    let v = arcverify(&s.records, &got);
    assert!(v.starts_with("pass"), "arcverify: {v}\n{got}");
    let v = arcverify(&s.records, &got.replace("Second line.", "Second line!"));
    assert!(v.starts_with("fail"), "arcverify of a changed body: {v}");
    let v = arcverify(&s.records, &got.replace("Subject: plain", "Subject: plane"));
    assert!(v.starts_with("fail"), "arcverify of a changed header: {v}");

    // A valid chain from list.test: tambo adds i=2 with cv=pass.
    let signed = arcsign(&message("chained", "arcchain"), "py", "list.test", &s.list_key);
    let end = transact(port, "x@list.test", "fwd@example.com", &signed);
    assert!(end.starts_with("250"), "{end}");
    let got = s.sink.wait("arcchain");
    assert!(
        got.starts_with("ARC-Seal: i=2; a=rsa-sha256; d=example.com; s=arc1; cv=pass;"),
        "{got}"
    );
    assert!(got.contains("arc=pass (i=1 d=list.test)"), "{got}");
    let v = arcverify(&s.records, &got);
    assert!(v.starts_with("pass"), "arcverify: {v}\n{got}");

    // A broken chain is forwarded as it is, without a seal of ours.
    let broken = arcsign(&message("broken", "arcbroken"), "py", "list.test", &s.list_key)
        .replace("Second line.", "Second line?");
    let end = transact(port, "x@list.test", "fwd@example.com", &broken);
    assert!(end.starts_with("250"), "{end}");
    let got = s.sink.wait("arcbroken");
    assert!(!got.contains("ARC-Seal: i=2"), "{got}");
    assert!(got.contains("arc=fail"), "{got}");
    assert!(server.log().contains("forward not ARC-sealed"), "{}", server.log());

    // tambo verifies its own seal (key through the fake DNS).
    let first = s.sink.wait("arcplain");
    let end = transact(port, "x@pass.test", "alice@example.com", &first);
    assert!(end.starts_with("250"), "{end}");
    // (The copy has two Received fields: the whole mailbox is searched.)
    let back = s.env.wait_delivered("alice@example.com", "arcplain");
    assert!(
        back.contains("\tarc=pass (i=1 d=example.com) smtp.remote-ip=127.0.0.1;"),
        "{back}"
    );
    server.stop();
    drop(s.dns);
}

/// Chains made by python3-dkim on incoming mail: pass, fail when the body
/// or a signed header was changed, none without ARC headers, temperror
/// when the key's DNS fails; never a rejection. The metric counts them.
#[test]
fn incoming_chains_are_reported() {
    if !prerequisites() {
        return;
    }
    let mon = free_port();
    let s = setup(&format!("monitoring_address: \"127.0.0.1:{mon}\""));
    let mut server = s.env.start();
    let port = s.env.smtp_port;
    let to_alice = |m: &str| m.replace("To: fwd@example.com", "To: alice@example.com");

    let signed = arcsign(&to_alice(&message("good", "incpass")), "py", "list.test", &s.list_key);
    assert!(transact(port, "x@list.test", "alice@example.com", &signed).starts_with("250"));
    let got = delivered_with(&s.env, "incpass");
    assert_eq!(
        arc_result(&got),
        "arc=pass (i=1 d=list.test) smtp.remote-ip=127.0.0.1",
        "{got}"
    );

    let signed = arcsign(&to_alice(&message("body", "incbody")), "py", "list.test", &s.list_key)
        .replace("Second line.", "Second line!");
    assert!(transact(port, "x@list.test", "alice@example.com", &signed).starts_with("250"));
    let got = delivered_with(&s.env, "incbody");
    assert!(arc_result(&got).starts_with("arc=fail ("), "{got}");

    let signed = arcsign(&to_alice(&message("header", "inchdr")), "py", "list.test", &s.list_key)
        .replace("Subject: header", "Subject: changed");
    assert!(transact(port, "x@list.test", "alice@example.com", &signed).starts_with("250"));
    let got = delivered_with(&s.env, "inchdr");
    assert!(arc_result(&got).starts_with("arc=fail ("), "{got}");

    assert!(
        transact(
            port,
            "x@pass.test",
            "alice@example.com",
            &to_alice(&message("none", "incnone"))
        )
        .starts_with("250")
    );
    let got = delivered_with(&s.env, "incnone");
    assert_eq!(arc_result(&got), "arc=none smtp.remote-ip=127.0.0.1", "{got}");

    // The seal's key cannot be fetched: temperror, and the mail is taken.
    let signed = arcsign(
        &to_alice(&message("dns", "inctemp")),
        "py",
        "tempfail.test",
        &s.list_key,
    );
    assert!(transact(port, "x@pass.test", "alice@example.com", &signed).starts_with("250"));
    let got = delivered_with(&s.env, "inctemp");
    assert!(arc_result(&got).starts_with("arc=temperror"), "{got}");

    // The counter, by result.
    let metrics = http_get(mon, "/metrics");
    for (result, at_least) in [("pass", 1.0), ("fail", 2.0), ("none", 1.0), ("temperror", 1.0)] {
        let series = format!("tambo_arc_results_total{{result=\"{result}\"}} ");
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(n >= at_least, "{series}: {n}\n{metrics}");
    }
    server.stop();
}
