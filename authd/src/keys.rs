//! TLS certificates and their private keys. authd is the only process that
//! reads `certs/<name>/privkey.pem`: smtpd gets the public chains
//! ([`KeyStore::certificates`]) and asks authd to make each handshake
//! signature ([`KeyStore::sign`]), as OpenSMTPD's crypto process does.
//!
//! authd only signs messages shaped like a TLS server handshake signature
//! (TLS 1.3 CertificateVerify content, or TLS 1.2 ECDHE ServerKeyExchange
//! parameters), so a compromised smtpd cannot use the keys as a general
//! signing oracle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tambo_ipc::secrets::{SecretError, SecretKind, SecretSet};

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SigningKey};
use tambo_ipc::proto::{AuthReply, CertChain};

/// Largest message authd agrees to sign. A TLS 1.3 CertificateVerify
/// content is 98 bytes plus a hash (at most 64); TLS 1.2 ECDHE parameters
/// with the client and server randoms stay under 200 bytes.
pub const MAX_SIGN_MESSAGE: usize = 1024;

/// Signature schemes we may use, in order of preference. SHA-1 schemes
/// are never used.
const SCHEMES: [SignatureScheme; 10] = [
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// What the TLS 1.3 server signature covers, before the transcript hash
/// (RFC 8446 §4.4.3).
const TLS13_SERVER_PREFIX_SPACES: usize = 64;
const TLS13_SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\x00";

/// Why the certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] SecretError),
    /// No certificate directory has both files (chasquid's wording).
    #[error(
        "At least one valid certificate is needed: no directory under certs/ has both fullchain.pem and privkey.pem"
    )]
    NoCertificates,
    /// A reload found no certificate: the loaded ones stay.
    #[error("no certificate under certs/ any more: keeping the {0} loaded before")]
    NoneOnReload(usize),
    /// A PEM file does not parse.
    #[error("{path}: not valid PEM: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// fullchain.pem has no certificate.
    #[error("{0}: no certificate in this file")]
    NoCertificate(PathBuf),
    /// privkey.pem has no private key.
    #[error("{0}: no private key in this file")]
    NoKey(PathBuf),
    /// The key is of a type we cannot use.
    #[error("{path}: unusable private key: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The key is not the one the certificate certifies.
    #[error("{0}: privkey.pem does not match the first certificate of fullchain.pem")]
    Mismatch(PathBuf),
}

/// One certificate directory.
struct Entry {
    name: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
    schemes: Vec<SignatureScheme>,
}

/// Every certificate loaded at one time; `generation` is random, so smtpd
/// can tell a reloaded or restarted authd's set from the one it holds.
struct KeySet {
    generation: u64,
    entries: Vec<Entry>,
}

/// The certificates and keys, with the previous set kept for handshakes
/// that started before a reload.
pub struct KeyStore {
    sets: RwLock<(Arc<KeySet>, Option<Arc<KeySet>>)>,
}

/// Every certificate the supervisor opened (`certs/<name>/fullchain.pem`
/// and `privkey.pem` of each directory that has both, sorted by name). A
/// file that does not load is an error naming it: at start-up tambod
/// stops, as chasquid does, and a reload keeps the old certificates, so a
/// certificate never disappears without a word.
fn load_entries(secrets: &SecretSet) -> Result<Vec<Entry>, KeyError> {
    let mut out = Vec::new();
    for f in secrets.files() {
        let SecretKind::TlsChain { name } = &f.kind else {
            continue;
        };
        let chain = secrets.read(&f.kind).expect("listed")?;
        let Some(key) = secrets.read(&SecretKind::TlsKey { name: name.clone() }) else {
            continue;
        };
        out.push(load_pair(name.clone(), chain, key?)?);
    }
    Ok(out)
}

/// Load one certificate directory's chain and key (each path and bytes).
fn load_pair(name: String, chain: (PathBuf, Vec<u8>), key: (PathBuf, Vec<u8>)) -> Result<Entry, KeyError> {
    let (chain_path, chain_pem) = chain;
    let (key_path, key_pem) = key;
    let chain = rustls_pemfile::certs(&mut chain_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KeyError::Pem {
            path: chain_path.clone(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(KeyError::NoCertificate(chain_path));
    }
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| KeyError::Pem {
            path: key_path.clone(),
            message: e.to_string(),
        })?
        .ok_or_else(|| KeyError::NoKey(key_path.clone()))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| KeyError::BadKey {
        path: key_path.clone(),
        message: e.to_string(),
    })?;
    drop(key_der);
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(KeyError::Mismatch(
                key_path.parent().unwrap_or(Path::new("")).to_path_buf(),
            ));
        }
    }
    let schemes: Vec<SignatureScheme> = SCHEMES
        .into_iter()
        .filter(|s| certified.key.choose_scheme(&[*s]).is_some())
        .collect();
    if schemes.is_empty() {
        return Err(KeyError::BadKey {
            path: key_path,
            message: "no usable signature scheme".into(),
        });
    }
    Ok(Entry {
        name,
        chain: certified.cert,
        key: certified.key,
        schemes,
    })
}

