//! Blocking (and poll-loop friendly) channel for the single-threaded
//! supervisor; no async runtime involved.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fdpass::{RecvBuf, send_error, send_with_fds_flags};
use crate::frame::{Hello, IpcError, check_hello, encode};

/// A framed channel over a Unix stream socket, usable blocking or from a
/// poll loop. All socket calls use `MSG_DONTWAIT` and wait with `poll(2)`,
/// so the socket may be in blocking or nonblocking mode.
#[derive(Debug)]
pub struct SyncChannel {
    stream: UnixStream,
    rx: RecvBuf,
    timeout: Option<Duration>,
    tx_broken: bool,
}

impl SyncChannel {
    /// Wraps a connected stream socket.
    pub fn new(stream: UnixStream) -> Self {
        SyncChannel {
            stream,
            rx: RecvBuf::new(),
            timeout: None,
            tx_broken: false,
        }
    }

    /// Sets how long a blocking [`send`](Self::send) or [`recv`](Self::recv)
    /// waits for the peer before failing with `Io(TimedOut)`; `None` (the
    /// default) waits forever. A send that times out mid-frame breaks the
    /// channel's send side.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// The socket's fd, to register in a poll loop.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &UnixStream {
        &self.stream
    }

    /// Exchanges [`Hello`]s: sends ours, then reads and checks the peer's.
    pub fn handshake(&mut self, channel: &str) -> Result<(), IpcError> {
        self.send(&Hello::new(channel), &[])?;
        let received = self.recv::<Hello>();
        check_hello(received, channel)
    }

    /// Sends one message with `fds` attached, writing the whole frame even
    /// across partial writes (only the first `sendmsg` carries the fds).
    pub fn send<T: Serialize>(&mut self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), IpcError> {
        if self.tx_broken {
            return Err(IpcError::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier send failed inside a frame",
            )));
        }
        let frame = encode(msg, fds.len())?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut off = 0;
        while off < frame.len() {
            let attach = if off == 0 { fds } else { &[] };
            match send_with_fds_flags(self.stream.as_fd(), &frame[off..], attach, libc::MSG_DONTWAIT) {
                Ok(0) => {
                    self.tx_broken = off > 0;
                    return Err(IpcError::Io(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = wait(self.stream.as_fd(), libc::POLLOUT, deadline) {
                        self.tx_broken = off > 0;
                        return Err(IpcError::Io(e));
                    }
                }
                Err(e) => {
                    self.tx_broken = off > 0;
                    return Err(send_error(e));
                }
            }
        }
        Ok(())
    }

    /// Receives one message and its fds, blocking until a whole frame is
    /// there. `Err(Closed)` on a clean end of stream.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), IpcError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(frame) = self.rx.take_frame()? {
                return Ok(frame);
            }
            match self.rx.read(self.stream.as_fd(), libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.stream.as_fd(), libc::POLLIN, deadline)?;
                }
                Err(e) => return Err(IpcError::Io(e)),
            }
        }
    }

    /// Reads whatever is available without blocking, until a complete frame
    /// is buffered, the socket has nothing more, or end of stream. Returns
    /// `true` once the peer's end of stream was seen. After it, call
    /// [`try_next`](Self::try_next) until it returns `None`.
    pub fn fill(&mut self) -> Result<bool, IpcError> {
        while !self.rx.ready() {
            match self.rx.read(self.stream.as_fd(), libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(IpcError::Io(e)),
            }
        }
        Ok(self.rx.eof())
    }

    /// The next complete buffered message, if any; never reads the socket.
    /// Once the end of stream was seen and the buffer is drained it returns
    /// `Err(Closed)` (or `Err(Truncated)` if a partial frame is left).
    pub fn try_next<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>, IpcError> {
        self.rx.take_frame()
    }
}

