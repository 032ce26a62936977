//! The validated model: Kubernetes and Istio objects turned into domain types
//! the dataplane can trust, with every rejection named by object and field.
//!
//! An object that fails validation (or, from the file source, does not even
//! decode) is replaced by its last accepted version when there is one, so a
//! bad edit never takes a working service down.

use crate::api::{self, IntOrString, Resource};
use crate::destination_rule::{self, DestinationRuleModel};
use crate::field::{parse_port, FieldError};
use crate::host::{host_specificity, labels_match, Labels};
// The submodules, not `gateway` itself: its plan reads the model.
use crate::gateway::object::{validate_gateway, GatewayModel};
use crate::locality::Locality;
use crate::node::NodeContext;
use crate::object::{ObjectKey, Rejection, SourceBatch, SourcedObject, Warning, WarningReason};
use crate::route::{self, VirtualServiceModel};
use crate::service_entry::{
    validate_service_entry, validate_workload_entry, Resolved, ServiceEntryModel, WorkloadEntryModel,
};
use crate::sidecar::{validate_sidecar, SidecarModel};
use crate::warnings::GatewayPresence;
use imbl::OrdMap;
use serde::Serialize;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

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
    /// The pods it selects (a gateway finds its own Service by it).
    pub selector: BTreeMap<String, String>,
    /// The host of a ServiceEntry this service stands for (its name is the
    /// host then): the name clients use, instead of the `.svc` one.
    pub host: Option<String>,
    /// `trafficDistribution: PreferClose`.
    pub prefer_close: bool,
}

impl ServiceModel {
    /// The port its pods listen on for service port `port`, when this
    /// Service selects pods with `labels` and names the target by number.
    pub fn target_port_for(&self, labels: &BTreeMap<String, String>, port: u16) -> Option<u16> {
        let selects = !self.selector.is_empty() && labels_match(&self.selector, labels);
        let entry = self.ports.iter().find(|p| p.port == port).filter(|_| selects)?;
        match entry.target_port {
            TargetPort::Number(target) => Some(target),
            TargetPort::Name(_) => None,
        }
    }
}

impl ServiceModel {
    pub fn fqdn(&self, cluster_domain: &str) -> String {
        match &self.host {
            Some(host) => host.clone(),
            None => format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace),
        }
    }
}

/// One endpoint. A large cluster holds hundreds of thousands: the parts
/// the snapshot's backends copy are shared (`Arc`), not cloned, and the
/// one address an endpoint almost always has is inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointModel {
    pub addresses: SmallVec<[IpAddr; 1]>,
    pub ready: bool,
    /// `Kind/name` of the target, usually the pod.
    pub target: Option<Arc<str>>,
    /// Its own labels (a ServiceEntry endpoint's); None: its pod's.
    pub labels: Option<Labels>,
    /// Where it runs: a ServiceEntry endpoint's `locality`, or an
    /// EndpointSlice endpoint's zone (its region is the cluster's); shared
    /// by the endpoints of a slice in the same place.
    pub locality: Arc<Locality>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
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
    /// Every entry has its number: one written without (`all ports`) is
    /// filled in from the Service's numeric `targetPort` when the model is
    /// built, and left out when the Service has none.
    pub ports: Vec<SlicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodModel {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// `metadata.uid`: the kubelet names the pod's cgroup by it.
    pub uid: Option<String>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

type NsName = (String, String);

/// The TLS credentials of the model, by `(namespace, name)`.
pub type Secrets = OrdMap<NsName, SecretModel>;

/// An EndpointSlice port entry with no number: (name, protocol).
type UnnumberedPort = (String, Protocol);

/// Everything accepted, by kind and `namespace/name`. Persistent maps: a
/// model is cloned in O(1), and a build from a previous model changes only
/// what changed.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub services: OrdMap<NsName, ServiceModel>,
    pub endpoint_slices: OrdMap<NsName, EndpointSliceModel>,
    pub pods: OrdMap<NsName, PodModel>,
    pub destination_rules: OrdMap<NsName, DestinationRuleModel>,
    pub virtual_services: OrdMap<NsName, VirtualServiceModel>,
    /// Istio Gateways, for the gateway processes (their selectors say which).
    /// Istio ServiceEntries: hosts (and addresses) outside the Services.
    pub service_entries: OrdMap<NsName, ServiceEntryModel>,
    pub gateways: OrdMap<NsName, GatewayModel>,
    /// TLS credentials for DestinationRule `credentialName`.
    pub secrets: Secrets,
    pub rejections: Vec<Rejection>,
    /// The fields set but not honoured of every object that serves (the
    /// version that serves: a last good one brings its own).
    pub warnings: Vec<Warning>,
    /// Istio WorkloadEntries: workloads outside Kubernetes, for the
    /// ServiceEntries that select them.
    pub workload_entries: OrdMap<NsName, WorkloadEntryModel>,
    /// Istio Sidecars: which workloads reach what.
    pub sidecars: OrdMap<NsName, SidecarModel>,
    /// What the agent knows of its node (policy default, pod cgroups).
    pub node: Arc<NodeContext>,
    /// What the agent's resolver answered for the names of `DNS`
    /// ServiceEntries ([`Model::dns_names`]); empty until it does.
    pub resolved: Arc<Resolved>,
    /// The raw objects accepted, kept as the "last good" versions.
    accepted: OrdMap<ObjectKey, SourcedObject>,
    /// `destination_rules` by host, once they are final in a build.
    rule_hosts: RuleHosts,
    /// How many of `warnings` the build found: the compiler appends its
    /// own after them, and a model compiled again drops those first.
    pub(crate) built_warnings: usize,
    /// Slice ports waiting for their Service's target port (during a build;
    /// kept after it: those slices were filled in from their Service).
    unnumbered: OrdMap<NsName, Vec<UnnumberedPort>>,
    /// The warnings of each serving object's own fields, by object (only
    /// objects that have some).
    object_warnings: OrdMap<ObjectKey, Vec<Warning>>,
    /// Warnings about Gateways and the VirtualServices bound to them (they
    /// depend on the pods), then about delegations.
    gateway_warnings: Vec<Warning>,
    delegation_warnings: Vec<Warning>,
    /// The source's own problems in the batch this was built from, and
    /// whether it had undecodable objects: a build of changed objects only
    /// needs both as they were.
    source_problems: Vec<Rejection>,
    source_undecodable: bool,
}

/// The kinds no other object's validation or checks look at: a batch that
/// changed only these is built from the previous model, object by object.
/// They are also the kinds that change all the time in a running cluster.
const CHANGED_ALONE: [&str; 2] = ["EndpointSlice", "Pod"];

/// The DestinationRules by the host they name, so that a service (at
/// compile time, and a request in the proxy) finds its rules without a scan
/// of every rule: exact hosts by name, wildcard hosts (few) in a list.
#[derive(Clone, Debug, Default)]
struct RuleHosts {
    exact: std::collections::HashMap<String, Vec<NsName>>,
    wildcards: Vec<NsName>,
    /// How many rules it indexes: a model whose rules changed after
    /// (none does) is scanned whole instead.
    count: usize,
}

impl RuleHosts {
    fn of(rules: &OrdMap<NsName, DestinationRuleModel>) -> Self {
        let mut hosts = RuleHosts { count: rules.len(), ..RuleHosts::default() };
        for (id, rule) in rules {
            if rule.host.starts_with('*') {
                hosts.wildcards.push(id.clone());
            } else {
                let host = rule.host.strip_suffix('.').unwrap_or(&rule.host).to_ascii_lowercase();
                hosts.exact.entry(host).or_default().push(id.clone());
            }
        }
        hosts
    }

    /// The rules that may cover `fqdn` (each still checked by
    /// [`host_specificity`]), or None when the index does not cover `rules`.
    fn candidates<'a>(
        &'a self,
        rules: &'a OrdMap<NsName, DestinationRuleModel>,
        fqdn: &str,
    ) -> Option<impl Iterator<Item = &'a DestinationRuleModel> + 'a> {
        if self.count != rules.len() {
            return None;
        }
        let name = fqdn.strip_suffix('.').unwrap_or(fqdn);
        let exact = match name.bytes().any(|b| b.is_ascii_uppercase()) {
            true => self.exact.get(&name.to_ascii_lowercase()),
            false => self.exact.get(name),
        };
        let ids = exact.into_iter().flatten().chain(&self.wildcards);
        Some(ids.filter_map(move |id| rules.get(id)))
    }
}

// One at a time, while a build runs: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Accepted {
    Service(ServiceModel),
    Slice(EndpointSliceModel, Vec<UnnumberedPort>),
    Pod(PodModel),
    Rule(DestinationRuleModel),
    VirtualService(VirtualServiceModel),
    Gateway(GatewayModel),
    ServiceEntry(ServiceEntryModel),
    Sidecar(SidecarModel),
    WorkloadEntry(WorkloadEntryModel),
    Secret(SecretModel),
}

/// One copy of an object in the input: decoded, or present but undecodable.
#[derive(Clone, Copy)]
enum Candidate<'a> {
    Decoded(&'a SourcedObject),
    Undecodable(&'a Rejection),
}

impl Candidate<'_> {
    fn file(&self) -> Option<&str> {
        match self {
            Candidate::Decoded(object) => Some(&object.file),
            Candidate::Undecodable(rejection) => rejection.file.as_deref(),
        }
    }
}

