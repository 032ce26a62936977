//! HTTP/2 to upstreams: one multiplexed connection per endpoint (and TLS
//! identity), as Envoy keeps. Ours rather than a pooled client's, so that
//! `:authority` can be the service's name while the connection goes to the
//! endpoint.

use super::connect::{tcp_connect, tls_connect, Tls};
use super::error::UpstreamError;
use super::pool::Key;
use crate::proxy::body::ProxyBody;
use crate::sync::lock;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The open HTTP/2 connections, by endpoint and TLS identity.
#[derive(Clone, Default)]
pub struct Http2Connections(Arc<Mutex<HashMap<Key, http2::SendRequest<ProxyBody>>>>);

impl Http2Connections {
    /// A sender on the endpoint's connection, made when there is none or
    /// the last one closed.
    pub async fn sender(
        &self,
        endpoint: SocketAddr,
        tls: Option<Tls>,
        connect_timeout: Duration,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let key = Tls::key(endpoint, tls.as_ref());
        if let Some(sender) = lock(&self.0).get(&key).filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;
        let (sender, connection): (_, Driver) = match &tls {
            Some(tls) => {
                let stream = tls_connect(endpoint, tls, connect_timeout).await?;
                let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(UpstreamError::Handshake)?;
                (sender, Box::pin(connection))
            }
            None => {
                let stream = tcp_connect(endpoint, connect_timeout).await?;
                let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(UpstreamError::Handshake)?;
                (sender, Box::pin(connection))
            }
        };
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "HTTP/2 upstream connection ended");
            }
        });
        lock(&self.0).insert(key, sender.clone());
        Ok(sender)
    }

    /// Whether a connection to `endpoint` (any TLS identity) is open.
    pub fn is_open(&self, endpoint: SocketAddr) -> bool {
        lock(&self.0).iter().any(|((e, _), sender)| *e == endpoint && !sender.is_closed())
    }
}
