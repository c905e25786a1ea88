//! The operator's requests from the control socket (`tambo queue`,
//! `mailq`): the supervisor checked the client's credentials and handed us
//! the connection. One request per connection, bounded in size and time;
//! a bounded number of connections at once.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tambo_ipc::IpcError;
use tambo_ipc::async_chan::{FrameSender, split};
use tambo_ipc::frame::{HEADER_LEN, Hello, decode_payload};
use tambo_ipc::proto::{ADMIN_CHANNEL, AdminMessage, AdminRcpt, AdminReply, AdminRequest, MAX_ADMIN_REQUEST};
use tokio::sync::Semaphore;

use crate::entry::{QueueEntry, RcptState};
use crate::manager::{Message, Queue, unix_now};
use crate::store::valid_id;

/// Connections waiting for their request at once; more are told to try
/// again. Each holds at most two small frames, for at most
/// [`REQUEST_TIMEOUT`].
const MAX_CLIENTS: usize = 256;
/// Requests executed at once; others wait their turn.
const MAX_RUNNING: usize = 8;
/// Time a client has to send its hello and request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to take each reply frame.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Recipients listed per message, to bound each reply frame.
const MAX_LISTED_RCPTS: usize = 1000;
/// Characters of an error shown per recipient.
const MAX_ERROR_CHARS: usize = 300;
/// Bytes of a message's header section shown by `show`.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Limits concurrent admin connections and running requests.
pub struct AdminGate(Arc<Semaphore>, Semaphore);

impl AdminGate {
    /// A gate for [`MAX_CLIENTS`] connections, [`MAX_RUNNING`] requests.
    pub fn new() -> Self {
        AdminGate(Arc::new(Semaphore::new(MAX_CLIENTS)), Semaphore::new(MAX_RUNNING))
    }
}

/// Serve one control-socket connection to the end.
pub async fn serve(queue: Arc<Queue>, gate: &AdminGate, stream: UnixStream, uid: u32, user: Option<String>) {
    let permit = gate.0.clone().try_acquire_owned();
    let req = if permit.is_ok() {
        match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&stream)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
        }
    } else {
        Err("too many control connections at once, try again".to_string())
    };
    let (tx, mut rx) = match split(stream) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("control client: {e}");
            return;
        }
    };
    if send_hello(&tx).await.is_err() {
        return;
    }
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(uid, "control client: {e}");
            let _ = send(&tx, AdminReply::Error(e)).await;
            return;
        }
    };
    let Ok(_running) = gate.1.acquire().await else {
        return;
    };
    if let AdminRequest::Submit { from, rcpts } = req {
        tracing::info!(uid, from, ?rcpts, "control: local submission");
        let reply = match crate::submit::submit(&queue, &mut rx, uid, user, from, rcpts).await {
            Ok(id) => send(&tx, AdminReply::Done(format!("queued as {id}")))
                .await
                .and(send(&tx, AdminReply::End).await),
            Err(e) => send(&tx, AdminReply::Error(e)).await,
        };
        if let Err(e) = reply {
            tracing::warn!(uid, "control client: {e}");
        }
        return;
    }
    tracing::info!(uid, "control: {req:?}");
    if let Err(e) = answer(&queue, &tx, req).await {
        tracing::warn!(uid, "control client: {e}");
    }
}

/// Read the client's hello and its request: two frames, each at most
/// [`MAX_ADMIN_REQUEST`] bytes (checked before anything is buffered past
/// that), fds refused.
async fn read_request(stream: &UnixStream) -> Result<AdminRequest, String> {
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let dup = stream.try_clone().map_err(|e| e.to_string())?;
    // SAFETY: `dup` owns its fd and is moved into the AsyncFd, which keeps
    // it open and unchanged until it is dropped at the end of this function.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(dup) }.map_err(|e| e.to_string())?;
    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    while frames.len() < 2 {
        // A complete frame buffered?
        if buf.len() >= HEADER_LEN {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > MAX_ADMIN_REQUEST {
                return Err(format!("request frame of {len} bytes is too large"));
            }
            if buf[4] != 0 {
                return Err("file descriptors are not accepted here".into());
            }
            if buf.len() >= HEADER_LEN + len {
                frames.push(buf[HEADER_LEN..HEADER_LEN + len].to_vec());
                buf.drain(..HEADER_LEN + len);
                continue;
            }
        }
        let mut chunk = [0u8; 1024];
        let want = (2 * (HEADER_LEN + MAX_ADMIN_REQUEST))
            .saturating_sub(buf.len())
            .min(chunk.len());
        let mut guard = fd.readable().await.map_err(|e| e.to_string())?;
        match guard.try_io(|s| s.get_ref().read(&mut chunk[..want])) {
            Ok(Ok(0)) => return Err("connection closed before the request".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_would_block) => {}
        }
    }
    let hello: Hello = decode_payload(&frames[0]).map_err(|e| e.to_string())?;
    hello.check(ADMIN_CHANNEL).map_err(|e| e.to_string())?;
    decode_payload::<AdminRequest>(&frames[1]).map_err(|e| format!("bad request: {e}"))
}

