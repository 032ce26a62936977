//! Kernel L4 service load balancing, end to end: the real agent binary, the
//! real programs attached to a test cgroup, pods as network namespaces, real
//! TCP and UDP servers, and clients inside the pods.

use mesh_tests::{read_json_line, wait_until, Pod, TestEnv};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const NS: &str = "shop";

fn service(name: &str, ips: &[&str], port: u16, protocol: &str) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterIPs: [{}]\n  ports:\n  - {{name: main, port: {port}, protocol: {protocol}, targetPort: main}}\n---\n",
        ips.join(", ")
    )
}

fn slice(name: &str, service: &str, ipv6: bool, port: u16, protocol: &str, addresses: &[&str]) -> String {
    let endpoints: String = addresses.iter().map(|a| format!("- addresses: [\"{a}\"]\n")).collect();
    let endpoints = if endpoints.is_empty() { "[]\n".to_owned() } else { format!("\n{endpoints}") };
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {NS}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {}\nports: [{{name: main, port: {port}, protocol: {protocol}}}]\nendpoints: {endpoints}---\n",
        if ipv6 { "IPv6" } else { "IPv4" }
    )
}

fn rule(host: &str, traffic_policy: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {host}, namespace: {NS}}}\nspec:\n  host: {host}\n  trafficPolicy:\n{traffic_policy}---\n")
}

fn count(report: &Value, backend: &str) -> u64 {
    report["backends"][backend].as_u64().unwrap_or(0)
}

fn errors(report: &Value, name: &str) -> u64 {
    report["errors"][name].as_u64().unwrap_or(0)
}

fn backends_of(report: &Value) -> BTreeMap<String, u64> {
    report["backends"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect())
        .unwrap_or_default()
}

/// A client pod and `n` backend pods serving TCP (and UDP) on 8080.
struct World {
    env: TestEnv,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<mesh_tests::Server>,
}

impl World {
    fn new(test: &str, n: usize) -> World {
        let env = TestEnv::new(test).expect("test env");
        let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=n {
            let pod = env.add_pod(&format!("b{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"));
            servers.push(pod.serve_tcp(8080));
            servers.push(pod.serve_udp(8080));
            backends.push(pod);
        }
        World { env, client, backends, _servers: servers }
    }

    fn v4(&self, i: usize) -> String {
        self.backends[i].ipv4().to_string()
    }

    fn v6(&self, i: usize) -> String {
        self.backends[i].ipv6().to_string()
    }

    fn probe(&self, args: &[&str]) -> Value {
        self.env.probe(&self.client, args).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.env.agent_log()))
    }

    fn tcp(&self, target: &str, n: u32) -> Value {
        self.probe(&["tcp", "--target", target, "--count", &n.to_string()])
    }

    /// Waits until a probe to `target` reaches backend `name`.
    fn wait_for_backend(&self, target: &str, name: &str) {
        let reached = wait_until(Duration::from_secs(5), || count(&self.tcp(target, 20), name) > 0);
        assert!(reached, "{target} never reached {name}\nagent log:\n{}", self.env.agent_log());
    }
}

fn two_backend_service(world: &World, extra: &str) -> String {
    let v4: Vec<String> = (0..world.backends.len()).map(|i| world.v4(i)).collect();
    let v6: Vec<String> = (0..world.backends.len()).map(|i| world.v6(i)).collect();
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    format!(
        "{}{}{}{}",
        service("web", &["10.96.0.10", "fd00:96::10"], 80, "TCP"),
        slice("web-v4", "web", false, 8080, "TCP", &v4),
        slice("web-v6", "web", true, 8080, "TCP", &v6),
        extra
    )
}

