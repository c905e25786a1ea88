//! The supervisor's event loop: start the workers, wire their peer
//! channels, restart the ones that die (with back-off, giving up on one that
//! keeps dying), pass SIGHUP on as reload and stop everything on SIGTERM.
//!
//! The loop is single-threaded and synchronous (poll over a signalfd and
//! the control sockets), so every fork happens in a process without threads.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tambo_ipc::proto::{ControlMsg, PeerChannel, SandboxProbe, WorkerKind, WorkerMsg, WorkerStart};
use tambo_ipc::secrets::{self, SecretFile, SecretFrame, Stamp};

use crate::control::{Accepted, ControlSocket};
use crate::listeners::Listener;
use crate::ops::Ops;
use crate::spawn::{self, SpawnPlan, Started};

/// Deaths within [`DEATH_WINDOW`] after which a worker is given up on.
const MAX_DEATHS: usize = 5;
/// The window in which deaths are counted.
const DEATH_WINDOW: Duration = Duration::from_secs(60);
/// Time given to workers to finish on SIGTERM before they are killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the users files are checked for changes, as chasquid reloads
/// them (`--testing__reload_every` changes it).
pub const USERS_CHECK_EVERY: Duration = Duration::from_secs(30);
/// While a worker starts, how often tambod says it is still waiting.
const START_PATIENCE: Duration = Duration::from_secs(60);

enum SlotState {
    Running(Box<Started>, bool),
    Waiting(Instant),
    GivenUp,
}

struct Slot {
    state: SlotState,
    deaths: VecDeque<Instant>,
}

/// What the supervisor needs to reload.
pub trait Reloader {
    /// Read the configuration again; `Err` keeps the old one.
    fn reload(&mut self) -> Result<WorkerStart, String>;
}

/// The running supervisor.
pub struct Supervisor<R: Reloader> {
    plan: SpawnPlan,
    start: WorkerStart,
    listeners: Vec<Listener>,
    slots: HashMap<WorkerKind, Slot>,
    reloader: R,
    control_socket: Option<ControlSocket>,
    ops: Ops,
    users_check: UsersCheck,
    /// `--testing__sandbox_probe`: sent to each worker after its first
    /// start only.
    probes: Vec<(WorkerKind, SandboxProbe)>,
    /// `--testing__restart_always`: no back-off growth, no giving up.
    restart_always: bool,
}

/// The periodic check of the users files: chasquid reloads them every 30
/// s, so `chasquid-util user-add` takes effect without a signal. The
/// supervisor only looks at each file's stamp (no read); when one changed
/// it opens them again for authd.
struct UsersCheck {
    every: Duration,
    next: Instant,
    stamps: Vec<(PathBuf, Option<Stamp>)>,
}

impl UsersCheck {
    fn stamps_of(files: &[SecretFile]) -> Vec<(PathBuf, Option<Stamp>)> {
        files
            .iter()
            .map(|f| (PathBuf::from(&f.path), secrets::stamp(Path::new(&f.path))))
            .collect()
    }
}

impl<R: Reloader> Supervisor<R> {
    /// A supervisor with nothing started yet.
    pub fn new(plan: SpawnPlan, start: WorkerStart, listeners: Vec<Listener>, reloader: R, ops: Ops) -> Self {
        let now = Instant::now();
        let slots = WorkerKind::ALL
            .into_iter()
            .map(|k| {
                (
                    k,
                    Slot {
                        state: SlotState::Waiting(now),
                        deaths: VecDeque::new(),
                    },
                )
            })
            .collect();
        Supervisor {
            plan,
            start,
            listeners,
            slots,
            reloader,
            control_socket: None,
            ops,
            users_check: UsersCheck {
                every: USERS_CHECK_EVERY,
                next: now + USERS_CHECK_EVERY,
                stamps: Vec::new(),
            },
            probes: Vec::new(),
            restart_always: false,
        }
    }

    /// Restart every dead worker after the shortest delay and never give
    /// up on one (`--testing__restart_always`, for fault campaigns).
    pub fn restarting_always(mut self) -> Self {
        self.restart_always = true;
        self
    }

