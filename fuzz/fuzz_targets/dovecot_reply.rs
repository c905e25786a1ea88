//! authd's Dovecot auth client, on whatever a (possibly broken) Dovecot
//! answers through its sockets: "yes" only when the answer lines say so
//! for this request's id, and every exchange ends (no hang, no panic).
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

#[path = "common.rs"]
mod common;
#[path = "../../authd/src/dovecot.rs"]
#[allow(dead_code)]
mod dovecot;

/// A socket path in a private directory (kept for the process's life).
fn socket_path() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tambo-fuzz-dovecot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        dir.join("auth")
    })
}

/// Answer one connection with `reply`, then close; run `client` against it.
async fn exchange<F, T>(reply: &[u8], client: F) -> T
where
    F: std::future::Future<Output = T>,
{
    let path = socket_path();
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    let reply = reply.to_vec();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let _ = s.write_all(&reply).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let out = client.await;
    let _ = server.await;
    out
}

/// Whether a line of `reply` starts with `prefix`, after a line starting
/// with `after` (or anywhere when `after` is empty).
fn has_line(reply: &[u8], prefix: &str, after: &str) -> bool {
    let text = String::from_utf8_lossy(reply);
    let mut seen = after.is_empty();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if seen && line.starts_with(prefix) {
            return true;
        }
        if !after.is_empty() && line == after {
            seen = true;
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let path = socket_path().to_str().expect("UTF-8 path").to_string();
    common::block_on(async {
        // The first request of a new client has id 1.
        let d = dovecot::Dovecot::new(&path, "");
        let exists = exchange(data, d.exists("carol@example.com")).await;
        if let Ok(true) = exists {
            assert!(has_line(data, "USER\t1", ""));
        }
        let d = dovecot::Dovecot::new("", &path);
        let auth = exchange(data, d.authenticate("carol@example.com", "pw")).await;
        if let Ok(true) = auth {
            assert!(has_line(data, "OK\t1", "DONE"));
        }
    });
});
