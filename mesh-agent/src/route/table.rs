//! The compiled route table: for each destination host, the rules of the
//! VirtualService that routes it for the mesh.
//!
//! Sidecars apply one VirtualService per host (Istio merges several only
//! on gateways): the first by namespace/name wins, Istio's order among
//! objects of equal age, and [`shadowed_hosts`] names the others so the
//! model can report them. The table does not yet look at `exportTo` or the
//! client's namespace: every VirtualService for the mesh is visible to
//! every client.

use super::l4::{TcpRoute, TlsRoute};
use super::validate::VirtualServiceModel;
use super::HttpRoute;
use crate::model::Model;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// The rules for one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRoutes {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact: BTreeMap<String, HostRoutes>,
    /// `*.example.com` hosts as (`.example.com`, routes), longest first:
    /// Envoy picks the most specific domain.
    wildcards: Vec<(String, HostRoutes)>,
}

impl RouteTable {
    /// Every VirtualService of `model` that applies to the mesh, keeping
    /// only the match blocks for the mesh (a rule whose blocks are all for
    /// gateways is left out). Hosts were resolved against the cluster
    /// domain when the model validated them, so `_cluster_domain` is not
    /// needed again; it keeps the signature of `snapshot::compile`.
    pub fn build(model: &Model, _cluster_domain: &str) -> RouteTable {
        let mut table = RouteTable::default();
        for (virtual_service, host) in owned_hosts(&model.virtual_services) {
            let routes = || HostRoutes::for_mesh(virtual_service);
            if let Some(suffix) = host.strip_prefix('*') {
                table.wildcards.push((suffix.to_owned(), routes()));
            } else {
                table.exact.insert(host.to_owned(), routes());
            }
        }
        table.wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The rules for `host_fqdn`: its own, else those of the longest
    /// wildcard host covering it.
    pub fn routes(&self, host_fqdn: &str) -> Option<&HostRoutes> {
        self.exact.get(host_fqdn).or_else(|| {
            self.wildcards
                .iter()
                .find(|(suffix, _)| host_fqdn.len() > suffix.len() && host_fqdn.ends_with(suffix.as_str()))
                .map(|(_, routes)| routes)
        })
    }

    /// Empty when no VirtualService routes the host.
    pub fn http_routes(&self, host_fqdn: &str) -> &[HttpRoute] {
        self.routes(host_fqdn).map_or(&[], |r| &r.http)
    }

    pub fn has_http_routes(&self, host_fqdn: &str) -> bool {
        !self.http_routes(host_fqdn).is_empty()
    }

    pub fn tcp_routes(&self, host_fqdn: &str) -> &[TcpRoute] {
        self.routes(host_fqdn).map_or(&[], |r| &r.tcp)
    }

    pub fn tls_routes(&self, host_fqdn: &str) -> &[TlsRoute] {
        self.routes(host_fqdn).map_or(&[], |r| &r.tls)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }
}

/// As a map from host (`*.example.com` for wildcards) to its routes.
impl Serialize for RouteTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.exact.len() + self.wildcards.len()))?;
        for (host, routes) in &self.exact {
            map.serialize_entry(host, routes)?;
        }
        for (suffix, routes) in &self.wildcards {
            map.serialize_entry(&format!("*{suffix}"), routes)?;
        }
        map.end()
    }
}

/// The rules as the mesh sees them: match blocks bound to other gateways
/// dropped, and a rule left with none of its blocks dropped too (a rule
/// that had no blocks matches everything and stays).
fn mesh_rules<R: Clone, M>(rules: &[R], matches: fn(&mut R) -> &mut Vec<M>, applies: fn(&M) -> bool) -> Vec<R> {
    rules
        .iter()
        .filter_map(|rule| {
            let mut rule = rule.clone();
            let blocks = matches(&mut rule);
            let had_blocks = !blocks.is_empty();
            blocks.retain(applies);
            (!had_blocks || !blocks.is_empty()).then_some(rule)
        })
        .collect()
}

impl HostRoutes {
    fn for_mesh(virtual_service: &VirtualServiceModel) -> HostRoutes {
        let http = mesh_rules(&virtual_service.http, |r| &mut r.matches, |m| m.applies_to_mesh());
        let tcp = mesh_rules(&virtual_service.tcp, |r| &mut r.matches, |m| m.applies_to_mesh());
        let tls = virtual_service
            .tls
            .iter()
            .filter_map(|rule| {
                let mut rule = rule.clone();
                rule.matches.retain(|m| m.l4.applies_to_mesh());
                (!rule.matches.is_empty()).then_some(rule)
            })
            .collect();
        HostRoutes {
            virtual_service: format!("{}/{}", virtual_service.namespace, virtual_service.name),
            http,
            tcp,
            tls,
        }
    }
}

type NsName = (String, String);

/// Each mesh host with the VirtualService that routes it: the first by
/// namespace/name among those naming it.
fn owned_hosts(virtual_services: &BTreeMap<NsName, VirtualServiceModel>) -> Vec<(&VirtualServiceModel, &str)> {
    let mut owners: BTreeMap<&str, &VirtualServiceModel> = BTreeMap::new();
    for virtual_service in virtual_services.values().filter(|vs| vs.applies_to_mesh()) {
        for host in &virtual_service.hosts {
            owners.entry(host.as_str()).or_insert(virtual_service);
        }
    }
    owners.into_iter().map(|(host, vs)| (vs, host)).collect()
}

