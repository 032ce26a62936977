//! connect4 / connect6: a connect to a service goes to a backend picked in
//! the kernel, holding a live-connection slot, or to the node proxy when the
//! frontend captures it.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_sk_release},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use mesh_common::{
    global_stat, Backend, ClusterLive, Frontend, SocketEntry, FAMILY_V4, FAMILY_V6, FRONTEND_CAPTURE, PROTO_TCP,
    PROXY_LISTENER_V4, PROXY_LISTENER_V6,
};

use crate::{
    addr::{proto_of, read_dial, write_addr, Dial},
    balance::{pick_backend, slot},
    live::{backend_live, cluster_live, fetch_add, forget_socket, release},
    maps::{FRONTENDS, POLICY, PROXY, PROXY_LISTENERS, SOCKETS},
    policy::out_of_scope,
    stats::{count, count_cluster},
    udp_reverse::remember_udp_reverse,
    verdict::{miss, refuse_with, MissStats, ALLOW},
};

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
        None => {
            let stats = MissStats {
                unknown_port: global_stat::CONNECT_UNKNOWN_PORT,
                refused_registry: global_stat::CONNECT_REFUSED_REGISTRY,
                passthrough: global_stat::CONNECT_PASSTHROUGH,
            };
            return Ok(miss(&dial.key, stats));
        }
    };
    if out_of_scope(fe.cluster_id) {
        return Ok(refuse_with(global_stat::CONNECT_REFUSED_SCOPE));
    }
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
    let config = POLICY.get(0);
    // The proxy's own connects are balanced at L4, never sent back to it.
    if config.is_some_and(|config| config.agent_cgroup != 0 && config.agent_cgroup == current_cgroup()) {
        return None;
    }
    if !proxy_listening(dial.key.family) {
        // No proxy (its agent is gone): balanced at L4 when failing open,
        // else refused at once rather than sent to a closed port.
        if config.is_some_and(|config| config.l7_fail_open != 0) {
            count(global_stat::CONNECT_PROXY_DOWN_L4);
            return None;
        }
        return Some(refuse_with(global_stat::CONNECT_PROXY_DOWN_REFUSED));
    }
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
fn current_cgroup() -> u64 {
    unsafe { bpf_get_current_cgroup_id() }
}

/// Whether the proxy's listener of `family` is open: a lookup in the
/// sockmap the agent put it in (a socket leaves it when it closes). The
/// lookup takes a reference, given back at once.
#[inline(always)]
fn proxy_listening(family: u8) -> bool {
    let slot: u32 = if family == FAMILY_V4 { PROXY_LISTENER_V4 } else { PROXY_LISTENER_V6 };
    // The static is the map's definition (its one field).
    let map = core::ptr::addr_of!(PROXY_LISTENERS) as *mut core::ffi::c_void;
    let sk = unsafe { bpf_map_lookup_elem(map, &slot as *const u32 as *const core::ffi::c_void) };
    if sk.is_null() {
        return false;
    }
    unsafe { bpf_sk_release(sk) };
    true
}
