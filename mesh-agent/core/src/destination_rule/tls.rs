//! `tls`: TLS origination towards the destination, validated as Istio's
//! `ValidateTLS` does. The proxy reads the files or the Secret named here
//! when it builds the client configuration.

use crate::api;
use crate::field::{FieldError, Path};
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plain text (the default).
    #[default]
    Disable,
    /// Verify the server.
    Simple,
    /// Verify the server and present a client certificate.
    Mutual,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    pub mode: TlsMode,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    /// A Secret with the material, instead of the files.
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: bool,
    pub ca_crl: Option<String>,
}

pub fn validate_tls(at: &Path, tls: &api::ClientTlsSettings) -> Result<ClientTls, FieldError> {
    let mode = match tls.mode.as_deref() {
        None | Some("DISABLE") => TlsMode::Disable,
        Some("SIMPLE") => TlsMode::Simple,
        Some("MUTUAL") => TlsMode::Mutual,
        // The mesh has no workload identities yet: served in plain text
        // (no origination), with a warning (see `crate::warnings`).
        Some("ISTIO_MUTUAL") => TlsMode::Disable,
        Some(other) => {
            return Err(FieldError::new(
                at.field("mode"),
                format!("unknown mode {other:?}; expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"),
            ))
        }
    };
    let set = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let settings = ClientTls {
        mode,
        client_certificate: set(&tls.client_certificate),
        private_key: set(&tls.private_key),
        ca_certificates: set(&tls.ca_certificates),
        credential_name: set(&tls.credential_name),
        subject_alt_names: tls.subject_alt_names.clone(),
        sni: set(&tls.sni),
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
        ca_crl: set(&tls.ca_crl),
    };
    if settings.insecure_skip_verify {
        // Istio: nothing to verify against once verification is off.
        let verifying = [
            ("caCertificates", settings.ca_certificates.is_some()),
            ("subjectAltNames", !settings.subject_alt_names.is_empty()),
            ("credentialName", mode == TlsMode::Simple && settings.credential_name.is_some()),
        ];
        if let Some((field, _)) = verifying.iter().find(|(_, set)| *set) {
            if matches!(mode, TlsMode::Simple | TlsMode::Mutual) {
                return Err(FieldError::new(at.field(field), "cannot be set with insecureSkipVerify: true"));
            }
        }
    }
    let from_files = [
        ("clientCertificate", &settings.client_certificate),
        ("privateKey", &settings.private_key),
        ("caCertificates", &settings.ca_certificates),
        ("caCrl", &settings.ca_crl),
    ];
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && settings.credential_name.is_some() {
        // The Secret holds the material: files beside it would be ignored.
        if let Some((field, _)) = from_files.iter().find(|(_, value)| value.is_some()) {
            return Err(FieldError::new(at.field(field), "cannot be set together with credentialName"));
        }
    } else if mode == TlsMode::Mutual {
        let missing = if settings.client_certificate.is_none() {
            Some("clientCertificate")
        } else if settings.private_key.is_none() {
            Some("privateKey")
        } else {
            None
        };
        if let Some(field) = missing {
            return Err(FieldError::new(at.field(field), "required for MUTUAL (or set credentialName)"));
        }
    }
    Ok(settings)
}
