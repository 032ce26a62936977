//! TLS origination to upstreams (DestinationRule `trafficPolicy.tls`):
//! `SIMPLE` verifies the server against `caCertificates`; `MUTUAL` also
//! presents `clientCertificate`/`privateKey`. `credentialName` takes all
//! three from a Secret instead. The name checked is `sni`
//! (or the destination's host), or any of `subjectAltNames` when given.

use mesh_core::destination_rule::{ClientTls, TlsMode};
use mesh_core::model::SecretModel;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// What origination needs of a policy's `tls` block (SIMPLE or MUTUAL).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    pub mutual: bool,
    pub ca_certificates: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    /// A Secret with the material, instead of the files.
    pub credential_name: Option<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls mode {0} is not supported by this proxy (SIMPLE and MUTUAL are)")]
    Mode(&'static str),
    #[error("reading {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tls: {0}")]
    Config(String),
    #[error("{origin}: {message}")]
    Pem { origin: String, message: String },
}

impl TlsSettings {
    /// `None` when the policy's `tls` says `DISABLE`.
    pub fn from_policy(tls: &ClientTls) -> Option<Result<Self, TlsError>> {
        let mutual = match tls.mode {
            TlsMode::Disable => return None,
            TlsMode::Simple => false,
            TlsMode::Mutual => true,
            TlsMode::IstioMutual => return Some(Err(TlsError::Mode("ISTIO_MUTUAL"))),
        };
        let path = |value: &Option<String>| value.as_ref().map(PathBuf::from);
        Some(Ok(Self {
            mutual,
            ca_certificates: path(&tls.ca_certificates),
            client_certificate: path(&tls.client_certificate),
            private_key: path(&tls.private_key),
            sni: tls.sni.clone(),
            subject_alt_names: tls.subject_alt_names.clone(),
            credential_name: tls.credential_name.clone(),
            insecure_skip_verify: tls.insecure_skip_verify,
        }))
    }
}

/// The PEM material of one origination, and where it came from (for
/// errors).
pub struct TlsMaterial {
    pub origin: String,
    pub ca: Option<Vec<u8>>,
    pub cert_chain: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
}

impl TlsSettings {
    /// The material: from the Secret `credentialName` names (in the
    /// DestinationRule's namespace; keys `cert`/`key`/`cacert`, or
    /// `tls.crt`/`tls.key`/`ca.crt`), else from the files.
    pub fn material(
        &self,
        namespace: &str,
        secrets: &BTreeMap<(String, String), SecretModel>,
    ) -> Result<TlsMaterial, TlsError> {
        if let Some(name) = &self.credential_name {
            let origin = format!("secret {namespace}/{name} (credentialName)");
            let secret = secrets
                .get(&(namespace.to_owned(), name.clone()))
                .ok_or_else(|| TlsError::Pem { origin: origin.clone(), message: "not found".into() })?;
            let pick = |keys: [&str; 2]| keys.iter().find_map(|k| secret.data.get(*k).cloned());
            return Ok(TlsMaterial {
                ca: pick(["cacert", "ca.crt"]),
                cert_chain: pick(["cert", "tls.crt"]),
                key: pick(["key", "tls.key"]),
                origin,
            });
        }
        let read = |path: &Option<PathBuf>| path.as_ref().map(read).transpose();
        Ok(TlsMaterial {
            ca: read(&self.ca_certificates)?,
            cert_chain: read(&self.client_certificate)?,
            key: read(&self.private_key)?,
            origin: "files".into(),
        })
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.clone(), message: e.to_string() })
}

/// A client configuration for `settings` with `material`, offering h2 or
/// http/1.1 by ALPN.
pub fn client_config(settings: &TlsSettings, material: &TlsMaterial, http2: bool) -> Result<ClientConfig, TlsError> {
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
    let mut config = if settings.mutual {
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
