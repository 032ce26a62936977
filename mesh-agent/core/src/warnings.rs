//! Warnings: the fields of a served VirtualService, DestinationRule or
//! Gateway that are set but not honoured, each with what happens instead, so that no
//! field is ignored in silence. One walk over the API types per object
//! ([`of_object`]); fields the input had that the types lack (noted when it
//! was decoded) are reported here too.
//!
//! What is honoured was read from the code that acts on each field: the
//! validation into `destination_rule` and `route` types, the snapshot
//! compiler (kernel) and the proxy. A field missing from this walk is
//! honoured; one the types lack is not, wherever it stands.

use crate::api::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, Gateway, LoadBalancerSettings, OutlierDetection,
    Resource, ServiceEntry, Sidecar, TrafficPolicy, VirtualService, WorkloadEntrySpec,
};
use crate::destination_rule::{
    DestinationRuleModel, HashKey, LoadBalancer, Policy, PolicyLevel, TlsMode, MAX_MAGLEV_TABLE_SIZE,
};
use crate::field::Path;
use crate::gateway::server::{cipher_names, ServerProtocol, SUPPORTED_CIPHER_SUITES};
use crate::host::{resolve_gateway, MESH_GATEWAY};
use crate::object::{SourcedObject, Warning, WarningReason};

/// Istio fields the API types do not have, and what happens instead.
const KNOWN_UNMODELLED: &[(&str, &str, &str)] = &[
    (
        "VirtualService",
        "spec.http[].match[].statPrefix",
        "per-route statistics are not kept; the proxy's metrics are per cluster",
    ),
    (
        "Gateway",
        "spec.servers[].tls.credentialNames",
        "not supported yet; only credentialName (one Secret) provides the server's certificate",
    ),
    (
        "Gateway",
        "spec.servers[].tls.tlsCertificates",
        "not supported yet; only serverCertificate/privateKey or credentialName provide the server's certificate",
    ),
    (
        "VirtualService",
        "spec.http[].corsPolicy.unmatchedPreflights",
        "not supported; a preflight from an origin that is not allowed is forwarded to the destination (FORWARD)",
    ),
];

/// A Gateway server in ISTIO_MUTUAL mode.
pub const GATEWAY_ISTIO_MUTUAL: &str = "ISTIO_MUTUAL needs the mesh's workload certificates, which it does not \
                                        issue yet: this server is not served";
pub const AUTO_PASSTHROUGH: &str = "AUTO_PASSTHROUGH is not supported yet; served as PASSTHROUGH: connections are \
                                    routed by SNI with the tls routes of the VirtualServices bound to the Gateway \
                                    (destinations encoded in the SNI are not read)";

/// A VirtualService without hosts (a delegate) that no served
/// VirtualService delegates to (the model knows which are).
pub const UNUSED_DELEGATE: &str = "empty: a delegate VirtualService, used only through another's `delegate`, and no \
                                   VirtualService (exported to) delegates to it: it routes nothing";

pub const ISTIO_MUTUAL: &str = "ISTIO_MUTUAL: the mesh does not encrypt pod-to-pod traffic yet; requests go in \
                                plaintext (the rest of the policy applies)";
pub const TUNNEL: &str = "not supported yet; connections go to the destination directly, without a tunnel";
pub const PROXY_PROTOCOL: &str = "not supported yet; connections go to the destination without a PROXY protocol header";

/// The warnings of `object` (none for a kind other than VirtualService,
/// DestinationRule and Gateway).
pub fn of_object(object: &SourcedObject) -> Vec<Warning> {
    let mut found = Found::default();
    match &*object.resource {
        Resource::DestinationRule(rule) => destination_rule(rule, &mut found),
        Resource::VirtualService(vs) => virtual_service(vs, &mut found),
        Resource::Gateway(gateway) => gateway_fields(gateway, &mut found),
        Resource::ServiceEntry(entry) => service_entry_fields(entry, &mut found),
        Resource::Sidecar(sidecar) => sidecar_fields(sidecar, &mut found),
        Resource::WorkloadEntry(entry) => endpoint_fields(&Path::new("spec"), &entry.spec, &mut found),
        _ => return Vec::new(),
    }
    let kind = object.resource.kind();
    for field in &object.unknown_fields {
        let pattern = pattern_of(field);
        let known = KNOWN_UNMODELLED.iter().find(|(k, p, _)| *k == kind && *p == pattern);
        match known {
            Some((_, _, message)) => found.not_honoured(field.clone(), *message),
            None => {
                let message = format!("not a field of {kind} in networking.istio.io/v1; ignored");
                found.0.push((field.clone(), message, WarningReason::UnknownField));
            }
        }
    }
    found.into_warnings(object)
}

/// A path with its list indexes blanked: `spec.http[2].route` → `spec.http[].route`.
fn pattern_of(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

/// Warnings found so far: field, message, reason.
#[derive(Default)]
struct Found(Vec<(String, String, WarningReason)>);

impl Found {
    fn not_honoured(&mut self, field: String, message: impl Into<String>) {
        self.0.push((field, message.into(), WarningReason::NotHonoured));
    }

    fn into_warnings(self, object: &SourcedObject) -> Vec<Warning> {
        (self.0.into_iter()).map(|(field, message, reason)| Warning::object(object, field, message, reason)).collect()
    }
}

fn destination_rule(rule: &DestinationRule, found: &mut Found) {
    let spec = &rule.spec;
    if spec.workload_selector.as_ref().is_some_and(|selector| selector.match_labels.is_empty()) {
        found.not_honoured(
            "spec.workloadSelector".into(),
            "has no labels: the rule applies to every client in its namespace, as if it selected all of them",
        );
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(&Path::new("spec.trafficPolicy"), policy, found);
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(&Path::new("spec").index("subsets", i).child("trafficPolicy"), policy, found);
        }
    }
}

