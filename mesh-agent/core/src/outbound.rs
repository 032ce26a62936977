//! What each workload on this node may dial, for the kernel: its outbound
//! traffic policy (the Sidecar that applies to it, else the mesh default),
//! by the id of its pod cgroup, and the registry of addresses outside the
//! Services that REGISTRY_ONLY workloads reach: pods and endpoints, nodes,
//! the mesh's address blocks, the resolvers (port 53), and the addresses
//! and blocks of ServiceEntries that have no VIP of their own. Services
//! (and ServiceEntry VIPs) need no entry: every frontend is reachable.
//!
//! Maps grow with pods on the node plus registry addresses, never with
//! their product: the registry is one table every workload shares.

use crate::model::{Model, PodModel};
use crate::object::{ObjectKey, Rejection, Warning, WarningReason};
use crate::service_entry::Resolution;
use crate::sidecar::{sidecar_for, OutboundPolicy};
use mesh_common::{
    capacity, PolicyConfig, RegistryPrefix, ScopeClusterKey, WorkloadPolicy, FAMILY_V4, FAMILY_V6,
    POLICY_REGISTRY_ONLY, REGISTRY_HEAD_BITS,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A registry entry as the kernel's trie keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistryKey {
    /// [`REGISTRY_HEAD_BITS`] plus the address bits that must match.
    pub bits: u32,
    pub prefix: RegistryPrefix,
}

impl RegistryKey {
    /// `ip/prefix` on `port` (0: any port).
    pub fn new(ip: IpAddr, prefix: u8, port: u16) -> RegistryKey {
        let (family, max) = if ip.is_ipv4() { (FAMILY_V4, 32) } else { (FAMILY_V6, 128) };
        let prefix = prefix.min(max);
        let masked = mask(ip, prefix);
        RegistryKey {
            bits: REGISTRY_HEAD_BITS + u32::from(prefix),
            prefix: RegistryPrefix { port: port.to_be(), family, _pad: 0, addr: mesh_common::ip_words(masked) },
        }
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & bits))
        }
        IpAddr::V6(v6) => {
            let bits = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & bits))
        }
    }
}

/// A service port as egress scopes see it.
#[derive(Clone, Copy, Debug)]
pub struct ServicePortRef<'a> {
    pub namespace: &'a str,
    /// The Service's FQDN, or the ServiceEntry's host.
    pub host: &'a str,
    pub port: u16,
    pub cluster_id: u64,
}

/// One workload as status shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadView {
    pub namespace: String,
    pub name: String,
    pub cgroup_id: u64,
    pub policy: OutboundPolicy,
    /// `namespace/name` of the Sidecar that set it (None: the mesh default).
    pub sidecar: Option<String>,
}

/// The outbound policy state of one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outbound {
    pub config: PolicyConfig,
    pub workloads: BTreeMap<u64, WorkloadPolicy>,
    pub registry: BTreeMap<RegistryKey, u32>,
    /// The service ports each Sidecar egress scope sees.
    pub scope_clusters: BTreeMap<ScopeClusterKey, u32>,
    pub views: Vec<WorkloadView>,
    /// What did not fit its kernel map.
    pub rejections: Vec<Rejection>,
}

