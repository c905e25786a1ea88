//! `smtp-check DOMAIN` (tools crate) against an in-process DNS server, a
//! scripted SMTP server with STARTTLS and an HTTPS MTA-STS policy server,
//! all on loopback: chasquid's log lines and exit codes for a domain that
//! passes, and for one whose SPF, certificate and policy fail. (Debian's
//! smtp-check asks the system's resolver, which cannot be pointed at a
//! test DNS server: no differential run here.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tambo_tests::certs::TestCa;
use tambo_tests::fakedns::FakeDns;
use tambo_tests::smtp_peer::{Peer, Script};
use tambo_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An HTTPS server answering every request with `policy`.
async fn policy_server(tls: Arc<rustls::ServerConfig>, policy: &'static str) -> u16 {
    let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let mut r = BufReader::new(tls);
                loop {
                    let mut line = String::new();
                    match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
                        Ok(Ok(n)) if n > 0 && line.trim_end().is_empty() => break,
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                    policy.len()
                );
                let mut tls = r.into_inner();
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Run smtp-check: exit code and its log lines without the timestamps.
async fn smtp_check(dns: &FakeDns, ca: &Path, sts_port: u16, args: &[&str]) -> (i32, Vec<String>) {
    let mut cmd = Command::new(bin("smtp-check"));
    cmd.args(args)
        .env("TAMBO_SMTP_CHECK_DNS", dns.addr.to_string())
        .env("TAMBO_SMTP_CHECK_STS_PORT", sts_port.to_string())
        .env("TAMBO_SMTP_CHECK_CA_FILE", ca);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("smtp-check"))
        .await
        .expect("join");
    assert!(out.stdout.is_empty(), "smtp-check logs to stderr only");
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            // "2006/01/02 15:04:05 " as Go's log writes it.
            let b = l.as_bytes();
            assert!(b.len() >= 20 && b[4] == b'/' && b[13] == b':' && b[19] == b' ', "{l:?}");
            l[20..].to_string()
        })
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_a_domain_like_chasquid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("smtp-check test CA");
    let ca_file = ca.write_pem(tmp.path());
    let dns = FakeDns::start();

    // good.test: an MX with a valid certificate, SPF pass, an MTA-STS
    // policy naming it.
    let good = Peer::start(Script::starttls(Some(ca.server(&["mx.good.test"])))).await;
    let https = policy_server(
        ca.server(&["mta-sts.good.test", "mta-sts.bad.test"]),
        "version: STSv1\r\nmode: enforce\r\nmx: mx.good.test\r\nmax_age: 86400\r\n",
    )
    .await;
    dns.mx("good.test", 10, "mx.good.test");
    dns.addr("mx.good.test", LOCALHOST);
    dns.txt("good.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.txt("_mta-sts.good.test", "v=STSv1; id=1");
    dns.addr("mta-sts.good.test", LOCALHOST);
    let port = format!("-port={}", good.port);
    let (code, lines) = smtp_check(&dns, &ca_file, https, &[&port, "good.test"]).await;
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        lines[..4],
        [
            "=== STS policy",
            "Parsed contents:  [{Version:STSv1 Mode:enforce MXs:[mx.good.test] MaxAge:24h0m0s}]",
            "OK",
            "",
        ]
    );
    assert_eq!(lines[4], "=== MX: 10  mx.good.test.");
    assert!(lines[5].starts_with("SPF pass for 127.0.0.1: "), "{lines:#?}");
    assert!(lines[6].starts_with("TLS OK: TLS-1.3 - TLS_"), "{lines:#?}");
    assert_eq!(lines[7..], ["Allowed by policy", "", "=== Success"]);
    assert_eq!(good.tls_sessions(), 1);
    assert!(
        good.commands().contains(&"EHLO localhost".to_string()),
        "{:?}",
        good.commands()
    );

    // bad.test: SPF fails, the certificate is for another name, and the
    // policy does not list the MX.
    let bad = Peer::start(Script::starttls(Some(ca.server(&["other.test"])))).await;
    dns.mx("bad.test", 5, "mx.bad.test");
    dns.addr("mx.bad.test", LOCALHOST);
    dns.txt("bad.test", "v=spf1 -all");
    dns.txt("_mta-sts.bad.test", "v=STSv1; id=2");
    dns.addr("mta-sts.bad.test", LOCALHOST);
    let port = format!("-port={}", bad.port);
    let (code, lines) = smtp_check(&dns, &ca_file, https, &[&port, "-localname=checker.test", "bad.test"]).await;
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(lines[4], "=== MX:  5  mx.bad.test.");
    assert!(lines[5].starts_with("SPF fail for 127.0.0.1: "), "{lines:#?}");
    assert!(lines[6].starts_with("TLS error: "), "{lines:#?}");
    assert_eq!(
        lines[7..],
        [
            "NOT allowed by STS policy",
            "Allowed by policy",
            "",
            "=== FAILED",
            "mx.bad.test: SPF failed (127.0.0.1)",
            "mx.bad.test: TLS failed",
            "mx.bad.test: STS failed",
            "",
        ]
    );
    assert!(
        bad.commands().contains(&"EHLO checker.test".to_string()),
        "{:?}",
        bad.commands()
    );

    // Without the TLS check, and without a policy.
    dns.mx("plain.test", 10, "mx.good.test");
    dns.txt("plain.test", "v=spf1 ip4:127.0.0.1 -all");
    let (code, lines) = smtp_check(&dns, &ca_file, https, &["--skip_tls_check", "plain.test"]).await;
    assert_eq!(code, 0, "{lines:#?}");
    assert!(lines[1].starts_with("Not available ("), "{lines:#?}");
    assert_eq!(lines[5], "TLS check skipped", "{lines:#?}");
    assert_eq!(good.tls_sessions(), 1, "no connection with --skip_tls_check");

    // No MX, and no domain.
    let (code, lines) = smtp_check(&dns, &ca_file, https, &["nomx.test"]).await;
    assert_eq!(code, 1);
    assert!(lines.last().is_some_and(|l| l.starts_with("MX lookup: ")), "{lines:#?}");
    let (code, lines) = smtp_check(&dns, &ca_file, https, &[]).await;
    assert_eq!((code, lines), (1, vec!["Use: smtp-check <domain>".to_string()]));
}
