//! chasquid's queue items (`data_dir/queue/m:<id>`, imported by queued at
//! start; written by chasquid, or copied in by an operator): a parsed item
//! formats in chasquid's layout and parses back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tambo_common::chasquid_queue::fuzz_item(data);
});
