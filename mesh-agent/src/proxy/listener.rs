//! The proxy itself ([`Proxy`]: what every connection shares) and its
//! listener: it accepts the connections the kernel captured
//! (connect4/6 send connections to service ports with L7 rules to the node
//! address, and sock_ops records where each one was going, keyed by the
//! client's address), finds who sent each one, and serves it: plain
//! HTTP/1.1 on our fast path, everything else through hyper's server, and
//! non-HTTP ports by the `tcp`/`tls` routes.

use super::body::ClientBody;
use super::cluster::Clusters;
use super::drain::{draining, Drain, Held};
use super::gateway_state::{GatewayState, ListenerStatus};
use super::http1::common::{MAX_FIELDS, MAX_HEAD_BYTES};
use super::http1::server::{self, Served};
use super::metrics::ProxyMetrics;
use super::mirror::Mirrors;
use super::outlier::Ejected;
use super::upstream::dialer::{Dialer, UpstreamPool};
use crate::dataplane::OriginalDstTable;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::model::PodModel;
use mesh_core::published::Published;
use mesh_core::snapshot::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A client that sends its headers slower than this is cut off (default,
/// nginx's `client_header_timeout`). hyper also counts a keep-alive
/// connection's idle time against it, so it doubles as the idle timeout.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding the proxy listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub struct Proxy {
    pub(super) published: watch::Receiver<Arc<Published>>,
    /// Where captured connections were going (the node proxy; none at a
    /// gateway, which captures nothing).
    original_dst: Option<OriginalDstTable>,
    /// What a gateway's listeners serve (none on a node).
    pub(super) gateway: Option<watch::Receiver<Arc<GatewayState>>>,
    pub(super) dialer: Dialer,
    pub(super) clusters: Clusters,
    pub(super) mirrors: Mirrors,
    pub(super) access_log: bool,
    pub(super) header_timeout: Duration,
    pub metrics: ProxyMetrics,
    /// Graceful shutdown: stop accepting, finish requests, then close.
    pub drain: Drain,
}

impl Proxy {
    pub fn new(
        published: watch::Receiver<Arc<Published>>,
        original_dst: OriginalDstTable,
        access_log: bool,
        header_timeout: Duration,
    ) -> Self {
        Self::with(published, Some(original_dst), None, access_log, header_timeout)
    }

    fn with(
        published: watch::Receiver<Arc<Published>>,
        original_dst: Option<OriginalDstTable>,
        gateway: Option<watch::Receiver<Arc<GatewayState>>>,
        access_log: bool,
        header_timeout: Duration,
    ) -> Self {
        Self {
            published,
            original_dst,
            gateway,
            header_timeout,
            dialer: Dialer::default(),
            clusters: Clusters::default(),
            mirrors: Mirrors::default(),
            access_log,
            metrics: ProxyMetrics::default(),
            drain: Drain::default(),
        }
    }

    /// The proxy of a gateway process, and the sender its listeners'
    /// state is published on (see `gateway::run`).
    pub fn for_gateway(
        published: watch::Receiver<Arc<Published>>,
        access_log: bool,
        header_timeout: Duration,
    ) -> (Self, watch::Sender<Arc<GatewayState>>) {
        let (state, receiver) = watch::channel(Arc::new(GatewayState::default()));
        (Self::with(published, None, Some(receiver), access_log, header_timeout), state)
    }

    /// A gateway's listeners (empty on a node).
    pub fn gateway_listeners(&self) -> Vec<ListenerStatus> {
        self.gateway_state().map(|state| state.listeners()).unwrap_or_default()
    }

    /// What a gateway's listeners serve now (None on a node).
    pub fn gateway_state(&self) -> Option<Arc<GatewayState>> {
        self.gateway.as_ref().map(|state| state.borrow().clone())
    }

    /// Upstream endpoints with their requests in flight and HTTP/2 state.
    pub fn pools(&self) -> Vec<UpstreamPool> {
        self.dialer.pools(self.clusters.in_flight())
    }

    /// Hosts ejected by outlier detection right now, by cluster.
    pub fn ejections(&self) -> Vec<(String, Ejected)> {
        self.clusters.ejections(std::time::Instant::now())
    }
}

/// A pod's workload name for metrics, as Istio derives its canonical name:
/// bounded cardinality, unlike pod names.
fn workload_name(pod: &PodModel) -> String {
    ["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|label| pod.labels.get(*label).cloned())
        .unwrap_or_else(|| pod.name.clone())
}

/// A captured connection from `pod` (when known) at `peer`, going to
/// `original`.
fn connection_of(pod: Option<&PodModel>, peer: SocketAddr, original: SocketAddr) -> Connection {
    Connection {
        peer,
        original,
        source_workload: pod.map(workload_name).unwrap_or_else(|| "unknown".into()),
        source_namespace: pod.map(|p| p.namespace.clone()).unwrap_or_else(|| "unknown".into()),
        source: pod.map(|p| (p.labels.clone(), p.namespace.clone())),
        scheme: "http",
        entry: Entry::Captured,
        series: Default::default(),
    }
}

/// The pod a captured connection comes from, by its address.
pub(super) fn source_pod(snapshot: &Snapshot, peer: SocketAddr) -> Option<&PodModel> {
    let peer_ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(peer.ip()),
        ip => ip,
    };
    snapshot.pods_by_ip.get(&peer_ip).and_then(|id| snapshot.model.pods.get(id))
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }
        .map_err(|source| ProxyError::Bind { addr, source })?;
    socket.set_reuseaddr(true).map_err(|source| ProxyError::Bind { addr, source })?;
    socket.bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
    socket.listen(4096).map_err(|source| ProxyError::Bind { addr, source })
}

pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    accept_until_drained(listener, proxy, |proxy, stream, peer, held| proxy.serve_connection(stream, peer, held)).await
}

/// Accepts connections on `listener` until the proxy drains, and serves
/// each with `serve` on a task of its own, counted open for the drain by
/// the hold `serve` is given (TLS, TCP relays and HTTP alike: one each).
pub(super) async fn accept_until_drained<F, Fut>(listener: TcpListener, proxy: Arc<Proxy>, serve: F)
where
    F: Fn(Arc<Proxy>, TcpStream, SocketAddr, Held) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut drain = proxy.drain.signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Draining: no new connection (the listener closes with us).
            () = draining(&mut drain) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        tokio::spawn(serve(proxy.clone(), stream, peer, proxy.drain.hold()));
    }
}

/// What every request of one captured connection shares.
pub struct Connection {
    pub peer: SocketAddr,
    /// The service address the client dialled.
    pub original: SocketAddr,
    /// The client pod, when the model knows its address ("unknown" else).
    pub source_workload: String,
    pub source_namespace: String,
    /// The client pod's labels and namespace, for `sourceLabels` and
    /// `sourceNamespace` matches (None: not a known pod).
    pub source: Option<(mesh_core::host::Labels, String)>,
    /// `http`, or `https` for TLS terminated here.
    pub scheme: &'static str,
    /// How the connection came: captured on its way to a service, or to
    /// a gateway listener.
    pub entry: Entry,
    /// The metric series this connection's requests fed last.
    pub(super) series: std::sync::Mutex<Option<super::metrics::RequestSeries>>,
}

impl Connection {
    /// The client pod's labels and namespace, as routes and cluster plans
    /// take them.
    pub fn client(&self) -> Option<super::cluster::Client<'_>> {
        self.source.as_ref().map(|(labels, namespace)| (&**labels, namespace.as_str()))
    }
}

/// How a connection reached the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Captured by the kernel on its way to a service address.
    Captured,
    /// Accepted by a gateway listener. Over TLS (`tls`), the server its
    /// handshake's name (`sni`) picked routes the requests: each finds it
    /// again by that name in the plan it is routed by, which a reload may
    /// have reordered. On plain HTTP the Host picks among all servers.
    Gateway { tls: bool, sni: Option<Arc<str>> },
}

impl Proxy {
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, held: Held) {
        let Some(original) = self.original_dst.as_ref().and_then(|table| table.take(peer)) else {
            // Not a captured connection (or its entry was lost): nothing to route by.
            tracing::debug!(%peer, "connection with no recorded original destination; closing");
            return;
        };
        let _ = stream.set_nodelay(true);
        let snapshot = self.published.borrow().snapshot.clone();
        // Boxed, as what follows: an idle connection's task holds only the
        // future it is waiting in (see `a_connection_task_is_small`).
        if snapshot.service_at(original).is_some_and(|service| !service.http) {
            Box::pin(self.relay_tcp(stream, peer, original, &snapshot)).await;
            return;
        }
        let pod = source_pod(&snapshot, peer);
        self.serve_http(Arc::new(connection_of(pod, peer, original)), stream, held).await;
    }

    /// Serves HTTP on a client connection: plain HTTP/1.1 requests on our
    /// fast path, and from the first request that is anything else on,
    /// hyper's server (HTTP/1.x, h2c, upgrades).
    pub(super) async fn serve_http<IO>(self: Arc<Self>, connection: Arc<Connection>, io: IO, mut held: Held)
    where
        IO: server::ClientIo + Send + 'static,
    {
        let served =
            server::serve(io, self.header_timeout, &mut held, |request| self.handle(&connection, request)).await;
        match served {
            Served::Closed => {}
            Served::HandOff(rewind) => Box::pin(self.serve_with_hyper(connection, rewind, held)).await,
        }
    }

    /// Serves a client connection with hyper's server: HTTP/1.x, or HTTP/2
    /// by its preface (h2c, or h2 as ALPN chose).
    pub(super) async fn serve_with_hyper<IO>(self: Arc<Self>, connection: Arc<Connection>, io: IO, mut held: Held)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = connection.peer;
        let header_timeout = self.header_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (proxy, connection) = (self.clone(), connection.clone());
            let request = request.map(ClientBody::Hyper);
            // Boxed: hyper spawns a task per HTTP/2 stream and moves the
            // future in and out of it; a pointer moves cheaper than the
            // request's whole state (a few KiB).
            async move { Ok::<_, std::convert::Infallible>(Box::pin(proxy.handle(&connection, request)).await) }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            // A client that shuts its sending side down after its request
            // still gets the response (as on the plain path).
            .half_close(true)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_FIELDS);
        builder.http2().timer(TokioTimer::new()).max_header_list_size(MAX_HEAD_BYTES as u32);
        let serving = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut serving = std::pin::pin!(serving);
        // Draining: HTTP/1.1 closes after the response under way (idle: at
        // once), HTTP/2 sends GOAWAY and finishes its streams.
        let ended = tokio::select! {
            ended = serving.as_mut() => ended,
            () = held.started() => {
                serving.as_mut().graceful_shutdown();
                serving.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%peer, %error, "client connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle keep-alive connection holds its task, sized by the
    /// connection's future: what a request or hyper needs is boxed while
    /// it runs, not carried by every connection.
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let (_sender, published) = watch::channel(Arc::new(Published::default()));
        let proxy = Arc::new(Proxy::with(published, None, None, false, Duration::from_secs(1)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let peer = stream.local_addr().unwrap();
        let serving = proxy.clone().serve_connection(stream, peer, proxy.drain.hold());
        let size = std::mem::size_of_val(&serving);
        assert!(size <= 2048, "the connection future takes {size} bytes");
    }
}
