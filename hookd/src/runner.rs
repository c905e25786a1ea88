//! Running one program: no shell, exactly the environment given, the
//! message on stdin (converted to the line endings asked for), bounded
//! output, and a timeout after which the program's whole process group is
//! killed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::lineend::{self, LineEndings};
use tambo_ipc::proto::{HookFailure, HookRun};

use crate::witness::Witness;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// What a program reads on stdin.
pub enum Input {
    /// Nothing (stdin is /dev/null).
    Nothing,
    /// `prefix`, then the content of `data`, with `endings`.
    Message {
        /// Written first (header lines, CRLF).
        prefix: Vec<u8>,
        /// The data file (CRLF), read from offset 0 without moving a
        /// shared position.
        data: std::fs::File,
        /// What the program gets.
        endings: LineEndings,
    },
}

/// One program to run.
pub struct Program<'a> {
    /// The program and its arguments.
    pub argv: &'a [String],
    /// Its whole environment.
    pub env: &'a [(String, String)],
    /// Its working directory; `None` keeps the runner's.
    pub cwd: Option<&'a Path>,
    /// How long it may run.
    pub timeout: Duration,
    /// How much of its stdout is kept (the rest is read and dropped, so it
    /// never blocks on a full pipe).
    pub stdout_limit: usize,
    /// How much of its stderr is kept.
    pub stderr_limit: usize,
    /// A watcher that records the run where a restarted runner finds it.
    pub witness: Option<&'a Witness>,
    /// A Landlock ruleset the program (and its watcher) must run under, on
    /// top of the runner's own.
    pub confine: Option<BorrowedFd<'a>>,
}

/// Run `program` with `input` on stdin.
pub async fn run(program: &Program<'_>, input: Input) -> Result<HookRun, HookFailure> {
    let Some((bin, args)) = program.argv.split_first() else {
        return Err(HookFailure::Other("empty command".into()));
    };
    // Under a witness, the watcher starts the program and feeds it.
    let (input, handover, watched) = match (program.witness, input) {
        (Some(w), Input::Message { prefix, data, endings }) => {
            if lineend::converter(endings).is_some() {
                return Err(HookFailure::Other(
                    "a witnessed program reads the message unconverted".into(),
                ));
            }
            let (theirs, ours) =
                std::os::unix::net::UnixStream::pair().map_err(|e| HookFailure::Other(format!("socketpair: {e}")))?;
            (Input::Nothing, Some((w, ours, prefix, data)), Some(theirs))
        }
        (_, input) => (input, None, None),
    };
    let mut cmd = match &handover {
        Some((w, ..)) => {
            let mut c = tokio::process::Command::new(&w.program);
            c.arg("--").arg(bin);
            c
        }
        None => tokio::process::Command::new(bin),
    };
    cmd.args(args)
        .env_clear()
        .envs(program.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match (&input, watched) {
        // The watcher's stdin is its end of the handover socket.
        (_, Some(sock)) => cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(sock))),
        (Input::Nothing, None) => cmd.stdin(Stdio::null()),
        (Input::Message { .. }, None) => cmd.stdin(Stdio::piped()),
    };
    if let Some(cwd) = program.cwd {
        cmd.current_dir(cwd);
    }
    // Without a watcher to do it, the program confines itself between
    // fork and exec (the slower fork path of the C library).
    if let (Some(ruleset), None) = (program.confine, &handover) {
        let fd = ruleset.as_raw_fd();
        // SAFETY: one system call between fork and exec; the fd is
        // borrowed for as long as `cmd` lives.
        unsafe {
            cmd.pre_exec(move || crate::witness::restrict_self(BorrowedFd::borrow_raw(fd)));
        }
    }
    let mut child = cmd.spawn().map_err(|e| HookFailure::Spawn {
        program: bin.clone(),
        why: e.to_string(),
    })?;
    drop(cmd);
    if let Some((w, ours, prefix, data)) = handover {
        let w = w.clone();
        let confine = program.confine.map(|c| c.try_clone_to_owned());
        // A watcher that died cannot take it: its exit status tells.
        let _ = tokio::task::spawn_blocking(move || {
            let confine = confine.transpose()?;
            w.hand_over(ours, &prefix, data.as_fd(), confine.as_ref().map(|c| c.as_fd()))
        })
        .await;
    }
    let pgid = child.id().map(|p| p as i32);
    // A run given up (its future dropped) takes the whole group with it,
    // the program under a witness too.
    let mut group = GroupKill(pgid);
    let feed = feed(child.stdin.take(), input);
    let read_out = read_bounded(child.stdout.take(), program.stdout_limit);
    let read_err = read_bounded(child.stderr.take(), program.stderr_limit);
    let all = async {
        let (_, stdout, stderr, status) = tokio::join!(feed, read_out, read_err, child.wait());
        (stdout, stderr, status)
    };
    match tokio::time::timeout(program.timeout, all).await {
        Ok((stdout, stderr, status)) => {
            group.0 = None;
            let status = status.map_err(|e| HookFailure::Other(format!("waiting for {bin}: {e}")))?;
            Ok(HookRun {
                code: status.code(),
                stdout,
                stderr,
            })
        }
        Err(_) => {
            drop(group);
            Err(HookFailure::Timeout {
                program: bin.clone(),
                secs: program.timeout.as_secs() as u32,
            })
        }
    }
}

