//! Line endings for commands that read a message.
//!
//! tambo keeps messages with CRLF line endings, as they travel in SMTP.
//! chasquid keeps them with LF and hands its post-data hook and pipe
//! aliases the LF form (its delivery agent gets CRLF). Scripts written for
//! chasquid see what they expect when tambo converts the same way.

/// Which line endings a command gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEndings {
    /// As stored: CRLF (the delivery agent, LMTP, SMTP).
    Crlf,
    /// CRLF turned into LF (the post-data hook, pipe aliases).
    Lf,
}

/// Streaming CRLF → LF conversion: a CR is dropped when an LF follows it,
/// even across chunks; any other CR is kept.
#[derive(Debug, Default)]
pub struct CrlfToLf {
    /// The previous chunk ended in a CR not yet written.
    pending_cr: bool,
}

impl CrlfToLf {
    /// Convert one chunk, appending to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    out.push(b'\r');
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    /// The end of the input: a last lone CR is kept.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

/// A converter for `endings`, or none when the bytes go through as they are.
pub fn converter(endings: LineEndings) -> Option<CrlfToLf> {
    match endings {
        LineEndings::Crlf => None,
        LineEndings::Lf => Some(CrlfToLf::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(chunks: &[&[u8]]) -> Vec<u8> {
        let mut c = CrlfToLf::default();
        let mut out = Vec::new();
        for ch in chunks {
            c.push(ch, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn crlf_becomes_lf_across_chunks() {
        assert_eq!(convert(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(convert(&[b"a\r", b"\nb\r", b"\n"]), b"a\nb\n");
        assert_eq!(convert(&[b"a\rb\r\r\n"]), b"a\rb\r\n");
        assert_eq!(convert(&[b"end\r"]), b"end\r");
        assert_eq!(convert(&[b"", b"\r", b"", b"\n"]), b"\n");
        assert!(converter(LineEndings::Crlf).is_none());
    }
}
