//! `tcp` and `tls` rules: by port, the addresses at both ends, the client
//! workload and, for TLS, the SNI; weighted like HTTP.

use super::destination::RouteDestination;
use super::matching::source_holds;
use crate::api::{L4MatchAttributes, TlsMatchAttributes};
use crate::field::Path;
use crate::field::{parse_port, FieldError};
use crate::host::validate_gateways;
use crate::host::{is_istio_label, validate_labels};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    /// Empty: every connection.
    pub matches: Vec<TcpMatch>,
    pub destinations: Vec<RouteDestination>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    /// At least one (Istio requires it).
    pub matches: Vec<TlsMatch>,
    pub destinations: Vec<RouteDestination>,
}

/// What `tcp` and `tls` matching looks at in a connection; the proxy fills
/// it from the captured connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionView<'a> {
    /// The service port the client dialled.
    pub port: u16,
    /// The address the client dialled (before the proxy took over).
    pub destination: IpAddr,
    /// The client's address.
    pub source: IpAddr,
    /// The client workload's labels, when the proxy knows the pod.
    pub source_labels: Option<&'a BTreeMap<String, String>>,
    /// The client workload's namespace, when the proxy knows the pod.
    pub source_namespace: Option<&'a str>,
}

/// Conditions a connection's attributes must all meet. Source labels and
/// namespace hold only for a client pod the proxy knows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpMatch {
    pub port: Option<u16>,
    /// The connection's original destination must be in one of these.
    pub destination_subnets: Vec<Subnet>,
    /// `sourceSubnet` (`tcp` only): the client's address must be in it.
    pub source_subnet: Option<Subnet>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    /// Where the block applies: empty means wherever the VirtualService
    /// does. Blocks not for the mesh are left out of the route table.
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatch {
    /// Lowercase; `*.example.com` matches any name below `example.com`.
    pub sni_hosts: Vec<String>,
    #[serde(flatten)]
    pub l4: TcpMatch,
}

impl TcpMatch {
    /// Whether `connection` meets every condition of the block.
    pub fn matches(&self, connection: &ConnectionView<'_>) -> bool {
        let destination = connection.destination.to_canonical();
        self.port.is_none_or(|p| p == connection.port)
            && (self.destination_subnets.is_empty() || self.destination_subnets.iter().any(|s| s.contains(destination)))
            && self.source_subnet.is_none_or(|s| s.contains(connection.source.to_canonical()))
            && source_holds(
                &self.source_labels,
                self.source_namespace.as_deref(),
                connection.source_labels,
                connection.source_namespace,
            )
    }

    pub fn applies_to_mesh(&self) -> bool {
        crate::host::applies_to_mesh(&self.gateways)
    }
}

impl TlsMatch {
    pub fn matches(&self, sni: &str, connection: &ConnectionView<'_>) -> bool {
        self.l4.matches(connection) && self.sni_hosts.iter().any(|host| sni_matches(host, sni))
    }
}

/// Envoy's server-name rule: exact (case-insensitive), or `*.suffix` for
/// any longer name ending in `.suffix`.
fn sni_matches(host: &str, sni: &str) -> bool {
    match host.strip_prefix('*') {
        Some(suffix) => sni.len() > suffix.len() && sni.to_ascii_lowercase().ends_with(suffix),
        None => sni.eq_ignore_ascii_case(host),
    }
}

/// Istio's `host.Name.SubsetOf`: `sni` (perhaps a wildcard) names only
/// hosts that `host` names too.
fn sni_within(sni: &str, host: &str) -> bool {
    crate::host::host_subset_of(sni, host)
}

/// The first rule matching `connection`.
pub fn first_tcp_match<'a>(routes: &'a [TcpRoute], connection: &ConnectionView<'_>) -> Option<&'a TcpRoute> {
    routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(connection)))
}

