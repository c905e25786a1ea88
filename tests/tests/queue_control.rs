//! Issue 4 acceptance, part 2: the control socket (`tambo queue`, `mailq`)
//! against a running server, LMTP delivery to a real Dovecot, and kill -9
//! of every worker during a stream of messages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tambo_tests::*;

/// An environment whose MDA fails temporarily (exit 75) until `gate`
/// exists, with a first retry an hour away: nothing is retried unless the
/// operator flushes.
fn deferred_env() -> (TestEnv, PathBuf) {
    let env = TestEnv::new("min_retry_delay: \"1h\"");
    let gate = env.gate_mda();
    (env, gate)
}

fn send(port: u16, to: &str, marker: &str) -> String {
    let (ok, out) = run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--from", "sender@remote.example", "--to", to])
        .args(["--add-header", &format!("X-Marker: {marker}")])
        .args(["--body", marker, "--timeout", "30"]));
    assert!(ok, "{out}");
    let id = out
        .lines()
        .find_map(|l| l.split("queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queue id in: {out}"));
    id.trim().to_string()
}

fn delivered_count(env: &TestEnv, addr: &str, marker: &str) -> usize {
    env.delivered(addr)
        .unwrap_or_default()
        .matches(&format!("X-Marker: {marker}\r\n"))
        .count()
}

#[test]
fn every_queue_action_and_mailq() {
    let (env, gate) = deferred_env();
    let server = env.start();
    let ids: Vec<String> = (1..=4)
        .map(|i| send(env.smtp_port, USER, &format!("queue-marker-{i}")))
        .collect();
    // Every message has had its first (failed) attempt.
    let mut listing = String::new();
    wait_for(Duration::from_secs(20), "four deferred messages", || {
        let (ok, out) = env.queue(&["list"]);
        listing = out;
        ok && listing.matches("gate closed").count() >= 4
    });
    for id in &ids {
        assert!(listing.contains(id.as_str()), "{listing}");
    }
    assert!(listing.contains("<sender@remote.example>"), "{listing}");
    assert!(
        listing.contains("pending   alice@example.com, 1 attempt(s), next in"),
        "{listing}"
    );
    assert!(listing.contains("-- "), "{listing}");

    // mailq: the same binary under another name.
    let mailq = env.tmp.path().join("mailq");
    std::os::unix::fs::symlink(bin("tambo"), &mailq).expect("symlink mailq");
    let (ok, out) = run(Command::new(&mailq).arg("-C").arg(&env.config_dir));
    assert!(ok, "{out}");
    assert!(out.starts_with("-Queue ID-"), "{out}");
    assert!(ids.iter().all(|id| out.contains(id.as_str())), "{out}");
    assert!(out.contains("gate closed"), "{out}");

    // show
    let (ok, out) = env.queue(&["show", &ids[0]]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("ID:       {}", ids[0])), "{out}");
    assert!(out.contains("From:     <sender@remote.example>"), "{out}");
    assert!(out.contains("To:       alice@example.com [pending"), "{out}");
    assert!(out.contains("Received: from "), "{out}");
    assert!(out.contains("X-Marker: queue-marker-1"), "{out}");
    assert!(!out.contains("queue-marker-1\n\n"), "no body: {out}");
    let (ok, out) = env.queue(&["show", "NoSuchId123"]);
    assert!(!ok && out.contains("NoSuchId123 is not in the queue"), "{out}");
    let (ok, out) = env.queue(&["hold", "../etc"]);
    assert!(!ok && out.contains("is not a queue ID"), "{out}");

    // hold 1, remove 2
    let (ok, out) = env.queue(&["hold", &ids[0]]);
    assert!(ok && out.contains("held"), "{out}");
    let (_, out) = env.queue(&["list"]);
    assert!(out.contains(&format!("{}!", ids[0])) && out.contains("(held)"), "{out}");
    let (ok, out) = env.queue(&["remove", &ids[1]]);
    assert!(ok && out.contains("removed"), "{out}");
    assert!(!env.data_dir.join(format!("queue/{}.env", ids[1])).exists());
    assert!(!env.data_dir.join(format!("queue/{}.data", ids[1])).exists());
    let (_, out) = env.queue(&["list"]);
    assert!(!out.contains(ids[1].as_str()), "{out}");
    let (ok, out) = env.queue(&["remove", &ids[1]]);
    assert!(!ok && out.contains("not in the queue"), "{out}");

    // flush one ID: only that one is delivered.
    std::fs::write(&gate, b"").expect("open the gate");
    let (ok, out) = env.queue(&["flush", &ids[2]]);
    assert!(ok && out.contains("1 message(s) scheduled"), "{out}");
    env.wait_delivered(USER, "queue-marker-3");
    assert_eq!(
        delivered_count(&env, USER, "queue-marker-4"),
        0,
        "4 waits for its retry"
    );

    // flush everything: 4 goes, the held 1 stays.
    let (ok, out) = env.queue(&["flush"]);
    assert!(ok && out.contains("1 held"), "{out}");
    env.wait_delivered(USER, "queue-marker-4");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(delivered_count(&env, USER, "queue-marker-1"), 0, "held");

    // release, then flush it.
    let (ok, out) = env.queue(&["release", &ids[0]]);
    assert!(ok && out.contains("released"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        delivered_count(&env, USER, "queue-marker-1"),
        0,
        "released, but its retry is an hour away"
    );
    let (ok, out) = env.queue(&["flush", &ids[0]]);
    assert!(ok, "{out}");
    env.wait_delivered(USER, "queue-marker-1");
    wait_for(Duration::from_secs(20), "an empty queue", || {
        env.queue(&["list"]).1 == "Mail queue is empty\n"
    });
    for (i, n) in [(1, 1), (2, 0), (3, 1), (4, 1)] {
        assert_eq!(
            delivered_count(&env, USER, &format!("queue-marker-{i}")),
            n,
            "message {i}"
        );
    }
    drop(server);

    // Stopped: a clear message, non-zero exit.
    let (ok, out) = env.queue(&["list"]);
    assert!(!ok);
    let sock = env.tmp.path().join("run/control.sock");
    assert!(
        out.contains(&format!(
            "tambod is not running (no control socket at {})",
            sock.display()
        )),
        "{out}"
    );
    let (ok, out) = run(Command::new(&mailq).arg("--socket").arg("/nonexistent/control.sock"));
    assert!(!ok && out.contains("tambod is not running"), "{out}");
}