#[test]
fn tcp_is_translated_for_ipv4_and_ipv6_and_getpeername_shows_the_service() {
    let world = World::new("tcp_translate", 2);
    world.env.write_config("web.yaml", &two_backend_service(&world, "")).unwrap();
    world.env.start_agent(&[]).unwrap();

    for (target, peer) in [("10.96.0.10:80", "10.96.0.10:80"), ("[fd00:96::10]:80", "[fd00:96::10]:80")] {
        let report = world.tcp(target, 40);
        assert_eq!(report["ok"], 40, "{target}: {report}");
        assert!(count(&report, "b1") > 0 && count(&report, "b2") > 0, "{target}: both backends used: {report}");
        assert_eq!(report["peer"], peer, "getpeername must show the service address: {report}");
    }
    // Not a service: not translated, and the pod has no route out.
    let report = world.tcp("10.96.0.99:80", 1);
    assert_eq!(errors(&report, "ENETUNREACH"), 1, "{report}");
    // A service IP on a port the Service lacks is refused, never sent out as is.
    let report = world.tcp("10.96.0.10:81", 1);
    assert_eq!(errors(&report, "ECONNREFUSED"), 1, "{report}");

    let status = world.env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_translated"].as_u64().unwrap() >= 80, "{status}");
    assert_eq!(status["kernel_counters"]["connect_unknown_port"], 1, "{status}");
    assert_eq!(status["kernel_counters"]["connect_passthrough"], 1, "{status}");
    let (code, metrics) = world.env.admin_get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "mesh_service_connects_total{namespace=\"shop\",service=\"web\",port=\"80\",protocol=\"TCP\"} 80"
        ),
        "{metrics}"
    );
}

#[test]
fn udp_is_translated_and_replies_come_from_the_service() {
    let world = World::new("udp_translate", 2);
    let config = format!(
        "{}{}{}",
        service("dns", &["10.96.0.53", "fd00:96::53"], 53, "UDP"),
        slice("dns-v4", "dns", false, 8080, "UDP", &[&world.v4(0), &world.v4(1)]),
        slice("dns-v6", "dns", true, 8080, "UDP", &[&world.v6(0), &world.v6(1)]),
    );
    world.env.write_config("dns.yaml", &config).unwrap();
    world.env.start_agent(&[]).unwrap();
    for (target, from) in [("10.96.0.53:53", "10.96.0.53:53"), ("[fd00:96::53]:53", "[fd00:96::53]:53")] {
        let unconnected = world.probe(&["udp", "--target", target, "--count", "30"]);
        assert_eq!(unconnected["ok"], 30, "{unconnected}");
        assert_eq!(unconnected["reply_from"], from, "recvfrom must show the service: {unconnected}");
        assert_eq!(backends_of(&unconnected).len(), 2, "datagrams are balanced: {unconnected}");
        let connected = world.probe(&["udp", "--target", target, "--count", "5", "--connected"]);
        assert_eq!(connected["ok"], 5, "{connected}");
        assert_eq!(connected["reply_from"], from, "{connected}");
    }
}

#[test]
fn one_udp_socket_reaching_a_backend_through_two_services_is_counted_ambiguous() {
    let world = World::new("udp_ambiguous", 1);
    let config = format!(
        "{}{}{}{}",
        service("dns", &["10.96.0.53"], 53, "UDP"),
        slice("dns", "dns", false, 8080, "UDP", &[&world.v4(0)]),
        service("dns-b", &["10.96.0.54"], 53, "UDP"),
        slice("dns-b", "dns-b", false, 8080, "UDP", &[&world.v4(0)]),
    );
    world.env.write_config("dns.yaml", &config).unwrap();
    world.env.start_agent(&[]).unwrap();
    let ambiguous =
        || world.env.admin_json("/status")["kernel_counters"]["udp_reverse_ambiguous"].as_u64().unwrap_or(0);
    let before = ambiguous();
    // One service, then the other, from one socket: the same backend answers.
    let report = world.probe(&["udp", "--target", "10.96.0.53:53", "--count", "3", "--then", "10.96.0.54:53"]);
    assert_eq!(report["ok"], 3, "{report}");
    assert_eq!(report["reply_from"], "10.96.0.53:53", "{report}");
    assert_eq!(report["then_reply_from"], "10.96.0.54:53", "the latest service shows: {report}");
    assert_eq!(ambiguous(), before + 1, "{report}");
    // Separate sockets are never ambiguous.
    world.probe(&["udp", "--target", "10.96.0.54:53", "--count", "3"]);
    assert_eq!(ambiguous(), before + 1);
}

