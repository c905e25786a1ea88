//! `sendmail`: the injector for cron and scripts. The message on stdin is
//! handed to the running server through the control socket (only root and
//! the admin group may use it: no setuid, no world-writable spool).

use std::io::{BufRead, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tambo_ipc::IpcError;
use tambo_ipc::frame::Hello;
use tambo_ipc::proto::{ADMIN_CHANNEL, AdminReply, AdminRequest, SUBMIT_CHUNK};
use tambo_ipc::sync_chan::SyncChannel;

/// sysexits.h codes.
pub const EX_USAGE: i32 = 64;
/// Refused message or sender.
pub const EX_DATAERR: i32 = 65;
/// Unknown recipient.
pub const EX_NOUSER: i32 = 67;
/// Internal error.
pub const EX_SOFTWARE: i32 = 70;
/// I/O error reading the message.
pub const EX_IOERR: i32 = 74;
/// The server is away; try later.
pub const EX_TEMPFAIL: i32 = 75;
/// Not allowed on the control socket.
pub const EX_NOPERM: i32 = 77;

/// A failure and its exit code.
#[derive(Debug)]
pub struct Failure(pub i32, pub String);

/// The parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-i`/`-oi`: a lone "." line does not end the message.
    pub ignore_dots: bool,
    /// `-t`: recipients from To/Cc/Bcc.
    pub from_headers: bool,
    /// `-f`: the envelope sender.
    pub sender: Option<String>,
    /// `-C`: the configuration directory.
    pub config_dir: Option<PathBuf>,
    /// Recipients given as arguments.
    pub rcpts: Vec<String>,
}

fn usage(msg: String) -> Failure {
    Failure(EX_USAGE, msg)
}

/// Parse sendmail's arguments (without argv[0]).
pub fn parse_args(args: &[String]) -> Result<Options, Failure> {
    let mut o = Options::default();
    let mut i = 0;
    let mut only_rcpts = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_rcpts || !a.starts_with('-') || a == "-" {
            o.rcpts.push(a.clone());
            continue;
        }
        // An option with its value attached or in the next argument.
        let mut value = |flag: &str| -> Result<String, Failure> {
            if a.len() > flag.len() {
                Ok(a[flag.len()..].to_string())
            } else if i < args.len() {
                i += 1;
                Ok(args[i - 1].clone())
            } else {
                Err(usage(format!("option {flag} needs a value")))
            }
        };
        match a.as_str() {
            "--" => only_rcpts = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-t" => o.from_headers = true,
            // Harmless: background/interactive delivery, error modes,
            // "deliver mail" mode, verbose, 8-bit body.
            "-bm" | "-odi" | "-odb" | "-odq" | "-oem" | "-oee" | "-oep" | "-oeq" | "-oew" | "-v" | "-U" | "-om"
            | "-Am" | "-Ac" => {}
            "-B7BIT" | "-B8BITMIME" => {}
            _ if a.starts_with("-f") || a.starts_with("-r") => o.sender = Some(value(&a[..2])?),
            _ if a.starts_with("-F") => {
                // The full name: tambo does not write From: headers.
                value("-F")?;
            }
            _ if a.starts_with("-C") => o.config_dir = Some(PathBuf::from(value("-C")?)),
            _ if a.starts_with("-B") || a.starts_with("-N") || a.starts_with("-R") || a.starts_with("-V") => {
                // Body type, DSN notify/return, envelope ID: ignored.
                value(&a[..2])?;
            }
            _ if a.starts_with("-b") => {
                return Err(usage(format!(
                    "sendmail: mode {a} is not supported (only -bm, delivering a message from stdin)"
                )));
            }
            _ => return Err(usage(format!("sendmail: unsupported option {a}"))),
        }
    }
    Ok(o)
}

/// Read the message: LF (or CRLF) lines become CRLF lines; without
/// `ignore_dots` a line of a single "." ends it. At most `max` bytes.
pub fn read_message(input: &mut impl BufRead, ignore_dots: bool, max: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| Failure(EX_IOERR, format!("sendmail: reading the message: {e}")))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if !ignore_dots && line == b"." {
            break;
        }
        if out.len() + line.len() + 2 > max {
            return Err(Failure(
                EX_DATAERR,
                format!("sendmail: the message is larger than {max} bytes"),
            ));
        }
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// End of the header section (the offset after its CRLF CRLF), or the
/// whole message when it has no body.
fn header_end(msg: &[u8]) -> usize {
    if msg.starts_with(b"\r\n") {
        return 0;
    }
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len())
}

