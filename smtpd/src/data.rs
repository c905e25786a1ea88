//! The DATA body decoder: strict CRLF line endings, dot-unstuffing, the end
//! marker, the size limit and loop detection, all while streaming.
//!
//! Strictness is what prevents SMTP smuggling: a bare CR, a bare LF or a
//! NUL byte anywhere ends the transaction with an error, so no variant of
//! `<LF>.<LF>`, `<CR>.<CR>` or their mixes can be read as an end of data by
//! one server and not by another.

/// Why a body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// A CR not followed by LF.
    BareCr,
    /// An LF not preceded by CR.
    BareLf,
    /// A NUL byte.
    Nul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Mid,
    /// After a CR inside a line.
    Cr,
    /// After a `.` at the start of a line.
    Dot,
    /// After `.` CR at the start of a line.
    DotCr,
}

/// What a decoder has stored of a message: its size against the limit,
/// and its Received headers counted for loop detection. Shared by the DATA
/// decoder and the BDAT decoder (`chunking.rs`).
#[derive(Debug)]
pub struct StoredBody {
    max: u64,
    size: u64,
    overflow: bool,
    headers: HeaderScan,
}

impl StoredBody {
    /// Nothing stored yet; at most `max` bytes will be.
    pub(crate) fn new(max: u64) -> StoredBody {
        StoredBody {
            max,
            size: 0,
            overflow: false,
            headers: HeaderScan::default(),
        }
    }

    /// Whether the message went over the size limit (it is then read to
    /// its end but not stored).
    pub fn overflow(&self) -> bool {
        self.overflow
    }

    /// Bytes of message stored.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the header section holds more than `max` Received headers
    /// (`max_received_headers`, 50 by default).
    pub fn looping(&self, max: usize) -> bool {
        self.headers.received > max
    }

    /// Count what was appended to `out` since `start`; drop it past the limit.
    pub(crate) fn account(&mut self, out: &mut Vec<u8>, start: usize) {
        let added = (out.len() - start) as u64;
        self.headers.scan(&out[start..]);
        if self.overflow || self.size + added > self.max {
            self.overflow = true;
            out.truncate(start);
        } else {
            self.size += added;
        }
    }
}

/// Streaming decoder of a DATA body.
#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    stored: StoredBody,
}

/// What [`DataDecoder::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input consumed; more is needed.
    More,
    /// The end marker was found after this many input bytes.
    End(usize),
}

impl DataDecoder {
    /// A decoder that stores at most `max` bytes.
    pub fn new(max: u64) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            stored: StoredBody::new(max),
        }
    }

    /// What has been stored so far.
    pub fn stored(&self) -> &StoredBody {
        &self.stored
    }

    /// Decode `input`, appending the message bytes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, DataError> {
        let start = out.len();
        let mut result = Progress::More;
        for (i, &b) in input.iter().enumerate() {
            if b == 0 {
                return Err(DataError::Nul);
            }
            self.state = match (self.state, b) {
                (State::LineStart, b'.') => State::Dot,
                (State::LineStart | State::Mid, b'\r') => State::Cr,
                (State::LineStart | State::Mid | State::Dot, b'\n') => return Err(DataError::BareLf),
                (State::LineStart | State::Mid, _) => {
                    out.push(b);
                    State::Mid
                }
                (State::Cr, b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    State::LineStart
                }
                (State::DotCr, b'\n') => {
                    result = Progress::End(i + 1);
                    break;
                }
                (State::Cr | State::DotCr, _) => return Err(DataError::BareCr),
                (State::Dot, b'\r') => State::DotCr,
                (State::Dot, _) => {
                    // A leading dot is removed (RFC 5321 §4.5.2).
                    out.push(b);
                    State::Mid
                }
            };
        }
        self.stored.account(out, start);
        Ok(result)
    }
}

/// Counts Received headers in the header section as bytes go by (shared
/// with the BDAT decoder in `chunking.rs`).
#[derive(Debug, Default)]
pub(crate) struct HeaderScan {
    done: bool,
    at_line_start: bool,
    started: bool,
    prefix: Vec<u8>,
    pub(crate) received: usize,
}

impl HeaderScan {
    pub(crate) fn scan(&mut self, bytes: &[u8]) {
        if !self.started {
            self.started = true;
            self.at_line_start = true;
        }
        for &b in bytes {
            if self.done {
                return;
            }
            if self.at_line_start {
                if b == b'\r' {
                    // An empty line ends the header section.
                    self.done = true;
                    return;
                }
                self.at_line_start = false;
                self.prefix.clear();
            }
            if b == b'\n' {
                self.at_line_start = true;
                continue;
            }
            if self.prefix.len() < 9 {
                self.prefix.push(b);
                if self.prefix.len() == 9 && self.prefix.eq_ignore_ascii_case(b"received:") {
                    self.received += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: u64) -> (Result<Progress, DataError>, Vec<u8>, DataDecoder) {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        let r = d.feed(input, &mut out);
        (r, out, d)
    }

    #[test]
    fn plain_message() {
        let input = b"Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nNEXT";
        let (r, out, _) = decode_all(input, 1000);
        assert_eq!(r, Ok(Progress::End(input.len() - 4)));
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n.dot\r\n");
    }

    #[test]
    fn byte_by_byte_is_the_same() {
        let input = b"a\r\n.b\r\n..\r\n\r\n.\r\n";
        let mut d = DataDecoder::new(1000);
        let mut out = Vec::new();
        let mut end = None;
        for (i, b) in input.iter().enumerate() {
            if let Progress::End(_) = d.feed(&[*b], &mut out).unwrap() {
                end = Some(i);
                break;
            }
        }
        assert_eq!(end, Some(input.len() - 1));
        assert_eq!(out, b"a\r\nb\r\n.\r\n\r\n");
    }

    #[test]
    fn smuggling_variants_are_errors() {
        for (input, want) in [
            (&b"a\r\n\n.\n"[..], DataError::BareLf),
            (b"a\n.\r\n", DataError::BareLf),
            (b"a\r\n.\n", DataError::BareLf),
            (b"a\r.\r", DataError::BareCr),
            (b"a\r\n.\r", DataError::BareCr),
            (b"a\r\n.\rX", DataError::BareCr),
            (b"a\r.\r\n", DataError::BareCr),
            (b"a\x00\r\n.\r\n", DataError::Nul),
            (b"\n", DataError::BareLf),
        ] {
            let mut d = DataDecoder::new(1000);
            let mut out = Vec::new();
            let mut r = d.feed(input, &mut out);
            if r == Ok(Progress::More) {
                // A trailing CR is only an error once the next byte shows it.
                r = d.feed(b"X", &mut out);
            }
            assert_eq!(r, Err(want), "{input:?}");
        }
    }

    #[test]
    fn size_limit() {
        let (r, out, d) = decode_all(b"0123456789\r\n.\r\n", 5);
        assert!(matches!(r, Ok(Progress::End(_))));
        assert!(d.stored().overflow());
        assert!(out.is_empty());
    }

    #[test]
    fn loop_detection() {
        let mut msg = Vec::new();
        for _ in 0..51 {
            msg.extend_from_slice(b"Received: from x\r\n");
        }
        msg.extend_from_slice(b"\r\nReceived: in body\r\n.\r\n");
        let (_, _, d) = decode_all(&msg, 1 << 20);
        assert!(d.stored().looping(50));
        let (_, _, d) = decode_all(b"Received: a\r\n\r\n.\r\n", 100);
        assert!(!d.stored().looping(50));
    }
}
