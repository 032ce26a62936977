//! sock_release: give the live-connection slot back when the socket closes.

use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext, EbpfContext};
use mesh_common::global_stat;

use crate::{live::forget_socket, stats::count, verdict::ALLOW};

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