impl Model {
    /// Validates `objects`; an invalid object falls back to its version in
    /// `previous` when that one was accepted.
    pub fn build(
        objects: &[SourcedObject],
        rejections: Vec<Rejection>,
        previous: &Model,
        cluster_domain: &str,
    ) -> Model {
        Self::build_all(objects, &[], rejections, previous, cluster_domain)
    }

    /// [`Model::build`] for one load of a source, whose objects that did not
    /// decode fall back to their last accepted version too.
    pub fn from_batch(batch: &SourceBatch, previous: &Model, cluster_domain: &str) -> Model {
        if let Some(model) = Self::build_changed(batch, previous, cluster_domain) {
            return model;
        }
        let mut model =
            Self::build_all(&batch.objects, &batch.undecodable, batch.rejections.clone(), previous, cluster_domain);
        model.source_problems = batch.rejections.clone();
        model.source_undecodable = !batch.undecodable.is_empty();
        model
    }

    /// `previous` with the objects `batch` says changed validated again and
    /// the rest shared: a change costs what changed, not the cluster. Only
    /// when every change is of a kind in [`CHANGED_ALONE`] and the source's
    /// problems are the ones `previous` was built with; None otherwise.
    fn build_changed(batch: &SourceBatch, previous: &Model, cluster_domain: &str) -> Option<Model> {
        let changed = batch.changed.as_ref()?;
        let alone = changed.iter().all(|key| CHANGED_ALONE.contains(&key.kind.as_str()));
        let same_problems = batch.rejections == previous.source_problems;
        let undecodable = previous.source_undecodable || !batch.undecodable.is_empty();
        if previous.accepted.is_empty() || !alone || !same_problems || undecodable {
            return None;
        }
        // The changed objects as the batch has them (absent: gone).
        let wanted: std::collections::HashSet<(&str, &str, &str)> =
            changed.iter().map(|k| (k.kind.as_str(), k.namespace.as_str(), k.name.as_str())).collect();
        let mut current: BTreeMap<ObjectKey, &SourcedObject> = BTreeMap::new();
        for object in batch.objects.iter().filter(|o| CHANGED_ALONE.contains(&o.resource.kind())) {
            let meta = object.resource.metadata();
            let key = (object.resource.kind(), meta.namespace_or_default(), meta.name.as_str());
            // Two copies: the whole build reports them.
            if wanted.contains(&key) && current.insert(ObjectKey::of(&object.resource), object).is_some() {
                return None;
            }
        }
        let mut model = previous.clone();
        model.rejections.retain(|r| !wanted.contains(&(r.kind.as_str(), r.namespace.as_str(), r.name.as_str())));
        for key in changed {
            model.remove(key);
            let Some(object) = current.get(key) else { continue };
            match validate(object, cluster_domain) {
                // Its ports come from its Service: the whole build fills them.
                Ok(Accepted::Slice(_, unnumbered)) if !unnumbered.is_empty() => return None,
                Ok(accepted) => model.insert(key.clone(), (*object).clone(), accepted),
                Err(error) => {
                    let mut rejection = Rejection::object(object, error);
                    match previous.last_good(key, cluster_domain) {
                        // As above: a whole build fills that one's ports.
                        Some((_, Accepted::Slice(_, unnumbered))) if !unnumbered.is_empty() => return None,
                        Some((raw, accepted)) => {
                            rejection.message.push_str(LAST_GOOD_SERVES);
                            model.insert(key.clone(), raw, accepted);
                        }
                        None => {}
                    }
                    model.rejections.push(rejection);
                }
            }
            if let Some(object) = model.accepted.get(key) {
                let warnings = own_warnings(previous, key, object);
                if !warnings.is_empty() {
                    model.object_warnings.insert(key.clone(), warnings);
                }
            }
        }
        if changed.iter().any(|key| key.kind == "Pod") && !model.gateways.is_empty() {
            model.gateway_warnings = model.gateway_reference_warnings();
        }
        model.assemble_warnings();
        Some(model)
    }

    /// The objects that differ from `previous`, when they are all of the
    /// kinds in [`CHANGED_ALONE`] and every other kind's objects are
    /// `previous`'s very own (shared, as [`Model::build_changed`] leaves
    /// them); None otherwise. Costs what changed: the maps share the rest.
    pub fn changed_since(&self, previous: &Model) -> Option<BTreeSet<ObjectKey>> {
        let shared = self.services.ptr_eq(&previous.services)
            && self.destination_rules.ptr_eq(&previous.destination_rules)
            && self.virtual_services.ptr_eq(&previous.virtual_services)
            && self.service_entries.ptr_eq(&previous.service_entries)
            && self.gateways.ptr_eq(&previous.gateways)
            && self.secrets.ptr_eq(&previous.secrets)
            && self.workload_entries.ptr_eq(&previous.workload_entries)
            && self.sidecars.ptr_eq(&previous.sidecars);
        if !shared {
            return None;
        }
        let mut keys = BTreeSet::new();
        for item in previous.accepted.diff(&self.accepted) {
            let key = match item {
                imbl::ordmap::DiffItem::Add(key, _) | imbl::ordmap::DiffItem::Remove(key, _) => key,
                imbl::ordmap::DiffItem::Update { new: (key, _), .. } => key,
            };
            if !CHANGED_ALONE.contains(&key.kind.as_str()) {
                return None;
            }
            keys.insert(key.clone());
        }
        Some(keys)
    }

    /// Takes `key` out of the model (it is in [`CHANGED_ALONE`]).
    fn remove(&mut self, key: &ObjectKey) {
        let id = (key.namespace.clone(), key.name.clone());
        match key.kind.as_str() {
            "EndpointSlice" => {
                self.endpoint_slices.remove(&id);
                self.unnumbered.remove(&id);
            }
            "Pod" => drop(self.pods.remove(&id)),
            _ => {}
        }
        self.accepted.remove(key);
        self.object_warnings.remove(key);
    }

    /// `warnings` from the parts they are kept in.
    fn assemble_warnings(&mut self) {
        self.warnings = (self.object_warnings.values().flatten())
            .chain(&self.gateway_warnings)
            .chain(&self.delegation_warnings)
            .cloned()
            .collect();
        self.built_warnings = self.warnings.len();
    }

    fn build_all(
        objects: &[SourcedObject],
        undecodable: &[(ObjectKey, Rejection)],
        mut rejections: Vec<Rejection>,
        previous: &Model,
        cluster_domain: &str,
    ) -> Model {
        // Every copy of each object: decoded ones first, in input order.
        let mut copies: BTreeMap<ObjectKey, Vec<Candidate<'_>>> = BTreeMap::new();
        let mut order = Vec::new();
        let decoded = objects.iter().map(|o| (ObjectKey::of(&o.resource), Candidate::Decoded(o)));
        let broken = undecodable.iter().map(|(key, rejection)| (key.clone(), Candidate::Undecodable(rejection)));
        for (key, copy) in decoded.chain(broken) {
            let entry = copies.entry(key.clone()).or_default();
            if entry.is_empty() {
                order.push(key);
            }
            entry.push(copy);
        }
        let mut model = Model::default();
        for key in order {
            let copies = &copies[&key];
            // The copy from the file that served last time, else the first.
            let last_file = previous.accepted.get(&key).map(|last| last.file.as_str());
            let chosen = copies.iter().position(|c| last_file.is_some() && c.file() == last_file).unwrap_or(0);
            let chosen_file = copies[chosen].file().unwrap_or("another file").to_owned();
            for (i, copy) in copies.iter().enumerate() {
                match copy {
                    _ if i == chosen => {}
                    Candidate::Decoded(object) => rejections.push(Rejection::object(
                        object,
                        FieldError::new(
                            "metadata.name",
                            format!("already defined in {chosen_file}; this copy is ignored"),
                        ),
                    )),
                    Candidate::Undecodable(rejection) => {
                        let mut rejection = (*rejection).clone();
                        rejection.message.push_str(&format!(" (also defined in {chosen_file}, which is used)"));
                        rejections.push(rejection);
                    }
                }
            }
            let (mut rejection, outcome) = match copies[chosen] {
                Candidate::Decoded(object) => {
                    match previous.unchanged(&key, object).map_or_else(|| validate(object, cluster_domain), Ok) {
                        Ok(accepted) => {
                            model.insert(key, object.clone(), accepted);
                            continue;
                        }
                        Err(error) => (Rejection::object(object, error), previous.last_good(&key, cluster_domain)),
                    }
                }
                Candidate::Undecodable(rejection) => (rejection.clone(), previous.last_good(&key, cluster_domain)),
            };
            if let Some((raw, accepted)) = outcome {
                rejection.message.push_str(LAST_GOOD_SERVES);
                model.insert(key, raw, accepted);
            }
            rejections.push(rejection);
        }
        model.check_rules_against_services(previous, cluster_domain, &mut rejections);
        // The rules are final (a last good version may have replaced one).
        model.rule_hosts = RuleHosts::of(&model.destination_rules);
        model.check_virtual_services_against_rules(previous, cluster_domain, &mut rejections);
        let delegation_warnings = model.expand_delegations(&rejections, cluster_domain);
        model.report_shadowed_hosts(&mut rejections);
        model.fill_unnumbered_slice_ports();
        model.rejections = rejections;
        model.object_warnings = (model.accepted.iter())
            .map(|(key, object)| (key, own_warnings(previous, key, object)))
            .filter(|(_, warnings)| !warnings.is_empty())
            .map(|(key, warnings)| (key.clone(), warnings))
            .collect();
        model.gateway_warnings = model.gateway_reference_warnings();
        model.delegation_warnings = delegation_warnings;
        model.assemble_warnings();
        model.repack();
        model
    }

