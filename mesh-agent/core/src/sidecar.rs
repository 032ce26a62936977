//! One Sidecar: validated as Istio's `ValidateSidecar` does, and which one
//! applies to a workload, as Istio resolves them: a Sidecar of the
//! workload's namespace whose selector matches its labels (the first by
//! name), else its namespace's Sidecar without a selector, else the root
//! namespace's. Its outbound traffic policy and its `egress` hosts are
//! enforced in the kernel (and the hosts in the proxy's routing too);
//! `ingress` and `inboundConnectionPool` are warned.

use crate::api::Sidecar;
use crate::destination_rule::ROOT_NAMESPACE;
use crate::field::{FieldError, Path};
use crate::host::{host_subset_of, is_istio_label, labels_match, validate_host_name, validate_labels};
use serde::Serialize;
use std::collections::BTreeMap;

/// Istio's `outboundTrafficPolicy.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    /// Anything outside the registry passes through (Istio's default).
    #[default]
    AllowAny,
    /// Only the registry: Services, ServiceEntries, pods and nodes.
    RegistryOnly,
}

impl OutboundPolicy {
    pub fn parse(text: &str) -> Option<OutboundPolicy> {
        match text {
            "ALLOW_ANY" => Some(OutboundPolicy::AllowAny),
            "REGISTRY_ONLY" => Some(OutboundPolicy::RegistryOnly),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SidecarModel {
    pub namespace: String,
    pub name: String,
    /// None: the namespace's default Sidecar.
    pub selector: Option<BTreeMap<String, String>>,
    /// None: the mesh-wide default applies.
    pub outbound: Option<OutboundPolicy>,
    /// What its workloads may reach; empty: every service.
    pub egress: Vec<EgressListener>,
}

/// One `egress` listener: hosts as (namespace pattern, host pattern), on
/// one port or all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressListener {
    pub port: Option<u16>,
    pub hosts: Vec<(String, String)>,
}

impl SidecarModel {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether its workloads see `host` (a Service's FQDN, or a
    /// ServiceEntry's host) of `namespace` on `port`. Namespaces: `*` any,
    /// `.` the Sidecar's own, `~` none; hosts: `*`, `*.suffix` or a name.
    pub fn sees(&self, namespace: &str, host: &str, port: u16) -> bool {
        if self.egress.is_empty() {
            return true;
        }
        let namespace_fits = |pattern: &str| match pattern {
            "*" => true,
            "~" => false,
            "." => namespace == self.namespace,
            name => namespace == name,
        };
        (self.egress.iter())
            .filter(|listener| listener.port.is_none_or(|p| p == port))
            .any(|listener| listener.hosts.iter().any(|(ns, h)| namespace_fits(ns) && host_subset_of(host, h)))
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|selector| labels_match(selector, labels))
    }
}

/// Istio's `ValidateSidecar`.
pub fn validate_sidecar(object: &Sidecar) -> Result<SidecarModel, FieldError> {
    let spec = &object.spec;
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        return Err(FieldError::new("spec", "empty: a Sidecar needs egress, ingress or outboundTrafficPolicy"));
    }
    if let Some(selector) = &spec.workload_selector {
        if selector.labels.is_empty() {
            return Err(FieldError::new("spec.workloadSelector.labels", "required when workloadSelector is set"));
        }
        validate_labels("spec.workloadSelector.labels", &selector.labels)?;
    }
    let mut egress_listeners = Vec::new();
    for (i, egress) in spec.egress.iter().enumerate() {
        let at = Path::new("spec").index("egress", i);
        let port = match &egress.port {
            Some(port) => Some(crate::field::parse_port(&at.child("port").field("number"), port.number)?),
            None => None,
        };
        let mut hosts = Vec::new();
        if egress.hosts.is_empty() {
            return Err(FieldError::new(at.field("hosts"), "required: an egress listener needs hosts"));
        }
        for (j, host) in egress.hosts.iter().enumerate() {
            let field = format!("{}[{j}]", at.field("hosts"));
            let Some((namespace, name)) = host.split_once('/') else {
                return Err(FieldError::new(
                    field,
                    format!("{host:?} is not namespace/host (e.g. ./*, */api.example.com)"),
                ));
            };
            if !matches!(namespace, "*" | "." | "~") && !is_istio_label(namespace) {
                return Err(FieldError::new(field, format!("{namespace:?} is not *, ., ~ or a namespace")));
            }
            if name != "*" {
                validate_host_name(&field, name)?;
            }
            hosts.push((namespace.to_owned(), name.trim_end_matches('.').to_ascii_lowercase()));
        }
        egress_listeners.push(EgressListener { port, hosts });
    }
    let outbound = match spec.outbound_traffic_policy.as_ref().and_then(|p| p.mode.as_deref()) {
        None => None,
        Some(mode) => Some(OutboundPolicy::parse(mode).ok_or_else(|| {
            FieldError::new(
                "spec.outboundTrafficPolicy.mode",
                format!("{mode:?} is not a mode (REGISTRY_ONLY or ALLOW_ANY)"),
            )
        })?),
    };
    Ok(SidecarModel {
        namespace: object.metadata.namespace_or_default().to_owned(),
        name: object.metadata.name.clone(),
        selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        outbound,
        egress: egress_listeners,
    })
}

/// The Sidecar that applies to a workload in `namespace` with `labels`
/// (`sidecars` in name order, as the model keeps them).
/// `sidecars` gives them afresh for each pass.
pub fn sidecar_for<'a, I: Iterator<Item = &'a SidecarModel>>(
    sidecars: impl Fn() -> I,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<&'a SidecarModel> {
    let in_namespace = || sidecars().filter(|s| s.namespace == namespace);
    (in_namespace().find(|s| s.selects(labels)))
        .or_else(|| in_namespace().find(|s| s.selector.is_none()))
        .or_else(|| sidecars().find(|s| s.namespace == ROOT_NAMESPACE && s.selector.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Resource;
    use crate::decode::parse_file;

    fn sidecar(namespace: &str, name: &str, spec: &str) -> Result<SidecarModel, FieldError> {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}"
        );
        let mut objects = parse_file("s.yaml", &text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
        let Resource::Sidecar(object) = (*objects.remove(0).resource).clone() else { panic!("not a Sidecar") };
        validate_sidecar(&object)
    }

    #[test]
    fn validation_follows_istio() {
        let cases = [
            ("  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n", None),
            ("  egress: [{hosts: ['./*', 'istio-system/*', '*/api.example.com', '~/*']}]\n", None),
            ("  workloadSelector: {labels: {app: web}}\n  egress: [{hosts: ['./*']}]\n", None),
            ("  {}\n", Some("spec")),
            ("  outboundTrafficPolicy: {mode: DENY}\n", Some("spec.outboundTrafficPolicy.mode")),
            ("  egress: [{hosts: [api.example.com]}]\n", Some("spec.egress[0].hosts[0]")),
            ("  egress: [{hosts: ['Bad_NS/*']}]\n", Some("spec.egress[0].hosts[0]")),
            ("  egress: [{hosts: []}]\n", Some("spec.egress[0].hosts")),
            ("  workloadSelector: {labels: {}}\n  egress: [{hosts: ['./*']}]\n", Some("spec.workloadSelector.labels")),
        ];
        for (spec, expected) in cases {
            let got = sidecar("shop", "s", spec).err().map(|e| e.field);
            assert_eq!(got.as_deref(), expected, "{spec}");
        }
    }

    #[test]
    fn the_most_specific_sidecar_applies() {
        let all = [
            sidecar("istio-system", "default", "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n").unwrap(),
            sidecar("shop", "default", "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n").unwrap(),
            sidecar(
                "shop",
                "web",
                "  workloadSelector: {labels: {app: web}}\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
            )
            .unwrap(),
        ];
        let labels = |app: &str| BTreeMap::from([("app".to_owned(), app.to_owned())]);
        let name = |namespace: &str, app: &str| sidecar_for(|| all.iter(), namespace, &labels(app)).map(|s| s.id());
        assert_eq!(name("shop", "web").as_deref(), Some("shop/web"));
        assert_eq!(name("shop", "db").as_deref(), Some("shop/default"));
        assert_eq!(name("other", "web").as_deref(), Some("istio-system/default"));
        assert_eq!(sidecar_for(|| all[1..].iter(), "other", &labels("web")), None);
    }

    #[test]
    fn egress_hosts_say_what_a_workload_sees() {
        let scoped = sidecar(
            "shop",
            "s",
            "  egress:\n  - hosts: ['./*', 'istio-system/*.example.com']\n  - port: {number: 5432, name: pg, protocol: TCP}\n    hosts: ['db/pg.db.svc.cluster.local']\n",
        )
        .unwrap();
        assert!(scoped.sees("shop", "reviews.shop.svc.cluster.local", 9080));
        assert!(scoped.sees("istio-system", "api.example.com", 443));
        assert!(!scoped.sees("istio-system", "example.com", 443));
        assert!(scoped.sees("db", "pg.db.svc.cluster.local", 5432));
        assert!(!scoped.sees("db", "pg.db.svc.cluster.local", 5433), "that listener is for 5432 only");
        assert!(!scoped.sees("other", "web.other.svc.cluster.local", 80));
        let open = sidecar("shop", "o", "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n").unwrap();
        assert!(open.sees("other", "web.other.svc.cluster.local", 80), "no egress: everything");
    }
}
