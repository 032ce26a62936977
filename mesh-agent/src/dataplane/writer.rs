//! Writes snapshots into the kernel maps by diff, in an order that keeps
//! every frontend pointing at slots that exist, and prunes the live state
//! and counters of clusters and backends that are gone.
//!
//! The writer reaches the maps through [`KernelMap`] and [`KernelKeys`]:
//! aya's maps in the agent, in-memory maps in the tests below.

use super::error::DataplaneError;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuHashMap};
use aya::Pod;
use imbl::OrdMap;
use mesh_common::{
    map_names, Backend, ClusterLive, Frontend, FrontendKey, PolicyConfig, RegistryPrefix, ScopeClusterKey,
    ServiceIpKey, SlotKey, WorkloadPolicy,
};
use mesh_core::diff::{diff, diff_shared};
use mesh_core::outbound::RegistryKey;
use mesh_core::snapshot::Snapshot;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// A map's keys as the kernel yields them: one it could not read is an
/// error in its place.
pub(super) type Keys<'a, K> = Box<dyn Iterator<Item = Result<K, MapError>> + 'a>;
/// A map's entries as the kernel yields them, likewise.
pub(super) type Entries<'a, K, V> = Box<dyn Iterator<Item = Result<(K, V), MapError>> + 'a>;

/// A kernel map the writer lists and removes from.
pub(super) trait KernelKeys<K> {
    fn keys(&self) -> Keys<'_, K>;
    /// Removing a key the map does not hold is an error (ENOENT), as in
    /// the kernel.
    fn remove(&mut self, key: &K) -> Result<(), MapError>;

    /// Removes `keys`; one already gone is no error (removing it was the
    /// point). A map whose removals are costly one by one does them at once.
    fn remove_all(&mut self, keys: &[K]) -> Result<(), MapError> {
        for key in keys {
            match self.remove(key) {
                Err(error) if !is_missing(&error) => return Err(error),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A kernel map the writer also reads and fills.
pub(super) trait KernelMap<K, V>: KernelKeys<K> {
    fn entries(&self) -> Entries<'_, K, V>;
    fn upsert(&mut self, key: &K, value: &V) -> Result<(), MapError>;

    /// Writes `entries` in order; a map whose writes are costly one by one
    /// does them at once.
    fn upsert_all(&mut self, entries: &[(K, V)]) -> Result<(), MapError> {
        entries.iter().try_for_each(|(key, value)| self.upsert(key, value))
    }

    /// One entry; the maps whose entries are looked up one by one (live
    /// state) have it in one call.
    fn lookup(&self, key: &K) -> Result<Option<V>, MapError>
    where
        K: PartialEq,
    {
        for entry in self.entries() {
            let (k, v) = entry?;
            if k == *key {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }
}

impl<K: Pod, V: Pod> KernelKeys<K> for HashMap<MapData, K, V> {
    fn keys(&self) -> Keys<'_, K> {
        Box::new(HashMap::keys(self))
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }
}

impl<K: Pod, V: Pod> KernelMap<K, V> for HashMap<MapData, K, V> {
    fn entries(&self) -> Entries<'_, K, V> {
        Box::new(self.iter())
    }

    fn lookup(&self, key: &K) -> Result<Option<V>, MapError> {
        match self.get(key, 0) {
            Ok(value) => Ok(Some(value)),
            Err(error) if is_missing(&error) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn upsert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        self.insert(key, value, 0)
    }
}

impl<K: Pod, V: Pod> KernelKeys<K> for PerCpuHashMap<MapData, K, V> {
    fn keys(&self) -> Keys<'_, K> {
        Box::new(PerCpuHashMap::keys(self))
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        PerCpuHashMap::remove(self, key)
    }
}

/// The registry trie, keyed as the snapshot keys it.
impl KernelKeys<RegistryKey> for LpmTrie<MapData, RegistryPrefix, u32> {
    fn keys(&self) -> Keys<'_, RegistryKey> {
        Box::new(
            LpmTrie::keys(self).map(|key| key.map(|key| RegistryKey { bits: key.prefix_len(), prefix: key.data() })),
        )
    }

    fn remove(&mut self, key: &RegistryKey) -> Result<(), MapError> {
        LpmTrie::remove(self, &Key::new(key.bits, key.prefix))
    }
}

impl KernelMap<RegistryKey, u32> for LpmTrie<MapData, RegistryPrefix, u32> {
    fn entries(&self) -> Entries<'_, RegistryKey, u32> {
        Box::new(
            self.iter().map(|entry| {
                entry.map(|(key, value)| (RegistryKey { bits: key.prefix_len(), prefix: key.data() }, value))
            }),
        )
    }

    fn upsert(&mut self, key: &RegistryKey, value: &u32) -> Result<(), MapError> {
        self.insert(&Key::new(key.bits, key.prefix), value, 0)
    }
}

/// The one-entry policy array, as a map holding key 0.
impl KernelKeys<u32> for Array<MapData, PolicyConfig> {
    fn keys(&self) -> Keys<'_, u32> {
        Box::new(std::iter::once(Ok(0)))
    }

    /// An array entry cannot go: it is zeroed (nothing restricted).
    fn remove(&mut self, key: &u32) -> Result<(), MapError> {
        self.set(*key, PolicyConfig::default(), 0)
    }
}

impl KernelMap<u32, PolicyConfig> for Array<MapData, PolicyConfig> {
    fn entries(&self) -> Entries<'_, u32, PolicyConfig> {
        Box::new(std::iter::once(self.get(&0, 0).map(|config| (0, config))))
    }

