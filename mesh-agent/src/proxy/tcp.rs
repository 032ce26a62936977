//! `tls` and `tcp` routes of a VirtualService: a captured connection to a
//! non-HTTP port goes to a destination picked once, by the server name of
//! its TLS ClientHello (passthrough: the proxy never terminates TLS), the
//! port and addresses at both ends and the client pod's labels and
//! namespace, then by weight; its bytes are relayed both ways until either
//! side closes.

use super::balance::pick;
use super::listener::{source_pod, Proxy};
use super::upstream::connect::tcp_connect;
use mesh_core::route::{first_tcp_match, first_tls_match, pick_destination, ConnectionView};
use mesh_core::snapshot::Snapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a TLS client may take to send its ClientHello.
pub(super) const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A ClientHello larger than this is not parsed (it is still relayed).
const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Reads the first TLS record into `buffer` and returns its server name
/// (None for anything that is not a ClientHello with SNI).
pub(super) async fn read_client_hello(client: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(total) = record_length(buffer) {
            if buffer.len() >= total || total > MAX_CLIENT_HELLO {
                return Ok(server_name(buffer));
            }
        } else if buffer.len() >= 5 {
            return Ok(None); // not a TLS handshake record
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Length of the first TLS handshake record, header included.
fn record_length(buffer: &[u8]) -> Option<usize> {
    (buffer.len() >= 5 && buffer[0] == 0x16).then(|| 5 + u16::from_be_bytes([buffer[3], buffer[4]]) as usize)
}

/// The `server_name` extension of a ClientHello (RFC 8446 §4.1.2, RFC 6066 §3).
pub fn server_name(record: &[u8]) -> Option<String> {
    let take = |data: &[u8], at: usize, n: usize| data.get(at..at + n).map(<[u8]>::to_vec);
    let u16_at = |data: &[u8], at: usize| data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    let body = record.get(5..)?;
    if *body.first()? != 0x01 {
        return None; // not a ClientHello
    }
    // handshake header 4, client_version 2, random 32
    let mut at = 4 + 2 + 32;
    at += 1 + *body.get(at)? as usize; // session id
    at += 2 + u16_at(body, at)?; // cipher suites
    at += 1 + *body.get(at)? as usize; // compression methods
    let extensions_end = at + 2 + u16_at(body, at)?;
    at += 2;
    while at + 4 <= extensions_end {
        let kind = u16_at(body, at)?;
        let length = u16_at(body, at + 2)?;
        let data = take(body, at + 4, length)?;
        if kind == 0 {
            // server_name_list: length 2, then entries of type (0: host), length 2, name
            let name_length = u16_at(&data, 3)?;
            if *data.get(2)? == 0 {
                return String::from_utf8(take(&data, 5, name_length)?).ok();
            }
        }
        at += 4 + length;
    }
    None
}

impl Proxy {
    pub(super) async fn relay_tcp(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        original: SocketAddr,
        snapshot: &Arc<Snapshot>,
    ) {
        let Some(service_index) = snapshot.service_index_at(original) else { return };
        let service = &snapshot.services[service_index];
        // TLS routes look at the ClientHello, which is read ahead and then
        // sent on unchanged.
        // Only the VirtualServices exported to the client's namespace.
        let pod = source_pod(snapshot, peer);
        let namespace = pod.map(|pod| pod.namespace.as_str());
        let view = ConnectionView {
            port: original.port(),
            destination: original.ip(),
            source: peer.ip(),
            source_labels: pod.map(|pod| &*pod.labels),
            source_namespace: namespace,
        };
        let tls_routes = snapshot.routes.tls_routes_for(&service.fqdn, namespace);
        let mut hello = Vec::new();
        let mut destination = None;
        if !tls_routes.is_empty() {
            let read = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, read_client_hello(&mut client, &mut hello)).await;
            let sni = read.ok().and_then(Result::ok).flatten();
            let route = sni.as_deref().and_then(|sni| first_tls_match(tls_routes, sni, &view));
            destination = route.and_then(|r| pick_destination(&r.destinations, fastrand::u64(..)));
        }
        if destination.is_none() {
            let route = first_tcp_match(snapshot.routes.tcp_routes_for(&service.fqdn, namespace), &view);
            destination = route.and_then(|r| pick_destination(&r.destinations, fastrand::u64(..)));
        }
        let target = match destination {
            Some(d) => snapshot.service_index_for_host(&d.host, d.port.unwrap_or(service.port)),
            None => Some(service_index),
        };
        let Some(target) = target else {
            tracing::debug!(%peer, %original, "tcp route to an unknown host; closing");
            return;
        };
        let source = pod.map(|pod| (&*pod.labels, pod.namespace.as_str()));
        let subset = destination.and_then(|d| d.subset.as_deref());
        let to = Relay { snapshot, target, subset, client: source, ipv6: original.is_ipv6() };
        self.relay_to(client, peer, hello, to).await;
    }

    /// Relays a connection a gateway server takes as TCP: by the server's
    /// `tls` routes and the ClientHello's `sni` (passthrough: `hello`, the
    /// bytes read ahead, go first), else by its `tcp` routes.
    pub(super) async fn relay_at_gateway<S>(
        &self,
        client: S,
        peer: SocketAddr,
        local: SocketAddr,
        server: &mesh_core::gateway::BoundServer,
        sni: Option<&str>,
        hello: Vec<u8>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let snapshot = self.published.borrow().snapshot.clone();
        let view = ConnectionView {
            port: local.port(),
            destination: local.ip(),
            source: peer.ip(),
            source_labels: None,
            source_namespace: None,
        };
        let route = match sni {
            Some(sni) if !server.tls.is_empty() => first_tls_match(&server.tls, sni, &view).map(|r| &r.destinations),
            _ => first_tcp_match(&server.tcp, &view).map(|r| &r.destinations),
        };
        let destination = route.and_then(|destinations| pick_destination(destinations, fastrand::u64(..)));
        let Some(destination) = destination else {
            tracing::debug!(%peer, port = local.port(), ?sni, "no route at the gateway for this connection; closing");
            return;
        };
        let Some(target) = snapshot.service_index_for_host(&destination.host, destination.port.unwrap_or(0)) else {
            tracing::debug!(%peer, host = %destination.host, "gateway route to an unknown host; closing");
            return;
        };
        let to =
            Relay { snapshot: &snapshot, target, subset: destination.subset.as_deref(), client: None, ipv6: false };
        self.relay_to(client, peer, hello, to).await;
    }

    /// Connects to an endpoint of `to`, sends `hello` (bytes read ahead)
    /// and relays both ways until either side closes.
    async fn relay_to<S>(&self, mut client: S, peer: SocketAddr, hello: Vec<u8>, to: Relay<'_>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let plan = self.clusters.plan(to.snapshot, to.target, to.subset, to.client);
        let all = plan.endpoints(to.ipv6);
        let healthy;
        let available = match &plan.outlier {
            Some(config) => {
                healthy = plan.healthy(all, config, std::time::Instant::now());
                &healthy[..]
            }
            None => all,
        };
        let endpoints = super::balance::by_priority(all, available, fastrand::f64());
        let Some(picked) = pick(&plan.state.cursor, &endpoints, &plan.policy.load_balancer, None, &[]) else {
            tracing::debug!(%peer, cluster = %plan.name, "no endpoint for a tcp route; closing");
            return;
        };
        let endpoint = picked.address;
        let mut upstream = match tcp_connect(endpoint, plan.limits.connect_timeout).await {
            Ok(upstream) => upstream,
            Err(error) => {
                tracing::debug!(%peer, %endpoint, %error, "tcp upstream connect failed");
                return;
            }
        };
        if !hello.is_empty() && upstream.write_all(&hello).await.is_err() {
            return;
        }
        let _in_flight = picked.start();
        self.metrics
            .tcp_connections
            .get_or_create(&vec![
                ("destination_service".into(), plan.service.to_string()),
                ("destination_subset".into(), plan.subset.to_string()),
            ])
            .inc();
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%peer, %endpoint, %error, "tcp relay ended with an error");
        }
    }
}

