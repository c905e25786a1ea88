//! dkim-keygen and dkim-dns: DKIM keys in chasquid's layout,
//! `domains/<domain>/dkim:<selector>.pem`, or at a path given.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tambo_common::dkimkey::{self, KeyAlgo};
use tambo_common::gofmt::{self, quote};

use super::args::Dialect;
use super::{CmdResult, Ctx, Fatal, fatal};

/// Today's date (UTC) as YYYYMMDD, the default selector.
pub fn today_selector() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = tambo_common::dates::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// A path cleaned lexically, like Go's `path.Clean`.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&l) if l != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            c => parts.push(c),
        }
    }
    let body = parts.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// The default key path: `DIR/domains/DOMAIN/dkim:SELECTOR.pem`; the
/// domain and selector must not leave that directory.
pub(super) fn key_path_for(ctx: &Ctx, domain: &str, selector: &str) -> Result<PathBuf, Fatal> {
    if domain == "." || domain == ".." || domain.contains(['/', '\0']) {
        fatal!("Error: invalid domain {}", quote(domain));
    }
    if !dkimkey::valid_selector(selector) {
        fatal!(
            "Error: invalid selector {} (letters, digits, '-', '_', dots)",
            quote(selector)
        );
    }
    Ok(PathBuf::from(clean(&format!(
        "{}/domains/{domain}/dkim:{selector}.pem",
        ctx.config_dir.display()
    ))))
}

