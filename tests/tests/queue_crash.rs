//! Issue 4, crash safety of DSNs and the queue limit: kill -9 of queued
//! exactly while it turns permanent failures into DSNs (each sender gets one
//! DSN per failed message: none lost, none twice), and `max_queue_items`
//! under concurrent commits (never exceeded; the others get 451 4.3.0 and
//! keep their message).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tambo_tests::*;

/// A tolerant SMTP client (the server may answer 451 or close while
/// queued restarts): Ok on a 250 after the data, else Err(the reply).
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Result<Client, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        let mut c = Client {
            reader: BufReader::new(s),
            writer,
        };
        c.expect("", "220")?;
        Ok(c)
    }

    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return out,
                Ok(_) => {}
            }
            out.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    /// Send `bytes` (if any), read a reply, check its code.
    fn expect(&mut self, bytes: &str, code: &str) -> Result<String, String> {
        if !bytes.is_empty() {
            self.writer.write_all(bytes.as_bytes()).map_err(|e| e.to_string())?;
        }
        let r = self.reply();
        if r.starts_with(code) { Ok(r) } else { Err(r) }
    }

    /// Everything up to the end of the message text, without the final dot.
    fn start(port: u16, from: &str, to: &str, subject: &str) -> Result<Client, String> {
        let mut c = Client::connect(port)?;
        c.expect("EHLO client.test\r\n", "250")?;
        c.expect(&format!("MAIL FROM:<{from}>\r\n"), "250")?;
        c.expect(&format!("RCPT TO:<{to}>\r\n"), "250")?;
        c.expect("DATA\r\n", "354")?;
        c.writer
            .write_all(
                format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n").as_bytes(),
            )
            .map_err(|e| e.to_string())?;
        Ok(c)
    }

    /// The final dot; Ok on 250.
    fn finish(mut self) -> Result<(), String> {
        let r = self.expect(".\r\n", "250");
        let _ = self.writer.write_all(b"QUIT\r\n");
        r.map(|_| ())
    }
}

fn send(port: u16, from: &str, to: &str, subject: &str) -> Result<(), String> {
    Client::start(port, from, to, subject)?.finish()
}

fn add_user(env: &TestEnv, addr: &str) {
    let (ok, out) =
        run(Command::new(bin("tambo"))
            .arg("-C")
            .arg(&env.config_dir)
            .args(["user-add", addr, "--password", PASSWORD]));
    assert!(ok, "{out}");
}

/// The test MDA: carol's mailbox is broken (exit 1: permanent); everyone
/// else's fails temporarily (exit 75) until `gate` exists, then the
/// message is appended to out/<to>.
fn write_mda(env: &TestEnv, gate: &Path) {
    let mda = env.tmp.path().join("mda.sh");
    std::fs::write(
        &mda,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in carol@example.com) cat >/dev/null; echo 'mailbox is broken'; exit 1;; esac\n\
             [ -e '{}' ] || {{ cat >/dev/null; echo gate closed; exit 75; }}\n\
             cat >> '{}'/\"$1\"\n",
            gate.display(),
            env.out_dir.display()
        ),
    )
    .expect("write mda");
}

/// Envelopes in the queue: (file stem, contents).
fn envelopes(queue: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(queue) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|de| {
            let name = de.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".env")?.to_string();
            let text = std::fs::read_to_string(de.path()).ok()?;
            Some((stem, text))
        })
        .collect()
}

/// IDs of messages that are finished (no recipient pending), have a failed
/// recipient and are not DSNs: queued is between recording the failure and
/// removing the message, which is when it queues the DSN.
fn finished_originals(envs: &[(String, String)]) -> Vec<String> {
    envs.iter()
        .filter(|(_, t)| t.contains("\"is_dsn\": false") && t.contains("\"Failed\"") && !t.contains("\"Pending\""))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Finished messages whose DSN is queued too: queued has queued the DSN
/// and not yet removed the message (the window that used to send the DSN
/// twice after a crash).
fn in_dsn_window(envs: &[(String, String)]) -> Vec<String> {
    finished_originals(envs)
        .into_iter()
        .filter(|id| {
            let mark = format!("\"dsn_of\": \"{id}\"");
            envs.iter().any(|(_, t)| t.contains(&mark))
        })
        .collect()
}

/// Wait until process `pid` is dead (gone or a zombie).
fn wait_dead(pid: u32) {
    wait_for(
        Duration::from_secs(10),
        "the killed process to die",
        || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        },
    );
}

