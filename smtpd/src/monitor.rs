//! The monitoring endpoint (`monitoring_address`): a tiny HTTP/1.x server
//! serving `/metrics` (OpenMetrics, or the classic Prometheus text format
//! for scrapers that do not ask for OpenMetrics), `/healthz`, and
//! chasquid's pages `/`, `/debug/vars`, `/debug/flags`, `/debug/config`
//! and `/debug/queue` (rendered by the supervisor with the metrics).
//!
//! It runs here, in the unprivileged, chrooted front end, not in the root
//! supervisor: the supervisor binds the socket and hands it over
//! ([`ControlMsg::MonitorListener`](tambo_ipc::proto::ControlMsg)), and on
//! each scrape smtpd asks it ([`WorkerMsg::MetricsWanted`]) to collect
//! every worker's snapshot over the control channels; the supervisor
//! answers with the rendered page
//! ([`ControlMsg::MetricsPage`](tambo_ipc::proto::ControlMsg)). The parser
//! is minimal and bounded: a request head of at most [`MAX_REQUEST`]
//! bytes, at most [`MAX_CONNS`] connections, [`CONN_TIMEOUT`] each;
//! anything else is answered with an error status and the connection is
//! closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tambo_ipc::async_chan::FrameSender;
use tambo_ipc::proto::{DebugPages, WorkerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Simultaneous monitoring connections at most.
pub const MAX_CONNS: usize = 16;
/// How long one monitoring connection may last.
pub const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a scrape waits for the supervisor's page (which itself waits
/// at most 2 s for the workers).
const PAGE_TIMEOUT: Duration = Duration::from_secs(6);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

/// One metrics page from the supervisor.
#[derive(Debug)]
pub struct Page {
    answers: u64,
    openmetrics: String,
    down: Vec<String>,
    debug: DebugPages,
}

/// Asks the supervisor for pages and hands them to the waiting clients.
pub struct MetricsHub {
    control: FrameSender,
    next_req: AtomicU64,
    page: watch::Sender<Option<Arc<Page>>>,
}

impl MetricsHub {
    /// A hub sending its requests on the control channel `control`.
    pub fn new(control: FrameSender) -> Arc<MetricsHub> {
        Arc::new(MetricsHub {
            control,
            next_req: AtomicU64::new(0),
            page: watch::channel(None).0,
        })
    }

    /// A page arrived from the supervisor.
    pub fn deliver(&self, answers: u64, openmetrics: String, down: Vec<String>, debug: DebugPages) {
        self.page.send_replace(Some(Arc::new(Page {
            answers,
            openmetrics,
            down,
            debug,
        })));
    }

    /// A page collected after this call; `None` when none came in time.
    async fn fetch(&self) -> Option<Arc<Page>> {
        let req = self.next_req.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.page.subscribe();
        // Sent from a task of its own: a send cancelled halfway would
        // break the control channel, and this caller may be timed out.
        let control = self.control.clone();
        tokio::spawn(async move {
            if let Err(e) = control.send(&WorkerMsg::MetricsWanted { req }, Vec::new()).await {
                tracing::warn!("metrics: cannot ask the supervisor: {e}");
            }
        });
        let wait = async {
            loop {
                let current = rx.borrow_and_update().clone();
                if let Some(p) = current
                    && p.answers >= req
                {
                    return Some(p);
                }
                rx.changed().await.ok()?;
            }
        };
        tokio::time::timeout(PAGE_TIMEOUT, wait).await.ok().flatten()
    }
}

/// Serve the endpoint on `listener` until the process ends.
pub fn spawn(listener: std::net::TcpListener, addr: String, hub: Arc<MetricsHub>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!("monitoring on http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNS));
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("monitoring accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Too busy: drop it; the scraper retries.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let hub = hub.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(CONN_TIMEOUT, serve_one(stream, &hub)).await;
            });
        }
    });
    Ok(())
}

