//! Feeds arbitrary bytes to the frame decoder and decodes every complete
//! frame's payload: nothing may panic, and the decoder must stay bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use tambo_ipc::frame::{FrameDecoder, HEADER_LEN, Hello, MAX_FRAME, decode_payload};

/// A message shape with the kinds of fields the real protocol uses.
#[allow(dead_code)]
#[derive(Deserialize, Debug)]
enum Sample {
    Unit,
    Num(u64, i32),
    Text { s: String, opt: Option<String> },
    Bytes(Vec<u8>),
    List(Vec<(String, u16)>),
    Nested(Box<Sample>),
    Flag(bool, char),
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, to exercise partial reads.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut dec = FrameDecoder::new();
    for piece in rest.chunks(chunk) {
        let mut piece = piece;
        while !piece.is_empty() {
            let n = dec.push(piece);
            piece = &piece[n..];
            assert!(dec.buffered() <= HEADER_LEN + MAX_FRAME);
            loop {
                match dec.next_frame() {
                    Ok(Some((payload, nfds))) => {
                        assert!(payload.len() <= MAX_FRAME);
                        assert!(nfds <= tambo_ipc::frame::MAX_FDS_PER_FRAME);
                        let _ = decode_payload::<Sample>(&payload);
                        let _ = decode_payload::<Hello>(&payload);
                    }
                    Ok(None) => break,
                    // A bad header ends the stream, as it ends a channel.
                    Err(_) => return,
                }
            }
            // No complete frame is left, so the decoder must accept more.
            assert!(dec.space() > 0);
        }
    }
});