/// The outbound state of `model` for its node. What outgrows a kernel map
/// is left out per object, each with a rejection that names the flag: a
/// Sidecar's egress scope (its workloads then see every service), a
/// workload (its policy is not enforced), a source of registry addresses
/// (REGISTRY_ONLY workloads cannot reach them). The rest is enforced.
pub fn compile<'a>(model: &Model, services: impl Iterator<Item = ServicePortRef<'a>> + Clone) -> Outbound {
    let node = &model.node;
    let sizes = &node.map_sizes;
    let no_labels = BTreeMap::new();
    let mut out = Outbound::default();
    let scopes = scope_ids(model);
    // Kubelet cgroups name their pod by UID: an index, not a scan of the
    // cluster's pods per cgroup.
    let by_uid: HashMap<&str, &PodModel> = if node.pod_cgroups.iter().any(|c| c.uid.is_some()) {
        model.pods.values().filter_map(|pod| Some((pod.uid.as_deref()?, pod))).collect()
    } else {
        HashMap::new()
    };
    let mut workloads = Vec::new();
    for cgroup in &node.pod_cgroups {
        // A cgroup named by UID is the model's pod of that UID (one not
        // known yet is skipped until it is).
        let (namespace, name, labels) = match &cgroup.uid {
            Some(uid) => match by_uid.get(uid.as_str()) {
                Some(pod) => (pod.namespace.as_str(), pod.name.as_str(), &*pod.labels),
                None => continue,
            },
            None => {
                let pod = model.pods.get(&(cgroup.namespace.clone(), cgroup.name.clone()));
                (cgroup.namespace.as_str(), cgroup.name.as_str(), pod.map_or(&no_labels, |p| &*p.labels))
            }
        };
        // The system's own pods (the agent's namespace, kube-system) are
        // never restricted: the mesh must not cut its own control plane.
        if node.exempt_namespaces.iter().any(|exempt| exempt == namespace) {
            continue;
        }
        let sidecar = sidecar_for(|| model.sidecars.values(), namespace, labels);
        let policy = sidecar.and_then(|s| s.outbound).unwrap_or(node.default_policy);
        let flags = if policy == OutboundPolicy::RegistryOnly { POLICY_REGISTRY_ONLY } else { 0 };
        let scope = sidecar.and_then(|s| scopes.get(&s.id()).copied()).unwrap_or(0);
        let view = WorkloadView {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            cgroup_id: cgroup.id,
            policy,
            sidecar: sidecar.map(|s| s.id()),
        };
        workloads.push((WorkloadPolicy { flags, scope }, view));
    }
    let levels: BTreeSet<u32> = node.pod_cgroups.iter().map(|p| p.level).collect();
    for (slot, level) in levels.iter().take(capacity::POD_LEVELS).enumerate() {
        out.config.pod_levels[slot] = *level;
    }
    out.config.level_count = levels.len().min(capacity::POD_LEVELS) as u32;
    out.config.l7_fail_open = node.l7_fail_open as u32;
    out.config.agent_cgroup = node.agent_cgroup;

    // Egress scopes first: a workload whose scope does not fit is unscoped.
    let used: BTreeSet<u32> = workloads.iter().map(|(w, _)| w.scope).filter(|s| *s != 0).collect();
    let mut left_out = BTreeSet::new();
    for sidecar in model.sidecars.values() {
        let Some(scope) = scopes.get(&sidecar.id()).copied().filter(|s| used.contains(s)) else { continue };
        // DNS is never scoped away (the resolvers' Services), as in Istio.
        let seen = services.clone().filter(|s| s.port == 53 || sidecar.sees(s.namespace, s.host, s.port));
        let keys: Vec<ScopeClusterKey> =
            seen.map(|s| ScopeClusterKey { scope, _pad: 0, cluster_id: s.cluster_id }).collect();
        if out.scope_clusters.len() + keys.len() > sizes.egress_scopes as usize {
            left_out.insert(scope);
            let message = format!(
                "its egress scope ({} service ports) does not fit the kernel's egress-scopes map ({} entries, {} in use; \
                 --map-entries egress-scopes=N sets more): its workloads on this node see every service",
                keys.len(),
                sizes.egress_scopes,
                out.scope_clusters.len(),
            );
            out.rejections.push(model.rejection(
                ObjectKey::new("Sidecar", &sidecar.namespace, &sidecar.name),
                "spec.egress",
                message,
            ));
            continue;
        }
        out.scope_clusters.extend(keys.into_iter().map(|key| (key, 1)));
    }
    // Then the workloads: room for the restricted ones first, then for
    // those that only count their connections.
    for (workload, _) in &mut workloads {
        if left_out.contains(&workload.scope) {
            workload.scope = 0;
        }
    }
    let restricted = |w: &WorkloadPolicy| w.flags != 0 || w.scope != 0;
    let mut room = sizes.workloads as usize;
    let mut fits = vec![false; workloads.len()];
    for first in [true, false] {
        for (fit, (workload, _)) in fits.iter_mut().zip(&workloads) {
            if restricted(workload) == first && room > 0 {
                (*fit, room) = (true, room - 1);
            }
        }
    }
    for ((workload, view), fit) in workloads.into_iter().zip(fits) {
        if !fit {
            let what = match restricted(&workload) {
                true => "its outbound policy is not enforced",
                false => "its connections are not counted per workload",
            };
            let message = format!(
                "the kernel's workloads map is full ({} entries; --map-entries workloads=N sets more): {what}",
                sizes.workloads
            );
            out.rejections.push(model.rejection(ObjectKey::new("Pod", &view.namespace, &view.name), "", message));
            continue;
        }
        out.workloads.insert(view.cgroup_id, workload);
        out.views.push(view);
    }
    out.config.any_restricted = out.workloads.values().any(|w| w.flags & POLICY_REGISTRY_ONLY != 0) as u32;
    out.config.any_scoped = out.workloads.values().any(|w| w.scope != 0) as u32;
    if out.config.any_restricted != 0 {
        registry(model, &mut out);
    }
    out
}

