//! L7 traffic management through the node proxy, end to end: the kernel
//! captures connects to HTTP service ports that have rules and sends them
//! to the agent's proxy in the node namespace; the proxy routes by
//! VirtualService and DestinationRule and forwards to real HTTP servers in
//! pod namespaces.

use mesh_tests::{wait_until, Pod, TestEnv};
use serde_json::Value;
use std::time::{Duration, Instant};

const NS: &str = "shop";

/// A client pod and backends `b1..bn` serving HTTP on 8080, with pods that
/// carry `version: v<i>` labels (b1 is v1, b2 is v2, ...).
struct World {
    env: TestEnv,
    client: Pod,
    backends: Vec<Pod>,
    servers: Vec<mesh_tests::Server>,
}

impl World {
    fn new(test: &str, n: usize) -> World {
        let env = TestEnv::new(test).expect("test env");
        let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=n {
            let pod = env.add_pod(&format!("b{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"));
            servers.push(pod.serve_http(8080));
            backends.push(pod);
        }
        World { env, client, backends, servers }
    }

    /// Service `reviews` (http port 9080 → 8080) over every backend, plus
    /// their Pods with version labels, plus `extra` YAML.
    fn config(&self, extra: &str) -> String {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: reviews, namespace: {NS}}}\nspec:\n  clusterIPs: [10.96.0.20, \"fd00:96::20\"]\n  ports:\n  - {{name: http, port: 9080, targetPort: 8080}}\n---\n"
        );
        for (ipv6, name) in [(false, "reviews-v4"), (true, "reviews-v6")] {
            let endpoints: String = self
                .backends
                .iter()
                .map(|b| {
                    let ip = if ipv6 { b.ipv6().to_string() } else { b.ipv4().to_string() };
                    format!("- addresses: [\"{ip}\"]\n  targetRef: {{kind: Pod, name: {}}}\n", b.name())
                })
                .collect();
            yaml.push_str(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {NS}, labels: {{kubernetes.io/service-name: reviews}}}}\naddressType: {}\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}---\n",
                if ipv6 { "IPv6" } else { "IPv4" }
            ));
        }
        for (i, b) in self.backends.iter().enumerate() {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NS}, labels: {{app: reviews, version: v{}}}}}\nstatus: {{podIP: {}, podIPs: [{{ip: {}}}, {{ip: \"{}\"}}]}}\n---\n",
                b.name(),
                i + 1,
                b.ipv4(),
                b.ipv4(),
                b.ipv6()
            ));
        }
        yaml.push_str(extra);
        yaml
    }

    fn start(&self, extra: &str) {
        self.start_with(extra, &[]);
    }

    fn start_with(&self, extra: &str, args: &[&str]) {
        self.env.write_config("reviews.yaml", &self.config(extra)).unwrap();
        let mut all = vec!["--access-log"];
        all.extend_from_slice(args);
        self.env.start_agent_on_node(&all).unwrap();
    }

    fn http(&self, args: &[&str]) -> Value {
        let mut all = vec!["http", "--target", "10.96.0.20:9080"];
        all.extend_from_slice(args);
        self.env.probe(&self.client, &all).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", self.env.agent_log()))
    }
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n";

fn count(report: &Value, backend: &str) -> u64 {
    report["backends"][backend].as_u64().unwrap_or(0)
}

fn status(report: &Value, code: &str) -> u64 {
    report["status"][code].as_u64().unwrap_or(0)
}

#[test]
fn a_90_10_canary_splits_2000_requests_within_tolerance() {
    let world = World::new("l7_canary", 2);
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 10\n";
    world.start(&format!("{SUBSETS}{vs}"));
    let report = world.http(&["--count", "2000"]);
    assert_eq!(report["ok"], 2000, "{report}");
    let v2 = count(&report, "b2");
    // Expected 200; σ ≈ 13.4, so ±60 is beyond 4σ.
    assert!((140..=260).contains(&v2), "v2 got {v2} of 2000: {report}");
    assert_eq!(count(&report, "b1") + v2, 2000);

    // The kernel captured the connection; the client still sees the service.
    let status = world.env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_captured"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["kernel_counters"]["original_dst_recorded"].as_u64().unwrap() >= 1, "{status}");
    let pools = status["upstream_pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "both endpoints in the upstream pools: {status}");
    let first = &report["first"]["headers"];
    assert!(first["x-seen-x-request-id"].as_str().is_some_and(|id| id.len() == 36), "request id generated: {first}");
    assert_eq!(first["x-seen-x-envoy-attempt-count"], "1");
    assert_eq!(first["x-seen-host"], "10.96.0.20:9080", "the client's authority is kept: {first}");
    // Bytes are counted as they stream: 2,000 bodies of two bytes ("b1", "b2").
    let (_, metrics) = world.env.admin_get("/metrics").unwrap();
    let sent: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("mesh_response_bytes_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sent, 4000.0, "{metrics}");
}

#[test]
fn header_match_sends_jason_to_v2_and_uri_rules_route_by_prefix_and_regex() {
    let world = World::new("l7_match", 3);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews.shop.svc.cluster.local]\n  http:\n",
        "  - match:\n    - headers: {end-user: {exact: jason}}\n    route:\n    - destination: {host: reviews, subset: v2}\n",
        "  - match:\n    - uri: {prefix: /v3/}\n    rewrite: {uri: /}\n    route:\n    - destination: {host: reviews.shop.svc.cluster.local, subset: v3}\n",
        "  - match:\n    - uri: {regex: '/items/[0-9]+'}\n    route:\n    - destination: {host: reviews, subset: v3}\n",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    let subsets = SUBSETS.replace(
        "  - {name: v2, labels: {version: v2}}\n",
        "  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n",
    );
    world.start(&format!("{subsets}{vs}"));

    let jason = world.http(&["--count", "50", "--headers", "end-user: jason"]);
    assert_eq!(count(&jason, "b2"), 50, "{jason}");
    let others = world.http(&["--count", "50", "--headers", "end-user: maria"]);
    assert_eq!(count(&others, "b1"), 50, "{others}");
    let prefixed = world.http(&["--count", "5", "--path", "/v3/ratings"]);
    assert_eq!(count(&prefixed, "b3"), 5, "{prefixed}");
    assert_eq!(prefixed["first"]["headers"]["x-seen-path"], "/ratings", "prefix rewritten: {prefixed}");
    let regex = world.http(&["--count", "5", "--path", "/items/42"]);
    assert_eq!(count(&regex, "b3"), 5, "{regex}");
    let not_whole = world.http(&["--count", "5", "--path", "/items/42x"]);
    assert_eq!(count(&not_whole, "b1"), 5, "a regex must match the whole path: {not_whole}");
}

#[test]
fn redirect_and_direct_response_are_answered_by_the_proxy() {
    let world = World::new("l7_redirect", 1);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - match:\n    - uri: {exact: /old}\n    redirect: {uri: /new, authority: example.org}\n",
        "  - match:\n    - uri: {exact: /teapot}\n    directResponse: {status: 418, body: {string: short and stout}}\n",
        "  - route:\n    - destination: {host: reviews}\n",
    );
    world.start(vs);
    let redirected = world.http(&["--path", "/old"]);
    assert_eq!(redirected["first"]["status"], 301, "{redirected}");
    assert_eq!(redirected["first"]["headers"]["location"], "http://example.org/new", "{redirected}");
    let direct = world.http(&["--path", "/teapot"]);
    assert_eq!(direct["first"]["status"], 418, "{direct}");
    assert_eq!(direct["first"]["body"], "short and stout");
    assert_eq!(world.servers[0].requests(), 0, "neither reached the backend");
}

#[test]
fn fault_abort_at_50_percent_and_a_fixed_delay() {
    let world = World::new("l7_fault", 1);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - match:\n    - uri: {prefix: /slow}\n    fault:\n      delay: {fixedDelay: 300ms, percentage: {value: 100}}\n    route:\n    - destination: {host: reviews}\n",
        "  - fault:\n      abort: {httpStatus: 418, percentage: {value: 50}}\n    route:\n    - destination: {host: reviews}\n",
    );
    world.start(vs);
    let report = world.http(&["--count", "1000"]);
    let aborted = status(&report, "418");
    // Expected 500, σ ≈ 15.8: ±80 is beyond 5σ.
    assert!((420..=580).contains(&aborted), "aborted {aborted} of 1000: {report}");
    assert_eq!(aborted + status(&report, "200"), 1000, "{report}");
    assert_eq!(world.servers[0].requests(), 1000 - aborted, "aborts never reach the backend");

    let started = Instant::now();
    let slow = world.http(&["--count", "3", "--path", "/slow"]);
    let elapsed = started.elapsed();
    assert_eq!(status(&slow, "200"), 3, "{slow}");
    assert!(elapsed >= Duration::from_millis(900), "three requests delayed 300 ms each: {elapsed:?}");
    assert!(slow["micros_per_request"].as_f64().unwrap() >= 300_000.0, "{slow}");
}

