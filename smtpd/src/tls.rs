//! TLS without private keys. smtpd gets the public certificate chains from
//! authd and makes a rustls `ServerConfig` whose keys are handles: each
//! handshake signature is made by authd over the smtpd-authd channel. A
//! compromised smtpd therefore never holds a private key.
//!
//! The certificate is chosen by SNI: a certificate directory named like
//! the requested name, else the first certificate valid for that name
//! (wildcards included), else the first directory by name.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{ProtocolVersion, ServerConfig, SignatureAlgorithm, SignatureScheme};
use tambo_ipc::proto::{AuthReply, AuthRequest, CertChain, TlsInfo};
use tambo_ipc::worker::PeerSlot;

use crate::conn::Stream;

/// How long to wait for authd to be reachable when fetching certificates.
const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long a fetch or a signature may take in all.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed fetch, sessions use what they have for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// After a reload, keep asking authd (at most every [`RELOAD_POLL`]) until
/// its certificates change, for at most this long: the supervisor tells
/// every worker at once, so authd may not have reloaded yet.
const RELOAD_WINDOW: Duration = Duration::from_secs(10);
const RELOAD_POLL: Duration = Duration::from_millis(200);

type AuthdSlot = PeerSlot<AuthRequest, AuthReply>;

#[derive(Default)]
struct Cache {
    config: Option<Arc<ServerConfig>>,
    generation: Option<u64>,
    fetched: bool,
    stale: bool,
    reload_since: Option<Instant>,
    next_try: Option<Instant>,
}

impl Cache {
    fn needs_fetch(&self, now: Instant) -> bool {
        (!self.fetched || self.stale || self.reload_since.is_some()) && self.next_try.is_none_or(|t| now >= t)
    }
}

struct Shared {
    authd: Arc<AuthdSlot>,
    cache: Mutex<Cache>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark_stale(&self) {
        let mut c = self.cache();
        c.stale = true;
        c.next_try = None;
    }
}

/// The TLS configuration of smtpd, fetched from authd when first needed
/// and again after a reload or an authd restart.
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Shared>,
}

