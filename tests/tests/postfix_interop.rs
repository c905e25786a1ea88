//! Interoperability with a real Postfix (Debian's), run privately on
//! loopback with its own configuration, queue and TLS certificate:
//!
//! - tambo → Postfix: remote.test's MX (fake DNS) is 127.0.0.1, tambo's
//!   `outgoing_smtp_port` is Postfix's port; tambo uses STARTTLS, checks
//!   the certificate against a test CA and records TLS_SECURE. The mail
//!   comes from a remote sender through an alias, so Postfix sees the SRS
//!   sender (in the Return-Path its pipe delivery adds).
//! - Postfix → tambo: Postfix's `relayhost` is tambo's smtp port; Postfix
//!   uses STARTTLS and tambo delivers to alice's mailbox.
//!
//! Postfix runs as root only (its master drops to `postfix`): the test is
//! skipped, saying so, when not root or when Postfix is not installed.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tambo_tests::fakedns::FakeDns;
use tambo_tests::{RawClient, TestEnv, free_port, run, wait_for};

/// A CA (PEM) and a certificate for `name` signed by it: (ca, chain, key).
fn ca_and_cert(name: &str) -> (String, String, String) {
    let ca = tambo_tests::certs::TestCa::new("tambo postfix test CA");
    let cert = ca.issue(&[name]);
    (ca.pem(), cert.chain_pem(), cert.key_pem())
}

/// A private Postfix instance; stopped when dropped.
struct Postfix {
    dir: PathBuf,
    etc: PathBuf,
    port: u16,
    out: PathBuf,
}

