//! print-config, and the two commands that talk to the running server
//! (aliases-resolve, domaininfo-remove): chasquid-util reaches chasquid
//! through its localrpc socket, tambo reaches tambod through the control
//! socket (`run_dir/control.sock`).

use std::path::PathBuf;

use tambo_common::config::{Config, load_config};
use tambo_common::{gofmt, textproto};
use tambo_ipc::proto::{AdminReply, AdminRequest};

use super::{CmdResult, Ctx, Fatal, fatal};
use crate::queue;

/// chasquid's own fields, in the order of its config.proto.
const CHASQUID_FIELDS: &[&str] = &[
    "hostname",
    "max_data_size_mb",
    "smtp_address",
    "submission_address",
    "submission_over_tls_address",
    "monitoring_address",
    "mail_delivery_agent_bin",
    "mail_delivery_agent_args",
    "data_dir",
    "suffix_separators",
    "drop_characters",
    "mail_log_path",
    "dovecot_auth",
    "dovecot_userdb_path",
    "dovecot_client_path",
    "haproxy_incoming",
    "max_queue_items",
    "give_up_send_after",
];

/// The configuration, or chasquid-util's message: like chasquid, a
/// missing `chasquid.conf` is an error here.
fn config(ctx: &Ctx) -> Result<Config, Fatal> {
    let path = ctx.config_path("chasquid.conf");
    if let Err(e) = std::fs::metadata(&path) {
        let shown = path.display().to_string();
        fatal!(
            "Error loading config: failed to read config at {}: {}",
            gofmt::quote(&shown),
            gofmt::path_error("open", &path, &e)
        );
    }
    load_config(&ctx.config_dir, None).map_err(|e| Fatal(format!("Error loading config: {e}")))
}

/// Where the control socket may be: `--socket` (tambo addition), else
/// the configuration's run-time directory candidates.
fn sockets(ctx: &Ctx) -> Result<Vec<PathBuf>, Fatal> {
    let explicit = ctx.args.get("--socket").filter(|s| !s.is_empty()).map(PathBuf::from);
    queue::socket_paths(&ctx.config_dir, explicit).map_err(|e| Fatal(format!("Error loading config: {e:#}")))
}

/// One resolved recipient as chasquid-util prints it: its type and text.
fn chasquid_recipient(done: &str, verbose: bool) -> (&'static str, String) {
    let (address, kind) = done.split_once('\t').unwrap_or((done, ""));
    let (rtype, text) = if let Some(cmd) = kind.strip_prefix("pipe: ") {
        ("(pipe)", cmd.to_string())
    } else if kind.starts_with("remote via ") {
        ("(forward)", address.to_string())
    } else {
        ("(email)", address.to_string())
    };
    if verbose && !kind.is_empty() {
        return (rtype, format!("{text}  [{kind}]"));
    }
    (rtype, text)
}

