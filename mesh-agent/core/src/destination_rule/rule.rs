//! A DestinationRule as validated: its host, visibility, policy and
//! subsets, and which policy applies to traffic for one (subset, port).

use super::policy::{validate_policy, EffectivePolicy, Policy};
use crate::api;
use crate::field::{FieldError, Path};
use crate::host::{
    is_istio_label, labels_match, resolve_host, validate_export_to, validate_host_name, validate_labels, ExportToNone,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Istio's root configuration namespace: its rules apply mesh-wide, after
/// the service's own namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubsetModel {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: Option<Policy>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// `workloadSelector.matchLabels`: when set, the rule is only for
    /// client pods of its namespace carrying these labels (Istio: such a
    /// client uses it instead of a rule without selector for the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<BTreeMap<String, String>>,
}

impl DestinationRuleModel {
    /// Istio's MergeTrafficPolicy: the top-level policy, replaced whole by
    /// its `portLevelSettings` entry for `port` if there is one; then the
    /// subset's policy field by field; then the subset's `portLevelSettings`
    /// entry for `port`, which replaces all four fields again. For the
    /// fields beside those four, see [`EffectivePolicy::merged`].
    pub fn effective(&self, subset: Option<&str>, port: u16) -> EffectivePolicy {
        let mut level = self.policy.as_ref().map(|p| p.at_port(port)).unwrap_or_default();
        // Some when a subset is named: its policy, if it has one.
        let subset_policy =
            subset.map(|name| self.subsets.iter().find(|s| s.name == name).and_then(|s| s.policy.as_ref()));
        if let Some(subset_policy) = subset_policy.flatten() {
            level.overlay(&subset_policy.base);
            if let Some(port_level) = subset_policy.ports.get(&port) {
                level = port_level.level.clone();
            }
        }
        EffectivePolicy::merged(level, self.policy.as_ref(), subset_policy, port)
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

    /// Whether the rule's `workloadSelector` picks a client pod with
    /// `labels` in `namespace` (false for a rule without selector).
    pub fn selects(&self, labels: &BTreeMap<String, String>, namespace: &str) -> bool {
        self.workload_selector
            .as_ref()
            .is_some_and(|wanted| namespace == self.namespace && labels_match(wanted, labels))
    }

    /// Whether the rule may apply to a service in `namespace`: always in its
    /// own namespace; elsewhere when `exportTo` is empty, has `*`, or names it.
    pub fn visible_in(&self, namespace: &str) -> bool {
        namespace == self.namespace
            || self.export_to.is_empty()
            || self.export_to.iter().any(|to| to == "*" || to == namespace)
    }
}

pub fn validate_destination_rule(
    rule: &api::DestinationRule,
    cluster_domain: &str,
) -> Result<DestinationRuleModel, FieldError> {
    let spec = &rule.spec;
    let namespace = rule.metadata.namespace_or_default().to_owned();
    if spec.host.is_empty() {
        return Err(FieldError::new("spec.host", "required"));
    }
    // Istio's `ValidateWildcardDomain`, as for every host (an IP address
    // is not a host here).
    validate_host_name("spec.host", &spec.host)?;
    validate_export_to(&spec.export_to, &namespace, ExportToNone::Refused)?;
    let workload_selector = (spec.workload_selector.as_ref())
        .map(|selector| validate_workload_selector(selector, &spec.export_to, &namespace))
        .transpose()?;
    let policy =
        spec.traffic_policy.as_ref().map(|p| validate_policy(&Path::new("spec.trafficPolicy"), p)).transpose()?;
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
        // Istio's labels take upper case; subset names are compared as written.
        if !is_istio_label(&subset.name) {
            return Err(FieldError::new(
                at("name"),
                format!("{:?} is not a valid subset name (letters, digits and -, 63 at most)", subset.name),
            ));
        }
        // No labels is valid: the subset is every endpoint of the host.
        validate_labels(&at("labels"), &subset.labels)?;
        let policy = (subset.traffic_policy.as_ref())
            .map(|p| validate_policy(&Path::new(at("trafficPolicy")), p))
            .transpose()?;
        subsets.push(SubsetModel { name: subset.name.clone(), labels: subset.labels.clone(), policy });
    }
    Ok(DestinationRuleModel {
        host: resolve_host(&spec.host, &namespace, cluster_domain),
        namespace,
        name: rule.metadata.name.clone(),
        export_to: spec.export_to.clone(),
        policy,
        subsets,
        workload_selector,
    })
}

