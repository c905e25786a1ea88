//! The Debian package: built by `packaging/build-deb.sh` and inspected
//! with dpkg-deb everywhere; installed, run, reloaded and purged only as
//! root when `CI=true` or `TAMBO_TEST_DEB=1` (it changes the machine: it
//! refuses to touch an existing tambo installation, and restores the tambo
//! users the other tests need afterwards).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tambo_tests::{RawClient, bin, bin_dir, free_port, run, wait_for, workspace_root};

/// The system users postinst creates and purge removes.
const SYSTEM_USERS: [&str; 5] = [
    "tambo-smtpd",
    "tambo-auth",
    "tambo-queue",
    "tambo-deliver",
    "tambo-hook",
];

/// Build the package from the test binaries (debug profile, no new cargo
/// build) into `out`; returns its path.
fn build_deb(out: &Path) -> PathBuf {
    bin("tambod"); // builds the workspace once
    let profile = bin_dir().file_name().unwrap().to_string_lossy().into_owned();
    let target = bin_dir().parent().unwrap().to_path_buf();
    let (ok, text) = run(Command::new(workspace_root().join("packaging/build-deb.sh"))
        .env("NO_BUILD", "1")
        .env("PROFILE", &profile)
        .env("OUT", out)
        .env("COMPRESS", "gzip")
        .env("CARGO_TARGET_DIR", &target));
    assert!(ok, "build-deb.sh failed:\n{text}");
    let deb = text.lines().rev().find(|l| l.ends_with(".deb")).expect("deb path");
    let deb = PathBuf::from(deb.trim());
    assert!(deb.is_file(), "{}", deb.display());
    deb
}

#[test]
fn deb_has_the_expected_layout() {
    if !tambo_tests::require("dpkg-deb", "dpkg") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let (ok, list) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "{list}");
    for path in [
        "./usr/sbin/tambod",
        "./usr/bin/tambo",
        "./usr/lib/tambo/tambo-smtpd",
        "./usr/lib/tambo/tambo-authd",
        "./usr/lib/tambo/tambo-queued",
        "./usr/lib/tambo/tambo-deliverd",
        "./usr/lib/tambo/tambo-hookd",
        "./usr/lib/tambo/tambo-watcher",
        "./usr/lib/tambo/mailq",
        "./usr/lib/tambo/sendmail",
        "./usr/lib/tambo/chasquid-util",
        "./usr/lib/tambo/mda-lmtp",
        "./usr/lib/tambo/smtp-check",
        "./usr/lib/tambo/dovecot-auth-cli",
        "./etc/tambo/chasquid.conf",
        "./etc/tambo/domains/",
        "./etc/tambo/certs/",
        "./etc/logrotate.d/tambo",
        "./etc/fail2ban/filter.d/tambo.conf",
        "./lib/systemd/system/tambo.service",
        "./lib/systemd/system/tambo-smtp.socket",
        "./lib/systemd/system/tambo-submission.socket",
        "./lib/systemd/system/tambo-submissions.socket",
    ] {
        assert!(
            list.lines().any(|l| l.split_whitespace().nth(5) == Some(path)),
            "{path} missing from the package:\n{list}"
        );
    }
    // Never another MTA's files, nor Debian's chasquid's.
    for path in [
        "./usr/sbin/sendmail",
        "./usr/bin/mailq",
        "./usr/lib/sendmail",
        "./usr/bin/chasquid-util",
        "./usr/bin/mda-lmtp",
        "./usr/bin/smtp-check",
        "./usr/bin/dovecot-auth-cli",
    ] {
        assert!(
            !list.contains(&format!(" {path}")),
            "{path} must not be shipped:\n{list}"
        );
    }
    let (ok, info) = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert!(ok, "{info}");
    assert!(info.contains("Package: tambo"), "{info}");
    assert!(
        !info.contains("Conflicts:") && !info.contains("Provides: mail-transport-agent"),
        "{info}"
    );
    let (ok, conffiles) = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"));
    assert!(ok, "{conffiles}");
    assert!(conffiles.contains("/etc/tambo/chasquid.conf") && conffiles.contains("/etc/logrotate.d/tambo"));
    assert!(conffiles.contains("/etc/fail2ban/filter.d/tambo.conf"), "{conffiles}");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(info.contains(script), "{script} missing:\n{info}");
    }

    // The shipped example configuration is valid.
    let conf = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace_root().join("packaging/chasquid.conf.example"),
        conf.path().join("chasquid.conf"),
    )
    .unwrap();
    let (ok, printed) = run(Command::new(bin("tambo"))
        .arg("-C")
        .arg(conf.path())
        .arg("print-config"));
    assert!(ok, "example configuration rejected: {printed}");

    // The units start tambod as documented, and the sockets carry the names
    // tambod looks for in LISTEN_FDNAMES.
    let unit = std::fs::read_to_string(workspace_root().join("packaging/systemd/tambo.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/sbin/tambod --config_dir=/etc/tambo\n"));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    for (file, name) in [
        ("tambo-smtp.socket", "smtp"),
        ("tambo-submission.socket", "submission"),
        ("tambo-submissions.socket", "submission_tls"),
    ] {
        let s = std::fs::read_to_string(workspace_root().join("packaging/systemd").join(file)).unwrap();
        assert!(s.contains(&format!("\nFileDescriptorName={name}\n")), "{file}");
        assert!(s.contains("\nService=tambo.service\n"), "{file}");
    }
}

