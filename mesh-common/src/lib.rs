//! The map ABI shared by the kernel programs (`mesh-ebpf`) and the agent.
//!
//! Every key and value is `#[repr(C)]` with explicit padding and a size
//! assertion, so both sides agree byte for byte. Values hold no `bool`,
//! `Option` or `enum`: flags and algorithms are plain integers.
//!
//! Addresses are kept as four 32-bit words in network byte order; an IPv4
//! address uses word 0 and leaves the rest zero. Ports are in network byte
//! order, as the kernel hands them to cgroup programs.
#![no_std]

/// Version of this ABI. Maps are pinned under `maps/v<N>`: an agent whose
/// map layout differs starts on fresh maps instead of misreading old ones.
/// Bump it with any change to a map's type, key, value or size.
pub const MAP_ABI_VERSION: u32 = 6;

/// Names of the maps, as the kernel object declares them and as they are
/// pinned under the agent's bpffs directory.
pub mod map_names {
    pub const FRONTENDS: &str = "MESH_FRONTENDS";
    pub const SERVICE_IPS: &str = "MESH_SERVICE_IPS";
    pub const SLOTS: &str = "MESH_SLOTS";
    pub const MAGLEV: &str = "MESH_MAGLEV";
    pub const BACKEND_LIVE: &str = "MESH_BACKEND_LIVE";
    pub const CLUSTER_LIVE: &str = "MESH_CLUSTER_LIVE";
    pub const SOCKETS: &str = "MESH_SOCKETS";
    pub const UDP_REVERSE: &str = "MESH_UDP_REVERSE";
    pub const GLOBAL_STATS: &str = "MESH_GLOBAL_STATS";
    pub const CLUSTER_STATS: &str = "MESH_CLUSTER_STATS";
    pub const PROXY: &str = "MESH_PROXY";
    pub const ORIGINAL_DST: &str = "MESH_ORIGINAL_DST";
    pub const SOCK_HASH: &str = "MESH_SOCK_HASH";
    pub const SOCK_PEERS: &str = "MESH_SOCK_PEERS";
    pub const HANDSHAKES: &str = "MESH_HANDSHAKES";
    pub const POLICY: &str = "MESH_POLICY";
    pub const WORKLOADS: &str = "MESH_WORKLOADS";
    pub const REGISTRY: &str = "MESH_REGISTRY";
    pub const WORKLOAD_STATS: &str = "MESH_WORKLOAD_STATS";
    pub const SCOPE_CLUSTERS: &str = "MESH_SCOPE_CLUSTERS";
    pub const PROXY_LISTENERS: &str = "MESH_PROXY_LISTENERS";
}

/// Names of the programs in the kernel object.
pub mod prog_names {
    pub const CONNECT4: &str = "mesh_connect4";
    pub const CONNECT6: &str = "mesh_connect6";
    pub const SENDMSG4: &str = "mesh_sendmsg4";
    pub const SENDMSG6: &str = "mesh_sendmsg6";
    pub const RECVMSG4: &str = "mesh_recvmsg4";
    pub const RECVMSG6: &str = "mesh_recvmsg6";
    pub const GETPEERNAME4: &str = "mesh_getpeername4";
    pub const GETPEERNAME6: &str = "mesh_getpeername6";
    pub const SOCK_RELEASE: &str = "mesh_sock_release";
    pub const SOCK_OPS: &str = "mesh_sock_ops";
    pub const SK_MSG: &str = "mesh_sk_msg";
}

