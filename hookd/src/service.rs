//! hookd's answers: which program a request runs, with which environment
//! and input, and which requests each channel may make.
//!
//! - `queued-hookd`: [`HookRequest::PostData`] and
//!   [`HookRequest::AliasResolve`]. hookd finds the hook in
//!   `config_dir/hooks/` itself; its working directory is `config_dir`.
//! - `deliverd-hookd`: [`HookRequest::Pipe`] only, whose command comes
//!   from an aliases file (through queued and deliverd).
//!
//! The environments are chasquid's contract: the post-data hook gets
//! `USER`, `PWD`, `SHELL` and `PATH` of tambod's environment and its own
//! variables; the alias-resolve hook and pipe aliases get tambod's whole
//! environment (plus a `PATH` when there was none).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use tambo_common::lineend::LineEndings;
use tambo_ipc::proto::{HookFailure, HookReply, HookRequest, PeerChannel};

use crate::runner::{self, Input, Program, find_hook};

/// How much of a hook's stdout is kept.
pub const STDOUT_LIMIT: usize = 64 * 1024;
/// How much of a hook's stderr is kept (for the log).
pub const STDERR_LIMIT: usize = 4096;
/// How much of a pipe alias's stdout and of its stderr is kept (for the
/// log and the DSN).
pub const PIPE_OUTPUT_LIMIT: usize = 4096;
/// The longest a request may ask a program to run.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// `PATH` when tambod was started without one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What hookd knows to answer requests.
pub struct HookService {
    /// The configuration directory (absolute): the hooks' directory and
    /// working directory.
    pub config_dir: PathBuf,
    /// tambod's environment.
    pub agent_env: Vec<(String, String)>,
}

impl HookService {
    /// Answer `req`, which came on `channel` with `fds`.
    pub async fn handle(&self, channel: PeerChannel, req: HookRequest, fds: Vec<OwnedFd>) -> HookReply {
        let refused = |what: &str| {
            HookReply::Failed(HookFailure::Other(format!(
                "{what} is not allowed on {}",
                channel.name()
            )))
        };
        match (channel, req) {
            (
                PeerChannel::QueuedHookd,
                HookRequest::PostData {
                    vars,
                    prefix,
                    timeout_ms,
                },
            ) => {
                let Some(hook) = find_hook(&self.config_dir, "post-data") else {
                    return HookReply::Absent;
                };
                let Some(data) = one_file(fds) else {
                    return HookReply::Failed(HookFailure::Other("post-data: expected one data fd".into()));
                };
                let mut env = base_env(&self.agent_env);
                env.extend(vars);
                let argv = [hook.display().to_string()];
                let program = self.hook_program(&argv, &env, timeout_ms);
                on_message(&program, prefix, data).await
            }
            (PeerChannel::QueuedHookd, HookRequest::AliasResolve { address, timeout_ms }) => {
                let Some(hook) = find_hook(&self.config_dir, "alias-resolve") else {
                    return HookReply::Absent;
                };
                let env = whole_env(&self.agent_env);
                let argv = [hook.display().to_string(), address];
                let program = self.hook_program(&argv, &env, timeout_ms);
                reply(runner::run(&program, Input::Nothing).await)
            }
            (
                PeerChannel::DeliverdHookd,
                HookRequest::Pipe {
                    argv,
                    prefix,
                    timeout_ms,
                },
            ) => {
                let Some(data) = one_file(fds) else {
                    return HookReply::Failed(HookFailure::Other("pipe: expected one data fd".into()));
                };
                let env = whole_env(&self.agent_env);
                let program = Program {
                    argv: &argv,
                    env: &env,
                    cwd: None,
                    timeout: timeout(timeout_ms),
                    stdout_limit: PIPE_OUTPUT_LIMIT,
                    stderr_limit: PIPE_OUTPUT_LIMIT,
                    witness: None,
                    confine: None,
                };
                on_message(&program, prefix, data).await
            }
            (_, HookRequest::PostData { .. }) => refused("post-data"),
            (_, HookRequest::AliasResolve { .. }) => refused("alias-resolve"),
            (_, HookRequest::Pipe { .. }) => refused("a pipe alias"),
        }
    }

    fn hook_program<'a>(&'a self, argv: &'a [String], env: &'a [(String, String)], ms: u32) -> Program<'a> {
        Program {
            argv,
            env,
            cwd: Some(&self.config_dir),
            timeout: timeout(ms),
            stdout_limit: STDOUT_LIMIT,
            stderr_limit: STDERR_LIMIT,
            witness: None,
            confine: None,
        }
    }
}

fn timeout(ms: u32) -> Duration {
    Duration::from_millis(ms.into()).min(MAX_TIMEOUT)
}

/// Run `program` on a message (`prefix`, then `data`) with LF line
/// endings, as chasquid gives its hook and pipe aliases the message.
async fn on_message(program: &Program<'_>, prefix: Vec<u8>, data: std::fs::File) -> HookReply {
    let input = Input::Message {
        prefix,
        data,
        endings: LineEndings::Lf,
    };
    reply(runner::run(program, input).await)
}

