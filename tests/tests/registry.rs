//! The mesh's registry beyond Services: ServiceEntries, end to end with the
//! real agent, the real kernel programs on a test cgroup, and pods as
//! network namespaces.

use mesh_tests::{wait_until, Pod, TestEnv};
use serde_json::Value;
use std::time::Duration;

fn entry(name: &str, spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}---\n")
}

fn probe(env: &TestEnv, pod: &Pod, args: &[&str]) -> Value {
    env.probe(pod, args).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent_log()))
}

/// One TCP connect to `target` from `pod` by a process in `cgroup`.
fn tcp_in(env: &TestEnv, cgroup: &std::path::Path, pod: &Pod, target: &str) -> Value {
    (env.probe_in(cgroup, pod, &["tcp", "--target", target, "--count", "1"]))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()))
}

/// A DNS server in a resolver pod at 10.244.5.2, and a resolv.conf naming it.
fn dns_resolver(env: &TestEnv) -> (mesh_tests::dns::DnsServer, std::path::PathBuf) {
    let dns = env.add_pod("dns", "10.244.5.2", "fd00:244::5:2").serve_dns(53);
    (dns, resolv_conf(env))
}

/// A resolv.conf naming the resolver pod the tests start at 10.244.5.2.
fn resolv_conf(env: &TestEnv) -> std::path::PathBuf {
    let path = env.scratch("resolv.conf");
    std::fs::write(&path, "nameserver 10.244.5.2\n").unwrap();
    path
}

#[test]
fn a_static_service_entry_vip_is_translated_to_its_endpoints_and_none_passes_through() {
    let env = TestEnv::new("se_static").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let b2 = env.add_pod("b2", "10.244.2.2", "fd00:244::2:2");
    let _servers = [b1.serve_tcp(8080), b2.serve_tcp(8080)];
    let config = [
        entry(
            "db",
            "  hosts: [db.example.com]\n  addresses: [10.97.0.10, 'fd00:97::10']\n\
             \x20 ports: [{number: 5432, name: tcp-pg, protocol: TCP, targetPort: 8080}]\n  resolution: STATIC\n\
             \x20 endpoints:\n  - {address: 10.244.1.2}\n  - {address: 10.244.2.2}\n  - {address: 'fd00:244::1:2'}\n  - {address: 'fd00:244::2:2'}\n",
        ),
        entry(
            "legacy",
            "  hosts: [legacy.example.com]\n  addresses: [10.97.0.20]\n  ports: [{number: 5432, name: tcp, protocol: TCP}]\n  resolution: NONE\n",
        ),
    ]
    .concat();
    env.write_config("entries.yaml", &config).unwrap();
    env.start_agent(&[]).unwrap();

    for (target, peer) in [("10.97.0.10:5432", "10.97.0.10:5432"), ("[fd00:97::10]:5432", "[fd00:97::10]:5432")] {
        let report = probe(&env, &client, &["tcp", "--target", target, "--count", "40"]);
        assert_eq!(report["ok"], 40, "{target}: {report}");
        let used = |b: &str| report["backends"][b].as_u64().unwrap_or(0);
        assert!(used("b1") > 0 && used("b2") > 0, "{target}: both endpoints used: {report}");
        assert_eq!(report["peer"], peer, "getpeername shows the entry's address: {report}");
    }
    // The entry's address on a port it does not list is refused at once.
    let report = probe(&env, &client, &["tcp", "--target", "10.97.0.10:5433", "--count", "1"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}");
    // NONE: the connection goes where it was dialled (here: nowhere).
    let report = probe(&env, &client, &["tcp", "--target", "10.97.0.20:5432", "--count", "1"]);
    assert_eq!(report["errors"]["ENETUNREACH"], 1, "{report}");

    let status = env.admin_json("/status");
    assert_eq!(status["config"]["rejections"], serde_json::json!([]), "{status}");
    let warnings = status["config"]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("ServiceEntry shop/legacy: spec.resolution: NONE")),
        "{status}"
    );
    let (_, metrics) = env.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            "mesh_service_connects_total{namespace=\"shop\",service=\"db.example.com\",port=\"5432\",protocol=\"TCP\"} 80"
        ),
        "{metrics}"
    );
}

