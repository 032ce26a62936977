//! getpeername: the application sees the service it dialled, not the
//! backend or proxy its connect was sent to.

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext, EbpfContext,
};
use mesh_common::{global_stat, FAMILY_V4};

use crate::{addr::write_addr, maps::SOCKETS, stats::count, verdict::ALLOW};

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
