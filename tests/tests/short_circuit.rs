//! The same-node short-circuit in the real kernel: `sock_ops` files the
//! established sockets of the attached cgroup in a sock hash and pairs the
//! two ends of a local hop; `sk_msg` on that sock hash then moves each send
//! straight into the peer socket's receive queue, so the payload never
//! becomes TCP segments. Every decision is counted per CPU and shown in
//! `/status` `kernel_counters`.
//!
//! A pod and the agent's proxy are both in the attached cgroup (the agent
//! runs in a child of the test cgroup), so the client ↔ proxy hop is
//! short-circuited. Most backends are threads of the test process, outside
//! the cgroup: hops to them must stay on TCP. A meshed backend pod is a
//! `mesh-probe serve-http` process inside the cgroup, and the proxy ↔
//! backend hop to it is short-circuited too. Each test fails if the
//! programs are not attached, since each expects the programs to have run.

use std::path::Path;

use mesh_tests::{in_netns, read_json_line, Pod, TestEnv};
use serde_json::Value;

const REQUESTS: u64 = 200;
const SERVICE_V4: &str = "10.96.0.20:9080";
const SERVICE_V6: &str = "[fd00:96::20]:9080";

/// Service `reviews` (http 9080 → 8080) on `backend`, dual stack, with a
/// VirtualService: its connects are captured to the node proxy.
fn captured_service(backend: &Pod) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop}\nspec:\n  clusterIPs: [10.96.0.20, \"fd00:96::20\"]\n  ports:\n  - {name: http, port: 9080, targetPort: 8080}\n---\n",
    );
    for (name, family, ip) in
        [("reviews-v4", "IPv4", backend.ipv4().to_string()), ("reviews-v6", "IPv6", backend.ipv6().to_string())]
    {
        yaml.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: reviews}}}}\naddressType: {family}\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"{ip}\"]\n---\n"
        ));
    }
    yaml.push_str(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n",
    );
    yaml
}

/// The kernel counters, as `/status` reports them.
fn counters(env: &TestEnv) -> Value {
    env.admin_json("/status")["kernel_counters"].clone()
}

/// How much counter `name` grew from `before` to `after`.
fn grew(before: &Value, after: &Value, name: &str) -> u64 {
    let read = |v: &Value| v[name].as_u64().unwrap_or_else(|| panic!("no kernel counter {name}: {v}"));
    read(after) - read(before)
}

/// Bytes the pod has sent on its eth0, i.e. onto the veth to the node.
fn eth0_tx_bytes(pod: &Pod) -> u64 {
    let dev = in_netns(&pod.netns_path(), || std::fs::read_to_string("/proc/thread-self/net/dev"))
        .expect("entering the pod namespace")
        .expect("reading /proc/thread-self/net/dev");
    let line = dev.lines().find_map(|l| l.trim_start().strip_prefix("eth0:")).expect("eth0 in /proc/net/dev");
    // Eight receive fields, then transmit bytes.
    line.split_whitespace().nth(8).and_then(|v| v.parse().ok()).expect("tx bytes")
}

/// Bytes sent on eth0 by each of `pods`.
fn eth0_tx_bytes_of(pods: &[&Pod]) -> Vec<u64> {
    pods.iter().map(|pod| eth0_tx_bytes(pod)).collect()
}

/// Pins of `sk_msg` links in the agent's link directory.
fn sk_msg_pins(pin_dir: &Path) -> Vec<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .expect("links dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("mesh_sk_msg_"))
        .collect()
}

/// `REQUESTS` keep-alive requests from `client` to `target`; all must be
/// answered 200 by the backend.
fn requests(env: &TestEnv, client: &Pod, target: &str) -> Value {
    let report = env
        .probe(client, &["http", "--target", target, "--count", &REQUESTS.to_string()])
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent_log()));
    assert_eq!(report["ok"], REQUESTS, "{target}: {report}");
    assert_eq!(report["status"]["200"], REQUESTS, "{target}: {report}");
    assert_eq!(report["backends"]["b1"], REQUESTS, "{target}: {report}");
    report
}

