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

use std::collections::HashSet;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::{Instant, UNIX_EPOCH};

use tambo_common::chasquid_queue::{self, Item, RcptStatus, RcptType};
use tambo_common::names::{normalize_address, split_address};
use tambo_ipc::proto::RcptRoute;

use crate::entry::{ENTRY_VERSION, QueueEntry, RcptEntry, RcptState};
use crate::resolve::lookup_user;
use crate::store::Store;

/// Where imported originals go, under the queue directory.
pub const IMPORTED_DIR: &str = "chasquid-imported";

/// Items made durable with one flush of the journal.
const BATCH: usize = 128;
/// Data bytes gathered in one batch at most (memory is freed per item,
/// this bounds the journal records waiting for one flush).
const BATCH_BYTES: usize = 64 << 20;

/// Prefix of the queue IDs of imported messages.
const ID_PREFIX: &str = "cq";

/// Our queue ID for chasquid's item `id`: `cq` and the hexadecimal bytes
/// of the ID (chasquid's are 11 base64 characters): the same ID at every
/// import, distinct for distinct items, never one of our random IDs (20
/// characters). `None` when the ID is too long to fit in ours.
pub fn queue_id(chasquid_id: &str) -> Option<String> {
    if chasquid_id.is_empty() || chasquid_id.len() > 30 {
        return None;
    }
    let hex: String = chasquid_id.bytes().map(|b| format!("{b:02x}")).collect();
    Some(format!("{ID_PREFIX}{hex}"))
}

/// What turning an item into an entry needs from the configuration.
pub struct Conversion<'a> {
    /// Local domains (normalised).
    pub local_domains: &'a [String],
    /// `drop_characters`.
    pub drop_characters: &'a str,
    /// `suffix_separators`.
    pub suffix_separators: &'a str,
    /// Unix time now.
    pub now: u64,
    /// The rewritten sender (SRS) of a recipient, given the message's
    /// sender, the recipient's original address and its route.
    pub srs: &'a dyn Fn(&str, &str, &RcptRoute) -> Option<String>,
}

impl Conversion<'_> {
    fn is_local(&self, domain: &str) -> bool {
        domain == "localhost" || self.local_domains.iter().any(|d| d == domain)
    }

    /// One of chasquid's recipients as ours.
    fn recipient(&self, from: &str, r: &chasquid_queue::Recipient) -> RcptEntry {
        let normal = |a: &str| normalize_address(a).unwrap_or_else(|_| a.to_string());
        let original = normal(if r.original_address.is_empty() {
            &r.address
        } else {
            &r.original_address
        });
        let mut state = match r.status {
            RcptStatus::Pending => RcptState::Pending,
            RcptStatus::Sent => RcptState::Delivered,
            RcptStatus::Failed => RcptState::Failed,
        };
        let mut last_error = r.last_failure_message.clone();
        let (address, route) = match r.kind {
            RcptType::Email => {
                let address = normal(&r.address);
                let (user, domain) = split_address(&address);
                if self.is_local(domain) {
                    let user = lookup_user(user, self.drop_characters, self.suffix_separators);
                    let domain = domain.to_string();
                    (format!("{user}@{domain}"), RcptRoute::Local { user, domain })
                } else {
                    (address, RcptRoute::Remote { via: Vec::new() })
                }
            }
            RcptType::Pipe => {
                let argv: Vec<String> = r.address.split_whitespace().map(str::to_string).collect();
                if argv.is_empty() && state == RcptState::Pending {
                    // What chasquid does with it: a permanent failure.
                    state = RcptState::Failed;
                    last_error = "empty pipe command".into();
                }
                (original.clone(), RcptRoute::Pipe { argv })
            }
            RcptType::Forward => (normal(&r.address), RcptRoute::Remote { via: r.via.clone() }),
        };
        let sender = (state == RcptState::Pending)
            .then(|| (self.srs)(from, &original, &route))
            .flatten();
        let attempted = !r.last_failure_message.is_empty() || r.status != RcptStatus::Pending;
        RcptEntry {
            address,
            original,
            route,
            sender,
            state,
            attempts: u32::from(attempted),
            last_error,
            next_attempt: self.now,
            last_attempt: 0,
            gave_up: false,
        }
    }

    /// An item as our entry `id` (its data is to be stored with
    /// [`write_crlf`]). `mtime` stands in for a missing creation time.
    /// `Err`: the item has nothing to deliver.
    pub fn entry(&self, item: &Item, id: &str, mtime: u64) -> Result<QueueEntry, String> {
        if item.rcpts.is_empty() {
            return Err("no recipients".into());
        }
        let from = if item.from == "<>" { "" } else { item.from.as_str() };
        let created = match item.created {
            Some((secs, _)) => u64::try_from(secs).unwrap_or(0).min(self.now),
            None => mtime.min(self.now),
        };
        let mut size = Counter(0);
        let _ = write_crlf(&mut size, &item.data);
        Ok(QueueEntry {
            version: ENTRY_VERSION,
            id: id.to_string(),
            from: from.to_string(),
            created,
            header_prefix: String::new(),
            rcpts: item.rcpts.iter().map(|r| self.recipient(from, r)).collect(),
            remote_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            data_size: size.0,
            held: false,
            is_dsn: false,
            dsn_of: None,
        })
    }
}

