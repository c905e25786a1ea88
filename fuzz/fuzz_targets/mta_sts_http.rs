//! The bounded HTTP/1.1 response reader used to fetch MTA-STS policies
//! (the policy host is untrusted): the body is bounded, and the result is
//! the same whatever the sizes of the reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tambo_deliverd::remote::sts::{MAX_POLICY_BYTES, read_response};
use tokio::io::BufReader;

#[path = "common.rs"]
mod common;

fn read(input: &[u8], cap: usize) -> Result<String, String> {
    common::block_on(async { read_response(&mut BufReader::with_capacity(cap, input)).await })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cap, input)) = data.split_first() else {
        return;
    };
    let whole = read(input, 1 << 16);
    let split = read(input, cap as usize % 31 + 1);
    assert_eq!(whole.is_ok(), split.is_ok(), "{whole:?} / {split:?}");
    if let Ok(body) = whole {
        assert!(body.len() <= MAX_POLICY_BYTES);
        assert!(body.len() <= input.len());
        assert_eq!(Ok(body), split);
    }
});
