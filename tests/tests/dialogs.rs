//! Runs every SMTP dialog in `tests/dialogs/*.dialog` against one tambod.
//!
//! The format (one directive per line; `#` starts a comment line):
//!
//! | directive | meaning |
//! |---|---|
//! | `CONNECT` | open a new connection to the smtp port (implicit at the start of a file; closes the previous one) |
//! | `C: text` | queue `text` followed by CRLF |
//! | `C> bytes` | queue raw bytes; escapes `\r \n \t \0 \\ \xHH` |
//! | `FILL n bytes` | queue `bytes` (escapes as `C>`) `n` times |
//! | `CHUNK bytes`, `CHUNK LAST bytes` | queue `BDAT <len> [LAST]` CRLF and then the bytes (escapes as `C>`) |
//! | `S: prefix` or `S: prefix \| text` | send everything queued in ONE write, read one (possibly multi-line) reply; its first line must start with `prefix` and, if given, the reply must contain `text` |
//! | `FLUSH` | send what is queued now, in one write, without reading |
//! | `CLOSED` | send what is queued; the server must close the connection without sending anything more |
//! | `SLEEP ms` | wait |
//! | `REPEAT n directive` | run the directive `n` times |
//! | `DELIVERED addr text` | within 20 s, a message containing `text` (escapes as `C>`) is delivered to `addr` |
//! | `NOT_DELIVERED addr text` | no message delivered to `addr` contains `text` (put a `SLEEP` or a later `DELIVERED` before it) |
//!
//! Queued client bytes are only sent at `S:`/`CLOSED`, so several `C:` lines
//! before an `S:` form one pipelined write; the `S:` lines after it then
//! read the replies in order. A mismatch is reported as `file:line`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use tambo_tests::*;

/// The configuration the dialogs assume.
const CONF: &str = "max_data_size_mb: 1\nmax_connections_per_ip: 200";

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&e) = b.get(i + 1) else {
            return Err("trailing backslash".into());
        };
        i += 2;
        match e {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s.get(i..i + 2).ok_or("short \\x escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x escape {hex:?}"))?);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        }
    }
    Ok(out)
}

struct Client {
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    queued: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            stream: Some(stream),
            buf: Vec::new(),
            queued: Vec::new(),
        })
    }

    fn stream(&mut self) -> Result<&mut TcpStream, String> {
        self.stream.as_mut().ok_or_else(|| "not connected".to_string())
    }

    fn send_queued(&mut self) -> Result<(), String> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.queued);
        self.stream()?
            .write_all(&data)
            .map_err(|e| format!("sending {} bytes: {e}", data.len()))
    }

    fn line(&mut self) -> Result<Option<String>, String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line).trim_end().to_string()));
            }
            let mut chunk = [0u8; 4096];
            match self.stream()?.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(format!("reading a reply: {e}")),
            }
        }
    }

    fn reply(&mut self) -> Result<String, String> {
        let mut out = String::new();
        loop {
            let Some(line) = self.line()? else {
                if out.is_empty() {
                    return Err("the server closed the connection".into());
                }
                return Err(format!("the server closed the connection inside a reply: {out:?}"));
            };
            out.push_str(&line);
            out.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(out);
            }
        }
    }
}

