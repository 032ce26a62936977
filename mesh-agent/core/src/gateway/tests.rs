use super::*;
use crate::api::Resource;
use crate::decode::parse_file;
use crate::field::FieldError;
use crate::model::Model;
use crate::object::WarningReason;
use crate::route::RouteAction;
use std::collections::BTreeMap;

const DOMAIN: &str = "cluster.local";

fn gateway_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")
}

fn vs_yaml(namespace: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}")
}

/// Validates Gateway `istio-system/gw` whose `spec.servers` list is `servers`.
fn validate(servers: &str) -> Result<GatewayModel, FieldError> {
    let servers = if servers.is_empty() { " []\n".to_owned() } else { format!("\n{servers}") };
    let text =
        gateway_yaml("istio-system", "gw", &format!("  selector: {{istio: ingressgateway}}\n  servers:{servers}"));
    let mut objects = parse_file("gw.yaml", &text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    let Resource::Gateway(gateway) = (*objects.remove(0).resource).clone() else { unreachable!() };
    validate_gateway(&gateway)
}

fn model(text: &str) -> Model {
    let objects = parse_file("t.yaml", text).unwrap_or_else(|e| panic!("{text}\n{e:?}"));
    Model::build(&objects, vec![], &Model::default(), DOMAIN)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn ingress() -> BTreeMap<String, String> {
    labels(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")])
}

const HTTP80: &str = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n";
const SIMPLE_FILES: &str = "{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}";

#[test]
fn validation_follows_istio() {
    let https = |tls: &str| {
        format!("  - port: {{number: 443, name: https, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {tls}\n")
    };
    let tls = |tls: &str| {
        format!("  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: [a.example.com]\n    tls: {tls}\n")
    };
    let port = |port: &str| format!("  - port: {port}\n    hosts: ['*']\n");
    let hosts = |hosts: &str| format!("  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: {hosts}\n");
    let second = |extra: &str| format!("{HTTP80}{extra}");
    // (servers, None when Istio accepts it, else the field it rejects)
    let cases: Vec<(String, Option<&str>)> = vec![
        (HTTP80.into(), None),
        (https(SIMPLE_FILES), None),
        (https("{mode: SIMPLE, credentialName: a-cert}"), None),
        (https("{mode: MUTUAL, serverCertificate: /c, privateKey: /k, caCertificates: /ca}"), None),
        (https("{mode: MUTUAL, credentialName: a-cert}"), None),
        (https("{mode: OPTIONAL_MUTUAL, credentialName: a-cert}"), None),
        (https("{mode: PASSTHROUGH}"), None),
        (https("{mode: ISTIO_MUTUAL}"), None),
        (https("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_2, maxProtocolVersion: TLSV1_3}"), None),
        (https("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLS_AUTO}"), None),
        (tls("{mode: PASSTHROUGH}"), None),
        (tls("{}"), None),
        (tls("{mode: AUTO_PASSTHROUGH}"), None),
        (tls(SIMPLE_FILES), None),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {httpsRedirect: true}\n".into(), None),
        (hosts("['*/a.example.com', './b.example.com', 'prod/*.example.com', 'prod/*', '*.Example.COM.']"), None),
        (port("{number: 80, name: http, protocol: http}"), None),
        (port("{number: 9000, name: tcp, protocol: TCP}"), None),
        (port("{number: 9000, name: grpc, protocol: GRPC}"), None),
        (port("{number: 9000, name: h2, protocol: HTTP2}"), None),
        (port("{number: 27017, name: mongo, protocol: MONGO}"), None),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    bind: 10.0.0.1\n".into(), None),
        (second("  - port: {number: 80, name: http-b, protocol: HTTP}\n    hosts: [b.example.com]\n"), None),
        (format!("{}{}", https(SIMPLE_FILES), tls("{}").replace("hosts: [a.example.com]", "hosts: [b.example.com]")), None),
        (second("  - port: {number: 80, name: tcp, protocol: TCP}\n    hosts: ['*']\n    bind: 10.0.0.1\n"), None),
        // Rejected, by field.
        (String::new(), Some("spec.servers")),
        ("  - hosts: ['*']\n".into(), Some("spec.servers[0].port")),
        (port("{number: 0, name: http, protocol: HTTP}"), Some("spec.servers[0].port.number")),
        (port("{number: 70000, name: http, protocol: HTTP}"), Some("spec.servers[0].port.number")),
        (port("{number: -1, name: http, protocol: HTTP}"), Some("spec.servers[0].port.number")),
        (port("{number: 80, name: http}"), Some("spec.servers[0].port.protocol")),
        (port("{number: 80, name: http, protocol: FOO}"), Some("spec.servers[0].port.protocol")),
        (port("{number: 80, name: udp, protocol: UDP}"), Some("spec.servers[0].port.protocol")),
        (port("{number: 80, protocol: HTTP}"), Some("spec.servers[0].port.name")),
        (port("{number: 80, name: http, protocol: HTTP, targetPort: 8080}"), Some("spec.servers[0].port.targetPort")),
        (second("  - port: {number: 81, name: http, protocol: HTTP}\n    hosts: ['*']\n"), Some("spec.servers[1].port.name")),
        (second("  - port: {number: 80, name: tcp, protocol: TCP}\n    hosts: ['*']\n"), Some("spec.servers[1].port.number")),
        (second("  - port: {number: 80, name: h2, protocol: HTTP2}\n    hosts: ['*']\n"), Some("spec.servers[1].port.number")),
        (second(&https(SIMPLE_FILES).replace("443", "80")), Some("spec.servers[1].port.number")),
        (
            "  - port: {number: 9000, name: a, protocol: TCP}\n    hosts: ['*']\n  - port: {number: 9000, name: b, protocol: TCP}\n    hosts: ['*']\n".into(),
            Some("spec.servers[1].port.number"),
        ),
        (hosts("[]"), Some("spec.servers[0].hosts")),
        (hosts("['a/b/c']"), Some("spec.servers[0].hosts[0]")),
        (hosts("['bad_ns/a.example.com']"), Some("spec.servers[0].hosts[0]")),
        (hosts("['/a.example.com']"), Some("spec.servers[0].hosts[0]")),
        (hosts("[a.example.com, 'a.*.com']"), Some("spec.servers[0].hosts[1]")),
        (hosts("['10.0.0.1']"), Some("spec.servers[0].hosts[0]")),
        ("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n".into(), Some("spec.servers[0].tls")),
        ("  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*']\n".into(), Some("spec.servers[0].tls")),
        (https("{mode: SIMPLE, privateKey: /k}"), Some("spec.servers[0].tls.serverCertificate")),
        (https("{mode: SIMPLE, serverCertificate: /c}"), Some("spec.servers[0].tls.privateKey")),
        (https("{mode: MUTUAL, serverCertificate: /c, privateKey: /k}"), Some("spec.servers[0].tls.caCertificates")),
        (https("{mode: OPTIONAL_MUTUAL, serverCertificate: /c, privateKey: /k}"), Some("spec.servers[0].tls.caCertificates")),
        (https("{mode: SIMPLES, credentialName: c}"), Some("spec.servers[0].tls.mode")),
        (https("{mode: simple, credentialName: c}"), Some("spec.servers[0].tls.mode")),
        (https("{mode: ISTIO_MUTUAL, credentialName: c}"), Some("spec.servers[0].tls.credentialName")),
        (https("{mode: ISTIO_MUTUAL, serverCertificate: /c}"), Some("spec.servers[0].tls.serverCertificate")),
        (https("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV9}"), Some("spec.servers[0].tls.minProtocolVersion")),
        (https("{mode: SIMPLE, credentialName: c, maxProtocolVersion: TLSv1_2}"), Some("spec.servers[0].tls.maxProtocolVersion")),
        (
            https("{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}"),
            Some("spec.servers[0].tls.minProtocolVersion"),
        ),
        (https("{mode: MUTUAL, credentialName: c, caCrl: /crl}"), Some("spec.servers[0].tls.caCrl")),
        (https("{mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCrl: /crl}"), Some("spec.servers[0].tls.caCrl")),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: c}\n".into(), Some("spec.servers[0].tls.mode")),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {serverCertificate: /c}\n".into(), Some("spec.servers[0].tls.serverCertificate")),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    tls: {httpsRedirect: true, privateKey: /k}\n".into(), Some("spec.servers[0].tls.privateKey")),
        ("  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: c}\n".into(), Some("spec.servers[0].tls")),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    bind: not-an-ip\n".into(), Some("spec.servers[0].bind")),
        ("  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n    bind: 'unix:///var/run/gw.sock'\n".into(), Some("spec.servers[0].bind")),
    ];
    assert!(cases.len() >= 60, "{}", cases.len());
    for (servers, expected) in cases {
        let result = validate(&servers);
        match (expected, result) {
            (None, Ok(_)) => {}
            (None, Err(e)) => panic!("Istio accepts it, rejected at {e}:\n{servers}"),
            (Some(field), Ok(_)) => panic!("Istio rejects it at {field}, accepted:\n{servers}"),
            (Some(field), Err(e)) => assert_eq!(e.field, field, "{servers}\n{e}"),
        }
    }
}

#[test]
fn validated_servers_say_what_they_serve() {
    let gateway = validate(&format!(
        "{HTTP80}  - port: {{number: 443, name: https, protocol: https}}\n    hosts: ['./A.example.com.', 'prod/*.example.com', '*/b.example.com']\n    tls: {{mode: MUTUAL, credentialName: a-cert, subjectAltNames: [client], cipherSuites: ['[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]'], minProtocolVersion: TLSV1_2}}\n    name: main\n    bind: '::1'\n"
    ))
    .unwrap();
    let server = &gateway.servers[1];
    assert_eq!(
        (server.port, server.protocol, server.kind()),
        (443, ServerProtocol::Https, ListenerKind::TerminatedTls)
    );
    assert_eq!(server.name.as_deref(), Some("main"));
    assert_eq!(server.bind, Some("::1".parse().unwrap()));
    let hosts: Vec<(Option<&str>, &str)> =
        server.hosts.iter().map(|h| (h.namespace.as_deref(), h.host.as_str())).collect();
    assert_eq!(
        hosts,
        [(Some("istio-system"), "a.example.com"), (Some("prod"), "*.example.com"), (None, "b.example.com")]
    );
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.mode, ServerTlsMode::Mutual);
    assert_eq!(
        tls.certificate,
        Some(ServerCertificate::Secret { namespace: "istio-system".into(), name: "a-cert".into() }),
        "the Secret is in the Gateway's namespace"
    );
    assert_eq!(tls.subject_alt_names, ["client"]);
    assert_eq!(tls.cipher_suites, ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"]);
    assert_eq!((tls.min_protocol_version, tls.max_protocol_version), (Some(TlsVersion::V1_2), None));
    // Files: SIMPLE has no CA, MUTUAL does.
    let simple = validate("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCertificates: /ca}\n").unwrap();
    assert_eq!(
        simple.servers[0].tls.as_ref().unwrap().certificate,
        Some(ServerCertificate::Files { cert: "/c".into(), key: "/k".into(), ca: None })
    );
    // The kinds Istio serves each protocol and mode as.
    let kinds = [
        ("HTTP", "", ListenerKind::Http),
        ("GRPC", "", ListenerKind::Http),
        ("TCP", "", ListenerKind::Tcp),
        ("HTTPS", "{mode: PASSTHROUGH}", ListenerKind::Passthrough),
        ("TLS", "{mode: AUTO_PASSTHROUGH}", ListenerKind::Passthrough),
        ("TLS", "{mode: SIMPLE, credentialName: c}", ListenerKind::TerminatedTcp),
    ];
    for (protocol, tls, kind) in kinds {
        let tls = if tls.is_empty() { String::new() } else { format!("    tls: {tls}\n") };
        let gateway =
            validate(&format!("  - port: {{number: 8443, name: p, protocol: {protocol}}}\n    hosts: ['*']\n{tls}"))
                .unwrap();
        assert_eq!(gateway.servers[0].kind(), kind, "{protocol} {tls}");
    }
}

#[test]
fn a_gateway_name_is_a_dns_label() {
    let text = gateway_yaml("shop", "my.gateway", &format!("  servers:\n{HTTP80}"));
    let model = model(&text);
    assert!(model.gateways.is_empty());
    assert_eq!(model.rejections[0].field, "metadata.name");
}

#[test]
fn a_selector_picks_workloads_by_every_label_and_empty_picks_all() {
    let gateway = |selector: &[(&str, &str)]| GatewayModel {
        namespace: "ns".into(),
        name: "gw".into(),
        selector: labels(selector),
        servers: Vec::new(),
    };
    assert!(gateway(&[("istio", "ingressgateway")]).selects(&ingress()));
    assert!(gateway(&[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]).selects(&ingress()));
    assert!(!gateway(&[("istio", "egressgateway")]).selects(&ingress()));
    assert!(!gateway(&[("istio", "ingressgateway"), ("zone", "a")]).selects(&ingress()));
    assert!(gateway(&[]).selects(&ingress()), "Istio: no selector applies to every gateway workload");
}

#[test]
fn server_hosts_match_as_envoy_domains() {
    let host = |host: &str| ServerHost { namespace: None, host: host.into() };
    let cases = [
        ("*", "anything.example", true),
        ("*.example.com", "a.example.com", true),
        ("*.example.com", "A.b.EXAMPLE.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "a.example.org", false),
        ("a.example.com", "A.Example.Com", true),
        ("a.example.com", "a.example.com.", true),
        ("a.example.com", "b.example.com", false),
        ("*-api.example.com", "v1-api.example.com", true),
    ];
    for (pattern, name, expected) in cases {
        assert_eq!(host(pattern).matches(name), expected, "{pattern} {name}");
    }
    let scoped = ServerHost { namespace: Some("prod".into()), host: "*".into() };
    assert!(scoped.admits_namespace("prod") && !scoped.admits_namespace("dev"));
    assert!(host("*").admits_namespace("dev"));
}

/// A Gateway `ns/name` selecting the ingress, with `servers`.
fn ingress_gateway(namespace: &str, name: &str, servers: &str) -> String {
    gateway_yaml(namespace, name, &format!("  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"))
}

/// A VirtualService `ns/name` for `hosts` and `gateways`, one rule routing
/// everything to `name`.
fn bound_vs(namespace: &str, name: &str, hosts: &str, gateways: &str) -> String {
    vs_yaml(
        namespace,
        name,
        &format!("  hosts: {hosts}\n  gateways: {gateways}\n  http:\n  - name: {name}\n    route: [{{destination: {{host: {name}}}}}]\n"),
    )
}

fn plan(text: &str) -> GatewayPlan {
    let model = model(text);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    GatewayPlan::compile(&model, &ingress())
}

/// The VirtualServices bound to the listener on `port`, by host.
fn routed(plan: &GatewayPlan, port: u16) -> Vec<(String, Vec<String>)> {
    let listener = plan.listeners.iter().find(|l| l.port == port).expect("listener");
    (listener.servers.iter())
        .flat_map(|s| s.virtual_hosts.iter().map(|vh| (vh.hosts[0].clone(), vh.virtual_services.clone())))
        .collect()
}

#[test]
fn virtual_services_bind_by_short_qualified_and_legacy_names() {
    let text = [
        ingress_gateway("istio-system", "ingress", HTTP80),
        bound_vs("istio-system", "short", "[short.example.com]", "[ingress]"),
        bound_vs("shop", "qualified", "[qualified.example.com]", "[istio-system/ingress]"),
        bound_vs("shop", "legacy", "[legacy.example.com]", "[ingress.istio-system.svc.cluster.local]"),
        bound_vs("shop", "elsewhere", "[elsewhere.example.com]", "[ingress]"),
        bound_vs("shop", "both", "[both.example.com]", "[mesh, istio-system/ingress]"),
        vs_yaml("shop", "mesh-only", "  hosts: [mesh.example.com]\n  http:\n  - route: [{destination: {host: web}}]\n"),
    ]
    .concat();
    let plan = plan(&text);
    let hosts: Vec<String> = routed(&plan, 80).into_iter().map(|(host, _)| host).collect();
    assert_eq!(
        hosts,
        ["short.example.com", "both.example.com", "legacy.example.com", "qualified.example.com"],
        "`ingress` from shop is shop/ingress, which does not exist; no gateways is the mesh only"
    );
}

#[test]
fn match_blocks_for_other_places_are_left_out() {
    let text = [
        ingress_gateway("istio-system", "ingress", HTTP80),
        vs_yaml(
            "shop",
            "web",
            concat!(
                "  hosts: [web.example.com]\n",
                "  gateways: [mesh, istio-system/ingress]\n",
                "  http:\n",
                "  - name: edge\n",
                "    match: [{gateways: [istio-system/ingress], uri: {prefix: /admin}}, {gateways: [mesh], uri: {prefix: /m}}]\n",
                "    route: [{destination: {host: admin}}]\n",
                "  - name: mesh-only\n",
                "    match: [{gateways: [mesh]}]\n",
                "    route: [{destination: {host: web}}]\n",
                "  - name: for-ingress-labels\n",
                "    match: [{sourceLabels: {istio: ingressgateway}, uri: {prefix: /l}}]\n",
                "    route: [{destination: {host: web}}]\n",
                "  - name: for-other-labels\n",
                "    match: [{sourceLabels: {app: reviews}}]\n",
                "    route: [{destination: {host: web}}]\n",
                "  - name: for-a-namespace\n",
                "    match: [{sourceNamespace: istio-system}]\n",
                "    route: [{destination: {host: web}}]\n",
                "  - name: all\n",
                "    route: [{destination: {host: web}}]\n",
            ),
        ),
    ]
    .concat();
    let model = model(&text);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    let rules = |namespace: Option<&str>| -> Vec<String> {
        let plan = GatewayPlan::compile_in(&model, &ingress(), namespace);
        let routes = &plan.listeners[0].servers[0].virtual_hosts[0].routes;
        routes.iter().map(|r| r.name.clone().unwrap()).collect()
    };
    assert_eq!(rules(None), ["edge", "for-ingress-labels", "all"]);
    assert_eq!(rules(Some("istio-system")), ["edge", "for-ingress-labels", "for-a-namespace", "all"]);
    let plan = GatewayPlan::compile(&model, &ingress());
    let edge = &plan.listeners[0].servers[0].virtual_hosts[0].routes[0];
    assert_eq!(edge.matches.len(), 1, "the mesh's block of the rule is left out");
    assert_eq!(edge.matches[0].uri.as_ref().unwrap().prefix(), Some("/admin"));
    let labelled = &plan.listeners[0].servers[0].virtual_hosts[0].routes[1];
    assert!(labelled.matches[0].source_labels.is_empty(), "decided for the gateway: no client check left");
}

#[test]
fn server_hosts_admit_virtual_services_by_namespace_and_host() {
    let servers = concat!(
        "  - port: {number: 80, name: http, protocol: HTTP}\n",
        "    hosts: ['prod/*.example.com', './own.example.org', '*/any.example.net']\n",
    );
    let text = [
        ingress_gateway("istio-system", "ingress", servers),
        bound_vs("prod", "prod-a", "[a.example.com]", "[istio-system/ingress]"),
        bound_vs("dev", "dev-a", "[d.example.com]", "[istio-system/ingress]"),
        bound_vs("prod", "wide", "['*']", "[istio-system/ingress]"),
        bound_vs("istio-system", "own", "[own.example.org]", "[ingress]"),
        bound_vs("dev", "not-own", "[own.example.org]", "[istio-system/ingress]"),
        bound_vs("dev", "any", "[any.example.net]", "[istio-system/ingress]"),
        bound_vs("prod", "outside", "[a.example.io]", "[istio-system/ingress]"),
    ]
    .concat();
    let plan = plan(&text);
    let routed = routed(&plan, 80);
    let shown: Vec<(&str, Vec<&str>)> =
        routed.iter().map(|(h, v)| (h.as_str(), v.iter().map(String::as_str).collect())).collect();
    assert_eq!(
        shown,
        [
            // `*` meets the server's hosts at the narrower ones, and merges
            // into the host another VirtualService routes.
            ("any.example.net", vec!["dev/any", "prod/wide"]),
            ("own.example.org", vec!["istio-system/own"]),
            ("a.example.com", vec!["prod/prod-a"]),
            ("*.example.com", vec!["prod/wide"]),
        ]
    );
}

#[test]
fn export_to_hides_virtual_services_from_other_gateway_namespaces() {
    let text = [
        ingress_gateway("shop", "ingress", HTTP80),
        vs_yaml(
            "shop",
            "private",
            "  hosts: [web.example.com]\n  gateways: [ingress]\n  exportTo: ['.']\n  http:\n  - route: [{destination: {host: web}}]\n",
        ),
    ]
    .concat();
    let model = model(&text);
    let hosts = |namespace: Option<&str>| {
        GatewayPlan::compile_in(&model, &ingress(), namespace).listeners[0].servers[0].virtual_hosts.len()
    };
    assert_eq!(hosts(Some("istio-system")), 0, "not exported to the gateway workload's namespace");
    assert_eq!(hosts(Some("shop")), 1);
    assert_eq!(hosts(None), 1, "namespace unknown: exportTo not checked");
}

/// A TLS listener on 443: three HTTPS servers from two Gateways.
fn sni_plan() -> GatewayPlan {
    let server = |name: &str, host: &str, cert: &str| {
        format!("  - port: {{number: 443, name: {name}, protocol: HTTPS}}\n    hosts: ['{host}']\n    tls: {{mode: SIMPLE, credentialName: {cert}}}\n")
    };
    let text = [
        ingress_gateway(
            "istio-system",
            "a",
            &[server("exact", "a.example.com", "a-cert"), server("wide", "*.example.com", "wide-cert")].concat(),
        ),
        ingress_gateway("istio-system", "b", &server("any", "*", "any-cert")),
        bound_vs("istio-system", "exact", "[a.example.com]", "[a]"),
        bound_vs("istio-system", "wide", "['*.example.com']", "[a]"),
        bound_vs("istio-system", "any", "['*']", "[b]"),
    ]
    .concat();
    plan(&text)
}

#[test]
fn the_sni_picks_the_most_specific_server() {
    let plan = sni_plan();
    assert_eq!(plan.listeners.len(), 1);
    let listener = &plan.listeners[0];
    assert_eq!(listener.kind, ListenerKind::TerminatedTls);
    let port_name = |sni: Option<&str>| listener.server_for_sni(sni).map(|s| s.server.port_name.clone());
    assert_eq!(port_name(Some("a.example.com")).as_deref(), Some("exact"));
    assert_eq!(port_name(Some("A.EXAMPLE.COM")).as_deref(), Some("exact"));
    assert_eq!(port_name(Some("b.example.com")).as_deref(), Some("wide"));
    assert_eq!(port_name(Some("example.com")).as_deref(), Some("any"));
    assert_eq!(port_name(Some("other.org")).as_deref(), Some("any"));
    assert_eq!(port_name(None).as_deref(), Some("any"), "`*` takes a client without SNI");
    let mut secrets: Vec<(&str, &str)> = (listener.servers.iter())
        .filter_map(|s| match s.server.tls.as_ref()?.certificate.as_ref()? {
            ServerCertificate::Secret { namespace, name } => Some((namespace.as_str(), name.as_str())),
            ServerCertificate::Files { .. } => None,
        })
        .collect();
    secrets.sort_unstable();
    assert_eq!(secrets, [("istio-system", "a-cert"), ("istio-system", "any-cert"), ("istio-system", "wide-cert")]);
    // Without a `*` server, no SNI (or an unknown one) finds none.
    let mut narrow = listener.clone();
    narrow.servers.retain(|s| s.server.port_name != "any");
    assert!(narrow.server_for_sni(None).is_none());
    assert!(narrow.server_for_sni(Some("other.org")).is_none());
    // Then HTTP routing within the server the handshake chose.
    let wide = listener.server_for_sni(Some("b.example.com")).unwrap();
    let (server, host) = listener.route(Some(wide), "b.example.com:443").unwrap();
    assert_eq!((server.server.port_name.as_str(), host.name.as_str()), ("wide", "wide"));
    assert!(listener.route(Some(wide), "other.org").is_none(), "a Host outside the chosen server: 404");
}

#[test]
fn http_routing_takes_the_most_specific_host_and_merges_virtual_services() {
    let servers = concat!("  - port: {number: 80, name: http, protocol: HTTP}\n", "    hosts: ['*']\n",);
    let text = [
        ingress_gateway("istio-system", "ingress", servers),
        bound_vs("shop", "exact", "[a.example.com]", "[istio-system/ingress]"),
        bound_vs("shop", "short", "['*.example.com']", "[istio-system/ingress]"),
        bound_vs("shop", "long", "['*.api.example.com']", "[istio-system/ingress]"),
        bound_vs("shop", "zz-exact-too", "[a.example.com]", "[istio-system/ingress]"),
    ]
    .concat();
    let plan = plan(&text);
    let listener = &plan.listeners[0];
    let route = |host: &str| listener.route(None, host).map(|(_, vh)| vh.virtual_services.join(","));
    assert_eq!(route("a.example.com").as_deref(), Some("shop/exact,shop/zz-exact-too"));
    assert_eq!(route("A.Example.com:80").as_deref(), Some("shop/exact,shop/zz-exact-too"), "port stripped, any case");
    assert_eq!(route("v1.api.example.com").as_deref(), Some("shop/long"), "the longer wildcard");
    assert_eq!(route("b.example.com").as_deref(), Some("shop/short"));
    assert_eq!(route("example.org"), None, "no virtual host: 404");
    let (_, merged) = listener.route(None, "a.example.com").unwrap();
    let names: Vec<&str> = merged.routes.iter().map(|r| r.name.as_deref().unwrap()).collect();
    assert_eq!(names, ["exact", "zz-exact-too"], "the first VirtualService's rules first");
    assert_eq!((merged.namespace.as_str(), merged.name.as_str()), ("shop", "exact"));
}

#[test]
fn gateways_on_one_workload_merge_by_port() {
    let text = [
        ingress_gateway(
            "aaa",
            "first",
            &format!("{HTTP80}  - port: {{number: 9000, name: tcp, protocol: TCP}}\n    hosts: ['*']\n"),
        ),
        ingress_gateway(
            "bbb",
            "second",
            concat!(
                "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [b.example.com]\n",
                "  - port: {number: 9000, name: tcp, protocol: TCP}\n    hosts: ['*']\n",
                "  - port: {number: 8080, name: h2, protocol: HTTP2}\n    hosts: ['*']\n",
            ),
        ),
        gateway_yaml("ccc", "egress", &format!("  selector: {{istio: egressgateway}}\n  servers:\n{HTTP80}")),
        bound_vs("aaa", "a", "['*']", "[first]"),
        bound_vs("bbb", "b", "[b.example.com]", "[second]"),
        bound_vs("bbb", "b-too", "['*']", "[aaa/first, second]"),
    ]
    .concat();
    let plan = plan(&text);
    let ports: Vec<(u16, ListenerKind, usize)> =
        plan.listeners.iter().map(|l| (l.port, l.kind, l.servers.len())).collect();
    assert_eq!(ports, [(80, ListenerKind::Http, 2), (8080, ListenerKind::Http, 1), (9000, ListenerKind::Tcp, 1)]);
    assert_eq!(plan.skipped.len(), 1, "{:?}", plan.skipped);
    let skipped = &plan.skipped[0];
    assert_eq!((skipped.gateway_name.as_str(), skipped.server, skipped.port), ("second", 1, 9000));
    assert!(skipped.reason.contains("already served as TCP by Gateway aaa/first"), "{}", skipped.reason);
    // One route table on port 80: a host appears once, in the first
    // server that has it, with every VirtualService's rules.
    let hosts = routed(&plan, 80);
    assert_eq!(
        hosts,
        [
            ("*".to_owned(), vec!["aaa/a".to_owned(), "bbb/b-too".to_owned()]),
            ("b.example.com".to_owned(), vec!["bbb/b".to_owned(), "bbb/b-too".to_owned()]),
        ]
    );
    let (server, host) = plan.listeners[0].route(None, "b.example.com").unwrap();
    assert_eq!((server.gateway_name.as_str(), host.name.as_str()), ("second", "b"));
    assert_eq!(plan.listeners[0].route(None, "else.example.com").unwrap().1.name, "a");
    assert_eq!(plan.listeners[0].route(None, "[2001:db8::1]:80").unwrap().1.name, "a", "an IPv6 Host");
    // Nothing for a workload no Gateway selects.
    let model = model(&text);
    assert!(GatewayPlan::compile(&model, &labels(&[("app", "web")])).listeners.is_empty());
}

#[test]
fn tls_servers_share_a_port_by_sni_unless_a_host_repeats() {
    let text = [
        ingress_gateway(
            "aaa",
            "terminate",
            "  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: a}\n",
        ),
        ingress_gateway(
            "bbb",
            "pass",
            concat!(
                "  - port: {number: 443, name: tls, protocol: TLS}\n    hosts: ['*.db.example.com']\n    tls: {mode: PASSTHROUGH}\n",
                "  - port: {number: 443, name: again, protocol: TLS}\n    hosts: [a.example.com]\n    tls: {mode: PASSTHROUGH}\n",
                "  - port: {number: 8443, name: mesh-mtls, protocol: TLS}\n    hosts: ['*']\n    tls: {mode: ISTIO_MUTUAL}\n",
            ),
        ),
        vs_yaml(
            "bbb",
            "db",
            concat!(
                "  hosts: ['*.example.com', other.org]\n",
                "  gateways: [pass]\n",
                "  tls:\n",
                "  - match: [{sniHosts: ['*.example.com', other.org], port: 443}]\n",
                "    route: [{destination: {host: db}}]\n",
                "  - match: [{sniHosts: [other.org]}]\n",
                "    route: [{destination: {host: nowhere}}]\n",
            ),
        ),
    ]
    .concat();
    let plan = plan(&text);
    assert_eq!(plan.listeners.len(), 1);
    let listener = &plan.listeners[0];
    assert_eq!(listener.kind, ListenerKind::MixedTls);
    let kinds: Vec<ListenerKind> = listener.servers.iter().map(|s| s.server.kind()).collect();
    assert_eq!(kinds, [ListenerKind::TerminatedTls, ListenerKind::Passthrough]);
    let reasons: Vec<(usize, &str)> = plan.skipped.iter().map(|s| (s.server, s.reason.as_str())).collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].1.contains("\"a.example.com\" is already served on port 443 by Gateway aaa/terminate"));
    assert!(reasons[1].1.contains("ISTIO_MUTUAL"));
    let pass = listener.server_for_sni(Some("pg.db.example.com")).unwrap();
    assert_eq!(pass.tls.len(), 1, "the rule with no SNI within the server's hosts is left out");
    assert_eq!(pass.tls[0].matches[0].sni_hosts, ["*.db.example.com"], "narrowed to the server's hosts");
    assert_eq!(pass.virtual_services, ["bbb/db"]);
}

