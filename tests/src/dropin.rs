//! Helpers for the chasquid drop-in tests (`chasquid_dropin*.rs`,
//! `chasquid_diff.rs`): the CI rule for tools and root, a TLS-capable SMTP
//! dialog driver in Python (certificates verified against a test CA when
//! one is given), and small file chores.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestEnv;

/// Whether the tests run under CI (`CI=true`), where a missing tool or
/// missing root is a failure instead of a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// A program the test needs: the first of `candidates` that is a file,
/// else `name` when it is on PATH. Otherwise a failure under CI (where
/// scripts/test installs `package`), else `None` after printing
/// `SKIPPED: …`.
pub fn need_tool(name: &str, candidates: &[&str], package: &str) -> Option<PathBuf> {
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    if crate::have(name) {
        return Some(PathBuf::from(name));
    }
    assert!(
        !in_ci(),
        "{name} is not installed (scripts/test installs the Debian package {package})"
    );
    println!("SKIPPED: {name} is not installed (apt-get install -y {package})");
    None
}

/// Whether a test that needs root may go on: true as root; under CI
/// without root a failure; else `false` after printing `SKIPPED: needs
/// root`.
pub fn need_root(what: &str) -> bool {
    if crate::is_root() {
        return true;
    }
    assert!(!in_ci(), "{what} needs root, and CI runs the tests as root");
    println!("SKIPPED: needs root ({what})");
    false
}

/// Write an executable script.
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// Give `path` and everything under it to `uid`:`gid` (not following
/// symbolic links).
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for e in std::fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree(&e.path(), uid, gid);
        }
    }
}

/// The fields every test configuration of `env` starts with: its three
/// loopback listeners, `data_dir`, `run_dir`, the mail log on stderr and
/// the environment's empty DNS server. The test adds the rest (the MDA
/// included: chasquid.conf may name a field once only).
pub fn base_conf(env: &TestEnv) -> String {
    format!(
        "smtp_address: \"127.0.0.1:{}\"\n\
         submission_address: \"127.0.0.1:{}\"\n\
         submission_over_tls_address: \"127.0.0.1:{}\"\n\
         data_dir: \"{}\"\n\
         run_dir: \"{}\"\n\
         mail_log_path: \"<stderr>\"\n\
         dns_servers: \"{}\"\n",
        env.smtp_port,
        env.submission_port,
        env.submission_tls_port,
        env.data_dir.display(),
        env.tmp.path().join("run").display(),
        env.dns.addr,
    )
}

/// A TLS dialog driver in Python (`ssl`, `socket`): arguments are the
/// port, `plain` or `implicit` (TLS before the greeting), the SNI name
/// (`-`: none), a CA file to verify the server's certificate and name
/// against (`-`: no verification), then the steps. Each step is a
/// command line sent with CRLF, or `@TLS` (the handshake, after the
/// client's STARTTLS got its 220), `@RAW text` (bytes with Python
/// escapes, such as `\r\n`), `@FILE path` (a file's bytes); after each
/// the reply is read. It prints `LOCAL port` (its own port), then every
/// reply on one line (continuation lines joined by ` | `), `TLS version`
/// after a handshake and `<EOF>` when the server closed. Every socket
/// operation has a 20 s deadline.
const DIALOG_PY: &str = r#"
import socket, ssl, sys
port, mode, sni, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
steps = sys.argv[5:]
if ca == "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
else:
    ctx = ssl.create_default_context(cafile=ca)
sni = None if sni == "-" else sni
s = socket.create_connection(("127.0.0.1", port), timeout=20)
print("LOCAL %d" % s.getsockname()[1], flush=True)
def handshake(s):
    t = ctx.wrap_socket(s, server_hostname=sni)
    print("TLS " + t.version(), flush=True)
    return t
if mode == "implicit":
    s = handshake(s)
