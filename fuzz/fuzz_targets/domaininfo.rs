//! The domaininfo store's file parser (chasquid's text format): a parsed
//! record formats and parses back equal, and file names made from any
//! domain stay in the directory and are distinct for distinct domains.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tambo_common::domaininfo::{file_name, format_record, parse_record};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rec) = parse_record(&text, Path::new("fuzz")) {
        assert!(!rec.name.is_empty());
        let again = format_record(&rec);
        let back = parse_record(&again, Path::new("again")).expect("a formatted record parses");
        assert_eq!(back, rec);
    }
    // File names: one path component, never "." or "..", and injective.
    let (a, b) = text.split_once('\0').unwrap_or((&text, ""));
    for d in [a, b] {
        let f = file_name(d);
        assert!(f.starts_with("s:") && !f.contains('/') && !f.contains('\0'));
        assert!(f.bytes().all(|c| c.is_ascii_graphic()));
    }
    if a != b {
        assert_ne!(file_name(a), file_name(b));
    }
});
