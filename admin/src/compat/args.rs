//! chasquid-util's command line: every argument starting with `-` is an
//! option (`--name=value`, or `--name` alone with an empty value), every
//! other one is a positional argument. The last occurrence of an option
//! wins, as in chasquid-util's map.
//!
//! Under the `tambo` name the options that take a value also accept it as
//! the next argument (`-C DIR`, `--password PW`), as tambo's command line
//! always did.

/// Options whose value may be the next argument under the `tambo` name.
const VALUE_OPTIONS: &[&str] = &[
    "-C",
    "--config_dir",
    "--configdir",
    "--password",
    "--algo",
    "--socket",
    "--txt",
];

/// Which command line is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Exactly chasquid-util's parser (the `chasquid-util` name).
    Chasquid,
    /// chasquid-util's, plus `-C DIR` and `--password PW` (the `tambo` name).
    Tambo,
}

/// The parsed command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    options: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Args {
    /// Parse the arguments after the program name.
    pub fn parse(argv: &[String], dialect: Dialect) -> Args {
        let mut out = Args::default();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            if !a.starts_with('-') {
                out.positional.push(a.clone());
                continue;
            }
            if let Some((k, v)) = a.split_once('=') {
                out.options.push((k.to_string(), v.to_string()));
                continue;
            }
            if dialect == Dialect::Tambo {
                if VALUE_OPTIONS.contains(&a.as_str()) {
                    let v = it.next().cloned().unwrap_or_default();
                    out.options.push((a.clone(), v));
                    continue;
                }
                // -CDIR, as clap took it.
                if let Some(dir) = a.strip_prefix("-C")
                    && !dir.is_empty()
                    && !a.starts_with("--")
                {
                    out.options.push(("-C".into(), dir.to_string()));
                    continue;
                }
            }
            out.options.push((a.clone(), String::new()));
        }
        out
    }

    /// The value of option `name` (its last occurrence).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether option `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Positional argument `n`, counting from 1 like chasquid-util's
    /// `$1` (the command); empty when absent.
    pub fn pos(&self, n: usize) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.positional.get(i))
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Positional argument `n` when present and not empty.
    pub fn opt_pos(&self, n: usize) -> Option<&str> {
        Some(self.pos(n)).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn chasquid_parser() {
        let a = Args::parse(&v(&["--abc=def", "x", "y", "-p=q", "-r", "-p=z"]), Dialect::Chasquid);
        assert_eq!(a.get("--abc"), Some("def"));
        assert_eq!(a.get("-p"), Some("z"));
        assert_eq!(a.get("-r"), Some(""));
        assert_eq!((a.pos(1), a.pos(2), a.pos(3)), ("x", "y", ""));
        assert_eq!(a.opt_pos(3), None);
        // Under chasquid's rules "-C dir" is an empty -C and a positional.
        let a = Args::parse(&v(&["-C", "dir", "print-config"]), Dialect::Chasquid);
        assert_eq!((a.get("-C"), a.pos(1)), (Some(""), "dir"));
        assert_eq!(
            Args::parse(&v(&["--password=a=b"]), Dialect::Chasquid).get("--password"),
            Some("a=b")
        );
    }

    #[test]
    fn tambo_parser() {
        let a = Args::parse(
            &v(&["-C", "dir", "user-add", "u@d", "--password", "-pw", "--receive_only"]),
            Dialect::Tambo,
        );
        assert_eq!(a.get("-C"), Some("dir"));
        assert_eq!(a.get("--password"), Some("-pw"));
        assert_eq!(a.get("--receive_only"), Some(""));
        assert_eq!((a.pos(1), a.pos(2)), ("user-add", "u@d"));
        let a = Args::parse(&v(&["-C/etc/x", "print-config", "-v"]), Dialect::Tambo);
        assert_eq!(
            (a.get("-C"), a.pos(1), a.has("-v")),
            (Some("/etc/x"), "print-config", true)
        );
        let a = Args::parse(&v(&["--config_dir=/c", "check-userdb", "--password"]), Dialect::Tambo);
        assert_eq!((a.get("--config_dir"), a.get("--password")), (Some("/c"), Some("")));
    }
}
