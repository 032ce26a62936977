//! HTTP/1.1 to upstreams through hyper's client, for what the direct
//! client (`http1::client`) leaves: request bodies that stream, and
//! protocol upgrades. Connections are pooled in an [`IdlePool`]; a
//! [`Checkin`] in the response extensions, dropped with the body, returns
//! the connection.

use super::connect::{tcp_connect, tls_connect, Tls};
use super::error::UpstreamError;
use super::pool::{ConnectionLimits, IdlePool, Lease, ReturnTo, Reusable};
use crate::proxy::body::ProxyBody;
use crate::sync::lock;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl Reusable for http1::SendRequest<ProxyBody> {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }

    fn is_ready(&self) -> bool {
        http1::SendRequest::is_ready(self)
    }
}

/// Idle hyper HTTP/1.1 connections.
pub type Http1Pool = IdlePool<http1::SendRequest<ProxyBody>>;

impl Http1Pool {
    /// Sends `request` on an idle connection to `endpoint`, or a new one.
    /// The request's URI is the origin form; Host names the service.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        tls: Option<Tls>,
        limits: ConnectionLimits,
        mut request: http::Request<ProxyBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let key = Tls::key(endpoint, tls.as_ref());
        // A body of unknown length needs its framing said: hyper sends none
        // for a GET that names no length. A length the client declared
        // stays (hyper frames by the field): it is never re-framed.
        let body = request.body();
        let declared = request.headers().contains_key(CONTENT_LENGTH);
        if !body.is_end_stream() && body.size_hint().exact().is_none() && !declared {
            request.headers_mut().entry(TRANSFER_ENCODING).or_insert(HeaderValue::from_static("chunked"));
        }
        loop {
            let (mut sender, lease, reused) = match self.checkout(key) {
                Some((sender, lease)) => (sender, lease, true),
                None => {
                    (Box::pin(connect(endpoint, tls.as_ref(), limits.connect_timeout)).await?, Lease::default(), false)
                }
            };
            let lease = lease.next();
            // An upgrade keeps its `Connection: upgrade`; the switch ends
            // the connection's HTTP life anyway.
            let upgrade = request.headers().contains_key(http::header::UPGRADE);
            let last = !upgrade && limits.max_requests.is_some_and(|max| lease.served >= max);
            if last {
                // The upstream closes it after this response; so does hyper.
                request.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    // One the upstream closes (`Connection: close`) never
                    // becomes ready again, and is dropped at a checkout.
                    if !last {
                        let to = ReturnTo::new(self, key, lease, limits);
                        let checkin = Checkin { sender: Some(sender), to: Some(to) };
                        response.extensions_mut().insert(CheckinSlot(Arc::new(Mutex::new(Some(checkin)))));
                    }
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // A pooled connection the upstream had closed meanwhile:
                    // the request never left, so it goes on a fresh one.
                    Some(unsent) if reused => {
                        request = unsent;
                        if last {
                            request.headers_mut().remove(CONNECTION);
                        }
                    }
                    _ => return Err(UpstreamError::from_hyper(error.into_error())),
                },
            }
        }
    }
}

async fn connect(
    endpoint: SocketAddr,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
    let handshake = |error: hyper::Error| UpstreamError::Handshake(Box::new(error));
    let sender = match tls {
        Some(tls) => {
            let stream = tls_connect(endpoint, tls, timeout).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(handshake)?;
            tokio::spawn(drive(endpoint, connection.with_upgrades()));
            sender
        }
        None => {
            let stream = tcp_connect(endpoint, timeout).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(handshake)?;
            tokio::spawn(drive(endpoint, connection.with_upgrades()));
            sender
        }
    };
    Ok(sender)
}

async fn drive(endpoint: SocketAddr, connection: impl std::future::Future<Output = hyper::Result<()>>) {
    if let Err(error) = connection.await {
        tracing::debug!(%endpoint, %error, "HTTP/1.1 upstream connection ended");
    }
}

/// Puts a connection back in its pool when dropped: kept with the
/// response (in its extensions, then with its body) until the proxy is
/// done with it.
pub struct Checkin {
    sender: Option<http1::SendRequest<ProxyBody>>,
    to: Option<ReturnTo<http1::SendRequest<ProxyBody>>>,
}

impl Drop for Checkin {
    fn drop(&mut self) {
        if let (Some(sender), Some(to)) = (self.sender.take(), self.to.take()) {
            to.give_back(sender);
        }
    }
}

/// A response's [`Checkin`], in a form its extensions can hold (they must
/// be `Clone`).
#[derive(Clone)]
pub struct CheckinSlot(Arc<Mutex<Option<Checkin>>>);

impl CheckinSlot {
    pub fn take(&self) -> Option<Checkin> {
        lock(&self.0).take()
    }
}