#[test]
fn round_robin_is_exact_and_random_spreads_within_tolerance() {
    let world = World::new("rr_random", 3);
    let rr = rule("web", "    loadBalancer: {simple: ROUND_ROBIN}\n");
    world.env.write_config("web.yaml", &two_backend_service(&world, &rr)).unwrap();
    world.env.start_agent(&[]).unwrap();
    let report = world.tcp("10.96.0.10:80", 300);
    for b in ["b1", "b2", "b3"] {
        // One sequential client: round robin gives each exactly a third.
        assert_eq!(count(&report, b), 100, "ROUND_ROBIN: {report}");
    }

    let random = rule("web", "    loadBalancer: {simple: RANDOM}\n");
    world.env.write_config("web.yaml", &two_backend_service(&world, &random)).unwrap();
    assert!(wait_until(Duration::from_secs(3), || world.env.admin_json("/status")["services"][0]["load_balancer"]
        == "RANDOM"));
    let report = world.tcp("10.96.0.10:80", 900);
    for b in ["b1", "b2", "b3"] {
        // Expected 300 each; ±20% is more than 5 standard deviations (σ ≈ 14).
        let n = count(&report, b);
        assert!((240..=360).contains(&n), "RANDOM: {b} got {n}: {report}");
    }
}

#[test]
fn least_request_avoids_a_backend_holding_many_connections() {
    let world = World::new("least_request", 3);
    // Only b1 at first: hold 20 connections to it.
    let only_b1 = format!(
        "{}{}",
        service("web", &["10.96.0.10"], 80, "TCP"),
        slice("web-v4", "web", false, 8080, "TCP", &[&world.v4(0)])
    );
    world.env.write_config("web.yaml", &only_b1).unwrap();
    world.env.start_agent(&[]).unwrap();
    let mut holder = world.env.spawn_probe(&world.client, &["hold", "--target", "10.96.0.10:80", "--count", "20"]);
    let held = read_json_line(&mut holder).unwrap();
    assert_eq!(count(&held, "b1"), 20, "{held}");

    // Now all three; LEAST_REQUEST is the default.
    let all = format!(
        "{}{}",
        service("web", &["10.96.0.10"], 80, "TCP"),
        slice("web-v4", "web", false, 8080, "TCP", &[&world.v4(0), &world.v4(1), &world.v4(2)])
    );
    world.env.write_config("web.yaml", &all).unwrap();
    world.wait_for_backend("10.96.0.10:80", "b2");
    let status = world.env.admin_json("/status");
    let live_b1 = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == "10.244.1.2:8080")
        .unwrap()["live_connections"]
        .clone();
    assert_eq!(live_b1, 20, "the kernel counts b1's live connections: {status}");

    let report = world.tcp("10.96.0.10:80", 200);
    assert_eq!(count(&report, "b1"), 0, "power of two choices never picks the busy backend over an idle one: {report}");
    assert!(count(&report, "b2") > 50 && count(&report, "b3") > 50, "{report}");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    // Closing the held sockets releases their counts.
    assert!(
        wait_until(Duration::from_secs(3), || world.env.admin_json("/status")["services"][0]["live_connections"] == 0)
    );
}

#[test]
fn maglev_keeps_sources_on_one_backend_and_moves_about_one_nth() {
    let world = World::new("maglev", 5);
    let sources: Vec<String> = (0..120).map(|i| format!("10.244.100.{}", i + 1)).collect();
    let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    world.client.add_addresses(&source_refs).unwrap();
    let maglev = rule(
        "web",
        "    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n        maglev: {tableSize: 65537}\n",
    );
    let addresses: Vec<String> = (0..5).map(|i| world.v4(i)).collect();
    let config = |n: usize| {
        let refs: Vec<&str> = addresses[..n].iter().map(String::as_str).collect();
        format!(
            "{}{}{}",
            service("web", &["10.96.0.10"], 80, "TCP"),
            slice("web-v4", "web", false, 8080, "TCP", &refs),
            maglev
        )
    };
    world.env.write_config("web.yaml", &config(5)).unwrap();
    world.env.start_agent(&[]).unwrap();
    let sources_arg = sources.join(",");
    let assignment = || -> BTreeMap<String, String> {
        let report = world.probe(&["tcp", "--target", "10.96.0.10:80", "--count", "240", "--sources", &sources_arg]);
        assert_eq!(report["ok"], 240, "{report}");
        serde_json::from_value(report["per_source"].clone()).unwrap()
    };
    let first = assignment();
    assert_eq!(first.len(), 120);
    assert_eq!(assignment(), first, "every source stays on its backend");
    let used: std::collections::BTreeSet<&String> = first.values().collect();
    assert_eq!(used.len(), 5, "120 sources spread over all 5 backends: {first:?}");

    // b5 leaves: only its sources move.
    world.env.write_config("web.yaml", &config(4)).unwrap();
    assert!(wait_until(Duration::from_secs(3), || world.env.admin_json("/status")["services"][0]["backends"]
        .as_array()
        .map(Vec::len)
        == Some(4)));
    let second = assignment();
    let on_removed = first.values().filter(|b| *b == "b5").count();
    let moved_elsewhere = first.iter().filter(|(s, b)| *b != "b5" && second[*s] != **b).count();
    let moved = first.iter().filter(|(s, b)| second[*s] != **b).count();
    assert_eq!(moved_elsewhere, 0, "sources of the remaining backends stay put: {first:?} -> {second:?}");
    assert_eq!(moved, on_removed);
    assert!((8..=45).contains(&moved), "about 1/5 of 120 sources move, got {moved}");
}