fn traffic_policy(at: &Path, policy: &TrafficPolicy, found: &mut Found) {
    level(at, policy.load_balancer.as_ref(), policy.connection_pool.as_ref(), policy.outlier_detection.as_ref(), found);
    tls(at, policy.tls.as_ref(), found);
    let mut seen_ports = Vec::new();
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        let at = at.index("portLevelSettings", i);
        let number = port.port.as_ref().map(|p| p.number);
        if let Some(first) = number.and_then(|n| seen_ports.iter().position(|seen| *seen == Some(n))) {
            found.not_honoured(
                at.child("port").field("number"),
                format!(
                    "repeats the port of portLevelSettings[{first}]; that first entry applies and this one is ignored"
                ),
            );
        }
        seen_ports.push(number);
        level(&at, port.load_balancer.as_ref(), port.connection_pool.as_ref(), port.outlier_detection.as_ref(), found);
        tls(&at, port.tls.as_ref(), found);
    }
    if policy.retry_budget.is_some() {
        let pools = std::iter::once((at.clone(), policy.connection_pool.as_ref())).chain(
            (policy.port_level_settings.iter().enumerate())
                .map(|(i, port)| (at.index("portLevelSettings", i), port.connection_pool.as_ref())),
        );
        for (at, pool) in pools {
            if pool.and_then(|pool| pool.http.as_ref()).is_some_and(|http| http.max_retries.is_some()) {
                found.not_honoured(
                    at.child("connectionPool").child("http").field("maxRetries"),
                    "replaced by retryBudget, which bounds the retries under way instead (as Envoy's retry budget does)",
                );
            }
        }
    }
    if policy.tunnel.is_some() {
        found.not_honoured(at.field("tunnel"), TUNNEL);
    }
    if policy.proxy_protocol.is_some() {
        found.not_honoured(at.field("proxyProtocol"), PROXY_PROTOCOL);
    }
}

fn tls(at: &Path, tls: Option<&ClientTlsSettings>, found: &mut Found) {
    let Some(tls) = tls else { return };
    let at = at.child("tls");
    if tls.mode.as_deref() == Some("ISTIO_MUTUAL") {
        found.not_honoured(at.field("mode"), ISTIO_MUTUAL);
    }
    if tls.ca_crl.as_deref().is_some_and(|crl| !crl.is_empty()) {
        found.not_honoured(
            at.field("caCrl"),
            "not supported yet; server certificates are not checked against a revocation list",
        );
    }
}

/// The four fields a policy level (top, subset or port) merges.
fn level(
    at: &Path,
    load_balancer: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    found: &mut Found,
) {
    if let Some(lb) = load_balancer {
        let at = at.child("loadBalancer");
        if lb.simple.as_deref() == Some("PASSTHROUGH") {
            found.not_honoured(
                at.field("simple"),
                "PASSTHROUGH has no original destination to pass to for a service address; balanced as LEAST_REQUEST",
            );
        }
        let maglev = lb.consistent_hash.as_ref().and_then(|hash| hash.maglev.as_ref());
        if maglev.and_then(|maglev| maglev.table_size).is_some_and(|size| size > i64::from(MAX_MAGLEV_TABLE_SIZE)) {
            found.not_honoured(
                at.child("consistentHash").child("maglev").field("tableSize"),
                format!(
                    "larger than the kernel's Maglev table per service: served with a table of {MAX_MAGLEV_TABLE_SIZE}"
                ),
            );
        }
        let slow_start = matches!(lb.simple.as_deref(), None | Some("ROUND_ROBIN" | "LEAST_REQUEST" | "LEAST_CONN"))
            && lb.consistent_hash.is_none();
        if !slow_start {
            for (field, set) in
                [("warmup", lb.warmup.is_some()), ("warmupDurationSecs", lb.warmup_duration_secs.is_some())]
            {
                if set {
                    found.not_honoured(
                        at.field(field),
                        "slow start applies to ROUND_ROBIN and LEAST_REQUEST only: new endpoints get their full share \
                         at once",
                    );
                }
            }
        }
        if let Some(locality) = lb.locality_lb_setting.as_ref().filter(|l| l.enabled != Some(false)) {
            let at = at.child("localityLbSetting");
            if !locality.failover.is_empty() && outlier.is_none() {
                found.not_honoured(
                    at.field("failover"),
                    "needs outlierDetection (as in Istio): without it traffic never moves to another locality",
                );
            }
            if !locality.failover_priority.is_empty() {
                found.not_honoured(
                    at.field("failoverPriority"),
                    "not yet: endpoints are ordered by locality alone (region, zone, subzone, then failover)",
                );
            }
        }
    }
    if let Some(tcp) = pool.and_then(|pool| pool.tcp.as_ref()) {
        let at = at.child("connectionPool").child("tcp");
        if tcp.tcp_keepalive.is_some() {
            found.not_honoured(
                at.field("tcpKeepalive"),
                "not supported yet; no TCP keepalive is set on connections to the destination (the node's defaults apply)",
            );
        }
        if tcp.idle_timeout.is_some() {
            found.not_honoured(
                at.field("idleTimeout"),
                "not supported yet; idle TCP connections to the destination stay open until either side closes them",
            );
        }
    }
    if let Some(http) = pool.and_then(|pool| pool.http.as_ref()) {
        let at = at.child("connectionPool").child("http");
        if http.h2_upgrade_policy.as_deref() == Some("UPGRADE") {
            found.not_honoured(
                at.field("h2UpgradePolicy"),
                "UPGRADE is not supported yet; requests go upstream in the port's protocol (HTTP/2 only for \
                 http2 and grpc ports)",
            );
        }
        if http.use_client_protocol == Some(true) {
            found.not_honoured(
                at.field("useClientProtocol"),
                "not supported yet; requests go upstream in the port's protocol (HTTP/2 only for http2 and grpc \
                 ports), not the client's",
            );
        }
        if http.max_concurrent_streams.is_some() {
            found.not_honoured(
                at.field("maxConcurrentStreams"),
                "not supported yet; an HTTP/2 connection to the destination carries as many streams as the server \
                 allows",
            );
        }
    }
    if let Some(outlier) = outlier {
        if outlier.split_external_local_origin_errors == Some(true) {
            found.not_honoured(
                at.child("outlierDetection").field("splitExternalLocalOriginErrors"),
                "not supported yet; local-origin failures (connect errors, resets, timeouts) count as 5xx and \
                 gateway errors, and consecutiveLocalOriginFailures is not used",
            );
        }
    }
}