#[test]
fn tcp_servers_take_the_tcp_rules_of_bound_virtual_services() {
    let text = [
        ingress_gateway("shop", "db", "  - port: {number: 5432, name: pg, protocol: TCP}\n    hosts: ['*']\n"),
        vs_yaml(
            "shop",
            "db",
            concat!(
                "  hosts: [db.example.com]\n",
                "  gateways: [db, mesh]\n",
                "  tcp:\n",
                "  - match: [{port: 5432, gateways: [db]}]\n",
                "    route: [{destination: {host: db}}]\n",
                "  - match: [{gateways: [mesh]}]\n",
                "    route: [{destination: {host: other}}]\n",
            ),
        ),
    ]
    .concat();
    let plan = plan(&text);
    let server = &plan.listeners[0].servers[0];
    assert_eq!(server.tcp.len(), 1);
    assert_eq!(server.tcp[0].destinations[0].host, "db.shop.svc.cluster.local");
    assert!(server.virtual_hosts.is_empty());
}

#[test]
fn https_redirect_redirects_every_host_of_the_server() {
    let servers = concat!(
        "  - port: {number: 80, name: http, protocol: HTTP}\n",
        "    hosts: [a.example.com, b.example.com]\n",
        "    tls: {httpsRedirect: true}\n",
    );
    let text = [ingress_gateway("shop", "web", servers), bound_vs("shop", "a", "[a.example.com]", "[web]")].concat();
    let redirecting = plan(&text);
    let listener = &redirecting.listeners[0];
    let (_, routed) = listener.route(None, "a.example.com").unwrap();
    assert!(routed.https_redirect && !routed.routes.is_empty());
    let (_, unrouted) = listener.route(None, "b.example.com").unwrap();
    assert!(unrouted.https_redirect && unrouted.routes.is_empty() && unrouted.name.is_empty());
    assert!(listener.route(None, "c.example.com").is_none());

    // Another server on the port with the same host, routed and without
    // the redirect: its host merges into the redirecting one's, and the
    // redirect holds (as Istio sets requireTls on the merged host).
    let plain = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n";
    let text =
        [ingress_gateway("aaa", "plain", plain), bound_vs("aaa", "p", "[a.example.com]", "[plain]"), text].concat();
    let merged = plan(&text);
    let (bound, merged) = merged.listeners[0].route(None, "a.example.com").unwrap();
    assert_eq!((bound.gateway_name.as_str(), merged.virtual_services.join(",").as_str()), ("plain", "aaa/p,shop/a"));
    assert!(merged.https_redirect && !bound.server.https_redirect(), "the host's flag, not its first server's");
}

