//! Compiles the validated model into one immutable snapshot: the exact
//! contents of the kernel maps plus a readable view for the admin API.

use crate::destination_rule::{DestinationRuleModel, EffectivePolicy, HashKey, HashTable, LoadBalancer};
use crate::host::labels_match;
use crate::host::Labels;
use crate::locality::{placements, Locality, Placement, Setting};
use crate::maglev;
use crate::model::{EndpointModel, EndpointSliceModel, Model, PortModel, Protocol, ServiceModel, TargetPort};
use crate::node::MapSizes;
use crate::object::{ObjectKey, Rejection, Warning, WarningReason};
use crate::outbound::{Outbound, ServicePortRef};
use crate::route::RouteTable;
use crate::service_entry::{EntryEndpoint, ServiceEntryModel};
use crate::warnings::{proxy_only_fields, selector_on_kernel_port, PortPath};
use imbl::OrdMap;
use mesh_common::{
    capacity, lb, maglev_cells, Backend, Frontend, FrontendKey, ServiceIpKey, SlotKey, FAMILY_V4, FAMILY_V6,
    FRONTEND_CAPTURE, PROTO_TCP, PROTO_UDP,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Everything the kernel should hold, and how it came about. Cheap to
/// clone: the kernel maps are persistent maps (a snapshot compiled from
/// another shares what did not change, and the two diff in proportion to
/// the change), the rest is shared.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub frontends: OrdMap<FrontendKey, Frontend>,
    /// Every cluster IP, with its number of ports.
    pub service_ips: OrdMap<ServiceIpKey, u32>,
    pub slots: OrdMap<SlotKey, Backend>,
    /// The Maglev tables by group id: the slot index of each entry.
    pub maglev: OrdMap<u64, Arc<[u16]>>,
    pub services: Vec<Arc<ServicePortView>>,
    pub rejections: Vec<Rejection>,
    /// Index into `services` by service address, for the proxy.
    pub by_frontend: Arc<HashMap<SocketAddr, usize>>,
    /// Indexes into `services` by FQDN, for route destinations.
    pub by_host: Arc<HashMap<String, Vec<usize>>>,
    /// The model this was compiled from: the proxy asks it for subsets and
    /// DestinationRule policy per request.
    pub model: Arc<Model>,
    /// The HTTP, TCP and TLS routes of every VirtualService.
    pub routes: Arc<RouteTable>,
    /// Which published snapshot this is (increasing; 0 before publishing).
    pub serial: u64,
    /// The source pod of a captured connection, by address.
    pub pods_by_ip: Arc<HashMap<IpAddr, (String, String)>>,
    /// Each workload's outbound policy, and the registry REGISTRY_ONLY
    /// workloads reach.
    pub outbound: Outbound,
    /// How many distinct backends the slots hold, and the cluster states:
    /// what a compile from this snapshot counts on.
    kernel_use: KernelCounts,
    /// `services` starts with this many views of Services, in the order of
    /// their (namespace, name), each Service's ports together; the views of
    /// ServiceEntries follow.
    service_views: usize,
}

/// One service port as the dataplane serves it (an Envoy "cluster").
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServicePortView {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub cluster_id: u64,
    pub frontends: Vec<SocketAddr>,
    pub load_balancer: String,
    /// Why the kernel algorithm differs from what the rule asked, if it does.
    pub load_balancer_note: Option<String>,
    pub maglev_table_size: Option<u32>,
    /// 0: unlimited.
    pub max_connections: u32,
    pub destination_rule: Option<String>,
    pub backends: Vec<BackendView>,
    /// `name.namespace.svc.<domain>`.
    pub fqdn: String,
    /// The port speaks HTTP (by name or appProtocol, as Istio decides).
    pub http: bool,
    /// Upstreams speak HTTP/2 with prior knowledge (http2, grpc, h2c).
    pub http2: bool,
    /// Connects go to the node proxy: an HTTP port with L7 rules (routed
    /// per request), or a TCP port with `tcp` routes (per connection).
    pub captured: bool,
    /// `trafficDistribution: PreferClose` on the Service.
    pub prefer_close: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendView {
    pub address: SocketAddr,
    pub target: Option<Arc<str>>,
    /// The labels of the pod behind the address, for subsets (shared with
    /// the pod: a pod stands behind as many backends as its ports).
    pub labels: Labels,
    /// Where it runs (parts unknown are empty).
    pub locality: Arc<Locality>,
}

pub use mesh_common::ip_words;

pub fn words_ip(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    }
}

pub fn backend_key(address: SocketAddr) -> Backend {
    Backend { addr: ip_words(address.ip()), port: address.port().to_be(), family: family_of(address.ip()), _pad: 0 }
}

pub fn backend_addr(backend: &Backend) -> SocketAddr {
    SocketAddr::new(words_ip(backend.addr, backend.family), u16::from_be(backend.port))
}

fn family_of(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// A service address as the kernel's frontends key it.
fn frontend_key(address: SocketAddr, protocol: Protocol) -> FrontendKey {
    let proto = match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    let ip = address.ip();
    FrontendKey { addr: ip_words(ip), port: address.port().to_be(), proto, family: family_of(ip) }
}

/// The cluster IP a frontend is on.
fn service_ip_key(frontend: &FrontendKey) -> ServiceIpKey {
    ServiceIpKey { addr: frontend.addr, family: frontend.family, _pad: [0; 3] }
}

/// The cluster (service port, both families) and group (its backends of
/// one family) ids: hashes of names, so a restarted agent derives the same
/// ids and finds its own counters in the pinned maps.
pub fn cluster_id(service: &ServiceModel, port: &PortModel) -> u64 {
    maglev::stable_hash(
        1,
        format!("{}/{}/{}/{:?}", service.namespace, service.name, port.port, port.protocol).as_bytes(),
    )
}

fn group_id(cluster: u64, family: u8) -> u64 {
    maglev::stable_hash(2, &[cluster.to_le_bytes().as_slice(), &[family]].concat())
}

/// The kernel algorithm for a rule's load balancer, and a note when the
/// kernel cannot do exactly what was asked at connect time.
fn kernel_algorithm(load_balancer: &LoadBalancer) -> (u8, u32, Option<String>) {
    match load_balancer {
        LoadBalancer::LeastRequest => (lb::LEAST_REQUEST, 0, None),
        LoadBalancer::RoundRobin => (lb::ROUND_ROBIN, 0, None),
        LoadBalancer::Random => (lb::RANDOM, 0, None),
        LoadBalancer::Passthrough => (lb::LEAST_REQUEST, 0, Some("PASSTHROUGH has no original destination to pass to for a cluster IP; balanced by LEAST_REQUEST".into())),
        LoadBalancer::ConsistentHash { key: HashKey::UseSourceIp, table: HashTable::Maglev { table_size } } => {
            (lb::MAGLEV_SOURCE_IP, *table_size, None)
        }
        LoadBalancer::ConsistentHash { key: HashKey::UseSourceIp, table: HashTable::RingHash { .. } } => (
            lb::MAGLEV_SOURCE_IP,
            crate::destination_rule::DEFAULT_MAGLEV_TABLE_SIZE,
            Some("ring hash is served by a Maglev table of the default size in the kernel".into()),
        ),
        LoadBalancer::ConsistentHash { key: HashKey::Unset, .. } => (lb::RANDOM, 0, None),
        LoadBalancer::ConsistentHash { .. } => (
            lb::LEAST_REQUEST,
            0,
            Some("hashing on an HTTP header, cookie or query parameter needs the L7 proxy; balanced by LEAST_REQUEST at connect time".into()),
        ),
    }
}

fn algorithm_name(algorithm: u8) -> &'static str {
    match algorithm {
        lb::ROUND_ROBIN => "ROUND_ROBIN",
        lb::RANDOM => "RANDOM",
        lb::MAGLEV_SOURCE_IP => "MAGLEV(useSourceIp)",
        _ => "LEAST_REQUEST",
    }
}

/// EndpointSlices by the `(namespace, service)` they belong to.
type SliceIndex<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSliceModel>>;

fn index_slices<'a>(
    model: &'a Model,
    entries: &'a [(ServiceModel, Vec<EndpointSliceModel>, ObjectKey)],
) -> SliceIndex<'a> {
    let mut index = SliceIndex::new();
    for slice in model.endpoint_slices.values().chain(entries.iter().flat_map(|(_, slices, _)| slices)) {
        index.entry((slice.namespace.as_str(), slice.service.as_str())).or_default().push(slice);
    }
    index
}