#[test]
fn an_application_speaking_http_to_an_external_host_gets_tls_and_routes_from_the_mesh() {
    let env = TestEnv::new("se_http").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    // The "external" API: HTTPS only, outside the mesh's Services.
    let api = env.add_pod("api", "10.244.7.2", "fd00:244::7:2");
    let pki_dir = env.scratch("pki");
    let pki = mesh_tests::tls::make_pki(&pki_dir, &["api.example.com"]).unwrap();
    let _server = api.serve_tls(8443, &pki, false);
    let config = [
        entry(
            "api",
            "  hosts: [api.example.com]\n  addresses: [10.97.0.30]\n  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8443}]\n\
             \x20 resolution: STATIC\n  endpoints: [{address: 10.244.7.2}]\n",
        ),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: shop}}\n\
             spec:\n  host: api.example.com\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: '{}'}}}}\n---\n",
            pki.ca.display()
        ),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api, namespace: shop}\n\
         spec:\n  hosts: [api.example.com]\n  http:\n\
         \x20 - match: [{uri: {prefix: /blocked}}]\n    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n\
         \x20   route: [{destination: {host: api.example.com}}]\n\
         \x20 - route: [{destination: {host: api.example.com}}]\n---\n"
            .to_owned(),
    ]
    .concat();
    env.write_config("api.yaml", &config).unwrap();
    env.start_agent_on_node(&["--access-log"]).unwrap();
    let curl = |path: &str| {
        let url = format!("http://api.example.com{path}");
        let out = probe(
            &env,
            &client,
            &["exec", "curl", "-sS", "-i", "--max-time", "5", "--resolve", "api.example.com:80:10.97.0.30", &url],
        );
        out["stdout"].as_str().unwrap_or_default().to_ascii_lowercase()
    };
    let out = curl("/");
    assert!(out.starts_with("http/1.1 200"), "{out}\n{}", env.agent_log());
    assert!(out.contains("x-seen-tls: yes"), "the mesh originated TLS: {out}");
    assert!(out.contains("x-seen-sni: api.example.com"), "with the entry's host as SNI: {out}");
    let out = curl("/blocked/1");
    assert!(out.starts_with("http/1.1 418"), "the VirtualService's fault: {out}");
}

#[test]
fn a_dns_service_entry_follows_its_answers_and_keeps_the_last_one_while_lookups_fail() {
    let env = TestEnv::new("se_dns").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let b2 = env.add_pod("b2", "10.244.2.2", "fd00:244::2:2");
    let _servers = [b1.serve_tcp(8080), b2.serve_tcp(8080)];
    let (dns, resolv_conf) = dns_resolver(&env);
    dns.set_ttl(1);
    let (b1_ip, b2_ip) = ("10.244.1.2".parse().unwrap(), "10.244.2.2".parse().unwrap());
    dns.set("api.example.test", &[b1_ip]);
    dns.set("origin.example.test", &[b1_ip]);
    let config = [
        // No address: the answers are what applications dial.
        entry(
            "api",
            "  hosts: [api.example.test]\n  ports: [{number: 80, name: tcp, protocol: TCP, targetPort: 8080}]\n  resolution: DNS\n",
        ),
        // A VIP in front of an endpoint known by name.
        entry(
            "origin",
            "  hosts: [origin-vip.example.test]\n  addresses: [10.97.0.40]\n\
             \x20 ports: [{number: 80, name: tcp, protocol: TCP, targetPort: 8080}]\n  resolution: DNS\n\
             \x20 endpoints: [{address: origin.example.test}]\n",
        ),
    ]
    .concat();
    env.write_config("entries.yaml", &config).unwrap();
    env.start_agent_on_node(&["--resolv-conf", resolv_conf.to_str().unwrap()]).unwrap();
    let reaches = |target: &str, backend: &str| {
        let report = probe(&env, &client, &["tcp", "--target", target, "--count", "5"]);
        report["backends"][backend].as_u64() == Some(5)
    };
    assert!(
        wait_until(Duration::from_secs(10), || reaches("10.244.1.2:80", "b1") && reaches("10.97.0.40:80", "b1")),
        "the answers are served\n{}",
        env.agent_log()
    );
    // The answers change; within a TTL or two the mesh follows them.
    dns.set("api.example.test", &[b2_ip]);
    dns.set("origin.example.test", &[b2_ip]);
    assert!(
        wait_until(Duration::from_secs(10), || reaches("10.244.2.2:80", "b2") && reaches("10.97.0.40:80", "b2")),
        "the new answers are served\n{}",
        env.agent_log()
    );
    // The old answer is no longer the service's (b1 listens on 8080 only).
    let report = probe(&env, &client, &["tcp", "--target", "10.244.1.2:80", "--count", "1"]);
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}");
    // The resolver goes away: the last answers keep serving.
    let asked = dns.queries();
    drop(dns);
    assert!(
        wait_until(Duration::from_secs(15), || env
            .agent_log()
            .contains("lookup failed; the last answer keeps serving")),
        "{asked} queries answered\n{}",
        env.agent_log()
    );
    assert!(reaches("10.244.2.2:80", "b2") && reaches("10.97.0.40:80", "b2"), "{}", env.agent_log());
}

