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
    assert_eq!(workers.len(), 5, "{workers:?}");
    for (name, pid) in &workers {
        assert_eq!(status_field(*pid, "Seccomp:"), "2", "{name} has no seccomp filter");
        assert_eq!(status_field(*pid, "NoNewPrivs:"), "1", "{name}");
    }
    let log = server.log();
    for name in ["smtpd", "authd", "queued", "deliverd", "hookd"] {
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
        "queued:open:/etc/passwd".to_string(),
        format!("hookd:open:{}", users.display()),
        format!("hookd:open:{}", queue.display()),
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
        format!("queued: sandbox probe: open /etc/passwd: {denied}"),
        format!("hookd: sandbox probe: open {}: {denied}", users.display()),
        format!("hookd: sandbox probe: open {}: {denied}", queue.display()),
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
        "--testing__sandbox_probe=queued:exec:/bin/sh",
        "--testing__sandbox_probe=queued:connect:127.0.0.1:1",
    ]);
    wait_for(Duration::from_secs(10), "the workers killed by their filters", || {
        let log = server.log();
        ["smtpd", "authd", "queued"]
            .iter()
            .all(|w| log.contains(&format!("{w} killed by its seccomp filter")))
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
        server.workers().len() == 5
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

/// The probe every hook and pipe alias below runs: one header line per
/// path, saying whether it could be read (`yes`/`no`), then the seccomp
/// mode and uid of the program itself.
fn probe_script(env: &TestEnv) -> String {
    let data = env.data_dir.display();
    let config = env.config_dir.display();
    format!(
        "try() {{ if $1 \"$3\" >/dev/null 2>&1; then echo \"X-Read-$2: yes\"; else echo \"X-Read-$2: no\"; fi; }}\n\
         try ls Queue '{data}/queue'\n\
         try cat Srs '{data}/srs/secret'\n\
         try cat Plain '{data}/plain'\n\
         try cat Users '{config}/domains/example.com/users'\n\
         try cat Key '{config}/certs/mx.example.com/privkey.pem'\n\
         try cat Conf '{config}/chasquid.conf'\n\
         echo \"X-Seccomp: $(grep '^Seccomp:' /proc/self/status | tr -dc 0-9)\"\n\
         echo \"X-Uid: $(id -u)\"\n"
    )
}

/// What the probe must report: nothing under `data_dir` (the queue, the
/// SRS secret, even a world-readable file) and no secret file, but the
/// configuration; a seccomp filter; hookd's user.
fn assert_probe(report: &str, who: &str) {
    for (path, want) in [
        ("Queue", "no"),
        ("Srs", "no"),
        ("Plain", "no"),
        ("Users", "no"),
        ("Key", "no"),
        ("Conf", "yes"),
    ] {
        let line = format!("X-Read-{path}: {want}");
        assert!(report.contains(&line), "{who} should say {line}:\n{report}");
    }
    assert!(report.contains("X-Seccomp: 2"), "{who} runs without seccomp:\n{report}");
    if tambo_tests::is_root() {
        let hook_uid = nix::unistd::User::from_name("tambo-hook")
            .expect("getpwnam")
            .expect("user tambo-hook")
            .uid;
        assert!(
            report.contains(&format!("X-Uid: {hook_uid}")),
            "{who} does not run as tambo-hook:\n{report}"
        );
    }
}

/// A file anyone may read, in data_dir: only the sandbox keeps it from
/// the programs tambo runs (tambod makes data_dir's sub-directories
/// private itself).
fn plain_file_in_data_dir(env: &TestEnv) {
    std::fs::write(env.data_dir.join("plain"), "plain\n").expect("write plain");
    std::fs::set_permissions(
        env.data_dir.join("plain"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("chmod plain");
}

/// The post-data hook and a pipe alias run under hookd's sandbox: they
/// cannot read the queue, the SRS secret, anything else in `data_dir`, or
/// the secret files, and the message is still delivered (with the hook's
/// header lines on top).
#[test]
fn hooks_and_pipes_cannot_read_the_queue_or_the_secrets() {
    let env = TestEnv::new("");
    let probe = probe_script(&env);
    let hooks = env.config_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir hooks");
    let hook = hooks.join("post-data");
    std::fs::write(&hook, format!("#!/bin/sh\ncat >/dev/null\n{probe}")).expect("write hook");
    let pipe = env.tmp.path().join("pipe.sh");
    let pipe_out = env.out_dir.join("pipe-report");
    std::fs::write(
        &pipe,
        format!("#!/bin/sh\ncat >/dev/null\n{{\n{probe}}} > '{}'\n", pipe_out.display()),
    )
    .expect("write pipe");
    for p in [&hook, &pipe] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    env.set_aliases(&format!("piped: | {}\n", pipe.display()));
    let _server = env.start();
    plain_file_in_data_dir(&env);
    send_message(
        env.smtp_port,
        "someone@remote.test",
        &[USER, "piped@example.com"],
        "Subject: hooked\r\n\r\nbody\r\n",
    );
    let got = env.wait_delivered(USER, "hooked");
    let (headers, _) = got.split_once("Received:").expect("our Received header");
    assert_probe(headers, "the post-data hook");
    wait_for(Duration::from_secs(20), "the pipe alias's report", || {
        std::fs::read_to_string(&pipe_out).is_ok_and(|r| r.contains("X-Uid"))
    });
    assert_probe(&std::fs::read_to_string(&pipe_out).expect("report"), "the pipe alias");
}

/// The delivery agent runs under a Landlock layer of its own on top of
/// deliverd's: nothing under `data_dir`, not even deliverd's MTA-STS cache
/// and agent log (which deliverd itself writes and the agent's user owns),
/// and no secret file; the configuration it may read. It still delivers.
#[test]
fn the_delivery_agent_cannot_reach_data_dir_or_the_secrets() {
    let env = TestEnv::new("");
    let data = env.data_dir.display();
    let config = env.config_dir.display();
    let report = env.out_dir.join("agent-report");
    std::fs::write(
        env.tmp.path().join("mda.sh"),
        format!(
            "#!/bin/sh\n\
             try() {{ if $1 \"$3\" >/dev/null 2>&1; then echo \"$2: yes\"; else echo \"$2: no\"; fi; }}\n\
             {{\n\
             try ls Queue '{data}/queue'\n\
             try ls StsCache '{data}/sts-cache'\n\
             try ls AgentLog '{data}/deliverd'\n\
             try touch WriteStsCache '{data}/sts-cache/forged'\n\
             try cat Plain '{data}/plain'\n\
             try cat Users '{config}/domains/example.com/users'\n\
             try cat Key '{config}/certs/mx.example.com/privkey.pem'\n\
             try cat Conf '{config}/chasquid.conf'\n\
             }} > '{}'\n\
             cat >> '{}'/\"$1\"\n",
            report.display(),
            env.out_dir.display()
        ),
    )
    .expect("write mda");
    env.fix_permissions();
    let _server = env.start();
    plain_file_in_data_dir(&env);
    send_message(
        env.smtp_port,
        "someone@remote.test",
        &[USER],
        "Subject: confined\r\n\r\nbody\r\n",
    );
    env.wait_delivered(USER, "confined");
    let report = std::fs::read_to_string(&report).expect("the agent's report");
    for (what, want) in [
        ("Queue", "no"),
        ("StsCache", "no"),
        ("AgentLog", "no"),
        ("WriteStsCache", "no"),
        ("Plain", "no"),
        ("Users", "no"),
        ("Key", "no"),
        ("Conf", "yes"),
    ] {
        assert!(
            report.contains(&format!("{what}: {want}")),
            "the agent should say {what}: {want}:\n{report}"
        );
    }
    assert!(!env.data_dir.join("sts-cache/forged").exists());
}

/// hookd killed: the supervisor restarts it and hands queued and deliverd
/// fresh channels; the next message gets its hook's header and its pipe
/// alias runs again.
#[test]
fn hookd_killed_comes_back_for_hooks_and_pipes() {
    let env = TestEnv::new("");
    let hooks = env.config_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir hooks");
    let hook = hooks.join("post-data");
    std::fs::write(&hook, "#!/bin/sh\ncat >/dev/null\necho 'X-Hooked: yes'\n").expect("write hook");
    let pipe = env.tmp.path().join("pipe.sh");
    let pipe_out = env.out_dir.join("piped");
    std::fs::write(&pipe, format!("#!/bin/sh\ncat >> '{}'\n", pipe_out.display())).expect("write pipe");
    for p in [&hook, &pipe] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }
    env.set_aliases(&format!("piped: | {}\n", pipe.display()));
    let server = env.start();
    let old = server.worker_pid("hookd");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill hookd");
    wait_for(Duration::from_secs(20), "hookd restarted", || {
        server.workers().iter().any(|(n, p)| n == "hookd" && *p != old)
    });
    // The channels are handed over right after the restart; a message
    // that came before they were would get a 451 (never skip the hook).
    wait_for(Duration::from_secs(20), "a message through the new hookd", || {
        let reply = tambo_tests::send_message(
            env.smtp_port,
            "someone@remote.test",
            &[USER, "piped@example.com"],
            "Subject: after the kill\r\n\r\nbody\r\n",
        );
        reply.starts_with("250")
    });
    let got = env.wait_delivered(USER, "after the kill");
    assert!(got.starts_with("X-Hooked: yes\r\n"), "{got}");
    wait_for(Duration::from_secs(20), "the pipe alias after the kill", || {
        std::fs::read_to_string(&pipe_out).is_ok_and(|t| t.contains("after the kill"))
    });
}
