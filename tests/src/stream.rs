//! A stream of numbered messages from real clients (Python's `smtplib`,
//! several threads, one connection per message), for the tests that break
//! servers under load: even numbers through port 25, odd ones through
//! submission (STARTTLS, AUTH PLAIN). Each message is retried until it
//! gets a `250`; an attempt that failed after its data was sent is
//! *ambiguous* (RFC 1047: the server may have taken it), and only such a
//! message may be stored more than once, each copy from another
//! acceptance.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{TestEnv, is_root};

/// The clients' script: its argument is the [`Plan`] as JSON.
const CLIENTS: &str = r#"
import json, smtplib, ssl, sys, threading, time
plan = json.loads(sys.argv[1])
lock, next_n, out = threading.Lock(), [0], []
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def attempt(n):
    body = ('Subject: stream %d\r\nMessage-ID: <stream-%d@test>\r\n\r\n'
            'streamed-%05d-end\r\n' % (n, n, n)).encode()
    if n % 2 == 0:
        s = smtplib.SMTP(plan['host'], plan['smtp_port'], timeout=30)
        frm, to = plan['smtp_from'], plan['smtp_to']
        s.ehlo('client.remote.example')
    else:
        s = smtplib.SMTP(plan['host'], plan['submission_port'], timeout=30)
        frm, to = plan['user'], plan['submission_to']
        s.ehlo('client.example')
        s.starttls(context=ctx)
        s.ehlo('client.example')
        s.login(plan['user'], plan['password'])
    try:
        code, msg = s.mail(frm)
        if code != 250:
            return 'retry', '%d %s' % (code, msg)
        for rcpt in to:
            code, msg = s.rcpt(rcpt)
            if code != 250:
                return 'retry', '%d %s' % (code, msg)
        try:
            code, msg = s.data(body)
        except Exception as e:
            return 'ambiguous', repr(e)
        return ('ok' if code == 250 else 'retry'), '%d %s' % (code, msg)
    finally:
        try:
            s.close()
        except Exception:
            pass

def worker():
    while True:
        with lock:
            next_n[0] += 1
            n = next_n[0]
        if n > plan['total']:
            return
        ok, ambiguous, tries, last = 0, 0, 0, ''
        while not ok and tries < plan['max_tries']:
            tries += 1
            try:
                what, last = attempt(n)
            except Exception as e:
                what, last = 'retry', repr(e)
            if what == 'ok':
                ok = 1
            else:
                ambiguous += what == 'ambiguous'
                time.sleep(0.2)
        with lock:
            out.append({'n': n, 'ok': ok, 'ambiguous': ambiguous, 'tries': tries, 'last': last})

ts = [threading.Thread(target=worker) for _ in range(plan['threads'])]
for t in ts:
    t.start()
for t in ts:
    t.join()
for r in sorted(out, key=lambda r: r['n']):
    print(json.dumps(r))
"#;

/// Where and what the clients send.
pub struct Plan {
    /// The server's (or the balancer's) address.
    pub host: String,
    /// Its port 25.
    pub smtp_port: u16,
    /// Its submission port (STARTTLS).
    pub submission_port: u16,
    /// Messages in all.
    pub total: u32,
    /// Concurrent clients.
    pub threads: u32,
    /// Envelope sender through port 25.
    pub smtp_from: String,
    /// Recipients through port 25.
    pub smtp_to: Vec<String>,
    /// The submission user (also the envelope sender there).
    pub user: String,
    /// Their password.
    pub password: String,
    /// Recipients through submission.
    pub submission_to: Vec<String>,
    /// Attempts per message at most (0.2 s apart).
    pub max_tries: u32,
}

impl Plan {
    fn json(&self) -> String {
        let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(",");
        format!(
            "{{\"host\":{:?},\"smtp_port\":{},\"submission_port\":{},\"total\":{},\"threads\":{},\
             \"smtp_from\":{:?},\"smtp_to\":[{}],\"user\":{:?},\"password\":{:?},\
             \"submission_to\":[{}],\"max_tries\":{}}}",
            self.host,
            self.smtp_port,
            self.submission_port,
            self.total,
            self.threads,
            self.smtp_from,
            list(&self.smtp_to),
            self.user,
            self.password,
            list(&self.submission_to),
            self.max_tries,
        )
    }

    /// Start the clients (Debian's python3).
    pub fn start(&self) -> Clients {
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", CLIENTS, &self.json()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        // Their report outgrows a pipe's buffer: read it as it comes.
        let mut stdout = child.stdout.take().expect("stdout");
        let report = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
            out
        });
        Clients { child, report }
    }
}

/// The running clients.
pub struct Clients {
    child: Child,
    report: std::thread::JoinHandle<String>,
}

impl Clients {
    /// Whether they are still sending.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("clients").is_none()
    }
}

/// What the clients reported for one message.
#[derive(Debug, Clone)]
pub struct Sent {
    /// It got a 250.
    pub ok: bool,
    /// Attempts that failed after the data was sent.
    pub ambiguous: u32,
    /// Attempts in all.
    pub tries: u32,
    /// The last attempt's reply or error.
    pub last: String,
}

