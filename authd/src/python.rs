//! Unit-test helper: run a Python script with Debian's python3 (which has
//! python3-dkim), the independent implementation DKIM and ARC are checked
//! against.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Run `script` with `arg` as its argument and `stdin` as its input; its
/// trimmed standard output (the test fails if it exits non-zero).
pub fn run(script: &str, arg: &Path, stdin: &[u8]) -> String {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write to python");
    let out = child.wait_with_output().expect("python's output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}