#[test]
fn kill_9_of_queued_while_dsns_are_queued_sends_each_exactly_once() {
    let env = TestEnv::new("min_retry_delay: \"1h\"\nmax_queue_items: 5000");
    add_user(&env, "carol@example.com");
    let gate = env.tmp.path().join("gate");
    write_mda(&env, &gate);
    env.fix_permissions();
    let queue = env.data_dir.join("queue");

    const MAX_ROUNDS: usize = 8;
    const KILLS_PER_ROUND: usize = 3;
    const PER_ROUND: u32 = 60;
    let next = Arc::new(AtomicU32::new(1));
    let acked = Arc::new(Mutex::new(Vec::<u32>::new()));
    let mut kills = 0;
    // Messages a crash caught with the DSN queued and the message not yet
    // removed, or before the DSN was queued.
    let (mut in_window, mut before_dsn) = (HashSet::new(), HashSet::new());
    for round in 0..MAX_ROUNDS {
        let server = env.start();
        let stop = Arc::new(AtomicBool::new(false));
        let limit = next.load(Ordering::SeqCst) + PER_ROUND;
        // Four concurrent senders (bob, a local user, gets the DSNs) of
        // messages to carol, whose mailbox fails for good.
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let (stop, next, acked) = (stop.clone(), next.clone(), acked.clone());
                let port = env.smtp_port;
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let n = next.fetch_add(1, Ordering::SeqCst);
                        if n >= limit {
                            break;
                        }
                        let subject = format!("dsncrash-{n:05}");
                        if send(port, "bob@example.com", "carol@example.com", &subject).is_ok() {
                            acked.lock().expect("acked").push(n);
                        } else {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                })
            })
            .collect();
        // Kill queued the moment a finished message and its queued DSN are
        // both seen in the queue (the window is a flush or two long); if
        // that is not caught for a while, the moment a finished message is
        // seen at all: queued is then queuing its DSN.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut round_kills = 0;
        let mut hunting_since = Instant::now();
        while round_kills < KILLS_PER_ROUND && Instant::now() < deadline {
            let envs = envelopes(&queue);
            let fallback = hunting_since.elapsed() > Duration::from_millis(250);
            let caught = !in_dsn_window(&envs).is_empty() || (fallback && !finished_originals(&envs).is_empty());
            if !caught {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let pid = server.worker_pid("queued");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill -9 queued");
            wait_dead(pid);
            kills += 1;
            round_kills += 1;
            // What the crash left: a finished message whose DSN is already
            // queued (the window that used to send the DSN twice), or one
            // whose DSN is not queued yet.
            let envs = envelopes(&queue);
            let window = in_dsn_window(&envs);
            for id in finished_originals(&envs) {
                if window.contains(&id) {
                    in_window.insert(id);
                } else {
                    before_dsn.insert(id);
                }
            }
            wait_for(Duration::from_secs(20), "queued restarted", || {
                server.workers().iter().any(|(n, p)| n == "queued" && *p != pid)
            });
            std::thread::sleep(Duration::from_millis(100));
            hunting_since = Instant::now();
        }
        stop.store(true, Ordering::SeqCst);
        for s in senders {
            s.join().expect("sender");
        }
        // Let queued finish what it holds before the next round restarts it.
        wait_for(Duration::from_secs(20), "the failures to be turned into DSNs", || {
            finished_originals(&envelopes(&queue)).is_empty()
        });
        drop(server);
        eprintln!(
            "round {round}: {kills} kills so far; messages caught with the DSN queued and the message not yet removed: {}; before the DSN was queued: {}",
            in_window.len(),
            before_dsn.len()
        );
        if in_window.len() >= 3 && round >= 1 {
            break;
        }
    }
    assert!(
        !in_window.is_empty(),
        "the test never hit the window between queuing a DSN and removing its message ({kills} kills)"
    );

    // Deliver the DSNs.
    std::fs::write(&gate, b"").expect("open the gate");
    let _server = env.start();
    wait_for(Duration::from_secs(60), "the queue to drain", || {
        let _ = env.queue(&["flush"]);
        std::thread::sleep(Duration::from_millis(200));
        env.queue(&["list"]).1 == "Mail queue is empty\n"
    });
    let got = env.delivered("bob@example.com").unwrap_or_default();
    let acked = acked.lock().expect("acked").clone();
    let tried = next.load(Ordering::SeqCst);
    assert!(acked.len() >= 10, "enough messages got through: {}", acked.len());
    for n in 1..tried {
        let count = got.matches(&format!("Subject: dsncrash-{n:05}\r\n")).count();
        if acked.contains(&n) {
            assert_eq!(count, 1, "acknowledged message {n}: exactly one DSN");
        } else {
            assert!(count <= 1, "unacknowledged message {n}: at most one DSN");
        }
    }
    assert_eq!(
        got.matches("From: Mail Delivery System").count(),
        got.matches("Subject: dsncrash-").count(),
        "every delivery to bob is a DSN"
    );
    assert!(env.delivered("carol@example.com").is_none());
    eprintln!(
        "{} messages, {} acknowledged, {} DSNs delivered, {kills} kills of queued, {} messages caught in the window",
        tried - 1,
        acked.len(),
        got.matches("From: Mail Delivery System").count(),
        in_window.len()
    );
}

