//! `chasquid.conf`: loading, validation and printing.
//!
//! The file is protobuf text format. Fields are declared once, in the
//! `config_fields!` table below; parsing, defaults and printing all derive
//! from that table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::textproto::{self, Field, Scalar, Value};

/// Pseudo file name used in errors about `--config_overrides`.
pub const OVERRIDES_NAME: &str = "--config_overrides";

/// An error loading or checking configuration. Its Display always names
/// the file, and the line when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A problem at a given line of a file.
    #[error("{file}:{line}: {msg}")]
    Parse {
        /// The file (or pseudo-file) name.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// An I/O error reading or writing a file.
    #[error("{file}: {source}")]
    Io {
        /// The file name.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A problem with a file or directory as a whole (no line).
    #[error("{file}: {msg}")]
    Invalid {
        /// The file or directory name.
        file: String,
        /// What is wrong.
        msg: String,
    },
}

impl ConfigError {
    pub(crate) fn parse(file: &str, line: usize, msg: impl Into<String>) -> Self {
        ConfigError::Parse {
            file: file.to_string(),
            line,
            msg: msg.into(),
        }
    }

    pub(crate) fn from_textproto(file: &str, e: textproto::TextprotoError) -> Self {
        ConfigError::parse(file, e.line, format!("column {}: {}", e.col, e.msg))
    }

    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        ConfigError::Io {
            file: file.display().to_string(),
            source,
        }
    }
}

/// Converts a text-format scalar string into a UTF-8 `String`.
pub(crate) fn utf8_field(f: &Field, s: &[u8]) -> Result<String, String> {
    String::from_utf8(s.to_vec()).map_err(|_| format!("field {:?}: invalid UTF-8 in string", f.name))
}

/// Decodes a file's contents as UTF-8; the error names the line of the
/// first invalid byte.
pub(crate) fn decode_utf8(bytes: Vec<u8>, file: &str) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count();
        ConfigError::parse(file, line, "invalid UTF-8")
    })
}

/// A type that can be stored in a configuration field.
trait ConfigValue {
    /// Whether the field is repeated (a list).
    fn repeated(&self) -> bool {
        false
    }
    /// Sets (or, for lists, appends) the value from a parsed field.
    fn set(&mut self, f: &Field) -> Result<(), String>;
    /// Clears a list (no-op for scalars).
    fn clear_list(&mut self) {}
    /// Appends `name: value` lines to `out`.
    fn print(&self, name: &str, out: &mut String);
    /// Whether `f` holds this type's zero value (`""`, `0`, `false`),
    /// which chasquid reads as "not set". A value of the wrong type is not
    /// zero (`set` reports it); list elements never are.
    fn is_zero(&self, f: &Field) -> bool;
}

fn scalar_of<'a>(f: &'a Field, want: &str) -> Result<&'a Scalar, String> {
    match &f.value {
        Value::Scalar(s) => Ok(s),
        Value::Message(_) => Err(format!("field {:?}: expected {want}, got a message", f.name)),
    }
}

impl ConfigValue for String {
    fn set(&mut self, f: &Field) -> Result<(), String> {
        match scalar_of(f, "a string")? {
            Scalar::Str(b) => {
                *self = utf8_field(f, b)?;
                Ok(())
            }
            other => Err(format!("field {:?}: expected a string, got {}", f.name, other.kind())),
        }
    }
    fn print(&self, name: &str, out: &mut String) {
        out.push_str(&format!("{name}: {}\n", textproto::quote_bytes(self.as_bytes())));
    }
    fn is_zero(&self, f: &Field) -> bool {
        matches!(&f.value, Value::Scalar(Scalar::Str(b)) if b.is_empty())
    }
}

impl ConfigValue for i64 {
    fn set(&mut self, f: &Field) -> Result<(), String> {
        match scalar_of(f, "an integer")? {
            Scalar::Int(i) => {
                *self = i64::try_from(*i).map_err(|_| format!("field {:?}: integer {i} out of range", f.name))?;
                Ok(())
            }
            other => Err(format!("field {:?}: expected an integer, got {}", f.name, other.kind())),
        }
    }
    fn print(&self, name: &str, out: &mut String) {
        out.push_str(&format!("{name}: {self}\n"));
    }
    fn is_zero(&self, f: &Field) -> bool {
        matches!(&f.value, Value::Scalar(Scalar::Int(0)))
    }
}

impl ConfigValue for bool {
    fn set(&mut self, f: &Field) -> Result<(), String> {
        match scalar_of(f, "a boolean")? {
            Scalar::Ident(s) if matches!(s.as_str(), "true" | "True" | "t") => *self = true,
            Scalar::Ident(s) if matches!(s.as_str(), "false" | "False" | "f") => *self = false,
            Scalar::Int(1) => *self = true,
            Scalar::Int(0) => *self = false,
            other => {
                return Err(format!(
                    "field {:?}: expected true or false, got {}",
                    f.name,
                    other.kind()
                ));
            }
        }
        Ok(())
    }
    fn print(&self, name: &str, out: &mut String) {
        out.push_str(&format!("{name}: {self}\n"));
    }
    fn is_zero(&self, f: &Field) -> bool {
        match &f.value {
            Value::Scalar(Scalar::Ident(s)) => matches!(s.as_str(), "false" | "False" | "f"),
            Value::Scalar(Scalar::Int(0)) => true,
            _ => false,
        }
    }
}

impl ConfigValue for Vec<String> {
    fn repeated(&self) -> bool {
        true
    }
    fn set(&mut self, f: &Field) -> Result<(), String> {
        let mut s = String::new();
        s.set(f)?;
        self.push(s);
        Ok(())
    }
    fn clear_list(&mut self) {
        self.clear();
    }
    fn print(&self, name: &str, out: &mut String) {
        for s in self {
            s.print(name, out);
        }
    }
    fn is_zero(&self, _f: &Field) -> bool {
        false
    }
}

