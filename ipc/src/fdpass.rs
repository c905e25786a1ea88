//! Passing file descriptors over Unix stream sockets with `SCM_RIGHTS`.
//!
//! The fds of a frame travel with the `sendmsg` call that carries the frame's
//! first byte. The receiver appends every fd it gets to a FIFO queue, and each
//! decoded frame takes its announced number of fds from the front of it.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use serde::de::DeserializeOwned;

use crate::frame::{FrameDecoder, IpcError, MAX_FDS_PER_FRAME, decode_payload};

/// Number of fds the receive control buffer has room for.
const RECV_FDS: usize = MAX_FDS_PER_FRAME * 2;

/// Room for one `SCM_RIGHTS` message with `RECV_FDS` fds; u64 words keep the
/// buffer aligned for `cmsghdr`.
const CMSG_WORDS: usize = 64;

fn cmsg_space(nfds: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure computation.
    unsafe { libc::CMSG_SPACE((nfds * mem::size_of::<RawFd>()) as libc::c_uint) as usize }
}

/// Sends `data` on the socket `fd` with `fds` attached (`SCM_RIGHTS`), using
/// `MSG_NOSIGNAL`. Returns the number of bytes sent, which may be less than
/// `data.len()`; the fds always travel with the first byte sent. Retries on
/// `EINTR`. At most [`MAX_FDS_PER_FRAME`] fds may be sent at once.
pub fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    send_with_fds_flags(fd, data, fds, 0)
}

