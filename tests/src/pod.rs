//! Pods: network namespaces wired to the node namespace by a veth pair.
//!
//! Routing uses fixed MAC addresses and permanent neighbour entries, so no
//! ARP or neighbour discovery ever runs: the node side has no IP address to
//! answer or send ARP with, and proxy ARP would add a random delay of up to
//! 0.8 s to the first packet. The pod's next hop is a link-local gateway
//! (169.254.1.1 / fe80::1) that resolves to the node side's MAC.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::server::{self, Registry, Server, TcpProto};
use crate::system;

/// Pod address ranges that pods route to the node; nothing else is routed.
const POD_CIDR_V4: &str = "10.244.0.0/16";
const POD_CIDR_V6: &str = "fd00:244::/64";
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";
/// MAC of every node-side veth (each veth is its own link, so they can share it).
const NODE_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// A pod network namespace. Cheap to clone; lives until its `TestEnv` drops.
#[derive(Clone)]
pub struct Pod {
    name: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    netns: String,
    node_netns: String,
    index: usize,
    servers: Arc<Registry>,
}

/// Everything needed to wire one pod to the node.
pub(crate) struct PodSpec<'a> {
    pub name: &'a str,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub index: usize,
    pub netns: String,
    pub node_netns: &'a str,
}

impl Pod {
    /// Creates the pod namespace and its veth link to the node namespace.
    pub(crate) fn create(spec: PodSpec<'_>, servers: Arc<Registry>) -> Result<Pod> {
        system::netns_add(&spec.netns)?;
        let node_veth = format!("veth{}", spec.index);
        let pod_mac = pod_mac(spec.index);
        system::ip_batch(spec.node_netns, &node_side(&spec, &node_veth, &pod_mac))
            .with_context(|| format!("wiring pod {} (node side)", spec.name))?;
        system::ip_batch(&spec.netns, &pod_side(&spec))
            .with_context(|| format!("wiring pod {} (pod side)", spec.name))?;
        Ok(Pod {
            name: spec.name.to_string(),
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            netns: spec.netns,
            node_netns: spec.node_netns.to_string(),
            index: spec.index,
            servers,
        })
    }

