//! chasquid drop-in, part 1: tambod run on a chasquid configuration as it
//! is, with chasquid's meaning of its fields. A non-root start with
//! chasquid's relative paths (its own test configurations' layout), the
//! delivery agent and pipes run with tambod's environment, zero values
//! meaning "the default", the default `data_dir`, users files reloaded
//! without a signal (written by `tambo user-add` and by Debian's
//! `chasquid-util`), and files that stop the start. Real peers: SMTP
//! clients (Python's smtplib-level driver in `tambo_tests::dropin`, a raw
//! client), `setpriv`, `chasquid-util` 1.11, the `tambo` command.
//! TLS and the hooks are in `chasquid_dropin_tls.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tambo_tests::dropin::{self, Tls, base_conf, need_tool, write_script};
use tambo_tests::{PASSWORD, RawClient, Server, TestEnv, USER, bin, is_root, run, send_message, wait_for};

/// A message whose Subject is `tag`.
fn message(tag: &str) -> String {
    format!("From: <sender@remote.test>\nSubject: {tag}\n\nbody of {tag}\nsecond line\n")
}

/// tambod on `env`'s configuration with `envs` added to its environment,
/// started in `cwd`; waits until it serves.
fn start_with_env(env: &TestEnv, args: &[&str], envs: &[(&str, &str)]) -> Server {
    let mut cmd = Command::new(bin("tambod"));
    cmd.arg(format!("--config_dir={}", env.config_dir.display()))
        .args(args)
        .envs(envs.iter().copied());
    let mut s = Server::spawn_command(cmd, env.tmp.path().join("tambod.log"), env.smtp_port);
    s.wait_serving();
    s
}

/// Run tambod to its exit (it must exit within 20 s): its status and
/// what it wrote.
fn run_to_exit(env: &TestEnv, args: &[&str]) -> (std::process::ExitStatus, String) {
    let log = env
        .tmp
        .path()
        .join(format!("exit-{}.log", Instant::now().elapsed().as_nanos()));
    let mut cmd = Command::new(bin("tambod"));
    cmd.arg(format!("--config_dir={}", env.config_dir.display())).args(args);
    let mut s = Server::spawn_command(cmd, log, env.smtp_port);
    let status = s
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("tambod did not stop by itself; log:\n{}", s.log()));
    (status, s.log())
}

/// A stale `/run/tambo` as an earlier root tambod leaves it (owned by
/// root, with a control socket nobody listens on), made only when the
/// directory does not exist, and removed again on drop.
struct StaleRunTambo {
    made: bool,
}

impl StaleRunTambo {
    const DIR: &'static str = "/run/tambo";

    fn make() -> StaleRunTambo {
        let dir = Path::new(Self::DIR);
        if dir.exists() {
            println!("note: {} exists already; left as it is", dir.display());
            return StaleRunTambo { made: false };
        }
        std::fs::create_dir(dir).expect("mkdir /run/tambo");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(std::os::unix::net::UnixListener::bind(dir.join("control.sock")).expect("bind stale socket"));
        StaleRunTambo { made: true }
    }
}

impl Drop for StaleRunTambo {
    fn drop(&mut self) {
        if self.made {
            let _ = std::fs::remove_file(Path::new(Self::DIR).join("control.sock"));
            let _ = std::fs::remove_dir(Self::DIR);
        }
    }
}

/// `tambo ARGS`, as `nobody` when `as_nobody`: (success, output).
fn tambo(as_nobody: bool, args: &[&str]) -> (bool, String) {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(bin("tambo"));
        c
    } else {
        Command::new(bin("tambo"))
    };
    run(cmd.args(args))
}

