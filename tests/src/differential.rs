//! Comparing two mail servers that faced the same dialogs
//! (`tests/tests/chasquid_diff.rs`): what a recording delivery agent,
//! pipe and post-data hook wrote, the replies, and the list of
//! differences with the known ones explained.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::dropin::code;

/// One difference: what differs, and each server's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diff {
    /// What was compared (`dialog: step`, `deliveries of TAG …`, …).
    pub what: String,
    /// The first server's value (chasquid's).
    pub chasquid: String,
    /// The second server's value (tambo's).
    pub tambo: String,
}

/// A difference that is understood: tambo differs from chasquid on
/// purpose. `what` is a substring of [`Diff::what`]; each value matches
/// exactly, or by prefix when it ends in `*`.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    /// Substring of the difference's `what`.
    pub what: &'static str,
    /// chasquid's value.
    pub chasquid: &'static str,
    /// tambo's value.
    pub tambo: &'static str,
    /// Why tambo differs (for the migration guide).
    pub why: &'static str,
}

impl Known {
    /// Whether `d` is this known difference.
    pub fn matches(&self, d: &Diff) -> bool {
        let value = |pattern: &str, v: &str| match pattern.strip_suffix('*') {
            Some(prefix) => v.starts_with(prefix),
            None => v == pattern,
        };
        d.what.contains(self.what) && value(self.chasquid, &d.chasquid) && value(self.tambo, &d.tambo)
    }
}

/// The differences found so far.
#[derive(Debug, Default)]
pub struct Diffs(pub Vec<Diff>);

impl Diffs {
    /// Record a difference when the values differ.
    pub fn check(&mut self, what: impl Into<String>, chasquid: impl Into<String>, tambo: impl Into<String>) {
        let (c, t) = (chasquid.into(), tambo.into());
        if c != t {
            self.0.push(Diff {
                what: what.into(),
                chasquid: c,
                tambo: t,
            });
        }
    }
}

/// A delivered message: its line endings, its header fields other than
/// Received (unfolded; `Received-SPF` only as present: its result
/// depends on the machine's resolver for chasquid, which has no DNS
/// override, and its comment differs in wording), its body (LF line
/// endings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Message {
    /// Lines end in CRLF.
    pub crlf: bool,
    /// Name and value of each field, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

/// Parse a message for comparison (see [`Message`]).
pub fn parse_message(raw: &str) -> Message {
    let crlf = raw.contains("\r\n");
    let text = raw.replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.to_string(), v.trim().to_string()));
        }
    }
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("Received"));
    for (k, v) in &mut headers {
        if k.eq_ignore_ascii_case("Received-SPF") {
            *v = "(present)".to_string();
        }
    }
    Message {
        crlf,
        headers,
        body: body.to_string(),
    }
}

/// What the recording delivery agent, pipe and post-data hook saw.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Each delivery: (`mda` or `pipe`, argv one per line, message).
    pub deliveries: Vec<(String, String, Message)>,
    /// Each post-data hook run: the message's Subject → its environment.
    pub hook_env: BTreeMap<String, BTreeMap<String, String>>,
    /// Some hook input had a CR.
    pub hook_input_crlf: bool,
}

/// The Subject of a message.
pub fn subject(text: &str) -> String {
    text.replace("\r\n", "\n")
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("?")
        .to_string()
}

/// Read `dir`: `KIND-N.msg` with `KIND-N.argv` (deliveries) and
/// `hook-N.stdin` with `hook-N.env` (post-data hook runs).
pub fn collect(dir: &Path) -> Recorded {
    let mut out = Recorded::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read recordings")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    for f in &files {
        let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".msg") {
            let argv = read(&dir.join(format!("{stem}.argv")));
            let kind = stem.split('-').next().unwrap_or("?").to_string();
            out.deliveries.push((kind, argv, parse_message(&read(f))));
        } else if let Some(stem) = name.strip_suffix(".stdin") {
            let input = read(f);
            out.hook_input_crlf |= input.contains('\r');
            let vars = read(&dir.join(format!("{stem}.env")))
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            out.hook_env.insert(subject(&input), vars);
        }
    }
    out.deliveries.sort();
    out
}

/// The keywords of an EHLO reply (`250-name | 250-SIZE 1 | 250 AUTH
/// PLAIN LOGIN` gives `AUTH=LOGIN AUTH=PLAIN SIZE 1`), sorted.
pub fn ehlo_keywords(reply: &str) -> String {
    let mut v: Vec<String> = Vec::new();
    for line in reply.split(" | ").skip(1) {
        let kw = line.get(4..).unwrap_or("");
        match kw.strip_prefix("AUTH ") {
            Some(mechs) => v.extend(mechs.split_whitespace().map(|m| format!("AUTH={m}"))),
            None => v.push(kw.to_string()),
        }
    }
    v.sort();
    v.join(" ")
}

/// Compare one dialog's replies, labelled by the step they answer: the
/// codes (EHLO: the keywords; a handshake: only that it happened), and
/// the whole text where `verbatim` says so.
pub fn compare_replies(
    diffs: &mut Diffs,
    dialog: &str,
    labels: &[String],
    chasquid: &[String],
    tambo: &[String],
    verbatim: impl Fn(&str) -> bool,
) {
    let comparable = |label: &str, r: &str| {
        if label.starts_with("EHLO") && r.starts_with("250") {
            format!("250 {}", ehlo_keywords(r))
        } else if r.starts_with("TLS ") {
            "TLS".into()
        } else if verbatim(label) {
            r.to_string()
        } else {
            code(r)
        }
    };
    for i in 0..chasquid.len().max(tambo.len()) {
        let label = labels.get(i).map(String::as_str).unwrap_or("(after the dialog)");
        let get = |v: &[String]| {
            v.get(i)
                .map(|r| comparable(label, r))
                .unwrap_or_else(|| "(none)".into())
        };
        diffs.check(format!("{dialog}: {label}"), get(chasquid), get(tambo));
    }
}