/// Bookinfo's `bookinfo-gateway.yaml`, as Istio ships it.
const BOOKINFO_GATEWAY: &str = r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  # If you installed Istio using Helm following the standard documentation, this would be "istio=ingress"
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"#;

#[test]
fn bookinfo_gateway_serves_the_product_page() {
    let model = model(BOOKINFO_GATEWAY);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    assert!(model.warnings.is_empty(), "{:?}", model.warnings);
    let gateway = &model.gateways[&("default".to_owned(), "bookinfo-gateway".to_owned())];
    assert_eq!(gateway.servers[0].port, 8080);
    assert!(model.virtual_services[&("default".to_owned(), "bookinfo".to_owned())]
        .binds_gateway("default/bookinfo-gateway"));
    let plan = GatewayPlan::compile_in(&model, &ingress(), Some("istio-system"));
    assert_eq!(plan.listeners.len(), 1);
    let listener = &plan.listeners[0];
    assert_eq!((listener.port, listener.bind, listener.kind), (8080, None, ListenerKind::Http));
    let (server, host) = listener.route(None, "192.0.2.10:8080").expect("`*` takes any Host, an address too");
    assert_eq!(server.gateway_name, "bookinfo-gateway");
    assert_eq!((host.hosts.as_slice(), host.name.as_str()), (["*".to_owned()].as_slice(), "bookinfo"));
    let RouteAction::Forward(destinations) = &host.routes[0].action else { panic!() };
    assert_eq!(destinations[0].host, "productpage.default.svc.cluster.local");
    assert_eq!(destinations[0].port, Some(9080));
    assert_eq!(host.routes[0].matches.len(), 5);
    // Sidecars do not apply it.
    let snapshot = crate::snapshot::compile(&model, DOMAIN);
    assert!(snapshot.routes.is_empty());
}

