//! A switch from chasquid to tambo loses nothing chasquid had queued.
//!
//! Debian's chasquid 1.11, run in the foreground on loopback ports with a
//! temporary configuration, accepts messages whose delivery it defers
//! (the MDA exits 75, a pipe waits, a remote domain does not resolve for
//! it); it is stopped, and tambod started on the same configuration
//! directory and data_dir imports its queue: every message arrives once at
//! every recipient chasquid had not delivered, intact, and never again at
//! those it had. A second test kills queued with SIGKILL in the middle of
//! an import of 1,000 items; a third imports chasquid's MTA-STS cache
//! (files in the format chasquid's source writes) and shows deliverd using
//! the imported policies.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tambo_common::chasquid_queue::{self, Item, RcptStatus};
use tambo_tests::smtp_peer::{Peer, Script};
use tambo_tests::{PASSWORD, TestEnv, bin, wait_for};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A tool the test needs: its path, or `None` after saying SKIPPED (a
/// failure under CI=true, where scripts/test installs it).
fn need(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    if tambo_tests::have(name) {
        return Some(PathBuf::from(name));
    }
    tambo_tests::skip(&format!(
        "{name} is not installed (Debian package chasquid; scripts/test installs it)"
    ));
    None
}

fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn add_user(env: &TestEnv, user: &str) {
    let status = Command::new(bin("tambo"))
        .arg("-C")
        .arg(&env.config_dir)
        .args(["user-add", user, "--password", PASSWORD])
        .stdout(Stdio::null())
        .status()
        .expect("tambo user-add");
    assert!(status.success(), "tambo user-add {user}");
}

/// chasquid running in the foreground; stopped (and waited for) on drop.
struct Chasquid {
    child: Option<Child>,
    log: PathBuf,
}

impl Chasquid {
    /// Start chasquid on `env`'s configuration directory, whose
    /// chasquid.conf has only the fields chasquid 1.11 knows, and wait for
    /// its SMTP greeting.
    fn start(binary: &Path, env: &TestEnv, mda: &Path) -> Chasquid {
        let conf = format!(
            "hostname: \"mx.example.com\"\n\
             smtp_address: \"127.0.0.1:{}\"\n\
             submission_address: \"127.0.0.1:{}\"\n\
             submission_over_tls_address: \"127.0.0.1:{}\"\n\
             data_dir: \"{}\"\n\
             mail_delivery_agent_bin: \"{}\"\n\
             mail_delivery_agent_args: \"%to%\"\n\
             mail_log_path: \"{}\"\n",
            env.smtp_port,
            env.submission_port,
            env.submission_tls_port,
            env.data_dir.display(),
            mda.display(),
            env.tmp.path().join("chasquid-mail.log").display(),
        );
        std::fs::write(env.config_dir.join("chasquid.conf"), conf).expect("write chasquid.conf");
        let log = env.tmp.path().join("chasquid.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(binary)
            .arg(format!("-config_dir={}", env.config_dir.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone"))
            .stderr(out)
            .spawn()
            .expect("spawn chasquid");
        let c = Chasquid {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", env.smtp_port)) {
                drop(s);
                return c;
            }
            assert!(Instant::now() < deadline, "chasquid did not start:\n{}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s; waits for the exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Chasquid {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Send one message over SMTP; panics unless it is accepted.
fn send(port: u16, from: &str, to: &[&str], text: &str) {
    let r = tambo_tests::send_message(port, from, to, text);
    assert!(r.starts_with("250"), "end of data: {r}");
}

/// The text of message `tag`, as sent.
fn message(tag: &str) -> String {
    format!(
        "From: <sender@remote.test>\nSubject: {tag}\nMessage-Id: <{tag}@remote.test>\n\n\
         body of {tag}\n.a line starting with a dot\ntab\there, 8-bit: ñandú €\nmarker-{tag}\n"
    )
}

/// The items in chasquid's queue directory.
fn queue_items(queue: &Path) -> Vec<Item> {
    let Ok(dir) = std::fs::read_dir(queue) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|d| chasquid_queue::item_id_from_file_name(&d.file_name().to_string_lossy()).is_some())
        .filter_map(|d| {
            let bytes = std::fs::read(d.path()).ok()?;
            chasquid_queue::parse_item(&bytes, &d.path().display().to_string()).ok()
        })
        .collect()
}

fn item_for<'a>(items: &'a [Item], tag: &str) -> Option<&'a Item> {
    items.iter().find(|i| {
        i.data
            .windows(tag.len() + 7)
            .any(|w| w == format!("marker-{tag}").as_bytes())
    })
}

fn status_of(items: &[Item], tag: &str, address: &str) -> Option<RcptStatus> {
    item_for(items, tag)?
        .rcpts
        .iter()
        .find(|r| r.address == address)
        .map(|r| r.status)
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

fn names_in(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn chasquids_queue_is_delivered_exactly_once() {
    let Some(chasquid) = need("chasquid", &["/usr/sbin/chasquid", "/usr/bin/chasquid"]) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let peer = rt.block_on(Peer::start(Script::default()));
    let env = TestEnv::new("");
    add_user(&env, "carl@example.com");
    let tmp = env.tmp.path();
    let gate = tmp.join("gate");
    let out = env.out_dir.clone();
    // One MDA for both servers: carl's mail is delivered at once, ghost's
    // fails for good, everyone else's waits for the gate.
    let mda = tmp.join("mda.sh");
    write_script(
        &mda,
        &format!(
            "#!/bin/sh\ncase \"$1\" in ghost@*) echo no such mailbox; exit 1;; esac\n\
             if [ ! -e '{g}' ] && [ \"$1\" != carl@example.com ]; then echo gate closed; exit 75; fi\n\
             cat >> '{o}'/\"$1\"\n",
            g = gate.display(),
            o = out.display()
        ),
    );
    // The pipe alias `waiter` waits (chasquid is stopped meanwhile, so its
    // recipient stays pending); `piper` delivers at once.
    let pids = tmp.join("pipe-pids");
    let pipe = tmp.join("pipe.sh");
    write_script(
        &pipe,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = wait ] && [ ! -e '{g}' ]; then echo $$ >> '{p}'; exec sleep 120; fi\n\
             cat >> '{o}'/pipe-\"$1\"\n",
            g = gate.display(),
            p = pids.display(),
            o = out.display()
        ),
    );
    env.set_aliases(&format!(
        "team: alice, bob, carl\nbroken: alice, ghost\npiper: | {p} ok\nwaiter: | {p} wait\nfar: carol@remote.test\n",
        p = pipe.display()
    ));

    // ---- chasquid accepts the mail, and defers most of it.
    let mut cq = Chasquid::start(&chasquid, &env, &mda);
    let port = env.smtp_port;
    send(port, "sender@remote.test", &["alice@example.com"], &message("m1"));
    send(port, "sender@remote.test", &["team@example.com"], &message("m2"));
    send(
        port,
        "sender@remote.test",
        &["piper@example.com", "bob@example.com"],
        &message("m3"),
    );
    send(port, "sender@remote.test", &["waiter@example.com"], &message("m4"));
    send(port, "sender@remote.test", &["far@example.com"], &message("m5"));
    send(port, "bounces@remote.test", &["broken@example.com"], &message("m6"));
    send(port, "sender@remote.test", &["Alice+Tag@example.com"], &message("m7"));
    let queue = env.data_dir.join("queue");
    let mut items = Vec::new();
    let ready = |items: &[Item]| {
        items.len() == 7
            && status_of(items, "m2", "carl@example.com") == Some(RcptStatus::Sent)
            && item_for(items, "m3").is_some_and(|i| i.rcpts.iter().any(|r| r.status == RcptStatus::Sent))
            && status_of(items, "m6", "ghost@example.com") == Some(RcptStatus::Failed)
            && status_of(items, "m1", "alice@example.com") == Some(RcptStatus::Pending)
            && item_for(items, "m1").is_some_and(|i| i.rcpts[0].last_failure_message.contains("gate closed"))
            && pids.exists()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(&items) {
        assert!(Instant::now() < deadline, "chasquid's queue: {items:#?}\n{}", cq.log());
        std::thread::sleep(Duration::from_millis(100));
        items = queue_items(&queue);
    }
    cq.stop();
    // The waiting pipe outlived chasquid: end it (we started it).
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().split_whitespace() {
        if let Ok(p) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
    }
    let items = queue_items(&queue);
    assert_eq!(items.len(), 7, "chasquid left 7 items");
    assert_eq!(status_of(&items, "m4", "alice@example.com"), None);
    assert!(item_for(&items, "m4").is_some_and(|i| i.rcpts[0].status == RcptStatus::Pending));
    assert!(item_for(&items, "m5").is_some_and(|i| i.rcpts[0].status == RcptStatus::Pending));
    let by_chasquid = |who: &str| env.delivered(who).unwrap_or_default();
    assert_eq!(count(&by_chasquid("carl@example.com"), "marker-m2"), 1);
    assert_eq!(count(&by_chasquid("pipe-ok"), "marker-m3"), 1);
    assert!(env.delivered("alice@example.com").is_none());

    // ---- tambod on the same configuration directory and data_dir.
    env.dns.mx("remote.test", 10, "mx.remote.test");
    env.dns.addr("mx.remote.test", LOCALHOST);
    env.write_conf(&format!("outgoing_smtp_port: {}\n", peer.port));
    std::fs::write(&gate, "").expect("open the gate");
    env.fix_permissions();
    let mut server = env.start();
    let want: &[(&str, &[&str])] = &[
        ("alice@example.com", &["m1", "m2", "m6", "m7"]),
        ("bob@example.com", &["m2", "m3"]),
        ("carl@example.com", &["m2"]),
        ("pipe-ok", &["m3"]),
        ("pipe-wait", &["m4"]),
    ];
    let all_arrived = || {
        want.iter().all(|(who, tags)| {
            let got = env.delivered(who).unwrap_or_default();
            tags.iter().all(|t| got.contains(&format!("marker-{t}")))
        }) && peer.message_count() >= 2
    };
    wait_for(Duration::from_secs(60), "every imported message delivered", all_arrived);
    // Anything delivered twice would have arrived by now.
    std::thread::sleep(Duration::from_secs(3));
    for (who, tags) in want {
        let got = env.delivered(who).unwrap_or_default();
        for t in *tags {
            assert_eq!(count(&got, &format!("marker-{t}")), 1, "{t} at {who}:\n{got}");
        }
        assert_eq!(count(&got, "marker-"), tags.len(), "nothing else at {who}:\n{got}");
    }
    // The body as it was sent (CRLF now), chasquid's Received on top and
    // no other.
    let alice = env.delivered("alice@example.com").unwrap();
    let m1 = &alice[..alice.find("marker-m1").unwrap() + "marker-m1\r\n".len()];
    let m1 = &m1[m1.rfind("Received-SPF:").unwrap()..];
    assert!(m1.starts_with("Received-SPF: "), "{m1}");
    assert_eq!(count(m1, "Received: "), 1, "{m1}");
    assert!(m1.contains("by mx.example.com (chasquid)"), "{m1}");
    let sent = tambo_tests::crlf_lines(&message("m1"));
    assert!(m1.ends_with(&sent), "body changed:\n{m1:?}\nsent:\n{sent:?}");
    // The remote recipient, with our SRS sender; the DSN for ghost.
    let messages: Vec<String> = peer
        .messages()
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let m5: Vec<_> = messages.iter().filter(|m| m.contains("marker-m5")).collect();
    assert_eq!(m5.len(), 1);
    assert!(m5[0].ends_with(&tambo_tests::crlf_lines(&message("m5"))[message("m5").find("\n\n").unwrap() + 2..]));
    let dsn: Vec<_> = messages.iter().filter(|m| m.contains("ghost@example.com")).collect();
    assert_eq!(dsn.len(), 1, "one DSN for the recipient chasquid failed");
    assert!(dsn[0].contains("no such mailbox") && dsn[0].contains("report-type=delivery-status"));
    let cmds = peer.commands();
    assert!(cmds.iter().any(|c| c.starts_with("MAIL FROM:<SRS0=")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c.starts_with("MAIL FROM:<>")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c == "RCPT TO:<bounces@remote.test>"), "{cmds:?}");
    // One log line per item and a summary; the originals moved aside.
    let log = server.log();
    assert_eq!(count(&log, "imported chasquid queue item"), 7, "{log}");
    assert!(
        log.contains("chasquid queue import: 7 item(s) imported with 8 recipient(s) to deliver"),
        "{log}"
    );
    assert_eq!(names_in(&queue, "m:"), 0);
    assert_eq!(names_in(&queue.join("chasquid-imported"), "m:"), 7);

    // ---- a restart imports nothing and delivers nothing again.
    server.stop();
    let mut server = env.start();
    std::thread::sleep(Duration::from_secs(3));
    for (who, tags) in want {
        assert_eq!(
            count(&env.delivered(who).unwrap_or_default(), "marker-"),
            tags.len(),
            "{who}"
        );
    }
    assert_eq!(peer.message_count(), 2);
    assert!(!server.log().contains("chasquid queue import"));
    server.stop();
    drop(rt);
}

/// kill -9 of queued while it imports 1,000 items (in chasquid's layout,
/// as the first test checks it): no item lost, none imported twice.
#[test]
fn an_import_killed_midway_loses_nothing_and_duplicates_nothing() {
    const N: usize = 1000;
    let env = TestEnv::new("min_retry_delay: \"1s\"\n");
    let gate = env.gate_mda();
    let queue = env.data_dir.join("queue");
    std::fs::create_dir_all(&queue).expect("queue dir");
    // Created a minute ago: an item older than give_up_send_after (20 h)
    // would be bounced at its first temporary failure instead of retried.
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 60;
    for i in 0..N {
        let item = Item {
            id: format!("crash{i:05}"),
            from: "sender@remote.test".into(),
            to: vec!["alice@example.com".into()],
            rcpts: vec![chasquid_queue::Recipient {
                address: "alice@example.com".into(),
                kind: chasquid_queue::RcptType::Email,
                status: RcptStatus::Pending,
                last_failure_message: "MDA delivery failed: exit status 75".into(),
                original_address: "alice@example.com".into(),
                via: vec![],
            }],
            data: format!(
                "Received: from x by mx.example.com (chasquid)\nSubject: {i}\n\n{}marker-{i:05}-end\n",
                "text\n".repeat(200)
            )
            .into_bytes(),
            created: Some((created as i64, 0)),
            ignored: vec![],
        };
        std::fs::write(queue.join(format!("m:{}", item.id)), chasquid_queue::format_item(&item)).expect("write item");
    }
    env.fix_permissions();
    let imported = queue.join("chasquid-imported");
    let mut midway = 0;
    // queued is killed three times during the import. At tambod's start a
    // worker that dies before it is ready stops tambod (as a service
    // manager would restart it), so each round starts tambod again.
    for threshold in [1, N / 3, 2 * N / 3] {
        let mut server = env.spawn(&[]);
        let pid = server.worker_pid("queued");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let moved = names_in(&imported, "m:");
            let left = names_in(&queue, "m:");
            if left == 0 {
                break;
            }
            if moved >= threshold {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                if names_in(&queue, "m:") > 0 {
                    midway += 1;
                }
                break;
            }
            assert!(Instant::now() < deadline, "the import did not progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        match server.wait_exit(Duration::from_secs(30)) {
            Some(status) => assert!(!status.success(), "a start whose queued died exits non-zero"),
            // The import finished before the kill: this tambod serves.
            None => {
                server.stop();
            }
        }
        if names_in(&queue, "m:") == 0 {
            break;
        }
    }
    let server = env.start();
    assert!(midway >= 1, "no kill landed during the import");
    wait_for(Duration::from_secs(60), "the import finished", || {
        names_in(&queue, "m:") == 0 && server.log().contains("chasquid queue import:")
    });
    assert_eq!(names_in(&imported, "m:"), N);
    std::fs::write(&gate, "").expect("open the gate");
    wait_for(Duration::from_secs(120), "every item delivered", || {
        count(&env.delivered("alice@example.com").unwrap_or_default(), "-end") >= N
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = env.delivered("alice@example.com").unwrap_or_default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, _) in got.match_indices("marker-") {
        *seen.entry(&got[i + 7..i + 12]).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(seen.len(), N, "lost: {}", N - seen.len());
    let log = server.log();
    println!(
        "{midway} kill(s) during the import; summaries:\n{}",
        log.lines()
            .filter(|l| l.contains("chasquid queue import:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = std::io::stdout().flush();
}

/// A cache file as chasquid's `sts.PolicyCache` stores one: the policy
/// marshalled with Go's encoding/json (`max_age` a `time.Duration`, in
/// nanoseconds; `mx` null when empty) and, as the file's modification
/// time, when it expires. Written from what chasquid's source does, not
/// with its code.
fn chasquid_sts_file(
    dir: &Path,
    domain: &str,
    mode: &str,
    mx: &[&str],
    max_age_secs: u64,
    expires: std::time::SystemTime,
) {
    let mx = if mx.is_empty() {
        "null".to_string()
    } else {
        format!(
            "[{}]",
            mx.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(",")
        )
    };
    let json = format!(
        "{{\"version\":\"STSv1\",\"mode\":\"{mode}\",\"mx\":{mx},\"max_age\":{}}}",
        max_age_secs * 1_000_000_000
    );
    let path = dir.join(format!("pol:{domain}"));
    std::fs::write(&path, json).expect("write policy");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(expires)
        .expect("set mtime");
}

/// chasquid's MTA-STS cache imported at deliverd's start: an enforce
/// policy whose MX has no STARTTLS and one whose `mx` does not match keep
/// mail away from a peer that an expired (dropped) policy's domain reaches
/// in plain text. The domains publish no `_mta-sts` TXT record any more
/// (as if an attacker removed it): the imported policies stay in force.
#[test]
fn chasquids_sts_cache_is_imported_and_used() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let peer = rt.block_on(Peer::start(Script::default()));
    let env = TestEnv::new("");
    for d in ["sts.test", "other.test", "old.test"] {
        env.dns.mx(d, 10, &format!("mx.{d}"));
        env.dns.addr(&format!("mx.{d}"), LOCALHOST);
    }
    let cache = env.data_dir.join("sts-cache");
    std::fs::create_dir_all(&cache).expect("sts-cache");
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86400);
    let expires = now + day;
    chasquid_sts_file(&cache, "sts.test", "enforce", &["mx.sts.test"], 86400, expires);
    chasquid_sts_file(&cache, "other.test", "enforce", &["mx.elsewhere.test"], 86400, expires);
    chasquid_sts_file(&cache, "old.test", "enforce", &["mx.elsewhere.test"], 86400, now - day);
    env.set_aliases("s1: carol@sts.test\ns2: carol@other.test\ns3: carol@old.test\n");
    env.write_conf(&format!("outgoing_smtp_port: {}\n", peer.port));
    env.fix_permissions();
    let server = env.start();
    for (alias, tag) in [("s1", "sts1"), ("s2", "sts2"), ("s3", "sts3")] {
        send(
            env.smtp_port,
            "sender@remote.test",
            &[&format!("{alias}@example.com")],
            &message(tag),
        );
    }
    wait_for(Duration::from_secs(30), "the expired policy's domain delivered", || {
        peer.message_count() >= 1
    });
    wait_for(Duration::from_secs(30), "both policies applied", || {
        let log = server.log();
        log.contains("mx.other.test: not allowed by the MTA-STS policy of other.test")
            && log
                .lines()
                .any(|l| l.contains("carol@sts.test") && l.contains("temporary failure") && l.contains("MTA-STS"))
    });
    let log = server.log();
    assert!(
        log.contains("policy imported from chasquid's cache (pol:sts.test)"),
        "{log}"
    );
    assert!(
        log.contains("policy imported from chasquid's cache (pol:other.test)"),
        "{log}"
    );
    assert!(
        log.contains("chasquid's policy in pol:old.test has expired: dropped"),
        "{log}"
    );
    assert!(log.contains("no _mta-sts TXT record; using the cached policy"), "{log}");
    assert_eq!(
        peer.message_count(),
        1,
        "only the domain whose policy expired gets mail"
    );
    assert!(String::from_utf8_lossy(&peer.messages()[0]).contains("marker-sts3"));
    let cmds = peer.commands();
    assert!(
        !cmds
            .iter()
            .any(|c| c.contains("carol@sts.test") || c.contains("carol@other.test")),
        "{cmds:?}"
    );
    // Our cache format, chasquid's expiry; the originals moved aside.
    let ours = std::fs::read_to_string(cache.join("sts.test")).expect("imported cache file");
    let secs = expires.duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    assert!(
        ours.contains("id: chasquid-import\n") && ours.contains(&format!("expires: {secs}\n")),
        "{ours}"
    );
    assert!(ours.contains("mode: enforce\r\nmx: mx.sts.test\r\n"), "{ours}");
    assert!(!cache.join("old.test").exists());
    assert_eq!(names_in(&cache, "pol:"), 0);
    assert_eq!(names_in(&cache.join("chasquid-imported"), "pol:"), 3);
    drop(server);
    drop(rt);
}
