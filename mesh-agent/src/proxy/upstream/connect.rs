//! Connections to an endpoint: TCP with the cluster's connect timeout,
//! and TLS over it when the DestinationRule originates TLS.

use super::error::UpstreamError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// TLS toward one upstream: the client configuration and the name to
/// send as SNI (and check, unless `subjectAltNames` say otherwise).
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Same settings, material and name, same id: connections made with
    /// one may be reused by the other, and never across different ones
    /// (a pooled connection with a client certificate is not a SIMPLE one).
    pub id: u64,
}

impl Tls {
    /// The connection-pool key of a connection to `endpoint` with `tls`.
    pub fn key(endpoint: SocketAddr, tls: Option<&Tls>) -> (SocketAddr, u64) {
        (endpoint, tls.map_or(0, |tls| tls.id))
    }
}

pub async fn tcp_connect(endpoint: SocketAddr, timeout: Duration) -> Result<tokio::net::TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(endpoint))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub async fn tls_connect(
    endpoint: SocketAddr,
    tls: &Tls,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, UpstreamError> {
    let stream = tcp_connect(endpoint, timeout).await?;
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), stream)
        .await
        .map_err(UpstreamError::TlsHandshake)
}