#[test]
fn retries_hide_a_failing_first_try_and_a_non_retriable_failure_is_not_retried() {
    let world = World::new("l7_retry", 1);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 3, retryOn: 5xx}\n",
    );
    world.start(vs);
    // The backend answers 503 to the first two tries of each key.
    let report = world.http(&["--path", "/fail-first/2/a"]);
    assert_eq!(report["first"]["status"], 200, "{report}");
    assert_eq!(report["first"]["headers"]["x-seen-x-envoy-attempt-count"], "3", "{report}");
    assert_eq!(world.servers[0].requests(), 3);

    // 404 is not in retryOn 5xx: one try only.
    let not_found = world.http(&["--path", "/status/404"]);
    assert_eq!(not_found["first"]["status"], 404);
    assert_eq!(world.servers[0].requests(), 4, "not retried");
}

#[test]
fn a_route_timeout_answers_504() {
    let world = World::new("l7_timeout", 1);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews}\n    timeout: 200ms\n",
    );
    world.start(vs);
    let started = Instant::now();
    let report = world.http(&["--path", "/delay/2000"]);
    assert_eq!(report["first"]["status"], 504, "{report}");
    assert_eq!(report["first"]["body"], "upstream request timeout");
    assert!(started.elapsed() < Duration::from_millis(1500), "cut at the timeout: {:?}", started.elapsed());
    let fast = world.http(&["--path", "/delay/10"]);
    assert_eq!(fast["first"]["status"], 200);
}

#[test]
fn mirror_traffic_reaches_the_shadow_without_slowing_the_caller() {
    let world = World::new("l7_mirror", 2);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 100}\n",
    );
    world.start(&format!("{SUBSETS}{vs}"));
    let report = world.http(&["--count", "20"]);
    assert_eq!(count(&report, "b1"), 20, "{report}");
    assert!(
        wait_until(Duration::from_secs(3), || world.servers[1].requests() == 20),
        "shadow got {}",
        world.servers[1].requests()
    );
    // A slow shadow does not slow the caller.
    let started = Instant::now();
    let slow_shadow = world.http(&["--count", "3", "--path", "/shadow-delay/1000"]);
    assert_eq!(count(&slow_shadow, "b1"), 3);
    assert!(started.elapsed() < Duration::from_millis(1500), "mirrors never wait: {:?}", started.elapsed());
    assert!(wait_until(Duration::from_secs(5), || world.servers[1].requests() == 23));
}

