//! Upstream clusters: a service port, or one subset of it, as Envoy names
//! them (`outbound|port|subset|host`). What a request needs of its cluster
//! (endpoints per family, the merged DestinationRule policy, the outlier and
//! pool limits, TLS settings) is worked out once per snapshot and cluster,
//! not per request. The runtime state (round-robin cursor, requests and
//! retries under way, outlier health) lives on across snapshots by name.

use super::outlier::{Ejected, Observation, OutlierConfig, OutlierState};
use super::upstream::connect::Tls;
use super::upstream::pool::{ConnectionLimits, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
use super::upstream::tls::{client_config, material, TlsError};
use crate::sync::lock;
use mesh_core::destination_rule::{ClientTls, EffectivePolicy, TlsMode};
use mesh_core::snapshot::Snapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One endpoint of a cluster, with its requests in flight (shared by every
/// cluster that holds the address, for LEAST_REQUEST and status).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub counters: Arc<EndpointCounters>,
}

#[derive(Debug, Default)]
pub struct EndpointCounters {
    pub in_flight: Arc<AtomicUsize>,
    /// A request has gone to it (status lists only those).
    used: std::sync::atomic::AtomicBool,
}

impl Endpoint {
    pub fn load(&self) -> usize {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one request against the endpoint until the guard drops.
    pub fn start(&self) -> InFlight {
        self.counters.used.store(true, Ordering::Relaxed);
        self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.counters.in_flight.clone())
    }
}

/// Counts one request (against an endpoint or a cluster) until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a slot while fewer than `limit` are taken; `None` is an overflow.
pub fn admit(counter: &Arc<AtomicUsize>, limit: Option<usize>) -> Option<InFlight> {
    let before = counter.fetch_add(1, Ordering::AcqRel);
    let slot = InFlight(counter.clone());
    match limit {
        Some(limit) if before >= limit => None, // dropping `slot` gives it back
        _ => Some(slot),
    }
}

/// What the proxy keeps about a cluster between requests and snapshots.
#[derive(Default)]
pub struct ClusterState {
    /// Round-robin position.
    pub cursor: AtomicUsize,
    /// Requests under way, for the connection-pool limits.
    pub active: Arc<AtomicUsize>,
    /// Retries under way, for `http.maxRetries`.
    pub retries: Arc<AtomicUsize>,
    outliers: Mutex<OutlierState>,
}

/// A cluster as one snapshot serves it.
pub struct ClusterPlan {
    /// `outbound|port|subset|fqdn`.
    pub name: Arc<str>,
    pub service: Arc<str>,
    /// Empty: the whole service.
    pub subset: Arc<str>,
    pub port: u16,
    /// Upstreams speak HTTP/2 with prior knowledge.
    pub http2: bool,
    pub policy: EffectivePolicy,
    pub outlier: Option<OutlierConfig>,
    /// `connectionPool.http.maxRetries`.
    pub max_retries: Option<usize>,
    /// Requests that may be under way at once (see [`request_limit`]).
    pub request_limit: Option<usize>,
    /// Connect and idle timeouts, requests per connection.
    pub limits: ConnectionLimits,
    /// TLS origination, when the DestinationRule's `tls` block asks for
    /// it: client configurations for HTTP/1.1 and HTTP/2 upstreams.
    pub tls: Option<Result<[Tls; 2], TlsError>>,
    endpoints_v4: Vec<Endpoint>,
    endpoints_v6: Vec<Endpoint>,
    pub state: Arc<ClusterState>,
}

impl ClusterPlan {
    /// The TLS to originate (None: plaintext), for an HTTP/2 or HTTP/1.1
    /// connection.
    pub fn tls(&self, http2: bool) -> Result<Option<Tls>, TlsError> {
        match &self.tls {
            None => Ok(None),
            Some(Ok(configs)) => Ok(Some(configs[usize::from(http2)].clone())),
            Some(Err(error)) => Err(error.clone()),
        }
    }

    /// Endpoints in the client's address family, or in the other one when
    /// the service has none of it.
    pub fn endpoints(&self, ipv6: bool) -> &[Endpoint] {
        let (same, other) =
            if ipv6 { (&self.endpoints_v6, &self.endpoints_v4) } else { (&self.endpoints_v4, &self.endpoints_v6) };
        if same.is_empty() {
            other
        } else {
            same
        }
    }

    /// The endpoints outlier detection has not ejected at `now`.
    pub fn healthy(&self, endpoints: &[Endpoint], config: &OutlierConfig, now: Instant) -> Vec<Endpoint> {
        let addresses: Vec<SocketAddr> = endpoints.iter().map(|e| e.address).collect();
        let available: std::collections::HashSet<SocketAddr> =
            lock(&self.state.outliers).available(&addresses, now, config).into_iter().collect();
        endpoints.iter().filter(|e| available.contains(&e.address)).cloned().collect()
    }

    /// Records the outcome of a try that ended at `now`; true when it
    /// ejected the host.
    pub fn observe(
        &self,
        host: SocketAddr,
        observation: Observation,
        config: &OutlierConfig,
        size: usize,
        now: Instant,
    ) -> bool {
        lock(&self.state.outliers).record(host, observation, now, config, size)
    }
}

/// The plans of the snapshot in service, made on first use, and the state
/// of every cluster.
#[derive(Default)]
pub struct Clusters {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The snapshot `plans` belong to.
    snapshot: Option<Arc<Snapshot>>,
    /// By service index, then subset.
    plans: HashMap<usize, Vec<Arc<ClusterPlan>>>,
    states: HashMap<Arc<str>, Arc<ClusterState>>,
    endpoints: HashMap<SocketAddr, Arc<EndpointCounters>>,
}

impl Clusters {
    /// The plan for `subset` (or the whole service) of `snapshot.services[index]`.
    pub fn plan(&self, snapshot: &Arc<Snapshot>, index: usize, subset: Option<&str>) -> Arc<ClusterPlan> {
        let mut inner = lock(&self.inner);
        // A request that started before a reload (held by a fault delay,
        // say) gets a plan of its own snapshot, not cached: the cache
        // only moves forward.
        if inner.snapshot.as_ref().is_some_and(|current| current.serial > snapshot.serial) {
            return Arc::new(inner.compile(snapshot, index, subset.unwrap_or_default()));
        }
        if !inner.snapshot.as_ref().is_some_and(|current| Arc::ptr_eq(current, snapshot)) {
            inner.renew(snapshot);
        }
        let subset = subset.unwrap_or_default();
        if let Some(plan) = inner.plans.get(&index).and_then(|plans| plans.iter().find(|p| &*p.subset == subset)) {
            return plan.clone();
        }
        let plan = Arc::new(inner.compile(snapshot, index, subset));
        inner.plans.entry(index).or_default().push(plan.clone());
        plan
    }

    /// Hosts ejected at `now`, by cluster.
    pub fn ejections(&self, now: Instant) -> Vec<(String, Ejected)> {
        let inner = lock(&self.inner);
        let mut out: Vec<(String, Ejected)> = inner
            .states
            .iter()
            .flat_map(|(name, state)| {
                lock(&state.outliers).ejected(now).into_iter().map(move |e| (name.to_string(), e))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1.host).cmp(&(&b.0, b.1.host)));
        out
    }

    /// Requests in flight per endpoint the proxy has sent to.
    pub fn in_flight(&self) -> Vec<(SocketAddr, usize)> {
        let inner = lock(&self.inner);
        inner
            .endpoints
            .iter()
            .filter(|(_, counters)| counters.used.load(Ordering::Relaxed))
            .map(|(address, counters)| (*address, counters.in_flight.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Inner {
    /// A new snapshot: plans are made again; the state of clusters that
    /// are gone, and counters of endpoints nobody uses, are dropped.
    fn renew(&mut self, snapshot: &Arc<Snapshot>) {
        self.plans.clear();
        self.snapshot = Some(snapshot.clone());
        self.states.retain(|name, state| {
            let exists = name_fields(name).and_then(|(port, _, host)| Some((port.parse().ok()?, host))).is_some_and(
                |(port, host)| {
                    snapshot.service_index_for_host(host, port).is_some_and(|i| snapshot.services[i].port == port)
                },
            );
            exists || Arc::strong_count(state) > 1
        });
        self.endpoints.retain(|_, c| Arc::strong_count(c) > 1 || c.in_flight.load(Ordering::Relaxed) > 0);
    }

    fn compile(&mut self, snapshot: &Snapshot, index: usize, subset: &str) -> ClusterPlan {
        let service = &snapshot.services[index];
        let subset_name = (!subset.is_empty()).then_some(subset);
        let name: Arc<str> = format!("outbound|{}|{subset}|{}", service.port, service.fqdn).into();
        let policy = snapshot.policy_for(service, subset_name);
        let state = self.states.entry(name.clone()).or_default().clone();
        let mut endpoints_v4 = Vec::new();
        let mut endpoints_v6 = Vec::new();
        for address in snapshot.endpoints_any_family(service, subset_name) {
            let counters = self.endpoints.entry(address).or_default().clone();
            let endpoint = Endpoint { address, counters };
            if address.is_ipv6() {
                endpoints_v6.push(endpoint);
            } else {
                endpoints_v4.push(endpoint);
            }
        }
        ClusterPlan {
            service: service.fqdn.as_str().into(),
            subset: subset.into(),
            port: service.port,
            http2: service.http2,
            outlier: policy.outlier_detection.as_ref().map(OutlierConfig::from_policy),
            max_retries: policy.http_pool.as_ref().and_then(|pool| pool.max_retries).map(|n| n as usize),
            request_limit: request_limit(&policy, service.http2),
            limits: connection_limits(&policy),
            tls: policy.tls.as_ref().filter(|tls| tls.mode != TlsMode::Disable).map(|tls| {
                let namespace =
                    snapshot.model.rule_for_host(&service.fqdn, &service.namespace).map(|r| r.namespace.as_str());
                originate(tls, namespace.unwrap_or(&service.namespace), snapshot, &service.fqdn)
            }),
            policy,
            endpoints_v4,
            endpoints_v6,
            state,
            name,
        }
    }
}

/// The port, subset (empty: none) and host of an `outbound|port|subset|host`
/// cluster name.
pub fn name_fields(name: &str) -> Option<(&str, &str, &str)> {
    let mut fields = name.split('|');
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some("outbound"), Some(port), Some(subset), Some(host)) => Some((port, subset, host)),
        _ => None,
    }
}

/// Client configurations for both protocols, and the name to send as SNI
/// (and check, unless `subjectAltNames` say otherwise).
fn originate(settings: &ClientTls, namespace: &str, snapshot: &Snapshot, fqdn: &str) -> Result<[Tls; 2], TlsError> {
    if settings.mode == TlsMode::IstioMutual {
        return Err(TlsError::Mode("ISTIO_MUTUAL"));
    }
    let material = material(settings, namespace, &snapshot.model.secrets)?;
    let name = settings.sni.clone().unwrap_or_else(|| fqdn.to_owned());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| TlsError::Config(format!("{name:?} is not a valid server name")))?;
    let tls = |http2: bool| -> Result<Tls, TlsError> {
        let config = Arc::new(client_config(settings, &material, http2)?);
        let id = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (settings, &material.ca, &material.cert_chain, &material.key, &name, http2).hash(&mut hasher);
            hasher.finish() | 1
        };
        Ok(Tls { config, server_name: server_name.clone(), id })
    };
    Ok([tls(false)?, tls(true)?])
}

/// How many requests may be under way to one cluster, from
/// `connectionPool`: for HTTP/1.1, `tcp.maxConnections` (one request per
/// connection) plus `http.http1MaxPendingRequests`; for HTTP/2,
/// `http.http2MaxRequests`. Unset limits are unlimited, as in Istio.
fn request_limit(policy: &EffectivePolicy, http2: bool) -> Option<usize> {
    let http = policy.http_pool.as_ref();
    if http2 {
        return http.and_then(|pool| pool.http2_max_requests).map(|n| n as usize);
    }
    let connections = (policy.tcp.max_connections > 0).then_some(policy.tcp.max_connections as usize);
    match (connections, http.and_then(|pool| pool.http1_max_pending_requests)) {
        (Some(c), Some(p)) => Some(c + p as usize),
        _ => None,
    }
}

/// `connectTimeout`, `idleTimeout` and `maxRequestsPerConnection` (0 is
/// unlimited, as in Istio), with Istio's defaults.
fn connection_limits(policy: &EffectivePolicy) -> ConnectionLimits {
    let http = policy.http_pool.as_ref();
    ConnectionLimits {
        connect_timeout: policy.tcp.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        idle_timeout: http.and_then(|pool| pool.idle_timeout).unwrap_or(DEFAULT_IDLE_TIMEOUT),
        max_requests: http.and_then(|pool| pool.max_requests_per_connection).filter(|n| *n > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// `web` in `shop` on port 80, two endpoints, and outlier detection that
    /// ejects at the first 5xx for 30 s.
    fn snapshot() -> Arc<Snapshot> {
        let text = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n",
            "spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n",
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
            "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n",
            "addressType: IPv4\nports: [{name: http, port: 8080}]\n",
            "endpoints: [{addresses: [10.244.0.2]}, {addresses: [10.244.0.3]}]\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\n",
            "spec: {host: web, trafficPolicy: {outlierDetection: ",
            "{consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}}}\n",
        );
        Arc::new(crate::proxy::test_support::snapshot_of(text))
    }

    #[test]
    fn an_ejection_ends_when_the_clock_passes_it() {
        let t0 = Instant::now();
        let clusters = Clusters::default();
        let snapshot = snapshot();
        let plan = clusters.plan(&snapshot, 0, None);
        let config = plan.outlier.clone().expect("outlier detection is on");
        let endpoints = plan.endpoints(false).to_vec();
        assert_eq!(endpoints.len(), 2);
        assert!(plan.observe(endpoints[0].address, Observation::Status(503), &config, 2, t0), "the first 5xx ejects");
        let healthy: Vec<SocketAddr> = plan.healthy(&endpoints, &config, t0).iter().map(|e| e.address).collect();
        assert_eq!(healthy, [endpoints[1].address]);
        let ejections = clusters.ejections(t0);
        assert_eq!((ejections[0].1.host, ejections[0].1.remaining_ms), (endpoints[0].address, 30_000));
        assert_eq!(ejections[0].0, "outbound|80||web.shop.svc.cluster.local");

        let t29 = t0 + Duration::from_secs(29);
        assert_eq!(plan.healthy(&endpoints, &config, t29).len(), 1, "still out at 29 s");
        let t30 = t0 + Duration::from_secs(30);
        assert_eq!(plan.healthy(&endpoints, &config, t30).len(), 2, "back at 30 s");
        assert!(clusters.ejections(t30).is_empty());
    }
}
