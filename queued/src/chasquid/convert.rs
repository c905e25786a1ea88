//! Turning one of chasquid's queue items into a queue entry of ours: its
//! ID, its recipients' routes and states, its data's line endings.

use std::io::Write;

use tambo_common::chasquid_queue::{self, Item, RcptStatus, RcptType};
use tambo_common::names::{normalize_address, split_address};
use tambo_ipc::proto::RcptRoute;

use crate::entry::{ENTRY_VERSION, QueueEntry, RcptEntry, RcptState};
use crate::resolve::lookup_user;

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
