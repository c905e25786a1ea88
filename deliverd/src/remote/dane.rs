//! DANE for SMTP (RFC 7672, with RFC 6698 and RFC 7671).
//!
//! The model is Postfix's: tambo does not validate DNSSEC itself; it trusts
//! the configured resolver (`dns_servers`, or `/etc/resolv.conf`), which
//! should be a local validating resolver, and looks at the AD (authentic
//! data) bit of its answers. Queries made here set AD and the EDNS DO bit
//! so that a validating resolver reports the validation result.
//!
//! - The MX answer (positive or negative) is authenticated → the MX hosts
//!   (or the domain itself, without MX) are candidates for DANE.
//! - The host's address records are authenticated → `_PORT._tcp.HOST`
//!   TLSA is looked up:
//!   - authenticated usable records → TLS is required and the certificate
//!     must match them ([`HostPolicy::Dane`]);
//!   - authenticated records, none usable → TLS is required, without
//!     authentication ([`HostPolicy::EncryptOnly`]);
//!   - no records (NXDOMAIN, NODATA) or an insecure (unauthenticated)
//!     answer → the usual opportunistic TLS;
//!   - the lookup fails (SERVFAIL, timeout) → the host is skipped for now
//!     (temporary failure), never downgraded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use ring::digest;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::dns::{DnsError, parse_server};

/// Certificate usage DANE-TA (RFC 6698 §2.1.1).
pub const USAGE_DANE_TA: u8 = 2;
/// Certificate usage DANE-EE.
pub const USAGE_DANE_EE: u8 = 3;

/// Largest DNS answer accepted over TCP.
const MAX_TCP_ANSWER: usize = 65_535;
/// Entries kept in the answer cache.
const MAX_CACHE: usize = 4096;
/// Longest time an answer is cached.
const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// How long a negative answer is cached.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 full certificate, 1 SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 exact, 1 SHA-256, 2 SHA-512.
    pub mtype: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether an SMTP client can use the record (RFC 7672 §3.1: only
    /// DANE-TA and DANE-EE; known selectors and matching types; digests
    /// of the right length).
    pub fn is_usable(&self) -> bool {
        let usage_ok = self.usage == USAGE_DANE_TA || self.usage == USAGE_DANE_EE;
        let data_ok = match self.mtype {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage_ok && self.selector <= 1 && data_ok
    }

    /// Whether the certificate `cert` (DER) matches this record's
    /// selector, matching type and data (usage not considered).
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match spki_of(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.mtype {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.mtype)?;
        for b in self.data.iter().take(32) {
            write!(f, "{b:02x}")?;
        }
        if self.data.len() > 32 {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// The usable records of an RRset, after digest algorithm agility
/// (RFC 7671 §9): for each usage and selector, only the strongest digest
/// present (SHA-512 over SHA-256) is kept; full values are always kept.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    let ok: Vec<&Tlsa> = records.iter().filter(|r| r.is_usable()).collect();
    ok.iter()
        .filter(|r| {
            r.mtype == 0
                || !ok
                    .iter()
                    .any(|o| o.usage == r.usage && o.selector == r.selector && o.mtype > r.mtype)
        })
        .map(|r| (*r).clone())
        .collect()
}

// ------------------------------------------------------------ DER parsing

/// One DER element at the start of `input`: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    if tag & 0x1f == 0x1f {
        return None; // multi-byte tags do not occur where we look
    }
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let contents = input.get(header..end)?;
    Some((tag, contents, &input[end..]))
}

/// The whole DER element (header included) at the start of `input`.
fn der_whole(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (tag, _, rest) = der_element(input)?;
    let used = input.len() - rest.len();
    Some((tag, &input[..used], rest))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1).
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, cert_body, _) = der_element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = der_element(cert_body)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = der_element(rest)?.2;
    }
    let (tag, spki, _) = der_whole(rest)?;
    (tag == SEQUENCE).then_some(spki)
}

// ------------------------------------------------------------- DNS

/// The result of one query to the validating resolver.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The AD bit: the resolver validated the answer with DNSSEC.
    pub authenticated: bool,
    /// NXDOMAIN (otherwise NOERROR, possibly without records: NODATA).
    pub nxdomain: bool,
    /// The answer records of the type asked for.
    pub records: Vec<RData>,
}

/// A small DNS client that asks the configured resolvers for DNSSEC status
/// (AD bit) and caches the answers briefly.
pub struct DaneResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    cache: Mutex<HashMap<(String, RecordType), (Instant, Answer)>>,
}

