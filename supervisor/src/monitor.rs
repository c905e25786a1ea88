//! The metrics of the monitoring endpoint (`monitoring_address`), on the
//! supervisor's side. The supervisor binds the socket (as root, before any
//! worker starts) and hands it to smtpd, which serves HTTP; the supervisor
//! itself never reads from the network. When smtpd asks for a page
//! ([`WorkerMsg::MetricsWanted`](tambo_ipc::proto::WorkerMsg)), the
//! supervisor asks every running worker for a snapshot of its counters
//! over the control channel and, when all have replied (or after
//! [`COLLECT_TIMEOUT`], with the last values of the silent ones), renders
//! the page (OpenMetrics text, encoded by `prometheus-client`) with its own
//! metrics (restarts, workers up) and sends it back. Requests that arrive
//! while a collection runs are answered by the next one, so a scraper
//! always sees values gathered after it asked.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tambo_ipc::metrics::{Metric, MetricKind, MetricSample};
use tambo_ipc::proto::{DebugPages, WorkerKind};

/// How long a collection waits for the workers' snapshots.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(2);

use crate::chasquid_metrics::{self, Labels, Merged, expvars_json, families};

struct Collect {
    seq: u64,
    waiting: Vec<WorkerKind>,
    deadline: Instant,
    /// The highest page request this collection answers.
    answers: u64,
}

/// The supervisor's own metrics.
#[derive(Default)]
struct Own {
    restarts: Family<Labels, Counter>,
    up: Family<Labels, Gauge>,
    mail_log_lost: Gauge,
    scrapes: Counter,
}

/// A rendered page for smtpd.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The highest request it answers.
    pub answers: u64,
    /// OpenMetrics text.
    pub openmetrics: String,
    /// Workers not running, by name.
    pub down: Vec<String>,
    /// chasquid's debug pages.
    pub debug: DebugPages,
}

/// What the debug pages tell besides the metrics: set at start, the
/// configuration again on each reload.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    /// tambod's command line.
    pub cmdline: Vec<String>,
    /// `/debug/flags`.
    pub flags: String,
    /// `/debug/config`.
    pub config: String,
    /// The configured host name.
    pub hostname: String,
}

/// The metrics collector behind the monitoring endpoint.
pub struct Monitor {
    listener: TcpListener,
    addr: SocketAddr,
    own: Own,
    latest: HashMap<WorkerKind, Vec<MetricSample>>,
    collect: Option<Collect>,
    /// The highest page request received from smtpd.
    wanted: u64,
    /// The highest page request a collection was started for.
    started_for: u64,
    seq: u64,
    up: HashMap<WorkerKind, bool>,
    page: Option<Page>,
    info: ServerInfo,
    started: Instant,
}

