//! Mirroring (`mirror`, `mirrors`): fire and forget. A copy of the request
//! goes to the mirror's cluster with `-shadow` on its authority; its answer
//! is dropped and it never delays the caller. Copies under way are capped,
//! so a slow shadow cannot pile them up.

use super::balance::pick;
use super::cluster::{admit, Client, Clusters};
use super::upstream::dialer::{Dialer, Payload, Try};
use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::request::Parts;
use http_body_util::BodyExt;
use mesh_core::route::{shadow_authority, RouteDestination};
use mesh_core::snapshot::Snapshot;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// The proxy's mirrored requests under way.
#[derive(Default)]
pub struct Mirrors {
    in_flight: Arc<AtomicUsize>,
}

impl Mirrors {
    /// Sends a copy of the request (`parts`, and `body` once the client has
    /// sent it all; none: no copy) to `destination`, on `default_port` (the
    /// port of the request's own destination) when it names none, with the
    /// cluster plan `client` gets (its `workloadSelector` rule, if any).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &self,
        dialer: &Dialer,
        clusters: &Clusters,
        snapshot: &Arc<Snapshot>,
        destination: &RouteDestination,
        parts: &Parts,
        body: impl Future<Output = Option<Bytes>> + Send + 'static,
        default_port: u16,
        client: Option<Client<'_>>,
    ) {
        let port = destination.port.unwrap_or(default_port);
        let Some(target) = snapshot.service_index_for_host(&destination.host, port) else { return };
        let plan = clusters.plan(snapshot, target, destination.subset.as_deref(), client);
        let Some(endpoint) = pick(&plan.state.cursor, plan.endpoints(false), &plan.policy.load_balancer, None, &[])
        else {
            return;
        };
        let endpoint = endpoint.address;
        let mut parts = parts.clone();
        let authority = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        if let Ok(shadow) = HeaderValue::from_str(&shadow_authority(authority)) {
            parts.headers.insert(HOST, shadow);
        }
        let Ok(tls) = plan.tls(plan.http2) else { return };
        let Some(slot) = admit(&self.in_flight, Some(MAX_MIRRORS_IN_FLIGHT)) else { return };
        let dialer = dialer.clone();
        let (http2, limits) = (plan.http2, plan.limits);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let Some(body) = body.await else { return };
                let to = Try { endpoint, http2, tls: tls.as_ref(), limits, head: &parts, attempt: None };
                if let Ok(response) = dialer.send(to, Payload::Complete(body)).await {
                    // Drain so the connection returns to the pool.
                    let _ = response.into_body().collect().await;
                }
            })
            .await;
            drop(slot);
        });
    }
}
