//! HTTP/2 to upstreams: multiplexed connections per endpoint (and TLS
//! identity), each carrying at once at most the requests the server's
//! `MAX_CONCURRENT_STREAMS` allows, and at most [`STREAMS_PER_CONNECTION`];
//! when every one is that busy, another is opened (one connect at a time
//! per endpoint), as Envoy's pool opens one past the peer's limit. A
//! connection that has carried `maxRequestsPerConnection` requests, or is
//! older than `maxConnectionDuration`, takes no new stream (the next
//! request opens another); once its last sender is dropped, h2 closes it
//! when its streams are done. Ours rather than a pooled client's, so that
//! `:authority` can be the service's name while the connection goes to the
//! endpoint; the sessions are `h2`'s ([`super::http2_exchange`] says why
//! not hyper's).

use super::connect::{tcp_connect, tls_connect, Tls};
use super::error::UpstreamError;
use super::pool::{ConnectionLimits, Key};
use crate::sync::lock;
use bytes::Bytes;
use h2::client::SendRequest;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests one connection carries at once before another is opened,
/// however many more the server allows: what most servers announce as
/// their `MAX_CONCURRENT_STREAMS` (100), and a second connection spreads a
/// busy endpoint's frames over a second task.
pub const STREAMS_PER_CONNECTION: u32 = 100;

/// The open HTTP/2 connections, by endpoint and TLS identity.
#[derive(Clone, Default)]
pub struct Http2Connections {
    open: Arc<Mutex<HashMap<Key, Vec<Arc<Open>>>>>,
    /// Held while a connection to the endpoint is being made: requests
    /// that need one wait for it, then look for room again.
    connecting: Gates,
}

/// One connection's sender and what it carries.
struct Open {
    sender: SendRequest<Bytes>,
    /// Its session has ended.
    closed: Arc<AtomicBool>,
    opened: Instant,
    /// Requests under way (their responses not done with).
    streams: AtomicU32,
    /// Requests it has been given.
    served: AtomicU32,
    /// When its last stream ended, in milliseconds from `opened`.
    last_done: AtomicU64,
}

impl Open {
    /// It may take a new stream under `limits` (room aside); an idle one
    /// past `idleTimeout` may not (the extra connections of a burst go).
    fn usable(&self, limits: &ConnectionLimits, now: Instant) -> bool {
        let age = now.duration_since(self.opened);
        let idle = self.streams.load(Ordering::Relaxed) == 0
            && age.saturating_sub(Duration::from_millis(self.last_done.load(Ordering::Relaxed))) >= limits.idle_timeout;
        !self.closed.load(Ordering::Relaxed)
            && !idle
            && limits.max_duration.is_none_or(|max| age < max)
            && limits.max_requests.is_none_or(|max| self.served.load(Ordering::Relaxed) < max)
    }

    /// How many streams it may carry at once.
    fn room(&self) -> u32 {
        let allowed = u32::try_from(self.sender.current_max_send_streams()).unwrap_or(u32::MAX);
        allowed.min(STREAMS_PER_CONNECTION)
    }
}

/// A request's stream on its connection: counted until the response is
/// done with (this dropped).
pub struct Stream(Arc<Open>);