fn new_set(secrets: &SecretSet) -> Result<Arc<KeySet>, KeyError> {
    let entries = load_entries(secrets)?;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    tracing::info!("TLS certificates loaded: {}", names.join(", "));
    Ok(Arc::new(KeySet {
        generation: rand::random(),
        entries,
    }))
}

/// Whether `msg` is what a TLS server signs in a handshake: the TLS 1.3
/// CertificateVerify content (RFC 8446 §4.4.3), or the TLS 1.2 client and
/// server randoms followed by ECDHE parameters (RFC 8422 §5.4).
pub fn is_handshake_message(msg: &[u8]) -> bool {
    if msg.len() > MAX_SIGN_MESSAGE {
        return false;
    }
    let head = TLS13_SERVER_PREFIX_SPACES + TLS13_SERVER_CONTEXT.len();
    if msg.len() > head
        && msg[..TLS13_SERVER_PREFIX_SPACES].iter().all(|&b| b == b' ')
        && &msg[TLS13_SERVER_PREFIX_SPACES..head] == TLS13_SERVER_CONTEXT
    {
        return matches!(msg.len() - head, 32 | 48 | 64);
    }
    // 32 + 32 bytes of randoms, curve_type named_curve (3), a 2-byte
    // group, then the public point with a 1-byte length.
    msg.len() > 68 && msg[64] == 3 && msg[67] != 0 && msg.len() == 68 + usize::from(msg[67])
}

impl KeyStore {
    /// Load the certificates; a broken one, or none at all, is an error.
    pub fn load(secrets: &SecretSet) -> Result<KeyStore, KeyError> {
        let set = new_set(secrets)?;
        if set.entries.is_empty() {
            return Err(KeyError::NoCertificates);
        }
        Ok(KeyStore {
            sets: RwLock::new((set, None)),
        })
    }