    /// Fills the nodes of the maps a whole build made (see [`crate::packed`]):
    /// builds of changes then copy full nodes too.
    fn repack(&mut self) {
        use crate::packed::repack;
        repack(&mut self.services);
        repack(&mut self.endpoint_slices);
        repack(&mut self.pods);
        repack(&mut self.destination_rules);
        repack(&mut self.virtual_services);
        repack(&mut self.service_entries);
        repack(&mut self.gateways);
        repack(&mut self.secrets);
        repack(&mut self.workload_entries);
        repack(&mut self.sidecars);
        repack(&mut self.accepted);
        repack(&mut self.unnumbered);
        repack(&mut self.object_warnings);
    }

    /// Warnings for VirtualServices bound to a Gateway that does not exist
    /// or that no gateway workload serves, and for those Gateways. Whether
    /// a gateway workload exists is judged only when the source lists pods
    /// (the API server always does; a directory when it holds Pods).
    fn gateway_reference_warnings(&self) -> Vec<Warning> {
        let pods_known = !self.pods.is_empty();
        let unserved =
            |gateway: &GatewayModel| pods_known && !self.pods.values().any(|pod| gateway.selects(&pod.labels));
        let lookup = |gateway: &str| {
            let Some((namespace, name)) = gateway.split_once('/') else { return GatewayPresence::Missing };
            match self.gateways.get(&(namespace.to_owned(), name.to_owned())) {
                None => GatewayPresence::Missing,
                Some(model) if unserved(model) => GatewayPresence::Unserved { selector: model.selector_text() },
                Some(_) => GatewayPresence::Served,
            }
        };
        let references: Vec<Warning> =
            (self.accepted.values()).flat_map(|object| crate::warnings::gateway_references(object, &lookup)).collect();
        let gateways = (self.gateways.values()).filter(|gateway| unserved(gateway)).filter_map(|gateway| {
            let key = ObjectKey::new("Gateway", &gateway.namespace, &gateway.name);
            let object = self.accepted.get(&key)?;
            Some(crate::warnings::gateway_unserved(object, &gateway.selector_text()))
        });
        // The Gateways no workload serves, then the references.
        gateways.chain(references).collect()
    }

    /// The names the agent resolves for `DNS` ServiceEntries: their hosts
    /// (without endpoints) or their endpoints' names.
    pub fn dns_names(&self) -> BTreeSet<String> {
        self.service_entries.values().flat_map(crate::service_entry::ServiceEntryModel::dns_names).collect()
    }

    /// The `metadata.generation` of the version of `key` that serves.
    pub fn served_generation(&self, key: &ObjectKey) -> Option<i64> {
        self.accepted.get(key).and_then(|object| object.resource.metadata().generation)
    }

    /// Every object that serves, as it came from its source.
    pub fn served_objects(&self) -> impl Iterator<Item = &SourcedObject> {
        self.accepted.values()
    }

    /// The version of `key` that serves, as it came from its source.
    pub fn served_object(&self, key: &ObjectKey) -> Option<&SourcedObject> {
        self.accepted.get(key)
    }

    /// A rejection of the served object `key` met after validation (by the
    /// compile for the kernel: what does not fit a map), with its file.
    pub fn rejection(&self, key: ObjectKey, field: &str, message: String) -> Rejection {
        let file = self.served_object(&key).map(|object| object.file.clone()).filter(|file| !file.is_empty());
        Rejection { file, kind: key.kind, namespace: key.namespace, name: key.name, field: field.into(), message }
    }

    /// The accepted version of `key`, validated again.
    fn last_good(&self, key: &ObjectKey, cluster_domain: &str) -> Option<(SourcedObject, Accepted)> {
        let last = self.accepted.get(key)?;
        validate(last, cluster_domain).ok().map(|accepted| (last.clone(), accepted))
    }

    /// The accepted version of `key` when it is not `failed` (the version
    /// that just failed a check against other objects) and `passes` keeps
    /// it: what serves instead of `failed`.
    fn passing_last_good<T>(
        &self,
        key: &ObjectKey,
        failed: &SourcedObject,
        cluster_domain: &str,
        passes: impl FnOnce(Accepted) -> Option<T>,
    ) -> Option<(SourcedObject, T)> {
        // The cheap comparison first: an unchanged object that keeps failing
        // is not validated again on every build.
        let last_raw = self.accepted.get(key).filter(|last| *last != failed)?;
        let accepted = validate(last_raw, cluster_domain).ok()?;
        passes(accepted).map(|last| (last_raw.clone(), last))
    }

    /// The model entry of `object` from this (the previous) build, when it
    /// is the very object accepted then (the source handed the same decoded
    /// copy again: nothing changed) and its entry was stored as validated:
    /// a change costs the validation of what changed only. Kinds whose
    /// entries later steps of a build rework (rules, routes) are validated
    /// again, and so are slices whose ports came from their Service.
    fn unchanged(&self, key: &ObjectKey, object: &SourcedObject) -> Option<Accepted> {
        let last = self.accepted.get(key)?;
        if !Arc::ptr_eq(&last.resource, &object.resource) || last.file != object.file {
            return None;
        }
        let id = (key.namespace.clone(), key.name.clone());
        match &*object.resource {
            Resource::Service(_) => self.services.get(&id).cloned().map(Accepted::Service),
            Resource::Pod(_) => self.pods.get(&id).cloned().map(Accepted::Pod),
            Resource::EndpointSlice(_) if !self.unnumbered.contains_key(&id) => {
                self.endpoint_slices.get(&id).cloned().map(|slice| Accepted::Slice(slice, Vec::new()))
            }
            _ => None,
        }
    }

    fn insert(&mut self, key: ObjectKey, raw: SourcedObject, accepted: Accepted) {
        let id = (key.namespace.clone(), key.name.clone());
        match accepted {
            Accepted::Service(s) => drop(self.services.insert(id, s)),
            Accepted::Slice(s, unnumbered) => {
                if unnumbered.is_empty() {
                    self.unnumbered.remove(&id);
                } else {
                    self.unnumbered.insert(id.clone(), unnumbered);
                }
                self.endpoint_slices.insert(id, s);
            }
            Accepted::Pod(p) => drop(self.pods.insert(id, p)),
            Accepted::Rule(r) => drop(self.destination_rules.insert(id, r)),
            Accepted::VirtualService(v) => drop(self.virtual_services.insert(id, v)),
            Accepted::Gateway(g) => drop(self.gateways.insert(id, g)),
            Accepted::ServiceEntry(e) => drop(self.service_entries.insert(id, e)),
            Accepted::Sidecar(s) => drop(self.sidecars.insert(id, s)),
            Accepted::WorkloadEntry(w) => drop(self.workload_entries.insert(id, w)),
            Accepted::Secret(s) => drop(self.secrets.insert(id, s)),
        }
        self.accepted.insert(key, raw);
    }

