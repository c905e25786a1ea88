//! Secret files reach authd as open file descriptors.
//!
//! TLS private keys (and their chains), the users databases, DKIM keys and
//! the smarthost credentials are opened by the supervisor, as root, as they
//! are on disk: a key that only root may read (certbot leaves them so) or
//! one readable by group `chasquid` works without chgrp or chmod. The
//! supervisor lists directories and opens files; it never reads them. authd
//! reads and parses what it was given ([`SecretSet`]) and never opens a
//! configuration file itself. Each frame carries at most
//! [`MAX_FDS_PER_FRAME`] files ([`ControlMsg::Secrets`]), sent before
//! [`ControlMsg::Start`] and before every reload of authd.
//!
//! [`ControlMsg::Secrets`]: crate::proto::ControlMsg::Secrets
//! [`ControlMsg::Start`]: crate::proto::ControlMsg::Start

use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::MAX_FDS_PER_FRAME;

/// Largest secret file authd reads (a users file of about 100,000 users).
pub const MAX_SECRET_FILE: u64 = 16 * 1024 * 1024;

/// What a secret file is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// `certs/<name>/fullchain.pem`.
    TlsChain {
        /// The certificate directory's name.
        name: String,
    },
    /// `certs/<name>/privkey.pem`.
    TlsKey {
        /// The certificate directory's name.
        name: String,
    },
    /// `domains/<dir>/users` of a local domain.
    Users {
        /// The domain (normalised).
        domain: String,
    },
    /// `domains/<dir>/dkim:<selector>.pem`.
    DkimKey {
        /// The domain (normalised).
        domain: String,
        /// The selector.
        selector: String,
    },
    /// `relay_auth_file`.
    RelayAuth,
}

/// One secret file: what it is and where it is (for messages).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// What it is.
    pub kind: SecretKind,
    /// Its path.
    pub path: String,
}

/// What the secret files of a configuration are: the certificate
/// directories with both files (sorted by name; one with only one of
/// them is skipped with a warning, as chasquid does), the `users` file of
/// every local domain that has one, every `dkim:<selector>.pem`, and
/// `relay_auth_file` when set. `domain_dirs` pairs each domain with its
/// directory's name on disk. Only directories are listed: no file is read.
pub fn list(
    config_dir: &Path,
    domain_dirs: &[(String, String)],
    relay_auth_file: &str,
) -> Result<Vec<SecretFile>, String> {
    let mut out = list_certificates(&config_dir.join("certs"))?;
    for (domain, dir) in domain_dirs {
        let dir = config_dir.join("domains").join(dir);
        out.extend(list_users(&dir, domain));
        for key in tambo_common::dkimkey::list_key_files_in(&dir).map_err(|e| e.to_string())? {
            out.push(SecretFile {
                kind: SecretKind::DkimKey {
                    domain: domain.clone(),
                    selector: key.selector,
                },
                path: path_string(&key.path),
            });
        }
    }
    if !relay_auth_file.is_empty() {
        out.push(SecretFile {
            kind: SecretKind::RelayAuth,
            path: path_string(&tambo_common::relayauth::resolve_path(config_dir, relay_auth_file)),
        });
    }
    Ok(out)
}

/// The users files only (what the periodic check of the supervisor
/// watches and sends again when one changes).
pub fn list_users_files(config_dir: &Path, domain_dirs: &[(String, String)]) -> Vec<SecretFile> {
    domain_dirs
        .iter()
        .flat_map(|(domain, dir)| list_users(&config_dir.join("domains").join(dir), domain))
        .collect()
}

fn list_users(dir: &Path, domain: &str) -> Option<SecretFile> {
    let path = dir.join("users");
    // A domain without a users file has no users; its aliases may still
    // receive mail.
    std::fs::symlink_metadata(&path).ok().map(|_| SecretFile {
        kind: SecretKind::Users {
            domain: domain.to_string(),
        },
        path: path_string(&path),
    })
}