/// A host a VirtualService names but does not route, because an earlier
/// one (by namespace/name) routes it for the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowedHost {
    pub virtual_service: NsName,
    /// Index into its `spec.hosts`.
    pub index: usize,
    pub host: String,
    /// `namespace/name` of the one that routes the host.
    pub routed_by: String,
}

pub fn shadowed_hosts(virtual_services: &BTreeMap<NsName, VirtualServiceModel>) -> Vec<ShadowedHost> {
    let owners: BTreeMap<&str, &VirtualServiceModel> =
        owned_hosts(virtual_services).into_iter().map(|(vs, host)| (host, vs)).collect();
    let mut shadowed = Vec::new();
    for (id, virtual_service) in virtual_services.iter().filter(|(_, vs)| vs.applies_to_mesh()) {
        for (index, host) in virtual_service.hosts.iter().enumerate() {
            let owner = owners[host.as_str()];
            if (&owner.namespace, &owner.name) != (&virtual_service.namespace, &virtual_service.name) {
                shadowed.push(ShadowedHost {
                    virtual_service: id.clone(),
                    index,
                    host: host.clone(),
                    routed_by: format!("{}/{}", owner.namespace, owner.name),
                });
            }
        }
    }
    shadowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::source::parse_file;

    fn model(text: &str) -> Model {
        let objects = parse_file("vs.yaml", text).unwrap();
        Model::build(&objects, vec![], &Model::default(), "cluster.local")
    }

    fn virtual_service(namespace: &str, name: &str, hosts: &str, extra: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  hosts: {hosts}\n{extra}  http:\n  - name: {name}\n    route: [{{destination: {{host: web}}}}]\n")
    }

    #[test]
    fn routes_by_host_with_wildcards_most_specific_first() {
        let text = [
            virtual_service("shop", "web", "[web]", ""),
            virtual_service("shop", "all", "['*.example.com']", ""),
            virtual_service("shop", "api", "['*.api.example.com']", ""),
        ]
        .concat();
        let table = RouteTable::build(&model(&text), "cluster.local");
        let rule = |host: &str| table.http_routes(host).first().and_then(|r| r.name.clone());
        assert_eq!(rule("web.shop.svc.cluster.local").as_deref(), Some("web"));
        assert_eq!(rule("a.example.com").as_deref(), Some("all"));
        assert_eq!(rule("v1.api.example.com").as_deref(), Some("api"));
        assert_eq!(rule("example.com"), None);
        assert!(table.has_http_routes("web.shop.svc.cluster.local"));
        assert!(!table.has_http_routes("db.shop.svc.cluster.local"));
        assert!(table.tcp_routes("web.shop.svc.cluster.local").is_empty());
        let shown = serde_json::to_value(&table).unwrap();
        assert_eq!(shown["*.api.example.com"]["virtualService"], "shop/api");
        assert_eq!(shown["web.shop.svc.cluster.local"]["http"][0]["name"], "web");
    }

    #[test]
    fn the_first_virtual_service_by_namespace_and_name_owns_a_host() {
        let text = [
            virtual_service("shop", "b", "[web]", ""),
            virtual_service("shop", "a", "[web.shop.svc.cluster.local, other]", ""),
        ]
        .concat();
        let model = model(&text);
        let table = RouteTable::build(&model, "cluster.local");
        assert_eq!(table.routes("web.shop.svc.cluster.local").unwrap().virtual_service, "shop/a");
        let shadowed = shadowed_hosts(&model.virtual_services);
        assert_eq!(shadowed.len(), 1);
        assert_eq!(shadowed[0].virtual_service, ("shop".to_owned(), "b".to_owned()));
        assert_eq!((shadowed[0].index, shadowed[0].routed_by.as_str()), (0, "shop/a"));
    }

    #[test]
    fn gateway_only_rules_and_services_stay_out_of_the_mesh_table() {
        let gateway_only = virtual_service("shop", "edge", "[web]", "  gateways: [istio-system/ingress]\n");
        let table = RouteTable::build(&model(&gateway_only), "cluster.local");
        assert!(table.is_empty(), "bound to a gateway only: not for sidecars");
        let mixed = "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: mixed, namespace: shop}\nspec:\n  hosts: [web]\n  gateways: [ingress, mesh]\n  http:\n  - name: edge\n    match: [{gateways: [ingress], uri: {prefix: /admin}}]\n    route: [{destination: {host: admin}}]\n  - name: both\n    match: [{gateways: [ingress], uri: {prefix: /x}}, {uri: {prefix: /y}}]\n    route: [{destination: {host: web}}]\n";
        let table = RouteTable::build(&model(mixed), "cluster.local");
        let routes = table.http_routes("web.shop.svc.cluster.local");
        assert_eq!(routes.len(), 1, "the ingress-only rule is left out");
        assert_eq!(routes[0].matches.len(), 1, "and so is the ingress-only block");
        assert_eq!(routes[0].matches[0].uri.as_ref().unwrap().prefix(), Some("/y"));
    }
}
