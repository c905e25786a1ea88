//! The aliases file parser and the right-hand side parser (also used on
//! the alias-resolve hook's output).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tambo_common::aliases::parse_aliases(text, "aliases", "example.com", ".", "+");
        let _ = tambo_common::aliases::parse_rhs(text, "example.com");
    }
});
