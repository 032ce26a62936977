//! Istio `Gateway`s without sockets: the objects validated as Istio does
//! ([`validate_gateway`], one server at a time in [`server`]), which
//! VirtualServices bind to which gateway ([`bind`]), and what one gateway
//! process serves ([`GatewayPlan`]: its listeners, the servers on each,
//! and per server the virtual hosts and routes). The gateway process does
//! the IO around these answers.
//!
//! Semantics follow Istio's validation (`pkg/config/validation`) and
//! pilot's gateway handling (`MergeGateways`, `buildGatewayListeners`,
//! `buildGatewayHTTPRouteConfig`); where they differ it is said.

mod bind;
mod plan;
mod server;

pub use bind::{gateway_rules, GatewayRules};
pub use plan::{BoundServer, GatewayPlan, Listener, SkippedServer, VirtualHost};
pub use server::{
    cipher_names, ListenerKind, ServerCertificate, ServerHost, ServerModel, ServerProtocol, ServerTls, ServerTlsMode,
    TlsVersion, SUPPORTED_CIPHER_SUITES,
};

use crate::api::Gateway;
use crate::field::{FieldError, Path};
use crate::host::is_dns1123_label;
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
        self.selector.iter().all(|(key, value)| labels.get(key) == Some(value))
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

#[cfg(test)]
mod tests;