#[test]
fn map_entries_size_the_kernel_maps_and_a_full_map_rejects_only_the_port_that_does_not_fit() {
    let world = World::new("map_sizes", 2);
    let (b1, b2) = (world.v4(0), world.v4(1));
    let config: String = (0..3)
        .map(|i| {
            let name = format!("s{i}");
            format!(
                "{}{}",
                service(&name, &[&format!("10.96.20.{}", i + 1)], 80, "TCP"),
                slice(&name, &name, false, 8080, "TCP", &[&b1, &b2])
            )
        })
        .collect();
    world.env.write_config("sized.yaml", &config).unwrap();
    let sizes = ["service-addresses=2", "workloads=64", "registry=1000", "egress-scopes=100"];
    let args: Vec<&str> = sizes.iter().flat_map(|size| ["--map-entries", size]).collect();
    world.env.start_agent(&args).unwrap();
    let dump = world.env.admin_json("/config_dump");
    let in_use = &dump["kernel_maps"]["sizes"];
    let read_back = ["frontends", "workloads", "registry", "egress_scopes"].map(|map| in_use[map].as_u64());
    assert_eq!(read_back, [Some(2), Some(64), Some(1000), Some(100)], "{in_use}");
    let rejected: Vec<String> = dump["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}/{} {}", r["kind"].as_str().unwrap(), r["name"].as_str().unwrap(), r["field"]))
        .collect();
    assert_eq!(rejected, ["Service/s2 \"spec.ports[0]\""], "{}", dump["rejected"]);
    for target in ["10.96.20.1:80", "10.96.20.2:80"] {
        let report = world.probe(&["tcp", "--target", target, "--count", "4"]);
        assert_eq!(report["ok"], 4, "{target}: {report}");
    }
}

#[test]
fn a_thousand_maglev_services_each_get_a_table_of_the_default_size_that_a_restart_reads_back() {
    let world = World::new("maglev_many", 2);
    let sources: Vec<String> = (0..20).map(|i| format!("10.244.100.{}", i + 1)).collect();
    let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    world.client.add_addresses(&source_refs).unwrap();
    let (b1, b2) = (world.v4(0), world.v4(1));
    let config = |services: usize| -> String {
        (0..services)
            .map(|i| {
                let name = format!("s{i}");
                format!(
                    "{}{}{}",
                    service(&name, &[&format!("10.96.{}.{}", 10 + i / 250, 1 + i % 250)], 80, "TCP"),
                    slice(&name, &name, false, 8080, "TCP", &[&b1, &b2]),
                    rule(
                        &name,
                        "    loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}\n"
                    )
                )
            })
            .collect()
    };
    world.env.write_config("many.yaml", &config(1000)).unwrap();
    world.env.start_agent(&[]).unwrap();
    let dump = world.env.admin_json("/config_dump");
    assert_eq!(dump["kernel_maps"]["maglev_tables"], 1000, "{}", dump["kernel_maps"]);
    assert_eq!(dump["rejected"], serde_json::json!([]));
    let sources_arg = sources.join(",");
    let assignment = |target: &str| -> BTreeMap<String, String> {
        let report = world.probe(&["tcp", "--target", target, "--count", "40", "--sources", &sources_arg]);
        assert_eq!(report["ok"], 40, "{target}: {report}");
        serde_json::from_value(report["per_source"].clone()).unwrap()
    };
    for target in ["10.96.10.1:80", "10.96.13.250:80"] {
        let first = assignment(target);
        assert_eq!(first.len(), 20);
        assert_eq!(assignment(target), first, "{target}: every source stays on its backend");
        let used: std::collections::BTreeSet<&String> = first.values().collect();
        assert_eq!(used.len(), 2, "{target}: 20 sources over both backends: {first:?}");
    }
    // A restarted agent reads the 1,000 tables back and finds them right.
    world.env.stop_agent().unwrap();
    world.env.start_agent(&[]).unwrap();
    let status = world.env.admin_json("/status");
    assert_eq!(status["dataplane"]["maps_taken_over"], true);
    assert_eq!(status["config"]["last_reload"]["map_upserts"], 0, "{}", status["config"]["last_reload"]);

    // 700 tables taken out (in batches: one RCU wait each, not one per
    // table); a restart then finds exactly the 300 left in the kernel.
    world.env.write_config("many.yaml", &config(300)).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || world.env.admin_json("/config_dump")["kernel_maps"]["maglev_tables"]
            == 300),
        "the agent took the 700 services out"
    );
    assert_eq!(assignment("10.96.10.1:80").len(), 20, "a service left keeps its table");
    world.env.stop_agent().unwrap();
    world.env.start_agent(&[]).unwrap();
    let reload = &world.env.admin_json("/status")["config"]["last_reload"];
    assert_eq!((&reload["map_upserts"], &reload["map_deletes"]), (&0.into(), &0.into()), "{reload}");
}

