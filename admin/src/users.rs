//! User management on `domains/<domain>/users`, in chasquid's format.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tambo_common::names::{normalize_domain, normalize_user, split_address};
use tambo_common::userdb::UserDb;

fn users_file(config_dir: &Path, address: &str) -> anyhow::Result<(String, PathBuf)> {
    let (user, domain) = split_address(address);
    if domain.is_empty() {
        bail!("{address}: give the address as user@domain");
    }
    let user = normalize_user(user).with_context(|| format!("{address}: bad user name"))?;
    let domain = normalize_domain(domain).with_context(|| format!("{address}: bad domain"))?;
    let dir = config_dir.join("domains").join(&domain);
    if !dir.is_dir() {
        bail!(
            "{}: no such domain directory (create it to make {domain} local)",
            dir.display()
        );
    }
    Ok((user, dir.join("users")))
}

/// Read one line from stdin; on a terminal, without echoing it.
fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    eprint!("{prompt}");
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning terminal echo off")?;
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    if read? == 0 {
        bail!("no password given (end of input)");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_password(given: Option<String>, confirm: bool) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let password = prompt_line("Password: ")?;
    if confirm && prompt_line("Confirm password: ")? != password {
        bail!("passwords do not match");
    }
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

/// When root creates a users file, give it to authd's group (mode 0640)
/// so authd can read it after dropping privileges.
fn give_to_authd(config_dir: &Path, path: &Path) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let authd_user = tambo_common::config::load_config(config_dir, None)
        .map(|c| c.authd_user)
        .unwrap_or_else(|_| "tambo-auth".to_string());
    match nix::unistd::User::from_name(&authd_user) {
        Ok(Some(u)) => nix::unistd::chown(path, None, Some(u.gid))
            .with_context(|| format!("{}: giving it to group of {authd_user}", path.display())),
        _ => {
            eprintln!(
                "tambo: warning: user {authd_user} does not exist; {} stays readable by root only",
                path.display()
            );
            Ok(())
        }
    }
}

/// `tambo user-add`.
pub fn add(config_dir: &Path, address: &str, password: Option<String>, receive_only: bool) -> anyhow::Result<()> {
    let (user, path) = users_file(config_dir, address)?;
    let created = !path.exists();
    let mut db = UserDb::load_if_exists(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if receive_only {
        db.add_denied(&user)?;
    } else {
        let password = read_password(password, true)?;
        db.add_user(&user, &password)?;
    }
    db.write_atomic(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if created {
        give_to_authd(config_dir, &path)?;
    }
    println!("added user {address}");
    Ok(())
}

/// `tambo user-remove`.
pub fn remove(config_dir: &Path, address: &str) -> anyhow::Result<()> {
    let (user, path) = users_file(config_dir, address)?;
    let mut db = UserDb::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !db.remove_user(&user) {
        bail!("{address}: no such user");
    }
    db.write_atomic(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("removed user {address}");
    Ok(())
}

/// `tambo authenticate`.
pub fn authenticate(config_dir: &Path, address: &str, password: Option<String>) -> anyhow::Result<()> {
    let (user, path) = users_file(config_dir, address)?;
    let db = UserDb::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let password = read_password(password, false)?;
    if db.authenticate(&user, &password) {
        println!("authentication succeeded");
        Ok(())
    } else {
        bail!("authentication failed")
    }
}

/// `tambo check-userdb`.
pub fn check(config_dir: &Path) -> anyhow::Result<()> {
    let domains = tambo_common::config::check_layout(config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    for d in domains {
        let path = config_dir.join("domains").join(&d).join("users");
        let db = UserDb::load_if_exists(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{}: {} user(s)", path.display(), db.len());
    }
    Ok(())
}
