//! Issue 17 item 3: the journal cut where a crash can cut it. A run of
//! queue operations is snapshotted after each one (acknowledged: its
//! record flushed). Then, for every operation, the directory is rebuilt
//! as a crash during that operation leaves it (its own files already
//! written, or for a removal not yet removed), with its record cut at its
//! start, inside its header, inside its payload and CRC, or torn with
//! garbage after the cut, and reopened. What comes back must be exactly
//! the acknowledged queue, every envelope and every data byte, plus at
//! most the cut operation's own result when its files alone carry it (an
//! envelope written before its record, which recovery reads as it reads
//! any envelope file); never a partial or corrupt message.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::tests::entry;
use super::*;
use crate::journal::{RECORD_HEAD_LEN, record_len_at};

/// Small enough to read quickly at each of the hundreds of opens, large
/// enough that no checkpoint happens (and that 200 KiB is not inline).
const JOURNAL: JournalSize = JournalSize::Bytes(1024 * 1024);

/// What the queue holds: each message's envelope and data.
type Model = BTreeMap<String, (QueueEntry, Vec<u8>)>;

/// One queue operation of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// A new message (data file, then a journal record with the envelope).
    Add { size: usize, dsn: bool },
    /// A changed envelope of the `n`th message added.
    Rewrite(usize),
    /// The `n`th message added, removed.
    Remove(usize),
}

impl Step {
    /// Whether the step's files say what it did before its record does:
    /// a rewritten envelope and a DSN's envelope are written to their
    /// files first.
    fn files_first(self) -> bool {
        matches!(self, Step::Rewrite(_) | Step::Add { dsn: true, .. })
    }
}

const STEPS: &[Step] = &[
    Step::Add { size: 7, dsn: false },
    // Larger than an eighth of the journal: synced on its own, not inline.
    Step::Add {
        size: 200 * 1024,
        dsn: false,
    },
    Step::Add { size: 1000, dsn: false },
    Step::Rewrite(0),
    Step::Remove(1),
    Step::Add { size: 300, dsn: true },
    Step::Rewrite(2),
    Step::Remove(0),
    Step::Add { size: 0, dsn: false },
    Step::Remove(3),
];

/// A deterministic byte stream (an LCG): garbage and cut points.
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for de in std::fs::read_dir(from).unwrap() {
        let de = de.unwrap();
        let target = to.join(de.file_name());
        if de.file_type().unwrap().is_dir() {
            copy_dir(&de.path(), &target);
        } else {
            std::fs::copy(de.path(), &target).unwrap();
        }
    }
}

/// Run [`STEPS`]; the queue directory after each (index 0: before any)
/// and the queue's contents then.
async fn run_and_snapshot(root: &Path) -> Vec<(std::path::PathBuf, Model)> {
    let q = root.join("live");
    let (store, _) = Store::open(&q, 0, JOURNAL).unwrap();
    let mut shots = Vec::new();
    let mut model = Model::new();
    let mut ids: Vec<String> = Vec::new();
    let snap = |n: usize, model: &Model, shots: &mut Vec<_>| {
        let dir = root.join(format!("after-{n}"));
        copy_dir(&q, &dir);
        shots.push((dir, model.clone()));
    };
    snap(0, &model, &mut shots);
    let mut bytes = Lcg(7);
    for (n, step) in STEPS.iter().enumerate() {
        match *step {
            Step::Add { size, dsn } => {
                let (id, mut f) = store.create_data().unwrap();
                let data: Vec<u8> = (0..size).map(|_| bytes.next() as u8).collect();
                f.write_all(&data).unwrap();
                drop(f);
                let mut e = entry(&id, size as u64);
                e.is_dsn = dsn;
                store.add(e.clone()).await.unwrap();
                model.insert(id.clone(), (e, data));
                ids.push(id);
            }
            Step::Rewrite(i) => {
                let (e, _) = model.get_mut(&ids[i]).unwrap();
                e.rcpts[0].attempts += 1;
                e.rcpts[0].last_error = format!("try {}", e.rcpts[0].attempts);
                store.write(e.clone()).await.unwrap();
            }
            Step::Remove(i) => {
                store.remove(&ids[i]).await.unwrap();
                model.remove(&ids[i]);
            }
        }
        snap(n + 1, &model, &mut shots);
    }
    shots
}