/// The selector of the domain's first key file (by name), as chasquid-util
/// picks it.
pub(super) fn find_selector(ctx: &Ctx, domain: &str) -> Result<String, Fatal> {
    let pattern = clean(&format!("{}/domains/{domain}/dkim:*.pem", ctx.config_dir.display()));
    let dir = clean(&format!("{}/domains/{domain}", ctx.config_dir.display()));
    let mut selectors: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_prefix("dkim:")
                        .and_then(|n| n.strip_suffix(".pem"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    selectors.sort();
    match selectors.into_iter().next() {
        Some(s) => Ok(s),
        None => fatal!("No DKIM keys found in {}", quote(&pattern)),
    }
}

/// The record line: `SEL._domainkey.DOMAIN<TAB>TXT<TAB>"v=DKIM1; ..."`.
fn record_line(domain: &str, selector: &str, key: &dkimkey::ParsedKey) -> String {
    format!(
        "{selector}._domainkey.{domain}\tTXT\t\"{}\"",
        dkimkey::dns_record(key.algo, &key.public)
    )
}

/// Read a private key in PEM form (PKCS#8 RSA or Ed25519; PKCS#1 RSA too).
pub(super) fn load_private_key(path: &Path) -> Result<dkimkey::ParsedKey, Fatal> {
    let pem = std::fs::read(path).map_err(|e| {
        Fatal(format!(
            "Error reading private key from {}: {}",
            quote(&path.display().to_string()),
            gofmt::path_error("open", path, &e)
        ))
    })?;
    let text = String::from_utf8_lossy(&pem);
    let Some(label) = text
        .lines()
        .find_map(|l| l.strip_prefix("-----BEGIN ").and_then(|r| r.strip_suffix("-----")))
    else {
        fatal!("Error decoding PEM block");
    };
    if !label.eq_ignore_ascii_case("PRIVATE KEY") && !label.eq_ignore_ascii_case("RSA PRIVATE KEY") {
        fatal!("Unsupported key type: {label}");
    }
    dkimkey::parse_key(path, &pem).map_err(|e| Fatal(format!("Error parsing private key: {e}")))
}

/// The group authd runs as (the primary group of `authd_user`).
fn authd_group(ctx: &Ctx) -> Option<nix::unistd::Gid> {
    let user = tambo_common::config::load_config(&ctx.config_dir, None)
        .map(|c| c.authd_user)
        .unwrap_or_else(|_| "tambo-auth".to_string());
    nix::unistd::User::from_name(&user).ok().flatten().map(|u| u.gid)
}

/// Create the key file (never over an existing one), mode 0640 and, as
/// root, group of authd's user.
fn write_key(ctx: &Ctx, path: &Path, pem: &str) -> CmdResult {
    let shown = quote(&path.display().to_string());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            Fatal(format!(
                "Error creating key file {shown}: {}",
                gofmt::path_error("open", path, &e)
            ))
        })?;
    let written = (|| -> Result<(), String> {
        if nix::unistd::geteuid().is_root() {
            match authd_group(ctx) {
                Some(gid) => nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&file), None, Some(gid))
                    .map_err(|e| format!("chgrp: {}", e.desc()))?,
                None if ctx.dialect == Dialect::Tambo => eprintln!(
                    "tambo: warning: authd's user does not exist yet; {} stays readable by root only",
                    path.display()
                ),
                None => {}
            }
        }
        file.write_all(pem.as_bytes()).map_err(|e| gofmt::io_error(&e))?;
        file.sync_all().map_err(|e| gofmt::io_error(&e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        fatal!("Error PEM-encoding key: {e}");
    }
    Ok(())
}

/// `dkim-keygen <domain> [<selector> <private-key.pem>] [--algo=...]`.
pub fn keygen(ctx: &Ctx) -> CmdResult {
    let domain = ctx.args.pos(2);
    if domain.is_empty() {
        fatal!("Error: missing domain parameter");
    }
    let selector = ctx.args.opt_pos(3).map(str::to_string).unwrap_or_else(today_selector);
    let path = match ctx.args.opt_pos(4) {
        Some(p) => PathBuf::from(p),
        None => key_path_for(ctx, domain, &selector)?,
    };
    if !matches!(std::fs::symlink_metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound) {
        fatal!("Error: key already exists at {}", quote(&path.display().to_string()));
    }
    let algo = ctx.args.get("--algo").unwrap_or("");
    let (kind, bits) = match algo {
        "" | "rsa3072" => (KeyAlgo::Rsa, 3072),
        "rsa4096" => (KeyAlgo::Rsa, 4096),
        // tambo addition: tambo's former default.
        "rsa2048" => (KeyAlgo::Rsa, 2048),
        "ed25519" => (KeyAlgo::Ed25519, 0),
        other => fatal!("Error: unsupported algorithm {}", quote(other)),
    };
    let pem = dkimkey::generate(kind, bits).map_err(|e| Fatal(format!("Error generating key: {e}")))?;
    let key = dkimkey::parse_key(&path, pem.as_bytes()).map_err(|e| Fatal(format!("Error generating key: {e}")))?;
    write_key(ctx, &path, &pem)?;
    println!("Key written to {}\n", quote(&path.display().to_string()));
    println!("{}", record_line(domain, &selector, &key));
    Ok(())
}

/// `dkim-dns <domain> [<selector> <private-key.pem>]`.
pub fn dns(ctx: &Ctx) -> CmdResult {
    let domain = ctx.args.pos(2);
    if domain.is_empty() {
        fatal!("Error: missing domain parameter");
    }
    let selector = match ctx.args.opt_pos(3) {
        Some(s) => s.to_string(),
        None => find_selector(ctx, domain)?,
    };
    let path = match ctx.args.opt_pos(4) {
        Some(p) => PathBuf::from(p),
        None => key_path_for(ctx, domain, &selector)?,
    };
    let key = load_private_key(&path)?;
    println!("{}", record_line(domain, &selector, &key));
    Ok(())
}

/// `dkim-verify` (a testing aid of chasquid-util).
pub fn verify(_ctx: &Ctx) -> CmdResult {
    fatal!("Error: dkim-verify is not available in tambo (tambo verifies in its smtpd worker)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_like_go() {
        assert_eq!(clean(".config/domains/d/dkim:s.pem"), ".config/domains/d/dkim:s.pem");
        assert_eq!(clean("./a//b/../c"), "a/c");
        assert_eq!(
            clean("/etc/chasquid/domains//dkim:*.pem"),
            "/etc/chasquid/domains/dkim:*.pem"
        );
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean(""), ".");
        assert_eq!(today_selector().len(), 8);
    }
}
