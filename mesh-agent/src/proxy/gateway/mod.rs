//! The gateway: the same proxy at the mesh's edge (`mesh-agent gateway`).
//! Its listeners come from the `Gateway`s whose selector matches this
//! process's labels ([`GatewayPlan`], compiled anew with each snapshot):
//! one per port, bound on `--listen-ip`. Plain HTTP ports speak HTTP/1.1
//! and h2c; HTTPS ports terminate TLS with the certificate of the server
//! the ClientHello's name picks (several servers on a port are told apart
//! by SNI, as Envoy does), then speak what ALPN chose. Requests are routed
//! by Host through the VirtualServices bound to the server and go through
//! the same stages as pod traffic; endpoints are dialled directly.
//!
//! A listener whose port leaves the plan stops accepting; its connections
//! finish. A changed certificate (a rotated Secret) serves new handshakes
//! at once; established connections keep theirs.

mod tls;

use super::body::ClientBody;
use super::listener::{Connection, Entry, Proxy};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use mesh_core::gateway::{GatewayPlan, ListenerKind, ServerTlsMode};
use mesh_core::published::Published;
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the gateway's listeners serve now.
#[derive(Default)]
pub struct GatewayState {
    pub plan: GatewayPlan,
    /// Each TLS-terminating server's configuration, by port and server
    /// index in its listener; a server whose certificate is missing or
    /// broken has an error here (its handshakes fail) while the others serve.
    tls: HashMap<(u16, usize), Result<Arc<ServerConfig>, String>>,
}

/// A gateway process's identity and where it listens.
pub struct GatewayOptions {
    /// This workload's labels: the Gateways whose selector they match apply.
    pub labels: BTreeMap<String, String>,
    pub cluster_domain: String,
    /// Where the listeners bind (a server's `bind` wins); default: all
    /// addresses, both families.
    pub listen_ip: Option<IpAddr>,
}

impl GatewayState {
    fn compile(published: &Published, options: &GatewayOptions) -> GatewayState {
        let model = &published.snapshot.model;
        let plan = GatewayPlan::compile(model, &options.labels, &options.cluster_domain);
        let mut configs = HashMap::new();
        for listener in &plan.listeners {
            if listener.kind != ListenerKind::TerminatedTls {
                continue;
            }
            for (index, bound) in listener.servers.iter().enumerate() {
                let Some(settings) = bound.server.tls.as_ref() else { continue };
                let config = tls::server_config(settings, &model.secrets).map_err(|error| {
                    tracing::warn!(
                        gateway = %format!("{}/{}", bound.gateway_namespace, bound.gateway_name),
                        port = listener.port,
                        %error,
                        "gateway server has no usable certificate; its handshakes fail"
                    );
                    error.to_string()
                });
                configs.insert((listener.port, index), config);
            }
        }
        GatewayState { plan, tls: configs }
    }
}

/// Keeps the listeners in line with the plan of every new snapshot, until
/// the process ends.
pub async fn run(proxy: Arc<Proxy>, options: GatewayOptions, state: watch::Sender<Arc<GatewayState>>) {
    let mut published = proxy.published.clone();
    let mut bound: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let current = GatewayState::compile(&published.borrow_and_update(), &options);
        let wanted: Vec<SocketAddr> = current
            .plan
            .listeners
            .iter()
            .map(|l| SocketAddr::new(l.bind.or(options.listen_ip).unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), l.port))
            .collect();
        state.send_replace(Arc::new(current));
        bound.retain(|address, task| {
            let keep = wanted.contains(address);
            if !keep {
                tracing::info!(%address, "gateway listener closed");
                task.abort();
            }
            keep
        });
        for address in wanted {
            if bound.contains_key(&address) {
                continue;
            }
            match super::listener::bind(address).await {
                Ok(listener) => {
                    tracing::info!(%address, "gateway listener open");
                    bound.insert(address, tokio::spawn(accept(listener, proxy.clone(), state.subscribe())));
                }
                Err(error) => tracing::error!(%address, %error, "gateway listener cannot bind"),
            }
        }
        if published.changed().await.is_err() {
            return;
        }
    }
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>, state: watch::Receiver<Arc<GatewayState>>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "gateway accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let (proxy, state) = (proxy.clone(), state.borrow().clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            serve(proxy, state, stream, peer, local).await;
        });
    }
}

