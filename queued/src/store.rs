//! The queue on disk, with group commit.
//!
//! Layout of `data_dir/queue/`: `<id>.data` (the message as received,
//! CRLF line endings), `<id>.env` (the [`QueueEntry`], JSON), `journal`
//! (the write-ahead journal, see [`crate::journal`]), `corrupt/` (entries
//! that could not be read), `spare/` (recycled files, see [`Spares`]).
//! A message is acknowledged when its journal record is durable; its
//! `.env` file may be written later (see [`Committer::journal_only`]).
//! After recovery every acknowledged message has its `.env` file.
//!
//! Durability: every change of an envelope (new message, recipient result,
//! removal) goes through one committer thread. It takes every operation
//! that is waiting, applies them all to the queue files, appends one
//! journal record for each (a new message's record carries its data) and
//! makes the whole batch durable with a single `fdatasync(2)` of the
//! journal (see [`committer`]). Only then is any caller told its operation
//! is done, so no 250 is ever sent before that message's own data is on
//! disk, and concurrent transactions share one flush (group commit).
//! Removals after delivery do not wait for a flush: they become durable
//! with the next one, at most [`LAZY_FLUSH`] later, and only then are the
//! message's files removed.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::oneshot;

use crate::entry::QueueEntry;
use crate::journal::{Journal, JournalSize, Record};

/// Operations queued for the committer.
enum OpKind {
    /// Write an envelope; `new`: the message's data is not durable yet
    /// (it travels in the journal record, or its file is synced).
    Write { entry: Box<QueueEntry>, new: bool },
    /// Remove a message; `lazy`: the caller does not wait for the flush.
    Remove { id: String, lazy: bool },
}

impl OpKind {
    fn lazy(&self) -> bool {
        matches!(self, OpKind::Remove { lazy: true, .. })
    }
}

/// How long a lazy removal may wait for a flush to ride on before it is
/// flushed by itself. The bound of what a power loss, or the death of a
/// whole node, can bring back for a second delivery: 10 ms of finished
/// deliveries. (It was 1 s: with two nodes behind HAProxy, each death of
/// a node then delivered 1–3 messages twice, `tests/tests/two_nodes.rs`.)
pub const LAZY_FLUSH: Duration = Duration::from_millis(10);

/// Quiet after which the committer checkpoints a journal an eighth full.
const QUIET: Duration = Duration::from_secs(1);

struct Op {
    kind: OpKind,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Most operations one flush covers.
const MAX_BATCH: usize = 1024;

/// The queue directory.
pub struct Store {
    dir: PathBuf,
    ops: mpsc::Sender<Op>,
    spares: Arc<Spares>,
    corrupt: AtomicU64,
    #[cfg_attr(not(test), allow(dead_code))]
    flushes: Arc<AtomicU64>,
}

/// Characters of queue IDs: letters and digits, safe in file names.
const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random queue ID.
pub fn new_id() -> String {
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|_| ID_CHARS[rng.gen_range(0..ID_CHARS.len())] as char)
        .collect()
}

/// Whether `s` looks like one of our IDs (safe to use in a path).
pub use tambo_common::is_queue_id as valid_id;