/// Default map capacities: the agent's `--map-entries` sets others for
/// maps it creates, and the compiler fits each snapshot into the sizes of
/// the maps in use (what does not fit is rejected per object).
pub mod capacity {
    pub const FRONTENDS: u32 = 65_536;
    pub const SERVICE_IPS: u32 = 65_536;
    pub const SLOTS: u32 = 1 << 20;
    /// Maglev tables, one per consistent-hash service port and family.
    pub const MAGLEV_TABLES: u32 = 1 << 14;
    /// Entries of all Maglev tables together (256 MiB of kernel memory):
    /// 2,048 tables of the default 65,537 entries.
    pub const MAGLEV_ENTRIES: u32 = 1 << 27;
    pub const BACKENDS: u32 = 1 << 18;
    pub const CLUSTERS: u32 = 65_536;
    pub const SOCKETS: u32 = 1 << 18;
    pub const UDP_REVERSE: u32 = 1 << 16;
    pub const ORIGINAL_DST: u32 = 1 << 16;
    /// Established sockets in the short-circuit sock hash.
    pub const SOCK_HASH: u32 = 1 << 16;
    /// Socket → peer pairs: two entries per short-circuited hop.
    pub const SOCK_PEERS: u32 = 1 << 17;
    /// Connects waiting for their passive end to show up.
    pub const HANDSHAKES: u32 = 1 << 16;
    /// Upper bound on backends per load-balancing group the kernel samples.
    pub const MAX_BACKENDS_PER_GROUP: u32 = 1 << 16;
    /// Workloads (pod cgroups) on this node with an outbound policy.
    pub const WORKLOADS: u32 = 1 << 14;
    /// Addresses and blocks outside the Services that REGISTRY_ONLY
    /// workloads may reach: pods, nodes, resolvers, ServiceEntry blocks.
    pub const REGISTRY: u32 = 1 << 18;
    /// Levels of the cgroup tree where pod cgroups sit.
    pub const POD_LEVELS: usize = 4;
    /// Service ports visible per Sidecar egress scope, summed over scopes.
    pub const SCOPE_CLUSTERS: u32 = 1 << 18;
}

/// An address as the maps keep it: four 32-bit words holding the bytes in
/// network order; IPv4 in word 0, the rest zero.
pub fn ip_words(ip: core::net::IpAddr) -> [u32; 4] {
    let mut words = [0u32; 4];
    match ip {
        core::net::IpAddr::V4(v4) => words[0] = u32::from_ne_bytes(v4.octets()),
        core::net::IpAddr::V6(v6) => {
            for (word, chunk) in words.iter_mut().zip(v6.octets().chunks_exact(4)) {
                *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
    }
    words
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Load-balancing algorithms, as stored in [`Frontend::algorithm`].
pub mod lb {
    pub const LEAST_REQUEST: u8 = 0;
    pub const ROUND_ROBIN: u8 = 1;
    pub const RANDOM: u8 = 2;
    pub const MAGLEV_SOURCE_IP: u8 = 3;
}

/// A service address as the application dials it: `clusterIP:port/proto`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 20);

/// A cluster IP, whatever the port: a connect to a known service address on
/// a port the Service does not define is refused, never sent out as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceIpKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ServiceIpKey>() == 20);

/// What the kernel needs to pick a backend for one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Identifies the backend set (service port and address family); keys
    /// [`SlotKey`] for the slot and Maglev tables.
    pub group_id: u64,
    /// Identifies the Envoy-style cluster (service port, both families):
    /// the unit that `maxConnections` and the per-service counters use.
    pub cluster_id: u64,
    /// Number of backends, stored in slots `0..backend_count`.
    pub backend_count: u32,
    /// Live-connection limit for the cluster on this node; 0 means none.
    pub max_connections: u32,
    /// Maglev table size (prime) when `algorithm` is Maglev, else 0.
    pub maglev_size: u32,
    /// One of [`lb`].
    pub algorithm: u8,
    /// [`FRONTEND_CAPTURE`] and friends.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// The service port has L7 rules: connects go to the node proxy, which
/// learns the original destination from [`OriginalDst`].
pub const FRONTEND_CAPTURE: u8 = 1;
const _: () = assert!(core::mem::size_of::<Frontend>() == 32);

/// Index into a backend group: slot `n` of the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub group_id: u64,
    pub index: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SlotKey>() == 16);

/// A Maglev table is an array map of its own (inner map of
/// [`map_names::MAGLEV`], keyed by group id) holding the slot index of each
/// table entry as 16 bits, four to a cell: the kernel keeps array values in
/// 8-byte cells, so a 65,537-entry table costs 128 KiB, not 512.
pub mod maglev_cells {
    /// Table entries per 8-byte cell.
    pub const ENTRIES_PER_CELL: u32 = 4;
    /// `BPF_F_MMAPABLE | BPF_F_INNER_MAP`: the agent fills a new table
    /// through mmap and swaps it in whole; tables differ in size.
    pub const FLAGS: u32 = (1 << 10) | (1 << 12);

    /// Cells of a table of `entries`.
    pub const fn count(entries: u32) -> u32 {
        entries.div_ceil(ENTRIES_PER_CELL)
    }

    /// The cell holding entry `index`, and the shift of its 16 bits.
    pub const fn position(index: u32) -> (u32, u32) {
        (index / ENTRIES_PER_CELL, (index % ENTRIES_PER_CELL) * 16)
    }
}

/// A backend endpoint: `podIP:targetPort`. Doubles as the key of the
/// live-connection counters, so no id has to survive an agent restart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 20);

/// Per-cluster state the kernel writes: live TCP connections on this node
/// and the round-robin cursor. Updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterLive {
    pub connections: u64,
    pub round_robin: u64,
}
const _: () = assert!(core::mem::size_of::<ClusterLive>() == 16);

/// What the kernel remembers about a translated socket, keyed by the socket
/// cookie: the address the application dialled (for `getpeername` and UDP
/// replies) and what to release when the socket closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketEntry {
    pub cluster_id: u64,
    pub service_addr: [u32; 4],
    pub backend: Backend,
    /// Network byte order.
    pub service_port: u16,
    pub family: u8,
    /// 1 when the connection holds a live-connection slot to release.
    pub counted: u8,
    /// 1 when the connection was sent to the node proxy.
    pub captured: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SocketEntry>() == 56);