    /// Load again; on any error (naming the file), and when no certificate
    /// is left, the current set stays.
    pub fn reload(&self, secrets: &SecretSet) -> Result<(), KeyError> {
        let set = new_set(secrets)?;
        if set.entries.is_empty() {
            return Err(KeyError::NoneOnReload(self.current().entries.len()));
        }
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut sets.0, set);
        sets.1 = Some(old);
        Ok(())
    }

    fn current(&self) -> Arc<KeySet> {
        self.sets.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// The public side of every certificate, for smtpd.
    pub fn certificates(&self) -> AuthReply {
        let set = self.current();
        AuthReply::Certificates {
            generation: set.generation,
            chains: set
                .entries
                .iter()
                .map(|e| CertChain {
                    name: e.name.clone(),
                    chain: e.chain.iter().map(|c| c.as_ref().to_vec()).collect(),
                    algorithm: u8::from(e.key.algorithm()),
                    schemes: e.schemes.iter().map(|s| u16::from(*s)).collect(),
                })
                .collect(),
        }
    }

    /// Sign a handshake message with the key of certificate `name` of
    /// set `generation` (the current one or the one before).
    pub fn sign(&self, generation: u64, name: &str, scheme: u16, message: &[u8]) -> AuthReply {
        let set = {
            let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
            if sets.0.generation == generation {
                Some(sets.0.clone())
            } else {
                sets.1.clone().filter(|s| s.generation == generation)
            }
        };
        let Some(set) = set else {
            return AuthReply::Error("stale certificate generation".into());
        };
        let Some(entry) = set.entries.iter().find(|e| e.name == name) else {
            return AuthReply::Error(format!("no certificate named {name:?}"));
        };
        if !is_handshake_message(message) {
            tracing::warn!(
                cert = name,
                len = message.len(),
                "refused to sign: not a TLS handshake message"
            );
            return AuthReply::Error("not a TLS server handshake message".into());
        }
        let scheme = SignatureScheme::from(scheme);
        if !entry.schemes.contains(&scheme) {
            return AuthReply::Error(format!("{scheme:?} is not a scheme of this key"));
        }
        let Some(signer) = entry.key.choose_scheme(&[scheme]) else {
            return AuthReply::Error(format!("{scheme:?} is not a scheme of this key"));
        };
        match signer.sign(message) {
            Ok(sig) => AuthReply::Signature(sig),
            Err(e) => AuthReply::Error(format!("signing failed: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str, alg: &'static rcgen::SignatureAlgorithm) {
        let d = dir.join("certs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(d.join("fullchain.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("privkey.pem"), key.serialize_pem()).unwrap();
    }

    fn secrets(dir: &Path) -> SecretSet {
        SecretSet::open(dir, &[], "").unwrap()
    }

    fn tls13_message() -> Vec<u8> {
        let mut m = vec![b' '; 64];
        m.extend_from_slice(TLS13_SERVER_CONTEXT);
        m.extend_from_slice(&[7u8; 32]);
        m
    }

    #[test]
    fn loads_sorted_skips_incomplete_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "b.example", &rcgen::PKCS_ECDSA_P256_SHA256);
        write_cert(dir.path(), "a.example", &rcgen::PKCS_ED25519);
        std::fs::create_dir_all(dir.path().join("certs/incomplete")).unwrap();
        std::fs::write(dir.path().join("certs/incomplete/fullchain.pem"), "").unwrap();
        let store = KeyStore::load(&secrets(dir.path())).unwrap();
        let AuthReply::Certificates { generation, chains } = store.certificates() else {
            panic!("certificates")
        };
        let names: Vec<&str> = chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(chains[0].schemes, [u16::from(SignatureScheme::ED25519)]);
        assert_eq!(chains[1].schemes, [u16::from(SignatureScheme::ECDSA_NISTP256_SHA256)]);

        let ed = u16::from(SignatureScheme::ED25519);
        let ec = u16::from(SignatureScheme::ECDSA_NISTP256_SHA256);
        assert!(
            matches!(store.sign(generation, "a.example", ed, &tls13_message()), AuthReply::Signature(s) if s.len() == 64)
        );
        assert!(matches!(
            store.sign(generation, "b.example", ec, &tls13_message()),
            AuthReply::Signature(_)
        ));
        // Wrong scheme for the key, unknown name, stale generation,
        // arbitrary message, oversized message: all refused.
        assert!(matches!(
            store.sign(generation, "a.example", ec, &tls13_message()),
            AuthReply::Error(_)
        ));
        assert!(matches!(
            store.sign(generation, "zzz", ed, &tls13_message()),
            AuthReply::Error(_)
        ));
        assert!(matches!(
            store.sign(generation ^ 1, "a.example", ed, &tls13_message()),
            AuthReply::Error(_)
        ));
        assert!(matches!(
            store.sign(generation, "a.example", ed, b"sign me please"),
            AuthReply::Error(_)
        ));
        assert!(matches!(
            store.sign(generation, "a.example", ed, &vec![b' '; 5000]),
            AuthReply::Error(_)
        ));

        // After a reload the previous generation may still sign; the one
        // before it may not.
        store.reload(&secrets(dir.path())).unwrap();
        assert!(matches!(
            store.sign(generation, "a.example", ed, &tls13_message()),
            AuthReply::Signature(_)
        ));
        store.reload(&secrets(dir.path())).unwrap();
        assert!(matches!(
            store.sign(generation, "a.example", ed, &tls13_message()),
            AuthReply::Error(_)
        ));
    }

    #[test]
    fn handshake_message_shapes() {
        assert!(is_handshake_message(&tls13_message()));
        let mut short = tls13_message();
        short.truncate(short.len() - 1);
        assert!(!is_handshake_message(&short));
        // TLS 1.2: randoms, named_curve x25519, 32-byte point.
        let mut m = vec![0u8; 64];
        m.extend_from_slice(&[3, 0, 29, 32]);
        m.extend_from_slice(&[9u8; 32]);
        assert!(is_handshake_message(&m));
        m.push(0);
        assert!(!is_handshake_message(&m));
        assert!(!is_handshake_message(b""));
    }

    #[test]
    fn broken_key_and_mismatch_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a.example", &rcgen::PKCS_ECDSA_P256_SHA256);
        write_cert(dir.path(), "b.example", &rcgen::PKCS_ECDSA_P256_SHA256);
        let store = KeyStore::load(&secrets(dir.path())).unwrap();
        std::fs::write(dir.path().join("certs/a.example/privkey.pem"), "garbage\n").unwrap();
        // At start-up a broken certificate stops everything (as chasquid:
        // a certificate must not go missing without a word); on reload the
        // old set stays.
        let e = KeyStore::load(&secrets(dir.path())).err().unwrap().to_string();
        assert!(e.contains("a.example/privkey.pem"), "{e}");
        let e = store.reload(&secrets(dir.path())).err().unwrap().to_string();
        assert!(e.contains("a.example/privkey.pem"), "{e}");
        let AuthReply::Certificates { chains, .. } = store.certificates() else {
            panic!()
        };
        assert_eq!(chains.len(), 2);

        write_cert(dir.path(), "a.example", &rcgen::PKCS_ECDSA_P256_SHA256);
        std::fs::copy(
            dir.path().join("certs/b.example/privkey.pem"),
            dir.path().join("certs/a.example/privkey.pem"),
        )
        .unwrap();
        let e = load_entries(&secrets(dir.path())).err().unwrap().to_string();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn no_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("certs/only-chain")).unwrap();
        std::fs::write(dir.path().join("certs/only-chain/fullchain.pem"), "x").unwrap();
        let e = KeyStore::load(&secrets(dir.path())).err().unwrap().to_string();
        assert!(e.starts_with("At least one valid certificate is needed"), "{e}");
        // A reload that would leave none keeps the loaded ones.
        write_cert(dir.path(), "a.example", &rcgen::PKCS_ED25519);
        let store = KeyStore::load(&secrets(dir.path())).unwrap();
        std::fs::remove_dir_all(dir.path().join("certs/a.example")).unwrap();
        let e = store.reload(&secrets(dir.path())).err().unwrap().to_string();
        assert!(e.contains("keeping the 1 loaded before"), "{e}");
        let AuthReply::Certificates { chains, .. } = store.certificates() else {
            panic!()
        };
        assert_eq!(chains.len(), 1);
    }
}
