//! Durability checked by the order of system calls, from an `strace -f`
//! log of tambod (`-xx -yy`, one file for every process): every `250 …
//! queued as ID` written to a client comes after an `fdatasync` of the
//! queue journal that began after the journal record of that message was
//! written (and, for a message too large for the journal, after an
//! `fdatasync` of its data file); and no file of a message is removed
//! before its removal record is durable in the same way. A `syncfs` of the
//! queue counts as a flush of everything before it.
//!
//! The strace log's line order is the order in which strace saw the
//! events: a flush that ends before a `250` is written (the reply is sent
//! only after the flush returns, by another process) is logged first.

use std::collections::HashMap;

/// One system call, as strace logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Line of its entry.
    pub entered: usize,
    /// Line of its exit (the same line when strace logged it in one).
    pub exited: usize,
    /// Process (thread) ID.
    pub pid: u32,
    /// System call name.
    pub name: String,
    /// The first argument's decoded file descriptor (`-yy`): a path, or
    /// `TCP:[…]`; empty when it is not an fd.
    pub fd: String,
    /// Every string argument, decoded (`-xx`), in order.
    pub strings: Vec<Vec<u8>>,
    /// The return value (`-1` for an error).
    pub ret: i64,
}

/// Parse a whole `strace -f -xx -yy` log.
pub fn parse(log: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    // Unfinished calls by pid: (entry line, name, text so far).
    let mut open: HashMap<u32, (usize, String, String)> = HashMap::new();
    for (n, line) in log.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((entered, open_name, head)) = open.remove(&pid)
                && open_name == name
                && let Some(call) = finish(pid, entered, n, name, &format!("{head}{tail}"))
            {
                calls.push(call);
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(head) = args.strip_suffix(" <unfinished ...>") {
            open.insert(pid, (n, name.to_string(), head.to_string()));
        } else if let Some(call) = finish(pid, n, n, name, args) {
            calls.push(call);
        }
    }
    calls
}

/// Build a call from its whole argument text (`args) = ret …`, the `=`
/// possibly padded).
fn finish(pid: u32, entered: usize, exited: usize, name: &str, text: &str) -> Option<Call> {
    // strace pads short calls: `)             = 43`.
    let (args, ret) = text.rsplit_once(" = ")?;
    let args = args.trim_end().strip_suffix(')')?;
    let ret = ret.split_whitespace().next()?.parse().unwrap_or(-1);
    Some(Call {
        entered,
        exited,
        pid,
        name: name.to_string(),
        fd: first_fd(args),
        strings: strings(args),
        ret,
    })
}

/// `12</a/path>` at the start of the arguments: `/a/path` (`-xx` writes
/// paths as `\x..` escapes too; socket descriptions stay as they are).
fn first_fd(args: &str) -> String {
    let digits = args.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !args[digits..].starts_with('<') {
        return String::new();
    }
    let inner = &args[digits + 1..];
    // Escaped paths hold no '>', and socket descriptions end at "]>".
    let text = match inner.find("]>") {
        Some(i) if inner.starts_with(|c: char| c.is_ascii_uppercase()) => &inner[..=i],
        _ => inner.split_once('>').map(|(p, _)| p).unwrap_or_default(),
    };
    String::from_utf8_lossy(&unescape(text)).into_owned()
}

/// Decode `\xNN` escapes; other bytes stay.
fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(v) = text.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every `"\x..\x.."` string argument, decoded.
fn strings(args: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let b = args.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i + 1;
        let end = start + args[start..].find('"').unwrap_or(args.len() - start);
        // -xx escapes every byte, quotes included: the next quote ends it.
        out.push(unescape(&args[start..end]));
        i = end + 1;
    }
    out
}

/// A journal record's head, from the bytes written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHead {
    /// 1: envelope only, 2: envelope and data, 3: removal.
    pub kind: u8,
    /// Queue ID.
    pub id: String,
}

/// The head of a journal record (`TJR1`, generation, sequence, kind,
/// lengths, ID), if `bytes` starts with one.
pub fn record_head(bytes: &[u8]) -> Option<RecordHead> {
    if bytes.len() < 35 || &bytes[..4] != b"TJR1" {
        return None;
    }
    let kind = bytes[20];
    let id_len = u16::from_le_bytes([bytes[21], bytes[22]]) as usize;
    let id = bytes.get(35..35 + id_len)?;
    Some(RecordHead {
        kind,
        id: String::from_utf8_lossy(id).into_owned(),
    })
}

