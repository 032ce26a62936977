//! What a gateway's listeners serve now ([`GatewayState`]): the plan of
//! the Gateways that select this gateway workload, compiled with each
//! snapshot, the port each listener binds, and each TLS-terminating
//! server's configuration (its certificate from files or a Secret). The
//! gateway's listeners (`proxy::gateway`) and its request routing read it.

mod certificate;
mod tls;

pub use certificate::CertificateSummary;
pub use tls::{names_one_of, ServingTls};

use mesh_core::gateway::{GatewayPlan, Listener, ListenerKind};
use mesh_core::model::ServiceModel;
use mesh_core::published::Published;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// What the gateway's listeners serve now.
#[derive(Default)]
pub struct GatewayState {
    pub plan: GatewayPlan,
    /// The port each listener binds, by index: the server's port, or the
    /// target port the gateway's own Service gives it (Istio's charts map
    /// 80 to 8080 and 443 to 8443, and Gateways name 80 and 443).
    pub bound_ports: Vec<u16>,
    /// Each TLS-terminating server's configuration, by listener and server
    /// index; a server whose certificate is missing or broken has an error
    /// here (its handshakes fail) while the others serve.
    pub tls: HashMap<(usize, usize), Result<ServingTls, String>>,
}

/// A gateway process's identity and where it listens.
pub struct GatewayOptions {
    /// This workload's labels: the Gateways whose selector they match apply.
    pub labels: BTreeMap<String, String>,
    /// This workload's namespace (`exportTo` is judged from it).
    pub namespace: String,
    /// Where the listeners bind (a server's `bind` wins); default: all
    /// addresses, both families.
    pub listen_ip: Option<IpAddr>,
}

impl GatewayState {
    pub fn compile(published: &Published, options: &GatewayOptions) -> GatewayState {
        let model = &published.snapshot.model;
        let plan = GatewayPlan::compile_in(model, &options.labels, Some(&options.namespace));
        let own_services: Vec<&ServiceModel> =
            model.services.values().filter(|service| service.namespace == options.namespace).collect();
        let bound_ports = (plan.listeners.iter())
            .map(|listener| {
                let mapped = own_services.iter().find_map(|s| s.target_port_for(&options.labels, listener.port));
                mapped.unwrap_or(listener.port)
            })
            .collect();
        let mut configs = HashMap::new();
        for (index, listener) in plan.listeners.iter().enumerate() {
            for (server, bound) in listener.servers.iter().enumerate() {
                let terminates =
                    matches!(bound.server.kind(), ListenerKind::TerminatedTls | ListenerKind::TerminatedTcp);
                let Some(settings) = bound.server.tls.as_ref().filter(|_| terminates) else { continue };
                let config = tls::server_config(settings, &options.namespace, &model.secrets).map_err(|error| {
                    tracing::warn!(
                        gateway = %format!("{}/{}", bound.gateway_namespace, bound.gateway_name),
                        port = listener.port,
                        %error,
                        "gateway server has no usable certificate; its handshakes fail"
                    );
                    error.to_string()
                });
                configs.insert((index, server), config);
            }
        }
        GatewayState { plan, bound_ports, tls: configs }
    }

    /// The listener (and its index) bound to local port `port`.
    pub fn listener(&self, port: u16) -> Option<(usize, &Listener)> {
        let index = self.bound_ports.iter().position(|bound| *bound == port)?;
        Some((index, &self.plan.listeners[index]))
    }
}

/// One listener as status shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// The Gateway server's port.
    pub port: u16,
    /// The port actually bound (the gateway Service's target port).
    pub bound_port: u16,
    pub kind: String,
    pub servers: Vec<ServerStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerStatus {
    pub gateway: String,
    pub hosts: Vec<String>,
    pub protocol: String,
    pub tls_mode: Option<String>,
    /// Why the server's TLS cannot serve (a missing Secret, say).
    pub tls_error: Option<String>,
    /// The certificate it serves, when it terminates TLS.
    #[serde(default)]
    pub certificate: Option<CertificateSummary>,
    /// `namespace/name` of each bound VirtualService, with its hosts.
    pub virtual_services: Vec<String>,
}

impl GatewayState {
    /// The listeners, for status.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        (self.plan.listeners.iter().enumerate())
            .map(|(position, listener)| ListenerStatus {
                port: listener.port,
                bound_port: self.bound_ports.get(position).copied().unwrap_or(listener.port),
                kind: format!("{:?}", listener.kind),
                servers: (listener.servers.iter().enumerate())
                    .map(|(index, bound)| ServerStatus {
                        gateway: format!("{}/{}", bound.gateway_namespace, bound.gateway_name),
                        hosts: (bound.server.hosts.iter())
                            .map(|h| format!("{}/{}", h.namespace.as_deref().unwrap_or("*"), h.host))
                            .collect(),
                        protocol: format!("{:?}", bound.server.protocol),
                        tls_mode: bound.server.tls.as_ref().map(|tls| format!("{:?}", tls.mode)),
                        tls_error: self.tls.get(&(position, index)).and_then(|c| c.as_ref().err().cloned()),
                        certificate: (self.tls.get(&(position, index)))
                            .and_then(|c| c.as_ref().ok())
                            .and_then(|serving| serving.certificate.clone()),
                        virtual_services: (bound.virtual_hosts.iter())
                            .map(|v| format!("{}/{} {:?}", v.namespace, v.name, v.hosts))
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}
