//! Binding the listening sockets (or taking them from systemd) before any
//! privilege is dropped.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket, sockopt,
};
use tambo_common::config::Config;
use tambo_ipc::proto::ListenerKind;

/// One bound listening socket.
#[derive(Debug)]
pub struct Listener {
    /// Its role.
    pub kind: ListenerKind,
    /// The address as configured (or `systemd`).
    pub addr: String,
    /// The socket.
    pub socket: TcpListener,
}

/// Listening backlog: large, so bursts of connections are not refused.
const BACKLOG: i32 = 1024;

/// The systemd-provided sockets (`LISTEN_FDS`), by name.
pub struct SystemdFds(Vec<(String, OwnedFd)>);

impl SystemdFds {
    /// Take the fds systemd passed to this process, if any, and mark them
    /// close-on-exec so they do not leak into workers.
    pub fn take() -> SystemdFds {
        let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let count: i32 = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if !pid_ok || count <= 0 {
            return SystemdFds(Vec::new());
        }
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .unwrap_or_default()
            .split(':')
            .map(str::to_string)
            .collect();
        let mut out = Vec::new();
        for i in 0..count {
            let fd = 3 + i;
            // SAFETY: fcntl on an fd systemd says is ours.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            // SAFETY: systemd hands these fds to us exclusively.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            out.push((names.get(i as usize).cloned().unwrap_or_default(), owned));
        }
        // SAFETY: single-threaded at this point.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        SystemdFds(out)
    }

    fn take_named(&mut self, name: &str) -> Vec<OwnedFd> {
        let (hit, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0).into_iter().partition(|(n, _)| n == name);
        self.0 = rest;
        hit.into_iter().map(|(_, fd)| fd).collect()
    }
}

/// The addresses of each listener kind; a kind the configuration lists no
/// address for is `systemd` (socket activation), chasquid's default.
pub fn configured_addresses(config: &Config) -> Vec<(ListenerKind, String)> {
    let mut out = Vec::new();
    for (kind, list) in [
        (ListenerKind::Smtp, &config.smtp_address),
        (ListenerKind::Submission, &config.submission_address),
        (ListenerKind::SubmissionTls, &config.submission_over_tls_address),
    ] {
        if list.is_empty() {
            out.push((kind, "systemd".to_string()));
        } else {
            out.extend(list.iter().map(|a| (kind, a.clone())));
        }
    }
    out
}

/// Bind every configured listener. Errors name the address. As chasquid,
/// tambod refuses to start with nothing to listen on (no address
/// configured and no socket from systemd).
pub fn bind_all(config: &Config, systemd: &mut SystemdFds) -> Result<Vec<Listener>, String> {
    let out = bind_configured(config, systemd)?;
    if out.is_empty() {
        return Err("No address to listen on: set smtp_address, submission_address or \
             submission_over_tls_address in chasquid.conf, or start tambod through its systemd \
             sockets (tambo-smtp.socket, tambo-submission.socket, tambo-submissions.socket)"
            .to_string());
    }
    Ok(out)
}

fn bind_configured(config: &Config, systemd: &mut SystemdFds) -> Result<Vec<Listener>, String> {
    let mut out = Vec::new();
    for (kind, addr) in configured_addresses(config) {
        if addr == "systemd" {
            let fds = systemd.take_named(kind.fd_name());
            if fds.is_empty() {
                tracing::warn!(
                    "{addr} listener for {}: systemd passed no socket named {:?}",
                    kind.fd_name(),
                    kind.fd_name()
                );
            }
            for fd in fds {
                out.push(Listener {
                    kind,
                    addr: addr.clone(),
                    socket: TcpListener::from(fd),
                });
            }
            continue;
        }
        for socket in bind_one(&addr).map_err(|e| format!("cannot listen on {addr:?}: {e}"))? {
            out.push(Listener {
                kind,
                addr: addr.clone(),
                socket,
            });
        }
    }
    Ok(out)
}

/// Bind `host:port`; an empty host means every address (one dual-stack
/// socket, or IPv4 only where IPv6 is unavailable).
fn bind_one(addr: &str) -> std::io::Result<Vec<TcpListener>> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad port"))?;
        return match listen_on(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))) {
            Ok(l) => Ok(vec![l]),
            Err(_) => Ok(vec![listen_on(SocketAddr::from((
                std::net::Ipv4Addr::UNSPECIFIED,
                port,
            )))?]),
        };
    }
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut out = Vec::new();
    for a in addrs {
        out.push(listen_on(a)?);
    }
    Ok(out)
}

fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_empty() {
        let c = Config::default();
        let a = configured_addresses(&c);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|(_, s)| s == "systemd"));
        // Nothing configured and no socket from systemd: refused.
        let e = bind_all(&c, &mut SystemdFds(Vec::new())).unwrap_err();
        assert!(e.starts_with("No address to listen on"), "{e}");
    }

    #[test]
    fn binds_loopback() {
        let l = bind_one("127.0.0.1:0").unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].local_addr().unwrap().ip().is_loopback());
    }
}
