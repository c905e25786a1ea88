//! queued's DSN builder on untrusted parts: the remote server's error
//! text (its SMTP reply) and the original message's header section. The
//! status found is a valid RFC 3463 code, the quoted reply is one bounded
//! printable line, the headers kept are bounded complete lines, and no
//! input can add a line or a MIME boundary to the notification.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tambo_ipc::proto::RcptRoute;

#[path = "../../queued/src/dsn.rs"]
#[allow(dead_code)]
mod dsn;
#[path = "../../queued/src/entry.rs"]
#[allow(dead_code)]
mod entry;
#[path = "../../queued/src/received.rs"]
#[allow(dead_code)]
mod received;
/// queued's store, of which the DSN only takes a fresh ID.
mod store {
    pub fn new_id() -> String {
        "FUZZ0FUZZ1FUZZ2FUZZ3".into()
    }
}

use entry::{QueueEntry, RcptEntry, RcptState};

fn rcpt(last_error: &str, gave_up: bool) -> RcptEntry {
    RcptEntry {
        address: "bob@far.example".into(),
        original: "bob@far.example".into(),
        route: RcptRoute::Local {
            user: "bob".into(),
            domain: "far.example".into(),
        },
        sender: None,
        state: RcptState::Failed,
        attempts: 3,
        last_error: last_error.to_string(),
        next_attempt: 0,
        last_attempt: 1_750_000_000,
        gave_up,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (err, message) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let err = String::from_utf8_lossy(err);
    let r = rcpt(&err, flags & 1 == 1);
    let (status, diag) = dsn::status_of(&r);
    let parts: Vec<&str> = status.split('.').collect();
    assert_eq!(parts.len(), 3, "{status}");
    assert!(
        parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    );
    assert!(status.starts_with("4.") || status.starts_with("5."));
    if let Some(d) = &diag {
        assert!(d.chars().count() <= 600 && !d.chars().any(char::is_control));
    }

    let prefix = "Received: from x\r\n";
    let headers = dsn::original_headers(prefix, &mut &message[..]);
    assert!(headers.len() <= dsn::MAX_ORIGINAL_HEADERS);
    assert!(headers.is_empty() || headers.ends_with(b"\n"));
    let mut all = prefix.as_bytes().to_vec();
    all.extend_from_slice(message);
    assert!(all.starts_with(&headers));

    let entry = QueueEntry {
        version: entry::ENTRY_VERSION,
        id: "q1".into(),
        from: "alice@example.com".into(),
        created: 1_750_000_000,
        header_prefix: String::new(),
        rcpts: vec![r, rcpt("250 ok", false)],
        remote_ip: "192.0.2.1".into(),
        helo: "h".into(),
        auth_user: None,
        data_size: message.len() as u64,
        held: false,
        is_dsn: false,
        dsn_of: None,
    };
    let bare = dsn::build_dsn(&entry, "mx.example.com", 1_750_000_100, b"");
    let text = String::from_utf8(bare.clone()).expect("the DSN is UTF-8");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert!(lines.iter().all(|l| !l.contains(['\r', '\n'])));
    let boundary = "--=_tambo_FUZZ0FUZZ1FUZZ2FUZZ3";
    assert_eq!(lines.iter().filter(|l| **l == boundary).count(), 3);
    assert_eq!(lines.iter().filter(|l| **l == format!("{boundary}--")).count(), 1);
    // With the headers: the same message with them inserted before the
    // closing boundary.
    let full = dsn::build_dsn(&entry, "mx.example.com", 1_750_000_100, &headers);
    let close = format!("\r\n{boundary}--\r\n");
    assert!(full.ends_with(close.as_bytes()));
    let head = &bare[..bare.len() - close.len()];
    if headers.is_ascii() {
        assert_eq!(&full[..head.len()], head);
        assert_eq!(&full[head.len()..full.len() - close.len()], &headers[..]);
    }
});