/// Run `tambo queue list` as another user.
fn list_as(socket: &Path, user: &str, group: &str) -> (bool, String) {
    run(Command::new("setpriv")
        .args(["--reuid", user, "--regid", group, "--clear-groups"])
        .arg(bin("tambo"))
        .arg("queue")
        .arg("list")
        .arg("--socket")
        .arg(socket))
}

#[test]
fn control_socket_admits_root_and_admin_group_only() {
    if !require_root("connecting as other users") || !require("setpriv", "util-linux") {
        return;
    }
    let env = TestEnv::new("");
    let _server = env.start();
    let sock = env.tmp.path().join("run/control.sock");
    let meta = std::fs::metadata(&sock).expect("socket");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.mode() & 0o777, 0o660);
    let tambo_gid = nix::unistd::Group::from_name("tambo")
        .expect("getgrnam")
        .expect("group tambo")
        .gid;
    assert_eq!(meta.gid(), tambo_gid.as_raw());
    // The file mode stops nobody first.
    let (ok, out) = list_as(&sock, "nobody", "nogroup");
    assert!(!ok && out.contains("permission denied"), "{out}");
    // With the mode opened, the peer-credential check still refuses.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (ok, out) = list_as(&sock, "nobody", "nogroup");
    assert!(!ok, "{out}");
    assert!(
        out.contains("permission denied: uid 65534 is neither root nor a member of group tambo"),
        "{out}"
    );
    // A member of the admin group is admitted, and so is root.
    let (ok, out) = list_as(&sock, "nobody", "tambo");
    assert!(ok && out.contains("Mail queue is empty"), "{out}");
    let (ok, out) = run(Command::new(bin("tambo"))
        .args(["queue", "list", "--socket"])
        .arg(&sock));
    assert!(ok && out.contains("Mail queue is empty"), "{out}");
}

