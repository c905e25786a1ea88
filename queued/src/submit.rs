//! Local submission through the control socket (`sendmail`): the message
//! arrives in bounded frames after the request and is queued exactly like
//! one from smtpd (aliases, Received, DKIM, post-data hook).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tambo_common::names::{normalize_address, split_address};
use tambo_ipc::async_chan::FrameReceiver;
use tambo_ipc::proto::{IncomingEnvelope, ListenerKind, QueueReply, QueueRequest, SUBMIT_CHUNK, SmtpReply};

use crate::manager::Queue;

/// Time the client has to send each data frame.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);
/// Recipients accepted per submission.
const MAX_RCPTS: usize = 1000;

fn text(r: &SmtpReply) -> String {
    r.line()
}

/// Receive and queue one message; its queue ID, or an error starting with
/// an SMTP reply code. `user` is the submitter's name (of `uid`), as the
/// supervisor found it.
pub async fn submit(
    queue: &Arc<Queue>,
    rx: &mut FrameReceiver,
    uid: u32,
    user: Option<String>,
    from: String,
    rcpts: Vec<String>,
) -> Result<String, String> {
    let from = if from.is_empty() {
        String::new()
    } else {
        normalize_address(&from).map_err(|e| format!("553 5.1.7 Bad sender address {from:?}: {e}"))?
    };
    if from.contains(char::is_whitespace) || from.len() > 320 {
        return Err(format!("553 5.1.7 Bad sender address {from:?}"));
    }
    if rcpts.is_empty() {
        return Err("554 5.5.1 No recipients".into());
    }
    if rcpts.len() > MAX_RCPTS {
        return Err(format!("452 4.5.3 Too many recipients (at most {MAX_RCPTS})"));
    }
    let mut norm = Vec::with_capacity(rcpts.len());
    for r in &rcpts {
        let a = normalize_address(r).map_err(|e| format!("553 5.1.3 Bad recipient address {r:?}: {e}"))?;
        if !a.contains('@') || a.contains(char::is_whitespace) || a.len() > 320 {
            return Err(format!("553 5.1.3 Bad recipient address {r:?}"));
        }
        if !norm.contains(&a) {
            norm.push(a);
        }
    }
    let s = queue.settings();
    let max = u64::try_from(s.config.max_data_size_mb).unwrap_or(0) * 1024 * 1024;
    let (id, fd) = match queue.new_message() {
        (QueueReply::MessageSlot { id }, mut fds) if fds.len() == 1 => (id, fds.remove(0)),
        (QueueReply::Refused(r), _) => return Err(text(&r)),
        _ => return Err("451 4.3.0 Cannot queue the message now".into()),
    };
    let mut file = File::from(fd);
    let size = match receive(rx, &mut file, max).await {
        Ok(n) => n,
        Err(e) => {
            queue.handle(QueueRequest::Abort { id }).await;
            return Err(e);
        }
    };
    // An authenticated local user, when the machine's name (or its parent
    // domain) is a local domain: the message is then signed with that
    // domain's DKIM keys.
    let host = s.config.hostname.to_ascii_lowercase();
    let parent = host.split_once('.').map(|(_, p)| p.to_string()).unwrap_or_default();
    let domain = [host, parent]
        .into_iter()
        .find(|d| d.contains('.') && s.local_domains.contains(d));
    let auth_user = match (user, domain) {
        (Some(u), Some(d)) => Some(format!("{u}@{d}")),
        _ => None,
    };
    let (_, from_domain) = split_address(&from);
    tracing::info!(id, uid, from, from_domain, "local submission received ({size} bytes)");
    let env = IncomingEnvelope {
        mail_from: from,
        rcpts: norm,
        helo: "localhost".into(),
        remote_ip: "127.0.0.1".into(),
        remote_port: 0,
        auth_user,
        tls: None,
        protocol: "local".into(),
        data_size: size,
        listener: ListenerKind::Submission,
        auth_headers: String::new(),
        spf_pass: None,
        arc: tambo_ipc::proto::ArcChain::Unknown,
    };
    match queue.commit(&id, env).await {
        QueueReply::Committed { id } => Ok(id),
        QueueReply::Refused(r) => Err(text(&r)),
        _ => Err("451 4.3.0 Cannot queue the message now".into()),
    }
}

/// Copy the data frames into the file, at most `max` bytes; the size.
async fn receive(rx: &mut FrameReceiver, file: &mut File, max: u64) -> Result<u64, String> {
    let mut total = 0u64;
    loop {
        let chunk: Vec<u8> = match tokio::time::timeout(CHUNK_TIMEOUT, rx.recv::<Vec<u8>>()).await {
            Ok(Ok((c, _))) => c,
            Ok(Err(e)) => return Err(format!("451 4.3.0 Reading the message: {e}")),
            Err(_) => return Err("451 4.4.2 Timed out reading the message".into()),
        };
        if chunk.is_empty() {
            break;
        }
        if chunk.len() > SUBMIT_CHUNK {
            return Err("554 5.3.0 Data frame too large".into());
        }
        total += chunk.len() as u64;
        if total > max {
            return Err(format!("552 5.3.4 Message too big (max {} bytes)", max));
        }
        file.write_all(&chunk).map_err(|e| writing_failed(&e))?;
    }
    file.sync_data().map_err(|e| writing_failed(&e))?;
    Ok(total)
}

/// The reply when the data file cannot be written: 452 for a full disk.
fn writing_failed(e: &std::io::Error) -> String {
    if tambo_common::is_storage_full(e) {
        tambo_common::storage_full_line()
    } else {
        format!("451 4.3.0 Writing the message: {e}")
    }
}