f = s.makefile("rb", buffering=0)
def reply():
    lines = []
    while True:
        try:
            l = f.readline()
        except (ConnectionResetError, ssl.SSLError):
            l = b""
        if not l:
            return " | ".join(lines) if lines else "<EOF>"
        l = l.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(l)
        if len(l) < 4 or l[3] != "-":
            return " | ".join(lines)
print(reply(), flush=True)
for step in steps:
    if step == "@TLS":
        s = handshake(s)
        f = s.makefile("rb", buffering=0)
        continue
    try:
        if step.startswith("@RAW "):
            s.sendall(step[5:].encode().decode("unicode_escape").encode("latin-1"))
        elif step.startswith("@FILE "):
            s.sendall(open(step[6:], "rb").read())
        else:
            s.sendall(step.encode() + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        print("<EOF>", flush=True)
        break
    r = reply()
    print(r, flush=True)
    if r == "<EOF>":
        break
"#;

/// How a [`dialog`] connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tls<'a> {
    /// TLS before the greeting (port 465).
    pub implicit: bool,
    /// The SNI name sent (and, with `ca`, the name verified).
    pub sni: Option<&'a str>,
    /// Verify the server's certificate against this CA.
    pub ca: Option<&'a Path>,
}

/// What a [`dialog`] saw.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// The client's own port (for `REMOTE_ADDR`).
    pub local_port: u16,
    /// The greeting, then one reply per step, `TLS …` after a handshake.
    pub replies: Vec<String>,
}

/// Run an SMTP dialog with the Python driver (see `DIALOG_PY`); panics
/// with its output if the driver fails (a TLS handshake that does not
/// verify, say).
pub fn dialog(port: u16, tls: Tls, steps: &[&str]) -> Dialog {
    let (ok, out) = try_dialog(port, tls, steps);
    assert!(ok, "SMTP dialog on port {port} failed:\n{out}");
    parse_dialog(&out)
}

/// Like [`dialog`], but returns (success, output) for a dialog that is
/// expected to fail (a certificate that must not verify).
pub fn try_dialog(port: u16, tls: Tls, steps: &[&str]) -> (bool, String) {
    let ca = tls.ca.map(|p| p.display().to_string()).unwrap_or_else(|| "-".into());
    crate::run(
        Command::new("python3")
            .args(["-c", DIALOG_PY, &port.to_string()])
            .arg(if tls.implicit { "implicit" } else { "plain" })
            .arg(tls.sni.unwrap_or("-"))
            .arg(ca)
            .args(steps),
    )
}

fn parse_dialog(out: &str) -> Dialog {
    let mut lines = out.lines();
    let local_port = lines
        .next()
        .and_then(|l| l.strip_prefix("LOCAL "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("dialog output without LOCAL line:\n{out}"));
    Dialog {
        local_port,
        replies: lines.map(str::to_string).collect(),
    }
}

/// The code of a reply: `250`, or `250 2.1.5` when it has an enhanced
/// status code (the first word after the code, `N.N.N`).
pub fn code(reply: &str) -> String {
    let basic: String = reply.chars().take(3).collect();
    let rest = reply.get(4..).unwrap_or("");
    let first = rest.split_whitespace().next().unwrap_or("");
    let parts: Vec<&str> = first.split('.').collect();
    let enhanced = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && first.starts_with(&basic[..1]);
    if enhanced { format!("{basic} {first}") } else { basic }
}

/// The `AUTH PLAIN` initial response for `user` and `password`.
pub fn auth_plain(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        crate::base64(format!("\0{user}\0{password}").as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code("250 2.1.5 Ok"), "250 2.1.5");
        assert_eq!(code("250-mx.example.com | 250 HELP"), "250");
        assert_eq!(code("554 5.7.1 no"), "554 5.7.1");
        assert_eq!(code("451 4.3.0"), "451 4.3.0");
        assert_eq!(code("550 User unknown"), "550");
        assert_eq!(code("<EOF>"), "<EO");
    }
}