fn list_certificates(certs: &Path) -> Result<Vec<SecretFile>, String> {
    let rd = std::fs::read_dir(certs).map_err(|e| format!("{}: {e}", certs.display()))?;
    let mut dirs = Vec::new();
    for de in rd {
        let de = de.map_err(|e| format!("{}: {e}", certs.display()))?;
        // Follows symlinks, as Let's Encrypt's live/ directories are.
        if std::fs::metadata(de.path()).is_ok_and(|m| m.is_dir()) {
            dirs.push((de.file_name().to_string_lossy().into_owned(), de.path()));
        }
    }
    dirs.sort();
    let mut out = Vec::new();
    for (name, dir) in dirs {
        let (chain, key) = (dir.join("fullchain.pem"), dir.join("privkey.pem"));
        if !chain.exists() || !key.exists() {
            tracing::warn!(
                "{}: skipped, it needs both fullchain.pem and privkey.pem",
                dir.display()
            );
            continue;
        }
        out.push(SecretFile {
            kind: SecretKind::TlsChain { name: name.clone() },
            path: path_string(&chain),
        });
        out.push(SecretFile {
            kind: SecretKind::TlsKey { name },
            path: path_string(&key),
        });
    }
    Ok(out)
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Open every file, read-only, following symbolic links; each must be a
/// regular file. The first that cannot be opened is an error naming it.
pub fn open_all(files: Vec<SecretFile>) -> Result<Vec<(SecretFile, OwnedFd)>, String> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let fd = open_one(Path::new(&f.path)).map_err(|e| format!("{}: cannot open: {e}", f.path))?;
        out.push((f, fd));
    }
    Ok(out)
}

fn open_one(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO or device must not block or be read.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(OwnedFd::from(file))
}

/// One [`ControlMsg::Secrets`](crate::proto::ControlMsg::Secrets) frame:
/// the files and their descriptors, in the same order.
pub type SecretFrame = (Vec<SecretFile>, Vec<OwnedFd>);

/// The files in groups of at most [`MAX_FDS_PER_FRAME`], one frame each.
pub fn batches(files: Vec<(SecretFile, OwnedFd)>) -> Vec<SecretFrame> {
    let mut out = Vec::new();
    let mut it = files.into_iter().peekable();
    while it.peek().is_some() {
        let (meta, fds): (Vec<SecretFile>, Vec<OwnedFd>) = it.by_ref().take(MAX_FDS_PER_FRAME).unzip();
        out.push((meta, fds));
    }
    out
}

/// What identifies one version of a file, for the periodic reload check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    mtime_ns: i128,
    ctime_ns: i128,
    size: u64,
    ino: u64,
}

/// The stamp of `path` now (following links), `None` when it cannot be
/// read.
pub fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        size: m.size(),
        ino: m.ino(),
    })
}

/// Why a secret file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The file is over [`MAX_SECRET_FILE`].
    #[error("{0}: larger than {MAX_SECRET_FILE} bytes")]
    TooLarge(String),
    /// The frames did not pair files with descriptors.
    #[error("secret files: {0} described but {1} descriptors attached")]
    Mismatch(usize, usize),
}

/// The secret files a worker received, in the order the supervisor sent
/// them.
#[derive(Debug, Default)]
pub struct SecretSet {
    files: Vec<(SecretFile, OwnedFd)>,
}

impl SecretSet {
    /// Add one frame's files and descriptors.
    pub fn extend(&mut self, meta: Vec<SecretFile>, fds: Vec<OwnedFd>) -> Result<(), SecretError> {
        if meta.len() != fds.len() {
            return Err(SecretError::Mismatch(meta.len(), fds.len()));
        }
        self.files.extend(meta.into_iter().zip(fds));
        Ok(())
    }

    /// List and open the secrets of a configuration directly (tests, and
    /// tools that run as the files' owner).
    pub fn open(
        config_dir: &Path,
        domain_dirs: &[(String, String)],
        relay_auth_file: &str,
    ) -> Result<SecretSet, String> {
        let files = open_all(list(config_dir, domain_dirs, relay_auth_file)?)?;
        Ok(SecretSet { files })
    }

    /// Whether no file came.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files received, in order.
    pub fn files(&self) -> impl Iterator<Item = &SecretFile> {
        self.files.iter().map(|(f, _)| f)
    }

    /// The file of `kind`, if it came.
    pub fn find(&self, kind: &SecretKind) -> Option<&SecretFile> {
        self.files().find(|f| &f.kind == kind)
    }

    /// The whole content of the file of `kind` (read from its start, so it
    /// may be read again), with its path; `None` when it did not come.
    pub fn read(&self, kind: &SecretKind) -> Option<Result<(PathBuf, Vec<u8>), SecretError>> {
        let (f, fd) = self.files.iter().find(|(f, _)| &f.kind == kind)?;
        Some(read_fd(fd, &f.path).map(|bytes| (PathBuf::from(&f.path), bytes)))
    }
}

