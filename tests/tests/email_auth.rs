//! SPF, DKIM and DMARC through real SMTP sessions against a running
//! tambo, with a fake DNS (dnsmasq on loopback) and python3-dkim as the
//! independent DKIM implementation: `dkimsign` signs what tambo verifies,
//! and python's verifier checks what tambo signs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tambo_tests::{RawClient, TestEnv, filter, free_port, have, is_root, run, wait_for};

const PYTHON: &str = "/usr/bin/python3";

/// dnsmasq serving TXT records on 127.0.0.1:port; killed on drop.
struct FakeDns {
    child: Child,
    port: u16,
    /// Where dnsmasq forwards `sub.temperror.test`: it answers SERVFAIL at
    /// once, so the temporary error is quick and deterministic.
    _failing: tambo_tests::fakedns::FakeDns,
}

impl FakeDns {
    fn start(records: &[(String, String)]) -> FakeDns {
        let dnsmasq = if Path::new("/usr/sbin/dnsmasq").exists() {
            "/usr/sbin/dnsmasq".to_string()
        } else {
            "dnsmasq".to_string()
        };
        let port = free_port();
        let failing = tambo_tests::fakedns::FakeDns::start();
        failing.servfail("sub.temperror.test");
        let mut cmd = Command::new(dnsmasq);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local=/test/",
        ])
        .arg(format!("--port={port}"))
        // sub.temperror.test is forwarded to a server that fails it.
        .arg(format!(
            "--server=/sub.temperror.test/127.0.0.1#{}",
            failing.addr.port()
        ));
        if is_root() {
            cmd.arg("--user=root");
        }
        for (name, text) in records {
            // Character-strings of at most 255 bytes, separated by commas.
            let strings: Vec<String> = text
                .as_bytes()
                .chunks(250)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            cmd.arg(format!("--txt-record={name},{}", strings.join(",")));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let dns = FakeDns {
            child,
            port,
            _failing: failing,
        };
        wait_for(Duration::from_secs(10), "dnsmasq to answer", || {
            dns.txt("probe.pass.test").is_some()
        });
        dns
    }

    /// A TXT lookup through dnsmasq (None on any error).
    fn txt(&self, name: &str) -> Option<String> {
        let out = Command::new(PYTHON)
            .args([
                "-c",
                "import sys, dns.resolver\n\
                 r = dns.resolver.Resolver(configure=False)\n\
                 r.nameservers = ['127.0.0.1']\n\
                 r.port = int(sys.argv[2])\n\
                 r.lifetime = 2\n\
                 print(b''.join(b''.join(x.strings) for x in r.resolve(sys.argv[1], 'TXT')).decode())\n",
                name,
                &self.port.to_string(),
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prerequisites() -> bool {
    tambo_tests::require("dkimsign", "python3-dkim")
        && tambo_tests::require("openssl", "openssl")
        && tambo_tests::require("dnsmasq", "dnsmasq")
}

/// One SMTP transaction; returns (MAIL reply, DATA end reply or "").
fn transact(port: u16, helo: &str, from: &str, to: &str, message: &str) -> (String, String) {
    let mut c = RawClient::connect(port);
    assert!(c.cmd(&format!("EHLO {helo}")).starts_with("250"));
    let mail = c.cmd(&format!("MAIL FROM:<{from}>"));
    if !mail.starts_with("250") {
        return (mail, String::new());
    }
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    assert!(rcpt.starts_with("250"), "RCPT: {rcpt}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(tambo_tests::crlf_lines(message).as_bytes());
    let end = c.cmd(".");
    c.cmd("QUIT");
    (mail, end)
}

fn message(from: &str, subject: &str, tag: &str) -> String {
    format!(
        "From: Sender <{from}>\r\nTo: alice@example.com\r\nSubject: {subject}\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{tag}@test>\r\n\r\n\
         Body of {tag}.\r\nSecond line.\r\n"
    )
}

/// The last message delivered to alice whose text contains `tag`.
fn delivered_with(env: &TestEnv, tag: &str) -> String {
    env.wait_last_delivered("alice@example.com", tag)
}

/// Send `message` to alice on the smtp port (EHLO `helo`, MAIL FROM
/// `from`); MAIL and the end of DATA must be accepted. Returns the message
/// as delivered (found by `tag`).
fn accepted(env: &TestEnv, helo: &str, from: &str, message: &str, tag: &str) -> String {
    let (mail, end) = transact(env.smtp_port, helo, from, "alice@example.com", message);
    assert!(mail.starts_with("250") && end.starts_with("250"), "{mail} {end}");
    delivered_with(env, tag)
}

/// The `dkim=` entry of Authentication-Results for selector `sel`; it
/// must name the domain and carry the start of the signature.
fn dkim_line(got: &str, sel: &str) -> String {
    let line = got
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("dkim=") && l.contains(&format!(" header.s={sel} ")))
        .unwrap_or_else(|| panic!("no dkim= result for {sel}: {got}"))
        .to_string();
    assert!(line.contains(" header.d=signed.test "), "{line}");
    assert!(line.contains(" header.b="), "{line}");
    line
}

/// Sign `msg` with python3-dkim's `dkimsign` (relaxed/relaxed).
fn dkimsign(msg: &str, selector: &str, domain: &str, key: &Path, alg: &str) -> String {
    filter(
        Command::new("dkimsign")
            .args([
                "--hcanon",
                "relaxed",
                "--bcanon",
                "relaxed",
                "--signalg",
                alg,
                selector,
                domain,
            ])
            .arg(key),
        msg.as_bytes(),
    )
}

/// Foreign keys for python's signer: (RSA PKCS#8 PEM path, its TXT record),
/// (Ed25519 seed file, its TXT record).
fn foreign_keys(dir: &Path) -> ((PathBuf, String), (PathBuf, String)) {
    let rsa = dir.join("py-rsa.pem");
    let (ok, out) = run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&rsa));
    assert!(ok, "{out}");
    let rsa_rec = tambo_tests::dkim_rsa_record(&rsa);
    let ed = dir.join("py-ed.key");
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import nacl.signing, base64\n\
             k = nacl.signing.SigningKey.generate()\n\
             print(base64.b64encode(bytes(k)).decode())\n\
             print(base64.b64encode(bytes(k.verify_key)).decode())\n",
        ])
        .output()
        .expect("python nacl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut lines = text.lines();
    std::fs::write(&ed, lines.next().expect("seed")).expect("write seed");
    let ed_rec = format!("v=DKIM1; k=ed25519; p={}", lines.next().expect("public"));
    ((rsa, rsa_rec), (ed, ed_rec))
}

