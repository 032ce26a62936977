//! DestinationRule traffic policy: validation into domain types and the
//! Istio rules for which policy applies to a (subset, port).

use crate::model::{parse_port, FieldError};
use crate::resources::{self, LoadBalancerSettings, TrafficPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The Maglev table the kernel uses where a rule asks for a ring hash.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Istio's root configuration namespace: its rules apply mesh-wide, after
/// the service's own namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    LeastRequest,
    RoundRobin,
    Random,
    Passthrough,
    ConsistentHash { key: HashKey, table: HashTable },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    UseSourceIp,
    HttpHeaderName(String),
    HttpCookie {
        name: String,
        path: Option<String>,
        ttl: Option<String>,
    },
    HttpQueryParameterName(String),
    /// `consistentHash` with no hash key, which Istio accepts: Envoy then
    /// hashes a random value for each request, so it balances like RANDOM.
    Unset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashTable {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u32 },
}

/// One level of policy (top level, a subset, or a port of either): the four
/// fields Istio merges. At a subset, a field set replaces the same field of
/// the top level and an unset one inherits; a matching port-level entry
/// replaces all four at once (unset means the default there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyLevel {
    pub load_balancer: Option<LoadBalancer>,
    /// One unit: a level that sets only `http` drops an inherited `tcp`.
    pub connection_pool: Option<ConnectionPool>,
    /// Not used at L4; kept so the merge replaces it as Istio does.
    pub outlier_detection: Option<serde_yaml::Value>,
    /// Not used at L4; kept so the merge replaces it as Istio does.
    pub tls: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    /// Not used at L4 (the L7 proxy's limits).
    pub http: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpPool {
    /// 0 means unlimited, as in Istio.
    pub max_connections: u32,
    pub connect_timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub base: PolicyLevel,
    pub ports: BTreeMap<u16, PortPolicy>,
}

/// One `portLevelSettings` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    /// Its position in `portLevelSettings` as written, for messages.
    pub index: usize,
    pub level: PolicyLevel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubsetModel {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: Option<Policy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationRuleModel {
    pub namespace: String,
    pub name: String,
    /// The host as a fully qualified name (short names resolved in the
    /// rule's namespace), possibly a `*.` wildcard or `*`.
    pub host: String,
    /// `spec.exportTo` as written: empty means every namespace.
    pub export_to: Vec<String>,
    pub policy: Option<Policy>,
    pub subsets: Vec<SubsetModel>,
}

/// What applies to traffic for one (subset, port), all levels merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    pub load_balancer: LoadBalancer,
    pub tcp: TcpPool,
    /// `connectionPool.http`, for the L7 proxy.
    pub http_pool: Option<serde_yaml::Value>,
    pub outlier_detection: Option<serde_yaml::Value>,
    pub tls: Option<serde_yaml::Value>,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        Self {
            load_balancer: LoadBalancer::LeastRequest,
            tcp: TcpPool::default(),
            http_pool: None,
            outlier_detection: None,
            tls: None,
        }
    }
}

impl PolicyLevel {
    /// A subset's policy over the level below: each field it sets replaces.
    fn overlay(&mut self, other: &PolicyLevel) {
        if other.load_balancer.is_some() {
            self.load_balancer.clone_from(&other.load_balancer);
        }
        if other.connection_pool.is_some() {
            self.connection_pool.clone_from(&other.connection_pool);
        }
        if other.outlier_detection.is_some() {
            self.outlier_detection.clone_from(&other.outlier_detection);
        }
        if other.tls.is_some() {
            self.tls.clone_from(&other.tls);
        }
    }
}

impl Policy {
    /// The level for `port`: a matching port-level entry replaces the base
    /// whole (port-level settings do not inherit).
    fn at_port(&self, port: u16) -> PolicyLevel {
        self.ports.get(&port).map_or_else(|| self.base.clone(), |p| p.level.clone())
    }

    fn dangling_ports(&self, path: &str, host: &str, service_ports: &BTreeSet<u16>) -> Vec<FieldError> {
        let mut dangling: Vec<(usize, u16)> = self
            .ports
            .iter()
            .filter(|(port, _)| !service_ports.contains(port))
            .map(|(port, p)| (p.index, *port))
            .collect();
        dangling.sort_unstable();
        dangling
            .into_iter()
            .map(|(index, port)| {
                FieldError::new(
                    format!("{path}.portLevelSettings[{index}].port.number"),
                    format!("port {port} names no port of Service {host} (it has {service_ports:?})"),
                )
            })
            .collect()
    }
}

