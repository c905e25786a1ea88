//! MTA-STS (RFC 8461) in deliverd's courier, driven as a library: a fake
//! DNS server in process (MX, A, the `_mta-sts` TXT records), a real HTTPS
//! policy server on loopback (rustls, certificate from a test CA given to
//! the courier through `tls_extra_ca_file`), and SMTP peers with STARTTLS
//! and a certificate either from that CA or self-signed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tambo_common::domaininfo::SecLevel;
use tambo_deliverd::remote::Courier;
use tambo_ipc::proto::{DeliveryOutcome, DeliveryReport};
use tambo_tests::certs::{TestCa as Ca, self_signed, server_config};
use tambo_tests::courier::{data_fd, remote_job, settings};
use tambo_tests::fakedns::FakeDns;
use tambo_tests::smtp_peer::{Peer, Script};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MSG: &[u8] = b"Subject: sts\r\n\r\nhello over MTA-STS\r\n";

// ------------------------------------------------------------ the test CA

fn new_ca() -> Ca {
    Ca::new("tambo MTA-STS test CA")
}

// ------------------------------------------------- the HTTPS policy server

/// An HTTPS server answering `GET /.well-known/mta-sts.txt` with a raw
/// response chosen by the Host header.
struct PolicyServer {
    port: u16,
    responses: Arc<Mutex<HashMap<String, String>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

fn policy_response(policy: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
        policy.len()
    )
}

fn enforce_policy(mx: &str) -> String {
    format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

impl PolicyServer {
    async fn start(tls: Arc<rustls::ServerConfig>) -> PolicyServer {
        let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
            .await
            .expect("bind https");
        let port = listener.local_addr().expect("addr").port();
        let responses: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (resp, reqs) = (responses.clone(), requests.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, resp, reqs) = (acceptor.clone(), resp.clone(), reqs.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let mut r = BufReader::new(tls);
                    let mut host = String::new();
                    let mut request_line = String::new();
                    loop {
                        let mut line = String::new();
                        match tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        let line = line.trim_end().to_string();
                        if line.is_empty() {
                            break;
                        }
                        if request_line.is_empty() {
                            request_line = line.clone();
                        }
                        if let Some(v) = line.strip_prefix("Host:") {
                            host = v.trim().split(':').next().unwrap_or("").to_string();
                        }
                    }
                    reqs.lock().unwrap().push(format!("{host} {request_line}"));
                    let answer = if request_line == "GET /.well-known/mta-sts.txt HTTP/1.1" {
                        resp.lock().unwrap().get(&host).cloned()
                    } else {
                        None
                    }
                    .unwrap_or_else(|| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
                    let mut tls = r.into_inner();
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer {
            port,
            responses,
            requests,
            task,
        }
    }

    fn serve(&self, host: &str, raw_response: String) {
        self.responses.lock().unwrap().insert(host.into(), raw_response);
    }

    /// Requests received for `host`.
    fn requests_for(&self, host: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&format!("{host} ")))
            .count()
    }

    fn stop(&self) {
        self.task.abort();
    }
}

// -------------------------------------------------------- an SMTP peer

/// An SMTP server on loopback offering STARTTLS with `tls` (or no STARTTLS
/// when `None`); it drops a client silent for 10 s.
async fn start_peer(tls: Option<Arc<rustls::ServerConfig>>) -> Peer {
    Peer::start(Script {
        line_timeout: Some(Duration::from_secs(10)),
        ..Script::starttls(tls)
    })
    .await
}

// --------------------------------------------------------------- helpers

struct World {
    dns: FakeDns,
    ca: Ca,
    ca_file: PathBuf,
    cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = new_ca();
        let ca_file = ca.write_pem(dir.path());
        let cache = dir.path().join("sts-cache");
        std::fs::create_dir(&cache).expect("cache dir");
        World {
            dns: FakeDns::start(),
            ca,
            ca_file,
            cache,
            _dir: dir,
        }
    }

    /// A domain `d` with MX `mx.d` and policy host `mta-sts.d` on
    /// loopback, and the TXT record with `id`.
    fn domain(&self, d: &str, id: &str) {
        self.dns.mx(d, 10, &format!("mx.{d}"));
        self.dns.addr(&format!("mx.{d}"), LOCALHOST);
        self.dns.addr(&format!("mta-sts.{d}"), LOCALHOST);
        self.dns.txt(&format!("_mta-sts.{d}"), &format!("v=STSv1; id={id};"));
    }

    /// A courier sending to `smtp_port`, fetching policies from
    /// `https_port`, caching in the world's cache dir.
    fn courier(&self, smtp_port: u16, https_port: u16) -> Arc<Courier> {
        let mut s = settings(&self.dns, smtp_port);
        s.tls_extra_ca_file = self.ca_file.display().to_string();
        s.session.reply = Duration::from_secs(5);
        s.idle_timeout = Duration::ZERO;
        s.sts.cache_dir = Some(self.cache.clone());
        s.sts.port = https_port;
        s.sts.fetch_timeout = Duration::from_secs(5);
        Courier::new(s).expect("courier")
    }

    fn cache_file(&self, d: &str) -> Option<String> {
        std::fs::read_to_string(self.cache.join(d)).ok()
    }
}

