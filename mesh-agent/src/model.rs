//! The validated model: Kubernetes and Istio objects turned into domain types
//! the dataplane can trust, with every rejection named by object and field.
//!
//! An object that fails validation is replaced by its last accepted version
//! when there is one, so a bad edit never takes a working service down.

use crate::policy::{self, DestinationRuleModel};
use crate::resources::{self, IntOrString, Resource};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// An object together with the file (or source) it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct SourcedObject {
    pub file: String,
    pub resource: Resource,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    fn of(resource: &Resource) -> Self {
        let meta = resource.metadata();
        Self {
            kind: resource.kind().to_owned(),
            namespace: meta.namespace_or_default().to_owned(),
            name: meta.name.clone(),
        }
    }
}

/// Why an object (or a whole file) is not served as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub file: Option<String>,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The offending field as a path, e.g. `spec.subsets[0].labels`.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn file(file: &str, message: String) -> Self {
        Self {
            file: Some(file.to_owned()),
            kind: String::new(),
            namespace: String::new(),
            name: String::new(),
            field: String::new(),
            message,
        }
    }

    fn object(object: &SourcedObject, error: FieldError) -> Self {
        let key = ObjectKey::of(&object.resource);
        Self {
            file: Some(object.file.clone()),
            kind: key.kind,
            namespace: key.namespace,
            name: key.name,
            field: error.field,
            message: error.message,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if !self.kind.is_empty() {
            write!(f, "{} {}/{}: ", self.kind, self.namespace, self.name)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A validation failure inside one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortModel {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    /// Empty for a headless service.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortModel>,
}

impl ServiceModel {
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointModel {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// `Kind/name` of the target, usually the pod.
    pub target: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointSliceModel {
    pub namespace: String,
    pub name: String,
    /// From the `kubernetes.io/service-name` label.
    pub service: String,
    pub ipv6: bool,
    pub endpoints: Vec<EndpointModel>,
    pub ports: Vec<SlicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodModel {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

type NsName = (String, String);

/// Everything accepted, by kind and `namespace/name`.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: BTreeMap<NsName, ServiceModel>,
    pub endpoint_slices: BTreeMap<NsName, EndpointSliceModel>,
    pub pods: BTreeMap<NsName, PodModel>,
    pub destination_rules: BTreeMap<NsName, DestinationRuleModel>,
    pub rejections: Vec<Rejection>,
    /// The raw objects accepted, kept as the "last good" versions.
    accepted: BTreeMap<ObjectKey, SourcedObject>,
}

enum Accepted {
    Service(ServiceModel),
    Slice(EndpointSliceModel),
    Pod(PodModel),
    Rule(DestinationRuleModel),
}

impl Model {
    /// Validates `objects`; an invalid object falls back to its version in
    /// `previous` when that one was accepted.
    pub fn build(
        objects: &[SourcedObject],
        mut rejections: Vec<Rejection>,
        previous: &Model,
        cluster_domain: &str,
    ) -> Model {
        let mut model = Model::default();
        for object in objects {
            let key = ObjectKey::of(&object.resource);
            if let Some(first) = model.accepted.get(&key) {
                rejections.push(Rejection::object(
                    object,
                    FieldError::new(
                        "metadata.name",
                        format!("already defined in {}; this copy is ignored", first.file),
                    ),
                ));
                continue;
            }
            let outcome = match validate(object, cluster_domain) {
                Ok(accepted) => Some((object.clone(), accepted)),
                Err(error) => {
                    let mut rejection = Rejection::object(object, error);
                    let fallback = previous
                        .accepted
                        .get(&key)
                        .and_then(|last| validate(last, cluster_domain).ok().map(|accepted| (last.clone(), accepted)));
                    if fallback.is_some() {
                        rejection.message.push_str(" (the last good version keeps serving)");
                    }
                    rejections.push(rejection);
                    fallback
                }
            };
            if let Some((raw, accepted)) = outcome {
                model.insert(key, raw, accepted);
            }
        }
        model.check_rules_against_services(previous, cluster_domain, &mut rejections);
        model.rejections = rejections;
        model
    }

    fn insert(&mut self, key: ObjectKey, raw: SourcedObject, accepted: Accepted) {
        let id = (key.namespace.clone(), key.name.clone());
        match accepted {
            Accepted::Service(s) => drop(self.services.insert(id, s)),
            Accepted::Slice(s) => drop(self.endpoint_slices.insert(id, s)),
            Accepted::Pod(p) => drop(self.pods.insert(id, p)),
            Accepted::Rule(r) => drop(self.destination_rules.insert(id, r)),
        }
        self.accepted.insert(key, raw);
    }

    /// A DestinationRule's `portLevelSettings` must name ports its Service has.
    fn check_rules_against_services(
        &mut self,
        previous: &Model,
        cluster_domain: &str,
        rejections: &mut Vec<Rejection>,
    ) {
        let service_ports: BTreeMap<String, BTreeSet<u16>> = self
            .services
            .values()
            .map(|s| (s.fqdn(cluster_domain), s.ports.iter().map(|p| p.port).collect()))
            .collect();
        let check = |rule: &DestinationRuleModel| -> Result<(), FieldError> {
            match service_ports.get(&rule.host) {
                Some(ports) => rule.check_ports(ports),
                None => Ok(()), // a host with no Service here (yet): nothing to check against
            }
        };
        let ids: Vec<NsName> = self.destination_rules.keys().cloned().collect();
        for id in ids {
            let error = match check(&self.destination_rules[&id]) {
                Ok(()) => continue,
                Err(error) => error,
            };
            let key = ObjectKey { kind: "DestinationRule".into(), namespace: id.0.clone(), name: id.1.clone() };
            let raw = self.accepted[&key].clone();
            let mut rejection = Rejection::object(&raw, error);
            let fallback = previous
                .destination_rules
                .get(&id)
                .filter(|last| check(last).is_ok())
                .zip(previous.accepted.get(&key))
                .map(|(last, last_raw)| (last.clone(), last_raw.clone()));
            match fallback {
                Some((last, last_raw)) if last_raw != raw => {
                    rejection.message.push_str(" (the last good version keeps serving)");
                    self.destination_rules.insert(id, last);
                    self.accepted.insert(key, last_raw);
                }
                _ => {
                    self.destination_rules.remove(&id);
                    self.accepted.remove(&key);
                }
            }
            rejections.push(rejection);
        }
    }

    /// The DestinationRule that applies to a service host: an exact host
    /// wins over a wildcard, the longest wildcard over shorter ones, and
    /// among equals the first by namespace/name.
    pub fn rule_for_host(&self, fqdn: &str) -> Option<&DestinationRuleModel> {
        let mut best: Option<(usize, &DestinationRuleModel)> = None;
        for rule in self.destination_rules.values() {
            let specificity = if rule.host == fqdn {
                usize::MAX
            } else if let Some(suffix) = rule.host.strip_prefix('*') {
                if fqdn.ends_with(suffix) {
                    suffix.len()
                } else {
                    continue;
                }
            } else {
                continue;
            };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, rule));
            }
        }
        best.map(|(_, rule)| rule)
    }
}

fn validate(object: &SourcedObject, cluster_domain: &str) -> Result<Accepted, FieldError> {
    match &object.resource {
        Resource::Service(s) => validate_service(s).map(Accepted::Service),
        Resource::EndpointSlice(s) => validate_slice(s).map(Accepted::Slice),
        Resource::Pod(p) => validate_pod(p).map(Accepted::Pod),
        Resource::DestinationRule(r) => policy::validate_destination_rule(r, cluster_domain).map(Accepted::Rule),
    }
}

pub fn parse_protocol(field: &str, protocol: Option<&str>) -> Result<Option<Protocol>, FieldError> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(Some(Protocol::Tcp)),
        "UDP" => Ok(Some(Protocol::Udp)),
        "SCTP" => Ok(None), // valid in Kubernetes, not balanced by this dataplane
        other => Err(FieldError::new(field, format!("unknown protocol {other:?}; expected TCP, UDP or SCTP"))),
    }
}

pub fn parse_port(field: &str, port: i64) -> Result<u16, FieldError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("{port} is not a port number (1-65535)")))
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, FieldError> {
    text.parse().map_err(|_| FieldError::new(field, format!("{text:?} is not an IP address")))
}

