//! sk_msg: the send side of the same-node short-circuit (see `sock_ops` for
//! how both ends of a local hop get paired).

use aya_ebpf::{
    bindings::{sk_action, BPF_F_INGRESS},
    helpers::generated::bpf_get_netns_cookie,
    macros::sk_msg,
    programs::SkMsgContext,
};
use mesh_common::{global_stat, SockKey};

use crate::{
    addr::read_ends,
    maps::{SOCK_HASH, SOCK_PEERS},
    stats::count,
};

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