/// Kills a process group when dropped, unless disarmed (`None`).
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Write the input to the program's stdin, in chunks of 64 KiB. A program
/// may exit without reading everything: a broken pipe ends the feed.
async fn feed(stdin: Option<tokio::process::ChildStdin>, input: Input) {
    let (Some(mut stdin), Input::Message { prefix, data, endings }) = (stdin, input) else {
        return;
    };
    let mut convert = lineend::converter(endings);
    let mut out = Vec::new();
    let mut write = |chunk: &[u8], last: bool, out: &mut Vec<u8>| {
        out.clear();
        match &mut convert {
            None => out.extend_from_slice(chunk),
            Some(c) => {
                c.push(chunk, out);
                if last {
                    c.finish(out);
                }
            }
        }
    };
    write(&prefix, false, &mut out);
    if stdin.write_all(&out).await.is_err() {
        return;
    }
    let data = Arc::new(data);
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
        write(&buf, buf.is_empty(), &mut out);
        if stdin.write_all(&out).await.is_err() || buf.is_empty() {
            return;
        }
        pos += buf.len() as u64;
    }
}

/// Read up to `limit` bytes and discard the rest (so the writer never
/// blocks).
async fn read_bounded<R: AsyncRead + Unpin>(r: Option<R>, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut r) = r {
        let _ = (&mut r).take(limit as u64).read_to_end(&mut out).await;
        let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
    }
    out
}

/// The path of `config_dir/hooks/NAME` when it is a file the calling user
/// may execute. One that exists but cannot be executed is logged and
/// treated as absent, as chasquid does.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    /// Write an executable `#!/bin/sh` script. A child process writes it:
    /// a file this multi-threaded test process had open for writing can
    /// be inherited by another test's fork (between its fork and exec), and
    /// running the script at that moment fails with ETXTBSY ("Text file
    /// busy").
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

    fn program<'a>(argv: &'a [String], env: &'a [(String, String)], cwd: &'a Path, timeout: Duration) -> Program<'a> {
        Program {
            argv,
            env,
            cwd: Some(cwd),
            timeout,
            stdout_limit: 64 * 1024,
            stderr_limit: 4096,
            witness: None,
            confine: None,
        }
    }

    #[tokio::test]
    async fn input_env_output() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            "h",
            "echo \"$1 $FOO $PWD\"; pwd; od -c | grep -c '\\\\r'; echo err >&2; exit 3",
        );
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(&b"line\r\n".repeat(40_000)).unwrap();
        let argv = [p.display().to_string(), "arg".into()];
        let env = [("FOO".to_string(), "bar".to_string())];
        let input = Input::Message {
            prefix: b"A: 1\r\n".to_vec(),
            data,
            endings: LineEndings::Lf,
        };
        let out = run(&program(&argv, &env, dir.path(), Duration::from_secs(10)), input)
            .await
            .unwrap();
        assert_eq!(out.code, Some(3));
        let text = String::from_utf8(out.stdout).unwrap();
        let canon = std::fs::canonicalize(dir.path()).unwrap();
        let cwd = canon.display();
        // No CR reached the program.
        assert_eq!(text, format!("arg bar {cwd}\n{cwd}\n0\n"));
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn crlf_kept_and_output_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "h", "wc -c | tr -d ' '; head -c 100000 /dev/zero >&2");
        let mut data = tempfile::tempfile().unwrap();
        data.write_all(&vec![b'x'; 200_000]).unwrap();
        let argv = [p.display().to_string()];
        let input = Input::Message {
            prefix: b"12345".to_vec(),
            data,
            endings: LineEndings::Crlf,
        };
        let out = run(&program(&argv, &[], dir.path(), Duration::from_secs(10)), input)
            .await
            .unwrap();
        assert_eq!((out.code, out.stdout.as_slice()), (Some(0), &b"200005\n"[..]));
        assert_eq!(out.stderr.len(), 4096);
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
        let argv = [p.display().to_string()];
        let started = std::time::Instant::now();
        let r = run(
            &program(&argv, &[], dir.path(), Duration::from_millis(300)),
            Input::Nothing,
        )
        .await;
        assert!(matches!(r, Err(HookFailure::Timeout { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the program's background process survived");
    }

    #[tokio::test]
    async fn missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let argv = ["/nonexistent/prog".to_string()];
        let r = run(&program(&argv, &[], dir.path(), Duration::from_secs(5)), Input::Nothing).await;
        assert!(matches!(r, Err(HookFailure::Spawn { .. })), "{r:?}");
        assert!(matches!(
            run(&program(&[], &[], dir.path(), Duration::from_secs(5)), Input::Nothing).await,
            Err(HookFailure::Other(_))
        ));
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
}
