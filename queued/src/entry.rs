//! A queue entry: the envelope of one message and the state of each of its
//! recipients, stored as `queue/<id>.env` (JSON) beside `queue/<id>.data`.

use serde::{Deserialize, Serialize};
use tambo_ipc::proto::RcptRoute;

/// Format version of the envelope file.
pub const ENTRY_VERSION: u32 = 1;

/// Where a recipient stands.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    /// Not delivered yet; will be tried at `next_attempt`.
    Pending,
    /// Delivered (recorded durably: never tried again).
    Delivered,
    /// Failed for good.
    Failed,
}

/// One final recipient.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RcptEntry {
    /// Final address (after alias expansion).
    pub address: String,
    /// The address the client gave at RCPT TO.
    pub original: String,
    /// How deliverd reaches it.
    pub route: RcptRoute,
    /// The envelope sender for this recipient when it is not the
    /// message's (SRS for forwarded mail).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// Current state.
    pub state: RcptState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last error, for mailq and DSNs.
    pub last_error: String,
    /// Unix time of the next attempt.
    pub next_attempt: u64,
    /// Unix time of the last attempt (0: none yet), for DSNs.
    #[serde(default)]
    pub last_attempt: u64,
    /// Failed because it stayed too long in the queue (`give_up_send_after`)
    /// rather than by a permanent error.
    #[serde(default)]
    pub gave_up: bool,
}

/// The whole envelope.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Always [`ENTRY_VERSION`].
    pub version: u32,
    /// Queue ID.
    pub id: String,
    /// Envelope sender; empty for `<>`.
    pub from: String,
    /// Unix time the message was accepted.
    pub created: u64,
    /// Header lines prepended at delivery (Received, hook output), CRLF.
    pub header_prefix: String,
    /// Recipients and their state.
    pub rcpts: Vec<RcptEntry>,
    /// Client IP address.
    pub remote_ip: String,
    /// EHLO name.
    pub helo: String,
    /// Authenticated user, if any.
    pub auth_user: Option<String>,
    /// Size of the data file in bytes.
    pub data_size: u64,
    /// Held by the operator: not delivered until released.
    #[serde(default)]
    pub held: bool,
    /// This message is a delivery status notification we generated.
    #[serde(default)]
    pub is_dsn: bool,
    /// For a DSN: the queue ID of the message it reports on. While that
    /// message is still queued (after a crash), this DSN is not delivered:
    /// the message is removed first (see `Queue::start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsn_of: Option<String>,
}

impl QueueEntry {
    /// Whether some recipient still waits for delivery.
    pub fn has_pending(&self) -> bool {
        self.rcpts.iter().any(|r| r.state == RcptState::Pending)
    }

    /// Serialise for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parse a stored envelope, checking version and consistency.
    pub fn from_bytes(bytes: &[u8], id: &str) -> Result<QueueEntry, String> {
        let e: QueueEntry = serde_json::from_slice(bytes).map_err(|e| format!("line {}: {e}", e.line()))?;
        if e.version != ENTRY_VERSION {
            return Err(format!("unknown version {}", e.version));
        }
        if e.id != id {
            return Err(format!("file is named {id} but holds {}", e.id));
        }
        if e.rcpts.is_empty() {
            return Err("no recipients".into());
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QueueEntry {
        QueueEntry {
            version: ENTRY_VERSION,
            id: "abc".into(),
            from: "a@b".into(),
            created: 1,
            header_prefix: "Received: x\r\n".into(),
            rcpts: vec![RcptEntry {
                address: "u@l".into(),
                original: "u@l".into(),
                sender: None,
                route: RcptRoute::Local {
                    user: "u".into(),
                    domain: "l".into(),
                },
                state: RcptState::Pending,
                attempts: 0,
                last_error: String::new(),
                next_attempt: 0,
                last_attempt: 0,
                gave_up: false,
            }],
            remote_ip: "127.0.0.1".into(),
            helo: "h".into(),
            auth_user: None,
            data_size: 10,
            held: false,
            is_dsn: false,
            dsn_of: None,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let e = sample();
        assert_eq!(QueueEntry::from_bytes(&e.to_bytes(), "abc").unwrap(), e);
        assert!(
            QueueEntry::from_bytes(&e.to_bytes(), "other")
                .unwrap_err()
                .contains("named")
        );
        assert!(
            QueueEntry::from_bytes(b"{\n\"version\": 1,\n garbage", "abc")
                .unwrap_err()
                .starts_with("line")
        );
        let mut bad = sample();
        bad.rcpts.clear();
        assert!(QueueEntry::from_bytes(&bad.to_bytes(), "abc").is_err());
    }
}
