//! Issue 3, TLS and AUTH: STARTTLS and implicit TLS with the private keys
//! in authd only, AUTH PLAIN/LOGIN over TLS, relay rules, SNI, reload,
//! STARTTLS command injection, and the privileges around the keys. Real
//! clients: msmtp, swaks, Python's smtplib and ssl.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tambo_tests::*;

/// A TLS dialog driver in Python: connects (with implicit TLS or not),
/// sends each step as a line (`@TLS` starts the handshake instead), and
/// prints each reply on one line (continuation lines joined by ` | `),
/// `<EOF>` when the server closed.
const DIALOG_PY: &str = r#"
import socket, ssl, sys
port, implicit = int(sys.argv[1]), sys.argv[2] == "implicit"
steps = sys.argv[3:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", port), timeout=20)
if implicit:
    s = ctx.wrap_socket(s, server_hostname="mx.example.com")
f = s.makefile("rb", buffering=0)
def reply():
    lines = []
    while True:
        l = f.readline()
        if not l:
            return " | ".join(lines) if lines else "<EOF>"
        l = l.decode().rstrip("\r\n")
        lines.append(l)
        if len(l) < 4 or l[3] != "-":
            return " | ".join(lines)
print(reply(), flush=True)
for step in steps:
    if step == "@TLS":
        s = ctx.wrap_socket(s, server_hostname="mx.example.com")
        f = s.makefile("rb", buffering=0)
        print("TLS " + s.version() + " " + s.cipher()[0], flush=True)
        continue
    if step.startswith("@RAW "):
        s.sendall(step[5:].encode().decode("unicode_escape").encode("latin-1"))
    else:
        s.sendall(step.encode() + b"\r\n")
    r = reply()
    print(r, flush=True)
    if r == "<EOF>":
        break
"#;

/// Connects, optionally via STARTTLS, with a given SNI and TLS version cap,
/// and prints "MATCH" when the server's certificate is the first one of the
/// PEM file given, then the TLS version.
const PEEK_PY: &str = r#"
import socket, ssl, sys
port, mode, sni, maxver, pem = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if maxver == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
s = socket.create_connection(("127.0.0.1", port), timeout=20)
f = s.makefile("rb", buffering=0)
def reply():
    while True:
        l = f.readline().decode()
        if len(l) < 4 or l[3] != "-":
            return l
if mode == "starttls":
    reply()
    s.sendall(b"EHLO peek.example\r\n"); reply()
    s.sendall(b"STARTTLS\r\n"); assert reply().startswith("220")
t = ctx.wrap_socket(s, server_hostname=(sni or None))
der = t.getpeercert(binary_form=True)
want = ssl.PEM_cert_to_DER_cert(open(pem).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
print("MATCH" if der == want else "MISMATCH", t.version(), t.cipher()[0])
"#;

/// Run a dialog; returns the replies, one per line.
fn dialog(port: u16, implicit: bool, steps: &[&str]) -> Vec<String> {
    let (ok, out) = run(Command::new("python3")
        .args([
            "-c",
            DIALOG_PY,
            &port.to_string(),
            if implicit { "implicit" } else { "plain" },
        ])
        .args(steps));
    assert!(ok, "dialog failed:\n{out}");
    out.lines().map(str::to_string).collect()
}

/// Assert each reply starts with the expected prefix.
fn expect(replies: &[String], want: &[&str]) {
    assert_eq!(replies.len(), want.len(), "replies: {replies:#?}");
    for (r, w) in replies.iter().zip(want) {
        assert!(r.starts_with(w), "expected {w:?}, got {r:?}; all: {replies:#?}");
    }
}

fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "30"])
        .args(args))
}

/// swaks with `tls` ("-tls" for STARTTLS, or "--tls-on-connect") and AUTH
/// `mech` as [`USER`] with `password`, then `args`.
fn swaks_auth(port: u16, tls: &str, mech: &str, password: &str, args: &[&str]) -> (bool, String) {
    let auth = [tls, "--auth", mech, "--auth-user", USER, "--auth-password", password];
    swaks(port, &[&auth[..], args].concat())
}