#[test]
fn a_bad_gateway_edit_keeps_the_last_good_version() {
    let good = model(BOOKINFO_GATEWAY);
    let broken = BOOKINFO_GATEWAY.replace("protocol: HTTP", "protocol: HTTPX");
    let objects = parse_file("t.yaml", &broken).unwrap();
    let next = Model::build(&objects, vec![], &good, DOMAIN);
    assert_eq!(next.rejections.len(), 1, "{:?}", next.rejections);
    let shown = next.rejections[0].to_string();
    assert!(
        shown.starts_with("t.yaml: Gateway default/bookinfo-gateway: spec.servers[0].port.protocol: \"HTTPX\""),
        "{shown}"
    );
    assert!(shown.ends_with("(the last good version keeps serving)"), "{shown}");
    assert_eq!(next.gateways.len(), 1);
    let fresh = Model::build(&objects, vec![], &Model::default(), DOMAIN);
    assert!(fresh.gateways.is_empty());
    // Then the VirtualService names a Gateway that does not exist.
    let warnings: Vec<String> = fresh.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["t.yaml: VirtualService default/bookinfo: spec.gateways[0]: no Gateway default/bookinfo-gateway exists; no \
          gateway applies this VirtualService there until one is defined"]
    );
    assert_eq!(fresh.warnings[0].reason, WarningReason::NotHonoured);
}

