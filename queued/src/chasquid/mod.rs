//! Import of chasquid's queue at start: every chasquid item
//! `queue/m:<id>` (see [`tambo_common::chasquid_queue`]) becomes a queue
//! entry of ours, before the queue's deliveries start, so that a switch
//! from chasquid loses nothing it had queued.
//!
//! Exactly once, across crashes: the entry's ID is derived from chasquid's
//! ([`queue_id`]); the entry is added durably ([`Store::add_all`], data
//! and envelope, like an accepted message) and only then is the original
//! moved to `queue/chasquid-imported/`. A crash before the entry is
//! durable leaves the original in place (and at most a data file that was
//! never acknowledged, deleted at start): it is imported at the next
//! start. A crash after finds both the original and an entry with its ID:
//! the original is only moved. Both directories are synced before the
//! first delivery, so a delivered and removed entry cannot be imported
//! again from an original whose move was lost. An original whose name is
//! already in `chasquid-imported/` (a copy of one imported earlier) is
//! not imported again.
//!
//! A corrupt item is moved to `queue/corrupt/` and logged with its file
//! and line; one that cannot be read (permissions) stays where it is for
//! the next start. Neither stops queued.

mod convert;
#[cfg(test)]
mod tests;

pub use convert::{Conversion, queue_id, write_crlf};

use std::collections::HashSet;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use tambo_common::chasquid_queue::{self, Item};

use crate::entry::{QueueEntry, RcptState};
use crate::store::Store;

/// Where imported originals go, under the queue directory.
pub const IMPORTED_DIR: &str = "chasquid-imported";

/// Items made durable with one flush of the journal.
const BATCH: usize = 128;
/// Data bytes gathered in one batch at most (memory is freed per item,
/// this bounds the journal records waiting for one flush).
const BATCH_BYTES: usize = 64 << 20;

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Items that became entries now.
    pub imported: usize,
    /// Their recipients still to be delivered.
    pub pending: usize,
    /// Items imported before a crash, whose original was only moved now.
    pub already: usize,
    /// Items named like one imported and finished at an earlier start
    /// (also counted as imported): imported again, as chasquid would
    /// deliver them again.
    pub duplicates: usize,
    /// Items without recipients (nothing to deliver, as for chasquid).
    pub empty: usize,
    /// Corrupt items moved to `corrupt/`.
    pub corrupt: usize,
    /// Items that could not be read or queued: left for the next start.
    pub left: usize,
}

/// Why the import stopped early (a test's simulated crash).
pub struct Stopped;

/// A point where a crash may happen, for [`import`]'s `step` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A data file was written (its entry is not durable yet).
    DataWritten,
    /// A batch of entries is durable (its originals are not moved yet).
    Added,
    /// One original was moved.
    Moved,
}