#[test]
fn overflowing_the_connection_pool_answers_503_overloaded() {
    let world = World::new("l7_overflow", 1);
    let rule = concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n",
        "  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n---\n",
    );
    world.start(rule);
    // Eight at once, each held 500 ms by the backend: two fit, six overflow.
    let report = world.http(&["--count", "8", "--parallel", "8", "--path", "/delay/500"]);
    assert_eq!(status(&report, "200"), 2, "{report}");
    assert_eq!(status(&report, "503"), 6, "{report}");
    assert_eq!(status(&report, "overloaded"), 6, "every overflow says x-envoy-overloaded: {report}");
}

#[test]
fn an_erroring_pod_is_ejected_avoided_and_returns_after_the_ejection_time() {
    let world = World::new("l7_outlier", 3);
    let rule = concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n",
        "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n",
        "    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}\n---\n",
    );
    world.start(rule);
    // b3 fails every request that names it; round robin reaches it every third.
    let report = world.http(&["--count", "60", "--headers", "x-test-fail-pod: b3"]);
    assert!(status(&report, "503") <= 2, "two failures in a row eject it: {report}");
    assert_eq!(count(&report, "b3"), 0);
    assert!(count(&report, "b1") >= 28 && count(&report, "b2") >= 28, "{report}");
    let status_report = world.env.admin_json("/status");
    let ejected = &status_report["ejected_hosts"];
    assert_eq!(ejected.as_array().map(Vec::len), Some(1), "{status_report}");
    assert_eq!(ejected[0]["host"], "10.244.3.2:8080");
    let (_, metrics) = world.env.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains("mesh_outlier_ejected_hosts{cluster=\"outbound|9080||reviews.shop.svc.cluster.local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_outlier_ejections_total{cluster=\"outbound|9080||reviews.shop.svc.cluster.local\"} 1"),
        "{metrics}"
    );

    // Still ejected: no traffic for b3 even though it would now succeed.
    let healthy = world.http(&["--count", "30"]);
    assert_eq!(count(&healthy, "b3"), 0, "{healthy}");
    // Status counts the ejection down; once it is over, b3 takes traffic again.
    let remaining = ejected[0]["remaining_ms"].as_u64().unwrap();
    assert!(remaining > 0 && remaining <= 2000, "ejected for baseEjectionTime: {status_report}");
    let over = || world.env.admin_json("/status")["ejected_hosts"].as_array().is_some_and(Vec::is_empty);
    assert!(wait_until(Duration::from_secs(5), over), "still ejected after 5 s");
    let back = world.http(&["--count", "30"]);
    assert!(count(&back, "b3") >= 8, "b3 returns after 2 s: {back}");
    let (_, metrics) = world.env.admin_get("/metrics").unwrap();
    assert!(metrics.contains("mesh_requests_total{source_workload=\"unknown\""), "{metrics}");
}

#[test]
fn consistent_hash_by_header_keeps_each_user_on_one_pod() {
    let world = World::new("l7_hash", 3);
    let rule = concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n",
        "  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n---\n",
    );
    world.start(rule);
    let mut pods = std::collections::BTreeSet::new();
    for user in ["ann", "bob", "cyd", "dee", "eve", "fay", "gus", "hal"] {
        let report = world.http(&["--count", "20", "--headers", &format!("x-user: {user}")]);
        let backends = report["backends"].as_object().unwrap();
        assert_eq!(backends.len(), 1, "{user} stays on one pod: {report}");
        pods.insert(backends.keys().next().unwrap().clone());
    }
    assert!(pods.len() >= 2, "users spread over pods: {pods:?}");
}

#[test]
fn bad_clients_get_400_431_or_are_cut_off_and_the_proxy_keeps_serving() {
    let world = World::new("l7_bad_clients", 1);
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
    world.start_with(vs, &["--header-timeout-ms", "1000"]);
    let raw = |send: &str, pause: &str| {
        world
            .env
            .probe(&world.client, &["raw", "--target", "10.96.0.20:9080", "--send", send, "--pause-ms", pause])
            .unwrap()
    };
    let garbage = raw("NOT HTTP AT ALL\\n\\n", "0");
    assert!(garbage["response"].as_str().unwrap().starts_with("HTTP/1.1 400"), "{garbage}");
    let huge = format!("GET / HTTP/1.1\\nHost: reviews\\nx-big: {}\\n\\n", "a".repeat(100_000));
    let too_large = raw(&huge, "0");
    assert!(too_large["response"].as_str().unwrap().starts_with("HTTP/1.1 431"), "{too_large}");
    // Half a request, then nothing: cut off at the header timeout (1 s here).
    let slow = raw("GET / HTTP/1.1\\nHost: rev", "0");
    assert_eq!(slow["closed_by_server"], true, "{slow}");
    let waited = slow["millis"].as_u64().unwrap();
    assert!((900..4000).contains(&waited), "cut after about a second: {slow}");
    // Other clients were never affected.
    let report = world.http(&["--count", "20"]);
    assert_eq!(report["ok"], 20, "{report}");
}

