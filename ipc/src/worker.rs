//! What every worker does first: take its control socket, drop privileges,
//! set up logging, and then talk to the supervisor.

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::IpcError;
use crate::async_chan::{FrameReceiver, FrameSender};
use crate::privdrop::{self, DropPlan};
use crate::proto::{CONTROL_CHANNEL, ControlMsg, MailLogEvent, WorkerKind, WorkerMsg, WorkerStart};
use crate::rpc::RpcClient;
use crate::secrets::SecretSet;

/// Environment variable naming the fd of the control socket.
pub const ENV_CONTROL_FD: &str = "TAMBO_CONTROL_FD";
/// Environment variable with the log filter (e.g. "info", "debug").
pub const ENV_LOG: &str = "TAMBO_LOG";

/// Errors while starting a worker.
#[derive(thiserror::Error, Debug)]
pub enum BootError {
    /// Not started by tambod.
    #[error("{0} is not set: this program is started by tambod, not by hand")]
    NoControlFd(&'static str),
    /// The control fd is not a socket.
    #[error("fd {0} is not a Unix socket")]
    BadControlFd(i32),
    /// Privilege drop failed.
    #[error(transparent)]
    Priv(#[from] privdrop::PrivError),
    /// The control channel failed.
    #[error("control channel: {0}")]
    Ipc(#[from] IpcError),
    /// The supervisor sent something else than Start first.
    #[error("control channel: expected Start, got {0}")]
    Protocol(String),
    /// The sandbox could not be installed.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The secret files did not come as described.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretError),
}

/// Synchronous first step of every worker's `main`: take the control fd and
/// The whole of a worker's `main`: [`bootstrap`] (which drops privileges),
/// a two-thread tokio runtime, `run` on the control socket, and the exit
/// status (1 with the error logged when `run` fails).
pub fn worker_main<F, Fut, E>(kind: WorkerKind, run: F) -> !
where
    F: FnOnce(UnixStream) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let (control, _plan) = match bootstrap(kind) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("tambo-{}: {e}", kind.name());
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tambo-{}: cannot start the async runtime: {e}", kind.name());
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match run(control).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}

/// drop privileges. Must run before any thread exists.
pub fn bootstrap(kind: WorkerKind) -> Result<(UnixStream, Option<DropPlan>), BootError> {
    let fd: i32 = std::env::var(ENV_CONTROL_FD)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(BootError::NoControlFd(ENV_CONTROL_FD))?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat on an integer fd with a valid out-pointer.
    let ok = unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0
        // SAFETY: fstat succeeded, so st is initialised.
        && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFSOCK;
    if !ok {
        return Err(BootError::BadControlFd(fd));
    }
    // SAFETY: the supervisor handed us this fd for exclusive use.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let stream = UnixStream::from(owned);
    let plan = privdrop::drop_from_env()?;
    init_logging(kind);
    let sandbox = crate::sandbox::install(kind)?;
    tracing::info!("{}: {sandbox}", kind.name());
    Ok((stream, plan))
}

/// Log to stderr (which the supervisor points at its own log) with the
/// worker's name on every line.
pub fn init_logging(kind: WorkerKind) {
    let filter = std::env::var(ENV_LOG).unwrap_or_else(|_| "info".to_string());
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true)
        .try_init();
    tracing::debug!(worker = kind.name(), "logging started");
}

/// The worker's end of the control channel.
pub struct ControlLink {
    /// Messages to the supervisor.
    pub tx: FrameSender,
    /// Messages from the supervisor.
    pub rx: FrameReceiver,
}

impl ControlLink {
    /// Handshake and wait for the Start message (a worker that gets no
    /// secret files).
    pub async fn start(stream: UnixStream) -> Result<(ControlLink, WorkerStart), BootError> {
        let (link, start, secrets) = Self::start_with_secrets(stream).await?;
        if !secrets.is_empty() {
            return Err(BootError::Protocol(
                "secret files, which this worker does not take".into(),
            ));
        }
        Ok((link, start))
    }

    /// Handshake, take the secret files that come first (authd), and wait
    /// for the Start message.
    pub async fn start_with_secrets(stream: UnixStream) -> Result<(ControlLink, WorkerStart, SecretSet), BootError> {
        let (tx, mut rx) = crate::async_chan::split(stream)?;
        crate::async_chan::handshake(&tx, &mut rx, CONTROL_CHANNEL).await?;
        let mut secrets = SecretSet::default();
        loop {
            let (msg, fds): (ControlMsg, Vec<OwnedFd>) = rx.recv().await?;
            match msg {
                ControlMsg::Secrets(files) => secrets.extend(files, fds)?,
                ControlMsg::Start(start) => {
                    start_mail_log_forwarder(tx.clone());
                    return Ok((ControlLink { tx, rx }, *start, secrets));
                }
                other => return Err(BootError::Protocol(format!("{other:?}"))),
            }
        }
    }

