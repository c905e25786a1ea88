//! Issue 17 item 3: the fault campaign's first leg. Under a stream of
//! messages (port 25 to a local user, submission to a local and a remote
//! recipient), a random worker is killed with SIGKILL every 200–500 ms.
//! At the end every worker is back, every acknowledged message is
//! delivered to every recipient, and none twice, but for RFC 1047's
//! windows, each checked for what it is: a client that got no answer to
//! its final dot sends again (a new acceptance), and a remote copy comes
//! again only when deliverd died with the server's 250 unread (it sent
//! nothing more on that session). `scripts/fault-campaign` runs it longer
//! (`TAMBO_CAMPAIGN_MESSAGES`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use tambo_tests::smtp_peer::{Peer, Script};
use tambo_tests::stream;
use tambo_tests::*;

/// The workers killed, in turn chosen at random.
const WORKERS: &[&str] = &["smtpd", "authd", "queued", "deliverd", "hookd"];

/// Messages in the stream unless `TAMBO_CAMPAIGN_MESSAGES` says (the
/// suite's size; `scripts/fault-campaign` runs 5,000 and more).
const MESSAGES: u32 = 1000;

/// A deterministic choice of worker and pause.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn tambo_queue(env: &TestEnv, args: &[&str]) -> (bool, String) {
    run(Command::new(bin("tambo"))
        .arg("-C")
        .arg(&env.config_dir)
        .arg("queue")
        .args(args))
}

