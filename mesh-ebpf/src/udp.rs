//! sendmsg / recvmsg: unconnected UDP. Each datagram to a service goes to
//! a backend picked in the kernel, and each reply is shown as coming from
//! the service the socket sent to.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext,
};
use mesh_common::{global_stat, Backend, UdpReverseKey, FAMILY_V4, FAMILY_V6, PROTO_UDP};

use crate::{
    addr::{proto_of, read_dial, write_addr},
    balance::{pick_backend, slot},
    maps::{FRONTENDS, SOCKETS, UDP_REVERSE},
    policy::out_of_scope,
    stats::{count, count_cluster},
    udp_reverse::remember_udp_reverse,
    verdict::{miss, refuse_with, MissStats, ALLOW},
};

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
        None => {
            let stats = MissStats {
                unknown_port: global_stat::SENDMSG_UNKNOWN_PORT,
                refused_registry: global_stat::SENDMSG_REFUSED_REGISTRY,
                passthrough: global_stat::SENDMSG_PASSTHROUGH,
            };
            return Ok(miss(&dial.key, stats));
        }
    };
    if out_of_scope(fe.cluster_id) {
        return Ok(refuse_with(global_stat::SENDMSG_REFUSED_SCOPE));
    }
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
