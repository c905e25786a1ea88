//! chasquid's metric names, computed from tambo's own counters, so that
//! dashboards and alerts written for chasquid keep working after a switch
//! (`docs/monitoring.md` lists each name and where it comes from).
//!
//! chasquid exports expvar variables converted to OpenMetrics by its
//! `expvarom` package: `chasquid/smtpIn/commandCount` becomes
//! `chasquid_smtpIn_commandCount`, with no `_total` suffix and no type.
//! Integers are single values; maps are one label (`command`, `code`,
//! `result`…) with chasquid's own keys (`post-data:success`,
//! `email:remote`…). The families here keep those names, labels and keys,
//! typed `unknown` as chasquid's are, so the same PromQL finds them.

use std::collections::BTreeMap;

use tambo_ipc::metrics::Metric;

/// Label names and values of one tambo series.
pub type Labels = Vec<(String, String)>;
/// Every worker's samples, summed by family and labels.
pub type Merged = BTreeMap<Metric, BTreeMap<Labels, f64>>;

/// One chasquid family, ready to encode.
#[derive(Debug, PartialEq)]
pub struct Family {
    /// chasquid's expvar name (`chasquid/queue/putCount`), as on
    /// `/debug/vars`.
    pub var: &'static str,
    /// chasquid's description.
    pub help: &'static str,
    /// The label of a map; `None` for a single value (then `values` holds
    /// one entry with an empty key).
    pub label: Option<&'static str>,
    /// Value by chasquid's map key (counts: whole numbers, as chasquid's).
    pub values: BTreeMap<String, i64>,
}

impl Family {
    /// The OpenMetrics name, as chasquid's `expvarom` makes it: every
    /// character but ASCII letters, digits and `_` becomes `_`.
    pub fn name(&self) -> String {
        self.var
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect()
    }
}

/// chasquid's families as Go's expvar serves them on `/debug/vars`: one
/// JSON object, a number per single value and an object per map.
pub fn expvars_json(families: &[Family], cmdline: &[String]) -> String {
    let mut vars = serde_json::Map::new();
    vars.insert("cmdline".to_string(), serde_json::json!(cmdline));
    for f in families {
        let value = match f.label {
            None => serde_json::json!(f.values.get("").copied().unwrap_or(0)),
            Some(_) => serde_json::json!(f.values),
        };
        vars.insert(f.var.to_string(), value);
    }
    serde_json::to_string_pretty(&serde_json::Value::Object(vars)).unwrap_or_else(|_| "{}".to_string())
}

/// How one chasquid family is computed: the sum, by chasquid key, of the
/// series of `metric` that `key` maps to a key (`None` skips a series).
struct Spec {
    /// chasquid's expvar name (`chasquid/queue/putCount`).
    var: &'static str,
    help: &'static str,
    label: Option<&'static str>,
    metric: Metric,
    key: fn(&Labels) -> Option<String>,
}

fn get<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The value of label `name`, as it is.
fn label_as_is(labels: &Labels, name: &str) -> Option<String> {
    get(labels, name).map(str::to_string)
}

/// The single-value key when label `name` is one of `values`.
fn when(labels: &Labels, name: &str, values: &[&str]) -> Option<String> {
    get(labels, name).filter(|v| values.contains(v)).map(|_| String::new())
}

/// The chasquid key of a tambo label value, from a table.
fn renamed(labels: &Labels, name: &str, table: &[(&str, &str)]) -> Option<String> {
    let v = get(labels, name)?;
    table.iter().find(|(t, _)| *t == v).map(|(_, c)| c.to_string())
}

/// Commands chasquid counts apart (`wrongProtoCount`), not in
/// `commandCount`.
const OTHER_PROTOCOLS: [&str; 9] = [
    "GET", "POST", "PUT", "HEAD", "CONNECT", "OPTIONS", "DELETE", "USER", "PASS",
];