/// `-t`: the addresses of To, Cc and Bcc, and the message without its Bcc
/// header fields.
pub fn recipients_from_headers(msg: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = header_end(msg);
    let mut out = Vec::with_capacity(msg.len());
    let mut rcpts = Vec::new();
    // Split the header section into fields (a field and its folded lines).
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let head = &msg[..end];
    let mut pos = 0;
    while pos < head.len() {
        let next = head[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| pos + p + 2)
            .unwrap_or(head.len());
        if pos > start && !matches!(head.get(pos), Some(b' ' | b'\t')) {
            fields.push(&head[start..pos]);
            start = pos;
        }
        pos = next;
    }
    if start < head.len() {
        fields.push(&head[start..]);
    }
    for f in fields {
        let text = String::from_utf8_lossy(f);
        let (name, value) = match text.split_once(':') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), v.to_string()),
            None => (String::new(), String::new()),
        };
        if matches!(name.as_str(), "to" | "cc" | "bcc") {
            for a in parse_address_list(&value.replace("\r\n", "")) {
                if !rcpts.contains(&a) {
                    rcpts.push(a);
                }
            }
        }
        if name != "bcc" {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(&msg[end..]);
    (rcpts, out)
}

/// The addresses of an RFC 5322 address list: `a@b, "Name" <c@d>,
/// group: e@f;`, comments dropped.
pub fn parse_address_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut comment, mut angle) = (false, 0u32, false);
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted || comment > 0 => {
                chars.next();
            }
            '"' if comment == 0 => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => comment += 1,
            ')' if !quoted && comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            '<' if !quoted => {
                angle = true;
                cur.clear();
            }
            '>' if !quoted && angle => {
                angle = false;
                items.push(std::mem::take(&mut cur));
                cur.push('\u{0}');
            }
            ':' if !quoted && !angle => cur.clear(), // a group's name
            ',' | ';' if !quoted && !angle => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && !s.starts_with('\u{0}') && !s.contains('"'))
        .collect()
}