/// The services ServiceEntries add (see `service_entry::services_of`),
/// less a host that a Service of its namespace already names (that
/// Service serves; the entry is warned).
fn entry_services(
    model: &Model,
    warnings: &mut Vec<Warning>,
) -> Vec<(ServiceModel, Vec<EndpointSliceModel>, ObjectKey)> {
    let mut services = Vec::new();
    for entry in model.service_entries.values() {
        let object = model.served_object(&ObjectKey::new("ServiceEntry", &entry.namespace, &entry.name));
        if let Some(object) = object {
            for name in entry.unresolved(&model.resolved) {
                let message = format!(
                    "{name} has no DNS answer yet (or its lookups fail): nothing is translated or dialled for it"
                );
                let field = match entry.hosts.iter().position(|h| *h == name) {
                    Some(i) if entry.endpoints.is_empty() => format!("spec.hosts[{i}]"),
                    _ => format!(
                        "spec.endpoints[{}].address",
                        entry.endpoints.iter().position(|e| e.address.eq_ignore_ascii_case(&name)).unwrap_or_default()
                    ),
                };
                warnings.push(Warning::object(object, field, message, WarningReason::NotHonoured));
            }
        }
        // A selector stands for the endpoints it selects: WorkloadEntries
        // and pods of the entry's namespace with its labels.
        let selecting;
        let entry = match &entry.workload_selector {
            Some(selector) => {
                selecting =
                    ServiceEntryModel { endpoints: selected_endpoints(model, entry, selector), ..entry.clone() };
                &selecting
            }
            None => entry,
        };
        for (service, slices) in crate::registry::services_of(entry, &model.resolved) {
            let id = (service.namespace.clone(), service.name.clone());
            if model.services.contains_key(&id) {
                if let Some(object) = object {
                    let i = entry.hosts.iter().position(|h| *h == service.name).unwrap_or_default();
                    let message = format!(
                        "Service {}/{} already has this name; the Service serves it and this host adds nothing",
                        id.0, id.1
                    );
                    warnings.push(Warning::object(
                        object,
                        format!("spec.hosts[{i}]"),
                        message,
                        WarningReason::NotHonoured,
                    ));
                }
                continue;
            }
            services.push((service, slices, ObjectKey::new("ServiceEntry", &entry.namespace, &entry.name)));
        }
    }
    services
}

/// Pod labels by address, and by `namespace/Pod/name` for endpoints whose
/// pod is known by its metadata only (the API source watches remote pods'
/// labels, not their addresses).
struct PodLabels<'a> {
    by_ip: HashMap<IpAddr, &'a Labels>,
    by_target: HashMap<String, &'a Labels>,
    /// What a backend without a known pod gets: one empty set for all.
    none: Labels,
}

impl<'a> PodLabels<'a> {
    fn new(model: &'a Model) -> Self {
        let pods = || model.pods.values();
        Self {
            by_ip: pods().flat_map(|pod| pod.ips.iter().map(move |ip| (*ip, &pod.labels))).collect(),
            by_target: pods().map(|pod| (format!("{}/Pod/{}", pod.namespace, pod.name), &pod.labels)).collect(),
            none: Labels::default(),
        }
    }

    fn of(&self, address: &IpAddr, namespace: &str, target: Option<&str>) -> Labels {
        let by_target = || self.by_target.get(&format!("{namespace}/{}", target?)).copied();
        self.by_ip.get(address).copied().or_else(by_target).unwrap_or(&self.none).clone()
    }
}

/// The ready endpoints of one service port in one family.
fn backends_of(
    slices: &SliceIndex<'_>,
    pod_labels: &PodLabels<'_>,
    service: &ServiceModel,
    port: &PortModel,
    ipv6: bool,
) -> Vec<BackendView> {
    let mut backends = BTreeSet::new();
    let slices = slices
        .get(&(service.namespace.as_str(), service.name.as_str()))
        .into_iter()
        .flatten()
        .filter(|s| s.ipv6 == ipv6);
    for slice in slices {
        // The EndpointSlice carries the resolved target port under the
        // service port's name; a slice without ports falls back to a
        // numeric targetPort.
        let target = match slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol) {
            Some(p) => p.port,
            None if slice.ports.is_empty() => match port.target_port {
                TargetPort::Number(n) => n,
                TargetPort::Name(_) => continue,
            },
            None => continue,
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            for address in &endpoint.addresses {
                backends.insert(BackendView {
                    address: SocketAddr::new(*address, target),
                    locality: endpoint.locality.clone(),
                    target: endpoint.target.clone(),
                    labels: match &endpoint.labels {
                        Some(labels) => labels.clone(),
                        None => pod_labels.of(address, &slice.namespace, endpoint.target.as_deref()),
                    },
                });
            }
        }
    }
    backends.into_iter().collect()
}

/// The snapshot of `model`. It always compiles: what does not fit a kernel
/// map is left out object by object, each with a rejection that says so.
pub fn compile(model: &Model, cluster_domain: &str) -> Snapshot {
    compile_owned(model.clone(), None, cluster_domain)
}

/// [`compile`], moving `model` into the snapshot instead of copying it (a
/// large cluster's model is much of the agent's memory and reload time).
///
/// `previous`: the snapshot compiled from the model `model` was built from,
/// if the caller has it: when only endpoints changed between the two, the
/// services they belong to are compiled again and the rest is shared.
pub fn compile_owned(mut model: Model, previous: Option<&Snapshot>, cluster_domain: &str) -> Snapshot {
    let changed = previous.and_then(|previous| compile_changed(&model, previous, cluster_domain));
    let (mut snapshot, without_http_proxy) = match changed {
        Some(parts) => parts,
        None => compile_parts(&model, cluster_domain),
    };
    // A model compiled before (again on new DNS answers) holds the
    // compiler's warnings of that time: they are found again.
    model.warnings.truncate(model.built_warnings);
    model.warnings.extend(without_http_proxy);
    snapshot.model = Arc::new(model);
    snapshot
}

/// The snapshot of `model` but its model, and the warnings of rule fields
/// only the HTTP proxy acts on, set on ports it does not serve.
fn compile_parts(model: &Model, cluster_domain: &str) -> (Snapshot, Vec<Warning>) {
    let routes = Arc::new(RouteTable::build(&model.virtual_services));
    let mut snapshot = Snapshot { rejections: model.rejections.clone(), ..Default::default() };
    // Rule fields only the HTTP proxy acts on, on ports it does not serve.
    let mut without_http_proxy = Vec::new();
    let entries = entry_services(model, &mut without_http_proxy);
    let inputs = Inputs {
        model,
        cluster_domain,
        routes: &routes,
        slices: index_slices(model, &entries),
        pod_labels: PodLabels::new(model),
    };
    let mut kernel = KernelUse::default();
    let services =
        model.services.values().map(|service| (service, ObjectKey::new("Service", &service.namespace, &service.name)));
    for (service, origin) in services.chain(entries.iter().map(|(service, _, origin)| (service, origin.clone()))) {
        let views = compile_service(&inputs, &mut snapshot, &mut kernel, service, &origin, &mut without_http_proxy);
        snapshot.services.extend(views.into_iter().map(Arc::new));
        if origin.kind == "Service" {
            snapshot.service_views = snapshot.services.len();
        }
    }
    snapshot.kernel_use = kernel.counts();
    let mut by_frontend = HashMap::new();
    let mut by_host: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, service) in snapshot.services.iter().enumerate() {
        for frontend in &service.frontends {
            // The first service at an address serves it (Services before
            // ServiceEntries, as the kernel's frontends).
            by_frontend.entry(*frontend).or_insert(index);
        }
        by_host.entry(service.fqdn.clone()).or_default().push(index);
    }
    (snapshot.by_frontend, snapshot.by_host) = (Arc::new(by_frontend), Arc::new(by_host));
    snapshot.outbound = outbound_of(model, &snapshot.services);
    snapshot.rejections.extend(snapshot.outbound.rejections.iter().cloned());
    without_http_proxy.extend(crate::outbound::unenforced(model));
    snapshot.pods_by_ip = pods_by_ip(model);
    snapshot.routes = routes;
    // Filled in order: their nodes half empty (see crate::packed).
    crate::packed::repack(&mut snapshot.frontends);
    crate::packed::repack(&mut snapshot.service_ips);
    crate::packed::repack(&mut snapshot.slots);
    crate::packed::repack(&mut snapshot.maglev);
    (snapshot, without_http_proxy)
}

