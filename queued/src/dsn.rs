//! Delivery status notifications (RFC 3464): when a message is finished
//! and some of its recipients failed for good (or were given up on), its
//! sender gets a `multipart/report; report-type=delivery-status` with a
//! human-readable part, a `message/delivery-status` part (or
//! `message/global-delivery-status`, RFC 6533, when an address is not
//! ASCII) and the original message's headers.
//!
//! Never for the null sender `<>`, and never for a DSN: a notification can
//! not start a loop of notifications.

use std::io::Read;

use crate::entry::{QueueEntry, RcptEntry, RcptState};
use crate::received::rfc5322_date;
use crate::store::new_id;

/// At most this much of the original header section is returned.
pub const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;
/// Longest error text quoted for one recipient.
const MAX_ERROR: usize = 600;

/// Whether `entry`, now finished, calls for a DSN.
pub fn wants_dsn(entry: &QueueEntry) -> bool {
    !entry.from.is_empty() && !entry.is_dsn && entry.rcpts.iter().any(|r| r.state == RcptState::Failed)
}

/// The queue ID of the DSN reporting on message `id`. Derived from it
/// (a random ID has 20 characters, so the two never collide), so every
/// attempt to queue that DSN, before or after a crash, writes the same entry.
pub fn dsn_id(id: &str) -> String {
    let base: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).take(61).collect();
    format!("{base}DSN")
}

/// The RFC 3463 status and, when the error was an SMTP reply, the
/// diagnostic code, for a failed recipient.
pub fn status_of(r: &RcptEntry) -> (String, Option<String>) {
    let reply = find_smtp_reply(&r.last_error);
    if r.gave_up {
        return ("4.4.7".into(), reply.map(|(_, text)| text));
    }
    match reply {
        Some((status, text)) if status.starts_with('5') => (status, Some(text)),
        Some((_, text)) => ("5.0.0".into(), Some(text)),
        None if r.last_error.starts_with("no such user") => ("5.1.1".into(), None),
        None => ("5.0.0".into(), None),
    }
}

