//! Shared helpers for the integration tests: build and find the real
//! binaries, lay out a configuration directory in chasquid's format in a
//! temporary directory, start `tambod` on free loopback ports, and talk
//! SMTP to it.
//!
//! When the tests run as root (as CI does), tambod runs privileged: the
//! tambo users are created with `packaging/create-users.sh` and the test
//! directories are made readable (and the mail output directory writable)
//! for them.

pub mod certs;
pub mod courier;
pub mod differential;
pub mod dovecot;
pub mod dropin;
pub mod fakedns;
pub mod haproxy;
pub mod netns;
pub mod smtp_peer;
pub mod stream;
pub mod syscall_order;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Directory holding the built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug
    exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
}

static BUILD: Once = Once::new();

/// Path of a workspace binary, building every binary first (once per test
/// process) so tests never run stale code.
pub fn bin(name: &str) -> PathBuf {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins"])
            .current_dir(workspace_root());
        // `cargo test` sets these for this crate; build scripts that track
        // them (ring's) would otherwise rebuild on every switch between
        // `cargo test` and this build.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "OUT_DIR"
            {
                cmd.env_remove(&key);
            }
        }
        if bin_dir().file_name().and_then(|n| n.to_str()) == Some("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
        if is_root() {
            let status = Command::new(workspace_root().join("packaging/create-users.sh"))
                .stdout(Stdio::null())
                .status()
                .expect("running packaging/create-users.sh");
            assert!(status.success(), "packaging/create-users.sh failed");
        }
    });
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} does not exist", p.display());
    p
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Wait until `f` returns true, or panic with `what` after `timeout`.
pub fn wait_for<F: FnMut() -> bool>(timeout: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Whether an external program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether `program` (from Debian package `package`) is on PATH (or in
/// /usr/sbin). When it is not, the test is skipped (see [`skip`]) and the
/// caller returns.
pub fn require(program: &str, package: &str) -> bool {
    if have(program) || Path::new("/usr/sbin").join(program).exists() {
        return true;
    }
    skip(&format!(
        "{program} (Debian package {package}) is not installed; scripts/test installs it"
    ));
    false
}

/// Whether the tests run as root. When they do not, the test is skipped
/// (see [`skip`]) and the caller returns; `what` says what needs root.
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(&format!("{what} needs root"));
    false
}

/// Skip the running test, which then returns without asserting anything.
/// Under CI=true that is a failure: CI has every tool and root. Elsewhere
/// the test prints `SKIPPED: why` and, when scripts/test set
/// `TAMBO_SKIP_LOG`, appends `test: why` to that file, so that the suite's
/// closing line counts it as skipped, not passed.
pub fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (under CI=true this is a failure, not a skip)");
    }
    println!("SKIPPED: {why}");
    if let Ok(path) = std::env::var("TAMBO_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test}: {why}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("recording the skip in {path}: {e}");
        }
    }
}

/// A user in the generated configuration.
pub const USER: &str = "alice@example.com";
/// Her password.
pub const PASSWORD: &str = "secret-pw";

/// A configuration directory and data directory in a temp dir.
pub struct TestEnv {
    /// Keeps the temporary directory alive.
    pub tmp: tempfile::TempDir,
    /// `chasquid.conf`'s directory.
    pub config_dir: PathBuf,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// Where the test MDA writes one file per delivery: `<to>` (appended).
    pub out_dir: PathBuf,
    /// Port of the smtp listener.
    pub smtp_port: u16,
    /// Port of the submission listener.
    pub submission_port: u16,
    /// Port of the submission-over-TLS listener.
    pub submission_tls_port: u16,
    /// An empty DNS server on loopback (every name is NXDOMAIN), used
    /// unless a test configures `dns_servers` itself: tests never query the
    /// machine's resolver.
    pub dns: fakedns::FakeDns,
}

