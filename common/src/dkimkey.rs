//! DKIM private keys in chasquid's layout:
//! `domains/<domain>/dkim:<selector>.pem`, PKCS#8 (or PKCS#1 for RSA) PEM.
//!
//! This module only finds, parses and classifies key files and derives the
//! DNS record to publish; signing happens in authd, the only worker that
//! may read the files.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Problems with a key file; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    /// The file or directory cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold a usable key.
    #[error("{path}: {msg}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// The signing algorithm of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgo {
    /// RSA with SHA-256 (`a=rsa-sha256`).
    Rsa,
    /// Ed25519 with SHA-256 (`a=ed25519-sha256`, RFC 8463).
    Ed25519,
}

/// A key file found in a domain directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The selector (the part between `dkim:` and `.pem`).
    pub selector: String,
    /// Full path.
    pub path: PathBuf,
}

/// A parsed private key, as DER.
pub struct ParsedKey {
    /// Algorithm.
    pub algo: KeyAlgo,
    /// The private key, as found in the file (PKCS#8 or PKCS#1 for RSA).
    pub der: PrivateKeyDer<'static>,
    /// The public key as published in DNS: SubjectPublicKeyInfo DER for
    /// RSA, the raw 32 bytes for Ed25519.
    pub public: Vec<u8>,
}

impl std::fmt::Debug for ParsedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey")
            .field("algo", &self.algo)
            .finish_non_exhaustive()
    }
}

/// Whether `s` is a selector we accept: a dot-separated list of DNS labels
/// (letters, digits, `-`, `_`), at most 63 characters.
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Path of the key file of `domain` and `selector`.
pub fn key_path(config_dir: &Path, domain: &str, selector: &str) -> PathBuf {
    crate::config::domain_dir(config_dir, domain).join(format!("dkim:{selector}.pem"))
}

/// The key files of one domain, sorted by selector. A missing domain
/// directory has none. A file named like a key with an invalid selector is
/// an error.
pub fn list_key_files(config_dir: &Path, domain: &str) -> Result<Vec<KeyFile>, DkimKeyError> {
    list_key_files_in(&crate::config::domain_dir(config_dir, domain))
}

/// The key files (`dkim:<selector>.pem`) in the domain directory `dir`, as
/// [`list_key_files`].
pub fn list_key_files_in(dir: &Path) -> Result<Vec<KeyFile>, DkimKeyError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DkimKeyError::Io {
                path: dir.display().to_string(),
                source: e,
            });
        }
    };
    let mut out = Vec::new();
    for de in rd {
        let de = de.map_err(|e| DkimKeyError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let name = de.file_name().to_string_lossy().into_owned();
        let Some(selector) = name.strip_prefix("dkim:").and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        let path = de.path();
        if !valid_selector(selector) {
            return Err(DkimKeyError::Invalid {
                path: path.display().to_string(),
                msg: "invalid DKIM selector in the file name".into(),
            });
        }
        out.push(KeyFile {
            selector: selector.to_string(),
            path,
        });
    }
    out.sort_by(|a, b| a.selector.cmp(&b.selector));
    Ok(out)
}

/// Parse a PEM private key (PKCS#8 RSA or Ed25519, or PKCS#1 RSA).
pub fn parse_key(path: &Path, pem: &[u8]) -> Result<ParsedKey, DkimKeyError> {
    let invalid = |msg: &str| DkimKeyError::Invalid {
        path: path.display().to_string(),
        msg: msg.to_string(),
    };
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| invalid(&format!("no PEM private key ({e}); expected PKCS#8 RSA or Ed25519")))?;
    match &der {
        PrivateKeyDer::Pkcs8(p8) => {
            let bytes = p8.secret_pkcs8_der();
            if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes) {
                let public = kp.public_key().as_ref().to_vec();
                return Ok(ParsedKey {
                    algo: KeyAlgo::Ed25519,
                    der,
                    public,
                });
            }
            let kp = RsaKeyPair::from_pkcs8(bytes)
                .map_err(|e| invalid(&format!("not a usable RSA or Ed25519 PKCS#8 key: {e}")))?;
            rsa_key(&kp, der.clone_key()).map_err(|m| invalid(&m))
        }
        PrivateKeyDer::Pkcs1(p1) => {
            let kp = RsaKeyPair::from_der(p1.secret_pkcs1_der())
                .map_err(|e| invalid(&format!("not a usable RSA key: {e}")))?;
            rsa_key(&kp, der.clone_key()).map_err(|m| invalid(&m))
        }
        _ => Err(invalid("unsupported key format (use PKCS#8 RSA or Ed25519)")),
    }
}

/// An RSA key of a usable size, with its public key as a SubjectPublicKeyInfo.
fn rsa_key(kp: &RsaKeyPair, der: PrivateKeyDer<'static>) -> Result<ParsedKey, String> {
    check_rsa_size(kp)?;
    Ok(ParsedKey {
        algo: KeyAlgo::Rsa,
        der,
        public: rsa_spki(kp.public().as_ref()),
    })
}

