//! One Gateway object: validated as Istio's `ValidateGateway` does (its
//! servers one at a time in `server`), and which workloads it selects.

use super::server::{self, ServerModel};
use crate::api::Gateway;
use crate::field::{FieldError, Path};
use crate::host::{is_dns1123_label, labels_match};
use serde::Serialize;
use std::collections::BTreeMap;

/// A Gateway as the gateway processes use it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayModel {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// In spec order.
    pub servers: Vec<ServerModel>,
}

impl GatewayModel {
    /// Whether a gateway workload with `labels` applies this Gateway: every
    /// selector label present with its value. An empty selector selects
    /// every gateway workload, as Istio does.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_match(&self.selector, labels)
    }

    /// The selector as `key=value,...`, for messages.
    pub fn selector_text(&self) -> String {
        let pairs: Vec<String> = self.selector.iter().map(|(key, value)| format!("{key}={value}")).collect();
        pairs.join(",")
    }

    /// `namespace/name`, as VirtualServices name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Istio's `ValidateGateway`: a DNS-label name, at least one server, each
/// valid; port names unique; a port number used again only by a server
/// the gateway can tell apart (HTTP servers of one protocol, which it
/// routes by Host; HTTPS and TLS servers, which it tells apart by SNI).
/// Istio drops the later of two clashing servers when it merges Gateways;
/// within one Gateway the clash is reported here instead.
pub fn validate_gateway(object: &Gateway) -> Result<GatewayModel, FieldError> {
    let namespace = object.metadata.namespace_or_default();
    let name = &object.metadata.name;
    if !is_dns1123_label(name) {
        return Err(FieldError::new(
            "metadata.name",
            format!("{name:?} is not a valid Gateway name (a DNS label: lowercase letters, digits and -, no dots)"),
        ));
    }
    let spec = &object.spec;
    if spec.servers.is_empty() {
        return Err(FieldError::new("spec.servers", "required: a Gateway needs at least one server"));
    }
    let mut servers: Vec<ServerModel> = Vec::new();
    for (i, spec) in spec.servers.iter().enumerate() {
        let at = Path::new("spec").index("servers", i);
        let server = server::validate_server(&at, spec, namespace)?;
        if let Some(j) = servers.iter().position(|s| s.port_name == server.port_name) {
            return Err(FieldError::new(
                at.child("port").field("name"),
                format!(
                    "{:?} is already the name of spec.servers[{j}].port; port names must be unique",
                    server.port_name
                ),
            ));
        }
        let clash =
            servers.iter().position(|s| s.port == server.port && s.bind == server.bind && !can_share(s, &server));
        if let Some(j) = clash {
            return Err(FieldError::new(
                at.child("port").field("number"),
                format!(
                    "port {} is already served as {} by spec.servers[{j}]; only HTTP servers of one protocol, or \
                     HTTPS and TLS servers, share a port",
                    server.port,
                    servers[j].protocol.as_str()
                ),
            ));
        }
        servers.push(server);
    }
    Ok(GatewayModel { namespace: namespace.to_owned(), name: name.clone(), selector: spec.selector.clone(), servers })
}

/// Istio's merge rule for two servers on one port: plaintext HTTP of the
/// same protocol (routed by Host), or both TLS (told apart by SNI).
pub(crate) fn can_share(a: &ServerModel, b: &ServerModel) -> bool {
    let tls = |s: &ServerModel| s.kind().is_tls();
    (a.protocol.is_http() && a.protocol == b.protocol) || (tls(a) && tls(b))
}