#[test]
fn registry_only_refuses_unknown_addresses_in_the_kernel_per_workload() {
    let env = TestEnv::new("registry_only").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    // Outside the registry: no Service, no ServiceEntry, no Pod object.
    let stranger = env.add_pod("stranger", "10.244.8.2", "fd00:244::8:2");
    let _servers = [b1.serve_tcp(8080), stranger.serve_tcp(9000), stranger.serve_udp(9000), stranger.serve_udp(53)];
    // The pods' resolver, outside every Service.
    let resolver = env.add_pod("resolver", "10.244.5.2", "fd00:244::5:2");
    let _resolver = resolver.serve_udp(53);
    let resolv_conf = resolv_conf(&env);
    let sidecar = |namespace: &str, name: &str, spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}---\n")
    };
    let config = |locked_mode: &str| {
        [
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: tcp, port: 80, targetPort: 8080}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
             addressType: IPv4\nports: [{name: tcp, port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n---\n"
                .to_owned(),
            entry(
                "api",
                "  hosts: [api.example.com]\n  addresses: [10.97.0.10]\n  ports: [{number: 80, name: tcp, protocol: TCP, targetPort: 8080}]\n\
                 \x20 resolution: STATIC\n  endpoints: [{address: 10.244.1.2}]\n",
            ),
            // A pod with labels, for the Sidecar that selects it.
            "apiVersion: v1\nkind: Pod\nmetadata: {name: strict, namespace: shop, labels: {app: strict}}\nstatus: {podIP: 10.244.0.2}\n---\n"
                .to_owned(),
            sidecar("locked", "default", &format!("  outboundTrafficPolicy: {{mode: {locked_mode}}}\n")),
            sidecar("shop", "strict", "  workloadSelector: {labels: {app: strict}}\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"),
        ]
        .concat()
    };
    env.write_config("mesh.yaml", &config("REGISTRY_ONLY")).unwrap();
    // Three workloads dialling from one network namespace: the cgroup
    // says which is which.
    let locked = env.container_cgroup("locked", "client");
    let open = env.container_cgroup("shop", "client");
    let strict = env.container_cgroup("shop", "strict");
    let pods = env.pod_cgroups_dir();
    env.start_agent_on_node(&["--pod-cgroups", pods.to_str().unwrap(), "--resolv-conf", resolv_conf.to_str().unwrap()])
        .unwrap();
    let tcp = |cgroup: &std::path::Path, target: &str| tcp_in(&env, cgroup, &client, target);
    let refused = |report: &Value| report["errors"]["ECONNREFUSED"] == 1;
    let served = |report: &Value| report["ok"] == 1;

    // REGISTRY_ONLY (the namespace's Sidecar): the stranger is refused at
    // connect(), the registry is reached.
    assert!(refused(&tcp(&locked, "10.244.8.2:9000")), "{}", env.agent_log());
    assert!(refused(&tcp(&locked, "[fd00:244::8:2]:9000")));
    for target in ["10.96.0.10:80", "10.97.0.10:80", "10.244.1.2:8080"] {
        assert!(served(&tcp(&locked, target)), "{target} is in the registry");
    }
    let udp = |target: &str| env.probe_in(&locked, &client, &["udp", "--target", target, "--count", "1"]).unwrap();
    let datagram = udp("10.244.8.2:9000");
    assert_eq!(datagram["ok"], 0, "sendmsg is refused too: {datagram}");
    // DNS to the resolver and the node's own address are never blocked;
    // port 53 elsewhere is.
    assert_eq!(udp("10.244.5.2:53")["ok"], 1, "the resolver answers");
    assert_eq!(udp("10.244.8.2:53")["ok"], 0, "port 53 of another host is no resolver");
    let node = tcp(&locked, &format!("{}:15001", mesh_tests::NODE_IPV4));
    assert!(node["errors"]["ECONNREFUSED"].is_null(), "the node is reachable: {node}");
    // ALLOW_ANY (no Sidecar in shop for it): passes.
    assert!(served(&tcp(&open, "10.244.8.2:9000")));
    // A Sidecar selecting the pod by its labels wins over the namespace's.
    assert!(refused(&tcp(&strict, "10.244.8.2:9000")));

    let status = env.admin_json("/status");
    assert!(status["kernel_counters"]["connect_refused_registry"].as_u64() >= Some(3), "{status}");
    assert!(status["kernel_counters"]["sendmsg_refused_registry"].as_u64() >= Some(2), "{status}");
    let workload = |name: &str, namespace: &str| {
        status["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name && w["namespace"] == namespace)
            .cloned()
    };
    let locked_status = workload("client", "locked").expect("locked/client is listed");
    assert_eq!(locked_status["outbound_policy"], "REGISTRY_ONLY", "{status}");
    assert_eq!(locked_status["sidecar"], "locked/default");
    assert_eq!(locked_status["refused"], 4, "two connects and two datagrams: {status}");
    assert_eq!(workload("client", "shop").unwrap()["outbound_policy"], "ALLOW_ANY");
    let (_, metrics) = env.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            "mesh_workload_refused_connects_total{namespace=\"locked\",pod=\"client\",reason=\"registry_only\"} 4"
        ),
        "{metrics}"
    );

    // The namespace opens up: the change applies to new connects at once.
    env.write_config("mesh.yaml", &config("ALLOW_ANY")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || served(&tcp(&locked, "10.244.8.2:9000"))), "{}", env.agent_log());
    assert!(refused(&tcp(&strict, "10.244.8.2:9000")), "the selected pod keeps its own Sidecar");
}