fn virtual_service(vs: &VirtualService, found: &mut Found) {
    let spec = &vs.spec;
    let namespace = vs.metadata.namespace_or_default();
    let block_gateways = (spec.http.iter().enumerate())
        .flat_map(|(i, r)| r.matches.iter().enumerate().map(move |(j, m)| ("http", i, j, &m.gateways)))
        .chain(
            (spec.tcp.iter().enumerate())
                .flat_map(|(i, r)| r.matches.iter().enumerate().map(move |(j, m)| ("tcp", i, j, &m.gateways))),
        )
        .chain(
            (spec.tls.iter().enumerate())
                .flat_map(|(i, r)| r.matches.iter().enumerate().map(move |(j, m)| ("tls", i, j, &m.gateways))),
        );
    for (list, i, j, gateways) in block_gateways {
        for (k, gateway) in gateways.iter().enumerate() {
            if !bound_to(&spec.gateways, gateway, namespace) {
                let at = Path::new("spec").index(list, i).index("match", j);
                found.not_honoured(
                    format!("{}[{k}]", at.field("gateways")),
                    format!(
                        "the VirtualService is not bound to {} (spec.gateways does not name it), so this match block \
                         never applies there",
                        resolve_gateway(gateway, namespace)
                    ),
                );
            }
        }
    }
    for (i, route) in spec.http.iter().enumerate() {
        let at = Path::new("spec").index("http", i);
        if let Some(fault) = &route.fault {
            let at = at.child("fault");
            if fault.abort.as_ref().is_some_and(|abort| abort.http_status.is_none() && abort.grpc_status.is_none()) {
                found.not_honoured(at.field("abort"), "has no httpStatus or grpcStatus: nothing is aborted");
            }
            if fault.delay.as_ref().is_some_and(|delay| delay.fixed_delay.is_none()) {
                found.not_honoured(at.field("delay"), "has no fixedDelay: nothing is delayed");
            }
        }
        if let Some(retries) = &route.retries {
            let at = at.child("retries");
            if retries.retry_remote_localities == Some(true) {
                found.not_honoured(
                    at.field("retryRemoteLocalities"),
                    "not supported yet; the mesh does not know localities, so retries pick among all endpoints",
                );
            }
            if retries.retry_ignore_previous_hosts == Some(false) {
                found.not_honoured(
                    at.field("retryIgnorePreviousHosts"),
                    "false is not supported yet; a retry always prefers an endpoint not tried yet",
                );
            }
        }
    }
}

fn sidecar_fields(sidecar: &Sidecar, found: &mut Found) {
    let spec = &sidecar.spec;
    for (i, egress) in spec.egress.iter().enumerate() {
        let at = Path::new("spec").index("egress", i);
        if egress.bind.is_some() || egress.capture_mode.is_some() {
            let field = if egress.bind.is_some() { "bind" } else { "captureMode" };
            found.not_honoured(at.field(field), "not used: the kernel captures connections by their destination");
        }
    }
    if !spec.ingress.is_empty() {
        found.not_honoured("spec.ingress".into(), "not yet: inbound traffic reaches the workloads directly");
    }
    if spec.inbound_connection_pool.is_some() {
        found.not_honoured("spec.inboundConnectionPool".into(), "not yet: inbound connections are not pooled");
    }
    if spec.outbound_traffic_policy.as_ref().is_some_and(|p| p.egress_proxy.is_some()) {
        found.not_honoured(
            "spec.outboundTrafficPolicy.egressProxy".into(),
            "not yet: traffic outside the registry passes through (ALLOW_ANY) or is refused (REGISTRY_ONLY)",
        );
    }
}

