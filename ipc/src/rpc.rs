//! Multiplexed request/reply over one async channel: many concurrent
//! callers on the client side, one spawned handler per request on the
//! server side. Replies are matched to requests by [`Envelope::id`].

use std::collections::HashMap;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::async_chan::{FrameReceiver, FrameSender, handshake, split};
use crate::frame::IpcError;

/// Most requests a server runs at once; it stops reading the channel while
/// this many handlers are busy.
pub const MAX_IN_FLIGHT: usize = 1024;

/// What travels in each frame of an RPC channel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Envelope<T> {
    /// Request id, chosen by the client and echoed in the reply.
    pub id: u64,
    /// The request or reply itself.
    pub body: T,
}

type Reply<Rep> = (Rep, Vec<OwnedFd>);

/// State shared between the client handles and the reader task.
struct Shared<Rep> {
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply<Rep>>>>,
    closed: AtomicBool,
}

impl<Rep> Shared<Rep> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply<Rep>>>> {
        // A poisoned map is still consistent: every operation is one call.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the channel closed and fails every pending call.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let pending = std::mem::take(&mut *self.lock());
        drop(pending);
    }
}

struct ClientInner<Rep> {
    tx: FrameSender,
    shared: Arc<Shared<Rep>>,
    next_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl<Rep> Drop for ClientInner<Rep> {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.close();
    }
}

/// Client side of an RPC channel. Cheap to clone; all clones share the
/// channel, which closes when the last clone is dropped.
pub struct RpcClient<Req, Rep> {
    inner: Arc<ClientInner<Rep>>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, Rep> Clone for RpcClient<Req, Rep> {
    fn clone(&self) -> Self {
        RpcClient {
            inner: self.inner.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, Rep> std::fmt::Debug for RpcClient<Req, Rep> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<Req, Rep> RpcClient<Req, Rep> {
    /// True once the channel is gone (peer closed, protocol error).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.load(Ordering::SeqCst)
    }
}

/// Removes a call's pending entry if the call is dropped before its request
/// went out (afterwards the reply still comes and is discarded).
struct PendingGuard<'a, Rep> {
    shared: &'a Shared<Rep>,
    id: u64,
    armed: bool,
}

impl<Rep> Drop for PendingGuard<'_, Rep> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lock().remove(&self.id);
        }
    }
}

impl<Req, Rep> RpcClient<Req, Rep>
where
    Req: Serialize,
    Rep: DeserializeOwned + Send + 'static,
{
    /// Wraps `stream`, does the handshake for `channel` and starts the task
    /// that routes replies to callers. Needs a tokio runtime.
    pub async fn new(stream: UnixStream, channel: &str) -> Result<Self, IpcError> {
        let (tx, rx) = split(stream)?;
        Self::from_parts(tx, rx, channel).await
    }

    /// Like [`new`](Self::new), over an already split channel.
    pub async fn from_parts(tx: FrameSender, mut rx: FrameReceiver, channel: &str) -> Result<Self, IpcError> {
        handshake(&tx, &mut rx, channel).await?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        let reader = tokio::spawn(read_replies(rx, tx.clone(), shared.clone()));
        Ok(RpcClient {
            inner: Arc::new(ClientInner {
                tx,
                shared,
                next_id: AtomicU64::new(1),
                reader,
            }),
            _req: PhantomData,
        })
    }

    /// Sends `req` with `fds` and waits for its reply. `Err(Closed)` once the
    /// channel is gone, for pending and later calls alike.
    pub async fn call(&self, req: Req, fds: Vec<OwnedFd>) -> Result<(Rep, Vec<OwnedFd>), IpcError> {
        let shared = &*self.inner.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(IpcError::Closed);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        shared.lock().insert(id, reply_tx);
        let mut guard = PendingGuard {
            shared,
            id,
            armed: true,
        };
        // The reader may have closed between the check and the insert.
        if shared.closed.load(Ordering::SeqCst) {
            return Err(IpcError::Closed);
        }
        let sent = self.inner.tx.send(&Envelope { id, body: req }, fds).await;
        match sent {
            Ok(()) => {}
            // Nothing was sent; the channel is still fine.
            Err(e @ (IpcError::Encode(_) | IpcError::TooLarge(_) | IpcError::TooManyFds(_))) => {
                return Err(e);
            }
            Err(e) => {
                let was_closed = shared.closed.load(Ordering::SeqCst);
                shared.close();
                self.inner.tx.shutdown();
                return Err(if was_closed { IpcError::Closed } else { e });
            }
        }
        guard.armed = false;
        drop(guard);
        reply_rx.await.map_err(|_| IpcError::Closed)
    }
}