#[test]
fn an_invalid_virtual_service_is_rejected_with_its_field_and_the_rest_serves() {
    let world = World::new("l7_bad_vs", 2);
    let good = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n";
    world.start(&format!("{SUBSETS}{good}"));
    assert_eq!(count(&world.http(&["--count", "10"]), "b2"), 10);
    // An edit with a broken regex: rejected, the last good version serves.
    let broken = good.replace("  - route:", "  - match:\n    - uri: {regex: '/(unclosed'}\n    route:");
    world.env.write_config("vs.yaml", &broken).unwrap();
    world.env.write_config("reviews.yaml", &world.config(SUBSETS)).unwrap();
    assert!(wait_until(Duration::from_secs(3), || {
        world.env.admin_json("/config_dump")["rejected"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["kind"] == "VirtualService"))
    }));
    let dump = world.env.admin_json("/config_dump");
    let rejection =
        dump["rejected"].as_array().unwrap().iter().find(|r| r["kind"] == "VirtualService").unwrap().clone();
    assert_eq!(rejection["field"], "spec.http[0].match[0].uri.regex", "{rejection}");
    assert_eq!(count(&world.http(&["--count", "10"]), "b2"), 10, "last good VirtualService keeps routing");
}

#[test]
fn istio_mutual_routes_in_plaintext_to_the_subset_with_a_visible_warning() {
    let world = World::new("l7_istio_mutual", 2);
    // Bookinfo's destination-rule-all-mtls.yaml for reviews, and a route to v2.
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n---\n";
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v2}\n";
    world.start(&format!("{rule}{vs}"));
    let report = world.http(&["--count", "10"]);
    assert_eq!((status(&report, "200"), count(&report, "b2")), (10, 10), "{report}");

    let dump = world.env.admin_json("/config_dump");
    assert_eq!(dump["rejected"], serde_json::json!([]), "{dump}");
    let warnings = dump["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{dump}");
    let warning = &warnings[0];
    assert_eq!(
        (&warning["file"], &warning["kind"], &warning["name"], &warning["field"]),
        (&"reviews.yaml".into(), &"DestinationRule".into(), &"reviews".into(), &"spec.trafficPolicy.tls.mode".into()),
        "{warning}"
    );
    assert!(warning["message"].as_str().unwrap().contains("plaintext"), "{warning}");

    let netns = world.env.agent_netns();
    let text = mesh_tests::meshctl(netns.as_deref(), world.env.admin_addr(), &["status"]).unwrap();
    assert!(text.contains("  warnings (1):\n    - reviews.yaml: DestinationRule shop/reviews: spec.trafficPolicy.tls.mode: ISTIO_MUTUAL: the mesh does not encrypt pod-to-pod traffic yet"), "{text}");

    // Logged once, not again when another object changes.
    let reloads = || world.env.admin_json("/status")["config"]["reloads"].as_u64().unwrap_or(0);
    let before = reloads();
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\nspec:\n  clusterIP: 10.96.0.99\n  ports:\n  - {name: http, port: 80}\n";
    world.env.write_config("other.yaml", other).unwrap();
    assert!(wait_until(Duration::from_secs(3), || reloads() > before), "no reload");
    assert_eq!(world.env.agent_log().matches("not honoured: ISTIO_MUTUAL").count(), 1, "{}", world.env.agent_log());
}

#[test]
fn cors_preflight_is_answered_by_the_proxy() {
    let world = World::new("l7_cors", 1);
    let vs = concat!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews}\n",
        "    corsPolicy:\n      allowOrigins: [{exact: 'https://shop.example'}]\n      allowMethods: [GET, POST]\n      maxAge: 24h\n",
    );
    world.start(vs);
    let preflight = world.http(&[
        "--method",
        "OPTIONS",
        "--headers",
        "Origin: https://shop.example, Access-Control-Request-Method: POST",
    ]);
    let headers = &preflight["first"]["headers"];
    assert_eq!(preflight["first"]["status"], 200, "{preflight}");
    assert_eq!(headers["access-control-allow-origin"], "https://shop.example", "{preflight}");
    assert!(headers["access-control-allow-methods"].as_str().unwrap().contains("POST"), "{preflight}");
    assert_eq!(headers["access-control-max-age"], "86400", "{preflight}");
    assert_eq!(world.servers[0].requests(), 0, "the preflight never reached the backend");
    let simple = world.http(&["--headers", "Origin: https://shop.example"]);
    assert_eq!(simple["first"]["headers"]["access-control-allow-origin"], "https://shop.example", "{simple}");
}