    fn upsert(&mut self, key: &u32, value: &PolicyConfig) -> Result<(), MapError> {
        self.set(*key, value, 0)
    }
}

type Held<K, V> = Box<dyn KernelMap<K, V> + Send>;

/// The maps a [`MapWriter`] writes or prunes.
pub(super) struct WriterMaps {
    pub(super) frontends: Held<FrontendKey, Frontend>,
    pub(super) service_ips: Held<ServiceIpKey, u32>,
    pub(super) slots: Held<SlotKey, Backend>,
    /// Maglev tables by group id.
    pub(super) maglev: Held<u64, Arc<[u16]>>,
    pub(super) backend_live: Held<Backend, u64>,
    pub(super) cluster_live: Held<u64, ClusterLive>,
    /// Per-CPU [`mesh_common::ClusterStats`] by cluster id: only pruned.
    pub(super) cluster_stats: Box<dyn KernelKeys<u64> + Send>,
    pub(super) policy: Held<u32, PolicyConfig>,
    pub(super) workloads: Held<u64, WorkloadPolicy>,
    pub(super) registry: Held<RegistryKey, u32>,
    pub(super) scope_clusters: Held<ScopeClusterKey, u32>,
    /// Per-CPU [`mesh_common::WorkloadStats`] by cgroup id: only pruned.
    pub(super) workload_stats: Box<dyn KernelKeys<u64> + Send>,
}

/// Writes snapshots into the kernel maps. One writer: the reload loop.
pub struct MapWriter {
    maps: WriterMaps,
    /// What the kernel holds, as last read or written.
    current: Snapshot,
    /// Live-state entries the snapshot no longer references, looked up at
    /// each apply until they go: their clusters and backends left the
    /// snapshot (a diff says which), or an earlier agent left them (the
    /// first apply sweeps the maps). Each apply costs the change, not the
    /// maps' size.
    orphans: BTreeSet<IdleEntry>,
    /// Orphans found idle by the last apply: removed only if they still are
    /// at the next one, so a connect that raced the first look cannot lose
    /// its count.
    idle_last_apply: BTreeSet<IdleEntry>,
    /// The next apply sweeps every live-state and counter map.
    sweep: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IdleEntry {
    Cluster(u64),
    Backend(Backend),
}

/// Counts per kind of change written by one apply.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub deletes: usize,
}

impl MapWriter {
    /// A writer of `maps` that starts from what they hold: after a restart
    /// the first apply writes only what changed while no agent was there.
    pub(super) fn take_over(maps: WriterMaps) -> Result<Self, DataplaneError> {
        let mut writer = Self {
            maps,
            current: Snapshot::default(),
            orphans: BTreeSet::new(),
            idle_last_apply: BTreeSet::new(),
            sweep: true,
        };
        writer.resync()?;
        Ok(writer)
    }

    /// What the kernel holds, as last read or written.
    pub(super) fn held(&self) -> &Snapshot {
        &self.current
    }

    /// Makes the kernel hold `desired`. Order keeps every frontend pointing
    /// at slots that exist: slots and tables first, then frontends; removals
    /// in the reverse order. After a failed write, what the kernel holds is
    /// read back, so the next apply diffs against the truth.
    pub fn apply(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let result = self.write_diff(desired);
        if result.is_err() {
            // What the failed write took out never reaches a diff: the next
            // apply looks at every live-state entry.
            self.sweep = true;
            if let Err(error) = self.resync() {
                tracing::error!(%error, "could not read the kernel maps back after a failed write");
            }
        }
        result
    }

    /// Like [`apply`](Self::apply), but removes nothing: what the kernel
    /// holds and `desired` lacks stays. For a first load that may be
    /// incomplete (a file that does not parse, an empty directory) after a
    /// restart, when no last good version is known.
    pub fn apply_additive(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let mut merged = desired.clone();
        merge_missing_shared(&mut merged.frontends, &self.current.frontends);
        merge_missing_shared(&mut merged.service_ips, &self.current.service_ips);
        merge_missing_shared(&mut merged.slots, &self.current.slots);
        merge_missing_shared(&mut merged.maglev, &self.current.maglev);
        merge_missing(&mut merged.outbound.registry, &self.current.outbound.registry);
        merge_missing(&mut merged.outbound.workloads, &self.current.outbound.workloads);
        merge_missing(&mut merged.outbound.scope_clusters, &self.current.outbound.scope_clusters);
        self.apply(&merged)
    }

