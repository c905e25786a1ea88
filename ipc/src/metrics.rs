//! Worker-side metrics: a fixed catalogue of metric families, a small
//! process-wide registry of counters and gauges, and the snapshot each
//! worker sends to the supervisor on [`crate::proto::ControlMsg::CollectMetrics`].
//!
//! The supervisor turns the snapshots of every worker into the Prometheus
//! exposition on `monitoring_address`, so no worker needs a listening
//! socket of its own. Label values come from small fixed sets (command
//! verbs, reply classes, results); the registry also caps the number of
//! series so a bug cannot make it grow without bound.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// Most distinct (metric, labels) series one worker keeps.
pub const MAX_SERIES: usize = 1024;

/// How a metric behaves.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (exposed with a `_total` suffix).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Every metric family the workers export. Add new ones at the end.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Connections accepted by smtpd, by listener (`smtp`, `submission`,
    /// `submission_tls`).
    SmtpConnections,
    /// Connections refused for exceeding the connection limits.
    SmtpConnectionsRefused,
    /// SMTP commands received, by verb (`other` for unknown ones).
    SmtpCommands,
    /// SMTP replies sent, by class (`2xx`, `3xx`, `4xx`, `5xx`).
    SmtpReplies,
    /// Password checks, by result (`success`, `failure`, `throttled`).
    AuthAttempts,
    /// Messages accepted into the queue.
    QueueAccepted,
    /// Messages in the queue now.
    QueueMessages,
    /// Age of the oldest message in the queue, in seconds.
    QueueOldestAge,
    /// Delivery attempts per recipient, by result (`sent`, `temporary`,
    /// `permanent`) and route (`local`, `pipe`, `remote`).
    Deliveries,
    /// Delivery status notifications (bounces) generated.
    DsnsSent,
    /// TLS handshakes completed by smtpd, by protocol version.
    TlsHandshakes,
    /// SPF checks of incoming mail, by result.
    SpfResults,
    /// DKIM verifications of incoming mail, by result (one per signature;
    /// `none` for a message without one).
    DkimResults,
    /// DMARC evaluations of incoming mail, by result.
    DmarcResults,
    /// Hook runs, by hook and outcome.
    HookRuns,
    /// MTA-STS (RFC 8461) decisions of the remote courier, by decision
    /// (`policy_fetched`, `fetch_failed`, `cached_policy_used`,
    /// `mx_skipped`, `enforce_deferred`, `testing_violation`).
    MtaSts,
    /// ARC chain verifications of incoming mail, by result.
    ArcResults,
    /// SMTP replies sent, by code (`250`, `550`…).
    SmtpReplyCodes,
    /// Message transfers (DATA or BDAT) started, by `transport` (`tls`,
    /// `plain`).
    SmtpTransfers,
    /// Messages refused for too many Received headers (a mail loop).
    LoopsDetected,
    /// Connections closed for speaking another protocol (`GET`, `POST`,
    /// `CONNECT`…), by command.
    WrongProtocol,
    /// Incoming messages by what DKIM verification found: `unsigned`,
    /// `invalid` (signatures, none valid), `valid` (at least one valid),
    /// `unverified` (not checked: too large, no resolver).
    DkimMessages,
    /// DKIM signing of outgoing mail, by result (`signed`, `unsigned`:
    /// not signable as it stands, `error`).
    DkimSignings,
    /// Security level checks (chasquid's domaininfo), by `direction`
    /// (`incoming`, `outgoing`) and result (`pass`, `fail`).
    SecurityLevelChecks,
    /// Outgoing SMTP connections, by TLS outcome (`secure`, `insecure`,
    /// `plain`, `failed`: the handshake failed and plain text was tried).
    RemoteTls,
    /// MTA-STS policies in force on remote deliveries, by mode.
    MtaStsModes,
}

impl Metric {
    /// Every family, in exposition order.
    pub const ALL: [Metric; 26] = [
        Metric::SmtpConnections,
        Metric::SmtpConnectionsRefused,
        Metric::SmtpCommands,
        Metric::SmtpReplies,
        Metric::AuthAttempts,
        Metric::QueueAccepted,
        Metric::QueueMessages,
        Metric::QueueOldestAge,
        Metric::Deliveries,
        Metric::DsnsSent,
        Metric::TlsHandshakes,
        Metric::SpfResults,
        Metric::DkimResults,
        Metric::DmarcResults,
        Metric::HookRuns,
        Metric::MtaSts,
        Metric::ArcResults,
        Metric::SmtpReplyCodes,
        Metric::SmtpTransfers,
        Metric::LoopsDetected,
        Metric::WrongProtocol,
        Metric::DkimMessages,
        Metric::DkimSignings,
        Metric::SecurityLevelChecks,
        Metric::RemoteTls,
        Metric::MtaStsModes,
    ];

