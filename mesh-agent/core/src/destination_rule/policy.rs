//! A `trafficPolicy` (top level or a subset's) as validated, and Istio's
//! rules for merging its levels into what applies to one (subset, port).

use super::connection_pool::{validate_connection_pool, ConnectionPool, HttpPool, TcpPool};
use super::load_balancer::{validate_load_balancer, LoadBalancer, LoadBalancerPolicy, LocalityLbSetting, Warmup};
use super::outlier_detection::{validate_outlier_detection, OutlierDetection};
use super::proxy_protocol::{validate_proxy_protocol, ProxyProtocol};
use super::retry_budget::{validate_retry_budget, RetryBudget};
use super::tls::{validate_tls, ClientTls, TlsMode};
use super::tunnel::{validate_tunnel, Tunnel};
use crate::api::{self, TrafficPolicy};
use crate::field::{parse_port, FieldError, Path};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One level of policy (top level, a subset, or a port of either): the four
/// fields Istio merges. At a subset, a field set replaces the same field of
/// the top level and an unset one inherits; a matching port-level entry
/// replaces all four at once (unset means the default there).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyLevel {
    pub load_balancer: Option<LoadBalancerPolicy>,
    /// One unit: a level that sets only `http` drops an inherited `tcp`.
    pub connection_pool: Option<ConnectionPool>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

/// A whole `trafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Policy {
    pub base: PolicyLevel,
    pub ports: BTreeMap<u16, PortPolicy>,
    /// Not per port: a subset's replaces the top level's when set.
    pub tunnel: Option<Tunnel>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

/// One `portLevelSettings` entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PortPolicy {
    /// Its position in `portLevelSettings` as written, for messages.
    pub index: usize,
    pub level: PolicyLevel,
}

/// What applies to traffic for one (subset, port), all levels merged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EffectivePolicy {
    pub load_balancer: LoadBalancer,
    pub locality: Option<LocalityLbSetting>,
    pub warmup: Option<Warmup>,
    pub tcp: TcpPool,
    /// `connectionPool.http`, for the L7 proxy.
    pub http_pool: Option<HttpPool>,
    pub outlier_detection: Option<OutlierDetection>,
    /// The TLS the proxy originates: never ISTIO_MUTUAL, which is served in
    /// plaintext (the rule's own levels keep the mode as written).
    pub tls: Option<ClientTls>,
    pub tunnel: Option<Tunnel>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub retry_budget: Option<RetryBudget>,
}

impl Default for EffectivePolicy {
    fn default() -> Self {
        EffectivePolicy::merged(PolicyLevel::default(), None, None, 0)
    }
}

impl EffectivePolicy {
    /// The four merged fields (`level`, as the rule merged them) with the
    /// fields Istio carries beside them:
    /// - `proxyProtocol` and `retryBudget`: the subset policy's when it sets
    ///   them, else the top level's; a policy's `portLevelSettings` entry for
    ///   `port` carries only the four fields, so at such a port that policy
    ///   brings neither;
    /// - `tunnel`: the subset's when a subset is named (`Some`, with its
    ///   policy if it has one), as Istio's tunneling reads the subset alone;
    ///   else the top level's.
    pub(super) fn merged(level: PolicyLevel, top: Option<&Policy>, subset: Option<Option<&Policy>>, port: u16) -> Self {
        let top_here = top.filter(|p| !p.ports.contains_key(&port));
        let subset_here = subset.flatten().filter(|p| !p.ports.contains_key(&port));
        let (load_balancer, locality, warmup) = match level.load_balancer {
            Some(lb) => (lb.algorithm, lb.locality, lb.warmup),
            None => (LoadBalancer::LeastRequest, None, None),
        };
        EffectivePolicy {
            load_balancer,
            locality,
            warmup,
            tcp: level.connection_pool.as_ref().and_then(|pool| pool.tcp.clone()).unwrap_or_default(),
            http_pool: level.connection_pool.and_then(|pool| pool.http),
            outlier_detection: level.outlier_detection,
            // DISABLE (and ISTIO_MUTUAL, validated as DISABLE until the mesh
            // encrypts pod-to-pod traffic itself) originates nothing: a port
            // is not sent through the proxy for it.
            tls: level.tls.filter(|tls| tls.mode != TlsMode::Disable),
            tunnel: match subset {
                Some(subset) => subset.and_then(|p| p.tunnel.clone()),
                None => top.and_then(|p| p.tunnel.clone()),
            },
            proxy_protocol: subset_here.and_then(|p| p.proxy_protocol).or(top_here.and_then(|p| p.proxy_protocol)),
            retry_budget: (subset_here.and_then(|p| p.retry_budget.clone()))
                .or_else(|| top_here.and_then(|p| p.retry_budget.clone())),
        }
    }
}