fn reply(r: Result<tambo_ipc::proto::HookRun, HookFailure>) -> HookReply {
    match r {
        Ok(run) => HookReply::Ran(run),
        Err(e) => HookReply::Failed(e),
    }
}

/// Exactly one fd, as a file.
fn one_file(fds: Vec<OwnedFd>) -> Option<std::fs::File> {
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(fd), None) => Some(std::fs::File::from(fd)),
        _ => None,
    }
}

/// The post-data hook's environment besides its own variables, as in
/// chasquid: `USER`, `PWD`, `SHELL` and `PATH` of tambod's environment
/// (empty when tambod had none, except `PATH`). The hook runs in the
/// configuration directory, so a shell's `$PWD` is that directory.
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

/// tambod's whole environment, plus a `PATH` if there was none (the
/// alias-resolve hook, pipe aliases and the delivery agent).
pub fn whole_env(agent_env: &[(String, String)]) -> Vec<(String, String)> {
    let mut env = agent_env.to_vec();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::tests::script;
    use std::io::Write;

    fn service(dir: &std::path::Path) -> HookService {
        HookService {
            config_dir: dir.to_path_buf(),
            agent_env: vec![("USER".into(), "mailer".into()), ("HOME".into(), "/home/mailer".into())],
        }
    }

    fn data(content: &[u8]) -> Vec<OwnedFd> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(content).unwrap();
        vec![OwnedFd::from(f)]
    }

    #[tokio::test]
    async fn post_data_environment_and_input() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        let s = service(dir.path());
        let req = |vars| HookRequest::PostData {
            vars,
            prefix: b"Received: x\r\n".to_vec(),
            timeout_ms: 10_000,
        };
        let r = s.handle(PeerChannel::QueuedHookd, req(vec![]), data(b"b\r\n")).await;
        assert_eq!(r, HookReply::Absent);
        script(
            &dir.path().join("hooks"),
            "post-data",
            "printf '%s|%s|%s|%s|' \"$USER\" \"$HOME\" \"$MAIL_FROM\" \"$PATH\"; od -c | grep -c '\\\\r'",
        );
        let vars = vec![("MAIL_FROM".to_string(), "a@x.org".to_string())];
        let HookReply::Ran(run) = s.handle(PeerChannel::QueuedHookd, req(vars), data(b"b\r\n")).await else {
            panic!("not run");
        };
        assert_eq!(
            String::from_utf8(run.stdout).unwrap(),
            format!("mailer||a@x.org|{DEFAULT_PATH}|0\n")
        );
    }

    #[tokio::test]
    async fn alias_resolve_gets_the_whole_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        script(&dir.path().join("hooks"), "alias-resolve", "echo \"$1 $HOME $(pwd)\"");
        let s = service(dir.path());
        let req = HookRequest::AliasResolve {
            address: "u@d.org".into(),
            timeout_ms: 10_000,
        };
        let HookReply::Ran(run) = s.handle(PeerChannel::QueuedHookd, req, Vec::new()).await else {
            panic!("not run");
        };
        let cwd = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(
            String::from_utf8(run.stdout).unwrap(),
            format!("u@d.org /home/mailer {}\n", cwd.display())
        );
    }

    #[tokio::test]
    async fn each_channel_its_requests() {
        let dir = tempfile::tempdir().unwrap();
        let s = service(dir.path());
        let pipe = HookRequest::Pipe {
            argv: vec!["/bin/true".into()],
            prefix: Vec::new(),
            timeout_ms: 5000,
        };
        let r = s.handle(PeerChannel::QueuedHookd, pipe.clone(), data(b"")).await;
        assert!(matches!(r, HookReply::Failed(HookFailure::Other(_))), "{r:?}");
        let r = s.handle(PeerChannel::DeliverdHookd, pipe, data(b"")).await;
        assert!(matches!(r, HookReply::Ran(ref run) if run.code == Some(0)), "{r:?}");
        let resolve = HookRequest::AliasResolve {
            address: "u@d.org".into(),
            timeout_ms: 5000,
        };
        let r = s.handle(PeerChannel::DeliverdHookd, resolve, Vec::new()).await;
        assert!(matches!(r, HookReply::Failed(HookFailure::Other(_))), "{r:?}");
        // A pipe without its data fd is refused, not run on an empty stdin.
        let pipe = HookRequest::Pipe {
            argv: vec!["/bin/true".into()],
            prefix: Vec::new(),
            timeout_ms: 5000,
        };
        let r = s.handle(PeerChannel::DeliverdHookd, pipe, Vec::new()).await;
        assert!(matches!(r, HookReply::Failed(HookFailure::Other(_))), "{r:?}");
    }

    #[test]
    fn environments() {
        let env = vec![("PATH".to_string(), "/x".to_string()), ("A".into(), "b".into())];
        assert_eq!(whole_env(&env), env);
        assert_eq!(whole_env(&[]), vec![("PATH".to_string(), DEFAULT_PATH.to_string())]);
        let base = base_env(&env);
        assert_eq!(base.len(), 4);
        assert!(base.contains(&("PATH".to_string(), "/x".to_string())));
        assert!(base.contains(&("USER".to_string(), String::new())));
    }
}
