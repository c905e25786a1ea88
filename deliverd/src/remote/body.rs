//! The message as sent: queued's header prefix followed by the data file,
//! read with `pread` from the read-only fd (never loaded whole), and
//! dot-stuffed on the way out.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A message to send.
pub struct Body {
    /// Header lines queued adds (Received…), CRLF-terminated.
    pub prefix: Vec<u8>,
    file: Arc<std::fs::File>,
    file_size: u64,
    /// Whether any byte has the high bit set (BODY=8BITMIME).
    pub eight_bit: bool,
}

impl Body {
    /// Wrap the data fd; reads it once to find 8-bit bytes.
    pub async fn new(prefix: Vec<u8>, fd: Arc<OwnedFd>) -> std::io::Result<Body> {
        let file = Arc::new(std::fs::File::from(fd.try_clone()?));
        let f = file.clone();
        let (file_size, eight_bit_data) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, bool)> {
            let size = f.metadata()?.len();
            let mut buf = vec![0u8; 256 * 1024];
            let mut pos = 0u64;
            while pos < size {
                let n = f.read_at(&mut buf, pos)?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().any(|b| *b >= 0x80) {
                    return Ok((size, true));
                }
                pos += n as u64;
            }
            Ok((size, false))
        })
        .await
        .map_err(std::io::Error::other)??;
        let eight_bit = eight_bit_data || prefix.iter().any(|b| *b >= 0x80);
        Ok(Body {
            prefix,
            file,
            file_size,
            eight_bit,
        })
    }

    /// Size in bytes before dot-stuffing (for SIZE=).
    pub fn size(&self) -> u64 {
        self.prefix.len() as u64 + self.file_size
    }

    /// Up to `len` bytes of the data file from `pos`; empty at the end.
    pub async fn read_chunk(&self, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
        if pos >= self.file_size {
            return Ok(Vec::new());
        }
        let want = len.min((self.file_size - pos) as usize);
        let f = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; want];
            let n = f.read_at(&mut buf, pos)?;
            buf.truncate(n);
            Ok(buf)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Dot-stuffing across chunk boundaries (RFC 5321 §4.5.2), and the final
/// `CRLF.CRLF`.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    last_two: [u8; 2],
    any: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            last_two: [0, 0],
            any: false,
        }
    }
}

impl DotStuffer {
    /// Append `chunk`, stuffed, to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
            self.last_two = [self.last_two[1], b];
            self.any = true;
        }
    }

    /// End the data: a CRLF if the message did not end with one, then `.`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.any && self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut d = DotStuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out);
        }
        d.finish(&mut out);
        out
    }

    #[test]
    fn dots_are_stuffed_across_chunks() {
        assert_eq!(stuff(&[b".a\r\nb\r\n.", b".\r\n"]), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r", b"\n", b".x"]), b"a\r\n..x\r\n.\r\n");
        assert_eq!(stuff(&[b""]), b".\r\n");
        assert_eq!(stuff(&[b"no newline"]), b"no newline\r\n.\r\n");
    }
}