/// Returns the system host name, or "localhost" if it cannot be read.
pub fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

macro_rules! config_fields {
    ($( $(#[doc = $doc:expr])* $name:ident : $ty:ty = $default:expr ; )*) => {
        /// The contents of `chasquid.conf`, plus tambo's own additions.
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(default)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        impl Config {
            /// Names of all known fields, in declaration order.
            pub const FIELD_NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            fn field_mut(&mut self, name: &str) -> Option<&mut dyn ConfigValue> {
                match name {
                    $( stringify!($name) => Some(&mut self.$name), )*
                    _ => None,
                }
            }

            fn print_fields(&self, out: &mut String) {
                $( ConfigValue::print(&self.$name, stringify!($name), out); )*
            }
        }
    };
}

config_fields! {
    /// Host name used in greetings and as the default domain.
    hostname: String = system_hostname();
    /// Maximum message size, in megabytes.
    max_data_size_mb: i64 = 50;
    /// SMTP listening addresses ("systemd" or "host:port").
    smtp_address: Vec<String> = Vec::new();
    /// Submission listening addresses ("systemd" or "host:port").
    submission_address: Vec<String> = Vec::new();
    /// Submission-over-TLS listening addresses ("systemd" or "host:port").
    submission_over_tls_address: Vec<String> = Vec::new();
    /// Address for the monitoring HTTP server; empty means off.
    monitoring_address: String = String::new();
    /// Local delivery agent binary.
    mail_delivery_agent_bin: String = "maildrop".to_string();
    /// Local delivery agent arguments (with %from%, %to_user%, ... expanded).
    mail_delivery_agent_args: Vec<String> = strs(&["-f", "%from%", "-d", "%to_user%"]);
    /// Directory for the queue and other persistent data (chasquid's
    /// default, so a chasquid configuration keeps its queue).
    data_dir: String = "/var/lib/chasquid".to_string();
    /// Characters that start an address suffix (user+suffix).
    suffix_separators: String = "+".to_string();
    /// Characters ignored in the user part of local addresses.
    drop_characters: String = ".".to_string();
    /// Mail log destination: "<syslog>", "<stdout>", "<stderr>" or a file.
    mail_log_path: String = "<syslog>".to_string();
    /// Authenticate users against Dovecot.
    dovecot_auth: bool = false;
    /// Path to Dovecot's userdb socket (empty: auto-detect).
    dovecot_userdb_path: String = String::new();
    /// Path to Dovecot's client (auth) socket (empty: auto-detect).
    dovecot_client_path: String = String::new();
    /// Expect the HAProxy PROXY protocol on incoming SMTP connections.
    haproxy_incoming: bool = false;
    /// Maximum number of items in the queue.
    max_queue_items: i64 = 200;
    /// How long to keep trying to deliver a message (Go duration).
    give_up_send_after: String = "20h".to_string();
    /// tambo addition: run-time directory (control socket, smtpd's
    /// chroot). Empty: chosen at start, see [`Config::default_run_dir`].
    run_dir: String = String::new();
    /// tambo addition: user the smtpd worker runs as.
    smtpd_user: String = "tambo-smtpd".to_string();
    /// tambo addition: user the authd worker runs as.
    authd_user: String = "tambo-auth".to_string();
    /// tambo addition: user the queued worker runs as.
    queued_user: String = "tambo-queue".to_string();
    /// tambo addition: user the deliverd worker runs as.
    deliverd_user: String = "tambo-deliver".to_string();
    /// tambo addition: user the hooks and pipe aliases run as (hookd).
    hookd_user: String = "tambo-hook".to_string();
    /// tambo addition: group allowed to use the control socket.
    admin_group: String = "tambo".to_string();
    /// tambo addition: LMTP server for local delivery ("" = use the MDA;
    /// else "unix:/path" or "host:port").
    lmtp_address: String = String::new();
    /// tambo addition: DNS servers to use ("host" or "host:port"); empty
    /// means the system resolver configuration.
    dns_servers: Vec<String> = Vec::new();
    /// tambo addition: extra CA bundle (PEM) trusted for outgoing TLS.
    tls_extra_ca_file: String = String::new();
    /// tambo addition: port used for outgoing SMTP.
    outgoing_smtp_port: i64 = 25;
    /// tambo addition: send all remote mail through this host ("host:port");
    /// empty means direct delivery via MX.
    relay_host: String = String::new();
    /// tambo addition: file with the `user:password` for AUTH to
    /// `relay_host` (read by authd only; relative to the config dir).
    relay_auth_file: String = String::new();
    /// tambo addition: reject incoming mail failing DMARC with p=reject.
    reject_dmarc_failures: bool = false;
    /// tambo addition: maximum simultaneous incoming connections.
    max_connections: i64 = 1000;
    /// tambo addition: maximum simultaneous incoming connections per IP.
    max_connections_per_ip: i64 = 50;
    /// tambo addition: timeout waiting for an SMTP command, in seconds.
    command_timeout_secs: i64 = 300;
    /// tambo addition: maximum duration of an SMTP connection, in seconds.
    connection_timeout_secs: i64 = 3600;
    /// tambo addition: delay before the first retry of a temporary failure
    /// (Go duration). Later retries come after 5, 10 and then every 20
    /// times this delay, with jitter.
    min_retry_delay: String = "1m".to_string();
    /// tambo addition: TCP port of the HTTPS server MTA-STS policies are
    /// fetched from (`https://mta-sts.<domain>:PORT/...`); 443 except in
    /// tests.
    mta_sts_port: i64 = 443;
    /// tambo addition: niceness (0–19, added to tambod's own) of deliverd
    /// and so of every delivery agent it runs, so that under CPU pressure
    /// the SMTP front end and the queue commit (clients waiting for their
    /// reply) win over deliveries of mail that is already safe in the
    /// queue. 0: same priority as the other workers. Read when tambod
    /// starts.
    delivery_nice: i64 = 10;
    /// tambo addition: a message with more Received headers than this is
    /// refused as a mail loop (`554 5.4.6`); chasquid's
    /// `--testing__max_received_headers`.
    max_received_headers: i64 = 50;
    /// tambo addition: size of the queue's journal in MiB; 0: 1/16 of the
    /// free space of the queue's filesystem when the journal is created,
    /// between 4 and 32 MiB.
    queue_journal_size_mb: i64 = 0;
}

/// Where each field's current value came from: (file, line).
type Origins = HashMap<String, (String, usize)>;

/// Fields whose zero value is a value of its own, not "use the default":
/// `delivery_nice: 0` is normal priority, and an empty
/// `suffix_separators` or `drop_characters` turns the feature off (in
/// chasquid these two are `optional`, so `""` is a value there too).
const ZERO_IS_A_VALUE: &[&str] = &["delivery_nice", "suffix_separators", "drop_characters"];

/// Applies parsed fields to `cfg`. Within one call, a repeated field
/// replaces the existing list (its first occurrence clears it), and a
/// non-repeated field may appear only once. As in chasquid (`override()`
/// in its config.go), a zero value (`""`, `0`, `false`) means "not set":
/// it leaves the default, or what an earlier file set, in place.
fn apply_fields(cfg: &mut Config, fields: &[Field], file: &str, origins: &mut Origins) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for f in fields {
        let Some(slot) = cfg.field_mut(&f.name) else {
            return Err(ConfigError::parse(file, f.line, format!("unknown field {:?}", f.name)));
        };
        if let Some(first) = seen.get(f.name.as_str()) {
            if !slot.repeated() {
                return Err(ConfigError::parse(
                    file,
                    f.line,
                    format!("field {:?} given more than once (first on line {first})", f.name),
                ));
            }
        } else {
            if !slot.repeated() && slot.is_zero(f) && !ZERO_IS_A_VALUE.contains(&f.name.as_str()) {
                seen.insert(&f.name, f.line);
                continue;
            }
            slot.clear_list();
            seen.insert(&f.name, f.line);
        }
        slot.set(f).map_err(|msg| ConfigError::parse(file, f.line, msg))?;
        origins.insert(f.name.clone(), (file.to_string(), f.line));
    }
    Ok(())
}

fn parse_into(cfg: &mut Config, text: &str, file: &str, origins: &mut Origins) -> Result<(), ConfigError> {
    let fields = textproto::parse(text).map_err(|e| ConfigError::from_textproto(file, e))?;
    apply_fields(cfg, &fields, file, origins)
}

/// Checks a listening address: "systemd" or "host:port" where host may be
/// empty, an IPv4 address, a bracketed IPv6 address or a name.
pub fn check_listen_address(addr: &str) -> Result<(), String> {
    if addr == "systemd" {
        return Ok(());
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let Some((h, p)) = rest.split_once("]:") else {
            return Err(format!("invalid address {addr:?}: expected [ipv6]:port"));
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("invalid address {addr:?}: bad IPv6 address"));
        }
        (None, p)
    } else {
        let Some((h, p)) = addr.rsplit_once(':') else {
            return Err(format!(
                "invalid address {addr:?}: expected \"host:port\" or \"systemd\""
            ));
        };
        (Some(h), p)
    };
    if let Some(h) = host
        && !h.is_empty()
        && h.parse::<std::net::Ipv4Addr>().is_err()
        && !is_host_name(h)
    {
        return Err(format!("invalid address {addr:?}: bad host {h:?}"));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(format!("invalid address {addr:?}: bad port {port:?}"));
    }
    Ok(())
}