/// A scope id per Sidecar with `egress`: a hash of its name, so a Sidecar
/// keeps its id as others come and go (a clash takes the next free one).
fn scope_ids(model: &Model) -> BTreeMap<String, u32> {
    let mut ids = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for sidecar in model.sidecars.values().filter(|s| !s.egress.is_empty()) {
        let mut id = (crate::maglev::stable_hash(3, sidecar.id().as_bytes()) as u32).max(1);
        while !taken.insert(id) {
            id = id.wrapping_add(1).max(1);
        }
        ids.insert(sidecar.id(), id);
    }
    ids
}

/// A Sidecar's outbound policy, when this agent knows no pod cgroups: it
/// cannot tell the workloads apart, so nothing is enforced.
pub fn unenforced(model: &Model) -> Vec<Warning> {
    if !model.node.pod_cgroups.is_empty() {
        return Vec::new();
    }
    let mut warnings = Vec::new();
    for sidecar in model.sidecars.values() {
        let key = ObjectKey::new("Sidecar", &sidecar.namespace, &sidecar.name);
        let Some(object) = model.served_object(&key) else { continue };
        let fields = [
            (sidecar.outbound.is_some(), "spec.outboundTrafficPolicy.mode"),
            (!sidecar.egress.is_empty(), "spec.egress"),
        ];
        for (_, field) in fields.into_iter().filter(|(set, _)| *set) {
            let message = "not enforced in the kernel on this node: the agent knows no pod cgroups (--pod-cgroups), \
                           so it cannot tell its workloads apart";
            warnings.push(Warning::object(object, field.into(), message.into(), WarningReason::NotHonoured));
        }
    }
    warnings
}

/// Every address outside the Services that the mesh knows, into the
/// registry: the node's own first, then ServiceEntries, EndpointSlices and
/// pods, each source whole or (the map is full) not at all.
fn registry(model: &Model, out: &mut Outbound) {
    let node = &model.node;
    // A pod's own loopback is always its own.
    let mut own = vec![RegistryKey::new(Ipv4Addr::LOCALHOST.into(), 8, 0)];
    own.push(RegistryKey::new(Ipv6Addr::LOCALHOST.into(), 128, 0));
    own.extend(node.node_ips.iter().map(|ip| RegistryKey::new(*ip, 128, 0)));
    own.extend(node.mesh_cidrs.iter().map(|(ip, prefix)| RegistryKey::new(*ip, *prefix, 0)));
    own.extend(node.resolvers.iter().map(|ip| RegistryKey::new(*ip, 128, 53)));
    // The node's own addresses come first and are few: they always fit.
    out.registry.extend(own.into_iter().map(|key| (key, 1)));
    for entry in model.service_entries.values() {
        let ports: Vec<u16> = entry.ports.iter().map(|p| p.number).collect();
        let mut keys = Vec::new();
        // A VIP of a STATIC or DNS entry is a frontend already; what NONE
        // names, and every block, passes through on the entry's ports.
        let passes = |single: bool| !single || entry.resolution == Resolution::None;
        for address in entry.addresses.iter().filter(|a| passes(a.is_single())) {
            keys.extend(ports.iter().map(|port| RegistryKey::new(address.ip, address.prefix, *port)));
        }
        // The endpoints themselves, dialled directly.
        let endpoint_ips = (entry.endpoints.iter()).filter_map(|e| e.address.parse::<IpAddr>().ok());
        for ip in endpoint_ips {
            keys.extend(ports.iter().map(|port| RegistryKey::new(ip, 128, *port)));
        }
        let source = || (ObjectKey::new("ServiceEntry", &entry.namespace, &entry.name), "spec.addresses");
        register(model, out, keys, source);
    }
    for slice in model.endpoint_slices.values() {
        let addresses = slice.endpoints.iter().flat_map(|e| &e.addresses);
        let keys = addresses.map(|ip| RegistryKey::new(*ip, 128, 0)).collect();
        register(model, out, keys, || (ObjectKey::new("EndpointSlice", &slice.namespace, &slice.name), "endpoints"));
    }
    for pod in model.pods.values() {
        let keys = pod.ips.iter().map(|ip| RegistryKey::new(*ip, 128, 0)).collect();
        register(model, out, keys, || (ObjectKey::new("Pod", &pod.namespace, &pod.name), "status.podIPs"));
    }
}

