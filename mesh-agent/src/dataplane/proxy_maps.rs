//! The two maps between the kernel and the node proxy: where captured
//! connections go, and where each captured connection was going.

use super::bpffs::{maps_dir, open_pinned};
use super::error::DataplaneError;
use aya::maps::{HashMap, MapData};
use mesh_common::{map_names, ConnKey, OriginalDst, ProxyTarget};
use std::path::Path;

/// Tells the kernel where captured connections go: the node proxy's
/// address per family (none: that family is not captured) and port.
pub fn set_proxy_target(
    bpffs: &Path,
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
    port: u16,
) -> Result<(), DataplaneError> {
    let mut map: aya::maps::Array<MapData, ProxyTarget> = open_pinned(&maps_dir(bpffs), map_names::PROXY)?;
    let target = ProxyTarget {
        addr4: v4.map(|ip| u32::from_ne_bytes(ip.octets())).unwrap_or(0),
        addr6: v6.map(|ip| mesh_core::snapshot::ip_words(ip.into())).unwrap_or_default(),
        port: port.to_be(),
        has_v4: v4.is_some() as u8,
        has_v6: v6.is_some() as u8,
    };
    map.set(0, target, 0).map_err(|source| DataplaneError::Map { name: map_names::PROXY, source })
}

/// Puts the proxy's listening socket of each family where the kernel
/// looks for it before capturing a connect: while it is there (open), the
/// proxy listens; once it closes (the agent is gone), the kernel fails open
/// or refuses (see `--l7-fail-open`).
pub fn register_proxy_listeners(bpffs: &Path, listeners: &[tokio::net::TcpListener]) -> Result<(), DataplaneError> {
    let mut map: aya::maps::SockMap<MapData> = open_pinned(&maps_dir(bpffs), map_names::PROXY_LISTENERS)?;
    for listener in listeners {
        let ipv4 = listener.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
        let slot = if ipv4 { mesh_common::PROXY_LISTENER_V4 } else { mesh_common::PROXY_LISTENER_V6 };
        map.set(slot, listener, 0)
            .map_err(|source| DataplaneError::Map { name: map_names::PROXY_LISTENERS, source })?;
    }
    Ok(())
}

/// Finds where a captured connection was going, by the client address the
/// proxy sees, and forgets the entry: each is read once, at accept.
pub struct OriginalDstTable {
    map: std::sync::Mutex<HashMap<MapData, ConnKey, OriginalDst>>,
}

impl OriginalDstTable {
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        Ok(Self { map: std::sync::Mutex::new(open_pinned(&maps_dir(bpffs), map_names::ORIGINAL_DST)?) })
    }

    pub fn take(&self, peer: std::net::SocketAddr) -> Option<std::net::SocketAddr> {
        // A v4 client on a dual-stack listener shows as ::ffff:a.b.c.d.
        let peer_ip = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(peer.ip()),
            v4 => v4,
        };
        let key = ConnKey {
            addr: mesh_core::snapshot::ip_words(peer_ip),
            port: peer.port().to_be(),
            family: if peer_ip.is_ipv4() { mesh_common::FAMILY_V4 } else { mesh_common::FAMILY_V6 },
            _pad: 0,
        };
        let mut map = crate::sync::lock(&self.map);
        let original = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(std::net::SocketAddr::new(
            mesh_core::snapshot::words_ip(original.addr, original.family),
            u16::from_be(original.port),
        ))
    }
}
