//! The gateway process (`mesh-agent gateway`) at the mesh's edge: a pod of
//! its own serving the Gateways that select its labels, with "outside"
//! clients (curl in another namespace) and backends in pod namespaces.
//! No kernel programs are involved: a gateway dials endpoints directly.

use mesh_tests::tls::{make_pki, secret_yaml, Pki};
use mesh_tests::{wait_until, Pod, TestEnv};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

const GATEWAY_IP: &str = "10.244.9.2";

/// An outside client, a gateway pod, and backends `b1`, `b2` serving
/// HTTP on 8080 behind Service `reviews` (9080 → 8080).
struct Edge {
    env: TestEnv,
    outside: Pod,
    gateway_pod: Pod,
    _backends: Vec<Pod>,
    _servers: Vec<mesh_tests::Server>,
}

impl Edge {
    fn new(test: &str) -> Edge {
        let env = TestEnv::new(test).expect("test env");
        let outside = env.add_pod("outside", "10.244.8.2", "fd00:244::8:2");
        let gateway_pod = env.add_pod("ingress", GATEWAY_IP, "fd00:244::9:2");
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for i in 1..=2 {
            let pod = env.add_pod(&format!("b{i}"), &format!("10.244.{i}.2"), &format!("fd00:244::{i}:2"));
            servers.push(pod.serve_http(8080));
            backends.push(pod);
        }
        Edge { env, outside, gateway_pod, _backends: backends, _servers: servers }
    }

    /// Services `reviews` (b1) and `ratings` (b2), then `extra`.
    fn config(&self, extra: &str) -> String {
        let mut yaml = String::new();
        for (name, ip, backend) in [("reviews", "10.96.0.20", "10.244.1.2"), ("ratings", "10.96.0.21", "10.244.2.2")] {
            yaml.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 9080, targetPort: 8080}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"{backend}\"]\n---\n"
            ));
        }
        yaml.push_str(extra);
        yaml
    }

    fn start(&self, extra: &str) -> mesh_tests::Gateway {
        self.env.write_config("edge.yaml", &self.config(extra)).unwrap();
        self.env
            .start_gateway(
                &self.gateway_pod,
                &["--labels", "istio=ingressgateway,app=istio-ingressgateway", "--access-log"],
            )
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// curl from the outside pod; returns (code, stdout, stderr).
    fn curl(&self, args: &[&str]) -> (Option<i64>, String, String) {
        let mut all = vec!["exec", "curl", "-sS", "--max-time", "5"];
        all.extend_from_slice(args);
        let out = self.env.probe(&self.outside, &all).unwrap_or_else(|e| panic!("{e:#}"));
        let text = |k: &str| out[k].as_str().unwrap_or_default().to_owned();
        (out["code"].as_i64(), text("stdout"), text("stderr"))
    }

    /// `curl -i` of `url`, with extra args: the status code and the whole output.
    fn get(&self, url: &str, args: &[&str]) -> (u16, String) {
        let mut all = vec!["-i"];
        all.extend_from_slice(args);
        all.push(url);
        let (code, out, err) = self.curl(&all);
        assert_eq!(code, Some(0), "curl {all:?}: {err}");
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, out)
    }
}

fn backend(output: &str) -> Option<&str> {
    output.lines().find_map(|l| l.strip_prefix("x-backend: ")).map(str::trim)
}

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n";

#[test]
fn plain_http_is_routed_by_host_and_path_and_an_unknown_host_gets_404() {
    let edge = Edge::new("gw_http");
    let config = format!(
        "{GATEWAY}  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bookinfo, namespace: shop}}\n\
         spec:\n  hosts: [bookinfo.example.com]\n  gateways: [edge]\n  http:\n\
         \x20 - match: [{{uri: {{prefix: /ratings}}}}]\n    route: [{{destination: {{host: ratings, port: {{number: 9080}}}}}}]\n\
         \x20 - route: [{{destination: {{host: reviews}}}}]\n"
    );
    let gateway = edge.start(&config);
    let url = |path: &str| format!("http://{GATEWAY_IP}:8080{path}");
    let (status, out) = edge.get(&url("/productpage"), &["-H", "Host: bookinfo.example.com"]);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}\n{}", gateway.log());
    let (status, out) = edge.get(&url("/ratings/1"), &["-H", "Host: Bookinfo.Example.com:8080"]);
    assert_eq!((status, backend(&out)), (200, Some("b2")), "{out}");
    let (status, out) = edge.get(&url("/"), &["-H", "Host: other.example.com"]);
    assert_eq!(status, 404, "no VirtualService for that host: {out}");
    // HTTP/2 without TLS (h2c with prior knowledge) too.
    let (status, out) = edge.get(&url("/"), &["--http2-prior-knowledge", "-H", "Host: bookinfo.example.com"]);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}");

    let status = gateway.admin_json("/status");
    let listeners = status["gateway_listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{status}");
    assert_eq!(listeners[0]["port"], 8080);
    assert!(listeners[0]["servers"][0]["virtual_services"][0].as_str().unwrap().starts_with("shop/bookinfo"));
}