impl Store {
    /// Open (creating) the queue directory, recover what it holds and start
    /// the committer. Returns the store and every acknowledged entry.
    /// Spare files are created in the background until there are
    /// `spares_at_start` (at most [`SPARES_AT_START`]), so that a burst of
    /// mail does not allocate inodes (see [`Spares`]).
    pub fn open(
        dir: &Path,
        spares_at_start: usize,
        journal_size: JournalSize,
    ) -> std::io::Result<(Store, Vec<QueueEntry>)> {
        std::fs::create_dir_all(dir)?;
        std::fs::create_dir_all(dir.join("corrupt"))?;
        let (tx, rx) = mpsc::channel::<Op>();
        let flushes = Arc::new(AtomicU64::new(0));
        let spares = Arc::new(Spares::open(&dir.join("spare"))?);
        let filler = spares.clone();
        std::thread::Builder::new()
            .name("spare-filler".into())
            .spawn(move || filler.fill_to(spares_at_start.min(SPARES_AT_START)))?;
        let store = Store {
            dir: dir.to_path_buf(),
            ops: tx,
            spares: spares.clone(),
            corrupt: AtomicU64::new(0),
            flushes: flushes.clone(),
        };
        let dirfd = File::open(dir)?;
        let (mut journal, records) = Journal::open(&dir.join("journal"), journal_size)?;
        if !records.is_empty() || journal.needs_resize() {
            tracing::info!("replaying {} journal record(s)", records.len());
            for r in &records {
                replay(dir, r)?;
            }
            sync_and_reset(&dirfd, &mut journal)?;
        }
        let entries = store.recover()?;
        let dir2 = dir.to_path_buf();
        std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || committer(dir2, dirfd, journal, rx, flushes, spares))?;
        Ok((store, entries))
    }

    /// Path of a message's data file.
    pub fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Entries moved aside as corrupt since start.
    pub fn corrupt_count(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Flushes done since start.
    #[cfg(test)]
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Create a new, empty data file; returns its ID and a writable handle.
    /// A recycled file is used when there is one (see [`Spares`]).
    pub fn create_data(&self) -> std::io::Result<(String, File)> {
        loop {
            let id = new_id();
            match self.spares.take(&self.data_path(&id)) {
                Ok(Some(f)) => return Ok((id, f)),
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.data_path(&id))
            {
                Ok(f) => return Ok((id, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Create the data file of a message whose ID the caller chose (an
    /// imported message, whose ID is derived from its original's so that a
    /// second import finds it); a leftover file of that ID, never
    /// acknowledged, is replaced.
    pub fn create_data_as(&self, id: &str) -> std::io::Result<File> {
        if !valid_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{id:?} is not a queue ID"),
            ));
        }
        let path = self.data_path(id);
        match self.spares.take(&path) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Make the entries of the queue directory (created and renamed files)
    /// durable.
    pub fn sync_dir(&self) -> std::io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    /// Open a data file read-only (for deliverd).
    pub fn open_data(&self, id: &str) -> std::io::Result<File> {
        File::open(self.data_path(id))
    }

    /// Delete the data file of a message that was never acknowledged.
    pub fn discard_data(&self, id: &str) {
        let _ = std::fs::remove_file(self.data_path(id));
    }

    /// Add a new message durably: its envelope, and its data file as it
    /// stands (written completely by now).
    pub async fn add(&self, entry: QueueEntry) -> std::io::Result<()> {
        self.submit(OpKind::Write {
            entry: Box::new(entry),
            new: true,
        })
        .await
    }

    /// Add several new messages durably (as [`Store::add`] each), all
    /// handed to the committer at once so that they share its flushes;
    /// the results in the order of `entries`.
    pub async fn add_all(&self, entries: Vec<QueueEntry>) -> Vec<std::io::Result<()>> {
        let stopped = || std::io::Error::other("committer stopped");
        let mut waits = Vec::with_capacity(entries.len());
        for entry in entries {
            let (done, wait) = oneshot::channel();
            let op = Op {
                kind: OpKind::Write {
                    entry: Box::new(entry),
                    new: true,
                },
                done,
            };
            waits.push(self.ops.send(op).ok().map(|()| wait));
        }
        let mut out = Vec::with_capacity(waits.len());
        for wait in waits {
            out.push(match wait {
                Some(w) => w.await.unwrap_or_else(|_| Err(stopped())),
                None => Err(stopped()),
            });
        }
        out
    }

    /// Replace the envelope of a queued message durably.
    pub async fn write(&self, entry: QueueEntry) -> std::io::Result<()> {
        self.submit(OpKind::Write {
            entry: Box::new(entry),
            new: false,
        })
        .await
    }

    /// Remove a message (envelope, then data) durably.
    pub async fn remove(&self, id: &str) -> std::io::Result<()> {
        self.submit(OpKind::Remove {
            id: id.to_string(),
            lazy: false,
        })
        .await
    }

    /// Remove a message whose every recipient is done: the files go at
    /// once, and the removal becomes durable with the next flush (at most
    /// [`LAZY_FLUSH`] later) without waiting for it. Losing it (power
    /// loss within that time) only means the message is delivered again.
    pub async fn remove_lazily(&self, id: &str) -> std::io::Result<()> {
        self.submit(OpKind::Remove {
            id: id.to_string(),
            lazy: true,
        })
        .await
    }

    async fn submit(&self, kind: OpKind) -> std::io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.ops
            .send(Op { kind, done })
            .map_err(|_| std::io::Error::other("committer stopped"))?;
        wait.await.map_err(|_| std::io::Error::other("committer stopped"))?
    }

    /// Load every envelope; move unreadable ones aside; delete data files
    /// that were never acknowledged and leftover temporary files.
    fn recover(&self) -> std::io::Result<Vec<QueueEntry>> {
        let mut entries = Vec::new();
        let mut names = Vec::new();
        for de in std::fs::read_dir(&self.dir)? {
            let de = de?;
            if de.file_type()?.is_file() {
                names.push(de.file_name().to_string_lossy().into_owned());
            }
        }
        let mut with_env = HashSet::new();
        for name in &names {
            if let Some(id) = name.strip_suffix(".env") {
                with_env.insert(id.to_string());
            }
        }
        for name in &names {
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(self.dir.join(name));
            } else if let Some(id) = name.strip_suffix(".data")
                && !with_env.contains(id)
            {
                tracing::info!(id, "removing data of a message that was never acknowledged");
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        for id in with_env {
            match self.load_one(&id) {
                Ok(e) => entries.push(e),
                Err(why) => self.move_aside(&id, &why),
            }
        }
        entries.sort_by_key(|e| e.created);
        Ok(entries)
    }

    fn load_one(&self, id: &str) -> Result<QueueEntry, String> {
        if !valid_id(id) {
            return Err("not a queue ID".into());
        }
        let bytes = std::fs::read(self.env_path(id)).map_err(|e| format!("cannot read envelope: {e}"))?;
        let entry = QueueEntry::from_bytes(&bytes, id)?;
        let size = std::fs::metadata(self.data_path(id))
            .map_err(|e| format!("data file: {e}"))?
            .len();
        if size != entry.data_size {
            return Err(format!("data file has {size} bytes, envelope says {}", entry.data_size));
        }
        Ok(entry)
    }

    /// Move a file of the queue directory that is not one of our entries
    /// and cannot be read (an imported one: chasquid's `m:<id>`) to
    /// `corrupt/` under its own name, log it and count it.
    pub fn move_file_aside(&self, name: &str, why: &str) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        let from = self.dir.join(name);
        let to = self.dir.join("corrupt").join(name);
        match std::fs::rename(&from, &to) {
            Ok(()) => tracing::error!("{why}: moved to {}", to.display()),
            Err(e) => tracing::error!("{why}; cannot move {} aside: {e}", from.display()),
        }
    }

    /// Move a broken entry to `corrupt/`, log it and count it.
    pub fn move_aside(&self, id: &str, why: &str) {
        self.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            id,
            "corrupt queue entry moved to {}: {why}",
            self.dir.join("corrupt").display()
        );
        let safe: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        for ext in ["env", "data"] {
            let from = self.dir.join(format!("{id}.{ext}"));
            if from.exists() {
                let to = self.dir.join("corrupt").join(format!("{safe}.{ext}"));
                if let Err(e) = std::fs::rename(&from, &to) {
                    tracing::error!("cannot move {} aside: {e}", from.display());
                }
            }
        }
    }
}

/// The committer thread: take every waiting operation, apply them all to
/// the queue files and append their journal records, make the batch
/// durable with one `fdatasync(2)` of the journal (after fdatasyncing the
/// data files too large to travel in it), then answer each caller.
///
/// A batch of lazy removals only is not flushed at once: it rides on the
/// next batch's flush, or is flushed [`LAZY_FLUSH`] after the first of
/// them, whatever comes. When the
/// journal runs out of room (or is three-quarters full after a batch, or
/// an eighth full after [`QUIET`] with nothing to flush), a
/// checkpoint makes every queue file durable with one `syncfs(2)` and
/// empties the journal. Checkpointing in quiet moments keeps the journal
/// nearly empty when a burst of mail begins: a checkpoint in the middle of
/// one stalled every commit for 90–230 ms (measured with 800–1,100
/// messages queued, whose envelope files it wrote).
///
/// History: the committer used to `syncfs` every batch. On the
/// development VM (ext4 on virtio, shared with other builds) a syncfs took
/// 2–18 ms because it also wrote back the other programs' dirty data, and
/// at 32 concurrent sessions the committer spent the whole run in it; and
/// fsyncing each new file costs an ext4 journal commit per file. The
/// journal's fdatasync writes only our records and flushes the device
/// cache once.
fn committer(
    dir: PathBuf,
    dirfd: File,
    journal: Journal,
    rx: mpsc::Receiver<Op>,
    flushes: Arc<AtomicU64>,
    spares: Arc<Spares>,
) {
    let mut state = Committer {
        dir,
        dirfd,
        journal,
        spares,
        journal_only: std::collections::HashMap::new(),
        removals: Vec::new(),
    };
    let mut stats = FlushStats::new();
    // When the first record (a lazy removal) that no flush covers yet was
    // appended.
    let mut unflushed: Option<Instant> = None;
    loop {
        let wait = match unflushed {
            Some(since) => (since + LAZY_FLUSH).saturating_duration_since(Instant::now()),
            None => QUIET,
        };
        let first = match rx.recv_timeout(wait) {
            Ok(op) => op,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if unflushed.take().is_some() {
                    state.flush_removals();
                    flushes.fetch_add(1, Ordering::Relaxed);
                } else if state.journal.used() > state.journal.size() / 8
                    && let Err(e) = state.checkpoint()
                {
                    // Quiet for a while: checkpoint now rather than in the
                    // middle of the next burst of mail.
                    tracing::error!("queue checkpoint: {e}");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let mut big_files = Vec::new();
        let mut results = Vec::with_capacity(batch.len());
        for op in &batch {
            results.push(state.apply(&op.kind, &mut big_files));
        }
        let mut waiting = Vec::with_capacity(batch.len());
        for (op, res) in batch.into_iter().zip(results) {
            if op.kind.lazy() {
                let _ = op.done.send(res);
            } else {
                waiting.push((op, res));
            }
        }
        if waiting.is_empty() {
            let since = *unflushed.get_or_insert(started);
            if since.elapsed() >= LAZY_FLUSH {
                // Lazy removals keep coming: flush them anyway.
                unflushed = None;
                state.flush_removals();
                flushes.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let mut flushed = Ok(());
        for f in &big_files {
            if let Err(e) = f.sync_data() {
                flushed = Err(e);
            }
        }
        if flushed.is_ok() {
            flushed = state.journal.sync();
        }
        if flushed.is_ok() {
            state.remove_flushed();
        }
        unflushed = None;
        flushes.fetch_add(1, Ordering::Relaxed);
        stats.record(waiting.len(), started.elapsed());
        for (op, res) in waiting {
            let res = match (&res, &flushed) {
                (Ok(()), Err(e)) => Err(std::io::Error::new(
                    e.kind(),
                    format!("flushing the queue journal: {e}"),
                )),
                _ => res,
            };
            let _ = op.done.send(res);
        }
        if state.journal.used() > state.journal.size() / 4 * 3
            && let Err(e) = state.checkpoint()
        {
            tracing::error!("queue checkpoint: {e}");
        }
    }
    // Leaving: whatever lazy removal is pending. Envelopes that only the
    // journal holds are written to their files when it is replayed at
    // the next start.
    if unflushed.is_some() {
        state.flush_removals();
    }
}

/// What the committer thread owns.
struct Committer {
    dir: PathBuf,
    dirfd: File,
    journal: Journal,
    spares: Arc<Spares>,
    /// Envelopes of newly accepted messages that are only in the journal
    /// (no `<id>.env` file yet), by ID.
    ///
    /// Why: most messages are delivered and removed within a second, long
    /// before the next checkpoint. Writing their envelope file (a spare
    /// renamed in, written, renamed over `<id>.env`) and taking it out again
    /// cost three directory operations under the queue directory's lock
    /// per message, about half of the committer's time at 32 concurrent
    /// sessions. The journal record already makes the envelope durable, so
    /// the file is written only when it is needed: at the next checkpoint
    /// (before the journal is emptied), when the envelope changes (delivery
    /// results, hold), or by the journal's replay when queued starts again.
    /// Bounded by the journal: a checkpoint empties this map.
    journal_only: std::collections::HashMap<String, Vec<u8>>,
    /// Removals appended to the journal whose files wait for its flush.
    removals: Vec<Removal>,
}

/// A message whose removal record is appended, not yet flushed.
struct Removal {
    id: String,
    /// Whether the envelope is in a file (not only in the journal).
    has_env_file: bool,
    /// Recycle the files as spares (the delivery is over).
    recycle: bool,
}

impl Committer {
    /// Apply one operation.
    ///
    /// A new message's envelope goes into the journal only (see
    /// [`Committer::journal_only`]). Any other write goes to the files
    /// first and then to the journal (a crash in between leaves an
    /// envelope in the directory, found at start as before). A removal
    /// goes to the journal first (so a crash in between replays the
    /// removal instead of bringing the message back). DSNs are written
    /// through at once, so that the DSN and its original are both visible
    /// in the directory for as long as they are both queued.
    fn apply(&mut self, op: &OpKind, big_files: &mut Vec<File>) -> std::io::Result<()> {
        match op {
            OpKind::Write { entry, new } => {
                let env = entry.to_bytes();
                let data = if *new {
                    data_for_record(&self.dir, entry, self.journal.inline_max(), big_files)?
                } else {
                    None
                };
                let defer = *new && !entry.is_dsn;
                if !defer {
                    write_env(&self.dir, &entry.id, &env, Some(&self.spares))?;
                    self.journal_only.remove(&entry.id);
                }
                let record = Record::Write {
                    id: entry.id.clone(),
                    env,
                    data,
                };
                if let Err(e) = self.append(&record) {
                    if *new && !defer {
                        let _ = std::fs::remove_file(self.dir.join(format!("{}.env", entry.id)));
                    }
                    return Err(e);
                }
                if defer && let Record::Write { id, env, .. } = record {
                    self.journal_only.insert(id, env);
                }
                Ok(())
            }
            OpKind::Remove { id, lazy } => {
                self.append(&Record::Remove { id: id.clone() })?;
                let has_env_file = self.journal_only.remove(id).is_none();
                // The files go once the record is durable (`remove_flushed`).
                // Only files whose delivery is over are recycled: an
                // operator's removal may race with a delivery that still
                // reads the data.
                self.removals.push(Removal {
                    id: id.clone(),
                    has_env_file,
                    recycle: *lazy,
                });
                Ok(())
            }
        }
    }

    /// Flush the journal for the lazy removals appended since the last
    /// flush, then remove their files.
    fn flush_removals(&mut self) {
        match self.journal.sync() {
            Ok(()) => self.remove_flushed(),
            Err(e) => tracing::error!("journal fdatasync: {e}"),
        }
    }

    /// Remove the files of the messages whose removal records the last
    /// flush made durable. Never before: a message's files are not
    /// destroyed while a power loss could still take back the record that
    /// says it is gone (it would come back without its data).
    fn remove_flushed(&mut self) {
        for r in std::mem::take(&mut self.removals) {
            let spares = r.recycle.then_some(&*self.spares);
            if let Err(e) = remove_files(&self.dir, &r.id, r.has_env_file, spares) {
                tracing::error!(id = r.id, "cannot remove the queue files: {e}");
            }
        }
    }

    /// Append `record`, making room with a checkpoint when the journal is
    /// full.
    fn append(&mut self, record: &Record) -> std::io::Result<()> {
        if !self.journal.fits(record) {
            self.checkpoint()?;
        }
        self.journal.append(record)
    }

    /// Write the envelope files the journal alone holds, make every queue
    /// file durable and empty the journal. If an envelope cannot be
    /// written, the journal is kept (it still holds that envelope).
    fn checkpoint(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        // The removals the journal holds are carried out first: emptying
        // it must not bring those messages back.
        self.journal.sync()?;
        self.remove_flushed();
        let ids: Vec<String> = self.journal_only.keys().cloned().collect();
        for id in &ids {
            if let Some(env) = self.journal_only.get(id) {
                write_env(&self.dir, id, env, Some(&self.spares))?;
                self.journal_only.remove(id);
            }
        }
        let written = started.elapsed();
        sync_and_reset(&self.dirfd, &mut self.journal)?;
        tracing::info!(
            "queue checkpoint: {} envelope file(s) written in {:.1} ms, syncfs and journal reset in {:.1} ms",
            ids.len(),
            written.as_secs_f64() * 1000.0,
            (started.elapsed() - written).as_secs_f64() * 1000.0
        );
        Ok(())
    }
}

/// Make every queue file durable (one `syncfs`) and empty the journal.
fn sync_and_reset(dirfd: &File, journal: &mut Journal) -> std::io::Result<()> {
    // SAFETY: syncfs on a valid directory fd.
    if unsafe { libc::syncfs(dirfd.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    journal.reset()
}

/// Write an envelope file: `<id>.env.tmp` (a recycled file when there
/// is one), renamed over `<id>.env`.
fn write_env(dir: &Path, id: &str, bytes: &[u8], spares: Option<&Spares>) -> std::io::Result<()> {
    let tmp = dir.join(format!("{id}.env.tmp"));
    let recycled = match spares.map(|s| s.take(&tmp)) {
        Some(Ok(f)) => f,
        // A leftover temporary file of this ID: replaced below.
        Some(Err(_)) | None => None,
    };
    let mut f = match recycled {
        Some(f) => f,
        None => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?,
    };
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{id}.env")))
}

/// Take a message's envelope (when it has a file), then its data, out of
/// the queue: into the spare files when given (see [`Spares`]), else
/// unlinked.
fn remove_files(dir: &Path, id: &str, has_env_file: bool, spares: Option<&Spares>) -> std::io::Result<()> {
    let env = dir.join(format!("{id}.env"));
    let data = dir.join(format!("{id}.data"));
    match spares {
        Some(s) => {
            if has_env_file {
                s.put(&env)?;
            }
            let _ = s.put(&data);
        }
        None => {
            if has_env_file {
                match std::fs::remove_file(&env) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let _ = std::fs::remove_file(&data);
        }
    }
    Ok(())
}

/// Most files kept for reuse. Spares are empty (truncated when they are
/// put back), so they cost an inode each and no data blocks.
const MAX_SPARES: usize = 16_384;

/// Most spares created at start, so that the first burst of mail (a
/// backlog of undelivered messages needs a data file each, and an envelope
/// file at the next checkpoint) does not allocate inodes.
pub const SPARES_AT_START: usize = 4096;

/// Files of delivered messages kept for reuse, in `queue/spare/` (named
/// by number): a message removed after its delivery finished (never one
/// removed by the operator, whose delivery may still be reading it) has
/// its files truncated and renamed there instead of unlinked, and a new
/// data or envelope file is a spare renamed into place.
///
/// Why: every message used to create two inodes and free two. On ext4
/// without a journal (as on the development VM) an inode allocation skips
/// every inode of its group freed in the last 60 s (up to 360 s while the
/// inode table block is dirty), so each allocation scanned past the
/// thousands freed before it: 28% of queued's CPU at 32 concurrent
/// sessions, and most of the committer's time once a backlog outgrew the
/// first pool of 512 spares. A rename allocates and frees nothing. Spares
/// are outside the queue's namespace: recovery never looks at them.
pub struct Spares {
    dir: PathBuf,
    free: std::sync::Mutex<Vec<u64>>,
    next: AtomicU64,
}

impl Spares {
    /// Open (creating) the spare directory and adopt what it holds.
    fn open(dir: &Path) -> std::io::Result<Spares> {
        std::fs::create_dir_all(dir)?;
        let mut free = Vec::new();
        for de in std::fs::read_dir(dir)? {
            let de = de?;
            let name = de.file_name();
            match name.to_str().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if free.len() < MAX_SPARES && de.file_type()?.is_file() => free.push(n),
                _ => {
                    let _ = std::fs::remove_file(de.path());
                }
            }
        }
        let next = free.iter().max().map(|n| n + 1).unwrap_or(0);
        Ok(Spares {
            dir: dir.to_path_buf(),
            free: std::sync::Mutex::new(free),
            next: AtomicU64::new(next),
        })
    }

    /// Create empty spares until there are `target` (in the background at
    /// start; a failure only ends the filling).
    fn fill_to(&self, target: usize) {
        let mut made = 0;
        while self.lock().len() < target.min(MAX_SPARES) {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(n.to_string()));
            match created {
                Ok(_) => {
                    self.lock().push(n);
                    made += 1;
                }
                Err(e) => {
                    tracing::warn!("cannot create a spare queue file: {e}");
                    break;
                }
            }
        }
        if made > 0 {
            tracing::debug!("created {made} spare queue files");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Move a spare to `to` (which must not exist: `AlreadyExists`
    /// otherwise) and open it empty; `None` when there is no spare.
    fn take(&self, to: &Path) -> std::io::Result<Option<File>> {
        loop {
            let Some(n) = self.lock().pop() else {
                return Ok(None);
            };
            let from = self.dir.join(n.to_string());
            match nix::fcntl::renameat2(None, &from, None, to, nix::fcntl::RenameFlags::RENAME_NOREPLACE) {
                Ok(()) => {}
                Err(nix::errno::Errno::EEXIST) => {
                    self.lock().push(n);
                    return Err(std::io::ErrorKind::AlreadyExists.into());
                }
                Err(e) => {
                    // Lost or unusable spare: forget it.
                    tracing::warn!("spare file {}: {e}", from.display());
                    let _ = std::fs::remove_file(&from);
                    continue;
                }
            }
            let f = OpenOptions::new().read(true).write(true).open(to)?;
            // Put back empty; one adopted from an older version may not be.
            if f.metadata()?.len() != 0 {
                f.set_len(0)?;
            }
            return Ok(Some(f));
        }
    }

    /// Move `path` out of the queue: to the spares, or unlinked when there
    /// are enough. `NotFound` is not an error.
    fn put(&self, path: &Path) -> std::io::Result<()> {
        let res = if self.lock().len() < MAX_SPARES {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            // Empty first: a spare holds no data blocks (and no mail).
            let r = nix::unistd::truncate(path, 0)
                .map_err(std::io::Error::from)
                .and_then(|()| std::fs::rename(path, self.dir.join(n.to_string())));
            if r.is_ok() {
                self.lock().push(n);
            }
            r
        } else {
            std::fs::remove_file(path)
        };
        match res {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// The data of a new message for its journal record (`None`: too large,
/// the file itself goes into `big_files` to be fdatasync'd).
fn data_for_record(
    dir: &Path,
    entry: &QueueEntry,
    inline_max: u64,
    big_files: &mut Vec<File>,
) -> std::io::Result<Option<Vec<u8>>> {
    let f = File::open(dir.join(format!("{}.data", entry.id)))?;
    if entry.data_size > inline_max {
        big_files.push(f);
        return Ok(None);
    }
    let mut data = Vec::with_capacity(entry.data_size as usize);
    (&f).take(inline_max + 1).read_to_end(&mut data)?;
    if data.len() as u64 != entry.data_size {
        return Err(std::io::Error::other(format!(
            "data file has {} bytes, envelope says {}",
            data.len(),
            entry.data_size
        )));
    }
    Ok(Some(data))
}

/// Redo one journal record at start (idempotent).
fn replay(dir: &Path, record: &Record) -> std::io::Result<()> {
    match record {
        Record::Write { id, env, data } => {
            if !valid_id(id) {
                tracing::warn!("journal: record for a bad queue ID {id:?} ignored");
                return Ok(());
            }
            if let Some(data) = data {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(dir.join(format!("{id}.data")))?;
                f.write_all(data)?;
            }
            write_env(dir, id, env, None)
        }
        Record::Remove { id } => {
            if !valid_id(id) {
                return Ok(());
            }
            remove_files(dir, id, true, None)
        }
    }
}

/// How often the committer reports its batching.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// Batching figures, logged every [`STATS_EVERY`] while there is work, so
/// an operator can see whether group commit is effective.
struct FlushStats {
    since: Instant,
    flushes: u64,
    ops: u64,
    largest: usize,
    sync_time: Duration,
}

impl FlushStats {
    fn new() -> Self {
        FlushStats {
            since: Instant::now(),
            flushes: 0,
            ops: 0,
            largest: 0,
            sync_time: Duration::ZERO,
        }
    }

    fn record(&mut self, batch: usize, took: Duration) {
        self.flushes += 1;
        self.ops += batch as u64;
        self.largest = self.largest.max(batch);
        self.sync_time += took;
        if self.since.elapsed() >= STATS_EVERY {
            tracing::info!(
                "group commit: {} queue operations in {} journal flushes over {}s \
                 ({:.1} per flush, at most {}; {:.2} ms per flush)",
                self.ops,
                self.flushes,
                self.since.elapsed().as_secs(),
                self.ops as f64 / self.flushes as f64,
                self.largest,
                self.sync_time.as_secs_f64() * 1000.0 / self.flushes as f64
            );
            *self = FlushStats::new();
        }
    }
}

#[cfg(test)]
mod cuts;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{ENTRY_VERSION, RcptEntry, RcptState};
    use tambo_ipc::proto::RcptRoute;

    const TEST_JOURNAL: JournalSize = JournalSize::Bytes(32 * 1024 * 1024);

    /// Wait (a lazy removal's files go with the next flush, at most
    /// [`LAZY_FLUSH`] later; 3 s for a loaded machine) until `done` holds.
    async fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done() {
            assert!(Instant::now() < deadline, "not done after 3 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn entry(id: &str, size: u64) -> QueueEntry {
        QueueEntry {
            version: ENTRY_VERSION,
            id: id.into(),
            from: String::new(),
            created: 5,
            header_prefix: String::new(),
            rcpts: vec![RcptEntry {
                address: "u@l".into(),
                sender: None,
                original: "u@l".into(),
                route: RcptRoute::Remote { via: vec![] },
                state: RcptState::Pending,
                attempts: 0,
                last_error: String::new(),
                next_attempt: 0,
                last_attempt: 0,
                gave_up: false,
            }],
            remote_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            data_size: size,
            held: false,
            is_dsn: false,
            dsn_of: None,
        }
    }

    #[tokio::test]
    async fn write_recover_remove() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert!(loaded.is_empty());
        let (id, mut f) = store.create_data().unwrap();
        f.write_all(b"hello\r\n").unwrap();
        store.add(entry(&id, 7)).await.unwrap();
        // Unacknowledged data and a corrupt envelope.
        let (orphan, _) = store.create_data().unwrap();
        std::fs::write(q.join("bad.env"), b"{ not json").unwrap();
        std::fs::write(q.join("bad.data"), b"x").unwrap();
        drop(store);
        let (store, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, id);
        assert_eq!(store.corrupt_count(), 1);
        assert!(q.join("corrupt/bad.env").exists());
        assert!(!store.data_path(&orphan).exists());
        store.remove(&id).await.unwrap();
        assert!(!store.data_path(&id).exists());
        drop(store);
        let (_, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert!(loaded.is_empty());
    }

    #[tokio::test]
    async fn size_mismatch_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0, TEST_JOURNAL).unwrap();
        let (id, mut f) = store.create_data().unwrap();
        f.write_all(b"abc").unwrap();
        store.write(entry(&id, 99)).await.unwrap();
        drop(store);
        let (store, loaded) = Store::open(dir.path(), 0, TEST_JOURNAL).unwrap();
        assert!(loaded.is_empty());
        assert_eq!(store.corrupt_count(), 1);
    }

    #[tokio::test]
    async fn concurrent_writes_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 0, TEST_JOURNAL).unwrap();
        let store = Arc::new(store);
        // The data files first, so that the 200 commits below reach the
        // committer within one pass of the runtime, as commits of a burst
        // of mail do, and wait together.
        let ids: Vec<String> = (0..200).map(|_| store.create_data().unwrap().0).collect();
        let mut tasks = Vec::new();
        for id in ids {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { s.add(entry(&id, 0)).await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Group commit: commits that wait together share a flush (2 or 3
        // flushes for the 200 here, on 2 cores, loaded or not; one each
        // would be 200).
        let flushes = store.flush_count();
        assert!((1..=100).contains(&flushes), "{flushes} flushes for 200 commits");
        let ids: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        // 200 data files (the envelopes are in the journal until the next
        // checkpoint), corrupt/, spare/ and the journal.
        assert_eq!(ids.len(), 200 + 3);
    }

    /// Power loss before the queue files reached the disk: the journal
    /// brings an acknowledged message back, data included, and replays a
    /// removal whose unlinks were lost.
    #[tokio::test]
    async fn journal_replays_lost_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, _) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        let (kept, mut f) = store.create_data().unwrap();
        f.write_all(b"kept\r\n").unwrap();
        store.add(entry(&kept, 6)).await.unwrap();
        let (gone, mut f) = store.create_data().unwrap();
        f.write_all(b"gone\r\n").unwrap();
        store.add(entry(&gone, 6)).await.unwrap();
        store.remove_lazily(&gone).await.unwrap();
        wait_until(|| !q.join(format!("{gone}.data")).exists()).await;
        drop(store);
        // What a power loss can leave: the new data file missing, the
        // removed message's files back.
        std::fs::remove_file(q.join(format!("{kept}.data"))).unwrap();
        std::fs::write(q.join(format!("{gone}.env")), entry(&gone, 6).to_bytes()).unwrap();
        std::fs::write(q.join(format!("{gone}.data")), b"gone\r\n").unwrap();
        let (store, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id, kept);
        assert_eq!(std::fs::read(store.data_path(&kept)).unwrap(), b"kept\r\n");
        assert!(
            q.join(format!("{kept}.env")).exists(),
            "the replay writes the envelope file"
        );
        assert!(!q.join(format!("{gone}.env")).exists());
        // The replay was checkpointed: the journal is empty again.
        drop(store);
        let (_, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(loaded.len(), 1);
    }

    /// A new message's envelope is in the journal only; it gets its file
    /// when it changes, and a DSN gets its file at once.
    #[tokio::test]
    async fn envelope_files_are_written_when_needed() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, _) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        let (id, mut f) = store.create_data().unwrap();
        f.write_all(b"m\r\n").unwrap();
        store.add(entry(&id, 3)).await.unwrap();
        assert!(!q.join(format!("{id}.env")).exists());
        let mut changed = entry(&id, 3);
        changed.held = true;
        store.write(changed).await.unwrap();
        let on_disk = QueueEntry::from_bytes(&std::fs::read(q.join(format!("{id}.env"))).unwrap(), &id).unwrap();
        assert!(on_disk.held);
        let (dsn, mut f) = store.create_data().unwrap();
        f.write_all(b"d\r\n").unwrap();
        let mut dsn_entry = entry(&dsn, 3);
        dsn_entry.is_dsn = true;
        store.add(dsn_entry).await.unwrap();
        assert!(q.join(format!("{dsn}.env")).exists());
        // Removing a message whose envelope has a file, and one whose
        // envelope is in the journal only.
        let (short, mut f) = store.create_data().unwrap();
        f.write_all(b"s\r\n").unwrap();
        store.add(entry(&short, 3)).await.unwrap();
        store.remove(&id).await.unwrap();
        store.remove(&short).await.unwrap();
        for gone in [&id, &short] {
            assert!(!q.join(format!("{gone}.env")).exists());
            assert!(!q.join(format!("{gone}.data")).exists());
        }
        drop(store);
        let (_, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(
            loaded.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            vec![dsn.as_str()]
        );
    }

    /// A delivered message's files are recycled, and a recycled data
    /// file starts empty.
    #[tokio::test]
    async fn removed_files_are_recycled_empty() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, _) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        let (id, mut f) = store.create_data().unwrap();
        f.write_all(b"secret\r\n").unwrap();
        store.add(entry(&id, 8)).await.unwrap();
        store.remove_lazily(&id).await.unwrap();
        // The data file (the envelope never had one), once the removal is
        // flushed.
        wait_until(|| std::fs::read_dir(q.join("spare")).unwrap().count() == 1).await;
        let (id2, mut f2) = store.create_data().unwrap();
        assert_eq!(std::fs::read_dir(q.join("spare")).unwrap().count(), 0);
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut f2, &mut got).unwrap();
        assert!(got.is_empty());
        f2.write_all(b"new\r\n").unwrap();
        store.add(entry(&id2, 5)).await.unwrap();
        assert!(q.join("spare").read_dir().unwrap().next().is_none());
        drop(store);
        let (_, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(std::fs::read(q.join(format!("{id2}.data"))).unwrap(), b"new\r\n");
    }

    /// Spares are created at start, up to the number asked for, and used.
    #[tokio::test]
    async fn spares_are_created_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, _) = Store::open(&q, 5, TEST_JOURNAL).unwrap();
        let count = || std::fs::read_dir(q.join("spare")).unwrap().count();
        let deadline = Instant::now() + Duration::from_secs(10);
        while count() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(count(), 5);
        let (_, f) = store.create_data().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(count(), 4);
    }

    /// More records than the journal holds: checkpoints make room and
    /// nothing is lost.
    #[tokio::test]
    async fn journal_wraps_with_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("queue");
        let (store, _) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        let body = vec![b'x'; 512 * 1024];
        let mut ids = Vec::new();
        for _ in 0..(32 * 1024 * 1024 / body.len() as u64 * 2) {
            let (id, mut f) = store.create_data().unwrap();
            f.write_all(&body).unwrap();
            store.add(entry(&id, body.len() as u64)).await.unwrap();
            ids.push(id);
        }
        // And one that does not travel in the journal.
        let big = vec![b'y'; (crate::journal::INLINE_DATA_MAX + 1) as usize];
        let (id, mut f) = store.create_data().unwrap();
        f.write_all(&big).unwrap();
        store.add(entry(&id, big.len() as u64)).await.unwrap();
        ids.push(id);
        // The checkpoints wrote the envelopes of the first messages.
        assert!(q.join(format!("{}.env", ids[0])).exists());
        drop(store);
        let (_, loaded) = Store::open(&q, 0, TEST_JOURNAL).unwrap();
        assert_eq!(loaded.len(), ids.len());
    }

    #[test]
    fn ids() {
        let a = new_id();
        assert!(valid_id(&a));
        assert_ne!(a, new_id());
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
    }
}