fn mtime_of(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One item read, or why not.
enum ReadOutcome {
    Item(Box<Item>, u64),
    Corrupt(String),
    Unreadable(String),
}

fn read_item(path: &Path, name: &str, max: u64) -> ReadOutcome {
    let shown = format!("queue/{name}");
    let open = std::fs::File::open(path).and_then(|f| f.metadata().map(|m| (f, m)));
    let (f, meta) = match open {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return ReadOutcome::Unreadable(format!(
                "{}: {e}; make chasquid's files in {} belong to queued's user (e.g. chown tambo-queue: {}/m:*)",
                path.display(),
                path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
                path.parent().map(|p| p.display().to_string()).unwrap_or_default(),
            ));
        }
        Err(e) => return ReadOutcome::Unreadable(format!("{}: {e}", path.display())),
    };
    if meta.len() > max {
        return ReadOutcome::Corrupt(format!(
            "{shown}: {} bytes, more than a message of max_data_size_mb can take ({max})",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    if let Err(e) = f.take(max + 1).read_to_end(&mut bytes) {
        return ReadOutcome::Unreadable(format!("{}: {e}", path.display()));
    }
    match chasquid_queue::parse_item(&bytes, &shown) {
        Ok(item) => ReadOutcome::Item(Box::new(item), mtime_of(&meta)),
        Err(e) => ReadOutcome::Corrupt(e.to_string()),
    }
}

/// The names of chasquid's items in `dir`, sorted.
fn item_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for de in std::fs::read_dir(dir)? {
        let de = de?;
        let name = de.file_name().to_string_lossy().into_owned();
        if chasquid_queue::item_id_from_file_name(&name).is_some() && de.file_type()?.is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// An item whose entry waits for the batch's flush.
struct Pending {
    name: String,
    entry: QueueEntry,
    chasquid_id: String,
}

/// Import every chasquid item of the store's directory. `recovered`: the
/// IDs of the entries the store holds; `max_item`: the largest item file
/// read (see [`chasquid_queue::max_item_size`]). Returns the new entries
/// (to be delivered) and what was done. `step` is called at every point
/// where a crash matters; `Break` stops the import there (tests).
pub async fn import(
    store: &Store,
    conv: &Conversion<'_>,
    recovered: &HashSet<String>,
    max_item: u64,
    step: &mut dyn FnMut(Step) -> ControlFlow<()>,
) -> Result<(Vec<QueueEntry>, Report), Stopped> {
    let dir = store.dir().to_path_buf();
    let mut report = Report::default();
    let names = match item_names(&dir) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("{}: cannot list chasquid's queue items: {e}", dir.display());
            return Ok((Vec::new(), report));
        }
    };
    if names.is_empty() {
        return Ok((Vec::new(), report));
    }
    let started = Instant::now();
    let done_dir = dir.join(IMPORTED_DIR);
    if let Err(e) = std::fs::create_dir_all(&done_dir) {
        tracing::error!(
            "{}: cannot create: {e}; chasquid's queue is not imported",
            done_dir.display()
        );
        report.left = names.len();
        return Ok((Vec::new(), report));
    }
    tracing::info!(
        "importing {} chasquid queue item(s) from {}",
        names.len(),
        dir.display()
    );
    let mut imported = Vec::new();
    let mut batch: Vec<Pending> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut moves: Vec<String> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let cid = chasquid_queue::item_id_from_file_name(name).unwrap_or_default();
        let Some(id) = queue_id(cid) else {
            store.move_file_aside(name, &format!("queue/{name}: chasquid ID longer than 30 bytes"));
            report.corrupt += 1;
            continue;
        };
        if !recovered.contains(&id) && done_dir.join(name).exists() {
            // An item named like one imported and finished before (put
            // back, or an ID chasquid used again): chasquid would deliver
            // it, so it is imported again; the earlier original is kept.
            let earlier = format!("{name}.earlier-{}", conv.now);
            tracing::warn!(
                "queue/{name}: an item of this name was imported and delivered before \
                 ({IMPORTED_DIR}/{name}, now {IMPORTED_DIR}/{earlier}): imported again, as chasquid would deliver it"
            );
            if let Err(e) = std::fs::rename(done_dir.join(name), done_dir.join(&earlier)) {
                tracing::error!("{IMPORTED_DIR}/{name}: cannot move: {e}; queue/{name} left for the next start");
                report.left += 1;
                continue;
            }
            report.duplicates += 1;
        }
        if recovered.contains(&id) {
            tracing::info!(id, "queue/{name}: imported before a restart; moving the original");
            moves.push(name.clone());
            report.already += 1;
        } else {
            match read_item(&dir.join(name), name, max_item) {
                ReadOutcome::Unreadable(why) => {
                    tracing::error!("{why}; left in place for the next start");
                    report.left += 1;
                }
                ReadOutcome::Corrupt(why) => {
                    store.move_file_aside(name, &format!("corrupt chasquid queue item: {why}"));
                    report.corrupt += 1;
                }
                ReadOutcome::Item(item, mtime) => {
                    for (line, field) in &item.ignored {
                        tracing::warn!("queue/{name}: line {line}: unknown field {field} ignored");
                    }
                    if item.created.is_none() {
                        tracing::warn!("queue/{name}: no created_at_ts; its file's time is used");
                    }
                    match conv.entry(&item, &id, mtime) {
                        Err(why) => {
                            tracing::warn!("queue/{name}: {why}: nothing to deliver, moved to {IMPORTED_DIR}/");
                            moves.push(name.clone());
                            report.empty += 1;
                        }
                        Ok(entry) => match write_data(store, &id, &item.data) {
                            Ok(()) => {
                                batch_bytes += item.data.len();
                                batch.push(Pending {
                                    name: name.clone(),
                                    entry,
                                    chasquid_id: item.id.clone(),
                                });
                                if step(Step::DataWritten).is_break() {
                                    return Err(Stopped);
                                }
                            }
                            Err(e) => {
                                tracing::error!(id, "queue/{name}: cannot write the data file: {e}; left in place");
                                store.discard_data(&id);
                                report.left += 1;
                            }
                        },
                    }
                }
            }
        }
        let last = i + 1 == names.len();
        if batch.len() >= BATCH || batch_bytes >= BATCH_BYTES || last {
            let added = commit(store, std::mem::take(&mut batch), &mut report).await;
            batch_bytes = 0;
            if (!added.is_empty() || !moves.is_empty()) && step(Step::Added).is_break() {
                return Err(Stopped);
            }
            for (name, entry) in added {
                moves.push(name);
                imported.push(entry);
            }
            for name in moves.drain(..) {
                if let Err(e) = std::fs::rename(dir.join(&name), done_dir.join(&name)) {
                    tracing::error!("queue/{name}: cannot move to {IMPORTED_DIR}/: {e}");
                }
                if step(Step::Moved).is_break() {
                    return Err(Stopped);
                }
            }
        }
    }
    for d in [&done_dir, &dir] {
        if let Err(e) = std::fs::File::open(d).and_then(|f| f.sync_all()) {
            tracing::error!("{}: fsync: {e}", d.display());
        }
    }
    tracing::info!(
        "chasquid queue import: {} item(s) imported with {} recipient(s) to deliver, {} imported before a restart, \
         {} named like one imported earlier, {} without recipients, {} corrupt (moved to queue/corrupt/), \
         {} left for the next start; originals in {}; {} ms",
        report.imported,
        report.pending,
        report.already,
        report.duplicates,
        report.empty,
        report.corrupt,
        report.left,
        done_dir.display(),
        started.elapsed().as_millis()
    );
    Ok((imported, report))
}

/// Write the data file of entry `id` (CRLF line endings).
fn write_data(store: &Store, id: &str, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(256 * 1024, store.create_data_as(id)?);
    write_crlf(&mut f, data)?;
    f.flush()
}

/// Make a batch durable (data file entries, then the envelopes with one
/// flush); the items whose entry is durable, logged one line each.
async fn commit(store: &Store, batch: Vec<Pending>, report: &mut Report) -> Vec<(String, QueueEntry)> {
    if batch.is_empty() {
        return Vec::new();
    }
    if let Err(e) = store.sync_dir() {
        tracing::error!(
            "{}: fsync: {e}; chasquid's items are left for the next start",
            store.dir().display()
        );
        for p in &batch {
            store.discard_data(&p.entry.id);
        }
        report.left += batch.len();
        return Vec::new();
    }
    let results = store.add_all(batch.iter().map(|p| p.entry.clone()).collect()).await;
    let mut out = Vec::new();
    for (p, res) in batch.into_iter().zip(results) {
        let e = &p.entry;
        if let Err(err) = res {
            tracing::error!(id = e.id, "queue/{}: cannot queue: {err}; left in place", p.name);
            store.discard_data(&e.id);
            report.left += 1;
            continue;
        }
        let count = |s: RcptState| e.rcpts.iter().filter(|r| r.state == s).count();
        let pending = count(RcptState::Pending);
        tracing::info!(
            id = e.id,
            chasquid_id = p.chasquid_id,
            from = e.from,
            created = e.created,
            "imported chasquid queue item queue/{}: {pending} recipient(s) to deliver, {} delivered, {} failed",
            p.name,
            count(RcptState::Delivered),
            count(RcptState::Failed),
        );
        report.imported += 1;
        report.pending += pending;
        out.push((p.name, p.entry));
    }
    out
}
