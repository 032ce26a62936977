//! The Istio kinds of `networking.istio.io` as Kubernetes custom resources:
//! `VirtualService`, `DestinationRule`, `Gateway`, `ServiceEntry`,
//! `Sidecar` and `WorkloadEntry`, served as v1, v1beta1 and v1alpha3 with one schema, as Istio
//! serves them. The CRD manifests in `deploy/crds/` are generated from these
//! types (`cargo xtask crds`), and a test fails when they drift.
//!
//! The top-level fields are typed; the nested Istio messages (routes,
//! policies, servers) are kept as JSON with their unknown fields preserved,
//! as the agent validates them itself and reports problems by field in
//! `status.conditions`, where a CRD schema would only refuse the object.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::crd::merge_crds;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "networking.istio.io";
/// The versions every kind is served as; the first is stored.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// The status the agent writes back: Kubernetes-style conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// In the schema, any object: istiod writes its own fields there too
/// (`validationMessages`, and `observedGeneration` as a string, protobuf's
/// JSON for int64), and a cluster may move between the two.
impl JsonSchema for IstioStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IstioStatus".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "Reconciled conditions written by the mesh agent (and istiod's fields, kept).",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Reconciled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A nested Istio message: any object, unknown fields kept.
fn message(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A list of nested Istio messages.
fn messages(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// The same kinds in each served version: the API server converts between
/// them with no webhook (`strategy: None`), which needs identical schemas.
macro_rules! istio_version {
    ($module:ident, $version:literal) => {
        pub mod $module {
            use super::*;

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "VirtualService", namespaced)]
            #[kube(doc = "Istio VirtualService: how requests to a host are routed.")]
            #[kube(status = "IstioStatus", shortname = "vs", category = "istio-io", category = "networking-istio-io")]
            #[kube(printcolumn(name = "Gateways", type_ = "string", json_path = ".spec.gateways"))]
            #[kube(printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"))]
            #[kube(printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"))]
            #[serde(rename_all = "camelCase")]
            pub struct VirtualServiceSpec {
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub hosts: Vec<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub gateways: Vec<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub http: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub tls: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub tcp: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub export_to: Vec<String>,
            }

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "DestinationRule", namespaced)]
            #[kube(doc = "Istio DestinationRule: subsets and traffic policy of a host.")]
            #[kube(status = "IstioStatus", shortname = "dr", category = "istio-io", category = "networking-istio-io")]
            #[kube(printcolumn(name = "Host", type_ = "string", json_path = ".spec.host"))]
            #[kube(printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"))]
            #[serde(rename_all = "camelCase")]
            pub struct DestinationRuleSpec {
                #[serde(default)]
                pub host: String,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub traffic_policy: Option<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub subsets: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub export_to: Vec<String>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub workload_selector: Option<serde_json::Value>,
            }

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "Gateway", namespaced)]
            #[kube(doc = "Istio Gateway: a load balancer at the edge of the mesh.")]
            #[kube(status = "IstioStatus", shortname = "gw", category = "istio-io", category = "networking-istio-io")]
            #[serde(rename_all = "camelCase")]
            pub struct GatewaySpec {
                #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
                pub selector: BTreeMap<String, String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub servers: Vec<serde_json::Value>,
            }

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "ServiceEntry", namespaced)]
            #[kube(doc = "Istio ServiceEntry: a service added to the mesh's registry.")]
            #[kube(status = "IstioStatus", shortname = "se", category = "istio-io", category = "networking-istio-io")]
            #[kube(printcolumn(name = "Hosts", type_ = "string", json_path = ".spec.hosts"))]
            #[kube(printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"))]
            #[kube(printcolumn(name = "Resolution", type_ = "string", json_path = ".spec.resolution"))]
            #[kube(printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"))]
            #[serde(rename_all = "camelCase")]
            pub struct ServiceEntrySpec {
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub hosts: Vec<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub addresses: Vec<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub ports: Vec<serde_json::Value>,
                /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub location: Option<String>,
                /// `NONE`, `STATIC`, `DNS` or `DNS_ROUND_ROBIN`.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub resolution: Option<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub endpoints: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub workload_selector: Option<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub export_to: Vec<String>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                pub subject_alt_names: Vec<String>,
            }

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "Sidecar", namespaced)]
            #[kube(doc = "Istio Sidecar: the scope of a workload's proxy configuration.")]
            #[kube(status = "IstioStatus", category = "istio-io", category = "networking-istio-io")]
            #[serde(rename_all = "camelCase")]
            pub struct SidecarSpec {
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub workload_selector: Option<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub ingress: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Vec::is_empty")]
                #[schemars(schema_with = "messages")]
                pub egress: Vec<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub outbound_traffic_policy: Option<serde_json::Value>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                #[schemars(schema_with = "message")]
                pub inbound_connection_pool: Option<serde_json::Value>,
            }

            #[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
            #[kube(group = "networking.istio.io", version = $version, kind = "WorkloadEntry", namespaced)]
            #[kube(doc = "Istio WorkloadEntry: a workload outside Kubernetes (a VM), for ServiceEntries to select.")]
            #[kube(status = "IstioStatus", shortname = "we", category = "istio-io", category = "networking-istio-io")]
            #[kube(printcolumn(name = "Address", type_ = "string", json_path = ".spec.address"))]
            #[serde(rename_all = "camelCase")]
            pub struct WorkloadEntrySpec {
                #[serde(default, skip_serializing_if = "String::is_empty")]
                pub address: String,
                #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
                pub ports: BTreeMap<String, u32>,
                #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
                pub labels: BTreeMap<String, String>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub network: Option<String>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub locality: Option<String>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub weight: Option<u32>,
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub service_account: Option<String>,
            }

            /// This version's CRDs, in the order of [`super::KINDS`].
            pub fn crds() -> [CustomResourceDefinition; 6] {
                use kube::CustomResourceExt;
                [
                    VirtualService::crd(),
                    DestinationRule::crd(),
                    Gateway::crd(),
                    ServiceEntry::crd(),
                    Sidecar::crd(),
                    WorkloadEntry::crd(),
                ]
            }
        }
    };
}

