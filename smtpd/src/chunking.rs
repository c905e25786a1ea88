//! CHUNKING (RFC 3030): the decoder of BDAT content. BDAT chunks are
//! counted, not dot-stuffed and have no end marker, but tambo applies the
//! same rules to their reassembled content as to DATA: lines end in CRLF
//! (a bare CR, a bare LF or a NUL byte is refused, whatever chunk boundary
//! falls between a CR and its LF), the size limit is enforced while reading
//! and Received headers are counted for loop detection.
//!
//! The session side (the `BDAT` command) is in `session/bdat.rs`.

use crate::data::{DataError, StoredBody};

/// Streaming decoder of the content of a sequence of BDAT chunks.
#[derive(Debug)]
pub struct BdatDecoder {
    /// A CR ended the previous input (possibly the previous chunk).
    cr: bool,
    /// The content so far ends with CRLF (or is empty).
    at_line_start: bool,
    stored: StoredBody,
}

impl BdatDecoder {
    /// A decoder that stores at most `max` bytes.
    pub fn new(max: u64) -> BdatDecoder {
        BdatDecoder {
            cr: false,
            at_line_start: true,
            stored: StoredBody::new(max),
        }
    }

    /// What has been stored so far.
    pub fn stored(&self) -> &StoredBody {
        &self.stored
    }

    /// Check `input` (any piece of any chunk) and append it to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), DataError> {
        let start = out.len();
        for &b in input {
            if b == 0 {
                return Err(DataError::Nul);
            }
            if self.cr {
                if b != b'\n' {
                    return Err(DataError::BareCr);
                }
                out.extend_from_slice(b"\r\n");
                self.cr = false;
                self.at_line_start = true;
                continue;
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => return Err(DataError::BareLf),
                _ => {
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
        self.stored.account(out, start);
        Ok(())
    }

    /// The last chunk was read: a CR left pending is a bare CR, and content
    /// that does not end with CRLF gets one (the stored message is always
    /// made of complete lines).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DataError> {
        if self.cr {
            return Err(DataError::BareCr);
        }
        if !self.at_line_start {
            let start = out.len();
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            self.stored.account(out, start);
        }
        Ok(())
    }
}

/// Parse the arguments of `BDAT`: `size [LAST]`. `None` on a syntax error.
pub fn parse_bdat_args(args: &str) -> Option<(u64, bool)> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words.next()?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse::<u64>().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some((size, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: u64) -> (Result<(), DataError>, Vec<u8>, BdatDecoder) {
        let mut d = BdatDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = d.feed(c, &mut out) {
                return (Err(e), out, d);
            }
        }
        let r = d.finish(&mut out);
        (r, out, d)
    }

    #[test]
    fn no_dot_handling_and_crlf_across_chunks() {
        let (r, out, d) = run(&[b"Subject: x\r", b"\n\r\n.\r\n..x\r\n"], 1000);
        assert_eq!(r, Ok(()));
        assert_eq!(out, b"Subject: x\r\n\r\n.\r\n..x\r\n", "dots are content");
        assert_eq!(d.stored().size(), out.len() as u64);
    }

    #[test]
    fn missing_final_crlf_is_added() {
        let (r, out, _) = run(&[b"a\r\nb"], 1000);
        assert_eq!(r, Ok(()));
        assert_eq!(out, b"a\r\nb\r\n");
        let (_, out, _) = run(&[], 1000);
        assert!(out.is_empty());
    }

    #[test]
    fn bare_cr_lf_nul_in_any_position() {
        for (chunks, want) in [
            (&[&b"a\nb"[..]][..], DataError::BareLf),
            (&[b"a\r", b"b"], DataError::BareCr),
            (&[b"a\r", b"\r\n"], DataError::BareCr),
            (&[b"a\r"], DataError::BareCr),
            (&[b"a\r\n", b"\n"], DataError::BareLf),
            (&[b"x\r\n.\n"], DataError::BareLf),
            (&[b"x\n.\r\n"], DataError::BareLf),
            (&[b"x\r.\r"], DataError::BareCr),
            (&[b"x\r\n.\r"], DataError::BareCr),
            (&[b"x\r.\r\n"], DataError::BareCr),
            (&[b"x\r\n", b"\0"], DataError::Nul),
        ] {
            let (r, _, _) = run(chunks, 1000);
            assert_eq!(r, Err(want), "{chunks:?}");
        }
    }

    #[test]
    fn size_limit_across_chunks() {
        let (r, out, d) = run(&[b"0123456789\r\n", b"0123456789\r\n"], 15);
        assert_eq!(r, Ok(()));
        assert!(d.stored().overflow());
        assert_eq!(out, b"0123456789\r\n", "nothing stored past the limit");
    }

    #[test]
    fn loop_detection() {
        let mut msg = Vec::new();
        for _ in 0..51 {
            msg.extend_from_slice(b"Received: from x\r\n");
        }
        let (_, _, d) = run(&[&msg[..7], &msg[7..], b"\r\nbody\r\n"], 1 << 20);
        assert!(d.stored().looping(50));
        let (_, _, d) = run(&[&msg[..50 * 18], b"\r\n", b"Received: x\r\n"], 1 << 20);
        assert!(!d.stored().looping(50), "50 in the header, one in the body");
    }

    #[test]
    fn args() {
        assert_eq!(parse_bdat_args("0 LAST"), Some((0, true)));
        assert_eq!(parse_bdat_args("123"), Some((123, false)));
        assert_eq!(parse_bdat_args("123 last"), Some((123, true)));
        assert_eq!(parse_bdat_args("  42   LAST "), Some((42, true)));
        for bad in [
            "",
            "LAST",
            "-1",
            "+1",
            "1x",
            "1 LASTX",
            "1 LAST more",
            "99999999999999999999",
            "0x10",
        ] {
            assert_eq!(parse_bdat_args(bad), None, "{bad:?}");
        }
    }
}