impl AsFd for SyncChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Waits with poll(2) until `fd` has `events`, or the deadline passes.
fn wait(fd: BorrowedFd<'_>, events: libc::c_short, deadline: Option<Instant>) -> io::Result<()> {
    loop {
        let timeout_ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r > 0 {
            // Readiness, or HUP/ERR: the next socket call reports which.
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{HEADER_LEN, MAGIC, MAX_FRAME, PROTOCOL_VERSION};
    use serde::Deserialize;
    use std::io::{Read, Seek, Write};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Msg {
        Ping(u32),
        File { name: String },
    }

    fn pair() -> (SyncChannel, SyncChannel) {
        let (a, b) = UnixStream::pair().unwrap();
        (SyncChannel::new(a), SyncChannel::new(b))
    }

    #[test]
    fn handshake_ok_and_messages() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || {
            b.handshake("sup-queued").unwrap();
            let (m, fds): (Msg, _) = b.recv().unwrap();
            assert_eq!(m, Msg::Ping(3));
            assert!(fds.is_empty());
            b.send(&Msg::Ping(4), &[]).unwrap();
        });
        a.handshake("sup-queued").unwrap();
        a.send(&Msg::Ping(3), &[]).unwrap();
        let (m, _): (Msg, _) = a.recv().unwrap();
        assert_eq!(m, Msg::Ping(4));
        t.join().unwrap();
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Closed)));
    }

    #[test]
    fn handshake_wrong_channel() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || b.handshake("other"));
        assert!(matches!(a.handshake("mine"), Err(IpcError::Handshake(_))));
        assert!(matches!(t.join().unwrap(), Err(IpcError::Handshake(_))));
    }

    #[test]
    fn handshake_wrong_version_and_magic() {
        for (magic, version) in [(MAGIC, PROTOCOL_VERSION + 1), (*b"SMTPDIPC", PROTOCOL_VERSION)] {
            let (mut a, mut b) = pair();
            let bad = Hello {
                magic,
                version,
                channel: "c".into(),
            };
            b.send(&bad, &[]).unwrap();
            let r = a.handshake("c");
            if magic == MAGIC {
                assert!(matches!(r, Err(IpcError::VersionMismatch { ours: 1, theirs: 2 })));
            } else {
                assert!(matches!(r, Err(IpcError::Handshake(_))));
            }
        }
        // Garbage instead of a hello.
        let (mut a, mut b) = pair();
        b.send(&"not a hello", &[]).unwrap();
        assert!(matches!(a.handshake("c"), Err(IpcError::Handshake(_))));
    }

    #[test]
    fn clean_eof_is_closed_and_midframe_is_truncated() {
        let (mut a, b) = pair();
        drop(b);
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Closed)));

        let (mut a, mut b) = pair();
        let frame = encode(&Msg::Ping(1), 0).unwrap();
        b.stream.write_all(&frame[..frame.len() - 1]).unwrap();
        drop(b);
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Truncated)));

        // EOF inside the header.
        let (mut a, mut b) = pair();
        b.stream.write_all(&[0, 0]).unwrap();
        drop(b);
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Truncated)));
    }

    #[test]
    fn oversize_header_and_garbage() {
        let (mut a, mut b) = pair();
        let mut hdr = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        hdr.push(0);
        b.stream.write_all(&hdr).unwrap();
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::TooLarge(_))));
        // The channel stays dead afterwards.
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Closed)));

        let (mut a, mut b) = pair();
        b.stream.write_all(&[0, 0, 0, 3, 0, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Decode(_))));

        let (mut a, mut b) = pair();
        let mut frame = encode(&Msg::Ping(1), 0).unwrap();
        frame.push(7);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        b.stream.write_all(&frame).unwrap();
        assert!(matches!(a.recv::<Msg>(), Err(IpcError::Decode(_))));
    }

    #[test]
    fn large_frame_partial_writes() {
        let (mut a, mut b) = pair();
        let big = vec![0x5au8; MAX_FRAME - 16];
        let t = std::thread::spawn(move || {
            let (v, _): (Vec<u8>, _) = b.recv().unwrap();
            v
        });
        a.send(&big, &[]).unwrap();
        assert_eq!(t.join().unwrap(), big);
    }

    #[test]
    fn fds_back_to_back() {
        let (mut a, mut b) = pair();
        let mut files = Vec::new();
        for i in 0..5 {
            let mut f = tempfile::tempfile().unwrap();
            write!(f, "file {i}").unwrap();
            files.push(f);
        }
        // Frames with 0, 2, 0 and 3 fds, sent without reading in between.
        a.send(&Msg::Ping(0), &[]).unwrap();
        a.send(&Msg::File { name: "a".into() }, &[files[0].as_fd(), files[1].as_fd()])
            .unwrap();
        a.send(&Msg::Ping(1), &[]).unwrap();
        let three: Vec<BorrowedFd> = files[2..].iter().map(|f| f.as_fd()).collect();
        a.send(&Msg::File { name: "b".into() }, &three).unwrap();

        let mut seen = Vec::new();
        for _ in 0..4 {
            let (m, fds): (Msg, _) = b.recv().unwrap();
            for fd in fds {
                let mut f = std::fs::File::from(fd);
                f.rewind().unwrap();
                let mut s = String::new();
                f.read_to_string(&mut s).unwrap();
                seen.push(s);
            }
            let _ = m;
        }
        assert_eq!(seen, ["file 0", "file 1", "file 2", "file 3", "file 4"]);
    }

    #[test]
    fn passed_pipe_is_usable() {
        let (mut a, mut b) = pair();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        a.send(&Msg::File { name: "pipe".into() }, &[pw.as_fd()]).unwrap();
        drop(pw);
        let (_, mut fds): (Msg, _) = b.recv().unwrap();
        let mut w = std::fs::File::from(fds.pop().unwrap());
        w.write_all(b"hello via fd").unwrap();
        drop(w);
        let mut s = String::new();
        std::fs::File::from(pr).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello via fd");
    }

    #[test]
    fn missing_fds() {
        let (mut a, mut b) = pair();
        // A header announcing 2 fds, sent without any.
        let frame = encode(&Msg::Ping(9), 2).unwrap();
        b.stream.write_all(&frame).unwrap();
        assert!(matches!(
            a.recv::<Msg>(),
            Err(IpcError::MissingFds { expected: 2, got: 0 })
        ));
    }

    #[test]
    fn poll_loop_api() {
        let (mut a, mut b) = pair();
        b.stream.set_nonblocking(true).unwrap();
        assert!(!b.fill().unwrap());
        assert!(b.try_next::<Msg>().unwrap().is_none());
        for i in 0..10 {
            a.send(&Msg::Ping(i), &[]).unwrap();
        }
        drop(a);
        let mut got = Vec::new();
        loop {
            let eof = b.fill().unwrap();
            loop {
                match b.try_next::<Msg>() {
                    Ok(Some((m, _))) => got.push(m),
                    Ok(None) => break,
                    Err(IpcError::Closed) => {
                        assert!(eof);
                        assert_eq!(got.len(), 10);
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn recv_timeout() {
        let (mut a, _b) = pair();
        a.set_timeout(Some(Duration::from_millis(20)));
        match a.recv::<Msg>() {
            Err(IpcError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn send_to_closed_peer() {
        let (mut a, b) = pair();
        drop(b);
        assert!(matches!(a.send(&Msg::Ping(1), &[]), Err(IpcError::Closed)));
    }
}