impl DestinationRuleModel {
    /// Istio's MergeTrafficPolicy: the top-level policy, replaced whole by
    /// its `portLevelSettings` entry for `port` if there is one; then the
    /// subset's policy field by field; then the subset's `portLevelSettings`
    /// entry for `port`, which replaces all four fields again.
    pub fn effective(&self, subset: Option<&str>, port: u16) -> EffectivePolicy {
        let mut level = self.policy.as_ref().map(|p| p.at_port(port)).unwrap_or_default();
        if let Some(subset_policy) =
            subset.and_then(|name| self.subsets.iter().find(|s| s.name == name)).and_then(|s| s.policy.as_ref())
        {
            level.overlay(&subset_policy.base);
            if let Some(port_level) = subset_policy.ports.get(&port) {
                level = port_level.level.clone();
            }
        }
        EffectivePolicy {
            load_balancer: level.load_balancer.unwrap_or(LoadBalancer::LeastRequest),
            tcp: level.connection_pool.as_ref().and_then(|pool| pool.tcp.clone()).unwrap_or_default(),
            http_pool: level.connection_pool.and_then(|pool| pool.http),
            outlier_detection: level.outlier_detection,
            tls: level.tls,
        }
    }

    /// Every `portLevelSettings` entry (top level and subsets) naming a port
    /// the Service does not have, by its index as written. Empty: all good.
    pub fn check_ports(&self, service_ports: &BTreeSet<u16>) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(policy) = &self.policy {
            errors.extend(policy.dangling_ports("spec.trafficPolicy", &self.host, service_ports));
        }
        for (i, subset) in self.subsets.iter().enumerate() {
            if let Some(policy) = &subset.policy {
                let path = format!("spec.subsets[{i}].trafficPolicy");
                errors.extend(policy.dangling_ports(&path, &self.host, service_ports));
            }
        }
        errors
    }

    /// Drops the `portLevelSettings` entries naming ports not in `service_ports`.
    pub fn retain_ports(&mut self, service_ports: &BTreeSet<u16>) {
        let policies = self.policy.iter_mut().chain(self.subsets.iter_mut().filter_map(|s| s.policy.as_mut()));
        for policy in policies {
            policy.ports.retain(|port, _| service_ports.contains(port));
        }
    }

    /// Whether the rule may apply to a service in `namespace`: always in its
    /// own namespace; elsewhere when `exportTo` is empty, has `*`, or names it.
    pub fn visible_in(&self, namespace: &str) -> bool {
        namespace == self.namespace
            || self.export_to.is_empty()
            || self.export_to.iter().any(|to| to == "*" || to == namespace)
    }
}

/// Resolves a DestinationRule host as Istio does: a name without dots is
/// short and lives in the rule's namespace; anything else is taken as is
/// (a trailing dot, which only makes the name absolute, is dropped).
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host.contains('.') || host == "*" {
        host.strip_suffix('.').unwrap_or(host).to_owned()
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 63 at most.
pub fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Istio's check of a DestinationRule host: lowercase DNS-1123 labels, the
/// first of which may be `*`; a trailing dot is allowed; the top-level
/// label is not all digits (an IP address is not a host).
fn validate_host(host: &str) -> Result<(), String> {
    let wrong = |why: &str| {
        Err(format!("{host:?} is not a lowercase DNS-1123 name{why} (a leading `*.` wildcard or `*` alone is allowed)"))
    };
    if host == "*" {
        return Ok(());
    }
    if host.len() > 255 {
        return wrong(": longer than 255 characters");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let name = name.strip_prefix("*.").unwrap_or(name);
    if let Some(label) = name.split('.').find(|l| !is_dns1123_label(l)) {
        let why = if label.bytes().any(|b| b.is_ascii_uppercase()) {
            format!(": {label:?} has upper case")
        } else {
            format!(": label {label:?} is invalid")
        };
        return wrong(&why);
    }
    if name.rsplit('.').next().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit())) {
        return wrong(": its top-level label is all digits");
    }
    Ok(())
}

