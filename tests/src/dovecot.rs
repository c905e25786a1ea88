//! A private Dovecot started by a test in a temporary directory: the
//! common part of its configuration, its log, and SIGTERM on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{is_root, wait_for};

/// Who Dovecot runs as and who owns the mail of its test users.
pub struct DovecotAccounts {
    /// `default_internal_user`.
    pub internal: String,
    /// `default_login_user`.
    pub login: String,
    /// uid of the mail users in the passwd file.
    pub uid: u32,
    /// gid of the mail users in the passwd file.
    pub gid: u32,
}

/// As root, Dovecot runs its helpers as its own users and its mail users
/// may not be uid 0, so they are `nobody`; otherwise everything is us.
pub fn accounts() -> DovecotAccounts {
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .expect("getpwnam")
            .expect("nobody");
        DovecotAccounts {
            internal: "dovecot".into(),
            login: "dovenull".into(),
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
        }
    } else {
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .expect("getpwuid")
            .expect("me");
        DovecotAccounts {
            internal: me.name.clone(),
            login: me.name,
            uid: me.uid.as_raw(),
            gid: me.gid.as_raw(),
        }
    }
}

/// A running Dovecot.
pub struct Dovecot {
    child: Child,
    /// Its directory: `dovecot.conf`, `passwd`, `run/` (sockets), the log.
    pub dir: PathBuf,
}

impl Dovecot {
    /// Start Dovecot in `dir` with `specific` configuration lines added to
    /// the common ones (directories, log, users, a passwd-file passdb and
    /// userdb reading `passwd`), and wait until `ready` holds.
    pub fn start(dir: &Path, specific: &str, passwd: &str, ready: impl Fn(&Path) -> bool) -> Dovecot {
        std::fs::create_dir_all(dir).expect("mkdir");
        let who = accounts();
        let conf = format!(
            "base_dir = {d}/run\n\
             state_dir = {d}/state\n\
             log_path = {d}/dovecot.log\n\
             default_internal_user = {internal}\n\
             default_login_user = {login}\n\
             passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             {specific}",
            d = dir.display(),
            internal = who.internal,
            login = who.login,
        );
        std::fs::write(dir.join("dovecot.conf"), conf).expect("write dovecot.conf");
        std::fs::write(dir.join("passwd"), passwd).expect("write passwd");
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start dovecot");
        let d = Dovecot {
            child,
            dir: dir.to_path_buf(),
        };
        wait_for(Duration::from_secs(20), "dovecot to be ready", || ready(&d.dir));
        d
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// A Dovecot LMTP server (unix socket `run/lmtp` and a loopback TCP
/// port) delivering to Maildirs under `mail/USER/Maildir` for
/// `users@example.com` (password `USER-pw`), optionally its auth server
/// too.
pub struct Lmtp {
    /// The running Dovecot.
    pub server: Dovecot,
    /// The TCP port.
    pub port: u16,
}

impl Lmtp {
    /// Start it in `dir`.
    pub fn start(dir: &Path, users: &[&str]) -> Lmtp {
        Lmtp::start_with_auth(dir, users, None)
    }

    /// Start it in `dir`, with the auth sockets `run/auth-userdb` and
    /// `run/auth-client` (mode 0600 for `auth_owner`) when one is given.
    pub fn start_with_auth(dir: &Path, users: &[&str], auth_owner: Option<&str>) -> Lmtp {
        let mail = dir.join("mail");
        std::fs::create_dir_all(&mail).expect("mkdir");
        let port = crate::free_port();
        let who = accounts();
        if is_root() {
            // Dovecot stores the mail as the (non-root) mail user.
            nix::unistd::chown(
                &mail,
                Some(nix::unistd::Uid::from_raw(who.uid)),
                Some(nix::unistd::Gid::from_raw(who.gid)),
            )
            .expect("chown mail");
        }
        let mut specific = format!(
            "protocols = lmtp\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             mail_location = maildir:~/Maildir\n\
             postmaster_address = postmaster@example.com\n\
             service lmtp {{\n\
               inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               unix_listener lmtp {{\n    mode = 0666\n  }}\n\
             }}\n"
        );
        if let Some(owner) = auth_owner {
            specific.push_str(&auth_service(owner));
        }
        let passwd: String = users
            .iter()
            .map(|u| {
                format!(
                    "{u}@example.com:{{PLAIN}}{u}-pw:{}:{}::{}/{u}::\n",
                    who.uid,
                    who.gid,
                    mail.display()
                )
            })
            .collect();
        let auth = auth_owner.is_some();
        let server = Dovecot::start(dir, &specific, &passwd, |d| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && d.join("run/lmtp").exists()
                && (!auth || d.join("run/auth-client").exists())
        });
        Lmtp { server, port }
    }

    /// The unix socket.
    pub fn socket(&self) -> PathBuf {
        self.server.dir.join("run/lmtp")
    }

    /// The messages in `user`'s Maildir/new, sorted.
    pub fn mailbox(&self, user: &str) -> Vec<String> {
        let mut out: Vec<String> = self.mailbox_files(user).into_iter().map(|(_, m)| m).collect();
        out.sort();
        out
    }

    /// The files in `user`'s Maildir/new: name (which starts with the
    /// time of the delivery, `SECONDS.MMICROSECONDS`) and contents.
    pub fn mailbox_files(&self, user: &str) -> Vec<(String, String)> {
        let new = self.server.dir.join("mail").join(user).join("Maildir/new");
        std::fs::read_dir(new)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned();
                        (e.file_name().to_string_lossy().into_owned(), text)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A Dovecot auth server only (no mail protocols), its sockets at
/// `run/auth-userdb` and `run/auth-client` (so the chasquid-style prefix
/// is `run/auth`), mode 0600 for `owner`; `passwd` lines as given.
pub fn start_auth(dir: &Path, owner: &str, passwd: &str) -> Dovecot {
    let specific = format!("protocols = none\nssl = no\n{}", auth_service(owner));
    Dovecot::start(dir, &specific, passwd, |d| {
        d.join("run/auth-userdb").exists() && d.join("run/auth-client").exists()
    })
}

/// The auth service's lines: PLAIN with no failure delay, the userdb and
/// client sockets mode 0600 for `owner`.
fn auth_service(owner: &str) -> String {
    format!(
        "auth_failure_delay = 0\n\
         auth_mechanisms = plain\n\
         service auth {{\n\
           unix_listener auth-userdb {{\n    mode = 0600\n    user = {owner}\n  }}\n\
           unix_listener auth-client {{\n    mode = 0600\n    user = {owner}\n  }}\n\
         }}\n"
    )
}
