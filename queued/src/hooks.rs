//! The operator's hooks (`config_dir/hooks/post-data` and
//! `config_dir/hooks/alias-resolve`), as queued sees them: it decides
//! what a hook is told and what its answer means; hookd runs it, under
//! its own user and sandbox (queued runs no program).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tambo_ipc::proto::{HookFailure, HookReply, HookRequest, IncomingEnvelope, SmtpReply};
use tambo_ipc::worker::PeerSlot;

/// queued's client of hookd.
pub type HookSlot = PeerSlot<HookRequest, HookReply>;

/// How long to wait for hookd when it is restarting.
const HOOKD_WAIT: Duration = Duration::from_secs(5);
/// How much longer than the hook's own timeout hookd may take to answer.
const HOOKD_MARGIN: Duration = Duration::from_secs(10);

/// Whether `config_dir/hooks/NAME` exists. hookd decides whether its user
/// can run it; this saves asking when there is no hook at all.
pub fn hook_present(config_dir: &Path, name: &str) -> bool {
    config_dir.join("hooks").join(name).is_file()
}

/// Ask hookd to run a hook and wait for its answer, for at most the
/// hook's timeout and a margin. An unreachable hookd is a failure.
pub async fn ask(hookd: &Arc<HookSlot>, req: HookRequest, fds: Vec<OwnedFd>, timeout: Duration) -> HookReply {
    let call = hookd.call(req, fds, HOOKD_WAIT);
    match tokio::time::timeout(timeout + HOOKD_WAIT + HOOKD_MARGIN, call).await {
        Ok(Ok((reply, _))) => reply,
        Ok(Err(e)) => HookReply::Failed(HookFailure::Other(format!("hookd: {e}"))),
        Err(_) => HookReply::Failed(HookFailure::Other("hookd did not answer in time".into())),
    }
}

/// The last non-empty line of a hook's output, made safe for an SMTP
/// reply (printable, at most 200 characters).
pub fn last_line(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect()
}

/// How long the post-data hook may run.
pub const POST_DATA_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit code of the post-data hook meaning "reject permanently".
pub const POST_DATA_PERMANENT: i32 = 20;

/// What the post-data hook decided.
#[derive(Debug, PartialEq, Eq)]
pub enum PostData {
    /// Accept; these header lines (CRLF endings, possibly empty) go on top
    /// of the message.
    Accept(String),
    /// Accept without adding anything: the hook succeeded but its output
    /// is not header lines (chasquid ignores it too).
    BadOutput,
    /// Refuse with this reply.
    Refuse(SmtpReply),
}

/// The facts about a transaction the post-data hook is told.
pub struct PostDataEnv<'a> {
    /// What smtpd handed over.
    pub envelope: &'a IncomingEnvelope,
    /// Whether the sender's domain is one of ours.
    pub from_local_domain: bool,
}

/// The environment of the post-data hook (besides USER, SHELL, PATH, PWD),
/// as chasquid sets it: `REMOTE_ADDR` is `ip:port` (`[ip6]:port` for
/// IPv6), and `SPF_PASS` is `1` only when SPF passed (`0` also for an
/// authenticated session, which is not checked).
pub fn post_data_env(p: &PostDataEnv<'_>) -> Vec<(String, String)> {
    let e = p.envelope;
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    vec![
        ("REMOTE_ADDR".into(), remote_addr(&e.remote_ip, e.remote_port)),
        ("EHLO_DOMAIN".into(), sanitize_ehlo(&e.helo)),
        ("EHLO_DOMAIN_RAW".into(), e.helo.replace('\0', "")),
        ("MAIL_FROM".into(), e.mail_from.clone()),
        ("RCPT_TO".into(), e.rcpts.join(" ")),
        ("AUTH_AS".into(), e.auth_user.clone().unwrap_or_default()),
        ("ON_TLS".into(), flag(e.tls.is_some())),
        ("FROM_LOCAL_DOMAIN".into(), flag(p.from_local_domain)),
        ("SPF_PASS".into(), flag(e.spf_pass == Some(true))),
    ]
}

/// `ip:port`, with brackets around an IPv6 address (Go's
/// `net.Addr.String()`, which chasquid's hook gets).
fn remote_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The EHLO name with only ASCII letters, digits and `-.[]:` kept, as
/// chasquid's `sanitizeEHLODomain` (enough for names and address
/// literals, and safe in a shell).
pub fn sanitize_ehlo(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(*c))
        .collect()
}