/// What the log shows, in the form the checks need.
#[derive(Debug, Default)]
pub struct Facts {
    /// (line of entry, ID) of every `250` that names a queue ID.
    pub acks: Vec<(usize, String)>,
    /// Journal records: (exit line, head).
    pub records: Vec<(usize, RecordHead)>,
    /// Completed flushes of the journal or the queue (`syncfs`): (entry
    /// line, exit line).
    pub journal_flushes: Vec<(usize, usize)>,
    /// Completed `fdatasync`/`fsync` of data files: (ID, entry, exit).
    pub data_flushes: Vec<(String, usize, usize)>,
    /// (entry line, ID) of every call that removes a message's file:
    /// `unlink` of `<id>.env`/`<id>.data`, or a rename away from one.
    pub removals: Vec<(usize, String)>,
}

/// The queue ID of a path `…/queue/<id>.env` or `…/queue/<id>.data`.
fn queue_file_id(path: &[u8], queue_dir: &str) -> Option<String> {
    let path = std::str::from_utf8(path).ok()?;
    let name = path.strip_prefix(queue_dir)?.strip_prefix('/')?;
    let id = name.strip_suffix(".env").or_else(|| name.strip_suffix(".data"))?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| id.to_string())
}

/// Sort the calls of a log into [`Facts`]. `queue_dir` is the absolute
/// path of `data_dir/queue`.
pub fn facts(calls: &[Call], queue_dir: &str) -> Facts {
    let journal = format!("{queue_dir}/journal");
    let mut f = Facts::default();
    for c in calls {
        if c.ret < 0 {
            continue;
        }
        match c.name.as_str() {
            "write" | "writev" | "sendto" | "sendmsg" if c.fd.starts_with("TCP") => {
                let text: Vec<u8> = c.strings.concat();
                let text = String::from_utf8_lossy(&text);
                for line in text.split("\r\n") {
                    if line.starts_with("250")
                        && let Some(id) = line.split("queued as ").nth(1)
                    {
                        let id: String = id.chars().take_while(char::is_ascii_alphanumeric).collect();
                        f.acks.push((c.entered, id));
                    }
                }
            }
            "pwrite64" | "write" if c.fd == journal => {
                if let Some(head) = c.strings.first().and_then(|s| record_head(s)) {
                    f.records.push((c.exited, head));
                }
            }
            "fdatasync" | "fsync" if c.fd == journal => f.journal_flushes.push((c.entered, c.exited)),
            "syncfs" if c.fd.starts_with(queue_dir) => f.journal_flushes.push((c.entered, c.exited)),
            "fdatasync" | "fsync" => {
                if let Some(id) = queue_file_id(c.fd.as_bytes(), queue_dir) {
                    f.data_flushes.push((id, c.entered, c.exited));
                }
            }
            "unlink" | "unlinkat" | "rename" | "renameat" | "renameat2" => {
                // The first path is the one that goes away; a relative one
                // is taken relative to the queue directory.
                if let Some(p) = c.strings.first() {
                    let p = if p.starts_with(b"/") {
                        p.clone()
                    } else {
                        [queue_dir.as_bytes(), b"/", p].concat()
                    };
                    if let Some(id) = queue_file_id(&p, queue_dir) {
                        f.removals.push((c.entered, id));
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// A broken promise found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A `250` for a message no journal record names.
    AckWithoutRecord(String),
    /// A `250` before any flush that covers the message's record.
    AckBeforeFlush(String),
    /// A `250` for a message whose data is outside the journal, before
    /// its data file was flushed.
    AckBeforeDataFlush(String),
    /// A message's file removed before its removal record was durable.
    RemovedBeforeFlush(String),
}

/// Check every acknowledgement and every removal in `f`.
pub fn check(f: &Facts) -> Vec<Violation> {
    let mut out = Vec::new();
    // A flush covers a record when it begins after the record is written.
    let flushed_by = |written: usize, before: usize| {
        f.journal_flushes
            .iter()
            .any(|&(start, end)| start > written && end < before)
    };
    for (line, id) in &f.acks {
        let writes: Vec<&(usize, RecordHead)> = f
            .records
            .iter()
            .filter(|(at, h)| h.id == *id && h.kind != 3 && at < line)
            .collect();
        let Some((written, head)) = writes.first() else {
            out.push(Violation::AckWithoutRecord(id.clone()));
            continue;
        };
        if !flushed_by(*written, *line) {
            out.push(Violation::AckBeforeFlush(id.clone()));
        }
        if head.kind == 1 && !f.data_flushes.iter().any(|(d, _, end)| d == id && end < line) {
            out.push(Violation::AckBeforeDataFlush(id.clone()));
        }
    }
    for (line, id) in &f.removals {
        let removed = f
            .records
            .iter()
            .filter(|(at, h)| h.id == *id && h.kind == 3 && at < line)
            .any(|(at, _)| flushed_by(*at, *line));
        // Files of a message that was never acknowledged (no record) are
        // not the journal's business.
        let known = f.records.iter().any(|(_, h)| h.id == *id);
        if known && !removed {
            out.push(Violation::RemovedBeforeFlush(id.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
    }

    fn record(kind: u8, id: &str) -> String {
        let mut r = b"TJR1".to_vec();
        r.extend_from_slice(&[0; 16]);
        r.push(kind);
        r.extend_from_slice(&(id.len() as u16).to_le_bytes());
        r.extend_from_slice(&[0; 12]);
        r.extend_from_slice(id.as_bytes());
        hex(&r)
    }

    const Q: &str = "/d/queue";

    /// A log in strace's shape: the committer (pid 20) writes and flushes,
    /// smtpd (pid 30) answers, and the files go.
    fn log(flush_before_ack: bool, flush_before_removal: bool) -> String {
        let ack = format!(
            "30 sendto(9<TCP:[127.0.0.1:25->127.0.0.1:4000]>, \"{}\", 36, MSG_NOSIGNAL, NULL, 0) = 36",
            hex(b"250 2.0.0 OK: queued as Abc123\r\n")
        );
        let mut lines = vec![format!(
            "20 pwrite64(7<{}>, \"{}\"..., 900, 4096) = 900",
            hex(b"/d/queue/journal"),
            record(2, "Abc123")
        )];
        if flush_before_ack {
            lines.push("20 fdatasync(7</d/queue/journal> <unfinished ...>".into());
            lines.push("31 futex(0x1, FUTEX_WAKE, 1) = 0".into());
            lines.push("20 <... fdatasync resumed>)        = 0".into());
            lines.push(ack);
        } else {
            lines.push(ack);
            lines.push("20 fdatasync(7</d/queue/journal>) = 0".into());
        }
        lines.push(format!(
            "20 pwrite64(7</d/queue/journal>, \"{}\", 60, 5000) = 60",
            record(3, "Abc123")
        ));
        let rename = format!(
            "20 rename(\"{}\", \"{}\") = 0",
            hex(b"/d/queue/Abc123.data"),
            hex(b"/d/queue/spare/7")
        );
        if flush_before_removal {
            lines.push("20 fdatasync(7</d/queue/journal>) = 0".into());
            lines.push(rename);
        } else {
            lines.push(rename);
            lines.push("20 fdatasync(7</d/queue/journal>) = 0".into());
        }
        lines.join("\n")
    }

    #[test]
    fn a_well_ordered_log_passes() {
        let f = facts(&parse(&log(true, true)), Q);
        assert_eq!(f.acks, vec![(4, "Abc123".to_string())]);
        assert_eq!(f.records.len(), 2);
        assert_eq!(f.journal_flushes[0], (1, 3), "entry and exit of the split call");
        assert_eq!(f.removals, vec![(7, "Abc123".to_string())]);
        assert_eq!(check(&f), vec![]);
    }

    #[test]
    fn a_missing_or_late_flush_is_found() {
        let f = facts(&parse(&log(false, true)), Q);
        assert_eq!(check(&f), vec![Violation::AckBeforeFlush("Abc123".into())]);
        let f = facts(&parse(&log(true, false)), Q);
        assert_eq!(check(&f), vec![Violation::RemovedBeforeFlush("Abc123".into())]);
        let no_sync: String = log(true, true)
            .lines()
            .filter(|l| !l.contains("fdatasync"))
            .collect::<Vec<_>>()
            .join("\n");
        let f = facts(&parse(&no_sync), Q);
        assert_eq!(
            check(&f),
            vec![
                Violation::AckBeforeFlush("Abc123".into()),
                Violation::RemovedBeforeFlush("Abc123".into())
            ]
        );
    }

    #[test]
    fn data_outside_the_journal_needs_its_own_flush() {
        let text = log(true, true).replacen(&record(2, "Abc123"), &record(1, "Abc123"), 1);
        let f = facts(&parse(&text), Q);
        assert_eq!(check(&f), vec![Violation::AckBeforeDataFlush("Abc123".into())]);
        let synced = format!("20 fdatasync(8</d/queue/Abc123.data>) = 0\n{text}");
        assert_eq!(check(&facts(&parse(&synced), Q)), vec![]);
    }
}
