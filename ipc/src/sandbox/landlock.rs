//! The Landlock half of a worker's sandbox: which paths it may open, and
//! (smtpd) which TCP ports it may connect to.
//!
//! The supervisor plans each worker's paths from the configuration
//! ([`FsPlan`], passed in `TAMBO_SANDBOX_FS`); the worker's kind fixes the
//! rest. Rulesets ask for [`TESTED_ABI`], the newest Landlock ABI tambo's
//! tests ran on, in best-effort mode: an older kernel enforces what it
//! knows (ABI 1, Linux 5.13, already confines files; TCP needs ABI 4 and
//! the signal and abstract-socket scopes ABI 6), a kernel without Landlock
//! enforces nothing, and the worker logs which it was.

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::SandboxError;
use crate::proto::WorkerKind;

/// The newest Landlock ABI the rulesets ask for.
pub const TESTED_ABI: ABI = ABI::V7;

/// How a worker may use a path and everything beneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathAccess {
    /// Read files, list directories, execute.
    Read,
    /// Everything.
    Full,
}

/// The paths a worker may open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsPlan {
    /// Trees the worker may use, and how.
    pub allow: Vec<(PathAccess, PathBuf)>,
    /// When not empty: full access to the whole file system except these
    /// trees (deliverd, whose delivery agents may need any path, but not
    /// the queue). Rules in `allow` still apply inside them.
    pub all_but: Vec<PathBuf>,
}

impl FsPlan {
    /// The plan as the environment carries it: one `ro PATH`, `rw PATH` or
    /// `all-but PATH` per line.
    pub fn encode(&self) -> Result<String, SandboxError> {
        let mut out = String::new();
        let lines = self
            .allow
            .iter()
            .map(|(a, p)| (if *a == PathAccess::Read { "ro" } else { "rw" }, p))
            .chain(self.all_but.iter().map(|p| ("all-but", p)));
        for (word, path) in lines {
            let text = path
                .to_str()
                .filter(|t| !t.contains('\n') && path.is_absolute())
                .ok_or_else(|| SandboxError::Plan(format!("{}: not an absolute UTF-8 path", path.display())))?;
            out.push_str(word);
            out.push(' ');
            out.push_str(text);
            out.push('\n');
        }
        Ok(out)
    }

    /// Read what [`FsPlan::encode`] wrote.
    pub fn decode(text: &str) -> Result<FsPlan, SandboxError> {
        let mut plan = FsPlan::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (word, path) = line
                .split_once(' ')
                .ok_or_else(|| SandboxError::Plan(format!("bad line {line:?}")))?;
            let path = PathBuf::from(path);
            match word {
                "ro" => plan.allow.push((PathAccess::Read, path)),
                "rw" => plan.allow.push((PathAccess::Full, path)),
                "all-but" => plan.all_but.push(path),
                _ => return Err(SandboxError::Plan(format!("bad line {line:?}"))),
            }
        }
        Ok(plan)
    }
}

/// What Landlock enforces, for the start-up log line.
pub fn describe(status: &RestrictionStatus) -> String {
    let abi = match &status.landlock {
        LandlockStatus::Available { effective_abi, .. } => format!("ABI {}", *effective_abi as i32),
        LandlockStatus::NotEnabled => "disabled in this kernel".to_string(),
        LandlockStatus::NotImplemented => "not in this kernel".to_string(),
    };
    let how = match status.ruleset {
        RulesetStatus::FullyEnforced => "fully enforced",
        RulesetStatus::PartiallyEnforced => "partly enforced",
        RulesetStatus::NotEnforced => "NOT enforced",
    };
    format!("landlock {how} ({abi})")
}

/// Build and apply the worker's ruleset on this thread (every later thread
/// and child inherits it).
pub fn restrict(kind: WorkerKind, plan: &FsPlan) -> Result<RestrictionStatus, SandboxError> {
    build(kind, plan)?.restrict_self().map_err(ll)
}

/// Build a ruleset for `plan` without applying it: its fd, for a child to
/// apply (`landlock_restrict_self`) between fork and exec. `None` when the
/// kernel has no Landlock.
pub fn prepare(kind: WorkerKind, plan: &FsPlan) -> Result<Option<std::os::fd::OwnedFd>, SandboxError> {
    Ok(build(kind, plan)?.into())
}

