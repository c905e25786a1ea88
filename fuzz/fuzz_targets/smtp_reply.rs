//! deliverd's SMTP client reply reader (remote servers are untrusted):
//! bounded line length and count, the same result whatever the read sizes,
//! exactly one reply consumed, a reply that formats and reads back equal,
//! and the EHLO extension parser on whatever was read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tambo_deliverd::remote::client::{Extensions, Reply, SessionLimits, read_reply};

#[path = "common.rs"]
mod common;

fn limits() -> SessionLimits {
    SessionLimits {
        max_line: 512,
        max_lines: 20,
        ..SessionLimits::default()
    }
}

/// Read one reply with reads of at most `cap` bytes; the reply and what
/// is left unread.
fn read(input: &[u8], cap: usize, limits: &SessionLimits) -> (Result<Reply, String>, Vec<u8>) {
    common::read_with(input, cap, async |r| {
        read_reply(r, limits, "fuzz").await.map_err(|e| e.to_string())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap, input)) = data.split_first() else {
        return;
    };
    let limits = limits();
    let (whole, rest_whole) = read(input, 1 << 16, &limits);
    let (split, rest_split) = read(input, cap as usize % 17 + 1, &limits);
    let Ok(reply) = whole else {
        // Errors agree too (the error text names the same problem), except
        // that an over-long line may be noticed at different points.
        assert!(split.is_err());
        return;
    };
    assert_eq!(split.as_ref(), Ok(&reply));
    assert_eq!(rest_whole, rest_split);
    // Exactly one reply was consumed: its lines are a prefix of the input.
    assert!(input.ends_with(&rest_whole));
    assert!((200..=599).contains(&reply.code));
    assert!(!reply.lines.is_empty() && reply.lines.len() <= limits.max_lines);
    for l in &reply.lines {
        assert!(!l.contains('\n'));
    }
    assert!(reply.summary().chars().count() <= 4 + 300);
    // Format and read back.
    let mut wire = String::new();
    for (i, l) in reply.lines.iter().enumerate() {
        let sep = if i + 1 == reply.lines.len() { ' ' } else { '-' };
        wire.push_str(&format!("{}{sep}{l}\r\n", reply.code));
    }
    let roomy = SessionLimits {
        max_line: 16 * 1024,
        ..limits.clone()
    };
    let (again, rest) = read(wire.as_bytes(), 1 << 16, &roomy);
    assert!(rest.is_empty());
    // A final line "250 " reads back as text "" like "250" does.
    assert_eq!(again, Ok(reply.clone()));
    let ext = Extensions::parse(&reply);
    assert!(ext.auth.len() <= 32);
    assert!(ext.auth.iter().all(|m| !m.chars().any(|c| c.is_ascii_lowercase())));
});
