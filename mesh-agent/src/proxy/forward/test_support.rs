//! Test helpers: routes and snapshots from YAML, as the agent builds them.

use mesh_core::api::Resource;
use mesh_core::decode::parse_file;
use mesh_core::route::{validate_virtual_service, HttpRoute};
use mesh_core::snapshot::Snapshot;

/// The `http` rules of a VirtualService for host `reviews` in `shop`;
/// `http` is the YAML list at column 0.
pub fn routes(http: &str) -> Vec<HttpRoute> {
    let indented: String = http.lines().map(|line| format!("    {line}\n")).collect();
    let text = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n{indented}");
    let objects = parse_file("vs.yaml", &text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    let Resource::VirtualService(object) = &*objects[0].resource else { unreachable!() };
    validate_virtual_service(object, "cluster.local").unwrap().http.to_vec()
}

/// Two services in `shop`, `reviews` and `ratings` (port 9080, `http`),
/// with one ready endpoint each, and a rule with subsets for `ratings`.
pub fn snapshot() -> Snapshot {
    let service = |name: &str, ip: &str, pod: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 9080}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 9080}}]\nendpoints: [{{addresses: [{pod}]}}]\n")
    };
    let rule = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: shop}\nspec:\n  host: ratings\n  subsets:\n  - {name: v2, labels: {version: v2}}\n";
    let text =
        [service("reviews", "10.96.0.10", "10.244.0.2"), service("ratings", "10.96.0.11", "10.244.0.3"), rule.into()]
            .concat();
    crate::proxy::test_support::snapshot_of(&text)
}