/// `previous` with the services whose endpoints changed compiled again, for
/// a model built from `previous.model` by changes of EndpointSlices and Pods
/// alone (`Model::build_changed`): what a whole compile would give, at the
/// cost of the change. None when that cannot be told so cheaply (a kernel
/// map filled up, a ServiceEntry selecting pods, ...): compile whole then.
fn compile_changed(model: &Model, previous: &Snapshot, cluster_domain: &str) -> Option<(Snapshot, Vec<Warning>)> {
    let changed = model.changed_since(&previous.model)?;
    let same_context =
        Arc::ptr_eq(&model.node, &previous.model.node) && Arc::ptr_eq(&model.resolved, &previous.model.resolved);
    // The rejections a whole compile adds depend on every service's order.
    let compiler_rejected = previous.rejections.len() != previous.model.rejections.len();
    if !same_context || compiler_rejected {
        return None;
    }
    let id = |key: &ObjectKey| (key.namespace.clone(), key.name.clone());
    let mut affected = BTreeSet::new();
    for key in changed.iter().filter(|key| key.kind == "EndpointSlice") {
        for slices in [&previous.model.endpoint_slices, &model.endpoint_slices] {
            affected.extend(slices.get(&id(key)).map(|slice| (slice.namespace.clone(), slice.service.clone())));
        }
    }
    let pods: Vec<&ObjectKey> = changed.iter().filter(|key| key.kind == "Pod").collect();
    if !pods.is_empty() {
        // A ServiceEntry's endpoints may be the pods it selects.
        if model.service_entries.values().any(|entry| entry.workload_selector.is_some()) {
            return None;
        }
        // The services with an endpoint at a changed pod (its labels are
        // the endpoint's).
        let mut ips = HashSet::new();
        let mut targets = HashSet::new();
        for key in pods {
            for all in [&previous.model.pods, &model.pods] {
                ips.extend(all.get(&id(key)).into_iter().flat_map(|pod| pod.ips.iter().copied()));
            }
            targets.insert((key.namespace.as_str(), key.name.as_str()));
        }
        for slice in model.endpoint_slices.values() {
            let at_pod = |e: &EndpointModel| {
                e.addresses.iter().any(|ip| ips.contains(ip))
                    || e.target
                        .as_deref()
                        .and_then(|t| t.strip_prefix("Pod/"))
                        .is_some_and(|name| targets.contains(&(slice.namespace.as_str(), name)))
            };
            if slice.endpoints.iter().any(at_pod) {
                affected.insert((slice.namespace.clone(), slice.service.clone()));
            }
        }
    }
    let mut snapshot = Snapshot { rejections: model.rejections.clone(), model: Arc::default(), ..previous.clone() };
    let mut slices = SliceIndex::new();
    let wanted: HashSet<(&str, &str)> = affected.iter().map(|(ns, name)| (ns.as_str(), name.as_str())).collect();
    for slice in model.endpoint_slices.values() {
        if wanted.contains(&(slice.namespace.as_str(), slice.service.as_str())) {
            slices.entry((slice.namespace.as_str(), slice.service.as_str())).or_default().push(slice);
        }
    }
    let inputs = Inputs { model, cluster_domain, routes: &previous.routes, slices, pod_labels: PodLabels::new(model) };
    let mut kernel = KernelUse::patching(&previous.kernel_use);
    // The services' warnings did not change with their endpoints: the
    // previous compile's stand.
    let mut again = Vec::new();
    for (namespace, name) in affected {
        let Some(service) = model.services.get(&(namespace.clone(), name.clone())) else { continue };
        let views = &snapshot.services[..snapshot.service_views];
        let first = views.partition_point(|view| (view.namespace.as_str(), view.name.as_str()) < (&namespace, &name));
        let count = views[first..].iter().take_while(|view| view.namespace == namespace && view.name == name).count();
        let ports = first..first + count;
        if ports.len() != service.ports.len() {
            return None;
        }
        for index in ports.clone() {
            let view = snapshot.services[index].clone();
            snapshot.take_out(&mut kernel, &view);
        }
        let origin = ObjectKey::new("Service", &namespace, &name);
        let views = compile_service(&inputs, &mut snapshot, &mut kernel, service, &origin, &mut again);
        if snapshot.rejections.len() != model.rejections.len() {
            return None;
        }
        for (index, view) in ports.zip(views) {
            snapshot.services[index] = Arc::new(view);
        }
    }
    snapshot.kernel_use = kernel.counts();
    // The services' addresses and names are the same: so are the indexes
    // by address and host, and the routes. The registry holds endpoints,
    // workloads are pods.
    if !changed.iter().all(|key| key.kind == "EndpointSlice") || previous.outbound.config.any_restricted != 0 {
        snapshot.outbound = outbound_of(model, &snapshot.services);
        if !snapshot.outbound.rejections.is_empty() {
            // Rejections of its own: compile whole.
            return None;
        }
    }
    if changed.iter().any(|key| key.kind == "Pod") {
        snapshot.pods_by_ip = pods_by_ip(model);
    }
    let warnings = previous.model.warnings[previous.model.built_warnings..].to_vec();
    Some((snapshot, warnings))
}

fn outbound_of(model: &Model, services: &[Arc<ServicePortView>]) -> Outbound {
    let service_ports = services.iter().map(|s| ServicePortRef {
        namespace: &s.namespace,
        host: &s.fqdn,
        port: s.port,
        cluster_id: s.cluster_id,
    });
    crate::outbound::compile(model, service_ports)
}

fn pods_by_ip(model: &Model) -> Arc<HashMap<IpAddr, (String, String)>> {
    Arc::new(model.pods.iter().flat_map(|(id, pod)| pod.ips.iter().map(move |ip| (*ip, id.clone()))).collect())
}

/// What every service's compile reads.
struct Inputs<'a> {
    model: &'a Model,
    cluster_domain: &'a str,
    routes: &'a RouteTable,
    slices: SliceIndex<'a>,
    pod_labels: PodLabels<'a>,
}

/// Compiles the ports of `service` (from object `origin`) into the kernel
/// maps of `snapshot`, and returns their views; warnings of rule fields the
/// kernel cannot act on go to `warnings`.
fn compile_service(
    inputs: &Inputs<'_>,
    snapshot: &mut Snapshot,
    kernel: &mut KernelUse,
    service: &ServiceModel,
    origin: &ObjectKey,
    warnings: &mut Vec<Warning>,
) -> Vec<ServicePortView> {
    let (model, cluster_domain) = (inputs.model, inputs.cluster_domain);
    let sizes = model.node.map_sizes;
    let mut views = Vec::new();
    let fqdn = service.fqdn(cluster_domain);
    let rule = model.rule_for_host(&fqdn, &service.namespace);
    // Rules for some clients only (workloadSelector): the proxy applies
    // them per client.
    let selector_rules: Vec<&DestinationRuleModel> = model.selector_rules(&fqdn).collect();
    for (index, port) in service.ports.iter().enumerate() {
        let policy = rule.map(|r| r.effective(None, port.port)).unwrap_or_default();
        let (http, http2) = http_protocol(port);
        // HTTP ports with L7 rules, and plain TCP ports with `tcp` routes.
        let captured = if http {
            inputs.routes.has_http_routes(&fqdn)
                || rule.is_some_and(|r| needs_l7(r, port.port))
                || !selector_rules.is_empty()
        } else {
            // Every condition of a `tcp`/`tls` match (source labels,
            // subnets, SNI) is checked by the proxy, never in the kernel.
            port.protocol == Protocol::Tcp && inputs.routes.has_l4_routes(&fqdn)
        };
        let (mut algorithm, mut maglev_size, mut note) = kernel_algorithm(&policy.load_balancer);
        // A table per family with addresses; one more than the Maglev
        // map holds costs this service its consistent hashing, not the
        // configuration its compile.
        let families = [false, true].iter().filter(|v6| service.cluster_ips.iter().any(|ip| ip.is_ipv6() == **v6));
        let tables = families.count();
        let entries = tables * maglev_cells::count(maglev_size) as usize * maglev_cells::ENTRIES_PER_CELL as usize;
        let over_tables = snapshot.maglev.len() + tables > sizes.maglev_tables as usize;
        let over_entries = kernel.maglev_entries + entries > sizes.maglev_entries as usize;
        if algorithm == lb::MAGLEV_SOURCE_IP && (over_tables || over_entries) {
            let message = match over_tables {
                true => format!(
                    "the kernel's {} Maglev tables are in use (--map-entries maglev-tables=N holds more): \
                     balanced at random instead",
                    sizes.maglev_tables,
                ),
                false => format!(
                    "the Maglev tables in use hold {} of {} entries and this port needs {entries} \
                     (--map-entries maglev-entries=N allows more): balanced at random instead",
                    kernel.maglev_entries, sizes.maglev_entries,
                ),
            };
            if let Some(rule) = rule {
                snapshot.rejections.push(Rejection {
                    file: None,
                    kind: "DestinationRule".into(),
                    namespace: rule.namespace.clone(),
                    name: rule.name.clone(),
                    field: "spec.trafficPolicy.loadBalancer.consistentHash".into(),
                    message: format!("{} port {}: {message}", service.name, port.port),
                });
            }
            (algorithm, maglev_size, note) = (lb::RANDOM, 0, Some(message));
        }
        let cluster = cluster_id(service, port);
        let mut view_backends = Vec::new();
        // What this port puts in the kernel, per family with addresses:
        // all of it, or (a map is full) none of it.
        let mut groups = Vec::new();
        for ipv6 in [false, true] {
            let family = if ipv6 { FAMILY_V6 } else { FAMILY_V4 };
            let ips: Vec<IpAddr> = service.cluster_ips.iter().copied().filter(|ip| ip.is_ipv6() == ipv6).collect();
            let backends = backends_of(&inputs.slices, &inputs.pod_labels, service, port, ipv6);
            if ips.is_empty() {
                if service.cluster_ips.is_empty() {
                    // Headless: its endpoints for the proxies, nothing in the kernel.
                    view_backends.extend(backends);
                }
                continue;
            }
            // Locality: the best priority's endpoints, each in as many
            // slots as its weight asks.
            let setting = locality_setting(&policy, service.prefer_close);
            let placed = placements_of(setting, model.node.locality.as_ref(), backends.iter());
            let counts = slot_counts(placed.as_deref(), backends.len());
            let group = GroupPlan { group: group_id(cluster, family), ips, backends, counts };
            groups.push(group);
        }
        let full = kernel.full_for(&groups, cluster, port, snapshot, sizes);
        if let Some((what, size)) = full {
            let message = format!(
                "the kernel's {what} map is full ({size} entries; --map-entries sets more): \
                 port {} is not translated",
                port.port
            );
            snapshot.rejections.push(model.rejection(origin.clone(), &format!("spec.ports[{index}]"), message));
        }
        for GroupPlan { group, ips, backends, counts } in groups {
            if full.is_none() {
                let keys = slot_keys(&backends, &counts);
                for (index, backend) in keys.iter().enumerate() {
                    snapshot.slots.insert(SlotKey { group_id: group, index: index as u32, _pad: 0 }, *backend);
                }
                if algorithm == lb::MAGLEV_SOURCE_IP && !keys.is_empty() {
                    let table = maglev_table(&backends, &counts, maglev_size);
                    kernel.maglev_entries += table.len();
                    snapshot.maglev.insert(group, table);
                }
                let frontend = Frontend {
                    group_id: group,
                    cluster_id: cluster,
                    backend_count: keys.len().min(capacity::MAX_BACKENDS_PER_GROUP as usize) as u32,
                    max_connections: policy.tcp.max_connections,
                    maglev_size: if algorithm == lb::MAGLEV_SOURCE_IP { maglev_size } else { 0 },
                    algorithm,
                    flags: if captured { FRONTEND_CAPTURE } else { 0 },
                    _pad: [0; 2],
                };
                kernel.record(&keys, [cluster, group]);
                for ip in ips {
                    let key = frontend_key(SocketAddr::new(ip, port.port), port.protocol);
                    // Services come first: an entry's VIP on a Service's
                    // address and port is the Service's (and warned).
                    if snapshot.frontends.contains_key(&key) {
                        warnings.extend(address_taken(model, service, SocketAddr::new(ip, port.port)));
                        continue;
                    }
                    snapshot.frontends.insert(key, frontend);
                    *snapshot.service_ips.entry(service_ip_key(&key)).or_default() += 1;
                }
            }
            view_backends.extend(backends);
        }
        // A headless service has nothing for the kernel to translate,
        // and no port its rules could miss; the proxies (a gateway, a
        // route's destination) still reach it by name.
        let path = match (captured, http) {
            _ if service.cluster_ips.is_empty() => None,
            (false, _) => Some(PortPath::Kernel),
            (true, false) => Some(PortPath::TcpProxy),
            (true, true) => None,
        };
        if let (Some(rule), Some(path), Protocol::Tcp) = (rule, path, port.protocol) {
            let key = ObjectKey::new("DestinationRule", &rule.namespace, &rule.name);
            if let Some(object) = model.served_object(&key) {
                let name = format!("{}/{}", service.namespace, service.name);
                warnings.extend(proxy_only_fields(rule, object, &name, port.port, path));
            }
        }
        if path == Some(PortPath::Kernel) && port.protocol == Protocol::Tcp {
            for selector_rule in &selector_rules {
                let key = ObjectKey::new("DestinationRule", &selector_rule.namespace, &selector_rule.name);
                if let Some(object) = model.served_object(&key) {
                    let name = format!("{}/{}", service.namespace, service.name);
                    warnings.push(selector_on_kernel_port(object, &name, port.port));
                }
            }
        }
        // Sized exactly: views live as long as their snapshot.
        view_backends.shrink_to_fit();
        views.push(ServicePortView {
            prefer_close: service.prefer_close,
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port_name: port.name.clone(),
            port: port.port,
            protocol: port.protocol,
            cluster_id: cluster,
            frontends: service.cluster_ips.iter().map(|ip| SocketAddr::new(*ip, port.port)).collect(),
            load_balancer: algorithm_name(algorithm).to_owned(),
            load_balancer_note: note,
            maglev_table_size: (algorithm == lb::MAGLEV_SOURCE_IP).then_some(maglev_size),
            max_connections: policy.tcp.max_connections,
            destination_rule: rule.map(|r| format!("{}/{}", r.namespace, r.name)),
            backends: view_backends,
            fqdn: fqdn.clone(),
            http,
            http2,
            captured,
        });
    }
    views
}