/// Puts one source's addresses in the registry: all, or (the map would
/// overflow) none, with a rejection of the source.
fn register(
    model: &Model,
    out: &mut Outbound,
    keys: Vec<RegistryKey>,
    source: impl FnOnce() -> (ObjectKey, &'static str),
) {
    let capacity = model.node.map_sizes.registry as usize;
    let new = keys.iter().filter(|k| !out.registry.contains_key(k)).collect::<BTreeSet<_>>().len();
    if out.registry.len() + new <= capacity {
        out.registry.extend(keys.into_iter().map(|key| (key, 1)));
        return;
    }
    let message = format!(
        "its {new} addresses do not fit the kernel's registry ({capacity} entries, {} in use; \
         --map-entries registry=N sets more): REGISTRY_ONLY workloads cannot reach them",
        out.registry.len()
    );
    let (key, field) = source();
    out.rejections.push(model.rejection(key, field, message));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::parse_file;
    use crate::node::{NodeContext, PodCgroup};
    use std::sync::Arc;

    fn model(text: &str, node: NodeContext) -> Model {
        let objects = parse_file("t.yaml", text).unwrap();
        let mut model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
        assert!(model.rejections.is_empty(), "{:?}", model.rejections);
        model.node = Arc::new(node);
        model
    }

    fn pod(namespace: &str, name: &str, id: u64, level: u32) -> PodCgroup {
        PodCgroup { namespace: namespace.into(), name: name.into(), uid: None, id, level }
    }

    #[test]
    fn each_workload_gets_the_policy_of_its_sidecar_and_the_registry_is_shared() {
        let text = concat!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: locked}\n",
            "spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: legacy, namespace: shop}\n",
            "spec:\n  hosts: [legacy.example.com]\n  addresses: [192.0.2.0/24]\n",
            "  ports: [{number: 5432, name: tcp, protocol: TCP}]\n",
        );
        let node = NodeContext {
            pod_cgroups: vec![pod("locked", "a", 11, 3), pod("shop", "b", 12, 3), pod("locked", "c", 13, 4)],
            node_ips: vec!["10.244.255.1".parse().unwrap()],
            resolvers: vec!["10.96.0.53".parse().unwrap()],
            ..NodeContext::default()
        };
        let out = compile(&model(text, node), std::iter::empty());
        let flags: Vec<(u64, u32)> = out.workloads.iter().map(|(id, w)| (*id, w.flags)).collect();
        assert_eq!(out.config.any_scoped, 0, "no Sidecar lists egress hosts");
        assert_eq!(flags, [(11, POLICY_REGISTRY_ONLY), (12, 0), (13, POLICY_REGISTRY_ONLY)]);
        assert_eq!(out.views[0].sidecar.as_deref(), Some("locked/default"));
        assert_eq!((out.config.level_count, out.config.pod_levels[..2].to_vec()), (2, vec![3, 4]));
        assert_eq!(out.config.any_restricted, 1);
        let has = |ip: &str, prefix: u8, port: u16| {
            out.registry.contains_key(&RegistryKey::new(ip.parse().unwrap(), prefix, port))
        };
        assert!(has("127.0.0.0", 8, 0) && has("10.244.255.1", 128, 0) && has("10.96.0.53", 128, 53));
        assert!(has("192.0.2.0", 24, 5432), "the entry's block on its port");
        assert!(!has("192.0.2.0", 24, 0));
        // Nobody restricted: no registry to keep.
        let open = compile(
            &model("", NodeContext { pod_cgroups: vec![pod("shop", "b", 12, 3)], ..NodeContext::default() }),
            std::iter::empty(),
        );
        assert_eq!((open.config.any_restricted, open.registry.len()), (0, 0));
    }

    #[test]
    fn an_egress_scope_lists_the_service_ports_its_sidecar_names() {
        let text = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\n\
                    spec: {egress: [{hosts: ['./*', 'db/pg.db.svc.cluster.local']}]}\n";
        let node =
            NodeContext { pod_cgroups: vec![pod("shop", "a", 11, 3), pod("other", "b", 12, 3)], ..Default::default() };
        let services = [
            ServicePortRef { namespace: "shop", host: "web.shop.svc.cluster.local", port: 80, cluster_id: 1 },
            ServicePortRef { namespace: "db", host: "pg.db.svc.cluster.local", port: 5432, cluster_id: 2 },
            ServicePortRef { namespace: "other", host: "x.other.svc.cluster.local", port: 80, cluster_id: 3 },
        ];
        let out = compile(&model(text, node), services.iter().copied());
        let scope = out.workloads[&11].scope;
        assert_ne!(scope, 0);
        assert_eq!(out.workloads[&12].scope, 0, "no Sidecar in other: it sees everything");
        assert_eq!(out.config.any_scoped, 1);
        let seen: Vec<(u32, u64)> = out.scope_clusters.keys().map(|k| (k.scope, k.cluster_id)).collect();
        assert_eq!(seen, [(scope, 1), (scope, 2)]);
    }

    #[test]
    fn registry_keys_mask_their_blocks() {
        let key = RegistryKey::new("192.0.2.77".parse().unwrap(), 24, 80);
        assert_eq!(key, RegistryKey::new("192.0.2.0".parse().unwrap(), 24, 80));
        assert_eq!(key.bits, REGISTRY_HEAD_BITS + 24);
        assert_eq!(key.prefix.port, 80u16.to_be());
    }
}