#[test]
fn the_secrets_a_gateway_names_are_listed_once() {
    let servers = concat!(
        "  - port: {number: 443, name: a, protocol: HTTPS}\n    hosts: [a.example.com]\n    tls: {mode: SIMPLE, credentialName: b-cert}\n",
        "  - port: {number: 443, name: b, protocol: HTTPS}\n    hosts: [b.example.com]\n    tls: {mode: SIMPLE, credentialName: a-cert}\n",
        "  - port: {number: 8443, name: c, protocol: HTTPS}\n    hosts: [c.example.com]\n    tls: {mode: MUTUAL, credentialName: a-cert}\n",
        "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n",
    );
    let objects = parse_file("gw.yaml", &ingress_gateway("shop", "web", servers)).unwrap();
    let Resource::Gateway(gateway) = &*objects[0].resource else { unreachable!() };
    assert_eq!(gateway.credential_names(), ["a-cert", "b-cert"]);
}

#[test]
fn merged_virtual_services_keep_catch_alls_last() {
    let rules = |name: &str, http: &str| {
        vs_yaml(
            "shop",
            name,
            &format!("  hosts: [web.example.com]\n  gateways: [istio-system/ingress]\n  http:\n{http}"),
        )
    };
    let text = [
        ingress_gateway("istio-system", "ingress", HTTP80),
        rules("a", "  - name: a-all\n    route: [{destination: {host: a}}]\n"),
        rules(
            "b",
            concat!(
                "  - name: b-api\n",
                "    match: [{uri: {prefix: /}}, {uri: {prefix: /api}}, {uri: {prefix: /}, headers: {x: {exact: y}}}]\n",
                "    route: [{destination: {host: b}}]\n",
            ),
        ),
    ]
    .concat();
    let plan = plan(&text);
    let (_, host) = plan.listeners[0].route(None, "web.example.com").unwrap();
    let shown: Vec<(&str, Option<&str>)> = (host.routes.iter())
        .map(|r| (r.name.as_deref().unwrap(), r.matches.first().and_then(|m| m.uri.as_ref()?.prefix())))
        .collect();
    assert_eq!(shown, [("b-api", Some("/api")), ("b-api", Some("/")), ("a-all", None), ("b-api", Some("/"))]);
    assert!(host.routes[1].matches[0].headers.len() == 1, "a header condition is not a catch-all");
}

