//! Async (tokio) framed channel for the workers, split into a cloneable
//! sender and a receiver.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::unix::AsyncFd;

use crate::fdpass::{RecvBuf, send_error, send_with_fds};
use crate::frame::{Hello, IpcError, check_hello, encode};

/// Sending half of a channel. Clones share the socket; a mutex makes every
/// frame go out whole, never interleaved with another sender's.
#[derive(Clone, Debug)]
pub struct FrameSender {
    io: Arc<AsyncFd<UnixStream>>,
    state: Arc<tokio::sync::Mutex<SendState>>,
}

#[derive(Debug, Default)]
struct SendState {
    /// A frame was left half written (a send was cancelled or failed).
    broken: bool,
}

/// Receiving half of a channel.
#[derive(Debug)]
pub struct FrameReceiver {
    io: Arc<AsyncFd<UnixStream>>,
    rx: RecvBuf,
}

/// Sets `stream` nonblocking, registers it with the current tokio runtime
/// and splits it into its two halves. Fails (without panicking) outside a
/// tokio runtime.
pub fn split(stream: UnixStream) -> Result<(FrameSender, FrameReceiver), IpcError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(IpcError::Io(io::Error::other(
            "ipc::async_chan::split called outside a tokio runtime",
        )));
    }
    stream.set_nonblocking(true)?;
    // SAFETY: the UnixStream owns its fd and is moved into the AsyncFd,
    // which only hands out shared references: the fd stays open and the same
    // until the AsyncFd (and with it the stream) is dropped.
    let io = unsafe { AsyncFd::register(stream) }.map_err(io::Error::from)?;
    let io = Arc::new(io);
    Ok((
        FrameSender {
            io: io.clone(),
            state: Arc::default(),
        },
        FrameReceiver { io, rx: RecvBuf::new() },
    ))
}

impl FrameSender {
    /// Sends one message with `fds` attached (they are closed here once
    /// sent). The message is encoded before the returned future first runs.
    /// Cancelling the future in the middle of a frame breaks the sender:
    /// later sends fail. `Err(Closed)` if the peer is gone.
    pub fn send<'s, T: Serialize>(
        &'s self,
        msg: &T,
        fds: Vec<OwnedFd>,
    ) -> impl Future<Output = Result<(), IpcError>> + Send + use<'s, T> {
        let frame = encode(msg, fds.len());
        async move {
            let frame = frame?;
            let mut state = self.state.lock().await;
            if state.broken {
                return Err(IpcError::Io(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "an earlier send stopped inside a frame",
                )));
            }
            let mut off = 0;
            while off < frame.len() {
                let mut guard = self.io.writable().await?;
                let attach: Vec<BorrowedFd<'_>> = if off == 0 {
                    fds.iter().map(AsFd::as_fd).collect()
                } else {
                    Vec::new()
                };
                match guard.try_io(|s| send_with_fds(s.get_ref().as_fd(), &frame[off..], &attach)) {
                    Ok(Ok(0)) => {
                        state.broken = off > 0;
                        return Err(IpcError::Io(io::ErrorKind::WriteZero.into()));
                    }
                    Ok(Ok(n)) => {
                        off += n;
                        // Until the frame is complete, a cancellation leaves
                        // the stream unusable.
                        state.broken = off < frame.len();
                    }
                    Ok(Err(e)) => {
                        state.broken = off > 0;
                        return Err(send_error(e));
                    }
                    Err(_would_block) => {}
                }
            }
            Ok(())
        }
    }

    /// Shuts the socket down in both directions: the peer and our own
    /// receiver see end of stream, later sends fail.
    pub fn shutdown(&self) {
        let _ = self.io.get_ref().shutdown(Shutdown::Both);
    }
}

