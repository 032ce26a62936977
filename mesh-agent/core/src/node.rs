//! What the agent knows of its node beyond the configuration: inputs the
//! snapshot is compiled with, gathered by the agent (flags, the cgroup
//! tree), never read here.

use crate::locality::Locality;
use crate::sidecar::OutboundPolicy;
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// The mesh-wide outbound traffic policy (Istio's
    /// `meshConfig.outboundTrafficPolicy`); Sidecars override it.
    pub default_policy: OutboundPolicy,
    /// The pods of this node whose cgroups the agent knows.
    pub pod_cgroups: Vec<PodCgroup>,
    /// This node's addresses: always reachable.
    pub node_ips: Vec<IpAddr>,
    /// Address blocks of the mesh (pod networks): always reachable.
    pub mesh_cidrs: Vec<(IpAddr, u8)>,
    /// The DNS resolvers pods use: reachable on port 53.
    pub resolvers: Vec<IpAddr>,
    /// This node's `region/zone/subzone`, for locality-aware balancing.
    pub locality: Option<Locality>,
    /// While no proxy listens, L7 ports are balanced at L4, not refused.
    pub l7_fail_open: bool,
    /// Namespaces whose pods get no outbound policy (the agent's own,
    /// kube-system).
    pub exempt_namespaces: Vec<String>,
    /// The agent's own cgroup id (0: unknown): its proxy's connects are not
    /// captured.
    pub agent_cgroup: u64,
    /// The sizes of the kernel maps in use: what does not fit is rejected
    /// per object.
    pub map_sizes: MapSizes,
}

/// Entries each configuration map of the kernel holds (the maps' own
/// `max_entries`, read back after loading: a pinned map keeps the size it
/// was made with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapSizes {
    /// Service addresses (cluster IP, port, protocol).
    pub frontends: u32,
    pub service_ips: u32,
    pub slots: u32,
    /// Distinct backend addresses (their live-connection counters).
    pub backends: u32,
    /// Clusters and backend groups (their live state).
    pub clusters: u32,
    pub maglev_tables: u32,
    /// The entries of all Maglev tables together: the kernel memory they
    /// take (2 bytes an entry) is the agent's to bound.
    pub maglev_entries: u32,
    /// Outbound policy: this node's workloads with a policy, the addresses
    /// outside the Services that REGISTRY_ONLY workloads reach, and the
    /// service ports each Sidecar egress scope sees. What outgrows one of
    /// these is rejected per object (see `outbound::compile`).
    pub workloads: u32,
    pub registry: u32,
    pub egress_scopes: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use mesh_common::capacity;
        Self {
            frontends: capacity::FRONTENDS,
            service_ips: capacity::SERVICE_IPS,
            slots: capacity::SLOTS,
            backends: capacity::BACKENDS,
            clusters: capacity::CLUSTERS,
            maglev_tables: capacity::MAGLEV_TABLES,
            maglev_entries: capacity::MAGLEV_ENTRIES,
            workloads: capacity::WORKLOADS,
            registry: capacity::REGISTRY,
            egress_scopes: capacity::SCOPE_CLUSTERS,
        }
    }
}

/// A pod's cgroup: its id (the cgroup directory's inode) and its depth in
/// the cgroup tree (the root is 0). The pod is known by name (a directory
/// of `<namespace>_<pod>` cgroups) or by its UID (the kubelet's layout),
/// which the model's pods resolve.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodCgroup {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub id: u64,
    pub level: u32,
}