#[test]
fn http2_and_grpc_with_trailers_go_through_the_proxy() {
    let env = TestEnv::new("l7_h2").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let pods: Vec<Pod> =
        (1..=2).map(|i| env.add_pod(&format!("g{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"))).collect();
    let _servers: Vec<_> = pods.iter().map(|p| p.serve_h2(9090)).collect();
    let endpoints: String = pods.iter().map(|p| format!("- addresses: [\"{}\"]\n", p.ipv4())).collect();
    let config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ratings, namespace: {NS}}}\nspec:\n  clusterIP: 10.96.0.30\n  ports:\n  - {{name: grpc, port: 9090, targetPort: 9090}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: ratings, namespace: {NS}, labels: {{kubernetes.io/service-name: ratings}}}}\naddressType: IPv4\nports: [{{name: grpc, port: 9090}}]\nendpoints:\n{endpoints}---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings, namespace: {NS}}}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {{host: ratings}}\n    retries: {{attempts: 2, retryOn: unavailable}}\n"
    );
    env.write_config("ratings.yaml", &config).unwrap();
    env.start_agent_on_node(&["--access-log"]).unwrap();
    let probe = |args: &[&str]| env.probe(&client, args).unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()));

    // An HTTP/2 client (prior knowledge), HTTP/2 upstreams.
    let h2 = probe(&["h2", "--target", "10.96.0.30:9090", "--count", "20"]);
    assert_eq!(h2["ok"], 20, "{h2}");
    assert_eq!(h2["backends"].as_object().map(|b| b.len()), Some(2), "balanced per request: {h2}");
    assert_eq!(h2["first"]["headers"]["x-seen-version"], "HTTP/2.0", "{h2}");
    assert_eq!(h2["first"]["headers"]["x-seen-authority"], "10.96.0.30:9090", ":authority is the service's: {h2}");
    // gRPC: the grpc-status trailer arrives through the proxy.
    let grpc = probe(&["h2", "--target", "10.96.0.30:9090", "--count", "10", "--grpc"]);
    assert_eq!(grpc["grpc_status"]["0"], 10, "{grpc}");
    assert_eq!(grpc["first"]["headers"]["content-type"], "application/grpc", "{grpc}");
    // An HTTP/1.1 client to the same port: the proxy speaks HTTP/2 upstream.
    let h1 = probe(&["http", "--target", "10.96.0.30:9090", "--count", "5"]);
    assert_eq!(h1["ok"], 5, "{h1}");
    assert_eq!(h1["first"]["headers"]["x-seen-version"], "HTTP/2.0", "{h1}");
    assert_eq!(h1["first"]["headers"]["x-seen-authority"], "10.96.0.30:9090", "Host became :authority: {h1}");
}

/// Two TCP backends `d1`, `d2` (roles r1, r2) of Service `db` on 5432 at
/// 10.96.0.40: the pods, their servers, and the config that says so.
fn db_backends(env: &TestEnv) -> (Vec<Pod>, Vec<mesh_tests::Server>, String) {
    let pods: Vec<Pod> =
        (1..=2).map(|i| env.add_pod(&format!("d{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"))).collect();
    let servers: Vec<_> = pods.iter().map(|p| p.serve_tcp(5432)).collect();
    let mut config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {NS}}}\nspec:\n  clusterIP: 10.96.0.40\n  ports:\n  - {{name: tcp-postgres, port: 5432, targetPort: 5432}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: db, namespace: {NS}, labels: {{kubernetes.io/service-name: db}}}}\naddressType: IPv4\nports: [{{name: tcp-postgres, port: 5432}}]\nendpoints:\n- addresses: [\"{}\"]\n- addresses: [\"{}\"]\n---\n",
        pods[0].ipv4(),
        pods[1].ipv4()
    );
    for (i, pod) in pods.iter().enumerate() {
        config.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NS}, labels: {{app: db, role: r{}}}}}\nstatus: {{podIP: {}}}\n---\n",
            pod.name(),
            i + 1,
            pod.ipv4()
        ));
    }
    (pods, servers, config)
}

#[test]
fn tcp_routes_split_connections_by_weight() {
    let env = TestEnv::new("l7_tcp").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let (_pods, _servers, mut config) = db_backends(&env);
    config.push_str(concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\nspec:\n  host: db\n  subsets:\n  - {name: primary, labels: {role: r1}}\n  - {name: replica, labels: {role: r2}}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: shop}\nspec:\n  hosts: [db]\n  tcp:\n  - match:\n    - port: 5432\n    route:\n    - destination: {host: db, subset: primary}\n      weight: 75\n    - destination: {host: db, subset: replica}\n      weight: 25\n",
    ));
    env.write_config("db.yaml", &config).unwrap();
    env.start_agent_on_node(&[]).unwrap();
    let report = env
        .probe(&client, &["tcp", "--target", "10.96.0.40:5432", "--count", "800", "--requests-per-conn", "3"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()));
    assert_eq!(report["ok"], 800, "each connection stays on one backend for all its requests: {report}");
    let replica = report["backends"]["d2"].as_u64().unwrap_or(0);
    // Expected 200, σ ≈ 12.2: ±60 is beyond 4σ.
    assert!((140..=260).contains(&replica), "replica got {replica} of 800: {report}");
    assert_eq!(report["peer"], "10.96.0.40:5432", "{report}");
    let status = env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_captured"].as_u64().unwrap() >= 800, "{status}");
}

#[test]
fn an_upgrade_is_relayed_both_ways() {
    let world = World::new("l7_upgrade", 1);
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
    world.start(vs);
    let send =
        "GET /upgrade HTTP/1.1\\nHost: reviews\\nConnection: Upgrade\\nUpgrade: echo\\n\\nping-through-the-tunnel";
    let report = world
        .env
        .probe(&world.client, &["raw", "--target", "10.96.0.20:9080", "--send", send, "--read-ms", "1500"])
        .unwrap();
    let response = report["response"].as_str().unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{report}");
    assert!(response.to_ascii_lowercase().contains("upgrade: echo"), "{report}");
    assert!(response.ends_with("ping-through-the-tunnel"), "bytes after the switch come back: {report}");
}

