//! The agent log: what the delivery agents of a deliverd that died did.
//!
//! A delivery agent runs in a process group of its own, so a killed
//! deliverd does not take it along (killing it half-way could leave half a
//! message in an mbox). It goes on and delivers, but without this log its
//! exit status would reach nobody, and the restarted deliverd would deliver
//! the message again. Each agent runs under a [`Witness`] that appends to
//! `data_dir/deliverd/agents.<ms>.<pid>`:
//!
//! - `S <token> <id> <index> <watcher pid>` when the agent starts,
//! - `E <token> <wait status>` when it ends (both written by the watcher),
//! - `O <id> <index> D` or `O <id> <index> P <reason>` when a delivery
//!   without an agent (remote, LMTP, a pipe alias) ended delivered or
//!   failed for good, before deliverd tells queued (by deliverd),
//! - `D <id>…` when queued has settled those messages (by deliverd).
//!
//! At start deliverd reads its predecessors' logs in the order they were
//! created. Every run and outcome not settled is adopted into the
//! [`Ledger`]: an ended run or a recorded outcome as it is, a run still
//! running (the watcher is alive) once it ends. The next job for that
//! recipient is then answered from the ledger, as after a restart of
//! queued; so a deliverd killed after queued (which may never have
//! recorded what the dead deliverd told it) delivers nothing twice. A log
//! file is deleted when nothing it records is unsettled any more. (An
//! `R <token>…` line, "sent to queued", which older versions wrote and
//! then adopted nothing more, is read as nothing.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tambo_hookd::witness::{WATCHER_NAME, Witness};

use tambo_ipc::proto::DeliveryOutcome;

use crate::ledger::{Claim, Keep, Ledger};

/// Runs recorded in one file before the next is started.
const RUNS_PER_FILE: u64 = 50_000;
/// How long an adopted agent may still run (it had `COMMAND_TIMEOUT`
/// when it started, under a runner that is gone).
const ADOPTED_WAIT: Duration = Duration::from_secs(40);

/// One log file. A retired one is deleted when the last outcome it records
/// is settled (the last [`Keep`] of it dropped).
struct LogFile {
    path: PathBuf,
    file: Arc<File>,
    runs: AtomicU64,
    retired: AtomicBool,
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// deliverd's agent log.
pub struct AgentLog {
    dir: PathBuf,
    /// `tambo-watcher`, which runs each agent and writes the records.
    watcher: PathBuf,
    current: Mutex<Arc<LogFile>>,
    tokens: AtomicU64,
}

/// One agent run found in a predecessor's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Queue ID.
    pub id: String,
    /// Recipient index.
    pub index: u32,
    /// The watcher's pid (the agent's process group).
    pub pid: i32,
    /// The agent's raw wait status, when it ended.
    pub status: Option<i32>,
    /// For an `O` record (no agent), the outcome it records.
    pub outcome: Option<DeliveryOutcome>,
    token: u64,
}

/// A run recorded in our log.
pub struct Witnessed {
    file: Arc<LogFile>,
}

impl Witnessed {
    /// What keeps the run's log file as long as its outcome is unsettled.
    pub fn keep(&self) -> Keep {
        self.file.clone()
    }
}

/// What a predecessor left: its unsettled runs, by log file.
pub struct Found {
    files: Vec<(Arc<LogFile>, Vec<Run>)>,
}

impl AgentLog {
    /// Open the log in `dir` (created if missing): read what the
    /// predecessors left, and start a file of our own. `watcher` is the
    /// `tambo-watcher` program; without it there is no log.
    pub fn open(dir: &Path, watcher: &Path) -> std::io::Result<(AgentLog, Found)> {
        nix::unistd::access(watcher, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", watcher.display())))?;
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("agents."))
            .collect();
        names.sort_by_key(|n| creation_order(n));
        let found = read_logs(dir, &names);
        let current = new_file(dir)?;
        let log = AgentLog {
            dir: dir.to_path_buf(),
            watcher: watcher.to_path_buf(),
            current: Mutex::new(Arc::new(current)),
            tokens: AtomicU64::new(0),
        };
        Ok((log, found))
    }

