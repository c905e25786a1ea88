//! user-add, user-remove, authenticate and check-userdb on
//! `domains/<domain>/users`, in chasquid's format (readable by chasquid).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use tambo_common::gofmt;
use tambo_common::names::{NameError, normalize_user};
use tambo_common::userdb::{UserDb, UserDbError};

use super::args::Dialect;
use super::{CmdResult, Ctx, Fatal, fatal};

/// A domain name that is safe as one path component.
fn safe_domain(domain: &str) -> bool {
    !domain.is_empty() && domain != "." && domain != ".." && !domain.contains(['/', '\0'])
}

/// A name error in the words of chasquid's normaliser (Go's precis).
fn precis(e: &NameError) -> String {
    match e {
        NameError::InvalidChar(_) => "precis: disallowed rune encountered".to_string(),
        NameError::Empty => "precis: transformation resulted in empty string".to_string(),
        other => other.to_string(),
    }
}

/// The normalised user, the users file and its database, from the
/// `user@domain` argument. With `create`, the domain directory is made
/// when missing.
fn user_db(ctx: &Ctx, create: bool) -> Result<(String, PathBuf, UserDb), Fatal> {
    let address = ctx.args.pos(2);
    // chasquid splits at the first '@'.
    let (user, domain) = address.split_once('@').unwrap_or((address, ""));
    if domain.is_empty() {
        fatal!("Domain missing, username should be of the form 'user@domain'");
    }
    if !safe_domain(domain) {
        fatal!("Error: invalid domain {}", gofmt::quote(domain));
    }
    let path = ctx.domain_path(domain, "users");
    if create {
        let dir = ctx.domain_path(domain, "");
        if !dir.exists() {
            println!("Creating database");
            std::fs::create_dir_all(&dir).map_err(|e| {
                Fatal(format!(
                    "Error creating database dir: {}",
                    gofmt::path_error("mkdir", &dir, &e)
                ))
            })?;
        }
    }
    let db = UserDb::load_if_exists(&path).map_err(|e| Fatal(format!("Error loading database: {e}")))?;
    let user = normalize_user(user).map_err(|e| Fatal(format!("Error normalizing user: {}", precis(&e))))?;
    Ok((user, path, db))
}

/// Read one line from stdin; on a terminal, without echoing it.
fn read_secret() -> Result<String, String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| e.desc().to_lowercase())?;
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    match read {
        Ok(0) => Err("EOF".to_string()),
        Ok(_) => Ok(line.trim_end_matches(['\r', '\n']).to_string()),
        Err(e) => Err(gofmt::io_error(&e)),
    }
}

/// `--password`, else asked twice on the terminal (or read from stdin).
fn password(ctx: &Ctx) -> Result<String, Fatal> {
    if let Some(p) = ctx.args.get("--password") {
        return Ok(p.to_string());
    }
    let ask = |prompt: &str| {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let r = read_secret();
        println!();
        r.map_err(|e| Fatal(format!("Error reading password: {e}")))
    };
    let first = ask("Password: ")?;
    let second = ask("Confirm password: ")?;
    if first != second {
        fatal!("Passwords don't match");
    }
    Ok(first)
}

/// When root creates a users file, give it to authd's group (mode 0640)
/// so that authd can read it after dropping privileges.
fn give_to_authd(ctx: &Ctx, path: &Path) -> CmdResult {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let authd_user = tambo_common::config::load_config(&ctx.config_dir, None)
        .map(|c| c.authd_user)
        .unwrap_or_else(|_| "tambo-auth".to_string());
    match nix::unistd::User::from_name(&authd_user) {
        Ok(Some(u)) => nix::unistd::chown(path, None, Some(u.gid)).map_err(|e| {
            Fatal(format!(
                "Error writing database: chgrp {}: {}",
                path.display(),
                e.desc()
            ))
        }),
        _ => {
            // chasquid-util's output stays as it is under that name.
            if ctx.dialect == Dialect::Tambo {
                eprintln!(
                    "tambo: warning: user {authd_user} does not exist; {} stays readable by root only",
                    path.display()
                );
            }
            Ok(())
        }
    }
}

fn write(ctx: &Ctx, db: &UserDb, path: &Path) -> CmdResult {
    let created = !path.exists();
    db.write_atomic(path)
        .map_err(|e| Fatal(format!("Error writing database: {e}")))?;
    if created {
        give_to_authd(ctx, path)?;
    }
    Ok(())
}

/// `user-add <user@domain> [--password=PW] [--receive_only]`.
pub fn add(ctx: &Ctx) -> CmdResult {
    let (user, path, mut db) = user_db(ctx, true)?;
    let receive_only = ctx.args.has("--receive_only");
    if receive_only && ctx.args.has("--password") {
        fatal!("Cannot specify both --receive_only and --password");
    }
    let added = if receive_only {
        db.add_denied(&user)
    } else {
        let pw = password(ctx)?;
        db.add_user(&user, &pw)
    };
    added.map_err(|e| match e {
        UserDbError::Name(n) => Fatal(format!("Error adding user: {}", precis(&n))),
        other => Fatal(format!("Error adding user: {other}")),
    })?;
    write(ctx, &db, &path)?;
    println!("Added user");
    Ok(())
}

/// `user-remove <user@domain>`.
pub fn remove(ctx: &Ctx) -> CmdResult {
    let (user, path, mut db) = user_db(ctx, false)?;
    if !db.remove_user(&user) {
        fatal!("Unknown user");
    }
    write(ctx, &db, &path)?;
    println!("Removed user");
    Ok(())
}

/// `authenticate <user@domain> [--password=PW]`.
pub fn authenticate(ctx: &Ctx) -> CmdResult {
    let (user, _, db) = user_db(ctx, false)?;
    let pw = password(ctx)?;
    if !db.authenticate(&user, &pw) {
        fatal!("Authentication failed");
    }
    println!("Authentication succeeded");
    Ok(())
}

/// `check-userdb <domain>`; under the `tambo` name without a domain,
/// every domain's users file.
pub fn check(ctx: &Ctx) -> CmdResult {
    let domain = ctx.args.pos(2);
    if domain.is_empty() && ctx.dialect == Dialect::Tambo {
        return check_all(ctx);
    }
    // Empty is chasquid's "does not exist" below; a path is refused.
    if !domain.is_empty() && !safe_domain(domain) {
        fatal!("Error: invalid domain {}", gofmt::quote(domain));
    }
    let path = ctx.domain_path(domain, "users");
    if !path.exists() {
        fatal!(
            "Error: file {} does not exist",
            gofmt::quote(&path.display().to_string())
        );
    }
    let db = UserDb::load(&path).map_err(|e| Fatal(format!("Error loading database: {e}")))?;
    println!("Database loaded ({} users)", db.len());
    Ok(())
}

/// Every local domain's users file (a tambo addition).
fn check_all(ctx: &Ctx) -> CmdResult {
    let domains = tambo_common::config::check_layout(&ctx.config_dir).map_err(|e| Fatal(format!("Error: {e}")))?;
    for d in domains {
        let path = tambo_common::config::domain_dir(&ctx.config_dir, &d).join("users");
        let db = UserDb::load_if_exists(&path).map_err(|e| Fatal(format!("Error loading database: {e}")))?;
        println!("{d}: Database loaded ({} users)", db.len());
    }
    Ok(())
}
