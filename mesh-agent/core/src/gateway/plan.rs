//! What one gateway process serves: the Gateways whose selector picks its
//! workload, merged into listeners as Istio's `MergeGateways` does, each
//! server with the VirtualServices bound to it.
//!
//! On one port (and bind address): plaintext HTTP servers of one protocol
//! share a route table (virtual hosts of every server, routed by Host);
//! HTTPS and TLS servers are told apart by SNI, each with its own. A
//! server that cannot join the port's listener (another protocol; a TLS
//! host already taken on the port) is left out, as Istio leaves it, and
//! listed in [`GatewayPlan::skipped`].
//!
//! Virtual hosts are per host, as Envoy's are: the hosts where a server's
//! hosts and a VirtualService's meet (the narrower of each pair). Several
//! VirtualServices for one host merge, their rules in namespace/name order
//! (Istio merges VirtualServices at gateways, in creation order).
//!
//! A VirtualService's `delegate` rules come here already expanded: the
//! model puts each delegate's rules in their place (see
//! [`crate::route::Delegation`]), for sidecars and gateways alike.

use super::bind::{gateway_rules, intersect_hosts, narrow_sni, GatewayRules};
use super::object::{can_share, GatewayModel};
use super::server::{ListenerKind, ServerModel, ServerTlsMode};
use crate::host::{host_specificity, strip_port};
use crate::model::Model;
use crate::route::{HttpRoute, TcpRoute, TlsRoute, VirtualServiceModel};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What one gateway process serves.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPlan {
    /// By port, then bind address.
    pub listeners: Vec<Listener>,
    /// Servers of selected Gateways that are not served, and why.
    pub skipped: Vec<SkippedServer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub port: u16,
    pub bind: Option<IpAddr>,
    /// The kind of all its servers ([`ListenerKind::MixedTls`] when TLS
    /// servers of different kinds share it).
    pub kind: ListenerKind,
    /// By Gateway namespace/name, then in spec order.
    pub servers: Vec<BoundServer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoundServer {
    pub gateway_namespace: String,
    pub gateway_name: String,
    /// How its connections are served: [`ServerModel::kind`].
    pub server: ServerModel,
    /// HTTP routing (HTTP and terminated HTTPS servers), one per host. On a
    /// plaintext HTTP listener a host appears once across the servers: in
    /// the first server that has it, with the others' rules merged in.
    pub virtual_hosts: Vec<VirtualHost>,
    /// `tcp` rules (TCP servers, and TLS servers that terminate), the bound
    /// VirtualServices' in namespace/name order: the first that matches.
    pub tcp: Vec<TcpRoute>,
    /// `tls` rules (passthrough servers), `sniHosts` narrowed to the
    /// server's hosts.
    pub tls: Vec<TlsRoute>,
    /// `namespace/name` of every VirtualService whose rules are here.
    pub virtual_services: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// The first VirtualService routing it (empty for a host that only
    /// redirects to https).
    pub namespace: String,
    pub name: String,
    /// The host (one): exact, `*.suffix` or `*`.
    pub hosts: Vec<String>,
    /// The merged rules: the first VirtualService's, then the next one's.
    pub routes: Vec<HttpRoute>,
    /// `namespace/name` of every VirtualService merged, in order.
    pub virtual_services: Vec<String>,
    /// Every request gets a 301 to https (`tls.httpsRedirect` of the server).
    pub https_redirect: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedServer {
    pub gateway_namespace: String,
    pub gateway_name: String,
    /// Index into the Gateway's `spec.servers`.
    pub server: usize,
    pub port: u16,
    pub reason: String,
}

impl GatewayPlan {
    /// The Gateways (all namespaces) whose selector matches `labels`, and
    /// the VirtualServices bound to them, whatever their `exportTo`
    /// (see [`GatewayPlan::compile_in`]).
    pub fn compile(model: &Model, labels: &BTreeMap<String, String>) -> GatewayPlan {
        Self::compile_in(model, labels, None)
    }

    /// [`GatewayPlan::compile`] for a gateway workload in
    /// `workload_namespace`: VirtualServices not exported there are left
    /// out, and match blocks with a `sourceNamespace` apply only when it is
    /// that namespace, as Istio does. (VirtualService hosts were resolved
    /// when the model was built.)
    pub fn compile_in(
        model: &Model,
        labels: &BTreeMap<String, String>,
        workload_namespace: Option<&str>,
    ) -> GatewayPlan {
        let mut plan = GatewayPlan::default();
        for gateway in model.gateways.values().filter(|g| g.selects(labels)) {
            let bound: Vec<(&VirtualServiceModel, GatewayRules)> = (model.virtual_services.values())
                .filter_map(|vs| Some((vs, gateway_rules(vs, &gateway.id(), labels, workload_namespace)?)))
                .collect();
            for (index, server) in gateway.servers.iter().enumerate() {
                if let Err(reason) = plan.place(gateway, server, &bound) {
                    plan.skipped.push(SkippedServer {
                        gateway_namespace: gateway.namespace.clone(),
                        gateway_name: gateway.name.clone(),
                        server: index,
                        port: server.port,
                        reason,
                    });
                }
            }
        }
        for listener in plan.listeners.iter_mut().filter(|l| l.kind == ListenerKind::Http) {
            merge_shared_hosts(&mut listener.servers);
        }
        let merged = (plan.listeners.iter_mut())
            .flat_map(|l| l.servers.iter_mut())
            .flat_map(|s| s.virtual_hosts.iter_mut())
            .filter(|vh| vh.virtual_services.len() > 1);
        merged.for_each(catch_all_last);
        plan.listeners.sort_by_key(|l| (l.port, l.bind));
        plan
    }

    /// Puts `server` on its listener, or says why it cannot go there.
    fn place(
        &mut self,
        gateway: &GatewayModel,
        server: &ServerModel,
        bound: &[(&VirtualServiceModel, GatewayRules)],
    ) -> Result<(), String> {
        if server.protocol.is_tls() && server.tls.as_ref().is_some_and(|t| t.mode == ServerTlsMode::IstioMutual) {
            return Err("ISTIO_MUTUAL needs the mesh's workload certificates, which it does not issue yet".into());
        }
        let kind = server.kind();
        let listener = match self.listeners.iter_mut().find(|l| l.port == server.port && l.bind == server.bind) {
            Some(listener) => {
                let first = &listener.servers[0];
                if !can_share(&first.server, server) {
                    return Err(format!(
                        "port {} is already served as {} by Gateway {}/{}; only HTTP servers of one protocol, or \
                         HTTPS and TLS servers, share a port",
                        server.port,
                        first.server.protocol.as_str(),
                        first.gateway_namespace,
                        first.gateway_name
                    ));
                }
                if kind.is_tls() {
                    // SNI could not tell two servers with one host apart.
                    for other in &listener.servers {
                        if let Some(host) = server.hosts.iter().find(|h| other.server.hosts.contains(h)) {
                            return Err(format!(
                                "host {:?} is already served on port {} by Gateway {}/{}",
                                host.host, server.port, other.gateway_namespace, other.gateway_name
                            ));
                        }
                    }
                }
                if listener.kind != kind {
                    listener.kind = ListenerKind::MixedTls;
                }
                listener
            }
            None => {
                self.listeners.push(Listener { port: server.port, bind: server.bind, kind, servers: Vec::new() });
                self.listeners.last_mut().expect("just pushed")
            }
        };
        listener.servers.push(bind_server(gateway, server, bound));
        Ok(())
    }
}

/// The server with what the VirtualServices bound to its Gateway route
/// through it.
fn bind_server(
    gateway: &GatewayModel,
    server: &ServerModel,
    bound: &[(&VirtualServiceModel, GatewayRules)],
) -> BoundServer {
    let kind = server.kind();
    let mut out = BoundServer {
        gateway_namespace: gateway.namespace.clone(),
        gateway_name: gateway.name.clone(),
        server: server.clone(),
        virtual_hosts: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
        virtual_services: Vec::new(),
    };
    for (vs, rules) in bound {
        let server_hosts: Vec<&str> =
            (server.hosts.iter()).filter(|h| h.admits_namespace(&vs.namespace)).map(|h| h.host.as_str()).collect();
        let hosts = intersect_hosts(&server_hosts, &vs.hosts);
        if hosts.is_empty() {
            continue;
        }
        let id = format!("{}/{}", vs.namespace, vs.name);
        let used = match kind {
            ListenerKind::Http | ListenerKind::TerminatedTls if !rules.http.is_empty() => {
                for host in hosts {
                    match out.virtual_hosts.iter_mut().find(|vh| vh.hosts[0] == host) {
                        Some(existing) => {
                            existing.routes.extend(rules.http.iter().cloned());
                            existing.virtual_services.push(id.clone());
                        }
                        None => out.virtual_hosts.push(VirtualHost {
                            namespace: vs.namespace.clone(),
                            name: vs.name.clone(),
                            hosts: vec![host.to_owned()],
                            routes: rules.http.clone(),
                            virtual_services: vec![id.clone()],
                            https_redirect: false,
                        }),
                    }
                }
                true
            }
            ListenerKind::Tcp | ListenerKind::TerminatedTcp if !rules.tcp.is_empty() => {
                out.tcp.extend(rules.tcp.iter().cloned());
                true
            }
            ListenerKind::Passthrough => {
                let tls = narrow_sni(rules.tls.clone(), &server_hosts);
                let used = !tls.is_empty();
                out.tls.extend(tls);
                used
            }
            _ => false,
        };
        if used {
            out.virtual_services.push(id);
        }
    }
    if server.https_redirect() && kind == ListenerKind::Http {
        // Istio redirects every host of the server, routed or not.
        for host in &server.hosts {
            if !out.virtual_hosts.iter().any(|vh| vh.hosts[0] == host.host) {
                out.virtual_hosts.push(VirtualHost {
                    namespace: String::new(),
                    name: String::new(),
                    hosts: vec![host.host.clone()],
                    routes: Vec::new(),
                    virtual_services: Vec::new(),
                    https_redirect: true,
                });
            }
        }
        out.virtual_hosts.iter_mut().for_each(|vh| vh.https_redirect = true);
    }
    out
}

/// Plaintext HTTP servers on one port share one route table: a host's
/// later virtual hosts merge into its first (a redirect on either holds).
fn merge_shared_hosts(servers: &mut [BoundServer]) {
    for later in 1..servers.len() {
        let (earlier, rest) = servers.split_at_mut(later);
        let current = &mut rest[0];
        current.virtual_hosts.retain(|vh| {
            let first = earlier.iter_mut().flat_map(|s| s.virtual_hosts.iter_mut()).find(|f| f.hosts == vh.hosts);
            match first {
                Some(first) => {
                    first.routes.extend(vh.routes.iter().cloned());
                    first.virtual_services.extend(vh.virtual_services.iter().cloned());
                    first.https_redirect |= vh.https_redirect;
                    if first.name.is_empty() {
                        (first.namespace, first.name) = (vh.namespace.clone(), vh.name.clone());
                    }
                    false
                }
                None => true,
            }
        });
    }
}

/// Istio's `SortVHostRoutes` for merged VirtualServices: one rule per
/// match block (as Envoy has one route per block), and the blocks that
/// match every request moved after the others, so that one VirtualService's
/// catch-all does not hide the next one's rules.
fn catch_all_last(host: &mut VirtualHost) {
    let mut split = Vec::new();
    for route in std::mem::take(&mut host.routes) {
        if route.matches.len() <= 1 {
            split.push(route);
            continue;
        }
        for block in &route.matches {
            split.push(HttpRoute { matches: vec![block.clone()], ..route.clone() });
        }
    }
    let (catch_all, specific): (Vec<HttpRoute>, Vec<HttpRoute>) = split.into_iter().partition(|route| {
        route.matches.first().is_none_or(|m| {
            m.uri.as_ref().is_none_or(|uri| uri.prefix() == Some("/"))
                && m.headers.is_empty()
                && m.query_params.is_empty()
                && m.method.is_none()
                && m.authority.is_none()
                && m.scheme.is_none()
        })
    });
    host.routes = specific.into_iter().chain(catch_all).collect();
}

impl Listener {
    /// TLS listeners: the server whose hosts match the SNI (exact, then the
    /// longest wildcard, then `*`; the first among equals); a server with
    /// `*` takes a missing SNI.
    pub fn server_for_sni(&self, sni: Option<&str>) -> Option<&BoundServer> {
        match sni {
            None => self.servers.iter().find(|s| s.server.hosts.iter().any(|h| h.host == "*")),
            Some(sni) => best(self.servers.iter().filter_map(|s| Some((s.server.host_specificity(sni)?, s)))),
        }
    }

    /// HTTP routing: among `servers` (all of the listener's for plain
    /// HTTP, or the one the TLS handshake chose), the virtual host for
    /// `host` (a port is stripped; any case): exact beats wildcard, a
    /// longer wildcard a shorter one, `*` last. None: 404.
    pub fn route<'a>(
        &'a self,
        server: Option<&'a BoundServer>,
        host: &str,
    ) -> Option<(&'a BoundServer, &'a VirtualHost)> {
        let host = strip_port(host);
        let servers = match server {
            Some(server) => std::slice::from_ref(server),
            None => &self.servers[..],
        };
        best(servers.iter().flat_map(|s| {
            s.virtual_hosts.iter().filter_map(move |vh| Some((host_specificity(&vh.hosts[0], host)?, (s, vh))))
        }))
    }
}

/// The most specific candidate; the first among equals.
fn best<T>(candidates: impl Iterator<Item = (usize, T)>) -> Option<T> {
    let mut best: Option<(usize, T)> = None;
    for (specificity, candidate) in candidates {
        if best.as_ref().is_none_or(|(b, _)| specificity > *b) {
            best = Some((specificity, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}
