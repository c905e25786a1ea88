//! The fail2ban filter tambo ships (`packaging/fail2ban/tambo.conf`), run
//! by fail2ban's own `fail2ban-regex` on a mail log that a real tambod
//! wrote: what an abusive client (127.0.0.1) did is matched, line by line;
//! what a legitimate one (127.0.0.2) did is not, a temporary refusal
//! included. The same lines as syslog writes them to /var/log/mail.log
//! give the same answer.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tambo_tests::{PASSWORD, RawClient, TestEnv, USER, require, run, wait_for, workspace_root};

/// `(lines, matched)` of `fail2ban-regex log filter`.
fn fail2ban_regex(log: &Path, filter: &Path) -> (usize, usize) {
    let (ok, out) = run(Command::new("fail2ban-regex").arg(log).arg(filter));
    assert!(ok, "fail2ban-regex: {out}");
    // "Lines: 18 lines, 0 ignored, 8 matched, 10 missed"
    let line = out
        .lines()
        .find(|l| l.starts_with("Lines: "))
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| words[i].parse::<usize>().unwrap_or_else(|_| panic!("{line}"));
    (n(1), n(5))
}

/// The shipped filter where fail2ban finds the `common.conf` it includes.
fn install_filter(dir: &Path) -> std::path::PathBuf {
    let d = dir.join("filter.d");
    std::fs::create_dir_all(&d).expect("mkdir filter.d");
    let filter = d.join("tambo.conf");
    std::fs::copy(workspace_root().join("packaging/fail2ban/tambo.conf"), &filter).expect("copy filter");
    std::os::unix::fs::symlink("/etc/fail2ban/filter.d/common.conf", d.join("common.conf")).expect("symlink");
    filter
}

fn swaks(args: &[&str]) -> (bool, String) {
    run(Command::new("swaks").args(["--timeout", "20"]).args(args))
}

/// A submission with AUTH PLAIN as alice over STARTTLS; `extra` swaks
/// arguments.
fn submission(env: &TestEnv, password: &str, extra: &[&str]) -> (bool, String) {
    let sub = format!("127.0.0.1:{}", env.submission_port);
    let mut args = vec![
        "--server",
        &sub,
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        password,
    ];
    args.extend_from_slice(extra);
    swaks(&args)
}

/// A legitimate client from 127.0.0.2: a submission with the right
/// password, and a message the post-data hook refuses for now.
fn legitimate(env: &TestEnv) {
    let (ok, out) = submission(
        env,
        PASSWORD,
        &[
            "--local-interface",
            "127.0.0.2",
            "--from",
            USER,
            "--to",
            "bob@example.com",
            "--body",
            "legit",
        ],
    );
    assert!(ok, "{out}");
    let smtp = format!("127.0.0.1:{}", env.smtp_port);
    let (ok, out) = swaks(&[
        "--server",
        &smtp,
        "--local-interface",
        "127.0.0.2",
        "--from",
        "sender@remote.test",
        "--to",
        "alice@example.com",
        "--header",
        "Subject: TEMPFAIL",
    ]);
    assert!(!ok && out.contains("451 "), "the hook refuses it for now: {out}");
}

/// An abusive client from 127.0.0.1: a wrong password, relaying, an
/// unknown user, an unknown command, HTTP, and a session of errors.
fn abusive(env: &TestEnv) {
    let (ok, out) = submission(env, "wrong", &["--quit-after", "AUTH"]);
    assert!(!ok && out.contains("535"), "{out}");
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO spammer.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<spam@spammer.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<victim@elsewhere.test>").starts_with("550 5.7.1"));
    assert!(c.cmd("RCPT TO:<nobody@example.com>").starts_with("550 5.1.1"));
    assert!(c.cmd("XYZZY").starts_with("500"));
    c.cmd("QUIT");
    let mut http = RawClient::connect(env.smtp_port);
    assert!(http.cmd("GET / HTTP/1.1").starts_with("502"));
    let mut errors = RawClient::connect(env.smtp_port);
    let mut last = String::new();
    for _ in 0..10 {
        last = errors.cmd("FOO");
    }
    assert!(last.starts_with("421"), "{last}");
}

#[test]
fn fail2ban_filter_matches_abuse_and_nothing_else() {
    if !require("fail2ban-regex", "fail2ban") || !require("swaks", "swaks") {
        return;
    }
    let env = TestEnv::new("");
    let log_path = env.tmp.path().join("mail.log");
    let hooks = env.config_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir hooks");
    let hook = hooks.join("post-data");
    std::fs::write(
        &hook,
        "#!/bin/sh\nif grep -q TEMPFAIL; then echo 'try later'; exit 1; fi\nexit 0\n",
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    env.fix_permissions();
    let _server = env.start_with_args(&[&format!("--config_overrides=mail_log_path: \"{}\"", log_path.display())]);

    legitimate(&env);
    abusive(&env);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(
        Duration::from_secs(20),
        "the session of errors and the delivery in the mail log",
        || {
            let l = log();
            l.contains("protocol error on session") && l.contains("all done")
        },
    );

    // Lines by the client address they start with (after the timestamp).
    let text = log();
    let (bad, good): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| l.split_whitespace().nth(2) == Some("127.0.0.1"));
    assert!(
        good.iter().any(|l| l.contains("127.0.0.2 auth succeeded for")),
        "{text}"
    );
    assert!(
        good.iter()
            .any(|l| l.contains("127.0.0.2 rejected") && l.contains(" - 451 ")),
        "{text}"
    );
    for want in [
        "auth failed for",
        "- 550 5.7.1",
        "- 550 5.1.1",
        "protocol error on other",
        "protocol error on GET",
        "protocol error on session",
    ] {
        assert!(bad.iter().any(|l| l.contains(want)), "no {want:?} line in:\n{text}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let filter = install_filter(dir.path());
    // As tambo writes mail_log_path, and as syslog writes <syslog>'s lines
    // to /var/log/mail.log.
    let syslog_form = |l: &&str| {
        let rest = l.splitn(3, ' ').nth(2).unwrap_or_default();
        format!("Dec  2 12:00:00 mx tambo[4242]: {rest}")
    };
    for (name, form) in [("file", None), ("syslog", Some(syslog_form))] {
        let write = |lines: &[&str], file: &str| {
            let p = dir.path().join(format!("{name}-{file}"));
            let body: Vec<String> = lines
                .iter()
                .map(|l| form.map(|f| f(l)).unwrap_or_else(|| l.to_string()))
                .collect();
            std::fs::write(&p, body.join("\n") + "\n").expect("write log");
            p
        };
        let (lines, matched) = fail2ban_regex(&write(&bad, "bad.log"), &filter);
        assert_eq!(
            (lines, matched),
            (bad.len(), bad.len()),
            "{name}: every abusive line matches:\n{}",
            bad.join("\n")
        );
        let (lines, matched) = fail2ban_regex(&write(&good, "good.log"), &filter);
        assert_eq!(
            (lines, matched),
            (good.len(), 0),
            "{name}: no legitimate line matches:\n{}",
            good.join("\n")
        );
    }
}