#[test]
fn a_hash_cookie_is_issued_when_absent_and_then_keeps_the_client_on_one_pod() {
    let world = World::new("l7_cookie", 3);
    let rule = concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n",
        "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpCookie: {name: session, path: /, ttl: 3600s}\n---\n",
    );
    world.start(rule);
    let first = world.http(&[]);
    let set_cookie = first["first"]["headers"]["set-cookie"].as_str().unwrap_or_else(|| panic!("{first}")).to_owned();
    assert!(set_cookie.starts_with("session=\""), "{set_cookie}");
    assert!(set_cookie.contains("Path=/") && set_cookie.contains("Max-Age=3600"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap();
    let again = world.http(&["--count", "30", "--headers", &format!("Cookie: {cookie}")]);
    assert_eq!(again["backends"].as_object().map(|b| b.len()), Some(1), "one pod for the session: {again}");
    assert!(again["first"]["headers"].get("set-cookie").is_none(), "no new cookie once sent: {again}");
}

#[test]
fn source_labels_route_a_client_workload_to_its_own_version() {
    let world = World::new("l7_source", 2);
    let other = world.env.add_pod("other", "10.244.0.3", "fd00:244::3");
    let clients = concat!(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: frontend-abc, namespace: web, labels: {app: frontend}}\nstatus: {podIP: 10.244.0.2}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - match:\n    - sourceLabels: {app: frontend}\n    route:\n    - destination: {host: reviews, subset: v2}\n",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    world.start(&format!("{SUBSETS}{clients}"));
    let frontend = world.http(&["--count", "20"]);
    assert_eq!(count(&frontend, "b2"), 20, "the frontend pod matches sourceLabels: {frontend}");
    let report = world.env.probe(&other, &["http", "--target", "10.96.0.20:9080", "--count", "20"]).unwrap();
    assert_eq!(count(&report, "b1"), 20, "an unlabelled client does not: {report}");
    let (_, metrics) = world.env.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains("source_workload=\"frontend\",source_namespace=\"web\""),
        "workload name from the app label: {metrics}"
    );
}

#[test]
fn tls_origination_simple_and_mutual_with_name_checks() {
    let env = TestEnv::new("l7_tls").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let server = env.add_pod("s1", "10.244.1.2", "fd00:244::1:2");
    let pki_dir = env.scratch("pki");
    let pki =
        mesh_tests::tls::make_pki(&pki_dir, &["secure.shop.svc.cluster.local", "mtls.shop.svc.cluster.local"]).unwrap();
    let _simple = server.serve_tls(8443, &pki, false);
    let _mutual = server.serve_tls(9443, &pki, true);
    let service = |name: &str, ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 80, targetPort: {port}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {NS}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints:\n- addresses: [\"10.244.1.2\"]\n---\n"
        )
    };
    let secret = |name: &str, files: &[(&str, &std::path::PathBuf)]| {
        let files: Vec<(&str, &std::path::Path)> = files.iter().map(|(key, path)| (*key, path.as_path())).collect();
        mesh_tests::tls::secret_yaml(NS, name, &files).unwrap() + "---\n"
    };
    let rule = |name: &str, tls: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  host: {name}\n  trafficPolicy:\n    tls: {{{tls}}}\n---\n")
    };
    let ca = pki.ca.display().to_string();
    let config = [
        service("secure", "10.96.0.50", 8443),
        rule("secure", &format!("mode: SIMPLE, caCertificates: '{ca}'")),
        service("mtls", "10.96.0.51", 9443),
        rule(
            "mtls",
            &format!(
                "mode: MUTUAL, caCertificates: '{ca}', clientCertificate: '{}', privateKey: '{}'",
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        ),
        service("nocert", "10.96.0.52", 9443),
        rule("nocert", &format!("mode: SIMPLE, caCertificates: '{ca}', sni: mtls.shop.svc.cluster.local")),
        service("wrongname", "10.96.0.53", 8443),
        rule("wrongname", &format!("mode: SIMPLE, caCertificates: '{ca}', subjectAltNames: [other.example]")),
        // The same MUTUAL origination with the material in a Secret.
        service("vault", "10.96.0.54", 9443),
        rule("vault", "mode: MUTUAL, credentialName: vault-client, sni: mtls.shop.svc.cluster.local"),
        secret("vault-client", &[("tls.crt", &pki.client_cert), ("tls.key", &pki.client_key), ("ca.crt", &pki.ca)]),
        service("nosecret", "10.96.0.55", 9443),
        rule("nosecret", "mode: MUTUAL, credentialName: absent"),
    ]
    .concat();
    env.write_config("tls.yaml", &config).unwrap();
    env.start_agent_on_node(&["--access-log"]).unwrap();
    let get = |ip: &str| {
        env.probe(&client, &["http", "--target", &format!("{ip}:80"), "--count", "3"])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()))
    };

    let simple = get("10.96.0.50");
    assert_eq!(simple["ok"], 3, "{simple}");
    let headers = &simple["first"]["headers"];
    assert_eq!(headers["x-seen-tls"], "yes", "{simple}");
    assert_eq!(headers["x-seen-sni"], "secure.shop.svc.cluster.local", "SNI defaults to the host: {simple}");
    assert_eq!(headers["x-seen-client-cert"], "no");

    let mutual = get("10.96.0.51");
    assert_eq!(mutual["ok"], 3, "{mutual}");
    assert_eq!(mutual["first"]["headers"]["x-seen-client-cert"], "yes", "{mutual}");

    let refused = get("10.96.0.52");
    assert_eq!(refused["status"]["503"], 3, "a server that wants a client certificate refuses SIMPLE: {refused}");
    let wrong = get("10.96.0.53");
    assert_eq!(wrong["status"]["503"], 3, "the certificate names none of subjectAltNames: {wrong}");

    let from_secret = get("10.96.0.54");
    assert_eq!(from_secret["ok"], 3, "{from_secret}");
    assert_eq!(from_secret["first"]["headers"]["x-seen-client-cert"], "yes", "credentialName: {from_secret}");
    let missing = get("10.96.0.55");
    assert_eq!(missing["status"]["503"], 3, "a credentialName with no Secret: {missing}");
    assert!(env.agent_log().contains("secret shop/absent (credentialName): not found"), "{}", env.agent_log());
}

