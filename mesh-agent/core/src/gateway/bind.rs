//! Which VirtualServices a gateway applies, and which of their rules.
//!
//! As Istio selects them: a VirtualService binds to the Gateways its
//! `spec.gateways` names (a short name is a Gateway in the VirtualService's
//! own namespace); it must be exported to the gateway workload's namespace;
//! and its hosts must meet a server's hosts (the server's `ns/` prefix
//! limiting the namespaces it takes VirtualServices from). Within it, a
//! match block naming `gateways` applies at those only; one naming none
//! applies wherever the VirtualService does, if its `sourceLabels` and
//! `sourceNamespace` pick the gateway workload (Istio's `sourceMatchHTTP`).
//! A rule whose blocks all go is left out; a rule without blocks stays.

use crate::host::{host_subset_of, resolve_gateway};
use crate::route::{
    exported_to, rules_where, source_holds, HttpRoute, TcpMatch, TcpRoute, TlsRoute, VirtualServiceModel,
};
use std::collections::BTreeMap;

/// The rules of one VirtualService that apply at one gateway, with the
/// conditions on the client workload already decided (the gateway is the
/// client Istio checks them against) and so cleared; `tcp` and `tls`
/// blocks keep only their port and SNI conditions, as Istio's gateways
/// read them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayRules {
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
}

/// The rules of `virtual_service` for the Gateway `gateway`
/// (`namespace/name`) as applied by a gateway workload with `labels` in
/// `workload_namespace` (None: not known; then `exportTo` is not checked
/// and a block with a `sourceNamespace` does not apply). None when the
/// VirtualService is not bound to the Gateway or not exported to the
/// workload's namespace.
pub fn gateway_rules(
    virtual_service: &VirtualServiceModel,
    gateway: &str,
    labels: &BTreeMap<String, String>,
    workload_namespace: Option<&str>,
) -> Option<GatewayRules> {
    if !virtual_service.binds_gateway(gateway) {
        return None;
    }
    let exported = workload_namespace
        .is_none_or(|ns| exported_to(&virtual_service.export_to, &virtual_service.namespace, Some(ns)));
    if !exported {
        return None;
    }
    let namespace = virtual_service.namespace.as_str();
    let names_gateway = |gateways: &[String]| gateways.iter().any(|g| resolve_gateway(g, namespace) == gateway);
    let mut http = rules_where(
        &virtual_service.http,
        |r| &mut r.matches,
        |m| {
            if !m.gateways.is_empty() {
                return names_gateway(&m.gateways);
            }
            source_holds(&m.source_labels, m.source_namespace.as_deref(), Some(labels), workload_namespace)
        },
    );
    for block in http.iter_mut().flat_map(|r| r.matches.iter_mut()) {
        block.source_labels.clear();
        block.source_namespace = None;
    }
    // Istio's `l4MultiMatch` at gateways looks at the gateways and the
    // port only: the client and address conditions are dropped, not held
    // against the outside client.
    let mut tcp =
        rules_where(&virtual_service.tcp, |r| &mut r.matches, |m| m.gateways.is_empty() || names_gateway(&m.gateways));
    for block in tcp.iter_mut().flat_map(|r| r.matches.iter_mut()) {
        keep_port_only(block);
    }
    let mut tls = rules_where(
        &virtual_service.tls,
        |r| &mut r.matches,
        |m| m.l4.gateways.is_empty() || names_gateway(&m.l4.gateways),
    );
    for block in tls.iter_mut().flat_map(|r| r.matches.iter_mut()) {
        keep_port_only(&mut block.l4);
    }
    Some(GatewayRules { http, tcp, tls })
}

fn keep_port_only(block: &mut TcpMatch) {
    block.source_labels.clear();
    block.source_namespace = None;
    block.source_subnet = None;
    block.destination_subnets.clear();
}

/// Istio's `Names.Intersection` of a server's hosts (those admitting the
/// VirtualService's namespace) and the VirtualService's: for each pair
/// where one covers the other, the narrower, once each, in server order.
pub(crate) fn intersect_hosts<'a>(server_hosts: &[&'a str], vs_hosts: &'a [String]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for server_host in server_hosts {
        for vs_host in vs_hosts {
            let narrower = if host_subset_of(server_host, vs_host) {
                Some(*server_host)
            } else if host_subset_of(vs_host, server_host) {
                Some(vs_host.as_str())
            } else {
                None
            };
            if let Some(host) = narrower.filter(|h| !out.contains(h)) {
                out.push(host);
            }
        }
    }
    out
}

/// `tls` rules on a passthrough server: each block's `sniHosts` narrowed
/// to what the server's hosts cover (a block left with none goes, and a
/// rule left with no block).
pub(crate) fn narrow_sni(rules: Vec<TlsRoute>, server_hosts: &[&str]) -> Vec<TlsRoute> {
    rules
        .into_iter()
        .filter_map(|mut rule| {
            for block in &mut rule.matches {
                let hosts: Vec<String> = block.sni_hosts.clone();
                block.sni_hosts = intersect_hosts(server_hosts, &hosts).into_iter().map(str::to_owned).collect();
            }
            rule.matches.retain(|block| !block.sni_hosts.is_empty());
            (!rule.matches.is_empty()).then_some(rule)
        })
        .collect()
}