#[test]
fn tcp_blocks_at_a_gateway_keep_only_their_port() {
    let text = [
        ingress_gateway("shop", "db", "  - port: {number: 5432, name: pg, protocol: TCP}\n    hosts: ['*']\n"),
        vs_yaml(
            "shop",
            "db",
            concat!(
                "  hosts: [db.example.com]\n",
                "  gateways: [db]\n",
                "  tcp:\n",
                "  - match: [{port: 5432, destinationSubnets: [10.0.0.0/8], sourceSubnet: 192.168.0.0/16, sourceLabels: {app: x}}]\n",
                "    route: [{destination: {host: db}}]\n",
            ),
        ),
    ]
    .concat();
    let plan = plan(&text);
    let block = &plan.listeners[0].servers[0].tcp[0].matches[0];
    assert_eq!(block.port, Some(5432));
    assert!(block.destination_subnets.is_empty() && block.source_subnet.is_none() && block.source_labels.is_empty());
}

/// Root `istio-system/bookinfo` for bookinfo.example.com at the ingress:
/// `/productpage` delegated to `delegate` (its namespace `bookinfo`), the
/// rest to `web`.
fn delegating_root(delegate: &str) -> String {
    vs_yaml(
        "istio-system",
        "bookinfo",
        &format!(
            concat!(
                "  hosts: [bookinfo.example.com]\n  gateways: [ingress]\n  http:\n",
                "  - name: pp\n    match: [{{uri: {{prefix: /productpage}}}}]\n",
                "    delegate: {{name: {}, namespace: bookinfo}}\n    timeout: 5s\n",
                "  - name: rest\n    route: [{{destination: {{host: web.shop.svc.cluster.local}}}}]\n",
            ),
            delegate
        ),
    )
}

