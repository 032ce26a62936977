//! The UDP reverse mapping: for each socket and backend it sent to, the
//! service it dialled, so `recvmsg` can show replies as coming from the
//! service. Filled by a connected UDP socket's connect and by each
//! unconnected datagram's sendmsg.

use mesh_common::{global_stat, Backend, FrontendKey, UdpReverseKey, UdpReverseValue};

use crate::{maps::UDP_REVERSE, stats::count};

/// Remembers that socket `cookie` reached `backend` through `service`. A
/// socket that reaches the same backend through another service is
/// counted: replies name only the backend, so the latest service shows.
#[inline(always)]
pub(crate) fn remember_udp_reverse(cookie: u64, backend: &Backend, service: &FrontendKey) {
    let key = UdpReverseKey { cookie, backend: *backend, _pad: 0 };
    let value = UdpReverseValue { service_addr: service.addr, service_port: service.port, _pad: [0; 6] };
    if let Some(known) = unsafe { UDP_REVERSE.get(&key) } {
        if known.service_addr == value.service_addr && known.service_port == value.service_port {
            return;
        }
        count(global_stat::UDP_REVERSE_AMBIGUOUS);
    }
    let _ = UDP_REVERSE.insert(&key, &value, 0);
}
