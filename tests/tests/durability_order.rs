//! Durability proven by the order of system calls (issue 17, item 2).
//!
//! A killed process cannot show a missing or misplaced `fdatasync`: the
//! page cache survives it. So tambod runs under `strace -f`, and the log is
//! checked (see `tambo_tests::syscall_order`): every `250 … queued as ID`
//! sent to a client comes after a flush of the queue journal that began
//! after that message's record was written (for a message too large for
//! the journal, after its data file's `fdatasync` too), and no file of a
//! delivered message is removed before its removal record is flushed. One
//! client (c=1, with one 2 MiB message among small ones), then 32 at once
//! (c=32, where one flush covers many messages).
//!
//! With the journal's `fdatasync` taken out of `queued/src/store.rs`, both
//! runs fail (every acknowledgement comes before any flush).

use std::process::Command;
use std::time::Duration;

use tambo_tests::syscall_order;
use tambo_tests::*;

/// Sends `per_client` messages over one connection from each of
/// `clients` threads; prints how many were acknowledged.
const CLIENTS: &str = r#"
import smtplib, sys, threading
port, clients, per, big = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
acked = []
def run(c):
    s = smtplib.SMTP('127.0.0.1', port, timeout=120)
    for i in range(per):
        body = 'durable %d/%d\r\n' % (c, i)
        if big and c == 0 and i == 1:
            body += ('x' * 998 + '\r\n') * 2100
        s.sendmail('sender@remote.example', ['alice@example.com'],
                   ('Subject: order %d/%d\r\n\r\n' % (c, i) + body).encode())
        acked.append((c, i))
    s.quit()
ts = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in ts: t.start()
for t in ts: t.join()
print(len(acked))
"#;

/// Run tambod under strace, send `clients` × `per_client` messages, wait
/// until the queue is empty, stop, and check the log.
fn traced_run(clients: usize, per_client: usize, big: bool) {
    if !require_root("tracing the workers, which change user") || !require("strace", "strace") {
        return;
    }
    let env = TestEnv::new("max_queue_items: 1000");
    let trace = env.tmp.path().join("trace");
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-xx",
        "-yy",
        "-s",
        "512",
        "-e",
        "signal=none",
    ])
    .args([
        "-e",
        "trace=write,writev,pwrite64,sendto,sendmsg,fdatasync,fsync,syncfs,unlink,unlinkat,rename,renameat,renameat2",
    ])
    .arg("-o")
    .arg(&trace)
    .arg(bin("tambod"))
    .arg(format!("--config_dir={}", env.config_dir.display()));
    let mut server = Server::spawn_command(cmd, env.tmp.path().join("log"), env.smtp_port);
    server.wait_serving();
    let out = Command::new("python3")
        .args(["-c", CLIENTS, &env.smtp_port.to_string()])
        .args([clients.to_string(), per_client.to_string(), (big as u8).to_string()])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sent = clients * per_client;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sent.to_string());
    wait_for(Duration::from_secs(120), "every message delivered", || {
        env.delivered(USER).map(|d| d.matches("Subject: order").count()) == Some(sent)
    });
    // The last removals ride on the next flush, at most 1 s later.
    std::thread::sleep(Duration::from_millis(1500));
    stop_traced(&mut server);
    let log = std::fs::read_to_string(&trace).expect("strace log");
    let queue = std::fs::canonicalize(env.data_dir.join("queue")).expect("queue dir");
    let facts = syscall_order::facts(&syscall_order::parse(&log), queue.to_str().expect("utf8"));
    assert_eq!(facts.acks.len(), sent, "every 250 seen in the trace");
    let removed: std::collections::HashSet<&String> = facts.removals.iter().map(|(_, id)| id).collect();
    assert!(
        facts.acks.iter().all(|(_, id)| removed.contains(id)),
        "every delivered message's files removed"
    );
    let violations = syscall_order::check(&facts);
    let flushes = facts.journal_flushes.len();
    eprintln!(
        "c={clients}: {sent} acknowledged, {} removals, {flushes} journal flushes, {} violations",
        facts.removals.len(),
        violations.len()
    );
    if big {
        assert!(
            !facts.data_flushes.is_empty(),
            "the 2 MiB message's data file was flushed"
        );
    }
    assert!(
        violations.is_empty(),
        "{} violation(s), e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    if clients > 1 {
        assert!(flushes < sent, "group commit: {flushes} flushes for {sent} messages");
    }
}

/// SIGTERM to tambod itself (strace's child), then wait for strace.
fn stop_traced(server: &mut Server) {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid())).unwrap_or_default();
    for pid in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "strace did not end after tambod"
    );
}

#[test]
fn every_250_and_every_removal_follows_its_flush_one_client() {
    traced_run(1, 40, true);
}

#[test]
fn every_250_and_every_removal_follows_its_flush_32_clients() {
    traced_run(32, 8, false);
}
