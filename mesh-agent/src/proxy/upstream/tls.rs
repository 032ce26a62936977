//! TLS origination to upstreams (DestinationRule `trafficPolicy.tls`):
//! `SIMPLE` verifies the server against `caCertificates`; `MUTUAL` also
//! presents `clientCertificate`/`privateKey`. `credentialName` takes all
//! three from a Secret instead. The name checked is `sni`
//! (or the destination's host), or any of `subjectAltNames` when given.

use mesh_core::destination_rule::{ClientTls, TlsMode};
use mesh_core::model::Secrets;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Config(String),
    #[error("{origin}: {message}")]
    Pem { origin: String, message: String },
}

/// The PEM material of one origination, and where it came from (for
/// errors).
pub struct TlsMaterial {
    pub origin: String,
    pub ca: Option<Vec<u8>>,
    pub cert_chain: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

/// The material of `tls`: from the Secret `credentialName` names (in the
/// DestinationRule's namespace; keys `cert`/`key`/`cacert`, or
/// `tls.crt`/`tls.key`/`ca.crt`), else from the files.
pub fn material(tls: &ClientTls, namespace: &str, secrets: &Secrets) -> Result<TlsMaterial, TlsError> {
    match &tls.credential_name {
        Some(name) => secret_material(namespace, name, secrets),
        None => {
            file_material(tls.ca_certificates.as_deref(), tls.client_certificate.as_deref(), tls.private_key.as_deref())
        }
    }
}

/// The material in Secret `namespace/name`: keys `cert`/`key`/`cacert`, or
/// `tls.crt`/`tls.key`/`ca.crt` (a Kubernetes TLS Secret).
pub fn secret_material(namespace: &str, name: &str, secrets: &Secrets) -> Result<TlsMaterial, TlsError> {
    let origin = format!("secret {namespace}/{name} (credentialName)");
    let secret = secrets
        .get(&(namespace.to_owned(), name.to_owned()))
        .ok_or_else(|| TlsError::Pem { origin: origin.clone(), message: "not found".into() })?;
    let pick = |keys: [&str; 2]| keys.iter().find_map(|k| secret.data.get(*k).cloned());
    Ok(TlsMaterial {
        ca: pick(["cacert", "ca.crt"]),
        cert_chain: pick(["cert", "tls.crt"]),
        key: pick(["key", "tls.key"]),
        origin,
    })
}

/// The material in PEM files (each optional).
pub fn file_material(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> Result<TlsMaterial, TlsError> {
    Ok(TlsMaterial {
        ca: ca.map(read).transpose()?,
        cert_chain: cert.map(read).transpose()?,
        key: key.map(read).transpose()?,
        origin: "files".into(),
    })
}

fn read(path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.into(), message: e.to_string() })
}

/// A client configuration for `settings` with `material`, offering h2 or
/// http/1.1 by ALPN.
pub fn client_config(settings: &ClientTls, material: &TlsMaterial, http2: bool) -> Result<ClientConfig, TlsError> {
    let pem_error = |message: String| TlsError::Pem { origin: material.origin.clone(), message };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = {
        let mut roots = RootCertStore::empty();
        if let Some(pem) = &material.ca {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| pem_error(format!("CA certificates: {e}")))?;
                roots.add(cert).map_err(|e| pem_error(format!("CA certificates: {e}")))?;
            }
        }
        if roots.is_empty() && !settings.insecure_skip_verify {
            return Err(TlsError::Config(
                "CA certificates are required to verify the upstream (caCertificates, or cacert/ca.crt in the credentialName secret; or set insecureSkipVerify)".into(),
            ));
        }
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        };
        Arc::new(NameVerifier {
            inner: webpki,
            subject_alt_names: settings
                .subject_alt_names
                .iter()
                .filter_map(|n| ServerName::try_from(n.clone()).ok())
                .collect(),
            provider,
        })
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let mut config = if settings.mode == TlsMode::Mutual {
        let (Some(cert_pem), Some(key_pem)) = (&material.cert_chain, &material.key) else {
            return Err(TlsError::Config(
                "MUTUAL needs a client certificate and key (clientCertificate/privateKey, or the credentialName secret)".into(),
            ));
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(format!("client certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error(format!("private key: {e}")))?;
        builder.with_client_auth_cert(certs, key).map_err(|e| TlsError::Config(e.to_string()))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(config)
}

/// Checks the chain with webpki, against the SNI name or, when
/// `subjectAltNames` are set, against any one of them.
#[derive(Debug)]
struct NameVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    subject_alt_names: Vec<ServerName<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else { return Ok(ServerCertVerified::assertion()) };
        if self.subject_alt_names.is_empty() {
            return inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        let mut last = None;
        for name in &self.subject_alt_names {
            match inner.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames matched".into())))
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
