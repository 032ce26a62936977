//! TLS termination at a gateway server (`Gateway.servers[].tls`): the
//! certificate from files (`serverCertificate`, `privateKey`) or from the
//! Secret `credentialName` names in the Gateway's namespace; client
//! certificates checked against `caCertificates` for `MUTUAL` (required)
//! and `OPTIONAL_MUTUAL` (checked when sent), then against
//! `subjectAltNames`; `minProtocolVersion`/`maxProtocolVersion` as far as
//! rustls goes (TLS 1.2 and 1.3), and `cipherSuites` for TLS 1.2. ALPN
//! offers h2 and http/1.1.

use super::certificate::CertificateSummary;
use crate::proxy::upstream::tls::{file_material, secret_material, TlsError, TlsMaterial};
use mesh_core::gateway::{cipher_names, ServerCertificate, ServerTls, ServerTlsMode, TlsVersion};
use mesh_core::model::Secrets;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::sync::Arc;

/// A TLS-terminating server's configuration, and what status says of its
/// certificate.
pub struct ServingTls {
    pub config: Arc<ServerConfig>,
    /// None when the leaf parses for rustls but not for the summary.
    pub certificate: Option<CertificateSummary>,
}

/// The server configuration for `tls`, whose `credentialName` Secret is
/// read in `namespace` (the gateway workload's, as Istio reads it).
pub fn server_config(tls: &ServerTls, namespace: &str, secrets: &Secrets) -> Result<ServingTls, TlsError> {
    let material = match &tls.certificate {
        Some(ServerCertificate::Secret { name, .. }) => secret_material(namespace, name, secrets)?,
        Some(ServerCertificate::Files { cert, key, ca }) => file_material(ca.as_deref(), Some(cert), Some(key))?,
        None => return Err(TlsError::Config("no server certificate (serverCertificate or credentialName)".into())),
    };
    let pem_error = |message: String| TlsError::Pem { origin: material.origin.clone(), message };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.cert_chain.as_deref().unwrap_or(&[]))
            .collect::<Result<_, _>>()
            .map_err(|e| pem_error(format!("server certificate: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error("no server certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(material.key.as_deref().unwrap_or(&[]))
        .map_err(|e| pem_error(format!("private key: {e}")))?;
    let provider = Arc::new(provider(&tls.cipher_suites));
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(tls.min_protocol_version, tls.max_protocol_version)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match tls.mode {
        ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual => {
            let roots = client_roots(&material)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match tls.mode {
                ServerTlsMode::OptionalMutual => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let certificate = CertificateSummary::of(&chain[0]).ok();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| pem_error(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServingTls { config: Arc::new(config), certificate })
}

/// ring's suites; with `cipherSuites`, only the TLS 1.2 ones named (by
/// their OpenSSL names, as Envoy takes them) and every TLS 1.3 one, which
/// Envoy does not make configurable either.
fn provider(cipher_suites: &[String]) -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let wanted = cipher_names(cipher_suites);
    if !wanted.is_empty() {
        provider.cipher_suites.retain(|suite| match suite {
            rustls::SupportedCipherSuite::Tls13(_) => true,
            rustls::SupportedCipherSuite::Tls12(_) => {
                openssl_name(suite.suite()).is_some_and(|name| wanted.iter().any(|w| w == name))
            }
        });
    }
    provider
}

/// The OpenSSL name of a TLS 1.2 suite ring offers.
fn openssl_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as S;
    Some(match suite {
        S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The CA client certificates are checked against.
fn client_roots(material: &TlsMaterial) -> Result<RootCertStore, TlsError> {
    let pem_error = |message: String| TlsError::Pem { origin: material.origin.clone(), message };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(material.ca.as_deref().unwrap_or(&[])) {
        let cert = cert.map_err(|e| pem_error(format!("CA certificates: {e}")))?;
        roots.add(cert).map_err(|e| pem_error(format!("CA certificates: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_error("client certificates need CA certificates (caCertificates, or ca.crt/cacert)".into()));
    }
    Ok(roots)
}

/// The TLS versions between `min` and `max` that rustls has (1.2, 1.3):
/// an older minimum starts at 1.2.
fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let all = [(TlsVersion::V1_2, &rustls::version::TLS12), (TlsVersion::V1_3, &rustls::version::TLS13)];
    let chosen: Vec<&'static SupportedProtocolVersion> = all
        .into_iter()
        .filter(|(v, _)| min.is_none_or(|min| *v >= min) && max.is_none_or(|max| *v <= max))
        .map(|(_, version)| version)
        .collect();
    if chosen.is_empty() {
        return Err(TlsError::Config(
            "no TLS version between minProtocolVersion and maxProtocolVersion is supported (1.2 and 1.3 are)".into(),
        ));
    }
    Ok(chosen)
}

/// Whether a client's certificate names one of `wanted` (DNS or IP SANs),
/// when the server lists `subjectAltNames`.
pub fn names_one_of(certificate: &CertificateDer<'_>, wanted: &[String]) -> bool {
    let Ok(certificate) = webpki::EndEntityCert::try_from(certificate) else { return false };
    wanted.iter().any(|name| {
        rustls::pki_types::ServerName::try_from(name.as_str())
            .is_ok_and(|name| certificate.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_narrow_tls12_only() {
        let all = provider(&[]).cipher_suites.len();
        let narrowed = provider(&["[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]".into()]);
        let tls12 = narrowed.cipher_suites.iter().filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)));
        assert_eq!(tls12.count(), 2);
        assert!(narrowed.cipher_suites.len() < all);
        assert_eq!(versions(Some(TlsVersion::V1_3), None).unwrap().len(), 1);
        assert_eq!(versions(Some(TlsVersion::V1_0), Some(TlsVersion::V1_2)).unwrap().len(), 1);
        assert!(versions(Some(TlsVersion::V1_0), Some(TlsVersion::V1_1)).is_err());
    }
}