fn base_records() -> Vec<(String, String)> {
    let r = |n: &str, t: &str| (n.to_string(), t.to_string());
    vec![
        r("probe.pass.test", "ok"),
        r("pass.test", "v=spf1 ip4:127.0.0.1 -all"),
        r("fail.test", "v=spf1 -all exp=exp.fail.test"),
        r("exp.fail.test", "Mail from this domain never comes from %{i}"),
        r("softfail.test", "v=spf1 ~all"),
        // A single-label domain, as in chasquid's t-16 (and private nets).
        r("srv-a", "v=spf1 -all"),
        r("temperror.test", "v=spf1 include:sub.temperror.test -all"),
        r("helo.test", "v=spf1 ip4:127.0.0.1 -all"),
        // Signs with DKIM but its SPF does not authorise us.
        r("signed.test", "v=spf1 ?all"),
        r("_dmarc.signed.test", "v=DMARC1; p=reject"),
    ]
}

#[test]
fn spf_results_through_smtp() {
    if !prerequisites() {
        return;
    }
    let dns = FakeDns::start(&base_records());
    let env = TestEnv::new(&format!("dns_servers: \"127.0.0.1:{}\"", dns.port));
    let _server = env.start();
    let port = env.smtp_port;

    let got = accepted(
        &env,
        "client.pass.test",
        "a@pass.test",
        &message("a@pass.test", "spf pass", "spfpass"),
        "spfpass",
    );
    // Our Received on top, the results right under it.
    assert!(
        got.starts_with("Received: from client.pass.test ([127.0.0.1])"),
        "{got}"
    );
    assert!(got.contains("\nReceived-SPF: pass ("), "{got}");
    assert!(got.contains("client-ip=127.0.0.1;"), "{got}");
    assert!(got.contains("envelope-from=\"a@pass.test\""), "{got}");
    assert!(got.contains("Authentication-Results: mx.example.com;"), "{got}");
    assert!(got.contains("spf=pass"), "{got}");
    assert!(got.contains("smtp.mailfrom=a@pass.test"), "{got}");
    // No From domain policy: DMARC none; unsigned: dkim=none.
    assert!(got.contains("dkim=none"), "{got}");

    // fail: refused at MAIL FROM with the domain's explanation.
    let (mail, _) = transact(port, "client.test", "b@fail.test", "alice@example.com", "");
    assert!(mail.starts_with("550 5.7.23 "), "{mail}");
    assert!(mail.contains("fail.test"), "{mail}");
    assert!(
        mail.contains("Mail from this domain never comes from 127.0.0.1"),
        "{mail}"
    );

    // A single-label domain is evaluated too, as chasquid does.
    let (mail, _) = transact(port, "client.test", "usera@srv-a", "alice@example.com", "");
    assert!(
        mail.starts_with("550 5.7.23 SPF check failed: srv-a does not allow"),
        "{mail}"
    );

    // softfail, and temperror (the DNS fails): accepted and recorded,
    // never refused.
    for (from, subject, tag, result) in [
        ("c@softfail.test", "soft", "spfsoft", "softfail"),
        ("d@temperror.test", "temp", "spftemp", "temperror"),
    ] {
        let got = accepted(&env, "client.test", from, &message(from, subject, tag), tag);
        assert!(got.contains(&format!("\nReceived-SPF: {result}")), "{got}");
        assert!(got.contains(&format!("spf={result}")), "{got}");
    }

    // The null sender: the HELO identity is checked.
    let got = accepted(
        &env,
        "helo.test",
        "",
        &message("postmaster@helo.test", "bounce", "spfhelo"),
        "spfhelo",
    );
    assert!(got.contains("\nReceived-SPF: pass"), "{got}");
    assert!(got.contains("smtp.helo=helo.test"), "{got}");
    drop(dns);
}

