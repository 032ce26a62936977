//! The UDP reverse mapping: for each socket and backend it sent to, the
//! service it dialled, so `recvmsg` can show replies as coming from the
//! service. Filled by a connected UDP socket's connect and by each
//! unconnected datagram's sendmsg.

use mesh_common::{Backend, FrontendKey, UdpReverseKey, UdpReverseValue};

use crate::maps::UDP_REVERSE;

#[inline(always)]
pub(crate) fn remember_udp_reverse(cookie: u64, backend: &Backend, service: &FrontendKey) {
    let key = UdpReverseKey { cookie, backend: *backend, _pad: 0 };
    let value = UdpReverseValue { service_addr: service.addr, service_port: service.port, _pad: [0; 6] };
    let _ = UDP_REVERSE.insert(&key, &value, 0);
}
