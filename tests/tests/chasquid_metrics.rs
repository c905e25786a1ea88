//! chasquid's metric names on tambo's monitoring endpoint: a dialog with
//! a delivered message, a refused recipient, an unknown command and an
//! HTTP request, then the `chasquid_*` series as chasquid would count
//! them, scraped by a real Prometheus and queried with promtool as
//! chasquid's own t-23 test does.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tambo_tests::{RawClient, TestEnv, free_port, require, run, wait_for};

/// The value of one sample line (`name{labels} value`) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn scrape(mon: u16) -> String {
    let (ok, text) =
        run(Command::new("curl").args(["-sS", "--max-time", "10", &format!("http://127.0.0.1:{mon}/metrics")]));
    assert!(ok, "{text}");
    text
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One SMTP session with what chasquid counts: a delivered message over
/// plain text, a refused recipient, an unknown command; then an HTTP
/// request on the SMTP port.
fn dialogs(port: u16) {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("XYZZY").starts_with("500"));
    assert!(c.cmd("MAIL FROM:<sender@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<nobody@example.com>").starts_with("550"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: metrics\r\n\r\nbody\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");

    let mut http = RawClient::connect(port);
    assert!(http.cmd("GET / HTTP/1.0").starts_with("502"));
    assert!(http.is_closed(), "an HTTP request ends the session");
}

#[test]
fn chasquid_metric_names_with_chasquid_meanings() {
    if !require("curl", "curl") {
        return;
    }
    let mon = free_port();
    let env = TestEnv::new(&format!("monitoring_address: \"127.0.0.1:{mon}\""));
    let _server = env.start();
    dialogs(env.smtp_port);
    env.wait_delivered("alice@example.com", "metrics");
    let mut text = String::new();
    wait_for(Duration::from_secs(10), "the delivery counted", || {
        text = scrape(mon);
        sample(&text, "chasquid_queue_deliverAttempts{recipient_type=\"email:local\"}") == Some(1.0)
    });
    for (series, want) in [
        ("chasquid_smtpIn_commandCount{command=\"EHLO\"}", 1.0),
        ("chasquid_smtpIn_commandCount{command=\"RCPT\"}", 2.0),
        ("chasquid_smtpIn_commandCount{command=\"unknown\"}", 1.0),
        ("chasquid_smtpIn_responseCodeCount{code=\"550\"}", 1.0),
        ("chasquid_smtpIn_responseCodeCount{code=\"354\"}", 1.0),
        ("chasquid_smtpIn_responseCodeCount{code=\"502\"}", 1.0),
        ("chasquid_smtpIn_wrongProtoCount{command=\"GET\"}", 1.0),
        ("chasquid_smtpIn_tlsCount{status=\"plain\"}", 1.0),
        ("chasquid_smtpIn_hookResults{result=\"post-data:skip\"}", 1.0),
        ("chasquid_smtpIn_dkimVerifyNotFound", 1.0),
        ("chasquid_smtpIn_dkimVerifyFound", 0.0),
        ("chasquid_smtpIn_loopsDetected", 0.0),
        ("chasquid_queue_putCount", 1.0),
        ("chasquid_queue_dsnQueued", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    // GET is chasquid's wrongProtoCount, not a command.
    assert_eq!(
        sample(&text, "chasquid_smtpIn_commandCount{command=\"GET\"}"),
        None,
        "{text}"
    );
    // tambo's own names are still there.
    assert_eq!(
        sample(&text, "tambo_queue_accepted_messages_total"),
        Some(1.0),
        "{text}"
    );
    // Whole numbers, as chasquid prints them (its t-09 greps for them).
    assert!(text.lines().any(|l| l == "chasquid_queue_itemsWritten 1"), "{text}");

    debug_pages(mon);
    prometheus_scrapes_them(mon);
}

fn get(mon: u16, path: &str) -> (String, String) {
    let (ok, out) = run(Command::new("curl").args([
        "-sS",
        "-i",
        "--max-time",
        "10",
        &format!("http://127.0.0.1:{mon}{path}"),
    ]));
    assert!(ok, "{path}: {out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{path}: {out}"));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// chasquid's pages besides `/metrics`: Go's expvar JSON on `/debug/vars`
/// with chasquid's variable names, and the status, flags, configuration
/// and queue pages (the queue as a count: smtpd never sees envelopes).
fn debug_pages(mon: u16) {
    let (status, vars) = get(mon, "/debug/vars");
    assert!(status.contains(" 200 "), "{status}");
    let vars: serde_json::Value = serde_json::from_str(&vars).unwrap_or_else(|e| panic!("{e}: {vars}"));
    assert_eq!(vars["chasquid/queue/putCount"], 1, "{vars}");
    assert_eq!(vars["chasquid/smtpIn/commandCount"]["EHLO"], 1, "{vars}");
    assert_eq!(vars["chasquid/smtpIn/loopsDetected"], 0, "{vars}");
    assert!(
        vars["cmdline"][0].as_str().is_some_and(|c| c.ends_with("tambod")),
        "{vars}"
    );
    let (_, index) = get(mon, "/");
    assert!(
        index.contains("smtpd: up") && index.contains("/debug/vars") && index.lines().count() > 10,
        "{index}"
    );
    let (_, flags) = get(mon, "/debug/flags");
    assert!(flags.lines().any(|l| l.starts_with("config_dir=/")), "{flags}");
    let (_, config) = get(mon, "/debug/config");
    assert!(config.contains("hostname: \"mx.example.com\""), "{config}");
    let (_, queue) = get(mon, "/debug/queue");
    assert!(queue.starts_with("messages: 0\n"), "{queue}");
    let (status, _) = get(mon, "/exit");
    assert!(
        status.contains(" 404 "),
        "nothing on the endpoint stops the server: {status}"
    );
}

/// A real Prometheus scrapes the endpoint and answers a PromQL query on a
/// chasquid name (chasquid's t-23 asks for `chasquid_queue_putCount`).
fn prometheus_scrapes_them(mon: u16) {
    if !require("prometheus", "prometheus") || !require("promtool", "prometheus") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tambo\n    \
             static_configs:\n      - targets: [\"127.0.0.1:{mon}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let web = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus"),
    );
    let url = format!("http://127.0.0.1:{web}");
    let mut answer = String::new();
    wait_for(
        Duration::from_secs(90),
        "Prometheus to scrape chasquid_queue_putCount",
        || {
            let (_, out) = run(Command::new("promtool").args(["query", "instant", &url, "chasquid_queue_putCount"]));
            answer = out;
            answer.contains("=> 1 @")
        },
    );
    let (ok, out) = run(Command::new("promtool").args([
        "query",
        "instant",
        &url,
        "chasquid_smtpIn_responseCodeCount{code=\"550\"}",
    ]));
    assert!(ok && out.contains("=> 1 @"), "{out}");
}