/// Where a relayed connection goes: a service port of the snapshot (and
/// subset), as `client` sees it, in the client's address family.
struct Relay<'a> {
    snapshot: &'a Arc<Snapshot>,
    target: usize,
    subset: Option<&'a str>,
    client: Option<super::cluster::Client<'a>>,
    ipv6: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello with one SNI entry.
    fn client_hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut server_name_ext = vec![];
        server_name_ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        server_name_ext.push(0);
        server_name_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        server_name_ext.extend_from_slice(name);
        let mut extensions = vec![0, 0];
        extensions.extend_from_slice(&(server_name_ext.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&server_name_ext);
        let mut hello = vec![3, 3];
        hello.extend_from_slice(&[7; 32]);
        hello.push(0); // session id
        hello.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        hello.extend_from_slice(&[1, 0]); // null compression
        hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        hello.extend_from_slice(&extensions);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn the_server_name_is_read_from_a_client_hello() {
        let record = client_hello("reviews.shop.svc.cluster.local");
        assert_eq!(record_length(&record), Some(record.len()));
        assert_eq!(server_name(&record).as_deref(), Some("reviews.shop.svc.cluster.local"));
    }

    #[test]
    fn anything_else_has_no_server_name() {
        assert_eq!(server_name(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(record_length(b"GET / HTTP/1.1"), None);
        let mut truncated = client_hello("a.example");
        truncated.truncate(60);
        assert_eq!(server_name(&truncated), None, "a cut record never panics");
    }
}

#[cfg(test)]
mod rustls_hello {
    #[test]
    fn a_real_rustls_client_hello_yields_its_server_name() {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("a.example.com").unwrap();
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        connection.write_tls(&mut hello).unwrap();
        assert_eq!(super::record_length(&hello), Some(hello.len()));
        assert_eq!(super::server_name(&hello).as_deref(), Some("a.example.com"));
    }
}
