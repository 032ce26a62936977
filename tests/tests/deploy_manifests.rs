//! Every manifest under deploy/ parses into the Kubernetes API types, and
//! what matters holds: the DaemonSet's selector matches its pods, every
//! mount has its volume, the probes reach the health address the agent is
//! told to serve, and RBAC grants exactly what the agent uses. The gateways
//! (deploy/gateways/, installed on top): selectors, probes and Service ports
//! meet the container, the pods run unprivileged, and their RBAC reads only
//! what a gateway serves, Secrets only in its own namespace.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_agent::k8s::{required_permissions, Permissions};
use mesh_tests::deploy::{self, deploy_dir};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn kustomization_documents(dir: &Path) -> Vec<serde_json::Value> {
    deploy::kustomization_documents(dir).unwrap_or_else(|e| panic!("{e:#}"))
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_json::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}")))
        .collect()
}

fn all_documents() -> Vec<serde_json::Value> {
    let dir = deploy_dir();
    // The CRDs are their own kustomization, applied first when Istio's are
    // not installed.
    let mut docs = kustomization_documents(&dir.join("crds"));
    docs.extend(kustomization_documents(&dir));
    docs
}

/// The downward-API field the container's env `name` is set from.
fn env_field(container: &Container, name: &str) -> Option<String> {
    (container.env.as_ref()?.iter())
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.clone())
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path)
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
    let kinds = mesh_agent::k8s::crd::KINDS.len();
    assert_eq!(of_kind::<CustomResourceDefinition>(&docs, "CustomResourceDefinition").len(), kinds);
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
    // The new pod starts beside the old one and takes its listeners over.
    assert_eq!(serde_json::to_value(rolling.max_surge).unwrap(), 1, "a surge pod per node");
    assert_eq!(serde_json::to_value(rolling.max_unavailable).unwrap(), 0, "no node without an agent");

    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true), "the proxy listens on the node address");
    let host_ports = pod.containers.iter().any(|c| c.ports.as_ref().is_some_and(|ports| !ports.is_empty()));
    assert!(!host_ports, "a hostPort would keep the surge pod of an upgrade off the node");
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
    let field = |name: &str| env_field(container, name);
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
    // Kubernetes 1.28 refuses securityContext.appArmorProfile (a 1.30
    // field): the annotation says the same on every supported version.
    assert!(security.app_armor_profile.is_none(), "no 1.30-only field");
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

/// The gateways' kustomization (deploy/gateways/), applied after deploy/.
fn gateway_documents() -> Vec<serde_json::Value> {
    kustomization_documents(&deploy_dir().join("gateways"))
}

/// The flags `mesh-agent gateway` takes in a cluster, each with a value.
const GATEWAY_FLAGS: [&str; 6] = ["--source", "--labels-file", "--namespace", "--admin", "--health", "--listen-ip"];

#[test]
fn gateway_manifests_parse_and_name_only_fields_of_their_api_types() {
    let docs = gateway_documents();
    let namespace = of_kind::<Namespace>(&all_documents(), "Namespace").remove(0).metadata.name.unwrap();
    // Serialized back, a parsed object must give the document again: a
    // misspelt or misplaced field would be dropped by the parser (and by the
    // API server), not refused.
    fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &serde_json::Value) {
        let parsed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
        assert_eq!(&serde_json::to_value(parsed).unwrap(), doc, "a field the API type does not have");
    }
    let mut kinds = BTreeMap::<String, usize>::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        match kind {
            "ServiceAccount" => round_trips::<ServiceAccount>(doc),
            "ClusterRole" => round_trips::<ClusterRole>(doc),
            "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc),
            "Role" => round_trips::<Role>(doc),
            "RoleBinding" => round_trips::<RoleBinding>(doc),
            "Deployment" => round_trips::<Deployment>(doc),
            "Service" => round_trips::<Service>(doc),
            "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(doc),
            _ => panic!("unexpected kind in {doc}"),
        }
        if !kind.starts_with("Cluster") {
            assert_eq!(doc["metadata"]["namespace"], namespace.as_str(), "in the mesh's namespace: {doc}");
        }
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    let expected = [
        ("ClusterRole", 1),
        ("ClusterRoleBinding", 1),
        ("Deployment", 2),
        ("PodDisruptionBudget", 2),
        ("Role", 1),
        ("RoleBinding", 1),
        ("Service", 2),
        ("ServiceAccount", 1),
    ];
    assert_eq!(kinds, expected.map(|(k, n)| (k.to_owned(), n)).into(), "one account for both gateways");
    // The agent installs alone: deploy/ has no gateway in it.
    assert!(all_documents().iter().all(|d| d["kind"] != "Deployment"), "deploy/ stays the agent alone");
}

