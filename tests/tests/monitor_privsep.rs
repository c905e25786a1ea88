//! The monitoring endpoint is served by the unprivileged smtpd, not by the
//! (root) supervisor: the supervisor binds `monitoring_address` and hands
//! the socket over; a client's connection is owned by smtpd's process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tambo_tests::{TestEnv, free_port, wait_for};

/// Socket inodes of the ESTABLISHED IPv4 connections whose local port is
/// `port` (the server side of connections to it).
fn server_side_inodes(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && f.get(3) == Some(&"01")).then(|| f.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

/// Whether process `pid` holds socket `inode`.
fn holds(pid: u32, inode: &str) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        })
        .unwrap_or(false)
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn monitoring_connections_belong_to_smtpd() {
    let mon = free_port();
    let env = TestEnv::new("");
    let server = env.start_with_args(&[&format!("--config_overrides=monitoring_address: \"127.0.0.1:{mon}\"")]);
    let smtpd = server.worker_pid("smtpd");
    let supervisor = server.pid();

    // An unfinished request keeps the connection open on the server side.
    let mut held = TcpStream::connect(("127.0.0.1", mon)).expect("connect");
    held.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let mut inodes = Vec::new();
    wait_for(Duration::from_secs(10), "the accepted connection", || {
        inodes = server_side_inodes(mon);
        inodes.iter().any(|i| holds(smtpd, i))
    });
    for i in &inodes {
        assert!(!holds(supervisor, i), "the supervisor holds a monitoring connection");
    }
    // Finishing the request gets the metrics, from every worker.
    held.write_all(b"\r\n").unwrap();
    held.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut text = String::new();
    let _ = held.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("tambo_smtp_connections_total"), "{text}");
    assert!(text.contains("tambo_queue_messages 0"), "{text}");
    assert!(text.contains("tambo_worker_up{worker=\"authd\"} 1"), "{text}");

    let health = get(mon, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    // Bad requests get precise errors.
    let mut s = TcpStream::connect(("127.0.0.1", mon)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&vec![b'a'; 9000]).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // smtpd restarts: the endpoint comes back with it, on the same socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(smtpd as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "smtpd restarted", || {
        server.workers().iter().any(|(n, p)| n == "smtpd" && *p != smtpd)
    });
    let text = get(mon, "/metrics");
    assert!(
        text.contains("tambo_worker_restarts_total{worker=\"smtpd\"} 1"),
        "{text}"
    );
}
