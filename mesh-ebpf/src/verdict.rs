//! What a cgroup program answers: allow, or refuse with a counted reason
//! (the caller gets ECONNREFUSED, not the default EPERM); and what a
//! frontend miss means.

use aya_ebpf::helpers::generated::bpf_set_retval;
use mesh_common::{FrontendKey, ServiceIpKey};

use crate::{maps::SERVICE_IPS, policy::refused, stats::count};

pub(crate) const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// What a frontend miss is counted as, by reason.
pub(crate) struct MissStats {
    pub unknown_port: u32,
    pub refused_registry: u32,
    pub passthrough: u32,
}

/// On a frontend miss: refuse when the address is a service IP (only the
/// port is unknown), so no connect to a service address leaves
/// untranslated; refuse what the caller's outbound policy does not let
/// out; pass the rest through.
#[inline(always)]
pub(crate) fn miss(key: &FrontendKey, stats: MissStats) -> i32 {
    let ip = ServiceIpKey { addr: key.addr, family: key.family, _pad: [0; 3] };
    if unsafe { SERVICE_IPS.get(&ip) }.is_some() {
        return refuse_with(stats.unknown_port);
    }
    if refused(key) {
        return refuse_with(stats.refused_registry);
    }
    count(stats.passthrough);
    ALLOW
}

#[inline(always)]
pub(crate) fn refuse_with(stat: u32) -> i32 {
    count(stat);
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REFUSE
}