impl TestEnv {
    /// A standard environment: domain `example.com` with users alice
    /// (password [`PASSWORD`]) and bob (same password), a self-signed
    /// certificate, and an MDA script that appends each message to
    /// `out_dir/<to>`. `extra_conf` is appended to chasquid.conf.
    pub fn new(extra_conf: &str) -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("tambo-test-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let config_dir = root.join("config");
        let data_dir = root.join("data");
        let out_dir = root.join("out");
        for d in [&config_dir, &data_dir, &out_dir] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let domain = config_dir.join("domains/example.com");
        std::fs::create_dir_all(&domain).expect("mkdir domain");
        let certs = config_dir.join("certs/mx.example.com");
        std::fs::create_dir_all(&certs).expect("mkdir certs");
        let cert = rcgen::generate_simple_self_signed(vec!["mx.example.com".to_string(), "localhost".to_string()])
            .expect("rcgen");
        std::fs::write(certs.join("fullchain.pem"), cert.cert.pem()).expect("write cert");
        std::fs::write(certs.join("privkey.pem"), cert.key_pair.serialize_pem()).expect("write key");
        std::fs::write(domain.join("aliases"), "").expect("write aliases");
        for user in [USER, "bob@example.com"] {
            let status = Command::new(bin("tambo"))
                .args([
                    "-C",
                    config_dir.to_str().expect("utf8"),
                    "user-add",
                    user,
                    "--password",
                    PASSWORD,
                ])
                .stdout(Stdio::null())
                .status()
                .expect("tambo user-add");
            assert!(status.success(), "tambo user-add {user}");
        }
        let mda = root.join("mda.sh");
        std::fs::write(
            &mda,
            format!(
                "#!/bin/sh\n# test MDA: append the message to out/<to>\ncat >> '{}'/\"$1\"\n",
                out_dir.display()
            ),
        )
        .expect("write mda");
        std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let env = TestEnv {
            tmp,
            config_dir,
            data_dir,
            out_dir,
            smtp_port: free_port(),
            submission_port: free_port(),
            submission_tls_port: free_port(),
            dns: fakedns::FakeDns::start(),
        };
        env.write_conf(extra_conf);
        env.fix_permissions();
        env
    }

    /// (Re)write chasquid.conf with the standard fields and `extra`.
    pub fn write_conf(&self, extra: &str) {
        self.write_conf_for("mx.example.com", "127.0.0.1", extra)
    }

    /// [`write_conf`](Self::write_conf) for a server named `hostname`
    /// whose three listeners are on `ip` (a node in its own network
    /// namespace listens on its own address, not on loopback).
    pub fn write_conf_for(&self, hostname: &str, ip: &str, extra: &str) {
        // Tests never query the machine's resolver: unless a test brings
        // its own DNS server, lookups go to the environment's empty one.
        let dns = if extra.contains("dns_servers") {
            String::new()
        } else {
            format!("dns_servers: \"{}\"\n", self.dns.addr)
        };
        let conf = format!(
            "hostname: \"{hostname}\"\n\
             smtp_address: \"{ip}:{}\"\n\
             submission_address: \"{ip}:{}\"\n\
             submission_over_tls_address: \"{ip}:{}\"\n\
             data_dir: \"{}\"\n\
             run_dir: \"{}\"\n\
             mail_delivery_agent_bin: \"{}\"\n\
             mail_delivery_agent_args: \"%to%\"\n\
             mail_log_path: \"<stderr>\"\n\
             {extra}\n{dns}",
            self.smtp_port,
            self.submission_port,
            self.submission_tls_port,
            self.data_dir.display(),
            self.tmp.path().join("run").display(),
            self.tmp.path().join("mda.sh").display(),
        );
        std::fs::write(self.config_dir.join("chasquid.conf"), conf).expect("write conf");
    }

