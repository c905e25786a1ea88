//! Outgoing TLS. The handshake itself accepts any certificate (so that a
//! server with a self-signed certificate still gets encrypted mail, as
//! every MTA does), and the chain is then checked separately against the
//! system roots plus `tls_extra_ca_file` for the MX host name: the result
//! decides between [`SecLevel::TlsInsecure`] and [`SecLevel::TlsSecure`].
//!
//! A server whose certificate is itself one of the trusted roots (a CA
//! certificate used as the server's, as chasquid's test certificates are)
//! is secure too when the certificate is valid for the name, as Go's TLS
//! (and so chasquid) judges it: webpki refuses a CA certificate as an end
//! entity, but trusting a root already trusts anything it would sign.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tambo_common::domaininfo::SecLevel;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Errors setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The extra CA file cannot be read or has no certificate.
    #[error("tls_extra_ca_file {0}: {1}")]
    ExtraCa(String, String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// The TLS client side of remote delivery.
pub struct TlsClient {
    connector: TlsConnector,
    verifier: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    /// The trusted roots (system + extra), also to recognise a server that
    /// presents one of them.
    roots: Arc<RootCertStore>,
}

/// Whether webpki refused a certificate for being a CA certificate.
fn ca_used_as_end_entity(e: &rustls::Error) -> bool {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<webpki::Error>() == Some(&webpki::Error::CaUsedAsEndEntity)
        }
        _ => false,
    }
}

/// Verifier used during the handshake: checks the handshake signatures
/// properly but accepts any certificate; the chain is judged afterwards.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsClient {
    /// System roots (as found by rustls-native-certs: /etc/ssl/certs,
    /// `SSL_CERT_FILE`, `SSL_CERT_DIR`) plus the PEM bundle `extra_ca_file`
    /// when not empty.
    pub fn new(extra_ca_file: &str) -> Result<TlsClient, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if !native.errors.is_empty() {
            tracing::debug!(
                "some system certificates could not be read: {:?}",
                native.errors.first()
            );
        }
        if !extra_ca_file.is_empty() {
            let bytes = std::fs::read(extra_ca_file)
                .map_err(|e| TlsSetupError::ExtraCa(extra_ca_file.into(), e.to_string()))?;
            let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut bytes.as_slice()).collect();
            let certs = certs.map_err(|e| TlsSetupError::ExtraCa(extra_ca_file.into(), e.to_string()))?;
            if certs.is_empty() {
                return Err(TlsSetupError::ExtraCa(
                    extra_ca_file.into(),
                    "no PEM certificate in the file".into(),
                ));
            }
            let (_, bad) = roots.add_parsable_certificates(certs);
            if bad > 0 {
                return Err(TlsSetupError::ExtraCa(
                    extra_ca_file.into(),
                    format!("{bad} certificate(s) could not be used as trust anchors"),
                ));
            }
        }
        let roots = Arc::new(roots);
        let verifier = if roots.is_empty() {
            tracing::warn!("no trusted root certificate: every outgoing TLS connection will count as insecure");
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Rustls(e.to_string()))?,
            )
        };
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider.clone())))
            .with_no_client_auth();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            verifier,
            provider,
            roots,
        })
    }

    /// The verifier judging chains (system roots plus `tls_extra_ca_file`),
    /// for other TLS clients of the courier (MTA-STS policy fetches).
    pub fn verifier(&self) -> Option<Arc<WebPkiServerVerifier>> {
        self.verifier.clone()
    }

    /// Handshake over `tcp` for `host` (sent as SNI when it is a name).
    /// Returns the stream, the level reached and, when insecure, why.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> std::io::Result<(TlsStream<TcpStream>, SecLevel, Option<String>)> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let stream = self.connector.connect(name.clone(), tcp).await?;
        let (_, conn) = stream.get_ref();
        let verdict = match (conn.peer_certificates(), &self.verifier) {
            (Some([ee, rest @ ..]), Some(v)) => match v.verify_server_cert(ee, rest, &name, &[], UnixTime::now()) {
                Ok(_) => Ok(()),
                Err(e) if ca_used_as_end_entity(&e) && self.is_trusted_root(ee) => {
                    // webpki checks the validity period before the basic
                    // constraints: only the name is left to check.
                    webpki::EndEntityCert::try_from(ee)
                        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
                        .map_err(|e| format!("trusted root used as the server certificate: {e}"))
                }
                Err(e) => Err(e.to_string()),
            },
            (Some(_), None) => Err("no trusted root certificates configured".into()),
            (_, _) => Err("the server sent no certificate".into()),
        };
        Ok(match verdict {
            Ok(()) => (stream, SecLevel::TlsSecure, None),
            Err(e) => (stream, SecLevel::TlsInsecure, Some(e)),
        })
    }

    /// Whether `cert` is one of the trusted roots (same subject and key).
    fn is_trusted_root(&self, cert: &CertificateDer<'_>) -> bool {
        webpki::anchor_from_trusted_cert(cert).is_ok_and(|a| {
            self.roots
                .roots
                .iter()
                .any(|r| r.subject == a.subject && r.subject_public_key_info == a.subject_public_key_info)
        })
    }

    /// Number of trusted roots, for the log.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// The crypto provider (ring) of every outgoing TLS connection.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// Handshake over `tcp` for `host` with `verifier` deciding on the
    /// certificate during the handshake (DANE): a refused certificate
    /// fails the handshake.
    pub async fn handshake_with(
        &self,
        tcp: TcpStream,
        host: &str,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    }
}