#[test]
fn https_with_a_certificate_per_host_mutual_tls_and_https_redirect() {
    let edge = Edge::new("gw_tls");
    let dir = edge.env.scratch("pki");
    let a = make_pki(&dir.join("a"), &["a.example.com"]).unwrap();
    let b = make_pki(&dir.join("b"), &["b.example.com"]).unwrap();
    let m = make_pki(&dir.join("m"), &["m.example.com"]).unwrap();
    let server = |host: &str, pki: &mesh_tests::tls::Pki, mode: &str| {
        format!(
            "  - port: {{number: 8443, name: https-{}, protocol: HTTPS}}\n    hosts: [{host}]\n    tls: {{mode: {mode}, serverCertificate: {}, privateKey: {}, caCertificates: {}}}\n",
            host.split('.').next().unwrap(),
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        )
    };
    let config = format!(
        "{GATEWAY}{}{}{}\
         \x20 - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n    tls: {{httpsRedirect: true}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: shop}}\n\
         spec:\n  hosts: [a.example.com, m.example.com]\n  gateways: [shop/edge]\n  http: [{{route: [{{destination: {{host: reviews}}}}]}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: b, namespace: shop}}\n\
         spec:\n  hosts: [b.example.com]\n  gateways: [edge]\n  http: [{{route: [{{destination: {{host: ratings}}}}]}}]\n",
        server("a.example.com", &a, "SIMPLE"),
        server("b.example.com", &b, "SIMPLE"),
        server("m.example.com", &m, "MUTUAL"),
    );
    let gateway = edge.start(&config);
    let resolve = |host: &str| format!("{host}:8443:{GATEWAY_IP}");
    let ca = |pki: &mesh_tests::tls::Pki| pki.ca.display().to_string();
    // Each name gets its own certificate (curl checks it against that CA).
    let (status, out) =
        edge.get("https://a.example.com:8443/", &["--resolve", &resolve("a.example.com"), "--cacert", &ca(&a)]);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}\n{}", gateway.log());
    let (status, out) =
        edge.get("https://b.example.com:8443/", &["--resolve", &resolve("b.example.com"), "--cacert", &ca(&b)]);
    assert_eq!((status, backend(&out)), (200, Some("b2")), "{out}");
    // h2 by ALPN.
    let (status, out) = edge
        .get("https://b.example.com:8443/", &["--http2", "--resolve", &resolve("b.example.com"), "--cacert", &ca(&b)]);
    assert!(out.starts_with("HTTP/2 200"), "{status}: {out}");
    // MUTUAL: refused without a client certificate, served with one.
    let m_args = ["--resolve", &resolve("m.example.com"), "--cacert", &ca(&m)];
    let mut refused = vec!["-o", "/dev/null", "https://m.example.com:8443/"];
    refused.extend_from_slice(&m_args);
    let (code, _, err) = edge.curl(&refused);
    assert_ne!(code, Some(0), "no client certificate must be refused: {err}");
    let cert = m.client_cert.display().to_string();
    let key = m.client_key.display().to_string();
    let mut with_cert = m_args.to_vec();
    with_cert.extend_from_slice(&["--cert", &cert, "--key", &key]);
    let (status, out) = edge.get("https://m.example.com:8443/", &with_cert);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}");
    // Plain HTTP on an httpsRedirect server: 301 to https.
    let (status, out) = edge.get(&format!("http://{GATEWAY_IP}:8080/x?y=1"), &["-H", "Host: a.example.com"]);
    assert_eq!(status, 301, "{out}");
    assert!(out.to_ascii_lowercase().contains("location: https://a.example.com/x?y=1"), "{out}");

    // Status names each server's certificate and its expiry; routes come
    // per listener.
    let text = gateway.meshctl(&["status"]);
    for host in ["a", "b", "m"] {
        let line = format!("certificate: CN={host}.example.com [{host}.example.com], expires ");
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert!(text.contains("tls Mutual") && !text.contains("SERVICE "), "{text}");
    let routes: Value = serde_json::from_str(&gateway.meshctl(&["routes"])).unwrap();
    let ports: Vec<&Value> = routes["listeners"].as_array().unwrap().iter().map(|l| &l["listener"]["port"]).collect();
    assert_eq!(ports, [8080, 8443], "{routes}");
    let a = &routes["listeners"][1]["listener"]["servers"][0]["virtualHosts"][0];
    assert_eq!(a["hosts"][0], "a.example.com", "{routes}");
}