/// `aliases-resolve <address>`: `(email)  ADDR` / `(pipe)  CMD` /
/// `(forward)  ADDR` lines, sorted by type; `-v` adds tambo's route.
pub fn aliases_resolve(ctx: &Ctx) -> CmdResult {
    config(ctx)?;
    let sockets = sockets(ctx)?;
    let req = AdminRequest::ResolveAddress {
        address: ctx.args.pos(2).to_string(),
    };
    let replies = queue::request(&sockets, &req).map_err(|e| Fatal(format!("Error resolving: {e:#}")))?;
    let mut lines: Vec<(&str, String)> = replies
        .iter()
        .filter_map(|r| match r {
            AdminReply::Done(t) => Some(chasquid_recipient(t, ctx.verbose())),
            _ => None,
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(b.0));
    for (t, text) in lines {
        println!("{t}  {text}");
    }
    Ok(())
}

/// `domaininfo-remove <domain>`: silent on success; a domain with nothing
/// recorded is an error ("does not exist"), as in chasquid. Without a
/// running server (a tambo addition) the file itself is removed.
pub fn domaininfo_remove(ctx: &Ctx) -> CmdResult {
    let conf = config(ctx)?;
    let sockets = sockets(ctx)?;
    let fail = |e: String| Fatal(format!("Error removing domaininfo entry: {e}"));
    let domain = ctx.args.pos(2);
    match tambo_common::unixsock::connect_first(&sockets) {
        Ok((stream, socket)) => {
            let req = AdminRequest::DomainInfoRemove {
                domain: domain.to_string(),
            };
            let replies = queue::request_on(stream, &socket, &req).map_err(|e| fail(format!("{e:#}")))?;
            let removed = replies
                .iter()
                .any(|r| matches!(r, AdminReply::Done(t) if t.ends_with(": removed")));
            if !removed {
                return Err(fail("does not exist".into()));
            }
            Ok(())
        }
        Err((_, e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            let domain = tambo_common::names::normalize_domain(domain).map_err(|e| fail(format!("{domain}: {e}")))?;
            let mut conf = conf.clone();
            conf.resolve_paths(&ctx.config_dir);
            let dir = PathBuf::from(&conf.data_dir).join("domaininfo");
            match tambo_common::domaininfo::remove_record(&dir, &domain) {
                Ok(true) => Ok(()),
                Ok(false) => Err(fail("does not exist".into())),
                Err(e) => Err(fail(e.to_string())),
            }
        }
        Err(_) => {
            // Not allowed on the socket, or another problem: name it.
            let e = queue::connect(&sockets).err().map(|e| format!("{e:#}"));
            Err(fail(e.unwrap_or_else(|| "cannot connect".into())))
        }
    }
}

/// One chasquid field in text format, omitted when it has proto3's zero
/// value (chasquid's optional suffix_separators and drop_characters are
/// always set, so always printed).
fn chasquid_field(c: &Config, name: &str, out: &mut String) {
    let s = |out: &mut String, v: &str, always: bool| {
        if always || !v.is_empty() {
            out.push_str(&format!("{name}: {}\n", textproto::quote_bytes(v.as_bytes())));
        }
    };
    let list = |out: &mut String, v: &[String]| {
        for x in v {
            out.push_str(&format!("{name}: {}\n", textproto::quote_bytes(x.as_bytes())));
        }
    };
    // An empty listener list: the sockets systemd passes (tambo's units),
    // shown as chasquid's default says it.
    let listeners = |out: &mut String, v: &[String]| {
        if v.is_empty() {
            out.push_str(&format!("{name}: \"systemd\"\n"));
        }
        for x in v {
            out.push_str(&format!("{name}: {}\n", textproto::quote_bytes(x.as_bytes())));
        }
    };
    let n = |out: &mut String, v: i64| {
        if v != 0 {
            out.push_str(&format!("{name}: {v}\n"));
        }
    };
    let b = |out: &mut String, v: bool| {
        if v {
            out.push_str(&format!("{name}: true\n"));
        }
    };
    match name {
        "hostname" => s(out, &c.hostname, false),
        "max_data_size_mb" => n(out, c.max_data_size_mb),
        "smtp_address" => listeners(out, &c.smtp_address),
        "submission_address" => listeners(out, &c.submission_address),
        "submission_over_tls_address" => listeners(out, &c.submission_over_tls_address),
        "monitoring_address" => s(out, &c.monitoring_address, false),
        "mail_delivery_agent_bin" => s(out, &c.mail_delivery_agent_bin, false),
        "mail_delivery_agent_args" => list(out, &c.mail_delivery_agent_args),
        "data_dir" => s(out, &c.data_dir, false),
        "suffix_separators" => s(out, &c.suffix_separators, true),
        "drop_characters" => s(out, &c.drop_characters, true),
        "mail_log_path" => s(out, &c.mail_log_path, false),
        "dovecot_auth" => b(out, c.dovecot_auth),
        "dovecot_userdb_path" => s(out, &c.dovecot_userdb_path, false),
        "dovecot_client_path" => s(out, &c.dovecot_client_path, false),
        "haproxy_incoming" => b(out, c.haproxy_incoming),
        "max_queue_items" => n(out, c.max_queue_items),
        "give_up_send_after" => s(out, &c.give_up_send_after, false),
        _ => {}
    }
}

/// The configuration as chasquid-util prints it: chasquid's fields in
/// its order (zero values left out; an empty listener list as
/// `"systemd"`), then tambo's own fields, then an empty line.
pub fn format_config(c: &Config) -> String {
    let mut out = String::new();
    for f in CHASQUID_FIELDS {
        chasquid_field(c, f, &mut out);
    }
    for line in tambo_common::config::print_config(c).lines() {
        let name = line.split(':').next().unwrap_or("");
        if !CHASQUID_FIELDS.contains(&name) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

/// `print-config`.
pub fn print_config(ctx: &Ctx) -> CmdResult {
    let c = config(ctx)?;
    print!("{}", format_config(&c));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_in_chasquid_order() {
        let c = Config {
            hostname: "mx.test".into(),
            smtp_address: vec!["systemd".into()],
            drop_characters: String::new(),
            ..Config::default()
        };
        let out = format_config(&c);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hostname: \"mx.test\"");
        assert_eq!(lines[1], "max_data_size_mb: 50");
        assert_eq!(lines[2], "smtp_address: \"systemd\"");
        assert_eq!(lines[3], "submission_address: \"systemd\"");
        assert_eq!(lines[5], "mail_delivery_agent_bin: \"maildrop\"");
        assert!(out.contains("\nsuffix_separators: \"+\"\ndrop_characters: \"\"\nmail_log_path: \"<syslog>\"\n"));
        assert!(!out.contains("dovecot_auth"), "{out}");
        assert!(out.contains("\nrun_dir: \"\"\n"), "{out}");
        assert!(out.ends_with("\n\n"));
        assert_eq!(out.matches("hostname:").count(), 1);
    }

    #[test]
    fn recipients_as_chasquid_prints_them() {
        assert_eq!(
            chasquid_recipient("a@l\tlocal mailbox", false),
            ("(email)", "a@l".to_string())
        );
        assert_eq!(
            chasquid_recipient("c@r\tremote (MX)", false),
            ("(email)", "c@r".to_string())
        );
        assert_eq!(
            chasquid_recipient("s@l\tpipe: /bin/cat -u", false),
            ("(pipe)", "/bin/cat -u".to_string())
        );
        assert_eq!(
            chasquid_recipient("d@r\tremote via mx1/mx2", true),
            ("(forward)", "d@r  [remote via mx1/mx2]".to_string())
        );
    }
}