    /// Adds more addresses (IPv4 or IPv6, host routes on the node) to the
    /// pod's eth0, e.g. many client sources for affinity tests.
    pub fn add_addresses(&self, addresses: &[&str]) -> Result<()> {
        let (veth, mac) = (format!("veth{}", self.index), pod_mac(self.index));
        let mut pod_cmds = Vec::new();
        let mut node_cmds = Vec::new();
        for address in addresses {
            let ip: std::net::IpAddr = address.parse().with_context(|| format!("bad address {address:?}"))?;
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            pod_cmds.push(format!("addr add {ip}/{prefix} dev eth0{}", if ip.is_ipv6() { " nodad" } else { "" }));
            node_cmds.push(format!("neigh add {ip} lladdr {mac} dev {veth} nud permanent"));
            node_cmds.push(format!("route add {ip}/{prefix} dev {veth}"));
        }
        system::ip_batch(&self.netns, &pod_cmds).with_context(|| format!("adding addresses to pod {}", self.name))?;
        system::ip_batch(&self.node_netns, &node_cmds)
            .with_context(|| format!("routing pod {}'s new addresses", self.name))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Path of the namespace (`/var/run/netns/<name>`), for `setns`.
    pub fn netns_path(&self) -> PathBuf {
        system::netns_path(&self.netns)
    }

    /// Line server: answers every line with `<pod name>\n` until EOF.
    pub fn serve_tcp(&self, port: u16) -> Server {
        self.start_tcp(port, TcpProto::Lines)
    }

    /// HTTP/1.1 keep-alive server; every response body is the pod name.
    pub fn serve_http(&self, port: u16) -> Server {
        self.start_tcp(port, TcpProto::Http)
    }

    /// HTTP/2 (prior knowledge) server on the pod's IPv4 address; gRPC
    /// requests get a message and `grpc-status: 0` trailers.
    pub fn serve_h2(&self, port: u16) -> crate::h2::H2Server {
        crate::h2::start(&self.netns_path(), SocketAddr::new(self.ipv4.into(), port), &self.name)
            .unwrap_or_else(|e| panic!("pod {}: HTTP/2 server on port {port}: {e:#}", self.name))
    }

    /// A real gRPC server (tonic) on the pod's IPv4 address, with a
    /// bidirectional echo method ([`crate::grpc::CHAT`]).
    pub fn serve_grpc(&self, port: u16) -> crate::grpc::GrpcServer {
        crate::grpc::start(&self.netns_path(), SocketAddr::new(self.ipv4.into(), port))
            .unwrap_or_else(|e| panic!("pod {}: gRPC server on port {port}: {e:#}", self.name))
    }

    /// An HTTP/1.1 backend on the pod's IPv4 address that records requests
    /// as they arrive ([`crate::recorder`]).
    pub fn serve_recorder(&self, port: u16) -> crate::recorder::Recorder {
        crate::recorder::start(&self.netns_path(), SocketAddr::new(self.ipv4.into(), port))
            .unwrap_or_else(|e| panic!("pod {}: recording server on port {port}: {e:#}", self.name))
    }

    /// HTTP/1.1 over TLS on the pod's IPv4 address with the certificate of
    /// `pki`; with `require_client_cert`, only clients signed by its CA.
    pub fn serve_tls(&self, port: u16, pki: &crate::tls::Pki, require_client_cert: bool) -> crate::tls::TlsServer {
        crate::tls::start(
            &self.netns_path(),
            SocketAddr::new(self.ipv4.into(), port),
            &self.name,
            pki,
            require_client_cert,
        )
        .unwrap_or_else(|e| panic!("pod {}: TLS server on port {port}: {e:#}", self.name))
    }

    /// A DNS server on the pod's IPv4 address, answering from a table the
    /// test sets ([`crate::dns`]).
    pub fn serve_dns(&self, port: u16) -> crate::dns::DnsServer {
        crate::dns::start(&self.netns_path(), SocketAddr::new(self.ipv4.into(), port))
            .unwrap_or_else(|e| panic!("pod {}: DNS server on port {port}: {e:#}", self.name))
    }

    /// Answers every datagram with the pod name.
    pub fn serve_udp(&self, port: u16) -> Server {
        server::start_udp(&self.servers, &self.netns_path(), self.addrs(port), &self.name)
            .unwrap_or_else(|e| panic!("pod {}: UDP server on port {port}: {e:#}", self.name))
    }

    fn start_tcp(&self, port: u16, proto: TcpProto) -> Server {
        server::start_tcp(&self.servers, &self.netns_path(), self.addrs(port), &self.name, proto)
            .unwrap_or_else(|e| panic!("pod {}: TCP server on port {port}: {e:#}", self.name))
    }

    fn addrs(&self, port: u16) -> Vec<SocketAddr> {
        vec![SocketAddr::from((self.ipv4, port)), SocketAddr::from((self.ipv6, port))]
    }
}

/// Locally administered MAC, unique per pod of one node.
fn pod_mac(index: usize) -> String {
    format!("02:00:00:00:{:02x}:{:02x}", (index >> 8) & 0xff, index & 0xff)
}

/// Node side: the veth pair (peer moved into the pod as eth0), host routes
/// to the pod and permanent neighbour entries for them.
fn node_side(spec: &PodSpec<'_>, veth: &str, pod_mac: &str) -> Vec<String> {
    let (v4, v6, ns) = (spec.ipv4, spec.ipv6, &spec.netns);
    vec![
        format!("link add {veth} address {NODE_MAC} type veth peer name eth0 address {pod_mac} netns {ns}"),
        format!("link set {veth} up"),
        format!("neigh add {v4} lladdr {pod_mac} dev {veth} nud permanent"),
        format!("route add {v4}/32 dev {veth}"),
        format!("neigh add {v6} lladdr {pod_mac} dev {veth} nud permanent"),
        format!("route add {v6}/128 dev {veth}"),
    ]
}

/// Pod side: addresses (no DAD, so they are usable at once) and routes to the
/// pod ranges only, so an untranslated service address is ENETUNREACH.
/// The link must be up before the onlink route can be added. (`ip -batch`
/// lines take no options such as -6; ip infers the family from the address.)
fn pod_side(spec: &PodSpec<'_>) -> Vec<String> {
    let (v4, v6) = (spec.ipv4, spec.ipv6);
    vec![
        "link set eth0 up".to_string(),
        format!("addr add {v4}/32 dev eth0"),
        format!("addr add {v6}/128 dev eth0 nodad"),
        format!("neigh add {GATEWAY_V4} lladdr {NODE_MAC} dev eth0 nud permanent"),
        format!("route add {POD_CIDR_V4} via {GATEWAY_V4} dev eth0 onlink"),
        format!("neigh add {GATEWAY_V6} lladdr {NODE_MAC} dev eth0 nud permanent"),
        format!("route add {POD_CIDR_V6} via {GATEWAY_V6} dev eth0"),
    ]
}
