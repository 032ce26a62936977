//! DestinationRule traffic policy: validation into domain types and the
//! Istio rules for which policy applies to a (subset, port).

use crate::model::{parse_port, FieldError};
use crate::resources::{self, LoadBalancerSettings, TrafficPolicy};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;

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
    HttpCookie { name: String, path: Option<String>, ttl: Option<String> },
    HttpQueryParameterName(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashTable {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u32 },
}

/// One level of policy (top level, a subset, or a port of either). A field
/// set here replaces the same field of the level below; unset inherits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyLevel {
    pub load_balancer: Option<LoadBalancer>,
    pub tcp: Option<TcpPool>,
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
    pub ports: BTreeMap<u16, PolicyLevel>,
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
    /// rule's namespace), possibly a `*.` wildcard.
    pub host: String,
    pub policy: Option<Policy>,
    pub subsets: Vec<SubsetModel>,
}

/// What applies to traffic for one (subset, port), all levels merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EffectivePolicy {
    pub load_balancer: LoadBalancer,
    pub tcp: TcpPool,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        Self { load_balancer: LoadBalancer::LeastRequest, tcp: TcpPool::default() }
    }
}

impl PolicyLevel {
    fn overlay(&mut self, other: &PolicyLevel) {
        if other.load_balancer.is_some() {
            self.load_balancer.clone_from(&other.load_balancer);
        }
        if other.tcp.is_some() {
            self.tcp.clone_from(&other.tcp);
        }
    }
}

impl Policy {
    /// The level for `port`: the base with that port's settings laid over it.
    fn at_port(&self, port: u16) -> PolicyLevel {
        let mut level = self.base.clone();
        if let Some(port_level) = self.ports.get(&port) {
            level.overlay(port_level);
        }
        level
    }
}

impl DestinationRuleModel {
    /// Istio's merge: the top-level policy (with its port-level settings for
    /// `port`), then the subset's policy (with its own) field by field.
    pub fn effective(&self, subset: Option<&str>, port: u16) -> EffectivePolicy {
        let mut level = self.policy.as_ref().map(|p| p.at_port(port)).unwrap_or_default();
        if let Some(subset_policy) =
            subset.and_then(|name| self.subsets.iter().find(|s| s.name == name)).and_then(|s| s.policy.as_ref())
        {
            level.overlay(&subset_policy.at_port(port));
        }
        EffectivePolicy {
            load_balancer: level.load_balancer.unwrap_or(LoadBalancer::LeastRequest),
            tcp: level.tcp.unwrap_or_default(),
        }
    }