/// `(name, uri prefix or exact path, destination host)` of each rule.
fn rule_summary(routes: &[crate::route::HttpRoute]) -> Vec<(String, String, String)> {
    routes
        .iter()
        .map(|route| {
            let uri = route.matches.first().and_then(|m| m.uri.as_ref()).map(|u| match &u.matcher {
                crate::route::StringMatcher::Exact(path) => format!("={path}"),
                crate::route::StringMatcher::Prefix(prefix) => prefix.clone(),
                crate::route::StringMatcher::Regex(pattern) => format!("~{}", pattern.as_str()),
            });
            let RouteAction::Forward(destinations) = &route.action else { panic!("{route:?}") };
            (route.name.clone().unwrap_or_default(), uri.unwrap_or_default(), destinations[0].host.clone())
        })
        .collect()
}

#[test]
fn a_delegated_rule_routes_by_the_delegates_rules_within_the_roots_match() {
    let child = vs_yaml(
        "bookinfo",
        "productpage",
        concat!(
            "  http:\n",
            "  - name: v1\n    match: [{uri: {prefix: /productpage/v1}, headers: {x-user: {exact: jason}}}]\n",
            "    route: [{destination: {host: productpage-v1}}]\n",
            "  - match: [{uri: {prefix: /static}}]\n    route: [{destination: {host: static}}]\n",
            "  - route: [{destination: {host: productpage}}]\n    timeout: 1s\n",
        ),
    );
    let text = [ingress_gateway("istio-system", "ingress", HTTP80), delegating_root("productpage"), child].concat();
    let model = model(&text);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    let shown: Vec<String> = model.warnings.iter().map(|w| format!("{}/{} {}", w.namespace, w.name, w.field)).collect();
    assert_eq!(
        shown,
        ["istio-system/bookinfo spec.http[0].delegate"],
        "the delegate rule outside /productpage is reported on the root; the used delegate is not warned about"
    );
    assert!(model.warnings[0].message.contains("rule 1 of VirtualService bookinfo/productpage is left out"));
    let plan = GatewayPlan::compile(&model, &ingress());
    let listener = &plan.listeners[0];
    let (_, host) = listener.route(None, "bookinfo.example.com").expect("routed");
    assert_eq!(host.virtual_services, ["istio-system/bookinfo"]);
    assert_eq!(
        rule_summary(&host.routes),
        [
            ("pp-v1".into(), "/productpage/v1".into(), "productpage-v1.bookinfo.svc.cluster.local".into()),
            ("pp".into(), "/productpage".into(), "productpage.bookinfo.svc.cluster.local".into()),
            ("rest".into(), String::new(), "web.shop.svc.cluster.local".into()),
        ],
        "the delegate's short names resolve in its namespace; an unmatched delegate rule takes the root's match"
    );
    assert_eq!(host.routes[0].matches[0].headers.len(), 1, "the delegate's header condition stays");
    let timeouts: Vec<Option<u64>> = host.routes.iter().map(|r| r.timeout.map(|t| t.as_secs())).collect();
    assert_eq!(timeouts, [Some(5), Some(1), None], "the root rule's timeout where the delegate sets none");
}

