//! Real peers for the edge of smtpd: haproxy in front of the smtp port with
//! `send-proxy` (v1) and `send-proxy-v2`, the client's real IP reaching the
//! Received header; swaks with PIPELINING; BDAT from Python (swaks
//! 20201014, Debian 12's, has no CHUNKING support).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use tambo_tests::haproxy::Haproxy;
use tambo_tests::*;

fn start_haproxy(dir: &std::path::Path, smtp_port: u16, v1: u16, v2: u16) -> Haproxy {
    let config = format!(
        "global\n  maxconn 200\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend b1\n\
         backend b1\n  server s1 127.0.0.1:{smtp_port} send-proxy\n\
         frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend b2\n\
         backend b2\n  server s2 127.0.0.1:{smtp_port} send-proxy-v2\n"
    );
    Haproxy::start(dir, &config, &[v1, v2])
}

fn swaks_via(port: u16, source: &str, body: &str) -> (bool, String) {
    run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}")])
        .args(["--local-interface", source])
        .args(["--from", "sender@remote.example", "--to", USER])
        .args(["--body", body, "--pipeline", "--timeout", "30"]))
}

#[test]
fn haproxy_v1_and_v2_pass_the_client_ip() {
    assert!(have("haproxy"), "haproxy is needed (apt-get install haproxy)");
    assert!(have("swaks"), "swaks is needed");
    let env = TestEnv::new("haproxy_incoming: true");
    let server = env.start_haproxy_incoming();
    let (v1, v2) = (free_port(), free_port());
    let _haproxy = start_haproxy(env.tmp.path(), env.smtp_port, v1, v2);

    // swaks, pipelining, through haproxy from 127.0.0.2 (v1) and
    // 127.0.0.3 (v2): the Received header shows those addresses.
    let (ok, out) = swaks_via(v1, "127.0.0.2", "via-proxy-v1");
    assert!(ok, "{out}");
    assert!(out.contains("PIPELINING"), "{out}");
    let got = env.wait_delivered(USER, "via-proxy-v1");
    let received = got.lines().next().unwrap_or_default().to_string();
    assert!(got.contains("[127.0.0.2]"), "Received shows the client IP: {received}");
    let (ok, out) = swaks_via(v2, "127.0.0.3", "via-proxy-v2");
    assert!(ok, "{out}");
    let got = env.wait_delivered(USER, "via-proxy-v2");
    let second = &got[got.find("via-proxy-v1").unwrap_or(0)..];
    assert!(second.contains("[127.0.0.3]"), "v2 passes the client IP: {second}");
    let log = server.log();
    assert!(
        log.contains("ip=\"127.0.0.2\"") && log.contains("ip=\"127.0.0.3\""),
        "{log}"
    );

    // Without a header (a direct client) the connection closes with no
    // reply at all.
    let mut s = TcpStream::connect(("127.0.0.1", env.smtp_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(b"EHLO direct.example\r\n").expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        buf.is_empty(),
        "no reply without a PROXY header: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // A malformed v1 header likewise.
    let mut s = TcpStream::connect(("127.0.0.1", env.smtp_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n").expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // A v2 LOCAL header (health check) keeps the connection's own address.
    let mut s = TcpStream::connect(("127.0.0.1", env.smtp_port)).expect("connect");
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").expect("write");
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).expect("greeting");
    assert!(line.starts_with("220"), "{line}");
    assert!(log_has_no_panic(&server.log()));
}

fn log_has_no_panic(log: &str) -> bool {
    !log.contains("panicked")
}

#[test]
fn python_bdat_and_swaks_pipelining() {
    assert!(have("swaks"), "swaks is needed");
    let env = TestEnv::new("");
    let _server = env.start();
    let (ok, out) = run(Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", env.smtp_port)])
        .args([
            "--from",
            "sender@remote.example",
            "--to",
            &format!("{USER},bob@example.com"),
        ])
        .args(["--body", "swaks-pipelined-body", "--pipeline", "--timeout", "30"]));
    assert!(ok, "{out}");
    // swaks sent MAIL, both RCPTs and DATA in one go.
    assert!(out.contains(" -> DATA\n<-  250 2.1.0"), "{out}");
    env.wait_delivered(USER, "swaks-pipelined-body");
    env.wait_delivered("bob@example.com", "swaks-pipelined-body");

    // BDAT from Python's smtplib (docmd for the command, send for the
    // chunk): two chunks with a CRLF split between them, then LAST.
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {port})\n\
         code, msg = s.ehlo('py.example')\n\
         assert s.has_extn('chunking'), msg\n\
         assert s.docmd('MAIL FROM:<py@remote.example>')[0] == 250\n\
         assert s.docmd('RCPT TO:<{USER}>')[0] == 250\n\
         c1 = b'Subject: py bdat\\r\\n\\r\\npython-bdat-body\\r'\n\
         c2 = b'\\n.line with a dot\\r\\n'\n\
         s.send(b'BDAT %d\\r\\n' % len(c1) + c1)\n\
         r = s.getreply(); assert r[0] == 250, r\n\
         s.send(b'BDAT %d LAST\\r\\n' % len(c2) + c2)\n\
         r = s.getreply(); assert r[0] == 250, r\n\
         print(r[1].decode())\n\
         s.quit()\n",
        port = env.smtp_port
    );
    let (ok, out) = run(Command::new("python3").args(["-c", &script]));
    assert!(ok, "{out}");
    assert!(out.contains("queued as"), "{out}");
    let got = env.wait_delivered(USER, "python-bdat-body");
    assert!(got.contains("python-bdat-body\r\n.line with a dot\r\n"), "{got}");
}