/// Key of the UDP reverse map: which service address a datagram from
/// `backend` to socket `cookie` must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpReverseKey {
    pub cookie: u64,
    pub backend: Backend,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UdpReverseKey>() == 32);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpReverseValue {
    pub service_addr: [u32; 4],
    /// Network byte order.
    pub service_port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<UdpReverseValue>() == 24);

/// Where captured connections go: the agent's proxy on this node. Entry 0
/// of a one-element array; a family with no address is not captured.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyTarget {
    pub addr4: u32,
    pub addr6: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub has_v4: u8,
    pub has_v6: u8,
}
const _: () = assert!(core::mem::size_of::<ProxyTarget>() == 24);

/// A captured connection as the proxy sees it: the client's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ConnKey>() == 20);

/// The service address a captured connection dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<OriginalDst>() == 20);

/// An established TCP socket as the same-node short-circuit keys it: its
/// own address and its peer's as the socket sees them, and its network
/// namespace, so equal addresses in two namespaces never share a key. An
/// IPv4 peer of a dual-stack socket is kept as IPv4, as the other end sees
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SockKey {
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    /// The kernel's cookie of the socket's network namespace.
    pub netns: u64,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SockKey>() == 48);

/// A TCP handshake as both of its ends can name it once it completes: the
/// addresses, and the next sequence number of each side (initial sequence
/// number plus one). The connecting side files itself under this key; the
/// accepting side finds it there only when both ends are on this node and
/// in the attached cgroup, and the sequence numbers make the match exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandshakeKey {
    pub client_addr: [u32; 4],
    pub server_addr: [u32; 4],
    pub client_seq: u32,
    pub server_seq: u32,
    /// Host byte order.
    pub client_port: u16,
    /// Host byte order.
    pub server_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<HandshakeKey>() == 48);