    /// Check the users files this often instead of every 30 s.
    pub fn with_users_check_every(mut self, every: Duration) -> Self {
        self.users_check.every = every;
        self.users_check.next = Instant::now() + every;
        self
    }

    /// Make workers attempt what their sandbox refuses (tests only).
    pub fn with_sandbox_probes(mut self, probes: Vec<(WorkerKind, SandboxProbe)>) -> Self {
        self.probes = probes;
        self
    }

    /// Serve the control socket (connections go to queued).
    pub fn with_control_socket(mut self, socket: ControlSocket) -> Self {
        self.control_socket = Some(socket);
        self
    }

    /// Run until SIGTERM/SIGINT; returns the process exit code. A worker
    /// that cannot start (a file it cannot load, a directory it cannot
    /// use) stops tambod at once with its message: the error is the
    /// reason, and the workers started before it are stopped.
    pub fn run(mut self) -> Result<i32, String> {
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block().map_err(|e| format!("cannot block signals: {e}"))?;
        let mut sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        for kind in WorkerKind::ALL {
            if let Err(e) = self.start_worker(kind).and_then(|()| self.wait_started(kind)) {
                self.kill_all();
                return Err(format!("{} could not start: {e}", kind.name()));
            }
        }
        self.users_check.stamps = UsersCheck::stamps_of(&self.users_files());
        loop {
            self.start_due_workers();
            let timeout = self.next_timeout();
            let kinds: Vec<WorkerKind> = self.polled_kinds();
            let mut fds: Vec<PollFd> = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            for k in &kinds {
                if let Some(fd) = self.control_fd(*k) {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                }
            }
            let cs_at = fds.len();
            if let Some(cs) = &self.control_socket {
                fds.push(PollFd::new(cs.as_fd(), PollFlags::POLLIN));
            }
            let ready = match poll(&mut fds, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            };
            let revents: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            self.ops_tick();
            self.check_users_files();
            if ready == 0 {
                continue;
            }
            for (i, k) in kinds.iter().enumerate() {
                if revents[i + 1] {
                    self.read_control(*k);
                }
            }
            // A page request or the last snapshot may have come in.
            self.ops_tick();
            if self.control_socket.is_some() && revents[cs_at] {
                self.accept_admin();
            }
            if revents[0] {
                while let Ok(Some(info)) = sigfd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGCHLD) => self.reap(),
                        Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                            tracing::info!("stopping on signal {}", info.ssi_signo);
                            return Ok(self.shutdown(&mut sigfd));
                        }
                        Ok(Signal::SIGHUP) => self.reload(),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Hand each accepted control-socket connection to queued, or tell the
    /// client queued is not there.
    fn accept_admin(&mut self) {
        let Some(cs) = &self.control_socket else {
            return;
        };
        for a in cs.accept() {
            let Accepted::Allowed(fd, peer) = a else {
                continue;
            };
            let sent = match &mut self.slots.get_mut(&WorkerKind::Queued).expect("slot").state {
                SlotState::Running(s, false) => s
                    .control
                    .send(
                        &ControlMsg::AdminClient {
                            uid: peer.uid,
                            user: user_name(peer.uid),
                        },
                        &[fd.as_fd()],
                    )
                    .map_err(|e| e.to_string()),
                _ => Err("queued is not running (restarting or stopped); try again".to_string()),
            };
            if let Err(e) = sent {
                tracing::warn!("control socket: {e}");
                crate::control::refuse(&std::os::unix::net::UnixStream::from(fd), &e);
            }
        }
    }

    fn polled_kinds(&self) -> Vec<WorkerKind> {
        WorkerKind::ALL
            .into_iter()
            .filter(|k| matches!(self.slots[k].state, SlotState::Running(_, false)))
            .collect()
    }

    fn control_fd(&self, kind: WorkerKind) -> Option<BorrowedFd<'_>> {
        match &self.slots[&kind].state {
            SlotState::Running(s, false) => Some(s.control.as_fd()),
            _ => None,
        }
    }

