//! smtpd's DATA decoder: arbitrary bytes split at an arbitrary point must
//! never panic, and splitting must not change the result.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../smtpd/src/data.rs"]
#[allow(dead_code)]
mod data;

fuzz_target!(|input: &[u8]| {
    let Some((&split, body)) = input.split_first() else {
        return;
    };
    let split = (split as usize).min(body.len());
    let mut whole = data::DataDecoder::new(4096);
    let mut out_whole = Vec::new();
    let r_whole = whole.feed(body, &mut out_whole);
    let mut parts = data::DataDecoder::new(4096);
    let mut out_parts = Vec::new();
    let r1 = parts.feed(&body[..split], &mut out_parts);
    if let Ok(data::Progress::More) = r1 {
        let r2 = parts.feed(&body[split..], &mut out_parts);
        if let (Ok(data::Progress::End(_)), Ok(data::Progress::End(_))) = (&r_whole, &r2) {
            assert_eq!(out_whole, out_parts);
        }
    }
});