#[test]
fn max_connections_refuses_the_extra_connect_and_admits_after_a_close() {
    let world = World::new("max_connections", 2);
    let limit = rule("web", "    connectionPool: {tcp: {maxConnections: 3}}\n");
    world.env.write_config("web.yaml", &two_backend_service(&world, &limit)).unwrap();
    world.env.start_agent(&[]).unwrap();
    let mut holder = world.env.spawn_probe(&world.client, &["hold", "--target", "10.96.0.10:80", "--count", "3"]);
    assert_eq!(read_json_line(&mut holder).unwrap()["held"], 3);

    let started = Instant::now();
    let refused = world.tcp("10.96.0.10:80", 1);
    assert_eq!(errors(&refused, "ECONNREFUSED"), 1, "the fourth connect is refused: {refused}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The limit is per service, across both families.
    let refused6 = world.tcp("[fd00:96::10]:80", 1);
    assert_eq!(errors(&refused6, "ECONNREFUSED"), 1, "{refused6}");
    let status = world.env.admin_json("/status");
    assert_eq!(status["services"][0]["live_connections"], 3, "{status}");
    assert_eq!(status["services"][0]["overflows"], 2, "{status}");

    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || world.tcp("10.96.0.10:80", 1)["ok"] == 1),
        "admitted again after the close"
    );
    let report = world.tcp("10.96.0.10:80", 50);
    assert_eq!(report["ok"], 50, "sequential connects never hit the limit: released on close: {report}");
}

#[test]
fn reconnecting_one_socket_after_refusals_holds_no_slot() {
    let world = World::new("reconnect", 1);
    // The endpoint is ready but nothing listens on 9999: the backend refuses.
    let config = format!(
        "{}{}{}",
        service("web", &["10.96.0.10"], 80, "TCP"),
        slice("web-v4", "web", false, 9999, "TCP", &[&world.v4(0)]),
        rule("web", "    connectionPool: {tcp: {maxConnections: 2}}\n"),
    );
    world.env.write_config("web.yaml", &config).unwrap();
    world.env.start_agent(&[]).unwrap();
    let report = world.probe(&["reconnect", "--target", "10.96.0.10:80", "--count", "5"]);
    // Each retry on the same socket gives back what the previous connect took:
    // the backend refuses all five, the limit refuses none of them.
    assert_eq!(errors(&report, "ECONNREFUSED"), 5, "{report}");
    let status = world.env.admin_json("/status");
    assert_eq!(status["services"][0]["overflows"], 0, "{status}");
    assert_eq!(status["services"][0]["connects"], 5, "{status}");
    assert_eq!(status["services"][0]["live_connections"], 0, "{status}");
}