fn check_rsa_size(kp: &RsaKeyPair) -> Result<(), String> {
    let bits = kp.public().modulus_len() * 8;
    if bits < 1024 {
        return Err(format!("RSA key of {bits} bits is too small (use 2048 or more)"));
    }
    Ok(())
}

/// Read and parse one key file.
pub fn load_key(path: &Path) -> Result<ParsedKey, DkimKeyError> {
    let pem = std::fs::read(path).map_err(|e| DkimKeyError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    parse_key(path, &pem)
}

/// Load every key of every domain: (domain, selector, key). The first bad
/// file is an error naming it.
pub fn load_all(config_dir: &Path, domains: &[String]) -> Result<Vec<(String, String, ParsedKey)>, DkimKeyError> {
    let mut out = Vec::new();
    for d in domains {
        for kf in list_key_files(config_dir, d)? {
            let key = load_key(&kf.path)?;
            out.push((d.clone(), kf.selector, key));
        }
    }
    Ok(out)
}

/// The TXT record to publish at `<selector>._domainkey.<domain>`.
pub fn dns_record(algo: KeyAlgo, public: &[u8]) -> String {
    let k = match algo {
        KeyAlgo::Rsa => "rsa",
        KeyAlgo::Ed25519 => "ed25519",
    };
    format!("v=DKIM1; k={k}; p={}", B64.encode(public))
}

/// Generate a new private key, as PKCS#8 PEM. RSA keys come from the
/// `rsa` crate (ring cannot generate them), Ed25519 keys from ring.
pub fn generate(algo: KeyAlgo, rsa_bits: usize) -> Result<String, String> {
    match algo {
        KeyAlgo::Ed25519 => {
            let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
            Ok(pem_wrap("PRIVATE KEY", doc.as_ref()))
        }
        KeyAlgo::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, rsa_bits).map_err(|e| e.to_string())?;
            let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            Ok(pem_wrap("PRIVATE KEY", der.as_bytes()))
        }
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// DER length octets.
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
}

fn der_tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    der_len(content.len(), out);
    out.extend_from_slice(content);
}

/// Wrap a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (what
/// `openssl pkey -pubout -outform DER` prints).
pub fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption, NULL }
    const ALG: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALG.to_vec();
    der_tlv(0x03, &bits, &mut inner);
    let mut out = Vec::new();
    der_tlv(0x30, &inner, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert!(valid_selector("20260101"));
        assert!(valid_selector("mail.sel_2"));
        assert!(!valid_selector(""));
        assert!(!valid_selector("a/b"));
        assert!(!valid_selector("a..b"));
        assert!(!valid_selector("-x"));
    }

    #[test]
    fn ed25519_key_and_record() {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            B64.encode(doc.as_ref())
        );
        let k = parse_key(Path::new("x.pem"), pem.as_bytes()).unwrap();
        assert_eq!(k.algo, KeyAlgo::Ed25519);
        assert_eq!(k.public.len(), 32);
        assert!(dns_record(k.algo, &k.public).starts_with("v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn generated_keys_parse() {
        let ed = generate(KeyAlgo::Ed25519, 0).unwrap();
        assert_eq!(parse_key(Path::new("e"), ed.as_bytes()).unwrap().algo, KeyAlgo::Ed25519);
        let rsa = generate(KeyAlgo::Rsa, 2048).unwrap();
        assert!(rsa.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let k = parse_key(Path::new("r"), rsa.as_bytes()).unwrap();
        assert_eq!(k.algo, KeyAlgo::Rsa);
        // SPKI of a 2048-bit key: 294 bytes, as openssl prints it.
        assert_eq!(k.public.len(), 294);
    }

    #[test]
    fn bad_key_names_the_file() {
        let e = parse_key(Path::new("/c/domains/d/dkim:s.pem"), b"garbage").unwrap_err();
        assert!(e.to_string().starts_with("/c/domains/d/dkim:s.pem: "), "{e}");
    }

    #[test]
    fn listing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("domains/example.com");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("dkim:b.pem"), "").unwrap();
        std::fs::write(d.join("dkim:a.pem"), "").unwrap();
        std::fs::write(d.join("users"), "").unwrap();
        let l = list_key_files(dir.path(), "example.com").unwrap();
        assert_eq!(
            l.iter().map(|k| k.selector.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(list_key_files(dir.path(), "none.org").unwrap().is_empty());
        std::fs::write(d.join("dkim:bad sel.pem"), "").unwrap();
        assert!(list_key_files(dir.path(), "example.com").is_err());
    }

    #[test]
    fn spki_wrapping() {
        // A short fake key exercises the short-form lengths; a long one
        // the long form.
        let short = rsa_spki(&[0x30, 0x00]);
        assert_eq!(short[0], 0x30);
        assert_eq!(short[1] as usize, short.len() - 2);
        let long = rsa_spki(&vec![0u8; 270]);
        assert_eq!(&long[..2], &[0x30, 0x82]);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]) as usize, long.len() - 4);
    }
}
