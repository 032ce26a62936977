//! Upstream clusters: a service port, or one subset of it, as Envoy names
//! them (`outbound|port|subset|host`). What a request needs of its cluster
//! (endpoints per family, the merged DestinationRule policy, the outlier and
//! pool limits, TLS settings) is worked out once per snapshot and cluster,
//! not per request. The runtime state (round-robin cursor, requests and
//! retries under way, outlier health, when each endpoint joined) lives on
//! across snapshots by name.
//!
//! A DestinationRule with a `workloadSelector` is for some clients only:
//! their requests get a plan of their own, made from that rule, with its
//! own state.

use super::outlier::{Ejected, Observation, OutlierConfig, OutlierState};
use super::upstream::connect::Tls;
use super::upstream::pool::{ConnectionLimits, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
use super::upstream::tls::{client_config, material, TlsError};
use crate::sync::lock;
use mesh_core::destination_rule::{ClientTls, DestinationRuleModel, EffectivePolicy, LoadBalancer, TlsMode};
use mesh_core::locality::Placement;
use mesh_core::snapshot::Snapshot;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One endpoint of a cluster, with its requests in flight (shared by every
/// cluster that holds the address, for LEAST_REQUEST and status).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub counters: Arc<EndpointCounters>,
    /// Set while the endpoint is new to the cluster and the rule asks
    /// for `warmup`.
    pub slow_start: Option<SlowStart>,
    /// Its locality priority and weight for this node's clients (None:
    /// locality plays no part in the cluster).
    pub placement: Option<Placement>,
}

/// Envoy's slow start for an endpoint that joined a cluster at `joined`:
/// its weight grows from `minimumPercent` to whole over the window,
/// `max(min, (t / window)^(1 / aggression))`, `t` counted from one second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    pub joined: Instant,
    pub window: Duration,
    /// `minimumPercent` as a fraction (default 0.1).
    pub min_factor: f64,
    /// At least 1 (default 1: linear).
    pub aggression: f64,
}

impl SlowStart {
    /// The share of its full weight the endpoint has at `now` (1 once the
    /// window is over).
    pub fn factor(&self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.joined);
        if age >= self.window {
            return 1.0;
        }
        let time = age.max(Duration::from_secs(1)).as_secs_f64() / self.window.as_secs_f64();
        time.powf(1.0 / self.aggression).max(self.min_factor).min(1.0)
    }
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
    /// Retries under way, for `http.maxRetries` or `retryBudget`.
    pub retries: Arc<AtomicUsize>,
    outliers: Mutex<OutlierState>,
    members: Mutex<Members>,
}

/// When each endpoint joined the cluster, for slow start. Endpoints there
/// when the proxy first served the cluster are not new to it (None), as
/// Envoy starts only hosts added later slowly.
#[derive(Default)]
struct Members {
    known: bool,
    joined: HashMap<SocketAddr, Option<Instant>>,
}

impl Members {
    /// Records the cluster's endpoints now, forgetting those that left
    /// (one that comes back is new again); the join time of each.
    fn update(&mut self, addresses: &[SocketAddr], now: Instant) -> Vec<Option<Instant>> {
        let first = !std::mem::replace(&mut self.known, true);
        self.joined.retain(|address, _| addresses.contains(address));
        let joined = &mut self.joined;
        addresses.iter().map(|address| *joined.entry(*address).or_insert((!first).then_some(now))).collect()
    }
}

/// What bounds the retries under way to a cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryLimit {
    /// `connectionPool.http.maxRetries` (None: unlimited, as Istio sets it).
    Count(Option<usize>),
    /// `retryBudget`: `percent` of the requests under way, never fewer
    /// than `min_concurrency`; it replaces `maxRetries`, as in Envoy.
    Budget { percent: f64, min_concurrency: usize },
}

impl RetryLimit {
    /// Envoy's defaults for a budget: 20%, at least 3.
    pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
    pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

    fn from_policy(policy: &EffectivePolicy) -> Self {
        match &policy.retry_budget {
            Some(budget) => RetryLimit::Budget {
                percent: budget.percent.unwrap_or(Self::DEFAULT_BUDGET_PERCENT),
                min_concurrency: budget.min_retry_concurrency.unwrap_or(Self::DEFAULT_MIN_RETRY_CONCURRENCY) as usize,
            },
            None => RetryLimit::Count(policy.http_pool.as_ref().and_then(|pool| pool.max_retries).map(|n| n as usize)),
        }
    }

