//! smtpd's BDAT (CHUNKING) decoder and argument parser: however the content
//! is cut into chunks and reads, the result is the same; what is stored is
//! made of CRLF lines without NUL, bare CR or bare LF, within the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../smtpd/src/chunking.rs"]
#[allow(dead_code)]
mod chunking;
#[path = "../../smtpd/src/data.rs"]
#[allow(dead_code)]
mod data;

/// Feed `pieces` in order, then finish; the result and the output.
fn run(pieces: &[&[u8]], max: u64) -> (Result<(), String>, Vec<u8>, u64, bool) {
    let mut d = chunking::BdatDecoder::new(max);
    let mut out = Vec::new();
    let mut r = Ok(());
    for p in pieces {
        if let Err(e) = d.feed(p, &mut out) {
            r = Err(format!("{e:?}"));
            break;
        }
    }
    if r.is_ok() {
        r = d.finish(&mut out).map_err(|e| format!("{e:?}"));
    }
    (r, out, d.stored().size(), d.stored().overflow())
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, rest)) = input.split_first() else {
        return;
    };
    // The first line is a BDAT argument string.
    let (args, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..], &[][..]),
    };
    if let Some((size, _last)) = chunking::parse_bdat_args(&String::from_utf8_lossy(args)) {
        assert!(size.to_string().len() <= 19);
    }
    let max = 64 + u64::from(cut) * 8;
    let whole = run(&[body], max);
    let step = usize::from(cut % 7) + 1;
    let pieces: Vec<&[u8]> = body.chunks(step).collect();
    let split = run(&pieces, max);
    // The same verdict; past the limit (or after an error, which ends the
    // transaction) how much was kept depends on the pieces.
    assert_eq!(split.0, whole.0);
    if whole.0.is_ok() {
        assert_eq!(split.3, whole.3);
        if !whole.3 {
            assert_eq!(split, whole);
        }
    }
    let (r, out, size, overflow) = whole;
    if r.is_ok() {
        assert!(!out.contains(&0));
        assert!(overflow || out.is_empty() || out.ends_with(b"\r\n"));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r');
            }
        }
        assert!(size <= max);
        assert!(overflow || size == out.len() as u64);
    }
});