/// How connects are judged: entry 0 of a one-element array, written by
/// the agent with every snapshot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The depths of the cgroup tree at which pod cgroups sit (a pod's
    /// processes may live in cgroups below it, one per container); the
    /// first `level_count` are used.
    pub pod_levels: [u32; capacity::POD_LEVELS],
    pub level_count: u32,
    /// 1 when some workload is REGISTRY_ONLY: otherwise a miss costs no
    /// lookup at all.
    pub any_restricted: u32,
    /// 1 when some workload's Sidecar narrows its egress: otherwise a
    /// connect to a service costs no lookup at all.
    pub any_scoped: u32,
    /// 1: while no proxy listens, connects to L7 ports are balanced in the
    /// kernel at L4 instead of refused (`--l7-fail-open`).
    pub l7_fail_open: u32,
    /// The agent's own cgroup: its proxy's connects are never captured
    /// back to itself (an endpoint address may also be a frontend, as a
    /// DNS ServiceEntry's answers are). 0: unknown.
    pub agent_cgroup: u64,
}
const _: () = assert!(core::mem::size_of::<PolicyConfig>() == 40);

/// A workload's outbound policy, by the id of its pod cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadPolicy {
    /// [`POLICY_REGISTRY_ONLY`] and friends.
    pub flags: u32,
    /// Its Sidecar's egress scope (keys [`ScopeClusterKey`]); 0: it sees
    /// every service.
    pub scope: u32,
}
const _: () = assert!(core::mem::size_of::<WorkloadPolicy>() == 8);

/// Connects to addresses outside the registry are refused.
pub const POLICY_REGISTRY_ONLY: u32 = 1;

/// What a registry entry matches, in the order the trie compares it: a
/// port (network byte order; 0 is any port) and family, then the address.
/// Its prefix length counts the 32 bits before the address, plus the
/// address bits that must match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistryPrefix {
    pub port: u16,
    pub family: u8,
    pub _pad: u8,
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<RegistryPrefix>() == 20);

/// The bits of a [`RegistryPrefix`] before its address.
pub const REGISTRY_HEAD_BITS: u32 = 32;

/// A service port (cluster) an egress scope sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeClusterKey {
    pub scope: u32,
    pub _pad: u32,
    pub cluster_id: u64,
}
const _: () = assert!(core::mem::size_of::<ScopeClusterKey>() == 16);

/// Per-workload, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Connects and datagrams refused: outside the registry.
    pub refused_registry: u64,
    /// Connects and datagrams refused: a service its Sidecar's egress
    /// does not list.
    pub refused_scope: u64,
}
const _: () = assert!(core::mem::size_of::<WorkloadStats>() == 16);

/// Slots of [`map_names::PROXY_LISTENERS`]: the proxy's listening socket
/// of each family. A socket leaves the map when it closes, so an empty
/// slot means no proxy listens (its agent is gone).
pub const PROXY_LISTENER_V4: u32 = 0;
pub const PROXY_LISTENER_V6: u32 = 1;

/// Per-cluster, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// TCP and connected-UDP connects translated to a backend.
    pub connects: u64,
    /// Connects refused at `maxConnections`.
    pub overflows: u64,
    /// Connects or datagrams refused because no backend is ready.
    pub no_backend: u64,
    /// Unconnected UDP datagrams translated.
    pub udp_datagrams: u64,
}
const _: () = assert!(core::mem::size_of::<ClusterStats>() == 32);