async fn send_hello(tx: &FrameSender) -> Result<(), IpcError> {
    match tokio::time::timeout(REPLY_TIMEOUT, tx.send(&Hello::new(ADMIN_CHANNEL), Vec::new())).await {
        Ok(r) => r,
        Err(_) => Err(IpcError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

async fn send(tx: &FrameSender, reply: AdminReply) -> Result<(), IpcError> {
    match tokio::time::timeout(REPLY_TIMEOUT, tx.send(&reply, Vec::new())).await {
        Ok(r) => r,
        Err(_) => Err(IpcError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

async fn answer(queue: &Arc<Queue>, tx: &FrameSender, req: AdminRequest) -> Result<(), IpcError> {
    match req {
        AdminRequest::List => {
            let mut msgs: Vec<Arc<Message>> = queue.all_messages();
            msgs.retain(|m| !m.is_removed());
            let mut summaries: Vec<AdminMessage> = msgs.iter().map(|m| summary(&m.snapshot())).collect();
            summaries.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
            for s in summaries {
                send(tx, AdminReply::Message(Box::new(s))).await?;
            }
            send(tx, AdminReply::End).await
        }
        AdminRequest::Show { id } => {
            let msg = match find(queue, &id) {
                Ok(m) => m,
                Err(e) => return send(tx, AdminReply::Error(e)).await,
            };
            let entry = msg.snapshot();
            let headers = read_headers(queue, &entry);
            send(tx, AdminReply::Message(Box::new(summary(&entry)))).await?;
            send(
                tx,
                AdminReply::Details {
                    remote_ip: entry.remote_ip.clone(),
                    helo: entry.helo.clone(),
                    auth_user: entry.auth_user.clone(),
                    headers,
                },
            )
            .await?;
            send(tx, AdminReply::End).await
        }
        AdminRequest::Flush { id } => {
            let targets = match &id {
                None => queue.all_messages(),
                Some(id) => match find(queue, id) {
                    Ok(m) => vec![m],
                    Err(e) => return send(tx, AdminReply::Error(e)).await,
                },
            };
            let (mut n, mut held) = (0, 0);
            let now = unix_now();
            for m in &targets {
                let mut e = m.entry.lock().unwrap_or_else(|p| p.into_inner());
                // A held message keeps its schedule: flush never releases.
                if e.held {
                    held += 1;
                    continue;
                }
                let mut touched = false;
                for r in e.rcpts.iter_mut().filter(|r| r.state == RcptState::Pending) {
                    r.next_attempt = r.next_attempt.min(now);
                    touched = true;
                }
                drop(e);
                if touched {
                    n += 1;
                    m.wake.notify_one();
                }
            }
            let mut text = format!("{n} message(s) scheduled for immediate delivery");
            if held > 0 {
                text.push_str(&format!(" ({held} held: release them to deliver)"));
            }
            send(tx, AdminReply::Done(text)).await?;
            send(tx, AdminReply::End).await
        }
        AdminRequest::Hold { id } | AdminRequest::Release { id } if !valid_id(&id) => {
            send(tx, AdminReply::Error(format!("{id:?} is not a queue ID"))).await
        }
        AdminRequest::Hold { id } => set_held(queue, tx, &id, true).await,
        AdminRequest::Release { id } => set_held(queue, tx, &id, false).await,
        AdminRequest::ResolveAddress { address } => match queue.resolve_address(&address).await {
            Ok(list) => {
                for r in list {
                    send(tx, AdminReply::Done(format!("{}\t{}", r.address, route_kind(&r.route)))).await?;
                }
                send(tx, AdminReply::End).await
            }
            Err(e) => send(tx, AdminReply::Error(e)).await,
        },
        AdminRequest::DomainInfoRemove { domain } => {
            let domain = match tambo_common::names::normalize_domain(&domain) {
                Ok(d) => d,
                Err(e) => return send(tx, AdminReply::Error(format!("{domain}: {e}"))).await,
            };
            match queue.domaininfo_remove(&domain) {
                Ok(true) => {
                    tracing::info!(domain, "domaininfo: security levels forgotten");
                    send(tx, AdminReply::Done(format!("{domain}: removed"))).await?;
                    send(tx, AdminReply::End).await
                }
                Ok(false) => {
                    send(tx, AdminReply::Done(format!("{domain}: nothing recorded"))).await?;
                    send(tx, AdminReply::End).await
                }
                Err(e) => send(tx, AdminReply::Error(e)).await,
            }
        }
        AdminRequest::Submit { .. } => {
            // Served by `submit`, which needs the receiving half.
            send(tx, AdminReply::Error("submission is not possible here".into())).await
        }
        AdminRequest::Remove { id } => {
            let msg = match find(queue, &id) {
                Ok(m) => m,
                Err(e) => return send(tx, AdminReply::Error(e)).await,
            };
            let result = {
                let _io = msg.io.lock().await;
                if msg.removed.swap(true, Ordering::SeqCst) {
                    Err(format!("{id} is already removed"))
                } else {
                    match queue.store.remove(&id).await {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            msg.removed.store(false, Ordering::SeqCst);
                            Err(format!("cannot remove {id}: {e}"))
                        }
                    }
                }
            };
            match result {
                Ok(()) => {
                    queue.forget(&id);
                    msg.wake.notify_one();
                    tracing::info!(id, "removed by the operator (no DSN)");
                    send(tx, AdminReply::Done(format!("{id} removed"))).await?;
                    send(tx, AdminReply::End).await
                }
                Err(e) => send(tx, AdminReply::Error(e)).await,
            }
        }
    }
}

async fn set_held(queue: &Arc<Queue>, tx: &FrameSender, id: &str, held: bool) -> Result<(), IpcError> {
    let msg = match find(queue, id) {
        Ok(m) => m,
        Err(e) => return send(tx, AdminReply::Error(e)).await,
    };
    let result = {
        let _io = msg.io.lock().await;
        if msg.is_removed() {
            Err(format!("{id} is not in the queue"))
        } else {
            let snapshot = {
                let mut e = msg.entry.lock().unwrap_or_else(|p| p.into_inner());
                e.held = held;
                e.clone()
            };
            queue
                .store
                .write(snapshot)
                .await
                .map_err(|e| format!("cannot record the change of {id}: {e}"))
        }
    };
    match result {
        Ok(()) => {
            msg.wake.notify_one();
            let what = if held { "held" } else { "released" };
            tracing::info!(id, "{what} by the operator");
            send(tx, AdminReply::Done(format!("{id} {what}"))).await?;
            send(tx, AdminReply::End).await
        }
        Err(e) => send(tx, AdminReply::Error(e)).await,
    }
}

fn find(queue: &Queue, id: &str) -> Result<Arc<Message>, String> {
    if !valid_id(id) {
        return Err(format!("{id:?} is not a queue ID"));
    }
    match queue.message(id) {
        Some(m) if !m.is_removed() => Ok(m),
        _ => Err(format!("{id} is not in the queue")),
    }
}

fn summary(e: &QueueEntry) -> AdminMessage {
    let rcpts = e
        .rcpts
        .iter()
        .take(MAX_LISTED_RCPTS)
        .map(|r| AdminRcpt {
            address: r.address.clone(),
            original: if r.original == r.address {
                String::new()
            } else {
                r.original.clone()
            },
            state: match r.state {
                RcptState::Pending => "pending",
                RcptState::Delivered => "delivered",
                RcptState::Failed => "failed",
            }
            .to_string(),
            attempts: r.attempts,
            last_error: r.last_error.chars().take(MAX_ERROR_CHARS).collect(),
            next_attempt: r.next_attempt,
        })
        .collect();
    AdminMessage {
        id: e.id.clone(),
        size: e.data_size,
        created: e.created,
        from: e.from.clone(),
        held: e.held,
        rcpts,
        more_rcpts: e.rcpts.len().saturating_sub(MAX_LISTED_RCPTS) as u32,
    }
}

/// The header section as deliverd sends it: tambo's prefix and the
/// message's own header, up to the blank line (bounded).
fn read_headers(queue: &Queue, e: &QueueEntry) -> String {
    let mut out = e.header_prefix.as_bytes().to_vec();
    let mut data = Vec::new();
    match queue.store.open_data(&e.id) {
        Ok(f) => {
            let _ = f.take(MAX_HEADER_BYTES as u64).read_to_end(&mut data);
        }
        Err(err) => return format!("(cannot read the data file: {err})"),
    }
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(data.len());
    out.extend_from_slice(&data[..end]);
    if end == data.len() && data.len() == MAX_HEADER_BYTES {
        out.extend_from_slice(b"[... header truncated]\r\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a resolved recipient is reached, for `tambo aliases-resolve`.
fn route_kind(route: &tambo_ipc::proto::RcptRoute) -> String {
    use tambo_ipc::proto::RcptRoute;
    match route {
        RcptRoute::Local { .. } => "local mailbox".to_string(),
        RcptRoute::Pipe { argv } => format!("pipe: {}", argv.join(" ")),
        RcptRoute::Remote { via } if via.is_empty() => "remote (MX)".to_string(),
        RcptRoute::Remote { via } => format!("remote via {}", via.join("/")),
    }
}