/// A gateway's objects, found by the `istio` label Istio's charts give it.
struct Gateway {
    deployment: Deployment,
    service: Service,
    budget: Option<PodDisruptionBudget>,
}

fn gateway(docs: &[serde_json::Value], istio: &str) -> Gateway {
    let labelled = |labels: &serde_json::Value| labels["istio"] == istio;
    let mut deployments: Vec<Deployment> = of_kind(docs, "Deployment");
    deployments.retain(|d| {
        d.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap().get("istio").map(String::as_str) == Some(istio)
    });
    assert_eq!(deployments.len(), 1, "one Deployment of istio={istio}");
    let services: Vec<Service> = docs
        .iter()
        .filter(|d| d["kind"] == "Service" && labelled(&d["spec"]["selector"]))
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect();
    assert_eq!(services.len(), 1, "one Service of istio={istio}");
    let mut budgets: Vec<PodDisruptionBudget> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget" && labelled(&d["spec"]["selector"]["matchLabels"]))
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .collect();
    assert!(budgets.len() <= 1, "at most one PodDisruptionBudget of istio={istio}");
    Gateway { deployment: deployments.remove(0), service: services.into_iter().next().unwrap(), budget: budgets.pop() }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The port a probe or Service names, as a number of the container.
fn container_port(container: &Container, port: &IntOrString) -> i32 {
    let ports = container.ports.clone().unwrap_or_default();
    let found = match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n),
        IntOrString::String(name) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
    };
    found.unwrap_or_else(|| panic!("{port:?} is not a port of container {}", container.name)).container_port
}

