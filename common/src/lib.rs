//! Shared code for tambo: configuration (chasquid.conf), the user
//! database, name normalisation, the protobuf text-format parser and
//! chasquid's queue items.

pub mod aliases;
pub mod chasquid_queue;
pub mod config;
pub mod dates;
pub mod dkimkey;
pub mod domaininfo;
pub mod gofmt;
pub mod lineend;
pub mod names;
pub mod relayauth;
pub mod textproto;
pub mod unixsock;
pub mod userdb;

/// Whether an I/O error says the disk (or a quota) is full. SMTP then
/// answers [`STORAGE_FULL`] (RFC 5321's 452, RFC 3463's 4.3.1 "mail system
/// full"), which tells the client and the operator what is wrong, rather
/// than a generic 451.
pub fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The reply to a transaction refused because the disk is full.
pub const STORAGE_FULL: (u16, &str, &str) = (452, "4.3.1", "Insufficient system storage, try again later");

/// [`STORAGE_FULL`] as one reply line.
pub fn storage_full_line() -> String {
    let (code, enhanced, text) = STORAGE_FULL;
    format!("{code} {enhanced} {text}")
}

/// Whether `s` can be a queue ID of queued's (letters and digits, at most
/// 64): safe in a path and in one word of a log record.
pub fn is_queue_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}