    /// The retries that may be under way with `active` requests under way.
    pub fn limit(&self, active: usize) -> Option<usize> {
        match *self {
            RetryLimit::Count(limit) => limit,
            RetryLimit::Budget { percent, min_concurrency } => {
                Some(min_concurrency.max((active as f64 * percent / 100.0) as usize))
            }
        }
    }
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
    /// `connectionPool.http.maxRetries`, or `retryBudget`.
    pub retry_limit: RetryLimit,
    /// `namespace/name` of the `workloadSelector` rule the plan was made
    /// from (None: the rule for every client, if any).
    pub selected_by: Option<Arc<str>>,
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

    /// How many retries may be under way now (None: no limit): from
    /// `maxRetries`, or the budget's share of the requests under way.
    pub fn max_retries(&self) -> Option<usize> {
        self.retry_limit.limit(self.state.active.load(Ordering::Relaxed))
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
    /// Whether any DestinationRule of the snapshot has a
    /// `workloadSelector` (when none does, no client needs a look-up).
    selectors: bool,
    /// By service index, then subset and selecting rule.
    plans: HashMap<usize, Vec<Arc<ClusterPlan>>>,
    states: HashMap<Arc<str>, Arc<ClusterState>>,
    endpoints: HashMap<SocketAddr, Arc<EndpointCounters>>,
}

/// The client pod of a connection: its labels and namespace (borrowed
/// from `Connection::source`).
pub type Client<'a> = (&'a BTreeMap<String, String>, &'a str);

impl Clusters {
    /// The plan for `subset` (or the whole service) of
    /// `snapshot.services[index]`, as `client` (None: not a known pod)
    /// sees it: from the DestinationRule whose `workloadSelector` picks
    /// the client, if one does.
    pub fn plan(
        &self,
        snapshot: &Arc<Snapshot>,
        index: usize,
        subset: Option<&str>,
        client: Option<Client<'_>>,
    ) -> Arc<ClusterPlan> {
        let mut inner = lock(&self.inner);
        let subset = subset.unwrap_or_default();
        // A request that started before a reload (held by a fault delay,
        // say) gets a plan of its own snapshot, not cached: the cache
        // only moves forward.
        if inner.snapshot.as_ref().is_some_and(|current| current.serial > snapshot.serial) {
            let selected = selected_rule(snapshot, index, client);
            return Arc::new(inner.compile(snapshot, index, subset, selected));
        }
        if !inner.snapshot.as_ref().is_some_and(|current| Arc::ptr_eq(current, snapshot)) {
            inner.renew(snapshot);
        }
        let selected = if inner.selectors { selected_rule(snapshot, index, client) } else { None };
        // Compared in place: no id is built per request.
        let selected_by = selected.map(|rule| (rule.namespace.as_str(), rule.name.as_str()));
        let cached = inner.plans.get(&index).and_then(|plans| {
            plans.iter().find(|p| {
                &*p.subset == subset && p.selected_by.as_deref().and_then(|id| id.split_once('/')) == selected_by
            })
        });
        if let Some(plan) = cached {
            return plan.clone();
        }
        let plan = Arc::new(inner.compile(snapshot, index, subset, selected));
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
        self.selectors = snapshot.model.destination_rules.values().any(|r| r.workload_selector.is_some());
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

    /// The plan of one cluster, from `selected` (a `workloadSelector`
    /// rule picking the client) or else the rule for every client.
    fn compile(
        &mut self,
        snapshot: &Snapshot,
        index: usize,
        subset: &str,
        selected: Option<&DestinationRuleModel>,
    ) -> ClusterPlan {
        let service = &snapshot.services[index];
        let subset_name = (!subset.is_empty()).then_some(subset);
        let name: Arc<str> = format!("outbound|{}|{subset}|{}", service.port, service.fqdn).into();
        let rule = selected.or_else(|| snapshot.model.rule_for_host(&service.fqdn, &service.namespace));
        let policy = rule.map(|rule| rule.effective(subset_name, service.port)).unwrap_or_default();
        // The clients a selecting rule is for are, to Istio, other
        // sidecars with clusters of their own: so their state is apart.
        let selected_by = selected.map(rule_id);
        let state_key: Arc<str> = match &selected_by {
            Some(id) => format!("{name}|{id}").into(),
            None => name.clone(),
        };
        let state = self.states.entry(state_key).or_default().clone();
        let backends = snapshot.endpoints_under(rule, service, subset_name);
        let placements = snapshot.placements(&policy, service, backends.iter().copied());
        let addresses: Vec<SocketAddr> = backends.iter().map(|b| b.address).collect();
        let joined = lock(&state.members).update(&addresses, Instant::now());
        let warmup = policy.warmup.as_ref().filter(|_| slow_start_applies(&policy.load_balancer));
        let mut endpoints_v4 = Vec::new();
        let mut endpoints_v6 = Vec::new();
        for (i, (address, joined)) in addresses.into_iter().zip(joined).enumerate() {
            let counters = self.endpoints.entry(address).or_default().clone();
            let slow_start = warmup.zip(joined).map(|(warmup, joined)| SlowStart {
                joined,
                window: warmup.duration,
                min_factor: warmup.minimum_percent.unwrap_or(DEFAULT_WARMUP_MINIMUM_PERCENT) / 100.0,
                aggression: warmup.aggression.unwrap_or(1.0),
            });
            let placement = placements.as_ref().map(|placed| placed[i]);
            let endpoint = Endpoint { address, counters, slow_start, placement };
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
            retry_limit: RetryLimit::from_policy(&policy),
            selected_by,
            request_limit: request_limit(&policy, service.http2),
            limits: connection_limits(&policy),
            tls: policy.tls.as_ref().filter(|tls| tls.mode != TlsMode::Disable).map(|tls| {
                let namespace = rule.map(|r| r.namespace.as_str());
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

/// Envoy's default `minimumPercent` for slow start.
const DEFAULT_WARMUP_MINIMUM_PERCENT: f64 = 10.0;

/// Envoy has slow start for ROUND_ROBIN and LEAST_REQUEST only.
pub fn slow_start_applies(load_balancer: &LoadBalancer) -> bool {
    matches!(load_balancer, LoadBalancer::RoundRobin | LoadBalancer::LeastRequest)
}

/// The rule with a `workloadSelector` that picks `client` for the service
/// at `index`, if any.
fn selected_rule<'a>(
    snapshot: &'a Snapshot,
    index: usize,
    client: Option<Client<'_>>,
) -> Option<&'a DestinationRuleModel> {
    snapshot.model.selected_rule(&snapshot.services[index].fqdn, client)
}

fn rule_id(rule: &DestinationRuleModel) -> Arc<str> {
    format!("{}/{}", rule.namespace, rule.name).into()
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
        max_duration: policy.tcp.max_connection_duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const WEB: &str = concat!(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n",
        "spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n",
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
        "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n",
        "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
        "- {addresses: [10.244.0.2], targetRef: {kind: Pod, name: web-v1}}\n",
        "- {addresses: [10.244.0.3], targetRef: {kind: Pod, name: web-v2}}\n",
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-v1, namespace: shop, labels: {version: v1}}\n",
        "status: {podIPs: [{ip: 10.244.0.2}]}\n",
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-v2, namespace: shop, labels: {version: v2}}\n",
        "status: {podIPs: [{ip: 10.244.0.3}]}\n",
    );

    fn rule(name: &str, spec: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  host: web\n{spec}")
    }

    fn client(labels: &[(&str, &str)], namespace: &str) -> (BTreeMap<String, String>, String) {
        (labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), namespace.to_owned())
    }

    fn as_client(client: &(BTreeMap<String, String>, String)) -> Client<'_> {
        (&client.0, client.1.as_str())
    }

