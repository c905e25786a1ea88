//! A small in-process DNS server on loopback for delivery tests: it answers
//! A, AAAA, MX (null MX included) and TXT from a table the test fills, with
//! NXDOMAIN for unknown names, and can be told to SERVFAIL a name.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    names: HashSet<String>,
    servfail: HashSet<String>,
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
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind fake DNS");
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

    /// Answer SERVFAIL for every query of `name`.
    pub fn servfail(&self, name: &str) {
        self.zone.lock().expect("zone").servfail.insert(key(name));
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
    let z = zone.lock().ok()?;
    if z.servfail.contains(&name) {
        resp.metadata.response_code = ResponseCode::ServFail;
    } else if !z.names.contains(&name) {
        resp.metadata.response_code = ResponseCode::NXDomain;
    } else if let Some(list) = z.records.get(&(name, q.query_type())) {
        for d in list {
            resp.add_answer(Record::from_rdata(q.name().clone(), 60, d.clone()));
        }
    }
    resp.to_vec().ok()
}
