//! Local delivery through a command: the configured mail delivery agent
//! (with `%from%`-style placeholders) or a pipe alias. No shell is ever
//! involved; every value that comes from mail is sanitised before it
//! reaches an argument.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::lineend::LineEndings;
use tambo_common::names::{sanitize_for_argv, split_address};
use tambo_hookd::runner::{self, Input, Program};
use tambo_hookd::service::whole_env;
use tambo_hookd::witness::Witness;
use tambo_ipc::proto::{DeliveryOutcome, HookFailure, HookRun};

/// How long a delivery command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Exit code meaning "temporary failure, try again later" (EX_TEMPFAIL).
pub const EXIT_TEMPFAIL: i32 = 75;
/// How much of the command's output is kept for the error message.
const OUTPUT_LIMIT: usize = 4096;

/// The values placeholders stand for.
pub struct Placeholders<'a> {
    /// Envelope sender (empty for `<>`).
    pub from: &'a str,
    /// Final recipient address.
    pub to: &'a str,
}

/// Substitute `%from% %from_user% %from_domain% %to% %to_user% %to_domain%`
/// in each argument, sanitising every substituted value.
pub fn expand_args(args: &[String], p: &Placeholders<'_>) -> Vec<String> {
    let (from_user, from_domain) = split_address(p.from);
    let (to_user, to_domain) = split_address(p.to);
    let values = [
        ("%from_user%", from_user),
        ("%from_domain%", from_domain),
        ("%from%", p.from),
        ("%to_user%", to_user),
        ("%to_domain%", to_domain),
        ("%to%", p.to),
    ];
    args.iter()
        .map(|arg| {
            let mut out = String::new();
            let mut rest = arg.as_str();
            'outer: while !rest.is_empty() {
                for (name, value) in &values {
                    if let Some(after) = rest.strip_prefix(name) {
                        out.push_str(&sanitize_value(value));
                        rest = after;
                        continue 'outer;
                    }
                }
                let c = rest.chars().next().expect("non-empty");
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
            out
        })
        .collect()
}

/// Sanitised, and never empty (an empty argument would shift meanings).
fn sanitize_value(v: &str) -> String {
    let s = sanitize_for_argv(v);
    if s.is_empty() { "_".to_string() } else { s }
}

/// A delivery command and how it runs.
pub struct Command<'a> {
    /// Program and arguments (no shell).
    pub argv: &'a [String],
    /// Its whole environment: tambod's own, as chasquid runs its delivery
    /// agent and pipe aliases with its environment.
    pub env: &'a [(String, String)],
    /// Records the run where a restarted deliverd finds it.
    pub witness: Option<&'a Witness>,
}

/// Run a command with the message on stdin (CRLF line endings, as
/// chasquid gives its delivery agent) and map the result to an outcome.
pub async fn run_command(command: &Command<'_>, header_prefix: &[u8], data: Arc<OwnedFd>) -> DeliveryOutcome {
    if command.argv.is_empty() {
        return DeliveryOutcome::PermFail("empty delivery command".into());
    }
    let file = match data.try_clone() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return DeliveryOutcome::TempFail(format!("data file: {e}")),
    };
    let env = whole_env(command.env);
    let program = Program {
        argv: command.argv,
        env: &env,
        cwd: None,
        timeout: COMMAND_TIMEOUT,
        stdout_limit: OUTPUT_LIMIT,
        stderr_limit: OUTPUT_LIMIT,
        witness: command.witness,
        confine: tambo_ipc::sandbox::agent_ruleset(),
    };
    let input = Input::Message {
        prefix: header_prefix.to_vec(),
        data: file,
        endings: LineEndings::Crlf,
    };
    outcome(&command.argv[0], runner::run(&program, input).await)
}

/// The outcome of a delivery command that ran (or did not): exit 0 is
/// delivered, 75 (EX_TEMPFAIL) and a timeout are temporary, any other exit
/// and a program that cannot start are permanent.
pub fn outcome(bin: &str, result: Result<HookRun, HookFailure>) -> DeliveryOutcome {
    match result {
        Ok(run) => {
            let mut output = run.stdout;
            output.extend_from_slice(&run.stderr);
            let text = summarize(&output);
            match run.code {
                Some(0) => DeliveryOutcome::Delivered,
                Some(EXIT_TEMPFAIL) => {
                    DeliveryOutcome::TempFail(format!("{bin} exited with 75 (temporary failure): {text}"))
                }
                Some(code) => DeliveryOutcome::PermFail(format!("{bin} failed (exit status {code}): {text}")),
                None => DeliveryOutcome::PermFail(format!("{bin} was killed by a signal: {text}")),
            }
        }
        Err(e @ HookFailure::Spawn { .. }) => DeliveryOutcome::PermFail(e.to_string()),
        Err(e @ (HookFailure::Timeout { .. } | HookFailure::Other(_))) => DeliveryOutcome::TempFail(e.to_string()),
    }
}