    #[test]
    fn a_client_picked_by_a_workload_selector_gets_that_rules_subsets_and_policy() {
        let text = [
            WEB,
            &rule("all", "  subsets: [{name: v1, labels: {version: v1}}]\n"),
            &rule(
                "canary",
                "  workloadSelector: {matchLabels: {track: canary}}\n  subsets: [{name: v1, labels: {version: v2}}]\n  trafficPolicy: {connectionPool: {http: {maxRetries: 7}}}\n",
            ),
        ]
        .concat();
        let snapshot = Arc::new(crate::proxy::test_support::snapshot_of(&text));
        let clusters = Clusters::default();
        let addresses =
            |plan: &ClusterPlan| plan.endpoints(false).iter().map(|e| e.address.to_string()).collect::<Vec<_>>();
        let canary = client(&[("track", "canary")], "shop");
        let picked = clusters.plan(&snapshot, 0, Some("v1"), Some(as_client(&canary)));
        assert_eq!(addresses(&picked), ["10.244.0.3:8080"], "v1 as the selecting rule defines it");
        assert_eq!(picked.max_retries(), Some(7));
        assert_eq!(picked.selected_by.as_deref(), Some("shop/canary"));
        for other in [Some(client(&[("track", "stable")], "shop")), Some(client(&[("track", "canary")], "else")), None]
        {
            let plan = clusters.plan(&snapshot, 0, Some("v1"), other.as_ref().map(as_client));
            assert_eq!(addresses(&plan), ["10.244.0.2:8080"], "{other:?}");
            assert_eq!((plan.max_retries(), plan.selected_by.clone()), (None, None));
        }
        assert!(!Arc::ptr_eq(&picked.state, &clusters.plan(&snapshot, 0, Some("v1"), None).state), "state apart");
        assert!(Arc::ptr_eq(&picked, &clusters.plan(&snapshot, 0, Some("v1"), Some(as_client(&canary)))), "cached");
    }