/// Like [`send_with_fds`], with extra `send` flags (e.g. `MSG_DONTWAIT`).
pub(crate) fn send_with_fds_flags(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds for one message",
        ));
    }
    if data.is_empty() && !fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fds need at least one data byte",
        ));
    }
    let mut cbuf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let space = cmsg_space(fds.len());
        debug_assert!(space <= mem::size_of_val(&cbuf));
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` zeroed, aligned bytes, enough
        // for one cmsghdr followed by fds.len() fds.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * mem::size_of::<RawFd>()) as libc::c_uint) as _;
            let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                p.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives bytes from the socket `fd` into `buf`, appending any fds that
/// arrive with them to `fds_out` (close-on-exec). Returns the number of bytes
/// read; 0 means end of stream. Retries on `EINTR`. If the kernel truncated
/// the control data (more fds than we allow), the fds that did arrive are
/// closed and an error is returned.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8], fds_out: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    recv_with_fds_flags(fd, buf, fds_out, 0)
}

/// Like [`recv_with_fds`], with extra `recv` flags (e.g. `MSG_DONTWAIT`).
pub(crate) fn recv_with_fds_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds_out: &mut VecDeque<OwnedFd>,
    flags: libc::c_int,
) -> io::Result<usize> {
    let mut cbuf = [0u64; CMSG_WORDS];
    let space = cmsg_space(RECV_FDS);
    debug_assert!(space <= mem::size_of_val(&cbuf));
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    let n = loop {
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        msg.msg_flags = 0;
        // SAFETY: msg points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut got = Vec::new();
    // SAFETY: the kernel filled msg_control with msg_controllen valid bytes;
    // the CMSG_* macros walk within them. Every fd in an SCM_RIGHTS message
    // was just installed in our table and is owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let hdr_len = data.offset_from(cmsg.cast::<u8>()) as usize;
                let len = ((*cmsg).cmsg_len as usize).saturating_sub(hdr_len);
                let count = len / mem::size_of::<RawFd>();
                let p = data.cast::<RawFd>();
                for i in 0..count {
                    let raw = p.add(i).read_unaligned();
                    if raw >= 0 {
                        got.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(got);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control data truncated: peer sent too many file descriptors",
        ));
    }
    fds_out.extend(got);
    Ok(n)
}

/// Most fds a channel keeps queued before it gives up on the peer. A well
/// behaved peer never has more than two frames' worth in flight, since a
/// channel reads only when no complete frame is buffered.
pub(crate) const MAX_QUEUED_FDS: usize = MAX_FDS_PER_FRAME * 4;

/// Size of one read from the socket.
const READ_CHUNK: usize = 64 * 1024;

/// Receive side state shared by the sync and async channels: the frame
/// decoder, the FIFO of received fds and the end-of-stream flag.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    dec: FrameDecoder,
    fds: VecDeque<OwnedFd>,
    scratch: Vec<u8>,
    eof: bool,
    dead: bool,
}

impl RecvBuf {
    pub(crate) fn new() -> Self {
        RecvBuf {
            dec: FrameDecoder::new(),
            fds: VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
            eof: false,
            dead: false,
        }
    }

    /// True when [`take_frame`](Self::take_frame) will not need a read: a
    /// frame (or an error, or the end of stream) is ready.
    pub(crate) fn ready(&self) -> bool {
        self.eof || self.dead || self.dec.has_frame() || self.fds.len() > MAX_QUEUED_FDS
    }

    /// True once the peer's end of stream was seen.
    pub(crate) fn eof(&self) -> bool {
        self.eof
    }

    /// One `recvmsg` into the decoder. `WouldBlock` and other errors are
    /// returned as they are; a connection reset counts as end of stream.
    pub(crate) fn read(&mut self, fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let want = self.dec.space().min(self.scratch.len());
        if want == 0 {
            // Unreachable while callers only read when !ready().
            return Err(io::Error::other("frame buffer full"));
        }
        let n = match recv_with_fds_flags(fd, &mut self.scratch[..want], &mut self.fds, flags) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            self.eof = true;
        } else {
            let taken = self.dec.push(&self.scratch[..n]);
            debug_assert_eq!(taken, n);
        }
        Ok(n)
    }

    /// The next complete frame, decoded, with its fds; `None` if more bytes
    /// are needed. At end of stream: `Closed` at a frame boundary, otherwise
    /// `Truncated`. After any error the buffer stays dead (`Closed`).
    pub(crate) fn take_frame<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>, IpcError> {
        if self.dead {
            return Err(IpcError::Closed);
        }
        let r = self.take_frame_inner();
        if r.is_err() {
            self.dead = true;
            self.fds.clear();
        }
        r
    }

    fn take_frame_inner<T: DeserializeOwned>(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>, IpcError> {
        if self.fds.len() > MAX_QUEUED_FDS {
            return Err(IpcError::TooManyFds(self.fds.len()));
        }
        match self.dec.next_frame()? {
            Some((payload, nfds)) => {
                if self.fds.len() < nfds {
                    return Err(IpcError::MissingFds {
                        expected: nfds,
                        got: self.fds.len(),
                    });
                }
                let fds: Vec<OwnedFd> = self.fds.drain(..nfds).collect();
                let msg = decode_payload(&payload)?;
                Ok(Some((msg, fds)))
            }
            None if self.eof && self.dec.is_empty() => Err(IpcError::Closed),
            None if self.eof => Err(IpcError::Truncated),
            None => Ok(None),
        }
    }
}

/// Maps a send error: a peer that went away is `Closed`.
pub(crate) fn send_error(e: io::Error) -> IpcError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected => IpcError::Closed,
        _ => IpcError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn pass_pipe_write_end() {
        let (a, b) = UnixStream::pair().unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        assert_eq!(send_with_fds(a.as_fd(), b"x", &[pw.as_fd()]).unwrap(), 1);
        drop(pw);
        let mut q = VecDeque::new();
        let mut buf = [0u8; 8];
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut q).unwrap(), 1);
        assert_eq!(q.len(), 1);
        let mut w = std::fs::File::from(q.pop_front().unwrap());
        w.write_all(b"through the pipe").unwrap();
        drop(w);
        let mut s = String::new();
        std::fs::File::from(pr).read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the pipe");
    }

    #[test]
    fn too_many_fds_truncated_are_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        // Send 20 fds with raw sendmsg: more than the receiver accepts.
        let files: Vec<OwnedFd> = (0..20).map(|_| OwnedFd::from(tempfile::tempfile().unwrap())).collect();
        let raws: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raws)];
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[std::io::IoSlice::new(b"y")],
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        let mut q = VecDeque::new();
        let mut buf = [0u8; 8];
        let e = recv_with_fds(b.as_fd(), &mut buf, &mut q).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(q.is_empty());
        // Refused on the sending side too.
        let borrowed: Vec<BorrowedFd> = files.iter().map(|f| f.as_fd()).collect();
        assert!(send_with_fds(a.as_fd(), b"z", &borrowed).is_err());
    }

    #[test]
    fn eof_is_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let mut q = VecDeque::new();
        let mut buf = [0u8; 8];
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut q).unwrap(), 0);
    }
}