/// Reader task: routes each reply to its caller; ends the channel on EOF,
/// a frame that does not decode, or a reply with an unknown id.
async fn read_replies<Rep: DeserializeOwned>(mut rx: FrameReceiver, tx: FrameSender, shared: Arc<Shared<Rep>>) {
    loop {
        match rx.recv::<Envelope<Rep>>().await {
            Ok((env, fds)) => {
                let waiter = shared.lock().remove(&env.id);
                match waiter {
                    // The caller may have gone away; the reply is dropped.
                    Some(w) => drop(w.send((env.body, fds))),
                    None => {
                        tracing::warn!(id = env.id, "ipc rpc: reply with unknown id, closing");
                        break;
                    }
                }
            }
            Err(IpcError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "ipc rpc: closing client channel");
                break;
            }
        }
    }
    shared.close();
    tx.shutdown();
}

/// Serves RPC requests on `stream`: handshake for `channel`, then one
/// spawned `handler` call per request, its reply sent back with the
/// request's id. Returns `Ok(())` when the client closes the channel (after
/// the running handlers finished), or the error that ended it; a request
/// that does not decode ends the channel. Needs a tokio runtime.
pub async fn serve<Req, Rep, H, Fut>(stream: UnixStream, channel: &str, handler: H) -> Result<(), IpcError>
where
    Req: DeserializeOwned + Send + 'static,
    Rep: Serialize + Send + 'static,
    H: Fn(Req, Vec<OwnedFd>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Rep, Vec<OwnedFd>)> + Send + 'static,
{
    let (tx, rx) = split(stream)?;
    serve_split(tx, rx, channel, handler).await
}

