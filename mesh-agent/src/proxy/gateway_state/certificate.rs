//! What status says of a served certificate: its subject, the names it
//! serves and when it expires, read from the leaf's DER.

use serde::{Deserialize, Serialize};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateSummary {
    /// The subject as RFC 4514 writes it (`CN=web.example.com,O=Shop`).
    pub subject: String,
    /// The DNS names and addresses of its subjectAltName extension.
    pub names: Vec<String>,
    /// When it stops being valid, in seconds since the Unix epoch.
    pub not_after_unix: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the certificate cannot be read: {0}")]
pub struct CertificateError(#[from] x509_cert::der::Error);

impl CertificateSummary {
    pub fn of(der: &[u8]) -> Result<Self, CertificateError> {
        let certificate = x509_cert::Certificate::from_der(der)?;
        let tbs = &certificate.tbs_certificate;
        let names = match tbs.get::<SubjectAltName>()? {
            Some((_, alt)) => (alt.0.iter())
                .filter_map(|name| match name {
                    GeneralName::DnsName(dns) => Some(dns.to_string()),
                    GeneralName::IpAddress(octets) => ip_text(octets.as_bytes()),
                    _ => None,
                })
                .collect(),
            None => Vec::new(),
        };
        Ok(CertificateSummary {
            subject: tbs.subject.to_string(),
            names,
            not_after_unix: tbs.validity.not_after.to_unix_duration().as_secs(),
        })
    }
}

impl CertificateSummary {
    /// One line for `meshctl status`: subject, names, and the expiry as
    /// seen from `now` (said loudly once past).
    pub fn describe(&self, now: std::time::SystemTime) -> String {
        let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.not_after_unix);
        let when = httpdate::fmt_http_date(expiry);
        let left = match expiry.duration_since(now) {
            Ok(left) => format!("expires {when} (in {} days)", left.as_secs() / 86_400),
            Err(past) => format!("EXPIRED {when} ({} days ago)", past.duration().as_secs() / 86_400),
        };
        let names = if self.names.is_empty() { String::new() } else { format!(" [{}]", self.names.join(", ")) };
        format!("{}{names}, {left}", self.subject)
    }
}

fn ip_text(octets: &[u8]) -> Option<String> {
    let ip = match octets.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(octets).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_and_expiry_are_read() {
        let mut params = rcgen::CertificateParams::new(vec!["web.example.com".into(), "10.0.0.1".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "web.example.com");
        params.not_after = rcgen::date_time_ymd(2030, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let summary = CertificateSummary::of(certificate.der()).unwrap();
        assert_eq!(summary.subject, "CN=web.example.com");
        assert_eq!(summary.names, ["web.example.com", "10.0.0.1"]);
        assert_eq!(summary.not_after_unix, 1_893_542_400);
        assert!(CertificateSummary::of(b"not a certificate").is_err());
        let day = std::time::Duration::from_secs(86_400);
        let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(summary.not_after_unix);
        assert_eq!(
            summary.describe(expiry - day * 30),
            "CN=web.example.com [web.example.com, 10.0.0.1], expires Wed, 02 Jan 2030 00:00:00 GMT (in 30 days)"
        );
        assert!(summary.describe(expiry + day * 2).contains("EXPIRED Wed, 02 Jan 2030 00:00:00 GMT (2 days ago)"));
    }
}