#[test]
fn a_full_workloads_map_leaves_out_the_workload_without_a_policy_and_enforces_the_rest() {
    let env = TestEnv::new("registry_full").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let stranger = env.add_pod("stranger", "10.244.8.2", "fd00:244::8:2");
    let _server = stranger.serve_tcp(9000);
    let config = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: locked}\n\
                  spec: {outboundTrafficPolicy: {mode: REGISTRY_ONLY}}\n";
    env.write_config("mesh.yaml", config).unwrap();
    // Two workloads in one network namespace, room in the kernel for one.
    let open = env.container_cgroup("shop", "client");
    let locked = env.container_cgroup("locked", "client");
    let pods = env.pod_cgroups_dir();
    env.start_agent(&["--pod-cgroups", pods.to_str().unwrap(), "--map-entries", "workloads=1"]).unwrap();
    let dump = env.admin_json("/config_dump");
    assert_eq!(dump["kernel_maps"]["workloads"], 1, "{}", dump["kernel_maps"]);
    let rejected = dump["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{}", dump["rejected"]);
    let error = rejected[0]["error"].as_str().unwrap();
    assert!(error.starts_with("Pod shop/client: the kernel's workloads map is full (1 entries;"), "{error}");
    assert!(error.contains("--map-entries workloads=N") && error.contains("not counted per workload"), "{error}");
    // The workload with a policy took the room: it is enforced; the other
    // dials as it would with no entry (allowed).
    let locked_report = tcp_in(&env, &locked, &client, "10.244.8.2:9000");
    assert_eq!(locked_report["errors"]["ECONNREFUSED"], 1, "{locked_report}\n{}", env.agent_log());
    let open_report = tcp_in(&env, &open, &client, "10.244.8.2:9000");
    assert_eq!(open_report["ok"], 1, "{open_report}");
}