fn validate_service(service: &resources::Service) -> Result<ServiceModel, FieldError> {
    let spec = &service.spec;
    let mut ips: Vec<String> = spec.cluster_ips.clone();
    if ips.is_empty() {
        ips.extend(spec.cluster_ip.clone());
    }
    let mut cluster_ips = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let field =
            if spec.cluster_ips.is_empty() { "spec.clusterIP".to_owned() } else { format!("spec.clusterIPs[{i}]") };
        if ip.is_empty() || ip == "None" {
            continue;
        }
        cluster_ips.push(parse_ip(&field, ip)?);
    }
    if let (Some(single), Some(first)) = (&spec.cluster_ip, spec.cluster_ips.first()) {
        if single != first {
            return Err(FieldError::new("spec.clusterIPs[0]", format!("must equal spec.clusterIP {single:?}")));
        }
    }
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let number = parse_port(&at("port"), port.port)?;
        let Some(protocol) = parse_protocol(&at("protocol"), port.protocol.as_deref())? else {
            continue;
        };
        if !seen.insert((number, protocol)) {
            return Err(FieldError::new(at("port"), format!("{number}/{protocol:?} is listed twice")));
        }
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(parse_port(&at("targetPort"), *n)?),
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(parse_port(&at("targetPort"), n)?),
                Err(_) if s.is_empty() => return Err(FieldError::new(at("targetPort"), "empty port name")),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        if spec.ports.len() > 1 && port.name.as_deref().unwrap_or("").is_empty() {
            return Err(FieldError::new(at("name"), "required when a Service has more than one port"));
        }
        ports.push(PortModel {
            name: port.name.clone().unwrap_or_default(),
            port: number,
            protocol,
            target_port,
            app_protocol: port.app_protocol.clone(),
        });
    }
    Ok(ServiceModel {
        namespace: service.metadata.namespace_or_default().to_owned(),
        name: service.metadata.name.clone(),
        cluster_ips,
        ports,
    })
}