impl Snapshot {
    /// Some slot holds `backend`.
    pub fn holds_backend(&self, backend: &Backend) -> bool {
        match self.kernel_use.counted {
            true => self.kernel_use.backend_refs.contains_key(backend),
            // Not compiled (made by hand): looked for.
            false => self.slots.values().any(|b| b == backend),
        }
    }

    /// Takes what service port `view` put in the kernel maps out of them.
    fn take_out(&mut self, kernel: &mut KernelUse, view: &ServicePortView) {
        for address in &view.frontends {
            let key = frontend_key(*address, view.protocol);
            // An address another service holds (see `address_taken`) stays.
            let Some(frontend) = self.frontends.get(&key).copied().filter(|f| f.cluster_id == view.cluster_id) else {
                continue;
            };
            self.frontends.remove(&key);
            let ip_key = service_ip_key(&key);
            match self.service_ips.get(&ip_key).copied() {
                Some(ports) if ports > 1 => drop(self.service_ips.insert(ip_key, ports - 1)),
                _ => drop(self.service_ips.remove(&ip_key)),
            }
            // A group's slots run from 0; both addresses of a family share them.
            let group = frontend.group_id;
            let mut index = 0;
            while let Some(backend) = self.slots.remove(&SlotKey { group_id: group, index, _pad: 0 }) {
                kernel.forget(backend);
                index += 1;
            }
            if let Some(table) = self.maglev.remove(&group) {
                kernel.maglev_entries -= table.len();
            }
        }
    }
}

/// One address family of a service port, before it goes in the kernel.
struct GroupPlan {
    group: u64,
    ips: Vec<IpAddr>,
    backends: Vec<BackendView>,
    /// Slots per backend (see [`slot_counts`]).
    counts: Vec<usize>,
}

/// What the kernel maps hold beyond the snapshot's own maps, as a compile
/// from a snapshot needs it: slots per distinct backend, cluster states.
#[derive(Clone, Debug, Default)]
struct KernelCounts {
    backend_refs: Arc<HashMap<Backend, u32>>,
    clusters: usize,
    /// Entries of all Maglev tables (padded to whole cells).
    maglev_entries: usize,
    /// Counted by a compile.
    counted: bool,
}

/// [`KernelCounts`] while a compile fills the maps.
#[derive(Default)]
struct KernelUse {
    backend_refs: HashMap<Backend, u32>,
    clusters: HashSet<u64>,
    /// Changing some services of a compiled snapshot: their cluster states
    /// are there already (and stay: their ports did not change).
    patching: Option<usize>,
    maglev_entries: usize,
}

impl KernelUse {
    fn patching(counts: &KernelCounts) -> Self {
        let backend_refs = (*counts.backend_refs).clone();
        let maglev_entries = counts.maglev_entries;
        KernelUse { backend_refs, clusters: HashSet::new(), patching: Some(counts.clusters), maglev_entries }
    }

    fn counts(self) -> KernelCounts {
        let clusters = self.patching.unwrap_or(self.clusters.len());
        let maglev_entries = self.maglev_entries;
        KernelCounts { backend_refs: Arc::new(self.backend_refs), clusters, maglev_entries, counted: true }
    }

    /// A group's slots and states went in.
    fn record(&mut self, slots: &[Backend], states: [u64; 2]) {
        for backend in slots {
            *self.backend_refs.entry(*backend).or_default() += 1;
        }
        if self.patching.is_none() {
            self.clusters.extend(states);
        }
    }

    /// A slot of `backend` went.
    fn forget(&mut self, backend: Backend) {
        if let Some(refs) = self.backend_refs.get_mut(&backend) {
            *refs -= 1;
            if *refs == 0 {
                self.backend_refs.remove(&backend);
            }
        }
    }

    /// The first map that `groups` would overflow, with its size.
    fn full_for(
        &self,
        groups: &[GroupPlan],
        cluster: u64,
        port: &PortModel,
        snapshot: &Snapshot,
        sizes: MapSizes,
    ) -> Option<(&'static str, u32)> {
        let over = |used: usize, adding: usize, size: u32| used + adding > size as usize;
        let keys = || {
            let ips = groups.iter().flat_map(|g| &g.ips);
            ips.map(|ip| frontend_key(SocketAddr::new(*ip, port.port), port.protocol))
        };
        let frontends = keys().filter(|key| !snapshot.frontends.contains_key(key)).count();
        let ips: HashSet<ServiceIpKey> =
            keys().map(|key| service_ip_key(&key)).filter(|key| !snapshot.service_ips.contains_key(key)).collect();
        let slots: usize = groups.iter().map(|g| g.counts.iter().sum::<usize>()).sum();
        let backends: HashSet<Backend> = (groups.iter())
            .flat_map(|g| {
                g.backends.iter().zip(&g.counts).filter(|(_, n)| **n > 0).map(|(b, _)| backend_key(b.address))
            })
            .filter(|b| !self.backend_refs.contains_key(b))
            .collect();
        let clusters: HashSet<u64> = match self.patching {
            Some(_) => HashSet::new(),
            None => groups.iter().flat_map(|g| [cluster, g.group]).filter(|id| !self.clusters.contains(id)).collect(),
        };
        [
            ("service address", over(snapshot.frontends.len(), frontends, sizes.frontends), sizes.frontends),
            ("service IP", over(snapshot.service_ips.len(), ips.len(), sizes.service_ips), sizes.service_ips),
            ("backend slot", over(snapshot.slots.len(), slots, sizes.slots), sizes.slots),
            ("backend", over(self.backend_refs.len(), backends.len(), sizes.backends), sizes.backends),
            ("cluster state", over(self.clusters.len(), clusters.len(), sizes.clusters), sizes.clusters),
        ]
        .into_iter()
        .find(|(_, full, _)| *full)
        .map(|(what, _, size)| (what, size))
    }
}