fn validate_export_to(export_to: &[String]) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for (i, to) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if to != "*" && to != "." && !is_dns1123_label(to) {
            return Err(FieldError::new(field, format!("{to:?} is not `*`, `.` or a namespace name")));
        }
        if !seen.insert(to.as_str()) {
            return Err(FieldError::new(field, format!("{to:?} is listed twice")));
        }
    }
    if seen.contains("*") && seen.len() > 1 {
        let i = export_to.iter().position(|to| to == "*").unwrap_or(0);
        return Err(FieldError::new(format!("spec.exportTo[{i}]"), "`*` cannot be combined with other entries"));
    }
    Ok(())
}

pub fn validate_destination_rule(
    rule: &resources::DestinationRule,
    cluster_domain: &str,
) -> Result<DestinationRuleModel, FieldError> {
    let spec = &rule.spec;
    let namespace = rule.metadata.namespace_or_default().to_owned();
    if spec.host.is_empty() {
        return Err(FieldError::new("spec.host", "required"));
    }
    validate_host(&spec.host).map_err(|message| FieldError::new("spec.host", message))?;
    validate_export_to(&spec.export_to)?;
    let policy = spec.traffic_policy.as_ref().map(|p| validate_policy("spec.trafficPolicy", p)).transpose()?;
    let mut subsets = Vec::new();
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let at = |f: &str| format!("spec.subsets[{i}].{f}");
        if subset.name.is_empty() {
            return Err(FieldError::new(at("name"), "required"));
        }
        if !names.insert(subset.name.as_str()) {
            return Err(FieldError::new(at("name"), format!("subset {:?} is defined twice", subset.name)));
        }
        if subset.labels.is_empty() {
            return Err(FieldError::new(
                at("labels"),
                format!("subset {:?} has no labels, so it selects no pods", subset.name),
            ));
        }
        let policy = subset.traffic_policy.as_ref().map(|p| validate_policy(&at("trafficPolicy"), p)).transpose()?;
        subsets.push(SubsetModel { name: subset.name.clone(), labels: subset.labels.clone(), policy });
    }
    Ok(DestinationRuleModel {
        host: resolve_host(&spec.host, &namespace, cluster_domain),
        namespace,
        name: rule.metadata.name.clone(),
        export_to: spec.export_to.clone(),
        policy,
        subsets,
    })
}

fn validate_policy(path: &str, policy: &TrafficPolicy) -> Result<Policy, FieldError> {
    let is_empty = policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
        && policy.tunnel.is_none()
        && policy.proxy_protocol.is_none()
        && policy.retry_budget.is_none();
    if is_empty {
        return Err(FieldError::new(path, "must set at least one field (Istio rejects an empty trafficPolicy)"));
    }
    let base = validate_level(
        path,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    )?;
    let mut ports = BTreeMap::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}]");
        let number = port_policy.port.as_ref().ok_or_else(|| FieldError::new(format!("{at}.port"), "required"))?.number;
        let number = parse_port(&format!("{at}.port.number"), number)?;
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            return Err(FieldError::new(
                &at,
                "sets only `port`: needs loadBalancer, connectionPool, outlierDetection or tls (Istio rejects it)",
            ));
        }
        let level = validate_level(
            &at,
            port_policy.load_balancer.as_ref(),
            port_policy.connection_pool.as_ref(),
            port_policy.outlier_detection.as_ref(),
            port_policy.tls.as_ref(),
        )?;
        if ports.insert(number, PortPolicy { index: i, level }).is_some() {
            return Err(FieldError::new(format!("{at}.port.number"), format!("port {number} has settings twice")));
        }
    }
    Ok(Policy { base, ports })
}

fn validate_level(
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    pool: Option<&resources::ConnectionPoolSettings>,
    outlier_detection: Option<&serde_yaml::Value>,
    tls: Option<&serde_yaml::Value>,
) -> Result<PolicyLevel, FieldError> {
    let load_balancer =
        load_balancer.map(|lb| validate_load_balancer(&format!("{path}.loadBalancer"), lb)).transpose()?;
    let connection_pool = pool.map(|pool| validate_pool(&format!("{path}.connectionPool"), pool)).transpose()?;
    Ok(PolicyLevel { load_balancer, connection_pool, outlier_detection: outlier_detection.cloned(), tls: tls.cloned() })
}