#[test]
fn a_missing_secret_fails_its_server_alone_and_a_rotated_one_keeps_established_connections() {
    let edge = Edge::new("gw_secret");
    let dir = edge.env.scratch("pki");
    let a = make_pki(&dir.join("a"), &["a.example.com"]).unwrap();
    let config = format!(
        "{GATEWAY}  - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: SIMPLE, credentialName: a-cert}}\n\
         \x20 - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: a, namespace: shop}}\n\
         spec:\n  hosts: ['*']\n  gateways: [edge]\n  http: [{{route: [{{destination: {{host: reviews}}}}]}}]\n"
    );
    let gateway = edge.start(&config);
    // The plain server serves while the TLS one has no certificate.
    let (status, _) = edge.get(&format!("http://{GATEWAY_IP}:8080/"), &[]);
    assert_eq!(status, 200);
    let status: Value = gateway.admin_json("/status");
    let tls_error = status["gateway_listeners"].as_array().unwrap().iter().find(|l| l["port"] == 8443).unwrap()
        ["servers"][0]["tls_error"]
        .clone();
    assert!(
        tls_error.as_str().is_some_and(|e| e.contains("mesh-system/a-cert") && e.contains("not found")),
        "{status}"
    );
    // The Secret arrives, in the gateway's own namespace (as Istio reads
    // it): new handshakes get the certificate.
    let secret = |pki: &Pki| {
        let files = [("tls.crt", pki.server_cert.as_path()), ("tls.key", pki.server_key.as_path())];
        secret_yaml("mesh-system", "a-cert", &files).unwrap()
    };
    let serves_with = |ca: &str| {
        let url = "https://a.example.com:8443/";
        let args = ["-o", "/dev/null", "-w", "%{http_code}", url, "--resolve", "a.example.com:8443:10.244.9.2"];
        wait_until(Duration::from_secs(10), || edge.curl(&[&args[..], &["--cacert", ca]].concat()).1 == "200")
    };
    edge.env.write_config("secret.yaml", &secret(&a)).unwrap();
    let ca = a.ca.display().to_string();
    assert!(serves_with(&ca), "{}", gateway.log());

    // Rotation: a client keeps its connection (and certificate) across a
    // new certificate, which new handshakes get.
    let target = format!("{GATEWAY_IP}:8443");
    let mut kept =
        edge.env.spawn_probe(&edge.outside, &["tls-keep", "--target", &target, "--sni", "a.example.com", "--ca", &ca]);
    let first = mesh_tests::read_json_line(&mut kept).unwrap();
    assert_eq!(first["status"], 200, "{first}");
    let rotated = make_pki(&dir.join("rotated"), &["a.example.com"]).unwrap();
    edge.env.write_config("secret.yaml", &secret(&rotated)).unwrap();
    let new_ca = rotated.ca.display().to_string();
    assert!(serves_with(&new_ca), "new handshakes get the new certificate: {}", gateway.log());
    kept.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let second = mesh_tests::read_json_line(&mut kept).unwrap();
    assert_eq!(second["status"], 200, "the established connection still serves: {second}");
}

