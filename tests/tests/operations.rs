//! How the agent behaves as an operator runs it: a SIGTERM lets the
//! requests in flight through its proxy finish before it exits, an upgrade
//! hands the listeners over with no request lost, and while no agent runs
//! the kernel serves L7 ports at L4.

use mesh_tests::{wait_until, Pod, TestEnv};
use std::io::{BufRead, BufReader, Read};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client pod, and Service `web` (10.96.0.20:80) on an HTTP backend pod,
/// with a VirtualService whose `http` rules are `rules`.
fn web_world(test: &str, rules: &str) -> (TestEnv, Pod, mesh_tests::Server) {
    let env = TestEnv::new(test).expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let server = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2").serve_http(8080);
    let config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [10.244.1.2]}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n  http:\n{rules}"
    );
    env.write_config("web.yaml", &config).unwrap();
    (env, client, server)
}

/// A route that marks what the proxy answered (`x-via-proxy: yes`).
const VIA_PROXY: &str =
    "  - headers: {response: {set: {x-via-proxy: 'yes'}}}\n    route: [{destination: {host: web}}]\n";

/// The probe's first response came through the proxy.
fn via_proxy(report: &serde_json::Value) -> bool {
    report["first"]["headers"]["x-via-proxy"] == "yes"
}

#[test]
fn sigterm_lets_the_requests_in_flight_finish() {
    let (env, client, _server) = web_world(
        "ops_drain",
        "  - match: [{uri: {prefix: /slow}}]\n    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}\n    route: [{destination: {host: web}}]\n\
         \x20 - route: [{destination: {host: web}}]\n",
    );
    env.start_agent_on_node(&[]).unwrap();
    let open = || {
        let (_, metrics) = env.admin_get("/metrics").unwrap_or_default();
        metrics.lines().any(|line| line.starts_with("mesh_proxy_open_connections ") && !line.ends_with(" 0"))
    };
    assert!(!open(), "nothing open yet");
    // A request that spends a second in the proxy (the fault's delay).
    let mut slow = env.spawn_probe(&client, &["http", "--target", "10.96.0.20:80", "--count", "1", "--path", "/slow"]);
    assert!(wait_until(Duration::from_secs(5), open), "the request reached the proxy\n{}", env.agent_log());
    let exit = env.stop_agent().unwrap();
    assert!(exit.success(), "{exit}\n{}", env.agent_log());
    let mut out = String::new();
    slow.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    slow.wait().unwrap();
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["ok"], 1, "the request in flight at SIGTERM completed: {report}");
    let log = env.agent_log();
    assert!(log.contains("draining the proxy") && log.contains("proxy drained"), "{log}");
}

#[test]
fn while_no_proxy_listens_l7_ports_fail_open_to_the_kernel() {
    let (env, client, _server) = web_world("ops_fail_open", VIA_PROXY);
    env.start_agent_on_node(&[]).unwrap();
    let get = || {
        env.probe(&client, &["http", "--target", "10.96.0.20:80", "--count", "3"]).unwrap_or_else(|e| panic!("{e:#}"))
    };
    let report = get();
    assert!(report["ok"] == 3 && via_proxy(&report), "through the proxy: {report}");
    // The agent dies: its listener closes, and the kernel balances the
    // port itself (the L7 rule is lost for these connections, not them).
    env.kill_agent().unwrap();
    let report = get();
    assert!(report["ok"] == 3 && !via_proxy(&report), "at L4 while no proxy listens: {report}");
    // A new agent listens: captured again, and the kernel counted the gap.
    env.start_agent_on_node(&[]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || via_proxy(&get())), "{}", env.agent_log());
    let status = env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_proxy_down_l4"].as_u64() >= Some(1), "{status}");
    // Refusing instead is a choice.
    env.stop_agent().unwrap();
    env.start_agent_on_node(&["--l7-fail-open", "false"]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || via_proxy(&get())), "{}", env.agent_log());
    env.kill_agent().unwrap();
    let report = env.probe(&client, &["http", "--target", "10.96.0.20:80", "--count", "1"]).unwrap();
    assert_eq!(report["ok"], 0, "refused while no proxy listens: {report}");
}

#[test]
fn a_restarted_agent_serves_the_last_good_version_it_kept() {
    let env = TestEnv::new("ops_state").expect("test env");
    let _client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let state = env.scratch("state");
    let rule = |algorithm: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.40\n  ports: [{{name: tcp, port: 5432}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: shop}}\n\
             spec: {{host: db, trafficPolicy: {{loadBalancer: {{simple: {algorithm}}}}}}}\n"
        )
    };
    let load_balancer =
        || env.admin_json("/status")["services"][0]["load_balancer"].as_str().unwrap_or_default().to_owned();
    env.write_config("db.yaml", &rule("RANDOM")).unwrap();
    env.start_agent(&["--state-dir", state.to_str().unwrap()]).unwrap();
    assert_eq!(load_balancer(), "RANDOM");
    env.stop_agent().unwrap();
    // The rule is broken while no agent runs; the next one keeps serving the
    // version it knew, as the other nodes do.
    env.write_config("db.yaml", &rule("FASTEST")).unwrap();
    env.start_agent(&["--state-dir", state.to_str().unwrap()]).unwrap();
    let status = env.admin_json("/status");
    assert_eq!(load_balancer(), "RANDOM", "{status}");
    let rejections = status["config"]["rejections"].to_string();
    assert!(rejections.contains("FASTEST") && rejections.contains("last good"), "{rejections}");
    env.stop_agent().unwrap();
    // Without the state it kept, the rule falls back on the default.
    std::fs::remove_dir_all(&state).unwrap();
    env.start_agent(&[]).unwrap();
    assert_eq!(load_balancer(), "LEAST_REQUEST");
}

