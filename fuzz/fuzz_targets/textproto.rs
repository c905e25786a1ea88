//! The protobuf text-format parser (chasquid.conf, users files).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tambo_common::textproto::fuzz_parse(data);
});