fn validate_pool(path: &str, pool: &resources::ConnectionPoolSettings) -> Result<ConnectionPool, FieldError> {
    if pool.tcp.is_none() && pool.http.is_none() {
        return Err(FieldError::new(path, "must set tcp or http (Istio rejects an empty connectionPool)"));
    }
    let tcp = match &pool.tcp {
        None => None,
        Some(tcp) => {
            let at = format!("{path}.tcp");
            let max_connections = match tcp.max_connections {
                None => 0,
                Some(n) => u32::try_from(n).map_err(|_| {
                    FieldError::new(
                        format!("{at}.maxConnections"),
                        format!("{n} is not a connection count (0 to 4294967295)"),
                    )
                })?,
            };
            let connect_timeout = match tcp.connect_timeout.as_deref() {
                None => None,
                Some(text) => {
                    let field = format!("{at}.connectTimeout");
                    let timeout = parse_duration(&field, text)?;
                    if timeout < Duration::from_millis(1) {
                        return Err(FieldError::new(field, format!("{text:?} is under 1ms (Istio's minimum)")));
                    }
                    Some(timeout)
                }
            };
            Some(TcpPool { max_connections, connect_timeout })
        }
    };
    Ok(ConnectionPool { tcp, http: pool.http.clone() })
}

/// A `loadBalancer` that is set always decides the level's algorithm: with
/// neither `simple` nor `consistentHash` (or `simple: UNSPECIFIED`) it is
/// Istio's default, LEAST_REQUEST, and it still replaces an inherited one.
fn validate_load_balancer(path: &str, lb: &LoadBalancerSettings) -> Result<LoadBalancer, FieldError> {
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => Err(FieldError::new(path, "simple and consistentHash are mutually exclusive")),
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => Ok(LoadBalancer::LeastRequest),
            "ROUND_ROBIN" => Ok(LoadBalancer::RoundRobin),
            "RANDOM" => Ok(LoadBalancer::Random),
            "PASSTHROUGH" => Ok(LoadBalancer::Passthrough),
            other => Err(FieldError::new(
                format!("{path}.simple"),
                format!("unknown algorithm {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
            )),
        },
        (None, Some(hash)) => validate_consistent_hash(&format!("{path}.consistentHash"), hash),
        (None, None) => Ok(LoadBalancer::LeastRequest),
    }
}

fn validate_consistent_hash(path: &str, hash: &resources::ConsistentHashLb) -> Result<LoadBalancer, FieldError> {
    let mut keys = Vec::new();
    if let Some(header) = &hash.http_header_name {
        if header.is_empty() {
            return Err(FieldError::new(format!("{path}.httpHeaderName"), "must not be empty"));
        }
        keys.push(HashKey::HttpHeaderName(header.to_ascii_lowercase()));
    }
    if let Some(cookie) = &hash.http_cookie {
        let field = |name: &str| cookie.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let name = field("name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| FieldError::new(format!("{path}.httpCookie.name"), "required"))?;
        if let Some(ttl) = field("ttl") {
            parse_duration(&format!("{path}.httpCookie.ttl"), &ttl)?;
        }
        keys.push(HashKey::HttpCookie { name, path: field("path"), ttl: field("ttl") });
    }
    if hash.use_source_ip == Some(true) {
        keys.push(HashKey::UseSourceIp);
    }
    if let Some(param) = &hash.http_query_parameter_name {
        if param.is_empty() {
            return Err(FieldError::new(format!("{path}.httpQueryParameterName"), "must not be empty"));
        }
        keys.push(HashKey::HttpQueryParameterName(param.clone()));
    }
    let key = match keys.len() {
        0 => HashKey::Unset,
        1 => keys.remove(0),
        _ => return Err(FieldError::new(path, "only one hash key may be set")),
    };
    // The deprecated top-level minimumRingSize; 0 is proto3's "unset".
    let legacy_ring_size = hash.minimum_ring_size.filter(|n| *n != 0);
    if legacy_ring_size.is_some() && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
        return Err(FieldError::new(
            format!("{path}.minimumRingSize"),
            "cannot be set together with maglev or ringHash (it is the deprecated form of ringHash.minimumRingSize)",
        ));
    }
    let table = match (&hash.ring_hash, &hash.maglev) {
        (Some(_), Some(_)) => return Err(FieldError::new(path, "ringHash and maglev are mutually exclusive")),
        (_, Some(maglev)) => {
            HashTable::Maglev { table_size: maglev_table_size(&format!("{path}.maglev.tableSize"), maglev.table_size)? }
        }
        (Some(ring), None) => HashTable::RingHash {
            minimum_ring_size: ring_size(&format!("{path}.ringHash.minimumRingSize"), ring.minimum_ring_size)?,
        },
        (None, None) => {
            HashTable::RingHash { minimum_ring_size: ring_size(&format!("{path}.minimumRingSize"), legacy_ring_size)? }
        }
    };
    Ok(LoadBalancer::ConsistentHash { key, table })
}