    #[test]
    fn a_retry_budget_takes_the_place_of_max_retries() {
        let text = |policy: &str| [WEB, &rule("web", &format!("  trafficPolicy: {policy}\n"))].concat();
        let plan_of = |policy: &str| {
            Clusters::default().plan(&Arc::new(crate::proxy::test_support::snapshot_of(&text(policy))), 0, None, None)
        };
        let budget =
            plan_of("{retryBudget: {percent: 50, minRetryConcurrency: 2}, connectionPool: {http: {maxRetries: 100}}}");
        assert_eq!(budget.max_retries(), Some(2), "the floor with nothing under way");
        let _active: Vec<_> = (0..10).map(|_| admit(&budget.state.active, None)).collect();
        assert_eq!(budget.max_retries(), Some(5), "half of ten requests under way");
        let defaults = plan_of("{retryBudget: {}}");
        assert_eq!(defaults.max_retries(), Some(3), "Envoy's floor: 3");
        let _active: Vec<_> = (0..100).map(|_| admit(&defaults.state.active, None)).collect();
        assert_eq!(defaults.max_retries(), Some(20), "Envoy's 20%");
        assert_eq!(plan_of("{connectionPool: {http: {maxRetries: 4}}}").max_retries(), Some(4));
        assert_eq!(plan_of("{loadBalancer: {simple: RANDOM}}").max_retries(), None);
    }

    #[test]
    fn only_endpoints_that_join_later_warm_up() {
        let warmup = rule("web", "  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 20, aggression: 2}}}\n");
        let one = WEB.replace("- {addresses: [10.244.0.3], targetRef: {kind: Pod, name: web-v2}}\n", "");
        let clusters = Clusters::default();
        let first = Arc::new(crate::proxy::test_support::snapshot_of(&[one.as_str(), &warmup].concat()));
        let plan = clusters.plan(&first, 0, None, None);
        assert!(plan.endpoints(false)[0].slow_start.is_none(), "there from the start: not new");
        let mut second = crate::proxy::test_support::snapshot_of(&[WEB, &warmup].concat());
        second.serial = first.serial + 1;
        let plan = clusters.plan(&Arc::new(second), 0, None, None);
        let slow: Vec<_> =
            plan.endpoints(false).iter().map(|e| e.slow_start.map(|s| (s.min_factor, s.aggression))).collect();
        assert_eq!(slow, [None, Some((0.2, 2.0))], "the new one warms up, with the rule's settings");
        let random = rule("web", "  trafficPolicy: {loadBalancer: {simple: RANDOM, warmup: {duration: 60s}}}\n");
        let mut members = Members::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let now = Instant::now();
        assert_eq!(members.update(&[a], now), [None]);
        assert_eq!(members.update(&[a, b], now), [None, Some(now)]);
        assert_eq!(members.update(&[b], now), [Some(now)]);
        let later = now + Duration::from_secs(5);
        assert_eq!(members.update(&[a, b], later), [Some(later), Some(now)], "one that left and came back is new");
        let snapshot = Arc::new(crate::proxy::test_support::snapshot_of(&[WEB, &random].concat()));
        let clusters = Clusters::default();
        clusters.plan(&snapshot, 0, None, None);
        assert!(!slow_start_applies(&clusters.plan(&snapshot, 0, None, None).policy.load_balancer), "RANDOM has none");
    }

    #[test]
    fn an_ejection_ends_when_the_clock_passes_it() {
        let t0 = Instant::now();
        let clusters = Clusters::default();
        let snapshot = snapshot();
        let plan = clusters.plan(&snapshot, 0, None, None);
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
