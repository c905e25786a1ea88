//! Dropping privileges at the very start of a worker.
//!
//! The supervisor resolves each worker's user and passes the numeric ids in
//! the environment (`TAMBO_UID`, `TAMBO_GID`, and `TAMBO_CHROOT` for smtpd).
//! The worker calls [`drop_from_env`] first thing after exec, before it reads
//! a byte from any peer: chroot (smtpd), clear supplementary groups, empty
//! the capability bounding set, switch real/effective/saved ids, forbid new
//! privileges, and then check that none of it can be undone.

use std::ffi::CString;
use std::path::PathBuf;

/// Environment variable carrying the uid to switch to.
pub const ENV_UID: &str = "TAMBO_UID";
/// Environment variable carrying the gid to switch to.
pub const ENV_GID: &str = "TAMBO_GID";
/// Environment variable naming the directory to chroot into.
pub const ENV_CHROOT: &str = "TAMBO_CHROOT";

/// What a worker must become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropPlan {
    /// Target uid.
    pub uid: u32,
    /// Target gid.
    pub gid: u32,
    /// Directory to chroot into, if any.
    pub chroot: Option<PathBuf>,
}

/// Errors while dropping privileges; any of them is fatal for the worker.
#[derive(thiserror::Error, Debug)]
pub enum PrivError {
    /// A variable is present but not a number.
    #[error("environment variable {0} is not a valid id: {1:?}")]
    BadEnv(&'static str, String),
    /// A system call failed.
    #[error("{0} failed: {1}")]
    Syscall(&'static str, std::io::Error),
    /// The drop did not take: something could still be regained.
    #[error("privilege drop incomplete: {0}")]
    Incomplete(String),
}

fn last_os_error(what: &'static str) -> PrivError {
    PrivError::Syscall(what, std::io::Error::last_os_error())
}

/// Read the plan from the environment: `None` when the worker is to keep the
/// invoking user (unprivileged mode).
pub fn plan_from_env() -> Result<Option<DropPlan>, PrivError> {
    let uid = match std::env::var(ENV_UID) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let gid = std::env::var(ENV_GID).unwrap_or_default();
    let uid: u32 = uid.parse().map_err(|_| PrivError::BadEnv(ENV_UID, uid.clone()))?;
    let gid: u32 = gid.parse().map_err(|_| PrivError::BadEnv(ENV_GID, gid.clone()))?;
    let chroot = std::env::var(ENV_CHROOT)
        .ok()
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    Ok(Some(DropPlan { uid, gid, chroot }))
}

/// Apply the plan from the environment (or only the hardening that needs
/// no root when there is none). Also makes the worker die with its parent.
pub fn drop_from_env() -> Result<Option<DropPlan>, PrivError> {
    let plan = plan_from_env()?;
    if let Some(plan) = &plan {
        drop_privileges(plan)?;
    }
    set_no_new_privs()?;
    // The parent-death signal is reset by credential changes, so it is set
    // after the switch.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(last_os_error("prctl(PR_SET_PDEATHSIG)"));
    }
    Ok(plan)
}

fn set_no_new_privs() -> Result<(), PrivError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(last_os_error("prctl(PR_SET_NO_NEW_PRIVS)"));
    }
    Ok(())
}

/// Become `plan.uid`/`plan.gid` for good. Must run as root.
pub fn drop_privileges(plan: &DropPlan) -> Result<(), PrivError> {
    if plan.uid == 0 || plan.gid == 0 {
        return Err(PrivError::Incomplete("refusing to run a worker as uid or gid 0".into()));
    }
    if let Some(dir) = &plan.chroot {
        let c = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| PrivError::Incomplete("chroot path contains NUL".into()))?;
        // SAFETY: c is a valid NUL-terminated string.
        if unsafe { libc::chroot(c.as_ptr()) } != 0 {
            return Err(last_os_error("chroot"));
        }
        std::env::set_current_dir("/").map_err(|e| PrivError::Syscall("chdir(/)", e))?;
    }
    // SAFETY: setgroups with an empty list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(last_os_error("setgroups"));
    }
    // Empty the bounding set while we still hold CAP_SETPCAP. Numbers past
    // the kernel's last capability give EINVAL, which ends the loop.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(PrivError::Syscall("prctl(PR_CAPBSET_DROP)", err));
        }
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresgid(plan.gid, plan.gid, plan.gid) } != 0 {
        return Err(last_os_error("setresgid"));
    }
    // SAFETY: plain id syscalls.
    if unsafe { libc::setresuid(plan.uid, plan.uid, plan.uid) } != 0 {
        return Err(last_os_error("setresuid"));
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    verify(plan)
}

/// Check that the switch is complete and irreversible.
fn verify(plan: &DropPlan) -> Result<(), PrivError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: valid out-pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    if [r, e, s] != [plan.uid; 3] {
        return Err(PrivError::Incomplete(format!("uids are {r}/{e}/{s}")));
    }
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: valid out-pointers.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    if [r, e, s] != [plan.gid; 3] {
        return Err(PrivError::Incomplete(format!("gids are {r}/{e}/{s}")));
    }
    // SAFETY: querying the number of supplementary groups.
    if unsafe { libc::getgroups(0, std::ptr::null_mut()) } != 0 {
        return Err(PrivError::Incomplete("supplementary groups remain".into()));
    }
    // SAFETY: setuid(0) must fail now; if it succeeds we abort below.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(PrivError::Incomplete("setuid(0) succeeded".into()));
    }
    let caps = capabilities()?;
    if caps != [0; 6] {
        return Err(PrivError::Incomplete(format!("capabilities remain: {caps:?}")));
    }
    Ok(())
}

/// The effective, permitted and inheritable capability sets (two 32-bit
/// words each), read with capget.
pub fn capabilities() -> Result<[u32; 6], PrivError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for two data structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(last_os_error("capget"));
    }
    Ok([
        data[0].effective,
        data[1].effective,
        data[0].permitted,
        data[1].permitted,
        data[0].inheritable,
        data[1].inheritable,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_env_is_an_error() {
        // SAFETY: tests in this module do not read these variables
        // concurrently with another thread changing them.
        unsafe {
            std::env::set_var(ENV_UID, "abc");
        }
        let r = plan_from_env();
        unsafe {
            std::env::remove_var(ENV_UID);
        }
        assert!(matches!(r, Err(PrivError::BadEnv(ENV_UID, _))));
        assert_eq!(plan_from_env().unwrap(), None);
    }

    #[test]
    fn refuses_root_target() {
        let plan = DropPlan {
            uid: 0,
            gid: 0,
            chroot: None,
        };
        assert!(matches!(drop_privileges(&plan), Err(PrivError::Incomplete(_))));
    }

    #[test]
    fn capget_works() {
        capabilities().unwrap();
    }
}
