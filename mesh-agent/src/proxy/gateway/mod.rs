//! The gateway: the same proxy at the mesh's edge (`mesh-agent gateway`).
//! Its listeners come from the `Gateway`s whose selector matches this
//! process's labels (the `GatewayState`, compiled anew with each snapshot):
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

use super::drain::Held;
use super::gateway_state::{names_one_of, GatewayOptions, GatewayState};
use super::http1::server::Rewind;
use super::listener::{accept_until_drained, Connection, Entry, Proxy};
use super::tcp::{read_client_hello, CLIENT_HELLO_TIMEOUT};
use mesh_core::gateway::{BoundServer, ListenerKind, ServerTlsMode};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Keeps the listeners in line with the plan of every new snapshot, until
/// the process ends.
pub async fn run(proxy: Arc<Proxy>, options: GatewayOptions, state: watch::Sender<Arc<GatewayState>>) {
    let mut published = proxy.published.clone();
    let mut bound: HashMap<SocketAddr, JoinHandle<()>> = HashMap::new();
    loop {
        let current = GatewayState::compile(&published.borrow_and_update(), &options);
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let wanted: Vec<SocketAddr> = (current.plan.listeners.iter().zip(&current.bound_ports))
            .map(|(listener, port)| SocketAddr::new(listener.bind.or(options.listen_ip).unwrap_or(any), *port))
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
    accept_until_drained(listener, proxy, move |proxy, stream, peer, held| {
        let state = state.borrow().clone();
        async move {
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            serve(proxy, state, stream, peer, local, held).await;
        }
    })
    .await
}

/// Serves one accepted connection by its listener's kind. On a TLS port
/// the ClientHello is read first: its server name picks the server, which
/// relays the bytes unread (passthrough) or terminates TLS with its own
/// certificate, then serves HTTP or relays TCP. `held` counts it open for
/// the drain.
async fn serve(
    proxy: Arc<Proxy>,
    state: Arc<GatewayState>,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    held: Held,
) {
    let Some((index, listener)) = state.listener(local.port()) else { return };
    // Routes match the Gateway server's port, whatever port was bound.
    let local = SocketAddr::new(local.ip(), listener.port);
    if !listener.kind.is_tls() {
        match listener.kind {
            ListenerKind::Http => {
                let connection = Connection::at_gateway(peer, local, false, None);
                proxy.serve_http(Arc::new(connection), stream, held).await;
            }
            _ => {
                let Some(server) = listener.servers.iter().find(|s| !s.tcp.is_empty()) else { return };
                proxy.relay_at_gateway(stream, peer, local, server, None, Vec::new()).await;
            }
        }
        return;
    }
    let mut hello = Vec::new();
    let read = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read_client_hello(&mut stream, &mut hello)).await;
    let sni = read.ok().and_then(Result::ok).flatten().map(|sni| sni.to_ascii_lowercase());
    let found = listener.server_for_sni(sni.as_deref());
    let Some(server) = found.and_then(|found| listener.servers.iter().position(|s| std::ptr::eq(s, found))) else {
        tracing::debug!(%peer, ?sni, port = listener.port, "no gateway server for this server name");
        return;
    };
    let bound = &listener.servers[server];
    let kind = bound.server.kind();
    if kind == ListenerKind::Passthrough {
        proxy.relay_at_gateway(stream, peer, local, bound, sni.as_deref(), hello).await;
        return;
    }
    let Some(Ok(serving)) = state.tls.get(&(index, server)) else { return };
    let accept = tokio_rustls::TlsAcceptor::from(serving.config.clone()).accept(Rewind::new(hello.into(), stream));
    let Ok(Ok(tls)) = tokio::time::timeout(proxy.header_timeout, accept).await else { return };
    if !client_names_fit(bound, tls.get_ref().1.peer_certificates()) {
        tracing::debug!(%peer, "client certificate names none of subjectAltNames");
        return;
    }
    if kind == ListenerKind::TerminatedTcp {
        proxy.relay_at_gateway(tls, peer, local, bound, None, Vec::new()).await;
        return;
    }
    let connection = Arc::new(Connection::at_gateway(peer, local, true, sni));
    // HTTP/2 as ALPN chose goes to hyper at once; HTTP/1.1 takes the fast
    // path first, as on a node.
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => proxy.serve_with_hyper(connection, tls, held).await,
        _ => proxy.serve_http(connection, tls, held).await,
    }
}

/// Whether a client's certificate names one of the server's
/// `subjectAltNames` (when it lists any and checks clients).
fn client_names_fit(bound: &BoundServer, chain: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> bool {
    let Some(settings) = bound.server.tls.as_ref() else { return true };
    if settings.subject_alt_names.is_empty() || !settings.mode.verifies_clients() {
        return true;
    }
    // OPTIONAL_MUTUAL lets a client without a certificate through.
    match chain.and_then(|chain| chain.first()) {
        Some(leaf) => names_one_of(leaf, &settings.subject_alt_names),
        None => settings.mode == ServerTlsMode::OptionalMutual,
    }
}

impl Connection {
    /// A connection accepted by a gateway listener, `local` carrying the
    /// listener's server port: plain HTTP, or HTTP over TLS terminated here
    /// (`tls`) with the handshake's server name `sni`.
    fn at_gateway(peer: SocketAddr, local: SocketAddr, tls: bool, sni: Option<String>) -> Connection {
        Connection {
            peer,
            original: local,
            source_workload: "unknown".into(),
            source_namespace: "unknown".into(),
            source: None,
            scheme: if tls { "https" } else { "http" },
            entry: Entry::Gateway { tls, sni: sni.map(Arc::from) },
            series: Default::default(),
        }
    }
}
