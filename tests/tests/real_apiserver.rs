//! Against a real kube-apiserver (v1.28, with etcd), what the fake cannot
//! show: deploy/ applies under server-side validation, the agent runs with
//! its ClusterRole's rights only, objects come and go through real watches
//! and an API outage, our status condition lives beside another
//! controller's, and the status Lease moves when its holder is killed.

use mesh_tests::deploy::{deploy_dir, kustomization_documents};
use mesh_tests::objects::{service, slice};
use mesh_tests::real_apiserver::RealApiServer;
use mesh_tests::{wait_until, Pod, TestEnv};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const ISTIO_KINDS: [&str; 6] =
    ["VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "WorkloadEntry"];

fn start(name: &str) -> RealApiServer {
    RealApiServer::start(name).unwrap_or_else(|e| panic!("starting the real API server: {e:#}"))
}

fn apply(server: &RealApiServer, object: &Value) -> Value {
    server.apply(object).unwrap_or_else(|e| panic!("applying {object}: {e:#}\n{}", server.log_tail()))
}

/// `kubectl apply --server-side -k deploy/crds`, then `-k deploy/`, then
/// `-k deploy/gateways/`, each object with strict field validation.
fn install(server: &RealApiServer) {
    for crd in kustomization_documents(&deploy_dir().join("crds")).unwrap() {
        apply(server, &crd);
    }
    for kind in ISTIO_KINDS {
        assert!(server.wait_for_kind("networking.istio.io/v1", kind, Duration::from_secs(30)), "{kind} not served");
    }
    for dir in [deploy_dir(), deploy_dir().join("gateways")] {
        for object in kustomization_documents(&dir).unwrap() {
            apply(server, &object);
        }
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn destination_rule(balancer: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": balancer}}}})
}

fn lease() -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "mesh-agent-status", "namespace": "mesh-system"}})
}

/// Starts the agent of `env` with `--source kubernetes`, as the DaemonSet's
/// ServiceAccount (a token minted for it: no other rights).
fn start_agent(env: &TestEnv, server: &RealApiServer, node: &str, identity: &str) {
    let kubeconfig = server.service_account_kubeconfig("mesh-system", "mesh-agent").unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let args = ["--source", "kubernetes", "--kubeconfig", kubeconfig, "--node-name", node, "--identity", identity];
    env.start_agent(&args).unwrap_or_else(|e| panic!("the agent under its ClusterRole: {e:#}"));
}

/// How many of 10 connections from `pod` to `target` reached `backend`.
fn reached(env: &TestEnv, pod: &Pod, target: &str, backend: &str) -> u64 {
    let report = env
        .probe(pod, &["tcp", "--target", target, "--count", "10"])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent_log()));
    report["backends"][backend].as_u64().unwrap_or(0)
}

/// The agent was never refused by RBAC in `log`: what it asks for, its
/// ClusterRole grants.
fn assert_never_forbidden(log: &str) {
    let forbidden: Vec<&str> = log.lines().filter(|l| l.contains("forbidden") || l.contains(" 403")).collect();
    assert!(forbidden.is_empty(), "the agent was refused by RBAC:\n{}", forbidden.join("\n"));
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

#[test]
fn deploy_applies_under_server_side_validation_and_a_newer_field_is_refused() {
    let server = start("manifests");
    install(&server);
    let daemonset = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                           "metadata": {"name": "mesh-agent", "namespace": "mesh-system"}});
    let stored = server.get(&daemonset).unwrap().expect("the DaemonSet is stored");
    let container = &stored["spec"]["template"]["spec"]["containers"][0];
    let capabilities = &container["securityContext"]["capabilities"]["add"];
    assert!(capabilities.as_array().is_some_and(|c| c.contains(&json!("BPF"))), "{container}");
    for name in ["istio-ingressgateway", "istio-egressgateway"] {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "mesh-system"}});
        assert!(server.get(&deployment).unwrap().is_some(), "{name} not stored");
    }

    // The check is real: the field Kubernetes 1.30 added to the container
    // securityContext (what deploy/ once had) is refused by 1.28.
    let mut newer =
        kustomization_documents(&deploy_dir()).unwrap().into_iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    newer["spec"]["template"]["spec"]["containers"][0]["securityContext"]["appArmorProfile"] =
        json!({"type": "Unconfined"});
    let refused = server.apply(&newer).expect_err("1.28 knows no appArmorProfile");
    assert!(format!("{refused:#}").contains("appArmorProfile"), "{refused:#}");
}

