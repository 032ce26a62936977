//! Kernel half of the mesh dataplane: socket-level service load balancing.
//!
//! `connect4/6` translate a service address to a backend before the first
//! packet exists, so no packet is ever NATed; `sendmsg/recvmsg` do the same
//! per datagram for unconnected UDP; `getpeername` shows the service address
//! back to the application; `sock_release` gives back the live-connection
//! slot the connect took. Traffic to anything that is not a service passes
//! through untouched, and every decision is counted per CPU. Same-node hops
//! between two sockets of the attached cgroup skip TCP: `sock_ops` files
//! established sockets in a sock hash and pairs both ends of a local
//! connection, and `sk_msg` hands each send straight to the peer socket.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr, sk_action, BPF_F_INGRESS, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_map_delete_elem, bpf_set_retval,
    },
    macros::{cgroup_sock, cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, SockHash},
    programs::{SkMsgContext, SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};
use mesh_common::{
    capacity, global_stat, lb, Backend, ClusterLive, ClusterStats, ConnKey, Frontend, FrontendKey, HandshakeKey,
    OriginalDst, ProxyTarget, ServiceIpKey, SlotKey, SockKey, SocketEntry, UdpReverseKey, UdpReverseValue, FAMILY_V4,
    FAMILY_V6, FRONTEND_CAPTURE, PROTO_TCP, PROTO_UDP,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
/// `::ffff:0:0/96` in network byte order, word 2.
const V4_MAPPED_WORD: u32 = 0xffff_u32.to_be();

#[map(name = "MESH_FRONTENDS")]
static FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::pinned(capacity::FRONTENDS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SERVICE_IPS")]
static SERVICE_IPS: HashMap<ServiceIpKey, u32> = HashMap::pinned(capacity::SERVICE_IPS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SLOTS")]
static SLOTS: HashMap<SlotKey, Backend> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_MAGLEV")]
static MAGLEV: HashMap<SlotKey, Backend> = HashMap::pinned(capacity::MAGLEV, BPF_F_NO_PREALLOC);
#[map(name = "MESH_BACKEND_LIVE")]
static BACKEND_LIVE: HashMap<Backend, u64> = HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_CLUSTER_LIVE")]
static CLUSTER_LIVE: HashMap<u64, ClusterLive> = HashMap::pinned(capacity::CLUSTERS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_SOCKETS")]
static SOCKETS: HashMap<u64, SocketEntry> = HashMap::pinned(capacity::SOCKETS, BPF_F_NO_PREALLOC);
#[map(name = "MESH_UDP_REVERSE")]
static UDP_REVERSE: LruHashMap<UdpReverseKey, UdpReverseValue> = LruHashMap::pinned(capacity::UDP_REVERSE, 0);
#[map(name = "MESH_PROXY")]
static PROXY: Array<ProxyTarget> = Array::pinned(1, 0);
#[map(name = "MESH_ORIGINAL_DST")]
static ORIGINAL_DST: LruHashMap<ConnKey, OriginalDst> = LruHashMap::pinned(capacity::ORIGINAL_DST, 0);
#[map(name = "MESH_GLOBAL_STATS")]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(global_stat::COUNT, 0);
#[map(name = "MESH_CLUSTER_STATS")]
static CLUSTER_STATS: PerCpuHashMap<u64, ClusterStats> = PerCpuHashMap::pinned(capacity::CLUSTERS, BPF_F_NO_PREALLOC);
/// Established sockets of the cgroup; an entry goes when its socket closes.
#[map(name = "MESH_SOCK_HASH")]
static SOCK_HASH: SockHash<SockKey> = SockHash::pinned(capacity::SOCK_HASH, 0);
/// Both ends of each short-circuited hop, each pointing at the other.
#[map(name = "MESH_SOCK_PEERS")]
static SOCK_PEERS: LruHashMap<SockKey, SockKey> = LruHashMap::pinned(capacity::SOCK_PEERS, 0);
/// Connecting sockets by their handshake, until the accepting end pairs.
#[map(name = "MESH_HANDSHAKES")]
static HANDSHAKES: LruHashMap<HandshakeKey, SockKey> = LruHashMap::pinned(capacity::HANDSHAKES, 0);

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

#[inline(always)]
fn count(stat: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(stat) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_cluster(cluster_id: u64, bump: impl Fn(&mut ClusterStats)) {
    if CLUSTER_STATS.get_ptr_mut(&cluster_id).is_none() {
        let _ = CLUSTER_STATS.insert(&cluster_id, &ClusterStats::default(), BPF_NOEXIST as u64);
    }
    if let Some(stats) = CLUSTER_STATS.get_ptr_mut(&cluster_id) {
        bump(unsafe { &mut *stats });
    }
}

/// Atomic add returning the previous value. SeqCst on purpose: with
/// Relaxed, LLVM 22's BPF backend emits the non-fetching `lock +=` and then
/// reads the addend back as if it were the old value.
#[inline(always)]
fn fetch_add(counter: *mut u64, delta: u64) -> u64 {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, delta) }
}

/// Cluster state shared by all CPUs, created on first use.
#[inline(always)]
fn cluster_live(cluster_id: u64) -> Option<*mut ClusterLive> {
    if let Some(live) = CLUSTER_LIVE.get_ptr_mut(&cluster_id) {
        return Some(live);
    }
    let _ = CLUSTER_LIVE.insert(&cluster_id, &ClusterLive::default(), BPF_NOEXIST as u64);
    CLUSTER_LIVE.get_ptr_mut(&cluster_id)
}

#[inline(always)]
fn backend_live(backend: &Backend) -> Option<*mut u64> {
    if let Some(live) = BACKEND_LIVE.get_ptr_mut(backend) {
        return Some(live);
    }
    let _ = BACKEND_LIVE.insert(backend, &0, BPF_NOEXIST as u64);
    BACKEND_LIVE.get_ptr_mut(backend)
}

/// Decrements a live counter, atomically and never below zero: a wrapped
/// counter would refuse every connect at the limit.
#[inline(always)]
fn release(counter: *mut u64) {
    let mut current = unsafe { core::ptr::read_volatile(counter) };
    let mut tries = 0;
    while current > 0 && tries < 8 {
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(counter, current, current - 1)
        };
        if swapped {
            return;
        }
        current = seen;
        tries += 1;
    }
}

#[inline(always)]
fn mix64(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread hash of the source identity.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

// ---------------------------------------------------------------------------
// The address the application passed, and where to write the translation
// ---------------------------------------------------------------------------

/// A sockaddr as a cgroup program sees it, normalised to four words. An
/// IPv6 socket dialling a v4-mapped address is looked up as IPv4.
struct Dial {
    key: FrontendKey,
    /// The socket is AF_INET6 but the address is `::ffff:a.b.c.d`.
    v4_mapped: bool,
}

#[inline(always)]
unsafe fn read_dial(sa: *const bpf_sock_addr, family: u8, proto: u8) -> Dial {
    let mut key = FrontendKey { port: (*sa).user_port as u16, proto, family, ..Default::default() };
    let mut v4_mapped = false;
    if family == FAMILY_V4 {
        key.addr[0] = (*sa).user_ip4;
    } else {
        let w0 = (*sa).user_ip6[0];
        let w1 = (*sa).user_ip6[1];
        let w2 = (*sa).user_ip6[2];
        let w3 = (*sa).user_ip6[3];
        if w0 == 0 && w1 == 0 && w2 == V4_MAPPED_WORD {
            key.addr[0] = w3;
            key.family = FAMILY_V4;
            v4_mapped = true;
        } else {
            key.addr = [w0, w1, w2, w3];
        }
    }
    Dial { key, v4_mapped }
}

/// Writes `addr:port` (four words, family `family`) into the sockaddr the
/// program runs on. The kernel only accepts 4-byte stores to `user_ip6`.
#[inline(always)]
unsafe fn write_addr(sa: *mut bpf_sock_addr, addr: &[u32; 4], port: u16, v4_mapped: bool, v6_ctx: bool) {
    if !v6_ctx {
        (*sa).user_ip4 = addr[0];
    } else if v4_mapped {
        (*sa).user_ip6[0] = 0;
        (*sa).user_ip6[1] = 0;
        (*sa).user_ip6[2] = V4_MAPPED_WORD;
        (*sa).user_ip6[3] = addr[0];
    } else {
        (*sa).user_ip6[0] = addr[0];
        (*sa).user_ip6[1] = addr[1];
        (*sa).user_ip6[2] = addr[2];
        (*sa).user_ip6[3] = addr[3];
    }
    (*sa).user_port = port as u32;
}

/// TCP or UDP by the socket's protocol (not its type: SCTP streams, ping
/// and UDP-Lite sockets are left alone).
#[inline(always)]
fn proto_of(sa: *const bpf_sock_addr) -> Option<u8> {
    match unsafe { (*sa).protocol } {
        IPPROTO_TCP => Some(PROTO_TCP),
        IPPROTO_UDP => Some(PROTO_UDP),
        _ => None,
    }
}

/// The client's identity for source-IP affinity: its bound address when it
/// bound one, else its network namespace (one pod, one address).
#[inline(always)]
unsafe fn source_identity(ctx: &SockAddrContext, family: u8) -> u64 {
    let sk: *mut bpf_sock = (*ctx.sock_addr).__bindgen_anon_1.sk;
    if !sk.is_null() {
        if family == FAMILY_V4 {
            let src = (*sk).src_ip4;
            if src != 0 {
                return src as u64;
            }
        } else {
            let a = (*sk).src_ip6[0] as u64;
            let b = (*sk).src_ip6[1] as u64;
            let c = (*sk).src_ip6[2] as u64;
            let d = (*sk).src_ip6[3] as u64;
            let folded = (a << 32 | b) ^ mix64(c << 32 | d);
            if folded != 0 {
                return folded;
            }
        }
    }
    bpf_get_netns_cookie(ctx.as_ptr())
}

// ---------------------------------------------------------------------------
// Backend selection
// ---------------------------------------------------------------------------

#[inline(always)]
fn slot(group_id: u64, index: u32) -> Option<Backend> {
    let key = SlotKey { group_id, index, _pad: 0 };
    unsafe { SLOTS.get(&key) }.copied()
}

#[inline(always)]
fn live_of(backend: &Backend) -> u64 {
    match unsafe { BACKEND_LIVE.get(backend) } {
        Some(live) => unsafe { core::ptr::read_volatile(live) },
        None => 0,
    }
}

#[inline(always)]
fn pick_backend(ctx: &SockAddrContext, fe: &Frontend, family: u8) -> Option<Backend> {
    let n = fe.backend_count;
    if n == 1 {
        return slot(fe.group_id, 0);
    }
    match fe.algorithm {
        lb::ROUND_ROBIN => {
            let cursor = match cluster_live(fe.group_id) {
                Some(state) => fetch_add(unsafe { &mut (*state).round_robin }, 1),
                None => u64::from(unsafe { bpf_get_prandom_u32() }),
            };
            slot(fe.group_id, (cursor % n as u64) as u32)
        }
        lb::RANDOM => slot(fe.group_id, unsafe { bpf_get_prandom_u32() } % n),
        lb::MAGLEV_SOURCE_IP => {
            if fe.maglev_size == 0 {
                return None;
            }
            let hash = mix64(unsafe { source_identity(ctx, family) });
            let key = SlotKey { group_id: fe.group_id, index: (hash % fe.maglev_size as u64) as u32, _pad: 0 };
            unsafe { MAGLEV.get(&key) }.copied()
        }
        _ => {
            // LEAST_REQUEST: power of two choices over live connections.
            let r = unsafe { bpf_get_prandom_u32() };
            let first = r % n;
            let mut second = (r >> 16) % n;
            if second == first {
                second = (first + 1) % n;
            }
            let a = slot(fe.group_id, first)?;
            let b = match slot(fe.group_id, second) {
                Some(b) => b,
                None => return Some(a),
            };
            if live_of(&b) < live_of(&a) {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

/// On a frontend miss: refuse when the address is a service IP (only the
/// port is unknown), so no connect to a service address leaves untranslated.
#[inline(always)]
fn miss(key: &FrontendKey, unknown_port: u32, passthrough: u32) -> i32 {
    let ip = ServiceIpKey { addr: key.addr, family: key.family, _pad: [0; 3] };
    if unsafe { SERVICE_IPS.get(&ip) }.is_some() {
        return refuse_with(unknown_port);
    }
    count(passthrough);
    ALLOW
}

#[inline(always)]
fn refuse_with(stat: u32) -> i32 {
    count(stat);
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}

// ---------------------------------------------------------------------------
// connect4 / connect6
// ---------------------------------------------------------------------------

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, false).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, true).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6_ctx: bool) -> Result<i32, ()> {
    let sa = ctx.sock_addr;
    let proto = proto_of(sa).ok_or(())?;
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket may connect again (after a failed TCP connect, or a UDP
    // socket re-pointed): whatever its last connect held is given back first.
    forget_socket(cookie);
    let family = if v6_ctx { FAMILY_V6 } else { FAMILY_V4 };
    let dial = unsafe { read_dial(sa, family, proto) };
    let fe = match unsafe { FRONTENDS.get(&dial.key) } {
        Some(fe) => *fe,
        None => return Ok(miss(&dial.key, global_stat::CONNECT_UNKNOWN_PORT, global_stat::CONNECT_PASSTHROUGH)),
    };
    if proto == PROTO_TCP && fe.flags & FRONTEND_CAPTURE != 0 {
        if let Some(verdict) = capture(ctx, cookie, &fe, &dial, v6_ctx) {
            return Ok(verdict);
        }
    }
    if fe.backend_count == 0 {
        count_cluster(fe.cluster_id, |s| s.no_backend += 1);
        return Ok(refuse_with(global_stat::CONNECT_NO_BACKEND));
    }

    // Take a live-connection slot first, so concurrent connects on other
    // CPUs cannot both slip under the limit.
    let tcp = proto == PROTO_TCP;
    // A plain pointer, null when no slot is held: an Option here leaves an
    // undefined payload that LLVM may spill, which the verifier refuses.
    let mut cluster_state: *mut ClusterLive = core::ptr::null_mut();
    if tcp {
        if let Some(state) = cluster_live(fe.cluster_id) {
            let live = unsafe { &mut (*state).connections };
            let before = fetch_add(live, 1);
            if fe.max_connections != 0 && before >= fe.max_connections as u64 {
                release(live);
                count_cluster(fe.cluster_id, |s| s.overflows += 1);
                return Ok(refuse_with(global_stat::CONNECT_OVERFLOW));
            }
            cluster_state = state;
        }
    }

    let backend = match pick_backend(ctx, &fe, dial.key.family).or_else(|| slot(fe.group_id, 0)) {
        Some(b) => b,
        None => {
            if !cluster_state.is_null() {
                release(unsafe { &mut (*cluster_state).connections });
            }
            return Ok(refuse_with(global_stat::DROP_SLOT_MISSING));
        }
    };

    let entry = SocketEntry {
        cluster_id: fe.cluster_id,
        service_addr: dial.key.addr,
        backend,
        service_port: dial.key.port,
        family: dial.key.family,
        counted: !cluster_state.is_null() as u8,
        captured: 0,
        _pad: [0; 3],
    };
    if SOCKETS.insert(&cookie, &entry, 0).is_err() {
        // Untracked: the slot could never be released, so do not hold one.
        count(global_stat::DROP_SOCKET_TABLE_FULL);
        if !cluster_state.is_null() {
            release(unsafe { &mut (*cluster_state).connections });
        }
    } else if tcp {
        if let Some(live) = backend_live(&backend) {
            fetch_add(live, 1);
        }
    } else {
        remember_udp_reverse(cookie, &backend, &dial.key);
    }

    unsafe { write_addr(sa, &backend.addr, backend.port, dial.v4_mapped, v6_ctx) };
    count(global_stat::CONNECT_TRANSLATED);
    count_cluster(fe.cluster_id, |s| s.connects += 1);
    Ok(ALLOW)
}

/// Sends the connect to the node proxy and remembers the service it was
/// for; `None` when the proxy has no address of this family (then the
/// connect is balanced in the kernel as usual).
#[inline(always)]
fn capture(ctx: &SockAddrContext, cookie: u64, fe: &Frontend, dial: &Dial, v6_ctx: bool) -> Option<i32> {
    let proxy = PROXY.get(0)?;
    let proxy_addr = if dial.key.family == FAMILY_V4 && proxy.has_v4 != 0 {
        [proxy.addr4, 0, 0, 0]
    } else if dial.key.family == FAMILY_V6 && proxy.has_v6 != 0 {
        proxy.addr6
    } else {
        return None;
    };
    let entry = SocketEntry {
        cluster_id: fe.cluster_id,
        service_addr: dial.key.addr,
        backend: Backend { addr: proxy_addr, port: proxy.port, family: dial.key.family, _pad: 0 },
        service_port: dial.key.port,
        family: dial.key.family,
        counted: 0,
        captured: 1,
        _pad: [0; 3],
    };
    if SOCKETS.insert(&cookie, &entry, 0).is_err() {
        // The proxy could not learn where this connection was going.
        count(global_stat::DROP_SOCKET_TABLE_FULL);
        return Some(refuse_with(global_stat::DROP_SOCKET_TABLE_FULL));
    }
    unsafe { write_addr(ctx.sock_addr, &proxy_addr, proxy.port, dial.v4_mapped, v6_ctx) };
    count(global_stat::CONNECT_CAPTURED);
    count_cluster(fe.cluster_id, |s| s.connects += 1);
    Some(ALLOW)
}

#[inline(always)]
fn remember_udp_reverse(cookie: u64, backend: &Backend, service: &FrontendKey) {
    let key = UdpReverseKey { cookie, backend: *backend, _pad: 0 };
    let value = UdpReverseValue { service_addr: service.addr, service_port: service.port, _pad: [0; 6] };
    let _ = UDP_REVERSE.insert(&key, &value, 0);
}

// ---------------------------------------------------------------------------
// sendmsg / recvmsg: unconnected UDP
// ---------------------------------------------------------------------------

#[cgroup_sock_addr(sendmsg4)]
pub fn mesh_sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, false).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mesh_sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, true).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_sendmsg(ctx: &SockAddrContext, v6_ctx: bool) -> Result<i32, ()> {
    let sa = ctx.sock_addr;
    if proto_of(sa) != Some(PROTO_UDP) {
        return Err(());
    }
    let family = if v6_ctx { FAMILY_V6 } else { FAMILY_V4 };
    let dial = unsafe { read_dial(sa, family, PROTO_UDP) };
    let fe = match unsafe { FRONTENDS.get(&dial.key) } {
        Some(fe) => *fe,
        None => return Ok(miss(&dial.key, global_stat::SENDMSG_UNKNOWN_PORT, global_stat::SENDMSG_PASSTHROUGH)),
    };
    if fe.backend_count == 0 {
        count_cluster(fe.cluster_id, |s| s.no_backend += 1);
        return Ok(refuse_with(global_stat::SENDMSG_NO_BACKEND));
    }
    let backend = match pick_backend(ctx, &fe, dial.key.family).or_else(|| slot(fe.group_id, 0)) {
        Some(b) => b,
        None => return Ok(refuse_with(global_stat::DROP_SLOT_MISSING)),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    remember_udp_reverse(cookie, &backend, &dial.key);
    unsafe { write_addr(sa, &backend.addr, backend.port, dial.v4_mapped, v6_ctx) };
    count(global_stat::SENDMSG_TRANSLATED);
    count_cluster(fe.cluster_id, |s| s.udp_datagrams += 1);
    Ok(ALLOW)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn mesh_recvmsg4(ctx: SockAddrContext) -> i32 {
    try_recvmsg(&ctx, false).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn mesh_recvmsg6(ctx: SockAddrContext) -> i32 {
    try_recvmsg(&ctx, true).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_recvmsg(ctx: &SockAddrContext, v6_ctx: bool) -> Result<i32, ()> {
    let sa = ctx.sock_addr;
    let family = if v6_ctx { FAMILY_V6 } else { FAMILY_V4 };
    let from = unsafe { read_dial(sa, family, PROTO_UDP) };
    let key = UdpReverseKey {
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: Backend { addr: from.key.addr, port: from.key.port, family: from.key.family, _pad: 0 },
        _pad: 0,
    };
    // A connected socket knows its service for sure; the reverse map serves
    // unconnected ones. recvmsg programs must allow: a miss leaves the source.
    let (service_addr, service_port) = match unsafe { SOCKETS.get(&key.cookie) } {
        Some(entry) if entry.backend == key.backend => (entry.service_addr, entry.service_port),
        _ => {
            let service = unsafe { UDP_REVERSE.get(&key) }.ok_or(())?;
            (service.service_addr, service.service_port)
        }
    };
    unsafe { write_addr(sa, &service_addr, service_port, from.v4_mapped, v6_ctx) };
    count(global_stat::RECVMSG_REWRITTEN);
    Ok(ALLOW)
}

// ---------------------------------------------------------------------------
// getpeername: the application sees the service it dialled
// ---------------------------------------------------------------------------

#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    try_getpeername(&ctx, false).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    try_getpeername(&ctx, true).unwrap_or(ALLOW)
}

#[inline(always)]
fn try_getpeername(ctx: &SockAddrContext, v6_ctx: bool) -> Result<i32, ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let entry = unsafe { SOCKETS.get(&cookie) }.ok_or(())?;
    let v4_mapped = v6_ctx && entry.family == FAMILY_V4;
    unsafe { write_addr(ctx.sock_addr, &entry.service_addr, entry.service_port, v4_mapped, v6_ctx) };
    count(global_stat::GETPEERNAME_REWRITTEN);
    Ok(ALLOW)
}

// ---------------------------------------------------------------------------
// sock_release: give the live-connection slot back
// ---------------------------------------------------------------------------

#[cgroup_sock(sock_release)]
pub fn mesh_sock_release(ctx: SockContext) -> i32 {
    let _ = try_sock_release(&ctx);
    ALLOW
}

#[inline(always)]
fn try_sock_release(ctx: &SockContext) -> Result<(), ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if forget_socket(cookie) {
        count(global_stat::SOCKET_RELEASED);
    }
    Ok(())
}

/// Gives back what a socket's translated connect holds and forgets it;
/// false when the socket holds nothing.
#[inline(always)]
fn forget_socket(cookie: u64) -> bool {
    let entry = match unsafe { SOCKETS.get(&cookie) } {
        Some(entry) => *entry,
        None => return false,
    };
    if entry.counted != 0 {
        if let Some(state) = CLUSTER_LIVE.get_ptr_mut(&entry.cluster_id) {
            release(unsafe { &mut (*state).connections });
        }
        if let Some(live) = BACKEND_LIVE.get_ptr_mut(&entry.backend) {
            release(live);
        }
    }
    let _ = SOCKETS.remove(&cookie);
    true
}

// ---------------------------------------------------------------------------
// sock_ops: once a captured connection has its local port, record where it
// was going under the address the proxy will see as its peer. Once a
// connection is established, file it for the same-node short-circuit.
// ---------------------------------------------------------------------------

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RTT_CB: u32 = 12;
const BPF_SOCK_OPS_RTT_CB_FLAG: i32 = 8;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn mesh_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let _ = try_record_original_dst(&ctx);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            let _ = try_file_connecting_end(&ctx);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let _ = try_pair_accepting_end(&ctx);
        }
        BPF_SOCK_OPS_RTT_CB => {
            let _ = try_leave_if_unpaired(&ctx);
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn try_record_original_dst(ctx: &SockOpsContext) -> Result<(), ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    let entry = unsafe { SOCKETS.get(&cookie) }.ok_or(())?;
    if entry.captured == 0 {
        return Ok(());
    }
    // The local port comes in host byte order here.
    let port = (ctx.local_port() as u16).to_be();
    let key = if ctx.family() == AF_INET6 {
        let ip6 = ctx.local_ip6();
        if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD {
            ConnKey { addr: [ip6[3], 0, 0, 0], port, family: FAMILY_V4, _pad: 0 }
        } else {
            ConnKey { addr: ip6, port, family: FAMILY_V6, _pad: 0 }
        }
    } else {
        ConnKey { addr: [ctx.local_ip4(), 0, 0, 0], port, family: FAMILY_V4, _pad: 0 }
    };
    let original = OriginalDst { addr: entry.service_addr, port: entry.service_port, family: entry.family, _pad: 0 };
    ORIGINAL_DST.insert(&key, &original, 0).map_err(|_| ())?;
    count(global_stat::ORIGINAL_DST_RECORDED);
    Ok(())
}

// ---------------------------------------------------------------------------
// Same-node short-circuit
//
// Every established socket of the cgroup that connected goes into
// SOCK_HASH, and files itself under its handshake (addresses and both
// initial sequence numbers). When the accepting end of that very handshake
// is established in the cgroup too, both ends are on this node: it finds
// the connecting end there, joins SOCK_HASH and records the pair both ways
// in SOCK_PEERS. From then on `sk_msg` moves each send straight into the
// peer's receive queue. An accepting socket whose peer is elsewhere never
// enters the sock hash; a connecting one does, and at its first RTT sample
// (the first acknowledged send, long after a local peer would have paired)
// it leaves the sock hash unless paired, so a hop to another node or to a
// pod outside the cgroup pays for sk_msg once, not on every send.
// ---------------------------------------------------------------------------

/// The two ends of a socket in one family, as sock_ops or sk_msg see them.
struct Ends {
    local: [u32; 4],
    remote: [u32; 4],
    family: u8,
}

/// Reads both addresses with 4-byte loads (the only size the kernel allows
/// for these context fields); an IPv4 peer of a dual-stack socket becomes
/// IPv4, as the other end sees it.
#[inline(always)]
unsafe fn read_ends(
    family: u32,
    local4: *const u32,
    remote4: *const u32,
    local6: *const u32,
    remote6: *const u32,
) -> Option<Ends> {
    use core::ptr::read_volatile as rd;
    if family == AF_INET {
        return Some(Ends { local: [rd(local4), 0, 0, 0], remote: [rd(remote4), 0, 0, 0], family: FAMILY_V4 });
    }
    if family != AF_INET6 {
        return None;
    }
    let remote = [rd(remote6), rd(remote6.add(1)), rd(remote6.add(2)), rd(remote6.add(3))];
    if remote[0] == 0 && remote[1] == 0 && remote[2] == V4_MAPPED_WORD {
        let local = rd(local6.add(3));
        return Some(Ends { local: [local, 0, 0, 0], remote: [remote[3], 0, 0, 0], family: FAMILY_V4 });
    }
    let local = [rd(local6), rd(local6.add(1)), rd(local6.add(2)), rd(local6.add(3))];
    Some(Ends { local, remote, family: FAMILY_V6 })
}

/// This socket's key and the next sequence numbers (ours, the peer's).
#[inline(always)]
fn sock_ops_key(ctx: &SockOpsContext) -> Option<(SockKey, u32, u32)> {
    let ops = ctx.ops;
    let ends = unsafe {
        read_ends(
            (*ops).family,
            &(*ops).local_ip4,
            &(*ops).remote_ip4,
            (*ops).local_ip6.as_ptr(),
            (*ops).remote_ip6.as_ptr(),
        )
    }?;
    let key = SockKey {
        local_addr: ends.local,
        remote_addr: ends.remote,
        netns: unsafe { bpf_get_netns_cookie(ops as *mut _) },
        // local_port in host order, remote_port in network order (as a u32).
        local_port: unsafe { core::ptr::read_volatile(&(*ops).local_port) } as u16,
        remote_port: u32::from_be(unsafe { core::ptr::read_volatile(&(*ops).remote_port) }) as u16,
        family: ends.family,
        _pad: [0; 3],
    };
    let (snd_nxt, rcv_nxt) =
        unsafe { (core::ptr::read_volatile(&(*ops).snd_nxt), core::ptr::read_volatile(&(*ops).rcv_nxt)) };
    Some((key, snd_nxt, rcv_nxt))
}

#[inline(always)]
fn add_to_sock_hash(ctx: &SockOpsContext, key: &SockKey) -> Result<(), ()> {
    let mut key = *key;
    match SOCK_HASH.update(&mut key, unsafe { &mut *ctx.ops }, 0) {
        Ok(()) => {
            count(global_stat::SOCKMAP_INSERTED);
            Ok(())
        }
        Err(_) => {
            count(global_stat::SOCKMAP_INSERT_FAILED);
            Err(())
        }
    }
}

/// ACTIVE_ESTABLISHED: the SYN-ACK is in, and the ACK that establishes the
/// accepting end has not been sent yet, so the accepting end always finds
/// this entry when it is local.
#[inline(always)]
fn try_file_connecting_end(ctx: &SockOpsContext) -> Result<(), ()> {
    let (key, snd_nxt, rcv_nxt) = sock_ops_key(ctx).ok_or(())?;
    // A pairing left by an earlier socket with these addresses is not ours.
    let _ = SOCK_PEERS.remove(&key);
    add_to_sock_hash(ctx, &key)?;
    // Ask for the RTT callback, where an unpaired end leaves the sock hash
    // (added to the flags: other sock_ops programs may have set some).
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 | BPF_SOCK_OPS_RTT_CB_FLAG);
    let handshake = HandshakeKey {
        client_addr: key.local_addr,
        server_addr: key.remote_addr,
        client_seq: snd_nxt,
        server_seq: rcv_nxt,
        client_port: key.local_port,
        server_port: key.remote_port,
        family: key.family,
        _pad: [0; 3],
    };
    HANDSHAKES.insert(&handshake, &key, 0).map_err(|_| ())
}

/// PASSIVE_ESTABLISHED: pair with the connecting end of the same handshake
/// if it is one of ours; otherwise stay out of the sock hash.
#[inline(always)]
fn try_pair_accepting_end(ctx: &SockOpsContext) -> Result<(), ()> {
    let (key, snd_nxt, rcv_nxt) = sock_ops_key(ctx).ok_or(())?;
    let _ = SOCK_PEERS.remove(&key);
    let handshake = HandshakeKey {
        client_addr: key.remote_addr,
        server_addr: key.local_addr,
        client_seq: rcv_nxt,
        server_seq: snd_nxt,
        client_port: key.remote_port,
        server_port: key.local_port,
        family: key.family,
        _pad: [0; 3],
    };
    let peer = *unsafe { HANDSHAKES.get(&handshake) }.ok_or(())?;
    let _ = HANDSHAKES.remove(&handshake);
    add_to_sock_hash(ctx, &key)?;
    SOCK_PEERS.insert(&key, &peer, 0).map_err(|_| ())?;
    SOCK_PEERS.insert(&peer, &key, 0).map_err(|_| ())?;
    count(global_stat::SOCKMAP_PAIRED);
    Ok(())
}

/// RTT_CB, on a connecting end only: once is enough, so the callback is
/// turned off. Deleting from a sock hash is allowed here (sock_ops), not in
/// sk_msg.
#[inline(always)]
fn try_leave_if_unpaired(ctx: &SockOpsContext) -> Result<(), ()> {
    let _ = ctx.set_cb_flags(ctx.cb_flags() as i32 & !BPF_SOCK_OPS_RTT_CB_FLAG);
    let (key, _, _) = sock_ops_key(ctx).ok_or(())?;
    if unsafe { SOCK_PEERS.get(&key) }.is_some() {
        return Ok(());
    }
    let map = core::ptr::addr_of!(SOCK_HASH) as *mut core::ffi::c_void;
    let removed = unsafe { bpf_map_delete_elem(map, &key as *const SockKey as *const core::ffi::c_void) };
    if removed == 0 {
        count(global_stat::SOCKMAP_LEFT);
    }
    Ok(())
}

/// Runs on every send of a socket in SOCK_HASH.
#[sk_msg]
pub fn mesh_sk_msg(ctx: SkMsgContext) -> u32 {
    if try_redirect(&ctx).is_some() {
        count(global_stat::MSG_REDIRECTED);
    } else {
        count(global_stat::MSG_PASSED);
    }
    sk_action::SK_PASS
}

/// Redirects the message into the peer's receive queue when this socket
/// and its peer are a pair recorded both ways (an entry left by a closed
/// socket cannot match a live one) and the peer is still in the sock hash.
#[inline(always)]
fn try_redirect(ctx: &SkMsgContext) -> Option<()> {
    let msg = ctx.msg;
    let ends = unsafe {
        read_ends(
            (*msg).family,
            &(*msg).local_ip4,
            &(*msg).remote_ip4,
            (*msg).local_ip6.as_ptr(),
            (*msg).remote_ip6.as_ptr(),
        )
    }?;
    let own = SockKey {
        local_addr: ends.local,
        remote_addr: ends.remote,
        netns: unsafe { bpf_get_netns_cookie(msg as *mut _) },
        local_port: unsafe { core::ptr::read_volatile(&(*msg).local_port) } as u16,
        remote_port: u32::from_be(unsafe { core::ptr::read_volatile(&(*msg).remote_port) }) as u16,
        family: ends.family,
        _pad: [0; 3],
    };
    let mut peer = *unsafe { SOCK_PEERS.get(&own) }?;
    let back = unsafe { SOCK_PEERS.get(&peer) }?;
    if *back != own {
        return None;
    }
    // SK_PASS with the redirect set; SK_DROP (nothing set) when the peer
    // has left the sock hash: then the message goes out by TCP.
    (SOCK_HASH.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64) == sk_action::SK_PASS as i64).then_some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