#[test]
fn locality_distribute_weights_hold_in_the_kernel_over_a_thousand_connects() {
    let env = TestEnv::new("locality_distribute").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let near = env.add_pod("near", "10.244.1.2", "fd00:244::1:2");
    let far = env.add_pod("far", "10.244.2.2", "fd00:244::2:2");
    let _servers = [near.serve_tcp(8080), far.serve_tcp(8080)];
    let config = "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec:\n  clusterIP: 10.96.0.40\n  ports: [{name: tcp, port: 5432, targetPort: 8080}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db, namespace: shop, labels: {kubernetes.io/service-name: db}}\n\
         addressType: IPv4\nports: [{name: tcp, port: 8080}]\n\
         endpoints: [{addresses: [10.244.1.2], zone: zone-a}, {addresses: [10.244.2.2], zone: zone-b}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: db, namespace: shop}\nspec:\n  host: db\n\
         \x20 trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      localityLbSetting:\n\
         \x20       distribute: [{from: region-1/zone-a/*, to: {region-1/zone-a/*: 80, region-1/zone-b/*: 20}}]\n";
    env.write_config("db.yaml", config).unwrap();
    env.start_agent(&["--locality", "region-1/zone-a/rack-1"]).unwrap();
    let report = probe(&env, &client, &["tcp", "--target", "10.96.0.40:5432", "--count", "1000"]);
    assert_eq!(report["ok"], 1000, "{report}");
    let near_share = report["backends"]["near"].as_u64().unwrap_or(0);
    assert!((770..=830).contains(&near_share), "80% to zone-a, within a few percent: {report}");
    // No warning: this is honoured in the kernel.
    let status = env.admin_json("/status");
    assert_eq!(status["config"]["warnings"], serde_json::json!([]), "{status}");
}

#[test]
fn locality_failover_moves_requests_when_the_local_endpoints_are_ejected() {
    let env = TestEnv::new("locality_failover").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let local = env.add_pod("local", "10.244.1.2", "fd00:244::1:2");
    let remote = env.add_pod("remote", "10.244.2.2", "fd00:244::2:2");
    let local_server = local.serve_http(8080);
    let _remote_server = remote.serve_http(8080);
    let config = [
        entry(
            "api",
            "  hosts: [api.internal]\n  addresses: [10.97.0.50]\n  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]\n\
             \x20 resolution: STATIC\n\
             \x20 endpoints: [{address: 10.244.1.2, locality: eu/zone-a}, {address: 10.244.2.2, locality: us/zone-x}]\n",
        ),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: shop}\nspec:\n  host: api.internal\n\
         \x20 trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n\
         \x20   loadBalancer: {localityLbSetting: {failover: [{from: eu, to: us}]}}\n"
            .to_owned(),
    ]
    .concat();
    env.write_config("api.yaml", &config).unwrap();
    env.start_agent_on_node(&["--locality", "eu/zone-a"]).unwrap();
    let get = |n: &str| probe(&env, &client, &["http", "--target", "10.97.0.50:80", "--count", n]);
    let report = get("20");
    assert_eq!(report["backends"]["local"], 20, "all to the client's own locality first: {report}");
    // The local endpoint goes away: once ejected, the next priority (the
    // failover region) takes everything.
    drop(local_server);
    assert!(
        wait_until(Duration::from_secs(10), || get("10")["backends"]["remote"] == 10),
        "failed over\n{}",
        env.agent_log()
    );
}

