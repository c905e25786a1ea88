//! `tambo-watcher` itself: given a handover on its stdin, it starts the
//! program, feeds it the header lines and the data file, and the log gets
//! the start and end records; it exits as the program did.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use tambo_watcher::Witness;

/// An executable `#!/bin/sh` script (this test binary runs one test, so no
/// other fork can inherit the file while it is open for writing).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Run `program` under the watcher with `prefix` and `data` handed over.
fn watched(w: &Witness, program: &[&str], prefix: &[u8], data: &std::fs::File) -> Output {
    let (theirs, ours) = UnixStream::pair().unwrap();
    let child = Command::new(&w.program)
        .arg("--")
        .args(program)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    w.hand_over(ours, prefix, data.as_fd(), None).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_watcher_runs_feeds_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .unwrap();
    let w = Witness {
        program: PathBuf::from(env!("CARGO_BIN_EXE_tambo-watcher")),
        log: Arc::new(log),
        start: b"S 7 Id 0 ".to_vec(),
        end: b"E 7 ".to_vec(),
    };
    let mut data = tempfile::tempfile().unwrap();
    data.write_all(&vec![b'x'; 300_000]).unwrap();

    // All of the input, the output back, the status as the program's.
    let p = script(dir.path(), "w", "wc -c; echo \"err $$\" >&2; exit 3");
    let out = watched(&w, &[p.to_str().unwrap()], b"A: 1\r\n", &data);
    assert_eq!((out.status.code(), &out.stdout[..]), (Some(3), &b"300006\n"[..]));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let watcher: u32 = lines[0].strip_prefix("S 7 Id 0 ").unwrap().parse().unwrap();
    assert_eq!(lines[1], format!("E 7 {}", 3 << 8));
    let agent: u32 = String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("err ")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(agent, watcher, "the program runs in a process of its own");

    // Killed by a signal: the watcher dies of it too, and says so.
    let k = script(dir.path(), "k", "kill -9 $$");
    let out = watched(&w, &[k.to_str().unwrap()], b"", &data);
    assert_eq!(out.status.signal(), Some(9));
    assert!(std::fs::read_to_string(&log_path).unwrap().ends_with("E 7 9\n"));

    // A program that cannot start.
    let out = watched(&w, &["/nonexistent/agent"], b"", &data);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/agent"));

    // No handover (the runner died first): nothing starts, exit 75.
    let (theirs, ours) = UnixStream::pair().unwrap();
    drop(ours);
    let out = Command::new(&w.program)
        .args(["--", "/bin/true"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(std::fs::read_to_string(&log_path).unwrap().lines().count(), 6);
}