/// The slots of a group: each backend as many times as its count.
fn slot_keys(backends: &[BackendView], counts: &[usize]) -> Vec<Backend> {
    (backends.iter().zip(counts)).flat_map(|(b, count)| std::iter::repeat_n(backend_key(b.address), *count)).collect()
}

/// A group's Maglev table: each entry the first slot of the backend that
/// owns it, over the backends with slots (each once: Maglev weighs them
/// equally), padded with zeros to whole cells (see
/// [`mesh_common::maglev_cells`]).
fn maglev_table(backends: &[BackendView], counts: &[usize], size: u32) -> Arc<[u16]> {
    // The chosen backends' names, and the first slot of each.
    let (mut names, mut firsts) = (Vec::new(), Vec::new());
    let mut first = 0;
    for (backend, count) in backends.iter().zip(counts) {
        // A slot past what 16 bits index is never picked by the kernel
        // either (`MAX_BACKENDS_PER_GROUP`).
        if *count > 0 && first < capacity::MAX_BACKENDS_PER_GROUP as usize {
            names.push(backend.address.to_string());
            firsts.push(first as u16);
        }
        first += count;
    }
    let mut table: Vec<u16> =
        maglev::build_table(&names, size).into_iter().map(|owner| firsts[owner as usize]).collect();
    table.resize((maglev_cells::count(size) * maglev_cells::ENTRIES_PER_CELL) as usize, 0);
    table.into()
}

/// [`locality::placements`] for `backends`, whose unknown region (an
/// EndpointSlice's) is the node's own.
fn placements_of<'a>(
    setting: Setting<'_>,
    own: Option<&Locality>,
    backends: impl Iterator<Item = &'a BackendView>,
) -> Option<Vec<Placement>> {
    let own = own?;
    let localities: Vec<Locality> = backends
        .map(|b| match b.locality.region.is_empty() {
            true => Locality { region: own.region.clone(), ..(*b.locality).clone() },
            false => (*b.locality).clone(),
        })
        .collect();
    placements(setting, Some(own), &localities)
}

