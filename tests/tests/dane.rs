//! DANE (RFC 7672) in remote delivery: the courier, driven as a library,
//! sends through a fake DNS server that acts as a validating resolver (AD
//! bit on request) to scripted SMTP servers (the harness's `smtp_peer`)
//! that offer STARTTLS with rcgen certificates (self-signed, or issued by a test CA). The last test
//! replaces the fake with a real validating resolver: Unbound serving a
//! zone signed with ldns-signzone, trusted through a configured anchor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::RecordType;
use tambo_common::domaininfo::SecLevel;
use tambo_deliverd::remote::dane::DaneResolver;
use tambo_deliverd::remote::{Courier, Settings};
use tambo_ipc::proto::{DeliveryOutcome, DeliveryReport};
use tambo_tests::certs::server_config;
use tambo_tests::courier::{self, data_fd, remote_job};
use tambo_tests::fakedns::FakeDns;
use tambo_tests::smtp_peer::{Peer, Script};
use tambo_tests::{free_port, have};

const IP1: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const IP2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const IP3: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const MSG: &[u8] = b"Subject: dane\r\n\r\nhello\r\n";

// ---------------------------------------------------------------- helpers

fn settings(dns: &FakeDns, port: u16) -> Settings {
    let mut s = courier::settings(dns, port);
    s.attempt_timeout = Duration::from_secs(30);
    s
}

async fn send(courier: &Courier, rcpt: &str) -> DeliveryReport {
    let j = remote_job("daneid", "sender@origin.test", &[rcpt]);
    courier.deliver(&j, &j.rcpts, data_fd(MSG)).await
}

fn outcome(r: &DeliveryReport) -> DeliveryOutcome {
    r.results.first().map(|(_, o)| o.clone()).expect("one result")
}

fn level(r: &DeliveryReport) -> Option<SecLevel> {
    r.levels_seen.first().map(|(_, l)| *l)
}

fn temp_with(r: &DeliveryReport, needle: &str) -> bool {
    matches!(outcome(r), DeliveryOutcome::TempFail(m) if m.contains(needle))
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

fn sha512(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA512, b).as_ref().to_vec()
}

/// A server certificate: the TLS config, the leaf DER, its key's SPKI, and
/// (when issued by a CA) the CA's DER.
struct Cert {
    config: Arc<rustls::ServerConfig>,
    leaf: Vec<u8>,
    spki: Vec<u8>,
    ca: Option<Vec<u8>>,
}

fn self_signed(name: &str) -> Cert {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    Cert {
        config: server_config(vec![c.cert.der().clone()], c.key_pair.serialize_der()),
        leaf: c.cert.der().to_vec(),
        spki: c.key_pair.public_key_der(),
        ca: None,
    }
}

/// A leaf for `name` issued by a fresh test CA; the server sends both.
fn ca_issued(name: &str) -> Cert {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tambo DANE test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("sign");
    Cert {
        config: server_config(vec![leaf.der().clone(), ca.der().clone()], key.serialize_der()),
        leaf: leaf.der().to_vec(),
        spki: key.public_key_der(),
        ca: Some(ca.der().to_vec()),
    }
}

// ------------------------------------------------------------ SMTP peers

/// Peers on 127.0.0.1, .2 and .3 sharing one port (MX hosts all use the
/// courier's one outgoing port).
async fn peers(tls: [Option<Arc<rustls::ServerConfig>>; 3]) -> [Peer; 3] {
    let [t1, t2, t3] = tls;
    for _ in 0..20 {
        let p1 = Peer::start_on(Script::starttls(t1.clone()), SocketAddr::new(IP1, 0)).await;
        let port = p1.port;
        let (Ok(l2), Ok(l3)) = (
            std::net::TcpListener::bind((IP2, port)),
            std::net::TcpListener::bind((IP3, port)),
        ) else {
            continue;
        };
        drop((l2, l3));
        let p2 = Peer::start_on(Script::starttls(t2.clone()), SocketAddr::new(IP2, port)).await;
        let p3 = Peer::start_on(Script::starttls(t3.clone()), SocketAddr::new(IP3, port)).await;
        return [p1, p2, p3];
    }
    panic!("no port free on 127.0.0.1-3");
}

/// MX `domain` → `host` at `ip`.
fn route(dns: &FakeDns, domain: &str, pref: u16, host: &str, ip: IpAddr) {
    dns.mx(domain, pref, host);
    dns.addr(host, ip);
}