fn is_host_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a Go duration string such as "20h", "1h30m", "1.5h", "300ms",
/// "10s", "2us" or "0". Negative durations are rejected.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let orig = s;
    let bad = || format!("invalid duration {orig:?}");
    let mut s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(format!("invalid duration {orig:?}: negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    const MAX_NS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(|b| b.is_ascii_digit()).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            frac_part = &rest[..n];
            s = &rest[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(s.len());
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let mult: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("invalid duration {orig:?}: missing unit")),
            _ => return Err(format!("invalid duration {orig:?}: unknown unit {unit:?}")),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse::<u128>().map_err(|_| bad())?
        };
        let mut v = int.checked_mul(mult).ok_or_else(bad)?;
        // Fractional part: only as many digits as can matter.
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for d in frac_part.bytes().take(20) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        v = v.checked_add(frac * mult / scale).ok_or_else(bad)?;
        total = total.checked_add(v).ok_or_else(bad)?;
        if total > MAX_NS {
            return Err(format!("invalid duration {orig:?}: too large"));
        }
    }
    let secs = (total / 1_000_000_000) as u64;
    let nanos = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

fn validate(cfg: &Config, origins: &Origins, default_file: &str) -> Result<(), ConfigError> {
    let err = |field: &str, msg: String| -> ConfigError {
        match origins.get(field) {
            Some((file, line)) => ConfigError::parse(file, *line, msg),
            None => ConfigError::Invalid {
                file: default_file.to_string(),
                msg,
            },
        }
    };
    if cfg.hostname.is_empty() {
        return Err(err("hostname", "hostname is empty".into()));
    }
    if cfg.hostname.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("hostname", format!("hostname {:?} contains spaces", cfg.hostname)));
    }
    if cfg.max_data_size_mb <= 0 {
        return Err(err(
            "max_data_size_mb",
            format!("max_data_size_mb must be positive, got {}", cfg.max_data_size_mb),
        ));
    }
    if cfg.max_queue_items <= 0 {
        return Err(err(
            "max_queue_items",
            format!("max_queue_items must be positive, got {}", cfg.max_queue_items),
        ));
    }
    for (name, mode, list) in [
        ("smtp_address", "SMTP", &cfg.smtp_address),
        ("submission_address", "submission", &cfg.submission_address),
        (
            "submission_over_tls_address",
            "submission+TLS",
            &cfg.submission_over_tls_address,
        ),
    ] {
        for a in list {
            if a.is_empty() {
                // chasquid's wording: an empty address is a mistake, not
                // a way to turn the listener off.
                return Err(err(
                    name,
                    format!(
                        "Invalid empty listening address for {mode}: to disable {mode}, remove {name} from the config"
                    ),
                ));
            }
            check_listen_address(a).map_err(|m| err(name, format!("{name}: {m}")))?;
        }
    }
    parse_go_duration(&cfg.give_up_send_after)
        .map_err(|m| err("give_up_send_after", format!("give_up_send_after: {m}")))?;
    match parse_go_duration(&cfg.min_retry_delay) {
        Ok(d) if d >= Duration::from_secs(1) => {}
        Ok(_) => {
            return Err(err(
                "min_retry_delay",
                "min_retry_delay must be at least 1s".to_string(),
            ));
        }
        Err(m) => return Err(err("min_retry_delay", format!("min_retry_delay: {m}"))),
    }
    for (name, v) in [
        ("outgoing_smtp_port", cfg.outgoing_smtp_port),
        ("max_connections", cfg.max_connections),
        ("max_connections_per_ip", cfg.max_connections_per_ip),
        ("command_timeout_secs", cfg.command_timeout_secs),
        ("connection_timeout_secs", cfg.connection_timeout_secs),
        ("max_received_headers", cfg.max_received_headers),
    ] {
        if v <= 0 {
            return Err(err(name, format!("{name} must be positive, got {v}")));
        }
    }
    if !cfg.lmtp_address.is_empty() && !lmtp_address_ok(&cfg.lmtp_address) {
        return Err(err(
            "lmtp_address",
            format!(
                "lmtp_address {:?}: expected \"unix:/path/to/socket\" or \"host:port\"",
                cfg.lmtp_address
            ),
        ));
    }
    if !(1..=65535).contains(&cfg.mta_sts_port) {
        return Err(err(
            "mta_sts_port",
            format!("mta_sts_port out of range: {}", cfg.mta_sts_port),
        ));
    }
    if !(0..=4096).contains(&cfg.queue_journal_size_mb) {
        return Err(err(
            "queue_journal_size_mb",
            format!(
                "queue_journal_size_mb must be between 1 and 4096 (or 0: automatic), got {}",
                cfg.queue_journal_size_mb
            ),
        ));
    }
    if !(0..=19).contains(&cfg.delivery_nice) {
        return Err(err(
            "delivery_nice",
            format!("delivery_nice must be between 0 and 19, got {}", cfg.delivery_nice),
        ));
    }
    if cfg.outgoing_smtp_port > 65535 {
        return Err(err(
            "outgoing_smtp_port",
            format!("outgoing_smtp_port out of range: {}", cfg.outgoing_smtp_port),
        ));
    }
    Ok(())
}