/// Counts the bytes written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Write `data` to `w` with CRLF line endings: chasquid keeps messages
/// with LF line endings, ours have CRLF (a CR already before the LF is
/// kept, a missing final line end added). Written as it goes, never
/// copied whole.
pub fn write_crlf(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let mut start = 0;
    for (i, _) in data.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if i == 0 || data[i - 1] != b'\r' {
            w.write_all(&data[start..i])?;
            w.write_all(b"\r\n")?;
            start = i + 1;
        }
    }
    w.write_all(&data[start..])?;
    if !data.is_empty() && !data.ends_with(b"\n") {
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Items that became entries now.
    pub imported: usize,
    /// Their recipients still to be delivered.
    pub pending: usize,
    /// Items imported before a crash, whose original was only moved now.
    pub already: usize,
    /// Copies of items imported at an earlier start: not imported again.
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
        if done_dir.join(name).exists() {
            let again = format!("{name}.again-{}", conv.now);
            tracing::warn!(
                "queue/{name}: already imported at an earlier start ({IMPORTED_DIR}/{name} exists): \
                 not imported again, moved to {IMPORTED_DIR}/{again}"
            );
            if let Err(e) = std::fs::rename(dir.join(name), done_dir.join(&again)) {
                tracing::error!("queue/{name}: cannot move: {e}");
            }
            report.duplicates += 1;
            continue;
        }
        let Some(id) = queue_id(cid) else {
            store.move_file_aside(name, &format!("queue/{name}: chasquid ID longer than 30 bytes"));
            report.corrupt += 1;
            continue;
        };
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
         {} already imported earlier, {} without recipients, {} corrupt (moved to queue/corrupt/), \
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

#[cfg(test)]
mod tests {
    use super::*;
    use tambo_common::chasquid_queue::{Recipient, format_item};

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../common/testdata/chasquid-1.11-queue/", $name)).as_slice()
        };
    }

    const FIXTURES: [(&str, &[u8]); 6] = [
        ("m:9WFFweXg3tQ", fixture!("m:9WFFweXg3tQ")),
        ("m:AQLIFx1MmTg", fixture!("m:AQLIFx1MmTg")),
        ("m:BHaBtuOPASw", fixture!("m:BHaBtuOPASw")),
        ("m:Hs8N5jXaTRI", fixture!("m:Hs8N5jXaTRI")),
        ("m:JhuLSQnsdQk", fixture!("m:JhuLSQnsdQk")),
        ("m:zE81JkmDudM", fixture!("m:zE81JkmDudM")),
    ];

    const NOW: u64 = 1_796_200_000;

    fn srs(from: &str, original: &str, route: &RcptRoute) -> Option<String> {
        (matches!(route, RcptRoute::Remote { .. }) && !from.is_empty()).then(|| format!("SRS0={from}/{original}"))
    }

    /// example.com is local; `.` dropped, `+` starts a suffix.
    fn conv(local: &[String]) -> Conversion<'_> {
        Conversion {
            local_domains: local,
            drop_characters: ".",
            suffix_separators: "+",
            now: NOW,
            srs: &srs,
        }
    }

    fn with_conv<T>(f: impl FnOnce(&Conversion<'_>) -> T) -> T {
        let local = vec!["example.com".to_string()];
        f(&conv(&local))
    }

    fn item(name: &str) -> Item {
        let (_, bytes) = FIXTURES.iter().find(|(n, _)| *n == name).unwrap();
        chasquid_queue::parse_item(bytes, name).unwrap()
    }

    #[test]
    fn ids_are_derived_injective_and_valid() {
        let a = queue_id("9WFFweXg3tQ").unwrap();
        assert_eq!(a, "cq3957464677655867337451");
        assert!(crate::store::valid_id(&a));
        assert_ne!(queue_id("F__C7OUwE_g"), queue_id("F__C7OUwE-g"));
        assert!(crate::store::valid_id(&queue_id("-_").unwrap()));
        assert_eq!(queue_id(""), None);
        assert_eq!(queue_id(&"x".repeat(31)), None);
        assert_eq!(queue_id(&"x".repeat(30)).unwrap().len(), 62);
    }

    fn crlf(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_crlf(&mut out, data).unwrap();
        out
    }

    #[test]
    fn line_endings() {
        assert_eq!(crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf(b"no end"), b"no end\r\n");
        assert_eq!(crlf(b"bare\rcr\n"), b"bare\rcr\r\n");
        assert_eq!(crlf(b""), b"");
        assert_eq!(crlf(b"\n\nx\r\n\n"), b"\r\n\r\nx\r\n\r\n");
        assert_eq!(crlf(b"cr at the end\r"), b"cr at the end\r\r\n");
    }

    #[test]
    fn items_written_by_chasquid_become_entries() {
        with_conv(|conv| {
            // An alias with a deferred and a failed target.
            let e = conv.entry(&item("m:9WFFweXg3tQ"), "cqx", 0).unwrap();
            let data = crlf(&item("m:9WFFweXg3tQ").data);
            assert_eq!(
                (e.id.as_str(), e.from.as_str(), e.created),
                ("cqx", "sender@remote.test", 1796194504)
            );
            assert_eq!(e.header_prefix, "");
            assert_eq!(e.data_size, data.len() as u64);
            assert!(data.starts_with(b"Received-SPF: none (no DNS record found)\r\nReceived: from [127.0.0.1]"));
            assert!(data.ends_with(b"quote \" back \\ slash\r\n"));
            let r = &e.rcpts;
            assert_eq!(r[0].address, "alice@example.com");
            assert_eq!(r[0].original, "broken@example.com");
            assert_eq!(
                r[0].route,
                RcptRoute::Local {
                    user: "alice".into(),
                    domain: "example.com".into()
                }
            );
            assert_eq!(
                (r[0].state, r[0].attempts, r[0].next_attempt),
                (RcptState::Pending, 1, NOW)
            );
            assert!(r[0].last_error.contains("gate closed"));
            assert_eq!(r[1].state, RcptState::Failed);
            assert!(r[1].last_error.contains("no such mailbox"));
            assert!(crate::dsn::wants_dsn(&e), "the failed recipient is owed a DSN");
            // A pipe chasquid delivered, and a deferred mailbox.
            let e = conv.entry(&item("m:AQLIFx1MmTg"), "cqy", 0).unwrap();
            assert_eq!(e.rcpts[0].address, "piper@example.com");
            assert_eq!(
                e.rcpts[0].route,
                RcptRoute::Pipe {
                    argv: vec!["/tmp/cq/pipe.sh".into(), "ok".into()]
                }
            );
            assert_eq!(e.rcpts[0].state, RcptState::Delivered);
            assert_eq!(e.rcpts[1].state, RcptState::Pending);
            // An alias to a remote address: SRS, as for our own forwards.
            let e = conv.entry(&item("m:JhuLSQnsdQk"), "cqz", 0).unwrap();
            assert_eq!(e.rcpts[0].route, RcptRoute::Remote { via: vec![] });
            assert_eq!(e.rcpts[0].address, "carol@remote.test");
            assert_eq!(
                e.rcpts[0].sender.as_deref(),
                Some("SRS0=sender@remote.test/far@example.com")
            );
            // The null sender.
            let e = conv.entry(&item("m:BHaBtuOPASw"), "cqn", 0).unwrap();
            let data = crlf(&item("m:BHaBtuOPASw").data);
            assert_eq!(e.from, "");
            assert!(!crate::dsn::wants_dsn(&e));
            assert!(data.ends_with(b"\xf0\x9f\x98\x80 emoji\r\nend\r\n"));
            // A suffix: the mailbox of the user.
            let e = conv.entry(&item("m:zE81JkmDudM"), "cqt", 0).unwrap();
            assert_eq!(e.rcpts[0].original, "alice+tag@example.com");
            assert_eq!(e.rcpts[0].address, "alice@example.com");
        });
    }

    #[test]
    fn forward_empty_pipe_and_missing_fields() {
        let rcpt = |address: &str, kind, via: &[&str]| Recipient {
            address: address.into(),
            kind,
            status: RcptStatus::Pending,
            last_failure_message: String::new(),
            original_address: "fwd@example.com".into(),
            via: via.iter().map(|s| s.to_string()).collect(),
        };
        let mut it = Item {
            id: "i".into(),
            from: "<>".into(),
            to: vec!["fwd@example.com".into()],
            rcpts: vec![
                rcpt("x@Elsewhere.ORG", RcptType::Forward, &["mx1.test:2525", "mx2.test"]),
                rcpt("  ", RcptType::Pipe, &[]),
            ],
            data: b"Subject: x\n\nhi\n".to_vec(),
            created: None,
            ignored: vec![],
        };
        with_conv(|conv| {
            let e = conv.entry(&it, "cqf", 1234).unwrap();
            let data = crlf(&it.data);
            assert_eq!(e.created, 1234, "the file's time stands in for created_at_ts");
            assert_eq!(e.rcpts[0].address, "x@elsewhere.org");
            assert_eq!(
                e.rcpts[0].route,
                RcptRoute::Remote {
                    via: vec!["mx1.test:2525".into(), "mx2.test".into()]
                }
            );
            assert_eq!(e.rcpts[0].sender, None, "the null sender is never rewritten");
            assert_eq!(
                (e.rcpts[1].state, e.rcpts[1].last_error.as_str()),
                (RcptState::Failed, "empty pipe command")
            );
            assert_eq!(data, b"Subject: x\r\n\r\nhi\r\n");
            it.created = Some((NOW as i64 + 99, 0));
            assert_eq!(conv.entry(&it, "cqf", 0).unwrap().created, NOW, "never in the future");
            it.rcpts.clear();
            assert!(conv.entry(&it, "cqf", 0).is_err());
        });
    }

    /// A chasquid queue in `dir`: the fixtures, one corrupt item, one
    /// without recipients, a temporary file of chasquid's and a file of
    /// ours that must be left alone.
    fn lay_out(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, bytes) in FIXTURES {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        std::fs::write(dir.join("m:corrupt1"), b"ID: \"corrupt1\"\nrcpt {\n  status: LOST\n}\n").unwrap();
        std::fs::write(dir.join("m:empty1"), b"ID: \"empty1\"\nfrom: \"a@b\"\n").unwrap();
        std::fs::write(dir.join(".m:temp12345"), b"half").unwrap();
    }

    async fn run(
        dir: &Path,
        step: &mut dyn FnMut(Step) -> ControlFlow<()>,
    ) -> (Store, Vec<QueueEntry>, Option<(Vec<QueueEntry>, Report)>) {
        let (store, recovered) = Store::open(dir, 0).unwrap();
        let ids: HashSet<String> = recovered.iter().map(|e| e.id.clone()).collect();
        let local = vec!["example.com".to_string()];
        let result = import(&store, &conv(&local), &ids, 1 << 20, step).await;
        (store, recovered, result.ok())
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("m:"))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn import_moves_originals_and_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("queue");
        lay_out(&q);
        let (store, _, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
        let (entries, report) = result.unwrap();
        assert_eq!(
            report,
            Report {
                imported: 6,
                pending: 7,
                empty: 1,
                corrupt: 1,
                ..Report::default()
            }
        );
        assert_eq!(entries.len(), 6);
        assert_eq!(leftovers(&q), Vec::<String>::new());
        assert!(
            q.join(".m:temp12345").exists(),
            "chasquid's temporary files are not items"
        );
        assert!(q.join("corrupt/m:corrupt1").exists());
        assert!(q.join("chasquid-imported/m:empty1").exists());
        assert_eq!(leftovers(&q.join(IMPORTED_DIR)).len(), 7);
        let e = entries
            .iter()
            .find(|e| e.id == queue_id("9WFFweXg3tQ").unwrap())
            .unwrap();
        let data = std::fs::read(store.data_path(&e.id)).unwrap();
        assert_eq!(data, crlf(&item("m:9WFFweXg3tQ").data));
        drop(store);
        // Durable: a restart finds them as its own entries; nothing is
        // imported twice, and a copy of an imported item put back is not.
        std::fs::write(q.join("m:9WFFweXg3tQ"), FIXTURES[0].1).unwrap();
        let (_, recovered, result) = run(&q, &mut |_| ControlFlow::Continue(())).await;
        let (again, report) = result.unwrap();
        assert!(again.is_empty());
        assert_eq!(report.duplicates, 1);
        let mut ids: Vec<_> = recovered.iter().map(|e| e.id.clone()).collect();
        ids.sort();
        let mut want: Vec<_> = entries.iter().map(|e| e.id.clone()).collect();
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(recovered.iter().find(|r| r.id == e.id).unwrap(), e);
    }

    /// A crash at every point of the import, then a start that finishes
    /// it: every item becomes exactly one entry, and nothing is left.
    #[tokio::test]
    async fn a_crash_anywhere_loses_nothing_and_imports_nothing_twice() {
        // How many crash points a whole import has.
        let tmp = tempfile::tempdir().unwrap();
        lay_out(&tmp.path().join("q"));
        let mut points = 0;
        let (_, _, full) = run(&tmp.path().join("q"), &mut |_| {
            points += 1;
            ControlFlow::Continue(())
        })
        .await;
        let mut want: Vec<QueueEntry> = full.unwrap().0;
        want.sort_by(|a, b| a.id.cmp(&b.id));
        // Six data files, one flush, seven moves (with the empty item).
        assert_eq!(points, 6 + 1 + 7);
        for crash_at in 0..points {
            let tmp = tempfile::tempdir().unwrap();
            let q = tmp.path().join("q");
            lay_out(&q);
            let mut n = 0;
            let (store, _, first) = run(&q, &mut |_| {
                n += 1;
                if n > crash_at {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
            assert!(first.is_none(), "crash point {crash_at} reached");
            drop(store);
            let (store, recovered, second) = run(&q, &mut |_| ControlFlow::Continue(())).await;
            let (new, _) = second.unwrap();
            let mut all: Vec<QueueEntry> = recovered.into_iter().chain(new).collect();
            all.sort_by(|a, b| a.id.cmp(&b.id));
            assert_eq!(all, want, "crash at point {crash_at}");
            for e in &all {
                assert_eq!(std::fs::metadata(store.data_path(&e.id)).unwrap().len(), e.data_size);
            }
            assert_eq!(leftovers(&q), Vec::<String>::new(), "crash at point {crash_at}");
            drop(store);
            // And a third start imports nothing.
            let (_, recovered, third) = run(&q, &mut |_| ControlFlow::Continue(())).await;
            assert!(third.unwrap().0.is_empty());
            assert_eq!(recovered.len(), want.len());
        }
    }

    #[tokio::test]
    async fn a_thousand_items() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("q");
        std::fs::create_dir_all(&q).unwrap();
        let mut base = item("m:Hs8N5jXaTRI");
        for i in 0..1000 {
            base.id = format!("item{i:06}");
            base.data = format!("Subject: {i}\n\n{}\n", "body line\n".repeat(300)).into_bytes();
            std::fs::write(q.join(format!("m:{}", base.id)), format_item(&base)).unwrap();
        }
        let (store, _) = Store::open(&q, 0).unwrap();
        let local = vec!["example.com".to_string()];
        let started = Instant::now();
        let result = import(&store, &conv(&local), &HashSet::new(), 1 << 20, &mut |_| {
            ControlFlow::Continue(())
        })
        .await;
        let (entries, report) = result.ok().unwrap();
        println!("imported 1000 items of 3 KiB in {} ms", started.elapsed().as_millis());
        assert_eq!((entries.len(), report.imported, report.pending), (1000, 1000, 2000));
        assert!(leftovers(&q).is_empty());
    }

    #[test]
    fn unreadable_and_oversized_items() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_item(&tmp.path().join("m:gone"), "m:gone", 100),
            ReadOutcome::Unreadable(_)
        ));
        std::fs::write(tmp.path().join("m:big"), vec![b' '; 101]).unwrap();
        match read_item(&tmp.path().join("m:big"), "m:big", 100) {
            ReadOutcome::Corrupt(why) => assert!(why.contains("101 bytes"), "{why}"),
            _ => panic!("an oversized item is corrupt"),
        }
        std::fs::write(tmp.path().join("m:bad"), b"ID: \"a\"\n\nfrom: 7\n").unwrap();
        match read_item(&tmp.path().join("m:bad"), "m:bad", 100) {
            ReadOutcome::Corrupt(why) => assert_eq!(why, "queue/m:bad: line 3: from must be a string, not an integer"),
            _ => panic!("corrupt"),
        }
    }
}