istio_version!(v1, "v1");
istio_version!(v1beta1, "v1beta1");
istio_version!(v1alpha3, "v1alpha3");

/// The kinds, with their plural (the CRD's and the manifest file's name).
pub const KINDS: [(&str, &str); 6] = [
    ("VirtualService", "virtualservices"),
    ("DestinationRule", "destinationrules"),
    ("Gateway", "gateways"),
    ("ServiceEntry", "serviceentries"),
    ("Sidecar", "sidecars"),
    ("WorkloadEntry", "workloadentries"),
];

/// One CRD per kind, serving every version, storing the first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let per_version = [v1::crds(), v1beta1::crds(), v1alpha3::crds()];
    (0..KINDS.len())
        .map(|kind| {
            let versions = per_version.iter().map(|crds| crds[kind].clone()).collect();
            merge_crds(versions, VERSIONS[0]).expect("the versions of one kind share names and scope")
        })
        .collect()
}

/// The manifest files of `deploy/crds/`: name and YAML text.
pub fn manifests() -> Vec<(String, String)> {
    let header = "# Generated by `cargo xtask crds` from mesh-agent/src/k8s/crd.rs; do not edit.\n";
    let mut files: Vec<(String, String)> = crds()
        .iter()
        .zip(KINDS)
        .map(|(crd, (_, plural))| {
            let yaml = serde_saphyr::to_string(crd).expect("a CRD serializes");
            (format!("{plural}.yaml"), format!("{header}{yaml}"))
        })
        .collect();
    let resources: String = KINDS.iter().map(|(_, plural)| format!("- {plural}.yaml\n")).collect();
    files.push(("kustomization.yaml".into(), format!("{header}resources:\n{resources}")));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CI fails when `deploy/crds/` is not what the types generate.
    #[test]
    fn deploy_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        for (name, text) in manifests() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(on_disk == text, "deploy/crds/{name} is out of date: run `cargo xtask crds`");
        }
    }

    /// Examples from Istio's reference documentation, one per kind.
    const ISTIO_DOC_EXAMPLES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews-route
  namespace: prod
