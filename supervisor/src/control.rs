//! The control socket (`run_dir/control.sock`): the supervisor accepts each
//! connection, checks the peer's credentials (SO_PEERCRED) and hands the
//! connection to queued, which answers the operator's request. The
//! supervisor never reads from a client, so a slow or hostile one cannot
//! stall its loop; refusals are one small non-blocking write.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Group, Uid, User, chown};
use tambo_ipc::frame::{Hello, encode};
use tambo_ipc::proto::{ADMIN_CHANNEL, AdminReply};

/// Name of the socket file inside `run_dir`.
pub const SOCKET_NAME: &str = "control.sock";
/// Connections accepted per wake-up, so a flood cannot starve the workers.
const ACCEPT_BURST: usize = 64;

/// Who may use the control socket.
#[derive(Debug, Clone)]
pub struct Access {
    /// The group whose members are admitted (by name, looked up each time).
    pub admin_group: String,
    /// The supervisor's own uid, admitted in unprivileged mode.
    pub own_uid: Option<u32>,
}

/// A peer's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Access {
    /// Whether `peer` may use the socket: root, a member of the admin group
    /// (its gid, its user's primary group, or a supplementary group listed
    /// in the group database), or tambod's own uid in unprivileged mode.
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || self.own_uid == Some(peer.uid) {
            return true;
        }
        let Ok(Some(group)) = Group::from_name(&self.admin_group) else {
            return false;
        };
        if group.gid.as_raw() == peer.gid {
            return true;
        }
        match User::from_uid(Uid::from_raw(peer.uid)) {
            Ok(Some(user)) => user.gid == group.gid || group.mem.contains(&user.name),
            _ => false,
        }
    }
}

/// The listening control socket.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    access: Access,
}

/// What to do with an accepted connection.
pub enum Accepted {
    /// Allowed: hand it to queued.
    Allowed(OwnedFd, Peer),
    /// Refused (already answered).
    Refused,
}

impl ControlSocket {
    /// Create `run_dir/control.sock` (replacing a stale one), mode 0660,
    /// group `admin_group` when running as root.
    pub fn bind(run_dir: &Path, access: Access, privileged: bool) -> Result<ControlSocket, String> {
        let path = run_dir.join(SOCKET_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_dir() => {
                return Err(format!("{}: is a directory", path.display()));
            }
            Ok(_) => std::fs::remove_file(&path).map_err(|e| format!("{}: cannot remove: {e}", path.display()))?,
            Err(_) => {}
        }
        let listener =
            tambo_common::unixsock::bind(&path).map_err(|e| format!("{}: cannot bind: {e}", path.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("{}: chmod: {e}", path.display()))?;
        if privileged {
            match Group::from_name(&access.admin_group) {
                Ok(Some(g)) => chown(&path, Some(Uid::from_raw(0)), Some(g.gid))
                    .map_err(|e| format!("{}: chown: {e}", path.display()))?,
                _ => {
                    tracing::warn!(
                        "admin group {:?} does not exist: only root may use {}",
                        access.admin_group,
                        path.display()
                    );
                    chown(&path, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
                        .map_err(|e| format!("{}: chown: {e}", path.display()))?;
                }
            }
        }
        tracing::info!("control socket at {}", path.display());
        Ok(ControlSocket { listener, path, access })
    }

    /// The listening fd, for poll.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accept what is waiting (a bounded burst), checking each peer;
    /// refused ones are answered and closed here.
    pub fn accept(&self) -> Vec<Accepted> {
        let mut out = Vec::new();
        for _ in 0..ACCEPT_BURST {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    break;
                }
            };
            let peer = match getsockopt(&stream, PeerCredentials) {
                Ok(c) => Peer {
                    pid: c.pid(),
                    uid: c.uid(),
                    gid: c.gid(),
                },
                Err(e) => {
                    tracing::warn!("control socket: SO_PEERCRED: {e}");
                    continue;
                }
            };
            if self.access.allows(&peer) {
                out.push(Accepted::Allowed(OwnedFd::from(stream), peer));
            } else {
                tracing::warn!(
                    uid = peer.uid,
                    pid = peer.pid,
                    "control socket: access refused (not root, not in group {})",
                    self.access.admin_group
                );
                refuse(
                    &stream,
                    &format!(
                        "permission denied: uid {} is neither root nor a member of group {}",
                        peer.uid, self.access.admin_group
                    ),
                );
                out.push(Accepted::Refused);
            }
        }
        out
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answer a client with our hello and one error, without ever blocking
/// (a fresh socket's buffer holds these few bytes), then let it close.
pub fn refuse(stream: &UnixStream, why: &str) {
    let mut bytes = match encode(&Hello::new(ADMIN_CHANNEL), 0) {
        Ok(b) => b,
        Err(_) => return,
    };
    if let Ok(b) = encode(&AdminReply::Error(why.to_string()), 0) {
        bytes.extend_from_slice(&b);
    }
    // SAFETY: send on a valid socket with a valid buffer.
    let _ = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_uid_are_allowed() {
        let a = Access {
            admin_group: "no-such-group-tambo-test".into(),
            own_uid: Some(4242),
        };
        assert!(a.allows(&Peer { pid: 1, uid: 0, gid: 0 }));
        assert!(a.allows(&Peer {
            pid: 1,
            uid: 4242,
            gid: 4242
        }));
        assert!(!a.allows(&Peer {
            pid: 1,
            uid: 4243,
            gid: 4243
        }));
    }

    #[test]
    fn admin_group_gid_is_allowed() {
        let Ok(Some(g)) = Group::from_gid(Gid::from_raw(0)) else {
            return;
        };
        let a = Access {
            admin_group: g.name.clone(),
            own_uid: None,
        };
        assert!(a.allows(&Peer {
            pid: 1,
            uid: 65534,
            gid: 0
        }));
    }
}
