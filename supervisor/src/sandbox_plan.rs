//! Which paths each worker's Landlock ruleset lets it open, planned from
//! the configuration (the worker applies the plan; see
//! `tambo_ipc::sandbox`).
//!
//! - smtpd and authd: nothing. smtpd opens no file after start-up; authd
//!   gets its files as fds.
//! - queued: the whole file system but the secret files (certificates and
//!   their keys, users files, DKIM keys, relay credentials). It runs the
//!   hooks, which inherit its ruleset and may need any program or path.
//! - deliverd: the whole file system but `data_dir` and the secret files,
//!   plus `data_dir/sts-cache` (its MTA-STS policy cache). The delivery
//!   agent and pipe aliases inherit it: they can reach anything their user
//!   can, except the queue.
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
        WorkerKind::Queued => FsPlan {
            allow: Vec::new(),
            all_but: hidden_secrets(),
        },
        WorkerKind::Deliverd => {
            let mut all_but = hidden_secrets();
            all_but.push(data_dir.clone());
            FsPlan {
                allow: vec![(PathAccess::Full, data_dir.join("sts-cache"))],
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
