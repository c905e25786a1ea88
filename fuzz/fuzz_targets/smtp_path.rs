//! smtpd's MAIL FROM / RCPT TO argument parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../smtpd/src/address.rs"]
#[allow(dead_code)]
mod address;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = address::parse_path_arg(s) {
            if let Some(a) = p.address {
                assert!(a.full().len() <= 4 * address::MAX_PATH);
            }
        }
    }
});