    /// A DestinationRule's `portLevelSettings` must name ports its Service
    /// has. A rule with such an entry is never dropped whole: its last
    /// accepted version serves if that one passes, else the rule serves
    /// without the dangling entries. Each entry is reported by its index as
    /// written.
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
        // A host with no Service here (yet) has nothing to check against.
        let errors_of = |rule: &DestinationRuleModel| -> Vec<FieldError> {
            service_ports.get(&rule.host).map(|ports| rule.check_ports(ports)).unwrap_or_default()
        };
        let ids: Vec<NsName> = self.destination_rules.keys().cloned().collect();
        for id in ids {
            let errors = errors_of(&self.destination_rules[&id]);
            if errors.is_empty() {
                continue;
            }
            let key = ObjectKey::new("DestinationRule", &id.0, &id.1);
            let raw = self.accepted[&key].clone();
            let fallback = previous.passing_last_good(&key, &raw, cluster_domain, |accepted| match accepted {
                Accepted::Rule(last) if errors_of(&last).is_empty() => Some(last),
                _ => None,
            });
            let instead = if fallback.is_some() { LAST_GOOD_SERVES } else { " (the rule serves without this entry)" };
            report(&raw, errors, instead, rejections);
            match fallback {
                Some((last_raw, last)) => {
                    self.destination_rules.insert(id, last);
                    self.accepted.insert(key, last_raw);
                }
                None => {
                    let rule = self.destination_rules.get_mut(&id).expect("listed above");
                    if let Some(ports) = service_ports.get(&rule.host) {
                        rule.retain_ports(ports);
                    }
                }
            }
        }
    }

    /// Every destination subset a VirtualService names must be defined by
    /// the DestinationRule that applies to its host. A VirtualService that
    /// names an unknown subset falls back to its last accepted version if
    /// that one passes, else it is not served (its hosts keep the default
    /// routing). Each reference is reported by its field.
    fn check_virtual_services_against_rules(
        &mut self,
        previous: &Model,
        cluster_domain: &str,
        rejections: &mut Vec<Rejection>,
    ) {
        let ids: Vec<NsName> = self.virtual_services.keys().cloned().collect();
        for id in ids {
            let errors = self.unknown_subsets(&self.virtual_services[&id], cluster_domain);
            if errors.is_empty() {
                continue;
            }
            let key = ObjectKey::new("VirtualService", &id.0, &id.1);
            let raw = self.accepted[&key].clone();
            let fallback = previous.passing_last_good(&key, &raw, cluster_domain, |accepted| match accepted {
                Accepted::VirtualService(last) if self.unknown_subsets(&last, cluster_domain).is_empty() => Some(last),
                _ => None,
            });
            let instead = if fallback.is_some() { LAST_GOOD_SERVES } else { " (the VirtualService is not served)" };
            report(&raw, errors, instead, rejections);
            match fallback {
                Some((last_raw, last)) => {
                    self.virtual_services.insert(id, last);
                    self.accepted.insert(key, last_raw);
                }
                None => {
                    self.virtual_services.remove(&id);
                    self.accepted.remove(&key);
                }
            }
        }
    }

    fn unknown_subsets(&self, virtual_service: &VirtualServiceModel, cluster_domain: &str) -> Vec<FieldError> {
        let suffix = format!(".svc.{cluster_domain}");
        virtual_service
            .subset_refs
            .iter()
            .filter_map(|reference| {
                // A service's rules are chosen from its own namespace first;
                // other hosts (e.g. ServiceEntries) from the VirtualService's.
                let namespace = (reference.host.strip_suffix(&suffix))
                    .and_then(|name| name.split_once('.').map(|(_, namespace)| namespace))
                    .unwrap_or(&virtual_service.namespace);
                let rule = self.rule_for_host(&reference.host, namespace);
                let defines = |r: &DestinationRuleModel| r.subsets.iter().any(|s| s.name == reference.subset);
                // A rule for some clients only (workloadSelector) may define
                // the subset for them.
                if rule.is_some_and(defines) || self.selector_rules(&reference.host).any(defines) {
                    return None;
                }
                let why = match rule {
                    Some(rule) => format!("DestinationRule {}/{} does not define it", rule.namespace, rule.name),
                    None => "no DestinationRule applies to that host".to_owned(),
                };
                Some(FieldError::new(
                    &reference.field,
                    format!("subset {:?} of {} is unknown: {why}", reference.subset, reference.host),
                ))
            })
            .collect()
    }

    /// Puts the rules of each served delegate in the place of the rules
    /// delegating to it (for sidecars and gateways alike, as Istio merges
    /// them before either reads them). Returns the warnings: on a root,
    /// each delegating rule that routes nothing or a delegate rule left out
    /// (`rejections` tell a rejected delegate from a missing one); on a
    /// VirtualService without hosts, that no root uses it.
    fn expand_delegations(&mut self, rejections: &[Rejection], cluster_domain: &str) -> Vec<Warning> {
        let key = |(namespace, name): &NsName| ObjectKey::new("VirtualService", namespace, name);
        fn spec_of(object: &SourcedObject) -> Option<&api::VirtualServiceSpec> {
            match &*object.resource {
                Resource::VirtualService(vs) => Some(&vs.spec),
                _ => None,
            }
        }
        let mut warnings = Vec::new();
        let mut used: BTreeSet<NsName> = BTreeSet::new();
        let mut expanded = Vec::new();
        for (id, root) in self.virtual_services.iter().filter(|(_, vs)| !vs.delegations.is_empty()) {
            let raw = &self.accepted[&key(id)];
            let Some(spec) = spec_of(raw) else { continue };
            let target = |namespace: &str, name: &str| {
                let child_id = (namespace.to_owned(), name.to_owned());
                let child_key = key(&child_id);
                let served = self.virtual_services.get(&child_id).zip(self.accepted.get(&child_key).and_then(spec_of));
                match served {
                    Some((child, child_spec)) => route::DelegateTarget::Served(child, child_spec),
                    None if rejections.iter().any(|r| {
                        (r.kind.as_str(), r.namespace.as_str(), r.name.as_str()) == ("VirtualService", namespace, name)
                    }) =>
                    {
                        route::DelegateTarget::Rejected
                    }
                    None => route::DelegateTarget::Missing,
                }
            };
            let expansion = route::expand_delegations(root, spec, target, cluster_domain);
            for (field, message) in expansion.problems {
                warnings.push(Warning::object(raw, field, message, WarningReason::NotHonoured));
            }
            used.extend(expansion.used);
            expanded.push((id.clone(), expansion.http));
        }
        for (id, http) in expanded {
            if let Some(root) = self.virtual_services.get_mut(&id) {
                root.http = http.into();
            }
        }
        let unused = (self.virtual_services.iter()).filter(|(id, vs)| vs.hosts.is_empty() && !used.contains(*id));
        for (id, _) in unused {
            let message = crate::warnings::UNUSED_DELEGATE.to_owned();
            warnings.push(Warning::object(
                &self.accepted[&key(id)],
                "spec.hosts".into(),
                message,
                WarningReason::NotHonoured,
            ));
        }
        warnings
    }

    /// Sidecars apply one VirtualService per host; the others naming it
    /// are reported (and still serve their other hosts).
    fn report_shadowed_hosts(&self, rejections: &mut Vec<Rejection>) {
        for shadowed in route::shadowed_hosts(&self.virtual_services) {
            let (namespace, name) = shadowed.virtual_service;
            let key = ObjectKey { kind: "VirtualService".into(), namespace, name };
            let error = FieldError::new(
                format!("spec.hosts[{}]", shadowed.index),
                format!(
                    "{} is already routed by VirtualService {} (the first by namespace/name); sidecars apply one \
                     VirtualService per host, so this one is not used for it",
                    shadowed.host, shadowed.routed_by
                ),
            );
            rejections.push(Rejection::object(&self.accepted[&key], error));
        }
    }

    /// An EndpointSlice port without a number means "all ports": the
    /// Service's numeric `targetPort` is the backend port for the service
    /// port of that name (for every service port when it has no name).
    fn fill_unnumbered_slice_ports(&mut self) {
        // Kept after the build: the next one knows these slices were filled
        // in from their Service, and validates them again (see `unchanged`).
        let all = std::mem::take(&mut self.unnumbered);
        for (id, unnumbered) in &all {
            let Some(slice) = self.endpoint_slices.get_mut(id) else { continue };
            let Some(service) = self.services.get(&(slice.namespace.clone(), slice.service.clone())) else {
                continue;
            };
            for (name, protocol) in unnumbered {
                for port in
                    service.ports.iter().filter(|p| p.protocol == *protocol && (name.is_empty() || p.name == *name))
                {
                    let TargetPort::Number(target) = port.target_port else { continue };
                    if !slice.ports.iter().any(|p| p.name == port.name && p.protocol == *protocol) {
                        slice.ports.push(SlicePort { name: port.name.clone(), port: target, protocol: *protocol });
                    }
                }
            }
        }
        self.unnumbered = all;
    }

    /// The DestinationRule that applies to a service: a rule in the
    /// service's own namespace first, then one in the root namespace
    /// (`istio-system`), then any other; rules from other namespaces only
    /// when their `exportTo` lets them. Within a tier an exact host wins
    /// over a wildcard, a longer wildcard over a shorter one, and among
    /// equals the first by namespace/name.
    ///
    /// Rules with a `workloadSelector` are for some clients only and never
    /// apply here; see [`Model::selected_rule`], which comes first.
    pub fn rule_for_host(&self, fqdn: &str, namespace: &str) -> Option<&DestinationRuleModel> {
        let mut best: Option<((u8, usize), &DestinationRuleModel)> = None;
        for rule in self.rules_for(fqdn).filter(|rule| rule.workload_selector.is_none()) {
            let Some(specificity) = host_specificity(&rule.host, fqdn) else { continue };
            if !rule.visible_in(namespace) {
                continue;
            }
            let tier = if rule.namespace == namespace {
                0
            } else if rule.namespace == destination_rule::ROOT_NAMESPACE {
                1
            } else {
                2
            };
            // Lower sorts first: the tier, then the most specific host.
            let rank = (tier, usize::MAX - specificity);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, rule));
            }
        }
        best.map(|(_, rule)| rule)
    }

    /// The rules with a `workloadSelector` whose host covers `fqdn`.
    pub fn selector_rules<'a>(&'a self, fqdn: &'a str) -> impl Iterator<Item = &'a DestinationRuleModel> + 'a {
        (self.rules_for(fqdn))
            .filter(move |rule| rule.workload_selector.is_some() && host_specificity(&rule.host, fqdn).is_some())
    }

    /// The rules that may cover `fqdn`: from the host index, or all of them.
    fn rules_for<'a>(&'a self, fqdn: &str) -> impl Iterator<Item = &'a DestinationRuleModel> + 'a {
        let indexed = self.rule_hosts.candidates(&self.destination_rules, fqdn);
        let all = indexed.is_none().then(|| self.destination_rules.values());
        indexed.into_iter().flatten().chain(all.into_iter().flatten())
    }

    /// Only the rule with a `workloadSelector` picking `client`, if any.
    pub fn selected_rule(
        &self,
        fqdn: &str,
        client: Option<(&BTreeMap<String, String>, &str)>,
    ) -> Option<&DestinationRuleModel> {
        let (labels, client_namespace) = client?;
        let range = (client_namespace.to_owned(), String::new())..;
        let mut best: Option<(usize, &DestinationRuleModel)> = None;
        for (_, rule) in self.destination_rules.range(range).take_while(|((ns, _), _)| ns == client_namespace) {
            if !rule.selects(labels, client_namespace) {
                continue;
            }
            let Some(specificity) = host_specificity(&rule.host, fqdn) else { continue };
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, rule));
            }
        }
        best.map(|(_, rule)| rule)
    }
}

