//! chasquid.conf and users-file loading on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = std::path::Path::new("fuzz");
    let _ = tambo_common::config::parse_config(&text, path);
    let _ = tambo_common::userdb::UserDb::parse(&text, path);
});
