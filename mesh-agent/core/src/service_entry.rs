//! One ServiceEntry, validated as Istio's `ValidateServiceEntry` does, and
//! the names its `DNS` resolution asks the agent to look up. What it adds to
//! the services is [`crate::registry`]'s.

use crate::api::{IstioPort, ServiceEntry, WorkloadEntry, WorkloadEntrySpec};
use crate::field::{parse_port, FieldError, Path};
use crate::host::{
    is_dns1123_label, validate_export_to, validate_fqdn, validate_host_name, validate_labels, ExportToNone, Labels,
};
use crate::route::Subnet;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The addresses a name resolved to, by name (lower case, no trailing dot).
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Connections go where they were dialled; the entry names them.
    None,
    /// To the endpoints' addresses.
    Static,
    /// To what the hosts (or the endpoints' names) resolve to.
    Dns,
    DnsRoundRobin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// An address of the entry: a VIP (`prefix` the full length) or a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct EntryAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl EntryAddress {
    pub fn is_single(&self) -> bool {
        self.prefix == if self.ip.is_ipv4() { 32 } else { 128 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryPort {
    pub name: String,
    pub number: u16,
    /// Istio's protocol name, upper case.
    pub protocol: String,
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryEndpoint {
    /// An IP address (STATIC), or a name or address (DNS).
    pub address: String,
    /// Port name of the entry → this endpoint's port.
    pub ports: BTreeMap<String, u16>,
    pub labels: Labels,
    /// `region/zone/subzone`.
    pub locality: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEntryModel {
    pub namespace: String,
    pub name: String,
    /// Lower case, without a trailing dot.
    pub hosts: Vec<String>,
    pub addresses: Vec<EntryAddress>,
    pub ports: Vec<EntryPort>,
    pub location: Location,
    pub resolution: Resolution,
    pub endpoints: Vec<EntryEndpoint>,
    pub workload_selector: Option<BTreeMap<String, String>>,
}

/// Istio's `ValidateServiceEntry`.
pub fn validate_service_entry(object: &ServiceEntry) -> Result<ServiceEntryModel, FieldError> {
    let spec = &object.spec;
    let namespace = object.metadata.namespace_or_default();
    let path = Path::new("spec");
    if spec.hosts.is_empty() {
        return Err(FieldError::new("spec.hosts", "required: a ServiceEntry needs at least one host"));
    }
    let resolution = match spec.resolution.as_deref().unwrap_or("NONE") {
        "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" => Resolution::Dns,
        "DNS_ROUND_ROBIN" => Resolution::DnsRoundRobin,
        other => {
            let message = format!("{other:?} is not a resolution (NONE, STATIC, DNS or DNS_ROUND_ROBIN)");
            return Err(FieldError::new("spec.resolution", message));
        }
    };
    let location = match spec.location.as_deref().unwrap_or("MESH_EXTERNAL") {
        "MESH_EXTERNAL" => Location::MeshExternal,
        "MESH_INTERNAL" => Location::MeshInternal,
        other => {
            let message = format!("{other:?} is not a location (MESH_EXTERNAL or MESH_INTERNAL)");
            return Err(FieldError::new("spec.location", message));
        }
    };
    let mut hosts = Vec::new();
    for (i, host) in spec.hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            return Err(FieldError::new(field, "`*` is not a host a ServiceEntry can add"));
        }
        validate_host_name(&field, host)?;
        hosts.push(host.trim_end_matches('.').to_ascii_lowercase());
    }
    let mut addresses = Vec::new();
    for (i, text) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        let address = parse_address(&field, text)?;
        if !address.is_single() && matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return Err(FieldError::new(field, "CIDR blocks are allowed only with resolution NONE or STATIC"));
        }
        addresses.push(address);
    }
    let ports = validate_ports(&spec.ports)?;
    let port_names: BTreeSet<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    if spec.workload_selector.is_some() && !spec.endpoints.is_empty() {
        return Err(FieldError::new("spec.workloadSelector", "cannot be set together with spec.endpoints"));
    }
    if let Some(selector) = &spec.workload_selector {
        validate_labels("spec.workloadSelector.labels", &selector.labels)?;
    }
    match resolution {
        Resolution::None if !spec.endpoints.is_empty() => {
            return Err(FieldError::new("spec.endpoints", "must be empty for resolution NONE"));
        }
        Resolution::Dns | Resolution::DnsRoundRobin if spec.endpoints.is_empty() => {
            for (i, host) in spec.hosts.iter().enumerate() {
                let field = format!("spec.hosts[{i}]");
                validate_fqdn(&field, host).map_err(|error| {
                    FieldError::new(
                        field,
                        format!(
                            "must be a fully qualified name for resolution DNS without endpoints: {}",
                            error.message
                        ),
                    )
                })?;
            }
        }
        Resolution::DnsRoundRobin if spec.endpoints.len() > 1 => {
            return Err(FieldError::new("spec.endpoints", "DNS_ROUND_ROBIN takes at most one endpoint"));
        }
        _ => {}
    }
    let mut endpoints = Vec::new();
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        endpoints.push(validate_endpoint(&path.index("endpoints", i), endpoint, resolution, Some(&port_names))?);
    }
    validate_export_to(&spec.export_to, namespace, ExportToNone::Allowed)?;
    Ok(ServiceEntryModel {
        namespace: namespace.to_owned(),
        name: object.metadata.name.clone(),
        hosts,
        addresses,
        ports,
        location,
        resolution,
        endpoints,
        workload_selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
    })
}