#[test]
fn a_service_with_no_ready_endpoint_fails_fast() {
    let world = World::new("no_endpoint", 1);
    let config = format!(
        "{}{}",
        service("web", &["10.96.0.10"], 80, "TCP"),
        // One endpoint, not ready.
        slice("web-v4", "web", false, 8080, "TCP", &[&world.v4(0)]).replace(
            "- addresses: [\"10.244.1.2\"]\n",
            "- addresses: [\"10.244.1.2\"]\n  conditions: {ready: false}\n"
        )
    );
    world.env.write_config("web.yaml", &config).unwrap();
    world.env.start_agent(&[]).unwrap();
    let started = Instant::now();
    let report = world.tcp("10.96.0.10:80", 5);
    assert_eq!(errors(&report, "ECONNREFUSED"), 5, "{report}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");
    let status = world.env.admin_json("/status");
    assert_eq!(status["services"][0]["no_backend"], 5, "{status}");
    assert_eq!(status["kernel_counters"]["connect_no_backend"], 5, "{status}");
}

#[test]
fn a_config_edit_applies_while_an_established_connection_keeps_working() {
    let world = World::new("live_edit", 2);
    let with = |i: usize| {
        format!(
            "{}{}",
            service("web", &["10.96.0.10"], 80, "TCP"),
            slice("web-v4", "web", false, 8080, "TCP", &[&world.v4(i)])
        )
    };
    world.env.write_config("web.yaml", &with(0)).unwrap();
    world.env.start_agent(&[]).unwrap();
    let mut holder = world.env.spawn_probe(&world.client, &["hold", "--target", "10.96.0.10:80", "--count", "1"]);
    assert_eq!(count(&read_json_line(&mut holder).unwrap(), "b1"), 1);

    let edited = Instant::now();
    world.env.write_config("web.yaml", &with(1)).unwrap();
    world.wait_for_backend("10.96.0.10:80", "b2");
    assert!(
        edited.elapsed() < Duration::from_millis(1500),
        "applied within a second (plus probe time): {:?}",
        edited.elapsed()
    );
    assert_eq!(count(&world.tcp("10.96.0.10:80", 20), "b2"), 20, "new connections go to the new backend");

    // The connection made before the edit still talks to b1.
    let stdin = holder.stdin.as_mut().unwrap();
    writeln!(stdin, "ping").unwrap();
    stdin.flush().unwrap();
    let pinged = read_json_line(&mut holder).unwrap();
    assert_eq!(count(&pinged, "b1"), 1, "established connection untouched: {pinged}");
    drop(holder.stdin.take());
    holder.wait().unwrap();

    // Deleting the file removes the service from the kernel.
    world.env.remove_config("web.yaml").unwrap();
    assert!(wait_until(Duration::from_secs(3), || errors(&world.tcp("10.96.0.10:80", 1), "ENETUNREACH") == 1));
}

#[test]
fn a_broken_file_is_rejected_while_the_rest_keeps_serving() {
    let world = World::new("bad_input", 2);
    world.env.write_config("web.yaml", &two_backend_service(&world, "")).unwrap();
    world.env.write_config("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n  ports: [\n").unwrap();
    let bad_rule =
        rule("web", "    loadBalancer:\n      consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}\n");
    world.env.write_config("rule.yaml", &bad_rule).unwrap();
    world.env.start_agent(&[]).unwrap();
    assert_eq!(world.tcp("10.96.0.10:80", 10)["ok"], 10, "the good service serves");

    let dump = world.env.admin_json("/config_dump");
    let rejected = dump["rejected"].as_array().unwrap();
    assert!(rejected.iter().any(|r| r["file"] == "broken.yaml"), "{dump}");
    let rule_rejection = rejected.iter().find(|r| r["kind"] == "DestinationRule").expect("rule rejected");
    assert_eq!(rule_rejection["file"], "rule.yaml");
    assert_eq!(rule_rejection["namespace"], NS);
    assert_eq!(rule_rejection["name"], "web");
    assert_eq!(rule_rejection["field"], "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize");

    // A bad edit of a served object keeps its last good version.
    world.env.write_config("web.yaml", &two_backend_service(&world, "").replace("port: 80,", "port: 99999,")).unwrap();
    assert!(wait_until(Duration::from_secs(3), || world.env.admin_json("/config_dump")["rejected"]
        .as_array()
        .unwrap()
        .len()
        == 3));
    assert_eq!(world.tcp("10.96.0.10:80", 10)["ok"], 10, "last good version of web keeps serving");

    let text = mesh_tests::meshctl(None, world.env.admin_addr(), &["status"]).unwrap();
    assert!(text.contains("rule.yaml: DestinationRule shop/web: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number"), "{text}");
    assert!(text.contains("web.yaml: Service shop/web: spec.ports[0].port"), "{text}");
    assert!(text.contains("shop/web:80"), "{text}");
    assert!(text.contains("10.244.1.2:8080"), "{text}");
}

