//! The outbound traffic policy of the workload that connects: a
//! REGISTRY_ONLY workload reaches the Services (every frontend) and the
//! registry's other addresses (pods, nodes, resolvers, ServiceEntry
//! blocks), nothing else; a workload whose Sidecar lists `egress` hosts
//! reaches only the service ports they name. The workload is the pod
//! cgroup the calling task is in, at any depth below it.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    maps::lpm_trie::Key,
};
use mesh_common::{
    capacity, FrontendKey, RegistryPrefix, ScopeClusterKey, WorkloadPolicy, WorkloadStats, POLICY_REGISTRY_ONLY,
    REGISTRY_HEAD_BITS,
};

use crate::maps::{POLICY, REGISTRY, SCOPE_CLUSTERS, WORKLOADS, WORKLOAD_STATS};
use crate::stats::count_in;

/// The cgroup id of the caller's workload and its policy; null when the
/// caller is in no known workload (the node, the agent, unmanaged pods).
#[inline(always)]
fn workload(levels: &[u32; capacity::POD_LEVELS], level_count: u32) -> (u64, *const WorkloadPolicy) {
    let own = unsafe { bpf_get_current_cgroup_id() };
    if let Some(policy) = unsafe { WORKLOADS.get(&own) } {
        return (own, policy as *const _);
    }
    let mut i = 0;
    while i < capacity::POD_LEVELS {
        if i as u32 >= level_count {
            break;
        }
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(levels[i] as i32) };
        if let Some(policy) = unsafe { WORKLOADS.get(&id) } {
            return (id, policy as *const _);
        }
        i += 1;
    }
    (0, core::ptr::null())
}

/// Whether the registry holds `key`'s address on its port or on any port.
#[inline(always)]
fn registered(key: &FrontendKey) -> bool {
    let bits = REGISTRY_HEAD_BITS + if key.family == mesh_common::FAMILY_V4 { 32 } else { 128 };
    let on_port = RegistryPrefix { port: key.port, family: key.family, _pad: 0, addr: key.addr };
    if REGISTRY.get(Key::new(bits, on_port)).is_some() {
        return true;
    }
    let any_port = RegistryPrefix { port: 0, ..on_port };
    REGISTRY.get(Key::new(bits, any_port)).is_some()
}

/// Whether a connect or datagram to `key`, which is no Service's, is
/// refused by the caller's outbound policy (counted for its workload).
#[inline(always)]
pub(crate) fn refused(key: &FrontendKey) -> bool {
    let Some(config) = POLICY.get(0) else { return false };
    if config.any_restricted == 0 {
        return false;
    }
    let (id, policy) = workload(&config.pod_levels, config.level_count);
    if policy.is_null() || unsafe { (*policy).flags } & POLICY_REGISTRY_ONLY == 0 || registered(key) {
        return false;
    }
    count_workload(id, |stats| stats.refused_registry += 1);
    true
}

/// Whether a connect or datagram to service port `cluster_id` is refused
/// because the caller's Sidecar egress does not list it (counted for its
/// workload).
#[inline(always)]
pub(crate) fn out_of_scope(cluster_id: u64) -> bool {
    let Some(config) = POLICY.get(0) else { return false };
    if config.any_scoped == 0 {
        return false;
    }
    let (id, policy) = workload(&config.pod_levels, config.level_count);
    if policy.is_null() {
        return false;
    }
    let scope = unsafe { (*policy).scope };
    if scope == 0 || unsafe { SCOPE_CLUSTERS.get(&ScopeClusterKey { scope, _pad: 0, cluster_id }) }.is_some() {
        return false;
    }
    count_workload(id, |stats| stats.refused_scope += 1);
    true
}

#[inline(always)]
fn count_workload(id: u64, bump: impl Fn(&mut WorkloadStats)) {
    count_in(&WORKLOAD_STATS, &id, bump);
}