/// 1. A chasquid test configuration (no `run_dir`, `data_dir: "../.data"`,
///    `mail_log_path: "../.logs/mail_log"`, an MDA named relative to the
///    configuration directory) started by a normal user from another
///    directory, with a relative `--config_dir` and `--logfile`: tambod
///    serves, its data and mail log land next to the configuration
///    directory, its log in the start directory, and `tambo queue` finds
///    its control socket (also as root, past a stale `/run/tambo`).
#[test]
fn non_root_start_with_chasquid_relative_paths() {
    let as_nobody = is_root();
    if as_nobody && need_tool("setpriv", &["/usr/bin/setpriv"], "util-linux").is_none() {
        return;
    }
    let env = TestEnv::new("");
    let root = env.tmp.path().to_path_buf();
    let start = root.join("elsewhere/start");
    std::fs::create_dir_all(&start).expect("mkdir start");
    let gate = root.join("gate");
    write_script(
        &root.join("mda.sh"),
        &format!(
            "#!/bin/sh\n[ -e '{}' ] || {{ echo gate closed; exit 75; }}\ncat >> '{}'/\"$1\"\n",
            gate.display(),
            env.out_dir.display()
        ),
    );
    std::fs::write(
        env.config_dir.join("chasquid.conf"),
        format!(
            "smtp_address: \"127.0.0.1:{}\"\n\
             submission_address: \"127.0.0.1:{}\"\n\
             submission_over_tls_address: \"127.0.0.1:{}\"\n\
             hostname: \"mx.example.com\"\n\
             data_dir: \"../.data\"\n\
             mail_log_path: \"../.logs/mail_log\"\n\
             mail_delivery_agent_bin: \"../mda.sh\"\n\
             mail_delivery_agent_args: \"%to%\"\n\
             dns_servers: \"{}\"\n",
            env.smtp_port, env.submission_port, env.submission_tls_port, env.dns.addr
        ),
    )
    .expect("write chasquid.conf");
    let _stale = as_nobody.then(StaleRunTambo::make);
    let mut cmd = if as_nobody {
        dropin::chown_tree(&root, 65534, 65534);
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(bin("tambod"));
        c
    } else {
        Command::new(bin("tambod"))
    };
    cmd.current_dir(&start)
        .args(["--config_dir=../../config", "--logfile=relative.log"]);
    // tambod's own log goes to --logfile; this file gets what comes before.
    let mut server = Server::spawn_command(cmd, root.join("stdout.log"), env.smtp_port);
    let logfile = start.join("relative.log");
    let log = || std::fs::read_to_string(&logfile).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.wait_exit(Duration::from_millis(20)) {
            panic!("tambod exited ({status}):\n{}{}", server.log(), log());
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", env.smtp_port)) {
            let mut b = [0u8; 3];
            if std::io::Read::read_exact(&mut s, &mut b).is_ok() && &b == b"220" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tambod does not serve:\n{}{}",
            server.log(),
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log().contains("not started as root"),
        "tambod runs unprivileged:\n{}",
        log()
    );

    let r = send_message(env.smtp_port, "sender@remote.test", &[USER], &message("relative-paths"));
    assert!(r.starts_with("250"), "{r}");
    let config = env.config_dir.display().to_string();
    // The MDA keeps failing temporarily: the message waits in the queue,
    // and the queue listing through the control socket shows it.
    for nobody in [false, as_nobody] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out) = tambo(nobody, &["-C", &config, "queue", "list"]);
            if ok && out.contains(USER) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "`tambo queue list` (as nobody: {nobody}) does not show the queued message: {out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::fs::write(&gate, "").expect("open the gate");
    let (ok, out) = tambo(as_nobody, &["-C", &config, "queue", "flush"]);
    assert!(ok, "tambo queue flush: {out}");
    env.wait_delivered(USER, "body of relative-paths");

    // Everything chasquid's relative paths name is next to the
    // configuration directory; nothing landed in the start directory.
    assert!(root.join(".data/queue").is_dir(), "data_dir is config/../.data");
    assert!(
        root.join(".data/run/control.sock").exists(),
        "run_dir defaults to data_dir/run"
    );
    for wrong in [
        start.join("../.data"),
        start.join(".data"),
        env.config_dir.join(".data"),
    ] {
        assert!(!wrong.exists(), "{} must not exist", wrong.display());
    }
    let mut mail_log = String::new();
    wait_for(
        Duration::from_secs(10),
        "the delivery in config/../.logs/mail_log",
        || {
            mail_log = std::fs::read_to_string(root.join(".logs/mail_log")).unwrap_or_default();
            mail_log.contains(&format!("to={USER} sent"))
        },
    );
    assert!(log().contains("tambod") && log().contains("starting"), "{}", log());
    assert!(!start.join("../.logs").exists() && !env.config_dir.join(".logs").exists());
    let status = server.stop();
    assert!(status.success(), "tambod stopped with {status}");
}