/// Sends `REQUESTS` through the proxy to `target` and checks the client ↔
/// proxy hop was short-circuited.
fn assert_short_circuited(env: &TestEnv, client: &Pod, target: &str) {
    let before = counters(env);
    let tx_before = eth0_tx_bytes(client);
    requests(env, client, target);
    let tx = eth0_tx_bytes(client) - tx_before;
    let after = counters(env);
    eprintln!("{target}: {after}; client eth0 sent {tx} bytes");

    // Every request the client sent (and every response the proxy sent
    // back) was a send on a paired socket.
    let redirected = grew(&before, &after, "msg_redirected");
    assert!(redirected >= REQUESTS, "{target}: {redirected} sends redirected for {REQUESTS} requests: {after}");
    assert!(grew(&before, &after, "sockmap_paired") >= 1, "{target}: the client/proxy hop was paired: {after}");
    // The proxy's upstream hop goes to a backend outside the cgroup: the
    // proxy's end is filed, its first send passes to TCP, and at the first
    // acknowledgement it leaves the sock hash, so the pooled connection's
    // later sends do not go through sk_msg at all.
    let passed = grew(&before, &after, "msg_passed");
    assert!(passed >= 1, "{target}: the first proxy→backend send was looked at: {after}");
    assert!(passed < REQUESTS / 2, "{target}: {passed} proxy→backend sends went through sk_msg: {after}");
    assert!(grew(&before, &after, "sockmap_left") >= 1, "{target}: the unpaired end left: {after}");
    // The requests never crossed the veth: ~60 bytes each by TCP would be
    // over 24 kB with headers; the handshake and close are a few hundred.
    assert!(tx < REQUESTS * 20, "{target}: the client sent {tx} bytes on eth0 for {REQUESTS} requests");
}

#[test]
fn the_pod_to_proxy_hop_is_short_circuited_for_ipv4_and_ipv6() {
    let env = TestEnv::new("sc_pod_proxy").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let backend = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let server = backend.serve_http(8080);
    env.write_config("reviews.yaml", &captured_service(&backend)).unwrap();
    env.start_agent_on_node(&[]).unwrap();

    let status = env.admin_json("/status");
    let programs = status["dataplane"]["programs"].as_array().expect("programs").clone();
    assert!(
        programs.iter().any(|p| p["name"] == "mesh_sk_msg" && p["attach_type"] == "sk_msg"),
        "sk_msg attached: {status}"
    );
    assert_eq!(sk_msg_pins(env.pin_dir()).len(), 1, "one pinned sk_msg link");

    assert_short_circuited(&env, &client, SERVICE_V4);
    assert_short_circuited(&env, &client, SERVICE_V6);
    assert_eq!(server.requests(), 2 * REQUESTS, "every request reached the backend");
}

#[test]
fn the_proxy_to_a_meshed_local_backend_hop_is_short_circuited_too() {
    let env = TestEnv::new("sc_meshed_backend").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let backend = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    // The backend is a process of the test cgroup: a meshed pod on this node.
    let listen = format!("{}:8080", backend.ipv4());
    let mut server = env.spawn_probe(&backend, &["serve-http", "--listen", &listen, "--name", "b1"]);
    let ready = read_json_line(&mut server).expect("serve-http says it listens");
    assert_eq!(ready["listening"], listen.as_str(), "{ready}");
    env.write_config("reviews.yaml", &captured_service(&backend)).unwrap();
    env.start_agent_on_node(&[]).unwrap();

    let before = counters(&env);
    let tx_before = eth0_tx_bytes_of(&[&client, &backend]);
    requests(&env, &client, SERVICE_V4);
    let tx: Vec<u64> = eth0_tx_bytes_of(&[&client, &backend]).iter().zip(&tx_before).map(|(a, b)| a - b).collect();
    let after = counters(&env);
    eprintln!("{after}; eth0 sent: client {} bytes, backend {} bytes", tx[0], tx[1]);

    // Both hops were paired, and each request took four redirected sends:
    // client → proxy, proxy → backend, backend → proxy, proxy → client.
    assert!(grew(&before, &after, "sockmap_paired") >= 2, "both hops paired: {after}");
    let redirected = grew(&before, &after, "msg_redirected");
    assert!(redirected >= 4 * REQUESTS, "{redirected} sends redirected for {REQUESTS} requests: {after}");
    assert_eq!(grew(&before, &after, "sockmap_left"), 0, "the proxy's upstream end stayed, paired: {after}");
    assert_eq!(grew(&before, &after, "msg_passed"), 0, "no send fell back to TCP: {after}");
    // Neither pod's requests or responses crossed its veth.
    for (pod, sent) in ["client", "backend"].iter().zip(&tx) {
        assert!(*sent < REQUESTS * 20, "the {pod} sent {sent} bytes on eth0 for {REQUESTS} requests");
    }
    drop(server.stdin.take());
    let _ = server.wait();
}