/// One endpoint (at `at`): an IP address, or (resolution DNS) a name; its
/// ports named after the entry's (`port_names`, when known).
fn validate_endpoint(
    at: &Path,
    endpoint: &WorkloadEntrySpec,
    resolution: Resolution,
    port_names: Option<&BTreeSet<&str>>,
) -> Result<EntryEndpoint, FieldError> {
    let address = endpoint.address.trim();
    if address.is_empty() {
        return Err(FieldError::new(at.field("address"), "required"));
    }
    if address.starts_with("unix://") {
        return Err(FieldError::new(at.field("address"), "unix domain socket endpoints are not served by the mesh"));
    }
    let is_ip = address.parse::<IpAddr>().is_ok();
    match resolution {
        Resolution::Static if !is_ip => {
            let message = format!("{address:?} is not an IP address (resolution STATIC)");
            return Err(FieldError::new(at.field("address"), message));
        }
        _ if !is_ip => validate_fqdn(&at.field("address"), address)?,
        _ => {}
    }
    let mut ports = BTreeMap::new();
    for (name, number) in &endpoint.ports {
        let field = format!("{}[{name}]", at.field("ports"));
        if port_names.is_some_and(|names| !names.contains(name.as_str())) {
            return Err(FieldError::new(field, format!("{name:?} is not the name of a port of the entry")));
        }
        ports.insert(name.clone(), parse_port(&field, *number)?);
    }
    validate_labels(&at.field("labels"), &endpoint.labels)?;
    if let Some(weight) = endpoint.weight {
        if u32::try_from(weight).is_err() {
            return Err(FieldError::new(at.field("weight"), format!("{weight} is not a weight (0 to 4294967295)")));
        }
    }
    Ok(EntryEndpoint {
        address: address.to_owned(),
        ports,
        labels: Labels::new(endpoint.labels.clone()),
        locality: endpoint.locality.clone().filter(|l| !l.is_empty()),
    })
}

/// A WorkloadEntry: one endpoint that ServiceEntries select by its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadEntryModel {
    pub namespace: String,
    pub name: String,
    pub endpoint: EntryEndpoint,
}

/// Istio's `ValidateWorkloadEntry`: an address (an IP, or a name the
/// resolver looks up), valid labels and ports.
pub fn validate_workload_entry(object: &WorkloadEntry) -> Result<WorkloadEntryModel, FieldError> {
    let endpoint = validate_endpoint(&Path::new("spec"), &object.spec, Resolution::Dns, None)?;
    Ok(WorkloadEntryModel {
        namespace: object.metadata.namespace_or_default().to_owned(),
        name: object.metadata.name.clone(),
        endpoint,
    })
}