/// Like [`serve`], over an already split channel (the handshake is still
/// done here).
pub async fn serve_split<Req, Rep, H, Fut>(
    tx: FrameSender,
    mut rx: FrameReceiver,
    channel: &str,
    handler: H,
) -> Result<(), IpcError>
where
    Req: DeserializeOwned + Send + 'static,
    Rep: Serialize + Send + 'static,
    H: Fn(Req, Vec<OwnedFd>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Rep, Vec<OwnedFd>)> + Send + 'static,
{
    handshake(&tx, &mut rx, channel).await?;
    let handler = Arc::new(handler);
    let mut tasks: JoinSet<()> = JoinSet::new();
    let result = loop {
        tokio::select! {
            // Reap finished handlers; a panicking one ends the channel, since
            // its caller would otherwise wait forever.
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if matches!(&done, Err(e) if e.is_panic()) {
                    break Err(IpcError::Io(std::io::Error::other("rpc handler panicked")));
                }
            }
            // recv is cancel safe, so losing this race drops nothing.
            msg = rx.recv::<Envelope<Req>>(), if tasks.len() < MAX_IN_FLIGHT => {
                match msg {
                    Ok((Envelope { id, body }, fds)) => {
                        let handler = handler.clone();
                        let tx = tx.clone();
                        tasks.spawn(async move {
                            let (rep, fds) = handler(body, fds).await;
                            if let Err(e) = tx.send(&Envelope { id, body: rep }, fds).await {
                                tracing::debug!(id, error = %e, "ipc rpc: reply not sent");
                            }
                        });
                    }
                    Err(IpcError::Closed) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    match result {
        Ok(()) => {
            // Clean close: let running handlers finish (their replies may
            // still reach a half-closed client).
            while let Some(done) = tasks.join_next().await {
                if matches!(&done, Err(e) if e.is_panic()) {
                    tracing::warn!("ipc rpc: handler panicked after close");
                }
            }
            Ok(())
        }
        Err(e) => {
            tasks.abort_all();
            tx.shutdown();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Req {
        Echo(u64),
        Sleep { ms: u64, v: u64 },
        WriteFd(String),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Rep {
        Echo(u64),
        Done,
    }

    async fn handle(req: Req, mut fds: Vec<OwnedFd>) -> (Rep, Vec<OwnedFd>) {
        match req {
            Req::Echo(v) => (Rep::Echo(v), vec![]),
            Req::Sleep { ms, v } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (Rep::Echo(v), vec![])
            }
            Req::WriteFd(s) => {
                if let Some(fd) = fds.pop() {
                    let mut f = std::fs::File::from(fd);
                    let _ = f.write_all(s.as_bytes());
                }
                // Hand back a fresh pipe's read end with data in it.
                let (r, w) = nix::unistd::pipe().unwrap();
                std::fs::File::from(w).write_all(b"from server").unwrap();
                (Rep::Done, vec![r])
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_concurrent_calls_out_of_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(b, "test-rpc", handle));
        let client = RpcClient::<Req, Rep>::new(a, "test-rpc").await.unwrap();
        let mut calls = JoinSet::new();
        for i in 0..100u64 {
            let c = client.clone();
            calls.spawn(async move {
                // Later requests sleep less, so replies come back out of order.
                let ms = 100 - i;
                let (rep, fds) = c.call(Req::Sleep { ms, v: i }, vec![]).await.unwrap();
                assert!(fds.is_empty());
                assert_eq!(rep, Rep::Echo(i));
                i
            });
        }
        let mut seen = Vec::new();
        while let Some(r) = calls.join_next().await {
            seen.push(r.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        drop(client);
        assert!(server.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn fds_both_ways() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(serve(b, "fd", handle));
        let client = RpcClient::<Req, Rep>::new(a, "fd").await.unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        let (rep, mut fds) = client
            .call(Req::WriteFd("hello server".into()), vec![pw])
            .await
            .unwrap();
        assert_eq!(rep, Rep::Done);
        let mut s = String::new();
        std::fs::File::from(pr).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello server");
        let mut s = String::new();
        std::fs::File::from(fds.pop().unwrap()).read_to_string(&mut s).unwrap();
        assert_eq!(s, "from server");
    }

    #[tokio::test]
    async fn client_gets_closed_when_server_drops() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (tx, mut rx) = split(b).unwrap();
            handshake(&tx, &mut rx, "c").await.unwrap();
            // Read one request, then go away without answering.
            let _ = rx.recv::<Envelope<Req>>().await.unwrap();
        });
        let client = RpcClient::<Req, Rep>::new(a, "c").await.unwrap();
        let pending = client.call(Req::Echo(1), vec![]);
        assert!(matches!(pending.await, Err(IpcError::Closed)));
        server.await.unwrap();
        assert!(client.is_closed());
        assert!(matches!(client.call(Req::Echo(2), vec![]).await, Err(IpcError::Closed)));
    }

    #[tokio::test]
    async fn unknown_reply_id_closes() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (tx, mut rx) = split(b).unwrap();
            handshake(&tx, &mut rx, "c").await.unwrap();
            let (env, _) = rx.recv::<Envelope<Req>>().await.unwrap();
            tx.send(
                &Envelope {
                    id: env.id + 1000,
                    body: Rep::Done,
                },
                vec![],
            )
            .await
            .unwrap();
            let _ = rx.recv::<Envelope<Req>>().await;
        });
        let client = RpcClient::<Req, Rep>::new(a, "c").await.unwrap();
        assert!(matches!(client.call(Req::Echo(1), vec![]).await, Err(IpcError::Closed)));
        assert!(client.is_closed());
    }

    #[tokio::test]
    async fn server_rejects_garbage_without_panicking() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(b, "g", handle));
        let (tx, mut rx) = split(a).unwrap();
        handshake(&tx, &mut rx, "g").await.unwrap();
        // A frame that is not an Envelope<Req>.
        tx.send(&(u64::MAX, 99u32, "nope"), vec![]).await.unwrap();
        assert!(matches!(server.await.unwrap(), Err(IpcError::Decode(_))));
        assert!(matches!(rx.recv::<Envelope<Rep>>().await, Err(IpcError::Closed)));
    }

    #[tokio::test]
    async fn server_handshake_mismatch() {
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(b, "one", handle));
        let r = RpcClient::<Req, Rep>::new(a, "two").await;
        assert!(matches!(r, Err(IpcError::Handshake(_))));
        assert!(matches!(server.await.unwrap(), Err(IpcError::Handshake(_))));
    }
}
