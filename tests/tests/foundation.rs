//! Issue 2 acceptance: the real binaries, real clients (swaks, Python
//! smtplib), one message end to end, privileges, crashes and bad configs.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tambo_tests::*;

fn swaks(port: u16, to: &str, body: &str) -> (bool, String) {
    run(Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--from",
            "sender@remote.example",
        ])
        .args(["--to", to, "--body", body, "--timeout", "30"]))
}

#[test]
fn swaks_and_smtplib_deliver_to_local_users() {
    let env = TestEnv::new("");
    let _server = env.start();
    let (ok, out) = swaks(env.smtp_port, USER, "hello from swaks");
    assert!(ok, "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");
    let got = env.wait_delivered(USER, "hello from swaks");
    assert!(got.starts_with("Received: from "), "{got}");
    assert!(got.contains("by mx.example.com (tambo) with ESMTP id"), "{got}");
    assert!(got.contains("\r\n"), "MDA gets CRLF line endings");

    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {})\n\
         s.sendmail('x@remote.example', ['Bob@Example.COM'], b'Subject: py\\r\\n\\r\\nhello from python\\r\\n.leading dot\\r\\n')\n\
         s.quit()\n",
        env.smtp_port
    );
    let (ok, out) = run(Command::new("python3").args(["-c", &script]));
    assert!(ok, "{out}");
    let got = env.wait_delivered("bob@example.com", "hello from python");
    assert!(got.contains("\r\n.leading dot\r\n"), "dot-unstuffed: {got}");
}