    fn write_diff(&mut self, desired: &Snapshot) -> Result<ApplyStats, DataplaneError> {
        let slots = diff_shared(&self.current.slots, &desired.slots);
        let maglev = diff_shared(&self.current.maglev, &desired.maglev);
        let frontends = diff_shared(&self.current.frontends, &desired.frontends);
        let service_ips = diff_shared(&self.current.service_ips, &desired.service_ips);
        let registry = diff(&self.current.outbound.registry, &desired.outbound.registry);
        let workloads = diff(&self.current.outbound.workloads, &desired.outbound.workloads);
        let scopes = diff(&self.current.outbound.scope_clusters, &desired.outbound.scope_clusters);
        let policy_changed = self.current.outbound.config != desired.outbound.config;
        let stats = ApplyStats {
            upserts: slots.upserts.len()
                + maglev.upserts.len()
                + frontends.upserts.len()
                + service_ips.upserts.len()
                + registry.upserts.len()
                + workloads.upserts.len()
                + scopes.upserts.len()
                + policy_changed as usize,
            deletes: slots.deletes.len()
                + maglev.deletes.len()
                + frontends.deletes.len()
                + service_ips.deletes.len()
                + registry.deletes.len()
                + workloads.deletes.len()
                + scopes.deletes.len(),
        };
        let maps = &mut self.maps;
        write(&mut *maps.slots, map_names::SLOTS, &slots.upserts)?;
        write(&mut *maps.maglev, map_names::MAGLEV, &maglev.upserts)?;
        write(&mut *maps.service_ips, map_names::SERVICE_IPS, &service_ips.upserts)?;
        write(&mut *maps.frontends, map_names::FRONTENDS, &frontends.upserts)?;
        // Frontends go before their service IP: a port that vanishes is
        // briefly "unknown port" (refused), never passed through untranslated.
        remove(&mut *maps.frontends, map_names::FRONTENDS, &frontends.deletes)?;
        remove(&mut *maps.service_ips, map_names::SERVICE_IPS, &service_ips.deletes)?;
        remove(&mut *maps.maglev, map_names::MAGLEV, &maglev.deletes)?;
        remove(&mut *maps.slots, map_names::SLOTS, &slots.deletes)?;
        // The registry is complete before a workload is restricted by it,
        // and shrinks only after: a switch to REGISTRY_ONLY never refuses
        // a registered address halfway through.
        write(&mut *maps.registry, map_names::REGISTRY, &registry.upserts)?;
        write(&mut *maps.scope_clusters, map_names::SCOPE_CLUSTERS, &scopes.upserts)?;
        write(&mut *maps.workloads, map_names::WORKLOADS, &workloads.upserts)?;
        if policy_changed {
            write(&mut *maps.policy, map_names::POLICY, &[(0, desired.outbound.config)])?;
        }
        remove(&mut *maps.workloads, map_names::WORKLOADS, &workloads.deletes)?;
        remove(&mut *maps.scope_clusters, map_names::SCOPE_CLUSTERS, &scopes.deletes)?;
        remove(&mut *maps.registry, map_names::REGISTRY, &registry.deletes)?;
        // What the snapshot held and no longer does: its live state may go.
        let frontends_gone = (frontends.deletes.iter())
            .chain(frontends.upserts.iter().map(|(key, _)| key))
            .filter_map(|key| self.current.frontends.get(key))
            .flat_map(|f| [IdleEntry::Cluster(f.cluster_id), IdleEntry::Cluster(f.group_id)]);
        let slots_gone = (slots.deletes.iter())
            .chain(slots.upserts.iter().map(|(key, _)| key))
            .filter_map(|key| self.current.slots.get(key))
            .map(|backend| IdleEntry::Backend(*backend));
        let gone: Vec<IdleEntry> = frontends_gone.chain(slots_gone).collect();
        remove(&mut *self.maps.workload_stats, map_names::WORKLOAD_STATS, &workloads.deletes)?;
        self.current.outbound.registry = desired.outbound.registry.clone();
        self.current.outbound.scope_clusters = desired.outbound.scope_clusters.clone();
        self.current.outbound.workloads = desired.outbound.workloads.clone();
        self.current.outbound.config = desired.outbound.config;
        self.current.frontends = desired.frontends.clone();
        self.current.service_ips = desired.service_ips.clone();
        self.current.slots = desired.slots.clone();
        self.current.maglev = desired.maglev.clone();
        self.forget_idle_state(desired, gone)?;
        Ok(stats)
    }

    /// Reads what the kernel maps hold into `current`.
    fn resync(&mut self) -> Result<(), DataplaneError> {
        self.current.frontends = read_all(&*self.maps.frontends, map_names::FRONTENDS)?;
        self.current.service_ips = read_all(&*self.maps.service_ips, map_names::SERVICE_IPS)?;
        self.current.slots = read_all(&*self.maps.slots, map_names::SLOTS)?;
        self.current.maglev = read_all(&*self.maps.maglev, map_names::MAGLEV)?;
        self.current.outbound.registry = read_all(&*self.maps.registry, map_names::REGISTRY)?;
        self.current.outbound.workloads = read_all(&*self.maps.workloads, map_names::WORKLOADS)?;
        self.current.outbound.scope_clusters = read_all(&*self.maps.scope_clusters, map_names::SCOPE_CLUSTERS)?;
        let policy: BTreeMap<u32, PolicyConfig> = read_all(&*self.maps.policy, map_names::POLICY)?;
        self.current.outbound.config = policy.get(&0).copied().unwrap_or_default();
        Ok(())
    }