fn cert_path(env: &TestEnv, name: &str) -> String {
    env.config_dir
        .join("certs")
        .join(name)
        .join("fullchain.pem")
        .display()
        .to_string()
}

/// Send a message with msmtp; `starttls` false means implicit TLS.
fn msmtp(env: &TestEnv, port: u16, starttls: bool, auth: &str, to: &str, body: &str) -> (bool, String) {
    let conf = env.tmp.path().join(format!("msmtprc-{port}-{auth}"));
    std::fs::write(
        &conf,
        format!(
            "account test\nhost 127.0.0.1\nport {port}\ntls on\ntls_starttls {}\n\
             tls_trust_file {}\ntls_host_override mx.example.com\nauth {auth}\n\
             user {USER}\npassword {PASSWORD}\nfrom {USER}\nlogfile -\n",
            if starttls { "on" } else { "off" },
            cert_path(env, "mx.example.com"),
        ),
    )
    .expect("write msmtprc");
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let msg = format!("From: {USER}\r\nTo: {to}\r\nSubject: msmtp\r\n\r\n{body}\r\n");
    let out = run_with_input(
        Command::new("msmtp").args(["-C", conf.to_str().expect("utf8"), "-a", "test", "--", to]),
        msg.as_bytes(),
    );
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn msmtp_starttls_and_implicit_tls_with_plain_and_login() {
    let env = TestEnv::new("");
    let _server = env.start();
    let (ok, out) = msmtp(
        &env,
        env.submission_port,
        true,
        "plain",
        "bob@example.com",
        "msmtp plain 587",
    );
    assert!(ok, "{out}");
    let got = env.wait_delivered("bob@example.com", "msmtp plain 587");
    assert!(got.contains("with ESMTPSA id"), "{got}");
    assert!(got.contains("(over TLSv1.3, TLS13_"), "{got}");
    // Authenticated submissions do not show the client's address.
    assert!(!got.contains("[127.0.0.1]"), "{got}");

    let (ok, out) = msmtp(
        &env,
        env.submission_port,
        true,
        "login",
        "bob@example.com",
        "msmtp login 587",
    );
    assert!(ok, "{out}");
    env.wait_delivered("bob@example.com", "msmtp login 587");

    let (ok, out) = msmtp(
        &env,
        env.submission_tls_port,
        false,
        "plain",
        "bob@example.com",
        "msmtp 465",
    );
    assert!(ok, "{out}");
    let got = env.wait_delivered("bob@example.com", "msmtp 465");
    assert!(got.contains("with ESMTPSA id"), "{got}");

    // STARTTLS and AUTH on the smtp port too.
    let (ok, out) = msmtp(&env, env.smtp_port, true, "login", "bob@example.com", "msmtp login 25");
    assert!(ok, "{out}");
    env.wait_delivered("bob@example.com", "msmtp login 25");
}

#[test]
fn swaks_tls_auth_bad_password_and_relay() {
    let env = TestEnv::new("");
    let _server = env.start();
    let sub = env.submission_port;
    // Good password, PLAIN and LOGIN, to a local and to a remote recipient.
    for mech in ["PLAIN", "LOGIN"] {
        let (ok, out) = swaks_auth(
            sub,
            "-tls",
            mech,
            PASSWORD,
            &[
                "--from",
                "anything@elsewhere.example",
                "--to",
                "bob@example.com",
                "--body",
                &format!("swaks {mech}"),
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains("235 2.7.0"), "{out}");
        env.wait_delivered("bob@example.com", &format!("swaks {mech}"));
    }
    let (ok, out) = swaks_auth(sub, "-tls", "PLAIN", PASSWORD, &["--to", "someone@remote.example"]);
    assert!(ok, "authenticated relay: {out}");
    assert!(out.contains("250 2.0.0 Ok: queued as"), "{out}");

    // Bad password.
    let (ok, out) = swaks_auth(sub, "-tls", "PLAIN", "wrong", &["--to", "bob@example.com"]);
    assert!(!ok);
    assert!(out.contains("535 5.7.8"), "{out}");

    // Relay without AUTH: refused on the smtp port (at RCPT), and on
    // submission MAIL itself needs AUTH.
    let (ok, out) = swaks(env.smtp_port, &["-tls", "--to", "someone@remote.example"]);
    assert!(!ok);
    assert!(out.contains("550 5.7.1"), "{out}");
    let (ok, out) = swaks(sub, &["-tls", "--to", "bob@example.com"]);
    assert!(!ok);
    assert!(out.contains("530 5.7.0"), "{out}");

    // Unauthenticated TLS mail on port 25: ESMTPS, with the client's IP.
    let (ok, out) = swaks(env.smtp_port, &["-tls", "--to", USER, "--body", "plain starttls"]);
    assert!(ok, "{out}");
    let got = env.wait_delivered(USER, "plain starttls");
    assert!(got.contains("with ESMTPS id"), "{got}");
    assert!(got.contains("[127.0.0.1]"), "{got}");
}

#[test]
fn smtplib_starttls_login_and_ssl() {
    let env = TestEnv::new("");
    let _server = env.start();
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(cafile={ca:?})
s = smtplib.SMTP("localhost", {sub}, timeout=30)
s.starttls(context=ctx)
s.login("{USER}", "{PASSWORD}")
s.sendmail("{USER}", ["bob@example.com"], b"Subject: py\r\n\r\npython plain\r\n")
s.quit()
s = smtplib.SMTP("localhost", {sub}, timeout=30)
s.starttls(context=ctx)
s.ehlo()
s.user, s.password = "{USER}", "{PASSWORD}"
code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
assert code == 235, code
s.sendmail("{USER}", ["bob@example.com"], b"Subject: py\r\n\r\npython login\r\n")
s.quit()
s = smtplib.SMTP_SSL("localhost", {tls}, context=ctx, timeout=30)
s.login("{USER}", "{PASSWORD}")
s.sendmail("{USER}", ["bob@example.com"], b"Subject: py\r\n\r\npython ssl\r\n")
s.quit()
try:
    s = smtplib.SMTP_SSL("localhost", {tls}, context=ctx, timeout=30)
    s.login("{USER}", "nope")
    raise SystemExit("bad password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
"#,
        ca = cert_path(&env, "mx.example.com"),
        sub = env.submission_port,
        tls = env.submission_tls_port,
    );
    let (ok, out) = run(Command::new("python3").args(["-c", &script]));
    assert!(ok, "{out}");
    env.wait_delivered("bob@example.com", "python plain");
    env.wait_delivered("bob@example.com", "python login");
    env.wait_delivered("bob@example.com", "python ssl");
}

#[test]
fn auth_rules_in_dialogs() {
    let env = TestEnv::new("");
    // A user of the server's hostname domain, for bare user names.
    std::fs::create_dir_all(env.config_dir.join("domains/mx.example.com")).expect("mkdir");
    let (ok, out) = run(Command::new(bin("tambo")).args([
        "-C",
        env.config_dir.to_str().expect("utf8"),
        "user-add",
        "carol@mx.example.com",
        "--password",
        "carol-pw",
    ]));
    assert!(ok, "{out}");
    env.fix_permissions();
    let _server = env.start();

    // Port 25: no AUTH before TLS; STARTTLS once; failures end with 421.
    let user = base64(USER.as_bytes());
    let r = dialog(
        env.smtp_port,
        false,
        &[
            "EHLO client.example",
            "AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldC1wdw==",
            "STARTTLS",
            "@TLS",
            "EHLO client.example",
            "STARTTLS",
            "MAIL FROM:<x@remote.example>",
            "RCPT TO:<someone@remote.example>",
            "RSET",
            "AUTH LOGIN",
            &user,
            "=",
            "AUTH PLAIN",
            "*",
            "AUTH CRAM-MD5",
            "AUTH PLAIN !!!",
            "NOOP",
        ],
    );
    expect(
        &r,
        &[
            "220 mx.example.com",
            "250-mx.example.com",
            "538 5.7.11",
            "220 2.0.0",
            "TLS TLSv1.3",
            "250-mx.example.com",
            "503 5.5.1",
            "250 2.1.0",
            "550 5.7.1",
            "250",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8", // `=`: the empty password
            "334 ",
            "501 5.7.0", // `*`: cancelled
            "504 5.5.4",
            "421 4.7.0", // third failed AUTH
            "<EOF>",
        ],
    );
    assert!(r[1].contains("STARTTLS") && !r[1].contains("AUTH"), "{}", r[1]);
    assert!(
        r[5].contains("AUTH PLAIN LOGIN") && !r[5].contains("STARTTLS"),
        "{}",
        r[5]
    );

    // Submission: MAIL needs AUTH; authzid must match; any MAIL FROM and
    // remote recipients once authenticated.
    let mismatch = base64(format!("bob@example.com\0{USER}\0{PASSWORD}").as_bytes());
    let r = dialog(
        env.submission_port,
        false,
        &[
            "EHLO client.example",
            "MAIL FROM:<x@remote.example>",
            "STARTTLS",
            "@TLS",
            "EHLO client.example",
            "MAIL FROM:<x@remote.example>",
            &format!("AUTH PLAIN {mismatch}"),
            &format!("AUTH LOGIN {user}"),
            &base64(PASSWORD.as_bytes()),
            "AUTH PLAIN",
            "MAIL FROM:<anyone@elsewhere.example>",
            "RCPT TO:<friend@remote.example>",
            "RCPT TO:<bob@example.com>",
            "DATA",
            "Subject: dialog\r\n\r\nsubmission dialog\r\n.",
            "QUIT",
        ],
    );
    expect(
        &r,
        &[
            "220 mx.example.com",
            "250-mx.example.com",
            "530 5.7.0",
            "220 2.0.0",
            "TLS TLSv1.3",
            "250-mx.example.com",
            "530 5.7.0",
            "535 5.7.8",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0",
            "503 5.5.1",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0 Ok: queued as",
            "221",
        ],
    );
    let got = env.wait_delivered("bob@example.com", "submission dialog");
    assert!(got.contains("with ESMTPSA id"), "{got}");

    // Implicit TLS: AUTH offered at once, no STARTTLS; a bare user name
    // is of the hostname's domain; an authzid equal to the login is fine
    // (one that differs from it is refused, as chasquid refuses it).
    let carol = base64(b"carol\0carol\0carol-pw");
    let r = dialog(
        env.submission_tls_port,
        true,
        &[
            "EHLO client.example",
            "STARTTLS",
            "MAIL FROM:<x@remote.example>",
            &format!("AUTH PLAIN {carol}"),
            "MAIL FROM:<carol@mx.example.com>",
            "QUIT",
        ],
    );
    expect(
        &r,
        &[
            "220 mx.example.com",
            "250-mx.example.com",
            "503 5.5.1",
            "530 5.7.0",
            "235 2.7.0",
            "250 2.1.0",
            "221",
        ],
    );
    assert!(
        r[1].contains("AUTH PLAIN LOGIN") && !r[1].contains("STARTTLS"),
        "{}",
        r[1]
    );
}

#[test]
fn throttling_after_repeated_failures() {
    let env = TestEnv::new("");
    let _server = env.start();
    // authd allows 10 failures per IP and per user in 10 minutes.
    for i in 0..10 {
        let (_, out) = swaks_auth(
            env.submission_tls_port,
            "--tls-on-connect",
            "PLAIN",
            &format!("bad{i}"),
            &["--to", "bob@example.com", "--quit-after", "AUTH"],
        );
        assert!(out.contains("535 5.7.8"), "{out}");
    }
    // Even the right password is refused for now.
    let (ok, out) = swaks_auth(
        env.submission_tls_port,
        "--tls-on-connect",
        "PLAIN",
        PASSWORD,
        &["--to", "bob@example.com", "--quit-after", "AUTH"],
    );
    assert!(!ok);
    assert!(out.contains("454 4.7.0"), "{out}");
}

#[test]
fn starttls_discards_pipelined_commands() {
    let env = TestEnv::new("");
    let _server = env.start();
    // STARTTLS with commands behind it in the same packet: none of them
    // may run, before or after the handshake.
    let r = dialog(
        env.smtp_port,
        false,
        &[
            "EHLO client.example",
            "@RAW STARTTLS\\r\\nHELP\\r\\nMAIL FROM:<evil@remote.example>\\r\\nRCPT TO:<alice@example.com>\\r\\n",
            "@TLS",
            "RCPT TO:<alice@example.com>",
            "MAIL FROM:<good@remote.example>",
            "EHLO client.example",
            "QUIT",
        ],
    );
    expect(
        &r,
        &[
            "220 mx.example.com",
            "250-mx.example.com",
            "220 2.0.0",
            "TLS TLSv1.3",
            // Neither the injected MAIL nor the old EHLO survive the
            // handshake: the session starts afresh.
            "503 5.5.1",
            "503 5.5.1",
            "250-mx.example.com",
            "221",
        ],
    );
}

/// Make a certificate directory with an RSA key (openssl), fullchain.pem
/// and privkey.pem given as symlinks to files elsewhere.
fn rsa_cert_with_symlinks(env: &TestEnv, name: &str) {
    let store = env.tmp.path().join(format!("store-{name}"));
    std::fs::create_dir_all(&store).expect("mkdir");
    let (ok, out) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        &format!("subjectAltName=DNS:{name}"),
        "-keyout",
        store.join("key.pem").to_str().expect("utf8"),
        "-out",
        store.join("cert.pem").to_str().expect("utf8"),
    ]));
    assert!(ok, "{out}");
    let dir = env.config_dir.join("certs").join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink(store.join("cert.pem"), dir.join("fullchain.pem")).expect("symlink");
    std::os::unix::fs::symlink(store.join("key.pem"), dir.join("privkey.pem")).expect("symlink");
}

