//! Sandbox probes, for the tests only: the supervisor's
//! `--testing__sandbox_probe=WORKER:WHAT:ARG` makes a worker attempt
//! something its sandbox must refuse, and the worker logs the outcome.
//! Only builds with the `sandbox-probe` feature act on a probe (the test
//! crate enables it); any other build logs that it has none, so a release
//! binary cannot be asked to open, connect or exec on the supervisor's
//! behalf.

use crate::proto::SandboxProbe;

/// Log line of an attempt the sandbox let through: what a test looks for
/// to fail.
pub const ALLOWED: &str = "ALLOWED (the sandbox let it through)";

/// Make the attempt and describe how it went.
#[cfg(feature = "sandbox-probe")]
pub fn attempt(probe: &SandboxProbe) -> String {
    use std::time::Duration;
    let (what, result) = match probe {
        SandboxProbe::Open(path) => (format!("open {path}"), std::fs::File::open(path).map(drop)),
        SandboxProbe::Connect(addr) => (
            format!("connect {addr}"),
            match addr.parse::<std::net::SocketAddr>() {
                Ok(a) => std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).map(drop),
                Err(e) => Err(std::io::Error::other(e)),
            },
        ),
        SandboxProbe::Exec(path) => (
            format!("exec {path}"),
            std::process::Command::new(path)
                .arg("-c")
                .arg("true")
                .status()
                .map(drop),
        ),
    };
    let worker = super::seccomp::worker_name();
    match result {
        Ok(()) => format!("{worker}: sandbox probe: {what}: {ALLOWED}"),
        Err(e) => format!("{worker}: sandbox probe: {what}: refused: {e}"),
    }
}

/// Refuse: this build has no probes.
#[cfg(not(feature = "sandbox-probe"))]
pub fn attempt(probe: &SandboxProbe) -> String {
    format!("sandbox probe {probe:?} ignored: this build has no probes (feature sandbox-probe)")
}