/// 2. The delivery agent and a pipe alias run with tambod's environment
///    (as chasquid's do): an MDA wrapper that finds its helper through
///    tambod's `PATH` and writes under `$MDA_DIR` delivers, and sees
///    tambod's `HOME`; the pipe reads the message with LF line endings.
#[test]
fn delivery_agent_and_pipes_get_tambods_environment() {
    let env = TestEnv::new("");
    let root = env.tmp.path();
    let bin_dir = root.join("mda-bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    let home = root.join("home-of-tambod");
    std::fs::create_dir_all(&home).expect("mkdir home");
    // The wrapper knows neither where its helper is nor where to write:
    // both come from tambod's environment only.
    write_script(&root.join("mda.sh"), "#!/bin/sh\nexec deliver-helper \"$@\"\n");
    write_script(
        &bin_dir.join("deliver-helper"),
        "#!/bin/sh\n[ -n \"$MDA_DIR\" ] || { echo MDA_DIR is not set; exit 1; }\n\
         { echo \"HOME=$HOME\"; cat; } >> \"$MDA_DIR/$1\"\n",
    );
    let pipe_out = env.out_dir.join("pipe");
    write_script(
        &root.join("pipe.sh"),
        &format!("#!/bin/sh\ncat > '{}'\n", pipe_out.display()),
    );
    std::fs::write(
        env.config_dir.join("chasquid.conf"),
        format!(
            "{}hostname: \"mx.example.com\"\nmail_delivery_agent_bin: \"{}\"\nmail_delivery_agent_args: \"%to%\"\n",
            base_conf(&env),
            root.join("mda.sh").display()
        ),
    )
    .expect("write conf");
    env.set_aliases(&format!("piped: | {}\n", root.join("pipe.sh").display()));
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let out_dir = env.out_dir.display().to_string();
    let home_s = home.display().to_string();
    let _server = start_with_env(
        &env,
        &[],
        &[
            ("MDA_DIR", out_dir.as_str()),
            ("PATH", path.as_str()),
            ("HOME", home_s.as_str()),
        ],
    );
    let r = send_message(
        env.smtp_port,
        "sender@remote.test",
        &[USER, "piped@example.com"],
        &message("environment"),
    );
    assert!(r.starts_with("250"), "{r}");
    let got = env.wait_delivered(USER, "body of environment");
    assert!(got.starts_with(&format!("HOME={home_s}\n")), "{got}");
    let mut piped = Vec::new();
    wait_for(Duration::from_secs(20), "the pipe alias's output", || {
        piped = std::fs::read(&pipe_out).unwrap_or_default();
        String::from_utf8_lossy(&piped).contains("second line")
    });
    let text = String::from_utf8_lossy(&piped);
    assert!(!text.contains('\r'), "the pipe reads LF line endings: {text:?}");
    assert!(text.contains("\nbody of environment\nsecond line\n"), "{text:?}");
}

/// The effective configuration as `tambo print-config` shows it.
fn print_config(env: &TestEnv) -> String {
    let (ok, out) = run(Command::new(bin("tambo"))
        .arg("-C")
        .arg(&env.config_dir)
        .arg("print-config"));
    assert!(ok, "tambo print-config: {out}");
    out
}

/// 3. A zero value means "the default", as in chasquid: `hostname: ""`
///    greets with the system's host name, `max_data_size_mb: 0` is 50 MiB
///    (EHLO `SIZE 52428800`), `max_queue_items: 0` is 200 (mail is
///    accepted), `give_up_send_after: ""` is 20h and
///    `mail_delivery_agent_bin: ""` is `maildrop` with its default
///    arguments (a `maildrop` on tambod's PATH gets the message).
#[test]
fn zero_values_mean_the_defaults() {
    let env = TestEnv::new("");
    let root = env.tmp.path();
    let bin_dir = root.join("fake-bin");
    std::fs::create_dir_all(&bin_dir).expect("mkdir");
    let argv_file = env.out_dir.join("maildrop-argv");
    write_script(
        &bin_dir.join("maildrop"),
        &format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\ncat > '{}'/maildrop-message\n",
            argv_file.display(),
            env.out_dir.display()
        ),
    );
    std::fs::write(
        env.config_dir.join("chasquid.conf"),
        format!(
            "{}hostname: \"\"\nmax_data_size_mb: 0\nmax_queue_items: 0\n\
             mail_delivery_agent_bin: \"\"\ngive_up_send_after: \"\"\n",
            base_conf(&env)
        ),
    )
    .expect("write conf");
    env.fix_permissions();
    let config = print_config(&env);
    let host = tambo_common::config::system_hostname();
    for want in [
        format!("hostname: \"{host}\""),
        "max_data_size_mb: 50".to_string(),
        "max_queue_items: 200".to_string(),
        "mail_delivery_agent_bin: \"maildrop\"".to_string(),
        "give_up_send_after: \"20h\"".to_string(),
    ] {
        assert!(
            config.lines().any(|l| l == want),
            "print-config lacks {want:?}:\n{config}"
        );
    }
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let server = start_with_env(&env, &[], &[("PATH", path.as_str())]);
    let (mut c, greeting) = RawClient::connect_with_greeting(env.smtp_port);
    assert!(
        greeting.starts_with(&format!("220 {host} ")),
        "greeting with the system host name {host:?}: {greeting}"
    );
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("250-SIZE 52428800\n"), "{ehlo}");
    c.cmd("QUIT");
    let r = send_message(env.smtp_port, "sender@remote.test", &[USER], &message("zero-values"));
    assert!(r.starts_with("250"), "max_queue_items: 0 must not refuse mail: {r}");
    // The script writes its arguments, then the message: both are there
    // once tambod logs the delivery.
    wait_for(Duration::from_secs(20), "maildrop's delivery", || {
        server.log().contains("to=alice@example.com sent")
    });
    let argv = std::fs::read_to_string(&argv_file).unwrap_or_default();
    assert_eq!(
        argv, "-f\nsender@remote.test\n-d\nalice\n",
        "maildrop -f %from% -d %to_user%"
    );
    let msg = std::fs::read_to_string(env.out_dir.join("maildrop-message")).unwrap_or_default();
    assert!(msg.contains("body of zero-values"), "{msg}");
}