/// Checks one gateway's Deployment, Service and PodDisruptionBudget against
/// each other and against the gateway's command line.
fn check_gateway(gateway: &Gateway, istio: &str, app: &str) {
    let spec = gateway.deployment.spec.clone().unwrap();
    let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    assert_eq!(
        pod_labels.get("istio").map(String::as_str),
        Some(istio),
        "Istio's label: Gateway selectors find the pods"
    );
    assert_eq!(pod_labels.get("app").map(String::as_str), Some(app));
    let selector = spec.selector.match_labels.clone().unwrap();
    assert!(selects(&selector, &pod_labels), "{app}: the Deployment selects its pods");
    let service_selector = gateway.service.spec.clone().unwrap().selector.unwrap();
    assert!(selects(&service_selector, &pod_labels), "{app}: the Service selects the pods");

    let pod = spec.template.spec.clone().unwrap();
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];

    // The command line: the gateway subcommand, only the agreed flags, each
    // with its value, and every $(VAR) an env of the container.
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "gateway", "{app}: runs the gateway subcommand");
    let mut flags = BTreeMap::new();
    for pair in args[1..].chunks(2) {
        assert!(GATEWAY_FLAGS.contains(&pair[0].as_str()), "{app}: {} is not a gateway flag", pair[0]);
        let value = pair.get(1).unwrap_or_else(|| panic!("{app}: {} has no value", pair[0]));
        assert!(!value.starts_with("--"), "{app}: {} has no value", pair[0]);
        assert!(flags.insert(pair[0].as_str(), value.as_str()).is_none(), "{app}: {} twice", pair[0]);
    }
    let env = container.env.clone().unwrap();
    let field = |name: &str| env_field(container, name);
    for value in flags.values() {
        if let Some(var) = value.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
            assert!(env.iter().any(|e| e.name == var), "{app}: $({var}) is an env of the container");
        }
    }
    assert_eq!(flags.get("--source"), Some(&"kubernetes"));
    assert_eq!(flags.get("--namespace"), Some(&"$(POD_NAMESPACE)"));
    assert_eq!(field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    let admin = flags["--admin"];
    assert!(admin.starts_with("127.0.0.1:"), "{app}: the full admin API stays on loopback: {admin}");

    // --labels-file is the downward API's file of the pod's labels.
    let labels_file = Path::new(flags["--labels-file"]);
    let mounts = container.volume_mounts.clone().unwrap();
    let mount =
        mounts.iter().find(|m| labels_file.parent() == Some(Path::new(&m.mount_path))).expect("labels file mounted");
    let volumes = pod.volumes.clone().unwrap();
    let volume = volumes.iter().find(|v| v.name == mount.name).expect("the mount's volume");
    let items = volume.downward_api.clone().expect("a downward API volume").items.unwrap();
    let item =
        items.iter().find(|i| Path::new(&i.path) == labels_file.strip_prefix(&mount.mount_path).unwrap()).unwrap();
    assert_eq!(item.field_ref.as_ref().unwrap().field_path, "metadata.labels");
    let volume_names: BTreeSet<&String> = volumes.iter().map(|v| &v.name).collect();
    let mount_names: BTreeSet<&String> = mounts.iter().map(|m| &m.name).collect();
    assert_eq!(mount_names, volume_names, "{app}: every mount has its volume and every volume is mounted");
    assert!(volumes.iter().all(|v| v.host_path.is_none()), "{app}: nothing of the host");

    // Probes: the health address the gateway is told to serve, a declared port.
    let health_port: i32 = flags["--health"].rsplit(':').next().unwrap().parse().unwrap();
    for (name, probe, path) in [
        ("liveness", container.liveness_probe.clone(), "/healthz"),
        ("readiness", container.readiness_probe.clone(), "/readyz"),
    ] {
        let http = probe.and_then(|p| p.http_get).unwrap_or_else(|| panic!("{app}: {name} probe is an HTTP GET"));
        assert_eq!(container_port(container, &http.port), health_port, "{app}: {name} probe port");
        assert_eq!(http.path.as_deref(), Some(path), "{app}: {name} probe path");
    }

    // Every Service port reaches a port the container declares.
    let service_ports = gateway.service.spec.clone().unwrap().ports.unwrap();
    for port in &service_ports {
        let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
        container_port(container, &target);
    }

    // Unprivileged: non-root (the image's user is root, so a user id is
    // given), read-only root, no capability but binding low ports, and then
    // only if a port needs it.
    let pod_security = pod.security_context.clone().unwrap_or_default();
    let security = container.security_context.clone().unwrap();
    assert_ne!(pod.host_network, Some(true), "{app}: its own network namespace");
    assert_ne!(security.privileged, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false), "{app}: no_new_privs");
    assert_eq!(security.read_only_root_filesystem, Some(true), "{app}: read-only root");
    assert_eq!(security.run_as_non_root.or(pod_security.run_as_non_root), Some(true), "{app}: non-root");
    let user = security.run_as_user.or(pod_security.run_as_user).expect("a user id: the image's user is root");
    assert_ne!(user, 0, "{app}: non-root");
    let seccomp = security.seccomp_profile.or(pod_security.seccomp_profile).expect("a seccomp profile");
    assert_eq!(seccomp.type_, "RuntimeDefault");
    let capabilities = security.capabilities.unwrap();
    assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
    let added = capabilities.add.unwrap_or_default();
    assert!(added.iter().all(|c| c == "NET_BIND_SERVICE"), "{app}: added {added:?}");
    let low_port = container.ports.clone().unwrap().iter().any(|p| p.container_port < 1024);
    assert_eq!(low_port, !added.is_empty(), "{app}: NET_BIND_SERVICE exactly when a port is below 1024");
    assert!(container.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "{app}: resource requests");

    // The budget selects the pods and still lets a drain evict one.
    let replicas = spec.replicas.unwrap_or(1);
    match &gateway.budget {
        Some(budget) => {
            let budget = budget.spec.clone().unwrap();
            assert!(
                selects(&budget.selector.unwrap().match_labels.unwrap(), &pod_labels),
                "{app}: the budget selects the pods"
            );
            let IntOrString::Int(min) = budget.min_available.expect("minAvailable") else { panic!("{app}: a number") };
            assert!(min >= 1 && min < replicas, "{app}: minAvailable {min} of {replicas} replicas");
        }
        None => assert_eq!(replicas, 1, "{app}: several replicas come with a PodDisruptionBudget"),
    }
}

/// A Service port's target, which the gateways give as a number.
fn target_number(port: &k8s_openapi::api::core::v1::ServicePort) -> i32 {
    match port.target_port {
        Some(IntOrString::Int(n)) => n,
        ref other => panic!("targetPort {other:?} of {:?}: a number", port.name),
    }
}