/// The outcome of a delivery command known only by its raw wait status
/// (from the agent log of a deliverd that died; its output is lost). An
/// agent killed by a signal may have been killed by that death (a write
/// to the gone deliverd's pipe), so it is tried again, not bounced.
pub fn outcome_of_status(bin: &str, status: i32) -> DeliveryOutcome {
    if !libc::WIFEXITED(status) {
        return DeliveryOutcome::TempFail(format!(
            "{bin} was killed by signal {} after deliverd restarted",
            libc::WTERMSIG(status)
        ));
    }
    let run = HookRun {
        code: Some(libc::WEXITSTATUS(status)),
        stdout: b"(output lost: deliverd restarted)".to_vec(),
        stderr: Vec::new(),
    };
    outcome(bin, Ok(run))
}

/// Read at an offset without moving a shared file position.
pub(crate) async fn read_at(file: &std::fs::File, mut buf: Vec<u8>, pos: u64) -> std::io::Result<(usize, Vec<u8>)> {
    let file = file.try_clone()?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let n = file.read_at(&mut buf, pos)?;
        Ok((n, buf))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// One line of printable text from a command's output, for logs and DSNs.
fn summarize(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let line: String = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if line.is_empty() { "no output".into() } else { line }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn placeholders_are_substituted_and_sanitised() {
        let p = Placeholders {
            from: "a b@x.org",
            to: "-rf$(id)@local.test",
        };
        let out = expand_args(&args(&["-f", "%from%", "-d", "%to_user%", "x%to_domain%y", "%to%"]), &p);
        assert_eq!(
            out,
            args(&["-f", "a_b@x.org", "-d", "rf__id_", "xlocal.testy", "rf__id_@local.test"])
        );
        let empty = expand_args(&args(&["%from%"]), &Placeholders { from: "", to: "u@d" });
        assert_eq!(empty, args(&["_"]));
    }

    fn data_fd(content: &[u8]) -> Arc<OwnedFd> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        Arc::new(OwnedFd::from(f))
    }

    async fn run(argv: &[&str], env: &[(String, String)], data: &[u8]) -> DeliveryOutcome {
        let argv = args(argv);
        let cmd = Command {
            argv: &argv,
            env,
            witness: None,
        };
        run_command(&cmd, b"X-Pre: 1\r\n", data_fd(data)).await
    }

    #[tokio::test]
    async fn outcomes_by_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let cat = format!("cat > {}", out.display());
        let ok = run(&["/bin/sh", "-c", &cat], &[], b"Subject: t\r\n\r\nbody\r\n").await;
        assert_eq!(ok, DeliveryOutcome::Delivered);
        assert_eq!(std::fs::read(&out).unwrap(), b"X-Pre: 1\r\nSubject: t\r\n\r\nbody\r\n");
        let temp = run(&["/bin/sh", "-c", "echo busy; exit 75"], &[], b"").await;
        assert!(
            matches!(temp, DeliveryOutcome::TempFail(ref m) if m.contains("busy")),
            "{temp:?}"
        );
        let perm = run(&["/bin/sh", "-c", "echo nope >&2; exit 1"], &[], b"").await;
        assert!(
            matches!(perm, DeliveryOutcome::PermFail(ref m) if m.contains("nope")),
            "{perm:?}"
        );
        let missing = run(&["/nonexistent/mda"], &[], b"").await;
        assert!(matches!(missing, DeliveryOutcome::PermFail(_)));
    }

    /// The environment is the one given (tambod's), and the message keeps
    /// its CRLF line endings.
    #[tokio::test]
    async fn environment_and_line_endings() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!("{{ echo \"$MDA_DIR|$HOME\"; cat; }} > {}", out.display());
        let env = vec![("MDA_DIR".to_string(), "/srv/mail".to_string())];
        let ok = run(&["/bin/sh", "-c", &script], &env, b"A: b\r\n\r\nx\ry\r\n").await;
        assert_eq!(ok, DeliveryOutcome::Delivered);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"/srv/mail|\nX-Pre: 1\r\nA: b\r\n\r\nx\ry\r\n"
        );
    }
}
