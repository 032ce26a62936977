//! HTTP/2 to upstreams: one multiplexed connection per endpoint (and TLS
//! identity), as Envoy keeps. Ours rather than a pooled client's, so that
//! `:authority` can be the service's name while the connection goes to the
//! endpoint. Past `maxConnectionDuration` a connection takes no new
//! streams (the next request opens another); once the last sender is
//! dropped, hyper closes it when its streams are done.

use super::connect::{tcp_connect, tls_connect, Tls};
use super::error::UpstreamError;
use super::pool::{ConnectionLimits, Key};
use crate::proxy::body::ProxyBody;
use crate::sync::lock;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The open HTTP/2 connections, by endpoint and TLS identity.
#[derive(Clone, Default)]
pub struct Http2Connections(Arc<Mutex<HashMap<Key, Open>>>);

/// One connection's sender, and when it was opened.
struct Open {
    sender: http2::SendRequest<ProxyBody>,
    opened: Instant,
}

impl Open {
    fn usable(&self, max_duration: Option<Duration>, now: Instant) -> bool {
        !self.sender.is_closed() && max_duration.is_none_or(|max| now.duration_since(self.opened) < max)
    }
}

impl Http2Connections {
    /// A sender on the endpoint's connection, made when there is none, the
    /// last one closed, or it is older than `limits.max_duration`.
    pub async fn sender(
        &self,
        endpoint: SocketAddr,
        tls: Option<Tls>,
        limits: ConnectionLimits,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let key = Tls::key(endpoint, tls.as_ref());
        let connect_timeout = limits.connect_timeout;
        if let Some(open) = lock(&self.0).get(&key).filter(|open| open.usable(limits.max_duration, Instant::now())) {
            return Ok(open.sender.clone());
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
        let opened = Instant::now();
        lock(&self.0).insert(key, Open { sender: sender.clone(), opened });
        if let Some(max) = limits.max_duration {
            // An idle connection is let go at its maximum age too, not only
            // when a request finds it too old.
            let connections = Arc::downgrade(&self.0);
            tokio::spawn(async move {
                tokio::time::sleep(max).await;
                if let Some(connections) = connections.upgrade() {
                    let mut connections = lock(&connections);
                    if connections.get(&key).is_some_and(|open| open.opened == opened) {
                        connections.remove(&key);
                    }
                }
            });
        }
        Ok(sender)
    }

    /// Whether a connection to `endpoint` (any TLS identity) is open.
    pub fn is_open(&self, endpoint: SocketAddr) -> bool {
        lock(&self.0).iter().any(|((e, _), open)| *e == endpoint && !open.sender.is_closed())
    }
}