    /// Every port named in `portLevelSettings` must be one the Service has.
    pub fn check_ports(&self, service_ports: &BTreeSet<u16>) -> Result<(), FieldError> {
        let levels = std::iter::once(("spec.trafficPolicy".to_owned(), self.policy.as_ref())).chain(
            self.subsets
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.subsets[{i}].trafficPolicy"), s.policy.as_ref())),
        );
        for (path, policy) in levels {
            let Some(policy) = policy else { continue };
            for (index, port) in policy.ports.keys().enumerate() {
                if !service_ports.contains(port) {
                    return Err(FieldError::new(
                        format!("{path}.portLevelSettings[{index}].port.number"),
                        format!("port {port} names no port of Service {} (it has {:?})", self.host, service_ports),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Resolves a DestinationRule host as Istio does: a name without dots is
/// short and lives in the rule's namespace; anything else is taken as is.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
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
        policy,
        subsets,
    })
}

fn validate_policy(path: &str, policy: &TrafficPolicy) -> Result<Policy, FieldError> {
    let base = validate_level(path, policy.load_balancer.as_ref(), policy.connection_pool.as_ref())?;
    let mut ports = BTreeMap::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let at = format!("{path}.portLevelSettings[{i}]");
        let number = port_policy.port.as_ref().ok_or_else(|| FieldError::new(format!("{at}.port"), "required"))?.number;
        let number = parse_port(&format!("{at}.port.number"), number)?;
        let level = validate_level(&at, port_policy.load_balancer.as_ref(), port_policy.connection_pool.as_ref())?;
        if ports.insert(number, level).is_some() {
            return Err(FieldError::new(format!("{at}.port.number"), format!("port {number} has settings twice")));
        }
    }
    Ok(Policy { base, ports })
}

fn validate_level(
    path: &str,
    load_balancer: Option<&LoadBalancerSettings>,
    pool: Option<&resources::ConnectionPoolSettings>,
) -> Result<PolicyLevel, FieldError> {
    let load_balancer =
        load_balancer.map(|lb| validate_load_balancer(&format!("{path}.loadBalancer"), lb)).transpose()?.flatten();
    let tcp = match pool.and_then(|p| p.tcp.as_ref()) {
        None => None,
        Some(tcp) => {
            let at = format!("{path}.connectionPool.tcp");
            let max_connections = match tcp.max_connections {
                None => 0,
                Some(n) => u32::try_from(n).map_err(|_| {
                    FieldError::new(
                        format!("{at}.maxConnections"),
                        format!("{n} is not a connection count (0 to 4294967295)"),
                    )
                })?,
            };
            let connect_timeout = tcp
                .connect_timeout
                .as_deref()
                .map(|d| parse_duration(&format!("{at}.connectTimeout"), d))
                .transpose()?;
            Some(TcpPool { max_connections, connect_timeout })
        }
    };
    Ok(PolicyLevel { load_balancer, tcp })
}

fn validate_load_balancer(path: &str, lb: &LoadBalancerSettings) -> Result<Option<LoadBalancer>, FieldError> {
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => Err(FieldError::new(path, "simple and consistentHash are mutually exclusive")),
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" => Ok(None),
            "LEAST_REQUEST" | "LEAST_CONN" => Ok(Some(LoadBalancer::LeastRequest)),
            "ROUND_ROBIN" => Ok(Some(LoadBalancer::RoundRobin)),
            "RANDOM" => Ok(Some(LoadBalancer::Random)),
            "PASSTHROUGH" => Ok(Some(LoadBalancer::Passthrough)),
            other => Err(FieldError::new(
                format!("{path}.simple"),
                format!("unknown algorithm {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
            )),
        },
        (None, Some(hash)) => validate_consistent_hash(&format!("{path}.consistentHash"), hash).map(Some),
        (None, None) => Ok(None),
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
        1 => keys.remove(0),
        0 => {
            return Err(FieldError::new(
                path,
                "needs one hash key: httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            ))
        }
        _ => return Err(FieldError::new(path, "only one hash key may be set")),
    };
    let table = match (&hash.ring_hash, &hash.maglev) {
        (Some(_), Some(_)) => return Err(FieldError::new(path, "ringHash and maglev are mutually exclusive")),
        (_, Some(maglev)) => {
            let size = maglev.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE as i64);
            let at = format!("{path}.maglev.tableSize");
            let size = u32::try_from(size)
                .ok()
                .filter(|s| *s > 1)
                .ok_or_else(|| FieldError::new(&at, format!("{size} is out of range")))?;
            if !is_prime(size as u64) {
                return Err(FieldError::new(at, format!("{size} is not a prime number")));
            }
            if size > MAX_MAGLEV_TABLE_SIZE {
                return Err(FieldError::new(at, format!("{size} is larger than {MAX_MAGLEV_TABLE_SIZE}")));
            }
            HashTable::Maglev { table_size: size }
        }
        (Some(ring), None) => HashTable::RingHash {
            minimum_ring_size: ring_size(&format!("{path}.ringHash.minimumRingSize"), ring.minimum_ring_size)?,
        },
        (None, None) => HashTable::RingHash {
            minimum_ring_size: ring_size(&format!("{path}.minimumRingSize"), hash.minimum_ring_size)?,
        },
    };
    Ok(LoadBalancer::ConsistentHash { key, table })
}

/// Largest Maglev table the kernel map is sized for per group.
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_000_003;

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

/// Parses a protobuf-JSON duration as Istio writes them: `10s`, `1.5s`,
/// `100ms`, `2m`, `1h`, `1h30m`, `250us`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    let invalid = || FieldError::new(field, format!("{text:?} is not a duration (e.g. 10s, 100ms, 1m)"));
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let value: f64 = rest[..number_end].parse().map_err(|_| invalid())?;
        let unit_end =
            rest[number_end..].find(|c: char| c.is_ascii_digit()).map(|i| number_end + i).unwrap_or(rest.len());
        let seconds_per_unit = match &rest[number_end..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(invalid()),
        };
        total += Duration::from_secs_f64(value * seconds_per_unit);
        rest = &rest[unit_end..];
    }
    Ok(total)
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
    fn port_level_and_subset_settings_override_field_by_field() {
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
        assert_eq!(top8080.tcp.max_connections, 10, "port level replaces only what it sets");
        let v2 = r.effective(Some("v2"), 8080);
        assert_eq!(v2.load_balancer, LoadBalancer::Random);
        assert_eq!(v2.tcp.max_connections, 3);
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
        ];
        for (spec, field) in cases {
            let err = rule(spec).expect_err(spec);
            assert_eq!(err.field, field, "{spec}");
        }
    }

    #[test]
    fn durations_parse_like_istio_writes_them() {
        assert_eq!(parse_duration("f", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("f", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("f", "1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("f", "250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("f", "10").is_err());
        assert!(parse_duration("f", "").is_err());
    }

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(1000));
    }
}
