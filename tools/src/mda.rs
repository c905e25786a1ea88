//! `mda-lmtp`: a delivery agent that hands the message on stdin to an LMTP
//! server (a Unix socket or TCP), with chasquid's flags, messages and exit
//! codes, on deliverd's LMTP client.
//!
//! Exit codes, as chasquid's: 0 delivered; 75 (EX_TEMPFAIL) for every
//! failure to deliver, 5xx replies included (the queue retries until it
//! gives up, then bounces); 2 for bad arguments.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::gofmt::{io_error, quote};
use tambo_deliverd::lmtp::{LmtpFailure, deliver_one};

use crate::goflag::{self, Flag};
use crate::puny;

/// EX_TEMPFAIL.
pub const TEMPFAIL: i32 = 75;
/// chasquid's exit code for permanent failures.
pub const PERMFAIL: i32 = 2;
/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const FLAGS: &[Flag] = &[
    Flag {
        name: "f",
        boolean: false,
        default: "",
        usage: "Whom the message is from",
    },
    Flag {
        name: "d",
        boolean: false,
        default: "",
        usage: "Recipient",
    },
    Flag {
        name: "addr_network",
        boolean: false,
        default: "",
        usage: "Network of the LMTP address (e.g. unix or tcp)",
    },
    Flag {
        name: "addr",
        boolean: false,
        default: "",
        usage: "LMTP server address",
    },
    Flag {
        name: "to_puny",
        boolean: true,
        default: "false",
        usage: "Encode addresses using punycode",
    },
];

fn usage() -> String {
    format!(
        "
mda-lmtp is a very basic MDA that uses LMTP to do the mail delivery.

It takes command line arguments similar to maildrop or procmail, reads an
email via standard input, and sends it over the given LMTP server.
Supports connecting to LMTP servers over UNIX sockets and TCP.

It can be used when your mail server does not support LMTP directly.

Example of use:
$ mda-lmtp --addr localhost:1234 -f juan@casa -d jose < email

Flags:
{}",
        goflag::defaults(FLAGS)
    )
}

/// Print `msg` on stdout (where chasquid's mda-lmtp prints) and give `code`.
fn exit_with(code: i32, msg: &str) -> i32 {
    println!("{msg}");
    let _ = std::io::stdout().flush();
    code
}

/// A reply as Go's textproto error prints it: `452 "text"`.
fn go_reply(code: u16, text: &str) -> String {
    format!("{code:03} {}", quote(text))
}

/// Append `chunk` to `out` with every bare LF made CRLF (LMTP wants
/// CRLF; chasquid's writer does the same). `last` is the byte before
/// `chunk`.
pub fn to_crlf(chunk: &[u8], last: &mut u8, out: &mut Vec<u8>) {
    for &b in chunk {
        if b == b'\n' && *last != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        *last = b;
    }
}

/// The message on stdin, with CRLF line endings, in an anonymous
/// temporary file (deliverd's client reads its data from a file).
fn spool_stdin() -> std::io::Result<Arc<OwnedFd>> {
    use std::io::Read;
    let mut f = tempfile::tempfile()?;
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(70 * 1024);
    let mut last = 0u8;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.clear();
        to_crlf(&buf[..n], &mut last, &mut out);
        f.write_all(&out)?;
    }
    Ok(Arc::new(OwnedFd::from(f)))
}

