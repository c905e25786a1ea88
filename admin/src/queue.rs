//! `tambo queue …` and `mailq`: talk to the running server through its
//! control socket (`run_dir/control.sock`).

use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use tambo_ipc::IpcError;
use tambo_ipc::frame::Hello;
use tambo_ipc::proto::{ADMIN_CHANNEL, AdminMessage, AdminReply, AdminRequest};
use tambo_ipc::sync_chan::SyncChannel;

/// How long to wait for the server's answer.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Most reply frames accepted (a listing has one per message).
const MAX_REPLIES: usize = 1_000_000;

/// Where the control socket may be: `--socket`, else the places the
/// configuration in `config_dir` gives (tried in order by [`connect`]).
pub fn socket_paths(config_dir: &Path, explicit: Option<PathBuf>) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(p) = explicit {
        return Ok(vec![p]);
    }
    let config = tambo_common::config::load_config(config_dir, None).map_err(|e| anyhow!("{e}"))?;
    Ok(config.control_sockets(config_dir))
}

/// Send one request and collect the answer's frames (up to `End`).
pub fn request(sockets: &[PathBuf], req: &AdminRequest) -> anyhow::Result<Vec<AdminReply>> {
    let (stream, socket) = connect(sockets)?;
    request_on(stream, &socket, req)
}

/// Connect to the first of `sockets` a server accepts on; the stream and
/// the socket's path.
pub fn connect(sockets: &[PathBuf]) -> anyhow::Result<(UnixStream, PathBuf)> {
    match tambo_common::unixsock::connect_first(sockets) {
        Ok(s) => Ok(s),
        Err((_, e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            bail!(
                "tambod is not running (no control socket at {})",
                tambo_common::unixsock::or_list(sockets)
            )
        }
        Err((socket, e)) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "{}: permission denied (the control socket is for root and the admin group)",
            socket.display()
        ),
        Err((socket, e)) => Err(e).with_context(|| format!("connecting to {}", socket.display())),
    }
}

/// Send one request on a connected control socket and collect the
/// answer's frames (up to `End`).
pub fn request_on(stream: UnixStream, socket: &Path, req: &AdminRequest) -> anyhow::Result<Vec<AdminReply>> {
    let mut ch = SyncChannel::new(stream);
    ch.set_timeout(Some(TIMEOUT));
    // Hello and request go out first; a server that refuses us has
    // already written its answer, so a failed send is not the end.
    let _ = ch.send(&Hello::new(ADMIN_CHANNEL), &[]);
    let _ = ch.send(req, &[]);
    let (hello, _) = ch
        .recv::<Hello>()
        .map_err(|e| anyhow!("{}: no answer from the server: {e}", socket.display()))?;
    hello
        .check(ADMIN_CHANNEL)
        .map_err(|e| anyhow!("{}: {e}", socket.display()))?;
    let mut out = Vec::new();
    while out.len() < MAX_REPLIES {
        match ch.recv::<AdminReply>() {
            Ok((AdminReply::End, _)) => return Ok(out),
            Ok((AdminReply::Error(e), _)) => bail!("{e}"),
            Ok((r, _)) => out.push(r),
            Err(IpcError::Closed) => bail!("the server closed the connection before the end of its answer"),
            Err(e) => bail!("reading the answer: {e}"),
        }
    }
    bail!("the answer is too long")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// "1h02m", "5m03s", "42s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn sender(from: &str) -> String {
    format!("<{from}>")
}

/// The mailq-style listing.
pub fn format_list(msgs: &[AdminMessage]) -> String {
    if msgs.is_empty() {
        return "Mail queue is empty\n".to_string();
    }
    let now = now();
    let mut out = format!(
        "{:<22} {:>9} {:>8}  {}\n",
        "-Queue ID-", "--Size--", "--Age--", "-Sender/Recipients-"
    );
    let mut total = 0u64;
    for m in msgs {
        total += m.size;
        let mark = if m.held { "!" } else { " " };
        out.push_str(&format!(
            "{:<22} {:>9} {:>8}  {}{}\n",
            format!("{}{mark}", m.id),
            m.size,
            human_duration(now.saturating_sub(m.created)),
            sender(&m.from),
            if m.held { "  (held)" } else { "" }
        ));
        for r in &m.rcpts {
            let mut line = format!("{:>43}{:<9} {}", "", r.state, r.address);
            if !r.original.is_empty() {
                line.push_str(&format!(" (for {})", r.original));
            }
            if r.state == "pending" {
                line.push_str(&format!(", {} attempt(s)", r.attempts));
                if r.next_attempt > now {
                    line.push_str(&format!(", next in {}", human_duration(r.next_attempt - now)));
                }
            }
            out.push_str(&line);
            out.push('\n');
            if !r.last_error.is_empty() {
                out.push_str(&format!("{:>53}({})\n", "", r.last_error));
            }
        }
        if m.more_rcpts > 0 {
            out.push_str(&format!("{:>53}… and {} more recipient(s)\n", "", m.more_rcpts));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "-- {} KiB in {} message(s).\n",
        total.div_ceil(1024),
        msgs.len()
    ));
    out
}