fn validate_slice(slice: &resources::EndpointSlice) -> Result<EndpointSliceModel, FieldError> {
    let ipv6 = match slice.address_type.as_str() {
        "IPv4" => false,
        "IPv6" => true,
        "FQDN" => return Err(FieldError::new("addressType", "FQDN endpoints are not balanced by this dataplane")),
        other => return Err(FieldError::new("addressType", format!("{other:?} is not IPv4 or IPv6"))),
    };
    let service = slice
        .metadata
        .labels
        .get(SERVICE_NAME_LABEL)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            FieldError::new(
                format!("metadata.labels[{SERVICE_NAME_LABEL}]"),
                "required: it names the Service these endpoints belong to",
            )
        })?
        .clone();
    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let ip = parse_ip(&field, address)?;
            if ip.is_ipv6() != ipv6 {
                return Err(FieldError::new(
                    field,
                    format!("{address} does not match addressType {}", slice.address_type),
                ));
            }
            addresses.push(ip);
        }
        let target = endpoint
            .target_ref
            .as_ref()
            .and_then(|t| Some(format!("{}/{}", t.kind.as_deref().unwrap_or("Pod"), t.name.as_deref()?)));
        endpoints.push(EndpointModel { addresses, ready: endpoint.conditions.ready.unwrap_or(true), target });
    }
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        let number = port.port.ok_or_else(|| FieldError::new(at("port"), "required"))?;
        let Some(protocol) = parse_protocol(&at("protocol"), port.protocol.as_deref())? else {
            continue;
        };
        ports.push(SlicePort {
            name: port.name.clone().unwrap_or_default(),
            port: parse_port(&at("port"), number)?,
            protocol,
        });
    }
    Ok(EndpointSliceModel {
        namespace: slice.metadata.namespace_or_default().to_owned(),
        name: slice.metadata.name.clone(),
        service,
        ipv6,
        endpoints,
        ports,
    })
}

