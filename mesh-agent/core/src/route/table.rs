//! The compiled route table: for each destination host, the rules of the
//! VirtualService that routes it for the mesh.
//!
//! Sidecars apply one VirtualService per host (Istio merges several only
//! on gateways): of those a client can see (their `exportTo` against the
//! client pod's namespace), the first by namespace/name wins, Istio's order
//! among objects of equal age. [`shadowed_hosts`] names the ones no client
//! can ever reach that way, so the model can report them.

use super::l4::{TcpRoute, TlsRoute};
use super::rule::HttpRoute;
use super::validate::VirtualServiceModel;
use imbl::OrdMap;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// The rules for one host.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRoutes {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    /// Where it is visible: `exportTo` as written (empty: everywhere).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(skip)]
    namespace: String,
    pub http: std::sync::Arc<[HttpRoute]>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Per host, the VirtualServices that route it, in precedence order.
    exact: BTreeMap<String, Vec<HostRoutes>>,
    /// `*.example.com` hosts as (`.example.com`, routes), longest first:
    /// Envoy picks the most specific domain.
    wildcards: Vec<(String, Vec<HostRoutes>)>,
}

impl HostRoutes {
    /// Visible to a client in `namespace` (None: not a known pod, which
    /// sees only what is exported everywhere).
    pub fn visible_to(&self, namespace: Option<&str>) -> bool {
        exported_to(&self.export_to, &self.namespace, namespace)
    }
}

/// Istio's `exportTo`: empty or `*` everywhere, `.` the object's own
/// namespace, `~` nowhere, else the namespaces named.
pub(crate) fn exported_to(export_to: &[String], own: &str, client: Option<&str>) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|to| match to.as_str() {
            "*" => true,
            "~" => false,
            "." => client == Some(own),
            name => client == Some(name),
        })
}