const SPECS: &[Spec] = &[
    Spec {
        var: "chasquid/smtpIn/commandCount",
        help: "count of SMTP commands received, by command",
        label: Some("command"),
        metric: Metric::SmtpCommands,
        key: |l| {
            let c = get(l, "command")?;
            match c {
                "other" => Some("unknown".to_string()),
                c if OTHER_PROTOCOLS.contains(&c) => None,
                c => Some(c.to_string()),
            }
        },
    },
    Spec {
        var: "chasquid/smtpIn/responseCodeCount",
        help: "response codes returned to SMTP commands",
        label: Some("code"),
        metric: Metric::SmtpReplyCodes,
        key: |l| label_as_is(l, "code"),
    },
    Spec {
        var: "chasquid/smtpIn/spfResultCount",
        help: "SPF result count",
        label: Some("result"),
        metric: Metric::SpfResults,
        key: |l| label_as_is(l, "result"),
    },
    Spec {
        var: "chasquid/smtpIn/loopsDetected",
        help: "count of loops detected",
        label: None,
        metric: Metric::LoopsDetected,
        key: |_| Some(String::new()),
    },
    Spec {
        var: "chasquid/smtpIn/tlsCount",
        help: "count of TLS usage in incoming connections",
        label: Some("status"),
        metric: Metric::SmtpTransfers,
        key: |l| label_as_is(l, "transport"),
    },
    Spec {
        var: "chasquid/smtpIn/securityLevelChecks",
        help: "incoming security level check results",
        label: Some("result"),
        metric: Metric::SecurityLevelChecks,
        key: |l| when(l, "direction", &["incoming"]).and_then(|_| label_as_is(l, "result")),
    },
    Spec {
        var: "chasquid/smtpIn/hookResults",
        help: "count of hook invocations, by result",
        label: Some("result"),
        metric: Metric::HookRuns,
        key: |l| {
            when(l, "hook", &["post-data"])?;
            renamed(
                l,
                "outcome",
                &[
                    ("accept", "post-data:success"),
                    ("bad_output", "post-data:badoutput"),
                    ("permanent", "post-data:fail"),
                    ("temporary", "post-data:fail"),
                    ("absent", "post-data:skip"),
                ],
            )
        },
    },
    Spec {
        var: "chasquid/smtpIn/wrongProtoCount",
        help: "count of commands for other protocols",
        label: Some("command"),
        metric: Metric::WrongProtocol,
        key: |l| label_as_is(l, "command"),
    },
    Spec {
        var: "chasquid/smtpIn/dkimSigned",
        help: "count of successful DKIM signs",
        label: None,
        metric: Metric::DkimSignings,
        key: |l| when(l, "result", &["signed"]),
    },
    Spec {
        var: "chasquid/smtpIn/dkimSignErrors",
        help: "count of DKIM sign errors",
        label: None,
        metric: Metric::DkimSignings,
        key: |l| when(l, "result", &["error"]),
    },
    Spec {
        var: "chasquid/smtpIn/dkimVerifyFound",
        help: "count of messages with at least one DKIM signature",
        label: None,
        metric: Metric::DkimMessages,
        key: |l| when(l, "result", &["valid", "invalid", "unverified"]),
    },
    Spec {
        var: "chasquid/smtpIn/dkimVerifyNotFound",
        help: "count of messages with no DKIM signatures",
        label: None,
        metric: Metric::DkimMessages,
        key: |l| when(l, "result", &["unsigned"]),
    },
    Spec {
        var: "chasquid/smtpIn/dkimVerifyValid",
        help: "count of messages with at least one valid DKIM signature",
        label: None,
        metric: Metric::DkimMessages,
        key: |l| when(l, "result", &["valid"]),
    },
    Spec {
        var: "chasquid/smtpIn/dkimVerifyErrors",
        help: "count of DKIM verification errors",
        label: None,
        metric: Metric::DkimMessages,
        key: |l| when(l, "result", &["unverified"]),
    },
    Spec {
        var: "chasquid/queue/putCount",
        help: "count of envelopes attempted to be put in the queue",
        label: None,
        metric: Metric::QueueAccepted,
        key: |_| Some(String::new()),
    },
    Spec {
        var: "chasquid/queue/itemsWritten",
        help: "count of items the queue wrote to disk",
        label: None,
        metric: Metric::QueueAccepted,
        key: |_| Some(String::new()),
    },
    Spec {
        var: "chasquid/queue/dsnQueued",
        help: "count of DSNs that we generated (queued)",
        label: None,
        metric: Metric::DsnsSent,
        key: |_| Some(String::new()),
    },
    Spec {
        var: "chasquid/queue/deliverAttempts",
        help: "attempts to deliver mail, by recipient type",
        label: Some("recipient_type"),
        metric: Metric::Deliveries,
        key: |l| {
            renamed(
                l,
                "route",
                &[("local", "email:local"), ("remote", "email:remote"), ("pipe", "pipe")],
            )
        },
    },
    Spec {
        var: "chasquid/aliases/hookResults",
        help: "count of aliases hook results, by hook and result",
        label: Some("result"),
        metric: Metric::HookRuns,
        key: |l| {
            when(l, "hook", &["alias-resolve"])?;
            renamed(
                l,
                "outcome",
                &[
                    ("absent", "resolve:notset"),
                    ("success", "resolve:success"),
                    ("failure", "resolve:fail"),
                    ("bad_output", "resolve:parse_err"),
                ],
            )
        },
    },
    Spec {
        var: "chasquid/smtpOut/tlsCount",
        help: "count of TLS status on outgoing connections",
        label: Some("result"),
        metric: Metric::RemoteTls,
        key: |l| {
            renamed(
                l,
                "result",
                &[
                    ("secure", "tls:secure"),
                    ("insecure", "tls:insecure"),
                    ("plain", "plain"),
                    ("failed", "tls:failed"),
                ],
            )
        },
    },
    Spec {
        var: "chasquid/smtpOut/securityLevelChecks",
        help: "count of security level checks on outgoing connections",
        label: Some("result"),
        metric: Metric::SecurityLevelChecks,
        key: |l| when(l, "direction", &["outgoing"]).and_then(|_| label_as_is(l, "result")),
    },
    Spec {
        var: "chasquid/smtpOut/sts/mode",
        help: "count of STS checks on outgoing connections",
        label: Some("mode"),
        metric: Metric::MtaStsModes,
        key: |l| label_as_is(l, "mode"),
    },
    Spec {
        var: "chasquid/sts/cache/fetches",
        help: "count of fetches",
        label: None,
        metric: Metric::MtaSts,
        key: |l| when(l, "decision", &["policy_fetched", "fetch_failed"]),
    },
    Spec {
        var: "chasquid/sts/cache/failedFetch",
        help: "failed fetch count",
        label: None,
        metric: Metric::MtaSts,
        key: |l| when(l, "decision", &["fetch_failed"]),
    },
];