spec:
  hosts:
  - reviews.prod.svc.cluster.local
  http:
  - name: reviews-v2-routes
    match:
    - uri:
        prefix: /wpcatalog
    - uri:
        prefix: /consumercatalog
    rewrite:
      uri: /newcatalog
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v2
  - name: reviews-v1-route
    route:
    - destination:
        host: reviews.prod.svc.cluster.local
        subset: v1
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: bookinfo-ratings
  namespace: prod
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: testversion
    labels:
      version: v3
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: my-gateway
  namespace: some-config-namespace
spec:
  selector:
    app: my-gateway-controller
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - uk.bookinfo.com
    - eu.bookinfo.com
    tls:
      httpsRedirect: true
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: istio-config
spec:
  egress:
  - hosts:
    - ./*
    - istio-system/*
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
spec:
  serviceAccount: details-legacy
  address: 2.2.2.2
  labels:
    app: details-legacy
    instance-id: vm1
"#;

    fn round_trip<K: serde::de::DeserializeOwned + Serialize>(document: &serde_json::Value) -> serde_json::Value {
        let typed: K = serde_json::from_value(document.clone()).expect("decodes into the CRD type");
        serde_json::to_value(typed).expect("encodes")
    }

    #[test]
    fn istio_documentation_examples_round_trip_through_the_types() {
        for json in mesh_core::decode::yaml_documents(ISTIO_DOC_EXAMPLES).unwrap() {
            let version = json["apiVersion"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
            let kind = json["kind"].as_str().unwrap().to_owned();
            macro_rules! by_version {
                ($kind:ident) => {
                    match version.as_str() {
                        "v1" => round_trip::<v1::$kind>(&json),
                        "v1beta1" => round_trip::<v1beta1::$kind>(&json),
                        _ => round_trip::<v1alpha3::$kind>(&json),
                    }
                };
            }
            let back = match kind.as_str() {
                "VirtualService" => by_version!(VirtualService),
                "DestinationRule" => by_version!(DestinationRule),
                "Gateway" => by_version!(Gateway),
                "ServiceEntry" => by_version!(ServiceEntry),
                "WorkloadEntry" => by_version!(WorkloadEntry),
                _ => by_version!(Sidecar),
            };
            assert_eq!(back, json, "{kind} {version} comes back as written");
            // And the agent reads the kinds it serves without a complaint.
            let mut parsed = mesh_core::decode::ParsedFile::default();
            mesh_core::decode::decode_object("", json, &mut parsed);
            assert!(parsed.undecodable.is_empty() && parsed.problems.is_empty(), "{kind}: {parsed:?}");
        }
    }

    #[test]
    fn every_kind_is_served_in_every_version_and_stored_once() {
        for (crd, (kind, plural)) in crds().iter().zip(KINDS) {
            assert_eq!(crd.spec.names.kind, kind);
            assert_eq!(crd.metadata.name.as_deref(), Some(format!("{plural}.{GROUP}").as_str()));
            let mut served: Vec<&str> =
                crd.spec.versions.iter().filter(|v| v.served).map(|v| v.name.as_str()).collect();
            served.sort();
            assert_eq!(served, ["v1", "v1alpha3", "v1beta1"]);
            let stored: Vec<&str> = crd.spec.versions.iter().filter(|v| v.storage).map(|v| v.name.as_str()).collect();
            assert_eq!(stored, ["v1"]);
            let schemas: Vec<_> = crd.spec.versions.iter().map(|v| v.schema.clone()).collect();
            assert!(schemas.windows(2).all(|w| w[0] == w[1]), "{kind}: one schema for all versions");
            assert!(crd.spec.versions.iter().all(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some())));
        }
    }
}