/// An IP address, or a CIDR block, as Istio's `ValidateIPSubnet` takes it.
fn parse_address(field: &str, text: &str) -> Result<EntryAddress, FieldError> {
    let subnet = Subnet::parse(text)
        .ok_or_else(|| FieldError::new(field, format!("{text:?} is neither an IP address nor a CIDR block")))?;
    Ok(EntryAddress { ip: subnet.address, prefix: subnet.prefix_len })
}

/// The protocols Istio's `protocol.Parse` knows.
const PROTOCOLS: [&str; 13] = [
    "HTTP",
    "HTTPS",
    "HTTP2",
    "HTTP_PROXY",
    "GRPC",
    "GRPC-WEB",
    "TCP",
    "TLS",
    "UDP",
    "MONGO",
    "REDIS",
    "MYSQL",
    "THRIFT",
];

fn validate_ports(ports: &[IstioPort]) -> Result<Vec<EntryPort>, FieldError> {
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    let mut valid = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let at = Path::new(format!("spec.ports[{i}]"));
        let name = port.name.clone().unwrap_or_default();
        if !is_dns1123_label(&name) {
            return Err(FieldError::new(at.field("name"), format!("{name:?} is not a port name (a DNS label)")));
        }
        let number = parse_port(&at.field("number"), port.number)?;
        if !names.insert(name.clone()) {
            return Err(FieldError::new(at.field("name"), format!("port name {name:?} is already defined")));
        }
        if !numbers.insert(number) {
            return Err(FieldError::new(at.field("number"), format!("port {number} is already defined")));
        }
        let protocol = port.protocol.clone().unwrap_or_default().to_ascii_uppercase();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            let message =
                format!("{:?} is not a protocol ({})", port.protocol.as_deref().unwrap_or(""), PROTOCOLS.join(", "));
            return Err(FieldError::new(at.field("protocol"), message));
        }
        let target_port =
            port.target_port.filter(|p| *p != 0).map(|p| parse_port(&at.field("targetPort"), p)).transpose()?;
        valid.push(EntryPort { name, number, protocol, target_port });
    }
    Ok(valid)
}

impl ServiceEntryModel {
    fn resolves(&self) -> bool {
        matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
    }

    /// The names its resolution asks for: each host when it has no
    /// endpoints, else its endpoints' names (addresses need no lookup).
    pub fn dns_names(&self) -> Vec<String> {
        if !self.resolves() {
            return Vec::new();
        }
        if self.endpoints.is_empty() {
            return self.hosts.iter().filter(|h| !h.starts_with('*')).cloned().collect();
        }
        (self.endpoints.iter())
            .filter(|e| e.address.parse::<IpAddr>().is_err())
            .map(|e| e.address.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    }

    /// The names its resolution asks for that `resolved` has no address
    /// for (yet, or because their lookups fail).
    pub fn unresolved(&self, resolved: &Resolved) -> Vec<String> {
        (self.dns_names().into_iter()).filter(|name| resolved.get(name).is_none_or(Vec::is_empty)).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::Resource;
    use crate::decode::parse_file;

    pub(crate) fn validate(spec: &str) -> Result<ServiceEntryModel, FieldError> {
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: shop}}\nspec:\n{spec}"
        );
        let mut objects = parse_file("se.yaml", &text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
        let Resource::ServiceEntry(entry) = (*objects.remove(0).resource).clone() else { panic!("not a ServiceEntry") };
        validate_service_entry(&entry)
    }

    pub(crate) const HTTP: &str = "  ports: [{number: 80, name: http, protocol: HTTP}]\n";