/// Indexes of the global per-CPU counters: every decision and every drop.
pub mod global_stat {
    pub const CONNECT_TRANSLATED: u32 = 0;
    pub const CONNECT_PASSTHROUGH: u32 = 1;
    pub const CONNECT_NO_BACKEND: u32 = 2;
    pub const CONNECT_OVERFLOW: u32 = 3;
    pub const SENDMSG_TRANSLATED: u32 = 4;
    pub const SENDMSG_PASSTHROUGH: u32 = 5;
    pub const SENDMSG_NO_BACKEND: u32 = 6;
    pub const RECVMSG_REWRITTEN: u32 = 7;
    pub const GETPEERNAME_REWRITTEN: u32 = 8;
    pub const SOCKET_RELEASED: u32 = 9;
    /// A slot or Maglev entry was missing (agent mid-update): refused.
    pub const DROP_SLOT_MISSING: u32 = 10;
    /// The socket table was full: translated but not tracked.
    pub const DROP_SOCKET_TABLE_FULL: u32 = 11;
    /// A service IP dialled on a port its Service does not define: refused.
    pub const CONNECT_UNKNOWN_PORT: u32 = 12;
    pub const SENDMSG_UNKNOWN_PORT: u32 = 13;
    /// A connect to an L7 service port sent to the node proxy.
    pub const CONNECT_CAPTURED: u32 = 14;
    /// The proxy's original-destination entry written at TCP connect.
    pub const ORIGINAL_DST_RECORDED: u32 = 15;
    /// An established socket added to the short-circuit sock hash.
    pub const SOCKMAP_INSERTED: u32 = 16;
    /// A sock hash insert failed (map full): that socket stays on TCP.
    pub const SOCKMAP_INSERT_FAILED: u32 = 17;
    /// An accepted connection whose connecting end is local: a hop that
    /// can be short-circuited from now on.
    pub const SOCKMAP_PAIRED: u32 = 18;
    /// A send delivered straight into the peer socket's receive queue.
    pub const MSG_REDIRECTED: u32 = 19;
    /// A send on a socket in the sock hash with no local peer: sent by TCP.
    pub const MSG_PASSED: u32 = 20;
    /// A connecting socket whose peer turned out not to be on this node
    /// left the sock hash after its first acknowledged send, so its later
    /// sends skip the sk_msg program.
    pub const SOCKMAP_LEFT: u32 = 21;
    /// A REGISTRY_ONLY workload dialled an address outside the registry.
    pub const CONNECT_REFUSED_REGISTRY: u32 = 22;
    pub const SENDMSG_REFUSED_REGISTRY: u32 = 23;
    /// A scoped workload dialled a service its Sidecar's egress omits.
    pub const CONNECT_REFUSED_SCOPE: u32 = 24;
    pub const SENDMSG_REFUSED_SCOPE: u32 = 25;
    /// A connect to an L7 port while no proxy listened: balanced at L4
    /// (fail open), or refused.
    pub const CONNECT_PROXY_DOWN_L4: u32 = 26;
    pub const CONNECT_PROXY_DOWN_REFUSED: u32 = 27;
    /// An unconnected UDP socket sent to a second service through a backend
    /// it already reached for another: a reply from that backend carries
    /// nothing to tell the two apart, and shows the latest one's address.
    pub const UDP_REVERSE_AMBIGUOUS: u32 = 28;
    pub const COUNT: u32 = 29;

    /// Label values for each index, in order.
    pub const NAMES: [&str; COUNT as usize] = [
        "connect_translated",
        "connect_passthrough",
        "connect_no_backend",
        "connect_overflow",
        "sendmsg_translated",
        "sendmsg_passthrough",
        "sendmsg_no_backend",
        "recvmsg_rewritten",
        "getpeername_rewritten",
        "socket_released",
        "drop_slot_missing",
        "drop_socket_table_full",
        "connect_unknown_port",
        "sendmsg_unknown_port",
        "connect_captured",
        "original_dst_recorded",
        "sockmap_inserted",
        "sockmap_insert_failed",
        "sockmap_paired",
        "msg_redirected",
        "msg_passed",
        "sockmap_left",
        "connect_refused_registry",
        "sendmsg_refused_registry",
        "connect_refused_scope",
        "sendmsg_refused_scope",
        "connect_proxy_down_l4",
        "connect_proxy_down_refused",
        "udp_reverse_ambiguous",
    ];
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, fully initialised with explicit padding.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for ServiceIpKey {}
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ClusterLive {}
    unsafe impl aya::Pod for SocketEntry {}
    unsafe impl aya::Pod for UdpReverseKey {}
    unsafe impl aya::Pod for UdpReverseValue {}
    unsafe impl aya::Pod for ClusterStats {}
    unsafe impl aya::Pod for ProxyTarget {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for OriginalDst {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for HandshakeKey {}
    unsafe impl aya::Pod for PolicyConfig {}
    unsafe impl aya::Pod for WorkloadPolicy {}
    unsafe impl aya::Pod for RegistryPrefix {}
    unsafe impl aya::Pod for WorkloadStats {}
    unsafe impl aya::Pod for ScopeClusterKey {}
}