/// curl in the client pod sending `count` requests at `rate` per second to
/// `web`, each line of its output one request's outcome: its exit code
/// (0, or 7 when it could not connect), status, `x-via-proxy` header and
/// error message: `0 200 via=yes `.
struct Traffic {
    curl: Child,
    outcomes: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Traffic {
    /// `keep_alive` false: a new connection per request.
    fn start(env: &TestEnv, client: &Pod, rate: u32, count: u32, keep_alive: bool) -> Traffic {
        let rate = format!("{rate}/s");
        let url = format!("http://10.96.0.20/[1-{count}]");
        let mut args = vec!["exec-stream", "curl", "-s", "-o", "/dev/null", "--rate", &rate, "--max-time", "5"];
        args.extend(["-w", "%{exitcode} %{http_code} via=%header{x-via-proxy} %{errormsg}\\n"]);
        if !keep_alive {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let mut curl = env.spawn_probe(client, &args);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (stdout, seen) = (curl.stdout.take().unwrap(), outcomes.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().unwrap().push(line);
            }
        });
        Traffic { curl, outcomes, reader }
    }

    fn outcomes(&self) -> Vec<String> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits until `more` further requests have ended.
    fn wait_for(&self, more: usize) {
        let target = self.outcomes().len() + more;
        assert!(wait_until(Duration::from_secs(30), || self.outcomes().len() >= target), "curl stalled");
    }

    /// Waits until a request after now was answered by the proxy.
    fn wait_via_proxy(&self) {
        let from = self.outcomes().len();
        let via = || self.outcomes()[from..].iter().any(|o| o.contains(" via=yes"));
        assert!(wait_until(Duration::from_secs(30), via), "never through the proxy: {:?}", self.outcomes());
    }

    fn finish(mut self) -> Vec<String> {
        self.curl.wait().unwrap();
        // The reader has the last lines once curl's stdout closed.
        self.reader.join().unwrap();
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

/// The requests that did not get a 200.
fn failures(outcomes: &[String]) -> Vec<&String> {
    outcomes.iter().filter(|o| !o.starts_with("0 200")).collect()
}

#[test]
fn continuous_http_loses_nothing_through_an_upgrade_a_sigterm_and_a_dead_agent() {
    let (env, client, _server) = web_world("ops_continuous", VIA_PROXY);
    env.start_agent_on_node(&[]).unwrap();
    let proxy_down = || env.admin_json("/status")["kernel_counters"]["connect_proxy_down_l4"].as_u64().unwrap_or(0);

    // An upgrade: the new agent takes the listeners over while the old one
    // serves; not one request fails, and none needed the kernel's L4
    // fallback (there was no moment without a listener).
    let traffic = Traffic::start(&env, &client, 200, 1200, true);
    traffic.wait_via_proxy();
    let before = proxy_down();
    let old = env.upgrade_agent_on_node(&[], Duration::from_secs(5)).unwrap();
    assert!(old.success(), "the old agent exited with {old}\n{}", env.agent_log());
    traffic.wait_via_proxy();
    let outcomes = traffic.finish();
    let failed = failures(&outcomes);
    assert!(failed.is_empty(), "{} of {} failed through the upgrade: {failed:?}", failed.len(), outcomes.len());
    assert_eq!(proxy_down(), before, "a connect found no proxy listening during the upgrade");
    eprintln!("upgrade: {} requests, none failed", outcomes.len());
    let log = env.agent_log();
    assert!(log.contains("took the listeners over") && log.contains("the successor serves"), "{log}");

    // SIGTERM, a gap with no agent, a new agent: the requests in flight
    // finish, keep-alive clients are told to reconnect, and the gap is
    // served at L4.
    let traffic = Traffic::start(&env, &client, 200, 1200, true);
    traffic.wait_via_proxy();
    let exit = env.stop_agent().unwrap();
    assert!(exit.success(), "{exit}");
    traffic.wait_for(100);
    env.start_agent_on_node(&[]).unwrap();
    // curl's connection made in the gap stays at L4 for its life; new
    // connections are captured again.
    let new_connection = || env.probe(&client, &["http", "--target", "10.96.0.20:80", "--count", "1"]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || via_proxy(&new_connection())), "{}", env.agent_log());
    traffic.wait_for(100);
    let outcomes = traffic.finish();
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} failed through a SIGTERM and a restart: {failed:?}",
        failed.len(),
        outcomes.len()
    );
    let at_l4 = outcomes.iter().filter(|o| o.starts_with("0 200 via= ")).count();
    assert!(at_l4 > 0, "none served at L4 while no agent ran");
    eprintln!("SIGTERM and restart: {} requests, none failed, {at_l4} at L4", outcomes.len());

    // kill -9, and 10 s with no agent: a new connection per request, and
    // not one fails to connect.
    let traffic = Traffic::start(&env, &client, 100, 1800, false);
    traffic.wait_via_proxy();
    env.kill_agent().unwrap();
    // 10 s of connections (at 100 a second) while no agent runs.
    traffic.wait_for(1000);
    env.start_agent_on_node(&[]).unwrap();
    traffic.wait_via_proxy();
    let outcomes = traffic.finish();
    // Only the one connection the kill may catch in flight can fail: its
    // connect was sent to the proxy's socket, or its request was read by
    // the proxy, the instant before the socket went.
    let failed = failures(&outcomes);
    assert!(failed.len() <= 1, "{} connections failed around a kill -9: {failed:?}", failed.len());
    eprintln!("kill -9 and 10 s dead: {} connections, {} failed: {failed:?}", outcomes.len(), failed.len());
}