/// 4. Without `data_dir`, the data directory is chasquid's,
///    `/var/lib/chasquid`. Checked without touching it: tambod runs as a
///    user that cannot write there (`nobody`, or the invoking user when
///    it cannot), so it must stop at start naming that directory; its
///    contents are compared before and after. (`print-config` shows it
///    too, but that only proves the parser's default.)
#[test]
fn default_data_dir_is_chasquids() {
    const DEFAULT: &str = "/var/lib/chasquid";
    let env = TestEnv::new("");
    let as_nobody = is_root();
    if as_nobody && need_tool("setpriv", &["/usr/bin/setpriv"], "util-linux").is_none() {
        return;
    }
    let probe = if Path::new(DEFAULT).exists() {
        DEFAULT
    } else {
        "/var/lib"
    };
    if !as_nobody && nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK).is_ok() {
        tambo_tests::skip(&format!("{probe} is writable by this user; the test would touch it"));
        return;
    }
    let conf = base_conf(&env)
        .lines()
        .filter(|l| !l.starts_with("data_dir:") && !l.starts_with("run_dir:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(
        env.config_dir.join("chasquid.conf"),
        format!("{conf}mail_delivery_agent_bin: \"/bin/true\"\n"),
    )
    .expect("write conf");
    let config = print_config(&env);
    assert!(
        config.lines().any(|l| l == format!("data_dir: \"{DEFAULT}\"")),
        "{config}"
    );
    let listing = |p: &str| -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut v: Vec<_> = walk(Path::new(p));
        v.sort();
        v
    };
    let before = listing(DEFAULT);
    let mut cmd = if as_nobody {
        dropin::chown_tree(env.tmp.path(), 65534, 65534);
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(bin("tambod"));
        c
    } else {
        Command::new(bin("tambod"))
    };
    cmd.arg(format!("--config_dir={}", env.config_dir.display()));
    let mut server = Server::spawn_command(cmd, env.tmp.path().join("tambod.log"), env.smtp_port);
    let status = server
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("tambod did not stop; log:\n{}", server.log()));
    let log = server.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.lines().any(|l| l.contains("tambod: ") && l.contains(DEFAULT)),
        "the start error names {DEFAULT}:\n{log}"
    );
    assert_eq!(listing(DEFAULT), before, "{DEFAULT} was not touched");
}