/// When `out` is a block of header lines (`Name: value`, or continuation
/// lines starting with a space or tab), that block with CRLF line endings.
pub fn header_block(out: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(out).ok()?;
    let mut block = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains(['\r', '\0']) {
            return None;
        }
        if line.starts_with([' ', '\t']) {
            if i == 0 || line.trim().is_empty() {
                return None;
            }
        } else {
            let (name, _) = line.split_once(':')?;
            if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
                return None;
            }
        }
        block.push_str(line);
        block.push_str("\r\n");
    }
    Some(block)
}

/// Run the post-data hook on a message (`prefix` then `data`), for at most
/// `timeout` (normally [`POST_DATA_TIMEOUT`]). `None` when there is no
/// hook hookd can run.
pub async fn post_data(
    hookd: &Arc<HookSlot>,
    env: &PostDataEnv<'_>,
    prefix: Vec<u8>,
    data: std::fs::File,
    timeout: Duration,
) -> Option<PostData> {
    let req = HookRequest::PostData {
        vars: post_data_env(env),
        prefix,
        timeout_ms: timeout.as_millis().min(u32::MAX.into()) as u32,
    };
    match ask(hookd, req, vec![OwnedFd::from(data)], timeout).await {
        HookReply::Absent => None,
        HookReply::Ran(run) => Some(post_data_verdict(run.code, &run.stdout, &run.stderr)),
        HookReply::Failed(e) => {
            tracing::warn!("post-data hook: {e}");
            Some(temp_refusal(match e {
                HookFailure::Timeout { .. } => "Timeout checking the message, try again later",
                HookFailure::Spawn { .. } | HookFailure::Other(_) => "Error checking the message, try again later",
            }))
        }
    }
}

fn temp_refusal(text: &str) -> PostData {
    PostData::Refuse(SmtpReply {
        code: 451,
        enhanced: "4.3.0".into(),
        text: text.into(),
    })
}

