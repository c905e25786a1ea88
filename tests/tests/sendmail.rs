//! Issue 7 item 4: the `sendmail` injector (`tambo sendmail`, or the
//! binary under the name `sendmail`) against a running server, through
//! the control socket.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use tambo_tests::*;

/// Run `program args` with `input` on stdin: (exit code, output).
fn pipe(program: &Path, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    // The injector may exit before reading everything (refusals).
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn sendmail_injects_messages() {
    let env = TestEnv::new("");
    let conf = env.config_dir.to_string_lossy().into_owned();

    // Not running: EX_TEMPFAIL.
    let (code, out) = pipe(
        &bin("tambo"),
        &["-C", &conf, "sendmail", "-i", USER],
        b"Subject: x\n\nbody\n",
    );
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("not running"), "{out}");

    let _server = env.start();

    // `tambo sendmail -i`: LF lines become CRLF, a lone "." is data.
    let msg = b"From: cron@example.com\nSubject: sendmail-marker-1\n\nline one\n.\nline three\n";
    let (code, out) = pipe(
        &bin("tambo"),
        &["-C", &conf, "sendmail", "-i", "-oem", "-odi", "-F", "Cron Daemon", USER],
        msg,
    );
    assert_eq!(code, 0, "{out}");
    let got = env.wait_delivered(USER, "sendmail-marker-1");
    assert!(
        got.contains("Subject: sendmail-marker-1\r\n\r\nline one\r\n.\r\nline three\r\n"),
        "{got:?}"
    );
    assert!(!got.replace("\r\n", "").contains('\n'), "bare LF left: {got:?}");
    assert!(got.contains("Received: from localhost"), "{got}");
    assert!(got.contains("with local id"), "{got}");

    // Under the name `sendmail`, -t: recipients from To/Cc/Bcc, Bcc gone;
    // without -i a lone "." ends the message; -f sets the sender.
    let sendmail = env.tmp.path().join("sendmail");
    std::os::unix::fs::symlink(bin("tambo"), &sendmail).expect("symlink sendmail");
    let msg = b"To: Alice <alice@example.com>\nBcc: bob@example.com\nSubject: sendmail-marker-2\n\nhello\n.\nnot part of it\n";
    let (code, out) = pipe(&sendmail, &["-C", &conf, "-t", "-f", "robot@example.com"], msg);
    assert_eq!(code, 0, "{out}");
    for rcpt in [USER, "bob@example.com"] {
        let got = env.wait_delivered(rcpt, "sendmail-marker-2");
        let tail = &got[got.find("sendmail-marker-2").expect("marker")..];
        assert!(!got.contains("Bcc:"), "{got}");
        assert!(got.contains("To: Alice <alice@example.com>\r\n"), "{got}");
        assert!(tail.contains("hello\r\n"), "{got}");
        assert!(!tail.contains("not part of it"), "{got}");
    }

    // Refusals: an unknown local recipient, a bad flag, no recipients.
    let (code, out) = pipe(&sendmail, &["-C", &conf, "nobody@example.com"], b"Subject: x\n\nx\n");
    assert_eq!(code, 67, "{out}");
    assert!(out.contains("5.1.1"), "{out}");
    // Refused before the data is read: the answer still arrives.
    let big = format!("Subject: big\n\n{}", "0123456789abcdef\n".repeat(200_000));
    let (code, out) = pipe(&sendmail, &["-C", &conf, "-i", "a@@b"], big.as_bytes());
    assert_eq!(code, 67, "{out}");
    assert!(out.contains("5.1.3"), "{out}");
    let (code, out) = pipe(&sendmail, &["-C", &conf, "-bs"], b"");
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("-bs"), "{out}");
    let (code, out) = pipe(&sendmail, &["-C", &conf, "-t"], b"Subject: none\n\nx\n");
    assert_eq!(code, 64, "{out}");
}
