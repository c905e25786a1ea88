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