    /// Tell the supervisor how start-up went: [`WorkerMsg::Ready`], or
    /// [`WorkerMsg::Failed`] with the error (tambod then stops at start,
    /// naming it). The value, or the error as a message to exit with.
    pub async fn started<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> Result<T, String> {
        match result {
            Ok(v) => {
                self.send(WorkerMsg::Ready).await.map_err(|e| e.to_string())?;
                Ok(v)
            }
            Err(e) => {
                let message = format!("{e:#}");
                let _ = self
                    .send(WorkerMsg::Failed {
                        message: message.clone(),
                    })
                    .await;
                Err(message)
            }
        }
    }

    /// Tell the supervisor something.
    pub async fn send(&self, msg: WorkerMsg) -> Result<(), IpcError> {
        self.tx.send(&msg, Vec::new()).await
    }

    /// Next message from the supervisor, with its fds. Metrics requests
    /// are answered here (from [`crate::metrics::global`]) and sandbox
    /// probes made here; neither is returned.
    pub async fn recv(&mut self) -> Result<(ControlMsg, Vec<OwnedFd>), IpcError> {
        loop {
            let (msg, fds) = self.rx.recv().await?;
            if let ControlMsg::CollectMetrics { seq } = msg {
                let samples = crate::metrics::global().snapshot();
                self.send(WorkerMsg::Metrics { seq, samples }).await?;
                continue;
            }
            if let ControlMsg::SandboxProbe(probe) = &msg {
                tracing::warn!("{}", crate::sandbox::probe::attempt(probe));
                continue;
            }
            return Ok((msg, fds));
        }
    }
}

/// Mail-log events waiting to go to the supervisor, at most this many.
const MAIL_LOG_BACKLOG: usize = 4096;

static MAIL_LOG: OnceLock<mpsc::Sender<MailLogEvent>> = OnceLock::new();

fn start_mail_log_forwarder(tx: FrameSender) {
    let (etx, mut erx) = mpsc::channel::<MailLogEvent>(MAIL_LOG_BACKLOG);
    if MAIL_LOG.set(etx).is_err() {
        return;
    }
    tokio::spawn(async move {
        while let Some(ev) = erx.recv().await {
            if tx.send(&WorkerMsg::MailLog(ev), Vec::new()).await.is_err() {
                return;
            }
        }
    });
}

/// Write one event to the mail log (through the supervisor, which owns
/// it). Never blocks: when the supervisor lags far behind, the event goes
/// to this worker's own log instead. Outside a worker (unit tests) it only
/// goes to the tracing log.
pub fn mail_log(ev: MailLogEvent) {
    match MAIL_LOG.get() {
        Some(tx) => {
            if let Err(e) = tx.try_send(ev) {
                let ev = match e {
                    mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
                };
                tracing::warn!("mail log backlog full; event: {}", ev.line());
            }
        }
        None => tracing::info!("maillog: {}", ev.line()),
    }
}

/// Turn the single fd that came with a message into a Unix stream.
pub fn single_stream(fds: Vec<OwnedFd>) -> Option<UnixStream> {
    let mut it = fds.into_iter();
    let fd = it.next()?;
    if it.next().is_some() {
        return None;
    }
    Some(UnixStream::from(fd))
}

/// The client end of a peer channel, replaced whenever the supervisor hands
/// over a new socket (after the peer restarted).
pub struct PeerSlot<Req, Rep> {
    name: &'static str,
    current: watch::Sender<Option<Arc<RpcClient<Req, Rep>>>>,
}

impl<Req, Rep> PeerSlot<Req, Rep>
where
    Req: serde::Serialize + Send + Sync + 'static,
    Rep: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// An empty slot for the named channel.
    pub fn new(name: &'static str) -> Arc<Self> {
        let (current, _) = watch::channel(None);
        Arc::new(PeerSlot { name, current })
    }

    /// Connect over a fresh socket and make it the current client.
    pub async fn install(&self, stream: UnixStream) -> Result<(), IpcError> {
        let client = RpcClient::new(stream, self.name).await?;
        self.current.send_replace(Some(Arc::new(client)));
        tracing::debug!(channel = self.name, "peer channel (re)connected");
        Ok(())
    }

    /// The current client, waiting up to `wait` for one to appear when the
    /// peer is down. `None` when none came in time.
    pub async fn get(&self, wait: Duration) -> Option<Arc<RpcClient<Req, Rep>>> {
        let mut rx = self.current.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(c) = rx.borrow_and_update().as_ref()
                && !c.is_closed()
            {
                return Some(c.clone());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Call the peer, waiting up to `wait` for it to be reachable.
    pub async fn call(&self, req: Req, fds: Vec<OwnedFd>, wait: Duration) -> Result<(Rep, Vec<OwnedFd>), IpcError> {
        match self.get(wait).await {
            Some(client) => client.call(req, fds).await,
            None => Err(IpcError::Closed),
        }
    }
}