fn uid_of(user: &str) -> Option<u32> {
    nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Undo what the install test did, even when it fails half-way.
struct Restore {
    tambod: Option<Child>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(mut c) = self.tambod.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if dpkg_installed("tambo") {
            let _ = Command::new("dpkg").args(["--purge", "tambo"]).status();
        }
        // The other tests run workers as the tambo users.
        let _ = Command::new(workspace_root().join("packaging/create-users.sh"))
            .stdout(Stdio::null())
            .status();
    }
}

/// Children of `ppid` named `tambo: <name>`, with their real uid.
fn workers_of(ppid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for de in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = de.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
        };
        if field("PPid:").and_then(|p| p.parse::<u32>().ok()) != Some(ppid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        if let (Some(name), Some(uid)) = (
            argv0.strip_prefix("tambo: "),
            field("Uid:").and_then(|u| u.parse().ok()),
        ) {
            out.push((name.to_string(), uid));
        }
    }
    out.sort();
    out
}

fn rcpt(port: u16, to: &str) -> String {
    let mut c = RawClient::connect(port);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<someone@remote.test>");
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

/// Paths other packages may own (Postfix's mailq and sendmail, Debian's
/// chasquid's helper programs), which tambo offers through the
/// alternatives system only where they are free.
const OTHERS: [&str; 5] = [
    "/usr/bin/mailq",
    "/usr/sbin/sendmail",
    "/usr/bin/chasquid-util",
    "/usr/bin/mda-lmtp",
    "/usr/bin/smtp-check",
];

#[test]
fn deb_installs_runs_reloads_and_purges() {
    let enabled = std::env::var("CI").as_deref() == Ok("true") || std::env::var("TAMBO_TEST_DEB").as_deref() == Ok("1");
    if !enabled {
        tambo_tests::skip("the install test changes this machine: it runs under CI=true or with TAMBO_TEST_DEB=1");
        return;
    }
    if !tambo_tests::require_root("installing a package") || !tambo_tests::require("dpkg", "dpkg") {
        return;
    }
    if dpkg_installed("tambo") || Path::new("/usr/sbin/tambod").exists() || Path::new("/etc/tambo").exists() {
        tambo_tests::skip("tambo is already installed on this machine; the install test does not touch it");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let deb = build_deb(out.path());
    let mut restore = Restore { tambod: None };
    // Another MTA's mailq and sendmail (the Postfix the tests install owns
    // both; its mailq is a symlink) must survive install and purge as they
    // were.
    let other_mta = |p: &str| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.len(), std::fs::read_link(p).ok()))
    };
    let before: Vec<_> = OTHERS.iter().map(|p| other_mta(p)).collect();
    let (ok, text) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "dpkg -i: {text}");
    for (p, was) in OTHERS.iter().zip(&before) {
        if was.is_some() {
            assert_eq!(&other_mta(p), was, "{p} of another MTA was changed by the install");
        }
    }

    // chasquid's helper programs: tambo's in /usr/lib/tambo, and in
    // /usr/bin through the alternatives system where the name was free.
    let (ok, text) = run(Command::new("/usr/lib/tambo/chasquid-util").arg("--help"));
    assert!(ok && text.contains("chasquid-util [options] user-add"), "{text}");
    // No other package has dovecot-auth-cli: the name is always tambo's.
    assert_eq!(
        std::fs::canonicalize("/usr/bin/dovecot-auth-cli").ok(),
        Some(PathBuf::from("/usr/lib/tambo/dovecot-auth-cli"))
    );
    for (name, was) in OTHERS.iter().zip(&before).skip(2) {
        let base = Path::new(name).file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let ours = format!("/usr/lib/tambo/{base}");
        assert!(Path::new(&ours).exists(), "{ours} missing");
        if was.is_none() {
            assert_eq!(
                std::fs::canonicalize(name).ok(),
                std::fs::canonicalize(&ours).ok(),
                "{name} should lead to {ours}"
            );
        }
    }

    // What postinst created.
    for u in SYSTEM_USERS {
        assert!(uid_of(u).is_some(), "user {u} missing after install");
    }
    let queue = std::fs::metadata("/var/lib/tambo/queue").unwrap();
    assert_eq!(Some(queue.uid()), uid_of("tambo-queue"));
    assert_eq!(queue.mode() & 0o7777, 0o700);
    assert!(Path::new("/etc/tambo/chasquid.conf").is_file());

    // A configuration on loopback ports, with a test delivery agent.
    let tmp = tempfile::Builder::new().prefix("tambo-deb-").tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mail_out = tmp.path().join("out");
    std::fs::create_dir(&mail_out).unwrap();
    std::fs::set_permissions(&mail_out, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let mda = tmp.path().join("mda.sh");
    // Deliveries are deferred (exit 75) until the gate file exists, so the
    // queue listing has something to show.
    let gate = tmp.path().join("gate");
    std::fs::write(
        &mda,
        format!(
            "#!/bin/sh\n[ -e '{}' ] || exit 75\ncat >> '{}'/\"$1\"\n",
            gate.display(),
            mail_out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (smtp, submission, mon) = (free_port(), free_port(), free_port());
    std::fs::write(
        "/etc/tambo/chasquid.conf",
        format!(
            "hostname: \"mx.example.com\"\n\
             smtp_address: \"127.0.0.1:{smtp}\"\n\
             submission_address: \"127.0.0.1:{}\"\n\
             submission_over_tls_address: \"127.0.0.1:{}\"\n\
             monitoring_address: \"127.0.0.1:{mon}\"\n\
             mail_delivery_agent_bin: \"{}\"\n\
             mail_delivery_agent_args: \"%to%\"\n\
             mail_log_path: \"/var/log/tambo/mail.log\"\n\
             data_dir: \"/var/lib/tambo\"\n\
             min_retry_delay: \"1s\"\n",
            submission,
            free_port(),
            mda.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/etc/tambo/domains/example.com").unwrap();
    std::fs::create_dir_all("/etc/tambo/certs/mx.example.com").unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["mx.example.com".to_string()]).unwrap();
    std::fs::write("/etc/tambo/certs/mx.example.com/fullchain.pem", cert.cert.pem()).unwrap();
    std::fs::write(
        "/etc/tambo/certs/mx.example.com/privkey.pem",
        cert.key_pair.serialize_pem(),
    )
    .unwrap();
    let (ok, text) =
        run(Command::new("/usr/bin/tambo").args(["user-add", "alice@example.com", "--password", "alice-pw"]));
    assert!(ok, "tambo user-add: {text}");
    let users = std::fs::metadata("/etc/tambo/domains/example.com/users").unwrap();
    assert_eq!(users.mode() & 0o777, 0o640);
    assert_eq!(
        Some(users.gid()),
        nix::unistd::User::from_name("tambo-auth")
            .unwrap()
            .map(|u| u.gid.as_raw())
    );

    // Start tambod exactly as the unit's ExecStart does.
    let unit = std::fs::read_to_string("/lib/systemd/system/tambo.service").unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    let log_path = tmp.path().join("tambod.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start tambod");
    let pid = child.id();
    restore.tambod = Some(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for(Duration::from_secs(30), "tambod to greet", || {
        TcpStream::connect(("127.0.0.1", smtp))
            .ok()
            .and_then(|s| {
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line).ok()?;
                Some(line.starts_with("220"))
            })
            .unwrap_or(false)
    });

    // Mail through 587 with msmtp (STARTTLS + AUTH), to the local user; the
    // delivery is deferred until the gate opens.
    let msmtprc = tmp.path().join("msmtprc");
    std::fs::write(
        &msmtprc,
        format!(
            "account default\nhost 127.0.0.1\nport {submission}\ntls on\ntls_starttls on\n\
             tls_certcheck off\nauth plain\nuser alice@example.com\npassword alice-pw\n\
             from alice@example.com\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&msmtprc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut msmtp = Command::new("msmtp")
        .args(["-C", msmtprc.to_str().unwrap(), "alice@example.com"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("msmtp");
    {
        use std::io::Write;
        let mut stdin = msmtp.stdin.take().unwrap();
        stdin
            .write_all(b"Subject: from the package\r\n\r\npackaged hello\r\n")
            .unwrap();
    }
    let out = msmtp.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "msmtp: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log()
    );

    // The deferred message in the queue listing: tambo's mailq as shipped
    // (/usr/bin/mailq points at it through the alternatives system unless
    // another MTA, such as the Postfix the tests install, owns that path).
    assert!(Path::new("/usr/lib/tambo/mailq").exists(), "the package ships mailq");
    let mut listing = String::new();
    wait_for(Duration::from_secs(20), "a deferred message in mailq", || {
        let (ok, text) = run(&mut Command::new("/usr/lib/tambo/mailq"));
        listing = text;
        ok && listing.contains("alice@example.com") && listing.contains("exit")
    });
    std::fs::write(&gate, b"").unwrap();
    wait_for(Duration::from_secs(20), "delivery to alice", || {
        std::fs::read_to_string(mail_out.join("alice@example.com")).is_ok_and(|m| m.contains("packaged hello"))
    });
    wait_for(Duration::from_secs(10), "the mail log", || {
        std::fs::read_to_string("/var/log/tambo/mail.log").is_ok_and(|l| l.contains("to=alice@example.com sent"))
    });

    // Each worker under its own user.
    let workers = workers_of(pid);
    for (name, user) in [
        ("smtpd", "tambo-smtpd"),
        ("authd", "tambo-auth"),
        ("queued", "tambo-queue"),
        ("deliverd", "tambo-deliver"),
        ("hookd", "tambo-hook"),
    ] {
        let uid = workers.iter().find(|(n, _)| n == name).map(|(_, u)| *u);
        assert_eq!(uid, uid_of(user), "{name} must run as {user}: {workers:?}");
    }

    // Metrics through the supervisor.
    let (ok, metrics) = run(Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{mon}/metrics")]));
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("tambo_deliveries_total{result=\"sent\",route=\"local\"} 1"),
        "{metrics}"
    );

    // Reload: a new user exists after SIGHUP.
    assert!(rcpt(smtp, "bob@example.com").starts_with("550"));
    let (ok, text) = run(Command::new("/usr/bin/tambo").args(["user-add", "bob@example.com", "--password", "bob-pw"]));
    assert!(ok, "{text}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    wait_for(Duration::from_secs(10), "bob after the reload", || {
        rcpt(smtp, "bob@example.com").starts_with("250")
    });

    // Stop as systemd does (SIGTERM to the main process).
    let mut child = restore.tambod.take().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tambod did not stop:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "tambod exit {status}:\n{}", log());

    // Purge removes the configuration, the queue, the logs and the users.
    let (ok, text) = run(Command::new("dpkg").args(["--purge", "tambo"]));
    for (p, was) in OTHERS.iter().zip(&before) {
        if was.is_some() {
            assert_eq!(&other_mta(p), was, "{p} of another MTA was changed by the purge");
        } else {
            assert!(
                std::fs::symlink_metadata(p).is_err(),
                "{p}: tambo's alternative left after purge"
            );
        }
    }
    assert!(ok, "dpkg --purge: {text}");
    for p in [
        "/usr/sbin/tambod",
        "/usr/lib/tambo",
        "/etc/tambo",
        "/var/lib/tambo",
        "/var/log/tambo",
    ] {
        assert!(!Path::new(p).exists(), "{p} still there after purge");
    }
    for u in SYSTEM_USERS {
        assert!(uid_of(u).is_none(), "user {u} still there after purge");
    }
    drop(restore);
    assert!(uid_of("tambo-smtpd").is_some(), "the test users were restored");
}