#[test]
fn an_agent_restart_loses_no_new_connection() {
    let world = World::new("restart", 2);
    world.env.write_config("web.yaml", &two_backend_service(&world, "")).unwrap();
    world.env.start_agent(&[]).unwrap();
    assert_eq!(world.tcp("10.96.0.10:80", 10)["ok"], 10);
    let before = world.env.admin_json("/status")["services"][0]["connects"].as_u64().unwrap();

    // Connect continuously while the agent stops, stays away and restarts:
    // the probe says how far it got every 100 connections.
    let mut client = world.env.spawn_probe(
        &world.client,
        &["tcp", "--target", "10.96.0.10:80", "--count", "4000", "--pace-micros", "1000", "--progress-every", "100"],
    );
    let mut progress = || read_json_line(&mut client).unwrap()["progress"].as_u64().expect("a progress line");
    while progress() < 300 {}
    world.env.stop_agent().unwrap();
    // Hundreds of connects are made while no agent runs.
    let stopped_at = progress();
    while progress() < stopped_at + 700 {}
    assert_eq!(world.tcp("10.96.0.10:80", 20)["ok"], 20, "translation goes on with no agent");
    world.env.start_agent(&[]).unwrap();
    let report = loop {
        let line = read_json_line(&mut client).unwrap();
        if line.get("progress").is_none() {
            break line;
        }
    };
    client.wait().unwrap();
    assert_eq!(report["ok"], 4000, "no connection lost across the restart: {report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");

    let status = world.env.admin_json("/status");
    assert_eq!(status["dataplane"]["maps_taken_over"], true, "{status}");
    let after = status["services"][0]["connects"].as_u64().unwrap();
    assert!(after >= before + 4020, "counters carried over the restart: {before} -> {after}");
    assert_eq!(
        status["config"]["last_reload"]["map_upserts"], 0,
        "the restarted agent found the maps already right: {status}"
    );
}

#[test]
fn a_restart_onto_a_broken_config_keeps_what_the_kernel_serves() {
    let world = World::new("restart_broken", 2);
    world.env.write_config("web.yaml", &two_backend_service(&world, "")).unwrap();
    world.env.start_agent(&[]).unwrap();
    assert_eq!(world.tcp("10.96.0.10:80", 10)["ok"], 10);

    // A second agent on the same pins is refused: one writer per map set.
    let second = std::process::Command::new(mesh_tests::agent_bin())
        .args(["run", "--config-dir"])
        .arg(world.env.config_dir())
        .arg("--cgroup")
        .arg(world.env.cgroup_path())
        .arg("--bpffs")
        .arg(world.env.pin_dir())
        .args(["--admin", &format!("127.0.0.1:{}", mesh_tests::free_port())])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another mesh-agent holds"), "{stderr}");

    // The agent goes away, the file breaks, the agent comes back: with no
    // last good version known, it must not delete what the kernel serves.
    world.env.stop_agent().unwrap();
    world.env.write_config("web.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web\n").unwrap();
    world.env.start_agent(&[]).unwrap();
    assert_eq!(world.tcp("10.96.0.10:80", 10)["ok"], 10, "still translated after the restart");
    let status = world.env.admin_json("/status");
    assert!(status["config"]["rejections"][0].as_str().unwrap().starts_with("web.yaml: "), "{status}");

    // Fixed: the configuration applies in full again, deletions included.
    let only_b2 = format!(
        "{}{}",
        service("web", &["10.96.0.10"], 80, "TCP"),
        slice("web-v4", "web", false, 8080, "TCP", &[&world.v4(1)])
    );
    world.env.write_config("web.yaml", &only_b2).unwrap();
    world.wait_for_backend("10.96.0.10:80", "b2");
    assert!(wait_until(Duration::from_secs(3), || count(&world.tcp("10.96.0.10:80", 20), "b2") == 20));
    assert!(wait_until(Duration::from_secs(3), || errors(&world.tcp("[fd00:96::10]:80", 1), "ENETUNREACH") == 1));
}
