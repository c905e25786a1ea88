//! `mda-lmtp` (tools crate, on deliverd's LMTP client): delivery into a
//! real Dovecot LMTP server over a unix socket and TCP, temporary and
//! permanent failures with chasquid's exit codes, and a differential run
//! against Debian's mda-lmtp (chasquid 1.11) on a scripted LMTP server.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use tambo_tests::*;

const MESSAGE: &[u8] = b"Subject: test\n\nThis is a test.\n.leading dot\n";

/// Exit code and stdout+stderr of `mda-lmtp ARGS < MESSAGE`.
fn mda(program: &Path, args: &[&str]) -> (i32, String) {
    let out = run_with_input(Command::new(program).args(args), MESSAGE);
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn delivers_into_dovecot_and_reports_failures() {
    if !require("dovecot", "dovecot-core") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let lmtp = dovecot::Lmtp::start(&tmp.path().join("dovecot"), &["alice", "bob", "carol"]);
    let ours = bin("mda-lmtp");
    let sock = lmtp.socket();
    let sock = sock.to_str().expect("utf8");

    // Unix socket (the network named), then TCP (guessed from the address).
    let (c, out) = mda(
        &ours,
        &[
            "--addr",
            sock,
            "--addr_network=unix",
            "-f",
            "from@x.test",
            "-d",
            "alice@example.com",
        ],
    );
    assert_eq!((c, out.as_str()), (0, ""), "{}", lmtp.server.log());
    let addr = format!("127.0.0.1:{}", lmtp.port);
    let (c, out) = mda(&ours, &["-addr", &addr, "-f", "<>", "-d", "bob@example.com"]);
    assert_eq!((c, out.as_str()), (0, ""), "{}", lmtp.server.log());
    let alice = lmtp.mailbox("alice");
    assert_eq!(alice.len(), 1, "{alice:?}");
    assert!(alice[0].contains("Return-Path: <from@x.test>"), "{}", alice[0]);
    assert!(
        alice[0].ends_with("Subject: test\n\nThis is a test.\n.leading dot\n"),
        "{}",
        alice[0]
    );
    let bob = lmtp.mailbox("bob");
    assert_eq!(bob.len(), 1, "{bob:?}");
    assert!(bob[0].contains("Return-Path: <>"), "{}", bob[0]);

    // An unknown user: Dovecot's 550, retried (75) as chasquid does.
    let (c, out) = mda(
        &ours,
        &["--addr", sock, "-f", "from@x.test", "-d", "nobody@example.com"],
    );
    assert_eq!(c, 75, "{out}");
    assert!(
        out.starts_with("Sent \"RCPT TO:<nobody@example.com>\", got 550 \""),
        "{out}"
    );

    // Dovecot cannot store carol's mail (her home cannot be created): its
    // 4xx is temporary (75).
    let locked = lmtp.server.dir.join("mail/carol");
    std::fs::create_dir_all(&locked).expect("mkdir");
    std::fs::write(locked.join("Maildir"), "not a directory").expect("block Maildir");
    let (c, out) = mda(&ours, &["--addr", sock, "-f", "from@x.test", "-d", "carol@example.com"]);
    assert_eq!(c, 75, "{out}\n{}", lmtp.server.log());
    assert!(out.starts_with("Delivery failed remotely: 45"), "{out}");

    // No server: temporary.
    let gone = tmp.path().join("none.sock");
    let (c, out) = mda(&ours, &["--addr", gone.to_str().expect("utf8"), "-f", "a", "-d", "b"]);
    assert_eq!(c, 75, "{out}");
    assert_eq!(
        out,
        format!(
            "Error connecting to (unix, {0}): dial unix {0}: connect: no such file or directory\n",
            gone.display()
        )
    );
}

#[test]
fn arguments_as_in_chasquid_1_18() {
    let ours = bin("mda-lmtp");
    let (c, out) = mda(&ours, &["-f", "a", "-d", "b"]);
    assert_eq!((c, out.as_str()), (2, "No LMTP server address given (use --addr)\n"));
    let (c, out) = mda(
        &ours,
        &[
            "--addr=/x",
            "--addr_network=unix",
            "-to_puny",
            "-f",
            "fröm",
            "-d",
            "xn--t",
        ],
    );
    assert_eq!(
        (c, out.as_str()),
        (2, "cannot puny-encode recipient: idna: invalid label \"t\"\n")
    );
    let (c, out) = mda(&ours, &["--addr=/x", "-to_puny", "-f", "xn--f", "-d", "to"]);
    assert_eq!(
        (c, out.as_str()),
        (2, "cannot puny-encode from: idna: invalid label \"f\"\n")
    );
    let (c, out) = mda(&ours, &["-bogus"]);
    assert_eq!(c, 2);
    assert!(
        out.starts_with("flag provided but not defined: -bogus\n\nmda-lmtp is a very basic MDA"),
        "{out}"
    );
    let (c, out) = mda(&ours, &["-h"]);
    assert_eq!(c, 0);
    assert!(
        out.contains("  -to_puny\n    \tEncode addresses using punycode\n"),
        "{out}"
    );
}

/// A scripted LMTP server on a unix socket for one connection: no
/// extensions, `final_reply` after the data; returns every line it got.
fn scripted(path: &Path, final_reply: &'static str) -> JoinHandle<Vec<String>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut w = conn.try_clone().expect("clone");
        let mut r = BufReader::new(conn);
        let mut got = Vec::new();
        let _ = w.write_all(b"220 hola\r\n");
        let mut in_data = false;
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => return got,
            }
            got.push(line.clone());
            let reply: &str = if in_data {
                if line != ".\r\n" {
                    continue;
                }
                in_data = false;
                final_reply
            } else if line.starts_with("LHLO ") {
                "250-hola\r\n250 dale\r\n"
            } else if line == "DATA\r\n" {
                in_data = true;
                "354 go\r\n"
            } else if line == "QUIT\r\n" {
                "221 chau\r\n"
            } else {
                "250 ok\r\n"
            };
            if w.write_all(reply.as_bytes()).is_err() {
                return got;
            }
        }
    })
}