fn service_entry_fields(entry: &ServiceEntry, found: &mut Found) {
    let spec = &entry.spec;
    match spec.resolution.as_deref().unwrap_or("NONE") {
        "DNS_ROUND_ROBIN" => found.not_honoured(
            "spec.resolution".into(),
            "served as DNS: every answer is an endpoint, balanced as the DestinationRule says",
        ),
        "NONE" => found.not_honoured(
            "spec.resolution".into(),
            "NONE: connections pass through to the address dialled; the kernel and the proxy apply no \
             VirtualService route or DestinationRule policy to them",
        ),
        "STATIC" if !spec.addresses.iter().any(|a| !a.contains('/')) => found.not_honoured(
            "spec.addresses".into(),
            "a STATIC entry without an address has no VIP in the kernel: applications reach its endpoints only \
             through a route or a gateway naming its host",
        ),
        _ => {}
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        if address.contains('/') {
            found.not_honoured(
                format!("spec.addresses[{i}]"),
                "a CIDR block is not translated: connections to it pass through unchanged",
            );
        }
    }
    if spec.location.as_deref() == Some("MESH_INTERNAL") {
        found.not_honoured(
            "spec.location".into(),
            "MESH_INTERNAL is served as MESH_EXTERNAL: the mesh has no workload certificates yet",
        );
    }

    if !spec.subject_alt_names.is_empty() {
        found.not_honoured(
            "spec.subjectAltNames".into(),
            "not checked: the mesh has no workload certificates yet (a DestinationRule's tls.subjectAltNames is)",
        );
    }
    if spec.export_to.iter().any(|to| to != "*") {
        found.not_honoured(
            "spec.exportTo".into(),
            "visible to every namespace: the kernel translates the entry's addresses for every pod",
        );
    }
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        endpoint_fields(&Path::new("spec").index("endpoints", i), endpoint, found);
    }
}

/// What a ServiceEntry endpoint or a WorkloadEntry sets that is not used.
fn endpoint_fields(at: &Path, endpoint: &WorkloadEntrySpec, found: &mut Found) {
    let set = [
        ("network", endpoint.network.is_some(), "one network: the endpoint is dialled directly"),
        ("weight", endpoint.weight.is_some(), "endpoints are balanced with equal weights"),
        ("serviceAccount", endpoint.service_account.is_some(), "the mesh has no workload identities yet"),
    ];
    for (field, present, message) in set {
        if present {
            found.not_honoured(at.field(field), message);
        }
    }
}

fn gateway_fields(gateway: &Gateway, found: &mut Found) {
    for (i, server) in gateway.spec.servers.iter().enumerate() {
        let at = Path::new("spec").index("servers", i);
        if server.default_endpoint.as_deref().is_some_and(|e| !e.is_empty()) {
            found.not_honoured(at.field("defaultEndpoint"), "not implemented (by Istio either); ignored");
        }
        let protocol = server.port.as_ref().and_then(|p| p.protocol.as_deref()).unwrap_or_default();
        let parsed = ServerProtocol::parse(protocol);
        if let Some((served, true)) = parsed {
            found.not_honoured(
                at.child("port").field("protocol"),
                format!("{protocol} is not understood at the gateway: served as {}", served.as_str()),
            );
        }
        let Some(tls) = &server.tls else { continue };
        let at = at.child("tls");
        let is_http = parsed.is_some_and(|(p, _)| p.is_http());
        if tls.https_redirect == Some(true) && !is_http {
            found.not_honoured(at.field("httpsRedirect"), "only plaintext HTTP servers redirect to https; ignored");
        }
        let mode = tls.mode.as_deref().filter(|m| !m.is_empty()).unwrap_or("PASSTHROUGH");
        let is_set = |value: &Option<String>| value.as_deref().is_some_and(|v| !v.is_empty());
        let files = [
            ("serverCertificate", &tls.server_certificate),
            ("privateKey", &tls.private_key),
            ("caCertificates", &tls.ca_certificates),
        ];
        match mode {
            "AUTO_PASSTHROUGH" => found.not_honoured(at.field("mode"), AUTO_PASSTHROUGH),
            "ISTIO_MUTUAL" if !is_http => found.not_honoured(at.field("mode"), GATEWAY_ISTIO_MUTUAL),
            _ => {}
        }
        let terminates = matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") && !is_http;
        if matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH") || is_http {
            let used = files.iter().map(|(f, v)| (*f, *v)).chain([("credentialName", &tls.credential_name)]);
            for (field, value) in used {
                if is_set(value) {
                    let why = if is_http { "a plaintext HTTP server" } else { "PASSTHROUGH" };
                    found.not_honoured(at.field(field), format!("{why} uses no certificates; ignored"));
                }
            }
        } else if terminates && is_set(&tls.credential_name) {
            for (field, value) in files {
                if is_set(value) {
                    found.not_honoured(
                        at.field(field),
                        "credentialName provides the certificates; this file is ignored",
                    );
                }
            }
        } else if mode == "SIMPLE" && is_set(&tls.ca_certificates) {
            found.not_honoured(at.field("caCertificates"), "SIMPLE asks for no client certificate; ignored");
        }
        if mode == "SIMPLE" && !tls.subject_alt_names.is_empty() {
            found.not_honoured(at.field("subjectAltNames"), "SIMPLE asks for no client certificate; ignored");
        }
        if is_set(&tls.ca_crl) && terminates {
            found.not_honoured(
                at.field("caCrl"),
                "not supported yet; client certificates are not checked against a revocation list",
            );
        }
        for (field, list) in [
            ("verifyCertificateSpki", &tls.verify_certificate_spki),
            ("verifyCertificateHash", &tls.verify_certificate_hash),
        ] {
            if !list.is_empty() && terminates {
                found.not_honoured(
                    at.field(field),
                    "not supported yet; client certificates are not pinned: any the CA signs is accepted",
                );
            }
        }
        for (field, version) in
            [("minProtocolVersion", &tls.min_protocol_version), ("maxProtocolVersion", &tls.max_protocol_version)]
        {
            if terminates && matches!(version.as_deref(), Some("TLSV1_0" | "TLSV1_1")) {
                found.not_honoured(
                    at.field(field),
                    "TLS 1.0 and 1.1 are not offered (the gateway speaks TLS 1.2 and 1.3): served as TLSV1_2",
                );
            }
        }
        let unknown: Vec<String> = (cipher_names(&tls.cipher_suites).into_iter())
            .filter(|name| !SUPPORTED_CIPHER_SUITES.contains(&name.as_str()))
            .collect();
        if terminates && !unknown.is_empty() {
            found.not_honoured(
                at.field("cipherSuites"),
                format!(
                    "{} not offered by the gateway, so left out (it offers {})",
                    unknown.join(", "),
                    SUPPORTED_CIPHER_SUITES.join(", ")
                ),
            );
        }
    }
}