/// Bind `host:port` (`:port` for every address).
fn bind(addr: &str) -> Result<TcpListener, String> {
    let l = if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("monitoring_address {addr:?}: bad port"))?;
        TcpListener::bind(("::", port)).or_else(|_| TcpListener::bind(("0.0.0.0", port)))
    } else {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| format!("monitoring_address {addr:?}: {e}"))?
            .collect();
        TcpListener::bind(&addrs[..])
    }
    .map_err(|e| format!("cannot listen on monitoring_address {addr:?}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("monitoring_address {addr:?}: {e}"))?;
    Ok(l)
}

impl Monitor {
    /// Listen on `addr` (as root, before the workers start).
    pub fn new(addr: &str) -> Result<Monitor, String> {
        let listener = bind(addr)?;
        let local = listener.local_addr().map_err(|e| format!("monitoring_address: {e}"))?;
        Ok(Monitor {
            listener,
            addr: local,
            own: Own::default(),
            latest: HashMap::new(),
            collect: None,
            wanted: 0,
            started_for: 0,
            seq: 0,
            up: HashMap::new(),
            page: None,
            info: ServerInfo::default(),
            started: Instant::now(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, to hand to smtpd (never accepted on here).
    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// A worker (re)started; `restart` when it is not its first start.
    pub fn worker_started(&mut self, kind: WorkerKind, restart: bool) {
        let labels = worker_labels(kind);
        if restart {
            self.own.restarts.get_or_create(&labels).inc();
        } else {
            // Make the series exist at 0.
            drop(self.own.restarts.get_or_create(&labels));
        }
        self.own.up.get_or_create(&labels).set(1);
        self.up.insert(kind, true);
    }

    /// A worker died: its counters start again from 0 when it is back.
    pub fn worker_died(&mut self, kind: WorkerKind) {
        if kind == WorkerKind::Smtpd {
            // The next smtpd numbers its page requests from 1 again; a
            // collection under way answers none of them.
            self.wanted = 0;
            self.started_for = 0;
            if let Some(c) = &mut self.collect {
                c.answers = 0;
            }
            self.page = None;
        }
        self.own.up.get_or_create(&worker_labels(kind)).set(0);
        self.up.insert(kind, false);
        self.latest.remove(&kind);
        if let Some(c) = &mut self.collect {
            c.waiting.retain(|k| *k != kind);
        }
    }

    /// What the debug pages show of the server.
    pub fn set_info(&mut self, info: ServerInfo) {
        self.info = info;
    }

    /// The configuration in force changed (SIGHUP).
    pub fn set_config(&mut self, config: String) {
        self.info.config = config;
    }

    /// Lines the mail log could not write, for the metrics.
    pub fn set_mail_log_lost(&mut self, n: u64) {
        self.own.mail_log_lost.set(n as i64);
    }

    /// smtpd wants a page for its request `req`.
    pub fn want_page(&mut self, req: u64) {
        self.wanted = self.wanted.max(req);
    }

    /// Expire a late collection.
    pub fn on_tick(&mut self) {
        let now = Instant::now();
        if self.collect.as_ref().is_some_and(|c| now >= c.deadline) {
            let waiting = self.collect.as_ref().map(|c| c.waiting.clone()).unwrap_or_default();
            tracing::warn!(
                "metrics: no snapshot from {} in time; using their last values",
                waiting.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            );
            self.finish_collect();
        }
    }

    /// The next time [`on_tick`](Self::on_tick) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.collect.as_ref().map(|c| c.deadline)
    }

    /// A sequence number when the supervisor must ask the workers for
    /// snapshots now (then call [`collecting`](Self::collecting)).
    pub fn take_collect_request(&mut self) -> Option<u64> {
        if self.wanted <= self.started_for || self.collect.is_some() {
            return None;
        }
        self.started_for = self.wanted;
        self.seq += 1;
        Some(self.seq)
    }

    /// The supervisor asked `asked` for snapshot `seq`.
    pub fn collecting(&mut self, seq: u64, asked: Vec<WorkerKind>) {
        self.collect = Some(Collect {
            seq,
            waiting: asked,
            deadline: Instant::now() + COLLECT_TIMEOUT,
            answers: self.started_for,
        });
        if self.collect.as_ref().is_some_and(|c| c.waiting.is_empty()) {
            self.finish_collect();
        }
    }

    /// A worker's snapshot arrived.
    pub fn on_metrics(&mut self, kind: WorkerKind, seq: u64, samples: Vec<MetricSample>) {
        self.latest.insert(kind, samples);
        if let Some(c) = &mut self.collect
            && c.seq == seq
        {
            c.waiting.retain(|k| *k != kind);
            if c.waiting.is_empty() {
                self.finish_collect();
            }
        }
    }

    /// The page of the last finished collection, once.
    pub fn take_page(&mut self) -> Option<Page> {
        self.page.take()
    }

    fn finish_collect(&mut self) {
        let Some(c) = self.collect.take() else {
            return;
        };
        self.own.scrapes.inc();
        let down: Vec<String> = WorkerKind::ALL
            .iter()
            .filter(|k| !self.up.get(k).copied().unwrap_or(false))
            .map(|k| k.name().to_string())
            .collect();
        let merged = self.merged();
        let chasquid = families(&merged);
        self.page = Some(Page {
            answers: c.answers,
            debug: self.debug_pages(&down, &merged, &chasquid),
            openmetrics: self.render_samples(merged, chasquid),
            down,
        });
    }

    /// Every worker's samples, summed by family and labels.
    fn merged(&self) -> Merged {
        let mut merged = Merged::new();
        for samples in self.latest.values() {
            for s in samples {
                *merged
                    .entry(s.metric)
                    .or_default()
                    .entry(s.labels.clone())
                    .or_insert(0.0) += s.value;
            }
        }
        merged
    }

    /// chasquid's debug pages from the same collection.
    fn debug_pages(&self, down: &[String], merged: &Merged, chasquid: &[chasquid_metrics::Family]) -> DebugPages {
        let gauge = |m: Metric| merged.get(&m).and_then(|s| s.values().next()).copied().unwrap_or(0.0);
        let mut index = format!(
            "tambo {} on {}\nup for {} s\n\nworkers:\n",
            env!("CARGO_PKG_VERSION"),
            self.info.hostname,
            self.started.elapsed().as_secs()
        );
        for k in WorkerKind::ALL {
            let state = if down.iter().any(|d| d == k.name()) {
                "down"
            } else {
                "up"
            };
            index.push_str(&format!("  {}: {state}\n", k.name()));
        }
        index.push_str("\npages:\n");
        for page in [
            "/metrics",
            "/healthz",
            "/debug/vars",
            "/debug/flags",
            "/debug/config",
            "/debug/queue",
        ] {
            index.push_str(&format!("  {page}\n"));
        }
        DebugPages {
            index,
            vars: expvars_json(chasquid, &self.info.cmdline),
            flags: self.info.flags.clone(),
            config: self.info.config.clone(),
            queue: format!(
                "messages: {}\noldest: {} s\n(the envelopes stay in queued: `tambo queue` lists them)\n",
                gauge(Metric::QueueMessages),
                gauge(Metric::QueueOldestAge)
            ),
        }
    }

    /// The exposition text of the samples as they are now.
    #[cfg(test)]
    fn render(&self) -> String {
        let merged = self.merged();
        let chasquid = families(&merged);
        self.render_samples(merged, chasquid)
    }

    /// The exposition text: the supervisor's own metrics, the workers'
    /// `merged` samples and chasquid's families computed from them.
    fn render_samples(&self, merged: Merged, chasquid: Vec<chasquid_metrics::Family>) -> String {
        let mut reg = Registry::default();
        reg.register(
            "tambo_worker_restarts",
            "Worker restarts after a death, by worker",
            self.own.restarts.clone(),
        );
        reg.register(
            "tambo_worker_up",
            "Whether a worker is running (1) or not (0)",
            self.own.up.clone(),
        );
        reg.register(
            "tambo_mail_log_lost_lines",
            "Mail log lines that could not be written",
            self.own.mail_log_lost.clone(),
        );
        reg.register(
            "tambo_metrics_scrapes",
            "Metrics collections answered",
            self.own.scrapes.clone(),
        );
        reg.register_collector(Box::new(WorkerSamples { merged, chasquid }));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!("metrics: encoding failed: {e}");
        }
        out
    }
}

fn worker_labels(kind: WorkerKind) -> Labels {
    vec![("worker".to_string(), kind.name().to_string())]
}

/// The workers' samples, merged, and chasquid's families, as a
/// prometheus-client collector.
#[derive(Debug)]
struct WorkerSamples {
    merged: Merged,
    chasquid: Vec<chasquid_metrics::Family>,
}

impl Collector for WorkerSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in Metric::ALL {
            let Some(series) = self.merged.get(&metric) else {
                continue;
            };
            let ty = match metric.kind() {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
            };
            let mut family = encoder.encode_descriptor(metric.name(), metric.help(), None, ty)?;
            for (labels, value) in series {
                let e = family.encode_family(labels)?;
                match metric.kind() {
                    MetricKind::Counter => ConstCounter::new(*value).encode(e)?,
                    MetricKind::Gauge => ConstGauge::new(*value).encode(e)?,
                }
            }
        }
        // chasquid's names too, untyped as chasquid's are.
        for f in &self.chasquid {
            let name = f.name();
            let mut family = encoder.encode_descriptor(&name, f.help, None, MetricType::Unknown)?;
            for (key, value) in &f.values {
                let labels: Labels = f.label.map(|l| vec![(l.to_string(), key.clone())]).unwrap_or_default();
                ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_worker_and_own_metrics() {
        let mut m = Monitor::new("127.0.0.1:0").unwrap();
        m.worker_started(WorkerKind::Smtpd, false);
        m.worker_started(WorkerKind::Smtpd, true);
        m.on_metrics(
            WorkerKind::Smtpd,
            0,
            vec![MetricSample {
                metric: Metric::SmtpReplies,
                labels: vec![("class".into(), "2xx".into())],
                value: 3.0,
            }],
        );
        m.on_metrics(
            WorkerKind::Queued,
            0,
            vec![MetricSample {
                metric: Metric::QueueMessages,
                labels: vec![],
                value: 2.0,
            }],
        );
        let text = m.render();
        assert!(text.contains("# TYPE tambo_smtp_replies counter"), "{text}");
        assert!(text.contains("tambo_smtp_replies_total{class=\"2xx\"} 3"), "{text}");
        assert!(text.contains("tambo_queue_messages 2"), "{text}");
        assert!(
            text.contains("tambo_worker_restarts_total{worker=\"smtpd\"} 1"),
            "{text}"
        );
        assert!(text.contains("tambo_worker_up{worker=\"smtpd\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE chasquid_queue_putCount unknown"), "{text}");
        assert!(
            text.contains("\nchasquid_queue_putCount 0\n"),
            "an integer, as chasquid's: {text}"
        );
    }

    #[test]
    fn pages_answer_requests_made_before_their_collection() {
        let mut m = Monitor::new("127.0.0.1:0").unwrap();
        for k in WorkerKind::ALL {
            m.worker_started(k, false);
        }
        assert_eq!(m.take_collect_request(), None, "nobody asked");
        m.want_page(1);
        let seq = m.take_collect_request().expect("a collection");
        m.collecting(seq, vec![WorkerKind::Smtpd, WorkerKind::Queued]);
        // A request while it runs waits for the next collection.
        m.want_page(2);
        assert_eq!(m.take_collect_request(), None);
        m.on_metrics(WorkerKind::Smtpd, seq, vec![]);
        assert!(m.take_page().is_none());
        m.on_metrics(WorkerKind::Queued, seq, vec![]);
        let page = m.take_page().expect("page");
        assert_eq!(page.answers, 1);
        assert!(page.down.is_empty());
        let seq2 = m.take_collect_request().expect("the second collection");
        assert!(seq2 > seq);
        m.worker_died(WorkerKind::Deliverd);
        m.collecting(seq2, vec![]);
        let page = m.take_page().expect("page");
        assert_eq!(page.answers, 2);
        assert_eq!(page.down, vec!["deliverd".to_string()]);
        assert!(page.openmetrics.contains("tambo_worker_up{worker=\"deliverd\"} 0"));
        assert_eq!(m.take_collect_request(), None);
        // A new smtpd counts its requests from 1 again.
        m.want_page(3);
        let seq3 = m.take_collect_request().expect("a collection");
        m.collecting(seq3, vec![WorkerKind::Queued]);
        m.worker_died(WorkerKind::Smtpd);
        m.worker_started(WorkerKind::Smtpd, true);
        m.want_page(1);
        m.on_metrics(WorkerKind::Queued, seq3, vec![]);
        assert_eq!(m.take_page().map(|p| p.answers), Some(0), "not for the new smtpd");
        let seq4 = m.take_collect_request().expect("a collection for the new smtpd");
        m.collecting(seq4, vec![]);
        assert_eq!(m.take_page().map(|p| p.answers), Some(1));
    }

    #[test]
    fn a_silent_worker_does_not_hold_the_page_forever() {
        let mut m = Monitor::new("127.0.0.1:0").unwrap();
        m.want_page(1);
        let seq = m.take_collect_request().unwrap();
        m.collecting(seq, vec![WorkerKind::Authd]);
        assert!(m.next_deadline().is_some());
        if let Some(c) = &mut m.collect {
            c.deadline = Instant::now();
        }
        m.on_tick();
        assert_eq!(m.take_page().map(|p| p.answers), Some(1));
    }
}
