//! Unix-domain sockets at paths of any length.
//!
//! `sun_path` holds at most 107 bytes plus a NUL, and a chasquid test
//! configuration (`data_dir: "../.data"` under a deep checkout) easily
//! puts `data_dir/run/control.sock` past that. For a longer path the
//! socket's directory is opened (`O_PATH`) and the socket bound or reached
//! as `/proc/self/fd/N/NAME`, which the kernel resolves to the same inode.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest path `sun_path` takes (without its NUL).
const SUN_PATH_MAX: usize = 107;

/// A path short enough for `sun_path` that names `path`, and the
/// directory fd that must stay open while it is used.
fn short_path(path: &Path) -> std::io::Result<(PathBuf, Option<OwnedFd>)> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: not a socket path", path.display()),
        ));
    };
    let dir_fd: OwnedFd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map(|fd| {
        // SAFETY: open returned a fresh fd that nothing else owns.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    })?;
    let short = Path::new("/proc/self/fd")
        .join(dir_fd.as_raw_fd().to_string())
        .join(name);
    if short.as_os_str().len() > SUN_PATH_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: socket name too long", path.display()),
        ));
    }
    Ok((short, Some(dir_fd)))
}

/// Bind a listening socket at `path`, whatever its length.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let (short, _dir) = short_path(path)?;
    UnixListener::bind(short)
}

/// Connect to the socket at `path`, whatever its length.
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let (short, _dir) = short_path(path)?;
    UnixStream::connect(short)
}

/// Connect to the first of `paths` that accepts a connection; the stream
/// and its path. When none does, the most telling failure: the first
/// that is neither "no such file" nor "connection refused" (a server
/// that is there but refuses us), else the first path's.
pub fn connect_first(paths: &[PathBuf]) -> Result<(UnixStream, PathBuf), (PathBuf, std::io::Error)> {
    let mut errors = Vec::new();
    for p in paths {
        match connect(p) {
            Ok(s) => return Ok((s, p.clone())),
            Err(e) => errors.push((p.clone(), e)),
        }
    }
    let absent = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
        )
    };
    match errors.iter().position(|(_, e)| !absent(e)) {
        Some(i) => Err(errors.swap_remove(i)),
        None if !errors.is_empty() => Err(errors.swap_remove(0)),
        None => Err((
            PathBuf::new(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no control socket path"),
        )),
    }
}

/// `a`, `a or b`, `a, b or c`.
pub fn or_list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn long_paths_work() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = tmp.path().to_path_buf();
        for _ in 0..4 {
            dir.push("d".repeat(40));
        }
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is where the long path says");
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // Short paths go straight through.
        let short = tmp.path().join("s.sock");
        let _l = bind(&short).unwrap();
        connect(&short).unwrap();
        assert!(connect(&dir.join("missing.sock")).is_err());
    }

    #[test]
    fn connect_first_skips_stale_sockets() {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join("stale.sock");
        drop(bind(&stale).unwrap());
        assert!(stale.exists());
        let live = tmp.path().join("live.sock");
        let _l = bind(&live).unwrap();
        let missing = tmp.path().join("missing.sock");
        let (_, which) = connect_first(&[missing.clone(), stale.clone(), live.clone()]).unwrap();
        assert_eq!(which, live);
        let (p, e) = connect_first(&[stale.clone(), missing.clone()]).unwrap_err();
        assert_eq!((p, e.kind()), (stale, std::io::ErrorKind::ConnectionRefused));
    }
}
