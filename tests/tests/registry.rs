//! The mesh's registry beyond Services: ServiceEntries, end to end with the
//! real agent, the real kernel programs on a test cgroup, and pods as
//! network namespaces.

use mesh_tests::{Pod, TestEnv};
use serde_json::Value;

fn entry(name: &str, spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}---\n")
}

fn probe(env: &TestEnv, pod: &Pod, args: &[&str]) -> Value {
    env.probe(pod, args).unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", env.agent_log()))
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
    let pki_dir = env.config_dir().parent().unwrap().join("pki");
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