/// What the post-data hook's exit code and output mean.
fn post_data_verdict(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> PostData {
    if code == Some(0) {
        return match header_block(stdout) {
            Some(h) => PostData::Accept(h),
            None => {
                tracing::warn!("post-data hook: its output is not header lines; ignored");
                PostData::BadOutput
            }
        };
    }
    let line = last_line(stdout);
    tracing::info!(
        "post-data hook exited with {code:?}: {line} {}",
        String::from_utf8_lossy(stderr).trim()
    );
    // As chasquid: the reply is the code and the hook's last line as it is
    // (the hook adds an enhanced code if it wants one).
    let permanent = code == Some(POST_DATA_PERMANENT);
    match (line.is_empty(), permanent) {
        (true, true) => PostData::Refuse(SmtpReply {
            code: 554,
            enhanced: "5.7.1".into(),
            text: "Message rejected".into(),
        }),
        (true, false) => temp_refusal("Message deferred, try again later"),
        (false, _) => PostData::Refuse(SmtpReply {
            code: if permanent { 554 } else { 451 },
            enhanced: String::new(),
            text: line,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    /// Write an executable `#!/bin/sh` script. A child process writes it:
    /// a file this multi-threaded test process had open for writing can
    /// be inherited by another test's fork (between its fork and exec), and
    /// running the script at that moment fails with ETXTBSY ("Text file
    /// busy"), which made these tests fail now and then.
    pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        let mut writer = std::process::Command::new("sh")
            .arg("-c")
            .arg("cat > \"$1\" && chmod 755 \"$1\"")
            .arg("sh")
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = writer.stdin.take().unwrap();
        stdin.write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
        drop(stdin);
        assert!(writer.wait().unwrap().success(), "writing {}", p.display());
        p
    }

    /// A hookd in this process (the real service) for hooks in
    /// `config_dir/hooks`, with tambod's environment `agent_env`.
    pub(crate) async fn local_hookd(config_dir: &Path, agent_env: Vec<(String, String)>) -> Arc<HookSlot> {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let service = Arc::new(tambo_hookd::service::HookService {
            config_dir: config_dir.to_path_buf(),
            agent_env,
        });
        let channel = tambo_ipc::proto::PeerChannel::QueuedHookd;
        tokio::spawn(async move {
            let handler = move |req, fds| {
                let s = service.clone();
                async move { (s.handle(channel, req, fds).await, Vec::new()) }
            };
            let _ = tambo_ipc::rpc::serve(b.into_std().unwrap(), channel.name(), handler).await;
        });
        let slot = PeerSlot::new(channel.name());
        slot.install(a.into_std().unwrap()).await.unwrap();
        slot
    }

    fn envelope() -> IncomingEnvelope {
        IncomingEnvelope {
            mail_from: "a@x.org".into(),
            rcpts: vec!["u@d.org".into(), "v@d.org".into()],
            helo: "evil;$(id)\thost_[::1]".into(),
            remote_ip: "192.0.2.1".into(),
            remote_port: 4321,
            auth_user: None,
            tls: None,
            protocol: "ESMTP".into(),
            data_size: 0,
            listener: tambo_ipc::proto::ListenerKind::Smtp,
            spf_pass: None,
            arc: tambo_ipc::proto::ArcChain::Unknown,
            auth_headers: String::new(),
        }
    }

    async fn run_post_data(body: &str, timeout: Duration) -> Option<PostData> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        if !body.is_empty() {
            script(&dir.path().join("hooks"), "post-data", body);
        }
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let env = envelope();
        let agent_env = vec![
            ("USER".to_string(), "mailer".to_string()),
            ("HOME".to_string(), "/home/mailer".to_string()),
        ];
        let hookd = local_hookd(dir.path(), agent_env).await;
        let env = PostDataEnv {
            envelope: &env,
            from_local_domain: false,
        };
        post_data(&hookd, &env, b"Received: x\r\n".to_vec(), data, timeout).await
    }

    #[tokio::test]
    async fn post_data_outcomes() {
        let t = Duration::from_secs(20);
        // The message comes with LF line endings, as in chasquid.
        let env_dump = "[ \"$(od -c | grep -c '\\\\r')\" = 0 ] || exit 9; \
                        printf 'X-Env: %s|%s|%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$REMOTE_ADDR\" \"$EHLO_DOMAIN\" \"$MAIL_FROM\" \
                        \"$RCPT_TO\" \"$AUTH_AS\" \"$ON_TLS\" \"$FROM_LOCAL_DOMAIN\" \"$SPF_PASS\" \"$USER\" \"$HOME\"; \
                        printf 'X-Folded: a\\n  b\\n'";
        assert_eq!(
            run_post_data(env_dump, t).await,
            Some(PostData::Accept(
                "X-Env: 192.0.2.1:4321|evilidhost[::1]|a@x.org|u@d.org v@d.org||0|0|0|mailer|\r\nX-Folded: a\r\n  b\r\n"
                    .into()
            ))
        );
        assert_eq!(run_post_data("echo 'not a header'", t).await, Some(PostData::BadOutput));
        assert_eq!(run_post_data("", t).await, None);
        assert_eq!(
            run_post_data("echo first; echo 'Spam detected'; exit 20", t).await,
            Some(PostData::Refuse(SmtpReply {
                code: 554,
                enhanced: String::new(),
                text: "Spam detected".into()
            }))
        );
        assert_eq!(
            run_post_data("echo 'Greylisted, come back later'; exit 1", t).await,
            Some(PostData::Refuse(SmtpReply {
                code: 451,
                enhanced: String::new(),
                text: "Greylisted, come back later".into()
            }))
        );
        assert_eq!(
            run_post_data("exit 20", t).await,
            Some(PostData::Refuse(SmtpReply {
                code: 554,
                enhanced: "5.7.1".into(),
                text: "Message rejected".into()
            }))
        );
        match run_post_data("sleep 30", Duration::from_millis(300)).await {
            Some(PostData::Refuse(r)) => assert_eq!((r.code, r.enhanced.as_str()), (451, "4.3.0")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_blocks() {
        assert_eq!(header_block(b"").as_deref(), Some(""));
        assert_eq!(
            header_block(b"A: 1\nB:2\r\n\tc\n").as_deref(),
            Some("A: 1\r\nB:2\r\n\tc\r\n")
        );
        assert_eq!(header_block(b" cont: first\n"), None);
        assert_eq!(header_block(b"A: 1\n\nbody\n"), None);
        assert_eq!(header_block(b"Bad name: 1\n"), None);
        assert_eq!(header_block(b"A: 1\rB: 2\n"), None);
        assert_eq!(header_block(b"\xff: 1\n"), None);
    }
}