#[test]
fn a_hop_with_one_end_outside_the_cgroup_is_never_redirected() {
    let env = TestEnv::new("sc_one_end_out").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let backend = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let _server = backend.serve_tcp(8080);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIPs: [10.96.0.10]\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-v4, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: tcp, port: 8080}}]\nendpoints:\n- addresses: [\"{}\"]\n",
        backend.ipv4()
    );
    env.write_config("web.yaml", &yaml).unwrap();
    env.start_agent(&[]).unwrap();

    let before = counters(&env);
    // The pod (in the cgroup) talks to a backend thread of the test process
    // (outside it), on the pure kernel L4 path.
    let report = env.probe(&client, &["tcp", "--target", "10.96.0.10:80", "--count", "50", "--requests-per-conn", "4"]);
    let report = report.unwrap();
    assert_eq!(report["ok"], 50, "{report}");
    let after = counters(&env);

    assert_eq!(grew(&before, &after, "msg_redirected"), 0, "nothing redirected: {after}");
    assert_eq!(grew(&before, &after, "sockmap_paired"), 0, "no local pair: {after}");
    // The programs did run: each connecting end was filed, its first send
    // was looked at and passed to TCP, and once that send was acknowledged
    // it left the sock hash: far fewer than its 4 sends went through sk_msg.
    assert!(grew(&before, &after, "sockmap_inserted") >= 50, "{after}");
    assert!(grew(&before, &after, "sockmap_left") >= 50, "{after}");
    let passed = grew(&before, &after, "msg_passed");
    assert!((50..100).contains(&passed), "{passed} of 200 sends went through sk_msg: {after}");
}

#[test]
fn a_restarted_agent_takes_over_the_sk_msg_link() {
    let env = TestEnv::new("sc_restart").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let backend = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let _server = backend.serve_http(8080);
    env.write_config("reviews.yaml", &captured_service(&backend)).unwrap();
    env.start_agent_on_node(&[]).unwrap();
    assert_short_circuited(&env, &client, SERVICE_V4);
    let first = sk_msg_pins(env.pin_dir());
    assert_eq!(first.len(), 1, "{first:?}");

    // SIGTERM leaves the link pinned; the next agent finds it holding the
    // sock hash and switches it to its own program in place.
    env.stop_agent().unwrap();
    assert_eq!(sk_msg_pins(env.pin_dir()), first, "the link outlives the agent");
    env.start_agent_on_node(&[]).unwrap();
    assert!(
        env.agent_log().contains("switched the previous agent's sk_msg link"),
        "the restarted agent updated the link: {}",
        env.agent_log()
    );
    let second = sk_msg_pins(env.pin_dir());
    assert_eq!(second.len(), 1, "the old pin is gone, the link kept: {second:?}");
    assert_ne!(second, first);
    assert_eq!(env.admin_json("/status")["dataplane"]["maps_taken_over"], true);

    assert_short_circuited(&env, &client, SERVICE_V4);
}
