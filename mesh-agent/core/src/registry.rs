//! What ServiceEntries add to the services: each host becomes a service
//! (named by the host, in the entry's namespace) whose ports are the
//! entry's and whose backends are its endpoints, or what its names resolved
//! to, so VIP translation in the kernel, routes, DestinationRules and
//! status need nothing of their own.

use crate::host::Labels;
use crate::locality::Locality;
use crate::model::{EndpointModel, EndpointSliceModel, PortModel, Protocol, ServiceModel, SlicePort, TargetPort};
use crate::service_entry::{EntryEndpoint, EntryPort, Resolution, Resolved, ServiceEntryModel};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The service port the rest of the mesh sees: UDP for `UDP`, else TCP;
/// HTTP ports by their application protocol, as a Service's.
fn service_port(port: &EntryPort) -> PortModel {
    let app_protocol = match port.protocol.as_str() {
        "HTTP" | "HTTP_PROXY" => "http",
        "HTTP2" => "http2",
        "GRPC" => "grpc",
        "GRPC-WEB" => "grpc-web",
        _ => "tcp",
    };
    PortModel {
        name: port.name.clone(),
        port: port.number,
        protocol: if port.protocol == "UDP" { Protocol::Udp } else { Protocol::Tcp },
        target_port: TargetPort::Number(port.target_port.unwrap_or(port.number)),
        app_protocol: Some(app_protocol.to_owned()),
    }
}

/// The services an entry adds: one per host. A `STATIC` entry's exact
/// addresses are its VIPs and its endpoints its backends, as one
/// EndpointSlice per family. A `DNS` entry's endpoints are what its names
/// resolved to (`resolved`); its VIPs are its addresses, or else what the
/// host itself resolved to, so that an application that looks the name up
/// and dials an answer is balanced over all of them. `NONE` has neither
/// (connections pass through, and proxies find no endpoint). CIDR blocks
/// are left to the caller's warning.
pub fn services_of(entry: &ServiceEntryModel, resolved: &Resolved) -> Vec<(ServiceModel, Vec<EndpointSliceModel>)> {
    let answers = |name: &str| resolved.get(name).cloned().unwrap_or_default();
    let single: Vec<IpAddr> = entry.addresses.iter().filter(|a| a.is_single()).map(|a| a.ip).collect();
    let ports: Vec<PortModel> = entry.ports.iter().map(service_port).collect();
    (entry.hosts.iter())
        .map(|host| {
            let (cluster_ips, endpoints): (Vec<IpAddr>, Vec<(IpAddr, &EntryEndpoint)>) = match entry.resolution {
                Resolution::None => (Vec::new(), Vec::new()),
                Resolution::Static => {
                    let endpoints =
                        entry.endpoints.iter().filter_map(|e| e.address.parse().ok().map(|ip| (ip, e))).collect();
                    (single.clone(), endpoints)
                }
                Resolution::Dns | Resolution::DnsRoundRobin if entry.endpoints.is_empty() => {
                    let found = answers(host);
                    let vips = if single.is_empty() { found.clone() } else { single.clone() };
                    (vips, found.into_iter().map(|ip| (ip, &*HOST_ENDPOINT)).collect())
                }
                Resolution::Dns | Resolution::DnsRoundRobin => {
                    let endpoints = (entry.endpoints.iter())
                        .flat_map(|e| match e.address.parse::<IpAddr>() {
                            Ok(ip) => vec![(ip, e)],
                            Err(_) => {
                                let name = e.address.trim_end_matches('.').to_ascii_lowercase();
                                answers(&name).into_iter().map(|ip| (ip, e)).collect()
                            }
                        })
                        .collect();
                    let vips = if single.is_empty() { answers(host) } else { single.clone() };
                    (vips, endpoints)
                }
            };
            let service = ServiceModel {
                namespace: entry.namespace.clone(),
                name: host.clone(),
                cluster_ips,
                ports: ports.clone(),
                selector: BTreeMap::new(),
                host: Some(host.clone()),
                prefer_close: false,
            };
            let slices = [false, true]
                .into_iter()
                .flat_map(|ipv6| {
                    let family: Vec<(IpAddr, &EntryEndpoint)> =
                        endpoints.iter().copied().filter(|(ip, _)| ip.is_ipv6() == ipv6).collect();
                    slices_of(entry, host, &ports, ipv6, &family)
                })
                .collect();
            (service, slices)
        })
        .collect()
}

/// The endpoint a `DNS` entry without endpoints has for each answer: no
/// ports of its own, no labels.
static HOST_ENDPOINT: std::sync::LazyLock<EntryEndpoint> = std::sync::LazyLock::new(|| EntryEndpoint {
    address: String::new(),
    ports: BTreeMap::new(),
    labels: Labels::default(),
    locality: None,
});

