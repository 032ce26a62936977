//! The kernel's counters as the admin API reads them: global and
//! per-cluster statistics and live connection counts from the pinned maps,
//! and the kernel's per-program run statistics.

use super::bpffs::{maps_dir, open_pinned};
use super::error::DataplaneError;
use aya::maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap};
use mesh_common::{global_stat, map_names, Backend, ClusterLive, ClusterStats, WorkloadStats};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::path::Path;

/// Reads counters through its own handles on the pinned maps, so readers
/// never wait for the writer.
pub struct CounterReader {
    global: PerCpuArray<MapData, u64>,
    clusters: PerCpuHashMap<MapData, u64, ClusterStats>,
    cluster_live: HashMap<MapData, u64, ClusterLive>,
    backend_live: HashMap<MapData, Backend, u64>,
    workloads: PerCpuHashMap<MapData, u64, WorkloadStats>,
}

/// The kernel's counters, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub global: BTreeMap<&'static str, u64>,
    pub clusters: BTreeMap<u64, ClusterStats>,
    pub cluster_live: BTreeMap<u64, u64>,
    pub backend_live: BTreeMap<Backend, u64>,
    /// Connects and datagrams refused by the outbound policy, by pod
    /// cgroup id.
    pub refused_by_workload: BTreeMap<u64, WorkloadStats>,
}

impl CounterReader {
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        let maps = maps_dir(bpffs);
        Ok(Self {
            global: open_pinned(&maps, map_names::GLOBAL_STATS)?,
            clusters: open_pinned(&maps, map_names::CLUSTER_STATS)?,
            cluster_live: open_pinned(&maps, map_names::CLUSTER_LIVE)?,
            backend_live: open_pinned(&maps, map_names::BACKEND_LIVE)?,
            workloads: open_pinned(&maps, map_names::WORKLOAD_STATS)?,
        })
    }

    pub fn read(&self) -> Counters {
        let mut counters = Counters::default();
        for (index, name) in global_stat::NAMES.iter().enumerate() {
            let total = self.global.get(&(index as u32), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
            counters.global.insert(name, total);
        }
        for (id, per_cpu) in self.clusters.iter().filter_map(Result::ok) {
            let mut sum = ClusterStats::default();
            for s in per_cpu.iter() {
                sum.connects += s.connects;
                sum.overflows += s.overflows;
                sum.no_backend += s.no_backend;
                sum.udp_datagrams += s.udp_datagrams;
            }
            counters.clusters.insert(id, sum);
        }
        counters.cluster_live =
            self.cluster_live.iter().filter_map(Result::ok).map(|(id, l)| (id, l.connections)).collect();
        counters.backend_live = collect_ok(self.backend_live.iter());
        counters.refused_by_workload = (self.workloads.iter().filter_map(Result::ok))
            .map(|(id, per_cpu)| {
                let sum = per_cpu.iter().fold(WorkloadStats::default(), |sum, s| WorkloadStats {
                    refused_registry: sum.refused_registry + s.refused_registry,
                    refused_scope: sum.refused_scope + s.refused_scope,
                });
                (id, sum)
            })
            .collect();
        counters
    }
}

/// How often a program ran and for how long in all, by program id. The
/// kernel keeps these only while run statistics are enabled
/// (`kernel.bpf_stats_enabled`, or [`enable_program_stats`]).
pub fn program_stats() -> BTreeMap<u32, (u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| (info.id(), (info.run_count(), info.run_time().as_nanos() as u64)))
        .collect()
}

/// Turns on the kernel's per-program run statistics for as long as the
/// returned descriptor lives. They cost a clock read per program run.
pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd, DataplaneError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| DataplaneError::Stats(e.io_error))
}

fn collect_ok<K: Ord + Hash, V>(iter: impl Iterator<Item = Result<(K, V), MapError>>) -> BTreeMap<K, V> {
    iter.filter_map(Result::ok).collect()
}
