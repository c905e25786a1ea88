//! Command-line flags. tambod accepts chasquid's own flags (Go style: one
//! or two dashes, `-flag=value` or `-flag value`) so it can replace chasquid
//! in an existing service file, plus a few of its own.

use std::path::PathBuf;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--config_dir` (default `/etc/tambo`).
    pub config_dir: PathBuf,
    /// `--config_overrides`: text-format fields applied over the file.
    pub config_overrides: Option<String>,
    /// `-v=N`: 0 info, 1 debug, 2 and more trace.
    pub verbosity: u8,
    /// `--logfile=PATH`: log there instead of stderr.
    pub logfile: Option<PathBuf>,
    /// `--version`.
    pub version: bool,
    /// `--help`.
    pub help: bool,
    /// `--dev[=DIR]` (tambo): create a development setup in DIR (default
    /// `./dev-data`) if missing and run it.
    pub dev: Option<PathBuf>,
    /// `--workers_dir=DIR` (tambo): where the worker binaries are.
    pub workers_dir: Option<PathBuf>,
    /// chasquid's `--testing__*` flags, for its end-to-end tests.
    pub testing: Testing,
}

/// chasquid's flags for its own tests (`--testing__dns_addr` and so on),
/// accepted so chasquid's test suite can run against tambod. Each maps
/// onto a tambo setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Testing {
    /// `--testing__dns_addr=ADDR`: every DNS query goes there
    /// (`dns_servers`).
    pub dns_addr: Option<String>,
    /// `--testing__outgoing_smtp_port=N` (`outgoing_smtp_port`).
    pub outgoing_smtp_port: Option<u16>,
    /// `--testing__max_received_headers=N` (`max_received_headers`).
    pub max_received_headers: Option<u32>,
    /// `--testing__reload_every=DURATION`: how often the users and aliases
    /// files are checked for changes (30s by default).
    pub reload_every: Option<std::time::Duration>,
    /// `--testing__sandbox_probe=WORKER:open:PATH` (or `connect:IP:PORT`,
    /// `exec:PATH`), repeatable: tambo's own tests make that worker attempt
    /// it once started, to see its sandbox refuse. Builds without the
    /// `sandbox-probe` feature only log that they have no probes.
    pub sandbox_probes: Vec<(tambo_ipc::proto::WorkerKind, tambo_ipc::proto::SandboxProbe)>,
    /// `--testing__restart_always` (tambo): restart every dead worker
    /// after 250 ms and never give up on one, for fault campaigns that
    /// kill workers far more often than a crash loop would.
    pub restart_always: bool,
}

impl Testing {
    /// The settings these flags stand for, as text-format fields applied
    /// after `--config_overrides`.
    pub fn overrides(&self) -> String {
        let mut out = String::new();
        if let Some(a) = &self.dns_addr {
            out.push_str(&format!("dns_servers: {a:?}\n"));
        }
        if let Some(p) = self.outgoing_smtp_port {
            out.push_str(&format!("outgoing_smtp_port: {p}\n"));
        }
        if let Some(n) = self.max_received_headers {
            out.push_str(&format!("max_received_headers: {n}\n"));
        }
        out
    }
}

impl Args {
    /// Every flag with its value, one `name=value` per line, as chasquid's
    /// `/debug/flags` lists them.
    pub fn flags_page(&self) -> String {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let path = |v: &Option<PathBuf>| v.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let t = &self.testing;
        [
            ("config_dir", self.config_dir.display().to_string()),
            ("config_overrides", opt(&self.config_overrides)),
            ("dev", path(&self.dev)),
            ("help", self.help.to_string()),
            ("logfile", path(&self.logfile)),
            ("testing__dns_addr", opt(&t.dns_addr)),
            (
                "testing__max_received_headers",
                t.max_received_headers.map(|n| n.to_string()).unwrap_or_default(),
            ),
            (
                "testing__outgoing_smtp_port",
                t.outgoing_smtp_port.map(|n| n.to_string()).unwrap_or_default(),
            ),
            (
                "testing__reload_every",
                t.reload_every.map(|d| format!("{d:?}")).unwrap_or_default(),
            ),
            ("v", self.verbosity.to_string()),
            ("version", self.version.to_string()),
            ("workers_dir", path(&self.workers_dir)),
        ]
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect()
    }
}

/// Help text.
pub const USAGE: &str = "\
usage: tambod [flags]
  --config_dir=DIR        configuration directory (default /etc/tambo)
  --config_overrides=TXT  text-format fields applied over chasquid.conf
  -v=N                    verbosity: 0 info, 1 debug, 2 trace
  --logfile=PATH          log to PATH instead of stderr (reopened on SIGHUP)
  --version               print the version and exit
  --dev[=DIR]             run a development setup kept in DIR (./dev-data)
  --workers_dir=DIR       where tambo-smtpd & co. are (default: next to
                          tambod, else /usr/lib/tambo)
chasquid's flags for its tests are accepted too: --testing__dns_addr,
--testing__outgoing_smtp_port, --testing__max_received_headers,
--testing__reload_every; and its logging flags --logtime,
--alsologtostderr, --logtosyslog (tambod always logs to stderr or
--logfile, with the time).
";

/// A path from the command line taken relative to the directory tambod
/// was started in (tambod changes into its configuration directory later,
/// as chasquid does, and reopens `--logfile` on SIGHUP).
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
}

/// Parse the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, String> {
    let mut args = Args {
        config_dir: PathBuf::from("/etc/tambo"),
        config_overrides: None,
        verbosity: 0,
        logfile: None,
        version: false,
        help: false,
        dev: None,
        workers_dir: None,
        testing: Testing::default(),
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = |needs: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("flag -{name} needs {needs}")),
            }
        };
        match name {
            "config_dir" => args.config_dir = PathBuf::from(value("a directory")?),
            "config_overrides" => args.config_overrides = Some(value("text-format fields")?),
            "v" => {
                let v = value("a number")?;
                args.verbosity = v.parse().map_err(|_| format!("-v={v}: not a number"))?;
            }
            "logfile" => args.logfile = Some(absolute(PathBuf::from(value("a path")?))),
            "workers_dir" => args.workers_dir = Some(PathBuf::from(value("a directory")?)),
            "version" => args.version = true,
            "help" | "h" => args.help = true,
            "dev" => {
                args.dev = Some(PathBuf::from(inline.clone().unwrap_or_else(|| "dev-data".into())));
            }
            "testing__dns_addr" => args.testing.dns_addr = Some(value("an address")?),
            "testing__outgoing_smtp_port" => {
                let v = value("a port")?;
                args.testing.outgoing_smtp_port =
                    Some(v.parse().map_err(|_| format!("-{name}={v}: not a port number"))?);
            }
            "testing__max_received_headers" => {
                let v = value("a number")?;
                args.testing.max_received_headers = Some(v.parse().map_err(|_| format!("-{name}={v}: not a number"))?);
            }
            "testing__reload_every" => {
                let v = value("a duration")?;
                let d = tambo_common::config::parse_go_duration(&v).map_err(|e| format!("-{name}: {e}"))?;
                if d.is_zero() {
                    return Err(format!("-{name}={v}: must be more than 0"));
                }
                args.testing.reload_every = Some(d);
            }
            "testing__sandbox_probe" => {
                let v = value("WORKER:WHAT:ARG")?;
                let probe = v
                    .split_once(':')
                    .and_then(|(w, rest)| Some((tambo_ipc::proto::WorkerKind::from_name(w)?, rest)))
                    .and_then(|(w, rest)| Some((w, tambo_ipc::proto::SandboxProbe::parse(rest)?)))
                    .ok_or_else(|| {
                        format!("-{name}={v}: expected WORKER:open:PATH, WORKER:connect:IP:PORT or WORKER:exec:PATH")
                    })?;
                args.testing.sandbox_probes.push(probe);
            }
            "testing__restart_always" => args.testing.restart_always = true,
            // chasquid's logging flags, which may appear in an existing
            // service file; tambod's log always has the time and goes to
            // stderr or --logfile.
            "alsologtostderr" | "logtostderr" | "logtime" => {}
            "logtosyslog" => {
                value("a syslog tag")?;
            }
            _ => return Err(format!("unknown flag -{name}")),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn go_style_flags() {
        let a = p(&[
            "-config_dir",
            "/x",
            "--v=2",
            "--logfile=/l",
            "--config_overrides=hostname: \"h\"",
        ])
        .unwrap();
        assert_eq!(a.config_dir, PathBuf::from("/x"));
        assert_eq!(a.verbosity, 2);
        assert_eq!(a.logfile, Some(PathBuf::from("/l")));
        assert_eq!(a.config_overrides.as_deref(), Some("hostname: \"h\""));
        let a = p(&["--config_dir=/y", "-v", "1", "--version"]).unwrap();
        assert_eq!(a.config_dir, PathBuf::from("/y"));
        assert_eq!(a.verbosity, 1);
        assert!(a.version);
    }

    #[test]
    fn errors() {
        assert!(p(&["--nope"]).unwrap_err().contains("unknown flag -nope"));
        assert!(p(&["-v=x"]).unwrap_err().contains("not a number"));
        assert!(p(&["--config_dir"]).unwrap_err().contains("needs"));
        assert!(p(&["stray"]).unwrap_err().contains("unexpected"));
    }

    #[test]
    fn chasquid_testing_flags() {
        let a = p(&[
            "--testing__dns_addr=127.0.0.1:9053",
            "--testing__outgoing_smtp_port=2025",
            "--testing__max_received_headers=5",
            "--testing__reload_every=50ms",
            "-logtime",
            "--logtosyslog",
            "chasquid",
            "--alsologtostderr=true",
        ])
        .unwrap();
        assert_eq!(a.testing.reload_every, Some(std::time::Duration::from_millis(50)));
        assert_eq!(
            a.testing.overrides(),
            "dns_servers: \"127.0.0.1:9053\"\noutgoing_smtp_port: 2025\nmax_received_headers: 5\n"
        );
        assert!(p(&["--testing__reload_every=0s"]).unwrap_err().contains("more than 0"));
        assert!(
            p(&["--testing__outgoing_smtp_port=x"])
                .unwrap_err()
                .contains("not a port")
        );
        // --logfile is relative to where tambod starts.
        let a = p(&["--logfile=l.log"]).unwrap();
        assert_eq!(a.logfile, Some(std::env::current_dir().unwrap().join("l.log")));
    }

    #[test]
    fn dev_default_dir() {
        assert_eq!(p(&["--dev"]).unwrap().dev, Some(PathBuf::from("dev-data")));
        assert_eq!(p(&["--dev=/tmp/d"]).unwrap().dev, Some(PathBuf::from("/tmp/d")));
    }
}
