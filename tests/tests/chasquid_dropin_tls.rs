//! chasquid drop-in, part 2: TLS keys and hooks as a chasquid
//! installation has them. Keys as certbot leaves them (root-only, or of
//! group `chasquid`), TLS that never silently vanishes (at start or on
//! SIGHUP), and the post-data and alias-resolve hooks with chasquid's
//! environment and replies. Real peers: Python's `ssl` verifying the
//! server against a test CA (the dialog driver in `tambo_tests::dropin`),
//! a raw SMTP client, shell hooks.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tambo_tests::certs::TestCa;
use tambo_tests::dropin::{self, Dialog, Tls, auth_plain, base_conf, write_script};
use tambo_tests::{PASSWORD, RawClient, Server, TestEnv, USER, bin, crlf_lines, wait_for};

/// Replace `certs/` with one directory per `(name, host names)`, each
/// with a certificate of `ca`.
fn install_certs(env: &TestEnv, ca: &TestCa, certs: &[(&str, &[&str])]) {
    let dir = env.config_dir.join("certs");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, hosts) in certs {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("mkdir cert dir");
        let issued = ca.issue(hosts);
        std::fs::write(d.join("fullchain.pem"), issued.chain_pem()).expect("write chain");
        std::fs::write(d.join("privkey.pem"), issued.key_pem()).expect("write key");
    }
}

/// chasquid.conf for these tests: `env`'s listeners and its test MDA.
fn write_conf(env: &TestEnv) {
    std::fs::write(
        env.config_dir.join("chasquid.conf"),
        format!(
            "{}hostname: \"mx.example.com\"\nmail_delivery_agent_bin: \"{}\"\nmail_delivery_agent_args: \"%to%\"\n",
            base_conf(env),
            env.tmp.path().join("mda.sh").display()
        ),
    )
    .expect("write conf");
}

fn start(env: &TestEnv, envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(bin("tambod"));
    cmd.arg(format!("--config_dir={}", env.config_dir.display()))
        .envs(envs.iter().copied());
    let mut s = Server::spawn_command(cmd, env.tmp.path().join("tambod.log"), env.smtp_port);
    s.wait_serving();
    s
}

/// Run tambod until it exits by itself (within 20 s): (success, log).
fn run_to_exit(env: &TestEnv, name: &str) -> (bool, String) {
    let mut cmd = Command::new(bin("tambod"));
    cmd.arg(format!("--config_dir={}", env.config_dir.display()));
    let mut s = Server::spawn_command(cmd, env.tmp.path().join(name), env.smtp_port);
    let status = s
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("tambod did not stop by itself; log:\n{}", s.log()));
    (status.success(), s.log())
}

/// EHLO, STARTTLS (verified against `ca` for `sni`), EHLO, AUTH PLAIN as
/// alice on the submission port; or the same over implicit TLS.
fn tls_auth(env: &TestEnv, implicit: bool, sni: &str, ca: &Path) -> Dialog {
    let tls = Tls {
        implicit,
        sni: Some(sni),
        ca: Some(ca),
    };
    let auth = auth_plain(USER, PASSWORD);
    if implicit {
        dropin::dialog(env.submission_tls_port, tls, &["EHLO client.test", &auth, "QUIT"])
    } else {
        dropin::dialog(
            env.submission_port,
            tls,
            &[
                "EHLO client.test",
                "STARTTLS",
                "@TLS",
                "EHLO client.test",
                &auth,
                "QUIT",
            ],
        )
    }
}

fn assert_authenticated(d: &Dialog, what: &str) {
    assert!(
        d.replies.iter().any(|r| r.starts_with("TLS TLSv1.")) && d.replies.iter().any(|r| r.starts_with("235 ")),
        "{what}: {:#?}",
        d.replies
    );
}

