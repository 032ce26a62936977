//! Every map of the object, in one place: the agent opens and pins them by
//! these names (`mesh_common::map_names`), and any program may use any of them.

use aya_ebpf::helpers::generated::bpf_map_lookup_elem;
use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_HASH_OF_MAPS, BPF_F_NO_PREALLOC},
    btf_maps,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash, SockMap},
};
use mesh_common::{
    capacity, global_stat, maglev_cells, Backend, ClusterLive, ClusterStats, ConnKey, Frontend, FrontendKey,
    HandshakeKey, OriginalDst, PolicyConfig, ProxyTarget, RegistryPrefix, ScopeClusterKey, ServiceIpKey, SlotKey,
    SockKey, SocketEntry, UdpReverseKey, UdpReverseValue, WorkloadPolicy, WorkloadStats,
};

#[map(name = "MESH_FRONTENDS")]
pub(crate) static FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SERVICE_IPS")]
pub(crate) static SERVICE_IPS: HashMap<ServiceIpKey, u32> = HashMap::pinned(capacity::SERVICE_IPS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SLOTS")]
pub(crate) static SLOTS: HashMap<SlotKey, Backend> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);
/// The Maglev tables by group id (see `mesh_common::maglev_cells`).
#[link_section = ".maps"]
#[export_name = "MESH_MAGLEV"]
pub(crate) static MAGLEV: MaglevTables = MaglevTables::new();
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

/// One Maglev table: the template of the inner maps (any size, as
/// `BPF_F_INNER_MAP` allows).
type MaglevTable = btf_maps::Array<u64, 1, { maglev_cells::FLAGS as usize }>;

/// A pinned hash of maps, declared in BTF as libbpf reads it: aya-ebpf's
/// `HashOfMaps` has no `pinning` field, and the agent's restart and
/// handover need the tables pinned with the other maps.
#[repr(C)]
pub(crate) struct MaglevTables {
    r#type: *const [i32; BPF_MAP_TYPE_HASH_OF_MAPS as usize],
    key: *const u64,
    value: *const u32,
    max_entries: *const [i32; capacity::MAGLEV_TABLES as usize],
    map_flags: *const [i32; 0],
    /// LIBBPF_PIN_BY_NAME.
    pinning: *const [i32; 1],
    values: [*const MaglevTable; 0],
}

// SAFETY: the fields are placeholders the loader reads from BTF; nothing
// dereferences them.
unsafe impl Sync for MaglevTables {}

impl MaglevTables {
    const fn new() -> Self {
        use core::ptr::null;
        Self {
            r#type: null(),
            key: null(),
            value: null(),
            max_entries: null(),
            map_flags: null(),
            pinning: null(),
            values: [],
        }
    }

    /// The slot index at `index` of group `group_id`'s table.
    #[inline(always)]
    pub(crate) fn slot_index(&self, group_id: u64, index: u32) -> Option<u32> {
        let (cell, shift) = maglev_cells::position(index);
        let outer = self as *const Self as *mut core::ffi::c_void;
        // SAFETY: both lookups go through the helper; a non-null inner
        // result points at an 8-byte cell of an array map.
        unsafe {
            let table = bpf_map_lookup_elem(outer, &group_id as *const u64 as *const core::ffi::c_void);
            if table.is_null() {
                return None;
            }
            let cell = bpf_map_lookup_elem(table, &cell as *const u32 as *const core::ffi::c_void) as *const u64;
            if cell.is_null() {
                return None;
            }
            Some(((*cell >> shift) & 0xffff) as u32)
        }
    }
}