    /// A witness for the delivery of recipient `index` of message `id`,
    /// and the record of it. `None` for an ID that is not one of queued's
    /// (letters and digits).
    pub fn witness(&self, id: &str, index: u32) -> Option<(Witness, Witnessed)> {
        if !tambo_common::is_queue_id(id) {
            return None;
        }
        let file = self.file_for_run();
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let witness = Witness {
            program: self.watcher.clone(),
            log: file.file.clone(),
            start: format!("S {token} {id} {index} ").into_bytes(),
            end: format!("E {token} ").into_bytes(),
        };
        Some((witness, Witnessed { file }))
    }

    /// Record the final outcomes (delivered, failed for good) of message
    /// `id`'s deliveries that ran without an agent, before queued hears of
    /// them, in one write; what keeps that record's file. Temporary
    /// failures are not recorded: they never answer a job.
    pub fn record_outcomes(&self, id: &str, results: &[(u32, DeliveryOutcome)]) -> Option<Keep> {
        if !tambo_common::is_queue_id(id) {
            return None;
        }
        let mut lines = String::new();
        for (index, outcome) in results {
            match outcome {
                DeliveryOutcome::Delivered => lines.push_str(&format!("O {id} {index} D\n")),
                DeliveryOutcome::PermFail(why) => {
                    let why: String = why.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                    lines.push_str(&format!("O {id} {index} P {why}\n"));
                }
                DeliveryOutcome::TempFail(_) => {}
            }
        }
        if lines.is_empty() {
            return None;
        }
        let file = self.file_for_run();
        if let Err(e) = (&*file.file).write_all(lines.as_bytes()) {
            tracing::error!("agent log {}: {e}", file.path.display());
            return None;
        }
        let keep: Keep = file;
        Some(keep)
    }

    /// The current file, after starting a new one when it holds
    /// [`RUNS_PER_FILE`] runs.
    fn file_for_run(&self) -> Arc<LogFile> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.runs.fetch_add(1, Ordering::Relaxed) >= RUNS_PER_FILE {
            match new_file(&self.dir) {
                Ok(f) => {
                    current.retired.store(true, Ordering::Relaxed);
                    *current = Arc::new(f);
                }
                Err(e) => tracing::error!("agent log: cannot start a new file: {e}"),
            }
        }
        current.clone()
    }

    /// Record that queued has settled messages `ids`.
    pub fn settled(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut line = String::from("D");
        for id in ids {
            line.push(' ');
            line.push_str(id);
        }
        line.push('\n');
        let file = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Err(e) = (&*file.file).write_all(line.as_bytes()) {
            tracing::error!("agent log {}: {e}", file.path.display());
        }
    }
}

/// File names sort by creation: `agents.<ms>.<pid>`.
fn creation_order(name: &str) -> (u128, String) {
    let ms = name.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    (ms, name.to_string())
}

