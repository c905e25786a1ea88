//! HAProxy started by a test from a configuration of its own, in the
//! foreground, killed on drop.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_for;

/// A running haproxy.
pub struct Haproxy(Child);

impl Haproxy {
    /// Write `config` to `dir/haproxy.cfg`, start haproxy on it and wait
    /// until each of `ports` accepts on 127.0.0.1.
    pub fn start(dir: &Path, config: &str, ports: &[u16]) -> Haproxy {
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = Haproxy(child);
        for port in ports {
            wait_for(Duration::from_secs(10), "haproxy listening", || {
                TcpStream::connect(("127.0.0.1", *port)).is_ok()
            });
        }
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