async fn send(courier: &Courier, to: &str) -> (DeliveryOutcome, DeliveryReport) {
    let job = remote_job("stsjob", "alice@sender.test", &[to]);
    let report = tokio::time::timeout(Duration::from_secs(60), courier.deliver(&job, &job.rcpts, data_fd(MSG)))
        .await
        .expect("delivery finished in time");
    let outcome = report.results.first().expect("one result").1.clone();
    (outcome, report)
}

fn temp_fail_with(o: &DeliveryOutcome, needles: &[&str]) -> bool {
    matches!(o, DeliveryOutcome::TempFail(m) if needles.iter().all(|n| m.contains(n)))
}

// ----------------------------------------------------------------- tests

/// enforce with a matching MX and a valid certificate delivers over TLS
/// and writes the cache file; the cached policy is then used when the
/// HTTPS server is gone (same id, and a changed id whose fetch fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_delivers_caches_and_reuses_the_cache() {
    let w = World::new();
    w.domain("enforce.test", "one");
    let https = PolicyServer::start(w.ca.server(&["mta-sts.enforce.test"])).await;
    https.serve(
        "mta-sts.enforce.test",
        policy_response(&enforce_policy("mx.enforce.test")),
    );
    let good = start_peer(Some(w.ca.server(&["mx.enforce.test"]))).await;

    let courier = w.courier(good.port, https.port);
    let (o, report) = send(&courier, "bob@enforce.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(good.message_count(), 1);
    assert_eq!(good.tls_sessions(), 1, "delivered inside TLS");
    assert_eq!(
        report.levels_seen,
        vec![("enforce.test".to_string(), SecLevel::TlsSecure)]
    );
    assert_eq!(https.requests_for("mta-sts.enforce.test"), 1);
    let cached = w.cache_file("enforce.test").expect("cache file written");
    assert!(
        cached.contains("id: one") && cached.contains("mode: enforce"),
        "{cached}"
    );

    // Same id: no new fetch.
    let (o, _) = send(&courier, "bob@enforce.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(
        https.requests_for("mta-sts.enforce.test"),
        1,
        "the policy came from the cache"
    );

    // The HTTPS server goes away; a fresh courier (nothing in memory)
    // reads the policy from the cache file: a self-signed MX is refused.
    https.stop();
    drop(https);
    let bad = start_peer(Some(self_signed(&["mx.enforce.test"]))).await;
    let fresh = w.courier(bad.port, free_closed_port().await);
    let (o, _) = send(&fresh, "bob@enforce.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS", "TLS_INSECURE", "TLS_SECURE"]), "{o:?}");
    assert!(bad.tls_sessions() >= 1, "the MX was tried");
    assert!(
        !bad.saw_mail_from(),
        "nothing sent to an MX without a valid certificate"
    );
    assert_eq!(bad.message_count(), 0);

    // A new id whose fetch fails: the unexpired cached policy stays.
    w.dns.set_txt("_mta-sts.enforce.test", "v=STSv1; id=two;");
    let fresh = w.courier(bad.port, free_closed_port().await);
    let (o, _) = send(&fresh, "bob@enforce.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS"]), "{o:?}");
    assert_eq!(bad.message_count(), 0);
    // And the good MX still gets mail under the cached policy.
    let fresh = w.courier(good.port, free_closed_port().await);
    let (o, _) = send(&fresh, "bob@enforce.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(good.message_count(), 3);
    assert!(w.cache_file("enforce.test").unwrap().contains("id: one"));
}