#[test]
fn a_missing_delegate_is_reported_on_the_root_which_keeps_its_other_rules() {
    let text = [ingress_gateway("istio-system", "ingress", HTTP80), delegating_root("nowhere")].concat();
    let model = model(&text);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    let warnings: Vec<String> = model.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["t.yaml: VirtualService istio-system/bookinfo: spec.http[0].delegate: no VirtualService \
             bookinfo/nowhere exists: this rule routes nothing"]
    );
    let plan = GatewayPlan::compile(&model, &ingress());
    let (_, host) = plan.listeners[0].route(None, "bookinfo.example.com").expect("routed");
    assert_eq!(rule_summary(&host.routes), [("rest".into(), String::new(), "web.shop.svc.cluster.local".into())]);
}

#[test]
fn a_delegate_that_delegates_again_or_has_hosts_stands_for_nothing() {
    // One level only: Istio rejects a delegate that delegates.
    let again = vs_yaml(
        "bookinfo",
        "productpage",
        "  http:\n  - delegate: {name: deeper}\n  - route: [{destination: {host: productpage}}]\n",
    );
    let text = [ingress_gateway("istio-system", "ingress", HTTP80), delegating_root("productpage"), again].concat();
    let first = model(&text);
    let rejected: Vec<(&str, &str)> = first.rejections.iter().map(|r| (r.name.as_str(), r.field.as_str())).collect();
    assert_eq!(rejected, [("productpage", "spec.http[0].delegate")]);
    let warned: Vec<(&str, &str)> = first.warnings.iter().map(|w| (w.name.as_str(), w.field.as_str())).collect();
    assert_eq!(warned, [("bookinfo", "spec.http[0].delegate")]);
    assert!(first.warnings[0].message.contains("bookinfo/productpage is rejected"), "{}", first.warnings[0].message);
    let plan = GatewayPlan::compile(&first, &ingress());
    let (_, host) = plan.listeners[0].route(None, "bookinfo.example.com").expect("routed");
    assert_eq!(host.routes.len(), 1, "the root's own rule only");

    // A VirtualService with hosts is no delegate; one without hosts that
    // nobody delegates to is reported as routing nothing.
    let with_hosts = vs_yaml(
        "bookinfo",
        "productpage",
        "  hosts: [productpage]\n  http:\n  - route: [{destination: {host: productpage}}]\n",
    );
    let unused = vs_yaml("bookinfo", "unused", "  http:\n  - route: [{destination: {host: productpage}}]\n");
    let text = [ingress_gateway("istio-system", "ingress", HTTP80), delegating_root("productpage"), with_hosts, unused]
        .concat();
    let second = model(&text);
    assert!(second.rejections.is_empty(), "{:?}", second.rejections);
    let warned: Vec<(&str, &str)> = second.warnings.iter().map(|w| (w.name.as_str(), w.field.as_str())).collect();
    assert_eq!(warned, [("bookinfo", "spec.http[0].delegate"), ("unused", "spec.hosts")]);
    assert!(second.warnings[0].message.contains("has hosts"), "{}", second.warnings[0].message);
    assert_eq!(second.warnings[1].message, crate::warnings::UNUSED_DELEGATE);
}

#[test]
fn a_delegate_not_exported_to_the_roots_namespace_stands_for_nothing() {
    let private = vs_yaml(
        "bookinfo",
        "productpage",
        "  exportTo: ['.']\n  http:\n  - route: [{destination: {host: productpage}}]\n",
    );
    let text = [ingress_gateway("istio-system", "ingress", HTTP80), delegating_root("productpage"), private].concat();
    let model = model(&text);
    let warned: Vec<(&str, &str)> = model.warnings.iter().map(|w| (w.name.as_str(), w.field.as_str())).collect();
    assert_eq!(warned, [("bookinfo", "spec.http[0].delegate"), ("productpage", "spec.hosts")]);
    assert!(model.warnings[0].message.contains("not exported to namespace istio-system"));
}

#[test]
fn a_gateway_no_pod_serves_is_said_on_it_and_on_its_virtual_services_once_pods_are_known() {
    let pod = |name: &str, labels: &str| {
        format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: istio-system, labels: {labels}}}\nstatus: {{podIP: 10.0.0.9}}\n")
    };
    let egress =
        gateway_yaml("istio-system", "egress", &format!("  selector: {{istio: egressgateway}}\n  servers:\n{HTTP80}"));
    let objects = [
        ingress_gateway("istio-system", "ingress", HTTP80),
        egress,
        bound_vs("shop", "web", "[web.example.com]", "[istio-system/ingress, istio-system/egress]"),
    ]
    .concat();
    let said = |model: &Model| -> Vec<(String, String, String)> {
        (model.warnings.iter())
            .map(|w| (format!("{}/{}", w.kind, w.name), w.field.clone(), w.message.clone()))
            .collect()
    };
    // A directory that lists no pods says nothing of who serves.
    assert_eq!(said(&model(&objects)), []);
    let with_ingress = format!("{objects}{}", pod("ingress-1", "{istio: ingressgateway, app: x}"));
    let found = said(&model(&with_ingress));
    let fields: Vec<(&str, &str)> = found.iter().map(|(object, field, _)| (object.as_str(), field.as_str())).collect();
    assert_eq!(fields, [("Gateway/egress", "spec.selector"), ("VirtualService/web", "spec.gateways[1]")]);
    assert!(found[0].2.contains("istio=egressgateway"), "{}", found[0].2);
    assert!(found[1].2.contains("no gateway workload serves Gateway istio-system/egress"), "{}", found[1].2);
    let both = format!("{with_ingress}{}", pod("egress-1", "{istio: egressgateway}"));
    assert_eq!(said(&model(&both)), []);
}
