//! Wire format of one IPC frame, the bounded frame decoder and the handshake.
//!
//! A frame is a 4-byte big-endian payload length, one byte giving the number
//! of file descriptors attached to the frame (`0..=MAX_FDS_PER_FRAME`), then
//! the payload: one value encoded with bincode (serde, standard config).

use std::io::Write;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Hard maximum size of one frame's payload, in bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// Version of the IPC protocol, exchanged in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;
/// Size of the frame header: payload length (4 bytes) and fd count (1 byte).
pub const HEADER_LEN: usize = 5;
/// Maximum number of file descriptors attached to one frame.
pub const MAX_FDS_PER_FRAME: usize = 8;
/// Magic bytes opening every [`Hello`].
pub const MAGIC: [u8; 8] = *b"TAMBOIPC";

/// Errors of the IPC layer. Any error but `Encode` ends the channel.
#[derive(thiserror::Error, Debug)]
pub enum IpcError {
    /// An I/O error on the socket.
    #[error("ipc i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the channel cleanly, at a frame boundary.
    #[error("ipc channel closed")]
    Closed,
    /// The peer closed the channel in the middle of a frame.
    #[error("ipc channel closed inside a frame")]
    Truncated,
    /// A frame's payload is larger than [`MAX_FRAME`].
    #[error("ipc frame too large: {0} bytes")]
    TooLarge(usize),
    /// Too many file descriptors for one frame (or queued on the channel).
    #[error("too many file descriptors: {0}")]
    TooManyFds(usize),
    /// A frame announced more file descriptors than were received with it.
    #[error("frame expects {expected} file descriptors, got {got}")]
    MissingFds {
        /// Number announced in the frame header.
        expected: usize,
        /// Number actually received.
        got: usize,
    },
    /// The payload did not decode (or had trailing bytes).
    #[error("ipc decode error: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("ipc encode error: {0}")]
    Encode(String),
    /// The handshake failed (bad magic, wrong channel, malformed hello).
    #[error("ipc handshake failed: {0}")]
    Handshake(String),
    /// The peer speaks another protocol version.
    #[error("ipc protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_FRAME }>()
}

/// A `Write` into a vector that refuses to grow past `limit` bytes.
struct LimitedVec {
    buf: Vec<u8>,
    limit: usize,
}

