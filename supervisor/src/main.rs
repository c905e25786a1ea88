//! `tambod`, the root supervisor: reads the configuration, binds the
//! listening ports, starts the four unprivileged workers and looks after
//! them. See DESIGN.md §1.

mod args;
mod chasquid_metrics;
mod control;
mod dev;
mod listeners;
mod maillog;
mod monitor;
mod ops;
mod sandbox_plan;
mod setup;
mod spawn;
mod supervise;

use std::path::{Path, PathBuf};

use tambo_ipc::proto::WorkerStart;

use crate::ops::Ops;
use crate::supervise::{Reloader, Supervisor};
use tambo_ipc::proto::MailLogEvent;

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tambod: {e}\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    if args.help {
        print!("{}", args::USAGE);
        return;
    }
    if args.version {
        println!("tambod {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    std::process::exit(match run(args) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tambod: {e}");
            1
        }
    });
}

fn log_filter(verbosity: u8) -> &'static str {
    match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

fn init_logging(args: &args::Args) -> Result<(), String> {
    if let Some(path) = &args.logfile {
        setup::redirect_stderr(path)?;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter(args.verbosity)))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    Ok(())
}

/// Reads the configuration again on SIGHUP.
struct ConfigReloader {
    config_dir: PathBuf,
    overrides: Overrides,
    template: WorkerStart,
    logfile: Option<PathBuf>,
}

impl Reloader for ConfigReloader {
    fn reload(&mut self) -> Result<WorkerStart, String> {
        if let Some(path) = &self.logfile {
            setup::redirect_stderr(path)?;
        }
        let loaded = setup::load(&self.config_dir, &self.overrides.layers())?;
        let mut start = self.template.clone();
        // Listener addresses, users and directories cannot change without a
        // restart; everything the workers reload can.
        start.local_domains = loaded.domains();
        start.domain_dirs = loaded.domain_dirs;
        start.config = setup::keep_fixed_fields(&self.template.config, loaded.config);
        start.dns_servers = setup::dns_servers(&start.config)?;
        Ok(start)
    }
}

fn run(mut args: args::Args) -> Result<i32, String> {
    init_logging(&args)?;
    // Taken before anything changes it (the systemd variables are
    // removed once their sockets are taken, and the directory changes).
    let agent_env = agent_environment();
    let workers_dir = spawn::find_workers_dir(args.workers_dir.as_deref())?;
    let mut force_unprivileged = false;
    if let Some(dir) = args.dev.clone() {
        args.config_dir = dev::prepare(&dir, &workers_dir)?;
        force_unprivileged = true;
    }
    let config_dir =
        std::fs::canonicalize(&args.config_dir).map_err(|e| format!("{}: {e}", args.config_dir.display()))?;
    let overrides = Overrides {
        user: args.config_overrides.clone(),
        testing: args.testing.overrides(),
    };
    let loaded = setup::load(&config_dir, &overrides.layers())?;
    let local_domains = loaded.domains();
    let domain_dirs = loaded.domain_dirs;
    let mut config = loaded.config;
    let privileged = nix::unistd::geteuid().is_root() && !force_unprivileged;
    if config.run_dir.is_empty() {
        let runtime = std::env::var("RUNTIME_DIRECTORY").ok();
        config.run_dir = path_string(&config.default_run_dir(nix::unistd::geteuid().is_root(), runtime.as_deref()));
    }
    // As chasquid does: work from the configuration directory, so hooks,
    // the delivery agent and pipe aliases start there.
    std::env::set_current_dir(&config_dir)
        .map_err(|e| format!("{}: cannot change into it: {e}", config_dir.display()))?;
    let identities = if privileged {
        setup::resolve_identities(&config)?
    } else {
        if force_unprivileged {
            tracing::warn!("development mode: every worker runs as the invoking user, without chroot");
        } else {
            tracing::warn!(
                "not started as root: every worker runs as the invoking user (uid {}), without chroot",
                nix::unistd::getuid()
            );
        }
        Vec::new()
    };
    let dirs = setup::prepare_dirs(&config, &identities)?;
    let mut systemd = listeners::SystemdFds::take();
    let listeners = listeners::bind_all(&config, &mut systemd)?;
    let mut ops = Ops::open(&config)?;
    ops.set_server_info(monitor::ServerInfo {
        cmdline: std::env::args().collect(),
        flags: args.flags_page(),
        config: tambo_common::config::print_config(&config),
        hostname: config.hostname.clone(),
    });
    for l in &listeners {
        let local = l.socket.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!("listening on {} ({:?}, {local})", l.addr, l.kind);
        ops.log(&MailLogEvent::Listening {
            addr: if l.addr == local {
                local.clone()
            } else {
                format!("{} ({local})", l.addr)
            },
            kind: l.kind,
        });
    }
    let plan = spawn::SpawnPlan {
        workers_dir,
        identities,
        smtpd_chroot: if privileged { Some(dirs.smtpd_chroot) } else { None },
        log_filter: log_filter(args.verbosity).to_string(),
        delivery_nice: i32::try_from(config.delivery_nice).unwrap_or(0),
    };
    let dns_servers = setup::dns_servers(&config)?;
    let start = WorkerStart {
        config,
        config_dir: path_string(&config_dir),
        local_domains,
        domain_dirs,
        verbosity: args.verbosity,
        unprivileged: !privileged,
        dns_servers,
        agent_env,
    };
    let reloader = ConfigReloader {
        config_dir,
        overrides,
        template: start.clone(),
        logfile: args.logfile.clone(),
    };
    tracing::info!("tambod {} starting", env!("CARGO_PKG_VERSION"));
    let access = control::Access {
        admin_group: start.config.admin_group.clone(),
        own_uid: if privileged {
            None
        } else {
            Some(nix::unistd::getuid().as_raw())
        },
    };
    let socket = control::ControlSocket::bind(Path::new(&start.config.run_dir), access, privileged)?;
    let mut supervisor = Supervisor::new(plan, start, listeners, reloader, ops).with_control_socket(socket);
    supervisor = supervisor.with_sandbox_probes(args.testing.sandbox_probes.clone());
    if args.testing.restart_always {
        supervisor = supervisor.restarting_always();
    }
    if let Some(every) = args.testing.reload_every {
        supervisor = supervisor.with_users_check_every(every);
    }
    supervisor.run()
}

/// tambod's environment for the delivery agent, pipe aliases and hooks
/// (see [`WorkerStart::agent_env`]). A variable that is not UTF-8 cannot
/// travel and is left out, with a warning.
fn agent_environment() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) if !k.starts_with("LISTEN_") => out.push((k, v)),
            (Ok(_), Ok(_)) => {}
            (k, _) => tracing::warn!(
                "environment variable {:?} is not UTF-8: the delivery agent and hooks will not see it",
                k.unwrap_or_else(|k| k.to_string_lossy().into_owned())
            ),
        }
    }
    out
}

/// The command line's configuration overrides: `--config_overrides`, then
/// what chasquid's `--testing__*` flags stand for.
struct Overrides {
    user: Option<String>,
    testing: String,
}

impl Overrides {
    fn layers(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        if let Some(u) = &self.user {
            out.push((tambo_common::config::OVERRIDES_NAME, u.as_str()));
        }
        if !self.testing.is_empty() {
            out.push(("--testing__ flags", self.testing.as_str()));
        }
        out
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
