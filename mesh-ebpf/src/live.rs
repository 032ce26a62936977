//! Live-connection counts, shared by all CPUs: a translated TCP connect
//! takes a slot of its cluster (atomically, against the cluster's limit) and
//! one of its backend (which least-request reads), and gives both back when
//! its socket closes or connects again.

use aya_ebpf::bindings::BPF_NOEXIST;
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};
use mesh_common::{Backend, ClusterLive};

use crate::maps::{BACKEND_LIVE, CLUSTER_LIVE, SOCKETS};

/// Atomic add returning the previous value. SeqCst on purpose: with
/// Relaxed, LLVM 22's BPF backend emits the non-fetching `lock +=` and then
/// reads the addend back as if it were the old value.
#[inline(always)]
pub(crate) fn fetch_add(counter: *mut u64, delta: u64) -> u64 {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, delta) }
}

/// Cluster state shared by all CPUs, created on first use.
#[inline(always)]
pub(crate) fn cluster_live(cluster_id: u64) -> Option<*mut ClusterLive> {
    if let Some(live) = CLUSTER_LIVE.get_ptr_mut(&cluster_id) {
        return Some(live);
    }
    let _ = CLUSTER_LIVE.insert(&cluster_id, &ClusterLive::default(), BPF_NOEXIST as u64);
    CLUSTER_LIVE.get_ptr_mut(&cluster_id)
}

#[inline(always)]
pub(crate) fn backend_live(backend: &Backend) -> Option<*mut u64> {
    if let Some(live) = BACKEND_LIVE.get_ptr_mut(backend) {
        return Some(live);
    }
    let _ = BACKEND_LIVE.insert(backend, &0, BPF_NOEXIST as u64);
    BACKEND_LIVE.get_ptr_mut(backend)
}

/// Decrements a live counter, atomically and never below zero: a wrapped
/// counter would refuse every connect at the limit.
#[inline(always)]
pub(crate) fn release(counter: *mut u64) {
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
pub(crate) fn live_of(backend: &Backend) -> u64 {
    match unsafe { BACKEND_LIVE.get(backend) } {
        Some(live) => unsafe { core::ptr::read_volatile(live) },
        None => 0,
    }
}

/// Gives back what a socket's translated connect holds and forgets it;
/// false when the socket holds nothing.
#[inline(always)]
pub(crate) fn forget_socket(cookie: u64) -> bool {
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