impl Write for LimitedVec {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(std::io::Error::other("frame too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `msg` as one complete frame (header and payload) announcing
/// `nfds` attached file descriptors.
pub fn encode<T: Serialize>(msg: &T, nfds: usize) -> Result<Vec<u8>, IpcError> {
    if nfds > MAX_FDS_PER_FRAME {
        return Err(IpcError::TooManyFds(nfds));
    }
    let mut out = LimitedVec {
        buf: Vec::with_capacity(64),
        limit: HEADER_LEN + MAX_FRAME,
    };
    out.buf.extend_from_slice(&[0; HEADER_LEN]);
    match bincode::serde::encode_into_std_write(msg, &mut out, config()) {
        Ok(_) => {}
        // The only I/O error `LimitedVec` produces is hitting the size limit.
        Err(bincode::error::EncodeError::Io { .. }) => {
            return Err(IpcError::TooLarge(MAX_FRAME + 1));
        }
        Err(e) => return Err(IpcError::Encode(e.to_string())),
    }
    let len = out.buf.len() - HEADER_LEN;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    // len <= MAX_FRAME < 2^32 and nfds <= 8, so the casts are exact.
    out.buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    out.buf[4] = nfds as u8;
    Ok(out.buf)
}

/// Decodes one payload into a `T`, rejecting oversize payloads and trailing
/// bytes.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, IpcError> {
    if payload.len() > MAX_FRAME {
        return Err(IpcError::TooLarge(payload.len()));
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(payload, config()).map_err(|e| IpcError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(IpcError::Decode(format!(
            "{} trailing bytes after message",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// Parses a frame header into `(payload length, fd count)`, validating both.
fn parse_header(h: &[u8]) -> Result<(usize, usize), IpcError> {
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let nfds = h[4] as usize;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    if nfds > MAX_FDS_PER_FRAME {
        return Err(IpcError::TooManyFds(nfds));
    }
    Ok((len, nfds))
}

/// Accumulates bytes read from a stream and splits them into frames.
///
/// It never holds more than `HEADER_LEN + MAX_FRAME` bytes: [`push`](Self::push)
/// accepts at most [`space`](Self::space) bytes. Whenever no complete frame is
/// buffered, `space()` is non-zero.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when no byte of a partial or complete frame is buffered.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// How many more bytes [`push`](Self::push) accepts now.
    pub fn space(&self) -> usize {
        (HEADER_LEN + MAX_FRAME).saturating_sub(self.buffered())
    }

    /// Appends bytes, at most [`space`](Self::space) of them; returns how many
    /// were taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let n = data.len().min(self.space());
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// The header of the next frame, if at least its header is buffered.
    fn peek_header(&self) -> Result<Option<(usize, usize)>, IpcError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < HEADER_LEN {
            return Ok(None);
        }
        parse_header(&rest[..HEADER_LEN]).map(Some)
    }

    /// True when a complete frame (or a header that is an error) is buffered.
    pub fn has_frame(&self) -> bool {
        match self.peek_header() {
            Ok(Some((len, _))) => self.buffered() >= HEADER_LEN + len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Returns the next complete frame as `(payload, nfds)`, `None` if more
    /// bytes are needed, or an error for a bad header (the error repeats: the
    /// stream cannot be resynchronised).
    pub fn next_frame(&mut self) -> Result<Option<(Vec<u8>, usize)>, IpcError> {
        let Some((len, nfds)) = self.peek_header()? else {
            return Ok(None);
        };
        if self.buffered() < HEADER_LEN + len {
            return Ok(None);
        }
        let start = self.pos + HEADER_LEN;
        let payload = self.buf[start..start + len].to_vec();
        self.pos = start + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(Some((payload, nfds)))
    }
}

/// First message on every channel, sent by both sides.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Name of the channel, e.g. `"smtpd-queued"`; both sides must agree.
    pub channel: String,
}

impl Hello {
    /// Our hello for `channel`.
    pub fn new(channel: &str) -> Self {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            channel: channel.to_owned(),
        }
    }

    /// Checks the peer's hello against our expectations for `channel`.
    pub fn check(&self, channel: &str) -> Result<(), IpcError> {
        if self.magic != MAGIC {
            return Err(IpcError::Handshake("bad magic".into()));
        }
        if self.version != PROTOCOL_VERSION {
            return Err(IpcError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: self.version,
            });
        }
        if self.channel != channel {
            return Err(IpcError::Handshake(format!(
                "channel mismatch: expected {channel:?}, peer is {:?}",
                self.channel
            )));
        }
        Ok(())
    }
}

/// Turns the result of receiving the peer's hello into the handshake result.
pub(crate) fn check_hello(
    received: Result<(Hello, Vec<std::os::fd::OwnedFd>), IpcError>,
    channel: &str,
) -> Result<(), IpcError> {
    match received {
        Ok((hello, fds)) if fds.is_empty() => hello.check(channel),
        Ok(_) => Err(IpcError::Handshake("file descriptors sent with hello".into())),
        Err(IpcError::Decode(e)) => Err(IpcError::Handshake(format!("malformed hello: {e}"))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Sample {
        A,
        B(u32, String),
        C { v: Vec<u8>, o: Option<i64> },
    }

    fn feed(dec: &mut FrameDecoder, data: &[u8]) {
        assert_eq!(dec.push(data), data.len());
    }

    #[test]
    fn roundtrip_several_frames() {
        let msgs = vec![
            Sample::A,
            Sample::B(7, "x".into()),
            Sample::C {
                v: vec![1, 2, 3],
                o: Some(-1),
            },
        ];
        let mut wire = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            wire.extend(encode(m, i).unwrap());
        }
        let mut dec = FrameDecoder::new();
        // Feed byte by byte to exercise partial headers and payloads.
        let mut out = Vec::new();
        for b in &wire {
            feed(&mut dec, std::slice::from_ref(b));
            while let Some((p, n)) = dec.next_frame().unwrap() {
                out.push((decode_payload::<Sample>(&p).unwrap(), n));
            }
        }
        assert!(dec.is_empty());
        assert_eq!(out, msgs.into_iter().zip(0..).collect::<Vec<(Sample, usize)>>());
    }

    #[test]
    fn oversize_refused_on_encode() {
        let big = vec![0u8; MAX_FRAME + 1];
        assert!(matches!(encode(&big, 0), Err(IpcError::TooLarge(_))));
        // Just at the limit (with the length prefix) still fits.
        let ok = vec![0u8; MAX_FRAME - 8];
        assert!(encode(&ok, 0).is_ok());
    }

    #[test]
    fn oversize_refused_on_decode() {
        let mut dec = FrameDecoder::new();
        let mut hdr = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        hdr.push(0);
        feed(&mut dec, &hdr);
        assert!(dec.has_frame());
        assert!(matches!(
            dec.next_frame(),
            Err(IpcError::TooLarge(n)) if n == MAX_FRAME + 1
        ));
        assert!(matches!(
            decode_payload::<Sample>(&vec![0; MAX_FRAME + 1]),
            Err(IpcError::TooLarge(_))
        ));
    }

    #[test]
    fn too_many_fds() {
        assert!(matches!(encode(&Sample::A, 9), Err(IpcError::TooManyFds(9))));
        let mut dec = FrameDecoder::new();
        feed(&mut dec, &[0, 0, 0, 0, 9]);
        assert!(matches!(dec.next_frame(), Err(IpcError::TooManyFds(9))));
    }

    #[test]
    fn decoder_is_bounded() {
        let mut dec = FrameDecoder::new();
        let mut hdr = (MAX_FRAME as u32).to_be_bytes().to_vec();
        hdr.push(0);
        feed(&mut dec, &hdr);
        let chunk = vec![0u8; 4096];
        let mut total = 0;
        loop {
            let n = dec.push(&chunk);
            total += n;
            if n < chunk.len() {
                break;
            }
        }
        assert_eq!(total, MAX_FRAME);
        assert_eq!(dec.space(), 0);
        assert!(dec.has_frame());
        let (p, _) = dec.next_frame().unwrap().unwrap();
        assert_eq!(p.len(), MAX_FRAME);
        assert_eq!(dec.space(), HEADER_LEN + MAX_FRAME);
    }

    #[test]
    fn garbage_and_trailing_bytes() {
        assert!(matches!(
            decode_payload::<Sample>(&[0xff, 0xff, 0xff]),
            Err(IpcError::Decode(_))
        ));
        assert!(matches!(decode_payload::<Sample>(&[]), Err(IpcError::Decode(_))));
        let frame = encode(&Sample::B(1, "y".into()), 0).unwrap();
        let mut payload = frame[HEADER_LEN..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload::<Sample>(&payload),
            Err(IpcError::Decode(m)) if m.contains("trailing")
        ));
        // A huge claimed Vec length must not allocate or panic.
        let mut evil = vec![2u8]; // variant C
        evil.extend([0xfc, 0xff, 0xff, 0xff, 0x7f]); // varint ~2^31 length
        assert!(decode_payload::<Sample>(&evil).is_err());
    }

    #[test]
    fn hello_checks() {
        assert!(Hello::new("a").check("a").is_ok());
        let mut h = Hello::new("a");
        h.magic = *b"NOTTAMBO";
        assert!(matches!(h.check("a"), Err(IpcError::Handshake(_))));
        let mut h = Hello::new("a");
        h.version = 99;
        assert!(matches!(
            h.check("a"),
            Err(IpcError::VersionMismatch { ours: 1, theirs: 99 })
        ));
        assert!(matches!(Hello::new("b").check("a"), Err(IpcError::Handshake(_))));
        assert!(matches!(
            check_hello(Err(IpcError::Decode("x".into())), "a"),
            Err(IpcError::Handshake(_))
        ));
    }

    /// The same loop as the `frame_decode` fuzz target, over pseudo-random input.
    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && data.len() >= 5 {
                // Make the header plausible so payload decoding is exercised.
                let plen = (data.len() - 5) as u32;
                data[..4].copy_from_slice(&plen.to_be_bytes());
                data[4] %= 9;
            }
            let mut dec = FrameDecoder::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = dec.push(rest);
                rest = &rest[n..];
                while let Ok(Some((p, _))) = dec.next_frame() {
                    let _ = decode_payload::<Sample>(&p);
                }
                if n == 0 {
                    break;
                }
            }
        }
    }
}