impl Tls {
    /// Certificates will come from authd through `authd`.
    pub fn new(authd: Arc<AuthdSlot>) -> Tls {
        Tls {
            shared: Arc::new(Shared {
                authd,
                cache: Mutex::default(),
                fetch_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The certificates may have changed (SIGHUP): fetch them again.
    pub fn reloaded(&self) {
        let mut c = self.shared.cache();
        c.reload_since = Some(Instant::now());
        c.next_try = None;
    }

    /// authd was (re)connected: what we hold may belong to its previous
    /// life.
    pub fn authd_restarted(&self) {
        self.shared.mark_stale();
    }

    /// The current server configuration; `None` when there is no
    /// certificate (or authd could not be asked yet).
    pub async fn config(&self) -> Option<Arc<ServerConfig>> {
        {
            let c = self.shared.cache();
            if !c.needs_fetch(Instant::now()) {
                return c.config.clone();
            }
        }
        let _fetching = self.shared.fetch_lock.lock().await;
        if !self.shared.cache().needs_fetch(Instant::now()) {
            return self.shared.cache().config.clone();
        }
        let fetched = fetch(&self.shared.authd).await;
        let now = Instant::now();
        let mut c = self.shared.cache();
        match fetched {
            Ok((generation, chains)) => {
                let changed = c.generation != Some(generation);
                if changed || !c.fetched {
                    let count = chains.len();
                    c.config = build_config(&self.shared, generation, chains)
                        .inspect_err(|e| tracing::error!("TLS configuration: {e}"))
                        .ok()
                        .flatten();
                    c.generation = Some(generation);
                    tracing::info!("TLS: {count} certificate(s) from authd");
                }
                c.fetched = true;
                c.stale = false;
                c.next_try = None;
                if let Some(since) = c.reload_since {
                    if changed || now.duration_since(since) >= RELOAD_WINDOW {
                        c.reload_since = None;
                    } else {
                        c.next_try = Some(now + RELOAD_POLL);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("TLS: cannot get the certificates from authd: {e}");
                c.next_try = Some(now + RETRY_AFTER_FAILURE);
            }
        }
        c.config.clone()
    }
}

async fn fetch(authd: &AuthdSlot) -> Result<(u64, Vec<CertChain>), String> {
    let call = authd.call(AuthRequest::Certificates, Vec::new(), FETCH_WAIT);
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok((AuthReply::Certificates { generation, chains }, _))) => Ok((generation, chains)),
        Ok(Ok((AuthReply::Error(e), _))) => Err(e),
        Ok(Ok((
            AuthReply::Exists(_)
            | AuthReply::Auth(_)
            | AuthReply::Signature(_)
            | AuthReply::DkimSignatures(_)
            | AuthReply::ArcSet { .. }
            | AuthReply::RelayAuth(_),
            _,
        ))) => Err("unexpected reply".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

fn build_config(
    shared: &Arc<Shared>,
    generation: u64,
    chains: Vec<CertChain>,
) -> Result<Option<Arc<ServerConfig>>, rustls::Error> {
    let mut entries = Vec::new();
    for c in chains {
        if c.chain.is_empty() || c.schemes.is_empty() {
            continue;
        }
        let key = RemoteKey {
            shared: shared.clone(),
            generation,
            name: c.name.clone(),
            algorithm: SignatureAlgorithm::from(c.algorithm),
            schemes: c.schemes.into_iter().map(SignatureScheme::from).collect(),
        };
        let certs: Vec<CertificateDer<'static>> = c.chain.into_iter().map(CertificateDer::from).collect();
        entries.push((c.name, Arc::new(CertifiedKey::new(certs, Arc::new(key)))));
    }
    if entries.is_empty() {
        return Ok(None);
    }
    let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { entries }));
    Ok(Some(Arc::new(config)))
}

/// Picks the certificate for a handshake by SNI.
#[derive(Debug)]
struct SniResolver {
    /// Sorted by directory name; the first is the default.
    entries: Vec<(String, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let default = self.entries.first()?;
        let Some(sni) = sni else {
            return Some(default.1.clone());
        };
        if let Some((_, k)) = self.entries.iter().find(|(n, _)| n.eq_ignore_ascii_case(sni)) {
            return Some(k.clone());
        }
        if let Ok(name) = ServerName::try_from(sni) {
            for (_, k) in &self.entries {
                let valid = k.cert.first().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                });
                if valid {
                    return Some(k.clone());
                }
            }
        }
        Some(default.1.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A private key that stays in authd.
struct RemoteKey {
    shared: Arc<Shared>,
    generation: u64,
    name: String,
    algorithm: SignatureAlgorithm,
    schemes: Vec<SignatureScheme>,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(RemoteSigner {
            shared: self.shared.clone(),
            generation: self.generation,
            name: self.name.clone(),
            scheme: *scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

/// One signature to be made by authd.
struct RemoteSigner {
    shared: Arc<Shared>,
    generation: u64,
    name: String,
    scheme: SignatureScheme,
}

impl std::fmt::Debug for RemoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSigner")
            .field("name", &self.name)
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl Signer for RemoteSigner {
    /// rustls calls this synchronously in the middle of the handshake;
    /// the call to authd is async, so the worker thread is handed over to
    /// tokio's blocking pool for its duration (`block_in_place`). This
    /// needs the multi-thread runtime, which smtpd uses.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| rustls::Error::General("TLS signing outside the runtime".into()))?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Err(rustls::Error::General(
                "TLS signing needs the multi-thread runtime".into(),
            ));
        }
        let req = AuthRequest::Sign {
            generation: self.generation,
            name: self.name.clone(),
            scheme: u16::from(self.scheme),
            message: message.to_vec(),
        };
        let authd = self.shared.authd.clone();
        let reply = tokio::task::block_in_place(|| {
            handle.block_on(tokio::time::timeout(
                CALL_TIMEOUT,
                authd.call(req, Vec::new(), FETCH_WAIT),
            ))
        });
        let why = match reply {
            Ok(Ok((AuthReply::Signature(sig), _))) => return Ok(sig),
            Ok(Ok((AuthReply::Error(e), _))) => e,
            Ok(Ok((
                AuthReply::Exists(_)
                | AuthReply::Auth(_)
                | AuthReply::Certificates { .. }
                | AuthReply::DkimSignatures(_)
                | AuthReply::ArcSet { .. }
                | AuthReply::RelayAuth(_),
                _,
            ))) => "unexpected reply".into(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timeout".into(),
        };
        // Perhaps authd reloaded or restarted: fetch the chains again.
        self.shared.mark_stale();
        tracing::warn!(cert = self.name, "TLS: authd did not sign: {why}");
        Err(rustls::Error::General(format!("signing by authd failed: {why}")))
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Run the server side of a TLS handshake over `stream`.
pub async fn accept(
    config: Arc<ServerConfig>,
    stream: Box<dyn Stream>,
    timeout: Duration,
) -> Result<(Box<dyn Stream>, TlsInfo), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("handshake timeout".into()),
    };
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    Ok((Box::new(tls), TlsInfo { version, cipher }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let slot = PeerSlot::<AuthRequest, AuthReply>::new("smtpd-authd");
        let shared = Arc::new(Shared {
            authd: slot,
            cache: Mutex::default(),
            fetch_lock: tokio::sync::Mutex::new(()),
        });
        let k = RemoteKey {
            shared,
            generation: 1,
            name: names[0].into(),
            algorithm: SignatureAlgorithm::ECDSA,
            schemes: vec![SignatureScheme::ECDSA_NISTP256_SHA256],
        };
        Arc::new(CertifiedKey::new(vec![cert.cert.der().clone()], Arc::new(k)))
    }

    #[test]
    fn sni_selection() {
        let a = key(&["a.example"]);
        let b = key(&["b.example", "*.wild.example"]);
        let r = SniResolver {
            entries: vec![("a.example".into(), a.clone()), ("b.example".into(), b.clone())],
        };
        let pick = |s: Option<&str>| r.pick(s).unwrap();
        assert!(Arc::ptr_eq(&pick(None), &a));
        assert!(Arc::ptr_eq(&pick(Some("B.example")), &b));
        assert!(Arc::ptr_eq(&pick(Some("mx.wild.example")), &b));
        assert!(Arc::ptr_eq(&pick(Some("unknown.example")), &a));
        assert!(SniResolver { entries: vec![] }.pick(None).is_none());
    }
}