#[test]
fn max_queue_items_holds_under_concurrent_commits() {
    let env = TestEnv::new("min_retry_delay: \"1h\"\nmax_queue_items: 3");
    let gate = env.tmp.path().join("gate");
    write_mda(&env, &gate);
    env.fix_permissions();
    let _server = env.start();
    // Twelve transactions reach the end of DATA together while the queue
    // is empty: every one passes the early check at DATA, and their
    // commits race for three places.
    const N: usize = 12;
    let barrier = Arc::new(Barrier::new(N));
    let port = env.smtp_port;
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let subject = format!("limit-{i:02}");
                let c = Client::start(port, "s@remote.test", USER, &subject);
                barrier.wait();
                (subject, c.and_then(|c| c.finish()))
            })
        })
        .collect();
    let results: Vec<(String, Result<(), String>)> = threads.into_iter().map(|t| t.join().expect("client")).collect();
    let accepted: Vec<&String> = results.iter().filter(|(_, r)| r.is_ok()).map(|(s, _)| s).collect();
    for (s, r) in &results {
        if let Err(e) = r {
            assert!(e.starts_with("451 4.3.0"), "{s}: {e}");
        }
    }
    assert!(
        (1..=3).contains(&accepted.len()),
        "at most max_queue_items accepted: {results:?}"
    );
    // Counted by data files: a new message's envelope may be in the
    // queue's journal only (README "The queue"), and every transaction is
    // over (a refused one's data file is gone before its 451).
    let queued = std::fs::read_dir(env.data_dir.join("queue"))
        .expect("queue dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
        .count();
    assert_eq!(queued, accepted.len(), "the queue holds exactly the accepted messages");
    // Nothing accepted is lost; the refused ones are the client's to retry.
    std::fs::write(&gate, b"").expect("open the gate");
    wait_for(Duration::from_secs(30), "the queue to drain", || {
        let _ = env.queue(&["flush"]);
        std::thread::sleep(Duration::from_millis(200));
        env.queue(&["list"]).1 == "Mail queue is empty\n"
    });
    let got = env.delivered(USER).unwrap_or_default();
    for (s, r) in &results {
        let n = got.matches(&format!("Subject: {s}\r\n")).count();
        assert_eq!(n, usize::from(r.is_ok()), "{s}");
    }
    eprintln!(
        "{} of {N} concurrent commits accepted with max_queue_items: 3",
        accepted.len()
    );
}