impl Stream {
    /// Its connection takes no new stream: the upstream is closing it
    /// (GOAWAY), which its session tells no sooner than it ends.
    pub fn retire(&self) {
        self.0.closed.store(true, Ordering::Relaxed);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let done = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_done.store(done, Ordering::Relaxed);
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Http2Connections {
    /// A sender on a connection to the endpoint with room for the request,
    /// and the request's stream on it; a connection is opened when none has
    /// room under `limits`.
    pub async fn sender(
        &self,
        endpoint: SocketAddr,
        tls: Option<Tls>,
        limits: ConnectionLimits,
    ) -> Result<(SendRequest<Bytes>, Stream), UpstreamError> {
        let key = Tls::key(endpoint, tls.as_ref());
        if let Some(claimed) = self.claim(key, &limits) {
            return Ok(claimed);
        }
        let _connecting = ConnectGate::enter(&self.connecting, key).await;
        // The connection another request just made may have room.
        if let Some(claimed) = self.claim(key, &limits) {
            return Ok(claimed);
        }
        let (sender, closed) = connect(endpoint, tls.as_ref(), limits.connect_timeout).await?;
        let open = Arc::new(Open {
            sender,
            closed,
            opened: Instant::now(),
            streams: AtomicU32::new(1),
            served: AtomicU32::new(1),
            last_done: AtomicU64::new(0),
        });
        lock(&self.open).entry(key).or_default().push(open.clone());
        if let Some(max) = limits.max_duration {
            // An idle connection is let go at its maximum age too, not only
            // when a request finds it too old.
            let connections = Arc::downgrade(&self.open);
            let aged = Arc::downgrade(&open);
            tokio::spawn(async move {
                tokio::time::sleep(max).await;
                if let (Some(connections), Some(aged)) = (connections.upgrade(), aged.upgrade()) {
                    if let Some(list) = lock(&connections).get_mut(&key) {
                        list.retain(|open| !Arc::ptr_eq(open, &aged));
                    }
                }
            });
        }
        Ok((open.sender.clone(), Stream(open)))
    }

    /// A stream on the least busy usable connection with room; the
    /// connections that may take no new stream leave the set.
    fn claim(&self, key: Key, limits: &ConnectionLimits) -> Option<(SendRequest<Bytes>, Stream)> {
        let now = Instant::now();
        let mut open = lock(&self.open);
        let list = open.get_mut(&key)?;
        list.retain(|open| open.usable(limits, now));
        if list.is_empty() {
            open.remove(&key);
            return None;
        }
        let best = (list.iter())
            .filter(|open| open.streams.load(Ordering::Relaxed) < open.room())
            .min_by_key(|open| open.streams.load(Ordering::Relaxed))?;
        best.streams.fetch_add(1, Ordering::Relaxed);
        best.served.fetch_add(1, Ordering::Relaxed);
        Some((best.sender.clone(), Stream(best.clone())))
    }

    /// How many connections to `endpoint` (any TLS identity) are open.
    pub fn open_to(&self, endpoint: SocketAddr) -> usize {
        let open = lock(&self.open);
        let lists = open.iter().filter(|((e, _), _)| *e == endpoint);
        lists.map(|(_, list)| list.iter().filter(|open| !open.closed.load(Ordering::Relaxed)).count()).sum()
    }
}

type Gates = Arc<Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>>;

/// Held while a connection to an endpoint is being made; the last holder
/// lets the endpoint's gate go.
struct ConnectGate {
    gates: Gates,
    key: Key,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ConnectGate {
    async fn enter(gates: &Gates, key: Key) -> Self {
        let gate = lock(gates).entry(key).or_default().clone();
        ConnectGate { gates: gates.clone(), key, held: Some(gate.lock_owned().await) }
    }
}

impl Drop for ConnectGate {
    fn drop(&mut self) {
        let mut gates = lock(&self.gates);
        drop(self.held.take());
        // Only the map holds the gate now: no request waits on it.
        if gates.get(&self.key).is_some_and(|gate| Arc::strong_count(gate) == 1) {
            gates.remove(&self.key);
        }
    }
}

/// Opens a connection and its HTTP/2 session; the session runs on a task
/// of its own, which marks the connection closed when it ends.
async fn connect(
    endpoint: SocketAddr,
    tls: Option<&Tls>,
    connect_timeout: Duration,
) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), UpstreamError> {
    match tls {
        Some(tls) => session(endpoint, tls_connect(endpoint, tls, connect_timeout).await?).await,
        None => session(endpoint, tcp_connect(endpoint, connect_timeout).await?).await,
    }
}

/// The HTTP/2 session on a connected `stream`, its driver spawned.
async fn session<S>(endpoint: SocketAddr, stream: S) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        builder().handshake(stream).await.map_err(|error| UpstreamError::Handshake(Box::new(error)))?;
    let closed = Arc::new(AtomicBool::new(false));
    tokio::spawn(drive(endpoint, connection, closed.clone()));
    Ok((sender, closed))
}

/// hyper's client settings: windows larger than the protocol's 64 KiB
/// (a fast upstream is not held to one round trip per 64 KiB), 16 KiB
/// header lists, no server push.
fn builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_max_send_streams(STREAMS_PER_CONNECTION as usize)
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .enable_push(false);
    builder
}