/// Serves one accepted connection by its listener's kind.
async fn serve(proxy: Arc<Proxy>, state: Arc<GatewayState>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) {
    let Some(listener) = state.plan.listeners.iter().find(|l| l.port == local.port()) else { return };
    match listener.kind {
        ListenerKind::Http => {
            let connection = Connection::at_gateway(peer, local, None, "http");
            serve_http(proxy, connection, TokioIo::new(stream)).await;
        }
        ListenerKind::TerminatedTls => {
            let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let Ok(start) = tokio::time::timeout(proxy.header_timeout, acceptor).await else { return };
            let Ok(start) = start else { return };
            let sni = start.client_hello().server_name().map(str::to_ascii_lowercase);
            let found = listener.server_for_sni(sni.as_deref());
            let Some(index) = found.and_then(|found| listener.servers.iter().position(|s| std::ptr::eq(s, found)))
            else {
                tracing::debug!(%peer, ?sni, "no gateway server for this server name");
                return;
            };
            let Some(Ok(config)) = state.tls.get(&(listener.port, index)) else { return };
            let Ok(tls) = start.into_stream(config.clone()).await else { return };
            let server = &listener.servers[index].server;
            if let Some(settings) = server.tls.as_ref() {
                let wanted = &settings.subject_alt_names;
                let mutual = matches!(settings.mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
                if mutual && !wanted.is_empty() {
                    let presented = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first());
                    if !presented.is_some_and(|leaf| tls::names_one_of(leaf, wanted)) {
                        tracing::debug!(%peer, "client certificate names none of subjectAltNames");
                        return;
                    }
                }
            }
            let connection = Connection::at_gateway(peer, local, Some(index), "https");
            serve_http(proxy, connection, TokioIo::new(tls)).await;
        }
        ListenerKind::Passthrough | ListenerKind::Tcp => {
            proxy.relay_at_gateway(stream, peer, local, listener).await;
        }
    }
}

/// HTTP/1.1 and HTTP/2 (by ALPN, or h2c by its preface) on a gateway
/// connection.
async fn serve_http<I>(proxy: Arc<Proxy>, connection: Connection, io: TokioIo<I>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = Arc::new(connection);
    let peer = connection.peer;
    let handler = proxy.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (proxy, connection) = (handler.clone(), connection.clone());
        let request = request.map(ClientBody::Hyper);
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(&connection, request).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(proxy.header_timeout).half_close(true);
    builder.http2().timer(TokioTimer::new());
    if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(%peer, %error, "gateway client connection ended with an error");
    }
}

/// One listener as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub port: u16,
    pub kind: String,
    pub servers: Vec<ServerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerStatus {
    pub gateway: String,
    pub hosts: Vec<String>,
    pub protocol: String,
    pub tls_mode: Option<String>,
    /// Why the server's TLS cannot serve (a missing Secret, say).
    pub tls_error: Option<String>,
    /// `namespace/name` of each bound VirtualService, with its hosts.
    pub virtual_services: Vec<String>,
}

impl GatewayState {
    /// The listeners, for status.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        (self.plan.listeners.iter())
            .map(|listener| ListenerStatus {
                port: listener.port,
                kind: format!("{:?}", listener.kind),
                servers: (listener.servers.iter().enumerate())
                    .map(|(index, bound)| ServerStatus {
                        gateway: format!("{}/{}", bound.gateway_namespace, bound.gateway_name),
                        hosts: (bound.server.hosts.iter())
                            .map(|h| format!("{}/{}", h.namespace.as_deref().unwrap_or("*"), h.host))
                            .collect(),
                        protocol: format!("{:?}", bound.server.protocol),
                        tls_mode: bound.server.tls.as_ref().map(|tls| format!("{:?}", tls.mode)),
                        tls_error: self.tls.get(&(listener.port, index)).and_then(|c| c.as_ref().err().cloned()),
                        virtual_services: (bound.virtual_hosts.iter())
                            .map(|v| format!("{}/{} {:?}", v.namespace, v.name, v.hosts))
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}

impl Connection {
    /// A connection accepted by a gateway listener on `local`, on the
    /// server at `server` (the TLS handshake's pick) of that listener.
    fn at_gateway(peer: SocketAddr, local: SocketAddr, server: Option<usize>, scheme: &'static str) -> Connection {
        Connection {
            peer,
            original: local,
            source_workload: "unknown".into(),
            source_namespace: "unknown".into(),
            source: None,
            scheme,
            entry: Entry::Gateway { server },
            series: Default::default(),
        }
    }
}