/// The first rule matching a TLS `connection` with server name `sni`.
pub fn first_tls_match<'a>(routes: &'a [TlsRoute], sni: &str, connection: &ConnectionView<'_>) -> Option<&'a TlsRoute> {
    routes.iter().find(|r| r.matches.iter().any(|m| m.matches(sni, connection)))
}

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Option<Subnet> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (address.parse::<IpAddr>().ok()?, Some(len.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix_len.unwrap_or(max);
        (prefix_len <= max).then_some(Subnet { address, prefix_len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
            IpAddr::V6(v6) => (u128::from(v6), false),
        };
        let ((net, net_v4), (addr, addr_v4)) = (bits(self.address), bits(ip));
        if net_v4 != addr_v4 {
            return false;
        }
        // An IPv4 address sits in the top 32 bits, so its prefix counts from the top too.
        let width = u32::from(self.prefix_len);
        let mask = if width == 0 { 0 } else { u128::MAX << (128 - width) };
        net & mask == addr & mask
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The fields `tcp` and `tls` match blocks share, as written.
struct L4Spec<'a> {
    destination_subnets: &'a [String],
    port: Option<i64>,
    source_subnet: Option<&'a str>,
    source_labels: &'a BTreeMap<String, String>,
    source_namespace: Option<&'a str>,
    gateways: &'a [String],
}

fn subnet(field: &str, text: &str) -> Result<Subnet, FieldError> {
    Subnet::parse(text).ok_or_else(|| FieldError::new(field, format!("{text:?} is not an IP or CIDR")))
}

fn compile_l4(at: &Path, spec: L4Spec<'_>) -> Result<TcpMatch, FieldError> {
    let destination_subnets = (spec.destination_subnets.iter().enumerate())
        .map(|(i, text)| subnet(&at.field(&format!("destinationSubnets[{i}]")), text))
        .collect::<Result<Vec<_>, _>>()?;
    let source_subnet = spec.source_subnet.map(|text| subnet(&at.field("sourceSubnet"), text)).transpose()?;
    if let Some(namespace) = spec.source_namespace.filter(|ns| !ns.is_empty() && !is_istio_label(ns)) {
        return Err(FieldError::new(at.field("sourceNamespace"), format!("{namespace:?} is not a namespace name")));
    }
    validate_labels(&at.field("sourceLabels"), spec.source_labels)?;
    validate_gateways(&at.field("gateways"), spec.gateways)?;
    Ok(TcpMatch {
        // 0 is proto3's "unset", as Istio reads it.
        port: spec.port.filter(|p| *p != 0).map(|p| parse_port(&at.field("port"), p)).transpose()?,
        destination_subnets,
        source_subnet,
        source_labels: spec.source_labels.clone(),
        source_namespace: spec.source_namespace.map(str::to_owned),
        gateways: spec.gateways.to_vec(),
    })
}

pub(crate) fn compile_tcp_match(at: &Path, spec: &L4MatchAttributes) -> Result<TcpMatch, FieldError> {
    compile_l4(
        at,
        L4Spec {
            destination_subnets: &spec.destination_subnets,
            port: spec.port,
            // An empty string is proto3's "unset".
            source_subnet: spec.source_subnet.as_deref().filter(|s| !s.is_empty()),
            source_labels: &spec.source_labels,
            source_namespace: spec.source_namespace.as_deref(),
            gateways: &spec.gateways,
        },
    )
}

/// `hosts` are the VirtualService's hosts as written and resolved: each
/// SNI host must fall under one of them, as Istio checks.
pub(crate) fn compile_tls_match(at: &Path, spec: &TlsMatchAttributes, hosts: &[&str]) -> Result<TlsMatch, FieldError> {
    if spec.sni_hosts.is_empty() {
        return Err(FieldError::new(at.field("sniHosts"), "required: at least one SNI host"));
    }
    let mut sni_hosts = Vec::new();
    for (i, sni) in spec.sni_hosts.iter().enumerate() {
        let field = at.field(&format!("sniHosts[{i}]"));
        // An IP address is no server name, but Istio accepts it (with a
        // warning) and checks it against no host.
        if sni.parse::<std::net::IpAddr>().is_ok() {
            sni_hosts.push(sni.clone());
            continue;
        }
        crate::host::validate_host_name(&field, sni)?;
        let sni = sni.to_ascii_lowercase();
        if !hosts.iter().any(|host| sni_within(&sni, &host.to_ascii_lowercase())) {
            return Err(FieldError::new(field, format!("{sni:?} is not one of the hosts or under a wildcard host")));
        }
        sni_hosts.push(sni);
    }
    let l4 = compile_l4(
        at,
        L4Spec {
            destination_subnets: &spec.destination_subnets,
            port: spec.port,
            source_subnet: None,
            source_labels: &spec.source_labels,
            source_namespace: spec.source_namespace.as_deref(),
            gateways: &spec.gateways,
        },
    )?;
    Ok(TlsMatch { sni_hosts, l4 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::vs;

    /// A connection from an unknown client at 10.1.0.5 to 10.96.0.10:`port`.
    fn to_port(port: u16) -> ConnectionView<'static> {
        ConnectionView {
            port,
            destination: "10.96.0.10".parse().unwrap(),
            source: "10.1.0.5".parse().unwrap(),
            source_labels: None,
            source_namespace: None,
        }
    }

    #[test]
    fn tcp_rules_match_by_port_in_order() {
        let model = vs("  hosts: [db]\n  tcp:\n  - match: [{port: 5432}]\n    route: [{destination: {host: pg-primary}}]\n  - match: [{port: 6432}, {port: 7432}]\n    route: [{destination: {host: pg-pool}}]\n  - route: [{destination: {host: pg-other}}]\n").unwrap();
        let host = |port| first_tcp_match(&model.tcp, &to_port(port)).unwrap().destinations[0].host.clone();
        assert_eq!(host(5432), "pg-primary.shop.svc.cluster.local");
        assert_eq!(host(7432), "pg-pool.shop.svc.cluster.local");
        assert_eq!(host(1), "pg-other.shop.svc.cluster.local");
        assert!(first_tcp_match(&model.tcp[..1], &to_port(1)).is_none());
    }

    #[test]
    fn tls_rules_match_by_sni_and_port() {
        let model = vs("  hosts: ['*.example.com', web]\n  tls:\n  - match: [{sniHosts: [login.example.com], port: 443}]\n    route: [{destination: {host: login}}]\n  - match: [{sniHosts: ['*.example.com']}]\n    route: [{destination: {host: rest, port: {number: 8443}}, weight: 1}]\n").unwrap();
        let route =
            |sni: &str, port| first_tls_match(&model.tls, sni, &to_port(port)).map(|r| r.destinations[0].host.clone());
        assert_eq!(route("LOGIN.example.com", 443).as_deref(), Some("login.shop.svc.cluster.local"));
        assert_eq!(route("login.example.com", 8443).as_deref(), Some("rest.shop.svc.cluster.local"));
        assert_eq!(route("a.b.example.com", 1).as_deref(), Some("rest.shop.svc.cluster.local"));
        assert_eq!(route("example.com", 443), None, "a wildcard needs a label before the suffix");
    }

    #[test]
    fn subnets() {
        let subnet = Subnet::parse("10.96.0.0/12").unwrap();
        assert!(subnet.contains("10.100.1.2".parse().unwrap()) && !subnet.contains("10.112.0.1".parse().unwrap()));
        assert!(!subnet.contains("::ffff:10.96.0.1".parse().unwrap()), "families do not mix");
        assert!(Subnet::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Subnet::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert_eq!(Subnet::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert!(Subnet::parse("10.0.0.0/33").is_none() && Subnet::parse("x/8").is_none());
    }

    #[test]
    fn every_condition_of_a_block_is_checked_against_the_connection() {
        let rules = concat!(
            "  hosts: [db]\n  tcp:\n",
            "  - match: [{destinationSubnets: [10.96.0.0/16, 'fd00::/8']}]\n    route: [{destination: {host: by-dst}}]\n",
            "  - match: [{sourceSubnet: 10.2.0.0/16}]\n    route: [{destination: {host: by-src}}]\n",
            "  - match: [{sourceLabels: {app: etl}, sourceNamespace: batch}]\n    route: [{destination: {host: etl}}]\n",
            "  - match: [{sourceNamespace: batch}]\n    route: [{destination: {host: batch}}]\n",
            "  - match: [{gateways: [ingress]}, {gateways: [mesh], port: 5432}]\n    route: [{destination: {host: mesh}}]\n",
        );
        let model = vs(rules).unwrap();
        let routes =
            crate::route::RouteTable::build(&[(("shop".to_owned(), "vs".to_owned()), model)].into_iter().collect());
        let tcp = routes.tcp_routes("db.shop.svc.cluster.local");
        let host = |c: &ConnectionView<'_>| {
            first_tcp_match(tcp, c)
                .map(|r| r.destinations[0].host.trim_end_matches(".shop.svc.cluster.local").to_owned())
        };
        let outside = ConnectionView { destination: "10.97.0.1".parse().unwrap(), ..to_port(80) };
        assert_eq!(host(&to_port(80)).as_deref(), Some("by-dst"));
        let v6 = ConnectionView { destination: "fd00::10".parse().unwrap(), ..outside };
        assert_eq!(host(&v6).as_deref(), Some("by-dst"));
        let mapped = ConnectionView { destination: "::ffff:10.96.0.10".parse().unwrap(), ..outside };
        assert_eq!(host(&mapped).as_deref(), Some("by-dst"), "an IPv4-mapped address is its IPv4 address");
        assert_eq!(host(&outside), None, "sourceSubnet alone does not match every connection");
        let from_src = ConnectionView { source: "10.2.3.4".parse().unwrap(), ..outside };
        assert_eq!(host(&from_src).as_deref(), Some("by-src"));

        let etl: BTreeMap<String, String> = [("app".to_owned(), "etl".to_owned())].into();
        let other: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        let pod = |labels, namespace| ConnectionView {
            source_labels: Some(labels),
            source_namespace: Some(namespace),
            ..outside
        };
        assert_eq!(host(&pod(&etl, "batch")).as_deref(), Some("etl"));
        assert_eq!(host(&pod(&other, "batch")).as_deref(), Some("batch"));
        assert_eq!(host(&pod(&etl, "shop")), None, "the namespace must hold too");
        let mesh = ConnectionView { port: 5432, ..outside };
        assert_eq!(host(&mesh).as_deref(), Some("mesh"), "the block for the mesh, not the one for a gateway");
    }

    #[test]
    fn tls_blocks_check_source_conditions_too() {
        let model = vs("  hosts: [web]\n  tls:\n  - match: [{sniHosts: [web], sourceNamespace: batch}]\n    route: [{destination: {host: a}}]\n  - match: [{sniHosts: [web], destinationSubnets: [10.96.0.10]}]\n    route: [{destination: {host: b}}]\n").unwrap();
        let route =
            |c: &ConnectionView<'_>| first_tls_match(&model.tls, "web", c).map(|r| r.destinations[0].host.clone());
        let from_batch = ConnectionView { source_namespace: Some("batch"), ..to_port(443) };
        assert_eq!(route(&from_batch).as_deref(), Some("a.shop.svc.cluster.local"));
        assert_eq!(route(&to_port(443)).as_deref(), Some("b.shop.svc.cluster.local"));
        let elsewhere = ConnectionView { destination: "10.96.0.11".parse().unwrap(), ..to_port(443) };
        assert_eq!(route(&elsewhere), None);
    }

    #[test]
    fn invalid_l4_rules_are_named() {
        let cases = [
            ("  tcp:\n  - match: [{port: 5432}]\n", "spec.tcp[0].route"),
            ("  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/40]}]\n    route: [{destination: {host: a}}]\n", "spec.tcp[0].match[0].destinationSubnets[0]"),
            ("  tcp:\n  - match: [{sourceSubnet: 10.0.0.300}]\n    route: [{destination: {host: a}}]\n", "spec.tcp[0].match[0].sourceSubnet"),
            ("  tcp:\n  - match: [{sourceLabels: {'': x}}]\n    route: [{destination: {host: a}}]\n", "spec.tcp[0].match[0].sourceLabels[]"),
            ("  tcp:\n  - route: [{destination: {host: a}, weight: -1}, {destination: {host: b}}]\n", "spec.tcp[0].route[0].weight"),
            ("  tls:\n  - route: [{destination: {host: a}}]\n", "spec.tls[0].match"),
            ("  tls:\n  - match: [{port: 443}]\n    route: [{destination: {host: a}}]\n", "spec.tls[0].match[0].sniHosts"),
            ("  tls:\n  - match: [{sniHosts: [other.example]}]\n    route: [{destination: {host: a}}]\n", "spec.tls[0].match[0].sniHosts[0]"),
            ("  tls:\n  - match: [{sniHosts: [db]}]\n    route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]\n", "spec.tls[0].route"),
        ];
        for (rules, field) in cases {
            let error = vs(&format!("  hosts: [db]\n{rules}")).unwrap_err();
            assert_eq!(error.field, field, "{rules}: {error}");
        }
    }
}