impl PolicyLevel {
    /// A subset's policy over the level below: each field it sets replaces.
    pub(super) fn overlay(&mut self, other: &PolicyLevel) {
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
    pub(super) fn at_port(&self, port: u16) -> PolicyLevel {
        self.ports.get(&port).map_or_else(|| self.base.clone(), |p| p.level.clone())
    }

    pub(super) fn dangling_ports(&self, path: &str, host: &str, service_ports: &BTreeSet<u16>) -> Vec<FieldError> {
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

pub(super) fn validate_policy(at: &Path, policy: &TrafficPolicy) -> Result<Policy, FieldError> {
    let is_empty = policy.load_balancer.is_none()
        && policy.connection_pool.is_none()
        && policy.outlier_detection.is_none()
        && policy.tls.is_none()
        && policy.port_level_settings.is_empty()
        && policy.tunnel.is_none()
        && policy.proxy_protocol.is_none()
        && policy.retry_budget.is_none();
    if is_empty {
        return Err(at.error("must set at least one field (Istio rejects an empty trafficPolicy)"));
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        return Err(FieldError::new(at.field("proxyProtocol"), "cannot be set together with tunnel"));
    }
    let base = validate_level(
        at,
        policy.load_balancer.as_ref(),
        policy.connection_pool.as_ref(),
        policy.outlier_detection.as_ref(),
        policy.tls.as_ref(),
    )?;
    let mut ports = BTreeMap::new();
    for (i, port_policy) in policy.port_level_settings.iter().enumerate() {
        let at = at.index("portLevelSettings", i);
        let number = port_policy.port.as_ref().ok_or_else(|| FieldError::new(at.field("port"), "required"))?.number;
        let number = parse_port(&at.field("port.number"), number)?;
        if port_policy.load_balancer.is_none()
            && port_policy.connection_pool.is_none()
            && port_policy.outlier_detection.is_none()
            && port_policy.tls.is_none()
        {
            return Err(at.error(
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
        // Istio accepts a port listed twice and applies the first entry.
        ports.entry(number).or_insert(PortPolicy { index: i, level });
    }
    Ok(Policy {
        base,
        ports,
        tunnel: policy.tunnel.as_ref().map(|t| validate_tunnel(&at.child("tunnel"), t)).transpose()?,
        proxy_protocol: (policy.proxy_protocol.as_ref())
            .map(|p| validate_proxy_protocol(&at.child("proxyProtocol"), p))
            .transpose()?,
        retry_budget: (policy.retry_budget.as_ref())
            .map(|b| validate_retry_budget(&at.child("retryBudget"), b))
            .transpose()?,
    })
}

fn validate_level(
    at: &Path,
    load_balancer: Option<&api::LoadBalancerSettings>,
    pool: Option<&api::ConnectionPoolSettings>,
    outlier_detection: Option<&api::OutlierDetection>,
    tls: Option<&api::ClientTlsSettings>,
) -> Result<PolicyLevel, FieldError> {
    Ok(PolicyLevel {
        load_balancer: load_balancer.map(|lb| validate_load_balancer(&at.child("loadBalancer"), lb)).transpose()?,
        connection_pool: pool.map(|pool| validate_connection_pool(&at.child("connectionPool"), pool)).transpose()?,
        outlier_detection: (outlier_detection)
            .map(|o| validate_outlier_detection(&at.child("outlierDetection"), o))
            .transpose()?,
        tls: tls.map(|tls| validate_tls(&at.child("tls"), tls)).transpose()?,
    })
}