/// 5. Private keys as certbot leaves them, readable by root only
///    (`root:root 0600`), or by group chasquid (`root:chasquid 0640`),
///    serve STARTTLS on the submission port and TLS on the
///    submission-over-TLS port, each chosen by SNI and verified by the
///    client against the test CA; tambod changes neither key's owner or
///    mode.
#[test]
fn certbot_style_private_keys_work() {
    if !dropin::need_root("keys owned by root and group chasquid") {
        return;
    }
    let env = TestEnv::new("");
    let ca = TestCa::new("tambo drop-in test CA");
    let ca_file = ca.write_pem(env.tmp.path());
    install_certs(
        &env,
        &ca,
        &[
            ("mx.example.com", &["mx.example.com"]),
            ("mail.example.net", &["mail.example.net"]),
        ],
    );
    write_conf(&env);
    env.fix_permissions();
    if nix::unistd::Group::from_name("chasquid")
        .expect("group lookup")
        .is_none()
    {
        let (ok, out) = tambo_tests::run(Command::new("groupadd").args(["--system", "chasquid"]));
        assert!(ok, "groupadd chasquid: {out}");
    }
    let chasquid = nix::unistd::Group::from_name("chasquid")
        .expect("group lookup")
        .expect("group chasquid");
    let root_key = env.config_dir.join("certs/mx.example.com/privkey.pem");
    let group_key = env.config_dir.join("certs/mail.example.net/privkey.pem");
    for (key, gid, mode) in [(&root_key, 0, 0o600), (&group_key, chasquid.gid.as_raw(), 0o640)] {
        std::os::unix::fs::lchown(key, Some(0), Some(gid)).expect("chown key");
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(mode)).expect("chmod key");
    }
    let _server = start(&env, &[]);
    for sni in ["mx.example.com", "mail.example.net"] {
        for implicit in [false, true] {
            let d = tls_auth(&env, implicit, sni, &ca_file);
            assert_authenticated(&d, &format!("{sni}, implicit TLS {implicit}"));
        }
    }
    for (key, gid, mode) in [(&root_key, 0, 0o600), (&group_key, chasquid.gid.as_raw(), 0o640)] {
        let md = std::fs::metadata(key).expect("stat key");
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (0, gid, mode),
            "{} unchanged",
            key.display()
        );
    }
}

/// A private key file that does not parse.
const BROKEN_KEY: &str = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";

/// 6. TLS never vanishes silently: a broken privkey.pem stops tambod at
///    start naming the file; a certs/ without a usable pair stops it
///    with chasquid's "At least one valid certificate is needed"; a
///    SIGHUP after the key broke keeps the loaded certificate serving
///    STARTTLS, and the log says why.
#[test]
fn tls_never_vanishes() {
    let env = TestEnv::new("");
    let ca = TestCa::new("tambo drop-in test CA");
    let ca_file = ca.write_pem(env.tmp.path());
    install_certs(&env, &ca, &[("mx.example.com", &["mx.example.com"])]);
    write_conf(&env);
    env.fix_permissions();
    let key = env.config_dir.join("certs/mx.example.com/privkey.pem");
    let good_key = std::fs::read(&key).expect("read key");

    std::fs::write(&key, BROKEN_KEY).expect("break key");
    let (ok, log) = run_to_exit(&env, "broken-key.log");
    assert!(!ok, "{log}");
    let named = key.display().to_string();
    assert!(
        log.lines().any(|l| l.contains("tambod: ") && l.contains(&named)),
        "the start error names {named}:\n{log}"
    );

    // No usable pair: a directory with a chain but no key.
    std::fs::remove_file(&key).expect("remove key");
    let (ok, log) = run_to_exit(&env, "no-pair.log");
    assert!(!ok, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("tambod: ") && l.contains("At least one valid certificate is needed")),
        "{log}"
    );

    std::fs::write(&key, &good_key).expect("restore key");
    env.fix_permissions();
    let server = start(&env, &[]);
    assert_authenticated(&tls_auth(&env, false, "mx.example.com", &ca_file), "before SIGHUP");
    std::fs::write(&key, BROKEN_KEY).expect("break key");
    env.fix_permissions();
    server.signal(Signal::SIGHUP);
    wait_for(Duration::from_secs(10), "the reload's complaint about the key", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("kept its old state on reload") && l.contains(&named))
    });
    for implicit in [false, true] {
        assert_authenticated(
            &tls_auth(&env, implicit, "mx.example.com", &ca_file),
            &format!("after SIGHUP with a broken key, implicit TLS {implicit}"),
        );
    }
}

/// The post-data hook: records its environment (`env-N`) and input
/// (`stdin-N`) in `out/`, then refuses for good mail to reject@, defers
/// mail to defer@ (each printing a first line, then the reply's text),
/// and adds a header to the rest.
const POST_DATA: &str = r#"#!/bin/sh
n=$(date +%s%N)
env > "OUT/env-$n"
cat > "OUT/stdin-$n"
case "$RCPT_TO" in
  *reject@*) echo "a first line the client never sees"; echo "5.7.1 rejected: policy says no"; exit 20;;
  *defer@*) echo "something"; echo "4.7.1 greylisted, come back in 5 minutes"; exit 1;;
esac
echo "X-Hook-Seen: yes"
echo "X-Hook-Rcpt: $RCPT_TO"
"#;

/// The environment of the hook run whose input contains `marker`.
fn hook_env(env: &TestEnv, marker: &str) -> BTreeMap<String, String> {
    let mut found = None;
    wait_for(
        Duration::from_secs(10),
        &format!("the hook's record of {marker}"),
        || {
            for e in std::fs::read_dir(&env.out_dir).expect("out").flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name.strip_prefix("stdin-")
                    && std::fs::read_to_string(e.path()).unwrap_or_default().contains(marker)
                {
                    found = Some(env.out_dir.join(format!("env-{n}")));
                    return true;
                }
            }
            false
        },
    );
    let text = std::fs::read_to_string(found.expect("found")).expect("env file");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Send a message on the smtp port without AUTH; the final reply.
