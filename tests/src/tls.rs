//! TLS backends for the TLS-origination tests: throwaway certificates
//! (a CA, a server certificate for given names, a client certificate) and
//! an HTTP/1.1-over-TLS server that says what it saw.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::background::Background;
use crate::h2::OneShotBody;

/// PEM files of one throwaway PKI.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A `kubernetes.io/tls` Secret `namespace/name` holding the PEM `files`
/// under their keys (`tls.crt`, `tls.key`, `ca.crt`), as YAML.
pub fn secret_yaml(namespace: &str, name: &str, files: &[(&str, &Path)]) -> Result<String> {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\nstringData:\n"
    );
    for (key, path) in files {
        yaml.push_str(&format!("  {key}: |\n"));
        for line in std::fs::read_to_string(path)?.lines() {
            yaml.push_str(&format!("    {line}\n"));
        }
    }
    Ok(yaml)
}

/// Makes a CA, a server certificate for `server_names`, and a client
/// certificate, as PEM files in `dir`.
pub fn make_pki(dir: &Path, server_names: &[&str]) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    // Distinct subject names: OpenSSL clients (curl) take a leaf whose
    // issuer equals its subject for a self-signed certificate.
    let named = |names: Vec<String>, common_name: &str| -> Result<CertificateParams> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        Ok(params)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = named(Vec::new(), "mesh test CA")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
    let server =
        named(names, server_names.first().copied().unwrap_or("server"))?.signed_by(&server_key, &ca, &ca_key)?;
    let client_key = KeyPair::generate()?;
    let client =
        named(vec!["client.mesh.test".to_string()], "client.mesh.test")?.signed_by(&client_key, &ca, &ca_key)?;
    let pki = Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    std::fs::write(&pki.ca, ca.pem())?;
    std::fs::write(&pki.server_cert, server.pem())?;
    std::fs::write(&pki.server_key, server_key.serialize_pem())?;
    std::fs::write(&pki.client_cert, client.pem())?;
    std::fs::write(&pki.client_key, client_key.serialize_pem())?;
    Ok(pki)
}

/// A running TLS server; stops when dropped.
pub struct TlsServer {
    _serving: Background,
}

fn server_config(pki: &Pki, require_client_cert: bool) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&pki.server_cert)?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&pki.server_key)?;
    let builder =
        rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let config = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&pki.ca)? {
            roots.add(cert?)?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        builder.with_client_cert_verifier(verifier).with_single_cert(certs, key)?
    } else {
        builder.with_no_client_auth().with_single_cert(certs, key)?
    };
    Ok(config)
}

/// Serves HTTP/1.1 over TLS on `addr` inside `netns`. Responses carry
/// `x-backend`, `x-seen-tls: yes`, `x-seen-sni` and `x-seen-client-cert`.
pub(crate) fn start(
    netns: &Path,
    addr: SocketAddr,
    pod: &str,
    pki: &Pki,
    require_client_cert: bool,
) -> Result<TlsServer> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(pki, require_client_cert)?));
    let pod = pod.to_owned();
    let serving = crate::background::spawn(netns, addr, move |stream| {
        let (acceptor, pod) = (acceptor.clone(), pod.clone());
        async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let (_, session) = tls.get_ref();
            let sni = session.server_name().unwrap_or("").to_owned();
            let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
            let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                let mut response = Response::new(OneShotBody::new(Bytes::from(pod.clone()), None));
                let headers = response.headers_mut();
                for (name, value) in [
                    ("x-backend", pod.as_str()),
                    ("x-seen-tls", "yes"),
                    ("x-seen-sni", sni.as_str()),
                    ("x-seen-client-cert", if client_cert { "yes" } else { "no" }),
                ] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name, value);
                    }
                }
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        }
    })?;
    Ok(TlsServer { _serving: serving })
}
