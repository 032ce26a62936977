//! `tcp` routes of a VirtualService: a captured connection to a plain TCP
//! port goes to a destination picked by weight, once, and its bytes are
//! relayed both ways until either side closes.

use super::balance::random_u64;
use super::Proxy;
use crate::route::{first_tcp_match, pick_destination};
use crate::snapshot::Snapshot;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Connect timeout when `connectionPool.tcp.connectTimeout` is unset
/// (Istio's mesh default).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Proxy {
    pub(super) async fn relay_tcp(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        original: SocketAddr,
        snapshot: &Snapshot,
    ) {
        let Some(service) = snapshot.service_at(original) else { return };
        let route = first_tcp_match(snapshot.routes.tcp_routes(&service.fqdn), original.port());
        let destination = route.and_then(|r| pick_destination(&r.destinations, random_u64()));
        let target = match destination {
            Some(d) => snapshot.service_for_host(&d.host, d.port.unwrap_or(service.port)),
            None => Some(service),
        };
        let Some(target) = target else {
            tracing::debug!(%peer, %original, "tcp route to an unknown host; closing");
            return;
        };
        let subset = destination.and_then(|d| d.subset.as_deref());
        let endpoints = snapshot.endpoints(target, subset, original.is_ipv6());
        let policy = snapshot.policy_for(target, subset);
        let cluster = format!("outbound|{}|{}|{}", target.port, subset.unwrap_or_default(), target.fqdn);
        let Some(endpoint) = self.upstreams.pick(&cluster, &endpoints, &policy.load_balancer, None, &[]) else {
            tracing::debug!(%peer, %cluster, "no endpoint for a tcp route; closing");
            return;
        };
        let connect_timeout = policy.tcp.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                tracing::debug!(%peer, %endpoint, %error, "tcp upstream connect failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, %endpoint, "tcp upstream connect timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let _in_flight = self.upstreams.start(endpoint);
        self.metrics
            .tcp_connections
            .get_or_create(&vec![
                ("destination_service".into(), target.fqdn.clone()),
                ("destination_subset".into(), subset.unwrap_or_default().to_owned()),
            ])
            .inc();
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%peer, %endpoint, %error, "tcp relay ended with an error");
        }
    }
}