#[test]
fn tls_routes_pick_the_backend_by_server_name_without_terminating_tls() {
    let env = TestEnv::new("l7_sni").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let pods: Vec<Pod> =
        (1..=2).map(|i| env.add_pod(&format!("t{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"))).collect();
    let pki_dir = env.scratch("pki");
    let pki = mesh_tests::tls::make_pki(&pki_dir, &["a.example.com", "b.example.com"]).unwrap();
    let _servers: Vec<_> = pods.iter().map(|p| p.serve_tls(8443, &pki, false)).collect();
    let mut config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: edge, namespace: {NS}}}\nspec:\n  clusterIP: 10.96.0.60\n  ports:\n  - {{name: tls, port: 443, targetPort: 8443}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: edge, namespace: {NS}, labels: {{kubernetes.io/service-name: edge}}}}\naddressType: IPv4\nports: [{{name: tls, port: 8443}}]\nendpoints:\n- addresses: [\"10.244.1.2\"]\n- addresses: [\"10.244.2.2\"]\n---\n"
    );
    for (i, pod) in pods.iter().enumerate() {
        config.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {NS}, labels: {{site: s{}}}}}\nstatus: {{podIP: {}}}\n---\n",
            pod.name(),
            i + 1,
            pod.ipv4()
        ));
    }
    config.push_str(concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: edge, namespace: shop}\nspec:\n  host: edge\n  subsets:\n  - {name: a, labels: {site: s1}}\n  - {name: b, labels: {site: s2}}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge, namespace: shop}\nspec:\n  hosts: [edge, '*.example.com']\n  tls:\n",
        "  - match:\n    - {port: 443, sniHosts: [a.example.com]}\n    route:\n    - destination: {host: edge, subset: a}\n",
        "  - match:\n    - {port: 443, sniHosts: [b.example.com]}\n    route:\n    - destination: {host: edge, subset: b}\n",
    ));
    env.write_config("edge.yaml", &config).unwrap();
    env.start_agent_on_node(&[]).unwrap();
    let ca = pki.ca.display().to_string();
    for (sni, backend) in [("a.example.com", "t1"), ("b.example.com", "t2")] {
        let report = env
            .probe(&client, &["tls", "--target", "10.96.0.60:443", "--sni", sni, "--ca", &ca, "--count", "10"])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()));
        assert_eq!(report["backends"][backend], 10, "{sni} goes to {backend}, end to end TLS: {report}");
    }
    let status = env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_captured"].as_u64().unwrap() >= 20, "{status}");
}

#[test]
fn ports_without_rules_stay_on_the_kernel_path() {
    let world = World::new("l7_no_rules", 2);
    world.start("");
    let report = world.http(&["--count", "20"]);
    assert_eq!(report["ok"], 20, "{report}");
    let status = world.env.admin_json("/status");
    assert_eq!(status["kernel_counters"]["connect_captured"], 0, "nothing captured without L7 rules: {status}");
}

#[test]
fn upstream_connections_are_pooled_within_the_clusters_limits() {
    let world = World::new("l7_pool", 1);
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {maxRequestsPerConnection: 5, idleTimeout: 1s}\n---\n";
    world.start(rule);
    let backend = &world.servers[0];

    // 20 requests one after another: a connection carries 5, then a new one.
    let report = world.http(&["--count", "20"]);
    assert_eq!(report["ok"], 20, "{report}");
    assert_eq!(backend.accepted(), 4, "maxRequestsPerConnection: 5");
    let status = world.env.admin_json("/status");
    assert_eq!(status["upstream_pools"][0]["http1_idle"], 0, "the last one was closed after its 5th: {status}");

    // Kept between requests while in use, closed once idle past idleTimeout.
    world.http(&["--count", "2"]);
    assert_eq!(backend.accepted(), 5);
    assert!(wait_until(Duration::from_secs(1), || backend.live() == 1), "one pooled connection");
    assert!(wait_until(Duration::from_secs(4), || backend.live() == 0), "closed after the 1 s idle timeout");
    world.http(&["--count", "1"]);
    assert_eq!(backend.accepted(), 6, "a new connection after the idle one was closed");
}

