//! `tambo dkim-keygen` and `tambo dkim-dns`: DKIM keys in chasquid's
//! layout, `domains/<domain>/dkim:<selector>.pem`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tambo_common::dkimkey::{self, KeyAlgo};
use tambo_common::names::normalize_domain;

/// The key types `dkim-keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algo {
    /// RSA, 2048 bits (the most widely verified).
    Rsa2048,
    /// RSA, 3072 bits.
    Rsa3072,
    /// Ed25519 (RFC 8463; not every verifier knows it yet: pair it with
    /// an RSA key).
    Ed25519,
}

fn domain_dir(config_dir: &Path, domain: &str) -> anyhow::Result<(String, PathBuf)> {
    let domain = normalize_domain(domain).with_context(|| format!("{domain}: bad domain"))?;
    let dir = config_dir.join("domains").join(&domain);
    if !dir.is_dir() {
        bail!(
            "{}: no such domain directory ({domain} is not a local domain)",
            dir.display()
        );
    }
    Ok((domain, dir))
}

/// Today's date (UTC) as YYYYMMDD, the default selector.
pub fn today_selector() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = tambo_common::dates::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}")
}

/// The group authd runs as (the primary group of `authd_user`).
fn authd_group(config_dir: &Path) -> Option<nix::unistd::Gid> {
    let user = tambo_common::config::load_config(config_dir, None)
        .map(|c| c.authd_user)
        .unwrap_or_else(|_| "tambo-auth".to_string());
    nix::unistd::User::from_name(&user).ok().flatten().map(|u| u.gid)
}

/// Create a new key; never overwrites one.
pub fn keygen(config_dir: &Path, domain: &str, selector: Option<String>, algo: Algo) -> anyhow::Result<()> {
    let (domain, dir) = domain_dir(config_dir, domain)?;
    let selector = selector.unwrap_or_else(today_selector);
    if !dkimkey::valid_selector(&selector) {
        bail!("{selector}: invalid selector (letters, digits, '-', '_', dots)");
    }
    let path = dir.join(format!("dkim:{selector}.pem"));
    let (kind, bits) = match algo {
        Algo::Rsa2048 => (KeyAlgo::Rsa, 2048),
        Algo::Rsa3072 => (KeyAlgo::Rsa, 3072),
        Algo::Ed25519 => (KeyAlgo::Ed25519, 0),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow::anyhow!("{}: already exists (keys are never overwritten)", path.display())
            }
            _ => anyhow::anyhow!("{}: {e}", path.display()),
        })?;
    let written = (|| -> anyhow::Result<()> {
        if nix::unistd::geteuid().is_root() {
            match authd_group(config_dir) {
                Some(gid) => nix::unistd::fchown(std::os::fd::AsRawFd::as_raw_fd(&file), None, Some(gid))
                    .with_context(|| format!("{}: chgrp", path.display()))?,
                None => eprintln!(
                    "tambo: warning: authd's user does not exist yet; {} stays readable by root only \
                     (chgrp it to authd's group once the tambo users exist)",
                    path.display()
                ),
            }
        }
        let pem = dkimkey::generate(kind, bits).map_err(|e| anyhow::anyhow!("generating the key: {e}"))?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e.context(format!("{}", path.display())));
    }
    eprintln!("Created {}", path.display());
    eprintln!("Publish this TXT record, then reload tambo (SIGHUP):");
    print_record(&domain, &selector, &path)
}

fn print_record(domain: &str, selector: &str, path: &Path) -> anyhow::Result<()> {
    let key = dkimkey::load_key(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let record = dkimkey::dns_record(key.algo, &key.public);
    // Zone-file form: strings of at most 255 characters.
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    println!("{selector}._domainkey.{domain}. IN TXT {}", strings.join(" "));
    Ok(())
}

/// Print the TXT record of one key, or of every key of the domain.
pub fn dns(config_dir: &Path, domain: &str, selector: Option<String>) -> anyhow::Result<()> {
    let (domain, _) = domain_dir(config_dir, domain)?;
    let files = dkimkey::list_key_files(config_dir, &domain).map_err(|e| anyhow::anyhow!("{e}"))?;
    let chosen: Vec<_> = match &selector {
        Some(s) => files.into_iter().filter(|f| &f.selector == s).collect(),
        None => files,
    };
    if chosen.is_empty() {
        match selector {
            Some(s) => bail!("{}: no such key", dkimkey::key_path(config_dir, &domain, &s).display()),
            None => bail!("{domain} has no DKIM key (create one with `tambo dkim-keygen {domain}`)"),
        }
    }
    for f in chosen {
        print_record(&domain, &f.selector, &f.path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dates() {
        assert_eq!(today_selector().len(), 8);
    }

    #[test]
    fn keygen_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("domains/example.com")).unwrap();
        keygen(dir.path(), "Example.COM", Some("s1".into()), Algo::Ed25519).unwrap();
        let path = dir.path().join("domains/example.com/dkim:s1.pem");
        let before = std::fs::read(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let err = keygen(dir.path(), "example.com", Some("s1".into()), Algo::Rsa2048).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert!(keygen(dir.path(), "other.org", None, Algo::Ed25519).is_err());
        assert!(keygen(dir.path(), "example.com", Some("a/b".into()), Algo::Ed25519).is_err());
        dns(dir.path(), "example.com", None).unwrap();
        assert!(dns(dir.path(), "example.com", Some("nope".into())).is_err());
    }
}