    /// The exposed name (counters get `_total` appended on exposition).
    pub fn name(self) -> &'static str {
        match self {
            Metric::SmtpConnections => "tambo_smtp_connections",
            Metric::SmtpConnectionsRefused => "tambo_smtp_connections_refused",
            Metric::SmtpCommands => "tambo_smtp_commands",
            Metric::SmtpReplies => "tambo_smtp_replies",
            Metric::AuthAttempts => "tambo_auth_attempts",
            Metric::QueueAccepted => "tambo_queue_accepted_messages",
            Metric::QueueMessages => "tambo_queue_messages",
            Metric::QueueOldestAge => "tambo_queue_oldest_message_age_seconds",
            Metric::Deliveries => "tambo_deliveries",
            Metric::DsnsSent => "tambo_dsns_sent",
            Metric::TlsHandshakes => "tambo_tls_handshakes",
            Metric::SpfResults => "tambo_spf_results",
            Metric::DkimResults => "tambo_dkim_results",
            Metric::DmarcResults => "tambo_dmarc_results",
            Metric::HookRuns => "tambo_hook_runs",
            Metric::MtaSts => "tambo_mta_sts_decisions",
            Metric::ArcResults => "tambo_arc_results",
            Metric::SmtpReplyCodes => "tambo_smtp_reply_codes",
            Metric::SmtpTransfers => "tambo_smtp_transfers",
            Metric::LoopsDetected => "tambo_smtp_loops_detected",
            Metric::WrongProtocol => "tambo_smtp_wrong_protocol",
            Metric::DkimMessages => "tambo_dkim_verified_messages",
            Metric::DkimSignings => "tambo_dkim_signings",
            Metric::SecurityLevelChecks => "tambo_security_level_checks",
            Metric::RemoteTls => "tambo_remote_tls_connections",
            Metric::MtaStsModes => "tambo_mta_sts_modes",
        }
    }

    /// The help text.
    pub fn help(self) -> &'static str {
        match self {
            Metric::SmtpConnections => "SMTP connections accepted, by listener.",
            Metric::SmtpConnectionsRefused => "SMTP connections refused by the connection limits.",
            Metric::SmtpCommands => "SMTP commands received, by verb.",
            Metric::SmtpReplies => "SMTP replies sent, by class.",
            Metric::AuthAttempts => "Password checks, by result.",
            Metric::QueueAccepted => "Messages accepted into the queue.",
            Metric::QueueMessages => "Messages in the queue.",
            Metric::QueueOldestAge => "Age of the oldest message in the queue, in seconds.",
            Metric::Deliveries => "Delivery attempts per recipient, by result and route.",
            Metric::DsnsSent => "Delivery status notifications generated.",
            Metric::TlsHandshakes => "TLS handshakes completed by smtpd, by version.",
            Metric::SpfResults => "SPF checks of incoming mail, by result.",
            Metric::DkimResults => "DKIM verifications of incoming mail, by result.",
            Metric::DmarcResults => "DMARC evaluations of incoming mail, by result.",
            Metric::HookRuns => "Hook runs, by hook and outcome.",
            Metric::MtaSts => "MTA-STS decisions of remote delivery, by decision.",
            Metric::ArcResults => "ARC chain verifications of incoming mail, by result.",
            Metric::SmtpReplyCodes => "SMTP replies sent, by code.",
            Metric::SmtpTransfers => "Message transfers started, by transport (tls, plain).",
            Metric::LoopsDetected => "Messages refused for too many Received headers.",
            Metric::WrongProtocol => "Connections closed for speaking another protocol, by command.",
            Metric::DkimMessages => "Incoming messages by DKIM verification outcome.",
            Metric::DkimSignings => "DKIM signing of outgoing mail, by result.",
            Metric::SecurityLevelChecks => "Security level checks, by direction and result.",
            Metric::RemoteTls => "Outgoing SMTP connections, by TLS outcome.",
            Metric::MtaStsModes => "MTA-STS policies in force on remote deliveries, by mode.",
        }
    }

    /// Counter or gauge.
    pub fn kind(self) -> MetricKind {
        match self {
            Metric::QueueMessages | Metric::QueueOldestAge => MetricKind::Gauge,
            Metric::SmtpConnections
            | Metric::SmtpConnectionsRefused
            | Metric::SmtpCommands
            | Metric::SmtpReplies
            | Metric::AuthAttempts
            | Metric::QueueAccepted
            | Metric::Deliveries
            | Metric::DsnsSent
            | Metric::TlsHandshakes
            | Metric::SpfResults
            | Metric::DkimResults
            | Metric::DmarcResults
            | Metric::HookRuns
            | Metric::MtaSts
            | Metric::ArcResults
            | Metric::SmtpReplyCodes
            | Metric::SmtpTransfers
            | Metric::LoopsDetected
            | Metric::WrongProtocol
            | Metric::DkimMessages
            | Metric::DkimSignings
            | Metric::SecurityLevelChecks
            | Metric::RemoteTls
            | Metric::MtaStsModes => MetricKind::Counter,
        }
    }
}

