//! Addresses as the programs read and write them: the sockaddr a cgroup
//! program runs on (the address the application passed, and where the
//! translation is written), and both ends of a socket as sock_ops and
//! sk_msg see them.

use aya_ebpf::bindings::bpf_sock_addr;
use mesh_common::{FrontendKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const AF_INET: u32 = 2;
pub(crate) const AF_INET6: u32 = 10;
/// `::ffff:0:0/96` in network byte order, word 2.
pub(crate) const V4_MAPPED_WORD: u32 = 0xffff_u32.to_be();

// ---------------------------------------------------------------------------
// The address the application passed, and where to write the translation
// ---------------------------------------------------------------------------

/// A sockaddr as a cgroup program sees it, normalised to four words. An
/// IPv6 socket dialling a v4-mapped address is looked up as IPv4.
pub(crate) struct Dial {
    pub(crate) key: FrontendKey,
    /// The socket is AF_INET6 but the address is `::ffff:a.b.c.d`.
    pub(crate) v4_mapped: bool,
}

#[inline(always)]
pub(crate) unsafe fn read_dial(sa: *const bpf_sock_addr, family: u8, proto: u8) -> Dial {
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
pub(crate) unsafe fn write_addr(sa: *mut bpf_sock_addr, addr: &[u32; 4], port: u16, v4_mapped: bool, v6_ctx: bool) {
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
pub(crate) fn proto_of(sa: *const bpf_sock_addr) -> Option<u8> {
    match unsafe { (*sa).protocol } {
        IPPROTO_TCP => Some(PROTO_TCP),
        IPPROTO_UDP => Some(PROTO_UDP),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Both ends of an established socket (sock_ops, sk_msg)
// ---------------------------------------------------------------------------

/// The two ends of a socket in one family, as sock_ops or sk_msg see them.
pub(crate) struct Ends {
    pub(crate) local: [u32; 4],
    pub(crate) remote: [u32; 4],
    pub(crate) family: u8,
}

/// Reads both addresses with 4-byte loads (the only size the kernel allows
/// for these context fields); an IPv4 peer of a dual-stack socket becomes
/// IPv4, as the other end sees it.
#[inline(always)]
pub(crate) unsafe fn read_ends(
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