fn peek(port: u16, starttls: bool, sni: &str, maxver: &str, pem: &str) -> String {
    let (ok, out) = run(Command::new("python3").args([
        "-c",
        PEEK_PY,
        &port.to_string(),
        if starttls { "starttls" } else { "implicit" },
        sni,
        maxver,
        pem,
    ]));
    assert!(ok, "{out}");
    out
}

#[test]
fn sni_tls12_rsa_symlinks_and_reload() {
    let env = TestEnv::new("");
    rsa_cert_with_symlinks(&env, "rsa.example");
    // A directory missing its key is skipped with a warning.
    std::fs::create_dir_all(env.config_dir.join("certs/incomplete.example")).expect("mkdir");
    std::fs::copy(
        cert_path(&env, "mx.example.com"),
        env.config_dir.join("certs/incomplete.example/fullchain.pem"),
    )
    .expect("copy");
    env.fix_permissions();
    let server = env.start();
    let mx = cert_path(&env, "mx.example.com");
    let rsa = cert_path(&env, "rsa.example");

    // No SNI: the first directory by name ("incomplete.example" is
    // skipped, "mx.example.com" < "rsa.example").
    for (port, starttls) in [(env.smtp_port, true), (env.submission_tls_port, false)] {
        for ver in ["1.3", "1.2"] {
            let out = peek(port, starttls, "", ver, &mx);
            assert!(out.starts_with(&format!("MATCH TLSv{ver}")), "{out}");
            let out = peek(port, starttls, "rsa.example", ver, &rsa);
            assert!(
                out.starts_with(&format!("MATCH TLSv{ver}")),
                "RSA over TLS {ver}: {out}"
            );
            let out = peek(port, starttls, "localhost", ver, &mx);
            assert!(out.starts_with("MATCH"), "by SAN: {out}");
        }
    }
    assert!(server.log().contains("incomplete.example: skipped"), "{}", server.log());

    // Replace the default certificate and reload: new handshakes get it.
    let dir = env.config_dir.join("certs/mx.example.com");
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.com".to_string()]).expect("rcgen");
    std::fs::write(dir.join("fullchain.pem"), cert.cert.pem()).expect("write");
    std::fs::remove_file(dir.join("privkey.pem")).expect("rm");
    std::fs::write(dir.join("privkey.pem"), cert.key_pair.serialize_pem()).expect("write");
    env.fix_permissions();
    // Until the reload, the old certificate is served.
    assert!(peek(env.smtp_port, true, "", "1.3", &mx).starts_with("MISMATCH"));
    server.signal(Signal::SIGHUP);
    let mut last = String::new();
    wait_for(Duration::from_secs(20), "the new certificate after SIGHUP", || {
        last = peek(env.submission_tls_port, false, "", "1.3", &mx);
        last.starts_with("MATCH")
    });
    // And the new key signs (both versions).
    assert!(peek(env.smtp_port, true, "", "1.2", &mx).starts_with("MATCH TLSv1.2"));
}

