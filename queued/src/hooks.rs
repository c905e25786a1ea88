//! Running the operator's hooks (`config_dir/hooks/post-data` and
//! `config_dir/hooks/alias-resolve`): no shell, the environment chasquid
//! gives them, the configuration directory as working directory, bounded
//! output and a timeout after which the hook's whole process group is
//! killed.
//!
//! When tambo runs as root the hooks run as queued's user (`tambo-queue`).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tambo_common::lineend::CrlfToLf;
use tambo_ipc::proto::{IncomingEnvelope, SmtpReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How much of a hook's stdout is kept.
pub const STDOUT_LIMIT: usize = 64 * 1024;
/// How much of a hook's stderr is kept (for the log).
const STDERR_LIMIT: usize = 4096;

/// Why a hook could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The hook could not be started.
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    /// The hook ran for too long and was killed.
    #[error("{0} timed out after {1}s")]
    Timeout(String, u64),
    /// Waiting for the hook failed.
    #[error("waiting for {0}: {1}")]
    Wait(String, std::io::Error),
}

/// What a hook produced.
#[derive(Debug)]
pub struct HookOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Its stdout (at most [`STDOUT_LIMIT`] bytes).
    pub stdout: Vec<u8>,
    /// Its stderr (at most 4 KiB), for the log.
    pub stderr: Vec<u8>,
}

/// What a hook reads on stdin.
pub enum HookInput {
    /// Nothing (stdin is /dev/null).
    Nothing,
    /// These bytes followed by the content of this file, with LF line
    /// endings (chasquid keeps messages with LF and gives its hook that).
    Message {
        /// Written first (header lines).
        prefix: Vec<u8>,
        /// The data file.
        data: std::fs::File,
    },
}

/// The path of hook `name` when it exists and is executable by us.
pub fn find_hook(config_dir: &Path, name: &str) -> Option<PathBuf> {
    let path = config_dir.join("hooks").join(name);
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    match nix::unistd::access(&path, nix::unistd::AccessFlags::X_OK) {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(
                "{}: exists but cannot be executed by this user ({e}); ignored",
                path.display()
            );
            None
        }
    }
}

/// `PATH` when tambod was started without one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment the post-data hook gets besides its own variables, as
/// in chasquid: `USER`, `PWD`, `SHELL` and `PATH` of tambod's environment
/// (`agent_env`; empty when tambod had none, except `PATH`). The hook runs
/// in the configuration directory, so a shell's `$PWD` is that directory.
pub fn base_env(agent_env: &[(String, String)]) -> Vec<(String, String)> {
    let get = |name: &str| agent_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    ["USER", "PWD", "SHELL", "PATH"]
        .into_iter()
        .map(|name| {
            let value = get(name).unwrap_or_else(|| {
                if name == "PATH" {
                    DEFAULT_PATH.into()
                } else {
                    String::new()
                }
            });
            (name.to_string(), value)
        })
        .collect()
}

