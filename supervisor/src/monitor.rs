//! The monitoring endpoint (`monitoring_address`): a tiny non-blocking
//! HTTP/1.x server inside the supervisor's poll loop, serving
//! `/metrics` (OpenMetrics text, encoded by `prometheus-client`) and
//! `/healthz`.
//!
//! Each scrape of `/metrics` asks every running worker for a snapshot of its
//! counters over the control channel and answers when all have replied (or
//! after [`COLLECT_TIMEOUT`], with the last values of the silent ones), so
//! no worker needs a listening socket of its own. The parser is minimal and
//! bounded: a request head of at most [`MAX_REQUEST`] bytes, at most
//! [`MAX_CONNS`] connections, [`CONN_TIMEOUT`] each; anything else is
//! answered with an error status and the connection is closed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tambo_ipc::metrics::{Metric, MetricKind, MetricSample};
use tambo_ipc::proto::WorkerKind;

/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Simultaneous monitoring connections at most.
pub const MAX_CONNS: usize = 16;
/// How long one monitoring connection may last.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape waits for the workers' snapshots.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(2);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;

enum State {
    Reading,
    /// Waiting for the workers' snapshots; `head` for a HEAD request,
    /// `openmetrics` when the client accepts OpenMetrics.
    Collecting {
        head: bool,
        openmetrics: bool,
    },
    Writing,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    state: State,
    deadline: Instant,
    done: bool,
}

struct Collect {
    seq: u64,
    waiting: Vec<WorkerKind>,
    deadline: Instant,
}

/// The supervisor's own metrics.
#[derive(Default)]
struct Own {
    restarts: Family<Labels, Counter>,
    up: Family<Labels, Gauge>,
    mail_log_lost: Gauge,
    scrapes: Counter,
}

/// The monitoring server.
pub struct Monitor {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Vec<Conn>,
    own: Own,
    latest: HashMap<WorkerKind, Vec<MetricSample>>,
    collect: Option<Collect>,
    want_collect: bool,
    seq: u64,
    up: HashMap<WorkerKind, bool>,
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
    /// Listen on `addr`.
    pub fn new(addr: &str) -> Result<Monitor, String> {
        let listener = bind(addr)?;
        let local = listener.local_addr().map_err(|e| format!("monitoring_address: {e}"))?;
        Ok(Monitor {
            listener,
            addr: local,
            conns: Vec::new(),
            own: Own::default(),
            latest: HashMap::new(),
            collect: None,
            want_collect: false,
            seq: 0,
            up: HashMap::new(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
        self.own.up.get_or_create(&worker_labels(kind)).set(0);
        self.up.insert(kind, false);
        self.latest.remove(&kind);
        if let Some(c) = &mut self.collect {
            c.waiting.retain(|k| *k != kind);
        }
    }

    /// Lines the mail log could not write, for the metrics.
    pub fn set_mail_log_lost(&mut self, n: u64) {
        self.own.mail_log_lost.set(n as i64);
    }

    /// The fds to poll, in the order [`on_ready`](Self::on_ready) expects.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut out = vec![(self.listener.as_fd(), PollFlags::POLLIN)];
        for c in &self.conns {
            let flags = match c.state {
                State::Reading => PollFlags::POLLIN,
                State::Collecting { .. } => PollFlags::empty(),
                State::Writing => PollFlags::POLLOUT,
            };
            out.push((c.stream.as_fd(), flags));
        }
        out
    }

    /// Handle readiness, aligned with the last [`poll_fds`](Self::poll_fds).
    pub fn on_ready(&mut self, ready: &[bool]) {
        for i in 0..self.conns.len() {
            if ready.get(i + 1).copied().unwrap_or(false) {
                self.service(i);
            }
        }
        if ready.first().copied().unwrap_or(false) {
            self.accept();
        }
        self.conns.retain(|c| !c.done);
    }

    /// Expire late connections and late collections.
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
        for c in &mut self.conns {
            if now >= c.deadline {
                c.done = true;
            }
        }
        self.conns.retain(|c| !c.done);
    }

    /// The next time [`on_tick`](Self::on_tick) has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().map(|c| c.deadline).min();
        let collect = self.collect.as_ref().map(|c| c.deadline);
        conns.into_iter().chain(collect).min()
    }

    /// A sequence number when the supervisor must ask the workers for
    /// snapshots now (then call [`collecting`](Self::collecting)).
    pub fn take_collect_request(&mut self) -> Option<u64> {
        if !self.want_collect || self.collect.is_some() {
            return None;
        }
        self.want_collect = false;
        self.seq += 1;
        Some(self.seq)
    }