/// Wait for the clients; their report by message number.
pub fn finish(mut clients: Clients) -> BTreeMap<u32, Sent> {
    let status = clients.child.wait().expect("clients");
    assert!(status.success(), "the clients failed: {status}");
    let text = clients.report.join().expect("report");
    let field = |line: &str, name: &str| -> String {
        let key = format!("\"{name}\": ");
        let start = line.find(&key).expect("field") + key.len();
        let rest = &line[start..];
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        rest[..end].trim().to_string()
    };
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let last = l.split("\"last\": ").nth(1).unwrap_or_default();
            let sent = Sent {
                ok: field(l, "ok") == "1",
                ambiguous: field(l, "ambiguous").parse().expect("ambiguous"),
                tries: field(l, "tries").parse().expect("tries"),
                last: last.trim_end_matches('}').to_string(),
            };
            (field(l, "n").parse().expect("n"), sent)
        })
        .collect()
}

/// The number in a stored message, and the message from tambo's Received
/// header on (headers a mailbox server adds on top are left out): two
/// copies of one acceptance are equal, two acceptances differ.
pub fn copy_of(message: &str) -> Option<(u32, String)> {
    let at = message.find("streamed-")? + "streamed-".len();
    let n = message.get(at..at + 5)?.parse().ok()?;
    let ours = message
        .find("Received: from client.")
        .map_or(message, |i| &message[i..]);
    Some((n, ours.to_string()))
}

/// Stored copies by message number.
pub type Copies = BTreeMap<u32, Vec<String>>;

/// Add `messages` to `copies`.
pub fn collect(copies: &mut Copies, messages: impl IntoIterator<Item = String>) {
    for m in messages {
        if let Some((n, copy)) = copy_of(&m) {
            copies.entry(n).or_default().push(copy);
        }
    }
}

/// What the copies of a stream say, message by message.
#[derive(Debug, Default)]
pub struct Tally {
    /// Acknowledged and never stored.
    pub lost: Vec<u32>,
    /// One acceptance stored twice, or more acceptances stored than
    /// ambiguous attempts explain.
    pub twice: Vec<u32>,
    /// Extra copies explained by an ambiguous attempt.
    pub resent: usize,
    /// Extra copies of one acceptance that `excuse` explained.
    pub excused: usize,
    /// Copies in all.
    pub stored: usize,
}

/// Compare what was sent with what was stored; `excuse(n, copy)` says
/// whether a second copy of one acceptance of message `n` is explained
/// (a peer that saw its client go away right after the 250).
pub fn tally(sent: &BTreeMap<u32, Sent>, copies: &Copies, mut excuse: impl FnMut(u32, &str) -> bool) -> Tally {
    let mut t = Tally::default();
    for (n, s) in sent {
        let mine = copies.get(n).map(Vec::as_slice).unwrap_or_default();
        t.stored += mine.len();
        if mine.is_empty() {
            if s.ok {
                t.lost.push(*n);
            }
            continue;
        }
        let distinct: HashSet<&String> = mine.iter().collect();
        let (mut excused, mut unexcused) = (0, 0);
        for copy in &distinct {
            let extra = mine.iter().filter(|m| m == copy).count() - 1;
            if extra > 0 && excuse(*n, copy) {
                excused += extra;
            } else {
                unexcused += extra;
            }
        }
        if unexcused > 0 || distinct.len() > 1 + s.ambiguous as usize {
            t.twice.push(*n);
        } else {
            t.resent += distinct.len() - 1;
            t.excused += excused;
        }
    }
    t
}

/// A Maildir-like delivery agent, as maildrop and Dovecot's LDA deliver:
/// the message goes to `tmp/`, then (after a pause of `pause` seconds that
/// keeps deliveries in flight) is renamed into `new/`. Returns the Maildir.
pub fn maildir_mda(env: &TestEnv, pause: &str) -> PathBuf {
    let maildir = env.out_dir.join("Maildir");
    for sub in ["tmp", "new"] {
        std::fs::create_dir_all(maildir.join(sub)).expect("mkdir");
    }
    std::fs::write(
        env.tmp.path().join("mda.sh"),
        format!(
            "#!/bin/sh\nset -e\nt=$(mktemp '{0}/tmp/m.XXXXXXXX')\ncat > \"$t\"\nsleep {pause}\nmv \"$t\" '{0}/new/'\n",
            maildir.display()
        ),
    )
    .expect("write mda");
    env.fix_permissions();
    if is_root() {
        for sub in ["tmp", "new"] {
            let _ = Command::new("chmod").arg("1777").arg(maildir.join(sub)).status();
        }
    }
    maildir
}

/// Every message in a Maildir's `new/`.
pub fn maildir_messages(maildir: &Path) -> Vec<String> {
    std::fs::read_dir(maildir.join("new"))
        .map(|rd| {
            rd.flatten()
                .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}