#[test]
fn random_worker_killed_every_few_hundred_ms_under_a_stream() {
    let total = std::env::var("TAMBO_CAMPAIGN_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let peer = rt.block_on(Peer::start(Script::default()));
    let env = TestEnv::new(&format!(
        "outgoing_smtp_port: {}\nmin_retry_delay: \"1s\"\nmax_queue_items: 20000",
        peer.port
    ));
    env.dns.mx("remote.test", 10, "mx.remote.test");
    env.dns.addr("mx.remote.test", IpAddr::V4(Ipv4Addr::LOCALHOST));
    let maildir = stream::maildir_mda(&env, "0");
    let server = env.start_with_args(&["--testing__restart_always"]);

    let started = Instant::now();
    let mut clients = stream::Plan {
        host: "127.0.0.1".into(),
        smtp_port: env.smtp_port,
        submission_port: env.submission_port,
        total,
        threads: 8,
        smtp_from: "sender@remote.example".into(),
        smtp_to: vec![USER.into()],
        user: USER.into(),
        password: PASSWORD.into(),
        submission_to: vec!["bob@example.com".into(), "dest@remote.test".into()],
        max_tries: 150,
    }
    .start();

    // Kill until the clients are done.
    let mut lcg = Lcg(u64::from(std::process::id()));
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    while clients.running() {
        std::thread::sleep(Duration::from_millis(200 + lcg.next() % 300));
        let name = WORKERS[(lcg.next() as usize) % WORKERS.len()];
        if let Some((_, pid)) = server.workers().into_iter().find(|(n, _)| n == name)
            && nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        {
            *kills.entry(name).or_default() += 1;
        }
    }
    let sent_in = started.elapsed();
    let sent = stream::finish(clients);
    assert_eq!(sent.len(), total as usize, "every message reported");
    for (n, s) in &sent {
        assert!(s.ok, "message {n} never got a 250 in {} tries: {}", s.tries, s.last);
    }

    // Every worker is back, and the queue drains.
    wait_for(Duration::from_secs(30), "every worker back", || {
        let up = server.workers();
        WORKERS.iter().all(|w| up.iter().any(|(n, _)| n == w))
    });
    wait_for(Duration::from_secs(120), "the queue to drain", || {
        let _ = tambo_queue(&env, &["flush"]);
        tambo_queue(&env, &["list"]).1 == "Mail queue is empty\n"
    });
    // A delivery agent adopted from a killed deliverd may still be ending.
    std::thread::sleep(Duration::from_millis(500));

    // Local: port 25's messages (even numbers) went to alice,
    // submission's (odd) to bob, one file per delivery.
    let mut local = stream::Copies::new();
    stream::collect(&mut local, stream::maildir_messages(&maildir));
    let mut remote = stream::Copies::new();
    let as_text = |m: Vec<u8>| String::from_utf8_lossy(&m).into_owned();
    stream::collect(&mut remote, peer.messages().into_iter().map(as_text));
    // The copies after whose 250 deliverd sent nothing more on that
    // session before it died, and how long it lived on, by copy. deliverd
    // records an outcome before the session can carry anything else, so
    // only these may come again: the reply was still unread in deliverd's
    // socket when it died (RFC 1047's window; a busy deliverd may leave it
    // there for hundreds of milliseconds).
    let mut cut: std::collections::HashMap<(u32, String), Duration> = std::collections::HashMap::new();
    for (m, after) in peer.messages_cut_after_250() {
        if let Some(key) = stream::copy_of(&as_text(m)) {
            cut.insert(key, after);
        }
    }

    let by_port = |odd: bool| -> BTreeMap<u32, stream::Sent> {
        sent.iter()
            .filter(|(n, _)| (*n % 2 == 1) == odd)
            .map(|(n, s)| (*n, s.clone()))
            .collect()
    };
    let (smtp, submission) = (by_port(false), by_port(true));
    let local_alice = stream::tally(&smtp, &local, |_, _| false);
    let local_bob = stream::tally(&submission, &local, |_, _| false);
    // A remote copy of one acceptance may repeat only when the peer saw
    // deliverd go away right after a 250 for it (RFC 1047's window).
    let mut repeats = Vec::new();
    let remote_t = stream::tally(&submission, &remote, |n, copy| {
        let after = cut.get(&(n, copy.to_string())).copied();
        repeats.push((n, after.map(|a| a.as_millis())));
        after.is_some()
    });
    let tries: u32 = sent.values().map(|s| s.tries).sum();
    let ambiguous: u32 = sent.values().map(|s| s.ambiguous).sum();
    eprintln!(
        "fault campaign: {total} messages ({tries} attempts, {ambiguous} without an answer after the data) \
         in {:.1} s; kills {kills:?}; stored locally {} + {}, remotely {}; lost {}/{}/{}; delivered twice \
         {}/{}/{}; resent after an unanswered data {}; remote repeats after a cut 250 {} (ms from the 250 \
         to deliverd's end: {repeats:?})",
        sent_in.as_secs_f64(),
        local_alice.stored,
        local_bob.stored,
        remote_t.stored,
        local_alice.lost.len(),
        local_bob.lost.len(),
        remote_t.lost.len(),
        local_alice.twice.len(),
        local_bob.twice.len(),
        remote_t.twice.len(),
        local_alice.resent + local_bob.resent + remote_t.resent,
        remote_t.excused,
    );
    let all = [("alice", &local_alice), ("bob", &local_bob), ("remote", &remote_t)];
    if all.iter().any(|(_, t)| !t.lost.is_empty() || !t.twice.is_empty()) {
        // Keep the evidence: the server's log, the queue, the Maildir.
        let keep = std::env::temp_dir().join(format!("fault-campaign-{}", std::process::id()));
        let _ = Command::new("cp").arg("-a").arg(env.tmp.path()).arg(&keep).status();
        eprintln!("the test directory is kept in {}", keep.display());
    }
    for (what, t) in all {
        assert!(t.lost.is_empty(), "{what}: acknowledged and lost: {:?}", t.lost);
        assert!(t.twice.is_empty(), "{what}: delivered twice: {:?}", t.twice);
    }
    assert!(
        WORKERS.iter().all(|w| kills.get(w).copied().unwrap_or(0) > 0),
        "every worker was killed: {kills:?}"
    );
}