/// How many kernel slots each of `n` backends takes: one each without
/// placements; else those of the best priority with any weight, in
/// proportion to their weights (in lowest terms), and none for the rest.
fn slot_counts(placed: Option<&[Placement]>, n: usize) -> Vec<usize> {
    let Some(placed) = placed else { return vec![1; n] };
    let best = placed.iter().filter(|p| p.weight > 0.0).map(|p| p.priority).min();
    let tenths: Vec<usize> =
        (placed.iter())
            .map(|p| {
                if Some(p.priority) == best && p.weight > 0.0 {
                    ((p.weight * 10.0).round() as usize).max(1)
                } else {
                    0
                }
            })
            .collect();
    let divisor = tenths.iter().copied().filter(|&t| t > 0).fold(0, gcd).max(1);
    tenths.into_iter().map(|t| t / divisor).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What locality balancing goes by for a service (`prefer_close`: its
/// `trafficDistribution`) under `policy`.
fn locality_setting(policy: &EffectivePolicy, prefer_close: bool) -> Setting<'_> {
    Setting { rule: policy.locality.as_ref(), outlier_detection: policy.outlier_detection.is_some(), prefer_close }
}

/// The endpoints a ServiceEntry's `workloadSelector` picks in its
/// namespace: WorkloadEntries, and pods by their addresses.
fn selected_endpoints(
    model: &Model,
    entry: &ServiceEntryModel,
    selector: &BTreeMap<String, String>,
) -> Vec<EntryEndpoint> {
    let selects = |labels: &BTreeMap<String, String>| labels_match(selector, labels);
    let entries = (model.workload_entries.values())
        .filter(|w| w.namespace == entry.namespace && selects(&w.endpoint.labels))
        .map(|w| w.endpoint.clone());
    let pods =
        (model.pods.values()).filter(|pod| pod.namespace == entry.namespace && selects(&pod.labels)).flat_map(|pod| {
            pod.ips.iter().map(|ip| EntryEndpoint {
                address: ip.to_string(),
                ports: BTreeMap::new(),
                labels: pod.labels.clone(),
                locality: None,
            })
        });
    entries.chain(pods).collect()
}

/// The warning for a ServiceEntry host whose address and port another
/// service (a Service, or an earlier entry) already serves in the kernel.
fn address_taken(model: &Model, service: &ServiceModel, address: SocketAddr) -> Option<Warning> {
    let host = service.host.as_ref()?;
    let entry =
        (model.service_entries.values()).find(|e| e.namespace == service.namespace && e.hosts.contains(host))?;
    let key = ObjectKey::new("ServiceEntry", &entry.namespace, &entry.name);
    let object = model.served_object(&key)?;
    let message = format!(
        "{address} is already another service's address in the kernel: connections to it go there, not to {host}"
    );
    let field = match entry.addresses.iter().position(|a| a.ip == address.ip()) {
        Some(i) => format!("spec.addresses[{i}]"),
        // An answer of the host's own lookup.
        None => format!("spec.hosts[{}]", entry.hosts.iter().position(|h| h == host).unwrap_or_default()),
    };
    Some(Warning::object(object, field, message, WarningReason::NotHonoured))
}

/// Whether a port speaks HTTP, and HTTP/2 in particular: `appProtocol`
/// first, then the port name (`http`, `http2`, `grpc`, `grpc-web`, alone or
/// followed by `-`), as Istio decides.
pub fn http_protocol(port: &PortModel) -> (bool, bool) {
    let by_name = |name: &str| {
        let prefix = name.split('-').next().unwrap_or_default().to_ascii_lowercase();
        match prefix.as_str() {
            "http" => Some((true, false)),
            "http2" | "grpc" => Some((true, true)),
            _ if name.to_ascii_lowercase().starts_with("grpc-web") => Some((true, false)),
            _ => None,
        }
    };
    if let Some(app) = &port.app_protocol {
        return match app.to_ascii_lowercase().as_str() {
            "http" | "grpc-web" | "kubernetes.io/ws" => (true, false),
            "http2" | "grpc" | "kubernetes.io/h2c" => (true, true),
            _ => (false, false),
        };
    }
    by_name(&port.name).unwrap_or((false, false))
}

/// A DestinationRule asks for something only the proxy can do on this port.
fn needs_l7(rule: &DestinationRuleModel, port: u16) -> bool {
    let levels = std::iter::once(rule.effective(None, port))
        .chain(rule.subsets.iter().map(|subset| rule.effective(Some(&subset.name), port)));
    levels.into_iter().any(|policy| {
        policy.http_pool.is_some()
            || policy.outlier_detection.is_some()
            || policy.tls.is_some()
            // Slow start weighs each pick, and connection ages are the
            // proxy's pools' to keep.
            || (policy.warmup.is_some()
                && matches!(policy.load_balancer, LoadBalancer::RoundRobin | LoadBalancer::LeastRequest))
            || policy.tcp.max_connection_duration.is_some()
            || matches!(
                policy.load_balancer,
                LoadBalancer::ConsistentHash {
                    key: HashKey::HttpHeaderName(_) | HashKey::HttpCookie(_) | HashKey::HttpQueryParameterName(_),
                    ..
                }
            )
    })
}

impl Snapshot {
    /// The service port a captured connection was dialled at.
    pub fn service_at(&self, address: SocketAddr) -> Option<&ServicePortView> {
        self.service_index_at(address).map(|i| &*self.services[i])
    }

    /// The index in `services` of the service port at a service address.
    pub fn service_index_at(&self, address: SocketAddr) -> Option<usize> {
        let address = match address.ip() {
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().map(|v4| SocketAddr::new(v4.into(), address.port())).unwrap_or(address)
            }
            _ => address,
        };
        self.by_frontend.get(&address).copied()
    }

    /// The index in `services` of a destination host's service port: the
    /// port asked for, or the only one the service has.
    pub fn service_index_for_host(&self, fqdn: &str, port: u16) -> Option<usize> {
        match self.by_host.get(fqdn)?.as_slice() {
            [only] => Some(*only),
            all => all.iter().copied().find(|&i| self.services[i].port == port),
        }
    }

    /// Endpoints of a service port (both families), only those of
    /// `subset` when named: a dual-stack pod is one endpoint per family.
    pub fn endpoints_any_family(&self, service: &ServicePortView, subset: Option<&str>) -> Vec<SocketAddr> {
        (self.endpoints_under(self.model.rule_for_host(&service.fqdn, &service.namespace), service, subset))
            .into_iter()
            .map(|b| b.address)
            .collect()
    }

    /// As [`Snapshot::endpoints_any_family`], with the subsets of `rule`
    /// (the rule that applies to the client).
    pub fn endpoints_under<'a>(
        &self,
        rule: Option<&DestinationRuleModel>,
        service: &'a ServicePortView,
        subset: Option<&str>,
    ) -> Vec<&'a BackendView> {
        let labels = subset
            .and_then(|name| rule.and_then(|rule| rule.subsets.iter().find(|s| s.name == name)).map(|s| &s.labels));
        match (subset, labels) {
            (None, _) => service.backends.iter().collect(),
            // A subset that no rule defines selects nothing.
            (Some(_), None) => Vec::new(),
            (Some(_), Some(labels)) => service.backends.iter().filter(|b| labels_match(labels, &b.labels)).collect(),
        }
    }

    /// Where each of `backends` (of `service`) stands for this node's
    /// clients under `policy`, or None when locality plays no part.
    pub fn placements<'a>(
        &self,
        policy: &EffectivePolicy,
        service: &ServicePortView,
        backends: impl Iterator<Item = &'a BackendView>,
    ) -> Option<Vec<Placement>> {
        placements_of(locality_setting(policy, service.prefer_close), self.model.node.locality.as_ref(), backends)
    }

    /// Whether a client (its labels and namespace; None: not a known pod)
    /// sees `service`: the Sidecar that applies to it lists it in `egress`,
    /// or lists no egress hosts at all.
    pub fn visible_to(&self, client: Option<(&BTreeMap<String, String>, &str)>, service: &ServicePortView) -> bool {
        let Some((labels, namespace)) = client else { return true };
        crate::sidecar::sidecar_for(|| self.model.sidecars.values(), namespace, labels)
            .is_none_or(|sidecar| sidecar.sees(&service.namespace, &service.fqdn, service.port))
    }

    /// The DestinationRule policy for a service port and subset.
    pub fn policy_for(&self, service: &ServicePortView, subset: Option<&str>) -> EffectivePolicy {
        let rule = self.model.rule_for_host(&service.fqdn, &service.namespace);
        rule.map(|rule| rule.effective(subset, service.port)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::parse_file;
    use crate::object::SourceBatch;

    fn compile_yaml(text: &str) -> Snapshot {
        compile_sized(text, MapSizes::default())
    }

    /// [`compile_yaml`] into kernel maps of `sizes`.
    fn compile_sized(text: &str, sizes: MapSizes) -> Snapshot {
        let objects = parse_file("t.yaml", text).unwrap();
        let mut model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        model.node = Arc::new(crate::node::NodeContext { map_sizes: sizes, ..Default::default() });
        compile(&model, "cluster.local")
    }

    /// `n` services `s<i>` of one port each, with one endpoint, and `extra`
    /// YAML per service.
    fn services(n: usize, extra: impl Fn(usize) -> String) -> String {
        (0..n)
            .map(|i| {
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\nspec: {{clusterIP: 10.96.1.{i}, ports: [{{port: 80}}]}}\n\
                     ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{i}, namespace: shop, labels: {{kubernetes.io/service-name: s{i}}}}}\naddressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{{addresses: [10.244.1.{i}]}}]\n{}",
                    extra(i)
                )
            })
            .collect()
    }

    const BASE: &str = concat!(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n",
        "spec:\n  clusterIPs: [10.96.0.10, fd00:96::10]\n  ports:\n  - {name: http, port: 80, targetPort: http}\n",
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
        "metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}\n",
        "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n",
        "- addresses: [10.244.0.2]\n  targetRef: {kind: Pod, name: web-a}\n",
        "- addresses: [10.244.0.3]\n",
        "- addresses: [10.244.0.4]\n  conditions: {ready: false}\n",
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
        "metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}\n",
        "addressType: IPv6\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: ['fd00:244::2']\n",
    );

    #[test]
    fn frontends_per_family_with_ready_backends_only() {
        let snap = compile_yaml(BASE);
        assert_eq!(snap.frontends.len(), 2);
        let v4 = snap.frontends.iter().find(|(k, _)| k.family == FAMILY_V4).unwrap();
        let v6 = snap.frontends.iter().find(|(k, _)| k.family == FAMILY_V6).unwrap();
        assert_eq!(v4.0.port, 80u16.to_be());
        assert_eq!(v4.1.backend_count, 2, "the not-ready endpoint is left out");
        assert_eq!(v6.1.backend_count, 1);
        assert_eq!(v4.1.cluster_id, v6.1.cluster_id, "one cluster, one limit, both families");
        assert_ne!(v4.1.group_id, v6.1.group_id);
        assert_eq!(v4.1.algorithm, lb::LEAST_REQUEST);
        let first = snap.slots[&SlotKey { group_id: v4.1.group_id, index: 0, _pad: 0 }];
        assert_eq!(backend_addr(&first), "10.244.0.2:8080".parse().unwrap());
        assert_eq!(snap.services[0].backends.len(), 3);
    }

    #[test]
    fn destination_rule_sets_algorithm_limit_and_maglev_table() {
        let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop}\nspec:\n  host: web\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 7}}\n    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}}\n";
        let snap = compile_yaml(&format!("{BASE}{rule}"));
        let fe = snap.frontends.values().find(|f| f.backend_count == 2).unwrap();
        assert_eq!((fe.algorithm, fe.maglev_size, fe.max_connections), (lb::MAGLEV_SOURCE_IP, 251, 7));
        assert_eq!(snap.maglev.len(), 2, "one table per family");
        let table = &snap.maglev[&fe.group_id];
        assert_eq!(table.len(), 252, "251 entries padded to whole cells");
        assert!(table[..251].iter().all(|slot| *slot < 2), "each entry a slot of the group");
        assert!(table[..251].contains(&0) && table[..251].contains(&1));
        assert_eq!(snap.services[0].destination_rule.as_deref(), Some("shop/web"));
    }

    #[test]
    fn a_maglev_table_that_does_not_fit_costs_its_service_its_hashing_not_the_compile() {
        // A map of 32 tables: the 33rd and 34th service do not fit.
        let rule = |i| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: s{i}, namespace: shop}}\nspec: {{host: s{i}, trafficPolicy: {{loadBalancer: {{consistentHash: {{useSourceIp: true, maglev: {{tableSize: 65521}}}}}}}}}}\n")
        };
        let sizes = MapSizes { maglev_tables: 32, ..MapSizes::default() };
        let snap = compile_sized(&services(34, rule), sizes);
        // The entries' budget likewise: 10 tables of 65,524 (padded) fit.
        let by_entries = MapSizes { maglev_entries: 10 * 65_524 + 1, ..MapSizes::default() };
        let limited = compile_sized(&services(34, rule), by_entries);
        assert_eq!(limited.frontends.values().filter(|f| f.algorithm == lb::MAGLEV_SOURCE_IP).count(), 10);
        assert!(limited.rejections[0].message.contains("maglev-entries"), "{}", limited.rejections[0]);
        let maglev = snap.frontends.values().filter(|f| f.algorithm == lb::MAGLEV_SOURCE_IP).count();
        assert_eq!(maglev, 32);
        assert_eq!(snap.frontends.values().filter(|f| f.algorithm == lb::RANDOM).count(), 2);
        let rejected: Vec<&str> = snap.rejections.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(snap.rejections[0].message.contains("balanced at random instead"), "{}", snap.rejections[0]);
    }

    /// A cluster of three services (one with Maglev, one with two ports and
    /// both families), their slices and pods, with `slice_b` and `pod_q` as
    /// the parts that change.
    fn cluster(slice_b: &str, pod_q: &str) -> String {
        let service = |name: &str, ips: &str, ports: &str| {
            format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIPs: [{ips}], ports: [{ports}]}}\n")
        };
        let slice = |name: &str, service: &str, family: &str, ports: &str, endpoints: &str| {
            format!("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: [{ports}]\nendpoints: [{endpoints}]\n")
        };
        let pod = |name: &str, ip: &str, version: &str| {
            format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: x, version: '{version}'}}}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n")
        };
        [
            service("a", "10.96.0.1", "{port: 80}"),
            slice("a", "a", "IPv4", "{port: 80}", "{addresses: [10.244.0.1], targetRef: {kind: Pod, name: p}}, {addresses: [10.244.0.2]}"),
            service("b", "10.96.0.2, 'fd00::2'", "{name: http, port: 80}, {name: grpc, port: 81}"),
            slice("b4", "b", "IPv4", "{name: http, port: 8080}, {name: grpc, port: 8081}", slice_b),
            slice("b6", "b", "IPv6", "{name: http, port: 8080}", "{addresses: ['fd00:244::9']}"),
            service("c", "10.96.0.3", "{port: 53, protocol: UDP}"),
            slice("c", "c", "IPv4", "{port: 5353, protocol: UDP}", "{addresses: [10.244.0.7]}, {addresses: [10.244.0.8]}"),
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: c, namespace: shop}\nspec: {host: c, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}}}}\n".to_owned(),
            pod("p", "10.244.0.1", "1"),
            pod_q.to_owned(),
        ]
        .concat()
    }

    #[test]
    fn a_compile_from_the_previous_snapshot_gives_what_a_whole_compile_gives() {
        let pod_q = |ip: &str, version: &str| {
            format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: q, namespace: shop, labels: {{app: x, version: '{version}'}}}}\nstatus: {{podIPs: [{{ip: {ip}}}]}}\n")
        };
        let steps = [
            cluster("{addresses: [10.244.0.3]}", &pod_q("10.244.0.3", "1")),
            // b gains an endpoint; q's labels change (b's view shows them).
            cluster("{addresses: [10.244.0.3]}, {addresses: [10.244.0.4]}", &pod_q("10.244.0.3", "2")),
            // b loses every endpoint; q goes.
            cluster("", ""),
            // Back, with an endpoint not ready.
            cluster(
                "{addresses: [10.244.0.5], conditions: {ready: false}}, {addresses: [10.244.0.6]}",
                &pod_q("10.244.0.6", "3"),
            ),
        ];
        let build = |text: &str, previous: &Model| {
            let mut batch = SourceBatch { objects: parse_file("t.yaml", text).unwrap(), ..SourceBatch::default() };
            // Objects unchanged since `previous` come as the same copies,
            // and the batch names what changed, as the API source does.
            let mut changed = BTreeSet::new();
            for object in &mut batch.objects {
                let key = ObjectKey::of(&object.resource);
                match previous.served_object(&key) {
                    Some(last) if last.resource == object.resource => *object = last.clone(),
                    _ => drop(changed.insert(key)),
                }
            }
            changed.extend(
                previous
                    .served_objects()
                    .map(|o| ObjectKey::of(&o.resource))
                    .filter(|key| !batch.objects.iter().any(|o| ObjectKey::of(&o.resource) == *key)),
            );
            batch.changed = Some(changed);
            Model::from_batch(&batch, previous, "cluster.local")
        };
        let mut model = build(&steps[0], &Model::default());
        let mut previous = compile_owned(model.clone(), None, "cluster.local");
        for step in &steps[1..] {
            model = build(step, &previous.model);
            assert!(compile_changed(&model, &previous, "cluster.local").is_some(), "the patch applies");
            let patched = compile_owned(model.clone(), Some(&previous), "cluster.local");
            let whole = compile_owned(model.clone(), None, "cluster.local");
            assert_eq!(patched.frontends, whole.frontends);
            assert_eq!(patched.service_ips, whole.service_ips);
            assert_eq!(patched.slots, whole.slots);
            assert_eq!(patched.maglev, whole.maglev);
            assert_eq!(patched.services, whole.services);
            assert_eq!(patched.rejections, whole.rejections);
            assert_eq!(patched.model.warnings, whole.model.warnings);
            assert_eq!(patched.outbound, whole.outbound);
            assert_eq!(patched.pods_by_ip, whole.pods_by_ip);
            assert_eq!(patched.by_frontend, whole.by_frontend);
            assert_eq!(*patched.kernel_use.backend_refs, *whole.kernel_use.backend_refs);
            assert_eq!(patched.kernel_use.clusters, whole.kernel_use.clusters);
            assert_eq!(patched.kernel_use.maglev_entries, whole.kernel_use.maglev_entries);
            previous = patched;
        }
        let b = previous.services.iter().find(|s| s.name == "b" && s.port == 80).unwrap();
        assert_eq!(b.backends.iter().filter(|b| b.address.is_ipv4()).count(), 1, "{:?}", b.backends);
    }

    #[test]
    fn what_outgrows_an_outbound_map_is_rejected_object_by_object() {
        let text = concat!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: locked}\n",
            "spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: scoped}\n",
            "spec: {egress: [{hosts: ['./*']}]}\n---\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: scoped}\n",
            "spec: {clusterIP: 10.96.0.9, ports: [{name: http, port: 80}]}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: legacy, namespace: shop}\n",
            "spec: {hosts: [legacy.example.com], addresses: [192.0.2.0/24], ports: [{number: 5432, name: tcp, protocol: TCP}]}\n",
        );
        let objects = parse_file("t.yaml", text).unwrap();
        let pod = |namespace: &str, name: &str, id| crate::node::PodCgroup {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            id,
            level: 3,
        };
        let compiled = |sizes: MapSizes| {
            let mut model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
            let pod_cgroups =
                vec![pod("open", "c", 10), pod("locked", "a", 11), pod("locked", "b", 12), pod("scoped", "d", 13)];
            model.node = Arc::new(crate::node::NodeContext { map_sizes: sizes, pod_cgroups, ..Default::default() });
            let snapshot = compile(&model, "cluster.local");
            let rejected: Vec<String> = (snapshot.rejections.iter())
                .map(|r| format!("{} {}/{} {}: {}", r.kind, r.namespace, r.name, r.field, r.message))
                .collect();
            (snapshot.outbound, rejected)
        };
        let (whole, rejected) = compiled(MapSizes::default());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(whole.workloads.len(), 4);
        assert!(whole.workloads[&13].scope != 0, "d is scoped");
        let registry = whole.registry.len();
        assert!(registry >= 3, "loopback and the ServiceEntry's block: {registry}");

        // Room for three workloads: the restricted ones go first.
        let (out, rejected) = compiled(MapSizes { workloads: 3, ..MapSizes::default() });
        assert_eq!(out.workloads.keys().copied().collect::<Vec<_>>(), [11, 12, 13]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].starts_with("Pod open/c :") && rejected[0].contains("not counted per workload"));
        assert!(rejected[0].contains("--map-entries workloads=N"), "{}", rejected[0]);
        let (out, rejected) = compiled(MapSizes { workloads: 1, ..MapSizes::default() });
        assert_eq!(out.workloads.keys().copied().collect::<Vec<_>>(), [11]);
        assert!(rejected.iter().any(|r| r.starts_with("Pod locked/b :") && r.contains("policy is not enforced")));
        assert_eq!(out.views.len(), 1, "status shows what the kernel holds");

        // The registry: the ServiceEntry's block does not fit, the rest serves.
        let (out, rejected) = compiled(MapSizes { registry: registry as u32 - 1, ..MapSizes::default() });
        assert_eq!((out.registry.len(), out.workloads.len()), (registry - 1, 4));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].starts_with("ServiceEntry shop/legacy spec.addresses:"), "{}", rejected[0]);
        assert!(rejected[0].contains("--map-entries registry=N"), "{}", rejected[0]);

        // An egress scope that does not fit: its workloads see every service.
        let (out, rejected) = compiled(MapSizes { egress_scopes: 0, ..MapSizes::default() });
        assert_eq!((out.scope_clusters.len(), out.workloads[&13].scope, out.config.any_scoped), (0, 0, 0));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].starts_with("Sidecar scoped/default spec.egress:"), "{}", rejected[0]);
        assert!(rejected[0].contains("--map-entries egress-scopes=N"), "{}", rejected[0]);
    }

    #[test]
    fn a_port_that_does_not_fit_a_kernel_map_is_rejected_alone() {
        let full = |sizes: MapSizes| {
            let snap = compile_sized(&services(5, |_| String::new()), sizes);
            let rejected: Vec<String> =
                snap.rejections.iter().map(|r| format!("{}/{} {}", r.kind, r.name, r.field)).collect();
            (snap.frontends.len(), snap.slots.len(), rejected, snap.rejections.first().map(|r| r.message.clone()))
        };
        let (frontends, slots, rejected, message) = full(MapSizes { frontends: 3, ..MapSizes::default() });
        assert_eq!((frontends, slots), (3, 3));
        assert_eq!(rejected, ["Service/s3 spec.ports[0]", "Service/s4 spec.ports[0]"]);
        let message = message.unwrap();
        assert!(message.contains("service address map is full (3 entries"), "{message}");
        assert_eq!(full(MapSizes { slots: 4, ..MapSizes::default() }).1, 4);
        assert_eq!(full(MapSizes { backends: 2, ..MapSizes::default() }).0, 2);
        // A cluster takes two states (the cluster and its group).
        assert_eq!(full(MapSizes { clusters: 6, ..MapSizes::default() }).0, 3);
        assert_eq!(full(MapSizes { service_ips: 1, ..MapSizes::default() }).2.len(), 4);
    }

    #[test]
    fn no_ready_endpoint_compiles_to_an_empty_frontend() {
        let snap = compile_yaml(&BASE.replace(
            "ports: [{name: http, port: 8080}]\nendpoints:\n- addresses: ['fd00:244::2']",
            "ports: [{name: http, port: 8080}]\nendpoints: []",
        ));
        let v6 = snap.frontends.iter().find(|(k, _)| k.family == FAMILY_V6).unwrap();
        assert_eq!(v6.1.backend_count, 0);
    }

    #[test]
    fn what_only_the_proxy_can_do_captures_the_port() {
        let captured = |extra: &str| compile_yaml(&format!("{BASE}{extra}")).services[0].captured;
        let rule = |spec: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: shop}}\nspec:\n  host: web\n{spec}")
        };
        assert!(!captured(""), "no rule, no route: the kernel balances");
        assert!(!captured(&rule("  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n")));
        assert!(captured(&rule("  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s}}}\n")));
        assert!(
            !captured(&rule("  trafficPolicy: {loadBalancer: {simple: RANDOM, warmup: {duration: 60s}}}\n")),
            "no slow start for RANDOM"
        );
        assert!(captured(&rule("  trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 60s}}}\n")));
        assert!(
            captured(&rule(
                "  workloadSelector: {matchLabels: {app: a}}\n  trafficPolicy: {loadBalancer: {simple: RANDOM}}\n"
            )),
            "a rule for some clients"
        );
    }

    #[test]
    fn address_words_round_trip() {
        for text in ["10.96.0.10", "fd00:96::10", "255.1.2.3"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(words_ip(ip_words(ip), family_of(ip)), ip);
        }
        assert_eq!(ip_words("10.0.0.1".parse().unwrap())[0].to_ne_bytes(), [10, 0, 0, 1]);
    }

    #[test]
    fn proxy_only_rule_fields_warn_on_ports_the_http_proxy_does_not_serve() {
        let text = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\n",
            "spec:\n  clusterIP: 10.96.0.20\n  ports:\n  - {name: tcp-db, port: 5432}\n  - {name: http, port: 80}\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\n",
            "spec:\n  host: db\n  trafficPolicy:\n    connectionPool: {tcp: {connectTimeout: 2s, maxConnections: 10}}\n",
            "    portLevelSettings:\n    - port: {number: 5432}\n      tls: {mode: SIMPLE}\n      outlierDetection: {consecutive5xxErrors: 2}\n",
            "      loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n",
        );
        let snapshot = compile_yaml(text);
        let fields: Vec<&str> = snapshot.model.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                // Port 5432 (TCP, no route): its entry's TLS, ejection and hash.
                "spec.trafficPolicy.portLevelSettings[0].outlierDetection",
                "spec.trafficPolicy.portLevelSettings[0].tls.mode",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash",
                // Port 80 (HTTP, no route or proxy-only field): the top level's timeout.
                "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            ]
        );
        let tls = &snapshot.model.warnings[1];
        assert!(tls.message.starts_with("not applied to port 5432 of Service shop/db"), "{}", tls.message);
        assert!(tls.message.ends_with("so connections go without TLS"), "{}", tls.message);
        // Relayed as TCP by the proxy (a `tcp` route): the connect timeout
        // applies, TLS and ejection do not, at any level the route reaches.
        let routed = text.replace("x-user}}\n", "x-user}}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}\n")
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: shop}\nspec:\n  hosts: [db]\n  tcp:\n  - route: [{destination: {host: db, subset: v1}}]\n";
        let snapshot = compile_yaml(&routed);
        let fields: Vec<&str> = snapshot.model.warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.portLevelSettings[0].outlierDetection",
                "spec.trafficPolicy.portLevelSettings[0].tls.mode",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash",
                "spec.subsets[0].trafficPolicy.outlierDetection",
                // Port 80 is captured now: the subset's ejection needs the proxy.
            ]
        );
        assert!(snapshot.model.warnings[0].message.contains("the proxy relays its connections as plain TCP"));
        // Through the HTTP proxy, they apply: no warning.
        let captured = text.replace("connectTimeout: 2s, ", "").replace("tcp-db", "http-db");
        assert!(compile_yaml(&captured).model.warnings.is_empty(), "{:?}", compile_yaml(&captured).model.warnings);
    }

    #[test]
    fn a_headless_service_is_reached_by_name_but_never_translated() {
        let snapshot = compile_yaml(concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\n",
            "spec:\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n---\n",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n",
            "metadata: {name: ext-1, namespace: shop, labels: {kubernetes.io/service-name: ext}}\n",
            "addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [203.0.113.10]}]\n",
        ));
        assert!(snapshot.frontends.is_empty(), "no address to translate");
        let index = snapshot.service_index_for_host("ext.shop.svc.cluster.local", 80).expect("by name");
        assert!(snapshot.services[index].frontends.is_empty());
        assert_eq!(snapshot.services[index].backends.len(), 1, "its endpoints, for the proxies");
        assert!(snapshot.slots.is_empty(), "nothing in the kernel's maps");
    }

    #[test]
    fn a_selector_rule_or_an_http_only_limit_warns_on_a_port_the_kernel_balances() {
        let text = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\n",
            "spec:\n  clusterIP: 10.96.0.20\n  ports:\n  - {name: tcp-db, port: 5432}\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db-batch, namespace: shop}\n",
            "spec:\n  host: db\n  workloadSelector: {matchLabels: {app: batch}}\n",
            "  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}}}\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\n",
            "spec:\n  host: db\n  trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 1h}}}\n",
        );
        let snapshot = compile_yaml(text);
        let shown: Vec<(&str, &str)> =
            snapshot.model.warnings.iter().map(|w| (w.name.as_str(), w.field.as_str())).collect();
        assert_eq!(
            shown,
            [
                ("db", "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration"),
                ("db-batch", "spec.workloadSelector"),
            ]
        );
        assert!(snapshot.model.warnings[1].message.contains("the clients this rule selects get the rule for all"));
    }

    #[test]
    fn a_static_service_entry_is_translated_like_a_service_and_never_takes_a_services_address() {
        let entry = concat!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: shop}\n",
            "spec:\n  hosts: [api.example.com]\n  addresses: [10.97.0.10, 10.96.0.10]\n",
            "  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]\n  resolution: STATIC\n",
            "  endpoints: [{address: 10.0.0.1, labels: {v: a}}, {address: 10.0.0.2, labels: {v: b}}]\n",
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext, namespace: shop}\n",
            "spec:\n  host: api.example.com\n  trafficPolicy: {tls: {mode: SIMPLE}}\n",
            "  subsets: [{name: a, labels: {v: a}}]\n",
        );
        let snapshot = compile_yaml(&format!("{BASE}{entry}"));
        let vip: SocketAddr = "10.97.0.10:80".parse().unwrap();
        let service = snapshot.service_at(vip).expect("the entry's VIP is a frontend");
        assert_eq!((service.name.as_str(), service.fqdn.as_str()), ("api.example.com", "api.example.com"));
        assert_eq!(service.destination_rule.as_deref(), Some("shop/ext"));
        assert!(service.captured, "TLS origination needs the proxy");
        let backends: Vec<(String, Option<&str>)> =
            (service.backends.iter()).map(|b| (b.address.to_string(), b.labels.get("v").map(String::as_str))).collect();
        assert_eq!(backends, [("10.0.0.1:8080".into(), Some("a")), ("10.0.0.2:8080".into(), Some("b"))]);
        let index = snapshot.service_index_for_host("api.example.com", 80).unwrap();
        assert_eq!(snapshot.services[index].fqdn, "api.example.com");
        let key = |ip: &str| FrontendKey {
            addr: ip_words(ip.parse().unwrap()),
            port: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        };
        let entry_frontend = snapshot.frontends[&key("10.97.0.10")];
        assert_eq!(entry_frontend.backend_count, 2);
        // 10.96.0.10:80 is Service web's: it stays web's, and the entry is told.
        let web = snapshot.service_at("10.96.0.10:80".parse().unwrap()).unwrap();
        assert_eq!(web.name, "web");
        assert_ne!(snapshot.frontends[&key("10.96.0.10")].cluster_id, entry_frontend.cluster_id);
        let warned: Vec<(&str, &str)> = (snapshot.model.warnings.iter())
            .filter(|w| w.kind == "ServiceEntry")
            .map(|w| (w.field.as_str(), w.message.as_str()))
            .collect();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert_eq!(warned[0].0, "spec.addresses[1]");
        assert!(warned[0].1.contains("10.96.0.10:80 is already another service's address"), "{warned:?}");
    }

    #[test]
    fn prefer_close_and_distribute_shape_the_kernel_slots() {
        let text = |extra: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.40\n{extra}  ports: [{{name: tcp, port: 5432}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db, namespace: shop, labels: {{kubernetes.io/service-name: db}}}}\n\
                 addressType: IPv4\nports: [{{name: tcp, port: 5432}}]\n\
                 endpoints: [{{addresses: [10.0.0.1], zone: a}}, {{addresses: [10.0.0.2], zone: a}}, {{addresses: [10.0.0.3], zone: b}}]\n"
            )
        };
        let slots = |yaml: &str, locality: Option<&str>| {
            let objects = parse_file("t.yaml", yaml).unwrap();
            let mut model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
            assert!(model.rejections.is_empty(), "{:?}", model.rejections);
            model.node =
                Arc::new(crate::node::NodeContext { locality: locality.map(Locality::parse), ..Default::default() });
            let snapshot = compile(&model, "cluster.local");
            let mut backends: Vec<String> = (snapshot.slots.values())
                .map(|b| std::net::Ipv4Addr::from(u32::from_be(b.addr[0]).to_be_bytes()).to_string())
                .collect();
            backends.sort();
            backends
        };
        let prefer_close = text("  trafficDistribution: PreferClose\n");
        assert_eq!(slots(&prefer_close, Some("r/a")), ["10.0.0.1", "10.0.0.2"], "the node's zone only");
        assert_eq!(slots(&prefer_close, Some("r/c")), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "none close: all");
        assert_eq!(slots(&prefer_close, None), ["10.0.0.1", "10.0.0.2", "10.0.0.3"], "no locality known");
        let distribute = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: shop}}\nspec:\n  host: db\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      localityLbSetting: {{distribute: [{{from: 'r/*', to: {{'r/a/*': 50, 'r/b/*': 50}}}}]}}\n",
            text("")
        );
        // 25% each in zone a, 50% the one in zone b: slots 1, 1, 2.
        assert_eq!(slots(&distribute, Some("r/a")), ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.3"]);
        // Maglev over the close endpoints only (its table indexes them).
        let maglev = format!(
            "{prefer_close}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: shop}}\nspec:\n  host: db\n  trafficPolicy: {{loadBalancer: {{consistentHash: {{useSourceIp: true}}}}}}\n"
        );
        assert_eq!(slots(&maglev, Some("r/a")), ["10.0.0.1", "10.0.0.2"]);
    }
}