/// Compare the deliveries, message by message (grouped by Subject, in
/// argv order): argv, line endings, each header field, the body.
pub fn compare_deliveries(diffs: &mut Diffs, chasquid: &Recorded, tambo: &Recorded) {
    let by_subject = |r: &Recorded| {
        let mut m: BTreeMap<String, Vec<(String, String, Message)>> = BTreeMap::new();
        for d in &r.deliveries {
            let s = d.2.headers.iter().find(|(k, _)| k == "Subject").map(|(_, v)| v.clone());
            m.entry(s.unwrap_or_default()).or_default().push(d.clone());
        }
        m
    };
    let (cm, tm) = (by_subject(chasquid), by_subject(tambo));
    for subj in cm.keys().chain(tm.keys()).collect::<BTreeSet<_>>() {
        let (c, t) = (
            cm.get(subj).cloned().unwrap_or_default(),
            tm.get(subj).cloned().unwrap_or_default(),
        );
        diffs.check(
            format!("deliveries of {subj}: how many"),
            c.len().to_string(),
            t.len().to_string(),
        );
        for ((ck, ca, cmsg), (tk, ta, tmsg)) in c.iter().zip(t.iter()) {
            let what = format!("deliveries of {subj} ({ck} {})", ca.lines().nth(3).unwrap_or(""));
            diffs.check(format!("{what}: kind"), ck, tk);
            diffs.check(format!("{what}: argv"), ca.replace('\n', " "), ta.replace('\n', " "));
            let endings = |crlf: bool| if crlf { "CRLF" } else { "LF" };
            diffs.check(format!("{what}: line endings"), endings(cmsg.crlf), endings(tmsg.crlf));
            let fields = |m: &Message| {
                let mut f: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in &m.headers {
                    f.entry(k.to_ascii_lowercase()).or_default().push(v.clone());
                }
                f
            };
            let (cf, tf) = (fields(cmsg), fields(tmsg));
            for name in cf.keys().chain(tf.keys()).collect::<BTreeSet<_>>() {
                let show = |f: &BTreeMap<String, Vec<String>>| {
                    f.get(name).map(|v| v.join(" / ")).unwrap_or_else(|| "(absent)".into())
                };
                diffs.check(format!("{what}: header {name}"), show(&cf), show(&tf));
            }
            diffs.check(format!("{what}: body"), &cmsg.body, &tmsg.body);
        }
    }
}

/// Compare the post-data hook's environment run by run, variable by
/// variable, with the client's port in `REMOTE_ADDR` replaced by `PORT`.
pub fn compare_hook_env(diffs: &mut Diffs, chasquid: &Recorded, tambo: &Recorded) {
    let normalised = |e: &BTreeMap<String, String>| {
        let mut e = e.clone();
        if let Some(a) = e.get_mut("REMOTE_ADDR")
            && let Some((ip, _)) = a.rsplit_once(':')
        {
            *a = format!("{ip}:PORT");
        }
        e
    };
    for subj in chasquid
        .hook_env
        .keys()
        .chain(tambo.hook_env.keys())
        .collect::<BTreeSet<_>>()
    {
        let c = chasquid.hook_env.get(subj).map(normalised).unwrap_or_default();
        let t = tambo.hook_env.get(subj).map(normalised).unwrap_or_default();
        diffs.check(
            format!("post-data hook for {subj}: ran"),
            (!c.is_empty()).to_string(),
            (!t.is_empty()).to_string(),
        );
        for k in c.keys().chain(t.keys()).collect::<BTreeSet<_>>() {
            let show = |v: Option<&String>| v.map(|v| format!("{k}={v}")).unwrap_or_else(|| "(unset)".into());
            diffs.check(
                format!("post-data hook for {subj}: {k}"),
                show(c.get(k)),
                show(t.get(k)),
            );
        }
    }
    diffs.check(
        "post-data hook input has CR",
        chasquid.hook_input_crlf.to_string(),
        tambo.hook_input_crlf.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_keywords() {
        let m = parse_message(
            "Received: x\r\n y\r\nReceived-SPF: none (no DNS record found)\r\nSubject: a\r\n b\r\n\r\nbody\r\n",
        );
        assert!(m.crlf);
        assert_eq!(
            m.headers,
            vec![
                ("Received-SPF".into(), "(present)".into()),
                ("Subject".into(), "a b".into())
            ]
        );
        assert_eq!(m.body, "body\n");
        assert_eq!(
            ehlo_keywords("250-mx | 250-SIZE 1 | 250-AUTH PLAIN LOGIN | 250 HELP"),
            "AUTH=LOGIN AUTH=PLAIN HELP SIZE 1"
        );
        let k = Known {
            what: "x",
            chasquid: "a",
            tambo: "b*",
            why: "",
        };
        let d = |t: &str| Diff {
            what: "the x".into(),
            chasquid: "a".into(),
            tambo: t.into(),
        };
        assert!(k.matches(&d("bcd")) && !k.matches(&d("cd")));
    }
}