/// A loopback port with nothing listening on it.
async fn free_closed_port() -> u16 {
    let l = TcpListener::bind(SocketAddr::new(LOCALHOST, 0)).await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// enforce: an MX the policy does not name is never contacted, an MX with
/// a self-signed certificate or without STARTTLS gets nothing; each is a
/// temporary failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_mismatch_invalid_cert_and_plain() {
    let w = World::new();
    for d in ["nomatch.test", "badcert.test", "plain.test"] {
        w.domain(d, "20260101");
    }
    let https =
        PolicyServer::start(w.ca.server(&["mta-sts.nomatch.test", "mta-sts.badcert.test", "mta-sts.plain.test"])).await;
    https.serve(
        "mta-sts.nomatch.test",
        policy_response(&enforce_policy("*.elsewhere.test")),
    );
    https.serve(
        "mta-sts.badcert.test",
        policy_response(&enforce_policy("*.badcert.test")),
    );
    https.serve("mta-sts.plain.test", policy_response(&enforce_policy("mx.plain.test")));

    // The MX would be valid, but the policy does not allow it.
    let valid = start_peer(Some(w.ca.server(&["mx.nomatch.test"]))).await;
    let courier = w.courier(valid.port, https.port);
    let (o, _) = send(&courier, "bob@nomatch.test").await;
    assert!(
        temp_fail_with(&o, &["4.7.5", "MTA-STS", "mx.nomatch.test", "*.elsewhere.test"]),
        "{o:?}"
    );
    assert_eq!(valid.connections(), 0, "a non-matching MX is not contacted");

    // Matching MX (wildcard), self-signed certificate.
    let selfsigned = start_peer(Some(self_signed(&["mx.badcert.test"]))).await;
    let courier = w.courier(selfsigned.port, https.port);
    let (o, _) = send(&courier, "bob@badcert.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS", "TLS_INSECURE"]), "{o:?}");
    assert_eq!(selfsigned.tls_sessions(), 1);
    assert!(!selfsigned.saw_mail_from());

    // Matching MX without STARTTLS: no plain-text delivery.
    let plain = start_peer(None).await;
    let courier = w.courier(plain.port, https.port);
    let (o, _) = send(&courier, "bob@plain.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS", "PLAIN"]), "{o:?}");
    assert!(plain.connections() >= 1);
    assert!(!plain.saw_mail_from());
    assert_eq!(plain.message_count(), 0);
}

/// testing: a non-matching MX with a self-signed certificate still gets
/// the mail (the violations are only logged and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_mode_delivers() {
    let w = World::new();
    w.domain("testing.test", "t1");
    let https = PolicyServer::start(w.ca.server(&["mta-sts.testing.test"])).await;
    https.serve(
        "mta-sts.testing.test",
        policy_response("version: STSv1\nmode: testing\nmx: mx.other.test\nmax_age: 600\n"),
    );
    let peer = start_peer(Some(self_signed(&["mx.testing.test"]))).await;
    let courier = w.courier(peer.port, https.port);
    let (o, _) = send(&courier, "bob@testing.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(peer.message_count(), 1);
    assert_eq!(https.requests_for("mta-sts.testing.test"), 1, "the policy was fetched");
    let cached = w.cache_file("testing.test").expect("cache file");
    assert!(cached.contains("mode: testing"), "{cached}");
}

/// A policy behind a redirect, with a wrong Content-Type, or from a server
/// whose certificate does not verify is ignored: the (enforce, non-matching)
/// policy it carries does not apply and nothing is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_responses_are_ignored() {
    let w = World::new();
    for d in ["redirect.test", "ctype.test"] {
        w.domain(d, "x1");
    }
    let https = PolicyServer::start(w.ca.server(&["mta-sts.redirect.test", "mta-sts.ctype.test"])).await;
    https.serve(
        "mta-sts.redirect.test",
        "HTTP/1.1 302 Found\r\nLocation: https://mta-sts.ctype.test/.well-known/mta-sts.txt\r\nContent-Length: 0\r\n\r\n"
            .into(),
    );
    let policy = enforce_policy("mx.nowhere.test");
    https.serve(
        "mta-sts.ctype.test",
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{policy}",
            policy.len()
        ),
    );
    let peer = start_peer(Some(self_signed(&["mx.redirect.test", "mx.ctype.test"]))).await;
    let courier = w.courier(peer.port, https.port);
    for d in ["redirect.test", "ctype.test"] {
        let (o, _) = send(&courier, &format!("bob@{d}")).await;
        assert_eq!(o, DeliveryOutcome::Delivered, "{d}");
        assert!(w.cache_file(d).is_none(), "{d}: nothing cached");
    }
    assert_eq!(
        https.requests_for("mta-sts.redirect.test"),
        1,
        "the redirect was not followed"
    );
    assert_eq!(https.requests_for("mta-sts.ctype.test"), 1);
    assert_eq!(peer.message_count(), 2);

    // A policy server whose certificate is not trusted.
    w.domain("untrusted.test", "u1");
    let untrusted = PolicyServer::start(self_signed(&["mta-sts.untrusted.test"])).await;
    untrusted.serve(
        "mta-sts.untrusted.test",
        policy_response(&enforce_policy("mx.nowhere.test")),
    );
    let courier = w.courier(peer.port, untrusted.port);
    let (o, _) = send(&courier, "bob@untrusted.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert!(w.cache_file("untrusted.test").is_none());
    assert_eq!(peer.message_count(), 3);
}

