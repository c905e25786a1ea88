//! Start-up chores of the supervisor: loading and checking the
//! configuration, finding the workers' users, creating directories.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, User, chown};
use tambo_common::config::{self, Config};
use tambo_ipc::proto::WorkerKind;

use crate::spawn::Identity;

/// What the supervisor reads of the configuration directory.
pub struct Loaded {
    /// `chasquid.conf` with the command line's overrides, its relative
    /// paths taken relative to the configuration directory (as chasquid
    /// does).
    pub config: Config,
    /// Each local domain (normalised) and its directory's name on disk.
    pub domain_dirs: Vec<(String, String)>,
}

impl Loaded {
    /// The local domains, normalised and sorted.
    pub fn domains(&self) -> Vec<String> {
        self.domain_dirs.iter().map(|(d, _)| d.clone()).collect()
    }
}

/// Load `chasquid.conf` and check the directory layout. The supervisor
/// reads nothing else: the users databases, keys and credentials are
/// opened for authd and parsed there, the aliases by queued (each reports
/// a broken file, and tambod stops at start-up naming it).
pub fn load(config_dir: &Path, overrides: &[(&str, &str)]) -> Result<Loaded, String> {
    let mut config = config::load_config_layers(config_dir, overrides).map_err(|e| e.to_string())?;
    config.resolve_paths(config_dir);
    let domain_dirs = config::domain_dirs(config_dir).map_err(|e| e.to_string())?;
    if !config.relay_auth_file.is_empty() && config.relay_host.is_empty() {
        return Err("relay_auth_file is set but relay_host is not".into());
    }
    Ok(Loaded { config, domain_dirs })
}

/// Warn about secret files every user may read: only authd should.
pub fn warn_world_readable(files: &[tambo_ipc::secrets::SecretFile]) {
    use tambo_ipc::secrets::SecretKind;
    for f in files {
        let what = match f.kind {
            SecretKind::TlsKey { .. } => "TLS private key",
            SecretKind::DkimKey { .. } => "DKIM private key",
            SecretKind::RelayAuth => "relay credentials",
            SecretKind::Users { .. } => "users database",
            SecretKind::TlsChain { .. } => continue,
        };
        if let Ok(md) = std::fs::metadata(&f.path)
            && md.permissions().mode() & 0o004 != 0
        {
            tracing::warn!(
                "{}: {what} readable by every user; chmod o-r it (tambod opens it for authd, whatever its owner and group)",
                f.path
            );
        }
    }
}

/// The DNS servers the workers use ("ip:port"): the configured
/// `dns_servers` (a missing port is 53), else the `nameserver` lines of
/// /etc/resolv.conf (read here, since smtpd is chrooted), else
/// 127.0.0.1:53 as the C library would.
pub fn dns_servers(config: &Config) -> Result<Vec<String>, String> {
    if !config.dns_servers.is_empty() {
        return config
            .dns_servers
            .iter()
            .map(|s| parse_dns_server(s).ok_or_else(|| format!("dns_servers: {s:?} is not an IP address or IP:port")))
            .collect();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let found = resolv_conf_servers(&text);
    if found.is_empty() {
        tracing::warn!("no nameserver in /etc/resolv.conf: using 127.0.0.1:53 for SPF/DKIM/DMARC");
        return Ok(vec!["127.0.0.1:53".into()]);
    }
    Ok(found)
}

fn parse_dns_server(s: &str) -> Option<String> {
    let s = s.trim();
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.to_string());
    }
    let ip: std::net::IpAddr = s.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(std::net::SocketAddr::new(ip, 53).to_string())
}

/// The `nameserver` addresses of a resolv.conf (link-local IPv6 with a
/// scope cannot be used and is skipped).
pub fn resolv_conf_servers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(parse_dns_server)
        .collect()
}

/// Fields that need a restart to change: a reload keeps the old values.
pub fn keep_fixed_fields(old: &Config, mut new: Config) -> Config {
    new.smtp_address = old.smtp_address.clone();
    new.submission_address = old.submission_address.clone();
    new.submission_over_tls_address = old.submission_over_tls_address.clone();
    new.data_dir = old.data_dir.clone();
    new.run_dir = old.run_dir.clone();
    new.smtpd_user = old.smtpd_user.clone();
    new.authd_user = old.authd_user.clone();
    new.queued_user = old.queued_user.clone();
    new.deliverd_user = old.deliverd_user.clone();
    new.hookd_user = old.hookd_user.clone();
    new
}

fn user_field(config: &Config, kind: WorkerKind) -> &str {
    match kind {
        WorkerKind::Smtpd => &config.smtpd_user,
        WorkerKind::Authd => &config.authd_user,
        WorkerKind::Queued => &config.queued_user,
        WorkerKind::Deliverd => &config.deliverd_user,
        WorkerKind::Hookd => &config.hookd_user,
    }
}

/// Look up each worker's system user; a missing one is an error that says
/// how to create it.
pub fn resolve_identities(config: &Config) -> Result<Vec<(WorkerKind, Identity)>, String> {
    let mut out = Vec::new();
    for kind in WorkerKind::ALL {
        let name = user_field(config, kind);
        let user = User::from_name(name)
            .map_err(|e| format!("looking up user {name}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "user {name} (for {}) does not exist; create the tambo users with \
                     `packaging/create-users.sh`, or: useradd --system --user-group --no-create-home \
                     --home-dir /nonexistent --shell /usr/sbin/nologin {name}",
                    kind.name()
                )
            })?;
        if user.uid.is_root() || user.gid.as_raw() == 0 {
            return Err(format!("user {name} has uid or gid 0: workers never run as root"));
        }
        out.push((
            kind,
            Identity {
                user: name.to_string(),
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            },
        ));
    }
    Ok(out)
}

