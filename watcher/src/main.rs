//! `tambo-watcher -- PROGRAM ARGS…`: runs one delivery agent for
//! deliverd so that its outcome outlives deliverd (see
//! the library of this crate). It reads the handover on stdin, confines
//! itself, starts the program (same environment, same process group, the
//! same stdout and stderr), appends the start record, feeds the program the
//! message, waits, appends the end record and exits as the program did.
//! A handover that does not arrive whole (deliverd died first) starts
//! nothing and exits 75, "try again later".

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use tambo_watcher::{Handover, feed, record, restrict_self};

/// EX_TEMPFAIL: nothing was started.
const TEMPFAIL: i32 = 75;
/// The program could not be started (as a shell says).
const CANNOT_RUN: i32 = 127;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(("--", program)) = argv.split_first().map(|(a, r)| (a.to_str().unwrap_or(""), r)) else {
        eprintln!("usage: tambo-watcher -- PROGRAM [ARGS…] (run by tambo-deliverd)");
        std::process::exit(2);
    };
    let Some((bin, args)) = program.split_first() else {
        eprintln!("tambo-watcher: no program");
        std::process::exit(2);
    };
    let handover = match Handover::receive(std::io::stdin().as_fd()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("tambo-watcher: {e}");
            std::process::exit(TEMPFAIL);
        }
    };
    if let Some(ruleset) = &handover.confine
        && let Err(e) = restrict_self(ruleset.as_fd())
    {
        eprintln!("tambo-watcher: landlock: {e}");
        std::process::exit(TEMPFAIL);
    }
    let me = std::process::id() as i64;
    let log = handover.log.as_fd();
    let child = Command::new(bin).args(args).stdin(Stdio::piped()).spawn();
    let _ = record(log, &handover.start, me);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot run {}: {e}", bin.to_string_lossy());
            let _ = record(log, &handover.end, (CANNOT_RUN << 8) as i64);
            std::process::exit(CANNOT_RUN);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A program that stops reading ends the feed (SIGPIPE is ignored:
        // the write fails instead).
        let _ = feed(&mut stdin, &handover.prefix, &handover.data);
    }
    let status = match child.wait() {
        Ok(s) => s.into_raw(),
        Err(_) => libc::SIGKILL,
    };
    let _ = record(log, &handover.end, status as i64);
    exit_like(status)
}

/// Exit with the program's code, or die of its signal.
fn exit_like(status: i32) -> ! {
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    // SAFETY: resetting a handler and raising a signal in a
    // single-threaded program about to end.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}