/// Every path under `dir` (itself included) with its modification time.
fn walk(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    if let Ok(md) = std::fs::symlink_metadata(dir) {
        out.push((dir.to_path_buf(), md.modified().unwrap_or(std::time::UNIX_EPOCH)));
        if md.is_dir() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// Whether `user` can AUTH on the submission port and `alice` can then
/// send them mail that they receive.
fn auth_and_receive(env: &TestEnv, user: &str, password: &str, tag: &str) -> bool {
    let d = dropin::try_dialog(
        env.submission_port,
        Tls::default(),
        &[
            "EHLO client.test",
            "STARTTLS",
            "@TLS",
            "EHLO client.test",
            &dropin::auth_plain(user, password),
        ],
    );
    if !d.0 || !d.1.lines().last().unwrap_or("").starts_with("235") {
        return false;
    }
    let r = send_message(env.smtp_port, "sender@remote.test", &[user], &message(tag));
    r.starts_with("250") && {
        env.wait_delivered(user, &format!("body of {tag}"));
        true
    }
}

/// 7. Users files are reloaded without a signal, as in chasquid (with
///    its `--testing__reload_every`): a user added by `tambo user-add`,
///    and one added by Debian's `chasquid-util` (the files stay
///    chasquid's format), can AUTH and receive mail within seconds.
#[test]
fn users_reload_without_a_signal() {
    let Some(chasquid_util) = need_tool("chasquid-util", &["/usr/bin/chasquid-util"], "chasquid") else {
        return;
    };
    let env = TestEnv::new("");
    let server = start_with_env(&env, &["--testing__reload_every=200ms"], &[]);
    let started = Instant::now();
    assert!(!auth_and_receive(&env, "carol@example.com", "carol-pw", "before"));
    let (ok, out) = run(Command::new(bin("tambo")).arg("-C").arg(&env.config_dir).args([
        "user-add",
        "carol@example.com",
        "--password",
        "carol-pw",
    ]));
    assert!(ok, "tambo user-add: {out}");
    let mut done = false;
    wait_for(Duration::from_secs(10), "carol to AUTH and receive", || {
        done = auth_and_receive(&env, "carol@example.com", "carol-pw", "carol-mail");
        done
    });
    let (ok, out) = run(Command::new(&chasquid_util)
        .arg(format!("-C={}", env.config_dir.display()))
        .args(["user-add", "dave@example.com", "--password=dave-pw"]));
    assert!(ok, "chasquid-util user-add: {out}");
    env.fix_permissions();
    wait_for(
        Duration::from_secs(10),
        "dave (added by chasquid-util) to AUTH and receive",
        || auth_and_receive(&env, "dave@example.com", "dave-pw", "dave-mail"),
    );
    // alice is still there; no SIGHUP was sent, so no full reload ran
    // (the supervisor logs "reloading workers" for one).
    assert!(auth_and_receive(&env, USER, PASSWORD, "alice-still"));
    assert!(
        !server.log().contains("reloading workers"),
        "no reload was asked for; log:\n{}",
        server.log()
    );
    println!("users reloaded without a signal in {:?}", started.elapsed());
}

/// 9. An aliases file tambod cannot read, and a users file that does not
///    parse, stop tambod at start with the file named.
#[test]
fn unreadable_aliases_and_broken_users_stop_the_start() {
    let env = TestEnv::new("");
    let aliases = env.config_dir.join("domains/example.com/aliases");
    std::fs::write(&aliases, "pepe: alice\n").expect("write aliases");
    // Unreadable for tambod's workers (tambo-queue as root; as a normal
    // user, the user itself: a mode-0000 file is unreadable without
    // CAP_DAC_OVERRIDE).
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let (status, log) = run_to_exit(&env, &[]);
    assert!(!status.success(), "{log}");
    let named = aliases.display().to_string();
    assert!(
        log.lines().any(|l| l.contains("tambod: ") && l.contains(&named)),
        "the error names {named}:\n{log}"
    );
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let users = env.config_dir.join("domains/example.com/users");
    let good = std::fs::read_to_string(&users).expect("users");
    std::fs::write(&users, format!("{good}this is not a users file {{\n")).expect("break users");
    let (status, log) = run_to_exit(&env, &[]);
    assert!(!status.success(), "{log}");
    let named = users.display().to_string();
    assert!(
        log.lines().any(|l| l.contains("tambod: ") && l.contains(&named)),
        "the error names {named}:\n{log}"
    );
    // Repaired, it starts (the failures were the files').
    std::fs::write(&users, good).expect("repair users");
    env.fix_permissions();
    let mut s = Server::spawn_command(
        {
            let mut c = Command::new(bin("tambod"));
            c.arg(format!("--config_dir={}", env.config_dir.display()));
            c
        },
        env.tmp.path().join("repaired.log"),
        env.smtp_port,
    );
    s.wait_serving();
}