/// Directories the supervisor prepared.
pub struct Dirs {
    /// smtpd's empty chroot.
    pub smtpd_chroot: PathBuf,
}

/// Create `path` (and its parents) with `mode` unless it is already a
/// directory.
fn ensure_dir(path: &Path, mode: u32) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(format!("{}: not a directory", path.display())),
        Err(_) => {}
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| format!("{}: cannot create: {e}", path.display()))
}

/// [`ensure_dir`], then give it exactly `mode` (a directory only one
/// worker may use).
fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    ensure_dir(path, mode)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: chmod: {e}", path.display()))
}

fn owned_by(path: &Path, id: Option<&Identity>) -> Result<(), String> {
    if let Some(id) = id {
        chown(path, Some(Uid::from_raw(id.uid)), Some(Gid::from_raw(id.gid)))
            .map_err(|e| format!("{}: chown to {}: {e}", path.display(), id.user))?;
    }
    Ok(())
}

/// Create `data_dir` (queue, domaininfo and srs owned by queued's user;
/// sts-cache owned by deliverd's user, the only process that fetches and
/// caches MTA-STS policies, and deliverd, its agent log) and `run_dir`
/// with smtpd's empty chroot.
pub fn prepare_dirs(config: &Config, ids: &[(WorkerKind, Identity)]) -> Result<Dirs, String> {
    let id_of = |k: WorkerKind| ids.iter().find(|(kind, _)| *kind == k).map(|(_, id)| id);
    let data = PathBuf::from(&config.data_dir);
    // An existing data directory (chasquid's, say) keeps its mode.
    ensure_dir(&data, 0o755)?;
    for (sub, owner) in [
        ("queue", WorkerKind::Queued),
        ("domaininfo", WorkerKind::Queued),
        ("srs", WorkerKind::Queued),
        ("sts-cache", WorkerKind::Deliverd),
        ("deliverd", WorkerKind::Deliverd),
    ] {
        let p = data.join(sub);
        mkdir(&p, 0o700)?;
        owned_by(&p, id_of(owner))?;
        hand_over_chasquid_files(&p, sub, id_of(owner))?;
    }
    let run = PathBuf::from(&config.run_dir);
    ensure_dir(&run, 0o755)?;
    let empty = run.join("smtpd-root");
    mkdir(&empty, 0o555)?;
    if std::fs::read_dir(&empty)
        .map_err(|e| format!("{}: {e}", empty.display()))?
        .next()
        .is_some()
    {
        return Err(format!("{}: smtpd's chroot must be empty", empty.display()));
    }
    Ok(Dirs { smtpd_chroot: empty })
}

/// A data directory that chasquid used holds its files, owned by its user
/// (`chasquid`): its queue items (`queue/m:*`), its security levels
/// (`domaininfo/s:*`) and its MTA-STS cache (`sts-cache/pol:*`). Give them
/// to the worker that now owns the directory, so queued can import the
/// queue and keep the levels, and deliverd the cache. Only regular files
/// are touched, never through a symbolic link.
fn hand_over_chasquid_files(dir: &Path, sub: &str, id: Option<&Identity>) -> Result<(), String> {
    let Some(id) = id else {
        return Ok(());
    };
    let prefix = match sub {
        "queue" => "m:",
        "domaininfo" => "s:",
        "sts-cache" => "pol:",
        _ => return Ok(()),
    };
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in rd.flatten() {
        let name = entry.file_name();
        let is_chasquids = name.to_str().is_some_and(|n| n.starts_with(prefix));
        let path = entry.path();
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file());
        if is_chasquids && regular {
            std::os::unix::fs::lchown(&path, Some(id.uid), Some(id.gid))
                .map_err(|e| format!("{}: chown to {}: {e}", path.display(), id.user))?;
        }
    }
    Ok(())
}

/// Point stderr (ours and the workers') at a log file, appending.
pub fn redirect_stderr(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // The first time, keep the original stderr: a mail log of `<stderr>`
    // goes there, not into the log file (as in chasquid, where --logfile
    // moves only its own log).
    crate::maillog::keep_original_stderr();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: cannot open log file: {e}", path.display()))?;
    // SAFETY: dup2 onto fd 2 with a valid fd.
    if unsafe { libc::dup2(f.as_raw_fd(), 2) } < 0 {
        return Err(format!("{}: dup2: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let t = "# x\nsearch example.org\nnameserver 192.0.2.1\nnameserver ::1\nnameserver fe80::1%eth0\n";
        assert_eq!(resolv_conf_servers(t), vec!["192.0.2.1:53", "[::1]:53"]);
        let c = Config {
            dns_servers: vec!["127.0.0.1:5353".into(), "192.0.2.2".into()],
            ..Default::default()
        };
        assert_eq!(dns_servers(&c).unwrap(), vec!["127.0.0.1:5353", "192.0.2.2:53"]);
        let bad = Config {
            dns_servers: vec!["dns.example".into()],
            ..Default::default()
        };
        assert!(dns_servers(&bad).unwrap_err().contains("dns.example"));
    }
}
