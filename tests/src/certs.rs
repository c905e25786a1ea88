//! Certificates for tests: a throw-away CA, the certificates it issues,
//! self-signed ones, and rustls server configurations serving them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA made for one test.
pub struct TestCa {
    key: KeyPair,
    /// Its self-signed certificate.
    pub cert: rcgen::Certificate,
}

/// A certificate issued by a [`TestCa`], with its key.
pub struct Issued {
    /// The leaf certificate.
    pub cert: rcgen::Certificate,
    /// Its private key.
    pub key: KeyPair,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl TestCa {
    /// A new CA whose subject is `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { key, cert }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Write the CA certificate to `dir/test-ca.pem` and return the path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.pem()).expect("write CA");
        path
    }

    /// A certificate for `names` signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign");
        Issued {
            cert,
            key,
            ca_pem: self.pem(),
            ca_der: self.cert.der().clone(),
        }
    }

    /// A server configuration presenting a certificate for `names` signed
    /// by this CA, followed by the CA certificate.
    pub fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        self.issue(names).server_config()
    }
}

impl Issued {
    /// Leaf then CA certificate, PEM (a `fullchain.pem`).
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert.pem(), self.ca_pem)
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A server configuration presenting the leaf and the CA certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        server_config(
            vec![self.cert.der().clone(), self.ca_der.clone()],
            self.key.serialize_der(),
        )
    }
}

/// A server configuration for `chain` with the PKCS#8 `key`.
pub fn server_config(chain: Vec<CertificateDer<'static>>, key: Vec<u8>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .expect("server config"),
    )
}

/// A server configuration with a self-signed certificate for `names`.
pub fn self_signed(names: &[&str]) -> Arc<rustls::ServerConfig> {
    let c = rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("rcgen");
    server_config(vec![c.cert.der().clone()], c.key_pair.serialize_der())
}