/// Istio's checks on a DestinationRule's `workloadSelector`: no empty key,
/// no `*` in keys or values, and `exportTo` no wider than the rule's own
/// namespace (a selector picks clients there only).
fn validate_workload_selector(
    selector: &api::WorkloadSelector,
    export_to: &[String],
    namespace: &str,
) -> Result<BTreeMap<String, String>, FieldError> {
    const FIELD: &str = "spec.workloadSelector.matchLabels";
    for (key, value) in &selector.match_labels {
        if key.is_empty() {
            let field = format!("{FIELD}[{key}]");
            return Err(FieldError::new(field, format!("empty key is not supported in selector ({key}={value})")));
        }
        if key.contains('*') || value.contains('*') {
            return Err(FieldError::new(
                format!("{FIELD}[{key}]"),
                format!("wildcard is not supported in selector ({key}={value})"),
            ));
        }
    }
    let own = |to: &String| to == "." || to == namespace;
    if let Some(i) = export_to.iter().position(|to| !own(to)) {
        return Err(FieldError::new(
            format!("spec.exportTo[{i}]"),
            "a DestinationRule with a workloadSelector cannot be exported beyond its own namespace",
        ));
    }
    // Several entries cannot all be its own: validate_export_to refused
    // the repeat.
    Ok(selector.match_labels.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination_rule::*;
    use crate::test_support::rule;
    use std::time::Duration;

    #[test]
    fn a_workload_selector_is_checked_as_istio_does() {
        let r = rule("  host: web\n  workloadSelector: {matchLabels: {app: cart}}\n  exportTo: ['.']\n").unwrap();
        let labels: BTreeMap<String, String> = [("app".to_owned(), "cart".to_owned())].into();
        assert_eq!(r.workload_selector.as_ref(), Some(&labels));
        assert!(r.selects(&labels, "shop") && !r.selects(&labels, "other") && !r.selects(&BTreeMap::new(), "shop"));
        assert!(
            rule("  host: web\n  workloadSelector: {}\n").unwrap().selects(&BTreeMap::new(), "shop"),
            "no labels: every client of the namespace"
        );
        let cases = [
            ("  host: web\n  workloadSelector: {matchLabels: {'': x}}\n", "spec.workloadSelector.matchLabels[]"),
            (
                "  host: web\n  workloadSelector: {matchLabels: {app: 'ca*'}}\n",
                "spec.workloadSelector.matchLabels[app]",
            ),
            ("  host: web\n  workloadSelector: {matchLabels: {app: a}}\n  exportTo: ['*']\n", "spec.exportTo[0]"),
            ("  host: web\n  workloadSelector: {matchLabels: {app: a}}\n  exportTo: [shop, '.']\n", "spec.exportTo[1]"),
        ];
        for (spec, field) in cases {
            assert_eq!(rule(spec).unwrap_err().field, field, "{spec}");
        }
        assert!(rule("  host: web\n  workloadSelector: {matchLabels: {app: a}}\n  exportTo: [shop]\n").is_ok());
    }

    #[test]
    fn max_connection_duration_is_at_least_a_millisecond() {
        let pool = |d: &str| {
            rule(&format!(
                "  host: web\n  trafficPolicy: {{connectionPool: {{tcp: {{maxConnectionDuration: {d}}}}}}}\n"
            ))
        };
        let p = pool("30s").unwrap().effective(None, 80);
        assert_eq!(p.tcp.max_connection_duration, Some(Duration::from_secs(30)));
        for bad in ["500us", "0s", "1.0005s", "x"] {
            assert_eq!(
                pool(bad).unwrap_err().field,
                "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
                "{bad}"
            );
        }
    }

    #[test]
    fn default_is_least_request_and_unlimited() {
        let r = rule("  host: web\n").unwrap();
        assert_eq!(r.host, "web.shop.svc.cluster.local");
        let p = r.effective(None, 80);
        assert_eq!(p.load_balancer, LoadBalancer::LeastRequest);
        assert_eq!(p.tcp, TcpPool::default());
        assert_eq!(p.tcp.max_connections, 0, "unlimited");
        assert!(p.http_pool.is_none() && p.outlier_detection.is_none() && p.tls.is_none());
        assert!(p.tunnel.is_none() && p.proxy_protocol.is_none() && p.retry_budget.is_none());
        assert_eq!(p, EffectivePolicy::default());
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
        assert!(top.outlier_detection.is_some());
        assert_eq!(top.tls, None, "ISTIO_MUTUAL is served in plaintext: no TLS origination");
        assert_eq!(
            r.policy.as_ref().unwrap().base.tls.as_ref().unwrap().mode,
            TlsMode::Disable,
            "validated as DISABLE"
        );
        let port = r.effective(None, 8080);
        assert_eq!(port.load_balancer, LoadBalancer::LeastRequest, "not inherited: the default");
        assert_eq!(port.tcp, TcpPool::default());
        assert_eq!(port.tls, None);
        assert_eq!(port.outlier_detection.unwrap().consecutive_5xx_errors, Some(1));
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
            "      tls: {mode: SIMPLE, sni: v1.example}\n",
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
        // Istio takes primes below 5000011; the kernel's table is smaller.
        let big = lb("maglev: {tableSize: 1000033}").unwrap().effective(None, 80).load_balancer;
        assert_eq!(
            big,
            LoadBalancer::ConsistentHash {
                key: HashKey::UseSourceIp,
                table: HashTable::Maglev { table_size: MAX_MAGLEV_TABLE_SIZE }
            }
        );
        let err = lb("maglev: {tableSize: 5000011}").unwrap_err();
        assert!(err.message.contains("out of range"), "{}", err.message);
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
    fn hosts_are_dns_names_as_istio_checks_them() {
        for good in [
            "web",
            "Web",
            "web.Shop.svc",
            "*web.shop",
            "8080",
            "web.shop.svc.cluster.local",
            "*.shop.svc.cluster.local",
            "*",
            "api-v2.example.com",
            "web.shop.svc.cluster.local.",
        ] {
            assert!(rule(&format!("  host: '{good}'\n")).is_ok(), "{good}");
        }
        assert_eq!(rule("  host: 'web.shop.svc.cluster.local.'\n").unwrap().host, "web.shop.svc.cluster.local");
        assert_eq!(
            rule("  host: Web\n").unwrap().host,
            "web.shop.svc.cluster.local",
            "host names are case-insensitive"
        );
        for bad in ["web_1", "web.*.shop", "-web", "web..shop", "10.0.0.1", "*.*.shop", "web.8080", "."] {
            let err = rule(&format!("  host: '{bad}'\n")).expect_err(bad);
            assert_eq!(err.field, "spec.host", "{bad}");
            assert!(err.message.contains("not a valid host name"), "{bad}: {}", err.message);
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
        for (bad, field) in [
            ("['*', a]", "spec.exportTo[0]"),
            ("[a, a]", "spec.exportTo[1]"),
            ("['.', shop]", "spec.exportTo[1]"),
            ("['~']", "spec.exportTo[0]"),
        ] {
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
            ("  host: web\n  subsets:\n  - name: v1.0\n", "spec.subsets[0].name"),
            ("  host: web\n  subsets:\n  - {name: v1, labels: {'a b': c}}\n", "spec.subsets[0].labels[a b]"),
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
        assert!(rule("  host: web\n  trafficPolicy:\n    tunnel: {targetHost: egress.example.com, targetPort: 443}\n")
            .is_ok());
        assert!(rule("  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 1ms}}\n").is_ok());
    }

    /// Every block of a traffic policy is validated as Istio does: a bad
    /// value rejects the rule, naming its field.
    #[test]
    fn every_policy_block_rejects_bad_values_by_field() {
        let policy = |block: &str| rule(&format!("  host: web\n  trafficPolicy:\n    {block}\n"));
        let cases = [
            // outlierDetection
            ("outlierDetection: {baseEjectionTime: 30x}", "spec.trafficPolicy.outlierDetection.baseEjectionTime", "not a duration"),
            ("outlierDetection: {baseEjectionTime: banana}", "spec.trafficPolicy.outlierDetection.baseEjectionTime", "not a duration"),
            ("outlierDetection: {interval: 500us}", "spec.trafficPolicy.outlierDetection.interval", "under 1ms"),
            ("outlierDetection: {maxEjectionPercent: 120}", "spec.trafficPolicy.outlierDetection.maxEjectionPercent", "not a percentage"),
            ("outlierDetection: {minHealthPercent: -1}", "spec.trafficPolicy.outlierDetection.minHealthPercent", "not a percentage"),
            ("outlierDetection: {consecutive5xxErrors: -3}", "spec.trafficPolicy.outlierDetection.consecutive5xxErrors", "not a count"),
            ("outlierDetection: {consecutiveLocalOriginFailures: 3}", "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors"),
            // tls
            ("tls: {mode: BOGUS}", "spec.trafficPolicy.tls.mode", "unknown mode \"BOGUS\""),
            ("tls: {mode: MUTUAL, privateKey: /k.pem}", "spec.trafficPolicy.tls.clientCertificate", "required for MUTUAL"),
            ("tls: {mode: MUTUAL, clientCertificate: /c.pem}", "spec.trafficPolicy.tls.privateKey", "required for MUTUAL"),
            ("tls: {mode: SIMPLE, credentialName: s, caCertificates: /ca.pem}", "spec.trafficPolicy.tls.caCertificates", "credentialName"),
            ("tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}", "spec.trafficPolicy.tls.caCertificates", "insecureSkipVerify"),
            ("tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}", "spec.trafficPolicy.tls.subjectAltNames", "insecureSkipVerify"),
            ("tls: {mode: SIMPLE, credentialName: s, clientCertificate: /c.pem}", "spec.trafficPolicy.tls.clientCertificate", "credentialName"),
            ("tls: {mode: MUTUAL, credentialName: s, privateKey: /k.pem}", "spec.trafficPolicy.tls.privateKey", "credentialName"),
            // connectionPool
            ("connectionPool: {http: {idleTimeout: soon}}", "spec.trafficPolicy.connectionPool.http.idleTimeout", "not a duration"),
            ("connectionPool: {http: {http2MaxRequests: -1}}", "spec.trafficPolicy.connectionPool.http.http2MaxRequests", "not a count"),
            ("connectionPool: {http: {maxRetries: -2}}", "spec.trafficPolicy.connectionPool.http.maxRetries", "not a count"),
            ("connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}", "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "unknown policy"),
            ("connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}", "spec.trafficPolicy.connectionPool.http.useClientProtocol", "UPGRADE"),
            ("connectionPool: {tcp: {maxConnectionDuration: 0s}}", "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration", "under 1ms"),
            ("connectionPool: {tcp: {tcpKeepalive: {time: 1.5ms}}}", "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time", "milliseconds"),
            ("connectionPool: {tcp: {tcpKeepalive: {probes: -1}}}", "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.probes", "not a count"),
            // loadBalancer: locality and warmup
            ("loadBalancer: {localityLbSetting: {distribute: [{from: us-east/*, to: {us-east/*: 80, us-west/*: 30}}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "add up to 110"),
            ("loadBalancer: {localityLbSetting: {distribute: [{from: us-east/*, to: {us-east/*: 0, us-west/*: 100}}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[us-east/*]", "not in 1-100"),
            ("loadBalancer: {localityLbSetting: {distribute: [{from: 'us-*/a', to: {us-east: 100}}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from", "at the end"),
            ("loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to", "another region"),
            ("loadBalancer: {localityLbSetting: {failover: [{from: us-east/1a, to: us-west}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].from", "not a region"),
            ("loadBalancer: {localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting", "cannot both be set"),
            ("loadBalancer: {localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[0]", "together with failover"),
            ("loadBalancer: {simple: ROUND_ROBIN, warmup: {minimumPercent: 10}}", "spec.trafficPolicy.loadBalancer.warmup.duration", "required"),
            ("loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 101}}", "spec.trafficPolicy.loadBalancer.warmup.minimumPercent", "between 0 and 100"),
            ("loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, aggression: 0.5}}", "spec.trafficPolicy.loadBalancer.warmup.aggression", "below 1"),
            ("loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: forever}", "spec.trafficPolicy.loadBalancer.warmupDurationSecs", "not a duration"),
            ("loadBalancer: {consistentHash: {httpCookie: {name: u, ttl: 1y}}}", "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl", "not a duration"),
            ("loadBalancer: {consistentHash: {httpCookie: {name: u, attributes: [{value: x}]}}}", "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes[0].name", "required"),
            ("loadBalancer: {consistentHash: {useSourceIp: false, httpHeaderName: x}}", "spec.trafficPolicy.loadBalancer.consistentHash", "only one hash key"),
            ("loadBalancer: {localityLbSetting: {distribute: [{from: 'us-east/*', to: {us-west: 100}}, {from: us-east/1a, to: {us-west: 100}}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[1].from", "overlaps"),
            ("loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: 'us-*'}]}}", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to", "not a region"),
            // tunnel, proxyProtocol, retryBudget
            ("tunnel: {protocol: UDP, targetHost: egress, targetPort: 443}", "spec.trafficPolicy.tunnel.protocol", "CONNECT or POST"),
            ("tunnel: {targetPort: 443}", "spec.trafficPolicy.tunnel.targetHost", "required"),
            ("tunnel: {targetHost: egress.example.com, targetPort: 70000}", "spec.trafficPolicy.tunnel.targetPort", "not a port"),
            ("tunnel: {targetHost: '*.example.com', targetPort: 443}", "spec.trafficPolicy.tunnel.targetHost", "not an FQDN"),
            ("tunnel: {targetHost: 1.2.3, targetPort: 443}", "spec.trafficPolicy.tunnel.targetHost", "not an FQDN"),
            ("retryBudget: {minRetryConcurrency: -1}", "spec.trafficPolicy.retryBudget.minRetryConcurrency", "not a count"),
            ("connectionPool: {http: {maxRequestsPerConnection: -1}}", "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection", "not a count"),
            ("connectionPool: {tcp: {idleTimeout: 1h1}}", "spec.trafficPolicy.connectionPool.tcp.idleTimeout", "not a duration"),
            ("outlierDetection: {consecutiveGatewayErrors: -1}", "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors", "not a count"),
            ("proxyProtocol: {version: V3}", "spec.trafficPolicy.proxyProtocol.version", "V1 or V2"),
            ("retryBudget: {percent: 150}", "spec.trafficPolicy.retryBudget.percent", "between 0 and 100"),
        ];
        for (block, field, message) in cases {
            let err = policy(block).expect_err(block);
            assert_eq!(err.field, field, "{block}");
            assert!(err.message.contains(message), "{block}: {}", err.message);
        }
        let both = rule("  host: web\n  trafficPolicy:\n    tunnel: {targetHost: e.example.com, targetPort: 443}\n    proxyProtocol: {version: V2}\n");
        assert_eq!(both.unwrap_err().field, "spec.trafficPolicy.proxyProtocol");
        // Per port and per subset alike.
        let err = rule("  host: web\n  subsets:\n  - name: v1\n    labels: {v: '1'}\n    trafficPolicy:\n      portLevelSettings:\n      - port: {number: 80}\n        tls: {mode: BOGUS}\n").unwrap_err();
        assert_eq!(err.field, "spec.subsets[0].trafficPolicy.portLevelSettings[0].tls.mode");
    }

    /// What is valid comes out typed, ready for the proxy.
    #[test]
    fn policy_blocks_come_out_typed() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    loadBalancer:\n",
            "      simple: ROUND_ROBIN\n",
            "      localityLbSetting: {distribute: [{from: 'us-east/*', to: {'us-east/*': 80, 'us-west/*': 20}}]}\n",
            "      warmup: {duration: 90s, minimumPercent: 20, aggression: 2}\n",
            "    connectionPool:\n",
            "      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}\n",
            "      http: {http1MaxPendingRequests: 1024, maxRequestsPerConnection: 10, idleTimeout: 90s, h2UpgradePolicy: UPGRADE}\n",
            "    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50}\n",
            "    tls: {mode: SIMPLE, sni: api.example.com, subjectAltNames: [api.example.com]}\n",
            "    retryBudget: {percent: 25, minRetryConcurrency: 5}\n",
        ))
        .unwrap();
        let p = r.effective(None, 80);
        assert_eq!(p.load_balancer, LoadBalancer::RoundRobin);
        let locality = p.locality.unwrap();
        assert_eq!(locality.distribute[0].1["us-west/*"], 20);
        let warmup = p.warmup.unwrap();
        assert_eq!(
            (warmup.duration, warmup.minimum_percent, warmup.aggression),
            (Duration::from_secs(90), Some(20.0), Some(2.0))
        );
        assert_eq!(p.tcp.connect_timeout, Some(Duration::from_millis(30)));
        assert_eq!(p.tcp.keepalive.unwrap().interval, Some(Duration::from_secs(75)));
        let http = p.http_pool.unwrap();
        assert_eq!((http.http1_max_pending_requests, http.max_requests_per_connection), (Some(1024), Some(10)));
        assert_eq!(
            (http.idle_timeout, http.h2_upgrade_policy),
            (Some(Duration::from_secs(90)), H2UpgradePolicy::Upgrade)
        );
        let outlier = p.outlier_detection.unwrap();
        assert_eq!(outlier.base_ejection_time, Some(Duration::from_secs(900)));
        assert_eq!((outlier.consecutive_5xx_errors, outlier.max_ejection_percent), (Some(7), Some(50)));
        let tls = p.tls.unwrap();
        assert_eq!((tls.mode, tls.sni.as_deref()), (TlsMode::Simple, Some("api.example.com")));
        assert_eq!(p.retry_budget.unwrap().min_retry_concurrency, Some(5));
    }

    #[test]
    fn tunnel_proxy_protocol_and_retry_budget_merge_as_istio_carries_them() {
        let r = rule(concat!(
            "  host: web\n",
            "  trafficPolicy:\n",
            "    tunnel: {targetHost: egress.example.com, targetPort: 8443}\n",
            "    retryBudget: {percent: 10}\n",
            "    portLevelSettings:\n",
            "    - port: {number: 9090}\n",
            "      loadBalancer: {simple: RANDOM}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy:\n",
            "      tunnel: {protocol: POST, targetHost: 10.0.0.9, targetPort: 9443}\n",
            "  - name: v2\n",
            "    labels: {version: v2}\n",
            "    trafficPolicy:\n",
            "      retryBudget: {percent: 30}\n",
            "  - name: v3\n",
            "    labels: {version: v3}\n",
        ))
        .unwrap();
        let top = r.effective(None, 80);
        assert_eq!(top.tunnel.as_ref().map(|t| (t.protocol, t.target_port)), Some((TunnelProtocol::Connect, 8443)));
        let v1 = r.effective(Some("v1"), 80);
        assert_eq!(v1.tunnel.map(|t| (t.protocol, t.target_host)), Some((TunnelProtocol::Post, "10.0.0.9".into())));
        assert_eq!(v1.retry_budget.and_then(|b| b.percent), Some(10.0), "inherited from the top level");
        // A named subset's tunnel is its own: none when it sets none.
        assert!(r.effective(Some("v2"), 80).tunnel.is_none());
        assert!(r.effective(Some("v3"), 80).tunnel.is_none(), "a subset without a policy");
        assert_eq!(r.effective(Some("v2"), 80).retry_budget.and_then(|b| b.percent), Some(30.0));
        // A port-level entry carries only the four merged fields.
        assert!(r.effective(None, 9090).retry_budget.is_none());
        assert_eq!(r.effective(Some("v2"), 9090).retry_budget.and_then(|b| b.percent), Some(30.0));
    }

    #[test]
    fn accepted_where_istio_accepts() {
        let accepted = [
            "tls: {mode: ISTIO_MUTUAL, insecureSkipVerify: true}",
            "tls: {mode: MUTUAL, credentialName: client-cert}",
            "tls: {mode: DISABLE, insecureSkipVerify: true}",
            "loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s, warmup: {duration: 60s}}",
            "loadBalancer: {localityLbSetting: {distribute: [{from: a/b/c/d, to: {'a/*': 100}}]}}",
            "outlierDetection: {consecutiveErrors: -1}",
        ];
        for block in accepted {
            assert!(rule(&format!("  host: web\n  trafficPolicy:\n    {block}\n")).is_ok(), "{block}");
        }
        let both = rule(
            "  host: web\n  trafficPolicy:\n    loadBalancer: {warmupDurationSecs: 30s, warmup: {duration: 60s}}\n",
        );
        assert_eq!(both.unwrap().effective(None, 80).warmup.map(|w| w.duration), Some(Duration::from_secs(60)));
        let refused = rule("  host: web\n  exportTo: ['~']\n").unwrap_err();
        assert_eq!(refused.field, "spec.exportTo[0]", "`~` is for ServiceEntries");
    }
}