fn read_fd(fd: &OwnedFd, path: &str) -> Result<Vec<u8>, SecretError> {
    let io = |e| SecretError::Io(path.to_string(), e);
    // A duplicate: dropping the File closes only it.
    let file = std::fs::File::from(fd.try_clone().map_err(io)?);
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge(path.to_string()));
    }
    let mut buf = vec![0u8; len as usize];
    let mut off = 0usize;
    loop {
        if off == buf.len() {
            // The file may have grown since fstat: read on, within bounds.
            if buf.len() as u64 >= MAX_SECRET_FILE {
                return Err(SecretError::TooLarge(path.to_string()));
            }
            buf.resize((buf.len() * 2).max(4096).min(MAX_SECRET_FILE as usize), 0);
        }
        match file.read_at(&mut buf[off..], off as u64) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    buf.truncate(off);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn layout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "certs/b.example",
            "certs/a.example",
            "certs/half",
            "domains/Example.COM",
            "domains/other.org",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for name in ["a.example", "b.example"] {
            std::fs::write(
                d.join("certs").join(name).join("fullchain.pem"),
                format!("chain {name}"),
            )
            .unwrap();
            std::fs::write(d.join("certs").join(name).join("privkey.pem"), format!("key {name}")).unwrap();
        }
        std::fs::write(d.join("certs/half/fullchain.pem"), "x").unwrap();
        std::fs::write(d.join("domains/Example.COM/users"), "users of example").unwrap();
        std::fs::write(d.join("domains/Example.COM/dkim:s1.pem"), "dkim").unwrap();
        std::fs::write(d.join("relay"), "u:p").unwrap();
        dir
    }

    fn dirs() -> Vec<(String, String)> {
        vec![
            ("example.com".into(), "Example.COM".into()),
            ("other.org".into(), "other.org".into()),
        ]
    }

    #[test]
    fn lists_opens_and_reads() {
        let dir = layout();
        let files = list(dir.path(), &dirs(), "relay").unwrap();
        let kinds: Vec<SecretKind> = files.iter().map(|f| f.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                SecretKind::TlsChain {
                    name: "a.example".into()
                },
                SecretKind::TlsKey {
                    name: "a.example".into()
                },
                SecretKind::TlsChain {
                    name: "b.example".into()
                },
                SecretKind::TlsKey {
                    name: "b.example".into()
                },
                SecretKind::Users {
                    domain: "example.com".into()
                },
                SecretKind::DkimKey {
                    domain: "example.com".into(),
                    selector: "s1".into()
                },
                SecretKind::RelayAuth,
            ]
        );
        let opened = open_all(files).unwrap();
        // Frames of at most MAX_FDS_PER_FRAME files, reassembled in order.
        let mut set = SecretSet::default();
        for (meta, fds) in batches(opened) {
            assert!(meta.len() <= MAX_FDS_PER_FRAME);
            set.extend(meta, fds).unwrap();
        }
        let (path, bytes) = set
            .read(&SecretKind::TlsKey {
                name: "b.example".into(),
            })
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"key b.example");
        assert!(path.ends_with("certs/b.example/privkey.pem"));
        // A second read sees the whole file again.
        let (_, again) = set
            .read(&SecretKind::TlsKey {
                name: "b.example".into(),
            })
            .unwrap()
            .unwrap();
        assert_eq!(again, b"key b.example");
        assert!(
            set.read(&SecretKind::Users {
                domain: "other.org".into()
            })
            .is_none()
        );
        let mut bad = SecretSet::default();
        assert!(
            bad.extend(vec![set.files().next().unwrap().clone()], Vec::new())
                .is_err()
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = layout();
        let users = dir.path().join("domains/Example.COM/users");
        std::fs::remove_file(&users).unwrap();
        std::fs::create_dir(&users).unwrap();
        let e = open_all(list(dir.path(), &dirs(), "").unwrap()).unwrap_err();
        assert!(e.contains("Example.COM/users: cannot open: not a regular file"), "{e}");
        std::fs::remove_dir(&users).unwrap();
        let e = open_all(list(dir.path(), &dirs(), "missing-relay").unwrap()).unwrap_err();
        assert!(e.contains("missing-relay: cannot open"), "{e}");
        if !nix::unistd::geteuid().is_root() {
            let key = dir.path().join("certs/a.example/privkey.pem");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
            let e = open_all(list(dir.path(), &dirs(), "").unwrap()).unwrap_err();
            assert!(e.contains("a.example/privkey.pem: cannot open"), "{e}");
        }
    }

    #[test]
    fn stamps_change_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        std::fs::write(&p, "a").unwrap();
        let s1 = stamp(&p).unwrap();
        assert_eq!(stamp(&p), Some(s1));
        // A new file renamed over it (what chasquid-util does).
        std::fs::write(dir.path().join("new"), "b").unwrap();
        std::fs::rename(dir.path().join("new"), &p).unwrap();
        assert_ne!(stamp(&p), Some(s1));
        assert_eq!(stamp(&dir.path().join("none")), None);
    }
}