    /// Make the test MDA fail temporarily (exit 75, "gate closed") until
    /// the returned file exists, so messages stay queued as long as the
    /// test wants; then it delivers as before.
    pub fn gate_mda(&self) -> PathBuf {
        let gate = self.tmp.path().join("gate");
        std::fs::write(
            self.tmp.path().join("mda.sh"),
            format!(
                "#!/bin/sh\n[ -e '{}' ] || {{ echo gate closed; exit 75; }}\ncat >> '{}'/\"$1\"\n",
                gate.display(),
                self.out_dir.display()
            ),
        )
        .expect("write mda");
        gate
    }

    /// Replace the aliases file of example.com with `text`, then fix the
    /// permissions of the tree.
    pub fn set_aliases(&self, text: &str) {
        std::fs::write(self.config_dir.join("domains/example.com/aliases"), text).expect("write aliases");
        self.fix_permissions();
    }

    /// When root: let the tambo users read the tree and write `out/`.
    pub fn fix_permissions(&self) {
        if !is_root() {
            return;
        }
        let _ = Command::new("chmod").args(["-R", "a+rX"]).arg(self.tmp.path()).status();
        let _ = std::fs::set_permissions(&self.out_dir, std::fs::Permissions::from_mode(0o1777));
        self.protect_private_keys();
    }

    /// When root: make every `certs/*/privkey.pem` readable by the authd
    /// user only (owner tambo-auth, mode 0600), as in a real installation.
    pub fn protect_private_keys(&self) {
        if !is_root() {
            return;
        }
        let user = nix::unistd::User::from_name("tambo-auth")
            .expect("looking up tambo-auth")
            .expect("user tambo-auth exists (packaging/create-users.sh)");
        let Ok(dirs) = std::fs::read_dir(self.config_dir.join("certs")) else {
            return;
        };
        for d in dirs.flatten() {
            let key = d.path().join("privkey.pem");
            if key.exists() {
                nix::unistd::chown(&key, Some(user.uid), Some(user.gid)).expect("chown privkey.pem");
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod privkey.pem");
            }
        }
    }

    /// Start tambod on this environment and wait until it accepts SMTP.
    pub fn start(&self) -> Server {
        self.start_with_args(&[])
    }

    /// Start tambod with extra arguments.
    pub fn start_with_args(&self, args: &[&str]) -> Server {
        self.start_with(args, b"")
    }

    /// Start tambod where every connection must begin with a PROXY header
    /// (`haproxy_incoming: true`): readiness is probed with `PROXY UNKNOWN`.
    pub fn start_haproxy_incoming(&self) -> Server {
        self.start_with(&[], b"PROXY UNKNOWN\r\n")
    }

    /// Start tambod; the readiness probe sends `preamble` first.
    fn start_with(&self, args: &[&str], preamble: &[u8]) -> Server {
        let mut server = self.spawn(args);
        server.wait_ready(preamble);
        server
    }

    /// Start tambod and return at once, without waiting for it to serve.
    pub fn spawn(&self, args: &[&str]) -> Server {
        let log_path = self
            .tmp
            .path()
            .join(format!("tambod-{}.log", Instant::now().elapsed().as_nanos()));
        let mut cmd = Command::new(bin("tambod"));
        cmd.arg(format!("--config_dir={}", self.config_dir.display()))
            .args(args);
        Server::spawn_command(cmd, log_path, self.smtp_port)
    }

    /// `tambo -C CONFIG queue ARGS`: success and output.
    pub fn queue(&self, args: &[&str]) -> (bool, String) {
        run(Command::new(bin("tambo"))
            .arg("-C")
            .arg(&self.config_dir)
            .arg("queue")
            .args(args))
    }

    /// Wait (60 s at most, flushing) until the queue is empty.
    pub fn wait_queue_empty(&self) {
        wait_for(Duration::from_secs(60), "the queue to drain", || {
            let _ = self.queue(&["flush"]);
            self.queue(&["list"]).1 == "Mail queue is empty\n"
        });
    }