/// Whether an `lmtp_address` value is "unix:PATH" or "host:port".
fn lmtp_address_ok(s: &str) -> bool {
    if let Some(path) = s.strip_prefix("unix:") {
        return !path.is_empty();
    }
    matches!(s.rsplit_once(':'), Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Name of the control socket inside the run-time directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// `path` taken relative to `base` unless it is absolute (or empty).
fn relative_to(base: &Path, path: &str) -> String {
    if path.is_empty() || Path::new(path).is_absolute() {
        return path.to_string();
    }
    base.join(path).to_string_lossy().into_owned()
}

impl Config {
    /// Takes the relative paths of the configuration relative to
    /// `config_dir`, as chasquid does (it changes into its configuration
    /// directory after loading it, so `data_dir: "../.data"` is next to
    /// the configuration directory, whatever directory it was started
    /// from): `data_dir`, `mail_log_path` (when it names a file),
    /// `run_dir`, the Dovecot socket paths, `tls_extra_ca_file`,
    /// `relay_auth_file`, the path of a `unix:` `lmtp_address`, and
    /// `mail_delivery_agent_bin` when it contains a `/` (a bare name is
    /// looked up in `PATH`, as chasquid's exec does).
    pub fn resolve_paths(&mut self, config_dir: &Path) {
        for p in [
            &mut self.data_dir,
            &mut self.run_dir,
            &mut self.dovecot_userdb_path,
            &mut self.dovecot_client_path,
            &mut self.tls_extra_ca_file,
            &mut self.relay_auth_file,
        ] {
            *p = relative_to(config_dir, p);
        }
        if !matches!(self.mail_log_path.as_str(), "<syslog>" | "<stdout>" | "<stderr>") {
            self.mail_log_path = relative_to(config_dir, &self.mail_log_path);
        }
        if let Some(path) = self.lmtp_address.strip_prefix("unix:") {
            self.lmtp_address = format!("unix:{}", relative_to(config_dir, path));
        }
        if self.mail_delivery_agent_bin.contains('/') {
            self.mail_delivery_agent_bin = relative_to(config_dir, &self.mail_delivery_agent_bin);
        }
    }

    /// The run-time directory when `run_dir` is not set:
    /// `$RUNTIME_DIRECTORY` when systemd gives one (its first entry), else
    /// `/run/tambo` for root, else `data_dir/run`: a normal user can write
    /// there, and two servers with their own data directories never share
    /// it (as `$XDG_RUNTIME_DIR/tambo` would).
    pub fn default_run_dir(&self, root: bool, runtime_directory: Option<&str>) -> PathBuf {
        if let Some(dir) = runtime_directory
            .and_then(|d| d.split(':').next())
            .filter(|d| !d.is_empty())
        {
            return PathBuf::from(dir);
        }
        if root {
            PathBuf::from("/run/tambo")
        } else {
            Path::new(&self.data_dir).join("run")
        }
    }

    /// Where a running server's control socket may be, for the tools:
    /// `run_dir/control.sock` when `run_dir` is set; otherwise the places
    /// [`default_run_dir`](Self::default_run_dir) picks for root and for
    /// a normal user (the tool may run as another user than the server).
    /// Paths are as in the configuration: call
    /// [`resolve_paths`](Self::resolve_paths) first.
    pub fn control_socket_candidates(&self) -> Vec<PathBuf> {
        if !self.run_dir.is_empty() {
            return vec![Path::new(&self.run_dir).join(CONTROL_SOCKET)];
        }
        let runtime = std::env::var("RUNTIME_DIRECTORY").ok();
        let mut out = Vec::new();
        for root in [true, false] {
            let p = self.default_run_dir(root, runtime.as_deref()).join(CONTROL_SOCKET);
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Where the control socket of the server that runs this
    /// configuration, read from `config_dir`, may be (relative paths are
    /// taken from there): [`control_socket_candidates`](Self::control_socket_candidates),
    /// to be tried in order with [`crate::unixsock::connect_first`]. A
    /// socket file that exists proves nothing (a stale `/run/tambo` of
    /// an earlier root server, say): only a connection does.
    pub fn control_sockets(&self, config_dir: &Path) -> Vec<PathBuf> {
        let mut c = self.clone();
        c.resolve_paths(config_dir);
        c.control_socket_candidates()
    }

    /// The maximum message size in bytes.
    pub fn max_data_size_bytes(&self) -> u64 {
        (self.max_data_size_mb.max(0) as u64).saturating_mul(1024 * 1024)
    }

    /// `give_up_send_after` as a Duration (20h if it does not parse; it is
    /// validated on load).
    pub fn give_up_send_after_duration(&self) -> Duration {
        parse_go_duration(&self.give_up_send_after).unwrap_or(Duration::from_secs(20 * 3600))
    }

    /// `min_retry_delay` as a Duration (1m if it does not parse; it is
    /// validated on load).
    pub fn min_retry_delay_duration(&self) -> Duration {
        parse_go_duration(&self.min_retry_delay).unwrap_or(Duration::from_secs(60))
    }
}

/// Like [`load_config`], but a configuration directory without
/// `chasquid.conf` gives the defaults: for tools such as `tambo user-add`
/// that only need a few optional fields and work on a bare directory, as
/// chasquid-util does.
pub fn load_config_or_defaults(config_dir: &Path) -> Result<Config, ConfigError> {
    match load_config(config_dir, None) {
        Err(ConfigError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        other => other,
    }
}

/// Parses the text of a `chasquid.conf` (named `file` in errors) on top of
/// the defaults, and validates the result.
pub fn parse_config(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let name = file.display().to_string();
    let mut cfg = Config::default();
    let mut origins = Origins::new();
    parse_into(&mut cfg, text, &name, &mut origins)?;
    validate(&cfg, &origins, &name)?;
    Ok(cfg)
}

/// Loads `config_dir/chasquid.conf` (which must exist, as for chasquid),
/// applies `overrides` (text-format fields; a list given there replaces
/// the list), and validates the result. Paths are left as written: see
/// [`Config::resolve_paths`].
pub fn load_config(config_dir: &Path, overrides: Option<&str>) -> Result<Config, ConfigError> {
    let layers: Vec<(&str, &str)> = overrides.map(|o| (OVERRIDES_NAME, o)).into_iter().collect();
    load_config_layers(config_dir, &layers)
}

/// Like [`load_config`] with several layers of overrides, applied in
/// order, each `(name in errors, text-format fields)`.
pub fn load_config_layers(config_dir: &Path, layers: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let path = config_dir.join("chasquid.conf");
    let name = path.display().to_string();
    let mut cfg = Config::default();
    let mut origins = Origins::new();
    let bytes = std::fs::read(&path).map_err(|e| ConfigError::io(&path, e))?;
    let text = decode_utf8(bytes, &name)?;
    parse_into(&mut cfg, &text, &name, &mut origins)?;
    for (layer, text) in layers {
        parse_into(&mut cfg, text, layer, &mut origins)?;
    }
    validate(&cfg, &origins, &name)?;
    Ok(cfg)
}

/// Checks that `certs/` and `domains/` exist, are directories and are not
/// empty, and returns the normalised, sorted local domain names (the
/// sub-directories of `domains/`).
pub fn check_layout(config_dir: &Path) -> Result<Vec<String>, ConfigError> {
    Ok(domain_dirs(config_dir)?.into_iter().map(|(d, _)| d).collect())
}

/// Like [`check_layout`], with the name of each domain's directory as it
/// is on disk: `domains/ñoñOS/` is the domain `ñoños`, as in chasquid,
/// which normalises the name and reads the files of the directory itself.
/// Two directories of one domain are an error.
pub fn domain_dirs(config_dir: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let invalid = |p: &Path, msg: &str| ConfigError::Invalid {
        file: p.display().to_string(),
        msg: msg.to_string(),
    };
    let mut domains = Vec::new();
    for sub in ["certs", "domains"] {
        let dir = config_dir.join(sub);
        let md = match std::fs::metadata(&dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(&dir, "missing"));
            }
            Err(e) => return Err(ConfigError::io(&dir, e)),
        };
        if !md.is_dir() {
            return Err(invalid(&dir, "not a directory"));
        }
        let rd = std::fs::read_dir(&dir).map_err(|e| ConfigError::io(&dir, e))?;
        let mut any = false;
        for entry in rd {
            let entry = entry.map_err(|e| ConfigError::io(&dir, e))?;
            any = true;
            if sub != "domains" {
                continue;
            }
            let p = entry.path();
            // Follow symlinks: a symlinked domain directory is fine.
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => {}
                _ => continue,
            }
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(invalid(&p, "domain directory name is not valid UTF-8"));
            };
            let d =
                crate::names::normalize_domain(&name).map_err(|e| invalid(&p, &format!("invalid domain name: {e}")))?;
            domains.push((d, name));
        }
        if !any {
            return Err(invalid(&dir, "empty"));
        }
    }
    domains.sort();
    if let Some(w) = domains.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(invalid(
            &config_dir.join("domains"),
            &format!(
                "{:?} and {:?} are the same domain {:?}: keep one directory",
                w[0].1, w[1].1, w[0].0
            ),
        ));
    }
    Ok(domains)
}

