//! The `BDAT` command (RFC 3030 CHUNKING). Each chunk is streamed into the
//! data fd queued handed over, in pieces, so memory does not grow with the
//! chunk size; the content is checked by [`BdatDecoder`].
//!
//! A chunk's bytes are always read, even when the command is refused
//! (out of order, over the size limit, queue unavailable), because they
//! follow the command unconditionally: leaving them unread would run
//! message content as commands. A BDAT with a size that does not parse is
//! answered 501 and the session closes, since where the chunk ends cannot
//! be known.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::{Next, Session, WRITE_CHUNK};
use crate::backend::Backend;
use crate::chunking::{BdatDecoder, parse_bdat_args};
use crate::conn::ConnError;
use crate::data::DataError;

/// Read a chunk from the socket in steps of this size, so a bad byte ends
/// the session without reading the rest of a huge chunk.
const STEP: u64 = 64 * 1024;

/// A BDAT transaction in progress (between the first chunk and LAST).
pub(super) struct Bdat {
    /// The queue slot: message id and data file; `None` when queued refused
    /// one (the chunks are then read and refused with `failed`).
    slot: Option<(String, std::fs::File)>,
    /// The reply every further chunk gets after a failure.
    failed: Option<String>,
    decoder: BdatDecoder,
    out: Vec<u8>,
    write_error: Option<std::io::Error>,
    backend: Arc<Backend>,
}

impl Bdat {
    fn new(backend: Arc<Backend>, max: u64, slot: Result<(String, OwnedFd), String>) -> Bdat {
        let (slot, failed) = match slot {
            Ok((id, fd)) => (Some((id, std::fs::File::from(fd))), None),
            Err(reply) => (None, Some(reply)),
        };
        Bdat {
            slot,
            failed,
            decoder: BdatDecoder::new(max),
            out: Vec::with_capacity(WRITE_CHUNK),
            write_error: None,
            backend,
        }
    }

    /// Write what was decoded so far to the data file.
    fn write_out(&mut self) {
        if let Some((_, file)) = &mut self.slot
            && self.write_error.is_none()
            && !self.out.is_empty()
            && let Err(e) = std::io::Write::write_all(file, &self.out)
        {
            self.write_error = Some(e);
        }
        self.out.clear();
    }

    /// Give the queue slot back (explicitly, awaiting queued).
    async fn abort(&mut self) {
        if let Some((id, _)) = self.slot.take() {
            self.backend.abort(&id).await;
        }
    }
}

impl Drop for Bdat {
    /// A transaction dropped without LAST (RSET, EHLO, end of session)
    /// gives its queue slot back.
    fn drop(&mut self) {
        if let Some((id, _)) = self.slot.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let backend = self.backend.clone();
            rt.spawn(async move { backend.abort(&id).await });
        }
    }
}

impl Session {
    /// `BDAT size [LAST]`.
    pub(super) async fn cmd_bdat(&mut self, args: &str) -> Result<Next, ConnError> {
        let Some((size, last)) = parse_bdat_args(args) else {
            self.conn
                .reply("501 5.5.4 Syntax: BDAT size [LAST]; closing, the chunk's end is unknown");
            return Ok(Next::Close);
        };
        let refusal = if self.mail_from.is_none() {
            Some("503 5.5.1 Need MAIL first")
        } else if self.rcpts.is_empty() {
            Some("503 5.5.1 Need RCPT first")
        } else {
            None
        };
        if let Some(reply) = refusal {
            if !self.conn.read_exact_into(size, |_| {}).await? {
                return Ok(Next::Close);
            }
            return Ok(self.fail(reply));
        }
        if self.bdat.is_none() {
            self.count_transfer();
            let slot = self.backend.new_message().await;
            self.bdat = Some(Box::new(Bdat::new(
                self.backend.clone(),
                self.settings.max_data_size,
                slot,
            )));
        }
        let Some(bdat) = self.bdat.as_mut() else {
            return Ok(Next::Close);
        };
        // Read the chunk in steps, checking and storing as it comes.
        let mut left = size;
        let mut bad = None;
        while left > 0 {
            let step = left.min(STEP);
            let mut err = None;
            let complete = self
                .conn
                .read_exact_into(step, |piece| {
                    if err.is_none() && bdat.failed.is_none() {
                        err = bdat.decoder.feed(piece, &mut bdat.out).err();
                    }
                })
                .await?;
            if !complete {
                bdat.abort().await;
                return Ok(Next::Close);
            }
            left -= step;
            if let Some(e) = err {
                bad = Some(e);
                break;
            }
            bdat.write_out();
        }
        if bad.is_none() && last && bdat.failed.is_none() {
            bad = bdat.decoder.finish(&mut bdat.out).err();
            bdat.write_out();
        }
        if let Some(e) = bad {
            bdat.abort().await;
            let what = match e {
                DataError::BareCr => "bare CR",
                DataError::BareLf => "bare LF",
                DataError::Nul => "NUL byte",
            };
            tracing::info!(ip = %self.peer.ip, "BDAT with a {what}: closing");
            let reply = format!("521 5.5.2 Message contains a {what}; lines must end in CRLF");
            self.rejected(self.rcpts.clone(), &reply);
            self.conn.reply(&reply);
            return Ok(Next::Close);
        }
        if let Some(reply) = bdat.failed.clone() {
            if last {
                self.reset();
            }
            self.conn.reply(&reply);
            return Ok(Next::Continue);
        }
        if !last {
            self.conn.reply(&format!("250 2.0.0 {size} octets received"));
            return Ok(Next::Continue);
        }
        // LAST: the same checks and commit as DATA.
        let reply = if bdat.decoder.stored().overflow() {
            "552 5.3.4 Message too big".to_string()
        } else if bdat.decoder.stored().looping(self.settings.max_received_headers) {
            tambo_ipc::metrics::inc(tambo_ipc::metrics::Metric::LoopsDetected, &[]);
            "554 5.4.6 Too many Received headers: mail loop?".to_string()
        } else if let Some(e) = &bdat.write_error {
            tracing::error!("writing the data file: {e}");
            super::storing_failed(e)
        } else {
            String::new()
        };
        if !reply.is_empty() {
            bdat.abort().await;
            self.rejected(self.rcpts.clone(), &reply);
            self.reset();
            self.conn.reply(&reply);
            return Ok(Next::Continue);
        }
        let data_size = bdat.decoder.stored().size();
        let Some((id, file)) = bdat.slot.take() else {
            return Ok(Next::Close);
        };
        self.commit_transaction(id, file, data_size).await
    }
}