/// Whether a VirtualService in `namespace` bound to `bound` (empty: the
/// mesh) applies at `gateway` as a match block names it.
fn bound_to(bound: &[String], gateway: &str, namespace: &str) -> bool {
    let gateway = resolve_gateway(gateway, namespace);
    if bound.is_empty() {
        return gateway == MESH_GATEWAY;
    }
    bound.iter().any(|g| resolve_gateway(g, namespace) == gateway)
}

/// What the model knows of a Gateway a VirtualService names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayPresence {
    /// No Gateway object of that `namespace/name`.
    Missing,
    /// Defined, but no pod the source lists carries its selector's labels
    /// (`selector` as `key=value,...`): no gateway process applies it.
    Unserved { selector: String },
    /// Defined, and a gateway workload (or an unknown set of pods) may
    /// apply it.
    Served,
}

/// A VirtualService (served as `object`) naming in `spec.gateways` a
/// Gateway that no Gateway object defines, or that no gateway workload
/// serves, as `lookup` (by `namespace/name`) finds it.
pub fn gateway_references(object: &SourcedObject, lookup: &dyn Fn(&str) -> GatewayPresence) -> Vec<Warning> {
    let Resource::VirtualService(vs) = &*object.resource else { return Vec::new() };
    let namespace = vs.metadata.namespace_or_default();
    (vs.spec.gateways.iter().enumerate())
        .map(|(i, gateway)| (i, resolve_gateway(gateway, namespace)))
        .filter(|(_, gateway)| gateway != MESH_GATEWAY)
        .filter_map(|(i, gateway)| {
            let message = match lookup(&gateway) {
                GatewayPresence::Served => return None,
                GatewayPresence::Missing => format!(
                    "no Gateway {gateway} exists; no gateway applies this VirtualService there until one is defined"
                ),
                GatewayPresence::Unserved { selector } => format!(
                    "no gateway workload serves Gateway {gateway}: no pod has its selector's labels ({selector}), \
                     so no gateway applies this VirtualService there"
                ),
            };
            Some(Warning::object(object, format!("spec.gateways[{i}]"), message, WarningReason::NotHonoured))
        })
        .collect()
}

/// A Gateway (served as `object`) whose selector no pod matches, said on
/// its selector: nothing serves it (Istio's analyzer says the same as
/// IST0101).
pub fn gateway_unserved(object: &SourcedObject, selector: &str) -> Warning {
    let message = format!(
        "no pod has the labels {selector}: no gateway workload applies this Gateway (run `mesh-agent gateway` \
         with these labels)"
    );
    Warning::object(object, "spec.selector".into(), message, WarningReason::NotHonoured)
}

/// How the connections to a TCP service port are served, when not by the
/// HTTP proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPath {
    /// The kernel balances them alone (the port is not captured).
    Kernel,
    /// The proxy relays them as TCP (`tcp` or `tls` routes).
    TcpProxy,
}

/// The fields of `rule` (served as `object`) that only the HTTP proxy acts
/// on, set for a TCP service port served by `path`: there they do not
/// apply. In the kernel only the top level (or its entry for the port)
/// counts, as subsets are reached only through routes; through the TCP
/// proxy, the subsets' levels too.
pub fn proxy_only_fields(
    rule: &DestinationRuleModel,
    object: &SourcedObject,
    service: &str,
    port: u16,
    path: PortPath,
) -> Vec<Warning> {
    let level_at = |at: Path, policy: &'_ Policy| -> (Path, PolicyLevel) {
        match policy.ports.get(&port) {
            Some(entry) => (at.index("portLevelSettings", entry.index), entry.level.clone()),
            None => (at, policy.base.clone()),
        }
    };
    let mut levels: Vec<(Path, PolicyLevel)> =
        rule.policy.iter().map(|p| level_at(Path::new("spec.trafficPolicy"), p)).collect();
    if path == PortPath::TcpProxy {
        for (i, subset) in rule.subsets.iter().enumerate() {
            if let Some(policy) = &subset.policy {
                levels.push(level_at(Path::new("spec").index("subsets", i).child("trafficPolicy"), policy));
            }
        }
    }
    let where_ = match path {
        PortPath::Kernel => format!(
            "not applied to port {port} of Service {service}: the kernel balances its connections without the proxy \
             (no route or rule needs the proxy there)"
        ),
        PortPath::TcpProxy => {
            format!("not applied to port {port} of Service {service}: the proxy relays its connections as plain TCP")
        }
    };
    let mut found = Found::default();
    for (at, level) in levels {
        if level.outlier_detection.is_some() {
            found.not_honoured(at.field("outlierDetection"), format!("{where_}, so no endpoint is ejected"));
        }
        if level.tls.as_ref().is_some_and(|tls| matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual)) {
            found.not_honoured(at.child("tls").field("mode"), format!("{where_}, so connections go without TLS"));
        }
        let algorithm = level.load_balancer.as_ref().map(|lb| &lb.algorithm);
        if let Some(LoadBalancer::ConsistentHash {
            key: HashKey::HttpHeaderName(_) | HashKey::HttpCookie(_) | HashKey::HttpQueryParameterName(_),
            ..
        }) = algorithm
        {
            found.not_honoured(
                at.child("loadBalancer").field("consistentHash"),
                format!("{where_}, and a TCP connection has no HTTP header, cookie or query to hash on"),
            );
        }
        if path == PortPath::Kernel && level.load_balancer.as_ref().is_some_and(|lb| lb.warmup.is_some()) {
            found.not_honoured(
                at.child("loadBalancer").field("warmup"),
                format!("{where_}, so new endpoints get their full share at once"),
            );
        }
        let tcp = level.connection_pool.as_ref().and_then(|pool| pool.tcp.as_ref());
        if tcp.is_some_and(|tcp| tcp.max_connection_duration.is_some()) {
            found.not_honoured(
                at.child("connectionPool").child("tcp").field("maxConnectionDuration"),
                format!("{where_}, and it limits HTTP connections only"),
            );
        }
        if path == PortPath::Kernel && tcp.is_some_and(|tcp| tcp.connect_timeout.is_some()) {
            found.not_honoured(
                at.child("connectionPool").child("tcp").field("connectTimeout"),
                format!("{where_}, so the client's own connect timeout applies"),
            );
        }
    }
    found.into_warnings(object)
}