/// Connect per `--addr_network`; Go's dial error text on failure.
async fn deliver(network: &str, addr: &str, hostname: &str, from: &str, rcpt: &str, data: Arc<OwnedFd>) -> i32 {
    let dial_err = |e: String| {
        exit_with(
            TEMPFAIL,
            &format!("Error connecting to ({network}, {addr}): dial {network} {addr}: {e}"),
        )
    };
    let result = match network {
        "unix" => match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(addr)).await {
            Ok(Ok(s)) => deliver_one(s, hostname, from, rcpt, data).await,
            Ok(Err(e)) => return dial_err(format!("connect: {}", io_error(&e))),
            Err(_) => return dial_err("i/o timeout".into()),
        },
        "tcp" | "tcp4" | "tcp6" => {
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    deliver_one(s, hostname, from, rcpt, data).await
                }
                Ok(Err(e)) => return dial_err(format!("connect: {}", io_error(&e))),
                Err(_) => return dial_err("i/o timeout".into()),
            }
        }
        other => return dial_err(format!("unknown network {other}")),
    };
    match result {
        Ok(()) => 0,
        Err(LmtpFailure::Refused {
            greeting: true,
            code,
            text,
            ..
        }) => exit_with(TEMPFAIL, &format!("Server greeting error: {}", go_reply(code, &text))),
        Err(LmtpFailure::Refused {
            command, code, text, ..
        }) => {
            // chasquid's mda-lmtp retries whatever the server said: an
            // installation that moves to tambo keeps its retries (an LMTP
            // server refusing for a moment, a mailbox being created).
            let status = TEMPFAIL;
            if command.is_empty() {
                exit_with(status, &format!("Delivery failed remotely: {}", go_reply(code, &text)))
            } else {
                exit_with(
                    status,
                    &format!("Sent {}, got {}", quote(&command), go_reply(code, &text)),
                )
            }
        }
        Err(LmtpFailure::Broken(why)) => exit_with(TEMPFAIL, &format!("Delivery failed: {why}")),
    }
}

/// `mda-lmtp`; returns the exit code.
pub fn main(argv: &[String]) -> i32 {
    let flags = match goflag::parse(FLAGS, argv) {
        Ok(f) => f,
        Err(stop) => {
            if !stop.message.is_empty() {
                eprintln!("{}", stop.message);
            }
            eprint!("{}", usage());
            return stop.code;
        }
    };
    let addr = flags.string("addr");
    if addr.is_empty() {
        return exit_with(PERMFAIL, "No LMTP server address given (use --addr)");
    }
    let (mut from, mut rcpt) = (flags.string("f"), flags.string("d"));
    if flags.boolean("to_puny") {
        from = match puny::to_ascii(&from) {
            Ok(f) => f,
            Err(e) => return exit_with(PERMFAIL, &format!("cannot puny-encode from: {e}")),
        };
        rcpt = match puny::to_ascii(&rcpt) {
            Ok(r) => r,
            Err(e) => return exit_with(PERMFAIL, &format!("cannot puny-encode recipient: {e}")),
        };
    }
    let mut network = flags.string("addr_network");
    if network.is_empty() {
        network = if addr.starts_with('/') { "unix" } else { "tcp" }.to_string();
    }
    for a in [&mut from, &mut rcpt] {
        if a == "<>" {
            a.clear();
        }
    }
    // Nothing of the envelope may break the command lines.
    if from.contains(['\r', '\n']) || rcpt.contains(['\r', '\n']) {
        return exit_with(PERMFAIL, "invalid address: line break in -f or -d");
    }
    let hostname = tambo_common::config::system_hostname();
    let data = match spool_stdin() {
        Ok(d) => d,
        Err(e) => return exit_with(TEMPFAIL, &format!("Error reading the message: {}", io_error(&e))),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return exit_with(TEMPFAIL, &format!("Error starting: {e}")),
    };
    rt.block_on(deliver(&network, &addr, &hostname, &from, &rcpt, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_endings() {
        let mut last = 0;
        let mut out = Vec::new();
        to_crlf(b"a\nb\r", &mut last, &mut out);
        to_crlf(b"\nc\n\n", &mut last, &mut out);
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n");
    }

    #[test]
    fn messages() {
        assert_eq!(go_reply(452, "Nananana"), "452 \"Nananana\"");
        assert!(usage().contains("  -to_puny\n    \tEncode addresses using punycode\n"));
    }
}
