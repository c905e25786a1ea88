//! A client connection: a byte stream (plain or TLS), a bounded input
//! buffer and an output buffer that is flushed only when the server would
//! otherwise wait for input, which is what makes PIPELINING efficient.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any stream a session can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The longest command line accepted, CRLF included.
pub const MAX_LINE: usize = 1000;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 8192;
/// Bytes read at once by a connection that has been quiet: an idle client
/// then holds a 1 KiB buffer, not 8 KiB. A read that fills it switches
/// back to [`READ_CHUNK`].
const IDLE_READ: usize = 1024;

/// What reading a command line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line, without its CRLF.
    Line(Vec<u8>),
    /// The line was longer than [`MAX_LINE`]; the connection must close.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Errors of the connection itself.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The client was silent for too long.
    #[error("timeout")]
    Timeout,
    /// Socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A connection with its buffers.
pub struct Conn {
    stream: Box<dyn Stream>,
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    /// Timeout for each read.
    pub read_timeout: Duration,
}

impl Conn {
    /// Wrap a stream.
    pub fn new(stream: Box<dyn Stream>, read_timeout: Duration) -> Conn {
        Conn {
            stream,
            inbuf: Vec::new(),
            start: 0,
            out: Vec::new(),
            read_timeout,
        }
    }

    /// Replace the stream (after a TLS handshake), dropping whatever input
    /// was buffered before (no command injection across STARTTLS).
    pub fn replace_stream(&mut self, stream: Box<dyn Stream>) {
        self.stream = stream;
        self.inbuf = Vec::new();
        self.start = 0;
    }

    /// Take the stream out for a TLS handshake. Buffered input is dropped.
    pub fn take_stream(&mut self) -> Box<dyn Stream> {
        self.inbuf = Vec::new();
        self.start = 0;
        std::mem::replace(&mut self.stream, Box::new(empty_impl::EmptyDuplex))
    }

    /// Whether input is buffered beyond what has been consumed.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.inbuf.len()
    }

    /// Queue a reply line (CRLF added).
    pub fn reply(&mut self, line: &str) {
        // Count each reply once: on its last (or only) line.
        if line.as_bytes().get(3) != Some(&b'-') {
            use tambo_ipc::metrics::{self, Metric};
            if let Some(class) = metrics::reply_class(line) {
                metrics::inc(Metric::SmtpReplies, &[("class", class)]);
            }
            if let Some(code) = metrics::reply_code(line) {
                metrics::inc(Metric::SmtpReplyCodes, &[("code", code)]);
            }
        }
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Send everything queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        tokio::time::timeout(self.read_timeout, async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ConnError::Timeout)??;
        Ok(())
    }

    /// Read more from the socket into the buffer, flushing pending replies
    /// first. Returns false at EOF.
    async fn fill(&mut self) -> Result<bool, ConnError> {
        self.flush().await?;
        if self.start > 0 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        let len = self.inbuf.len();
        let want = if len == 0 && self.inbuf.capacity() < READ_CHUNK {
            IDLE_READ
        } else {
            READ_CHUNK
        };
        self.inbuf.resize(len + want, 0);
        let r = tokio::time::timeout(self.read_timeout, self.stream.read(&mut self.inbuf[len..])).await;
        let n = match r {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.inbuf.truncate(len);
                return Err(e.into());
            }
            Err(_) => {
                self.inbuf.truncate(len);
                return Err(ConnError::Timeout);
            }
        };
        self.inbuf.truncate(len + n);
        if n == want && want == IDLE_READ {
            // Busy (a DATA body, a pipelined burst): read more at once.
            self.inbuf.reserve(READ_CHUNK);
        }
        if self.inbuf.capacity() > 4 * READ_CHUNK && self.inbuf.len() < READ_CHUNK {
            self.inbuf.shrink_to(READ_CHUNK);
        }
        Ok(n > 0)
    }

    /// Read one command line (terminated by LF; a preceding CR is removed).
    /// Memory stays bounded: a line over [`MAX_LINE`] is not accumulated.
    pub async fn read_line(&mut self) -> Result<LineRead, ConnError> {
        loop {
            let avail = &self.inbuf[self.start..];
            if let Some(pos) = avail.iter().position(|&b| b == b'\n') {
                if pos + 1 > MAX_LINE {
                    return Ok(LineRead::TooLong);
                }
                let mut line = avail[..pos].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start += pos + 1;
                if self.start == self.inbuf.len() && self.inbuf.capacity() > IDLE_READ {
                    // Nothing pipelined behind: give the big buffer back
                    // while the client thinks (memory per idle connection).
                    self.inbuf = Vec::new();
                    self.start = 0;
                }
                return Ok(LineRead::Line(line));
            }
            if avail.len() >= MAX_LINE {
                return Ok(LineRead::TooLong);
            }
            if !self.fill().await? {
                return Ok(LineRead::Eof);
            }
        }
    }

    /// Take whatever input is buffered, or read some; empty at EOF.
    pub async fn read_chunk(&mut self) -> Result<Vec<u8>, ConnError> {
        if !self.has_buffered_input() && !self.fill().await? {
            return Ok(Vec::new());
        }
        let chunk = self.inbuf[self.start..].to_vec();
        self.start = self.inbuf.len();
        Ok(chunk)
    }

    /// Give back bytes that were taken by [`Conn::read_chunk`] but not used
    /// (what follows the end of DATA, pipelined).
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut rest = bytes.to_vec();
        rest.extend_from_slice(&self.inbuf[self.start..]);
        self.inbuf = rest;
        self.start = 0;
    }

    /// Read exactly `n` bytes (BDAT), calling `sink` with each piece.
    pub async fn read_exact_into<F: FnMut(&[u8])>(&mut self, mut n: u64, mut sink: F) -> Result<bool, ConnError> {
        while n > 0 {
            if !self.has_buffered_input() && !self.fill().await? {
                return Ok(false);
            }
            let avail = &self.inbuf[self.start..];
            let take = avail.len().min(n.min(usize::MAX as u64) as usize);
            sink(&avail[..take]);
            self.start += take;
            n -= take as u64;
        }
        Ok(true)
    }

    /// Flush and shut the connection down.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }
}

/// `tokio::io::empty()` only reads; this placeholder also "writes".
mod empty_impl {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    /// A stream that is always at EOF and swallows writes.
    pub struct EmptyDuplex;

    impl AsyncRead for EmptyDuplex {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for EmptyDuplex {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_limits() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut conn = Conn::new(Box::new(server), Duration::from_secs(5));
        let mut client = client;
        client.write_all(b"EHLO x\r\nNOOP\n").await.unwrap();
        client.write_all(&vec![b'A'; 2000]).await.unwrap();
        assert_eq!(conn.read_line().await.unwrap(), LineRead::Line(b"EHLO x".to_vec()));
        assert_eq!(conn.read_line().await.unwrap(), LineRead::Line(b"NOOP".to_vec()));
        assert_eq!(conn.read_line().await.unwrap(), LineRead::TooLong);
        drop(client);
    }

    #[tokio::test]
    async fn eof() {
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        let mut conn = Conn::new(Box::new(server), Duration::from_secs(5));
        assert_eq!(conn.read_line().await.unwrap(), LineRead::Eof);
    }
}