#[test]
fn control_socket_survives_a_silent_client_and_a_queued_restart() {
    let env = TestEnv::new("");
    let server = env.start();
    let sock = env.tmp.path().join("run/control.sock");
    // A client that connects and says nothing does not block anyone.
    let _silent: Vec<_> = (0..20)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).expect("connect"))
        .collect();
    let (ok, out) = env.queue(&["list"]);
    assert!(ok && out.contains("Mail queue is empty"), "{out}");
    // SMTP still works meanwhile.
    send(env.smtp_port, USER, "while-silent-clients");
    env.wait_delivered(USER, "while-silent-clients");
    // Garbage gets an error, not a hang.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        s.write_all(&[0xff; 64]).expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(String::from_utf8_lossy(&buf).contains("too large"), "{buf:?}");
    }
    let old = server.worker_pid("queued");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    wait_for(Duration::from_secs(20), "queued restarted and answering", || {
        env.queue(&["list"]).0
    });
}

/// A Dovecot LMTP server in a temporary directory (unix socket and a
/// loopback TCP port), storing mail in Maildirs under `mail/`.
struct Dovecot {
    server: tambo_tests::dovecot::Dovecot,
    port: u16,
}

impl Dovecot {
    fn start(dir: &Path) -> Dovecot {
        let mail = dir.join("mail");
        std::fs::create_dir_all(&mail).expect("mkdir");
        let port = free_port();
        let who = tambo_tests::dovecot::accounts();
        if is_root() {
            // Dovecot stores the mail as the (non-root) mail user.
            nix::unistd::chown(
                &mail,
                Some(nix::unistd::Uid::from_raw(who.uid)),
                Some(nix::unistd::Gid::from_raw(who.gid)),
            )
            .expect("chown mail");
        }
        let specific = format!(
            "protocols = lmtp\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             mail_location = maildir:~/Maildir\n\
             postmaster_address = postmaster@example.com\n\
             service lmtp {{\n\
               inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               unix_listener lmtp {{\n    mode = 0666\n  }}\n\
             }}\n"
        );
        let passwd: String = ["alice", "bob"]
            .iter()
            .map(|u| {
                format!(
                    "{u}@example.com:{{PLAIN}}x:{}:{}::{}/{u}::\n",
                    who.uid,
                    who.gid,
                    mail.display()
                )
            })
            .collect();
        let server = tambo_tests::dovecot::Dovecot::start(dir, &specific, &passwd, |d| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && d.join("run/lmtp").exists()
        });
        Dovecot { server, port }
    }

    fn socket(&self) -> PathBuf {
        self.server.dir.join("run/lmtp")
    }

    /// Contents of the messages in `user`'s Maildir/new.
    fn mailbox(&self, user: &str) -> Vec<String> {
        let new = self.server.dir.join("mail").join(user).join("Maildir/new");
        let mut out: Vec<String> = std::fs::read_dir(new)
            .map(|rd| {
                rd.flatten()
                    .map(|e| String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn log(&self) -> String {
        self.server.log()
    }
}

#[test]
fn lmtp_delivery_to_dovecot() {
    if !have("dovecot") {
        panic!("dovecot is missing: scripts/test installs dovecot-core and dovecot-lmtpd");
    }
    let env = TestEnv::new("");
    // carol exists for tambo but not for Dovecot: a per-recipient 550.
    let (ok, out) = run(Command::new(bin("tambo")).arg("-C").arg(&env.config_dir).args([
        "user-add",
        "carol@example.com",
        "--password",
        "x",
    ]));
    assert!(ok, "{out}");
    env.fix_permissions();
    let dovecot = Dovecot::start(&env.tmp.path().join("dovecot"));
    env.write_conf(&format!("lmtp_address: \"unix:{}\"", dovecot.socket().display()));
    let mut server = env.start();
    let (ok, out) = run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", env.smtp_port)])
        .args(["--from", "sender@remote.example"])
        .args(["--to", "alice@example.com,bob@example.com,carol@example.com"])
        .args([
            "--body",
            "lmtp over unix\r\n.leading dot line\r\nend",
            "--timeout",
            "30",
        ]));
    assert!(ok, "{out}");
    wait_for(Duration::from_secs(20), "Dovecot stored the message", || {
        dovecot.mailbox("alice").len() == 1 && dovecot.mailbox("bob").len() == 1
    });
    for user in ["alice", "bob"] {
        let m = &dovecot.mailbox(user)[0];
        assert!(m.contains("lmtp over unix"), "{m}");
        assert!(m.contains("\n.leading dot line\n"), "dot-unstuffed by Dovecot: {m}");
        assert!(m.contains("by mx.example.com (tambo)"), "{m}");
    }
    wait_for(Duration::from_secs(20), "carol's permanent failure", || {
        server.log().contains("permanent failure: LMTP server")
    });
    let log = server.log();
    assert!(log.contains("550 5.1.1"), "{log}");
    assert!(dovecot.log().contains("saved mail to INBOX"), "{}", dovecot.log());
    assert!(server.stop().success());

    // Over TCP this time.
    env.write_conf(&format!("lmtp_address: \"127.0.0.1:{}\"", dovecot.port));
    let _server = env.start();
    send(env.smtp_port, USER, "lmtp-over-tcp");
    wait_for(Duration::from_secs(20), "the TCP delivery", || {
        dovecot
            .mailbox("alice")
            .iter()
            .any(|m| m.contains("X-Marker: lmtp-over-tcp"))
    });
    assert_eq!(dovecot.mailbox("alice").len(), 2);
}

/// Sends numbered messages one by one (reconnecting after any failure)
/// until at least `min` were tried and the stop file exists; prints the
/// numbers the server acknowledged with 250.
const STREAM_CLIENT: &str = r#"
import json, os, smtplib, sys, time
port, stop, min_n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
acked, failed, s, i = [], 0, None, 0
while i < 3000 and (i < min_n or not os.path.exists(stop)):
    i += 1
    try:
        if s is None:
            s = smtplib.SMTP('127.0.0.1', port, timeout=30)
        s.sendmail('sender@remote.example', ['alice@example.com'],
                   ('Subject: stream %d\r\n\r\nstream-marker-%05d-end\r\n' % (i, i)).encode())
        acked.append(i)
    except Exception as e:
        failed += 1
        try:
            s.close()
        except Exception:
            pass
        s = None
        time.sleep(0.05)
    time.sleep(0.01)
print(json.dumps({'tried': i, 'acked': acked, 'failed': failed}))
"#;

/// What the stream client reported: the numbers it tried and those the
/// server acknowledged with 250.
struct StreamReport {
    tried: u32,
    acked: Vec<u32>,
    text: String,
}

/// Start the stream client against `port`; it stops once `stop` exists
/// and at least `min` messages were tried.
fn start_stream(port: u16, stop: &Path, min: u32) -> std::process::Child {
    Command::new("python3")
        .args(["-c", STREAM_CLIENT, &port.to_string()])
        .arg(stop)
        .arg(min.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3")
}

/// Wait for the stream client and read its report.
fn finish_stream(client: std::process::Child) -> StreamReport {
    let out = client.wait_with_output().expect("client");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.find("\"acked\": [").expect("acked") + "\"acked\": [".len();
    let end = start + text[start..].find(']').expect("]");
    let acked = text[start..end]
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let tried = text
        .split("\"tried\": ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("tried");
    StreamReport { tried, acked, text }
}

/// Check, marker by marker, that every acknowledged message was delivered
/// exactly once (`count` says how often a marker arrived) and no other
/// message more than once.
fn assert_exactly_once(report: &StreamReport, count: impl Fn(&str) -> usize) {
    let mut twice = Vec::new();
    let mut lost = Vec::new();
    for i in 1..=report.tried {
        let n = count(&format!("stream-marker-{i:05}-end"));
        if n > 1 {
            twice.push(i);
        } else if n == 0 && report.acked.contains(&i) {
            lost.push(i);
        }
    }
    assert!(
        twice.is_empty() && lost.is_empty(),
        "delivered twice: {twice:?}; acknowledged and lost: {lost:?}"
    );
}

/// SIGKILL a worker of `server`, wait until it is back.
fn kill_worker(server: &Server, name: &str) {
    let old = server.worker_pid(name);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    wait_for(Duration::from_secs(20), &format!("{name} restarted"), || {
        server.workers().iter().any(|(n, p)| n == name && *p != old)
    });
}

#[test]
fn kill_9_of_every_worker_during_a_stream_loses_and_duplicates_nothing() {
    let env = TestEnv::new("min_retry_delay: \"1s\"\nmax_queue_items: 5000");
    let gate = env.gate_mda();
    let server = env.start();
    let stop = env.tmp.path().join("stop");
    let client = start_stream(env.smtp_port, &stop, 200);
    let kill = |name: &str| {
        std::thread::sleep(Duration::from_millis(700));
        kill_worker(&server, name);
    };
    // While the gate is open messages are delivered as they arrive; while
    // it is closed they wait in the queue, and queued and deliverd die
    // while deliveries only fail. (Kills in the middle of deliveries are
    // the next test's.)
    std::fs::write(&gate, b"").expect("open the gate");
    kill("smtpd");
    kill("authd");
    std::fs::remove_file(&gate).expect("close the gate");
    std::thread::sleep(Duration::from_millis(300));
    kill("queued");
    kill("deliverd");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").expect("stop file");
    let report = finish_stream(client);
    assert!(report.acked.len() >= 150, "most messages get through: {}", report.text);
    std::fs::write(&gate, b"").expect("open the gate");
    env.wait_queue_empty();
    let got = env.delivered(USER).unwrap_or_default();
    assert_exactly_once(&report, |marker| got.matches(marker).count());
    eprintln!(
        "stream: {} tried, {} acknowledged, {} delivered",
        report.tried,
        report.acked.len(),
        got.matches("stream-marker-").count()
    );
}

/// How often each marker arrived in a Maildir's `new/`.
fn maildir_counts(maildir: &Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for f in std::fs::read_dir(maildir.join("new")).expect("new/").flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap_or_default();
        if let Some(at) = text.find("stream-marker-") {
            let marker = text[at..].split_whitespace().next().unwrap_or("").to_string();
            *counts.entry(marker).or_insert(0) += 1;
        }
    }
    counts
}

/// Kill `worker` three times during a stream whose deliveries take
/// `pause` seconds each (so some are always in flight), then check that
/// every message was delivered exactly once. Returns the server's log.
fn kill_during_deliveries(worker: &str, pause: &str) -> String {
    let env = TestEnv::new("min_retry_delay: \"1s\"\nmax_queue_items: 5000");
    let maildir = tambo_tests::stream::maildir_mda(&env, pause);
    let server = env.start();
    let stop = env.tmp.path().join("stop");
    let client = start_stream(env.smtp_port, &stop, 120);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(900));
        kill_worker(&server, worker);
    }
    std::fs::write(&stop, b"").expect("stop file");
    let report = finish_stream(client);
    assert!(report.acked.len() >= 60, "most messages get through: {}", report.text);
    env.wait_queue_empty();
    // A delivery agent adopted from a killed deliverd may still be ending.
    std::thread::sleep(Duration::from_millis(500));
    let counts = maildir_counts(&maildir);
    assert_exactly_once(&report, |marker| counts.get(marker).copied().unwrap_or(0));
    eprintln!(
        "stream, {worker} killed 3 times: {} tried, {} acknowledged, {} delivered",
        report.tried,
        report.acked.len(),
        counts.values().sum::<usize>()
    );
    server.log()
}

/// queued killed while its deliveries run: deliverd keeps what it
/// delivered until the restarted queued has recorded it, and answers the
/// repeated jobs from that.
#[test]
fn kill_9_of_queued_in_the_middle_of_deliveries_duplicates_nothing() {
    let log = kill_during_deliveries("queued", "0.2");
    let answered = log.matches("the outcome kept for queued answers").count();
    eprintln!("{answered} repeated jobs answered from deliverd's ledger");
    assert!(
        answered > 0,
        "no repeated job was answered from the ledger: the kills missed every delivery"
    );
}

/// deliverd killed while its delivery agents run (1 s each, longer than
/// deliverd's restart): they go on, fed by their watchers, which record how
/// they ended, and the restarted deliverd answers queued's repeated jobs
/// from that record, waiting for the agents still running.
#[test]
fn kill_9_of_deliverd_in_the_middle_of_deliveries_duplicates_nothing() {
    let log = kill_during_deliveries("deliverd", "1");
    let adopted = log.matches("delivery agent of the previous deliverd ended").count();
    let waited = log
        .matches("delivery agent of the previous deliverd still running")
        .count();
    eprintln!("{adopted} delivery agent runs adopted from a killed deliverd, {waited} of them while still running");
    assert!(
        waited > 0,
        "no run was adopted while running: the kills missed every delivery"
    );
}