/// The uid of a process, from /proc.
fn proc_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("Uid line")
}

fn open_fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn private_keys_are_out_of_smtpd_reach() {
    if !tambo_tests::require_root("privilege separation") {
        return;
    }
    let env = TestEnv::new("");
    let key = env.config_dir.join("certs/mx.example.com/privkey.pem");
    let users = env.config_dir.join("domains/example.com/users");
    let server = env.start();
    // TLS works although only authd can read the key.
    let (ok, out) = swaks_auth(
        env.submission_port,
        "-tls",
        "PLAIN",
        PASSWORD,
        &["--to", "bob@example.com"],
    );
    assert!(ok, "{out}");

    let smtpd = server.worker_pid("smtpd");
    let authd = server.worker_pid("authd");
    let smtpd_uid = proc_uid(smtpd);
    let authd_uid = proc_uid(authd);
    let auth_user = nix::unistd::User::from_name("tambo-auth")
        .expect("lookup")
        .expect("tambo-auth");
    assert_ne!(smtpd_uid, 0);
    assert_ne!(smtpd_uid, authd_uid, "smtpd and authd run as different users");
    assert_eq!(authd_uid, auth_user.uid.as_raw());

    // The key: owned by tambo-auth, mode 0600.
    let meta = std::fs::metadata(&key).expect("key");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), auth_user.uid.as_raw());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // smtpd's user cannot read it, even outside the chroot.
    let smtpd_gid = std::fs::read_to_string(format!("/proc/{smtpd}/status"))
        .expect("status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("Gid:")
                .map(|g| g.split_whitespace().next().unwrap_or("").to_string())
        })
        .expect("Gid");
    let (ok, out) = run(Command::new("setpriv")
        .args([
            &format!("--reuid={smtpd_uid}"),
            &format!("--regid={smtpd_gid}"),
            "--clear-groups",
            "cat",
        ])
        .arg(&key));
    assert!(
        !ok && out.contains("Permission denied"),
        "smtpd's user read the key: {out}"
    );

    // smtpd is chrooted in the empty run_dir/smtpd-root: neither the key
    // nor the users file exists in its view of the file system.
    let root = std::fs::read_link(format!("/proc/{smtpd}/root")).expect("root link");
    assert_eq!(root, env.tmp.path().join("run/smtpd-root"));
    assert_eq!(
        std::fs::read_dir(&root).expect("chroot").count(),
        0,
        "the chroot is empty"
    );
    let authd_root = std::fs::read_link(format!("/proc/{authd}/root")).expect("root link");
    assert_eq!(authd_root, Path::new("/"));
    // And it has no file of the config dir open.
    let config_dir = env.config_dir.display().to_string();
    for fd in open_fds(smtpd) {
        assert!(
            !fd.contains("privkey") && !fd.contains(&config_dir),
            "smtpd has {fd} open"
        );
    }
    assert!(!open_fds(smtpd).iter().any(|f| f == &users.display().to_string()));
}

#[test]
fn tls_and_auth_recover_after_authd_is_killed() {
    let env = TestEnv::new("");
    let server = env.start();
    let (ok, out) = swaks_auth(
        env.submission_tls_port,
        "--tls-on-connect",
        "PLAIN",
        PASSWORD,
        &["--to", "bob@example.com"],
    );
    assert!(ok, "{out}");
    let old = server.worker_pid("authd");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill authd");
    wait_for(Duration::from_secs(20), "a new authd", || {
        server.workers().iter().any(|(n, p)| n == "authd" && *p != old)
    });
    // The new authd has a new certificate generation: smtpd fetches the
    // chains again and the handshakes it signs work.
    let mut last = String::new();
    wait_for(Duration::from_secs(20), "TLS and AUTH through the new authd", || {
        let (ok, out) = swaks_auth(
            env.submission_tls_port,
            "--tls-on-connect",
            "PLAIN",
            PASSWORD,
            &["--to", "bob@example.com", "--body", "after restart"],
        );
        last = out;
        ok
    });
    env.wait_delivered("bob@example.com", "after restart");
}
