//! sock_ops: once a captured connection has its local port, record where it
//! was going under the address the proxy will see as its peer. Once a
//! connection is established, file it for the same-node short-circuit.

use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_map_delete_elem},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{global_stat, ConnKey, HandshakeKey, OriginalDst, SockKey, FAMILY_V4, FAMILY_V6};

use crate::{
    addr::{read_ends, AF_INET6, V4_MAPPED_WORD},
    maps::{HANDSHAKES, ORIGINAL_DST, SOCKETS, SOCK_HASH, SOCK_PEERS},
    stats::count,
};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_RTT_CB: u32 = 12;
const BPF_SOCK_OPS_RTT_CB_FLAG: i32 = 8;

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
