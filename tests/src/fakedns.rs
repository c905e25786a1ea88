//! A small in-process DNS server on loopback for delivery tests: it answers
//! A, AAAA, MX (null MX included) and TXT from a table the test fills, with
//! NXDOMAIN for unknown names, and can be told to SERVFAIL a name.
//!
//! For DANE tests it also serves TLSA records and can act as a validating
//! resolver would: with [`FakeDns::set_authenticated`], answers carry the
//! AD bit when the query asked for it (AD or the EDNS DO bit, RFC 6840
//! §5.7), except for names marked [`FakeDns::insecure`].

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, TLSA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    names: HashSet<String>,
    servfail: HashSet<String>,
    /// Set the AD bit on answers (when the query asks for it).
    authenticated: bool,
    /// Names whose answers never carry the AD bit.
    insecure: HashSet<String>,
    /// Every question asked: (name, type).
    asked: Vec<(String, RecordType)>,
}

/// A running fake DNS server (UDP). Stops when dropped.
pub struct FakeDns {
    /// Where it listens ("127.0.0.1:port"); put it in `dns_servers`.
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl FakeDns {
    /// Start on a free loopback port.
    pub fn start() -> FakeDns {
        FakeDns::start_on("127.0.0.1")
    }

    /// Start on a free port of `ip` (an address of this host, e.g. the
    /// host end of a network namespace's veth pair).
    pub fn start_on(ip: &str) -> FakeDns {
        let sock = UdpSocket::bind((ip, 0)).expect("bind fake DNS");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = sock.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, s, q) = (zone.clone(), stop.clone(), queries.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&z, &buf[..n]) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        FakeDns {
            addr,
            zone,
            stop,
            queries,
        }
    }

    fn add(&self, name: &str, rtype: RecordType, data: RData) {
        let mut z = self.zone.lock().expect("zone");
        z.names.insert(key(name));
        z.records.entry((key(name), rtype)).or_default().push(data);
    }

    /// An MX record.
    pub fn mx(&self, domain: &str, preference: u16, host: &str) {
        let exchange = Name::from_ascii(format!("{}.", key(host))).expect("mx name");
        self.add(domain, RecordType::MX, RData::MX(MX::new(preference, exchange)));
    }

    /// A null MX (RFC 7505): `0 .`.
    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
    }

    /// An A or AAAA record.
    pub fn addr(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(host, RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(host, RecordType::AAAA, RData::AAAA(AAAA(v6))),
        }
    }

    /// A TXT record (split in character-strings of at most 255 bytes, as
    /// a long DKIM key needs).
    pub fn txt(&self, name: &str, text: &str) {
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(strings)));
    }

    /// Replace every TXT record of `name` with this one.
    pub fn set_txt(&self, name: &str, text: &str) {
        self.zone
            .lock()
            .expect("zone")
            .records
            .remove(&(key(name), RecordType::TXT));
        self.txt(name, text);
    }

    /// Answer SERVFAIL for every query of `name`.
    pub fn servfail(&self, name: &str) {
        self.zone.lock().expect("zone").servfail.insert(key(name));
    }

    /// A TLSA record (RFC 6698): `name` is e.g. "_25._tcp.mx.a.test".
    pub fn tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) {
        let t = TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data.to_vec(),
        );
        self.add(name, RecordType::TLSA, RData::TLSA(t));
    }

    /// Behave as a validating resolver whose answers are all DNSSEC-secure
    /// (AD bit set when asked for), or not.
    pub fn set_authenticated(&self, on: bool) {
        self.zone.lock().expect("zone").authenticated = on;
    }

    /// Answers for `name` are never authenticated (an unsigned zone).
    pub fn insecure(&self, name: &str) {
        self.zone.lock().expect("zone").insecure.insert(key(name));
    }

    /// How many times `name` was asked for with type `rtype`.
    pub fn asked(&self, name: &str, rtype: RecordType) -> usize {
        let k = key(name);
        let z = self.zone.lock().expect("zone");
        z.asked.iter().filter(|(n, t)| *n == k && *t == rtype).count()
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(zone: &Mutex<Zone>, packet: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(packet).ok()?;
    let q = req.queries.first()?.clone();
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.metadata.message_type = MessageType::Response;
    resp.add_query(q.clone());
    let name = key(&q.name().to_ascii());
    let mut z = zone.lock().ok()?;
    if z.asked.len() < 100_000 {
        z.asked.push((name.clone(), q.query_type()));
    }
    let wants_ad = req.metadata.authentic_data || req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    resp.metadata.authentic_data = z.authenticated && wants_ad && !z.insecure.contains(&name);
    if z.servfail.contains(&name) {
        resp.metadata.response_code = ResponseCode::ServFail;
        resp.metadata.authentic_data = false;
    } else if !z.names.contains(&name) {
        resp.metadata.response_code = ResponseCode::NXDomain;
    } else if let Some(list) = z.records.get(&(name, q.query_type())) {
        for d in list {
            resp.add_answer(Record::from_rdata(q.name().clone(), 60, d.clone()));
        }
    }
    resp.to_vec().ok()
}
