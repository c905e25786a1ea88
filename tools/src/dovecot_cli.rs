//! `dovecot-auth-cli PREFIX exists USER` / `PREFIX auth USER PASSWORD`:
//! ask a Dovecot auth server, through `PREFIX-userdb` and
//! `PREFIX-client`, with authd's own client. Prints `yes`, or `no: WHY`
//! (`no: <nil>` when Dovecot simply said no); the exit code is always 0,
//! as in chasquid.

use tambo_authd::dovecot::{Dovecot, DovecotError};
use tambo_common::gofmt::{io_error, quote};

use crate::goflag;

const HELP: &str = "
Usage:
\tdovecot-auth-cli <path prefix> exists user@domain
\tdovecot-auth-cli <path prefix> auth user@domain password

Example:
\tdovecot-auth-cli /var/run/dovecot/auth-chasquid exists user@domain
\tdovecot-auth-cli /var/run/dovecot/auth-chasquid auth user@domain password

";

/// An error in the words of chasquid's client where they mean the same
/// thing (a socket that cannot be reached is Go's dial error).
fn describe(e: &DovecotError) -> String {
    match e {
        DovecotError::Io { path, err }
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            format!("dial unix {}: connect: {}", path.display(), io_error(err))
        }
        other => other.to_string(),
    }
}

/// What to print for one question.
async fn answer(prefix: &str, cmd: &str, user: &str, password: &str) -> String {
    let d = Dovecot::new(&format!("{prefix}-userdb"), &format!("{prefix}-client"));
    let result = match cmd {
        "exists" => d.exists(user).await,
        "auth" => d.authenticate(user, password).await,
        other => return format!("no: unknown subcommand {}", quote(other)),
    };
    match result {
        Ok(true) => "yes".to_string(),
        Ok(false) => "no: <nil>".to_string(),
        Err(e) => format!("no: {}", describe(&e)),
    }
}

/// `dovecot-auth-cli`; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let flags = match goflag::parse(&[], argv) {
        Ok(f) => f,
        Err(stop) => {
            if !stop.message.is_empty() {
                eprintln!("{}", stop.message);
            }
            eprintln!("Usage of dovecot-auth-cli:");
            return stop.code;
        }
    };
    if flags.args.len() < 3 {
        eprint!("{HELP}");
        println!("no: invalid arguments");
        return 0;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("no: {e}");
            return 0;
        }
    };
    let line = rt.block_on(answer(flags.arg(0), flags.arg(1), flags.arg(2), flags.arg(3)));
    println!("{line}");
    0
}