#[test]
fn tls_passthrough_by_server_name_and_a_server_port_mapped_by_the_gateway_service() {
    let edge = Edge::new("gw_pass");
    let dir = edge.env.scratch("pki");
    let pki = make_pki(&dir.join("pass"), &["pass.example.com"]).unwrap();
    let _tls_backend = edge._backends[0].serve_tls(8443, &pki, false);
    let config = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: secure, namespace: shop}}\nspec:\n  clusterIP: 10.96.0.22\n  ports:\n  - {{name: tls, port: 8443, targetPort: 8443}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: secure, namespace: shop, labels: {{kubernetes.io/service-name: secure}}}}\naddressType: IPv4\nports: [{{name: tls, port: 8443}}]\nendpoints:\n- addresses: [\"10.244.1.2\"]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: istio-ingressgateway, namespace: mesh-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  ports:\n  - {{name: http2, port: 80, targetPort: 8081}}\n---\n\
         {GATEWAY}  - port: {{number: 9443, name: tls, protocol: TLS}}\n    hosts: [pass.example.com]\n    tls: {{mode: PASSTHROUGH}}\n\
         \x20 - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: pass, namespace: shop}}\n\
         spec:\n  hosts: [pass.example.com]\n  gateways: [edge]\n  tls:\n  - match: [{{port: 9443, sniHosts: [pass.example.com]}}]\n    route: [{{destination: {{host: secure, port: {{number: 8443}}}}}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  hosts: ['*']\n  gateways: [edge]\n  http: [{{route: [{{destination: {{host: reviews}}}}]}}]\n"
    );
    let gateway = edge.start(&config);
    // TLS end to end: the backend's certificate, the client's server name.
    let ca = pki.ca.display().to_string();
    let (status, out) =
        edge.get("https://pass.example.com:9443/", &["--resolve", "pass.example.com:9443:10.244.9.2", "--cacert", &ca]);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}\n{}", gateway.log());
    assert!(out.contains("x-seen-sni: pass.example.com"), "{out}");
    // Port 80 of the Gateway listens on 8081, the Service's target port.
    let (status, out) = edge.get(&format!("http://{GATEWAY_IP}:8081/"), &[]);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "{out}");
    let status = gateway.admin_json("/status");
    let http = status["gateway_listeners"].as_array().unwrap().iter().find(|l| l["port"] == 80).cloned();
    assert_eq!(http.map(|l| l["bound_port"].clone()), Some(8081.into()), "{status}");
}

#[test]
fn egress_through_the_gateway_with_tls_origination_there() {
    // The external host as a Service without selector and its EndpointSlice.
    let external = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: shop}\nspec:\n  clusterIP: 10.96.0.50\n  ports:\n  - {name: http, port: 80, targetPort: 8443}\n  - {name: https, port: 443, targetPort: 8443}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext, namespace: shop, labels: {kubernetes.io/service-name: ext}}\naddressType: IPv4\nports: [{name: http, port: 8443}, {name: https, port: 8443}]\nendpoints:\n- addresses: [\"10.244.2.2\"]\n---\n";
    egress_flow("gw_egress", external, "ext.shop.svc.cluster.local", "ext", "10.96.0.50");
}

#[test]
fn egress_through_the_gateway_to_a_service_entry_host() {
    // Istio's egress task: the external host is a ServiceEntry.
    let external = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: shop}\nspec:\n  hosts: [ext.example.com]\n  addresses: [10.97.0.50]\n\
         \x20 ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8443}, {number: 443, name: https, protocol: HTTPS, targetPort: 8443}]\n\
         \x20 resolution: STATIC\n  endpoints: [{address: 10.244.2.2}]\n---\n";
    egress_flow("gw_egress_se", external, "ext.example.com", "ext.example.com", "10.97.0.50");
}