/// The TXT id changing makes the courier fetch the policy again; the new
/// policy replaces the cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_id_refreshes_the_policy() {
    let w = World::new();
    w.domain("refresh.test", "v1");
    let https = PolicyServer::start(w.ca.server(&["mta-sts.refresh.test"])).await;
    https.serve("mta-sts.refresh.test", policy_response(&enforce_policy("mx.old.test")));
    let peer = start_peer(Some(w.ca.server(&["mx.refresh.test"]))).await;
    let courier = w.courier(peer.port, https.port);
    let (o, _) = send(&courier, "bob@refresh.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS", "mx.old.test"]), "{o:?}");
    assert_eq!(peer.connections(), 0);

    // The domain fixes its policy and publishes a new id.
    https.serve(
        "mta-sts.refresh.test",
        policy_response(&enforce_policy("mx.refresh.test")),
    );
    w.dns.set_txt("_mta-sts.refresh.test", "v=STSv1; id=v2;");
    // A new courier, as the resolver caches the old TXT answer for its TTL.
    let courier = w.courier(peer.port, https.port);
    let (o, _) = send(&courier, "bob@refresh.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(peer.message_count(), 1);
    assert_eq!(
        https.requests_for("mta-sts.refresh.test"),
        2,
        "fetched again for the new id"
    );
    let cached = w.cache_file("refresh.test").expect("cache file");
    assert!(
        cached.contains("id: v2") && cached.contains("mx.refresh.test"),
        "{cached}"
    );

    // Two STSv1 records at once are no valid record: the cached policy
    // stays in force and nothing is fetched.
    w.dns.txt("_mta-sts.refresh.test", "v=STSv1; id=v3;");
    let courier = w.courier(peer.port, https.port);
    let (o, _) = send(&courier, "bob@refresh.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(https.requests_for("mta-sts.refresh.test"), 2);
}

/// Concurrent deliveries to a domain whose policy is not cached yet share
/// one fetch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_fetch_once() {
    let w = World::new();
    w.domain("busy.test", "b1");
    let https = PolicyServer::start(w.ca.server(&["mta-sts.busy.test"])).await;
    https.serve("mta-sts.busy.test", policy_response(&enforce_policy("mx.busy.test")));
    let peer = start_peer(Some(w.ca.server(&["mx.busy.test"]))).await;
    let courier = w.courier(peer.port, https.port);
    let sends = (0..8).map(|_| {
        let c = courier.clone();
        tokio::spawn(async move { send(&c, "bob@busy.test").await.0 })
    });
    for s in sends.collect::<Vec<_>>() {
        assert_eq!(s.await.expect("task"), DeliveryOutcome::Delivered);
    }
    assert_eq!(peer.message_count(), 8);
    assert_eq!(https.requests_for("mta-sts.busy.test"), 1, "one fetch for all");
}

