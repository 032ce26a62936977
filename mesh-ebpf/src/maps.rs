//! Every map of the object, in one place: the agent opens and pins them by
//! these names (`mesh_common::map_names`), and any program may use any of them.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash, SockMap},
};
use mesh_common::{
    capacity, global_stat, Backend, ClusterLive, ClusterStats, ConnKey, Frontend, FrontendKey, HandshakeKey,
    OriginalDst, PolicyConfig, ProxyTarget, RegistryPrefix, ScopeClusterKey, ServiceIpKey, SlotKey, SockKey,
    SocketEntry, UdpReverseKey, UdpReverseValue, WorkloadPolicy, WorkloadStats,
};

#[map(name = "MESH_FRONTENDS")]
pub(crate) static FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SERVICE_IPS")]
pub(crate) static SERVICE_IPS: HashMap<ServiceIpKey, u32> = HashMap::pinned(capacity::SERVICE_IPS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SLOTS")]
pub(crate) static SLOTS: HashMap<SlotKey, Backend> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_MAGLEV")]
pub(crate) static MAGLEV: HashMap<SlotKey, Backend> = HashMap::pinned(capacity::MAGLEV, BPF_F_NO_PREALLOC);
#[map(name = "MESH_BACKEND_LIVE")]
pub(crate) static BACKEND_LIVE: HashMap<Backend, u64> = HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_CLUSTER_LIVE")]
pub(crate) static CLUSTER_LIVE: HashMap<u64, ClusterLive> = HashMap::pinned(capacity::CLUSTERS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SOCKETS")]
pub(crate) static SOCKETS: HashMap<u64, SocketEntry> = HashMap::pinned(capacity::SOCKETS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_UDP_REVERSE")]
pub(crate) static UDP_REVERSE: LruHashMap<UdpReverseKey, UdpReverseValue> =
    LruHashMap::pinned(capacity::UDP_REVERSE, 0);
#[map(name = "MESH_PROXY")]
pub(crate) static PROXY: Array<ProxyTarget> = Array::pinned(1, 0);
#[map(name = "MESH_ORIGINAL_DST")]
pub(crate) static ORIGINAL_DST: LruHashMap<ConnKey, OriginalDst> = LruHashMap::pinned(capacity::ORIGINAL_DST, 0);
#[map(name = "MESH_GLOBAL_STATS")]
pub(crate) static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(global_stat::COUNT, 0);
#[map(name = "MESH_CLUSTER_STATS")]
pub(crate) static CLUSTER_STATS: PerCpuHashMap<u64, ClusterStats> =
    PerCpuHashMap::pinned(capacity::CLUSTERS, BPF_F_NO_PREALLOC);
/// Established sockets of the cgroup; an entry goes when its socket closes.
#[map(name = "MESH_SOCK_HASH")]
pub(crate) static SOCK_HASH: SockHash<SockKey> = SockHash::pinned(capacity::SOCK_HASH, 0);
/// Both ends of each short-circuited hop, each pointing at the other.
#[map(name = "MESH_SOCK_PEERS")]
pub(crate) static SOCK_PEERS: LruHashMap<SockKey, SockKey> = LruHashMap::pinned(capacity::SOCK_PEERS, 0);
/// Connecting sockets by their handshake, until the accepting end pairs.
#[map(name = "MESH_HANDSHAKES")]
pub(crate) static HANDSHAKES: LruHashMap<HandshakeKey, SockKey> = LruHashMap::pinned(capacity::HANDSHAKES, 0);
/// How connects are judged (entry 0).
#[map(name = "MESH_POLICY")]
pub(crate) static POLICY: Array<PolicyConfig> = Array::pinned(1, 0);
/// Outbound policy by pod cgroup id.
#[map(name = "MESH_WORKLOADS")]
pub(crate) static WORKLOADS: HashMap<u64, WorkloadPolicy> = HashMap::pinned(capacity::WORKLOADS, BPF_F_NO_PREALLOC);
/// What REGISTRY_ONLY workloads may reach besides the Services.
#[map(name = "MESH_REGISTRY")]
pub(crate) static REGISTRY: LpmTrie<RegistryPrefix, u32> = LpmTrie::pinned(capacity::REGISTRY, 0);
/// Per-workload refusals, by pod cgroup id.
#[map(name = "MESH_WORKLOAD_STATS")]
pub(crate) static WORKLOAD_STATS: PerCpuHashMap<u64, WorkloadStats> =
    PerCpuHashMap::pinned(capacity::WORKLOADS, BPF_F_NO_PREALLOC);
/// The service ports each Sidecar egress scope sees.
#[map(name = "MESH_SCOPE_CLUSTERS")]
pub(crate) static SCOPE_CLUSTERS: HashMap<ScopeClusterKey, u32> =
    HashMap::pinned(capacity::SCOPE_CLUSTERS, BPF_F_NO_PREALLOC);
/// The proxy's listening sockets (one per family), put there by the agent;
/// the kernel drops each when it closes.
#[map(name = "MESH_PROXY_LISTENERS")]
pub(crate) static PROXY_LISTENERS: SockMap = SockMap::pinned(2, 0);