#[test]
fn the_ingress_gateway_is_a_load_balancer_on_istios_ports_in_front_of_unprivileged_pods() {
    let docs = gateway_documents();
    let ingress = gateway(&docs, "ingressgateway");
    check_gateway(&ingress, "ingressgateway", "istio-ingressgateway");
    assert!(ingress.deployment.spec.as_ref().unwrap().replicas.unwrap() >= 2, "a replica survives a node");
    assert!(ingress.budget.is_some());
    let service = ingress.service.spec.unwrap();
    assert_eq!(service.type_.as_deref(), Some("LoadBalancer"));
    let ports: BTreeSet<(String, i32, i32)> =
        service.ports.unwrap().into_iter().map(|p| (p.name.clone().unwrap(), p.port, target_number(&p))).collect();
    let expected = [("http2", 80, 8080), ("https", 443, 8443), ("status-port", 15021, 15021)];
    assert_eq!(ports, expected.map(|(n, p, t)| (n.to_owned(), p, t)).into(), "Istio's gateway ports");
}

#[test]
fn the_egress_gateway_is_reached_inside_the_cluster_only() {
    let docs = gateway_documents();
    let egress = gateway(&docs, "egressgateway");
    check_gateway(&egress, "egressgateway", "istio-egressgateway");
    let service = egress.service.spec.unwrap();
    assert!(service.type_.is_none() || service.type_.as_deref() == Some("ClusterIP"), "not exposed outside");
    let ports: BTreeSet<(i32, i32)> = service.ports.unwrap().iter().map(|p| (p.port, target_number(p))).collect();
    assert_eq!(ports, [(80, 8080), (443, 8443)].into());
}

#[test]
fn gateway_rbac_reads_what_a_gateway_serves_and_secrets_only_in_its_namespace() {
    let docs = gateway_documents();
    let account = of_kind::<ServiceAccount>(&docs, "ServiceAccount").remove(0);
    for deployment in of_kind::<Deployment>(&docs, "Deployment") {
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name, account.metadata.name, "both gateways use the one account");
        assert_eq!(deployment.metadata.namespace, account.metadata.namespace);
    }
    let is_account = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.as_ref().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s.kind == "ServiceAccount"
                    && Some(&s.name) == account.metadata.name.as_ref()
                    && s.namespace == account.metadata.namespace
            })
        })
    };

    let cluster_role = of_kind::<ClusterRole>(&docs, "ClusterRole").remove(0);
    let cluster_granted = granted(&cluster_role.rules.unwrap());
    // What a gateway reads cluster-wide: the Istio kinds it serves, the
    // destinations' Services and EndpointSlices, and the pods' labels.
    assert_eq!(cluster_granted, mesh_agent::k8s::gateway_required_permissions());
    assert!(!cluster_granted.iter().any(|(_, resource, _)| resource == "secrets"), "no Secret of another namespace");
    let binding = of_kind::<ClusterRoleBinding>(&docs, "ClusterRoleBinding").remove(0);
    assert_eq!(Some(binding.role_ref.name), cluster_role.metadata.name);
    assert!(is_account(&binding.subjects));

    // Secrets through a Role, bound by a RoleBinding (a RoleBinding to a
    // ClusterRole would do too, but the grant should say where it applies).
    let role = of_kind::<Role>(&docs, "Role").remove(0);
    let secrets: Permissions = ["get", "list", "watch"].map(|v| ("".into(), "secrets".into(), v.into())).into();
    assert_eq!(granted(&role.rules.unwrap()), secrets);
    assert_eq!(role.metadata.namespace, account.metadata.namespace, "the gateways' own namespace");
    let role_binding = of_kind::<RoleBinding>(&docs, "RoleBinding").remove(0);
    assert_eq!(role_binding.role_ref.kind, "Role");
    assert_eq!(Some(role_binding.role_ref.name), role.metadata.name);
    assert_eq!(role_binding.metadata.namespace, role.metadata.namespace);
    assert!(is_account(&role_binding.subjects));

    // Reads only: no status, no Lease (the agents' holder writes status).
    let read = ["get", "list", "watch"];
    assert!(cluster_granted.iter().chain(&secrets).all(|(_, _, verb)| read.contains(&verb.as_str())));
    // And nothing of the agent's wider grant.
    let agent = all_documents();
    for binding in of_kind::<ClusterRoleBinding>(&agent, "ClusterRoleBinding") {
        assert!(!is_account(&binding.subjects), "the gateway account is not bound to {:?}", binding.metadata.name);
    }
    for binding in of_kind::<RoleBinding>(&agent, "RoleBinding") {
        assert!(!is_account(&binding.subjects), "the gateway account is not bound to {:?}", binding.metadata.name);
    }
}
