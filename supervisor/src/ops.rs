//! Operations hooks of the supervisor: the mail log and the metrics of
//! the monitoring endpoint (served by smtpd), kept apart from the
//! supervision loop, which only calls these few methods.

use std::os::fd::BorrowedFd;
use std::time::Instant;

use tambo_common::config::Config;
use tambo_ipc::metrics::MetricSample;
use tambo_ipc::proto::{MailLogEvent, WorkerKind};

use crate::maillog::MailLog;
use crate::monitor::{Monitor, Page, ServerInfo};

/// The mail log and the optional monitoring server.
pub struct Ops {
    mail_log: MailLog,
    monitor: Option<Monitor>,
    started: [bool; 5],
}

fn index(kind: WorkerKind) -> usize {
    match kind {
        WorkerKind::Authd => 0,
        WorkerKind::Queued => 1,
        WorkerKind::Deliverd => 2,
        WorkerKind::Smtpd => 3,
        WorkerKind::Hookd => 4,
    }
}

impl Ops {
    /// Open the mail log and, when `monitoring_address` is set, listen on it.
    /// Runs as root, before any worker starts.
    pub fn open(config: &Config) -> Result<Ops, String> {
        let mail_log = MailLog::open(&config.mail_log_path)?;
        let monitor = if config.monitoring_address.is_empty() {
            None
        } else {
            let m = Monitor::new(&config.monitoring_address)?;
            tracing::info!("monitoring on http://{}/metrics", m.local_addr());
            Some(m)
        };
        Ok(Ops {
            mail_log,
            monitor,
            started: [false; 5],
        })
    }

    /// Write one event to the mail log.
    pub fn log(&mut self, ev: &MailLogEvent) {
        self.mail_log.write(&ev.line());
        if let Some(m) = &mut self.monitor {
            m.set_mail_log_lost(self.mail_log.lost);
        }
    }

    /// SIGHUP: reopen the mail log (log rotation) with the current path.
    pub fn reload(&mut self, config: &Config) {
        self.mail_log.reopen(&config.mail_log_path);
        if let Some(m) = &mut self.monitor {
            m.set_config(tambo_common::config::print_config(config));
        }
    }

    /// What the monitoring endpoint's debug pages show of the server.
    pub fn set_server_info(&mut self, info: ServerInfo) {
        if let Some(m) = &mut self.monitor {
            m.set_info(info);
        }
    }

    /// A worker was started.
    pub fn worker_started(&mut self, kind: WorkerKind) {
        let restart = std::mem::replace(&mut self.started[index(kind)], true);
        if let Some(m) = &mut self.monitor {
            m.worker_started(kind, restart);
        }
    }

    /// A worker died (or could not be started).
    pub fn worker_died(&mut self, kind: WorkerKind) {
        if let Some(m) = &mut self.monitor {
            m.worker_died(kind);
        }
    }

    /// A worker's metrics snapshot.
    pub fn metrics(&mut self, kind: WorkerKind, seq: u64, samples: Vec<MetricSample>) {
        if let Some(m) = &mut self.monitor {
            m.on_metrics(kind, seq, samples);
        }
    }

    /// The monitoring socket and its address, for smtpd.
    pub fn monitor_listener(&self) -> Option<(BorrowedFd<'_>, String)> {
        self.monitor
            .as_ref()
            .map(|m| (m.listener_fd(), m.local_addr().to_string()))
    }

    /// smtpd asked for a metrics page (its request `req`).
    pub fn want_page(&mut self, req: u64) {
        if let Some(m) = &mut self.monitor {
            m.want_page(req);
        }
    }

    /// Timers. Returns a sequence number when the workers must be asked for
    /// metrics (then call [`collecting`](Self::collecting)).
    pub fn on_tick(&mut self) -> Option<u64> {
        let m = self.monitor.as_mut()?;
        m.on_tick();
        m.take_collect_request()
    }

    /// A finished page to send to smtpd, once.
    pub fn take_page(&mut self) -> Option<Page> {
        self.monitor.as_mut()?.take_page()
    }

    /// The workers asked for collection `seq`.
    pub fn collecting(&mut self, seq: u64, asked: Vec<WorkerKind>) {
        if let Some(m) = &mut self.monitor {
            m.collecting(seq, asked);
        }
    }

    /// When the loop must wake up for the monitor's timers.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.monitor.as_ref().and_then(|m| m.next_deadline())
    }
}
