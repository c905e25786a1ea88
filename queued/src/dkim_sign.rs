//! DKIM signing of authenticated submissions, queued's half: read the
//! message back from its data file, split off the header section (at most
//! [`MAX_HEADERS`] bytes) and hash the body (relaxed canonicalization,
//! SHA-256, streamed in pieces, so memory does not grow with the message);
//! then ask authd, which holds the keys, for the `DKIM-Signature` headers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use mail_auth::common::crypto::{HashContext, HashImpl, Sha256};
use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::canonicalize::BodyHasher;
use tambo_ipc::proto::{AuthReply, AuthRequest};
use tambo_ipc::worker::PeerSlot;

/// Largest header section sent to authd for signing; a message with a
/// larger one is queued unsigned (with a warning).
pub const MAX_HEADERS: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;
const AUTHD_WAIT: Duration = Duration::from_secs(10);

/// What authd signs.
#[derive(Debug, PartialEq, Eq)]
pub struct SignInput {
    /// The header section without the blank line that ends it.
    pub headers: Vec<u8>,
    /// SHA-256 of the relaxed-canonical body.
    pub body_hash: Vec<u8>,
}

/// Why a message was not signed.
#[derive(Debug, thiserror::Error)]
pub enum SignFailure {
    /// Nothing to sign as the message stands (logged; queued unsigned).
    #[error("{0}")]
    Skip(String),
    /// authd is unreachable or failed: the client should try again.
    #[error("{0}")]
    Temporary(String),
}

/// Read `size` bytes of `file` and prepare the signing input.
pub fn prepare(file: &File, size: u64) -> Result<SignInput, SignFailure> {
    let io = |e: std::io::Error| SignFailure::Temporary(format!("reading the data file: {e}"));
    let mut head = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    // The header section: up to the first empty line.
    let body_start = loop {
        if let Some(p) = find_blank_line(&head) {
            break Some(p);
        }
        if head.len() as u64 >= size || head.len() > MAX_HEADERS {
            break None;
        }
        let n = file.read_at(&mut chunk, head.len() as u64).map_err(io)?;
        if n == 0 {
            break None;
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let (headers_end, body_offset) = match body_start {
        // `p` is the offset of the CRLF that ends the last header line.
        Some(p) => (p + 2, p + 4),
        None if head.len() as u64 >= size && head.len() <= MAX_HEADERS => (head.len(), head.len()),
        None => return Err(SignFailure::Skip(format!("header section over {MAX_HEADERS} bytes"))),
    };
    if headers_end > MAX_HEADERS {
        return Err(SignFailure::Skip(format!("header section over {MAX_HEADERS} bytes")));
    }
    let mut hasher = BodyHasher::new(Sha256::hasher(), Canonicalization::Relaxed, 0);
    let already = head.get(body_offset..).unwrap_or_default();
    hasher.write(already);
    let mut pos = head.len() as u64;
    while pos < size {
        let want = ((size - pos) as usize).min(CHUNK);
        let n = file.read_at(&mut chunk[..want], pos).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.write(&chunk[..n]);
        pos += n as u64;
    }
    head.truncate(headers_end);
    Ok(SignInput {
        headers: head,
        body_hash: hasher.finish().0.complete().as_ref().to_vec(),
    })
}

/// Offset of the CRLF ending the last header line, when the header section
/// ends (CRLF CRLF) within `buf`; a message starting with CRLF has no
/// headers.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return None;
    }
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Sign the message in `file` for `domain`: the headers to prepend (empty
/// when the domain has no key).
pub async fn sign(
    authd: &PeerSlot<AuthRequest, AuthReply>,
    domain: &str,
    file: &File,
    size: u64,
) -> Result<String, SignFailure> {
    let f = file
        .try_clone()
        .map_err(|e| SignFailure::Temporary(format!("data file: {e}")))?;
    let input = tokio::task::spawn_blocking(move || prepare(&f, size))
        .await
        .map_err(|e| SignFailure::Temporary(e.to_string()))??;
    let req = AuthRequest::DkimSign {
        domain: domain.to_string(),
        headers: input.headers,
        body_hash: input.body_hash,
    };
    match authd.call(req, Vec::new(), AUTHD_WAIT).await {
        Ok((AuthReply::DkimSignatures(sigs), _)) => Ok(sigs.concat()),
        Ok((AuthReply::Error(e), _)) => Err(SignFailure::Temporary(format!("authd: {e}"))),
        Ok((
            AuthReply::Exists(_)
            | AuthReply::Auth(_)
            | AuthReply::Certificates { .. }
            | AuthReply::Signature(_)
            | AuthReply::ArcSet { .. }
            | AuthReply::RelayAuth(_),
            _,
        )) => Err(SignFailure::Temporary("unexpected reply from authd".into())),
        Err(e) => Err(SignFailure::Temporary(format!("authd: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_of(msg: &[u8]) -> Result<SignInput, SignFailure> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, msg).unwrap();
        prepare(&File::open(&p).unwrap(), msg.len() as u64)
    }

    fn relaxed_hash(body: &[u8]) -> Vec<u8> {
        let mut h = BodyHasher::new(Sha256::hasher(), Canonicalization::Relaxed, 0);
        h.write(body);
        h.finish().0.complete().as_ref().to_vec()
    }

    #[test]
    fn splits_headers_and_hashes_body() {
        let i = input_of(b"From: a@b\r\nSubject: x\r\n\r\nbody  \r\n\r\n").unwrap();
        assert_eq!(i.headers, b"From: a@b\r\nSubject: x\r\n");
        assert_eq!(i.body_hash, relaxed_hash(b"body  \r\n\r\n"));
        // The same hash as python3-dkim gives for the relaxed body "body\r\n".
        assert_eq!(relaxed_hash(b"body  \r\n\r\n"), relaxed_hash(b"body\r\n"));
    }

    #[test]
    fn large_body_streams() {
        let mut msg = b"From: a@b\r\n\r\n".to_vec();
        let body: Vec<u8> = (0..300_000).map(|i| if i % 80 == 79 { b'\n' } else { b'x' }).collect();
        let body: Vec<u8> = body
            .split(|b| *b == b'\n')
            .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
            .collect();
        msg.extend_from_slice(&body);
        let i = input_of(&msg).unwrap();
        assert_eq!(i.body_hash, relaxed_hash(&body));
    }

    #[test]
    fn headers_only_and_oversized() {
        let i = input_of(b"From: a@b\r\n").unwrap();
        assert_eq!(i.headers, b"From: a@b\r\n");
        assert_eq!(i.body_hash, relaxed_hash(b""));
        let mut big = b"From: a@b\r\n".to_vec();
        for _ in 0..(MAX_HEADERS / 20) {
            big.extend_from_slice(b"X-Filler: 0123456789\r\n");
        }
        big.extend_from_slice(b"\r\nbody\r\n");
        assert!(matches!(input_of(&big), Err(SignFailure::Skip(_))));
    }
}