/// The app in a pod speaks plain HTTP to `host` (at `address`); the mesh
/// sends it to the egress gateway, which originates TLS to the external
/// server (`external` declares it; `short` is how the VirtualService and
/// DestinationRule in `shop` name it).
fn egress_flow(test: &str, external: &str, host: &str, short: &str, address: &str) {
    let edge = Edge::new(test);
    let client = edge.env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let dir = edge.env.scratch("pki");
    let pki = make_pki(&dir.join("ext"), &["ext.example.com"]).unwrap();
    // The "external" host: a TLS server on b2.
    let _external = edge._backends[1].serve_tls(8443, &pki, false);
    let config = format!(
        "{external}\
         apiVersion: v1\nkind: Service\nmetadata: {{name: istio-egressgateway, namespace: mesh-system}}\nspec:\n  clusterIP: 10.96.0.60\n  selector: {{istio: egressgateway}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: istio-egressgateway, namespace: mesh-system, labels: {{kubernetes.io/service-name: istio-egressgateway}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n- addresses: [\"{GATEWAY_IP}\"]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: egress, namespace: mesh-system}}\nspec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [{host}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ext-via-egress, namespace: shop}}\nspec:\n  hosts: [{short}]\n  gateways: [mesh, mesh-system/egress]\n  http:\n\
         \x20 - match: [{{gateways: [mesh], port: 80}}]\n    route: [{{destination: {{host: istio-egressgateway.mesh-system.svc.cluster.local, port: {{number: 80}}}}}}]\n\
         \x20 - match: [{{gateways: [mesh-system/egress], port: 80}}]\n    route: [{{destination: {{host: {short}, port: {{number: 443}}}}}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ext, namespace: shop}}\nspec:\n  host: {short}\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 443}}\n      tls: {{mode: SIMPLE, caCertificates: {}, sni: ext.example.com}}\n",
        pki.ca.display()
    );
    edge.env.write_config("edge.yaml", &config).unwrap();
    edge.env.start_agent_on_node(&["--access-log"]).unwrap();
    let gateway = edge
        .env
        .start_gateway(&edge.gateway_pod, &["--labels", "istio=egressgateway", "--access-log"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let resolve = format!("{host}:80:{address}");
    let url = format!("http://{host}/");
    let out = edge
        .env
        .probe(&client, &["exec", "curl", "-sS", "-i", "--max-time", "5", "--resolve", &resolve, &url])
        .unwrap();
    let text = out["stdout"].as_str().unwrap_or_default();
    assert!(text.starts_with("HTTP/1.1 200"), "{out}\nagent:\n{}\ngateway:\n{}", edge.env.agent_log(), gateway.log());
    assert_eq!(backend(text), Some("b2"), "{text}");
    assert!(text.contains("x-seen-tls: yes") && text.contains("x-seen-sni: ext.example.com"), "{text}");
    // Both hops logged the request: the node proxy to the gateway, the gateway to the host.
    let upstream = format!("\"upstream_cluster\":\"outbound|443||{host}\"");
    assert!(gateway.log().contains(&upstream), "{}", gateway.log());
    assert!(
        edge.env.agent_log().contains("istio-egressgateway.mesh-system.svc.cluster.local"),
        "{}",
        edge.env.agent_log()
    );
}

#[test]
fn a_delegated_virtual_service_routes_its_prefix_at_the_gateway() {
    let edge = Edge::new("gw_delegate");
    // The root, bound to the gateway, hands /ratings to a VirtualService
    // without hosts in another namespace (its team's), which picks the
    // backend; the rest stays the root's.
    let config = format!(
        "{GATEWAY}  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: root, namespace: shop}}\n\
         spec:\n  hosts: [shop.example.com]\n  gateways: [edge]\n  http:\n\
         \x20 - match: [{{uri: {{prefix: /ratings}}}}]\n    delegate: {{name: ratings-routes, namespace: team}}\n\
         \x20 - route: [{{destination: {{host: reviews}}}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings-routes, namespace: team}}\n\
         spec:\n  http:\n\
         \x20 - match: [{{uri: {{prefix: /ratings/v2}}}}]\n    route: [{{destination: {{host: ratings.shop.svc.cluster.local}}}}]\n\
         \x20 - route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]\n"
    );
    let gateway = edge.start(&config);
    let url = |path: &str| format!("http://{GATEWAY_IP}:8080{path}");
    let host = ["-H", "Host: shop.example.com"];
    let (status, out) = edge.get(&url("/ratings/v2/1"), &host);
    assert_eq!((status, backend(&out)), (200, Some("b2")), "the delegate's rule: {out}\n{}", gateway.log());
    let (status, out) = edge.get(&url("/ratings/v1"), &host);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "the delegate's default: {out}");
    let (status, out) = edge.get(&url("/other"), &host);
    assert_eq!((status, backend(&out)), (200, Some("b1")), "the root's own rule: {out}");
    let warnings = gateway.admin_json("/config_dump")["warnings"].clone();
    assert!(warnings.as_array().is_some_and(|w| w.is_empty()), "a used delegate warns nothing: {warnings}");
}
