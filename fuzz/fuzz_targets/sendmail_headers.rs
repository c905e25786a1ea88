//! `sendmail -t` (the message comes from any local program): recipients
//! taken from To/Cc/Bcc, the message without its Bcc fields, and the
//! message reader. The output never grows, keeps the body, loses only
//! header bytes, and keeps no Bcc field; recipients are non-empty and
//! unquoted.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../admin/src/sendmail.rs"]
#[allow(dead_code)]
mod sendmail;

fuzz_target!(|data: &[u8]| {
    // The message as sendmail reads it from stdin.
    let Ok(msg) = sendmail::read_message(&mut &data[..], data.first() == Some(&b'i'), 1 << 20) else {
        return;
    };
    assert!(msg.is_empty() || msg.ends_with(b"\r\n"));
    assert!(msg.len() <= 2 * data.len() + 2);
    let (rcpts, out) = sendmail::recipients_from_headers(&msg);
    assert!(out.len() <= msg.len());
    let end = msg.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 2);
    if let Some(end) = end {
        assert!(out.ends_with(&msg[end..]));
    }
    for r in &rcpts {
        assert!(!r.is_empty() && !r.contains('"') && !r.starts_with('\0'));
        assert_eq!(r.trim(), r);
    }
    // What is left has no Bcc field, and gives the same recipients but
    // for those only in Bcc.
    let (again, out2) = sendmail::recipients_from_headers(&out);
    assert_eq!(out2, out);
    assert!(again.iter().all(|a| rcpts.contains(a)));
});
