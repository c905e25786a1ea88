//! Issue 7 item 5: `dovecot_auth`: users known only to a real Dovecot
//! receive mail and authenticate on submission.

use std::path::{Path, PathBuf};
use std::process::Command;

use tambo_tests::*;

/// A Dovecot auth server only (no mail protocols) in a temporary
/// directory, with its auth-userdb and auth-client sockets owned by
/// local users (as root, authd runs as tambo-auth).
struct Dovecot {
    server: tambo_tests::dovecot::Dovecot,
}

impl Dovecot {
    fn start(dir: &Path) -> Dovecot {
        let who = tambo_tests::dovecot::accounts();
        // The sockets belong to authd's user, mode 0600, as an operator
        // would set them up. (Mode 0666 is refused by Dovecot for userdb
        // lookups of other users' accounts.)
        let owner = if is_root() {
            "tambo-auth".to_string()
        } else {
            who.login.clone()
        };
        let specific = format!(
            "protocols = none\n\
             ssl = no\n\
             auth_failure_delay = 0\n\
             auth_mechanisms = plain\n\
             service auth {{\n\
               unix_listener auth-userdb {{\n    mode = 0600\n    user = {owner}\n  }}\n\
               unix_listener auth-client {{\n    mode = 0600\n    user = {owner}\n  }}\n\
             }}\n"
        );
        // carol's uid is not root's (Dovecot refuses uid 0 users).
        let passwd = format!(
            "carol@example.com:{{PLAIN}}carol-pw:{}:{}::{}/carol::\n",
            who.uid,
            who.gid,
            dir.display()
        );
        let server = tambo_tests::dovecot::Dovecot::start(dir, &specific, &passwd, |d| {
            d.join("run/auth-userdb").exists() && d.join("run/auth-client").exists()
        });
        Dovecot { server }
    }

    fn userdb(&self) -> PathBuf {
        self.server.dir.join("run/auth-userdb")
    }

    fn client(&self) -> PathBuf {
        self.server.dir.join("run/auth-client")
    }

    fn log(&self) -> String {
        self.server.log()
    }
}

fn submit(env: &TestEnv, user: &str, password: &str, marker: &str) -> (bool, String) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", env.submission_port), "--tls"])
        .args(["--auth", "PLAIN", "--auth-user", user, "--auth-password", password])
        .args(["--from", user, "--to", "bob@example.com", "--body", marker])
        .args(["--timeout", "30"]))
}

#[test]
fn users_known_only_to_dovecot() {
    if !have("dovecot") || !have("swaks") {
        panic!("dovecot or swaks is missing: scripts/test installs dovecot-core and swaks");
    }
    let env = TestEnv::new("");
    let dovecot = Dovecot::start(&env.tmp.path().join("dovecot"));
    env.write_conf(&format!(
        "dovecot_auth: true\ndovecot_userdb_path: \"{}\"\ndovecot_client_path: \"{}\"",
        dovecot.userdb().display(),
        dovecot.client().display()
    ));
    env.fix_permissions();
    let _server = env.start();

    // carol is in no users file: Dovecot knows her.
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<x@remote.example>").starts_with("250"));
    let r = c.cmd("RCPT TO:<carol@example.com>");
    assert!(r.starts_with("250"), "{r}\n{}", dovecot.log());
    let r = c.cmd("RCPT TO:<dave@example.com>");
    assert!(r.starts_with("550 5.1.1"), "{r}");
    // The users file still counts.
    assert!(c.cmd("RCPT TO:<alice@example.com>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: hi\r\n\r\nfor carol via dovecot\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    env.wait_delivered("carol@example.com", "for carol via dovecot");

    // carol authenticates with Dovecot's password.
    let (ok, out) = submit(&env, "carol@example.com", "carol-pw", "sent by carol");
    assert!(ok, "{out}\n{}", dovecot.log());
    assert!(out.contains("235"), "{out}");
    env.wait_delivered("bob@example.com", "sent by carol");
    // A wrong password, and a user nobody knows.
    let (ok, out) = submit(&env, "carol@example.com", "wrong", "nope");
    assert!(!ok);
    assert!(out.contains("535"), "{out}");
    let (ok, out) = submit(&env, "dave@example.com", "carol-pw", "nope");
    assert!(!ok);
    assert!(out.contains("535"), "{out}");
    // The users file still authenticates alice.
    let (ok, out) = submit(&env, USER, PASSWORD, "sent by alice");
    assert!(ok, "{out}");
}
