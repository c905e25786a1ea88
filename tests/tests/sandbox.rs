//! Every worker runs under seccomp and Landlock, and what its sandbox
//! forbids is refused even when the worker itself tries it: the workers
//! are made to attempt it with `--testing__sandbox_probe` (acted on only
//! in builds with the `sandbox-probe` feature, which this crate enables),
//! and tambod must keep serving, restarting a worker its filter killed.

use std::time::Duration;

use tambo_ipc::sandbox::PROBE_ALLOWED;
use tambo_tests::{TestEnv, USER, send_message, wait_for};

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// Mail still goes through, end to end.
fn still_delivers(env: &TestEnv, subject: &str) {
    send_message(
        env.smtp_port,
        "someone@remote.test",
        &[USER],
        &format!("Subject: {subject}\r\n\r\nbody\r\n"),
    );
    env.wait_delivered(USER, subject);
}

#[test]
fn every_worker_has_seccomp_and_landlock() {
    let env = TestEnv::new("");
    let server = env.start();
    let workers = server.workers();
    assert_eq!(workers.len(), 4, "{workers:?}");
    for (name, pid) in &workers {
        assert_eq!(status_field(*pid, "Seccomp:"), "2", "{name} has no seccomp filter");
        assert_eq!(status_field(*pid, "NoNewPrivs:"), "1", "{name}");
    }
    let log = server.log();
    for name in ["smtpd", "authd", "queued", "deliverd"] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{name}: sandbox: ")))
            .unwrap_or_else(|| panic!("no sandbox line for {name}:\n{log}"));
        assert!(line.contains("landlock fully enforced"), "{line}");
    }
    still_delivers(&env, "sandboxed");
}

/// What a worker may not do, but which does not kill it: Landlock (or
/// smtpd's EACCES for `open`) refuses, and the worker carries on.
#[test]
fn refused_attempts_leave_the_worker_serving() {
    let env = TestEnv::new("");
    let queue = env.data_dir.join("queue");
    let users = env.config_dir.join("domains/example.com/users");
    let key = env.config_dir.join("certs/mx.example.com/privkey.pem");
    let probes = [
        "smtpd:open:/etc/passwd".to_string(),
        "smtpd:connect:127.0.0.1:1".to_string(),
        format!("deliverd:open:{}", queue.display()),
        format!("deliverd:open:{}", users.display()),
        format!("queued:open:{}", key.display()),
        format!("queued:open:{}", users.display()),
    ];
    let args: Vec<String> = probes.iter().map(|p| format!("--testing__sandbox_probe={p}")).collect();
    let server = env.start_with_args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // EACCES from the sandbox; nothing listens on port 1, so a connect
    // the sandbox let through would fail otherwise (ECONNREFUSED).
    let denied = "refused: Permission denied";
    let expected = [
        format!("open /etc/passwd: {denied}"),
        format!("connect 127.0.0.1:1: {denied}"),
        format!("open {}: {denied}", queue.display()),
        format!("open {}: {denied}", users.display()),
        format!("open {}: {denied}", key.display()),
    ];
    wait_for(Duration::from_secs(10), "every probe's outcome in the log", || {
        let log = server.log();
        expected.iter().all(|e| log.contains(e)) && log.matches("sandbox probe:").count() >= probes.len()
    });
    let log = server.log();
    assert!(!log.contains(PROBE_ALLOWED), "a probe got through:\n{log}");
    assert!(!log.contains("killed by its seccomp filter"), "{log}");
    still_delivers(&env, "after refusals");
}

/// What a worker's seccomp filter traps: the worker dies of SIGSYS, the
/// supervisor logs the call, restarts the worker, and mail flows.
#[test]
fn trapped_calls_kill_the_worker_and_tambod_recovers() {
    let env = TestEnv::new("");
    let server = env.start_with_args(&[
        "--testing__sandbox_probe=smtpd:exec:/bin/sh",
        "--testing__sandbox_probe=authd:connect:127.0.0.1:1",
    ]);
    wait_for(Duration::from_secs(10), "both workers killed by their filters", || {
        let log = server.log();
        log.contains("smtpd killed by its seccomp filter") && log.contains("authd killed by its seccomp filter")
    });
    let log = server.log();
    // smtpd may not even fork (clone without CLONE_THREAD), let alone
    // exec; std's spawn blocks every signal around the clone, so the
    // kernel kills it before it can name the call. authd may not make an
    // IP socket, and says so.
    assert!(
        log.contains("smtpd killed by its seccomp filter (signal: 31 (SIGSYS)"),
        "{log}"
    );
    assert!(
        log.contains("which its sandbox refuses") && log.contains("(socket)"),
        "{log}"
    );
    assert!(!log.contains(PROBE_ALLOWED), "{log}");
    // Restarted, and serving again (authd: AUTH and TLS; smtpd: SMTP).
    wait_for(Duration::from_secs(10), "smtpd and authd running again", || {
        server.workers().len() == 4
    });
    still_delivers(&env, "after kills");
    if tambo_tests::require("swaks", "swaks") {
        let out = std::process::Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", env.submission_port), "--tls"])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                USER,
                "--auth-password",
                tambo_tests::PASSWORD,
            ])
            .args(["--from", USER, "--to", USER, "--header", "Subject: authd back"])
            .output()
            .expect("swaks");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        env.wait_delivered(USER, "authd back");
    }
}