/// Where the record of the step between two snapshots starts, and its
/// length: the first byte in which their journals differ (records are
/// appended to a zeroed file, and every record starts with its magic).
fn record_between(before: &[u8], after: &[u8]) -> (usize, usize) {
    let at = before
        .iter()
        .zip(after)
        .position(|(a, b)| a != b)
        .expect("the step appended a record");
    (at, record_len_at(after, at))
}

/// Cut points inside a record of `len` bytes: its start, its magic, its
/// header fields, its payload, its CRC, its very end, and some others.
fn cut_points(len: usize, lcg: &mut Lcg) -> Vec<usize> {
    let mut cuts = vec![
        0,
        1,
        4,
        20,
        RECORD_HEAD_LEN - 1,
        RECORD_HEAD_LEN,
        RECORD_HEAD_LEN + 1,
        len / 2,
        len - 4,
        len - 1,
        len,
    ];
    cuts.extend((0..6).map(|_| (lcg.next() as usize) % len));
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// The queue `dir` holds, opened as tambod opens it at start.
fn reopen(dir: &Path) -> Model {
    let (store, loaded) = Store::open(dir, 0, JOURNAL).unwrap();
    let out = loaded
        .into_iter()
        .map(|e| {
            let data = std::fs::read(store.data_path(&e.id)).unwrap();
            (e.id.clone(), (e, data))
        })
        .collect();
    drop(store);
    out
}

#[tokio::test]
async fn a_journal_cut_anywhere_loses_nothing_acknowledged_and_brings_back_nothing_corrupt() {
    let root = tempfile::tempdir().unwrap();
    let shots = run_and_snapshot(root.path()).await;
    let mut lcg = Lcg(17);
    let mut opened = 0;
    for (k, step) in STEPS.iter().enumerate() {
        let (before, model_before) = &shots[k];
        let (after, model_after) = &shots[k + 1];
        let journal_before = std::fs::read(before.join("journal")).unwrap();
        let journal_after = std::fs::read(after.join("journal")).unwrap();
        let (at, len) = record_between(&journal_before, &journal_after);
        // A removal's files go only once its record is durable: during the
        // step they are all still there.
        let files = if matches!(step, Step::Remove(_)) { before } else { after };
        for cut in cut_points(len, &mut lcg) {
            for garbage in [false, true] {
                if cut == len && garbage {
                    continue;
                }
                let mut journal = journal_after.clone();
                for b in &mut journal[at + cut..at + len] {
                    // Garbage always differs from the byte it replaces.
                    *b = if garbage { *b ^ (lcg.next() as u8 | 1) } else { 0 };
                }
                // A tail that was zero already (a CRC ending in 0x00) is
                // no cut at all.
                if cut < len && journal[at..at + len] == journal_after[at..at + len] {
                    continue;
                }
                let dir = root.path().join(format!("cut-{k}-{cut}-{garbage}"));
                copy_dir(files, &dir);
                std::fs::write(dir.join("journal"), &journal).unwrap();
                let got = reopen(&dir);
                opened += 1;
                let what = format!("step {k} ({step:?}) cut at byte {cut} of {len}, garbage {garbage}");
                if cut == len {
                    assert!(&got == model_after, "{what}: the whole record is the step done");
                } else if step.files_first() {
                    assert!(
                        &got == model_before || &got == model_after,
                        "{what}: before or after the step, nothing in between"
                    );
                } else {
                    assert!(
                        &got == model_before,
                        "{what}: the queue as acknowledged before the step"
                    );
                }
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
    // Every step was cut at a dozen points or more, twice each.
    assert!(opened >= STEPS.len() * 20, "{opened} reopens");
}