impl DaneResolver {
    /// Use `servers` ("ip:port"), or the name servers of
    /// `/etc/resolv.conf` when empty.
    pub fn new(servers: &[String], timeout: Duration) -> Result<DaneResolver, DnsError> {
        let mut list = Vec::new();
        if servers.is_empty() {
            let (conf, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::Config(format!("/etc/resolv.conf: {e}")))?;
            for ns in conf.name_servers() {
                let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
                let sa = SocketAddr::new(ns.ip, port);
                if !list.contains(&sa) {
                    list.push(sa);
                }
            }
        } else {
            for s in servers {
                list.push(parse_server(s)?);
            }
        }
        Ok(DaneResolver {
            servers: list,
            timeout,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Ask for `name`/`rtype`: each server in turn until one answers
    /// NOERROR or NXDOMAIN. `Err` (SERVFAIL, REFUSED, timeouts) says why.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        let key = (fqdn.clone(), rtype);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((until, a)) = cache.get(&key)
                && *until > Instant::now()
            {
                return Ok(a.clone());
            }
        }
        let qname = Name::from_ascii(&fqdn).map_err(|e| format!("{name}: {e}"))?;
        let mut last = format!("no DNS server configured for {rtype} {name}");
        for server in &self.servers {
            match query_server(*server, &qname, rtype, self.timeout).await {
                Ok(msg) => match msg.metadata.response_code {
                    ResponseCode::NoError | ResponseCode::NXDomain => {
                        let answer = Answer {
                            authenticated: msg.metadata.authentic_data,
                            nxdomain: msg.metadata.response_code == ResponseCode::NXDomain,
                            records: msg
                                .answers
                                .iter()
                                .filter(|r| r.record_type() == rtype)
                                .map(|r| r.data.clone())
                                .collect(),
                        };
                        let ttl = msg
                            .answers
                            .iter()
                            .filter(|r| r.record_type() == rtype)
                            .map(|r| Duration::from_secs(u64::from(r.ttl)))
                            .min()
                            .unwrap_or(NEGATIVE_TTL)
                            .min(MAX_CACHE_TTL);
                        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                        if cache.len() >= MAX_CACHE {
                            let now = Instant::now();
                            cache.retain(|_, (until, _)| *until > now);
                            if cache.len() >= MAX_CACHE {
                                cache.clear();
                            }
                        }
                        cache.insert(key, (Instant::now() + ttl, answer.clone()));
                        return Ok(answer);
                    }
                    code => last = format!("{rtype} lookup of {name} at {server}: {code}"),
                },
                Err(e) => last = format!("{rtype} lookup of {name} at {server}: {e}"),
            }
        }
        Err(last)
    }

    /// Whether the MX answer for `domain` (records, or their denial) is
    /// DNSSEC-authenticated. A failed lookup counts as not authenticated:
    /// the ordinary MX lookup reports the failure.
    pub async fn mx_secure(&self, domain: &str) -> bool {
        match self.query(domain, RecordType::MX).await {
            Ok(a) => a.authenticated,
            Err(e) => {
                tracing::debug!(domain, "DANE: MX lookup failed: {e}");
                false
            }
        }
    }

    /// The DANE policy for the MX host `host` (port `port`) of `domain`,
    /// whose MX answer was authenticated. `Err` is a temporary failure:
    /// the host must not be used now.
    pub async fn host_policy(&self, host: &str, port: u16, domain: &str) -> Result<HostPolicy, String> {
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Ok(HostPolicy::Opportunistic);
        }
        let (a, aaaa) = tokio::join!(self.query(host, RecordType::A), self.query(host, RecordType::AAAA));
        let (a, aaaa) = match (a, aaaa) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return Err(format!("DANE: {e}")),
        };
        let positive: Vec<&Answer> = [&a, &aaaa].into_iter().filter(|x| !x.records.is_empty()).collect();
        if positive.is_empty() || !positive.iter().all(|x| x.authenticated) {
            tracing::debug!(host, "DANE: address records not authenticated; opportunistic TLS");
            return Ok(HostPolicy::Opportunistic);
        }
        let tlsa_name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let answer = self
            .query(&tlsa_name, RecordType::TLSA)
            .await
            .map_err(|e| format!("DANE: {e}; not sending without it"))?;
        if answer.records.is_empty() {
            return Ok(HostPolicy::Opportunistic);
        }
        if !answer.authenticated {
            tracing::info!(host, "DANE: TLSA records of {tlsa_name} are not authenticated; ignored");
            return Ok(HostPolicy::Opportunistic);
        }
        let all: Vec<Tlsa> = answer
            .records
            .iter()
            .filter_map(|r| match r {
                RData::TLSA(t) => Some(Tlsa {
                    usage: u8::from(t.cert_usage),
                    selector: u8::from(t.selector),
                    mtype: u8::from(t.matching),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        let records = usable(&all);
        if records.is_empty() {
            tracing::info!(
                host,
                "DANE: no usable TLSA record at {tlsa_name}; TLS required, unauthenticated"
            );
            return Ok(HostPolicy::EncryptOnly);
        }
        let mut names = vec![host.trim_end_matches('.').to_ascii_lowercase()];
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if !names.contains(&d) {
            names.push(d);
        }
        Ok(HostPolicy::Dane(Arc::new(DaneCheck { records, names })))
    }
}

/// Send one query to `server` over UDP (TCP when truncated).
async fn query_server(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    // RFC 6840 §5.7: ask the resolver to report validation in AD.
    msg.metadata.authentic_data = true;
    msg.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_dnssec_ok(true);
    msg.set_edns(edns);
    let id = msg.metadata.id;
    let bytes = msg.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let udp = async {
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(server).await?;
        sock.send(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = sock.recv(&mut buf).await?;
            if let Ok(resp) = Message::from_vec(&buf[..n])
                && is_reply(&resp, id, name, rtype)
            {
                return Ok::<Message, std::io::Error>(resp);
            }
        }
    };
    let resp = match tokio::time::timeout(timeout, udp).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("timed out".into()),
    };
    if !resp.metadata.truncation {
        return Ok(resp);
    }
    let tcp = async {
        let mut s = TcpStream::connect(server).await?;
        let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).await?;
        let mut lenbuf = [0u8; 2];
        s.read_exact(&mut lenbuf).await?;
        let n = usize::from(u16::from_be_bytes(lenbuf)).min(MAX_TCP_ANSWER);
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await?;
        Ok::<Vec<u8>, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(timeout, tcp).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(format!("over TCP: {e}")),
        Err(_) => return Err("timed out over TCP".into()),
    };
    let resp = Message::from_vec(&buf).map_err(|e| format!("bad answer over TCP: {e}"))?;
    if !is_reply(&resp, id, name, rtype) {
        return Err("answer over TCP does not match the question".into());
    }
    Ok(resp)
}

fn is_reply(resp: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp
            .queries
            .first()
            .is_some_and(|q| q.query_type() == rtype && q.name() == name)
}

// ------------------------------------------------------------ policy

/// What DANE asks of the connection to one MX host.
#[derive(Debug, Clone)]
pub enum HostPolicy {
    /// DANE does not apply: the usual opportunistic TLS.
    Opportunistic,
    /// Secure TLSA records exist but none is usable: TLS is required, the
    /// certificate is not authenticated (RFC 7672 §2.2).
    EncryptOnly,
    /// TLS is required and the certificate must match these records.
    Dane(Arc<DaneCheck>),
}

impl HostPolicy {
    /// Whether the connection must use TLS (no plain-text fallback).
    pub fn requires_tls(&self) -> bool {
        !matches!(self, HostPolicy::Opportunistic)
    }