impl RouteTable {
    /// Every VirtualService (by namespace/name) that applies to the mesh,
    /// keeping only the match blocks for the mesh (a rule whose blocks are
    /// all for gateways is left out). Hosts were resolved when the
    /// VirtualServices were validated.
    pub fn build(virtual_services: &OrdMap<NsName, VirtualServiceModel>) -> RouteTable {
        let mut table = RouteTable::default();
        let mut wildcards: BTreeMap<&str, Vec<HostRoutes>> = BTreeMap::new();
        for (host, virtual_services) in routing_hosts(virtual_services) {
            let routes: Vec<HostRoutes> = virtual_services.into_iter().map(HostRoutes::for_mesh).collect();
            if let Some(suffix) = host.strip_prefix('*') {
                wildcards.insert(suffix, routes);
            } else {
                table.exact.insert(host.to_owned(), routes);
            }
        }
        table.wildcards = wildcards.into_iter().map(|(suffix, routes)| (suffix.to_owned(), routes)).collect();
        table.wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// Every VirtualService routing `host_fqdn`: its own, else those of
    /// the longest wildcard host covering it.
    fn candidates(&self, host_fqdn: &str) -> &[HostRoutes] {
        self.exact
            .get(host_fqdn)
            .or_else(|| {
                self.wildcards
                    .iter()
                    .find(|(suffix, _)| host_fqdn.len() > suffix.len() && host_fqdn.ends_with(suffix.as_str()))
                    .map(|(_, routes)| routes)
            })
            .map_or(&[], Vec::as_slice)
    }

    /// The rules for `host_fqdn` as some client sees them (the first
    /// VirtualService routing it): whether it is routed at all.
    pub fn routes(&self, host_fqdn: &str) -> Option<&HostRoutes> {
        self.candidates(host_fqdn).first()
    }

    /// The rules for `host_fqdn` that a client in `namespace` sees.
    pub fn routes_for(&self, host_fqdn: &str, namespace: Option<&str>) -> Option<&HostRoutes> {
        self.candidates(host_fqdn).iter().find(|routes| routes.visible_to(namespace))
    }

    /// Empty when no VirtualService routes the host.
    pub fn http_routes(&self, host_fqdn: &str) -> &[HttpRoute] {
        self.routes(host_fqdn).map_or(&[], |r| &r.http)
    }

    /// The HTTP rules a client in `namespace` sees: empty when none of the
    /// VirtualServices routing the host is exported to it.
    pub fn http_routes_for(&self, host_fqdn: &str, namespace: Option<&str>) -> &[HttpRoute] {
        self.routes_for(host_fqdn, namespace).map_or(&[], |r| &r.http)
    }

    pub fn tcp_routes_for(&self, host_fqdn: &str, namespace: Option<&str>) -> &[TcpRoute] {
        self.routes_for(host_fqdn, namespace).map_or(&[], |r| &r.tcp)
    }

    pub fn tls_routes_for(&self, host_fqdn: &str, namespace: Option<&str>) -> &[TlsRoute] {
        self.routes_for(host_fqdn, namespace).map_or(&[], |r| &r.tls)
    }

    pub fn has_http_routes(&self, host_fqdn: &str) -> bool {
        !self.http_routes(host_fqdn).is_empty()
    }

    /// Whether any VirtualService routing `host_fqdn` (for any client
    /// namespace) has `tcp` or `tls` rules: the proxy must see its
    /// connections to apply them.
    pub fn has_l4_routes(&self, host_fqdn: &str) -> bool {
        self.candidates(host_fqdn).iter().any(|routes| !routes.tcp.is_empty() || !routes.tls.is_empty())
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
        // The first VirtualService per host (the one every client that can
        // see it uses); others visible elsewhere come after as `alsoRoutedBy`.
        let entry = |routes: &Vec<HostRoutes>| {
            let mut value = serde_json::to_value(&routes[0]).unwrap_or_default();
            if routes.len() > 1 {
                value["alsoRoutedBy"] = routes[1..].iter().map(|r| r.virtual_service.clone()).collect();
            }
            value
        };
        for (host, routes) in &self.exact {
            map.serialize_entry(host, &entry(routes))?;
        }
        for (suffix, routes) in &self.wildcards {
            map.serialize_entry(&format!("*{suffix}"), &entry(routes))?;
        }
        map.end()
    }
}

/// The rules as one place (the mesh, a gateway) sees them: the match
/// blocks that do not `apply` there dropped, and a rule left with none of
/// its blocks dropped too (a rule that had no blocks matches everything and
/// stays).
pub(crate) fn rules_where<R: Clone, M>(
    rules: &[R],
    matches: fn(&mut R) -> &mut Vec<M>,
    applies: impl Fn(&M) -> bool,
) -> Vec<R> {
    rules
        .iter()
        .filter_map(|rule| {
            let mut rule = rule.clone();
            let blocks = matches(&mut rule);
            let had_blocks = !blocks.is_empty();
            blocks.retain(|block| applies(block));
            (!had_blocks || !blocks.is_empty()).then_some(rule)
        })
        .collect()
}

impl HostRoutes {
    fn for_mesh(virtual_service: &VirtualServiceModel) -> HostRoutes {
        // Shared with the VirtualService (and its other hosts) unless some
        // match is only for gateways: a large mesh's routes are not copied.
        let all_mesh = virtual_service.http.iter().all(|r| r.matches.iter().all(|m| m.applies_to_mesh()));
        let http = match all_mesh {
            true => virtual_service.http.clone(),
            false => rules_where(&virtual_service.http, |r| &mut r.matches, |m| m.applies_to_mesh()).into(),
        };
        let tcp = rules_where(&virtual_service.tcp, |r| &mut r.matches, |m| m.applies_to_mesh());
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
            export_to: virtual_service.export_to.clone(),
            namespace: virtual_service.namespace.clone(),
            http,
            tcp,
            tls,
        }
    }
}

type NsName = (String, String);

/// Each mesh host with the VirtualServices that route it, by
/// namespace/name; one exported everywhere ends the list, as nothing after
/// it is ever chosen.
fn routing_hosts(virtual_services: &OrdMap<NsName, VirtualServiceModel>) -> BTreeMap<&str, Vec<&VirtualServiceModel>> {
    let mut routing: BTreeMap<&str, Vec<&VirtualServiceModel>> = BTreeMap::new();
    for virtual_service in virtual_services.values().filter(|vs| vs.applies_to_mesh()) {
        for host in &virtual_service.hosts {
            let list = routing.entry(host.as_str()).or_default();
            let closed = list.last().is_some_and(|last| exported_everywhere(last));
            if !closed {
                list.push(virtual_service);
            }
        }
    }
    routing
}