impl FrameReceiver {
    /// Receives the next message and its fds. `Err(Closed)` on a clean end
    /// of stream, `Err(Truncated)` if it ends inside a frame. Cancel safe:
    /// dropping the future loses no data. After an error the receiver only
    /// returns `Err(Closed)`.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<(T, Vec<OwnedFd>), IpcError> {
        loop {
            if let Some(frame) = self.rx.take_frame()? {
                return Ok(frame);
            }
            let mut guard = self.io.readable().await?;
            let rx = &mut self.rx;
            match guard.try_io(|s| rx.read(s.get_ref().as_fd(), 0)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(IpcError::Io(e)),
                Err(_would_block) => {}
            }
        }
    }
}

/// Exchanges [`Hello`]s over a split channel: sends ours, then reads and
/// checks the peer's.
pub async fn handshake(tx: &FrameSender, rx: &mut FrameReceiver, channel: &str) -> Result<(), IpcError> {
    tx.send(&Hello::new(channel), Vec::new()).await?;
    let received = rx.recv::<Hello>().await;
    check_hello(received, channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{HEADER_LEN, MAGIC, MAX_FRAME};
    use serde::Deserialize;
    use std::io::{Read, Seek, Write};

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Msg {
        Hi(String),
        Num(u64),
        Blob(Vec<u8>),
    }

    fn pair() -> (FrameSender, FrameReceiver, FrameSender, FrameReceiver) {
        let (a, b) = UnixStream::pair().unwrap();
        let (at, ar) = split(a).unwrap();
        let (bt, br) = split(b).unwrap();
        (at, ar, bt, br)
    }

    #[test]
    fn split_outside_runtime_is_an_error() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(matches!(split(a), Err(IpcError::Io(_))));
    }

    #[tokio::test]
    async fn handshake_and_roundtrip() {
        let (at, mut ar, bt, mut br) = pair();
        let (r1, r2) = tokio::join!(
            handshake(&at, &mut ar, "smtpd-authd"),
            handshake(&bt, &mut br, "smtpd-authd")
        );
        r1.unwrap();
        r2.unwrap();
        at.send(&Msg::Hi("x".into()), vec![]).await.unwrap();
        let (m, fds) = br.recv::<Msg>().await.unwrap();
        assert_eq!(m, Msg::Hi("x".into()));
        assert!(fds.is_empty());
        drop(at);
        drop(ar);
        assert!(matches!(br.recv::<Msg>().await, Err(IpcError::Closed)));
    }

    #[tokio::test]
    async fn handshake_mismatches() {
        let (at, mut ar, bt, mut br) = pair();
        let (r1, r2) = tokio::join!(handshake(&at, &mut ar, "a"), handshake(&bt, &mut br, "b"));
        assert!(matches!(r1, Err(IpcError::Handshake(_))));
        assert!(matches!(r2, Err(IpcError::Handshake(_))));

        let (at, mut ar, bt, _br) = pair();
        let wrong = Hello {
            magic: MAGIC,
            version: 7,
            channel: "a".into(),
        };
        bt.send(&wrong, vec![]).await.unwrap();
        assert!(matches!(
            handshake(&at, &mut ar, "a").await,
            Err(IpcError::VersionMismatch { ours: 1, theirs: 7 })
        ));

        let (at, mut ar, bt, _br) = pair();
        let wrong = Hello {
            magic: *b"XXXXXXXX",
            version: 1,
            channel: "a".into(),
        };
        bt.send(&wrong, vec![]).await.unwrap();
        assert!(matches!(
            handshake(&at, &mut ar, "a").await,
            Err(IpcError::Handshake(_))
        ));
    }

    #[tokio::test]
    async fn truncated_garbage_oversize() {
        // EOF mid-frame.
        let (a, b) = UnixStream::pair().unwrap();
        let (_t, mut r) = split(a).unwrap();
        let frame = encode(&Msg::Num(5), 0).unwrap();
        (&b).write_all(&frame[..3]).unwrap();
        drop(b);
        assert!(matches!(r.recv::<Msg>().await, Err(IpcError::Truncated)));

        // Garbage payload.
        let (a, b) = UnixStream::pair().unwrap();
        let (_t, mut r) = split(a).unwrap();
        (&b).write_all(&[0, 0, 0, 2, 0, 0x55, 0x55]).unwrap();
        assert!(matches!(r.recv::<Msg>().await, Err(IpcError::Decode(_))));
        assert!(matches!(r.recv::<Msg>().await, Err(IpcError::Closed)));

        // Trailing bytes.
        let (a, b) = UnixStream::pair().unwrap();
        let (_t, mut r) = split(a).unwrap();
        let mut frame = encode(&Msg::Num(5), 0).unwrap();
        frame.extend([1, 2]);
        let len = (frame.len() - HEADER_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        (&b).write_all(&frame).unwrap();
        assert!(matches!(r.recv::<Msg>().await, Err(IpcError::Decode(_))));

        // Oversize header.
        let (a, b) = UnixStream::pair().unwrap();
        let (_t, mut r) = split(a).unwrap();
        (&b).write_all(&[0xff, 0xff, 0xff, 0xff, 0]).unwrap();
        assert!(matches!(r.recv::<Msg>().await, Err(IpcError::TooLarge(_))));

        // Oversize on the sending side.
        let (t, _r, _t2, _r2) = pair();
        assert!(matches!(
            t.send(&Msg::Blob(vec![0; MAX_FRAME]), vec![]).await,
            Err(IpcError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn fds_back_to_back_and_usable() {
        let (at, _ar, _bt, mut br) = pair();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(b"tempfile data").unwrap();
        at.send(&Msg::Num(1), vec![pw]).await.unwrap();
        at.send(&Msg::Num(2), vec![]).await.unwrap();
        at.send(&Msg::Num(3), vec![OwnedFd::from(tmp)]).await.unwrap();

        let (m, mut fds) = br.recv::<Msg>().await.unwrap();
        assert_eq!((m, fds.len()), (Msg::Num(1), 1));
        let mut w = std::fs::File::from(fds.pop().unwrap());
        w.write_all(b"piped").unwrap();
        drop(w);
        let mut s = String::new();
        std::fs::File::from(pr).read_to_string(&mut s).unwrap();
        assert_eq!(s, "piped");

        let (m, fds) = br.recv::<Msg>().await.unwrap();
        assert_eq!((m, fds.len()), (Msg::Num(2), 0));
        let (m, mut fds) = br.recv::<Msg>().await.unwrap();
        assert_eq!((m, fds.len()), (Msg::Num(3), 1));
        let mut f = std::fs::File::from(fds.pop().unwrap());
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "tempfile data");
    }

    #[tokio::test]
    async fn missing_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_t, mut r) = split(a).unwrap();
        (&b).write_all(&encode(&Msg::Num(1), 3).unwrap()).unwrap();
        assert!(matches!(
            r.recv::<Msg>().await,
            Err(IpcError::MissingFds { expected: 3, got: 0 })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_senders_do_not_interleave() {
        let (at, _ar, _bt, mut br) = pair();
        let blob = vec![0xabu8; 300_000];
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let at = at.clone();
            let blob = blob.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..4 {
                    at.send(&Msg::Num(i * 10 + j), vec![]).await.unwrap();
                    at.send(&Msg::Blob(blob.clone()), vec![]).await.unwrap();
                }
            }));
        }
        let reader = tokio::spawn(async move {
            let mut n = 0;
            let mut blobs = 0;
            while n < 64 {
                match br.recv::<Msg>().await.unwrap().0 {
                    Msg::Blob(b) => {
                        assert_eq!(b.len(), 300_000);
                        blobs += 1;
                    }
                    Msg::Num(_) => {}
                    Msg::Hi(_) => unreachable!(),
                }
                n += 1;
            }
            blobs
        });
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), 32);
    }

    #[tokio::test]
    async fn shutdown_ends_both_sides() {
        let (at, mut ar, _bt, mut br) = pair();
        at.shutdown();
        assert!(matches!(br.recv::<Msg>().await, Err(IpcError::Closed)));
        assert!(matches!(ar.recv::<Msg>().await, Err(IpcError::Closed)));
        assert!(at.send(&Msg::Num(1), vec![]).await.is_err());
    }
}