/// Largest Maglev table the kernel map is sized for per group (Istio's own
/// limit, 5000011, is higher).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_000_003;

fn maglev_table_size(path: &str, size: Option<i64>) -> Result<u32, FieldError> {
    // Istio has no default here: 0 is proto3's "unset".
    let size = size.filter(|s| *s != 0).ok_or_else(|| FieldError::new(path, "tableSize must be set for maglev"))?;
    let size = u32::try_from(size).ok().filter(|s| *s > 1).ok_or_else(|| {
        FieldError::new(path, format!("{size} is out of range (a prime up to {MAX_MAGLEV_TABLE_SIZE})"))
    })?;
    if !is_prime(size as u64) {
        return Err(FieldError::new(path, format!("{size} is not a prime number")));
    }
    if size > MAX_MAGLEV_TABLE_SIZE {
        return Err(FieldError::new(
            path,
            format!("{size} is larger than {MAX_MAGLEV_TABLE_SIZE}, the kernel map's limit per service"),
        ));
    }
    Ok(size)
}

fn ring_size(path: &str, size: Option<i64>) -> Result<u64, FieldError> {
    match size {
        None | Some(0) => Ok(DEFAULT_MINIMUM_RING_SIZE),
        Some(n) => u64::try_from(n).map_err(|_| FieldError::new(path, format!("{n} is negative"))),
    }
}

pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The longest duration accepted: protobuf's Duration range (10,000 years).
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Parses a protobuf-JSON duration as Istio writes them: `10s`, `1.5s`,
/// `100ms`, `2m`, `1h`, `1h30m`, `250us`. Exact decimal arithmetic with
/// checked operations: it never panics, and anything beyond
/// [`MAX_DURATION`] is an error.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    let invalid = || FieldError::new(field, format!("{text:?} is not a duration (e.g. 10s, 100ms, 1m)"));
    let too_long = || FieldError::new(field, format!("{text:?} is longer than the longest duration (10,000 years)"));
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let max_nanos = MAX_DURATION.as_nanos();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let number = &rest[..number_end];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let unit_end =
            rest[number_end..].find(|c: char| c.is_ascii_digit()).map(|i| number_end + i).unwrap_or(rest.len());
        let unit_nanos: u128 = match &rest[number_end..unit_end] {
            "h" => 3600 * NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "s" => NANOS_PER_SEC,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(invalid()),
        };
        // Digits only, so parsing fails only when the number is too large.
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_long())? };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
        // Digits past the 18th are below a nanosecond even in hours.
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            nanos = nanos.checked_add(digits * unit_nanos / 10u128.pow(fraction.len() as u32)).ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).filter(|t| *t <= max_nanos).ok_or_else(too_long)?;
        rest = &rest[unit_end..];
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resource;
    use crate::source::parse_file;

    fn rule(spec: &str) -> Result<DestinationRuleModel, FieldError> {
        let text = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: shop}}\nspec:\n{spec}");
        let objects = parse_file("t.yaml", &text).unwrap();
        let Resource::DestinationRule(dr) = &objects[0].resource else { unreachable!() };
        validate_destination_rule(dr, "cluster.local")
    }

    #[test]
    fn default_is_least_request_and_unlimited() {
        let r = rule("  host: web\n").unwrap();
        assert_eq!(r.host, "web.shop.svc.cluster.local");
        assert_eq!(r.effective(None, 80), EffectivePolicy::default());
    }

    #[test]
    fn port_level_settings_replace_the_policy_and_subsets_override_field_by_field() {
        let r = rule(concat!(
            "  host: web.shop.svc.cluster.local\n",
            "  trafficPolicy:\n",
            "    loadBalancer: {simple: ROUND_ROBIN}\n",
            "    connectionPool: {tcp: {maxConnections: 10}}\n",
            "    portLevelSettings:\n",
            "    - port: {number: 8080}\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "  subsets:\n",
            "  - name: v2\n",
            "    labels: {version: v2}\n",
            "    trafficPolicy:\n",
            "      connectionPool: {tcp: {maxConnections: 3}}\n",
        ))
        .unwrap();
        let top80 = r.effective(None, 80);
        assert_eq!(top80.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(top80.tcp.max_connections, 10);
        let top8080 = r.effective(None, 8080);
        assert_eq!(top8080.load_balancer, LoadBalancer::Random);
        assert_eq!(
            top8080.tcp.max_connections, 0,
            "a port-level entry replaces the whole policy; unset is the default"
        );
        let v2 = r.effective(Some("v2"), 8080);
        assert_eq!(v2.load_balancer, LoadBalancer::Random, "the subset does not set loadBalancer: inherited");
        assert_eq!(v2.tcp.max_connections, 3, "the subset sets connectionPool: replaced");
        let v2_80 = r.effective(Some("v2"), 80);
        assert_eq!((v2_80.load_balancer, v2_80.tcp.max_connections), (LoadBalancer::RoundRobin, 3));
        assert_eq!(r.effective(Some("unknown"), 80), top80, "an unknown subset gets the top level");
    }

    #[test]
    fn a_port_level_entry_replaces_all_four_fields() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    loadBalancer: {simple: ROUND_ROBIN}\n",
            "    connectionPool: {tcp: {maxConnections: 10}}\n",
            "    outlierDetection: {consecutive5xxErrors: 7}\n",
            "    tls: {mode: ISTIO_MUTUAL}\n",
            "    portLevelSettings:\n",
            "    - port: {number: 8080}\n",
            "      outlierDetection: {consecutive5xxErrors: 1}\n",
        ))
        .unwrap();
        let top = r.effective(None, 80);
        assert!(top.outlier_detection.is_some() && top.tls.is_some());
        let port = r.effective(None, 8080);
        assert_eq!(port.load_balancer, LoadBalancer::LeastRequest, "not inherited: the default");
        assert_eq!(port.tcp, TcpPool::default());
        assert_eq!(port.tls, None);
        assert_eq!(port.outlier_detection.unwrap()["consecutive5xxErrors"], 1);
    }

    #[test]
    fn a_subset_port_level_entry_replaces_all_four_fields_again() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    loadBalancer: {simple: ROUND_ROBIN}\n",
            "    connectionPool: {tcp: {maxConnections: 10}}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "      tls: {mode: DISABLE}\n",
            "      portLevelSettings:\n",
            "      - port: {number: 9090}\n",
            "        connectionPool: {tcp: {maxConnections: 2}}\n",
        ))
        .unwrap();
        let v1 = r.effective(Some("v1"), 80);
        assert_eq!((v1.load_balancer, v1.tcp.max_connections), (LoadBalancer::Random, 10));
        assert!(v1.tls.is_some());
        let v1_9090 = r.effective(Some("v1"), 9090);
        assert_eq!((v1_9090.load_balancer, v1_9090.tcp.max_connections), (LoadBalancer::LeastRequest, 2));
        assert_eq!(v1_9090.tls, None);
        assert_eq!(r.effective(None, 9090).load_balancer, LoadBalancer::RoundRobin, "only the subset has it");
    }

    #[test]
    fn connection_pool_is_replaced_as_one_unit() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    connectionPool: {tcp: {maxConnections: 10}}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      connectionPool: {http: {http2MaxRequests: 100}}\n",
        ))
        .unwrap();
        assert_eq!(r.effective(None, 80).tcp.max_connections, 10);
        assert_eq!(r.effective(Some("v1"), 80).tcp.max_connections, 0, "http only: the tcp limit is not inherited");
    }

    #[test]
    fn a_set_but_unspecified_load_balancer_is_least_request_and_replaces() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    loadBalancer: {simple: RANDOM}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      loadBalancer: {simple: UNSPECIFIED}\n",
        ))
        .unwrap();
        assert_eq!(r.effective(Some("v1"), 80).load_balancer, LoadBalancer::LeastRequest);
    }

    #[test]
    fn maglev_table_size_must_be_prime() {
        let err = rule("  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 1000}\n").unwrap_err();
        assert_eq!(err.field, "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize");
        assert!(err.message.contains("not a prime"));
        let ok = rule("  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 1009}\n").unwrap();
        assert_eq!(
            ok.effective(None, 1).load_balancer,
            LoadBalancer::ConsistentHash { key: HashKey::UseSourceIp, table: HashTable::Maglev { table_size: 1009 } }
        );
    }

    #[test]
    fn maglev_needs_a_table_size_within_the_kernel_limit() {
        let lb = |maglev: &str| {
            rule(&format!(
                "  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {{useSourceIp: true, {maglev}}}\n"
            ))
        };
        for unset in ["maglev: {}", "maglev: {tableSize: 0}"] {
            let err = lb(unset).unwrap_err();
            assert_eq!(err.field, "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "{unset}");
            assert_eq!(err.message, "tableSize must be set for maglev");
        }
        assert!(lb("maglev: {tableSize: 1000003}").is_ok());
        let err = lb("maglev: {tableSize: 1000033}").unwrap_err();
        assert!(err.message.contains("kernel map's limit"), "{}", err.message);
        let err = lb("maglev: {tableSize: -7}").unwrap_err();
        assert!(err.message.contains("out of range"), "{}", err.message);
    }

    #[test]
    fn minimum_ring_size_cannot_go_with_a_hash_algorithm() {
        for algorithm in ["maglev: {tableSize: 251}", "ringHash: {minimumRingSize: 64}"] {
            let err = rule(&format!("  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {{useSourceIp: true, minimumRingSize: 1024, {algorithm}}}\n")).unwrap_err();
            assert_eq!(err.field, "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "{algorithm}");
        }
        let ok = rule("  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {useSourceIp: true, minimumRingSize: 64}\n").unwrap();
        assert_eq!(
            ok.effective(None, 1).load_balancer,
            LoadBalancer::ConsistentHash {
                key: HashKey::UseSourceIp,
                table: HashTable::RingHash { minimum_ring_size: 64 }
            }
        );
    }

    #[test]
    fn consistent_hash_without_a_key_is_accepted() {
        let r = rule(
            "  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {maglev: {tableSize: 251}}\n",
        )
        .unwrap();
        assert_eq!(
            r.effective(None, 80).load_balancer,
            LoadBalancer::ConsistentHash { key: HashKey::Unset, table: HashTable::Maglev { table_size: 251 } }
        );
        let r = rule("  host: web\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {}\n").unwrap();
        assert!(matches!(
            r.effective(None, 80).load_balancer,
            LoadBalancer::ConsistentHash { key: HashKey::Unset, .. }
        ));
    }

    #[test]
    fn hosts_must_be_lowercase_dns_names() {
        for good in [
            "web",
            "web.shop.svc.cluster.local",
            "*.shop.svc.cluster.local",
            "*",
            "api-v2.example.com",
            "web.shop.svc.cluster.local.",
        ] {
            assert!(rule(&format!("  host: '{good}'\n")).is_ok(), "{good}");
        }
        assert_eq!(rule("  host: 'web.shop.svc.cluster.local.'\n").unwrap().host, "web.shop.svc.cluster.local");
        for bad in [
            "Web",
            "web.Shop.svc",
            "web_1",
            "*web.shop",
            "web.*.shop",
            "-web",
            "web..shop",
            "10.0.0.1",
            "*.*.shop",
            "8080",
            ".",
        ] {
            let err = rule(&format!("  host: '{bad}'\n")).expect_err(bad);
            assert_eq!(err.field, "spec.host", "{bad}");
            assert!(err.message.contains("DNS-1123"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn export_to_is_validated_and_decides_visibility() {
        let r = rule("  host: web\n  exportTo: ['.']\n").unwrap();
        assert!(r.visible_in("shop") && !r.visible_in("other"));
        let r = rule("  host: web\n  exportTo: [other]\n").unwrap();
        assert!(r.visible_in("other") && r.visible_in("shop") && !r.visible_in("third"));
        assert!(rule("  host: web\n  exportTo: ['*']\n").unwrap().visible_in("any"));
        assert!(rule("  host: web\n").unwrap().visible_in("any"));
        for (bad, field) in
            [("['*', a]", "spec.exportTo[0]"), ("[a, a]", "spec.exportTo[1]"), ("[Shop]", "spec.exportTo[0]")]
        {
            assert_eq!(rule(&format!("  host: web\n  exportTo: {bad}\n")).unwrap_err().field, field, "{bad}");
        }
    }

    #[test]
    fn ports_naming_no_service_port_are_reported_by_their_written_index() {
        let mut r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    portLevelSettings:\n",
            "    - port: {number: 9000}\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "    - port: {number: 80}\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "    - port: {number: 81}\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      portLevelSettings:\n",
            "      - port: {number: 443}\n",
            "        loadBalancer: {simple: RANDOM}\n",
        ))
        .unwrap();
        let ports = BTreeSet::from([80]);
        let fields: Vec<String> = r.check_ports(&ports).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.portLevelSettings[0].port.number",
                "spec.trafficPolicy.portLevelSettings[2].port.number",
                "spec.subsets[0].trafficPolicy.portLevelSettings[0].port.number",
            ]
        );
        r.retain_ports(&ports);
        assert!(r.check_ports(&ports).is_empty());
        assert_eq!(r.effective(None, 80).load_balancer, LoadBalancer::Random);
        assert_eq!(r.policy.as_ref().unwrap().ports[&80].index, 1, "the written index is kept");
    }

    #[test]
    fn invalid_rules_name_their_field() {
        let cases = [
            ("  host: web\n  subsets:\n  - name: v1\n", "spec.subsets[0].labels"),
            ("  host: web\n  subsets:\n  - {name: v1, labels: {a: b}}\n  - {name: v1, labels: {a: c}}\n", "spec.subsets[1].name"),
            ("  host: web\n  trafficPolicy:\n    loadBalancer: {simple: FASTEST}\n", "spec.trafficPolicy.loadBalancer.simple"),
            ("  host: web\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}\n", "spec.trafficPolicy.loadBalancer"),
            ("  host: web\n  trafficPolicy:\n    loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}\n", "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name"),
            ("  host: web\n  trafficPolicy:\n    loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}\n", "spec.trafficPolicy.loadBalancer.consistentHash"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: -1}}\n", "spec.trafficPolicy.connectionPool.tcp.maxConnections"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: soon}}\n", "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
            ("  host: web\n  trafficPolicy:\n    portLevelSettings:\n    - loadBalancer: {simple: RANDOM}\n", "spec.trafficPolicy.portLevelSettings[0].port"),
            ("  trafficPolicy: {}\n", "spec.host"),
            // Istio parity: empty blocks are errors.
            ("  host: web\n  trafficPolicy: {}\n", "spec.trafficPolicy"),
            ("  host: web\n  subsets:\n  - {name: v1, labels: {a: b}, trafficPolicy: {}}\n", "spec.subsets[0].trafficPolicy"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {}\n", "spec.trafficPolicy.connectionPool"),
            ("  host: web\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n", "spec.trafficPolicy.portLevelSettings[0]"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 500us}}\n", "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 0s}}\n", "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
            ("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 99999999999999999999h}}\n", "spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        ];
        for (spec, field) in cases {
            let err = rule(spec).expect_err(spec);
            assert_eq!(err.field, field, "{spec}");
        }
        // Not empty: a field the L4 dataplane does not use still counts.
        assert!(rule("  host: web\n  trafficPolicy:\n    tunnel: {protocol: CONNECT}\n").is_ok());
        assert!(rule("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 1ms}}\n").is_ok());
    }

    #[test]
    fn durations_parse_like_istio_writes_them() {
        assert_eq!(parse_duration("f", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("f", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("f", "1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("f", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("f", "0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("f", "7ms").unwrap(), Duration::from_millis(7));
        assert_eq!(parse_duration("f", "1.000000001s").unwrap(), Duration::new(1, 1));
        assert_eq!(parse_duration("f", ".5m").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("f", "250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("f", "10").is_err());
        assert!(parse_duration("f", "").is_err());
        for bad in ["-1s", "1.2.3s", ".s", "1e3s", "s", "1sec", "1s2"] {
            assert!(parse_duration("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        for absurd in [
            "99999999999999999999999999999999999999999999999999h",
            "18446744073709551616s",
            "5124095576030431h",
            "315576000001s",
            "315576000000s1ns",
        ] {
            let err = parse_duration("spec.x", absurd).expect_err(absurd);
            assert_eq!(err.field, "spec.x");
        }
        assert_eq!(parse_duration("f", "315576000000s").unwrap(), MAX_DURATION);
        let nines = format!("0.{}s", "9".repeat(400));
        assert!(parse_duration("f", &nines).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(1000));
    }
}