#[test]
fn dkim_verification_and_dmarc() {
    if !prerequisites() {
        return;
    }
    let keydir = tempfile::tempdir().expect("tempdir");
    let ((rsa_key, rsa_rec), (ed_key, ed_rec)) = foreign_keys(keydir.path());
    let mut records = base_records();
    records.push(("py._domainkey.signed.test".into(), rsa_rec));
    records.push(("pyed._domainkey.signed.test".into(), ed_rec));
    let dns = FakeDns::start(&records);
    let env = TestEnv::new(&format!("dns_servers: \"127.0.0.1:{}\"", dns.port));
    let server = env.start();

    // Signed twice (RSA and Ed25519) by dkimsign: both pass, and DMARC
    // passes through DKIM alignment even though SPF does not pass.
    let msg = message("x@signed.test", "signed twice", "dkimgood");
    let signed = dkimsign(
        &dkimsign(&msg, "py", "signed.test", &rsa_key, "rsa-sha256"),
        "pyed",
        "signed.test",
        &ed_key,
        "ed25519-sha256",
    );
    let got = accepted(&env, "client.test", "x@signed.test", &signed, "dkimgood");
    assert!(got.contains("spf=neutral"), "{got}");
    assert!(
        dkim_line(&got, "py").starts_with("dkim=pass header.d=signed.test "),
        "{got}"
    );
    assert!(
        dkim_line(&got, "pyed").starts_with("dkim=pass header.d=signed.test "),
        "{got}"
    );
    assert!(
        got.contains("dmarc=pass header.from=signed.test policy.dmarc=reject"),
        "{got}"
    );

    // Tampered body, tampered header: fail, and DMARC fails (accepted:
    // enforcement is off by default).
    let msg = message("x@signed.test", "tamper body", "dkimbody");
    let signed = dkimsign(&msg, "py", "signed.test", &rsa_key, "rsa-sha256").replace("Second line.", "Second line!");
    let got = accepted(&env, "client.test", "x@signed.test", &signed, "dkimbody");
    assert!(dkim_line(&got, "py").starts_with("dkim=fail ("), "{got}");
    assert!(
        got.contains("dmarc=fail (") && got.contains("header.from=signed.test policy.dmarc=reject"),
        "{got}"
    );

    let msg = message("x@signed.test", "tamper header", "dkimhdr");
    let signed = dkimsign(&msg, "pyed", "signed.test", &ed_key, "ed25519-sha256")
        .replace("Subject: tamper header", "Subject: tampered header");
    let got = accepted(&env, "client.test", "x@signed.test", &signed, "dkimhdr");
    assert!(dkim_line(&got, "pyed").starts_with("dkim=fail ("), "{got}");
    assert!(got.contains("dmarc=fail"), "{got}");
    drop(server);

    // With reject_dmarc_failures, the p=reject failure is refused at DATA;
    // the good message still passes.
    let env = TestEnv::new(&format!(
        "dns_servers: \"127.0.0.1:{}\"\nreject_dmarc_failures: true",
        dns.port
    ));
    let server = env.start();
    let msg = message("x@signed.test", "tamper again", "dmarcreject");
    let signed = dkimsign(&msg, "py", "signed.test", &rsa_key, "rsa-sha256").replace("Second line.", "Evil line.");
    let (_, end) = transact(
        env.smtp_port,
        "client.test",
        "x@signed.test",
        "alice@example.com",
        &signed,
    );
    assert!(end.starts_with("550 5.7.1 "), "{end}");
    assert!(end.contains("DMARC"), "{end}");
    let msg = message("x@signed.test", "fine", "dmarcok");
    let signed = dkimsign(&msg, "py", "signed.test", &rsa_key, "rsa-sha256");
    let got = accepted(&env, "client.test", "x@signed.test", &signed, "dmarcok");
    assert!(got.contains("dmarc=pass"), "{got}");
    assert!(
        !env.delivered("alice@example.com")
            .unwrap_or_default()
            .contains("dmarcreject")
    );
    drop(server);
}