async fn drive(endpoint: SocketAddr, connection: impl Future<Output = Result<(), h2::Error>>, closed: Arc<AtomicBool>) {
    if let Err(error) = connection.await {
        tracing::debug!(%endpoint, %error, "HTTP/2 upstream connection ended");
    }
    closed.store(true, Ordering::Relaxed);
}

/// A local upstream for tests: each connection it accepts goes to `serve`
/// with its number (from 0), on a task of its own; the count is returned.
#[cfg(test)]
pub(crate) async fn counting_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, counted.fetch_add(1, Ordering::SeqCst)));
        }
    });
    (address, accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::{full, ProxyBody};
    use crate::proxy::upstream::http2_exchange::{exchange, open};
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::sync::atomic::AtomicUsize;

    /// An HTTP/2 server that counts its connections and answers each
    /// request once `release` has a permit for it.
    async fn server(release: Arc<tokio::sync::Semaphore>) -> (SocketAddr, Arc<AtomicUsize>) {
        counting_upstream(move |stream, _| {
            let release = release.clone();
            let service = hyper::service::service_fn(move |_| {
                let release = release.clone();
                async move {
                    release.acquire().await.unwrap().forget();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            async move {
                let serving = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                let _ = serving.await;
            }
        })
        .await
    }

    fn request(address: SocketAddr) -> http::Request<ProxyBody> {
        let mut request = http::Request::new(full(Bytes::new()));
        *request.uri_mut() = format!("http://{address}/").parse().unwrap();
        *request.version_mut() = http::Version::HTTP_2;
        request
    }

    #[tokio::test]
    async fn a_busy_connection_gets_a_second_and_a_spent_one_a_successor() {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let (address, accepted) = server(release.clone()).await;
        let connections = Http2Connections::default();
        let limits = ConnectionLimits::default();
        // More requests at once than one connection carries.
        let mut waiting = Vec::new();
        for _ in 0..STREAMS_PER_CONNECTION + 20 {
            let (sender, stream) = connections.sender(address, None, limits).await.unwrap();
            let (head, body) = request(address).into_parts();
            let opened = open(sender, head, &body).await.unwrap();
            waiting.push(tokio::spawn(async move {
                let response = exchange(opened, body).await.unwrap();
                drop(response);
                drop(stream);
            }));
        }
        assert_eq!(connections.open_to(address), 2, "a second connection for the 101st stream");
        assert!(lock(&connections.connecting).is_empty(), "no connect under way: no gate kept");
        release.add_permits(1_000);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Streams done: the next request goes on an open connection.
        let (_sender, stream) = connections.sender(address, None, limits).await.unwrap();
        drop(stream);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // maxRequestsPerConnection: 3 requests, then a fresh connection.
        let spent = Http2Connections::default();
        let limits = ConnectionLimits { max_requests: Some(3), ..ConnectionLimits::default() };
        for _ in 0..4 {
            let (sender, _stream) = spent.sender(address, None, limits).await.unwrap();
            let (head, body) = request(address).into_parts();
            exchange(open(sender, head, &body).await.unwrap(), body).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "the fourth request on a new connection");
        assert_eq!(spent.open_to(address), 1, "the spent connection left the set");
    }
}