#[test]
fn sidecar_egress_hosts_limit_what_a_workload_reaches_in_the_kernel_and_in_the_proxy() {
    let env = TestEnv::new("sidecar_egress").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let b1 = env.add_pod("b1", "10.244.1.2", "fd00:244::1:2");
    let _servers = [b1.serve_tcp(8080), b1.serve_http(8081)];
    let service = |namespace: &str, name: &str, ip: &str, port: &str, target: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: {port}, port: 80, targetPort: {target}}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: {port}, port: {target}}}]\nendpoints: [{{addresses: [10.244.1.2]}}]\n---\n"
        )
    };
    let config = [
        service("scoped", "mine", "10.96.0.11", "tcp", 8080),
        service("other", "theirs", "10.96.0.12", "tcp", 8080),
        service("scoped", "web", "10.96.0.13", "http", 8081),
        service("other", "api", "10.96.0.14", "http", 8081),
        // The proxy knows the client by its address.
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: scoped}\nstatus: {podIP: 10.244.0.2}\n---\n".into(),
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: scoped}\n\
         spec:\n  egress: [{hosts: ['./*']}]\n---\n"
            .into(),
        // web's /api goes to a service in another namespace.
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: scoped}\n\
         spec:\n  hosts: [web]\n  http:\n  - match: [{uri: {prefix: /api}}]\n    route: [{destination: {host: api.other.svc.cluster.local}}]\n\
         \x20 - route: [{destination: {host: web}}]\n"
            .into(),
    ]
    .concat();
    env.write_config("mesh.yaml", &config).unwrap();
    let scoped = env.container_cgroup("scoped", "client");
    let open = env.container_cgroup("other", "client");
    let pods = env.pod_cgroups_dir();
    env.start_agent_on_node(&["--pod-cgroups", pods.to_str().unwrap()]).unwrap();
    let tcp = |cgroup: &std::path::Path, target: &str| tcp_in(&env, cgroup, &client, target);
    assert_eq!(tcp(&scoped, "10.96.0.11:80")["ok"], 1, "its own namespace's service");
    assert_eq!(tcp(&scoped, "10.96.0.12:80")["errors"]["ECONNREFUSED"], 1, "not in its egress hosts");
    assert_eq!(tcp(&open, "10.96.0.12:80")["ok"], 1, "another workload sees everything");
    // Through the proxy: a route to a host outside the egress hosts is a
    // cluster that does not exist for this client.
    let http = |path: &str| {
        env.probe_in(&scoped, &client, &["http", "--target", "10.96.0.13:80", "--count", "1", "--path", path])
            .unwrap_or_else(|e| panic!("{e:#}\n{}", env.agent_log()))
    };
    assert_eq!(http("/")["ok"], 1, "{}", env.agent_log());
    assert_eq!(http("/api/x")["status"]["503"], 1);

    let status = env.admin_json("/status");
    assert_eq!(status["kernel_counters"]["connect_refused_scope"], 1, "{status}");
    let (_, metrics) = env.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains(
            "mesh_workload_refused_connects_total{namespace=\"scoped\",pod=\"client\",reason=\"sidecar_egress\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn pods_are_found_in_the_kubelets_cgroup_layout_by_uid() {
    let env = TestEnv::new("kubelet_cgroups").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let stranger = env.add_pod("stranger", "10.244.8.2", "fd00:244::8:2");
    let _server = stranger.serve_tcp(9000);
    let uid = "0b3c5a8e-1d2f-4a6b-9c7d-112233445566";
    // The systemd driver's layout: QoS class, pod by UID, then a container.
    let kubepods = env.cgroup_path().join("kubepods.slice");
    let container = kubepods
        .join("kubepods-burstable.slice")
        .join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")))
        .join("cri-containerd-0123abcd.scope");
    std::fs::create_dir_all(&container).unwrap();
    let config = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop, uid: {uid}}}\nstatus: {{podIP: 10.244.0.2}}\n"
    );
    env.write_config("pods.yaml", &config).unwrap();
    env.start_agent(&["--kubelet-cgroups", kubepods.to_str().unwrap(), "--outbound-traffic-policy", "REGISTRY_ONLY"])
        .unwrap();
    let report = tcp_in(&env, &container, &client, "10.244.8.2:9000");
    assert_eq!(report["errors"]["ECONNREFUSED"], 1, "{report}\n{}", env.agent_log());
    // The test's own cgroup is no pod: it passes.
    assert_eq!(probe(&env, &client, &["tcp", "--target", "10.244.8.2:9000", "--count", "1"])["ok"], 1);
    let status = env.admin_json("/status");
    let workloads = status["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1, "{status}");
    assert_eq!((&workloads[0]["namespace"], &workloads[0]["name"]), (&"shop".into(), &"web-0".into()));
    assert_eq!(workloads[0]["outbound_policy"], "REGISTRY_ONLY");
}