    /// Whether DANE authentication applies (so MTA-STS does not, RFC 8461
    /// §2).
    pub fn is_dane(&self) -> bool {
        matches!(self, HostPolicy::Dane(_))
    }
}

/// Usable TLSA records of one host and the names a DANE-TA chain may be
/// issued for (the MX host name, then the next-hop domain).
#[derive(Debug)]
pub struct DaneCheck {
    /// Usable records (DANE-TA and DANE-EE).
    pub records: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA (RFC 7672 §3.2.2).
    pub names: Vec<String>,
}

impl DaneCheck {
    /// Check a presented chain (`ee` first): a DANE-EE record matching the
    /// end-entity certificate (name and dates not checked, RFC 7672
    /// §3.1.1), or a DANE-TA record matching a certificate of the chain
    /// that the chain verifies to, for one of [`DaneCheck::names`].
    pub fn verify(
        &self,
        ee: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        provider: &Arc<CryptoProvider>,
        now: UnixTime,
    ) -> Result<(), String> {
        if self
            .records
            .iter()
            .any(|r| r.usage == USAGE_DANE_EE && r.matches(ee.as_ref()))
        {
            return Ok(());
        }
        let mut anchors = RootCertStore::empty();
        for cert in intermediates {
            if self
                .records
                .iter()
                .any(|r| r.usage == USAGE_DANE_TA && r.matches(cert.as_ref()))
            {
                // A certificate that is not a usable anchor is ignored.
                let _ = anchors.add(cert.clone());
            }
        }
        if anchors.is_empty() {
            return Err(format!(
                "no TLSA record matches the certificate chain ({} certificate(s); records: {})",
                1 + intermediates.len(),
                self.records
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(anchors), provider.clone())
            .build()
            .map_err(|e| format!("DANE-TA verifier: {e}"))?;
        let mut errors = Vec::new();
        for n in &self.names {
            let Ok(name) = ServerName::try_from(n.clone()) else {
                continue;
            };
            match verifier.verify_server_cert(ee, intermediates, &name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => errors.push(format!("{n}: {e}")),
            }
        }
        Err(format!(
            "the chain does not verify to the DANE-TA trust anchor: {}",
            errors.join("; ")
        ))
    }
}

/// The rustls verifier used when DANE applies: the handshake fails unless
/// the chain matches the TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    check: Arc<DaneCheck>,
    provider: Arc<CryptoProvider>,
    /// Why the certificate was refused, for the delivery report.
    refused: Mutex<Option<String>>,
}

impl DaneVerifier {
    /// A verifier for `check`, with the signature algorithms of `provider`.
    pub fn new(check: Arc<DaneCheck>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier {
            check,
            provider,
            refused: Mutex::new(None),
        }
    }