/// A rule with a `workloadSelector` (served as `object`) covering a TCP
/// service port the kernel balances alone: the kernel cannot tell clients
/// apart by their labels.
pub fn selector_on_kernel_port(object: &SourcedObject, service: &str, port: u16) -> Warning {
    let message = format!(
        "not applied to port {port} of Service {service}: the kernel balances its connections alike for every \
         client, so the clients this rule selects get the rule for all clients there"
    );
    Warning::object(object, "spec.workloadSelector".into(), message, WarningReason::NotHonoured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::parse_file;

    fn warnings(text: &str) -> Vec<(String, String)> {
        let objects = parse_file("w.yaml", text).expect("decodes");
        objects.iter().flat_map(of_object).map(|w| (w.field, w.message)).collect()
    }

    fn fields(text: &str) -> Vec<String> {
        warnings(text).into_iter().map(|(field, _)| field).collect()
    }

    fn rule(spec: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: web, namespace: shop}}\nspec:\n  host: web\n{spec}")
    }

    fn vs(spec: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n{spec}")
    }

    #[test]
    fn unsupported_destination_rule_fields_warn_by_path() {
        let text = rule(concat!(
            "  trafficPolicy:\n",
            "    tunnel: {targetHost: proxy.example, targetPort: 8080}\n",
            "    connectionPool: {tcp: {tcpKeepalive: {time: 10s}}, http: {maxConcurrentStreams: 10}}\n",
            "    tls: {mode: SIMPLE, caCrl: /etc/certs/crl.pem}\n",
            "    portLevelSettings:\n",
            "    - port: {number: 80}\n",
            "      loadBalancer: {simple: PASSTHROUGH, localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [x]}}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy: {proxyProtocol: {version: V2}, colour: red}\n",
        ));
        let found = warnings(&text);
        let shown: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            shown,
            [
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
                "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
                "spec.trafficPolicy.tls.caCrl",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.simple",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.failover",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting.failoverPriority",
                "spec.trafficPolicy.tunnel",
                "spec.subsets[0].trafficPolicy.proxyProtocol",
                "spec.subsets[0].trafficPolicy.colour",
            ]
        );
        assert!(found[4].1.contains("needs outlierDetection"), "{}", found[4].1);
        assert_eq!(found[6].1, TUNNEL);
        assert_eq!(found[7].1, PROXY_PROTOCOL);
        assert_eq!(found[8].1, "not a field of DestinationRule in networking.istio.io/v1; ignored");
    }

    #[test]
    fn istio_mutual_warns_wherever_it_is_set() {
        let text = rule(concat!(
            "  trafficPolicy:\n",
            "    tls: {mode: ISTIO_MUTUAL}\n",
            "    portLevelSettings:\n",
            "    - port: {number: 80}\n",
            "      tls: {mode: ISTIO_MUTUAL}\n",
            "  subsets:\n",
            "  - name: v1\n",
            "    labels: {version: v1}\n",
            "    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n",
            "  - name: v2\n",
            "    labels: {version: v2}\n",
            "    trafficPolicy: {tls: {mode: DISABLE}}\n",
        ));
        let found = warnings(&text);
        assert!(found.iter().all(|(_, message)| message == ISTIO_MUTUAL), "{found:?}");
        let shown: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            shown,
            [
                "spec.trafficPolicy.tls.mode",
                "spec.trafficPolicy.portLevelSettings[0].tls.mode",
                "spec.subsets[0].trafficPolicy.tls.mode",
            ]
        );
    }

    #[test]
    fn settings_that_cannot_take_effect_together_warn() {
        let text = rule(concat!(
            "  workloadSelector: {}\n",
            "  trafficPolicy:\n",
            "    loadBalancer: {simple: RANDOM, warmup: {duration: 10s}}\n",
            "    connectionPool: {http: {maxRetries: 3}}\n",
            "    retryBudget: {percent: 20}\n",
            "    portLevelSettings:\n",
            "    - {port: {number: 80}, loadBalancer: {consistentHash: {maglev: {tableSize: 1000033}}}}\n",
            "    - {port: {number: 80}, outlierDetection: {}}\n",
        ));
        assert_eq!(
            fields(&text),
            [
                "spec.workloadSelector",
                "spec.trafficPolicy.loadBalancer.warmup",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer.consistentHash.maglev.tableSize",
                "spec.trafficPolicy.portLevelSettings[1].port.number",
                "spec.trafficPolicy.connectionPool.http.maxRetries",
            ]
        );
        let text = vs(concat!(
            "  http:\n",
            "  - fault: {abort: {percentage: {value: 10}}, delay: {percentage: {value: 10}}}\n",
            "    route: [{destination: {host: web}}]\n",
        ));
        assert_eq!(fields(&text), ["spec.http[0].fault.abort", "spec.http[0].fault.delay"]);
        // A delegate is warned about by the model, which knows whether one delegates to it.
        let delegate = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: d, namespace: shop}\nspec:\n  http: [{route: [{destination: {host: web}}]}]\n";
        assert_eq!(fields(delegate), Vec::<String>::new());
    }

    #[test]
    fn honoured_fields_do_not_warn() {
        let text = rule(concat!(
            "  exportTo: ['.']\n",
            "  workloadSelector: {matchLabels: {app: client}}\n",
            "  trafficPolicy:\n",
            "    loadBalancer:\n",
            "      consistentHash: {httpCookie: {name: u, ttl: 10s, path: /}, minimumRingSize: 1024}\n",
            "      localityLbSetting: {enabled: false}\n",
            "    connectionPool:\n",
            "      tcp: {maxConnections: 10, connectTimeout: 1s, maxConnectionDuration: 1h}\n",
            "      http: {http1MaxPendingRequests: 5, http2MaxRequests: 5, maxRequestsPerConnection: 1, idleTimeout: 1m, h2UpgradePolicy: DO_NOT_UPGRADE, useClientProtocol: false}\n",
            "    outlierDetection: {consecutive5xxErrors: 3, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50, minHealthPercent: 10}\n",
            "    tls: {mode: SIMPLE, sni: web.example, subjectAltNames: [web.example]}\n",
            "    retryBudget: {percent: 20}\n",
            "  subsets:\n",
            "  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 10s}}}}\n",
        ));
        assert_eq!(warnings(&text), []);
        let text = vs(concat!(
            "  exportTo: ['*']\n",
            "  gateways: [mesh, istio-system/ingress]\n",
            "  http:\n",
            "  - name: main\n",
            "    match: [{uri: {prefix: /}, headers: {x-user: {exact: a}}, sourceLabels: {app: a}, ignoreUriCase: true, port: 80}]\n",
            "    route: [{destination: {host: web, port: {number: 80}}, weight: 100, headers: {request: {set: {a: b}}}}]\n",
            "    timeout: 5s\n",
            "    retries: {attempts: 2, perTryTimeout: 1s, retryOn: 5xx, retryIgnorePreviousHosts: true}\n",
            "    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowOrigin: ['https://b.example'], maxAge: 1h}\n",
            "    mirror: {host: shadow}\n",
            "    mirrorPercentage: {value: 5}\n",
            "  tcp:\n",
            "  - match: [{port: 9000, sourceSubnet: 10.0.0.0/8, destinationSubnets: [10.96.0.0/12], sourceLabels: {app: a}, sourceNamespace: shop, gateways: [mesh]}]\n",
            "    route: [{destination: {host: db}}]\n",
        ));
        assert_eq!(warnings(&text), []);
    }

    #[test]
    fn unsupported_virtual_service_fields_warn_by_path() {
        let text = vs(concat!(
            "  http:\n",
            "  - match: [{uri: {prefix: /}, statPrefix: web, gateways: [ingress]}]\n",
            "    route: [{destination: {host: web}}]\n",
            "    retries: {attempts: 2, retryRemoteLocalities: true, retryIgnorePreviousHosts: false}\n",
            "    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], unmatchedPreflights: IGNORE}\n",
            "    futureField: 1\n",
        ));
        assert_eq!(
            fields(&text),
            [
                "spec.http[0].match[0].gateways[0]",
                "spec.http[0].retries.retryRemoteLocalities",
                "spec.http[0].retries.retryIgnorePreviousHosts",
                // Fields the types lack come after, by key.
                "spec.http[0].corsPolicy.unmatchedPreflights",
                "spec.http[0].futureField",
                "spec.http[0].match[0].statPrefix",
            ]
        );
        assert!(warnings(&text)[0].1.contains("not bound to shop/ingress"), "{:?}", warnings(&text)[0]);
    }

    #[test]
    fn gateway_names_warn_when_no_gateway_or_binding_backs_them() {
        let text = vs(concat!(
            "  gateways: [istio-system/ingress, ./edge, mesh, egress]\n",
            "  http:\n",
            "  - match: [{gateways: [istio-system/ingress]}, {gateways: [ingress]}, {gateways: [mesh]}]\n",
            "    route: [{destination: {host: web}}]\n",
            "  tcp:\n",
            "  - match: [{gateways: [shop/egress, other]}]\n",
            "    route: [{destination: {host: web}}]\n",
        ));
        let found = warnings(&text);
        let shown: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(shown, ["spec.http[0].match[1].gateways[0]", "spec.tcp[0].match[0].gateways[1]"]);
        assert!(found[0].1.contains("not bound to shop/ingress"), "{}", found[0].1);
        // Which of the bound ones exist is the model's to say.
        let objects = parse_file("w.yaml", &text).unwrap();
        let lookup = |gateway: &str| match gateway {
            "istio-system/ingress" => GatewayPresence::Served,
            "shop/egress" => GatewayPresence::Unserved { selector: "istio=egressgateway".into() },
            _ => GatewayPresence::Missing,
        };
        let missing: Vec<(String, String)> =
            gateway_references(&objects[0], &lookup).into_iter().map(|w| (w.field, w.message)).collect();
        assert_eq!(
            missing,
            [
                (
                    "spec.gateways[1]".to_owned(),
                    "no Gateway shop/edge exists; no gateway applies this VirtualService there until one is defined"
                        .to_owned()
                ),
                (
                    "spec.gateways[3]".to_owned(),
                    "no gateway workload serves Gateway shop/egress: no pod has its selector's labels \
                     (istio=egressgateway), so no gateway applies this VirtualService there"
                        .to_owned()
                ),
            ]
        );
    }

    fn gateway(servers: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: shop}}\nspec:\n  servers:\n{servers}")
    }

    #[test]
    fn gateway_fields_not_honoured_warn_by_path() {
        let text = gateway(concat!(
            "  - port: {number: 80, name: http, protocol: GRPC-WEB}\n",
            "    hosts: ['*']\n",
            "    defaultEndpoint: 127.0.0.1:8080\n",
            "    tls: {httpsRedirect: true, credentialName: ignored}\n",
            "  - port: {number: 443, name: https, protocol: HTTPS}\n",
            "    hosts: ['*']\n",
            "    tls:\n",
            "      httpsRedirect: true\n",
            "      mode: MUTUAL\n",
            "      credentialName: cert\n",
            "      serverCertificate: /c\n",
            "      verifyCertificateSpki: [abc]\n",
            "      verifyCertificateHash: [def]\n",
            "      minProtocolVersion: TLSV1_1\n",
            "      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES256-SHA]\n",
            "      credentialNames: [a, b]\n",
            "  - port: {number: 8443, name: pass, protocol: TLS}\n",
            "    hosts: ['*']\n",
            "    tls: {mode: AUTO_PASSTHROUGH, privateKey: /k}\n",
            "  - port: {number: 9443, name: mesh, protocol: TLS}\n",
            "    hosts: ['*']\n",
            "    tls: {mode: ISTIO_MUTUAL}\n",
            "  - port: {number: 10443, name: simple, protocol: HTTPS}\n",
            "    hosts: ['*']\n",
            "    tls: {mode: SIMPLE, serverCertificate: /c, privateKey: /k, caCertificates: /ca, subjectAltNames: [x]}\n",
        ));
        let found = warnings(&text);
        let shown: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            shown,
            [
                "spec.servers[0].defaultEndpoint",
                "spec.servers[0].port.protocol",
                "spec.servers[0].tls.credentialName",
                "spec.servers[1].tls.httpsRedirect",
                "spec.servers[1].tls.serverCertificate",
                "spec.servers[1].tls.verifyCertificateSpki",
                "spec.servers[1].tls.verifyCertificateHash",
                "spec.servers[1].tls.minProtocolVersion",
                "spec.servers[1].tls.cipherSuites",
                "spec.servers[2].tls.mode",
                "spec.servers[2].tls.privateKey",
                "spec.servers[3].tls.mode",
                "spec.servers[4].tls.caCertificates",
                "spec.servers[4].tls.subjectAltNames",
                "spec.servers[1].tls.credentialNames",
            ]
        );
        assert_eq!(found[1].1, "GRPC-WEB is not understood at the gateway: served as HTTP");
        assert!(found[8].1.starts_with("AES256-SHA not offered"), "{}", found[8].1);
        assert_eq!(found[9].1, AUTO_PASSTHROUGH);
        assert_eq!(found[11].1, GATEWAY_ISTIO_MUTUAL);
        // A plain one warns of nothing.
        let plain = gateway("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n    tls: {mode: SIMPLE, credentialName: c, cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]}\n");
        assert_eq!(warnings(&plain), []);
    }

    #[test]
    fn a_field_the_types_lack_warns_also_under_an_honoured_one() {
        // Honoured fields, spelled right, warn of nothing.
        let text = rule(concat!(
            "  workloadSelector: {matchLabels: {app: web}}\n",
            "  trafficPolicy:\n",
            "    retryBudget: {percent: 20, minRetryConcurrency: 2}\n",
            "    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 30s, minimumPercent: 10, aggression: 1}}\n",
        ));
        assert_eq!(fields(&text), Vec::<String>::new());
        // A typo under one of them is no field of the kind.
        let typo = text.replace("minRetryConcurrency", "minRetryConcurency");
        assert_eq!(fields(&typo), ["spec.trafficPolicy.retryBudget.minRetryConcurency"]);
        // Istio's TLS match has no sourceSubnet (its TCP match does).
        let tls = vs(concat!(
            "  tls:\n",
            "  - match: [{port: 443, sniHosts: [web], sourceSubnet: 10.0.0.0/8}]\n",
            "    route: [{destination: {host: web}}]\n",
        ));
        let found = warnings(&tls);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "spec.tls[0].match[0].sourceSubnet");
        assert_eq!(found[0].1, "not a field of VirtualService in networking.istio.io/v1; ignored");
    }
}
