//! HTTP/1.1 upstream connections, kept per endpoint (plaintext or TLS) for
//! reuse, with the cluster's limits from `connectionPool`: the TCP connect
//! timeout, the HTTP idle timeout, and the requests one connection may
//! carry. A connection goes back to its pool when its response is done
//! with, and is taken out again only when it is ready for another request,
//! so a request never waits behind another one.
//!
//! Two clients share [`IdlePool`]: the direct one ([`super::h1`]) for
//! requests whose body is known, and hyper's here for the rest (a
//! [`Checkin`] in the response extensions, dropped with the body, returns
//! hyper's connection).

use super::balance::{Tls, UpstreamError};
use super::ProxyBody;
use crate::lock;
use http::header::{HeaderValue, CONNECTION, TRANSFER_ENCODING};
use hyper::body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Istio's defaults: 10 s to connect, idle connections closed after an hour.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often idle connections past their timeout are closed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster's limits on its upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `connectionPool.tcp.connectTimeout`.
    pub connect_timeout: Duration,
    /// `connectionPool.http.idleTimeout`.
    pub idle_timeout: Duration,
    /// `connectionPool.http.maxRequestsPerConnection` (None: unlimited).
    pub max_requests: Option<u32>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { connect_timeout: DEFAULT_CONNECT_TIMEOUT, idle_timeout: DEFAULT_IDLE_TIMEOUT, max_requests: None }
    }
}

/// (endpoint, TLS identity or 0 for plaintext).
pub type Key = (SocketAddr, u64);

/// A connection that can wait in an [`IdlePool`].
pub trait Reusable: Send + 'static {
    /// The peer closed it, or it broke: it can never carry a request again.
    fn is_closed(&self) -> bool;
    /// It can carry a request now (not still finishing the last one).
    fn is_ready(&self) -> bool;
}

struct Idle<C> {
    connection: C,
    since: Instant,
    idle_timeout: Duration,
    /// Requests the connection has carried.
    served: u32,
}

/// Idle upstream connections by endpoint and TLS identity. The newest is
/// taken first (its peer is the least likely to have closed it); those
/// past their idle timeout are closed once a second.
pub struct IdlePool<C> {
    idle: Mutex<HashMap<Key, Vec<Idle<C>>>>,
    sweeping: std::sync::atomic::AtomicBool,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        Self { idle: Mutex::default(), sweeping: Default::default() }
    }
}

impl<C: Reusable> IdlePool<C> {
    /// The most recently returned connection that is ready for a request,
    /// with the requests it has carried. Closed and expired ones go; one
    /// not ready yet stays for a later checkout.
    pub fn checkout(&self, key: Key) -> Option<(C, u32)> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(&key)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let candidate = &list[i];
            if candidate.connection.is_closed() || candidate.since.elapsed() >= candidate.idle_timeout {
                list.swap_remove(i);
            } else if candidate.connection.is_ready() {
                let idle = list.swap_remove(i);
                return Some((idle.connection, idle.served));
            }
        }
        None
    }

    /// Puts a connection back, unless it is closed.
    pub fn checkin(self: &Arc<Self>, key: Key, connection: C, served: u32, idle_timeout: Duration) {
        if connection.is_closed() {
            return;
        }
        let idle = Idle { connection, since: Instant::now(), idle_timeout, served };
        lock(&self.idle).entry(key).or_default().push(idle);
        self.start_sweeping();
    }

    /// Closes idle connections past their idle timeout, once a second.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(pool) = pool.upgrade() else { return };
                lock(&pool.idle).retain(|_, list| {
                    list.retain(|idle| !idle.connection.is_closed() && idle.since.elapsed() < idle.idle_timeout);
                    !list.is_empty()
                });
            }
        });
    }

    /// Idle connections per endpoint, added to `counts`, for status.
    pub fn count_idle(&self, counts: &mut HashMap<SocketAddr, usize>) {
        for ((endpoint, _), list) in lock(&self.idle).iter() {
            *counts.entry(*endpoint).or_default() += list.len();
        }
    }
}

/// Where a connection goes back to when its response is done, and what it
/// has carried so far.
pub struct ReturnTo<C> {
    pool: Weak<IdlePool<C>>,
    key: Key,
    served: u32,
    idle_timeout: Duration,
}

impl<C: Reusable> ReturnTo<C> {
    pub fn new(pool: &Arc<IdlePool<C>>, key: Key, served: u32, idle_timeout: Duration) -> Self {
        Self { pool: Arc::downgrade(pool), key, served, idle_timeout }
    }

    /// Puts the connection back, unless the pool is gone.
    pub fn give_back(self, connection: C) {
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.key, connection, self.served, self.idle_timeout);
        }
    }
}

impl Reusable for http1::SendRequest<ProxyBody> {
    fn is_closed(&self) -> bool {
        http1::SendRequest::is_closed(self)
    }

    fn is_ready(&self) -> bool {
        http1::SendRequest::is_ready(self)
    }
}

/// HTTP/1.1 through hyper's client, for what the direct client
/// ([`super::h1`]) leaves: request bodies that stream and protocol
/// upgrades.
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
        // for a GET that names no length.
        let body = request.body();
        if !body.is_end_stream() && body.size_hint().exact().is_none() {
            request.headers_mut().entry(TRANSFER_ENCODING).or_insert(HeaderValue::from_static("chunked"));
        }
        loop {
            let (mut sender, served, reused) = match self.checkout(key) {
                Some((sender, served)) => (sender, served, true),
                None => (Box::pin(connect(endpoint, tls.as_ref(), limits.connect_timeout)).await?, 0, false),
            };
            let served = served + 1;
            // An upgrade keeps its `Connection: upgrade`; the switch ends
            // the connection's HTTP life anyway.
            let upgrade = request.headers().contains_key(http::header::UPGRADE);
            let last = !upgrade && limits.max_requests.is_some_and(|max| served >= max);
            if last {
                // The upstream closes it after this response; so does hyper.
                request.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            match sender.try_send_request(request).await {
                Ok(mut response) => {
                    // One the upstream closes (`Connection: close`) never
                    // becomes ready again, and is dropped at a checkout.
                    if !last {
                        let to = ReturnTo::new(self, key, served, limits.idle_timeout);
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
                    _ => return Err(UpstreamError::from_hyper(error.error())),
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
    let handshake = |e: hyper::Error| UpstreamError::Connect(e.to_string());
    let sender = match tls {
        Some(tls) => {
            let stream = super::balance::tls_connect(endpoint, tls, timeout).await?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(handshake)?;
            tokio::spawn(drive(endpoint, connection.with_upgrades()));
            sender
        }
        None => {
            let stream = super::balance::tcp_connect(endpoint, timeout).await?;
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