    fn next_timeout(&self) -> PollTimeout {
        let now = Instant::now();
        let next = self
            .slots
            .values()
            .filter_map(|s| match s.state {
                SlotState::Waiting(t) => Some(t.saturating_duration_since(now)),
                _ => None,
            })
            .chain(self.ops.next_deadline().map(|t| t.saturating_duration_since(now)))
            .chain(std::iter::once(self.users_check.next.saturating_duration_since(now)))
            .min();
        match next {
            Some(d) => PollTimeout::try_from(d.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        }
    }

    fn start_due_workers(&mut self) {
        let now = Instant::now();
        let due: Vec<WorkerKind> = WorkerKind::ALL
            .into_iter()
            .filter(|k| matches!(self.slots[k].state, SlotState::Waiting(t) if t <= now))
            .collect();
        for kind in due {
            if let Err(e) = self.start_worker(kind) {
                tracing::error!("{e}");
                self.record_death(kind);
            }
        }
    }

    /// The users files of the configuration now.
    fn users_files(&self) -> Vec<SecretFile> {
        secrets::list_users_files(Path::new(&self.start.config_dir), &self.start.domain_dirs)
    }

    /// The secret files for authd, opened, in frames.
    fn authd_secret_frames(&self, files: Vec<SecretFile>) -> Result<Vec<SecretFrame>, String> {
        crate::setup::warn_world_readable(&files);
        Ok(secrets::batches(secrets::open_all(files)?))
    }

    /// Every secret file of the configuration now.
    fn all_secrets(&self) -> Result<Vec<SecretFile>, String> {
        secrets::list(
            Path::new(&self.start.config_dir),
            &self.start.domain_dirs,
            &self.start.config.relay_auth_file,
        )
    }

    /// Send authd these secret files, in frames.
    fn send_secrets(control: &mut tambo_ipc::sync_chan::SyncChannel, frames: Vec<SecretFrame>) -> Result<(), String> {
        for (meta, fds) in frames {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            control
                .send(&ControlMsg::Secrets(meta), &borrowed)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Start one worker, give it its configuration (authd: its secret
    /// files first), its peer channels and (smtpd) its listeners.
    fn start_worker(&mut self, kind: WorkerKind) -> Result<(), String> {
        let secrets = self.all_secrets()?;
        let fs = crate::sandbox_plan::fs_plan(kind, &self.start, &secrets);
        let frames = if kind == WorkerKind::Authd {
            self.authd_secret_frames(secrets)?
        } else {
            Vec::new()
        };
        let mut started = spawn::spawn(kind, &self.plan, &fs)?;
        let sent = Self::send_secrets(&mut started.control, frames)
            .and_then(|()| {
                started
                    .control
                    .send(&ControlMsg::Start(Box::new(self.start_for(kind))), &[])
                    .map_err(|e| e.to_string())
            })
            .and_then(|_| {
                if kind != WorkerKind::Smtpd {
                    return Ok(());
                }
                for l in &self.listeners {
                    let msg = ControlMsg::Listener {
                        kind: l.kind,
                        addr: l.addr.clone(),
                    };
                    started
                        .control
                        .send(&msg, &[l.socket.as_fd()])
                        .map_err(|e| e.to_string())?;
                }
                // smtpd serves the monitoring endpoint: the supervisor
                // never reads from the network.
                if let Some((fd, addr)) = self.ops.monitor_listener() {
                    started
                        .control
                        .send(&ControlMsg::MonitorListener { addr }, &[fd])
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .and_then(|()| self.send_probes(kind, &mut started.control));
        if let Err(e) = sent {
            let _ = started.child.kill();
            let _ = started.child.wait();
            return Err(format!("{}: cannot send start-up configuration: {e}", kind.name()));
        }
        tracing::info!("started {} (pid {})", kind.name(), started.child.id());
        self.ops.worker_started(kind);
        self.slots.get_mut(&kind).expect("every kind has a slot").state = SlotState::Running(Box::new(started), false);
        self.connect_peers(kind);
        Ok(())
    }

    /// At tambod's start: wait until `kind` says it is ready, or why it is
    /// not (its messages meanwhile are handled as usual).
    fn wait_started(&mut self, kind: WorkerKind) -> Result<(), String> {
        let SlotState::Running(s, _) = &mut self.slots.get_mut(&kind).expect("slot").state else {
            return Err("not running".into());
        };
        s.control.set_timeout(Some(START_PATIENCE));
        let outcome = loop {
            match s.control.recv::<WorkerMsg>() {
                Ok((WorkerMsg::Ready, _)) => break Ok(()),
                Ok((WorkerMsg::Failed { message }, _)) => break Err(message),
                Ok((WorkerMsg::MailLog(ev), _)) => self.ops.log(&ev),
                Ok((other, _)) => tracing::debug!("{}: {other:?} while starting", kind.name()),
                Err(tambo_ipc::IpcError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    tracing::info!("still waiting for {} to start", kind.name());
                }
                Err(e) => {
                    // Gone, or talking garbage: either way it is not starting.
                    let _ = s.child.kill();
                    let status = s.child.wait().map(|st| st.to_string()).unwrap_or_default();
                    break Err(format!("exited at start-up ({status}): {e}"));
                }
            }
        };
        s.control.set_timeout(None);
        outcome
    }

    /// Kill every running worker (a start that failed).
    fn kill_all(&mut self) {
        for slot in self.slots.values_mut() {
            if let SlotState::Running(s, _) = &mut slot.state {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            slot.state = SlotState::GivenUp;
        }
    }

    /// Every [`UsersCheck::every`]: when a users file changed (or one was
    /// added or removed), open them all again and have authd reload them.
    fn check_users_files(&mut self) {
        let now = Instant::now();
        if now < self.users_check.next {
            return;
        }
        self.users_check.next = now + self.users_check.every;
        let files = self.users_files();
        let stamps = UsersCheck::stamps_of(&files);
        if stamps == self.users_check.stamps {
            return;
        }
        let frames = match self.authd_secret_frames(files) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("users files changed, but authd keeps the old ones: {e}");
                self.users_check.stamps = stamps;
                return;
            }
        };
        self.users_check.stamps = stamps;
        let SlotState::Running(s, false) = &mut self.slots.get_mut(&WorkerKind::Authd).expect("slot").state else {
            return;
        };
        tracing::info!("users files changed: reloading them");
        if let Err(e) = Self::send_secrets(&mut s.control, frames)
            .and_then(|()| s.control.send(&ControlMsg::ReloadUsers, &[]).map_err(|e| e.to_string()))
        {
            tracing::warn!("authd: cannot send the users files: {e}");
        }
    }

    /// The start message for `kind`: tambod's environment only goes to the
    /// workers that run commands with it (hookd: hooks and pipe aliases;
    /// deliverd: the delivery agent).
    fn start_for(&self, kind: WorkerKind) -> WorkerStart {
        let mut start = self.start.clone();
        if !matches!(kind, WorkerKind::Hookd | WorkerKind::Deliverd) {
            start.agent_env.clear();
        }
        start
    }

    /// Send `kind` its sandbox probes, once.
    fn send_probes(&mut self, kind: WorkerKind, control: &mut tambo_ipc::sync_chan::SyncChannel) -> Result<(), String> {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.probes)
            .into_iter()
            .partition(|(k, _)| *k == kind);
        self.probes = others;
        for (_, probe) in mine {
            control
                .send(&ControlMsg::SandboxProbe(probe), &[])
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Give `kind` and each running peer a fresh socket pair.
    fn connect_peers(&mut self, kind: WorkerKind) {
        for ch in PeerChannel::ALL {
            let (client, server) = ch.ends();
            if client != kind && server != kind {
                continue;
            }
            let other = if client == kind { server } else { client };
            if !matches!(self.slots[&other].state, SlotState::Running(..)) {
                continue;
            }
            let (cfd, sfd) = match spawn::peer_pair() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("{}: {e}", ch.name());
                    continue;
                }
            };
            for (k, fd) in [(server, sfd), (client, cfd)] {
                if let SlotState::Running(s, _) = &mut self.slots.get_mut(&k).expect("slot").state
                    && let Err(e) = s.control.send(&ControlMsg::Peer(ch), &[fd.as_fd()])
                {
                    tracing::warn!("{}: cannot hand over {}: {e}", k.name(), ch.name());
                }
            }
        }
    }

    fn read_control(&mut self, kind: WorkerKind) {
        let SlotState::Running(s, eof) = &mut self.slots.get_mut(&kind).expect("slot").state else {
            return;
        };
        match s.control.fill() {
            Ok(false) => {}
            Ok(true) => {
                *eof = true;
                return;
            }
            Err(e) => {
                tracing::warn!("{}: control channel: {e}", kind.name());
                *eof = true;
                let _ = s.child.kill();
                return;
            }
        }
        loop {
            match s.control.try_next::<WorkerMsg>() {
                Ok(Some((msg, _fds))) => match msg {
                    WorkerMsg::Ready => tracing::debug!("{} ready", kind.name()),
                    WorkerMsg::Failed { message } => tracing::error!("{} could not start: {message}", kind.name()),
                    WorkerMsg::Reloaded { ok: true, .. } => tracing::info!("{} reloaded", kind.name()),
                    WorkerMsg::Reloaded { ok: false, message } => {
                        tracing::warn!("{} kept its old state on reload: {message}", kind.name())
                    }
                    WorkerMsg::MailLog(ev) => self.ops.log(&ev),
                    WorkerMsg::Metrics { seq, samples } => self.ops.metrics(kind, seq, samples),
                    WorkerMsg::MetricsWanted { req } if kind == WorkerKind::Smtpd => self.ops.want_page(req),
                    WorkerMsg::MetricsWanted { .. } => {
                        tracing::warn!("{}: metrics page request ignored (not smtpd)", kind.name())
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    // A worker that sends garbage is no longer trusted.
                    tracing::error!("{}: bad control message, killing it: {e}", kind.name());
                    let _ = s.child.kill();
                    *eof = true;
                    break;
                }
            }
        }
    }

    /// Collect exited children and schedule their restart.
    fn reap(&mut self) {
        for kind in WorkerKind::ALL {
            let exited = match &mut self.slots.get_mut(&kind).expect("slot").state {
                SlotState::Running(s, _) => match s.child.try_wait() {
                    Ok(Some(status)) => Some((status, s.refused_call())),
                    _ => None,
                },
                _ => None,
            };
            if let Some((status, refused)) = exited {
                match refused {
                    Some(nr) => tracing::error!(
                        "{} killed by its seccomp filter ({status}): it made system call {nr} ({}), which its sandbox refuses",
                        kind.name(),
                        tambo_ipc::sandbox::syscalls::name(i64::from(nr))
                    ),
                    None if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGSYS) => {
                        // Trapped with every signal blocked (as while
                        // forking): the kernel killed it before its
                        // reporter could run.
                        tracing::error!(
                            "{} killed by its seccomp filter ({status}): it made a system call its sandbox refuses, with signals blocked, so it could not say which",
                            kind.name()
                        )
                    }
                    None => tracing::warn!("{} exited: {status}", kind.name()),
                }
                self.record_death(kind);
            }
        }
    }

    fn record_death(&mut self, kind: WorkerKind) {
        self.ops.worker_died(kind);
        let now = Instant::now();
        let slot = self.slots.get_mut(&kind).expect("slot");
        slot.deaths.push_back(now);
        while slot
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEATH_WINDOW)
        {
            slot.deaths.pop_front();
        }
        if self.restart_always {
            slot.deaths.clear();
        }
        let n = slot.deaths.len();
        if n >= MAX_DEATHS {
            tracing::error!(
                "{} died {n} times within {}s: giving up on it (fix the cause, then restart tambod)",
                kind.name(),
                DEATH_WINDOW.as_secs()
            );
            slot.state = SlotState::GivenUp;
            return;
        }
        let delay = Duration::from_millis(250u64 << (n.saturating_sub(1)).min(7));
        tracing::info!("restarting {} in {} ms", kind.name(), delay.as_millis());
        slot.state = SlotState::Waiting(now + delay);
    }

    fn reload(&mut self) {
        match self.reloader.reload() {
            Ok(start) => self.start = start,
            Err(e) => {
                tracing::error!("reload: keeping the old configuration: {e}");
            }
        }
        self.ops.reload(&self.start.config);
        tracing::info!("reloading workers");
        // authd gets its files again first; if one cannot be opened now it
        // keeps everything it has.
        let mut authd_frames = Some(self.all_secrets().and_then(|files| self.authd_secret_frames(files)));
        self.users_check.stamps = UsersCheck::stamps_of(&self.users_files());
        for kind in WorkerKind::ALL {
            let msg = ControlMsg::Reload(Box::new(self.start_for(kind)));
            let frames = match kind {
                WorkerKind::Authd => match authd_frames.take().expect("taken once") {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!("reload: authd keeps its users, keys and certificates: {e}");
                        continue;
                    }
                },
                _ => Vec::new(),
            };
            if let SlotState::Running(s, false) = &mut self.slots.get_mut(&kind).expect("slot").state
                && let Err(e) = Self::send_secrets(&mut s.control, frames)
                    .and_then(|()| s.control.send(&msg, &[]).map_err(|e| e.to_string()))
            {
                tracing::warn!("{}: cannot send reload: {e}", kind.name());
            }
        }
    }

    /// Monitoring timers; asks the running workers for metrics when smtpd
    /// wants a page, and sends it the finished page.
    fn ops_tick(&mut self) {
        if let Some(seq) = self.ops.on_tick() {
            let mut asked = Vec::new();
            for kind in WorkerKind::ALL {
                if let SlotState::Running(s, false) = &mut self.slots.get_mut(&kind).expect("slot").state
                    && s.control.send(&ControlMsg::CollectMetrics { seq }, &[]).is_ok()
                {
                    asked.push(kind);
                }
            }
            self.ops.collecting(seq, asked);
        }
        if let Some(page) = self.ops.take_page()
            && let SlotState::Running(s, false) = &mut self.slots.get_mut(&WorkerKind::Smtpd).expect("slot").state
        {
            let msg = ControlMsg::MetricsPage {
                answers: page.answers,
                openmetrics: page.openmetrics,
                down: page.down,
                debug: page.debug,
            };
            if let Err(e) = s.control.send(&msg, &[]) {
                tracing::warn!("smtpd: cannot send the metrics page: {e}");
            }
        }
    }

    /// Ask every worker to stop, wait for them (killing the late ones) and
    /// return the exit code.
    fn shutdown(mut self, sigfd: &mut SignalFd) -> i32 {
        // Clients now get "not running" instead of a hang.
        self.control_socket = None;
        let grace = SHUTDOWN_GRACE.as_secs() as u32;
        // smtpd first, so no new mail arrives while queued finishes.
        for kind in [
            WorkerKind::Smtpd,
            WorkerKind::Queued,
            WorkerKind::Deliverd,
            WorkerKind::Hookd,
            WorkerKind::Authd,
        ] {
            if let SlotState::Running(s, _) = &mut self.slots.get_mut(&kind).expect("slot").state {
                let _ = s.control.send(&ControlMsg::Shutdown { grace_secs: grace }, &[]);
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE + Duration::from_secs(2);
        loop {
            let mut running = 0;
            for kind in WorkerKind::ALL {
                let slot = self.slots.get_mut(&kind).expect("slot");
                if let SlotState::Running(s, _) = &mut slot.state {
                    match s.child.try_wait() {
                        Ok(Some(status)) => {
                            if !status.success() {
                                tracing::warn!("{} exited: {status}", kind.name());
                            }
                            slot.state = SlotState::GivenUp;
                        }
                        _ => running += 1,
                    }
                }
            }
            if running == 0 {
                tracing::info!("all workers stopped");
                return 0;
            }
            let now = Instant::now();
            if now >= deadline {
                for kind in WorkerKind::ALL {
                    if let SlotState::Running(s, _) = &mut self.slots.get_mut(&kind).expect("slot").state {
                        tracing::warn!("{} did not stop in time: killing it", kind.name());
                        let _ = s.child.kill();
                        let _ = s.child.wait();
                    }
                }
                return 0;
            }
            let wait = deadline.duration_since(now).min(Duration::from_millis(100));
            let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::NONE),
            );
            while let Ok(Some(_)) = sigfd.read_signal() {}
        }
    }
}

/// The user name of `uid` in the password database: queued names a local
/// submitter with it (`user@hostname`) but cannot read the database from
/// its sandbox.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}
