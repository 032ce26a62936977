//! The per-CPU counters: every decision by its global stat, and each
//! cluster's own counts. Per CPU, so a bump needs no atomic.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use mesh_common::ClusterStats;

use crate::maps::{CLUSTER_STATS, GLOBAL_STATS};

#[inline(always)]
pub(crate) fn count(stat: u32) {
    if let Some(counter) = GLOBAL_STATS.get_ptr_mut(stat) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_cluster(cluster_id: u64, bump: impl Fn(&mut ClusterStats)) {
    count_in(&CLUSTER_STATS, &cluster_id, bump);
}

/// Bumps `key`'s counters in `map`, made (zeroed) on first use.
#[inline(always)]
pub(crate) fn count_in<K, V: Default>(map: &PerCpuHashMap<K, V>, key: &K, bump: impl Fn(&mut V)) {
    if map.get_ptr_mut(key).is_none() {
        let _ = map.insert(key, &V::default(), BPF_NOEXIST as u64);
    }
    if let Some(stats) = map.get_ptr_mut(key) {
        // Per-CPU slot: no other CPU writes it.
        bump(unsafe { &mut *stats });
    }
}