/// Debian's mda-lmtp, when the chasquid package is installed.
fn debian_mda_lmtp() -> Option<PathBuf> {
    let owned = Command::new("dpkg")
        .args(["-S", "/usr/bin/mda-lmtp"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("chasquid:"))
        .unwrap_or(false);
    let plain = std::fs::symlink_metadata("/usr/bin/mda-lmtp")
        .map(|m| m.is_file())
        .unwrap_or(false);
    (owned && plain).then(|| PathBuf::from("/usr/bin/mda-lmtp"))
}

#[test]
fn differential_against_debian_mda_lmtp_1_11() {
    let Some(theirs) = debian_mda_lmtp() else {
        tambo_tests::skip("Debian's mda-lmtp (package chasquid) is not installed; scripts/test installs it");
        return;
    };
    let ours = bin("mda-lmtp");
    let tmp = tempfile::tempdir().expect("tempdir");
    let sock = tmp.path().join("lmtp.sock");
    let s = sock.to_str().expect("utf8");
    // The same conversation, byte for byte, and the same exit code.
    for args in [
        vec![
            "--addr",
            s,
            "--addr_network=unix",
            "-f",
            "from@x.test",
            "-d",
            "to@y.test",
        ],
        vec!["--addr", s, "-f", "<>", "-d", "<>"],
        vec!["--addr", s, "-to_puny", "-f", "fröm", "-d", "þo"],
    ] {
        let mut results = Vec::new();
        for program in [&ours, &theirs] {
            let server = scripted(&sock, "250 2.0.0 saved\r\n");
            let (c, out) = mda(program, &args);
            results.push((c, out, server.join().expect("server")));
        }
        assert_eq!(results[0], results[1], "mda-lmtp {args:?}");
        assert_eq!(results[0].0, 0);
    }
    // A temporary failure after the data: 75 from both. (1.11, built with
    // an older Go, does not quote the server's text.)
    let mut out = Vec::new();
    for program in [&ours, &theirs] {
        let server = scripted(&sock, "452 4.2.2 over quota\r\n");
        out.push(mda(program, &["--addr", s, "-f", "a", "-d", "b"]));
        server.join().expect("server");
    }
    assert_eq!(
        out[0],
        (75, "Delivery failed remotely: 452 \"4.2.2 over quota\"\n".to_string())
    );
    assert_eq!(
        out[1],
        (75, "Delivery failed remotely: 452 4.2.2 over quota\n".to_string())
    );
    // A permanent failure: both retry (75).
    let mut codes = Vec::new();
    for program in [&ours, &theirs] {
        let server = scripted(&sock, "550 5.1.1 no such user\r\n");
        codes.push(mda(program, &["--addr", s, "-f", "a", "-d", "b"]).0);
        server.join().expect("server");
    }
    assert_eq!(codes, vec![75, 75]);
    // Arguments and connection errors: the same words and codes.
    let refused = format!("--addr=127.0.0.1:{}", free_port());
    for args in [vec!["-f", "a", "-d", "b"], vec![refused.as_str(), "-f", "a", "-d", "b"]] {
        assert_eq!(mda(&ours, &args), mda(&theirs, &args), "mda-lmtp {args:?}");
    }
}
