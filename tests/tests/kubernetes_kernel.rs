//! The real agent binary with `--source kubernetes`, talking HTTP to a fake
//! API server through a kubeconfig, with the programs attached to a test
//! cgroup: objects made, changed and deleted in the API server show up in
//! the kernel maps (and leave them), through a dropped watch too, and the
//! agent writes the status of the Istio objects.

use mesh_tests::apiserver::FakeApiServer;
use mesh_tests::objects::{service, slice};
use mesh_tests::{wait_until, TestEnv};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn objects_in_the_api_server_drive_the_kernel_maps() {
    let env = TestEnv::new("kube_source").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let b2 = env.add_pod("b2", "10.244.2.2", "fd00:244::2:2");
    let _servers = [b1.serve_tcp(8080), b2.serve_tcp(8080)];

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let kubeconfig = FakeApiServer::write_kubeconfig(env.config_dir(), listener.local_addr().unwrap()).unwrap();
    let _serving = server.serve(listener);
    server.apply(service("web", "10.96.0.10"));
    server.apply(slice("web", &["10.244.1.2"]));
    server.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                        "metadata": {"name": "web", "namespace": "shop"},
                        "spec": {"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}}));

    let kubeconfig = kubeconfig.to_str().unwrap();
    env.start_agent(&["--source", "kubernetes", "--kubeconfig", kubeconfig, "--node-name", "node-a"])
        .expect("the agent becomes ready once every kind has listed");
    let probe = |target: &str| -> Value {
        env.probe(&client, &["tcp", "--target", target, "--count", "10"])
            .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent_log()))
    };
    let reached = |report: &Value, backend: &str| report["backends"][backend].as_u64().unwrap_or(0);

    let report = probe("10.96.0.10:80");
    assert_eq!(reached(&report, "b1"), 10, "{report}");

    // A change in the API server reaches the maps.
    server.apply(slice("web", &["10.244.2.2"]));
    assert!(wait_until(Duration::from_secs(5), || reached(&probe("10.96.0.10:80"), "b2") == 10), "moved to b2");

    // A dropped watch resumes, and what was made meanwhile is served.
    server.drop_watches();
    server.apply(service("api", "10.96.0.20"));
    server.apply(slice("api", &["10.244.1.2"]));
    assert!(wait_until(Duration::from_secs(5), || reached(&probe("10.96.0.20:80"), "b1") == 10), "api served");

    let status = env.admin_json("/status");
    assert_eq!(status["config"]["watches"]["synced"], true, "{status}");
    assert_eq!(status["config"]["status_writer"], true, "the only agent holds the lease: {status}");
    let written = wait_until(Duration::from_secs(10), || {
        server.status_patches().iter().any(|(_, path, body)| {
            path.ends_with("/destinationrules/web/status") && body["status"]["conditions"][0]["status"] == "True"
        })
    });
    assert!(written, "status patches: {:?}", server.status_patches());

    // Deleting the Service removes its kernel entries: the address is no
    // longer translated (the pod has no route out).
    assert!(server.delete("v1", "Service", Some("shop"), "web"));
    let gone = wait_until(Duration::from_secs(5), || {
        probe("10.96.0.10:80")["errors"]["ENETUNREACH"].as_u64().unwrap_or(0) == 10
    });
    assert!(gone, "web still translated\nagent log:\n{}", env.agent_log());
    let services: Vec<String> = env.admin_json("/status")["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(services, ["api"]);
    env.stop_agent().unwrap();
}
