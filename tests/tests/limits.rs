//! Connection limits and timeouts, and 2,000 idle connections held open
//! while a new client is still served (with smtpd's memory per idle
//! connection measured).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
use tambo_tests::*;

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src`.
fn connect_from(src: Ipv4Addr, port: u16) -> TcpStream {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(src, 0)),
    )
    .expect("bind source");
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)),
    )
    .expect("connect");
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s
}

fn first_line(s: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn per_ip_and_total_limits_and_timeouts() {
    let env = TestEnv::new(
        "max_connections: 5\nmax_connections_per_ip: 3\ncommand_timeout_secs: 2\nconnection_timeout_secs: 5",
    );
    let _server = env.start();
    // The harness's readiness probe came from 127.0.0.1: end one session
    // cleanly and give the server a moment, so no slot is still taken.
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("QUIT").starts_with("221"));
    assert!(c.is_closed());
    std::thread::sleep(Duration::from_millis(500));
    let a = Ipv4Addr::new(127, 0, 0, 5);
    // Per IP: the 4th connection from one address is refused with 421.
    let held: Vec<TcpStream> = (0..3).map(|_| connect_from(a, env.smtp_port)).collect();
    for s in &held {
        assert!(first_line(s).starts_with("220"));
    }
    let extra = connect_from(a, env.smtp_port);
    assert!(first_line(&extra).starts_with("421 4.7.0"), "per-IP limit");
    // Another address still gets in, until the total (5) is reached.
    let b = Ipv4Addr::new(127, 0, 0, 2);
    let b1 = connect_from(b, env.smtp_port);
    let b2 = connect_from(b, env.smtp_port);
    assert!(first_line(&b1).starts_with("220"));
    assert!(first_line(&b2).starts_with("220"));
    let c = connect_from(Ipv4Addr::new(127, 0, 0, 3), env.smtp_port);
    assert!(first_line(&c).starts_with("421 4.7.0"), "total limit");
    drop((b1, b2, c, extra));

    // Command timeout: a silent client is told 421 4.4.2 after 2 s.
    let mut idle = held.into_iter().next().expect("one");
    let t = Instant::now();
    let line = first_line(&idle);
    assert!(line.starts_with("421 4.4.2"), "{line}");
    assert!(t.elapsed() >= Duration::from_secs(1), "not before the timeout");
    assert!(
        idle.write_all(b"NOOP\r\n").is_err() || first_line(&idle).is_empty(),
        "closed"
    );

    // Whole-connection limit: a client that keeps talking is cut at 5 s.
    let s = connect_from(Ipv4Addr::new(127, 0, 0, 4), env.smtp_port);
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    let t = Instant::now();
    let last = loop {
        assert!(t.elapsed() < Duration::from_secs(30), "never cut");
        if w.write_all(b"NOOP\r\n").is_err() {
            break String::new();
        }
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break String::new();
        }
        if !line.starts_with("250") {
            break line.clone();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(last.starts_with("421 4.4.2"), "{last:?}");
    assert!(t.elapsed() >= Duration::from_secs(3));
}

#[test]
fn two_thousand_idle_connections_and_a_new_client_is_served() {
    const N: usize = 2000;
    // The test process itself needs the file descriptors too.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    assert!(
        hard >= 2 * N as u64 + 100,
        "hard RLIMIT_NOFILE {hard} is too low for this test"
    );

    let env = TestEnv::new("max_connections: 3000\nmax_connections_per_ip: 3000");
    let server = env.start();
    let smtpd = server.worker_pid("smtpd");
    // Warm up (one full session) so the baseline includes the runtime's
    // steady state, then measure.
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("QUIT").starts_with("221"));
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(smtpd);
    let mut held = Vec::with_capacity(N);
    for i in 0..N {
        let s = TcpStream::connect(("127.0.0.1", env.smtp_port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let g = first_line(&s);
        assert!(g.starts_with("220"), "connection {i}: {g:?}");
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(smtpd);
    let per_conn = (after.saturating_sub(before)) as f64 / N as f64;
    eprintln!(
        "smtpd RSS: {before} KiB before, {after} KiB with {N} idle connections: {per_conn:.1} KiB per idle connection"
    );

    // A new client is still served, end to end.
    let mut c = RawClient::connect(env.smtp_port);
    assert!(c.cmd("EHLO client.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@remote.example>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{USER}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(
        c.cmd("Subject: x\r\n\r\nserved-while-2000-idle\r\n.")
            .starts_with("250")
    );
    env.wait_delivered(USER, "served-while-2000-idle");
    // Every idle connection is still open and answers.
    for s in held.iter_mut().step_by(97) {
        s.write_all(b"NOOP\r\n").expect("write");
        assert!(first_line(s).starts_with("250"));
    }
    assert!(per_conn < 64.0, "{per_conn:.1} KiB per idle connection");
}

/// Issue 17 item 3: a slow-loris. 5,000 connections from 100 addresses
/// (50 each, the per-IP limit) sit idle after the greeting, and 200 more
/// trickle one byte a second: half an EHLO, half a message body in DATA.
/// Meanwhile new clients from another address are served end to end,
/// every second for 12 s, within the configured limits
/// (`max_connections: 6000`).
#[test]
fn a_slow_loris_of_5000_connections_and_200_trickling_clients() {
    const IDLE: usize = 5000;
    const TRICKLE: usize = 200;
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    assert!(
        hard >= 2 * (IDLE + TRICKLE) as u64 + 100,
        "hard RLIMIT_NOFILE {hard} is too low for this test"
    );
    let env = TestEnv::new("max_connections: 6000");
    let server = env.start();
    let source = |i: usize| Ipv4Addr::new(127, 0, 1 + (i / 50 / 250) as u8, 1 + ((i / 50) % 250) as u8);
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let s = connect_from(source(i), env.smtp_port);
        let g = first_line(&s);
        assert!(g.starts_with("220"), "idle connection {i}: {g:?}");
        idle.push(s);
    }
    let connected = started.elapsed();
    // The tricklers come from other addresses still (50 each).
    let mut trickle: Vec<(TcpStream, Vec<u8>)> = (0..TRICKLE)
        .map(|i| {
            let mut s = connect_from(source(IDLE + i), env.smtp_port);
            assert!(first_line(&s).starts_with("220"));
            let rest = if i % 2 == 0 {
                b"EHLO trickle.example\r\n".to_vec()
            } else {
                s.write_all(b"MAIL FROM:<t@remote.example>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
                    .expect("write");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                for _ in 0..3 {
                    let mut line = String::new();
                    r.read_line(&mut line).expect("reply");
                }
                b"Subject: trickle\r\n\r\nslowly, one byte a second\r\n".to_vec()
            };
            (s, rest)
        })
        .collect();

    let mut served = 0;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        for (s, rest) in trickle.iter_mut() {
            if !rest.is_empty() {
                let b = rest.remove(0);
                s.write_all(&[b]).expect("trickle");
            }
        }
        let t = Instant::now();
        let marker = format!("served-under-loris-{served}");
        let reply = send_message(
            env.smtp_port,
            "a@remote.example",
            &[USER],
            &format!("Subject: x\r\n\r\n{marker}\r\n"),
        );
        assert!(reply.starts_with("250"), "{reply}");
        slowest = slowest.max(t.elapsed());
        served += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    env.wait_delivered(USER, &format!("served-under-loris-{}", served - 1));
    eprintln!(
        "slow-loris: {IDLE} idle connections in {:.1} s, {TRICKLE} trickling 1 byte/s; {served} new clients \
         served end to end, the slowest in {} ms",
        connected.as_secs_f64(),
        slowest.as_millis()
    );
    // The idle ones are still open and answer.
    for s in idle.iter_mut().step_by(499) {
        s.write_all(b"NOOP\r\n").expect("write");
        assert!(first_line(s).starts_with("250"));
    }
    assert!(!server.log().contains("panicked"));
}