    /// Why the last certificate was refused, if it was.
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A DANE verification failure, carried inside the rustls error.
#[derive(Debug)]
struct DaneMismatch(String);

impl std::fmt::Display for DaneMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DANE: {}", self.0)
    }
}

impl std::error::Error for DaneMismatch {}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check.verify(end_entity, intermediates, &self.provider, now) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("DANE: {e}"));
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(DaneMismatch(e))),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn sha256(b: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, b).as_ref().to_vec()
    }

    fn sha512(b: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA512, b).as_ref().to_vec()
    }

    fn rec(usage: u8, selector: u8, mtype: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            mtype,
            data,
        }
    }

    fn check(records: Vec<Tlsa>, names: &[&str]) -> DaneCheck {
        DaneCheck {
            records,
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    /// A CA and a leaf for `name` signed by it: (leaf, ca, leaf key SPKI, ca SPKI).
    fn chain(name: &str, expired: bool) -> (CertificateDer<'static>, CertificateDer<'static>, Vec<u8>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        (leaf.der().clone(), ca.der().clone(), key.public_key_der())
    }

    #[test]
    fn spki_extraction_matches_the_key() {
        let (leaf, ca, spki) = chain("mx.a.test", false);
        assert_eq!(spki_of(leaf.as_ref()).unwrap(), spki.as_slice());
        assert!(spki_of(ca.as_ref()).is_some());
        assert_eq!(spki_of(b"garbage"), None);
        assert_eq!(spki_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(spki_of(&leaf.as_ref()[..leaf.as_ref().len() / 2]), None);
    }

    #[test]
    fn selectors_and_matching_types() {
        let (leaf, _, spki) = chain("mx.a.test", false);
        let full = leaf.as_ref().to_vec();
        for (sel, data) in [(0u8, &full), (1, &spki)] {
            assert!(rec(3, sel, 0, data.clone()).matches(&full));
            assert!(rec(3, sel, 1, sha256(data)).matches(&full));
            assert!(rec(3, sel, 2, sha512(data)).matches(&full));
            let mut wrong = sha256(data);
            wrong[0] ^= 1;
            assert!(!rec(3, sel, 1, wrong).matches(&full));
        }
        // A SHA-256 of the full certificate does not match selector 1.
        assert!(!rec(3, 1, 1, sha256(&full)).matches(&full));
    }

    #[test]
    fn usability_and_digest_agility() {
        let h256 = vec![1u8; 32];
        let h512 = vec![2u8; 64];
        assert!(!rec(0, 0, 1, h256.clone()).is_usable(), "PKIX-TA");
        assert!(!rec(1, 1, 1, h256.clone()).is_usable(), "PKIX-EE");
        assert!(rec(2, 0, 1, h256.clone()).is_usable());
        assert!(rec(3, 1, 2, h512.clone()).is_usable());
        assert!(!rec(3, 2, 1, h256.clone()).is_usable(), "selector 2");
        assert!(!rec(3, 1, 3, h256.clone()).is_usable(), "matching type 3");
        assert!(!rec(3, 1, 1, vec![1u8; 31]).is_usable(), "short digest");
        assert!(!rec(3, 1, 2, h256.clone()).is_usable(), "SHA-512 of 32 bytes");
        let set = vec![
            rec(3, 1, 1, h256.clone()),
            rec(3, 1, 2, h512.clone()),
            rec(3, 0, 1, h256.clone()),
            rec(3, 1, 0, vec![9]),
            rec(1, 1, 1, h256.clone()),
        ];
        let u = usable(&set);
        assert_eq!(
            u,
            vec![rec(3, 1, 2, h512), rec(3, 0, 1, h256), rec(3, 1, 0, vec![9])],
            "SHA-256 dropped where SHA-512 exists for the same usage and selector"
        );
    }

    #[test]
    fn dane_ee_ignores_name_and_dates() {
        let (leaf, ca, spki) = chain("other.name", true);
        let c = check(vec![rec(3, 1, 1, sha256(&spki))], &["mx.a.test", "a.test"]);
        assert_eq!(
            c.verify(&leaf, std::slice::from_ref(&ca), &provider(), UnixTime::now()),
            Ok(())
        );
        let c = check(vec![rec(3, 0, 2, sha512(leaf.as_ref()))], &["mx.a.test"]);
        assert_eq!(c.verify(&leaf, &[], &provider(), UnixTime::now()), Ok(()));
        // A DANE-EE record for the CA does not make the leaf match.
        let c = check(vec![rec(3, 0, 1, sha256(ca.as_ref()))], &["mx.a.test"]);
        let e = c.verify(&leaf, &[ca], &provider(), UnixTime::now()).unwrap_err();
        assert!(e.contains("no TLSA record matches"), "{e}");
    }

    #[test]
    fn dane_ta_needs_chain_name_and_dates() {
        let (leaf, ca, _) = chain("mx.a.test", false);
        let ta = vec![rec(2, 0, 1, sha256(ca.as_ref()))];
        let p = provider();
        let now = UnixTime::now();
        // Name: the MX host or the next-hop domain.
        assert_eq!(
            check(ta.clone(), &["mx.a.test", "a.test"]).verify(&leaf, std::slice::from_ref(&ca), &p, now),
            Ok(())
        );
        assert_eq!(
            check(ta.clone(), &["mx.b.test", "mx.a.test"]).verify(&leaf, std::slice::from_ref(&ca), &p, now),
            Ok(())
        );
        let e = check(ta.clone(), &["mx.b.test", "b.test"])
            .verify(&leaf, std::slice::from_ref(&ca), &p, now)
            .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // The TA must be in the chain the server sends.
        let e = check(ta.clone(), &["mx.a.test"])
            .verify(&leaf, &[], &p, now)
            .unwrap_err();
        assert!(e.contains("no TLSA record matches"), "{e}");
        // SPKI selector for the TA.
        let ca_spki = spki_of(ca.as_ref()).unwrap().to_vec();
        let ta_spki = vec![rec(2, 1, 2, sha512(&ca_spki))];
        assert_eq!(
            check(ta_spki, &["mx.a.test"]).verify(&leaf, std::slice::from_ref(&ca), &p, now),
            Ok(())
        );
        // A leaf signed by another CA does not verify to this anchor.
        let (other_leaf, other_ca, _) = chain("mx.a.test", false);
        let e = check(ta.clone(), &["mx.a.test"])
            .verify(&other_leaf, &[other_ca, ca.clone()], &p, now)
            .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // Expired leaf under DANE-TA: refused.
        let (old_leaf, old_ca, _) = chain("mx.a.test", true);
        let ta_old = vec![rec(2, 0, 1, sha256(old_ca.as_ref()))];
        assert!(
            check(ta_old, &["mx.a.test"])
                .verify(&old_leaf, &[old_ca], &p, now)
                .is_err()
        );
        // A DANE-TA record matching the leaf itself is not an anchor for it.
        let ta_leaf = vec![rec(2, 0, 1, sha256(leaf.as_ref()))];
        assert!(check(ta_leaf, &["mx.a.test"]).verify(&leaf, &[ca], &p, now).is_err());
    }

    #[test]
    fn policy_flags() {
        assert!(!HostPolicy::Opportunistic.requires_tls());
        assert!(HostPolicy::EncryptOnly.requires_tls());
        assert!(!HostPolicy::EncryptOnly.is_dane());
        let d = HostPolicy::Dane(Arc::new(check(vec![], &[])));
        assert!(d.requires_tls() && d.is_dane());
    }
}
