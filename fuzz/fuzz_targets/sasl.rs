//! smtpd's SASL decoding (AUTH PLAIN and LOGIN responses): base64 decodes
//! what the reference encoder produced back to the bytes, decoded output is
//! at most 3/4 of the input, and PLAIN credentials are the three
//! NUL-separated parts of the response.
#![no_main]
use base64::Engine;
use libfuzzer_sys::fuzz_target;

#[path = "../../smtpd/src/sasl.rs"]
#[allow(dead_code)]
mod sasl;

fuzz_target!(|data: &[u8]| {
    // Arbitrary text as a client response.
    let text = String::from_utf8_lossy(data);
    if let Ok(raw) = sasl::decode_base64(&text) {
        assert!(raw.len() <= text.trim().len() / 4 * 3);
        // What decodes re-encodes to the same text, but for the unused
        // low bits of the last group, which a lenient decoder ignores.
        let again = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(sasl::decode_base64(&again).as_ref(), Ok(&raw));
        assert_eq!(again.len(), if text.trim() == "=" { 0 } else { text.trim().len() });
        let _ = sasl::decode_text(&text);
    }
    // Arbitrary bytes as a decoded PLAIN response.
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    assert_eq!(sasl::decode_base64(&encoded).as_deref(), Ok(data));
    if let Ok(c) = sasl::parse_plain(data) {
        assert!(!c.authcid.is_empty());
        let joined = [c.authzid.as_bytes(), c.authcid.as_bytes(), c.password.as_bytes()].join(&0u8);
        assert_eq!(joined, data);
        // Normalisation of the login name must not panic on any text.
        let _ = sasl::split_identity(&c.authcid);
    }
});
