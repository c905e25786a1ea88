//! chasquid's MTA-STS cache files (`data_dir/sts-cache/pol:<domain>`,
//! imported by deliverd at start): the input is the name after `pol:`, a
//! NUL, and the file's JSON. A converted policy names a valid cache file,
//! expires after now and within a year, and its text parses back to it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tambo_deliverd::remote::sts_chasquid::fuzz_convert(data);
});