/// What a rejection says when the object's last good version serves.
const LAST_GOOD_SERVES: &str = " (the last good version keeps serving)";

/// Reports each of `errors` of `object`, saying what serves `instead`.
/// The warnings of `object`'s own fields: those `previous` found, when it
/// served the very same object (a last good version, or one the source
/// handed over unchanged).
fn own_warnings(previous: &Model, key: &ObjectKey, object: &SourcedObject) -> Vec<Warning> {
    match previous.accepted.get(key).filter(|last| Arc::ptr_eq(&last.resource, &object.resource)) {
        Some(_) => previous.object_warnings.get(key).cloned().unwrap_or_default(),
        None => crate::warnings::of_object(object),
    }
}

fn report(object: &SourcedObject, errors: Vec<FieldError>, instead: &str, rejections: &mut Vec<Rejection>) {
    for error in errors {
        let mut rejection = Rejection::object(object, error);
        rejection.message.push_str(instead);
        rejections.push(rejection);
    }
}

fn validate(object: &SourcedObject, cluster_domain: &str) -> Result<Accepted, FieldError> {
    match &*object.resource {
        Resource::Service(s) => validate_service(s).map(Accepted::Service),
        Resource::EndpointSlice(s) => validate_slice(s).map(|(slice, unnumbered)| Accepted::Slice(slice, unnumbered)),
        Resource::Pod(p) => validate_pod(p).map(Accepted::Pod),
        Resource::DestinationRule(r) => {
            destination_rule::validate_destination_rule(r, cluster_domain).map(Accepted::Rule)
        }
        Resource::VirtualService(v) => route::validate_virtual_service(v, cluster_domain).map(Accepted::VirtualService),
        Resource::Gateway(g) => validate_gateway(g).map(Accepted::Gateway),
        Resource::ServiceEntry(e) => validate_service_entry(e).map(Accepted::ServiceEntry),
        Resource::Sidecar(s) => validate_sidecar(s).map(Accepted::Sidecar),
        Resource::WorkloadEntry(w) => validate_workload_entry(w).map(Accepted::WorkloadEntry),
        Resource::Secret(s) => validate_secret(s).map(Accepted::Secret),
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

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, FieldError> {
    text.parse().map_err(|_| FieldError::new(field, format!("{text:?} is not an IP address")))
}

fn validate_service(service: &api::Service) -> Result<ServiceModel, FieldError> {
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
    let mut names = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let name = port.name.as_deref().unwrap_or("");
        if spec.ports.len() > 1 && name.is_empty() {
            return Err(FieldError::new(at("name"), "required when a Service has more than one port"));
        }
        if !name.is_empty() && !names.insert(name) {
            return Err(FieldError::new(at("name"), format!("port name {name:?} is used twice")));
        }
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
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(FieldError::new(at("targetPort"), "empty port name"))
            }
            Some(IntOrString::String(s)) if s.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(FieldError::new(
                    at("targetPort"),
                    format!("{s:?} is not a port name: a port name must contain a letter (write a number unquoted)"),
                ))
            }
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        ports.push(PortModel {
            name: name.to_owned(),
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
        selector: service.spec.selector.clone(),
        host: None,
        prefer_close: service.spec.traffic_distribution.as_deref() == Some("PreferClose"),
    })
}

fn validate_slice(slice: &api::EndpointSlice) -> Result<(EndpointSliceModel, Vec<UnnumberedPort>), FieldError> {
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
    // Sized exactly: a cluster holds many of these for as long as they serve.
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    // One locality for the endpoints of each zone.
    let mut localities: Vec<Arc<Locality>> = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        let mut addresses = SmallVec::with_capacity(endpoint.addresses.len());
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
            .and_then(|t| Some(format!("{}/{}", t.kind.as_deref().unwrap_or("Pod"), t.name.as_deref()?).into()));
        let zone = endpoint.zone.as_deref().unwrap_or_default();
        let locality = match localities.iter().find(|l| l.zone == zone) {
            Some(locality) => locality.clone(),
            None => {
                let locality = Arc::new(Locality { zone: zone.to_owned(), ..Locality::default() });
                localities.push(locality.clone());
                locality
            }
        };
        endpoints.push(EndpointModel {
            addresses,
            ready: endpoint.conditions.ready.unwrap_or(true),
            target,
            labels: None,
            locality,
        });
    }
    let mut ports = Vec::new();
    let mut unnumbered = Vec::new();
    for (i, port) in slice.ports.iter().enumerate() {
        let at = |f: &str| format!("ports[{i}].{f}");
        let Some(protocol) = parse_protocol(&at("protocol"), port.protocol.as_deref())? else {
            continue;
        };
        let name = port.name.clone().unwrap_or_default();
        match port.port {
            None => unnumbered.push((name, protocol)),
            Some(number) => ports.push(SlicePort { name, port: parse_port(&at("port"), number)?, protocol }),
        }
    }
    let model = EndpointSliceModel {
        namespace: slice.metadata.namespace_or_default().to_owned(),
        name: slice.metadata.name.clone(),
        service,
        ipv6,
        endpoints,
        ports,
    };
    Ok((model, unnumbered))
}

/// A Secret's data, decoded. Only its key names are ever shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretModel {
    pub namespace: String,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for SecretModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&String> = self.data.keys().collect();
        f.debug_struct("SecretModel")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &keys)
            .finish()
    }
}

fn validate_secret(secret: &api::Secret) -> Result<SecretModel, FieldError> {
    use base64::Engine;
    let mut data = BTreeMap::new();
    for (key, value) in &secret.data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| FieldError::new(format!("data.{key}"), format!("not base64: {e}")))?;
        data.insert(key.clone(), bytes);
    }
    for (key, value) in &secret.string_data {
        data.insert(key.clone(), value.clone().into_bytes());
    }
    Ok(SecretModel {
        namespace: secret.metadata.namespace_or_default().to_owned(),
        name: secret.metadata.name.clone(),
        data,
    })
}

