//! The queue's write-ahead journal: one preallocated file, `queue/journal`,
//! to which the committer appends a record for every queue operation and
//! which it makes durable with a single `fdatasync(2)` per batch (group
//! commit).
//!
//! Why: the queue files themselves (`<id>.data`, `<id>.env`) are new files;
//! making each of them durable costs a filesystem journal commit per file,
//! and `syncfs(2)` also writes back every other program's dirty data on the
//! same filesystem. The journal file is written once with zeros when it is
//! created (so its blocks are allocated and initialised), and afterwards
//! only overwritten in place: `fdatasync` then has no metadata to commit
//! and costs one data write and one device cache flush, whatever else the
//! machine is doing.
//!
//! Layout: a 4 KiB header (`TAMBOJNL`, format version, generation, CRC)
//! and, from offset 4096, records one after the other:
//!
//! ```text
//! "TJR1" gen:u64 seq:u64 kind:u8 id_len:u16 env_len:u32 data_len:u64
//! id env data crc32(everything before)
//! ```
//!
//! (integers little-endian). A record belongs to the journal when its
//! generation is the header's, its sequence number follows the previous
//! record's, and its CRC matches; the first record that fails any of those
//! ends the journal (a torn write at a crash, or the older contents of the
//! file from a previous generation).
//!
//! Checkpoint: when the journal fills up, every queue file is made durable
//! with one `syncfs(2)`, and the header is rewritten with the next
//! generation, which empties the journal. A header that does not verify
//! can only come from a crash while it was being rewritten, which happens
//! just after a successful `syncfs`: the queue files are then durable and
//! the journal is treated as empty.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const MIB: u64 = 1024 * 1024;
/// The largest journal [`JournalSize::Automatic`] makes (and the size it
/// had before it adapted to the disk).
pub const MAX_AUTO_SIZE: u64 = 32 * MIB;
/// The smallest journal [`JournalSize::Automatic`] makes.
pub const MIN_AUTO_SIZE: u64 = 4 * MIB;
/// How much of the free space an automatic journal takes.
const AUTO_SHARE: u64 = 16;

/// How large the journal file is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalSize {
    /// `queue_journal_size_mb` unset: when the journal is created, 1/16 of
    /// the free space of its filesystem, between [`MIN_AUTO_SIZE`] and
    /// [`MAX_AUTO_SIZE`]. A journal already within those bounds keeps its
    /// size, so that it is not re-created at every start.
    Automatic,
    /// Exactly this many bytes.
    Bytes(u64),
}

impl JournalSize {
    /// From `queue_journal_size_mb` (0: automatic).
    pub fn from_mb(mb: i64) -> JournalSize {
        match u64::try_from(mb) {
            Ok(0) | Err(_) => JournalSize::Automatic,
            Ok(mb) => JournalSize::Bytes(mb * MIB),
        }
    }
}

/// The automatic size for `free` bytes of free space.
pub fn automatic_size(free: u64) -> u64 {
    (free / AUTO_SHARE).clamp(MIN_AUTO_SIZE, MAX_AUTO_SIZE) / MIB * MIB
}
/// Size of the header block.
const HEADER_SIZE: u64 = 4096;
const HEADER_MAGIC: &[u8; 8] = b"TAMBOJNL";
const FORMAT: u32 = 1;
const RECORD_MAGIC: &[u8; 4] = b"TJR1";
/// Bytes of a record before its payload.
const RECORD_HEAD: usize = 4 + 8 + 8 + 1 + 2 + 4 + 8;
/// Message data up to this size (or an eighth of the journal, when that
/// is less) travels inside the journal; larger data files are fdatasync'd
/// themselves before their record is flushed.
pub const INLINE_DATA_MAX: u64 = MIB;

/// What a record says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A new message (or a replaced envelope): its envelope bytes, and its
    /// data when it travels in the journal (`None`: the data file was
    /// synced on its own, or the data did not change).
    Write {
        /// Queue ID.
        id: String,
        /// The envelope file's contents.
        env: Vec<u8>,
        /// The data file's contents, when journaled.
        data: Option<Vec<u8>>,
    },
    /// The message is gone (envelope and data).
    Remove {
        /// Queue ID.
        id: String,
    },
}

impl Record {
    /// Bytes this record takes in the journal.
    pub fn encoded_len(&self) -> u64 {
        let payload = match self {
            Record::Write { id, env, data } => id.len() + env.len() + data.as_ref().map(|d| d.len()).unwrap_or(0),
            Record::Remove { id } => id.len(),
        };
        (RECORD_HEAD + payload + 4) as u64
    }