    #[test]
    fn validation_follows_istio() {
        // (spec, None when Istio accepts it, else the field it rejects)
        let cases: Vec<(String, Option<&str>)> = vec![
            (format!("  hosts: [api.example.com]\n{HTTP}  resolution: DNS\n"), None),
            (format!("  hosts: [api.example.com]\n  addresses: [10.97.0.1, 'fd00:97::1', 10.98.0.0/16]\n{HTTP}"), None),
            (format!("  hosts: ['*.example.com']\n{HTTP}  resolution: NONE\n"), None),
            (format!("  hosts: [db.internal]\n{HTTP}  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1, ports: {{http: 8080}}, labels: {{v: a}}}}]\n"), None),
            (format!("  hosts: [api.example.com]\n{HTTP}  resolution: DNS\n  endpoints: [{{address: origin.example.com}}]\n"), None),
            (format!("  hosts: []\n{HTTP}"), Some("spec.hosts")),
            (format!("  hosts: ['*']\n{HTTP}"), Some("spec.hosts[0]")),
            (format!("  hosts: [a..b]\n{HTTP}"), Some("spec.hosts[0]")),
            (format!("  hosts: [a.com]\n  addresses: [10.0.0.300]\n{HTTP}"), Some("spec.addresses[0]")),
            (format!("  hosts: [a.com]\n  addresses: [10.0.0.0/8]\n{HTTP}  resolution: DNS\n"), Some("spec.addresses[0]")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: LOOKUP\n"), Some("spec.resolution")),
            (format!("  hosts: [a.com]\n{HTTP}  location: OUTSIDE\n"), Some("spec.location")),
            ("  hosts: [a.com]\n  ports: [{number: 80, name: Http, protocol: HTTP}]\n".into(), Some("spec.ports[0].name")),
            ("  hosts: [a.com]\n  ports: [{number: 80, name: http}]\n".into(), Some("spec.ports[0].protocol")),
            ("  hosts: [a.com]\n  ports: [{number: 80, name: http, protocol: SPDY}]\n".into(), Some("spec.ports[0].protocol")),
            ("  hosts: [a.com]\n  ports: [{number: 0, name: http, protocol: HTTP}]\n".into(), Some("spec.ports[0].number")),
            (
                "  hosts: [a.com]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 80, name: web, protocol: HTTP}]\n".into(),
                Some("spec.ports[1].number"),
            ),
            (
                "  hosts: [a.com]\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: http, protocol: TCP}]\n".into(),
                Some("spec.ports[1].name"),
            ),
            (format!("  hosts: [a.com]\n{HTTP}  endpoints: [{{address: 10.0.0.1}}]\n"), Some("spec.endpoints")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: STATIC\n  endpoints: [{{address: db.example.com}}]\n"), Some("spec.endpoints[0].address")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1, ports: {{web: 80}}}}]\n"), Some("spec.endpoints[0].ports[web]")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: STATIC\n  endpoints: [{{address: 'unix:///sock'}}]\n"), Some("spec.endpoints[0].address")),
            (format!("  hosts: [api]\n{HTTP}  resolution: DNS\n"), None),
            (format!("  hosts: ['*.example.com']\n{HTTP}  resolution: DNS\n"), Some("spec.hosts[0]")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: DNS_ROUND_ROBIN\n  endpoints: [{{address: b.com}}, {{address: c.com}}]\n"), Some("spec.endpoints")),
            (format!("  hosts: [a.com]\n{HTTP}  resolution: STATIC\n  workloadSelector: {{labels: {{app: vm}}}}\n  endpoints: [{{address: 10.0.0.1}}]\n"), Some("spec.workloadSelector")),
            (format!("  hosts: [a.com]\n{HTTP}  exportTo: ['*', '.']\n"), Some("spec.exportTo[0]")),
            (format!("  hosts: [a.com]\n{HTTP}  exportTo: ['~']\n"), None),
        ];
        let mut wrong = Vec::new();
        for (spec, expected) in &cases {
            let got = validate(spec).err().map(|e| e.field);
            if got.as_deref() != *expected {
                wrong.push(format!("{spec}  expected {expected:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