impl Postfix {
    fn start(root: &Path, tambo_port: u16, chain: &str, key: &str) -> Postfix {
        let dir = root.to_path_buf();
        let etc = dir.join("etc");
        let out = dir.join("out");
        for d in [&etc, &dir.join("queue"), &dir.join("data"), &out] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::write(etc.join("cert.pem"), chain).expect("cert");
        std::fs::write(etc.join("key.pem"), key).expect("key");
        std::fs::set_permissions(etc.join("key.pem"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        // Local delivery: a pipe that appends each message, with the
        // Return-Path Postfix adds (flags=R), to out/<recipient>.
        let mda = dir.join("mda.sh");
        std::fs::write(&mda, format!("#!/bin/sh\ncat >> '{}'/\"$1\"\n", out.display())).expect("mda");
        std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let port = free_port();
        let d = dir.display();
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.remote.test\n\
             mydestination = remote.test\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             local_recipient_maps =\n\
             local_transport = deliver\n\
             alias_maps =\n\
             alias_database =\n\
             relayhost = [127.0.0.1]:{tambo_port}\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtpd_tls_security_level = may\n\
             smtpd_tls_cert_file = {e}/cert.pem\n\
             smtpd_tls_key_file = {e}/key.pem\n\
             smtp_tls_security_level = may\n\
             smtp_tls_loglevel = 1\n\
             smtpd_tls_loglevel = 1\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n",
            e = etc.display()
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("main.cf");
        // The packaged master.cf, without chroot, smtpd on our port.
        let packaged = std::fs::read_to_string("/etc/postfix/master.cf").expect("/etc/postfix/master.cf");
        let mut master = String::new();
        for line in packaged.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with(|c: char| c.is_ascii_alphanumeric()) && fields.len() >= 8 {
                let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
                if f[0] == "smtp" && f[1] == "inet" {
                    f[0] = format!("127.0.0.1:{port}");
                }
                f[4] = "n".into();
                master.push_str(&f.join(" "));
            } else {
                master.push_str(line);
            }
            master.push('\n');
        }
        master.push_str(&format!(
            "deliver unix - n n - - pipe\n  flags=R user=nobody argv={} ${{recipient}}\n",
            mda.display()
        ));
        std::fs::write(etc.join("master.cf"), master).expect("master.cf");
        let pf = Postfix { dir, etc, port, out };
        let _ = pf.postfix(&["set-permissions"]);
        let (ok, text) = pf.postfix(&["check"]);
        assert!(ok, "postfix check:\n{text}");
        let (ok, text) = pf.postfix(&["start"]);
        assert!(ok, "postfix start:\n{text}\n{}", pf.log());
        wait_for(Duration::from_secs(30), "Postfix's smtpd", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        pf
    }

    fn postfix(&self, args: &[&str]) -> (bool, String) {
        run(Command::new("postfix").arg("-c").arg(&self.etc).args(args))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    fn delivered(&self, rcpt: &str) -> String {
        std::fs::read_to_string(self.out.join(rcpt)).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix(&["stop"]);
    }
}

fn send(port: u16, from: &str, to: &str, body: &str) {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    assert!(r.starts_with("250"), "RCPT: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: interop\r\n\r\n{body}\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250"), "DATA: {r}");
    c.cmd("QUIT");
}

#[test]
fn tambo_and_postfix_deliver_to_each_other() {
    if !tambo_tests::require_root("a private Postfix") || !tambo_tests::require("postfix", "postfix") {
        return;
    }
    let (ca, chain, key) = ca_and_cert("mx.remote.test");
    let dns = FakeDns::start();
    dns.mx("remote.test", 10, "mx.remote.test");
    dns.addr("mx.remote.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let pf_tmp = tempfile::Builder::new()
        .prefix("tambo-postfix-")
        .tempdir()
        .expect("tmp");
    let env = TestEnv::new("");
    let pf = Postfix::start(pf_tmp.path(), env.smtp_port, &chain, &key);
    let ca_file = env.tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("ca");
    env.write_conf(&format!(
        "dns_servers: \"{}\"\noutgoing_smtp_port: {}\ntls_extra_ca_file: \"{}\"\n",
        dns.addr,
        pf.port,
        ca_file.display()
    ));
    env.set_aliases("fwd: carol@remote.test\n");
    let mut server = env.start();

    // tambo → Postfix, through the MX, with verified STARTTLS.
    send(env.smtp_port, "dave@far.test", "fwd@example.com", "tambo to postfix");
    let mut got = String::new();
    wait_for(Duration::from_secs(60), "Postfix's delivery to carol", || {
        got = pf.delivered("carol@remote.test");
        got.contains("tambo to postfix")
    });
    let return_path = got.lines().find(|l| l.starts_with("Return-Path:")).unwrap_or_default();
    assert!(
        return_path.contains("<SRS0=") && return_path.contains("=far.test=dave@example.com>"),
        "Postfix saw the SRS sender: {return_path}\n{got}"
    );
    let log = pf.log();
    assert!(
        log.contains("Anonymous TLS connection established from localhost[127.0.0.1]")
            || log.contains("TLS connection established from localhost[127.0.0.1]"),
        "Postfix's log shows tambo's STARTTLS:\n{log}"
    );
    let info = env.data_dir.join("domaininfo/s:remote.test");
    wait_for(Duration::from_secs(20), "TLS_SECURE recorded for remote.test", || {
        std::fs::read_to_string(&info).is_ok_and(|t| t.contains("outgoing_sec_level: TLS_SECURE"))
    });

    // Postfix → tambo, through relayhost, with STARTTLS.
    send(pf.port, "carol@remote.test", "alice@example.com", "postfix to tambo");
    let got = env.wait_delivered("alice@example.com", "postfix to tambo");
    assert!(
        got.contains("from mx.remote.test"),
        "tambo's Received names Postfix's EHLO:\n{got}"
    );
    assert!(got.contains("ESMTPS"), "Postfix used STARTTLS into tambo:\n{got}");
    wait_for(Duration::from_secs(20), "Postfix's log of the relay", || {
        let log = pf.log();
        log.contains("to=<alice@example.com>, relay=127.0.0.1[127.0.0.1]") && log.contains("status=sent")
    });
    server.stop();
}
