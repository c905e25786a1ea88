//! `dovecot-auth-cli PREFIX exists|auth ...` (tools crate, on authd's
//! Dovecot client) against a real Dovecot auth server: chasquid's
//! answers (`yes`, `no: <nil>`, `no: ...`) and exit code (always 0).

use std::process::Command;

use tambo_tests::*;

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("dovecot-auth-cli"))
        .args(args)
        .output()
        .expect("dovecot-auth-cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn answers_from_a_real_dovecot() {
    if !require("dovecot", "dovecot-core") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let who = dovecot::accounts();
    let owner = if is_root() {
        "root".to_string()
    } else {
        who.login.clone()
    };
    let dir = tmp.path().join("dovecot");
    let passwd = format!(
        "carol@example.com:{{PLAIN}}carol-pw:{}:{}::{}/carol::\n",
        who.uid,
        who.gid,
        dir.display()
    );
    let server = dovecot::start_auth(&dir, &owner, &passwd);
    let prefix = server.dir.join("run/auth");
    let p = prefix.to_str().expect("utf8");
    for (args, expected) in [
        (vec![p, "exists", "carol@example.com"], "yes\n"),
        (vec![p, "exists", "nobody@example.com"], "no: <nil>\n"),
        (vec![p, "auth", "carol@example.com", "carol-pw"], "yes\n"),
        (vec![p, "auth", "carol@example.com", "wrong"], "no: <nil>\n"),
        (vec![p, "auth", "nobody@example.com", "carol-pw"], "no: <nil>\n"),
        (vec![p, "something", "else"], "no: unknown subcommand \"something\"\n"),
    ] {
        let (code, out, _) = cli(&args);
        assert_eq!((code, out.as_str()), (0, expected), "{args:?}\n{}", server.log());
    }
    let missing = tmp.path().join("missing");
    let m = missing.to_str().expect("utf8");
    for (cmd, socket) in [("exists", "userdb"), ("auth", "client")] {
        let (code, out, _) = cli(&[m, cmd, "carol@example.com", "pw"]);
        assert_eq!(code, 0);
        assert_eq!(
            out,
            format!("no: dial unix {m}-{socket}: connect: no such file or directory\n")
        );
    }
    let (code, out, err) = cli(&["lalala"]);
    assert_eq!((code, out.as_str()), (0, "no: invalid arguments\n"));
    assert!(
        err.contains("dovecot-auth-cli <path prefix> exists user@domain"),
        "{err}"
    );
}