fn exported_everywhere(virtual_service: &VirtualServiceModel) -> bool {
    virtual_service.export_to.is_empty() || virtual_service.export_to.iter().any(|to| to == "*")
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

pub fn shadowed_hosts(virtual_services: &OrdMap<NsName, VirtualServiceModel>) -> Vec<ShadowedHost> {
    let routing = routing_hosts(virtual_services);
    let mut shadowed = Vec::new();
    for (id, virtual_service) in virtual_services.iter().filter(|(_, vs)| vs.applies_to_mesh()) {
        for (index, host) in virtual_service.hosts.iter().enumerate() {
            let candidates = &routing[host.as_str()];
            let routes = candidates
                .iter()
                .any(|c| (&c.namespace, &c.name) == (&virtual_service.namespace, &virtual_service.name));
            // Left out only behind one that every client sees.
            if !routes {
                let owner = candidates.last().expect("a host in the table has a VirtualService");
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
    use crate::decode::parse_file;
    use crate::model::Model;

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
        let table = RouteTable::build(&model(&text).virtual_services);
        let rule = |host: &str| table.http_routes(host).first().and_then(|r| r.name.clone());
        assert_eq!(rule("web.shop.svc.cluster.local").as_deref(), Some("web"));
        assert_eq!(rule("a.example.com").as_deref(), Some("all"));
        assert_eq!(rule("v1.api.example.com").as_deref(), Some("api"));
        assert_eq!(rule("example.com"), None);
        assert!(table.has_http_routes("web.shop.svc.cluster.local"));
        assert!(!table.has_http_routes("db.shop.svc.cluster.local"));
        assert!(table.tcp_routes("web.shop.svc.cluster.local").is_empty());
        let web = &model(&text).virtual_services;
        let shared = RouteTable::build(web);
        let owner = &web[&("shop".to_owned(), "web".to_owned())].http;
        assert!(std::sync::Arc::ptr_eq(&shared.routes("web.shop.svc.cluster.local").unwrap().http, owner));
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
        let table = RouteTable::build(&model.virtual_services);
        assert_eq!(table.routes("web.shop.svc.cluster.local").unwrap().virtual_service, "shop/a");
        let shadowed = shadowed_hosts(&model.virtual_services);
        assert_eq!(shadowed.len(), 1);
        assert_eq!(shadowed[0].virtual_service, ("shop".to_owned(), "b".to_owned()));
        assert_eq!((shadowed[0].index, shadowed[0].routed_by.as_str()), (0, "shop/a"));
    }

    #[test]
    fn each_client_namespace_sees_the_first_virtual_service_exported_to_it() {
        let text = [
            virtual_service("alpha", "private", "['web.shop.svc.cluster.local']", "  exportTo: ['.']\n"),
            virtual_service("beta", "for-gamma", "['web.shop.svc.cluster.local']", "  exportTo: [gamma]\n"),
            virtual_service("shop", "public", "[web]", ""),
            virtual_service("zeta", "late", "['web.shop.svc.cluster.local']", ""),
        ]
        .concat();
        let model = model(&text);
        let table = RouteTable::build(&model.virtual_services);
        let host = "web.shop.svc.cluster.local";
        let seen_by = |namespace: Option<&str>| table.routes_for(host, namespace).unwrap().virtual_service.clone();
        assert_eq!(seen_by(Some("alpha")), "alpha/private");
        assert_eq!(seen_by(Some("gamma")), "beta/for-gamma");
        assert_eq!(seen_by(Some("shop")), "shop/public");
        assert_eq!(seen_by(None), "shop/public", "a client that is not a known pod sees public ones only");
        assert_eq!(table.http_routes_for(host, Some("gamma"))[0].name.as_deref(), Some("for-gamma"));
        // Only the one behind a public VirtualService is never reachable.
        let shadowed = shadowed_hosts(&model.virtual_services);
        assert_eq!(shadowed.len(), 1);
        assert_eq!((shadowed[0].virtual_service.1.as_str(), shadowed[0].routed_by.as_str()), ("late", "shop/public"));
        let shown = serde_json::to_value(&table).unwrap();
        assert_eq!(shown[host]["alsoRoutedBy"], serde_json::json!(["beta/for-gamma", "shop/public"]));

        let hidden = virtual_service("shop", "hidden", "[web]", "  exportTo: ['~']\n");
        let table = RouteTable::build(&self::model(&hidden).virtual_services);
        assert!(table.routes_for(host, Some("shop")).is_none(), "exported nowhere");
    }

    #[test]
    fn gateway_only_rules_and_services_stay_out_of_the_mesh_table() {
        let gateway_only = virtual_service("shop", "edge", "[web]", "  gateways: [istio-system/ingress]\n");
        let table = RouteTable::build(&model(&gateway_only).virtual_services);
        assert!(table.is_empty(), "bound to a gateway only: not for sidecars");
        let mixed = "---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: mixed, namespace: shop}\nspec:\n  hosts: [web]\n  gateways: [ingress, mesh]\n  http:\n  - name: edge\n    match: [{gateways: [ingress], uri: {prefix: /admin}}]\n    route: [{destination: {host: admin}}]\n  - name: both\n    match: [{gateways: [ingress], uri: {prefix: /x}}, {uri: {prefix: /y}}]\n    route: [{destination: {host: web}}]\n";
        let table = RouteTable::build(&model(mixed).virtual_services);
        let routes = table.http_routes("web.shop.svc.cluster.local");
        assert_eq!(routes.len(), 1, "the ingress-only rule is left out");
        assert_eq!(routes[0].matches.len(), 1, "and so is the ingress-only block");
        assert_eq!(routes[0].matches[0].uri.as_ref().unwrap().prefix(), Some("/y"));
    }
}
