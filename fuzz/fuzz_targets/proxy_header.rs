//! smtpd's PROXY protocol reader (v1 text, v2 binary), on the bytes a
//! client sends first: not one byte past the header is consumed, a v1
//! header is at most 107 bytes, and an address read from a v1 line is the
//! one it spells.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
#[path = "../../smtpd/src/proxy.rs"]
#[allow(dead_code)]
mod proxy;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let result = common::block_on(proxy::read_header(&mut stream, Duration::from_secs(5)));
    let used = data.len() - stream.len();
    let Ok(addr) = result else { return };
    if data.starts_with(b"PROXY ") {
        assert!(used <= proxy::V1_MAX);
        assert!(data[..used].ends_with(b"\r\n"));
        assert!(!data[..used - 1].contains(&b'\n'));
        if let Some(a) = addr {
            let line = std::str::from_utf8(&data[..used]).expect("ASCII");
            let words: Vec<&str> = line.trim_end().split(' ').collect();
            assert_eq!(words[2].parse::<std::net::IpAddr>().ok(), Some(a.ip()));
            assert_eq!(words[4].parse::<u16>().ok(), Some(a.port()));
        }
        assert!(matches!(proxy::parse_v1(&data[..used]), Ok(a) if a == addr));
    } else {
        assert!(data.starts_with(&proxy::V2_SIGNATURE));
        let len = u16::from_be_bytes([data[14], data[15]]) as usize;
        assert_eq!(used, 16 + len);
        let fixed: [u8; 16] = data[..16].try_into().expect("16 bytes");
        let body = &data[16..16 + len.min(216)];
        assert!(matches!(proxy::parse_v2(&fixed, body, len), Ok(a) if a == addr));
    }
});
