//! The runner under a witness: `tambo-watcher` starts the program, feeds
//! it, and the log gets the start and end records.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tambo_common::lineend::LineEndings;
use tambo_hookd::runner::{Input, Program, run};
use tambo_hookd::witness::Witness;

/// An executable `#!/bin/sh` script (this test binary runs one test at a
/// time, so no other fork can inherit the file while it is open).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn witness(log: &Path) -> Witness {
    let log = std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap();
    Witness {
        program: PathBuf::from(env!("CARGO_BIN_EXE_tambo-watcher")),
        log: Arc::new(log),
        start: b"S 7 Id 0 ".to_vec(),
        end: b"E 7 ".to_vec(),
    }
}

fn program<'a>(argv: &'a [String], w: &'a Witness) -> Program<'a> {
    Program {
        argv,
        env: &[],
        cwd: None,
        timeout: Duration::from_secs(10),
        stdout_limit: 64 * 1024,
        stderr_limit: 4096,
        witness: Some(w),
        confine: None,
    }
}

/// The program reads all its input (header lines, then the data file),
/// its output and status come back, and the log gets both records; a
/// program killed by a signal is reported as such; one that cannot start
/// fails as a missing program does.
#[tokio::test]
async fn a_witnessed_run() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let w = witness(&log_path);
    let p = script(dir.path(), "w", "wc -c; echo \"err $$\" >&2; exit 3");
    let mut data = tempfile::tempfile().unwrap();
    data.write_all(&vec![b'x'; 300_000]).unwrap();
    let argv = [p.display().to_string()];
    let input = Input::Message {
        prefix: b"A: 1\r\n".to_vec(),
        data,
        endings: LineEndings::Crlf,
    };
    let out = run(&program(&argv, &w), input).await.unwrap();
    assert_eq!((out.code, &out.stdout[..]), (Some(3), &b"300006\n"[..]));
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let watcher: u32 = lines[0].strip_prefix("S 7 Id 0 ").unwrap().parse().unwrap();
    assert_eq!(lines[1], format!("E 7 {}", 3 << 8));
    // The agent is the watcher's child, in its process group.
    let agent: u32 = String::from_utf8_lossy(&out.stderr)
        .trim()
        .strip_prefix("err ")
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(agent, watcher);

    let k = script(dir.path(), "k", "kill -9 $$");
    let argv = [k.display().to_string()];
    let data = tempfile::tempfile().unwrap();
    let input = Input::Message {
        prefix: Vec::new(),
        data,
        endings: LineEndings::Crlf,
    };
    let out = run(&program(&argv, &w), input).await.unwrap();
    assert_eq!(out.code, None, "killed by a signal");
    assert!(std::fs::read_to_string(&log_path).unwrap().ends_with("E 7 9\n"));

    let argv = ["/nonexistent/agent".to_string()];
    let input = Input::Message {
        prefix: Vec::new(),
        data: tempfile::tempfile().unwrap(),
        endings: LineEndings::Crlf,
    };
    let out = run(&program(&argv, &w), input).await.unwrap();
    assert_eq!(out.code, Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/agent"));
}