    /// The supervisor asked `asked` for snapshot `seq`.
    pub fn collecting(&mut self, seq: u64, asked: Vec<WorkerKind>) {
        self.collect = Some(Collect {
            seq,
            waiting: asked,
            deadline: Instant::now() + COLLECT_TIMEOUT,
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

    fn finish_collect(&mut self) {
        self.collect = None;
        self.own.scrapes.inc();
        let body = self.render();
        let mut classic = None;
        for i in 0..self.conns.len() {
            if let State::Collecting { head, openmetrics } = self.conns[i].state {
                let c = &mut self.conns[i];
                c.out = if openmetrics {
                    response("200 OK", OPENMETRICS, &body, head)
                } else {
                    let text = classic.get_or_insert_with(|| prometheus_text(&body));
                    response("200 OK", PROMETHEUS_TEXT, text, head)
                };
                c.state = State::Writing;
                self.service(i);
            }
        }
        self.conns.retain(|c| !c.done);
        // Requests that came in while this collection ran want fresh data.
        if self.want_collect {
            tracing::trace!("metrics: another collection is due");
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
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
        let mut merged: BTreeMap<Metric, BTreeMap<Labels, f64>> = BTreeMap::new();
        for samples in self.latest.values() {
            for s in samples {
                *merged
                    .entry(s.metric)
                    .or_default()
                    .entry(s.labels.clone())
                    .or_insert(0.0) += s.value;
            }
        }
        reg.register_collector(Box::new(WorkerSamples(merged)));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!("metrics: encoding failed: {e}");
        }
        out
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                        // Too busy: drop it; the scraper retries.
                        continue;
                    }
                    self.conns.push(Conn {
                        stream,
                        buf: Vec::new(),
                        out: Vec::new(),
                        written: 0,
                        state: State::Reading,
                        deadline: Instant::now() + CONN_TIMEOUT,
                        done: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!("monitoring accept: {e}");
                    return;
                }
            }
        }
    }

    fn service(&mut self, i: usize) {
        match self.conns[i].state {
            State::Reading => self.read(i),
            State::Writing => {
                let c = &mut self.conns[i];
                while c.written < c.out.len() {
                    match c.stream.write(&c.out[c.written..]) {
                        Ok(0) => {
                            c.done = true;
                            return;
                        }
                        Ok(n) => c.written += n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                        Err(_) => {
                            c.done = true;
                            return;
                        }
                    }
                }
                let _ = c.stream.shutdown(Shutdown::Both);
                c.done = true;
            }
            State::Collecting { .. } => {}
        }
    }

    fn read(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let mut chunk = [0u8; 2048];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    c.done = true;
                    return;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if c.buf.len() > MAX_REQUEST || head_end(&c.buf).is_some() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    c.done = true;
                    return;
                }
            }
        }
        let request = match head_end(&c.buf) {
            Some(end) => parse_request(&c.buf[..end]),
            None => Request::Error("431 Request Header Fields Too Large"),
        };
        let all_up = WorkerKind::ALL.iter().all(|k| self.up.get(k).copied().unwrap_or(false));
        let c = &mut self.conns[i];
        match request {
            Request::Metrics { head, openmetrics } => {
                c.state = State::Collecting { head, openmetrics };
                self.want_collect = true;
                return;
            }
            Request::Health { head } => {
                c.out = if all_up {
                    response("200 OK", "text/plain; charset=utf-8", "ok\n", head)
                } else {
                    let down: Vec<&str> = WorkerKind::ALL
                        .iter()
                        .filter(|k| !self.up.get(k).copied().unwrap_or(false))
                        .map(|k| k.name())
                        .collect();
                    response(
                        "503 Service Unavailable",
                        "text/plain; charset=utf-8",
                        &format!("down: {}\n", down.join(" ")),
                        head,
                    )
                };
            }
            Request::Index { head } => {
                c.out = response(
                    "200 OK",
                    "text/plain; charset=utf-8",
                    "tambo monitoring: /metrics /healthz\n",
                    head,
                );
            }
            Request::Error(status) => {
                c.out = response(status, "text/plain; charset=utf-8", &format!("{status}\n"), false);
            }
        }
        c.state = State::Writing;
        self.service(i);
    }
}

fn worker_labels(kind: WorkerKind) -> Labels {
    vec![("worker".to_string(), kind.name().to_string())]
}

/// Where the request head ends (after the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head: bool, openmetrics: bool },
    Health { head: bool },
    Index { head: bool },
    Error(&'static str),
}

fn parse_request(head_bytes: &[u8]) -> Request {
    let line_end = head_bytes.iter().position(|b| *b == b'\n').unwrap_or(head_bytes.len());
    let Ok(line) = std::str::from_utf8(&head_bytes[..line_end]) else {
        return Request::Error("400 Bad Request");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Error("400 Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Error("505 HTTP Version Not Supported");
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::Error("405 Method Not Allowed"),
    };
    let path = target.split('?').next().unwrap_or_default();
    let openmetrics = String::from_utf8_lossy(head_bytes).lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    match path {
        "/metrics" => Request::Metrics { head, openmetrics },
        "/healthz" => Request::Health { head },
        "/" => Request::Index { head },
        _ => Request::Error("404 Not Found"),
    }
}

/// The classic Prometheus text format (0.0.4) from OpenMetrics text, for
/// scrapers that do not ask for OpenMetrics (curl, promtool): counter
/// families take their samples' `_total` name, and `# EOF` / `# UNIT` go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn response(status: &str, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The workers' samples, merged, as a prometheus-client collector.
#[derive(Debug)]
struct WorkerSamples(BTreeMap<Metric, BTreeMap<Labels, f64>>);

impl Collector for WorkerSamples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for metric in Metric::ALL {
            let Some(series) = self.0.get(&metric) else {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics {
                head: false,
                openmetrics: false
            }
        );
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0\r\n\r\n"),
            Request::Metrics {
                head: false,
                openmetrics: true
            }
        );
        assert_eq!(
            parse_request(b"HEAD /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Request::Health { head: true }
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::Error("405 Method Not Allowed")
        );
        assert_eq!(
            parse_request(b"GET /x HTTP/1.1\r\n\r\n"),
            Request::Error("404 Not Found")
        );
        assert_eq!(
            parse_request(b"GET /metrics\r\n\r\n"),
            Request::Error("400 Bad Request")
        );
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Request::Error("400 Bad Request"));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

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
        let classic = prometheus_text(&text);
        assert!(
            classic.contains("# TYPE tambo_smtp_replies_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP tambo_smtp_replies_total SMTP replies"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE tambo_queue_messages gauge\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
