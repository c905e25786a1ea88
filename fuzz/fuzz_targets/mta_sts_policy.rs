//! MTA-STS policy files and `_mta-sts` TXT records (both fetched from the
//! recipient's domain, so untrusted): a parsed policy formats and parses
//! back equal, its patterns are bounded host names that match themselves,
//! and a TXT id is 1 to 32 letters and digits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tambo_deliverd::remote::sts::{MAX_AGE_CAP, MAX_AGE_FLOOR, mx_matches, parse_policy, parse_txt};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = parse_policy(&text) {
        assert!(!p.mx.is_empty() || p.mode.name() == "none");
        assert!(p.mx.len() <= 64);
        assert!((MAX_AGE_FLOOR..=MAX_AGE_CAP).contains(&p.lifetime()));
        let mut again = format!("version: STSv1\nmode: {}\nmax_age: {}\n", p.mode.name(), p.max_age);
        for m in &p.mx {
            assert!(m.len() <= 255 && !m.bytes().any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace()));
            again.push_str(&format!("mx: {m}\n"));
            match m.strip_prefix("*.") {
                Some(suffix) => {
                    assert!(p.allows(&format!("mx.{suffix}")));
                    assert!(!mx_matches(m, suffix));
                }
                None => assert!(p.allows(&m.to_ascii_uppercase()) && p.allows(&format!("{m}."))),
            }
        }
        assert_eq!(parse_policy(&again), Ok(p));
    }
    // TXT records: the input split at NUL bytes into several strings.
    let records: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(Some(id)) = parse_txt(&records) {
        assert!((1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(parse_txt(&[format!("v=STSv1; id={id}")]), Ok(Some(id)));
    }
    if let Some((pattern, host)) = text.split_once('\0') {
        // Matching is case-insensitive and ignores a trailing dot.
        assert_eq!(
            mx_matches(pattern, host),
            mx_matches(pattern, &host.to_ascii_uppercase())
        );
    }
});