#[test]
fn tcp_routes_choose_by_source_labels_and_destination_subnets() {
    let env = TestEnv::new("l7_tcp_match").expect("test env");
    let etl = env.add_pod("etl", "10.244.0.2", "fd00:244::2");
    let web = env.add_pod("web", "10.244.0.3", "fd00:244::3");
    let (_pods, _servers, mut config) = db_backends(&env);
    config.push_str(concat!(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: etl-1, namespace: batch, labels: {app: etl}}\nstatus: {podIP: 10.244.0.2}\n---\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: batch, labels: {app: web}}\nstatus: {podIP: 10.244.0.3}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\nspec:\n  host: db\n  subsets:\n  - {name: primary, labels: {role: r1}}\n  - {name: replica, labels: {role: r2}}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: shop}\nspec:\n  hosts: [db]\n  tcp:\n",
        // Another service range: never this connection's destination.
        "  - match: [{destinationSubnets: [10.97.0.0/16]}]\n    route: [{destination: {host: db, subset: replica}}]\n",
        "  - match: [{sourceLabels: {app: etl}, sourceNamespace: batch}]\n    route: [{destination: {host: db, subset: replica}}]\n",
        "  - match: [{destinationSubnets: [10.96.0.40/32], port: 5432}]\n    route: [{destination: {host: db, subset: primary}}]\n",
    ));
    env.write_config("db.yaml", &config).unwrap();
    env.start_agent_on_node(&[]).unwrap();
    let connect = |pod: &Pod| {
        env.probe(pod, &["tcp", "--target", "10.96.0.40:5432", "--count", "20"])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()))
    };
    let from_etl = connect(&etl);
    assert_eq!(from_etl["backends"]["d2"], 20, "sourceLabels and sourceNamespace pick the etl pod: {from_etl}");
    let from_web = connect(&web);
    assert_eq!(from_web["backends"]["d1"], 20, "the web pod falls to the destinationSubnets rule: {from_web}");
}

#[test]
fn a_workload_selector_rule_applies_only_to_the_clients_it_picks() {
    let world = World::new("l7_dr_selector", 2);
    let other = world.env.add_pod("other", "10.244.0.3", "fd00:244::3");
    let config = concat!(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: canary-client, namespace: shop, labels: {app: canary}}\nstatus: {podIP: 10.244.0.2}\n---\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: other-client, namespace: shop, labels: {app: other}}\nstatus: {podIP: 10.244.0.3}\n---\n",
        // For the canary client only, `v1` means the pods of version v2.
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-canary, namespace: shop}\nspec:\n  host: reviews\n",
        "  workloadSelector: {matchLabels: {app: canary}}\n  subsets:\n  - {name: v1, labels: {version: v2}}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews, subset: v1}\n",
    );
    world.start(&format!("{SUBSETS}{config}"));
    let canary = world.http(&["--count", "20"]);
    assert_eq!(count(&canary, "b2"), 20, "the selected client uses its own rule: {canary}");
    let report = world.env.probe(&other, &["http", "--target", "10.96.0.20:9080", "--count", "20"]).unwrap();
    assert_eq!(count(&report, "b1"), 20, "every other client uses the rule without selector: {report}");
}

#[test]
fn warmup_gives_a_new_endpoint_a_small_share_that_grows_to_its_full_share() {
    let world = World::new("l7_warmup", 2);
    let rule = |duration: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      warmup: {{duration: {duration}, minimumPercent: 10}}\n---\n")
    };
    // b2 is not an endpoint yet.
    let b2 = &world.backends[1];
    let without_b2 = world
        .config(&rule("3600s"))
        .replace(&format!("- addresses: [\"{}\"]\n  targetRef: {{kind: Pod, name: b2}}\n", b2.ipv4()), "")
        .replace(&format!("- addresses: [\"{}\"]\n  targetRef: {{kind: Pod, name: b2}}\n", b2.ipv6()), "");
    world.env.write_config("reviews.yaml", &without_b2).unwrap();
    world.env.start_agent_on_node(&["--access-log"]).unwrap();
    assert_eq!(count(&world.http(&["--count", "20"]), "b1"), 20);

    // b2 joins the cluster the proxy already serves: it starts at 10%.
    world.env.write_config("reviews.yaml", &world.config(&rule("3600s"))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&world.http(&["--count", "50"]), "b2") > 0),
        "b2 never joined: {}",
        world.env.agent_log()
    );
    let early = world.http(&["--count", "1100"]);
    let new = count(&early, "b2");
    // Weights 1 : 0.1, so 100 expected (σ ≈ 9.5); an even split would be 550.
    assert!((40..=170).contains(&new), "b2 got {new} of 1100 while warming up: {early}");

    // The same endpoint, now older than the window: its full share.
    world.env.write_config("reviews.yaml", &world.config(&rule("1s"))).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || count(&world.http(&["--count", "100"]), "b2") >= 35),
        "b2 never reached its full share"
    );
    let warm = world.http(&["--count", "1000"]);
    let share = count(&warm, "b2");
    assert!((420..=580).contains(&share), "b2 got {share} of 1000 once warm: {warm}");
}

#[test]
fn a_retry_budget_bounds_the_retries_under_way() {
    let world = World::new("l7_retry_budget", 2);
    let config = concat!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: shop}\nspec:\n  host: reviews\n",
        "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    retryBudget: {percent: 10, minRetryConcurrency: 1}\n---\n",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n",
        "  - route:\n    - destination: {host: reviews}\n    retries: {attempts: 2, retryOn: 5xx}\n",
    );
    world.start(config);
    // b1 fails at once; b2 answers after 600 ms. Of eight requests at once,
    // round robin sends four to b1 first; a retry goes to b2 and holds its
    // slot 600 ms. 10% of 8 under way is 0, so the floor allows one retry.
    let args = ["--count", "8", "--parallel", "8", "--path", "/delay/600", "--headers", "x-test-fail-pod: b1"];
    let report = world.http(&args);
    assert_eq!(status(&report, "200"), 5, "four first tries on b2 and one retry: {report}");
    assert_eq!(status(&report, "503"), 3, "the other retries are over budget: {report}");

    // With a floor of eight, every failed try is retried.
    world
        .env
        .write_config(
            "reviews.yaml",
            &world.config(&config.replace("minRetryConcurrency: 1", "minRetryConcurrency: 8")),
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || status(&world.http(&args), "200") == 8),
        "retries still bounded: {}",
        world.env.agent_log()
    );
}
