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
";

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
            "logfile" => args.logfile = Some(PathBuf::from(value("a path")?)),
            "workers_dir" => args.workers_dir = Some(PathBuf::from(value("a directory")?)),
            "version" => args.version = true,
            "help" | "h" => args.help = true,
            "dev" => {
                args.dev = Some(PathBuf::from(inline.clone().unwrap_or_else(|| "dev-data".into())));
            }
            // chasquid flags that have no meaning here but may appear in an
            // existing service file.
            "alsologtostderr" | "logtostderr" => {}
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
    fn dev_default_dir() {
        assert_eq!(p(&["--dev"]).unwrap().dev, Some(PathBuf::from("dev-data")));
        assert_eq!(p(&["--dev=/tmp/d"]).unwrap().dev, Some(PathBuf::from("/tmp/d")));
    }
}