fn build(kind: WorkerKind, plan: &FsPlan) -> Result<RulesetCreated, SandboxError> {
    let fs_all = AccessFs::from_all(TESTED_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(fs_all)
        .map_err(ll)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(ll)?;
    if kind == WorkerKind::Smtpd {
        // DNS over TCP is the only connection smtpd makes; it binds none.
        ruleset = ruleset
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
            .map_err(ll)?;
    }
    let mut created = ruleset.create().map_err(ll)?;
    if kind == WorkerKind::Smtpd {
        created = created.add_rule(NetPort::new(53, AccessNet::ConnectTcp)).map_err(ll)?;
    }
    for (access, path) in &plan.allow {
        let rights = match access {
            PathAccess::Read => AccessFs::from_read(TESTED_ABI),
            PathAccess::Full => fs_all,
        };
        created = add_path(created, path, rights)?;
    }
    for root in everything_but(&plan.all_but)? {
        created = add_path(created, &root, fs_all)?;
    }
    Ok(created)
}

fn ll(e: landlock::RulesetError) -> SandboxError {
    SandboxError::Landlock(e.to_string())
}

/// Add a rule for `path`, which may be a file (then only the rights that
/// apply to files). A path that does not exist is skipped: there is
/// nothing to grant.
fn add_path(created: RulesetCreated, path: &Path, rights: BitFlags<AccessFs>) -> Result<RulesetCreated, SandboxError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(created);
    };
    let rights = if meta.is_dir() {
        rights
    } else {
        rights & AccessFs::from_file(TESTED_ABI)
    };
    let fd = PathFd::new(path).map_err(|e| SandboxError::Landlock(format!("{}: {e}", path.display())))?;
    created.add_rule(PathBeneath::new(fd, rights)).map_err(ll)
}

/// The trees that together make up the whole file system but `hidden`:
/// every sibling of each directory on the way from `/` down to a hidden
/// path. A symbolic link on the way that leads into a hidden tree is left
/// out too; the ancestors themselves get no rule, since a rule on a
/// directory reaches everything below it.
pub fn everything_but(hidden: &[PathBuf]) -> Result<Vec<PathBuf>, SandboxError> {
    if hidden.is_empty() {
        return Ok(Vec::new());
    }
    let hidden: Vec<PathBuf> = hidden
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut roots = Vec::new();
    walk(Path::new("/"), &hidden, &mut roots)?;
    Ok(roots)
}

fn walk(dir: &Path, hidden: &[PathBuf], roots: &mut Vec<PathBuf>) -> Result<(), SandboxError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SandboxError::Landlock(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if hidden.iter().any(|h| h == &real || real.starts_with(h)) {
            continue;
        }
        let on_the_way = hidden.iter().any(|h| h.starts_with(&real));
        if !on_the_way {
            roots.push(path);
        } else if real == path {
            walk(&path, hidden, roots)?;
        }
        // Else a link on the way to a hidden tree: its target is walked
        // where it really is.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_round_trips() {
        let plan = FsPlan {
            allow: vec![
                (PathAccess::Read, PathBuf::from("/etc/tambo")),
                (PathAccess::Full, PathBuf::from("/var/lib/tambo/sts-cache")),
            ],
            all_but: vec![PathBuf::from("/var/lib/tambo")],
        };
        assert_eq!(FsPlan::decode(&plan.encode().unwrap()).unwrap(), plan);
    }

    #[test]
    fn relative_or_multiline_paths_are_refused() {
        for bad in ["relative", "/a\nrw /"] {
            let plan = FsPlan {
                allow: vec![(PathAccess::Read, PathBuf::from(bad))],
                all_but: Vec::new(),
            };
            assert!(plan.encode().is_err(), "{bad:?}");
        }
        assert!(FsPlan::decode("xx /a").is_err());
    }

    #[test]
    fn everything_but_leaves_out_the_hidden_tree_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let data = base.join("data");
        std::fs::create_dir_all(data.join("queue")).unwrap();
        std::fs::create_dir_all(base.join("other")).unwrap();
        std::os::unix::fs::symlink(&data, base.join("link-to-data")).unwrap();
        let roots = everything_but(std::slice::from_ref(&data)).unwrap();
        assert!(roots.contains(&base.join("other")), "{roots:?}");
        assert!(roots.contains(&PathBuf::from("/usr")) || !Path::new("/usr").exists());
        for r in &roots {
            let real = std::fs::canonicalize(r).unwrap_or_else(|_| r.clone());
            assert!(!real.starts_with(&data), "{} reaches the hidden tree", r.display());
            assert!(!data.starts_with(&real), "{} contains the hidden tree", r.display());
        }
    }
}