fn validate_pod(pod: &api::Pod) -> Result<PodModel, FieldError> {
    let mut ips = Vec::new();
    let done = matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"));
    if let Some(ip) = pod.status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        ips.push(parse_ip("status.podIP", ip)?);
    }
    for (i, entry) in pod.status.pod_ips.iter().enumerate() {
        let ip = parse_ip(&format!("status.podIPs[{i}].ip"), &entry.ip)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if done {
        ips.clear(); // kept by name (labels), not by address
    }
    Ok(PodModel {
        namespace: pod.metadata.namespace_or_default().to_owned(),
        name: pod.metadata.name.clone(),
        labels: Arc::new(pod.metadata.labels.to_map()),
        ips,
        node: pod.spec.node_name.clone(),
        uid: pod.metadata.uid.clone().filter(|uid| !uid.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{parse_documents, parse_file};
    use crate::route::RouteAction;

    pub const DOMAIN: &str = "cluster.local";

    fn objects(text: &str) -> Vec<SourcedObject> {
        parse_file("test.yaml", text).unwrap()
    }

    fn in_file(file: &str, text: &str) -> Vec<SourcedObject> {
        parse_file(file, text).unwrap()
    }

    fn id(namespace: &str, name: &str) -> NsName {
        (namespace.into(), name.into())
    }

    #[test]
    fn what_a_large_cluster_keeps_per_object_and_endpoint_stays_small() {
        // 10,000 services of 10 endpoints keep 20,000 objects, 100,000
        // typed, model and snapshot endpoints: each byte here is 100 KB.
        use std::mem::size_of;
        assert!(size_of::<Resource>() <= 232, "Resource: {} bytes (box a large kind)", size_of::<Resource>());
        assert!(size_of::<api::Endpoint>() <= 56, "api::Endpoint: {} bytes", size_of::<api::Endpoint>());
        assert!(size_of::<EndpointModel>() <= 72, "EndpointModel: {} bytes", size_of::<EndpointModel>());
        let backend = size_of::<crate::snapshot::BackendView>();
        assert!(backend <= 64, "BackendView: {backend} bytes");
    }

    #[test]
    fn labels_are_kept_sorted_and_shared() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, labels: {b: '2', a: '1', c: '3'}}\nstatus: {podIP: 10.244.0.2}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.0.2], zone: a}\n- {addresses: [10.244.0.3], zone: a}\n- {addresses: [10.244.0.4], zone: b}\n";
        let objects = objects(text);
        let labels = &objects[0].resource.metadata().labels;
        assert_eq!(labels.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((labels.get("b").map(String::as_str), labels.get("d")), (Some("2"), None));
        let model = Model::build(&objects, vec![], &Model::default(), DOMAIN);
        assert_eq!(model.pods[&id("shop", "p")].labels["c"], "3");
        let endpoints = &model.endpoint_slices[&id("shop", "web-1")].endpoints;
        assert!(Arc::ptr_eq(&endpoints[0].locality, &endpoints[1].locality), "one locality per zone of a slice");
        assert_eq!((endpoints[2].locality.zone.as_str(), endpoints[0].locality.zone.as_str()), ("b", "a"));
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
    fn service_port_names_are_unique_and_contain_a_letter() {
        let twice = SERVICE.replace("name: dns", "name: http");
        let model = Model::build(&objects(&twice), vec![], &Model::default(), DOMAIN);
        assert!(model.services.is_empty());
        assert_eq!(model.rejections[0].field, "spec.ports[1].name");
        assert!(model.rejections[0].message.contains("used twice"), "{}", model.rejections[0]);

        let digits = SERVICE.replace("targetPort: 5353", "targetPort: '5353'");
        let model = Model::build(&objects(&digits), vec![], &Model::default(), DOMAIN);
        assert!(model.services.is_empty());
        assert_eq!(model.rejections[0].field, "spec.ports[1].targetPort");
        assert!(model.rejections[0].message.contains("a port name must contain a letter"));

        let named = SERVICE.replace("targetPort: 5353", "targetPort: dns-5353");
        let model = Model::build(&objects(&named), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
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

    fn batch(file: &str, text: &str) -> SourceBatch {
        let parsed = parse_documents(file, text).unwrap();
        SourceBatch {
            objects: parsed.objects,
            undecodable: parsed.undecodable,
            rejections: parsed.problems,
            changed: None,
        }
    }

    #[test]
    fn objects_handed_over_unchanged_keep_their_entries_and_filled_slices_are_filled_again() {
        let slices = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: dns, protocol: UDP}]\nendpoints: [{addresses: [10.244.1.3]}]\n";
        let first_batch = batch("web.yaml", &format!("{SERVICE}{slices}"));
        let first = Model::from_batch(&first_batch, &Model::default(), DOMAIN);
        // The same decoded copies again: the same model.
        let again = Model::from_batch(&first_batch, &first, DOMAIN);
        assert_eq!(again.services, first.services);
        assert_eq!(again.endpoint_slices, first.endpoint_slices);
        let dns_port = |model: &Model| model.endpoint_slices[&id("shop", "web-b")].ports[0].port;
        assert_eq!(dns_port(&first), 5353, "filled in from the Service's targetPort");
        // A new Service beside the very same slice copies: the slice whose
        // port came from the Service is filled in again.
        let service = SERVICE.replace("targetPort: 5353", "targetPort: 5454");
        let mut changed = SourceBatch { objects: first_batch.objects.clone(), ..SourceBatch::default() };
        changed.objects[0] = objects(&service).remove(0);
        let next = Model::from_batch(&changed, &again, DOMAIN);
        assert_eq!(dns_port(&next), 5454);
        assert_eq!(next.endpoint_slices[&id("shop", "web-a")], first.endpoint_slices[&id("shop", "web-a")]);
    }

    #[test]
    fn a_batch_of_changed_slices_and_pods_builds_from_the_previous_model_as_a_whole_build_would() {
        let slice = |name: &str, ip: &str| {
            format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{ip}]}}]\n")
        };
        let pod = |name: &str, ip: &str| {
            format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n")
        };
        let first_batch = batch(
            "web.yaml",
            &format!("{SERVICE}{}{}{}", slice("a", "10.244.1.2"), slice("b", "10.244.1.3"), pod("p", "10.244.1.2")),
        );
        let first = Model::from_batch(&first_batch, &Model::default(), DOMAIN);
        // Slice a changes, b goes, c comes, a pod comes; one slice is broken.
        let text = format!(
            "{SERVICE}{}{}{}{}{}",
            slice("a", "10.244.1.9"),
            slice("c", "10.244.1.4"),
            pod("p", "10.244.1.2"),
            pod("q", "10.244.1.9"),
            slice("d", "not-an-ip")
        );
        let mut next_batch = batch("web.yaml", &text);
        // Unchanged objects are the very decoded copies, as a source hands them.
        next_batch.objects[0] = first_batch.objects[0].clone();
        next_batch.objects[3] = first_batch.objects[3].clone();
        let keys = [
            ("EndpointSlice", "a"),
            ("EndpointSlice", "b"),
            ("EndpointSlice", "c"),
            ("Pod", "q"),
            ("EndpointSlice", "d"),
        ];
        next_batch.changed = Some(keys.iter().map(|(kind, name)| ObjectKey::new(kind, "shop", name)).collect());
        let changed = Model::build_changed(&next_batch, &first, DOMAIN).expect("built from the previous model");
        next_batch.changed = None;
        let whole = Model::from_batch(&next_batch, &first, DOMAIN);
        assert_eq!(changed.endpoint_slices, whole.endpoint_slices);
        assert_eq!(changed.pods, whole.pods);
        assert_eq!(changed.services, whole.services);
        assert_eq!(changed.accepted, whole.accepted);
        let sorted = |mut texts: Vec<String>| {
            texts.sort();
            texts
        };
        let texts = |model: &Model| {
            (
                sorted(model.rejections.iter().map(ToString::to_string).collect()),
                sorted(model.warnings.iter().map(ToString::to_string).collect()),
            )
        };
        assert_eq!(texts(&changed), texts(&whole));
        assert_eq!(changed.rejections.len(), 1, "{:?}", changed.rejections);
        // A change of another kind is a whole build.
        next_batch.changed = Some([ObjectKey::new("Service", "shop", "web")].into());
        assert!(Model::build_changed(&next_batch, &first, DOMAIN).is_none());
    }

    #[test]
    fn an_undecodable_edit_keeps_the_last_good_version_of_that_object_only() {
        let pod = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop}\n";
        let good = Model::from_batch(&batch("web.yaml", &format!("{SERVICE}{pod}")), &Model::default(), DOMAIN);
        assert!(good.rejections.is_empty(), "{:?}", good.rejections);
        let typo = SERVICE.replace("port: 80,", "port: eighty,");
        let pod_v2 = pod.replace("name: p,", "name: p, labels: {v: '2'},");
        let next = Model::from_batch(&batch("web.yaml", &format!("{typo}{pod_v2}")), &good, DOMAIN);
        assert_eq!(next.rejections.len(), 1, "{:?}", next.rejections);
        let shown = next.rejections[0].to_string();
        assert!(shown.starts_with("web.yaml: Service shop/web: spec.ports[0].port: "), "{shown}");
        assert!(shown.ends_with("(the last good version keeps serving)"), "{shown}");
        assert_eq!(next.services[&id("shop", "web")].ports[0].port, 80, "the last good version serves");
        assert_eq!(next.pods[&id("shop", "p")].labels["v"], "2", "the rest of the file applies");
        // With no earlier version there is nothing to serve, only the report.
        let fresh = Model::from_batch(&batch("web.yaml", &typo), &Model::default(), DOMAIN);
        assert!(fresh.services.is_empty());
        assert_eq!(fresh.rejections[0].field, "spec.ports[0].port");
        // A kind typo falls back the same way.
        let wrong_kind = SERVICE.replace("kind: Service", "kind: service");
        let next = Model::from_batch(&batch("web.yaml", &wrong_kind), &good, DOMAIN);
        assert!(next.services.contains_key(&id("shop", "web")));
        assert_eq!(next.rejections[0].field, "kind");
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
    fn a_slice_port_without_a_number_takes_the_numeric_target_port() {
        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: admin, port: 9000, targetPort: admin}\n  - {name: metrics, port: 9090}\n";
        let slice = "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.0.2]\nports:\n- {name: http}\n- {name: admin}\n- {name: metrics, port: 9191}\n";
        let model = Model::build(&objects(&format!("{service}{slice}")), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        let ports: Vec<(&str, u16)> =
            model.endpoint_slices[&id("shop", "web-1")].ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(ports, [("metrics", 9191), ("http", 8080)], "a named targetPort cannot be filled in");
        // An unnamed entry without a number stands for every port.
        let all = slice.replace("- {name: http}\n- {name: admin}\n- {name: metrics, port: 9191}\n", "- {}\n");
        let model = Model::build(&objects(&format!("{service}{all}")), vec![], &Model::default(), DOMAIN);
        let ports: Vec<(&str, u16)> =
            model.endpoint_slices[&id("shop", "web-1")].ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
        // The backends follow.
        let snapshot = crate::snapshot::compile(&model, DOMAIN);
        let http = snapshot.services.iter().find(|s| s.port == 80).unwrap();
        assert_eq!(http.backends[0].address, "10.244.0.2:8080".parse().unwrap());
    }

    #[test]
    fn duplicate_objects_are_reported() {
        let twice = format!("{SERVICE}---\n{SERVICE}");
        let model = Model::build(&objects(&twice), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.services.len(), 1);
        assert!(model.rejections[0].message.contains("already defined"));
    }

    #[test]
    fn a_duplicate_in_another_file_does_not_displace_the_served_copy() {
        let other = SERVICE.replace("port: 80,", "port: 81,");
        let served = Model::build(&in_file("b.yaml", SERVICE), vec![], &Model::default(), DOMAIN);
        // a.yaml sorts first, but b.yaml served the object last time.
        let both = [in_file("a.yaml", &other), in_file("b.yaml", SERVICE)].concat();
        let model = Model::build(&both, vec![], &served, DOMAIN);
        assert_eq!(model.services[&id("shop", "web")].ports[0].port, 80);
        assert_eq!(model.rejections.len(), 1);
        assert_eq!(model.rejections[0].file.as_deref(), Some("a.yaml"));
        assert!(model.rejections[0].message.contains("already defined in b.yaml"), "{}", model.rejections[0]);
        // With no history the first copy wins.
        let model = Model::build(&both, vec![], &Model::default(), DOMAIN);
        assert_eq!(model.services[&id("shop", "web")].ports[0].port, 81);
        assert_eq!(model.rejections[0].file.as_deref(), Some("b.yaml"));
    }

    const RULE: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec:\n  host: web\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings:\n    - port: {number: 8080}\n      loadBalancer: {simple: RANDOM}\n";

    #[test]
    fn rule_port_must_name_a_service_port() {
        let text = format!("{SERVICE}---\n{RULE}");
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        let shown = model.rejections[0].to_string();
        assert!(
            shown.contains("DestinationRule shop/web: spec.trafficPolicy.portLevelSettings[0].port.number"),
            "{shown}"
        );
        // Not dropped whole: the rule serves without the dangling entry.
        assert!(shown.contains("serves without this entry"), "{shown}");
        let rule = &model.destination_rules[&id("shop", "web")];
        assert!(rule.policy.as_ref().unwrap().ports.is_empty());
        assert_eq!(rule.effective(None, 80).load_balancer, destination_rule::LoadBalancer::RoundRobin);
        // The fixed rule is accepted, and a later bad edit falls back to it.
        let fixed = text.replace("8080", "80");
        let good = Model::build(&objects(&fixed), vec![], &Model::default(), DOMAIN);
        assert_eq!(good.destination_rules.len(), 1);
        assert!(good.rejections.is_empty());
        let again = Model::build(&objects(&text), vec![], &good, DOMAIN);
        assert_eq!(again.destination_rules.len(), 1);
        assert!(again.rejections[0].message.contains("last good version"));
        assert_eq!(
            again.destination_rules[&id("shop", "web")].effective(None, 80).load_balancer,
            destination_rule::LoadBalancer::Random
        );
    }

    #[test]
    fn dangling_rule_ports_are_named_by_their_written_index() {
        // Port 9000 is written first; sorted, it would come second.
        let rule = RULE.replace(
            "    - port: {number: 8080}\n",
            "    - port: {number: 9000}\n      loadBalancer: {simple: RANDOM}\n    - port: {number: 80}\n",
        );
        let model = Model::build(&objects(&format!("{SERVICE}---\n{rule}")), vec![], &Model::default(), DOMAIN);
        let fields: Vec<&str> = model.rejections.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["spec.trafficPolicy.portLevelSettings[0].port.number"]);
        let rule = &model.destination_rules[&id("shop", "web")];
        assert_eq!(rule.policy.as_ref().unwrap().ports[&80].index, 1);
        assert_eq!(rule.effective(None, 80).load_balancer, destination_rule::LoadBalancer::Random);
    }

    #[test]
    fn a_last_good_rule_that_also_dangles_gives_way_to_the_trimmed_current_one() {
        let service_8080 = SERVICE.replace("port: 80,", "port: 8080,");
        let first = Model::build(&objects(&format!("{service_8080}---\n{RULE}")), vec![], &Model::default(), DOMAIN);
        assert!(first.rejections.is_empty(), "{:?}", first.rejections);
        // The Service loses port 8080 and the rule is edited at once: the old
        // rule fails the check too, so the edited one serves, trimmed.
        let edited = RULE.replace("ROUND_ROBIN", "LEAST_REQUEST");
        let next = Model::build(&objects(&format!("{SERVICE}---\n{edited}")), vec![], &first, DOMAIN);
        assert_eq!(next.rejections.len(), 1);
        assert!(next.rejections[0].message.contains("serves without this entry"), "{}", next.rejections[0]);
        let rule = &next.destination_rules[&id("shop", "web")];
        assert_eq!(rule.effective(None, 80).load_balancer, destination_rule::LoadBalancer::LeastRequest);
        assert!(rule.policy.as_ref().unwrap().ports.is_empty());
    }

    fn rule_in(namespace: &str, name: &str, host: &str, extra: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{host: '{host}'{extra}}}\n")
    }

    #[test]
    fn a_rule_with_a_workload_selector_is_for_the_clients_it_picks_in_its_namespace() {
        let web = "web.shop.svc.cluster.local";
        let rules = [
            rule_in("shop", "web", "web", ""),
            rule_in("front", "for-canary", web, ", workloadSelector: {matchLabels: {track: canary}}"),
            rule_in("front", "wide", "*.svc.cluster.local", ", workloadSelector: {matchLabels: {app: ui}}"),
            rule_in("front", "exact", web, ", workloadSelector: {matchLabels: {app: ui}}"),
        ]
        .concat();
        let model = Model::build(&objects(&rules), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let canary = labels(&[("app", "cart"), ("track", "canary")]);
        let ui = labels(&[("app", "ui")]);
        let rule = |client: Option<(&BTreeMap<String, String>, &str)>| {
            // As the proxy takes a client's rule: the one picking it, else the service's.
            model.selected_rule(web, client).or_else(|| model.rule_for_host(web, "shop")).unwrap().name.clone()
        };
        assert_eq!(rule(Some((&canary, "front"))), "for-canary");
        assert_eq!(rule(Some((&ui, "front"))), "exact", "the most specific host among those picking the client");
        assert_eq!(rule(Some((&canary, "back"))), "web", "a selector picks clients of its own namespace only");
        assert_eq!(rule(Some((&labels(&[("app", "cart")]), "front"))), "web");
        assert_eq!(rule(None), "web");
        assert_eq!(model.rule_for_host(web, "front").unwrap().name, "web", "never a selector rule for everyone");
        let covered = |fqdn: &str| model.selector_rules(fqdn).next().is_some();
        assert!(covered("db.else.svc.cluster.local") && !covered("db.example"));
    }

    #[test]
    fn sidecars_route_by_a_delegates_rules_and_follow_its_edits() {
        let root = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\nspec:\n  hosts: [web]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    delegate: {name: api, namespace: team}\n  - route: [{destination: {host: web}}]\n";
        let child = |host: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api, namespace: team}}\nspec:\n  http:\n  - match: [{{uri: {{prefix: /api/v2}}}}]\n    route: [{{destination: {{host: {host}}}}}]\n")
        };
        let hosts = |model: &Model| -> Vec<String> {
            let table = route::RouteTable::build(&model.virtual_services);
            (table.http_routes("web.shop.svc.cluster.local").iter())
                .map(|r| match &r.action {
                    RouteAction::Forward(destinations) => destinations[0].host.clone(),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let model = Model::build(&objects(&format!("{root}{}", child("api-v2"))), vec![], &Model::default(), DOMAIN);
        assert!(
            model.rejections.is_empty() && model.warnings.is_empty(),
            "{:?} {:?}",
            model.rejections,
            model.warnings
        );
        assert_eq!(hosts(&model), ["api-v2.team.svc.cluster.local", "web.shop.svc.cluster.local"]);
        // The delegate's edit changes the root's rules; a bad edit keeps the last good delegate.
        let edited = Model::build(&objects(&format!("{root}{}", child("api-v3"))), vec![], &model, DOMAIN);
        assert_eq!(hosts(&edited)[0], "api-v3.team.svc.cluster.local");
        let broken = Model::build(&objects(&format!("{root}{}", child("''"))), vec![], &edited, DOMAIN);
        assert_eq!(broken.rejections.len(), 1, "{:?}", broken.rejections);
        assert_eq!(hosts(&broken)[0], "api-v3.team.svc.cluster.local");
    }

    #[test]
    fn most_specific_rule_wins() {
        let rules = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: all, namespace: shop}\nspec: {host: '*.shop.svc.cluster.local'}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec: {host: web.shop.svc.cluster.local}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: svc, namespace: shop}\nspec: {host: '*.svc.cluster.local'}\n";
        let model = Model::build(&objects(rules), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        assert_eq!(model.rule_for_host("web.shop.svc.cluster.local", "shop").unwrap().name, "web");
        assert_eq!(model.rule_for_host("db.shop.svc.cluster.local", "shop").unwrap().name, "all");
        assert_eq!(model.rule_for_host("db.else.svc.cluster.local", "else").unwrap().name, "svc");
        assert!(model.rule_for_host("db.else.example", "else").is_none());
    }

    #[test]
    fn the_services_namespace_beats_the_root_namespace_which_beats_the_rest() {
        let host = "web.shop.svc.cluster.local";
        let text = [
            rule_in("aaa", "exact", host, ""),
            rule_in("istio-system", "root", "*.svc.cluster.local", ""),
            rule_in("shop", "own", "*", ""),
        ]
        .concat();
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        assert_eq!(model.rule_for_host(host, "shop").unwrap().name, "own", "own namespace, even as a bare `*`");
        let without_own: Vec<SourcedObject> =
            objects(&text).into_iter().filter(|o| o.resource.metadata().name != "own").collect();
        let model = Model::build(&without_own, vec![], &Model::default(), DOMAIN);
        assert_eq!(model.rule_for_host(host, "shop").unwrap().name, "root", "root before an exact host elsewhere");
        let only_others = [
            rule_in("bbb", "b", host, ""),
            rule_in("aaa", "a", host, ""),
            rule_in("ccc", "c", "*.shop.svc.cluster.local", ""),
        ]
        .concat();
        let model = Model::build(&objects(&only_others), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.rule_for_host(host, "shop").unwrap().name, "a", "exact, then namespace/name order");
    }

    #[test]
    fn export_to_hides_rules_from_other_namespaces() {
        let host = "web.shop.svc.cluster.local";
        let text = [
            rule_in("aaa", "private", host, ", exportTo: ['.']"),
            rule_in("bbb", "elsewhere", host, ", exportTo: [other]"),
            rule_in("ccc", "shared", host, ", exportTo: [shop]"),
        ]
        .concat();
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        assert_eq!(model.rule_for_host(host, "shop").unwrap().name, "shared");
        let text = rule_in("shop", "own", host, ", exportTo: [other]");
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.rule_for_host(host, "shop").unwrap().name, "own", "a rule always applies in its namespace");
    }

    const REVIEWS_RULE: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

    fn reviews_vs(second_subset: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 90}}\n    - {{destination: {{host: reviews.shop.svc.cluster.local, subset: {second_subset}}}, weight: 10}}\n")
    }

    #[test]
    fn virtual_services_are_validated_into_the_model() {
        let model =
            Model::build(&objects(&format!("{REVIEWS_RULE}{}", reviews_vs("v2"))), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        let vs = &model.virtual_services[&id("shop", "reviews")];
        assert_eq!(vs.hosts, ["reviews.shop.svc.cluster.local"]);
        let snapshot = crate::snapshot::compile(&model, DOMAIN);
        assert!(snapshot.routes.has_http_routes("reviews.shop.svc.cluster.local"));
        // A structural error rejects the object by field, as for any kind.
        let broken = reviews_vs("v2").replace("weight: 10", "weight: -10");
        let model = Model::build(&objects(&format!("{REVIEWS_RULE}{broken}")), vec![], &Model::default(), DOMAIN);
        assert!(model.virtual_services.is_empty());
        assert_eq!(
            model.rejections[0].to_string(),
            "test.yaml: VirtualService shop/reviews: spec.http[0].route[1].weight: -10 is negative or too large"
        );
    }

    #[test]
    fn an_unknown_subset_rejects_the_virtual_service_with_last_good_fallback() {
        let text = format!("{REVIEWS_RULE}{}", reviews_vs("v3"));
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert!(model.virtual_services.is_empty(), "not served");
        assert_eq!(model.rejections.len(), 1, "{:?}", model.rejections);
        let shown = model.rejections[0].to_string();
        assert!(
            shown.contains("VirtualService shop/reviews: spec.http[0].route[1].destination.subset: subset \"v3\""),
            "{shown}"
        );
        assert!(shown.contains("DestinationRule shop/reviews does not define it"), "{shown}");
        assert!(shown.ends_with("(the VirtualService is not served)"), "{shown}");
        // A good version first: a bad edit falls back to it.
        let good =
            Model::build(&objects(&format!("{REVIEWS_RULE}{}", reviews_vs("v2"))), vec![], &Model::default(), DOMAIN);
        let next = Model::build(&objects(&text), vec![], &good, DOMAIN);
        assert!(next.rejections[0].message.ends_with("(the last good version keeps serving)"), "{:?}", next.rejections);
        let RouteAction::Forward(destinations) = &next.virtual_services[&id("shop", "reviews")].http[0].action else {
            panic!()
        };
        assert_eq!(destinations[1].subset.as_deref(), Some("v2"));
        // And again on the next reload, from the version that kept serving.
        let again = Model::build(&objects(&text), vec![], &next, DOMAIN);
        assert!(again.virtual_services.contains_key(&id("shop", "reviews")));
        // Without the rule no subset exists: the last good version fails
        // too, so nothing is served.
        let without_rule = Model::build(&objects(&reviews_vs("v2")), vec![], &good, DOMAIN);
        assert!(without_rule.virtual_services.is_empty());
        let fields: Vec<&str> = without_rule.rejections.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["spec.http[0].route[0].destination.subset", "spec.http[0].route[1].destination.subset"]);
        assert!(
            without_rule.rejections[0].message.contains("no DestinationRule applies"),
            "{}",
            without_rule.rejections[0]
        );
    }

    #[test]
    fn a_host_routed_by_an_earlier_virtual_service_is_reported() {
        let second = reviews_vs("v2").replace("name: reviews, namespace", "name: reviews-b, namespace");
        let text = format!("{REVIEWS_RULE}{}{second}", reviews_vs("v1"));
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.virtual_services.len(), 2, "both valid");
        assert_eq!(model.rejections.len(), 1, "{:?}", model.rejections);
        let shown = model.rejections[0].to_string();
        assert!(shown.contains("VirtualService shop/reviews-b: spec.hosts[0]: reviews.shop.svc.cluster.local is already routed by VirtualService shop/reviews"), "{shown}");
    }

    #[test]
    fn consistent_hash_without_a_key_is_served_as_random() {
        let rule = RULE.replace(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings:\n    - port: {number: 8080}\n      loadBalancer: {simple: RANDOM}\n",
            "    loadBalancer: {consistentHash: {maglev: {tableSize: 251}}}\n",
        );
        let model = Model::build(&objects(&format!("{SERVICE}---\n{rule}")), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        let snapshot = crate::snapshot::compile(&model, DOMAIN);
        let http = snapshot.services.iter().find(|s| s.port == 80).unwrap();
        assert_eq!(http.load_balancer, "RANDOM");
        assert_eq!(http.destination_rule.as_deref(), Some("shop/web"));
    }

    /// Bookinfo's `destination-rule-all-mtls.yaml` for reviews.
    const REVIEWS_MTLS: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy:\n      loadBalancer: {simple: RANDOM}\n      tls: {mode: ISTIO_MUTUAL}\n";

    #[test]
    fn istio_mutual_is_served_in_plaintext_with_a_warning() {
        let text = format!("{REVIEWS_MTLS}{}", reviews_vs("v2"));
        let model = Model::build(&objects(&text), vec![], &Model::default(), DOMAIN);
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        assert!(model.virtual_services.contains_key(&id("shop", "reviews")), "its subsets resolve");
        let rule = &model.destination_rules[&id("shop", "reviews")];
        for subset in [None, Some("v1"), Some("v2")] {
            let tls = rule.effective(subset, 80).tls;
            assert!(tls.is_none_or(|tls| tls.mode == destination_rule::TlsMode::Disable), "{subset:?}: no origination");
        }
        assert_eq!(
            rule.effective(Some("v2"), 80).load_balancer,
            destination_rule::LoadBalancer::Random,
            "the rest applies"
        );
        let shown: Vec<String> = model.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                format!(
                    "test.yaml: DestinationRule shop/reviews: spec.trafficPolicy.tls.mode: {}",
                    crate::warnings::ISTIO_MUTUAL
                ),
                format!(
                    "test.yaml: DestinationRule shop/reviews: spec.subsets[1].trafficPolicy.tls.mode: {}",
                    crate::warnings::ISTIO_MUTUAL
                ),
            ]
        );
        // An unknown mode is still rejected by field.
        let unknown = REVIEWS_MTLS.replacen("ISTIO_MUTUAL", "ISTIO_MUTUAL_V2", 1);
        let model = Model::build(&objects(&unknown), vec![], &Model::default(), DOMAIN);
        assert_eq!(model.rejections[0].field, "spec.trafficPolicy.tls.mode");
        assert!(model.warnings.is_empty(), "a rejected object has no warnings: {:?}", model.warnings);
    }

    #[test]
    fn warnings_come_from_the_version_that_serves() {
        let tunnel = "    tunnel: {targetHost: egress.example, targetPort: 3128}\n";
        let with_tunnel = RULE.replace("    portLevelSettings:\n", &format!("{tunnel}    portLevelSettings:\n"));
        let service = SERVICE.replace("port: 80,", "port: 8080,");
        let good = Model::build(&objects(&format!("{service}---\n{with_tunnel}")), vec![], &Model::default(), DOMAIN);
        assert!(good.rejections.is_empty(), "{:?}", good.rejections);
        let fields: Vec<&str> = good.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(fields, ["spec.trafficPolicy.tunnel"]);
        assert_eq!(good.warnings[0].message, crate::warnings::TUNNEL);
        // A bad edit that also drops the tunnel: the last good version
        // serves, and its warning with it.
        let broken = RULE
            .replace("ROUND_ROBIN", "SOMETIMES")
            .replace("loadBalancer: {simple: RANDOM}", "loadBalancer: {simple: RANDOM}\n      extra: 1");
        let next = Model::build(&objects(&format!("{service}---\n{broken}")), vec![], &good, DOMAIN);
        assert_eq!(next.rejections.len(), 1);
        assert_eq!(next.warnings, good.warnings);
        // Fixed without the tunnel: no warning is left.
        let fixed = Model::build(&objects(&format!("{service}---\n{RULE}")), vec![], &next, DOMAIN);
        assert!(fixed.rejections.is_empty() && fixed.warnings.is_empty(), "{:?}", fixed.warnings);
    }
}