/// One slice per distinct port mapping, so that each endpoint keeps its own
/// port for each named entry port (`ports`, the service's).
fn slices_of(
    entry: &ServiceEntryModel,
    host: &str,
    ports: &[PortModel],
    ipv6: bool,
    endpoints: &[(IpAddr, &EntryEndpoint)],
) -> Vec<EndpointSliceModel> {
    let mut by_ports: BTreeMap<Vec<SlicePort>, Vec<EndpointModel>> = BTreeMap::new();
    for (ip, endpoint) in endpoints {
        let slice_ports: Vec<SlicePort> = (ports.iter())
            .map(|port| {
                let target = match &port.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(_) => port.port,
                };
                let number = endpoint.ports.get(&port.name).copied().unwrap_or(target);
                SlicePort { name: port.name.clone(), port: number, protocol: port.protocol }
            })
            .collect();
        by_ports.entry(slice_ports).or_default().push(EndpointModel {
            addresses: [*ip].into(),
            ready: true,
            target: None,
            labels: Some(endpoint.labels.clone()),
            locality: Arc::new(endpoint.locality.as_deref().map(Locality::parse).unwrap_or_default()),
        });
    }
    (by_ports.into_iter().enumerate())
        .map(|(i, (ports, endpoints))| EndpointSliceModel {
            namespace: entry.namespace.clone(),
            name: format!("{}-{host}-{}-{i}", entry.name, if ipv6 { "v6" } else { "v4" }),
            service: host.to_owned(),
            ipv6,
            endpoints,
            ports,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_entry::tests::{validate, HTTP};

    #[test]
    fn a_static_entry_is_a_service_per_host_with_its_endpoints_as_backends() {
        let entry = validate(concat!(
            "  hosts: [db.example.com, DB2.example.com.]\n",
            "  addresses: [10.97.0.10, 'fd00:97::10', 10.98.0.0/16]\n",
            "  ports: [{number: 5432, name: tcp-pg, protocol: TCP, targetPort: 15432}, {number: 80, name: http, protocol: HTTP}]\n",
            "  resolution: STATIC\n",
            "  endpoints:\n",
            "  - {address: 10.0.0.1, labels: {v: a}}\n",
            "  - {address: 10.0.0.2, ports: {tcp-pg: 6432}}\n",
            "  - {address: 'fd00::3'}\n",
        ))
        .unwrap();
        let services = services_of(&entry, &Resolved::new());
        let names: Vec<&str> = services.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["db.example.com", "db2.example.com"]);
        let (service, slices) = &services[0];
        assert_eq!(service.fqdn("cluster.local"), "db.example.com");
        assert_eq!(service.cluster_ips.len(), 2, "the CIDR block is no VIP");
        assert_eq!(service.ports[1].app_protocol.as_deref(), Some("http"));
        type Shape = (bool, Vec<(String, u16)>, usize);
        let ports: Vec<Shape> = (slices.iter())
            .map(|s| (s.ipv6, s.ports.iter().map(|p| (p.name.clone(), p.port)).collect(), s.endpoints.len()))
            .collect();
        assert_eq!(
            ports,
            [
                (false, vec![("tcp-pg".into(), 6432), ("http".into(), 80)], 1),
                (false, vec![("tcp-pg".into(), 15432), ("http".into(), 80)], 1),
                (true, vec![("tcp-pg".into(), 15432), ("http".into(), 80)], 1),
            ],
            "an endpoint's own port, else the targetPort, else the number"
        );
        assert_eq!(slices[1].endpoints[0].labels, Some(Labels::new([("v".to_owned(), "a".to_owned())].into())));
        let none = validate(&format!("  hosts: [a.com]\n  addresses: [10.97.0.11]\n{HTTP}")).unwrap();
        let none = services_of(&none, &Resolved::new());
        assert!(none[0].0.cluster_ips.is_empty() && none[0].1.is_empty());
    }

    #[test]
    fn a_dns_entry_serves_what_its_names_resolved_to() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let resolved: Resolved = [
            ("a.com".to_owned(), vec![ip("192.0.2.1"), ip("192.0.2.2")]),
            ("origin.example.com".to_owned(), vec![ip("192.0.2.9")]),
        ]
        .into();
        let by_host = validate(&format!("  hosts: [a.com, b.com]\n{HTTP}  resolution: DNS\n")).unwrap();
        assert_eq!(by_host.dns_names(), ["a.com", "b.com"]);
        assert_eq!(by_host.unresolved(&resolved), ["b.com"]);
        let services = services_of(&by_host, &resolved);
        let (a, slices) = &services[0];
        assert_eq!(a.cluster_ips, [ip("192.0.2.1"), ip("192.0.2.2")], "the answers are the addresses dialled");
        let backends: Vec<IpAddr> = slices.iter().flat_map(|s| s.endpoints.iter().map(|e| e.addresses[0])).collect();
        assert_eq!(backends, [ip("192.0.2.1"), ip("192.0.2.2")]);
        assert!(services[1].0.cluster_ips.is_empty() && services[1].1.is_empty(), "b.com has no answer yet");
        let with_vip = validate(&format!(
            "  hosts: [api.example.com]\n  addresses: [10.97.0.40]\n{HTTP}  resolution: DNS\n  endpoints: [{{address: origin.example.com, ports: {{http: 8080}}}}, {{address: 192.0.2.5}}]\n"
        ))
        .unwrap();
        assert_eq!(with_vip.dns_names(), ["origin.example.com"]);
        let services = services_of(&with_vip, &resolved);
        let (service, slices) = &services[0];
        assert_eq!(service.cluster_ips, [ip("10.97.0.40")]);
        let backends: Vec<(IpAddr, u16)> =
            (slices.iter()).flat_map(|s| s.endpoints.iter().map(|e| (e.addresses[0], s.ports[0].port))).collect();
        assert_eq!(backends, [(ip("192.0.2.5"), 80), (ip("192.0.2.9"), 8080)]);
    }
}