    /// Drops live-state and counter entries of clusters and backends the
    /// snapshot no longer has, once no connection holds them and they were
    /// already idle at the previous apply.
    /// `gone`: what this apply took out of the maps.
    fn forget_idle_state(&mut self, desired: &Snapshot, gone: Vec<IdleEntry>) -> Result<(), DataplaneError> {
        if self.sweep {
            self.sweep_orphans(desired)?;
            self.sweep = false;
        }
        if self.orphans.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let ids: HashSet<u64> = desired.frontends.values().flat_map(|f| [f.cluster_id, f.group_id]).collect();
        let maps = &mut self.maps;
        for entry in gone {
            // Per-CPU statistics of clusters that are gone: nothing counts on them.
            if let IdleEntry::Cluster(id) = entry {
                if !ids.contains(&id) {
                    remove(&mut *maps.cluster_stats, map_names::CLUSTER_STATS, &[id])?;
                }
            }
            self.orphans.insert(entry);
        }
        let mut idle_now = BTreeSet::new();
        let mut settled = Vec::new();
        for entry in &self.orphans {
            let (back, live) = match entry {
                IdleEntry::Cluster(id) => {
                    (ids.contains(id), lookup(&*maps.cluster_live, map_names::CLUSTER_LIVE, id)?.map(|l| l.connections))
                }
                IdleEntry::Backend(b) => {
                    (desired.holds_backend(b), lookup(&*maps.backend_live, map_names::BACKEND_LIVE, b)?)
                }
            };
            match (back, live) {
                // Referenced again, or no state left: nothing to forget.
                (true, _) | (false, None) => settled.push(*entry),
                (false, Some(0)) if self.idle_last_apply.contains(entry) => {
                    match entry {
                        IdleEntry::Cluster(id) => remove(&mut *maps.cluster_live, map_names::CLUSTER_LIVE, &[*id])?,
                        IdleEntry::Backend(b) => remove(&mut *maps.backend_live, map_names::BACKEND_LIVE, &[*b])?,
                    }
                    settled.push(*entry);
                }
                (false, Some(0)) => drop(idle_now.insert(*entry)),
                (false, Some(_)) => {}
            }
        }
        for entry in settled {
            self.orphans.remove(&entry);
        }
        self.idle_last_apply = idle_now;
        Ok(())
    }

    /// Makes orphans of every live-state entry the snapshot does not
    /// reference, and drops the counters of clusters and workloads it does
    /// not have: what an earlier agent left behind.
    fn sweep_orphans(&mut self, desired: &Snapshot) -> Result<(), DataplaneError> {
        let ids: HashSet<u64> = desired.frontends.values().flat_map(|f| [f.cluster_id, f.group_id]).collect();
        let maps = &mut self.maps;
        let clusters = maps.cluster_live.keys().filter_map(Result::ok).filter(|id| !ids.contains(id));
        let backends = maps.backend_live.keys().filter_map(Result::ok).filter(|b| !desired.holds_backend(b));
        let orphans: Vec<IdleEntry> =
            clusters.map(IdleEntry::Cluster).chain(backends.map(IdleEntry::Backend)).collect();
        self.orphans.extend(orphans);
        let gone_stats: Vec<u64> =
            maps.cluster_stats.keys().filter_map(Result::ok).filter(|id| !ids.contains(id)).collect();
        remove(&mut *maps.cluster_stats, map_names::CLUSTER_STATS, &gone_stats)?;
        let gone_workloads: Vec<u64> = (maps.workload_stats.keys().filter_map(Result::ok))
            .filter(|id| !desired.outbound.workloads.contains_key(id))
            .collect();
        remove(&mut *maps.workload_stats, map_names::WORKLOAD_STATS, &gone_workloads)
    }
}

fn read_all<K, V, C: FromIterator<(K, V)>>(map: &dyn KernelMap<K, V>, name: &'static str) -> Result<C, DataplaneError> {
    map.entries().map(|entry| entry.map_err(|source| DataplaneError::Map { name, source })).collect()
}

fn lookup<K: PartialEq, V>(
    map: &dyn KernelMap<K, V>,
    name: &'static str,
    key: &K,
) -> Result<Option<V>, DataplaneError> {
    map.lookup(key).map_err(|source| DataplaneError::Map { name, source })
}

fn write<K, V>(map: &mut dyn KernelMap<K, V>, name: &'static str, upserts: &[(K, V)]) -> Result<(), DataplaneError> {
    map.upsert_all(upserts).map_err(|source| DataplaneError::Map { name, source })
}