/// chasquid's families from the merged samples of every worker. Single
/// values are always there (0 until counted); maps only with the keys
/// seen, as in chasquid.
pub fn families(merged: &Merged) -> Vec<Family> {
    SPECS
        .iter()
        .map(|spec| {
            let mut values = BTreeMap::new();
            if spec.label.is_none() {
                values.insert(String::new(), 0);
            }
            for (labels, value) in merged.get(&spec.metric).into_iter().flatten() {
                if let Some(key) = (spec.key)(labels) {
                    *values.entry(key).or_insert(0) += value.round() as i64;
                }
            }
            Family {
                var: spec.var,
                help: spec.help,
                label: spec.label,
                values,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn family<'a>(f: &'a [Family], name: &str) -> &'a Family {
        f.iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn maps_tambo_counters_to_chasquid_keys() {
        let mut m = Merged::new();
        m.entry(Metric::SmtpCommands).or_default().extend([
            (labels(&[("command", "EHLO")]), 2.0),
            (labels(&[("command", "GET")]), 1.0),
        ]);
        m.entry(Metric::HookRuns).or_default().extend([
            (labels(&[("hook", "post-data"), ("outcome", "permanent")]), 1.0),
            (labels(&[("hook", "post-data"), ("outcome", "temporary")]), 2.0),
            (labels(&[("hook", "alias-resolve"), ("outcome", "success")]), 4.0),
        ]);
        m.entry(Metric::DkimMessages).or_default().extend([
            (labels(&[("result", "valid")]), 3.0),
            (labels(&[("result", "invalid")]), 1.0),
            (labels(&[("result", "unsigned")]), 5.0),
        ]);
        m.entry(Metric::QueueAccepted).or_default().insert(vec![], 7.0);
        let f = families(&m);
        let names: Vec<String> = f.iter().map(|f| f.name()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "names are unique");
        let cmds = family(&f, "chasquid_smtpIn_commandCount");
        assert_eq!(cmds.values, BTreeMap::from([("EHLO".to_string(), 2)]));
        let hooks = family(&f, "chasquid_smtpIn_hookResults");
        assert_eq!(hooks.values, BTreeMap::from([("post-data:fail".to_string(), 3)]));
        let aliases = family(&f, "chasquid_aliases_hookResults");
        assert_eq!(aliases.values, BTreeMap::from([("resolve:success".to_string(), 4)]));
        let single = |name| family(&f, name).values.get("").copied();
        assert_eq!(single("chasquid_smtpIn_dkimVerifyFound"), Some(4));
        assert_eq!(single("chasquid_smtpIn_dkimVerifyNotFound"), Some(5));
        assert_eq!(single("chasquid_smtpIn_dkimVerifyValid"), Some(3));
        assert_eq!(single("chasquid_queue_putCount"), Some(7));
        assert_eq!(
            single("chasquid_smtpIn_loopsDetected"),
            Some(0),
            "a single value is always there"
        );
        assert!(
            family(&f, "chasquid_smtpOut_tlsCount").values.is_empty(),
            "a map only has keys seen"
        );
    }
}