/// Run sendmail with these arguments: the exit code.
/// `default_config` is used without `-C`.
pub fn main(args: &[String], default_config: &Path) -> i32 {
    match run(args, default_config) {
        Ok(()) => 0,
        Err(Failure(code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

fn run(args: &[String], default_config: &Path) -> Result<(), Failure> {
    let o = parse_args(args)?;
    let config_dir = o.config_dir.clone().unwrap_or_else(|| default_config.to_path_buf());
    let config = tambo_common::config::load_config(&config_dir, None)
        .map_err(|e| Failure(EX_TEMPFAIL, format!("sendmail: {e}")))?;
    let max = usize::try_from(config.max_data_size_mb).unwrap_or(0) * 1024 * 1024;
    let sockets = config.control_sockets(&config_dir);
    let stdin = std::io::stdin();
    let mut msg = read_message(&mut stdin.lock(), o.ignore_dots, max)?;
    let mut rcpts = o.rcpts.clone();
    if o.from_headers {
        let (found, stripped) = recipients_from_headers(&msg);
        msg = stripped;
        for r in found {
            if !rcpts.contains(&r) {
                rcpts.push(r);
            }
        }
    }
    if rcpts.is_empty() {
        return Err(usage(
            "sendmail: no recipients (give them as arguments, or use -t)".into(),
        ));
    }
    let from = match &o.sender {
        Some(s) => s.trim_start_matches('<').trim_end_matches('>').to_string(),
        None => {
            let user = nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
            format!("{user}@{}", config.hostname)
        }
    };
    submit(&sockets, from, rcpts, &msg)?;
    Ok(())
}

/// Hand the message to the server (on the first of `sockets` it accepts
/// on); its queue ID.
pub fn submit(sockets: &[PathBuf], from: String, rcpts: Vec<String>, msg: &[u8]) -> Result<String, Failure> {
    let stream = match tambo_common::unixsock::connect_first(sockets) {
        Ok((s, _)) => s,
        Err((_, e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(Failure(
                EX_TEMPFAIL,
                format!(
                    "sendmail: tambod is not running (no control socket at {})",
                    tambo_common::unixsock::or_list(sockets)
                ),
            ));
        }
        Err((socket, e)) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(Failure(
                EX_NOPERM,
                format!(
                    "sendmail: {}: permission denied (only root and members of the group tambo may submit)",
                    socket.display()
                ),
            ));
        }
        Err((socket, e)) => return Err(Failure(EX_TEMPFAIL, format!("sendmail: {}: {e}", socket.display()))),
    };
    let mut ch = SyncChannel::new(stream);
    ch.set_timeout(Some(Duration::from_secs(120)));
    let tmp = |e: IpcError| Failure(EX_TEMPFAIL, format!("sendmail: talking to tambod: {e}"));
    let _ = ch.send(&Hello::new(ADMIN_CHANNEL), &[]);
    let _ = ch.send(&AdminRequest::Submit { from, rcpts }, &[]);
    let (hello, _) = ch.recv::<Hello>().map_err(tmp)?;
    hello
        .check(ADMIN_CHANNEL)
        .map_err(|e| Failure(EX_TEMPFAIL, format!("sendmail: {e}")))?;
    // The server may refuse the envelope before reading the data; its
    // answer is then waiting for us, so a failed send is not the end.
    let mut sent = Ok(());
    for chunk in msg.chunks(SUBMIT_CHUNK).chain(std::iter::once(&[][..])) {
        sent = ch.send(&chunk.to_vec(), &[]);
        if sent.is_err() {
            break;
        }
    }
    let mut id = None;
    loop {
        match ch.recv::<AdminReply>() {
            Ok((AdminReply::Done(t), _)) => id = Some(t.trim_start_matches("queued as ").to_string()),
            Ok((AdminReply::End, _)) => {
                return id.ok_or_else(|| Failure(EX_SOFTWARE, "sendmail: the server said nothing".into()));
            }
            Ok((AdminReply::Error(e), _)) => return Err(Failure(exit_code(&e), format!("sendmail: {e}"))),
            Ok(_) => {}
            Err(e) => {
                return Err(match sent {
                    Err(s) => tmp(s),
                    Ok(()) => tmp(e),
                });
            }
        }
    }
}

/// The exit code for a refusal "CODE X.Y.Z text".
fn exit_code(reply: &str) -> i32 {
    let code = reply.get(..3).unwrap_or("");
    let enhanced = reply.get(4..9).unwrap_or("");
    if code.starts_with('5') {
        if matches!(enhanced, "5.1.1" | "5.1.3") || reply.contains("recipient") {
            EX_NOUSER
        } else {
            EX_DATAERR
        }
    } else {
        EX_TEMPFAIL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        let o = parse_args(&args("-oi -odi -oem -F Cron -f root@x.org a@b -- -c@d")).unwrap_or_default();
        assert!(o.ignore_dots && !o.from_headers);
        assert_eq!(o.sender.as_deref(), Some("root@x.org"));
        assert_eq!(o.rcpts, vec!["a@b", "-c@d"]);
        let o = parse_args(&args("-t -i -fme@x")).unwrap_or_default();
        assert!(o.from_headers && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("me@x"));
        assert_eq!(parse_args(&args("-bs")).map_err(|f| f.0).err(), Some(EX_USAGE));
        assert_eq!(parse_args(&args("-q")).map_err(|f| f.0).err(), Some(EX_USAGE));
        assert_eq!(parse_args(&args("-f")).map_err(|f| f.0).err(), Some(EX_USAGE));
    }

    #[test]
    fn message_lines() {
        let m = read_message(&mut &b"a\nb\r\n.\nc"[..], false, 100).unwrap_or_default();
        assert_eq!(m, b"a\r\nb\r\n");
        let m = read_message(&mut &b"a\nb\r\n.\nc"[..], true, 100).unwrap_or_default();
        assert_eq!(m, b"a\r\nb\r\n.\r\nc\r\n");
        assert!(read_message(&mut &b"0123456789\n"[..], true, 5).is_err());
    }

    #[test]
    fn headers() {
        let m = b"To: A <a@x.org>, b@y.org (Bee)\r\nCc: g: c@z.org, \"D, E\" <d@z.org>;\r\nBcc: s@x.org,\r\n t@x.org\r\nSubject: hi\r\n\r\nTo: body@x\r\n";
        let (r, out) = recipients_from_headers(m);
        assert_eq!(
            r,
            vec!["a@x.org", "b@y.org", "c@z.org", "d@z.org", "s@x.org", "t@x.org"]
        );
        assert_eq!(
            out,
            b"To: A <a@x.org>, b@y.org (Bee)\r\nCc: g: c@z.org, \"D, E\" <d@z.org>;\r\nSubject: hi\r\n\r\nTo: body@x\r\n"
        );
        assert_eq!(exit_code("550 5.1.1 Unknown recipient x"), EX_NOUSER);
        assert_eq!(exit_code("554 5.7.1 no"), EX_DATAERR);
        assert_eq!(exit_code("451 4.3.0 later"), EX_TEMPFAIL);
    }
}