/// Removes `keys` ([`KernelKeys::remove_all`]: one already gone is no error).
fn remove<K>(map: &mut dyn KernelKeys<K>, name: &'static str, keys: &[K]) -> Result<(), DataplaneError> {
    map.remove_all(keys).map_err(|source| DataplaneError::Map { name, source })
}

/// A key the map does not hold (aya reports ENOENT from the syscall).
pub(super) fn is_missing(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound)
        || matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn merge_missing_shared<K: Ord + Clone, V: Clone>(into: &mut OrdMap<K, V>, from: &OrdMap<K, V>) {
    for (key, value) in from {
        if !into.contains_key(key) {
            into.insert(key.clone(), value.clone());
        }
    }
}

fn merge_missing<K: Ord + Clone, V: Clone>(into: &mut BTreeMap<K, V>, from: &BTreeMap<K, V>) {
    for (key, value) in from {
        into.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::sys::SyscallError;
    use mesh_common::ClusterStats;
    use std::fmt::Debug;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    /// One write the writer made: (map, "upsert" or "remove", key).
    type Write = (&'static str, &'static str, String);

    /// An in-memory stand-in for one kernel map. Clones share the entries,
    /// so the test keeps a handle on what the writer holds; all maps of one
    /// [`Kernel`] share one log of writes, in the order made.
    struct MemMap<K, V> {
        name: &'static str,
        entries: Arc<Mutex<BTreeMap<K, V>>>,
        fail_writes: Arc<AtomicBool>,
        log: Arc<Mutex<Vec<Write>>>,
    }

    impl<K, V> Clone for MemMap<K, V> {
        fn clone(&self) -> Self {
            Self {
                name: self.name,
                entries: self.entries.clone(),
                fail_writes: self.fail_writes.clone(),
                log: self.log.clone(),
            }
        }
    }

    fn syscall_error(call: &'static str, errno: i32) -> MapError {
        MapError::SyscallError(SyscallError { call, io_error: std::io::Error::from_raw_os_error(errno) })
    }

    impl<K: Ord + Copy + Debug, V: Clone> MemMap<K, V> {
        fn new(name: &'static str, log: &Arc<Mutex<Vec<Write>>>) -> Self {
            Self { name, entries: Arc::default(), fail_writes: Arc::default(), log: log.clone() }
        }

        /// From now on every upsert and remove fails (E2BIG) and changes nothing.
        fn fail_writes(&self, fail: bool) {
            self.fail_writes.store(fail, Ordering::SeqCst);
        }

        fn contents(&self) -> BTreeMap<K, V> {
            self.entries.lock().unwrap().clone()
        }

        /// Sets an entry behind the writer's back, as the kernel programs do.
        fn set(&self, key: K, value: V) {
            self.entries.lock().unwrap().insert(key, value);
        }

        fn written(&self, kind: &'static str, key: &K, call: &'static str) -> Result<(), MapError> {
            if self.fail_writes.load(Ordering::SeqCst) {
                return Err(syscall_error(call, libc::E2BIG));
            }
            self.log.lock().unwrap().push((self.name, kind, format!("{key:?}")));
            Ok(())
        }
    }

    impl<K: Ord + Copy + Debug + 'static, V: Clone> KernelKeys<K> for MemMap<K, V> {
        fn keys(&self) -> Keys<'_, K> {
            Box::new(self.contents().into_keys().map(Ok))
        }

        fn remove(&mut self, key: &K) -> Result<(), MapError> {
            self.written("remove", key, "bpf_map_delete_elem")?;
            match self.entries.lock().unwrap().remove(key) {
                Some(_) => Ok(()),
                None => Err(syscall_error("bpf_map_delete_elem", libc::ENOENT)),
            }
        }
    }

    impl<K: Ord + Copy + Debug + 'static, V: Clone + 'static> KernelMap<K, V> for MemMap<K, V> {
        fn entries(&self) -> Entries<'_, K, V> {
            Box::new(self.contents().into_iter().map(Ok))
        }

        fn upsert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
            self.written("upsert", key, "bpf_map_update_elem")?;
            self.entries.lock().unwrap().insert(*key, value.clone());
            Ok(())
        }
    }

    /// The maps a writer is given, with the test's handles on them.
    struct Kernel {
        frontends: MemMap<FrontendKey, Frontend>,
        service_ips: MemMap<ServiceIpKey, u32>,
        slots: MemMap<SlotKey, Backend>,
        maglev: MemMap<u64, Arc<[u16]>>,
        backend_live: MemMap<Backend, u64>,
        cluster_live: MemMap<u64, ClusterLive>,
        cluster_stats: MemMap<u64, ClusterStats>,
        policy: MemMap<u32, PolicyConfig>,
        workloads: MemMap<u64, WorkloadPolicy>,
        registry: MemMap<RegistryKey, u32>,
        scope_clusters: MemMap<ScopeClusterKey, u32>,
        workload_stats: MemMap<u64, mesh_common::WorkloadStats>,
        log: Arc<Mutex<Vec<Write>>>,
    }

    impl Kernel {
        fn new() -> Self {
            let log = Arc::default();
            Self {
                frontends: MemMap::new(map_names::FRONTENDS, &log),
                service_ips: MemMap::new(map_names::SERVICE_IPS, &log),
                slots: MemMap::new(map_names::SLOTS, &log),
                maglev: MemMap::new(map_names::MAGLEV, &log),
                backend_live: MemMap::new(map_names::BACKEND_LIVE, &log),
                cluster_live: MemMap::new(map_names::CLUSTER_LIVE, &log),
                cluster_stats: MemMap::new(map_names::CLUSTER_STATS, &log),
                policy: MemMap::new(map_names::POLICY, &log),
                workloads: MemMap::new(map_names::WORKLOADS, &log),
                registry: MemMap::new(map_names::REGISTRY, &log),
                scope_clusters: MemMap::new(map_names::SCOPE_CLUSTERS, &log),
                workload_stats: MemMap::new(map_names::WORKLOAD_STATS, &log),
                log,
            }
        }

        /// A kernel whose maps already hold `snapshot` (an earlier agent's).
        fn holding(snapshot: &Snapshot) -> Self {
            let kernel = Self::new();
            *kernel.frontends.entries.lock().unwrap() = snapshot.frontends.clone().into_iter().collect();
            *kernel.service_ips.entries.lock().unwrap() = snapshot.service_ips.clone().into_iter().collect();
            *kernel.slots.entries.lock().unwrap() = snapshot.slots.clone().into_iter().collect();
            *kernel.maglev.entries.lock().unwrap() = snapshot.maglev.clone().into_iter().collect();
            kernel
        }

        fn writer(&self) -> MapWriter {
            MapWriter::take_over(WriterMaps {
                frontends: Box::new(self.frontends.clone()),
                service_ips: Box::new(self.service_ips.clone()),
                slots: Box::new(self.slots.clone()),
                maglev: Box::new(self.maglev.clone()),
                backend_live: Box::new(self.backend_live.clone()),
                cluster_live: Box::new(self.cluster_live.clone()),
                cluster_stats: Box::new(self.cluster_stats.clone()),
                policy: Box::new(self.policy.clone()),
                workloads: Box::new(self.workloads.clone()),
                registry: Box::new(self.registry.clone()),
                scope_clusters: Box::new(self.scope_clusters.clone()),
                workload_stats: Box::new(self.workload_stats.clone()),
            })
            .expect("in-memory maps read")
        }

        /// The writes made since the last call.
        fn take_log(&self) -> Vec<Write> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }

        /// Asserts that the written maps hold `snapshot`'s four maps.
        fn assert_holds(&self, snapshot: &Snapshot) {
            assert_eq!(self.frontends.contents(), snapshot.frontends.clone().into_iter().collect(), "frontends");
            assert_eq!(self.service_ips.contents(), snapshot.service_ips.clone().into_iter().collect(), "service IPs");
            assert_eq!(self.slots.contents(), snapshot.slots.clone().into_iter().collect(), "slots");
            assert_eq!(self.maglev.contents(), snapshot.maglev.clone().into_iter().collect(), "maglev");
        }
    }

    fn ip(last: u32) -> [u32; 4] {
        [u32::from_be_bytes([10, 96, 0, last as u8]), 0, 0, 0]
    }

    fn backend(last: u8) -> Backend {
        Backend { addr: [u32::from_be_bytes([10, 0, 0, last]), 0, 0, 0], port: 8080u16.to_be(), family: 4, _pad: 0 }
    }

    fn frontend_key(service: u32, port: u16) -> FrontendKey {
        FrontendKey { addr: ip(service), port: port.to_be(), proto: 6, family: 4 }
    }

    fn service_ip(service: u32) -> ServiceIpKey {
        ServiceIpKey { addr: ip(service), family: 4, _pad: [0; 3] }
    }

    fn slot(group_id: u64, index: u32) -> SlotKey {
        SlotKey { group_id, index, _pad: 0 }
    }

    /// A snapshot with one frontend per `(service, port, cluster, backends)`:
    /// cluster `c` uses group `c`, its backends in slots and a Maglev table
    /// with one entry per slot.
    fn snapshot(services: &[(u32, u16, u64, &[u8])]) -> Snapshot {
        let mut s = Snapshot::default();
        for &(service, port, cluster, backends) in services {
            let frontend = Frontend {
                group_id: cluster,
                cluster_id: cluster,
                backend_count: backends.len() as u32,
                maglev_size: backends.len() as u32,
                ..Default::default()
            };
            s.frontends.insert(frontend_key(service, port), frontend);
            *s.service_ips.entry(service_ip(service)).or_insert(0) += 1;
            for (index, &b) in backends.iter().enumerate() {
                s.slots.insert(slot(cluster, index as u32), backend(b));
            }
            s.maglev.insert(cluster, (0..backends.len() as u16).collect());
        }
        s
    }

    fn upsert(map: &'static str, key: impl Debug) -> Write {
        (map, "upsert", format!("{key:?}"))
    }

    fn remove(map: &'static str, key: impl Debug) -> Write {
        (map, "remove", format!("{key:?}"))
    }

    /// The maps of the writes, in order, with runs of one map folded.
    fn map_order(log: &[Write]) -> Vec<(&'static str, &'static str)> {
        let mut order: Vec<(&str, &str)> = log.iter().map(|(map, kind, _)| (*map, *kind)).collect();
        order.dedup();
        order
    }

    #[test]
    fn only_the_diff_is_written() {
        let before = snapshot(&[(1, 80, 1, &[1, 2]), (2, 80, 2, &[3])]);
        let kernel = Kernel::holding(&before);
        let mut writer = kernel.writer();
        assert!(kernel.take_log().is_empty(), "taking over reads, it writes nothing");

        // Service 1's second backend changes (its Maglev table of slots
        // does not); service 1 gets a third; service 2 a second port.
        let after = snapshot(&[(1, 80, 1, &[1, 4]), (2, 80, 2, &[3]), (2, 443, 2, &[3])]);
        let stats = writer.apply(&after).unwrap();

        assert_eq!(
            kernel.take_log(),
            vec![
                upsert(map_names::SLOTS, slot(1, 1)),
                upsert(map_names::SERVICE_IPS, service_ip(2)),
                upsert(map_names::FRONTENDS, frontend_key(2, 443)),
            ]
        );
        assert_eq!(stats, ApplyStats { upserts: 3, deletes: 0 });
        kernel.assert_holds(&after);

        let more = snapshot(&[(1, 80, 1, &[1, 4, 5]), (2, 80, 2, &[3]), (2, 443, 2, &[3])]);
        writer.apply(&more).unwrap();
        assert_eq!(
            kernel.take_log(),
            vec![
                upsert(map_names::SLOTS, slot(1, 2)),
                upsert(map_names::MAGLEV, 1u64),
                upsert(map_names::FRONTENDS, frontend_key(1, 80))
            ]
        );
        let stats = writer.apply(&after).unwrap();
        assert_eq!(stats, ApplyStats { upserts: 2, deletes: 1 });
        kernel.take_log();
        kernel.assert_holds(&after);

        assert_eq!(writer.apply(&after).unwrap(), ApplyStats::default());
        assert!(kernel.take_log().is_empty(), "the same snapshot again writes nothing");
    }

    #[test]
    fn slots_and_maglev_go_in_before_frontends_and_frontends_leave_before_their_service_ip() {
        let kernel = Kernel::new();
        let mut writer = kernel.writer();
        let one = snapshot(&[(1, 80, 1, &[1, 2])]);

        writer.apply(&one).unwrap();
        assert_eq!(
            map_order(&kernel.take_log()),
            vec![
                (map_names::SLOTS, "upsert"),
                (map_names::MAGLEV, "upsert"),
                (map_names::SERVICE_IPS, "upsert"),
                (map_names::FRONTENDS, "upsert"),
            ]
        );

        let stats = writer.apply(&Snapshot::default()).unwrap();
        assert_eq!(
            map_order(&kernel.take_log()),
            vec![
                (map_names::FRONTENDS, "remove"),
                (map_names::SERVICE_IPS, "remove"),
                (map_names::MAGLEV, "remove"),
                (map_names::SLOTS, "remove"),
                // The gone cluster's counters, last.
                (map_names::CLUSTER_STATS, "remove"),
            ]
        );
        assert_eq!(stats, ApplyStats { upserts: 0, deletes: 5 });
        kernel.assert_holds(&Snapshot::default());
    }

    #[test]
    fn after_a_failed_write_the_next_apply_diffs_against_what_the_kernel_holds() {
        let kernel = Kernel::new();
        let mut writer = kernel.writer();
        let desired = snapshot(&[(1, 80, 1, &[1, 2]), (2, 80, 2, &[3])]);

        // Slots, Maglev and service IPs go in; the first frontend fails.
        kernel.frontends.fail_writes(true);
        let error = writer.apply(&desired).unwrap_err();
        assert!(matches!(error, DataplaneError::Map { name: map_names::FRONTENDS, .. }), "{error}");
        let mut partial = desired.clone();
        partial.frontends = OrdMap::new();
        kernel.assert_holds(&partial);
        assert_eq!(writer.held().frontends, partial.frontends, "the writer read the maps back");
        assert_eq!(writer.held().slots, partial.slots);
        assert_eq!(writer.held().maglev, partial.maglev);
        assert_eq!(writer.held().service_ips, partial.service_ips);
        kernel.take_log();

        // The retry writes only what is missing: the frontends.
        kernel.frontends.fail_writes(false);
        let stats = writer.apply(&desired).unwrap();
        assert_eq!(
            kernel.take_log(),
            vec![upsert(map_names::FRONTENDS, frontend_key(1, 80)), upsert(map_names::FRONTENDS, frontend_key(2, 80))]
        );
        assert_eq!(stats, ApplyStats { upserts: 2, deletes: 0 });
        kernel.assert_holds(&desired);
    }

    #[test]
    fn a_failed_removal_is_read_back_too() {
        let before = snapshot(&[(1, 80, 1, &[1]), (2, 80, 2, &[2])]);
        let kernel = Kernel::holding(&before);
        let mut writer = kernel.writer();
        let after = snapshot(&[(1, 80, 1, &[1])]);

        // Service 2's frontend and service IP leave; its Maglev entry
        // cannot, so its slot, removed after, stays too.
        kernel.maglev.fail_writes(true);
        assert!(writer.apply(&after).is_err());
        assert_eq!(writer.held().frontends, after.frontends);
        assert_eq!(writer.held().service_ips, after.service_ips);
        assert_eq!(writer.held().maglev, before.maglev, "the entries the kernel still holds are known");
        assert_eq!(writer.held().slots, before.slots);
        kernel.take_log();

        kernel.maglev.fail_writes(false);
        assert_eq!(writer.apply(&after).unwrap(), ApplyStats { upserts: 0, deletes: 2 });
        assert_eq!(kernel.take_log(), vec![remove(map_names::MAGLEV, 2u64), remove(map_names::SLOTS, slot(2, 0))]);
        kernel.assert_holds(&after);
    }

    #[test]
    fn apply_additive_removes_nothing() {
        let before = snapshot(&[(1, 80, 1, &[1, 2]), (2, 80, 2, &[3])]);
        let kernel = Kernel::holding(&before);
        let mut writer = kernel.writer();

        // An incomplete first load: only service 1, with another backend.
        let partial = snapshot(&[(1, 80, 1, &[1, 4])]);
        let stats = writer.apply_additive(&partial).unwrap();

        let log = kernel.take_log();
        assert!(log.iter().all(|(_, kind, _)| *kind == "upsert"), "{log:?}");
        assert_eq!(log, vec![upsert(map_names::SLOTS, slot(1, 1))]);
        assert_eq!(stats, ApplyStats { upserts: 1, deletes: 0 });
        let mut expected = before.clone();
        expected.slots.extend(partial.slots.clone());
        expected.maglev.extend(partial.maglev.clone());
        kernel.assert_holds(&expected);

        // A later full apply removes what is gone.
        let stats = writer.apply(&partial).unwrap();
        assert_eq!(stats, ApplyStats { upserts: 0, deletes: 4 });
        kernel.assert_holds(&partial);
    }

    #[test]
    fn idle_live_state_goes_only_when_idle_at_two_applies_in_a_row() {
        let desired = snapshot(&[(1, 80, 1, &[1])]);
        let kernel = Kernel::holding(&desired);
        let live = |connections| ClusterLive { connections, ..Default::default() };
        // Cluster 1 and backend 1 are in the snapshot: kept, even when idle.
        kernel.cluster_live.set(1, live(0));
        kernel.backend_live.set(backend(1), 0);
        // Gone from the snapshot: cluster 7 and backend 7 idle, cluster 8
        // and backend 8 still holding connections.
        kernel.cluster_live.set(7, live(0));
        kernel.backend_live.set(backend(7), 0);
        kernel.cluster_live.set(8, live(2));
        kernel.backend_live.set(backend(8), 1);
        let mut writer = kernel.writer();

        // First look: 7 is idle, but a connect may have raced it.
        writer.apply(&desired).unwrap();
        assert!(kernel.take_log().is_empty());
        assert_eq!(kernel.cluster_live.contents().len(), 3);
        assert_eq!(kernel.backend_live.contents().len(), 3);

        // 8's connections close; a connect through 7 races in.
        kernel.cluster_live.set(8, live(0));
        kernel.backend_live.set(backend(8), 0);
        kernel.cluster_live.set(7, live(1));
        writer.apply(&desired).unwrap();
        assert_eq!(kernel.take_log(), vec![remove(map_names::BACKEND_LIVE, backend(7))]);

        // 7's connection closes: idle now, but not at the last apply.
        kernel.cluster_live.set(7, live(0));
        writer.apply(&desired).unwrap();
        assert_eq!(
            kernel.take_log(),
            vec![remove(map_names::CLUSTER_LIVE, 8u64), remove(map_names::BACKEND_LIVE, backend(8))]
        );

        writer.apply(&desired).unwrap();
        assert_eq!(kernel.take_log(), vec![remove(map_names::CLUSTER_LIVE, 7u64)]);
        assert_eq!(kernel.cluster_live.contents().into_keys().collect::<Vec<_>>(), vec![1]);
        assert_eq!(kernel.backend_live.contents().into_keys().collect::<Vec<_>>(), vec![backend(1)]);
    }

    #[test]
    fn statistics_of_gone_clusters_go_at_the_first_apply() {
        let desired = snapshot(&[(1, 80, 1, &[1])]);
        let kernel = Kernel::holding(&desired);
        kernel.cluster_stats.set(1, ClusterStats::default());
        kernel.cluster_stats.set(9, ClusterStats { connects: 5, ..Default::default() });
        let mut writer = kernel.writer();

        writer.apply(&desired).unwrap();
        assert_eq!(kernel.take_log(), vec![remove(map_names::CLUSTER_STATS, 9u64)]);
        assert_eq!(kernel.cluster_stats.contents().into_keys().collect::<Vec<_>>(), vec![1]);
    }
}
