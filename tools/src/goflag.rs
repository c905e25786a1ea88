//! Command lines parsed as Go's `flag` package parses them (chasquid's
//! tools use it): `-name`, `--name`, `-name=value`, `-name value` for
//! string flags, `-name`/`-name=true|false` for booleans; parsing stops at
//! the first argument that is not a flag, or after `--`. Errors print Go's
//! message and the usage, and exit with status 2; `-h`/`-help` print the
//! usage and exit 0.

use std::collections::HashMap;

/// One flag.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Its name, without dashes.
    pub name: &'static str,
    /// Whether it is a boolean flag (takes no value).
    pub boolean: bool,
    /// Its default value ("" for none, "false" for booleans).
    pub default: &'static str,
    /// The help line.
    pub usage: &'static str,
}

/// The parsed flags and the remaining arguments.
#[derive(Debug, Default)]
pub struct Parsed {
    values: HashMap<&'static str, String>,
    /// The arguments after the flags.
    pub args: Vec<String>,
}

impl Parsed {
    /// The value of a string flag (its default when not given).
    pub fn string(&self, name: &str) -> String {
        self.values.get(name).cloned().unwrap_or_default()
    }

    /// The value of a boolean flag.
    pub fn boolean(&self, name: &str) -> bool {
        self.values.get(name).is_some_and(|v| v == "true")
    }

    /// Positional argument `i` (from 0), empty when absent.
    pub fn arg(&self, i: usize) -> &str {
        self.args.get(i).map(String::as_str).unwrap_or("")
    }
}

/// What the caller does after a failed parse: print `message` (if any)
/// and the usage on stderr, and exit with `code`.
#[derive(Debug, PartialEq, Eq)]
pub struct Stop {
    /// Go's error line, or empty for `-h`.
    pub message: String,
    /// 2 for errors, 0 for `-h`.
    pub code: i32,
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parse `argv` (without the program name) against `flags`.
pub fn parse(flags: &[Flag], argv: &[String]) -> Result<Parsed, Stop> {
    let mut out = Parsed::default();
    for f in flags {
        out.values.insert(f.name, f.default.to_string());
    }
    let stop = |message: String| Stop { message, code: 2 };
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        if a.len() < 2 || !a.starts_with('-') {
            break;
        }
        let body = a.strip_prefix("--").unwrap_or(&a[1..]);
        if body.is_empty() {
            // "--" ends the flags.
            i += 1;
            break;
        }
        if body.starts_with('-') || body.starts_with('=') {
            return Err(stop(format!("bad flag syntax: {a}")));
        }
        i += 1;
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        let Some(flag) = flags.iter().find(|f| f.name == name) else {
            if name == "help" || name == "h" {
                return Err(Stop {
                    message: String::new(),
                    code: 0,
                });
            }
            return Err(stop(format!("flag provided but not defined: -{name}")));
        };
        let value = if flag.boolean {
            let v = value.unwrap_or_else(|| "true".into());
            match parse_bool(&v) {
                Some(b) => b.to_string(),
                None => return Err(stop(format!("invalid boolean value \"{v}\" for -{name}: parse error"))),
            }
        } else {
            match value {
                Some(v) => v,
                None if i < argv.len() => {
                    i += 1;
                    argv[i - 1].clone()
                }
                None => return Err(stop(format!("flag needs an argument: -{name}"))),
            }
        };
        out.values.insert(flag.name, value);
    }
    out.args = argv[i..].to_vec();
    Ok(out)
}

/// The flag list as Go's `PrintDefaults` prints it (sorted by name).
pub fn defaults(flags: &[Flag]) -> String {
    let mut sorted: Vec<&Flag> = flags.iter().collect();
    sorted.sort_by_key(|f| f.name);
    let mut out = String::new();
    for f in sorted {
        let mut line = format!("  -{}", f.name);
        if !f.boolean {
            line.push_str(" string");
        }
        if line.len() <= 4 {
            line.push('\t');
        } else {
            line.push_str("\n    \t");
        }
        line.push_str(&f.usage.replace('\n', "\n    \t"));
        if !f.boolean && !f.default.is_empty() {
            line.push_str(&format!(" (default {:?})", f.default));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAGS: &[Flag] = &[
        Flag {
            name: "addr",
            boolean: false,
            default: "",
            usage: "LMTP server address",
        },
        Flag {
            name: "port",
            boolean: false,
            default: "smtp",
            usage: "port to use",
        },
        Flag {
            name: "to_puny",
            boolean: true,
            default: "false",
            usage: "Encode addresses using punycode",
        },
    ];

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_syntax() {
        let p = parse(FLAGS, &v(&["--addr", "x:1", "-to_puny", "rest", "-addr=y"])).unwrap();
        assert_eq!((p.string("addr"), p.boolean("to_puny")), ("x:1".to_string(), true));
        assert_eq!(p.args, v(&["rest", "-addr=y"]));
        assert_eq!(p.string("port"), "smtp");
        let p = parse(FLAGS, &v(&["-to_puny=false", "--", "-x"])).unwrap();
        assert!(!p.boolean("to_puny"));
        assert_eq!(p.arg(0), "-x");
        assert_eq!(
            parse(FLAGS, &v(&["-nope"])).unwrap_err().message,
            "flag provided but not defined: -nope"
        );
        assert_eq!(
            parse(FLAGS, &v(&["-addr"])).unwrap_err().message,
            "flag needs an argument: -addr"
        );
        assert_eq!(parse(FLAGS, &v(&["-h"])).unwrap_err().code, 0);
        assert_eq!(parse(FLAGS, &v(&["-to_puny=x"])).unwrap_err().code, 2);
    }

    #[test]
    fn printed_defaults() {
        assert_eq!(
            defaults(FLAGS),
            "  -addr string\n    \tLMTP server address\n  -port string\n    \tport to use (default \"smtp\")\n  -to_puny\n    \tEncode addresses using punycode\n"
        );
    }
}
