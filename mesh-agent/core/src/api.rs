//! The Kubernetes and Istio objects the agent reads, as serde types.
//!
//! Field names and meanings are the API server's; unknown fields are ignored
//! as the API server would keep them. Both config sources (a directory of
//! YAML, the API server) decode into these same types, so they feed one
//! model. Numbers Istio declares unsigned are read signed, and enums as
//! text, so that a bad value is reported by field by validation rather
//! than as a decode error.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: LabelList,
    pub generation: Option<i64>,
    pub uid: Option<String>,
}

/// `metadata.labels` as read: the pairs sorted by key in one allocation. A
/// `BTreeMap` takes a 544-byte node even for the one label of an
/// EndpointSlice, and a large cluster keeps tens of thousands of objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelList(Box<[(String, String)]>);

impl LabelList {
    pub fn get(&self, key: &str) -> Option<&String> {
        let at = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(&self.0[at].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl std::ops::Index<&str> for LabelList {
    type Output = String;

    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no label {key:?}"))
    }
}

impl<'de> Deserialize<'de> for LabelList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(LabelList(map.into_iter().collect()))
    }
}

impl ObjectMeta {
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or("default")
    }
}

/// An object of a kind the agent understands, tagged by `kind`.
// Every object is kept (in an `Arc`) while it serves, at the size of the
// largest variant: the kinds larger than a Service are boxed, or each of a
// large cluster's EndpointSlices would take a DestinationRule's 1.4 KB.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Pod(Pod),
    DestinationRule(Box<DestinationRule>),
    VirtualService(Box<VirtualService>),
    Gateway(Gateway),
    ServiceEntry(Box<ServiceEntry>),
    Sidecar(Box<Sidecar>),
    WorkloadEntry(Box<WorkloadEntry>),
    Secret(Secret),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::EndpointSlice(_) => "EndpointSlice",
            Resource::Pod(_) => "Pod",
            Resource::DestinationRule(_) => "DestinationRule",
            Resource::VirtualService(_) => "VirtualService",
            Resource::Gateway(_) => "Gateway",
            Resource::ServiceEntry(_) => "ServiceEntry",
            Resource::Sidecar(_) => "Sidecar",
            Resource::WorkloadEntry(_) => "WorkloadEntry",
            Resource::Secret(_) => "Secret",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::DestinationRule(o) => &o.metadata,
            Resource::VirtualService(o) => &o.metadata,
            Resource::Gateway(o) => &o.metadata,
            Resource::ServiceEntry(o) => &o.metadata,
            Resource::Sidecar(o) => &o.metadata,
            Resource::WorkloadEntry(o) => &o.metadata,
            Resource::Secret(o) => &o.metadata,
        }
    }
}

// --- core/v1 Service -------------------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub selector: BTreeMap<String, String>,
    /// `PreferClose`: endpoints in the client's zone first.
    pub traffic_distribution: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    pub port: i64,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

// --- discovery.k8s.io/v1 EndpointSlice --------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointSlice {
    pub metadata: ObjectMeta,
    pub address_type: String,
    pub endpoints: Vec<Endpoint>,
    pub ports: Vec<EndpointPort>,
}

/// Only the fields the model reads, compactly: a large cluster keeps
/// hundreds of thousands of these (`nodeName`, `hints` and the rest are
/// dropped as they are read).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Endpoint {
    /// Almost always one: kept inline.
    pub addresses: smallvec::SmallVec<[Box<str>; 1]>,
    pub conditions: EndpointConditions,
    pub target_ref: Option<Box<ObjectReference>>,
    /// `topology.kubernetes.io/zone` of its node.
    pub zone: Option<Box<str>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Unset means ready, as the API documents.
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
}

// --- core/v1 Pod (labels and addresses only) --------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub status: PodStatus,
    pub spec: PodSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PodStatus {
    /// `Succeeded` and `Failed` pods are done: their addresses may already
    /// belong to new pods.
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PodIp {
    pub ip: String,
}

// --- core/v1 Secret (TLS credentials a DestinationRule names) ---------------

#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Base64, as the API server serves it.
    pub data: BTreeMap<String, String>,
    /// Plain text (in files; the API server folds it into `data`).
    pub string_data: BTreeMap<String, String>,
}

/// Key names only: secret material never goes to a log.
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("Secret").field("metadata", &self.metadata).field("keys", &keys).finish()
    }
}

// --- networking.istio.io DestinationRule ------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    pub spec: DestinationRuleSpec,
}