fn new_file(dir: &Path) -> std::io::Result<LogFile> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut n = 0;
    loop {
        let path = dir.join(format!("agents.{:013}.{}{}", ms, std::process::id(), suffix(n)));
        match OpenOptions::new().append(true).create_new(true).mode(0o600).open(&path) {
            Ok(file) => {
                return Ok(LogFile {
                    path,
                    file: Arc::new(file),
                    runs: AtomicU64::new(0),
                    retired: AtomicBool::new(false),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

fn suffix(n: u32) -> String {
    if n == 0 { String::new() } else { format!("-{n}") }
}

/// Read the predecessors' files, oldest first: every run not settled by a
/// `D` record after it.
fn read_logs(dir: &Path, names: &[String]) -> Found {
    let mut files: Vec<Arc<LogFile>> = Vec::new();
    // (file, run, settled), in the order written.
    let mut runs: Vec<(usize, Run, bool)> = Vec::new();
    // Unsettled runs by message.
    let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
    for name in names {
        let path = dir.join(name);
        let (text, file) = match std::fs::read(&path).and_then(|b| Ok((b, File::open(&path)?))) {
            Ok((b, file)) => (String::from_utf8_lossy(&b).into_owned(), file),
            Err(e) => {
                tracing::error!("agent log {}: {e}", path.display());
                continue;
            }
        };
        let f = files.len();
        files.push(Arc::new(LogFile {
            path,
            file: Arc::new(file),
            runs: AtomicU64::new(0),
            retired: AtomicBool::new(true),
        }));
        let mut by_token: HashMap<u64, usize> = HashMap::new();
        for line in text.lines() {
            match parse(line) {
                Some(Record::Start(run)) => {
                    by_token.insert(run.token, runs.len());
                    by_id.entry(run.id.clone()).or_default().push(runs.len());
                    runs.push((f, run, false));
                }
                Some(Record::End { token, status }) => {
                    if let Some(&i) = by_token.get(&token) {
                        runs[i].1.status = Some(status);
                    }
                }
                Some(Record::Outcome(run)) => {
                    by_id.entry(run.id.clone()).or_default().push(runs.len());
                    runs.push((f, run, false));
                }
                Some(Record::Settled(ids)) => {
                    for id in ids {
                        for i in by_id.remove(id).unwrap_or_default() {
                            runs[i].2 = true;
                        }
                    }
                }
                // A torn last line (the watcher killed mid-write) or junk.
                None => {}
            }
        }
    }
    let mut open: Vec<Vec<Run>> = vec![Vec::new(); files.len()];
    for (f, run, settled) in runs {
        if !settled {
            open[f].push(run);
        }
    }
    Found {
        files: files.into_iter().zip(open).collect(),
    }
}

enum Record<'a> {
    Start(Run),
    End { token: u64, status: i32 },
    Outcome(Run),
    Settled(Vec<&'a str>),
}

fn parse(line: &str) -> Option<Record<'_>> {
    let mut words = line.split(' ');
    match words.next()? {
        "S" => {
            let token = words.next()?.parse().ok()?;
            let id = words.next()?.to_string();
            let index = words.next()?.parse().ok()?;
            let pid = words.next()?.parse().ok()?;
            Some(Record::Start(Run {
                id,
                index,
                pid,
                status: None,
                outcome: None,
                token,
            }))
        }
        "O" => {
            let id = words.next()?.to_string();
            let index = words.next()?.parse().ok()?;
            let outcome = match words.next()? {
                "D" => DeliveryOutcome::Delivered,
                "P" => DeliveryOutcome::PermFail(words.collect::<Vec<_>>().join(" ")),
                _ => return None,
            };
            Some(Record::Outcome(Run {
                id,
                index,
                pid: 0,
                status: None,
                outcome: Some(outcome),
                token: 0,
            }))
        }
        "E" => Some(Record::End {
            token: words.next()?.parse().ok()?,
            status: words.next()?.parse().ok()?,
        }),
        "D" => Some(Record::Settled(words.filter(|w| !w.is_empty()).collect())),
        _ => None,
    }
}

impl Found {
    /// How many runs are unsettled, and how many of them ended.
    pub fn counts(&self) -> (usize, usize) {
        let runs = self.files.iter().flat_map(|(_, r)| r.iter());
        let ended = |r: &Run| r.status.is_some() || r.outcome.is_some();
        let (all, ended) = runs.fold((0, 0), |(a, e), r| (a + 1, e + ended(r) as usize));
        (all, ended)
    }

    /// Put every unsettled run into `ledger`: an ended one with its
    /// outcome (`outcome` maps the wait status), a running one once its
    /// watcher is gone. Each keeps its file until queued settles it.
    pub fn adopt(self, ledger: &Arc<Ledger>, outcome: Outcomes) {
        for (file, runs) in self.files {
            for run in runs {
                let Some(mut claim) = ledger.adopt(&run.id, run.index) else {
                    continue;
                };
                let keep: Keep = file.clone();
                if let Some(o) = &run.outcome {
                    tracing::info!(
                        id = run.id,
                        index = run.index,
                        "recorded by the previous deliverd: {o:?}"
                    );
                    claim.finish(run.index, o, Some(keep));
                    continue;
                }
                match run.status {
                    Some(status) => finish_adopted(&mut claim, &run, status, keep, &outcome),
                    // Still running, or ended since the file was read (its
                    // end record is written before the watcher exits): read
                    // again once the watcher is gone.
                    None => {
                        if alive(run.pid) {
                            tracing::info!(
                                id = run.id,
                                index = run.index,
                                "delivery agent of the previous deliverd still running (pid {}); waiting for it",
                                run.pid
                            );
                        }
                        tokio::spawn(wait_adopted(claim, run, file.path.clone(), keep, outcome.clone()));
                    }
                }
            }
        }
    }
}

/// Maps an agent's raw wait status to its outcome.
pub type Outcomes = Arc<dyn Fn(i32) -> DeliveryOutcome + Send + Sync>;

/// Record the outcome of an adopted run that ended with `status`.
fn finish_adopted(claim: &mut Claim, run: &Run, status: i32, keep: Keep, outcome: &Outcomes) {
    let o = outcome(status);
    tracing::info!(
        id = run.id,
        index = run.index,
        "delivery agent of the previous deliverd ended: {o:?}"
    );
    claim.finish(run.index, &o, Some(keep));
}

/// Wait for an adopted agent that is still running, then take its outcome
/// from the log. One that outlives [`ADOPTED_WAIT`] is killed (as its
/// runner would have done at its timeout) and delivered again.
async fn wait_adopted(mut claim: Claim, run: Run, path: PathBuf, keep: Keep, outcome: Outcomes) {
    let deadline = Instant::now() + ADOPTED_WAIT;
    while alive(run.pid) {
        if Instant::now() >= deadline {
            tracing::warn!(
                id = run.id,
                "delivery agent of the previous deliverd (pid {}) still running; killed",
                run.pid
            );
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(run.pid), nix::sys::signal::Signal::SIGKILL);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read(&path).unwrap_or_default();
    let status = String::from_utf8_lossy(&text).lines().find_map(|l| match parse(l) {
        Some(Record::End { token, status }) if token == run.token => Some(status),
        _ => None,
    });
    match status {
        Some(status) => finish_adopted(&mut claim, &run, status, keep, &outcome),
        // The watcher was killed: unknown, deliver again.
        None => tracing::warn!(id = run.id, "delivery agent of the previous deliverd ended unrecorded"),
    }
}

/// Whether `pid` is a watcher that is still running: it exists, is no
/// zombie, leads its own process group and bears the watchers' name. A
/// pid reused by another process since the log was written is not waited
/// for, and never killed.
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ppid pgrp …`
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let running = !matches!(fields.first(), Some(&("Z" | "X")) | None);
    running && comm == WATCHER_NAME && fields.get(2) == Some(&pid.to_string().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn unsettled_runs_are_found_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // An older file: A delivered and settled, B ended, C's first run
        // settled (a temporary failure) and its second not.
        write(
            dir.path(),
            "agents.0000000001000.7",
            "S 0 A 0 100\nE 0 0\nS 1 B 1 101\nE 1 19200\nS 2 C 0 102\nE 2 0\nD A C\n",
        );
        // A newer one: E's run, whose outcome was sent to queued (an old
        // `R` line: adopted all the same, as queued may not have recorded
        // it), C again (its watcher gone without an end record), F's
        // remote outcome and G's settled one, and a torn line.
        write(
            dir.path(),
            "agents.0000000002000.8",
            "S 1 E 0 300\nS 0 C 0 1\nE 1 0\nR 1\nO F 2 P 550 5.1.1 no such user\nO G 0 D\nD G\nE 0 ",
        );
        let (log, found) = AgentLog::open(dir.path(), Path::new("/bin/true")).unwrap();
        let runs: Vec<Vec<Run>> = found.files.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(runs[0].len(), 1);
        assert_eq!(
            (runs[0][0].id.as_str(), runs[0][0].index, runs[0][0].status),
            ("B", 1, Some(19200))
        );
        let newer: Vec<(&str, i32, Option<i32>)> = runs[1].iter().map(|r| (r.id.as_str(), r.pid, r.status)).collect();
        assert_eq!(newer, vec![("E", 300, Some(0)), ("C", 1, None), ("F", 0, None)]);
        assert_eq!(
            runs[1][2].outcome,
            Some(DeliveryOutcome::PermFail("550 5.1.1 no such user".into()))
        );
        assert_eq!(found.counts(), (4, 3));
        // Our own file was started beside them.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        drop(found);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "the predecessors' files go once nothing keeps them: {names:?}"
        );
        drop(log);
    }

    #[tokio::test]
    async fn an_ended_run_answers_until_settled_and_then_its_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let old = "agents.0000000001000.7";
        write(dir.path(), old, "S 5 Q 2 100\nE 5 0\n");
        let (log, found) = AgentLog::open(dir.path(), Path::new("/bin/true")).unwrap();
        let ledger = Arc::new(Ledger::default());
        found.adopt(
            &ledger,
            Arc::new(|st| match st {
                0 => DeliveryOutcome::Delivered,
                _ => DeliveryOutcome::PermFail("x".into()),
            }),
        );
        assert_eq!(ledger.len(), 1);
        assert!(dir.path().join(old).exists(), "kept while unsettled");
        let settled = ledger.settle(&["Q".to_string()]);
        log.settled(&settled);
        assert!(!dir.path().join(old).exists(), "deleted once settled");
        let mine = std::fs::read_dir(dir.path()).unwrap().flatten().next().unwrap().path();
        assert_eq!(std::fs::read_to_string(mine).unwrap(), "D Q\n");
    }

    /// Only a watcher counts: not another program under a reused pid.
    #[test]
    fn only_a_watcher_is_alive() {
        use std::os::unix::process::CommandExt;
        let mut other = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        assert!(!alive(other.id() as i32), "not our name");
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!alive(other.id() as i32), "gone");
        assert!(!alive(0) && !alive(-5));
    }

    #[test]
    fn witness_records() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = AgentLog::open(dir.path(), Path::new("/bin/true")).unwrap();
        assert!(log.witness("bad id", 0).is_none());
        let (w, first) = log.witness("Abc1", 3).unwrap();
        assert_eq!(w.start, b"S 0 Abc1 3 ");
        assert_eq!(w.end, b"E 0 ");
        let (w, _second) = log.witness("Abc1", 4).unwrap();
        assert_eq!(w.start, b"S 1 Abc1 4 ");
        drop(first);
        let results = [
            (0, DeliveryOutcome::Delivered),
            (1, DeliveryOutcome::TempFail("later".into())),
            (2, DeliveryOutcome::PermFail("550 no\r\nsuch".into())),
        ];
        assert!(log.record_outcomes("Abc1", &results).is_some());
        assert!(log.record_outcomes("bad id", &results).is_none());
        assert!(
            log.record_outcomes("Abc1", &results[1..2]).is_none(),
            "a temporary failure is not recorded"
        );
        let mine = std::fs::read_dir(dir.path()).unwrap().flatten().next().unwrap().path();
        assert_eq!(
            std::fs::read_to_string(mine).unwrap(),
            "O Abc1 0 D\nO Abc1 2 P 550 no  such\n"
        );
    }
}