#[test]
fn the_agent_under_its_cluster_role_follows_objects_through_an_outage_and_keeps_other_conditions() {
    let server = start("agent");
    install(&server);
    let env = TestEnv::new("real_api_agent").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let b2 = env.add_pod("b2", "10.244.2.2", "fd00:244::2:2");
    let _servers = [b1.serve_tcp(8080), b2.serve_tcp(8080)];
    apply(&server, &namespace("shop"));
    apply(&server, &service("web", "10.96.0.10"));
    apply(&server, &slice("web", &["10.244.1.2"]));
    let rule = apply(&server, &destination_rule("ROUND_ROBIN"));

    start_agent(&env, &server, "node-a", "agent-a");
    assert_eq!(reached(&env, &client, "10.96.0.10:80", "b1"), 10);
    apply(&server, &slice("web", &["10.244.2.2"]));
    assert!(wait_until(Duration::from_secs(5), || reached(&env, &client, "10.96.0.10:80", "b2") == 10), "to b2");

    // Our condition, then another controller's beside it (read, change,
    // write back); a new generation of the rule is reconciled again and the
    // other condition stays.
    let accepted = |object: &Value, generation: i64| {
        condition(object, "Reconciled").is_some_and(|c| c["status"] == "True" && c["observedGeneration"] == generation)
    };
    let current = || server.get(&rule).unwrap().expect("the rule");
    assert!(wait_until(Duration::from_secs(15), || accepted(&current(), 1)), "no status: {}", current());
    let other = json!({"type": "Ready", "status": "True", "reason": "OtherController", "message": "seen",
                       "lastTransitionTime": "2026-01-01T00:00:00Z"});
    server.put_condition(&rule, &other).unwrap();
    apply(&server, &destination_rule("LEAST_REQUEST"));
    let both = wait_until(Duration::from_secs(15), || {
        let object = current();
        accepted(&object, 2) && condition(&object, "Ready").is_some_and(|c| c["reason"] == "OtherController")
    });
    assert!(both, "conditions: {}", current()["status"]);

    // A fresh kube-apiserver answers 403 for a moment while its RBAC
    // cache fills: the rights are judged on what came before the outage.
    assert_never_forbidden(&env.agent_log());

    // An outage: the kernel keeps serving what it has, the agent sees the
    // watches fail, and once the server is back a change arrives within
    // seconds.
    server.stop_apiserver();
    let watches = || env.admin_json("/status")["config"]["watches"]["kinds"].as_array().cloned().unwrap_or_default();
    let failing = |kinds: &[Value]| !kinds.is_empty() && kinds.iter().all(|k| k["error"].is_string());
    assert!(wait_until(Duration::from_secs(30), || failing(&watches())), "watches not failing: {:?}", watches());
    assert_eq!(reached(&env, &client, "10.96.0.10:80", "b2"), 10, "served during the outage");
    server.start_apiserver().unwrap();
    let back = Instant::now();
    apply(&server, &service("api", "10.96.0.20"));
    apply(&server, &slice("api", &["10.244.1.2"]));
    let resumed = wait_until(Duration::from_secs(15), || reached(&env, &client, "10.96.0.20:80", "b1") == 10);
    assert!(resumed, "a change after the outage not served\nagent log:\n{}", env.agent_log());
    // Every watch back: a watch waits at most 5 s between attempts (4 s
    // and jitter), then relists at once on 410.
    assert!(wait_until(Duration::from_secs(10), || watches().iter().all(|k| k["error"].is_null())), "{:?}", watches());
    eprintln!("a change made once the API server was back was served in {:?}", back.elapsed());

    // An object made again under the same name is a new object (a new
    // uid): it gets its own status.
    server.delete(&rule).unwrap();
    assert!(wait_until(Duration::from_secs(10), || server.get(&rule).unwrap().is_none()), "rule not deleted");
    apply(&server, &destination_rule("ROUND_ROBIN"));
    assert!(wait_until(Duration::from_secs(15), || accepted(&current(), 1)), "made again: {}", current()["status"]);

    // A deleted Service leaves the kernel: its address is no longer
    // translated (the pod has no route out).
    server.delete(&service("web", "10.96.0.10")).unwrap();
    let gone = wait_until(Duration::from_secs(10), || {
        let report = env.probe(&client, &["tcp", "--target", "10.96.0.10:80", "--count", "10"]).unwrap();
        report["errors"]["ENETUNREACH"].as_u64().unwrap_or(0) == 10
    });
    assert!(gone, "web still translated\nagent log:\n{}", env.agent_log());
    env.stop_agent().unwrap();
}

#[test]
fn the_status_lease_moves_to_the_other_agent_when_its_holder_is_killed() {
    let server = start("lease");
    install(&server);
    apply(&server, &namespace("shop"));
    let nodes = [
        ("agent-a", TestEnv::new("real_api_lease_a").expect("test env")),
        ("agent-b", TestEnv::new("real_api_lease_b").expect("test env")),
    ];
    for (i, (identity, env)) in nodes.iter().enumerate() {
        start_agent(env, &server, &format!("node-{i}"), identity);
    }
    let holder = || -> Option<String> {
        let lease = server.get(&lease()).ok()??;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    };
    assert!(wait_until(Duration::from_secs(15), || holder().is_some()), "nobody took the lease");
    let first = holder().unwrap();
    let (killed, survivor) = if first == nodes[0].0 { (&nodes[0], &nodes[1]) } else { (&nodes[1], &nodes[0]) };
    assert_eq!(survivor.1.admin_json("/status")["config"]["status_writer"], false, "two writers");
    killed.1.kill_agent().unwrap();
    let killed_at = Instant::now();

    // The lease lasts 15 s without renewal; the survivor looks every 5 s.
    let moved = wait_until(Duration::from_secs(40), || holder().as_deref() == Some(survivor.0));
    assert!(moved, "the lease stayed with {:?}\nsurvivor's log:\n{}", holder(), survivor.1.agent_log());
    eprintln!("the lease moved from the killed {} to {} in {:?}", killed.0, survivor.0, killed_at.elapsed());
    let writing =
        wait_until(Duration::from_secs(10), || survivor.1.admin_json("/status")["config"]["status_writer"] == true);
    assert!(writing, "the survivor does not write status");

    // The new holder writes the status of what comes next.
    let rule = apply(&server, &destination_rule("ROUND_ROBIN"));
    let written = wait_until(Duration::from_secs(15), || {
        server.get(&rule).unwrap().is_some_and(|object| condition(&object, "Reconciled").is_some())
    });
    assert!(written, "no status from the new holder: {}", server.get(&rule).unwrap().unwrap_or_default());
    assert_never_forbidden(&survivor.1.agent_log());
    survivor.1.stop_agent().unwrap();
}
