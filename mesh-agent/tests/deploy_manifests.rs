//! Every manifest under deploy/ parses into the Kubernetes API types, and
//! what matters holds: the DaemonSet's selector matches its pods, every
//! mount has its volume, the probes reach the health address the agent is
//! told to serve, and RBAC grants exactly what the agent uses.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use mesh_agent::k8s::{required_permissions, Permissions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a file, as JSON.
fn documents(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    mesh_core::decode::yaml_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_json::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}")))
        .collect()
}

fn all_documents() -> Vec<serde_json::Value> {
    let dir = deploy_dir();
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    // The CRDs are their own kustomization, applied first when Istio's are
    // not installed.
    let mut docs = Vec::new();
    let crds = dir.join("crds");
    for file in documents(&crds.join("kustomization.yaml"))[0]["resources"].as_array().unwrap() {
        docs.extend(documents(&crds.join(file.as_str().unwrap())));
    }
    for resource in kustomization["resources"].as_array().expect("resources") {
        let path = dir.join(resource.as_str().unwrap());
        if path.is_dir() {
            let inner = &documents(&path.join("kustomization.yaml"))[0];
            for file in inner["resources"].as_array().unwrap() {
                docs.extend(documents(&path.join(file.as_str().unwrap())));
            }
        } else {
            docs.extend(documents(&path));
        }
    }
    docs
}

#[test]
fn every_manifest_parses_into_its_api_type() {
    let docs = all_documents();
    let known = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "CustomResourceDefinition",
    ];
    for doc in &docs {
        assert!(known.contains(&doc["kind"].as_str().unwrap_or_default()), "unexpected kind in {doc}");
    }
    assert_eq!(of_kind::<Namespace>(&docs, "Namespace").len(), 1);
    assert_eq!(of_kind::<CustomResourceDefinition>(&docs, "CustomResourceDefinition").len(), 5);
    assert_eq!(of_kind::<DaemonSet>(&docs, "DaemonSet").len(), 1);
}

#[test]
fn the_daemonset_selects_its_pods_mounts_what_exists_and_probes_the_health_address() {
    let docs = all_documents();
    let daemonset = of_kind::<DaemonSet>(&docs, "DaemonSet").remove(0);
    let namespace = of_kind::<Namespace>(&docs, "Namespace").remove(0).metadata.name.unwrap();
    assert_eq!(daemonset.metadata.namespace.as_deref(), Some(namespace.as_str()));
    let spec = daemonset.spec.unwrap();
    let template_labels = spec.template.metadata.unwrap().labels.unwrap();
    for (key, value) in spec.selector.match_labels.unwrap() {
        assert_eq!(template_labels.get(&key), Some(&value), "selector {key}={value} matches the pods");
    }
    let update = spec.update_strategy.unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    let rolling = update.rolling_update.unwrap();
    assert_eq!(serde_json::to_value(rolling.max_unavailable).unwrap(), 1, "one node at a time");

    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true), "the proxy listens on the node address");
    let tolerations = pod.tolerations.unwrap();
    assert!(tolerations.iter().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()), "every node");
    let accounts = of_kind::<ServiceAccount>(&docs, "ServiceAccount");
    assert!(accounts.iter().any(|a| a.metadata.name == pod.service_account_name), "the service account exists");

    let volumes: BTreeSet<String> = pod.volumes.unwrap().into_iter().map(|v| v.name).collect();
    let container = &pod.containers[0];
    let mounts: BTreeSet<String> = container.volume_mounts.clone().unwrap().into_iter().map(|m| m.name).collect();
    assert_eq!(mounts, volumes, "every mount has its volume and every volume is mounted");

    let args = container.args.clone().unwrap();
    let arg = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
    assert_eq!(arg("--source").as_deref(), Some("kubernetes"));
    let health_port: i32 = arg("--health").expect("--health").rsplit(':').next().unwrap().parse().unwrap();
    let admin = arg("--admin").expect("--admin");
    assert!(admin.starts_with("127.0.0.1:"), "the full admin API stays on loopback: {admin}");
    for (name, probe) in [
        ("liveness", container.liveness_probe.clone()),
        ("readiness", container.readiness_probe.clone()),
        ("startup", container.startup_probe.clone()),
    ] {
        let http = probe.and_then(|p| p.http_get).unwrap_or_else(|| panic!("{name} probe is an HTTP GET"));
        assert_eq!(serde_json::to_value(&http.port).unwrap(), health_port, "{name} probe port");
        let path = http.path.unwrap();
        assert!(path == "/healthz" || path == "/readyz", "{name} probe path {path}");
    }
    let env: Vec<_> = container.env.clone().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.field_ref)
            .map(|f| f.field_path)
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field("HOST_IP").as_deref(), Some("status.hostIP"));
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert!(args.contains(&"$(HOST_IP)".to_owned()), "--node-ip is the host address");

    let security = container.security_context.clone().unwrap();
    assert_ne!(security.privileged, Some(true));
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    let added: BTreeSet<String> = capabilities.add.unwrap().into_iter().collect();
    let expected: BTreeSet<String> = ["BPF", "NET_ADMIN", "SYS_ADMIN", "PERFMON"].map(String::from).into();
    assert_eq!(added, expected);
    assert!(container.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "resource requests");
}

/// The (group, resource, verb) triples a set of rules grants.
fn granted(rules: &[PolicyRule]) -> Permissions {
    let mut out = Permissions::new();
    for rule in rules {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(group != "*" && resource != "*" && verb != "*", "no wildcards: {rule:?}");
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_every_verb_the_agent_uses_and_no_more() {
    let docs = all_documents();
    let (cluster_needed, namespaced_needed) = required_permissions();
    let cluster_role = of_kind::<ClusterRole>(&docs, "ClusterRole").remove(0);
    assert_eq!(granted(&cluster_role.rules.unwrap()), cluster_needed);
    let role = of_kind::<Role>(&docs, "Role").remove(0);
    assert_eq!(granted(&role.rules.unwrap()), namespaced_needed);

    let account = of_kind::<ServiceAccount>(&docs, "ServiceAccount").remove(0);
    let subject_is_account = |subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.unwrap().iter().any(|s| {
            s.kind == "ServiceAccount"
                && Some(&s.name) == account.metadata.name.as_ref()
                && s.namespace == account.metadata.namespace
        })
    };
    let binding = of_kind::<ClusterRoleBinding>(&docs, "ClusterRoleBinding").remove(0);
    assert_eq!(Some(binding.role_ref.name), cluster_role.metadata.name);
    assert!(subject_is_account(binding.subjects));
    let role_binding = of_kind::<RoleBinding>(&docs, "RoleBinding").remove(0);
    assert_eq!(Some(role_binding.role_ref.name), role.metadata.name);
    assert_eq!(role_binding.metadata.namespace, account.metadata.namespace, "the Lease lives in the agents' namespace");
    assert!(subject_is_account(role_binding.subjects));
}

#[test]
fn example_istio_yaml_is_accepted_by_the_agent() {
    let dir = deploy_dir().join("examples/istio");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let objects = mesh_core::decode::parse_file(&name, &text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let model = mesh_core::model::Model::build(&objects, vec![], &Default::default(), "cluster.local");
        assert!(model.rejections.is_empty(), "{name}: {:?}", model.rejections);
        seen += 1;
    }
    assert_eq!(seen, 3);
}
