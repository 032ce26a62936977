//! Backend selection: a frontend's group of slots, picked by round robin,
//! random, Maglev over the client's identity, or least request.

use aya_ebpf::{
    bindings::bpf_sock,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_prandom_u32},
    programs::SockAddrContext,
    EbpfContext,
};
use mesh_common::{lb, Backend, Frontend, SlotKey, FAMILY_V4};

use crate::{
    live::{cluster_live, fetch_add, live_of},
    maps::{MAGLEV, SLOTS},
};

#[inline(always)]
fn mix64(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread hash of the source identity.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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

#[inline(always)]
pub(crate) fn slot(group_id: u64, index: u32) -> Option<Backend> {
    let key = SlotKey { group_id, index, _pad: 0 };
    unsafe { SLOTS.get(&key) }.copied()
}

#[inline(always)]
pub(crate) fn pick_backend(ctx: &SockAddrContext, fe: &Frontend, family: u8) -> Option<Backend> {
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
            let index = MAGLEV.slot_index(fe.group_id, (hash % fe.maglev_size as u64) as u32)?;
            slot(fe.group_id, index)
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
