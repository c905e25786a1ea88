//! deliverd's LMTP reply reader (the LMTP server's answers): bounded text,
//! the same result whatever the read sizes, and a reply that formats and
//! reads back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tambo_deliverd::lmtp::{MAX_LINE, MAX_REPLY_LINES, read_reply_text};

#[path = "common.rs"]
mod common;

fn read(input: &[u8], cap: usize) -> (Result<(u16, String), String>, Vec<u8>) {
    common::read_with(input, cap, async |r| read_reply_text(r).await)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap, input)) = data.split_first() else {
        return;
    };
    let (whole, rest_whole) = read(input, 1 << 16);
    let (split, rest_split) = read(input, cap as usize % 13 + 1);
    assert_eq!(whole, split);
    let Ok((code, text)) = whole else { return };
    assert_eq!(rest_whole, rest_split);
    assert!(input.ends_with(&rest_whole));
    assert!(code <= 999);
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(lines.len() <= MAX_REPLY_LINES);
    assert!(text.len() <= MAX_REPLY_LINES * (3 * MAX_LINE + 1));
    let mut wire = String::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        wire.push_str(&format!("{code:03}{sep}{l}\r\n"));
    }
    if wire.split("\r\n").all(|l| l.len() + 2 <= MAX_LINE) {
        let (again, rest) = read(wire.as_bytes(), 1 << 16);
        assert!(rest.is_empty());
        assert_eq!(again, Ok((code, text)));
    }
});