    fn encode(&self, generation: u64, seq: u64) -> Vec<u8> {
        let (kind, id, env, data): (u8, &str, &[u8], Option<&[u8]>) = match self {
            Record::Write { id, env, data: None } => (1, id, env, None),
            Record::Write { id, env, data: Some(d) } => (2, id, env, Some(d)),
            Record::Remove { id } => (3, id, &[], None),
        };
        let data = data.unwrap_or(&[]);
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.push(kind);
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(&(env.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(env);
        out.extend_from_slice(data);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// The open journal.
pub struct Journal {
    file: File,
    path: std::path::PathBuf,
    generation: u64,
    next_seq: u64,
    /// Where the next record goes.
    end: u64,
    /// The size the file has, or gets at the next reset.
    size: u64,
    /// The file has another size than `size`: nothing is appended before
    /// the next reset gives it the right size.
    resize: bool,
}

fn header_bytes(generation: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_SIZE as usize);
    h.extend_from_slice(HEADER_MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h.resize(HEADER_SIZE as usize, 0);
    h
}

fn parse_header(h: &[u8]) -> Option<u64> {
    if h.len() < 24 || &h[..8] != HEADER_MAGIC {
        return None;
    }
    let format = u32::from_le_bytes(h[8..12].try_into().ok()?);
    let generation = u64::from_le_bytes(h[12..20].try_into().ok()?);
    let crc = u32::from_le_bytes(h[20..24].try_into().ok()?);
    (format == FORMAT && crc32fast::hash(&h[..20]) == crc).then_some(generation)
}

/// The records of generation `generation` at the start of `body` (the
/// journal after its header).
fn parse_records(body: &[u8], generation: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut seq = 0u64;
    while body.len() - pos >= RECORD_HEAD + 4 {
        let h = &body[pos..pos + RECORD_HEAD];
        let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        if &h[..4] != RECORD_MAGIC || le64(&h[4..12]) != generation || le64(&h[12..20]) != seq {
            break;
        }
        let kind = h[20];
        let id_len = u16::from_le_bytes([h[21], h[22]]) as usize;
        let env_len = u32::from_le_bytes([h[23], h[24], h[25], h[26]]) as usize;
        let data_len = le64(&h[27..35]);
        let Some(total) = usize::try_from(data_len).ok().and_then(|d| {
            RECORD_HEAD
                .checked_add(id_len)?
                .checked_add(env_len)?
                .checked_add(d)?
                .checked_add(4)
        }) else {
            break;
        };
        if total > body.len() - pos {
            break;
        }
        let rec = &body[pos..pos + total];
        let crc = u32::from_le_bytes(rec[total - 4..].try_into().unwrap_or([0; 4]));
        if crc32fast::hash(&rec[..total - 4]) != crc {
            break;
        }
        let p = &rec[RECORD_HEAD..total - 4];
        let Ok(id) = std::str::from_utf8(&p[..id_len]) else {
            break;
        };
        let id = id.to_string();
        let env = p[id_len..id_len + env_len].to_vec();
        let data = &p[id_len + env_len..];
        let record = match kind {
            1 => Record::Write { id, env, data: None },
            2 => Record::Write {
                id,
                env,
                data: Some(data.to_vec()),
            },
            3 => Record::Remove { id },
            _ => break,
        };
        out.push(record);
        pos += total;
        seq += 1;
    }
    out
}

/// The length of the record that starts at `at` in the journal file
/// `file` (its whole contents), from its header.
#[cfg(test)]
pub(crate) fn record_len_at(file: &[u8], at: usize) -> usize {
    let h = &file[at..at + RECORD_HEAD];
    let id_len = u16::from_le_bytes([h[21], h[22]]) as usize;
    let env_len = u32::from_le_bytes([h[23], h[24], h[25], h[26]]) as usize;
    let data_len = u64::from_le_bytes(h[27..35].try_into().expect("8 bytes")) as usize;
    RECORD_HEAD + id_len + env_len + data_len + 4
}

/// Bytes of a record before its payload (for tests that cut records).
#[cfg(test)]
pub(crate) const RECORD_HEAD_LEN: usize = RECORD_HEAD;

/// Write `file` (the journal at `path`) as an empty journal of `size`
/// bytes and generation `generation`, every block written now so that
/// later fdatasyncs have no metadata to commit, and make it durable.
fn initialise(file: &File, path: &Path, generation: u64, size: u64) -> std::io::Result<()> {
    file.set_len(0)?;
    let zeros = vec![0u8; MIB as usize];
    let mut written = 0;
    while written < size {
        let n = (size - written).min(MIB) as usize;
        file.write_all_at(&zeros[..n], written)?;
        written += n as u64;
    }
    file.write_all_at(&header_bytes(generation), 0)?;
    file.sync_all()?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// The automatic size of the journal at `path` (whose file holds
/// `current` bytes, freed when it is re-created), from the free space of
/// its filesystem; logged, since it decides how much of a small disk the
/// journal takes.
fn automatic(path: &Path, current: u64) -> u64 {
    let dir = path.parent().unwrap_or(Path::new("."));
    let free = match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => v.blocks_available() * v.fragment_size() + current,
        Err(e) => {
            tracing::warn!(
                "{}: statvfs: {e}; journal of {} MiB",
                dir.display(),
                MAX_AUTO_SIZE / MIB
            );
            return MAX_AUTO_SIZE;
        }
    };
    let size = automatic_size(free);
    tracing::info!(
        "{}: journal of {} MiB (1/{AUTO_SHARE} of the {} MiB free, between {} and {} MiB; \
         queue_journal_size_mb sets it)",
        path.display(),
        size / MIB,
        free / MIB,
        MIN_AUTO_SIZE / MIB,
        MAX_AUTO_SIZE / MIB
    );
    size
}

impl Journal {
    /// Open `path` (creating and initialising it when missing; one of
    /// another size than `want` is read as it is and re-created at its next
    /// reset); returns the journal and the records it holds, in order.
    pub fn open(path: &Path, want: JournalSize) -> std::io::Result<(Journal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut records = Vec::new();
        let mut generation = 0;
        let mut resize = false;
        let size;
        if len >= HEADER_SIZE {
            size = match want {
                JournalSize::Bytes(b) => b,
                JournalSize::Automatic if (MIN_AUTO_SIZE..=MAX_AUTO_SIZE).contains(&len) => len,
                JournalSize::Automatic => automatic(path, len),
            };
            // A journal of another size is read as it is; it is made the
            // right size at its next reset, after its records have been
            // replayed.
            if len != size {
                tracing::info!(
                    "{}: journal of {len} bytes; it becomes {size} bytes after its replay",
                    path.display()
                );
                resize = true;
            }
            let mut all = Vec::with_capacity(len as usize);
            file.read_to_end(&mut all)?;
            match parse_header(&all[..HEADER_SIZE as usize]) {
                Some(g) => {
                    generation = g;
                    records = parse_records(&all[HEADER_SIZE as usize..], g);
                }
                None => tracing::warn!(
                    "{}: the journal header does not verify (crash during a checkpoint); \
                     the journal is empty",
                    path.display()
                ),
            }
        } else {
            if len != 0 {
                tracing::warn!(
                    "{}: journal of {len} bytes, shorter than its header: initialising it again",
                    path.display()
                );
            }
            size = match want {
                JournalSize::Bytes(b) => b,
                JournalSize::Automatic => automatic(path, len),
            };
            initialise(&file, path, 0, size)?;
        }
        let end = HEADER_SIZE + records.iter().map(Record::encoded_len).sum::<u64>();
        let journal = Journal {
            file,
            path: path.to_path_buf(),
            generation,
            next_seq: records.len() as u64,
            end,
            size,
            resize,
        };
        Ok((journal, records))
    }

    /// Whether the journal file has another size than it should (it gets
    /// it at the next [`Journal::reset`]).
    pub fn needs_resize(&self) -> bool {
        self.resize
    }

    /// The journal's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The largest message data that travels inside this journal: an
    /// eighth of it, at most [`INLINE_DATA_MAX`].
    pub fn inline_max(&self) -> u64 {
        (self.size / 8).min(INLINE_DATA_MAX)
    }

    /// Whether `record` still fits.
    pub fn fits(&self, record: &Record) -> bool {
        !self.resize && self.end + record.encoded_len() <= self.size
    }

    /// Bytes used by records.
    pub fn used(&self) -> u64 {
        self.end - HEADER_SIZE
    }

    /// Append a record (not yet durable: see [`Journal::sync`]). The
    /// caller checked [`Journal::fits`].
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        if !self.fits(record) {
            return Err(std::io::Error::other("journal full"));
        }
        let bytes = record.encode(self.generation, self.next_seq);
        self.file.write_all_at(&bytes, self.end)?;
        self.end += bytes.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Make every appended record durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Empty the journal: the caller made every operation it records
    /// durable in the queue files first.
    pub fn reset(&mut self) -> std::io::Result<()> {
        let generation = self.generation.wrapping_add(1);
        if self.resize {
            initialise(&self.file, &self.path, generation, self.size)?;
            self.resize = false;
        } else {
            self.file.write_all_at(&header_bytes(generation), 0)?;
            self.file.sync_data()?;
        }
        self.generation = generation;
        self.next_seq = 0;
        self.end = HEADER_SIZE;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_BYTES: u64 = 32 * MIB;
    const TEST_SIZE: JournalSize = JournalSize::Bytes(TEST_BYTES);

    fn w(id: &str, data: Option<&[u8]>) -> Record {
        Record::Write {
            id: id.into(),
            env: format!("env of {id}").into_bytes(),
            data: data.map(|d| d.to_vec()),
        }
    }

    /// A journal of another size (an older version's) is replayed as it
    /// is, takes no record before its reset, and has the right size after.
    #[test]
    fn journal_of_another_size_is_read_then_resized() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, _) = Journal::open(&p, TEST_SIZE).unwrap();
        let want = vec![w("a", Some(b"hello\r\n")), w("b", None)];
        for r in &want {
            j.append(r).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(TEST_BYTES / 2).unwrap();
        drop(f);
        let (mut j, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert_eq!(recs, want);
        assert!(j.needs_resize());
        assert!(!j.fits(&w("c", None)));
        j.reset().unwrap();
        assert!(!j.needs_resize());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), TEST_BYTES);
        j.append(&w("c", None)).unwrap();
        j.sync().unwrap();
        drop(j);
        let (_, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert_eq!(recs, vec![w("c", None)]);
    }

    #[test]
    fn records_survive_reopen_and_reset_empties() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert!(recs.is_empty());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), TEST_BYTES);
        let want = vec![
            w("a", Some(b"hello\r\n")),
            w("b", None),
            Record::Remove { id: "a".into() },
        ];
        for r in &want {
            j.append(r).unwrap();
        }
        j.sync().unwrap();
        drop(j);
        let (mut j, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert_eq!(recs, want);
        j.reset().unwrap();
        // One record of the new generation after the reset; the old ones
        // beyond it must not come back.
        j.append(&w("c", None)).unwrap();
        drop(j);
        let (_, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert_eq!(recs, vec![w("c", None)]);
    }

    #[test]
    fn a_torn_record_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, _) = Journal::open(&p, TEST_SIZE).unwrap();
        j.append(&w("a", Some(b"x"))).unwrap();
        let second_at = j.end;
        j.append(&w("b", Some(b"yyyy"))).unwrap();
        j.append(&w("c", None)).unwrap();
        drop(j);
        // Corrupt one byte of the second record's payload.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"Z", second_at + RECORD_HEAD as u64 + 1).unwrap();
        let (j, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert_eq!(recs, vec![w("a", Some(b"x"))]);
        // New records go right after the last good one.
        assert_eq!(j.end, second_at);
    }

    #[test]
    fn a_bad_header_means_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, _) = Journal::open(&p, TEST_SIZE).unwrap();
        j.append(&w("a", None)).unwrap();
        drop(j);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"XX", 0).unwrap();
        let (_, recs) = Journal::open(&p, TEST_SIZE).unwrap();
        assert!(recs.is_empty());
    }

    /// The automatic size follows the free space within its bounds; a
    /// journal made with it keeps its size when opened again, and a size
    /// set by the operator wins.
    #[test]
    fn automatic_size_fits_the_disk() {
        assert_eq!(automatic_size(40 * MIB), MIN_AUTO_SIZE);
        assert_eq!(automatic_size(160 * MIB + 5), 10 * MIB);
        assert_eq!(automatic_size(100 * 1024 * MIB), MAX_AUTO_SIZE);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (j, _) = Journal::open(&p, JournalSize::Automatic).unwrap();
        let made = j.size();
        assert!((MIN_AUTO_SIZE..=MAX_AUTO_SIZE).contains(&made));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), made);
        drop(j);
        let (j, _) = Journal::open(&p, JournalSize::Automatic).unwrap();
        assert!(!j.needs_resize());
        drop(j);
        let (mut j, _) = Journal::open(&p, JournalSize::Bytes(2 * MIB)).unwrap();
        assert!(j.needs_resize() || made == 2 * MIB);
        j.reset().unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 * MIB);
        assert_eq!(j.inline_max(), 256 * 1024);
        assert_eq!(JournalSize::from_mb(0), JournalSize::Automatic);
        assert_eq!(JournalSize::from_mb(8), JournalSize::Bytes(8 * MIB));
    }

    #[test]
    fn full_journal_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(&dir.path().join("journal"), TEST_SIZE).unwrap();
        let big = w("big", Some(&vec![7u8; (TEST_BYTES / 3) as usize]));
        j.append(&big).unwrap();
        j.append(&big).unwrap();
        assert!(!j.fits(&big));
        assert!(j.append(&big).is_err());
        j.reset().unwrap();
        assert!(j.fits(&big));
    }
}