async fn serve_one(mut stream: tokio::net::TcpStream, hub: &MetricsHub) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let request = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(end) = head_end(&buf) {
            break parse_request(&buf[..end]);
        }
        if buf.len() > MAX_REQUEST {
            break Request::Error("431 Request Header Fields Too Large");
        }
    };
    let out = match request {
        Request::Metrics { head, openmetrics } => match hub.fetch().await {
            Some(page) if openmetrics => response("200 OK", OPENMETRICS, &page.openmetrics, head),
            Some(page) => response("200 OK", PROMETHEUS_TEXT, &prometheus_text(&page.openmetrics), head),
            None => unavailable(head),
        },
        Request::Health { head } => match hub.fetch().await {
            Some(page) if page.down.is_empty() => response("200 OK", TEXT, "ok\n", head),
            Some(page) => response(
                "503 Service Unavailable",
                TEXT,
                &format!("down: {}\n", page.down.join(" ")),
                head,
            ),
            None => unavailable(head),
        },
        Request::Debug { head, page } => match hub.fetch().await {
            Some(p) => {
                let (content_type, body) = match page {
                    DebugPage::Index => (TEXT, &p.debug.index),
                    DebugPage::Vars => (JSON, &p.debug.vars),
                    DebugPage::Flags => (TEXT, &p.debug.flags),
                    DebugPage::Config => (TEXT, &p.debug.config),
                    DebugPage::Queue => (TEXT, &p.debug.queue),
                };
                response("200 OK", content_type, body, head)
            }
            None => unavailable(head),
        },
        Request::Error(status) => response(status, TEXT, &format!("{status}\n"), false),
    };
    if stream.write_all(&out).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

fn unavailable(head: bool) -> Vec<u8> {
    response(
        "503 Service Unavailable",
        TEXT,
        "no answer from the supervisor in time\n",
        head,
    )
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
    Debug { head: bool, page: DebugPage },
    Error(&'static str),
}

/// chasquid's pages besides the metrics.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum DebugPage {
    Index,
    Vars,
    Flags,
    Config,
    Queue,
}

impl DebugPage {
    /// The page at `path`, if it is one.
    fn at(path: &str) -> Option<DebugPage> {
        Some(match path {
            "/" => DebugPage::Index,
            "/debug/vars" => DebugPage::Vars,
            "/debug/flags" => DebugPage::Flags,
            "/debug/config" => DebugPage::Config,
            "/debug/queue" => DebugPage::Queue,
            _ => return None,
        })
    }
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
    if let Some(page) = DebugPage::at(path) {
        return Request::Debug { head, page };
    }
    match path {
        "/metrics" => Request::Metrics { head, openmetrics },
        "/healthz" => Request::Health { head },
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
            if *prefix == "# TYPE " && tail == "unknown" {
                // OpenMetrics' unknown is the classic format's untyped.
                return Some(format!("# TYPE {name} untyped"));
            }
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
        assert_eq!(
            parse_request(b"GET /debug/vars HTTP/1.1\r\n\r\n"),
            Request::Debug {
                head: false,
                page: DebugPage::Vars
            }
        );
        assert_eq!(
            parse_request(b"GET /exit HTTP/1.1\r\n\r\n"),
            Request::Error("404 Not Found")
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    #[test]
    fn classic_text_format() {
        let om = "# HELP tambo_smtp_replies SMTP replies sent, by class.\n\
                  # TYPE tambo_smtp_replies counter\n\
                  tambo_smtp_replies_total{class=\"2xx\"} 3\n\
                  # HELP tambo_queue_messages Messages in the queue.\n\
                  # TYPE tambo_queue_messages gauge\n\
                  tambo_queue_messages 2\n\
                  # HELP chasquid_queue_putCount count of envelopes\n\
                  # TYPE chasquid_queue_putCount unknown\n\
                  chasquid_queue_putCount 1\n\
                  # EOF\n";
        let classic = prometheus_text(om);
        assert!(
            classic.contains("# TYPE tambo_smtp_replies_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP tambo_smtp_replies_total SMTP replies"),
            "{classic}"
        );
        assert!(
            classic.contains("tambo_smtp_replies_total{class=\"2xx\"} 3\n"),
            "{classic}"
        );
        assert!(classic.contains("# TYPE tambo_queue_messages gauge\n"), "{classic}");
        assert!(
            classic.contains("# TYPE chasquid_queue_putCount untyped\nchasquid_queue_putCount 1\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }
}