fn send_plain(env: &TestEnv, rcpt: &str, marker: &str) -> String {
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@remote.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(crlf_lines(&format!("Subject: {marker}\n\n{marker}\n")).as_bytes());
    let r = c.cmd(".");
    c.cmd("QUIT");
    r.trim_end().to_string()
}

/// 8. The hooks as chasquid runs them: the post-data hook gets
///    `REMOTE_ADDR` as ip:port, `SPF_PASS=0` for an authenticated
///    session, `EHLO_DOMAIN` sanitised (the raw name in
///    `EHLO_DOMAIN_RAW`), and chasquid's other variables; its header
///    lines are added; exit 20 and other failures reply 554 and 451 with
///    its last line as it printed it. The alias-resolve hook sees
///    tambod's environment.
#[test]
fn hooks_get_chasquids_environment_and_replies() {
    let env = TestEnv::new("");
    write_conf(&env);
    let hooks = env.config_dir.join("hooks");
    std::fs::create_dir_all(&hooks).expect("mkdir hooks");
    let out = env.out_dir.display().to_string();
    write_script(&hooks.join("post-data"), &POST_DATA.replace("OUT", &out));
    write_script(
        &hooks.join("alias-resolve"),
        &format!("#!/bin/sh\nenv > '{out}/alias-resolve-env'\n"),
    );
    env.set_aliases("reject: alice\ndefer: alice\n");
    let server = start(&env, &[("TAMBO_TEST_MARK", "from-tambods-environment")]);

    // Authenticated, over STARTTLS, with an EHLO name that needs cleaning.
    let msg = "@RAW Subject: hook-auth\r\n\r\nhook-auth body\r\n.\r\n";
    let d = dropin::dialog(
        env.submission_port,
        Tls::default(),
        &[
            "EHLO my_host.example",
            "STARTTLS",
            "@TLS",
            "EHLO my_host.example",
            &auth_plain(USER, PASSWORD),
            "MAIL FROM:<alice@example.com>",
            "RCPT TO:<bob@example.com>",
            "DATA",
            msg,
            "QUIT",
        ],
    );
    let data = d
        .replies
        .iter()
        .position(|r| r.starts_with("354"))
        .expect("354 to DATA");
    assert!(d.replies[data + 1].starts_with("250"), "{:#?}", d.replies);
    let e = hook_env(&env, "hook-auth body");
    let want = [
        ("REMOTE_ADDR", format!("127.0.0.1:{}", d.local_port)),
        ("SPF_PASS", "0".to_string()),
        ("AUTH_AS", USER.to_string()),
        ("ON_TLS", "1".to_string()),
        ("EHLO_DOMAIN", "myhost.example".to_string()),
        ("EHLO_DOMAIN_RAW", "my_host.example".to_string()),
        ("MAIL_FROM", USER.to_string()),
        ("RCPT_TO", "bob@example.com".to_string()),
        ("FROM_LOCAL_DOMAIN", "1".to_string()),
        ("PWD", env.config_dir.display().to_string()),
    ];
    for (k, v) in &want {
        assert_eq!(e.get(*k), Some(v), "{k} in the post-data hook's environment: {e:#?}");
    }
    assert!(
        !e.contains_key("TAMBO_TEST_MARK"),
        "the post-data hook gets chasquid's variables only: {e:#?}"
    );
    let got = env.wait_delivered("bob@example.com", "hook-auth body");
    assert!(
        got.contains("X-Hook-Seen: yes\r\n") || got.contains("X-Hook-Seen: yes\n"),
        "{got}"
    );

    // The hook's refusals: its last line, as it printed it.
    assert_eq!(
        send_plain(&env, "reject@example.com", "hook-reject"),
        "554 5.7.1 rejected: policy says no"
    );
    assert_eq!(
        send_plain(&env, "defer@example.com", "hook-defer"),
        "451 4.7.1 greylisted, come back in 5 minutes"
    );
    let e = hook_env(&env, "hook-reject");
    assert_eq!(e.get("SPF_PASS").map(String::as_str), Some("0"));
    assert_eq!(e.get("AUTH_AS").map(String::as_str), Some(""));
    assert_eq!(e.get("ON_TLS").map(String::as_str), Some("0"));

    let mut alias_env = String::new();
    wait_for(Duration::from_secs(10), "the alias-resolve hook's record", || {
        alias_env = std::fs::read_to_string(env.out_dir.join("alias-resolve-env")).unwrap_or_default();
        !alias_env.is_empty()
    });
    assert!(
        alias_env
            .lines()
            .any(|l| l == "TAMBO_TEST_MARK=from-tambods-environment"),
        "the alias-resolve hook sees tambod's environment:\n{alias_env}"
    );
    drop(server);
}