/// DANE takes precedence over MTA-STS (RFC 8461 §2), host by host: with
/// authenticated answers and a matching DANE-EE TLSA record, an MX that
/// the enforce policy does not name, with a self-signed certificate, gets
/// the mail; the same kind of MX without TLSA records stays under the
/// policy and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_takes_precedence() {
    let w = World::new();
    w.dns.set_authenticated(true);
    for d in ["both.test", "stsonly.test"] {
        w.domain(d, "d1");
    }
    let https = PolicyServer::start(w.ca.server(&["mta-sts.both.test", "mta-sts.stsonly.test"])).await;
    https.serve("mta-sts.both.test", policy_response(&enforce_policy("mx.other.test")));
    https.serve(
        "mta-sts.stsonly.test",
        policy_response(&enforce_policy("mx.other.test")),
    );
    let c = rcgen::generate_simple_self_signed(vec!["mx.both.test".to_string(), "mx.stsonly.test".to_string()])
        .expect("rcgen");
    let spki_sha256 = ring::digest::digest(&ring::digest::SHA256, &c.key_pair.public_key_der());
    let peer = start_peer(Some(server_config(
        vec![c.cert.der().clone()],
        c.key_pair.serialize_der(),
    )))
    .await;
    w.dns.tlsa(
        &format!("_{}._tcp.mx.both.test", peer.port),
        3,
        1,
        1,
        spki_sha256.as_ref(),
    );
    let courier = w.courier(peer.port, https.port);

    let (o, report) = send(&courier, "bob@both.test").await;
    assert_eq!(o, DeliveryOutcome::Delivered);
    assert_eq!(report.levels_seen, vec![("both.test".to_string(), SecLevel::TlsSecure)]);
    assert_eq!(https.requests_for("mta-sts.both.test"), 1, "the policy was there");
    assert_eq!(peer.message_count(), 1);

    let (o, _) = send(&courier, "bob@stsonly.test").await;
    assert!(temp_fail_with(&o, &["MTA-STS", "mx.stsonly.test"]), "{o:?}");
    assert_eq!(peer.message_count(), 1);
}

/// The whole server: tambod with `dns_servers`, `tls_extra_ca_file` and
/// `mta_sts_port`; mail submitted with swaks goes out under an enforce
/// policy, and deliverd (as `tambo-deliver` when run as root) writes the
/// cache file in `data_dir/sts-cache`.
#[test]
fn through_the_whole_server() {
    if !tambo_tests::require("swaks", "swaks") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dns = FakeDns::start();
    let ca = new_ca();
    dns.mx("sts.test", 10, "mx.sts.test");
    dns.addr("mx.sts.test", LOCALHOST);
    dns.addr("mta-sts.sts.test", LOCALHOST);
    dns.txt("_mta-sts.sts.test", "v=STSv1; id=e2e;");
    let (https, peer) = rt.block_on(async {
        let https = PolicyServer::start(ca.server(&["mta-sts.sts.test"])).await;
        https.serve("mta-sts.sts.test", policy_response(&enforce_policy("*.sts.test")));
        let peer = start_peer(Some(ca.server(&["mx.sts.test"]))).await;
        (https, peer)
    });
    let sender = tambo_tests::TestEnv::new("");
    let ca_file = ca.write_pem(sender.tmp.path());
    sender.write_conf(&format!(
        "dns_servers: \"{}\"\noutgoing_smtp_port: {}\nmta_sts_port: {}\ntls_extra_ca_file: \"{}\"\n",
        dns.addr,
        peer.port,
        https.port,
        ca_file.display()
    ));
    sender.fix_permissions();
    let mut tx = sender.start();
    let (ok, out) = tambo_tests::run(
        std::process::Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{}", sender.submission_port)])
            .args(["--from", "alice@example.com", "--to", "carol@sts.test"])
            .args(["--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password"])
            .arg(tambo_tests::PASSWORD)
            .args(["--tls", "--header", "Subject: sts", "--body", "under an enforce policy"]),
    );
    assert!(ok, "swaks failed:\n{out}");
    tambo_tests::wait_for(Duration::from_secs(30), "delivery to the MTA-STS peer", || {
        peer.message_count() == 1
    });
    assert_eq!(peer.tls_sessions(), 1);
    assert_eq!(https.requests_for("mta-sts.sts.test"), 1);
    let cache = sender.data_dir.join("sts-cache/sts.test");
    let text = std::fs::read_to_string(&cache).expect("cache file written by deliverd");
    assert!(text.contains("id: e2e") && text.contains("mode: enforce"), "{text}");
    if tambo_tests::is_root() {
        use std::os::unix::fs::MetadataExt;
        let deliver = nix::unistd::User::from_name("tambo-deliver")
            .expect("lookup")
            .expect("user tambo-deliver");
        assert_eq!(std::fs::metadata(&cache).expect("stat").uid(), deliver.uid.as_raw());
        let dir = std::fs::metadata(sender.data_dir.join("sts-cache")).expect("stat");
        assert_eq!(dir.uid(), deliver.uid.as_raw(), "sts-cache belongs to deliverd's user");
    }
    tx.stop();
    drop(rt);
}