#[test]
fn refusals_unknown_user_relay_and_size() {
    let env = TestEnv::new("max_data_size_mb: 1");
    let _server = env.start();
    let (ok, out) = swaks(env.smtp_port, "nobody@example.com", "x");
    assert!(!ok);
    assert!(out.contains("550 5.1.1"), "{out}");
    let (ok, out) = swaks(env.smtp_port, "someone@elsewhere.example", "x");
    assert!(!ok);
    assert!(out.contains("550 5.7.1"), "{out}");

    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO client.example").contains("SIZE 1048576"));
    assert!(c.cmd("MAIL FROM:<a@remote.example>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{USER}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let line = format!("{}\r\n", "x".repeat(998));
    for _ in 0..1200 {
        c.send(line.as_bytes());
    }
    let r = c.cmd(".");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session goes on after an oversize message.
    assert!(c.cmd("MAIL FROM:<a@remote.example>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(env.delivered(USER).is_none(), "nothing was delivered");
}

#[test]
fn bare_lf_in_data_closes_the_session() {
    let env = TestEnv::new("");
    let _server = env.start();
    let mut c = RawClient::connect(env.smtp_port);
    c.cmd("EHLO client.example");
    c.cmd("MAIL FROM:<a@remote.example>");
    c.cmd(&format!("RCPT TO:<{USER}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<evil@x>\r\n");
    let r = c.reply();
    assert!(r.starts_with("521 5.5.2"), "{r}");
    assert!(c.is_closed());
}

#[test]
fn processes_privileges_and_sigterm() {
    let env = TestEnv::new("");
    let mut server = env.start();
    let names: Vec<String> = server.workers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["authd", "deliverd", "hookd", "queued", "smtpd"]);
    let (ok, ps) = run(Command::new("ps").args(["-o", "args=", "--ppid", &server.pid().to_string()]));
    assert!(ok);
    for n in [
        "tambo: smtpd",
        "tambo: authd",
        "tambo: queued",
        "tambo: deliverd",
        "tambo: hookd",
    ] {
        assert!(ps.contains(n), "ps shows {n}: {ps}");
    }
    let uid_of = |pid: u32| -> u32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
        let ids: Vec<u32> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().expect("uid"))
            .collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "real/effective/saved uids equal: {line}"
        );
        ids[0]
    };
    let uids: Vec<(String, u32)> = server.workers().into_iter().map(|(n, p)| (n, uid_of(p))).collect();
    let smtpd = server.worker_pid("smtpd");
    let root_link = std::fs::read_link(format!("/proc/{smtpd}/root")).expect("read /proc/PID/root");
    if is_root() {
        for (name, user) in [
            ("authd", "tambo-auth"),
            ("queued", "tambo-queue"),
            ("deliverd", "tambo-deliver"),
            ("hookd", "tambo-hook"),
            ("smtpd", "tambo-smtpd"),
        ] {
            let want = nix::unistd::User::from_name(user)
                .expect("getpwnam")
                .expect("user exists")
                .uid
                .as_raw();
            let got = uids.iter().find(|(n, _)| n == name).expect("worker").1;
            assert_eq!(got, want, "{name} runs as {user}");
        }
        let chroot = env.tmp.path().join("run/smtpd-root");
        assert_eq!(root_link, chroot, "smtpd is chrooted");
        assert_eq!(
            std::fs::read_dir(&chroot).expect("chroot").count(),
            0,
            "the chroot is empty"
        );
        let status = std::fs::read_to_string(format!("/proc/{smtpd}/status")).expect("status");
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
        assert!(status.contains("CapBnd:\t0000000000000000"), "{status}");
        let groups = status.lines().find(|l| l.starts_with("Groups:")).expect("Groups line");
        assert!(
            groups["Groups:".len()..].trim().is_empty(),
            "no supplementary groups: {groups:?}"
        );
    } else {
        let me = nix::unistd::getuid().as_raw();
        assert!(uids.iter().all(|(_, u)| *u == me));
        assert!(server.log().contains("not started as root"), "one warning");
    }
    let pids: Vec<u32> = server.workers().into_iter().map(|(_, p)| p).collect();
    let status = server.stop();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    for p in pids {
        assert!(!std::path::Path::new(&format!("/proc/{p}")).exists(), "worker {p} gone");
    }
}

/// A delivery agent that fails temporarily (exit 75) until a gate file
/// exists, so messages stay queued as long as the test wants.
fn gated_env() -> (TestEnv, std::path::PathBuf) {
    let env = TestEnv::new("min_retry_delay: \"1s\"");
    let gate = env.gate_mda();
    (env, gate)
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn kill_queued_and_deliverd_after_ack_delivers_exactly_once() {
    for victim in ["queued", "deliverd"] {
        let (env, gate) = gated_env();
        let server = env.start();
        let old = server.worker_pid(victim);
        let marker = format!("kill-{victim}-marker");
        let (ok, out) = swaks(env.smtp_port, USER, &marker);
        assert!(ok, "{out}");
        // The message is acknowledged and its first attempt failed (the
        // closed gate): it is in the queue, waiting, when the victim dies.
        wait_for(Duration::from_secs(20), "the first attempt's temporary failure", || {
            server.log().contains("gate closed")
        });
        kill9(old);
        wait_for(Duration::from_secs(20), "restart", || {
            server.workers().iter().any(|(n, p)| n == victim && *p != old)
        });
        std::fs::write(&gate, b"").expect("open the gate");
        let got = env.wait_delivered(USER, &marker);
        std::thread::sleep(Duration::from_secs(3));
        let got = env.delivered(USER).unwrap_or(got);
        assert_eq!(count(&got, &marker), 1, "{victim}: exactly once:\n{}", server.log());
    }
}

#[test]
fn kill_smtpd_restarts_and_keeps_acknowledged_mail() {
    let (env, gate) = gated_env();
    let server = env.start();
    let (ok, out) = swaks(env.smtp_port, USER, "acked-before-smtpd-died");
    assert!(ok, "{out}");
    let old = server.worker_pid("smtpd");
    kill9(old);
    wait_for(Duration::from_secs(20), "smtpd restart", || {
        server.workers().iter().any(|(n, p)| n == "smtpd" && *p != old)
    });
    let (ok, out) = swaks(env.smtp_port, USER, "after-smtpd-restart");
    assert!(ok, "new connections are served: {out}");
    std::fs::write(&gate, b"").expect("open the gate");
    env.wait_delivered(USER, "acked-before-smtpd-died");
    env.wait_delivered(USER, "after-smtpd-restart");
}

#[test]
fn queue_survives_a_full_restart() {
    let (env, gate) = gated_env();
    let mut server = env.start();
    let (ok, out) = swaks(env.smtp_port, USER, "survives-restart");
    assert!(ok, "{out}");
    assert!(server.stop().success());
    std::fs::write(&gate, b"").expect("open the gate");
    let _server = env.start();
    env.wait_delivered(USER, "survives-restart");
}

fn start_fails(env: &TestEnv) -> String {
    let out = Command::new(bin("tambod"))
        .arg(format!("--config_dir={}", env.config_dir.display()))
        .output()
        .expect("run tambod");
    assert!(!out.status.success(), "tambod must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configs_name_file_and_line() {
    let env = TestEnv::new("bogus_field: 3");
    let err = start_fails(&env);
    assert!(
        err.contains("chasquid.conf:10:") && err.contains("bogus_field"),
        "{err}"
    );

    env.write_conf("max_data_size_mb: \"big\"");
    let err = start_fails(&env);
    assert!(
        err.contains("chasquid.conf:10:") && err.contains("max_data_size_mb"),
        "{err}"
    );

    env.write_conf("smtp_address: \"127.0.0.1:notaport\"");
    let err = start_fails(&env);
    assert!(err.contains("chasquid.conf:10:"), "{err}");

    env.write_conf("");
    let users = env.config_dir.join("domains/example.com/users");
    let saved = std::fs::read(&users).expect("users");
    std::fs::write(&users, "users: {\n  key: \"x\"\n  value: { rot13: {} }\n}\n").expect("write");
    let err = start_fails(&env);
    assert!(err.contains("users:3:"), "{err}");
    std::fs::remove_file(&users).expect("rm");
    std::fs::create_dir(&users).expect("users as a directory");
    let err = start_fails(&env);
    assert!(err.contains("domains/example.com/users"), "{err}");
    std::fs::remove_dir(&users).expect("rmdir");
    std::fs::write(&users, saved).expect("restore");

    let certs = env.config_dir.join("certs");
    std::fs::rename(&certs, env.tmp.path().join("certs.moved")).expect("move certs");
    let err = start_fails(&env);
    assert!(err.contains("certs") && err.contains("missing"), "{err}");
    std::fs::rename(env.tmp.path().join("certs.moved"), &certs).expect("restore certs");

    let domains = env.config_dir.join("domains");
    std::fs::rename(&domains, env.tmp.path().join("domains.moved")).expect("move domains");
    let err = start_fails(&env);
    assert!(err.contains("domains") && err.contains("missing"), "{err}");
}

#[test]
fn a_worker_that_keeps_dying_is_given_up_on() {
    let env = TestEnv::new("");
    let mut server = env.start();
    let mut pid = server.worker_pid("authd");
    for round in 1..=5 {
        kill9(pid);
        if round == 5 {
            break;
        }
        let old = pid;
        wait_for(Duration::from_secs(20), "authd restart", || {
            pid = server
                .workers()
                .into_iter()
                .find(|(n, _)| n == "authd")
                .map(|(_, p)| p)
                .unwrap_or(0);
            pid != 0 && pid != old
        });
    }
    wait_for(Duration::from_secs(10), "the give-up log line", || {
        server.log().contains("authd died 5 times within 60s: giving up on it")
    });
    std::thread::sleep(Duration::from_secs(3));
    let names: Vec<String> = server.workers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["deliverd", "hookd", "queued", "smtpd"],
        "authd stays down, the others run"
    );
    // Without authd, recipients cannot be checked: a temporary error, not a 5xx.
    let mut c = RawClient::connect(env.smtp_port);
    c.cmd("EHLO client.example");
    c.cmd("MAIL FROM:<a@remote.example>");
    let r = c.cmd(&format!("RCPT TO:<{USER}>"));
    assert!(r.starts_with("451"), "{r}");
    assert!(server.stop().success());
}
