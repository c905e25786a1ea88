//! Which paths each worker's Landlock ruleset lets it open, planned from
//! the configuration (the worker applies the plan; see
//! `tambo_ipc::sandbox`).
//!
//! - smtpd and authd: nothing. smtpd opens no file after start-up; authd
//!   gets its files as fds.
//! - queued: `data_dir/queue` (with chasquid's items to import),
//!   `data_dir/domaininfo` and `data_dir/srs` read-write, and `config_dir/domains`
//!   read-only (the aliases files; the real directory of a domain that is
//!   a symbolic link too). Nothing else: it runs no program. Landlock
//!   cannot hide the users files and DKIM keys beside the aliases files
//!   without breaking on the next edit of an aliases file (editors replace
//!   the file, and a rule on a file holds its inode), so as root their
//!   permissions keep them from `tambo-queue`.
//! - deliverd: the whole file system but `data_dir` and the secret files,
//!   plus `data_dir/sts-cache` (its MTA-STS policy cache) and
//!   `data_dir/deliverd` (its agent log). The delivery agent inherits
//!   it and adds a layer of its own without those two (built by
//!   `tambo_ipc::sandbox::install`): it can reach anything its user can,
//!   except `data_dir` and the secrets.
//! - hookd: the whole file system but `data_dir` and the secret files.
//!   The hooks and pipe aliases inherit it.
//!
//! Secret files are listed when the worker starts; one added later is
//! hidden from it from its next restart on (file permissions keep it from
//! the workers' users meanwhile, when tambod runs as root).

use std::path::{Path, PathBuf};

use tambo_ipc::proto::{WorkerKind, WorkerStart};
use tambo_ipc::sandbox::{FsPlan, PathAccess};
use tambo_ipc::secrets::SecretFile;

/// The plan for `kind`, given the start-up message and the secret files.
pub fn fs_plan(kind: WorkerKind, start: &WorkerStart, secrets: &[SecretFile]) -> FsPlan {
    let hidden_secrets = || {
        let mut paths: Vec<PathBuf> = secrets.iter().map(|s| PathBuf::from(&s.path)).collect();
        paths.push(Path::new(&start.config_dir).join("certs"));
        paths
    };
    let data_dir = PathBuf::from(&start.config.data_dir);
    match kind {
        WorkerKind::Smtpd | WorkerKind::Authd => FsPlan::default(),
        WorkerKind::Queued => {
            let domains = Path::new(&start.config_dir).join("domains");
            let domains_real = std::fs::canonicalize(&domains).unwrap_or_else(|_| domains.clone());
            let mut allow: Vec<(PathAccess, PathBuf)> = ["queue", "domaininfo", "srs"]
                .into_iter()
                .map(|d| (PathAccess::Full, data_dir.join(d)))
                .collect();
            allow.push((PathAccess::Read, domains));
            for d in &start.local_domains {
                if let Ok(real) = std::fs::canonicalize(start.domain_dir(d))
                    && !real.starts_with(&domains_real)
                {
                    allow.push((PathAccess::Read, real));
                }
            }
            FsPlan {
                allow,
                all_but: Vec::new(),
            }
        }
        WorkerKind::Deliverd => {
            let mut all_but = hidden_secrets();
            all_but.push(data_dir.clone());
            FsPlan {
                allow: vec![
                    (PathAccess::Full, data_dir.join("sts-cache")),
                    (PathAccess::Full, data_dir.join("deliverd")),
                ],
                all_but,
            }
        }
        WorkerKind::Hookd => {
            let mut all_but = hidden_secrets();
            all_but.push(data_dir);
            FsPlan {
                allow: Vec::new(),
                all_but,
            }
        }
    }
}
