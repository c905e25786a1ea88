//! The incoming security-level ratchet (chasquid's "check connection
//! security level") through real SMTP clients against a running tambo:
//! once mail from a domain whose SPF passed has arrived over TLS, plain-text
//! mail claiming that domain is refused at MAIL FROM with 550 5.7.3, until
//! `tambo domaininfo-remove` resets the domain. swaks sends every message
//! (with and without STARTTLS); the fake DNS of the test environment serves
//! the SPF records.

use std::path::PathBuf;
use std::process::Command;

use tambo_tests::{RawClient, TestEnv, bin, have, run};

/// The outcome of one swaks session: did it succeed, and its transcript.
fn swaks(env: &TestEnv, from: &str, tls: bool, tag: &str) -> (bool, String) {
    let mut cmd = Command::new("swaks");
    cmd.args(["--server", &format!("127.0.0.1:{}", env.smtp_port)])
        .args(["--helo", "client.test"])
        .args(["--from", from])
        .args(["--to", "alice@example.com"])
        .args(["--header", &format!("Subject: {tag}")])
        .args(["--body", &format!("Body of {tag}.")])
        .args(["--timeout", "20"]);
    if tls {
        // swaks does not verify the (self-signed) certificate by default.
        cmd.arg("--tls");
    }
    run(&mut cmd)
}

fn domaininfo_file(env: &TestEnv, domain: &str) -> PathBuf {
    env.data_dir.join("domaininfo").join(format!("s:{domain}"))
}

/// `tambo domaininfo-remove DOMAIN`: whether it succeeded (silently, as
/// chasquid-util does) and what it printed.
fn domaininfo_remove(env: &TestEnv, domain: &str) -> (bool, String) {
    run(Command::new(bin("tambo"))
        .arg("-C")
        .arg(&env.config_dir)
        .args(["domaininfo-remove", domain]))
}

/// Sent and delivered (the tag reaches alice's mailbox).
fn accepted(env: &TestEnv, from: &str, tls: bool, tag: &str) {
    let (ok, out) = swaks(env, from, tls, tag);
    assert!(ok, "{from} (tls: {tls}) refused:\n{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    env.wait_delivered("alice@example.com", tag);
}

/// Refused at MAIL FROM by the ratchet.
fn refused(env: &TestEnv, from: &str, tag: &str) {
    let (ok, out) = swaks(env, from, false, tag);
    assert!(!ok, "plain text mail from {from} was accepted:\n{out}");
    let line = out
        .lines()
        .find(|l| l.contains("550 5.7.3"))
        .unwrap_or_else(|| panic!("no 550 5.7.3 for {from}:\n{out}"));
    assert!(line.contains("Security level check failed"), "{line}");
    let domain = from.rsplit('@').next().expect("domain");
    assert!(line.contains(domain), "{line}");
    assert!(line.contains("STARTTLS"), "{line}");
}

#[test]
fn plain_text_refused_after_tls() {
    if !have("swaks") {
        panic!("swaks is missing: scripts/test installs it");
    }
    let env = TestEnv::new("");
    env.dns.txt("ratchet.test", "v=spf1 ip4:127.0.0.1 -all");
    env.dns.txt("other.test", "v=spf1 ip4:127.0.0.1 -all");
    env.dns.txt("soft.test", "v=spf1 ~all");
    let mut server = env.start();

    // Nothing recorded: plain text is fine, and records nothing.
    accepted(&env, "a@ratchet.test", false, "plain-before");
    assert!(!domaininfo_file(&env, "ratchet.test").exists());

    // Over STARTTLS with SPF pass: accepted, and the level is raised in
    // chasquid's format (before the 250: the file is there now).
    accepted(&env, "b@ratchet.test", true, "tls-first");
    let file = domaininfo_file(&env, "ratchet.test");
    let text = std::fs::read_to_string(&file).expect("domaininfo file written");
    assert!(text.contains("name: \"ratchet.test\""), "{text}");
    assert!(text.contains("incoming_sec_level: TLS_CLIENT"), "{text}");
    assert!(text.contains("outgoing_sec_level: PLAIN"), "{text}");

    // Plain text claiming the domain is now refused, at MAIL FROM.
    refused(&env, "c@ratchet.test", "plain-after");
    // The same with a raw client: the reply is at MAIL FROM, and the
    // session goes on (RSET, another sender).
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let mail = c.cmd("MAIL FROM:<d@ratchet.test>");
    assert!(mail.starts_with("550 5.7.3 "), "{mail}");
    assert!(c.cmd("RCPT TO:<alice@example.com>").starts_with("503"));
    assert!(c.cmd("MAIL FROM:<d@other.test>").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    c.cmd("QUIT");
    // TLS still works, other domains are not affected.
    accepted(&env, "e@ratchet.test", true, "tls-again");
    accepted(&env, "f@other.test", false, "other-plain");

    // SPF softfail or none: TLS does not raise anything.
    accepted(&env, "g@soft.test", true, "soft-tls");
    accepted(&env, "h@none.test", true, "none-tls");
    assert!(!domaininfo_file(&env, "soft.test").exists());
    assert!(!domaininfo_file(&env, "none.test").exists());
    accepted(&env, "i@soft.test", false, "soft-plain");
    accepted(&env, "j@none.test", false, "none-plain");

    // Authenticated submissions neither raise nor are checked.
    let (ok, out) = run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", env.submission_port)])
        .args(["--from", "alice@example.com", "--to", "bob@example.com"])
        .args(["--tls", "--auth", "PLAIN"])
        .args(["--auth-user", "alice@example.com", "--auth-password", "secret-pw"])
        .args(["--header", "Subject: submitted"]));
    assert!(ok, "{out}");
    assert!(!domaininfo_file(&env, "example.com").exists());

    // The level survives a restart.
    server.stop();
    let mut server = env.start();
    refused(&env, "k@ratchet.test", "after-restart");

    // `tambo domaininfo-remove` against the running server: forgotten at
    // once, plain text accepted again.
    let (ok, out) = domaininfo_remove(&env, "ratchet.test");
    assert!(ok && out.is_empty(), "{out}");
    assert!(!file.exists());
    accepted(&env, "l@ratchet.test", false, "plain-after-remove");
    // Nothing recorded any more: chasquid-util's error.
    let (ok, out) = domaininfo_remove(&env, "ratchet.test");
    assert!(!ok, "{out}");
    assert_eq!(out.trim(), "Error removing domaininfo entry: does not exist");

    // Raised again, then removed while tambod is stopped (the file goes).
    accepted(&env, "m@ratchet.test", true, "tls-second");
    assert!(file.exists());
    server.stop();
    // Removed while tambod is stopped: the file goes.
    let (ok, out) = domaininfo_remove(&env, "ratchet.test");
    assert!(ok && out.is_empty(), "{out}");
    assert!(!file.exists());
    let (ok, out) = domaininfo_remove(&env, "ratchet.test");
    assert!(!ok && out.contains("does not exist"), "{out}");
    let _server = env.start();
    accepted(&env, "n@ratchet.test", false, "plain-after-offline-remove");
}