    /// Paths of messages delivered to `addr` by the test MDA.
    pub fn delivered(&self, addr: &str) -> Option<String> {
        std::fs::read(self.out_dir.join(addr))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Wait until `addr` has received a message containing `needle`, and
    /// return the last such message alone (from its `Received: from` line
    /// on; the test MDA appends every message to one file).
    pub fn wait_last_delivered(&self, addr: &str, needle: &str) -> String {
        let all = self.wait_delivered(addr, needle);
        let start = all
            .match_indices("Received: from ")
            .map(|(i, _)| i)
            .filter(|&i| all[i..].contains(needle))
            .last()
            .unwrap_or(0);
        all[start..].to_string()
    }

    /// Wait until `addr` has received a message containing `needle`.
    pub fn wait_delivered(&self, addr: &str, needle: &str) -> String {
        let mut last = String::new();
        wait_for(
            Duration::from_secs(20),
            &format!("delivery to {addr} containing {needle:?}"),
            || {
                last = self.delivered(addr).unwrap_or_default();
                last.contains(needle)
            },
        );
        last
    }
}

/// A running tambod.
pub struct Server {
    child: Option<Child>,
    /// Its log (stderr of tambod and every worker).
    pub log_path: PathBuf,
    probe: SocketAddr,
    /// Started with sandbox probes, which may kill workers on purpose.
    probes: bool,
}

impl Server {
    /// Run `cmd` (tambod, possibly behind a wrapper such as `setpriv`,
    /// which must exec it) with stdout and stderr appended to `log_path`;
    /// `smtp_port` is where [`wait_serving`](Self::wait_serving) probes.
    /// Stopped (SIGTERM, then SIGKILL) on drop, like every Server.
    pub fn spawn_command(cmd: Command, log_path: PathBuf, smtp_port: u16) -> Server {
        let probe = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), smtp_port);
        Server::spawn_command_at(cmd, log_path, probe)
    }

    /// [`spawn_command`](Self::spawn_command) for a server whose SMTP
    /// listener is at `probe` (not on loopback).
    pub fn spawn_command_at(mut cmd: Command, log_path: PathBuf, probe: SocketAddr) -> Server {
        let probes = cmd
            .get_args()
            .any(|a| a.to_string_lossy().starts_with("--testing__sandbox_probe"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Server {
            child: Some(child),
            log_path,
            probe,
            probes,
        }
    }

    /// Wait (20 s at most) until the SMTP port greets; panics with the
    /// log if tambod exits first or never serves.
    pub fn wait_serving(&mut self) {
        self.wait_ready(b"")
    }

    /// [`wait_serving`](Self::wait_serving) where each probe connection
    /// starts with `preamble` (a PROXY header for `haproxy_incoming`).
    pub fn wait_ready(&mut self, preamble: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("tambod exited early ({status}); log:\n{}", self.log());
            }
            if let Ok(mut s) = TcpStream::connect(self.probe)
                && (preamble.is_empty() || s.write_all(preamble).is_ok())
            {
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() && line.starts_with("220") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("tambod did not become ready; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Worker pids by name ("smtpd", ...), from /proc (children of tambod).
    pub fn workers(&self) -> Vec<(String, u32)> {
        let ppid = self.pid();
        let mut out = Vec::new();
        for (pid, parent) in processes() {
            if parent != ppid {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
            if let Some(name) = argv0.strip_prefix("tambo: ") {
                out.push((name.to_string(), pid));
            }
        }
        out.sort();
        out
    }

    /// The pid of one worker, waiting for it to exist.
    pub fn worker_pid(&self, name: &str) -> u32 {
        let mut found = 0;
        wait_for(Duration::from_secs(20), &format!("worker {name}"), || {
            found = self
                .workers()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)
                .unwrap_or(0);
            found != 0
        });
        found
    }

    /// Send a signal to the supervisor.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Wait (at most `timeout`) for tambod to exit by itself; its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tambod did not stop on SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test shows what the server said: the end of its log
        // goes to the test's captured output.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!("---- last lines of {} ----", self.log_path.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        // A worker that its own seccomp filter killed is a defect even when
        // the restarted worker let the test pass: fail the test with the
        // line that names the call.
        let killed = self
            .log()
            .lines()
            .find(|l| l.contains("killed by its seccomp filter"))
            .map(str::to_string);
        if let (Some(line), false, false) = (killed, self.probes, std::thread::panicking()) {
            self.stop_quietly();
            panic!("a worker was killed by its sandbox: {line}");
        }
        self.stop_quietly();
    }
}

impl Server {
    fn stop_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (pid, parent pid) of every live process (zombies left out), from /proc.
pub fn processes() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for de in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = de.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, after)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        if let Some(ppid) = fields.get(1).and_then(|p| p.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// A minimal SMTP client for dialog tests: send raw bytes, read replies.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connect and read the greeting.
    pub fn connect(port: u16) -> RawClient {
        RawClient::connect_with_greeting(port).0
    }

    /// Connect and read the greeting, which must be a 220; the client
    /// and the greeting.
    pub fn connect_with_greeting(port: u16) -> (RawClient, String) {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        (c, greeting)
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Read one (possibly multi-line) reply; empty string at EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let line = match self.line() {
                Some(l) => l,
                None => return out,
            };
            out.push_str(&line);
            out.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return out;
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Send a command line and return the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// `message` with every line ending in CRLF (bare LF turned into CRLF),
/// and a final CRLF added when missing: the text of DATA, before the dot.
pub fn crlf_lines(message: &str) -> String {
    let mut body = message.replace("\r\n", "\n").replace('\n', "\r\n");
    if !body.ends_with("\r\n") {
        body.push_str("\r\n");
    }
    body
}

/// Send one message on `port` without AUTH (EHLO, MAIL, each RCPT, DATA,
/// dot-stuffed `text` with CRLF lines); panics unless MAIL, every RCPT and
/// DATA are accepted, and returns the reply to the final dot.
pub fn send_message(port: u16, from: &str, to: &[&str], text: &str) -> String {
    let mut c = RawClient::connect(port);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL FROM: {r}");
    for t in to {
        let r = c.cmd(&format!("RCPT TO:<{t}>"));
        assert!(r.starts_with("250"), "RCPT TO:<{t}>: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let body = format!("\r\n{}", crlf_lines(text)).replace("\r\n.", "\r\n..");
    c.send(&body.as_bytes()[2..]);
    let r = c.cmd(".");
    c.cmd("QUIT");
    r
}

/// Run a command, returning (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Run a command with `input` on its stdin (written whole, then closed);
/// returns its status and output. A command that exits, or closes its
/// stdin, before reading it all (one that refuses at once) is no error
/// here: its status and output tell.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    match child.stdin.take().expect("stdin").write_all(input) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("writing to the stdin of {cmd:?}: {e}"),
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// Run a command as a filter: `input` on its stdin, which must succeed
/// (else panic with its stderr); returns its stdout.
pub fn filter(cmd: &mut Command, input: &[u8]) -> String {
    let out = run_with_input(cmd, input);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 output")
}

/// The DKIM TXT record (`v=DKIM1; k=rsa; p=...`) publishing the public
/// half of the RSA private key in PEM file `key` (PKCS#1 or PKCS#8), by
/// openssl.
pub fn dkim_rsa_record(key: &Path) -> String {
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(key)
        .output()
        .expect("openssl pkey");
    assert!(
        der.status.success(),
        "openssl pkey: {}",
        String::from_utf8_lossy(&der.stderr)
    );
    format!("v=DKIM1; k=rsa; p={}", base64(&der.stdout))
}

/// Standard base64 with padding (for AUTH exchanges and DNS records).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
