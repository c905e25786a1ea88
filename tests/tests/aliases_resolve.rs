//! `tambo aliases-resolve` asks the running server, through the control
//! socket, what an address resolves to, and prints it as chasquid-util
//! does (`(email)  ADDR`, `(pipe)  CMD`, `(forward)  ADDR`); `-v` adds
//! tambo's route.

use std::process::Command;

use tambo_tests::*;

fn resolve(env: &TestEnv, address: &str) -> (bool, String) {
    run(Command::new(bin("tambo")).args(["-C", env.config_dir.to_str().expect("utf8"), "aliases-resolve", address]))
}

fn resolve_verbose(env: &TestEnv, address: &str) -> (bool, String) {
    run(Command::new(bin("tambo")).args([
        "-C",
        env.config_dir.to_str().expect("utf8"),
        "-v",
        "aliases-resolve",
        address,
    ]))
}

#[test]
fn aliases_resolve_shows_each_final_recipient_and_its_kind() {
    let env = TestEnv::new("");
    std::fs::write(
        env.config_dir.join("domains/example.com/aliases"),
        "postmaster: alice, carol@remote.test\n\
         sales: | /bin/cat -u\n\
         fwd: dave@remote.test via mx1.remote.test/mx2.remote.test\n",
    )
    .expect("write aliases");
    env.fix_permissions();
    let _server = env.start();

    let (ok, out) = resolve(&env, "postmaster@example.com");
    assert!(ok, "{out}");
    assert_eq!(out, "(email)  alice@example.com\n(email)  carol@remote.test\n");
    let (ok, out) = resolve_verbose(&env, "postmaster@example.com");
    assert!(ok, "{out}");
    assert!(out.contains("(email)  alice@example.com  [local mailbox]\n"), "{out}");
    assert!(out.contains("(email)  carol@remote.test  [remote (MX)]\n"), "{out}");

    let (ok, out) = resolve(&env, "Sales@Example.com");
    assert!(ok, "{out}");
    assert_eq!(out, "(pipe)  /bin/cat -u\n");

    let (ok, out) = resolve(&env, "fwd@example.com");
    assert!(ok, "{out}");
    assert_eq!(out, "(forward)  dave@remote.test\n");
    let (ok, out) = resolve_verbose(&env, "fwd@example.com");
    assert!(ok, "{out}");
    assert!(
        out.contains("(forward)  dave@remote.test  [remote via mx1.remote.test/mx2.remote.test]"),
        "{out}"
    );

    let (ok, out) = resolve(&env, "bob+tag@example.com");
    assert!(ok, "{out}");
    assert_eq!(out, "(email)  bob@example.com\n");

    let (ok, out) = resolve(&env, "nobody@example.com");
    assert!(!ok, "an unknown address is an error: {out}");
    assert!(out.starts_with("Error resolving: "), "{out}");
    assert!(out.contains("nobody@example.com"), "{out}");
}

#[test]
fn aliases_resolve_says_when_the_server_is_not_running() {
    let env = TestEnv::new("");
    let (ok, out) = resolve(&env, "alice@example.com");
    assert!(!ok);
    assert!(out.starts_with("Error resolving: "), "{out}");
    assert!(out.contains("not running"), "{out}");
}
