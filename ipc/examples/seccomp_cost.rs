//! What a worker's seccomp filter costs per system call: time the same
//! calls in a child without a filter and in one with the smtpd, authd and
//! runner filters installed (`bench/sandbox.sh` runs it).
//!
//! `cargo run --release -p tambo-ipc --example seccomp_cost [CALLS]`

use std::time::Instant;

use tambo_ipc::proto::WorkerKind;
use tambo_ipc::sandbox::{Profile, compile_filters};

/// Nanoseconds per call for `calls` rounds of `sendto`-free work smtpd
/// does all the time: a `write` of one byte to a pipe and a `read` back
/// (two filtered calls per round), measured in a forked child.
fn measure(filters: Option<Profile>, calls: u64) -> f64 {
    let mut fds = [0i32; 2];
    // SAFETY: plain syscalls on fds this process owns; the child only
    // makes async-signal-safe calls before it exits.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let mut report = [0i32; 2];
        assert_eq!(libc::pipe(report.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if let Some(p) = filters {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                for prog in compile_filters(p).expect("compile") {
                    seccompiler::apply_filter(&prog).expect("apply");
                }
            }
            let start = Instant::now();
            let mut b = [0u8; 1];
            for _ in 0..calls {
                libc::write(fds[1], b.as_ptr().cast(), 1);
                libc::read(fds[0], b.as_mut_ptr().cast(), 1);
            }
            let ns = start.elapsed().as_nanos() as u64 / (2 * calls);
            libc::write(report[1], (&ns as *const u64).cast(), 8);
            libc::_exit(0);
        }
        let mut ns = 0u64;
        libc::read(report[0], (&mut ns as *mut u64).cast(), 8);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        for fd in fds.into_iter().chain(report) {
            libc::close(fd);
        }
        ns as f64
    }
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let rounds = 5;
    let best = |p: Option<Profile>| (0..rounds).map(|_| measure(p, calls)).fold(f64::MAX, f64::min);
    let none = best(None);
    println!("system call cost, best of {rounds} x {calls} write+read pairs on a pipe");
    println!("{:<10} {:>8.1} ns/call", "none", none);
    for (name, kind) in [
        ("smtpd", WorkerKind::Smtpd),
        ("authd", WorkerKind::Authd),
        ("queued", WorkerKind::Queued),
        ("runner", WorkerKind::Deliverd),
    ] {
        let with = best(Some(Profile::of(kind)));
        println!(
            "{name:<10} {with:>8.1} ns/call  (+{:.1} ns, {:.2}x)",
            with - none,
            with / none
        );
    }
}