fn tlsa_name(port: u16, host: &str) -> String {
    format!("_{port}._tcp.{host}")
}

// ------------------------------------------------------------------ tests

/// DANE-EE 3 1 1 matches a self-signed certificate: delivered, recorded as
/// a secure level; 3 0 2 (SHA-512 of the whole certificate) too; without
/// TLSA records the same server only gets opportunistic TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ee_match_accepts_self_signed() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let cert = self_signed("mx.ee.test");
    let [p1, _p2, _p3] = peers([Some(cert.config.clone()), None, None]).await;
    route(&dns, "ee.test", 10, "mx.ee.test", IP1);
    dns.tlsa(&tlsa_name(p1.port, "mx.ee.test"), 3, 1, 1, &sha256(&cert.spki));
    route(&dns, "ee512.test", 10, "mx.ee512.test", IP1);
    dns.tlsa(&tlsa_name(p1.port, "mx.ee512.test"), 3, 0, 2, &sha512(&cert.leaf));
    route(&dns, "plain-mx.test", 10, "mx.plain-mx.test", IP1);
    let courier = Courier::new(settings(&dns, p1.port)).expect("courier");

    let r = send(&courier, "a@ee.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure), "DANE authenticates the server");
    assert_eq!(p1.message_count(), 1);
    assert_eq!(p1.tls_sessions(), 1);
    assert!(dns.asked(&tlsa_name(p1.port, "mx.ee.test"), RecordType::TLSA) >= 1);

    let r = send(&courier, "b@ee512.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure));
    assert_eq!(p1.message_count(), 2);

    // Authenticated denial of TLSA: opportunistic TLS, certificate not
    // trusted (self-signed), so only the insecure TLS level.
    let r = send(&courier, "c@plain-mx.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsInsecure));
    assert_eq!(p1.message_count(), 3);
}

/// A mismatching TLSA record fails that MX (temporarily) and the next MX,
/// whose record matches, gets the message; with only the bad MX the
/// message is deferred and never sent; a server without STARTTLS is
/// never sent to in plain text when TLSA records exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_mismatch_defers_and_tries_the_next_mx() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let c1 = self_signed("mx1.mm.test");
    let c2 = self_signed("mx2.mm.test");
    let [p1, p2, p3] = peers([Some(c1.config.clone()), Some(c2.config.clone()), None]).await;
    let port = p1.port;
    let wrong = sha256(&c2.spki); // the other server's key
    route(&dns, "mm.test", 10, "mx1.mm.test", IP1);
    route(&dns, "mm.test", 20, "mx2.mm.test", IP2);
    dns.tlsa(&tlsa_name(port, "mx1.mm.test"), 3, 1, 1, &wrong);
    dns.tlsa(&tlsa_name(port, "mx2.mm.test"), 3, 1, 1, &sha256(&c2.spki));
    dns.mx("bad.test", 10, "mx1.mm.test");
    route(&dns, "notls.test", 10, "mx.notls.test", IP3);
    dns.tlsa(&tlsa_name(port, "mx.notls.test"), 3, 1, 1, &wrong);
    let courier = Courier::new(settings(&dns, port)).expect("courier");

    let r = send(&courier, "a@mm.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure));
    assert_eq!(p1.message_count(), 0, "the mismatching MX got nothing");
    assert!(p1.connections() >= 1, "the first MX was tried");
    assert_eq!(p2.message_count(), 1);

    let r = send(&courier, "b@bad.test").await;
    assert!(temp_with(&r, "DANE"), "{r:?}");
    assert!(temp_with(&r, "no TLSA record matches"), "{r:?}");
    assert_eq!(p1.message_count(), 0);

    let r = send(&courier, "c@notls.test").await;
    assert!(temp_with(&r, "STARTTLS"), "{r:?}");
    assert_eq!(p3.message_count(), 0, "no plain-text delivery");
    assert!(p3.connections() >= 1);
}

/// DANE-TA 2 0 1 with a test CA (not otherwise trusted): the chain must
/// verify to the CA and name the MX host (or the domain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_ta_with_a_test_ca() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let good = ca_issued("mx.ta.test");
    let by_domain = ca_issued("ta2.test");
    let wrong_name = ca_issued("elsewhere.test");
    let [p1, p2, p3] = peers([
        Some(good.config.clone()),
        Some(by_domain.config.clone()),
        Some(wrong_name.config.clone()),
    ])
    .await;
    let port = p1.port;
    route(&dns, "ta.test", 10, "mx.ta.test", IP1);
    dns.tlsa(
        &tlsa_name(port, "mx.ta.test"),
        2,
        0,
        1,
        &sha256(good.ca.as_ref().unwrap()),
    );
    route(&dns, "ta2.test", 10, "mx.ta2.test", IP2);
    dns.tlsa(
        &tlsa_name(port, "mx.ta2.test"),
        2,
        0,
        1,
        &sha256(by_domain.ca.as_ref().unwrap()),
    );
    route(&dns, "ta3.test", 10, "mx.ta3.test", IP3);
    dns.tlsa(
        &tlsa_name(port, "mx.ta3.test"),
        2,
        0,
        1,
        &sha256(wrong_name.ca.as_ref().unwrap()),
    );
    let courier = Courier::new(settings(&dns, port)).expect("courier");

    let r = send(&courier, "a@ta.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure));
    assert_eq!(p1.message_count(), 1);

    let r = send(&courier, "b@ta2.test").await;
    assert_eq!(
        outcome(&r),
        DeliveryOutcome::Delivered,
        "named for the next-hop domain: {r:?}"
    );
    assert_eq!(p2.message_count(), 1);

    let r = send(&courier, "c@ta3.test").await;
    assert!(temp_with(&r, "DANE"), "{r:?}");
    assert_eq!(p3.message_count(), 0);
}

/// A TLSA lookup that fails (SERVFAIL) defers the message: no connection
/// is made, nothing is downgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_servfail_defers() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let cert = self_signed("mx.sf.test");
    let [p1, _p2, _p3] = peers([Some(cert.config.clone()), None, None]).await;
    route(&dns, "sf.test", 10, "mx.sf.test", IP1);
    dns.servfail(&tlsa_name(p1.port, "mx.sf.test"));
    let courier = Courier::new(settings(&dns, p1.port)).expect("courier");
    let r = send(&courier, "a@sf.test").await;
    assert!(temp_with(&r, "TLSA"), "{r:?}");
    assert!(temp_with(&r, "DANE"), "{r:?}");
    assert_eq!(p1.connections(), 0, "no connection without the TLSA answer");
    assert_eq!(p1.message_count(), 0);
}

/// Without authenticated answers DANE does not apply, even with TLSA
/// records that would not match: unsigned MX, unsigned MX host address,
/// unsigned TLSA RRset. Neither does it for an unsigned MX when the
/// resolver validates nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_answers_mean_opportunistic_tls() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let cert = self_signed("mx.u.test");
    let other = self_signed("other.test");
    let [p1, _p2, _p3] = peers([Some(cert.config.clone()), None, None]).await;
    let port = p1.port;
    let wrong = sha256(&other.spki);
    // Insecure MX RRset: TLSA not even looked up.
    route(&dns, "u1.test", 10, "mx.u1.test", IP1);
    dns.insecure("u1.test");
    dns.tlsa(&tlsa_name(port, "mx.u1.test"), 3, 1, 1, &wrong);
    // Secure MX, insecure address of the MX host.
    route(&dns, "u2.test", 10, "mx.u2.test", IP1);
    dns.insecure("mx.u2.test");
    dns.tlsa(&tlsa_name(port, "mx.u2.test"), 3, 1, 1, &wrong);
    // Secure MX and address, insecure TLSA RRset.
    route(&dns, "u3.test", 10, "mx.u3.test", IP1);
    dns.tlsa(&tlsa_name(port, "mx.u3.test"), 3, 1, 1, &wrong);
    dns.insecure(&tlsa_name(port, "mx.u3.test"));
    let courier = Courier::new(settings(&dns, port)).expect("courier");
    for (n, d) in ["u1.test", "u2.test", "u3.test"].iter().enumerate() {
        let r = send(&courier, &format!("x@{d}")).await;
        assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{d}: {r:?}");
        assert_eq!(level(&r), Some(SecLevel::TlsInsecure), "{d}");
        assert_eq!(p1.message_count(), n + 1);
    }
    assert_eq!(dns.asked(&tlsa_name(port, "mx.u1.test"), RecordType::TLSA), 0);
    assert_eq!(dns.asked(&tlsa_name(port, "mx.u2.test"), RecordType::TLSA), 0);
    assert!(dns.asked(&tlsa_name(port, "mx.u3.test"), RecordType::TLSA) >= 1);

    // A resolver that validates nothing: no AD bit anywhere.
    let plain_dns = FakeDns::start();
    route(&plain_dns, "u4.test", 10, "mx.u4.test", IP1);
    plain_dns.tlsa(&tlsa_name(port, "mx.u4.test"), 3, 1, 1, &wrong);
    let c2 = Courier::new(settings(&plain_dns, port)).expect("courier");
    let r = send(&c2, "y@u4.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsInsecure));
    assert_eq!(p1.message_count(), 4);
}

/// Only unusable records (PKIX-EE for SMTP, RFC 7672 §3.1.3): TLS is
/// required but not authenticated. A domain without MX gets DANE for the
/// domain's own name (RFC 7672 §2.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_records_require_tls_and_implicit_mx() {
    let dns = FakeDns::start();
    dns.set_authenticated(true);
    let cert = self_signed("mx.pk.test");
    let [p1, _p2, p3] = peers([Some(cert.config.clone()), None, None]).await;
    let port = p1.port;
    route(&dns, "pk.test", 10, "mx.pk.test", IP1);
    dns.tlsa(&tlsa_name(port, "mx.pk.test"), 1, 1, 1, &sha256(&cert.spki));
    route(&dns, "pk-plain.test", 10, "mx.pk-plain.test", IP3);
    dns.tlsa(&tlsa_name(port, "mx.pk-plain.test"), 1, 1, 1, &sha256(&cert.spki));
    // No MX: the domain's own A record and TLSA name.
    dns.addr("implicit.test", IP1);
    dns.tlsa(&tlsa_name(port, "implicit.test"), 3, 1, 1, &[7u8; 32]);
    dns.addr("implicit-ok.test", IP1);
    dns.tlsa(&tlsa_name(port, "implicit-ok.test"), 3, 1, 1, &sha256(&cert.spki));
    let courier = Courier::new(settings(&dns, port)).expect("courier");

    let r = send(&courier, "a@pk.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsInsecure));
    assert_eq!(p1.message_count(), 1);

    let r = send(&courier, "b@pk-plain.test").await;
    assert!(temp_with(&r, "STARTTLS"), "{r:?}");
    assert_eq!(p3.message_count(), 0);

    let r = send(&courier, "c@implicit.test").await;
    assert!(temp_with(&r, "DANE"), "{r:?}");
    assert_eq!(p1.message_count(), 1);

    let r = send(&courier, "d@implicit-ok.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure));
    assert_eq!(p1.message_count(), 2);
}

// ------------------------------------------------------- real Unbound

/// An Unbound process, stopped when dropped.
struct Unbound(std::process::Child);

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run_in(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Through a real validating resolver (Unbound) and a DNSSEC-signed zone:
/// a matching TLSA record delivers with DANE, a mismatching one defers, a
/// TLSA RRset whose signature is broken (bogus: Unbound answers SERVFAIL)
/// defers without connecting, and no TLSA means opportunistic TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_unbound_with_a_signed_zone() {
    let unbound_bin = if have("unbound") {
        "unbound".to_string()
    } else if std::path::Path::new("/usr/sbin/unbound").exists() {
        "/usr/sbin/unbound".to_string()
    } else {
        tambo_tests::skip("unbound (Debian package unbound) is not installed; scripts/test installs it");
        return;
    };
    if !tambo_tests::require("ldns-signzone", "ldnsutils") || !tambo_tests::require("ldns-keygen", "ldnsutils") {
        return;
    }
    let cert = self_signed("mx-ok.dane.test");
    let [p1, _p2, _p3] = peers([Some(cert.config.clone()), None, None]).await;
    let port = p1.port;
    let good = hex(&sha256(&cert.spki));
    let placeholder = hex(&[0x5a; 32]);
    let wrong = hex(&[0xa5; 32]);
    let dir = tempfile::tempdir().expect("tempdir");
    let zone = format!(
        "$ORIGIN dane.test.\n$TTL 300\n\
         @ IN SOA ns.dane.test. hostmaster.dane.test. 1 3600 600 86400 300\n\
         @ IN NS ns.dane.test.\nns IN A 127.0.0.1\n\
         ok IN MX 10 mx-ok.dane.test.\nmx-ok IN A 127.0.0.1\n\
         _{port}._tcp.mx-ok IN TLSA 3 1 1 {good}\n\
         bad IN MX 10 mx-bad.dane.test.\nmx-bad IN A 127.0.0.1\n\
         _{port}._tcp.mx-bad IN TLSA 3 1 1 {wrong}\n\
         bogus IN MX 10 mx-bogus.dane.test.\nmx-bogus IN A 127.0.0.1\n\
         _{port}._tcp.mx-bogus IN TLSA 3 1 1 {placeholder}\n\
         none IN MX 10 mx-none.dane.test.\nmx-none IN A 127.0.0.1\n"
    );
    std::fs::write(dir.path().join("dane.test.zone"), zone).expect("zone");
    let ksk = run_in(dir.path(), "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", "dane.test"]);
    let zsk = run_in(dir.path(), "ldns-keygen", &["-a", "ECDSAP256SHA256", "dane.test"]);
    run_in(dir.path(), "ldns-signzone", &["dane.test.zone", &zsk, &ksk]);
    // Break one RRset after signing: its RRSIG no longer matches the data
    // (which would match the certificate).
    let signed_path = dir.path().join("dane.test.zone.signed");
    let signed = std::fs::read_to_string(&signed_path).expect("signed zone");
    assert_eq!(signed.matches(&placeholder).count(), 1, "{signed}");
    std::fs::write(&signed_path, signed.replace(&placeholder, &good)).expect("write");

    let dns_port = free_port();
    let d = dir.path().display();
    let conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: {dns_port}\n  do-daemonize: no\n  username: \"\"\n\
         \x20 chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n\
         \x20 verbosity: 1\n  access-control: 127.0.0.0/8 allow\n  module-config: \"validator iterator\"\n\
         \x20 trust-anchor-file: \"{d}/{ksk}.key\"\n  root-hints: \"\"\n  local-zone: \"test.\" nodefault\n\
         auth-zone:\n  name: \"dane.test.\"\n  zonefile: \"{d}/dane.test.zone.signed\"\n\
         \x20 for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n\
         remote-control:\n  control-enable: no\n"
    );
    std::fs::write(dir.path().join("unbound.conf"), conf).expect("conf");
    let child = std::process::Command::new(&unbound_bin)
        .args(["-d", "-c"])
        .arg(dir.path().join("unbound.conf"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start unbound");
    let _unbound = Unbound(child);
    let server = format!("127.0.0.1:{dns_port}");

    // Wait until Unbound answers, and check it validates: AD on the MX.
    let mut ready = None;
    for _ in 0..100 {
        let probe = DaneResolver::new(std::slice::from_ref(&server), Duration::from_millis(500)).expect("resolver");
        if let Ok(a) = probe.query("ok.dane.test", RecordType::MX).await {
            ready = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mx = ready.expect("unbound answers within 10 s");
    assert!(mx.authenticated, "Unbound validated the signed MX: {mx:?}");
    assert_eq!(mx.records.len(), 1);

    let mut s = Settings::from_config(&tambo_common::config::Config::default());
    s.hostname = "sender.test".into();
    s.port = port;
    s.dns_servers = vec![server.clone()];
    s.session.connect = Duration::from_secs(3);
    s.session.reply = Duration::from_secs(3);
    s.dns_timeout = Duration::from_secs(3);
    let courier = Courier::new(s).expect("courier");

    let r = send(&courier, "a@ok.dane.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsSecure));
    assert_eq!(p1.message_count(), 1);

    let r = send(&courier, "b@bad.dane.test").await;
    assert!(temp_with(&r, "no TLSA record matches"), "{r:?}");
    assert_eq!(p1.message_count(), 1);

    let before = p1.connections();
    let r = send(&courier, "c@bogus.dane.test").await;
    assert!(temp_with(&r, "TLSA lookup"), "{r:?}");
    assert_eq!(p1.connections(), before, "no connection when the TLSA RRset is bogus");
    assert_eq!(p1.message_count(), 1);

    let r = send(&courier, "d@none.dane.test").await;
    assert_eq!(outcome(&r), DeliveryOutcome::Delivered, "{r:?}");
    assert_eq!(level(&r), Some(SecLevel::TlsInsecure));
    assert_eq!(p1.message_count(), 2);
}