fn format_show(replies: &[AdminReply]) -> String {
    let mut out = String::new();
    for r in replies {
        match r {
            AdminReply::Message(m) => {
                out.push_str(&format!("ID:       {}\n", m.id));
                out.push_str(&format!("Size:     {} bytes\n", m.size));
                out.push_str(&format!(
                    "Arrived:  {} ({} ago)\n",
                    httpdate_like(m.created),
                    human_duration(now().saturating_sub(m.created))
                ));
                out.push_str(&format!("From:     {}\n", sender(&m.from)));
                out.push_str(&format!("Held:     {}\n", if m.held { "yes" } else { "no" }));
                for r in &m.rcpts {
                    out.push_str(&format!("To:       {} [{}", r.address, r.state));
                    if !r.original.is_empty() {
                        out.push_str(&format!(", for {}", r.original));
                    }
                    out.push_str(&format!(", {} attempt(s)]\n", r.attempts));
                    if !r.last_error.is_empty() {
                        out.push_str(&format!("          last error: {}\n", r.last_error));
                    }
                }
            }
            AdminReply::Details {
                remote_ip,
                helo,
                auth_user,
                headers,
            } => {
                out.push_str(&format!("Client:   {remote_ip} (EHLO {helo})\n"));
                if let Some(u) = auth_user {
                    out.push_str(&format!("Auth:     {u}\n"));
                }
                out.push('\n');
                out.push_str(&headers.replace("\r\n", "\n"));
            }
            AdminReply::Done(t) => {
                out.push_str(t);
                out.push('\n');
            }
            AdminReply::Error(_) | AdminReply::End => {}
        }
    }
    out
}

/// Seconds since the epoch as a UTC date.
fn httpdate_like(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Run a `tambo queue` action and print its result.
pub fn run(sockets: &[PathBuf], req: AdminRequest) -> anyhow::Result<()> {
    let list = req == AdminRequest::List;
    let replies = request(sockets, &req)?;
    if list {
        let msgs: Vec<AdminMessage> = replies
            .into_iter()
            .filter_map(|r| match r {
                AdminReply::Message(m) => Some(*m),
                _ => None,
            })
            .collect();
        print!("{}", format_list(&msgs));
    } else {
        print!("{}", format_show(&replies));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tambo_ipc::proto::AdminRcpt;

    #[test]
    fn durations_and_dates() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(303), "5m03s");
        assert_eq!(human_duration(3720), "1h02m");
        assert_eq!(human_duration(90000), "1d01h");
        assert_eq!(httpdate_like(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(httpdate_like(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn listing() {
        assert_eq!(format_list(&[]), "Mail queue is empty\n");
        let m = AdminMessage {
            id: "ABC".into(),
            size: 2048,
            created: now() - 10,
            from: "a@b.c".into(),
            held: true,
            rcpts: vec![AdminRcpt {
                address: "u@l".into(),
                original: String::new(),
                state: "pending".into(),
                attempts: 2,
                last_error: "mda exited 75".into(),
                next_attempt: 0,
            }],
            more_rcpts: 0,
        };
        let out = format_list(&[m]);
        assert!(out.contains("ABC!"), "{out}");
        assert!(out.contains("<a@b.c>  (held)"), "{out}");
        assert!(out.contains("pending   u@l, 2 attempt(s)"), "{out}");
        assert!(out.contains("(mda exited 75)"), "{out}");
        assert!(out.contains("-- 2 KiB in 1 message(s)."), "{out}");
    }
}