impl DestinationRule {
    /// The Secrets its `tls` blocks name by `credentialName` (top level,
    /// per port, per subset), in its own namespace.
    pub fn credential_names(&self) -> Vec<String> {
        let from_policy = |policy: &TrafficPolicy| -> Vec<String> {
            std::iter::once(&policy.tls)
                .chain(policy.port_level_settings.iter().map(|p| &p.tls))
                .filter_map(|tls| tls.as_ref()?.credential_name.clone())
                .collect()
        };
        let spec = &self.spec;
        let mut names: Vec<String> = spec
            .traffic_policy
            .iter()
            .chain(spec.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()))
            .flat_map(from_policy)
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
    /// Namespaces the rule applies to services of: `*`, `.` or names.
    pub export_to: Vec<String>,
    /// The client workloads (in the rule's namespace) the rule is for;
    /// unset: every client.
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadSelector {
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
    pub port_level_settings: Vec<PortTrafficPolicy>,
    pub tunnel: Option<TunnelSettings>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct PortSelector {
    pub number: i64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHashLb>,
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Deprecated form of `warmup.duration`.
    pub warmup_duration_secs: Option<String>,
    pub warmup: Option<WarmupConfiguration>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsistentHashLb {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<RingHash>,
    pub maglev: Option<MagLev>,
    pub minimum_ring_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpCookie {
    pub name: Option<String>,
    pub path: Option<String>,
    pub ttl: Option<String>,
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CookieAttribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RingHash {
    pub minimum_ring_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct MagLev {
    pub table_size: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct LocalityLoadBalancerSetting {
    pub distribute: Vec<LocalityDistribute>,
    pub failover: Vec<LocalityFailover>,
    pub failover_priority: Vec<String>,
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LocalityDistribute {
    pub from: String,
    /// Locality to weight; signed so that a negative weight is reported by
    /// field.
    pub to: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LocalityFailover {
    pub from: String,
    pub to: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WarmupConfiguration {
    pub duration: Option<String>,
    pub minimum_percent: Option<f64>,
    pub aggression: Option<f64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpSettings>,
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpSettings {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub tcp_keepalive: Option<TcpKeepalive>,
    pub max_connection_duration: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TcpKeepalive {
    pub probes: Option<i64>,
    pub time: Option<String>,
    pub interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
    /// `DEFAULT`, `DO_NOT_UPGRADE` or `UPGRADE`.
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: what `consecutiveGatewayErrors` counts.
    pub consecutive_errors: Option<i64>,
    pub split_external_local_origin_errors: Option<bool>,
    pub consecutive_local_origin_failures: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<i64>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub min_health_percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// `DISABLE` (the default), `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    pub mode: Option<String>,
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub ca_crl: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    pub protocol: Option<String>,
    pub target_host: String,
    pub target_port: i64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProxyProtocol {
    /// `V1` (the default) or `V2`.
    pub version: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct RetryBudget {
    pub percent: Option<f64>,
    pub min_retry_concurrency: Option<i64>,
}

// --- networking.istio.io VirtualService -------------------------------------
//
// One schema for v1, v1beta1 and v1alpha3. Integers that Istio declares
// unsigned are read signed so that a negative value is reported by field
// rather than as a decode error.

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualService {
    pub metadata: ObjectMeta,
    pub spec: VirtualServiceSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    pub hosts: Vec<String>,
    /// Empty means the mesh (sidecars) only; `mesh` names the mesh.
    pub gateways: Vec<String>,
    pub export_to: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
}

/// The blocks most rules leave out are boxed: inline, each rule took 1.1 KB
/// whatever it set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<Box<HttpRedirect>>,
    pub direct_response: Option<Box<HttpDirectResponse>>,
    pub rewrite: Option<Box<HttpRewrite>>,
    pub timeout: Option<String>,
    pub retries: Option<Box<HttpRetry>>,
    pub fault: Option<Box<HttpFaultInjection>>,
    pub mirror: Option<Box<Destination>>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<i64>,
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub cors_policy: Option<Box<CorsPolicy>>,
    pub headers: Option<Box<Headers>>,
    /// The VirtualService (one without hosts) whose rules this rule
    /// stands for, merged with this rule's matches.
    pub delegate: Option<Box<Delegate>>,
}

/// `http[].delegate`: a VirtualService by name; `namespace` defaults to
/// the delegating VirtualService's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Delegate {
    pub name: String,
    pub namespace: Option<String>,
}

/// `exact`, `prefix` or `regex` (one of them); none set is an empty match.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    /// A `null` value is kept so that it can be reported by name.
    pub headers: BTreeMap<String, Option<StringMatch>>,
    pub without_headers: BTreeMap<String, Option<StringMatch>>,
    pub query_params: BTreeMap<String, Option<StringMatch>>,
    pub port: Option<i64>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
    pub ignore_uri_case: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HeaderOperations {
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<i64>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpDirectResponse {
    pub status: i64,
    pub body: Option<HttpBody>,
}

/// `string`, or `bytes` as base64 (protobuf JSON).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    pub rewrite: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval of the exponential backoff (Envoy's default: 25ms).
    pub backoff: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpFaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: Option<String>,
    pub exponential_delay: Option<String>,
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    pub percent: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: Option<i64>,
    /// A gRPC code name, e.g. `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Percent {
    pub value: f64,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct HttpMirrorPolicy {
    pub destination: Option<Destination>,
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Deprecated: exact origins, matched beside `allowOrigins`.
    pub allow_origin: Vec<String>,
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct L4MatchAttributes {
    pub destination_subnets: Vec<String>,
    pub port: Option<i64>,
    /// The client's address: an IP or a CIDR block.
    pub source_subnet: Option<String>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    pub sni_hosts: Vec<String>,
    pub destination_subnets: Vec<String>,
    pub port: Option<i64>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
}

// --- networking.istio.io Gateway --------------------------------------------
//
// One schema for v1, v1beta1 and v1alpha3; enums as text and unsigned
// integers signed, as for the other kinds, so that validation names the
// field of a bad value.

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
}

impl Gateway {
    /// The Secrets its servers name by `credentialName`, in its own
    /// namespace.
    pub fn credential_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (self.spec.servers.iter())
            .filter_map(|server| server.tls.as_ref()?.credential_name.clone())
            .filter(|name| !name.is_empty())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The gateway workloads (in any namespace) the Gateway applies to;
    /// empty: every gateway workload.
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Server {
    pub port: Option<IstioPort>,
    /// An IP address (or Istio's `unix://` socket, which is refused here).
    pub bind: Option<String>,
    /// `[namespace/]dnsName`: `*/`, `./` or a namespace, then `*`,
    /// `*.example.com` or a name.
    pub hosts: Vec<String>,
    pub tls: Option<ServerTlsSettings>,
    /// Not implemented by Istio either.
    pub default_endpoint: Option<String>,
    pub name: Option<String>,
}

/// Istio's `Port`, as Gateway servers, ServiceEntries and Sidecar egress
/// listeners write it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct IstioPort {
    pub number: i64,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `TCP`, `TLS`, `UDP`, `MONGO`...
    /// (any case where Istio allows it).
    pub protocol: Option<String>,
    pub name: Option<String>,
    /// A ServiceEntry's; deprecated, and refused on Gateways, by Istio.
    pub target_port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTlsSettings {
    pub https_redirect: Option<bool>,
    /// `PASSTHROUGH` (the default), `SIMPLE`, `MUTUAL`, `AUTO_PASSTHROUGH`,
    /// `ISTIO_MUTUAL` or `OPTIONAL_MUTUAL`.
    pub mode: Option<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    /// A Secret in the Gateway's namespace.
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub verify_certificate_spki: Vec<String>,
    pub verify_certificate_hash: Vec<String>,
    /// `TLS_AUTO` (the default), `TLSV1_0` .. `TLSV1_3`.
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Vec<String>,
}

// --- networking.istio.io ServiceEntry ---------------------------------------
//
// One schema for v1, v1beta1 and v1alpha3, read as the other Istio kinds.

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub metadata: ObjectMeta,
    pub spec: ServiceEntrySpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Vec<String>,
    /// Virtual IPs, or CIDR blocks.
    pub addresses: Vec<String>,
    pub ports: Vec<IstioPort>,
    /// `MESH_EXTERNAL` (the default) or `MESH_INTERNAL`.
    pub location: Option<String>,
    /// `NONE` (the default), `STATIC`, `DNS` or `DNS_ROUND_ROBIN`.
    pub resolution: Option<String>,
    pub endpoints: Vec<WorkloadEntrySpec>,
    pub workload_selector: Option<EntryWorkloadSelector>,
    pub export_to: Vec<String>,
    pub subject_alt_names: Vec<String>,
}

/// An endpoint of a ServiceEntry (Istio's `WorkloadEntry` spec).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// An IP address, or a host name (resolution DNS).
    pub address: String,
    /// Port name of the entry → the endpoint's port.
    pub ports: BTreeMap<String, i64>,
    pub labels: BTreeMap<String, String>,
    pub network: Option<String>,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
    pub weight: Option<i64>,
    pub service_account: Option<String>,
}

/// ServiceEntry's and Sidecar's selector: `labels`, not `matchLabels`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct EntryWorkloadSelector {
    pub labels: BTreeMap<String, String>,
}

// --- networking.istio.io Sidecar --------------------------------------------

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Sidecar {
    pub metadata: ObjectMeta,
    pub spec: SidecarSpec,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SidecarSpec {
    pub workload_selector: Option<EntryWorkloadSelector>,
    /// Inbound listeners: kept whole (not served; warned).
    pub ingress: Vec<serde_json::Value>,
    pub egress: Vec<SidecarEgress>,
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// Kept whole (not served; warned).
    pub inbound_connection_pool: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SidecarEgress {
    pub port: Option<IstioPort>,
    pub bind: Option<String>,
    pub capture_mode: Option<String>,
    /// `namespace/dnsName`: `*/`, `./`, `~/` or a namespace, then `*`,
    /// `*.example.com` or a name.
    pub hosts: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY`.
    pub mode: Option<String>,
    pub egress_proxy: Option<serde_json::Value>,
}

// --- networking.istio.io WorkloadEntry --------------------------------------

/// A workload outside Kubernetes (a VM), for ServiceEntries to select by
/// its labels; its spec is a ServiceEntry endpoint's.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub metadata: ObjectMeta,
    pub spec: WorkloadEntrySpec,
}