/// Keys made by `tambo dkim-keygen` (RSA and Ed25519) sign the DSNs tambo
/// sends for its host name's domain; python3-dkim verifies both
/// signatures. As root, no key is readable by smtpd's or queued's user.
#[test]
fn tambo_signatures_verified_by_python_dkim() {
    if !prerequisites() {
        return;
    }
    let dns = FakeDns::start(&base_records());
    let env = TestEnv::new(&format!("dns_servers: \"127.0.0.1:{}\"", dns.port));
    let host_dir = env.config_dir.join("domains/mx.example.com");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    let failpipe = env.tmp.path().join("fail.sh");
    std::fs::write(
        &failpipe,
        "#!/bin/sh\ncat >/dev/null\necho 'no such mailbox here'\nexit 1\n",
    )
    .expect("script");
    env.set_aliases(&format!("bounce: | {}\n", failpipe.display()));
    let cdir = env.config_dir.to_str().expect("utf8");
    let mut records = Vec::new();
    for (sel, algo) in [("rsa1", "rsa2048"), ("ed1", "ed25519")] {
        let (ok, out) = run(Command::new(tambo_tests::bin("tambo")).args([
            "-C",
            cdir,
            "dkim-keygen",
            "mx.example.com",
            sel,
            &format!("--algo={algo}"),
        ]));
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("{sel}._domainkey.mx.example.com\tTXT\t\"v=DKIM1; k=")),
            "{out}"
        );
        let (ok, dns_out) =
            run(Command::new(tambo_tests::bin("tambo")).args(["-C", cdir, "dkim-dns", "mx.example.com", sel]));
        assert!(ok, "{dns_out}");
        let txt: String = dns_out.split('"').skip(1).step_by(2).collect();
        assert!(txt.starts_with("v=DKIM1; k="), "{dns_out}");
        records.push((sel.to_string(), txt));
    }
    // Never overwritten.
    let (ok, out) =
        run(Command::new(tambo_tests::bin("tambo")).args(["-C", cdir, "dkim-keygen", "mx.example.com", "ed1"]));
    assert!(!ok && out.contains("already exists"), "{out}");

    if is_root() {
        for sel in ["rsa1", "ed1"] {
            let key = host_dir.join(format!("dkim:{sel}.pem"));
            let md = std::fs::metadata(&key).expect("key");
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            assert_eq!(md.permissions().mode() & 0o777, 0o640, "{}", key.display());
            let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(md.gid()))
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_default();
            assert_eq!(group, "tambo-auth");
            for user in ["tambo-smtpd", "tambo-queue", "tambo-deliver", "tambo-hook"] {
                let (ok, _) = run(Command::new("runuser").args(["-u", user, "--", "cat"]).arg(&key));
                assert!(!ok, "{user} can read {}", key.display());
            }
            let (ok, out) = run(Command::new("runuser")
                .args(["-u", "tambo-auth", "--", "cat"])
                .arg(&key));
            assert!(ok, "tambo-auth cannot read {}: {out}", key.display());
        }
    }

    let server = env.start();
    assert!(server.log().contains("2 DKIM key(s)"), "{}", server.log());
    // bob writes to an alias whose pipe fails: the DSN to bob comes from
    // MAILER-DAEMON@mx.example.com and is signed with both keys.
    let (mail, end) = transact(
        env.smtp_port,
        "client.test",
        "bob@example.com",
        "bounce@example.com",
        &message("bob@example.com", "will bounce", "dsnsigned"),
    );
    assert!(mail.starts_with("250") && end.starts_with("250"), "{mail} {end}");
    let all = env.wait_delivered("bob@example.com", "Final-Recipient: rfc822; bounce@example.com");
    let dsn = &all[all.find("DKIM-Signature:").expect("signed DSN")..];
    assert!(dsn.contains("a=rsa-sha256; s=rsa1; d=mx.example.com"), "{dsn}");
    assert!(dsn.contains("a=ed25519-sha256; s=ed1; d=mx.example.com"), "{dsn}");
    let recfile = env.tmp.path().join("records");
    std::fs::write(
        &recfile,
        records.iter().map(|(s, t)| format!("{s}\t{t}\n")).collect::<String>(),
    )
    .expect("records");
    assert_eq!(python_verify(&recfile, dsn), "True True", "{dsn}");
    assert_eq!(
        python_verify(&recfile, &dsn.replacen("Delivery", "Dilivery", 1)),
        "False False"
    );
    drop(server);

    // A key that does not load stops tambod at start-up, naming the file.
    std::fs::write(
        host_dir.join("dkim:broken.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("broken key");
    let out = Command::new(tambo_tests::bin("tambod"))
        .arg(format!("--config_dir={}", env.config_dir.display()))
        .stdin(Stdio::null())
        .output()
        .expect("tambod");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dkim:broken.pem"), "{text}");
    drop(dns);
}

/// Verify the first two DKIM signatures of `m` with python3-dkim, the
/// public keys coming from `recfile` (selector TAB record lines).
fn python_verify(recfile: &Path, m: &str) -> String {
    filter(
        Command::new(PYTHON)
            .args([
                "-c",
                "import sys, dkim\n\
             recs = dict(l.split('\\t', 1) for l in open(sys.argv[1]).read().splitlines())\n\
             def dns(name, timeout=5):\n\
             \x20   return recs[name.decode().split('.')[0]].encode()\n\
             d = dkim.DKIM(sys.stdin.buffer.read())\n\
             def v(i):\n\
             \x20   try:\n\
             \x20       return d.verify(idx=i, dnsfunc=dns)\n\
             \x20   except dkim.DKIMException as e:\n\
             \x20       return False\n\
             print(v(0), v(1))\n",
            ])
            .arg(recfile),
        m.as_bytes(),
    )
    .trim()
    .to_string()
}

/// Keys for the domain itself, and an authenticated submission (AUTH PLAIN
/// over STARTTLS, with swaks): the delivered message carries one signature
/// per key, which python3-dkim verifies; no SPF/DKIM check is recorded for
/// an authenticated session.
#[test]
fn authenticated_submission_signed() {
    if !prerequisites() || !have("swaks") {
        return;
    }
    let dns = FakeDns::start(&base_records());
    let env = TestEnv::new(&format!("dns_servers: \"127.0.0.1:{}\"", dns.port));
    let cdir = env.config_dir.to_str().expect("utf8");
    let mut records = String::new();
    for (sel, algo) in [("s1", "rsa3072"), ("s2", "ed25519")] {
        let (ok, out) = run(Command::new(tambo_tests::bin("tambo")).args([
            "-C",
            cdir,
            "dkim-keygen",
            "example.com",
            sel,
            &format!("--algo={algo}"),
        ]));
        assert!(ok, "{out}");
        let txt: String = out
            .lines()
            .find(|l| l.contains("._domainkey."))
            .unwrap_or_default()
            .split('"')
            .skip(1)
            .step_by(2)
            .collect();
        records.push_str(&format!("{sel}\t{txt}\n"));
    }
    let recfile = env.tmp.path().join("records");
    std::fs::write(&recfile, records).expect("records");
    let _server = env.start();
    let data = env.tmp.path().join("message.eml");
    std::fs::write(
        &data,
        "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: signed by tambo\r\n\
         Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <authsigned@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Hello Bob,   with  spaces.\r\n\r\n\r\n",
    )
    .expect("message");
    let (ok, out) = run(Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", env.submission_port),
            "-tls",
            "--auth",
            "PLAIN",
        ])
        .args([
            "--auth-user",
            tambo_tests::USER,
            "--auth-password",
            tambo_tests::PASSWORD,
        ])
        .args(["--from", "alice@example.com", "--to", "bob@example.com", "--data"])
        .arg(&data));
    assert!(ok, "{out}");
    let all = env.wait_delivered("bob@example.com", "authsigned@example.com");
    let msg = &all[all.find("DKIM-Signature:").expect("signed")..];
    assert!(msg.contains("a=rsa-sha256; s=s1; d=example.com"), "{msg}");
    assert!(msg.contains("a=ed25519-sha256; s=s2; d=example.com"), "{msg}");
    assert!(!all.contains("Received-SPF"), "{all}");
    assert!(!all.contains("Authentication-Results"), "{all}");
    assert_eq!(python_verify(&recfile, msg), "True True", "{msg}");
    assert_eq!(
        python_verify(&recfile, &msg.replace("Hello Bob", "Hello Eve")),
        "False False"
    );
    assert_eq!(
        python_verify(&recfile, &msg.replace("Subject: signed", "Subject: forged")),
        "False False"
    );
    drop(dns);
}