#[test]
fn a_service_entry_selects_workload_entries_and_pods_by_labels() {
    let env = TestEnv::new("se_selector").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let vm = env.add_pod("vm", "10.244.1.2", "fd00:244::1:2");
    let pod = env.add_pod("pod", "10.244.2.2", "fd00:244::2:2");
    let _servers = [vm.serve_tcp(8080), pod.serve_tcp(8080)];
    let config = [
        entry(
            "legacy",
            "  hosts: [legacy.shop.internal]\n  addresses: [10.97.0.60]\n  ports: [{number: 80, name: tcp, protocol: TCP, targetPort: 8080}]\n\
             \x20 resolution: STATIC\n  workloadSelector: {labels: {app: legacy}}\n",
        ),
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm-1, namespace: shop}\n\
         spec: {address: 10.244.1.2, labels: {app: legacy}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: legacy-0, namespace: shop, labels: {app: legacy}}\nstatus: {podIP: 10.244.2.2}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: other, namespace: shop}\n\
         spec: {address: 10.244.9.9, labels: {app: other}}\n"
            .to_owned(),
    ]
    .concat();
    env.write_config("legacy.yaml", &config).unwrap();
    env.start_agent(&[]).unwrap();
    let report = probe(&env, &client, &["tcp", "--target", "10.97.0.60:80", "--count", "40"]);
    assert_eq!(report["ok"], 40, "{report}\n{}", env.agent_log());
    let used = |b: &str| report["backends"][b].as_u64().unwrap_or(0);
    assert!(used("vm") > 0 && used("pod") > 0, "the WorkloadEntry and the pod: {report}");
    let status = env.admin_json("/status");
    assert_eq!(status["config"]["warnings"], serde_json::json!([]), "{status}");
}

#[test]
fn an_http_dns_entry_whose_answers_are_its_own_addresses_is_proxied_without_a_loop() {
    let env = TestEnv::new("se_dns_http").expect("test env");
    let client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let web = env.add_pod("web", "10.244.1.2", "fd00:244::1:2");
    let _server = web.serve_http(8080);
    let (dns, resolv_conf) = dns_resolver(&env);
    dns.set("web.example.test", &["10.244.1.2".parse().unwrap()]);
    // The answer is the address applications dial and the endpoint the
    // proxy dials: the proxy's own connect must not come back to it.
    let config = [
        entry(
            "web",
            "  hosts: [web.example.test]\n  ports: [{number: 8080, name: http, protocol: HTTP}]\n  resolution: DNS\n",
        ),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  hosts: [web.example.test]\n  http:\n  - headers: {response: {set: {x-via-proxy: 'yes'}}}\n\
         \x20   route: [{destination: {host: web.example.test}}]\n"
            .to_owned(),
    ]
    .concat();
    env.write_config("web.yaml", &config).unwrap();
    env.start_agent_on_node(&["--resolv-conf", resolv_conf.to_str().unwrap()]).unwrap();
    let through_proxy = || {
        let report = probe(&env, &client, &["http", "--target", "10.244.1.2:8080", "--count", "3"]);
        report["ok"] == 3 && report["first"]["headers"]["x-via-proxy"] == "yes"
    };
    assert!(wait_until(Duration::from_secs(10), through_proxy), "{}", env.agent_log());
}