/// The environment of the `alias-resolve` hook: all of tambod's, as
/// chasquid runs it with its own (plus a `PATH` if there was none).
pub fn alias_hook_env(agent_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = agent_env.to_vec();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

/// Run `path args…` in `cwd` with exactly `env`, feeding `input`, for at
/// most `timeout`.
pub async fn run_hook(
    path: &Path,
    args: &[String],
    env: &[(String, String)],
    cwd: &Path,
    input: HookInput,
    timeout: Duration,
) -> Result<HookOutput, HookError> {
    let name = path.display().to_string();
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(match input {
            HookInput::Nothing => Stdio::null(),
            HookInput::Message { .. } => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| HookError::Spawn(name.clone(), e))?;
    let pgid = child.id().map(|p| p as i32);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        let (Some(mut stdin), HookInput::Message { prefix, data }) = (stdin, input) else {
            return;
        };
        let mut lf = CrlfToLf::default();
        let mut out = Vec::new();
        lf.push(&prefix, &mut out);
        // A hook may exit without reading everything: a broken pipe is fine.
        if stdin.write_all(&out).await.is_err() {
            return;
        }
        let data = std::sync::Arc::new(data);
        let mut pos = 0u64;
        loop {
            let d = data.clone();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let n = d.read_at(&mut buf, pos)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            let Ok(Ok(buf)) = chunk else { return };
            out.clear();
            if buf.is_empty() {
                lf.finish(&mut out);
                let _ = stdin.write_all(&out).await;
                return;
            }
            lf.push(&buf, &mut out);
            if stdin.write_all(&out).await.is_err() {
                return;
            }
            pos += buf.len() as u64;
        }
    };
    let read_out = async move { read_bounded(stdout, STDOUT_LIMIT).await };
    let read_err = async move { read_bounded(stderr, STDERR_LIMIT).await };
    let run = async {
        let (_, out, err, status) = tokio::join!(feed, read_out, read_err, child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((stdout, stderr, status)) => {
            let status = status.map_err(|e| HookError::Wait(name.clone(), e))?;
            Ok(HookOutput {
                code: status.code(),
                stdout,
                stderr,
            })
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
            }
            Err(HookError::Timeout(name, timeout.as_secs()))
        }
    }
}

/// Read up to `limit` bytes and discard the rest (so the writer never
/// blocks).
async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut r) = r {
        let _ = (&mut r).take(limit as u64).read_to_end(&mut out).await;
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    }
    out
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
    /// tambod's environment (for USER, PWD, SHELL, PATH).
    pub agent_env: &'a [(String, String)],
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
/// `timeout` (normally [`POST_DATA_TIMEOUT`]).
pub async fn post_data(
    hook: &Path,
    config_dir: &Path,
    env: &PostDataEnv<'_>,
    prefix: Vec<u8>,
    data: std::fs::File,
    timeout: Duration,
) -> PostData {
    let mut vars = base_env(env.agent_env);
    vars.extend(post_data_env(env));
    let temp = |text: String| {
        PostData::Refuse(SmtpReply {
            code: 451,
            enhanced: "4.3.0".into(),
            text,
        })
    };
    let out = match run_hook(
        hook,
        &[],
        &vars,
        config_dir,
        HookInput::Message { prefix, data },
        timeout,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("post-data hook: {e}");
            return temp(match e {
                HookError::Timeout(..) => "Timeout checking the message, try again later".into(),
                _ => "Error checking the message, try again later".into(),
            });
        }
    };
    match out.code {
        Some(0) => match header_block(&out.stdout) {
            Some(h) => PostData::Accept(h),
            None => {
                tracing::warn!("post-data hook: its output is not header lines; ignored");
                PostData::BadOutput
            }
        },
        code => {
            let line = last_line(&out.stdout);
            tracing::info!(
                "post-data hook exited with {code:?}: {line} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            // As chasquid: the reply is the code and the hook's last line
            // as it is (the hook adds an enhanced code if it wants one).
            let permanent = code == Some(POST_DATA_PERMANENT);
            match (line.is_empty(), permanent) {
                (true, true) => PostData::Refuse(SmtpReply {
                    code: 554,
                    enhanced: "5.7.1".into(),
                    text: "Message rejected".into(),
                }),
                (true, false) => temp("Message deferred, try again later".into()),
                (false, _) => PostData::Refuse(SmtpReply {
                    code: if permanent { 554 } else { 451 },
                    enhanced: String::new(),
                    text: line,
                }),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

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

    #[tokio::test]
    async fn input_env_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "h",
            "echo \"$1 $FOO $PWD\"; pwd; wc -c | tr -d ' '; echo err >&2; exit 3",
        );
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(&vec![b'x'; 200_000]).unwrap();
        let out = run_hook(
            &p,
            &["arg".into()],
            &[("FOO".into(), "bar".into())],
            dir.path(),
            HookInput::Message {
                prefix: b"12345".to_vec(),
                data,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(out.code, Some(3));
        let text = String::from_utf8(out.stdout).unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        let cwd = canon.display();
        assert_eq!(text, format!("arg bar {cwd}\n{cwd}\n200005\n"));
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(last_line(text.as_bytes()), "200005");
    }

    #[tokio::test]
    async fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        // The grandchild would write the marker after 2 s unless killed.
        let p = script(
            dir.path(),
            "slow",
            &format!("(sleep 2; touch {}) & sleep 30", marker.display()),
        );
        let started = std::time::Instant::now();
        let r = run_hook(&p, &[], &[], dir.path(), HookInput::Nothing, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(HookError::Timeout(..))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the hook's background process survived");
    }

    #[test]
    fn finding_hooks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_hook(dir.path(), "post-data").is_none());
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let p = script(&dir.path().join("hooks"), "post-data", "exit 0");
        assert_eq!(find_hook(dir.path(), "post-data"), Some(p.clone()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Even root needs an execute bit.
        assert!(find_hook(dir.path(), "post-data").is_none());
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

    async fn run_post_data(body: &str, timeout: Duration) -> PostData {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "post-data", body);
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let env = envelope();
        let agent_env = vec![
            ("USER".to_string(), "mailer".to_string()),
            ("HOME".to_string(), "/home/mailer".to_string()),
        ];
        post_data(
            &p,
            dir.path(),
            &PostDataEnv {
                envelope: &env,
                from_local_domain: false,
                agent_env: &agent_env,
            },
            b"Received: x\r\n".to_vec(),
            data,
            timeout,
        )
        .await
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
            PostData::Accept(
                "X-Env: 192.0.2.1:4321|evilidhost[::1]|a@x.org|u@d.org v@d.org||0|0|0|mailer|\r\nX-Folded: a\r\n  b\r\n"
                    .into()
            )
        );
        assert_eq!(run_post_data("echo 'not a header'", t).await, PostData::BadOutput);
        assert_eq!(
            run_post_data("echo first; echo 'Spam detected'; exit 20", t).await,
            PostData::Refuse(SmtpReply {
                code: 554,
                enhanced: String::new(),
                text: "Spam detected".into()
            })
        );
        assert_eq!(
            run_post_data("echo 'Greylisted, come back later'; exit 1", t).await,
            PostData::Refuse(SmtpReply {
                code: 451,
                enhanced: String::new(),
                text: "Greylisted, come back later".into()
            })
        );
        assert_eq!(
            run_post_data("exit 20", t).await,
            PostData::Refuse(SmtpReply {
                code: 554,
                enhanced: "5.7.1".into(),
                text: "Message rejected".into()
            })
        );
        match run_post_data("sleep 30", Duration::from_millis(300)).await {
            PostData::Refuse(r) => assert_eq!((r.code, r.enhanced.as_str()), (451, "4.3.0")),
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
