//! AUTH to the smarthost: tambo A sends everything through `relay_host`,
//! a second tambo (B) whose submission port requires AUTH. The
//! credentials are in A's `relay_auth_file`, read by A's authd and handed
//! to deliverd over IPC; they are sent only after STARTTLS with a
//! certificate valid for the relay's name.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use tambo_tests::fakedns::FakeDns;
use tambo_tests::{PASSWORD, RawClient, TestEnv, wait_for};

/// A CA (PEM) and a certificate for `name` signed by it: (ca, chain, key).
fn ca_and_cert(name: &str) -> (String, String, String) {
    let ca = tambo_tests::certs::TestCa::new("tambo relay test CA");
    let cert = ca.issue(&[name]);
    (ca.pem(), cert.chain_pem(), cert.key_pem())
}

fn send(port: u16, from: &str, to: &str, body: &str) {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: relay\r\n\r\n{body}\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
}

fn write_credentials(env: &TestEnv, line: &str) {
    let path = env.config_dir.join("relay-auth");
    std::fs::write(&path, format!("# the smarthost\n{line}\n")).expect("write relay-auth");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if tambo_tests::is_root() {
        let auth = nix::unistd::User::from_name("tambo-auth")
            .expect("lookup")
            .expect("tambo-auth");
        nix::unistd::chown(&path, Some(auth.uid), Some(auth.gid)).expect("chown");
    }
}

#[test]
fn relay_host_with_auth_after_verified_tls() {
    // B: the smarthost, mx.relay.test, with a certificate from a test CA;
    // it serves remote.test (carol) and lets alice@example.com relay.
    let (ca, chain, key) = ca_and_cert("mx.relay.test");
    let b = TestEnv::new("");
    std::fs::remove_dir_all(b.config_dir.join("certs/mx.example.com")).expect("rm certs");
    let certs = b.config_dir.join("certs/mx.relay.test");
    std::fs::create_dir_all(&certs).expect("mkdir");
    std::fs::write(certs.join("fullchain.pem"), chain).expect("chain");
    std::fs::write(certs.join("privkey.pem"), key).expect("key");
    std::fs::create_dir_all(b.config_dir.join("domains/remote.test")).expect("mkdir");
    let (ok, out) = tambo_tests::run(
        std::process::Command::new(tambo_tests::bin("tambo"))
            .args([
                "-C",
                b.config_dir.to_str().expect("utf8"),
                "user-add",
                "carol@remote.test",
            ])
            .args(["--password", "carol-pw"]),
    );
    assert!(ok, "{out}");
    b.fix_permissions();
    let mut rb = b.start();

    // A: everything through B's submission port, as alice@example.com.
    let dns = FakeDns::start();
    dns.addr("mx.relay.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let a = TestEnv::new("");
    let ca_file = a.tmp.path().join("relay-ca.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    let conf = |with_ca: bool| {
        let mut c = format!(
            "dns_servers: \"{}\"\nrelay_host: \"mx.relay.test:{}\"\nrelay_auth_file: \"relay-auth\"\nmin_retry_delay: \"1s\"\n",
            dns.addr, b.submission_port
        );
        if with_ca {
            c.push_str(&format!("tls_extra_ca_file: \"{}\"\n", ca_file.display()));
        }
        c
    };
    a.write_conf(&conf(false));
    a.set_aliases("fwd: carol@remote.test\n");
    write_credentials(&a, &format!("alice@example.com:{PASSWORD}"));
    let mut ra = a.start();

    // 1. B's certificate cannot be verified (the CA is not trusted yet):
    // the credentials are not sent and the message waits in the queue.
    send(a.smtp_port, "bob@example.com", "fwd@example.com", "first message");
    wait_for(Duration::from_secs(30), "the refusal to send credentials", || {
        ra.log().contains("relay credentials not sent")
    });
    assert!(b.delivered("carol@remote.test").is_none());
    assert!(!rb.log().contains("auth succeeded"), "{}", rb.log());

    // 2. Trust the CA (reload): AUTH PLAIN after STARTTLS, delivered.
    a.write_conf(&conf(true));
    a.fix_permissions();
    write_credentials(&a, &format!("alice@example.com:{PASSWORD}"));
    ra.signal(nix::sys::signal::Signal::SIGHUP);
    let got = b.wait_delivered("carol@remote.test", "first message");
    assert!(got.contains("ESMTPSA"), "B received it over TLS, authenticated:\n{got}");
    // B's mail log line comes through its supervisor, a moment after
    // the SMTP reply that A has already acted on.
    wait_for(Duration::from_secs(10), "B's mail log of the AUTH", || {
        rb.log().contains("auth succeeded for alice@example.com")
    });

    // 3. A wrong password: B refuses AUTH, the message is deferred.
    write_credentials(&a, "alice@example.com:not-the-password");
    ra.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(20), "the reload", || {
        ra.log().matches("relay_host credentials loaded").count() >= 3
    });
    send(a.smtp_port, "bob@example.com", "fwd@example.com", "second message");
    wait_for(Duration::from_secs(30), "B's refusal of AUTH", || {
        ra.log().contains("AUTH") && ra.log().contains("535")
    });
    assert!(
        !b.delivered("carol@remote.test")
            .unwrap_or_default()
            .contains("second message")
    );
    wait_for(Duration::from_secs(10), "B's mail log of the refused AUTH", || {
        rb.log().contains("auth failed for alice@example.com")
    });
    // The password never reaches a log.
    assert!(!ra.log().contains(PASSWORD) && !ra.log().contains("not-the-password"));
    ra.stop();
    rb.stop();
}