/// One value of one series.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetricSample {
    /// The family.
    pub metric: Metric,
    /// Label names and values, in a fixed order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

type Key = (Metric, Vec<(String, String)>);
type GaugeFn = Box<dyn Fn() -> Vec<MetricSample> + Send + Sync>;

/// A process-wide set of series.
#[derive(Default)]
pub struct Registry {
    values: Mutex<BTreeMap<Key, f64>>,
    gauges: Mutex<Vec<GaugeFn>>,
}

impl Registry {
    /// Add `by` to a series (created at 0).
    pub fn add(&self, metric: Metric, labels: &[(&str, &str)], by: f64) {
        let key: Key = (
            metric,
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        );
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = values.get_mut(&key) {
            *v += by;
        } else if values.len() < MAX_SERIES {
            values.insert(key, by);
        }
    }

    /// Register a function that computes gauges at snapshot time.
    pub fn register_gauges(&self, f: GaugeFn) {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    /// Every series now.
    pub fn snapshot(&self) -> Vec<MetricSample> {
        let mut out: Vec<MetricSample> = self
            .values
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((metric, labels), value)| MetricSample {
                metric: *metric,
                labels: labels.clone(),
                value: *value,
            })
            .collect();
        for f in self.gauges.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.extend(f());
        }
        out
    }
}

/// This process's registry.
pub fn global() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// Add one to a counter of this process.
pub fn inc(metric: Metric, labels: &[(&str, &str)]) {
    global().add(metric, labels, 1.0);
}

/// The reply-class label of an SMTP reply line (`2xx` … `5xx`), if it
/// starts with a code.
pub fn reply_class(line: &str) -> Option<&'static str> {
    match line.as_bytes().first()? {
        b'2' => Some("2xx"),
        b'3' => Some("3xx"),
        b'4' => Some("4xx"),
        b'5' => Some("5xx"),
        _ => None,
    }
}

/// The code of an SMTP reply line (`250`), if it starts with three digits.
pub fn reply_code(line: &str) -> Option<&str> {
    let code = line.get(..3)?;
    code.bytes().all(|b| b.is_ascii_digit()).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_caps() {
        let r = Registry::default();
        r.add(Metric::SmtpCommands, &[("command", "EHLO")], 1.0);
        r.add(Metric::SmtpCommands, &[("command", "EHLO")], 1.0);
        r.add(Metric::SmtpCommands, &[("command", "MAIL")], 1.0);
        r.register_gauges(Box::new(|| {
            vec![MetricSample {
                metric: Metric::QueueMessages,
                labels: vec![],
                value: 7.0,
            }]
        }));
        let s = r.snapshot();
        assert_eq!(s.len(), 3);
        assert!(
            s.iter()
                .any(|x| x.labels == vec![("command".into(), "EHLO".into())] && x.value == 2.0)
        );
        assert!(s.iter().any(|x| x.metric == Metric::QueueMessages && x.value == 7.0));
        for i in 0..(MAX_SERIES + 10) {
            r.add(Metric::SmtpReplies, &[("n", &i.to_string())], 1.0);
        }
        assert!(r.snapshot().len() <= MAX_SERIES + 1);
        assert_eq!(reply_class("250 ok"), Some("2xx"));
        assert_eq!(reply_class("x"), None);
        assert_eq!(reply_code("250 ok"), Some("250"));
        assert_eq!(reply_code("25"), None);
        assert_eq!(reply_code("2x0 no"), None);
    }

    #[test]
    fn catalogue_is_complete() {
        let mut names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len());
        for m in Metric::ALL {
            assert!(m.name().starts_with("tambo_"));
            assert!(!m.name().ends_with("_total"));
            assert!(!m.help().is_empty());
        }
    }
}
