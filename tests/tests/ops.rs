//! Operations: the mail log (one line per event, reopened on SIGHUP), the
//! metrics endpoint scraped with curl (and checked by promtool when it is
//! installed), worker restarts in the metrics, and reloads that keep the
//! old state when a users file is broken.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tambo_tests::{RawClient, TestEnv, free_port, have, require, run, run_with_input, wait_for};

fn send(port: u16, from: &str, to: &[&str], body: &str) -> Vec<String> {
    let mut c = RawClient::connect(port);
    let mut replies = vec![c.cmd("EHLO client.test")];
    replies.push(c.cmd(&format!("MAIL FROM:<{from}>")));
    for t in to {
        replies.push(c.cmd(&format!("RCPT TO:<{t}>")));
    }
    let data = c.cmd("DATA");
    if data.starts_with("354") {
        c.send(format!("Subject: ops\r\n\r\n{body}\r\n.\r\n").as_bytes());
        replies.push(c.reply());
    } else {
        replies.push(data);
    }
    c.cmd("QUIT");
    replies
}

fn curl(url: &str) -> (bool, String) {
    run(Command::new("curl").args(["-sS", "--max-time", "10", "-i", url]))
}

/// The value of one sample line (`name{labels} value`) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn mail_log_metrics_restarts_and_rotation() {
    assert!(have("curl"), "curl is needed (scripts/test installs it)");
    let mon = free_port();
    let env = TestEnv::new("");
    let log_path = env.tmp.path().join("mail.log");
    let server = env.start_with_args(&[&format!(
        "--config_overrides=monitoring_address: \"127.0.0.1:{mon}\" mail_log_path: \"{}\"",
        log_path.display()
    )]);
    let mail_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        mail_log().contains(&format!("daemon listening on 127.0.0.1:{} (smtp)", env.smtp_port)),
        "{}",
        mail_log()
    );

    let (ok, health) = curl(&format!("http://127.0.0.1:{mon}/healthz"));
    assert!(
        ok && health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let (_, notfound) = curl(&format!("http://127.0.0.1:{mon}/nope"));
    assert!(notfound.starts_with("HTTP/1.1 404"), "{notfound}");

    // One delivered message, one refused recipient.
    let r = send(
        env.smtp_port,
        "sender@remote.test",
        &["alice@example.com", "nobody@example.com"],
        "first",
    );
    assert!(r[3].starts_with("550"), "{r:?}");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    env.wait_delivered("alice@example.com", "first");
    wait_for(Duration::from_secs(10), "all done in the mail log", || {
        mail_log().contains("all done")
    });
    let log = mail_log();
    assert!(
        log.contains("127.0.0.1 rejected from=sender@remote.test to=[nobody@example.com] - 550 5.1.1 User unknown"),
        "{log}"
    );
    let queued = log
        .lines()
        .find(|l| l.contains(" queued ip=127.0.0.1 to=[alice@example.com]"))
        .unwrap_or_else(|| panic!("no queued line: {log}"));
    let id = queued.split_whitespace().nth(2).expect("queue id");
    assert!(
        log.contains(&format!("{id} from=sender@remote.test to=alice@example.com sent")),
        "{log}"
    );
    assert!(log.contains(&format!("{id} from=sender@remote.test all done")), "{log}");

    // Metrics, in the classic text format (curl does not ask for OpenMetrics).
    let (ok, text) = curl(&format!("http://127.0.0.1:{mon}/metrics"));
    assert!(ok && text.contains("Content-Type: text/plain; version=0.0.4"), "{text}");
    assert!(
        sample(&text, "tambo_smtp_connections_total{listener=\"smtp\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "tambo_smtp_commands_total{command=\"RCPT\"}").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "tambo_smtp_replies_total{class=\"5xx\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "tambo_queue_accepted_messages_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tambo_deliveries_total{result=\"sent\",route=\"local\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "tambo_queue_messages"), Some(0.0), "{text}");
    // Email authentication of the unauthenticated message, by result.
    assert!(text.contains("tambo_spf_results_total{result=\""), "{text}");
    assert!(
        sample(&text, "tambo_dkim_results_total{result=\"none\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(text.contains("tambo_dmarc_results_total{result=\""), "{text}");
    assert_eq!(sample(&text, "tambo_worker_up{worker=\"smtpd\"}"), Some(1.0), "{text}");
    if require("promtool", "prometheus") {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let out = run_with_input(Command::new("promtool").args(["check", "metrics"]), body.as_bytes());
        // The page parses; the only lint allowed is the camelCase of
        // chasquid's names, which dashboards written for chasquid need.
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let problems: Vec<&str> = report
            .lines()
            .filter(|l| {
                !(l.starts_with("chasquid_") && l.ends_with("should be written in 'snake_case' not 'camelCase'"))
            })
            .collect();
        assert!(
            out.status.success() || problems.is_empty(),
            "promtool check metrics: {report}"
        );
    }
    // OpenMetrics when asked for it, as Prometheus does.
    let (ok, om) = run(Command::new("curl").args([
        "-sS",
        "-H",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        &format!("http://127.0.0.1:{mon}/metrics"),
    ]));
    assert!(
        ok && om.ends_with("# EOF\n") && om.contains("# TYPE tambo_deliveries counter"),
        "{om}"
    );

    // A worker that dies is restarted and counted.
    let pid = server.worker_pid("deliverd");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_for(Duration::from_secs(20), "deliverd restart in the metrics", || {
        let (_, t) = curl(&format!("http://127.0.0.1:{mon}/metrics"));
        sample(&t, "tambo_worker_restarts_total{worker=\"deliverd\"}") == Some(1.0)
            && sample(&t, "tambo_worker_up{worker=\"deliverd\"}") == Some(1.0)
    });

    // logrotate: move the file away, SIGHUP, and the next line goes to a
    // new file.
    let rotated = env.tmp.path().join("mail.log.1");
    std::fs::rename(&log_path, &rotated).unwrap();
    server.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the reopened mail log", || log_path.exists());
    let r = send(env.smtp_port, "", &["bob@example.com"], "second");
    assert!(r.last().unwrap().starts_with("250"), "{r:?}");
    env.wait_delivered("bob@example.com", "second");
    wait_for(Duration::from_secs(10), "bob's delivery in the new mail log", || {
        mail_log().contains("to=bob@example.com sent")
    });
    assert!(
        mail_log().contains("from=<> queued ip=127.0.0.1 to=[bob@example.com]"),
        "{}",
        mail_log()
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains("bob@example.com") && old.contains("alice@example.com"),
        "{old}"
    );
}

#[test]
fn reload_with_a_broken_users_file_keeps_the_old_users() {
    let env = TestEnv::new("");
    let server = env.start();
    let users = env.config_dir.join("domains/example.com/users");
    let good = std::fs::read_to_string(&users).unwrap();

    std::fs::write(&users, "users: {\n  garbage here\n}\n").unwrap();
    env.fix_permissions();
    server.signal(Signal::SIGHUP);
    // The supervisor does not read the users files: authd does, and keeps
    // the users it has.
    wait_for(Duration::from_secs(10), "the reload error in the log", || {
        server.log().contains("authd kept its old state on reload")
    });
    let log = server.log();
    assert!(log.contains("users:2"), "the error names the file and line: {log}");
    // bob still exists for the running server.
    let mut c = RawClient::connect(env.smtp_port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<x@remote.test>");
    let r = c.cmd("RCPT TO:<bob@example.com>");
    assert!(r.starts_with("250"), "bob must still exist: {r}");
    c.cmd("QUIT");

    // A fixed file with a new user takes effect on the next SIGHUP.
    std::fs::write(&users, good).unwrap();
    let (ok, out) = run(Command::new(tambo_tests::bin("tambo")).args([
        "-C",
        env.config_dir.to_str().unwrap(),
        "user-add",
        "carol@example.com",
        "--password",
        "pw-of-carol",
    ]));
    assert!(ok, "{out}");
    env.fix_permissions();
    server.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "carol to exist after the reload", || {
        let mut c = RawClient::connect(env.smtp_port);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<x@remote.test>");
        let r = c.cmd("RCPT TO:<carol@example.com>");
        c.cmd("QUIT");
        r.starts_with("250")
    });
}