fn validate_pod(pod: &resources::Pod) -> Result<PodModel, FieldError> {
    let mut ips = Vec::new();
    if let Some(ip) = pod.status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        ips.push(parse_ip("status.podIP", ip)?);
    }
    for (i, entry) in pod.status.pod_ips.iter().enumerate() {
        let ip = parse_ip(&format!("status.podIPs[{i}].ip"), &entry.ip)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(PodModel {
        namespace: pod.metadata.namespace_or_default().to_owned(),
        name: pod.metadata.name.clone(),
        labels: pod.metadata.labels.clone(),
        ips,
        node: pod.spec.node_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_file;

    pub const DOMAIN: &str = "cluster.local";

    fn objects(text: &str) -> Vec<SourcedObject> {
        parse_file("test.yaml", text).unwrap()
    }

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIPs: [10.96.0.10, fd00:96::10]\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}\n";

    #[test]
    fn service_ports_and_addresses_are_validated() {
        let model = Model::build(&objects(SERVICE), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        let web = &model.services[&("shop".into(), "web".into())];
        assert_eq!(web.cluster_ips.len(), 2);
        assert_eq!(web.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(web.ports[1].protocol, Protocol::Udp);
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_good_version() {
        let good = Model::build(&objects(SERVICE), vec![], &Model::default(), DOMAIN);
        let broken = SERVICE.replace("port: 80,", "port: 70000,");
        let next = Model::build(&objects(&broken), vec![], &good, DOMAIN);
        assert_eq!(next.rejections.len(), 1);
        let shown = next.rejections[0].to_string();
        assert!(shown.contains("Service shop/web: spec.ports[0].port: 70000 is not a port number"), "{shown}");
        assert!(shown.contains("last good version"), "{shown}");
        assert_eq!(next.services[&("shop".into(), "web".into())].ports[0].port, 80);
    }

    #[test]
    fn an_invalid_new_object_is_not_served() {
        let broken = SERVICE.replace("10.96.0.10", "10.96.0.300");
        let model = Model::build(&objects(&broken), vec![], &Model::default(), DOMAIN);
        assert!(model.services.is_empty());
        assert_eq!(model.rejections[0].field, "spec.clusterIPs[0]");
    }

    #[test]
    fn endpoint_slices_need_their_service_label_and_matching_family() {
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n- addresses: [fd00::1]\n";
        let model = Model::build(&objects(slice), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.rejections[0].field, "endpoints[0].addresses[0]");
        let unlabeled =
            slice.replace("labels: {kubernetes.io/service-name: web}", "labels: {}").replace("fd00::1", "10.0.0.1");
        let model = Model::build(&objects(&unlabeled), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections[0].field.contains(SERVICE_NAME_LABEL));
    }

    #[test]
    fn duplicate_objects_are_reported() {
        let twice = format!("{SERVICE}---\n{SERVICE}");
        let model = Model::build(&objects(&twice), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.services.len(), 1);
        assert!(model.rejections[0].message.contains("already defined"));
    }

    #[test]
    fn rule_port_must_name_a_service_port() {
        let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec:\n  host: web\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 8080}\n      loadBalancer: {simple: RANDOM}\n";
        let text = format!("{SERVICE}---\n{rule}");
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert!(model.destination_rules.is_empty());
        let shown = model.rejections[0].to_string();
        assert!(
            shown.contains("DestinationRule shop/web: spec.trafficPolicy.portLevelSettings[0].port.number"),
            "{shown}"
        );
        // The fixed rule is accepted, and a later bad edit falls back to it.
        let fixed = text.replace("8080", "80");
        let good = Model::build(&objects(&fixed), vec![], &Model::default(), DOMAIN);
        assert_eq!(good.destination_rules.len(), 1);
        let again = Model::build(&objects(&text), vec![], &good, DOMAIN);
        assert_eq!(again.destination_rules.len(), 1);
        assert!(again.rejections[0].message.contains("last good version"));
    }

    #[test]
    fn most_specific_rule_wins() {
        let rules = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: all, namespace: shop}\nspec: {host: '*.shop.svc.cluster.local'}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: web, namespace: other}\nspec: {host: web.shop.svc.cluster.local}\n";
        let model = Model::build(&objects(rules), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        assert_eq!(model.rule_for_host("web.shop.svc.cluster.local").unwrap().name, "web");
        assert_eq!(model.rule_for_host("db.shop.svc.cluster.local").unwrap().name, "all");
        assert!(model.rule_for_host("db.else.svc.cluster.local").is_none());
    }
}
