//! The per-CPU counters: every decision by its global stat, and each
//! cluster's own counts. Per CPU, so a bump needs no atomic.

use aya_ebpf::bindings::BPF_NOEXIST;
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
    if CLUSTER_STATS.get_ptr_mut(&cluster_id).is_none() {
        let _ = CLUSTER_STATS.insert(&cluster_id, &ClusterStats::default(), BPF_NOEXIST as u64);
    }
    if let Some(stats) = CLUSTER_STATS.get_ptr_mut(&cluster_id) {
        bump(unsafe { &mut *stats });
    }
}