/// Run one directive; `Err` describes a mismatch.
fn step(env: &TestEnv, client: &mut Client, line: &str) -> Result<(), String> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "CONNECT" => *client = Client::connect(env.smtp_port)?,
        "C:" => {
            client.queued.extend_from_slice(rest.as_bytes());
            client.queued.extend_from_slice(b"\r\n");
        }
        "C>" => client.queued.extend(unescape(rest)?),
        "FILL" => {
            let (n, bytes) = rest.split_once(' ').ok_or("FILL n bytes")?;
            let n: usize = n.parse().map_err(|_| "FILL: bad count")?;
            let bytes = unescape(bytes)?;
            for _ in 0..n {
                client.queued.extend_from_slice(&bytes);
            }
        }
        "CHUNK" => {
            let (last, bytes) = match rest.strip_prefix("LAST ") {
                Some(b) => (" LAST", b),
                None if rest == "LAST" => (" LAST", ""),
                None => ("", rest),
            };
            let bytes = unescape(bytes)?;
            client
                .queued
                .extend_from_slice(format!("BDAT {}{last}\r\n", bytes.len()).as_bytes());
            client.queued.extend(bytes);
        }
        "S:" => {
            let (prefix, text) = match rest.split_once(" | ") {
                Some((p, t)) => (p.trim(), Some(t)),
                None => (rest.trim(), None),
            };
            client.send_queued()?;
            let reply = client.reply()?;
            if !reply.starts_with(prefix) || text.is_some_and(|t| !reply.contains(t)) {
                return Err(format!("expected {rest:?}, got {reply:?}"));
            }
        }
        "FLUSH" => client.send_queued()?,
        "CLOSED" => {
            // The server may already be gone: a failed send is fine here.
            let _ = client.send_queued();
            match client.line() {
                Ok(None) => {}
                Ok(Some(l)) => return Err(format!("expected the connection to close, got {l:?}")),
                Err(e) => return Err(format!("expected the connection to close: {e}")),
            }
            client.stream = None;
        }
        "SLEEP" => std::thread::sleep(Duration::from_millis(rest.parse().map_err(|_| "SLEEP ms")?)),
        "REPEAT" => {
            let (n, inner) = rest.split_once(' ').ok_or("REPEAT n directive")?;
            let n: usize = n.parse().map_err(|_| "REPEAT: bad count")?;
            for i in 0..n {
                step(env, client, inner).map_err(|e| format!("repetition {}: {e}", i + 1))?;
            }
        }
        "DELIVERED" | "NOT_DELIVERED" => {
            let (addr, text) = rest.split_once(' ').ok_or("DELIVERED addr text")?;
            let text = String::from_utf8(unescape(text)?).map_err(|_| "DELIVERED: text is not UTF-8")?;
            let text = text.as_str();
            let found = |env: &TestEnv| env.delivered(addr).is_some_and(|m| m.contains(text));
            if word == "DELIVERED" {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while !found(env) {
                    if std::time::Instant::now() > deadline {
                        return Err(format!("nothing containing {text:?} was delivered to {addr}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            } else if found(env) {
                return Err(format!("a message containing {text:?} WAS delivered to {addr}"));
            }
        }
        other => return Err(format!("unknown directive {other:?}")),
    }
    Ok(())
}

/// Run a dialog file; the first mismatch as `file:line: problem`.
fn run_dialog(env: &TestEnv, path: &Path) -> Result<usize, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut client = Client::connect(env.smtp_port).map_err(|e| format!("{name}:1: {e}"))?;
    let mut steps = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        step(env, &mut client, line).map_err(|e| format!("{name}:{}: {e}\n    {line}", i + 1))?;
        steps += 1;
    }
    Ok(steps)
}

#[test]
fn dialogs() {
    let env = TestEnv::new(CONF);
    let server = env.start();
    let dir = workspace_root().join("tests/dialogs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/dialogs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dialog"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "dialog files found: {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        match run_dialog(&env, f) {
            Ok(n) => eprintln!("ok   {} ({n} steps)", f.display()),
            Err(e) => {
                eprintln!("FAIL {e}");
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} dialog(s) failed:\n{}\n--- server log ---\n{}",
        failures.len(),
        failures.join("\n"),
        server.log()
    );
}

/// The runner itself must notice mismatches (a test that cannot fail is no
/// test): a wrong code, a missing close and a missing delivery are caught.
#[test]
fn runner_detects_mismatches() {
    let env = TestEnv::new(CONF);
    let _server = env.start();
    let dir = env.tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, want) in [
        (
            "code.dialog",
            "S: 220\nC: NOOP\nS: 500\n",
            "code.dialog:3: expected \"500\"",
        ),
        (
            "text.dialog",
            "S: 220\nC: EHLO x\nS: 250 | NOSUCHEXT\n",
            "text.dialog:3",
        ),
        (
            "closed.dialog",
            "S: 220\nC: NOOP\nCLOSED\n",
            "closed.dialog:3: expected the connection to close",
        ),
        (
            "deliv.dialog",
            "S: 220\nNOT_DELIVERED alice@example.com x\nC: QUIT\nS: 221\nCLOSED\n",
            "",
        ),
        ("esc.dialog", "C> \\q\n", "esc.dialog:1: unknown escape"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let r = run_dialog(&env, &p);
        if want.is_empty() {
            assert!(r.is_ok(), "{name}: {r:?}");
        } else {
            let e = r.expect_err(name);
            assert!(e.starts_with(want), "{name}: {e}");
        }
    }
}
