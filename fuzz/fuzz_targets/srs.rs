//! SRS (RCPT addresses and envelope senders are untrusted): reversing an
//! arbitrary local part never panics and only yields an address when it
//! is an SRS local part; every address we rewrite reverses back to the
//! original sender, also after case folding.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../queued/src/srs.rs"]
#[allow(dead_code)]
mod srs;

fuzz_target!(|data: &[u8]| {
    let Some((&day, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let days = 20_000 + u64::from(day);
    let s = srs::Srs::from_secret(b"fuzzing secret, 32 bytes long...");
    // 1. An arbitrary RCPT local part.
    for user in text.split('\0') {
        match s.reverse(user, days) {
            Ok(Some(a)) => {
                assert!(srs::is_srs(user));
                assert!(a.contains('@') && a.len() <= user.len());
            }
            Ok(None) => assert!(!srs::is_srs(user)),
            Err(_) => assert!(srs::is_srs(user)),
        }
    }
    // 2. Rewrite an arbitrary sender, then reverse it as a bounce would.
    let sender = text.split('\0').next().unwrap_or("");
    let Some((local, domain)) = sender.rsplit_once('@') else {
        return;
    };
    if local.is_empty() || domain.is_empty() || domain.contains('=') {
        return; // not an address smtpd accepts as a sender
    }
    let fwd = s.forward(sender, "fwd.example", days);
    let (user, at) = fwd.rsplit_once('@').expect("an address");
    assert_eq!(at, "fwd.example");
    assert!(srs::is_srs(user), "{fwd}");
    let expected = if user.starts_with("SRS1=") && local.as_bytes()[3] == b'0' {
        // SRS1 of another forwarder's SRS0 address: back to that address.
        format!("SRS0{}@{domain}", &local[4..])
    } else if user.starts_with("SRS1=") {
        // SRS1 of an SRS1 address: back to the first forwarder's SRS0.
        let back = s.reverse(user, days).expect("our own SRS1 reverses").expect("SRS");
        assert!(back.starts_with("SRS0="), "{back}");
        return;
    } else {
        // SRS0 (also of an SRS address that would not reverse as SRS1).
        assert!(user.starts_with("SRS0="), "{fwd}");
        sender.to_string()
    };
    assert_eq!(s.reverse(user, days), Ok(Some(expected.clone())), "{fwd}");
    assert!(
        s.reverse(&user.to_lowercase(), days).is_ok_and(|r| r.is_some()),
        "{fwd}"
    );
    // Expired three weeks and a day later.
    if user.starts_with("SRS0=") {
        assert_eq!(s.reverse(user, days + 22), Err(srs::ReverseError::Expired));
    }
});