/// Find `NNN X.Y.Z text` (an SMTP reply with an enhanced status code) in an
/// error message: (status, the reply from its code on).
fn find_smtp_reply(err: &str) -> Option<(String, String)> {
    let b = err.as_bytes();
    for i in 0..b.len() {
        // Remote replies may hold any UTF-8: only start at a character.
        if !err.is_char_boundary(i) || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &err[i..];
        let rb = rest.as_bytes();
        if rb.len() < 10
            || !matches!(rb[0], b'4' | b'5')
            || !rb[1].is_ascii_digit()
            || !rb[2].is_ascii_digit()
            || !matches!(rb[3], b' ' | b'-')
            || rb[4] != rb[0]
            || rb[5] != b'.'
        {
            continue;
        }
        let status: String = rest[4..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let parts: Vec<&str> = status.split('.').collect();
        if parts.len() == 3 && parts.iter().all(|p| (1..=3).contains(&p.len())) {
            return Some((status, clean(rest)));
        }
    }
    None
}

/// One printable line, bounded.
fn clean(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ERROR)
        .collect();
    one.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The header section of a message (`prefix` then the data file's header
/// lines up to the blank line), cut at a line boundary to at most
/// [`MAX_ORIGINAL_HEADERS`] bytes.
pub fn original_headers(prefix: &str, data: &mut impl Read) -> Vec<u8> {
    let mut out = prefix.as_bytes().to_vec();
    let mut body = Vec::new();
    let _ = data.take(MAX_ORIGINAL_HEADERS as u64).read_to_end(&mut body);
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(body.len());
    out.extend_from_slice(&body[..end]);
    if out.len() > MAX_ORIGINAL_HEADERS {
        out.truncate(MAX_ORIGINAL_HEADERS);
    }
    // End on a complete line.
    match out.iter().rposition(|b| *b == b'\n') {
        Some(p) => out.truncate(p + 1),
        None => out.clear(),
    }
    out
}

fn address_field(addr: &str) -> String {
    if addr.is_ascii() {
        format!("rfc822; {addr}")
    } else {
        format!("utf-8; {addr}")
    }
}

/// Build the DSN for a finished entry (see [`wants_dsn`]) as a complete
/// message with CRLF line endings.
pub fn build_dsn(entry: &QueueEntry, hostname: &str, now: u64, headers: &[u8]) -> Vec<u8> {
    let failed: Vec<&RcptEntry> = entry.rcpts.iter().filter(|r| r.state == RcptState::Failed).collect();
    let global = !entry.from.is_ascii() || failed.iter().any(|r| !r.address.is_ascii() || !r.original.is_ascii());
    let boundary = format!("=_tambo_{}", new_id());
    let date = rfc5322_date(now);
    let mut m = String::new();
    m.push_str(&format!("From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"));
    m.push_str(&format!("To: <{}>\r\n", entry.from));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{}.dsn@{hostname}>\r\n", new_id()));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated delivery status notification.\r\n");

    // 1. For people.
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    m.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    m.push_str(&format!(
        "This is the mail system at {hostname}.\r\n\r\n\
         Your message (queue ID {}) could not be delivered to the\r\n\
         following recipient(s):\r\n\r\n",
        entry.id
    ));
    for r in &failed {
        m.push_str(&format!("  <{}>", r.address));
        if r.original != r.address {
            m.push_str(&format!(" (sent to <{}>)", r.original));
        }
        m.push_str("\r\n");
        let why = if r.gave_up {
            format!("Could not be delivered in time; gave up. {}", clean(&r.last_error))
        } else {
            clean(&r.last_error)
        };
        m.push_str(&format!("    {why}\r\n\r\n"));
    }
    m.push_str("The headers of your message are attached.\r\n");

    // 2. For programs.
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    if global {
        m.push_str("Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    } else {
        m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    }
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Tambo-Queue-ID: {}\r\n", entry.id));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(entry.created)));
    for r in &failed {
        let (status, diag) = status_of(r);
        m.push_str("\r\n");
        m.push_str(&format!("Final-Recipient: {}\r\n", address_field(&r.address)));
        if r.original != r.address {
            m.push_str(&format!("Original-Recipient: {}\r\n", address_field(&r.original)));
        }
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {status}\r\n"));
        if let Some(d) = diag {
            m.push_str(&format!("Diagnostic-Code: smtp; {d}\r\n"));
        }
        if r.last_attempt > 0 {
            m.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(r.last_attempt)));
        }
    }

    // 3. The original headers.
    m.push_str(&format!("\r\n--{boundary}\r\n"));
    let mut out = m.into_bytes();
    if headers.is_ascii() {
        out.extend_from_slice(b"Content-Type: text/rfc822-headers\r\n\r\n");
    } else {
        out.extend_from_slice(b"Content-Type: message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
    }
    out.extend_from_slice(headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ENTRY_VERSION;
    use tambo_ipc::proto::RcptRoute;

    fn rcpt(addr: &str, state: RcptState, err: &str) -> RcptEntry {
        RcptEntry {
            address: addr.into(),
            sender: None,
            original: addr.into(),
            route: RcptRoute::Remote { via: vec![] },
            state,
            attempts: 1,
            last_error: err.into(),
            next_attempt: 0,
            last_attempt: 1_795_608_000,
            gave_up: false,
        }
    }

    fn entry(rcpts: Vec<RcptEntry>) -> QueueEntry {
        QueueEntry {
            version: ENTRY_VERSION,
            id: "QID".into(),
            from: "sender@x.org".into(),
            created: 1_795_600_000,
            header_prefix: String::new(),
            rcpts,
            remote_ip: String::new(),
            helo: String::new(),
            auth_user: None,
            data_size: 0,
            held: false,
            is_dsn: false,
            dsn_of: None,
        }
    }

    /// Found by the `dsn` fuzz target: a reply with a character of more
    /// than one byte made the search slice inside it and panic.
    #[test]
    fn non_ascii_error_text() {
        let r = rcpt("a@b", RcptState::Failed, "$\u{492}");
        assert_eq!(status_of(&r), ("5.0.0".into(), None));
        let r = rcpt("a@b", RcptState::Failed, "mx said: «550 5.1.1 é inconnu»");
        assert_eq!(status_of(&r), ("5.1.1".into(), Some("550 5.1.1 é inconnu»".into())));
    }

    #[test]
    fn statuses() {
        let mut r = rcpt("a@b", RcptState::Failed, "mda failed (exit status: 1): oops");
        assert_eq!(status_of(&r), ("5.0.0".into(), None));
        r.last_error = "remote said: 550 5.1.1 <a@b>: no such\r\nuser".into();
        assert_eq!(
            status_of(&r),
            ("5.1.1".into(), Some("550 5.1.1 <a@b>: no such user".into()))
        );
        r.last_error = "554-5.7.1 blocked".into();
        assert_eq!(status_of(&r).0, "5.7.1");
        r.last_error = "at 1550 5.1.1 x".into();
        assert_eq!(status_of(&r).0, "5.0.0");
        r.last_error = "no such user: x@y (alias of z@y)".into();
        assert_eq!(status_of(&r).0, "5.1.1");
        r.gave_up = true;
        r.last_error = "gave up; last error: 451 4.3.0 busy".into();
        assert_eq!(status_of(&r), ("4.4.7".into(), Some("451 4.3.0 busy".into())));
    }

    #[test]
    fn wanted() {
        let mut e = entry(vec![rcpt("a@b", RcptState::Delivered, "")]);
        assert!(!wants_dsn(&e));
        e.rcpts.push(rcpt("c@d", RcptState::Failed, "x"));
        assert!(wants_dsn(&e));
        e.is_dsn = true;
        assert!(!wants_dsn(&e));
        e.is_dsn = false;
        e.from.clear();
        assert!(!wants_dsn(&e));
    }

    #[test]
    fn dsn_ids_are_derived_and_valid() {
        let id = crate::store::new_id();
        let d = dsn_id(&id);
        assert_eq!(d, format!("{id}DSN"));
        assert_eq!(dsn_id(&id), d);
        assert!(crate::store::valid_id(&d));
        assert_ne!(dsn_id(&crate::store::new_id()), d);
        assert!(crate::store::valid_id(&dsn_id(&"x".repeat(64))));
    }

    #[test]
    fn headers_are_bounded() {
        let msg = b"Subject: a\r\nX: b\r\n\r\nbody\r\nmore\r\n";
        assert_eq!(
            original_headers("Received: r\r\n", &mut &msg[..]),
            b"Received: r\r\nSubject: a\r\nX: b\r\n"
        );
        let big = format!("Subject: {}\r\nX: y\r\n", "a".repeat(MAX_ORIGINAL_HEADERS));
        let h = original_headers("R: 1\r\n", &mut big.as_bytes());
        assert_eq!(h, b"R: 1\r\n");
    }

    #[test]
    fn structure() {
        let mut e = entry(vec![
            rcpt("ok@y.org", RcptState::Delivered, ""),
            rcpt("bad@y.org", RcptState::Failed, "550 5.1.1 unknown"),
        ]);
        e.rcpts[1].original = "list@y.org".into();
        let d = String::from_utf8(build_dsn(&e, "mx.y.org", 1_795_608_000, b"Subject: hi\r\n")).unwrap();
        assert!(d.contains("From: Mail Delivery System <MAILER-DAEMON@mx.y.org>\r\n"));
        assert!(d.contains("To: <sender@x.org>\r\n"));
        assert!(d.contains("multipart/report; report-type=delivery-status;"));
        assert!(d.contains("Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.y.org\r\n"));
        assert!(d.contains("Arrival-Date: Wed, 25 Nov 2026 09:46:40 +0000\r\n"));
        assert!(d.contains(
            "Final-Recipient: rfc822; bad@y.org\r\nOriginal-Recipient: rfc822; list@y.org\r\n\
             Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\
             Last-Attempt-Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n"
        ));
        assert!(!d.contains("ok@y.org"));
        assert!(d.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n"));
        let boundary = d.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(d.matches(&format!("--{boundary}\r\n")).count(), 3);
        assert!(d.ends_with(&format!("--{boundary}--\r\n")));
        assert!(d.lines().all(|l| l.len() < 998));
        // Non-ASCII addresses need the global types.
        e.rcpts[1].address = "ñandú@y.org".into();
        let d = String::from_utf8(build_dsn(&e, "mx.y.org", 0, "Subject: ñ\r\n".as_bytes())).unwrap();
        assert!(d.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(d.contains("Final-Recipient: utf-8; ñandú@y.org\r\n"));
        assert!(d.contains("Content-Type: message/global-headers\r\n"));
    }
}