/// The directory of local domain `domain` (normalised): the one
/// [`domain_dirs`] finds for it, else `domains/<domain>` (which may not
/// exist yet).
pub fn domain_dir(config_dir: &Path, domain: &str) -> PathBuf {
    let base = config_dir.join("domains");
    if base.join(domain).is_dir() {
        return base.join(domain);
    }
    let found = std::fs::read_dir(&base).ok().and_then(|rd| {
        rd.flatten().find_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            (crate::names::normalize_domain(&name).ok()? == domain).then_some(name)
        })
    });
    base.join(found.unwrap_or_else(|| domain.to_string()))
}

/// Prints a configuration as text format that [`parse_config`] reads back.
/// (An empty `mail_delivery_agent_args` cannot be represented and reads
/// back as the default.)
pub fn print_config(cfg: &Config) -> String {
    let mut out = String::new();
    cfg.print_fields(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("/etc/tambo/chasquid.conf")
    }

    fn err(text: &str) -> String {
        parse_config(text, &p()).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse_config("", &p()).unwrap();
        assert_eq!(c, Config::default());
        assert!(!c.hostname.is_empty());
        assert_eq!(c.max_data_size_mb, 50);
        assert_eq!(c.mail_delivery_agent_args, vec!["-f", "%from%", "-d", "%to_user%"]);
        assert_eq!(c.mail_delivery_agent_bin, "maildrop");
        assert_eq!(c.data_dir, "/var/lib/chasquid");
        assert_eq!(c.run_dir, "");
        assert_eq!(c.mail_log_path, "<syslog>");
        assert_eq!(c.max_queue_items, 200);
        assert_eq!(c.give_up_send_after, "20h");
        assert_eq!(c.admin_group, "tambo");
        assert_eq!(c.outgoing_smtp_port, 25);
        assert!(c.smtp_address.is_empty());
        assert_eq!(c.max_data_size_bytes(), 50 * 1024 * 1024);
        assert_eq!(c.give_up_send_after_duration(), Duration::from_secs(72000));
        assert!(Config::FIELD_NAMES.contains(&"connection_timeout_secs"));
    }

    #[test]
    fn full_file() {
        let text = r#"
# chasquid config
hostname: "mx.example.com"
max_data_size_mb: 10
smtp_address: ":25"
smtp_address: "systemd"
submission_address: "[::1]:587"
submission_over_tls_address: "127.0.0.1:465"
monitoring_address: "localhost:1099"
mail_delivery_agent_bin: "procmail"
mail_delivery_agent_args: "-d"
mail_delivery_agent_args: "%to_user%"
data_dir: "/tmp/x"
suffix_separators: "+-"
drop_characters: ""
mail_log_path: "<stdout>"
dovecot_auth: true
dovecot_userdb_path: "/run/dovecot/auth-userdb"
dovecot_client_path: '/run/dovecot/auth-client'
haproxy_incoming: false
max_queue_items: 10, give_up_send_after: "1h30m";
lmtp_address: "unix:/run/dovecot/lmtp"
dns_servers: ["1.1.1.1", "8.8.8.8:53"]
reject_dmarc_failures: True
"#;
        let c = parse_config(text, &p()).unwrap();
        assert_eq!(c.hostname, "mx.example.com");
        assert_eq!(c.max_data_size_mb, 10);
        assert_eq!(c.smtp_address, vec![":25", "systemd"]);
        assert_eq!(c.submission_address, vec!["[::1]:587"]);
        assert_eq!(c.mail_delivery_agent_args, vec!["-d", "%to_user%"]);
        assert_eq!(c.drop_characters, "");
        assert!(c.dovecot_auth);
        assert_eq!(c.dovecot_client_path, "/run/dovecot/auth-client");
        assert_eq!(c.max_queue_items, 10);
        assert_eq!(c.give_up_send_after, "1h30m");
        assert_eq!(c.dns_servers, vec!["1.1.1.1", "8.8.8.8:53"]);
        assert!(c.reject_dmarc_failures);

        // Round trip through print_config.
        let printed = print_config(&c);
        let back = parse_config(&printed, &p()).unwrap();
        assert_eq!(back, c);
        let d = Config::default();
        assert_eq!(parse_config(&print_config(&d), &p()).unwrap(), d);
    }

    #[test]
    fn roundtrip_odd_strings() {
        let c = Config {
            mail_log_path: "/var/log/ma\"il\\ñ\n.log".into(),
            ..Config::default()
        };
        assert_eq!(parse_config(&print_config(&c), &p()).unwrap(), c);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = err("hostname: \"a\"\n\nbogus_field: 3\n");
        assert!(e.contains("chasquid.conf:3:"), "{e}");
        assert!(e.contains("bogus_field"), "{e}");
        assert!(e.starts_with("/etc/tambo/chasquid.conf:3: "), "{e}");

        let e = err("\nmax_data_size_mb: \"ten\"");
        assert!(
            e.contains("chasquid.conf:2:") && e.contains("expected an integer"),
            "{e}"
        );
        let e = err("max_data_size_mb: 1.5");
        assert!(e.contains("expected an integer, got a float"), "{e}");
        let e = err("hostname: { a: 1 }");
        assert!(e.contains("got a message"), "{e}");
        let e = err("hostname: foo");
        assert!(e.contains("expected a string, got an identifier"), "{e}");
        let e = err("dovecot_auth: \"yes\"");
        assert!(e.contains("expected true or false"), "{e}");
        let e = err("dovecot_auth: 2");
        assert!(e.contains("expected true or false"), "{e}");
        let e = err("max_queue_items: 99999999999999999999999");
        assert!(e.contains("out of range"), "{e}");
        let e = err("hostname: \"a\"\nhostname: \"b\"\n");
        assert!(
            e.contains(":2:") && e.contains("more than once (first on line 1)"),
            "{e}"
        );
        let e = err("hostname: \"a\\377\"");
        assert!(e.contains(":1:") && e.contains("invalid UTF-8"), "{e}");
        let e = err("a\n: {");
        assert!(e.contains("chasquid.conf:2: column"), "{e}");
    }

    #[test]
    fn validation() {
        let e = err("\n\nsmtp_address: \"1.2.3.4\"");
        assert!(e.contains(":3:") && e.contains("1.2.3.4"), "{e}");
        for bad in [
            "x:99999",
            "x:-1",
            "x:",
            "[::1",
            "[::1]",
            "[zz]:25",
            "a b:25",
            "1.2.3.4:2a",
            ":+25",
            "host:25:26",
        ] {
            assert!(check_listen_address(bad).is_err(), "{bad}");
        }
        for good in [
            "systemd",
            ":25",
            "0.0.0.0:25",
            "[::]:587",
            "[2001:db8::1]:465",
            "localhost:0",
            "mx.example.com:65535",
        ] {
            assert!(check_listen_address(good).is_ok(), "{good}");
        }
        let e = err("submission_over_tls_address: \"x\"");
        assert!(e.contains("submission_over_tls_address"), "{e}");
        assert!(err("max_data_size_mb: -3").contains(":1:"));
        assert!(err("max_data_size_mb: -3").contains("must be positive"));
        assert!(err("max_queue_items: -1").contains("max_queue_items must be positive"));
        assert!(err("give_up_send_after: \"20x\"").contains("give_up_send_after"));
        assert!(err("give_up_send_after: \"-1h\"").contains("negative"));
        assert!(err("hostname: \"a b\"").contains("spaces"));
        assert!(err("outgoing_smtp_port: 70000").contains("out of range"));
        assert!(err("mta_sts_port: 70000").contains("mta_sts_port out of range"));
        assert!(err("delivery_nice: 20").contains("between 0 and 19"));
        assert!(err("queue_journal_size_mb: -1").contains("between 1 and 4096"));
        assert!(err("queue_journal_size_mb: 5000").contains("between 1 and 4096"));
        assert!(err("delivery_nice: -1").contains("between 0 and 19"));
        assert!(err("max_connections: -5").contains("max_connections must be positive"));
        let e = err("\nlmtp_address: \"dovecot\"");
        assert!(e.contains(":2:") && e.contains("lmtp_address"), "{e}");
        assert!(err("lmtp_address: \"unix:\"").contains("lmtp_address"));
        assert!(parse_config("lmtp_address: \"unix:relative\"", &p()).is_ok());
        let e = err("\nsubmission_address: \":587\"\nsubmission_address: \"\"");
        assert!(
            e.contains(":3:") && e.contains("Invalid empty listening address for submission"),
            "{e}"
        );
    }

    /// chasquid's `override()`: a zero value means "not set".
    #[test]
    fn zero_values_mean_default() {
        let c = parse_config(
            "hostname: \"\"\nmax_data_size_mb: 0\nmax_queue_items: 0\nmail_delivery_agent_bin: \"\"\n\
             data_dir: \"\"\nmail_log_path: \"\"\ngive_up_send_after: \"\"\nmonitoring_address: \"\"\n\
             dovecot_auth: false\nhaproxy_incoming: 0\nmax_connections: 0\nmta_sts_port: 0\nrun_dir: \"\"\n",
            &p(),
        )
        .unwrap();
        let d = Config::default();
        assert_eq!(c, d);
        assert!(!c.hostname.is_empty());
        // These zeros are values of their own.
        let c = parse_config("delivery_nice: 0\nsuffix_separators: \"\"\ndrop_characters: \"\"", &p()).unwrap();
        assert_eq!(c.delivery_nice, 0);
        assert_eq!(c.suffix_separators, "");
        assert_eq!(c.drop_characters, "");
        // A zero override leaves the file's value.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("chasquid.conf"),
            "hostname: \"a.example\"\nmax_queue_items: 9\n",
        )
        .unwrap();
        let c = load_config(dir.path(), Some("hostname: \"\" max_queue_items: 0")).unwrap();
        assert_eq!(c.hostname, "a.example");
        assert_eq!(c.max_queue_items, 9);
        // A zero of the wrong type is still an error, and so is a repeat.
        assert!(err("hostname: 0").contains("expected a string"));
        assert!(err("hostname: \"\"\nhostname: \"b\"").contains("more than once"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_dir() {
        let mut c = parse_config(
            "data_dir: \"../.data\"\nmail_log_path: \"../.logs/mail_log\"\n\
             mail_delivery_agent_bin: \"bin/mda\"\nlmtp_address: \"unix:lmtp.sock\"\n\
             dovecot_userdb_path: \"/run/dovecot/auth-userdb\"\n",
            &p(),
        )
        .unwrap();
        c.resolve_paths(Path::new("/srv/conf"));
        assert_eq!(c.data_dir, "/srv/conf/../.data");
        assert_eq!(c.mail_log_path, "/srv/conf/../.logs/mail_log");
        assert_eq!(c.mail_delivery_agent_bin, "/srv/conf/bin/mda");
        assert_eq!(c.lmtp_address, "unix:/srv/conf/lmtp.sock");
        assert_eq!(c.dovecot_userdb_path, "/run/dovecot/auth-userdb");
        assert_eq!(c.run_dir, "");
        let mut d = Config::default();
        d.resolve_paths(Path::new("/srv/conf"));
        assert_eq!(d.mail_log_path, "<syslog>");
        assert_eq!(d.mail_delivery_agent_bin, "maildrop");
        assert_eq!(d.data_dir, "/var/lib/chasquid");
    }

    #[test]
    fn run_dir_defaults() {
        let c = Config {
            data_dir: "/d".into(),
            ..Config::default()
        };
        assert_eq!(c.default_run_dir(true, None), PathBuf::from("/run/tambo"));
        assert_eq!(c.default_run_dir(false, None), PathBuf::from("/d/run"));
        assert_eq!(c.default_run_dir(false, Some("/run/x:/run/y")), PathBuf::from("/run/x"));
        assert_eq!(c.default_run_dir(false, Some("")), PathBuf::from("/d/run"));
        let set = Config {
            run_dir: "/r".into(),
            ..c.clone()
        };
        assert_eq!(set.control_socket_candidates(), vec![PathBuf::from("/r/control.sock")]);
        assert!(
            c.control_socket_candidates()
                .contains(&PathBuf::from("/d/run/control.sock"))
        );
    }

    #[test]
    fn durations() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("20h"), Duration::from_secs(72000));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("2us"), Duration::from_micros(2));
        assert_eq!(d("2µs"), Duration::from_micros(2));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("+5m"), Duration::from_secs(300));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("1.s"), Duration::from_secs(1));
        assert_eq!(d("1h2m3s4ms"), Duration::new(3723, 4_000_000));
        for bad in ["", "-1s", "1", "h", "1x", "1.2.3s", ".s", "1h-2m", "3000000h", "s1"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_go_duration("99999999999999999999999999999999999999999h").is_err());
    }

    #[test]
    fn load_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        // Missing file: an error naming it (as chasquid), except for the
        // tools that accept a bare directory.
        let e = load_config(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("chasquid.conf: ") && e.contains("No such file"), "{e}");
        assert_eq!(load_config_or_defaults(dir.path()).unwrap(), Config::default());

        std::fs::write(
            dir.path().join("chasquid.conf"),
            "hostname: \"a.example\"\nsmtp_address: \":25\"\nsmtp_address: \":2525\"\nmax_queue_items: 5\n",
        )
        .unwrap();
        let c = load_config(dir.path(), None).unwrap();
        assert_eq!(c.smtp_address, vec![":25", ":2525"]);

        let c = load_config(
            dir.path(),
            Some("smtp_address: \":10025\" max_queue_items: 7 hostname: \"b.example\""),
        )
        .unwrap();
        assert_eq!(c.smtp_address, vec![":10025"]);
        assert_eq!(c.max_queue_items, 7);
        assert_eq!(c.hostname, "b.example");

        let e = load_config(dir.path(), Some("\nnope: 1")).unwrap_err().to_string();
        assert_eq!(e, "--config_overrides:2: unknown field \"nope\"");
        let e = load_config(dir.path(), Some("max_queue_items: -1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--config_overrides:1: "), "{e}");

        // Invalid value in the file is reported against the file.
        std::fs::write(dir.path().join("chasquid.conf"), "\nmax_queue_items: -2\n").unwrap();
        let e = load_config(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("chasquid.conf:2:"), "{e}");
        // ... unless an override fixes it.
        assert!(load_config(dir.path(), Some("max_queue_items: 3")).is_ok());

        std::fs::write(dir.path().join("chasquid.conf"), b"# \xff\n").unwrap();
        let e = load_config(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("chasquid.conf:1: invalid UTF-8"), "{e}");

        // Unreadable: a directory where the file should be.
        std::fs::remove_file(dir.path().join("chasquid.conf")).unwrap();
        std::fs::create_dir(dir.path().join("chasquid.conf")).unwrap();
        let e = load_config(dir.path(), None).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }), "{e}");
        assert!(e.to_string().contains("chasquid.conf: "), "{e}");
        assert!(load_config_or_defaults(dir.path()).is_err());
    }

    #[test]
    fn layout() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.ends_with("certs: missing"), "{e}");
        std::fs::write(d.join("certs"), "").unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.ends_with("certs: not a directory"), "{e}");
        std::fs::remove_file(d.join("certs")).unwrap();
        std::fs::create_dir(d.join("certs")).unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.ends_with("certs: empty"), "{e}");
        std::fs::create_dir(d.join("certs/mx.example.com")).unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.ends_with("domains: missing"), "{e}");
        std::fs::create_dir(d.join("domains")).unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.ends_with("domains: empty"), "{e}");
        std::fs::create_dir(d.join("domains/Example.COM")).unwrap();
        std::fs::create_dir(d.join("domains/xn--and-6ma2c.com")).unwrap();
        std::fs::create_dir(d.join("domains/aaa.org")).unwrap();
        std::fs::write(d.join("domains/README"), "x").unwrap();
        assert_eq!(check_layout(d).unwrap(), vec!["aaa.org", "example.com", "ñandú.com"]);
        assert_eq!(domain_dirs(d).unwrap()[1], ("example.com".into(), "Example.COM".into()));
        assert_eq!(domain_dir(d, "example.com"), d.join("domains/Example.COM"));
        assert_eq!(domain_dir(d, "aaa.org"), d.join("domains/aaa.org"));
        assert_eq!(domain_dir(d, "new.org"), d.join("domains/new.org"));
        std::fs::create_dir(d.join("domains/EXAMPLE.com")).unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.contains("same domain \"example.com\""), "{e}");
        std::fs::remove_dir(d.join("domains/EXAMPLE.com")).unwrap();
        std::fs::create_dir(d.join("domains/bad_domain")).unwrap();
        let e = check_layout(d).unwrap_err().to_string();
        assert!(e.contains("bad_domain: invalid domain name"), "{e}");
    }

    #[test]
    fn serde_roundtrip() {
        let c = Config {
            smtp_address: vec![":25".into()],
            ..Config::default()
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&j).unwrap(), c);
        // Missing fields take their defaults.
        let partial: Config = serde_json::from_str(r#"{"max_queue_items": 9}"#).unwrap();
        assert_eq!(partial.max_queue_items, 9);
        assert_eq!(partial.data_dir, "/var/lib/chasquid");
    }
}
