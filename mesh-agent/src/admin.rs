//! The node admin API: `/healthz`, `/readyz`, `/config_dump`, `/status`
//! (what `meshctl` reads) and `/metrics` (Prometheus text).

use crate::dataplane::{CounterReader, Counters, DataplaneInfo};
use crate::report::{
    BackendStatus, ConfigStatus, DataplaneStatus, EjectedHost, ProgramStatus, ServiceStatus, StatusReport,
    UpstreamPoolStatus, WorkloadStatus,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_core::published::Published;
use mesh_core::snapshot::{backend_key, ServicePortView};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Default admin address (Envoy's admin port).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";

/// Everything the admin API reads.
pub struct Shared {
    pub version: &'static str,
    pub started: Instant,
    pub source: String,
    /// The API-server source's store, for its watch states.
    pub watches: Option<crate::k8s::KubeStore>,
    /// Set while this agent holds the status Lease.
    pub status_writer: Option<Arc<AtomicBool>>,
    /// The kernel programs and their counters (none at a gateway).
    pub dataplane: Option<DataplaneInfo>,
    pub counters: Option<CounterReader>,
    pub published: watch::Receiver<Arc<Published>>,
    /// Where the L7 proxy listens (empty: capture is off).
    pub proxy_listeners: Vec<std::net::SocketAddr>,
    /// The proxy, for its metrics and outlier state.
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Set once the agent stops or hands over: `/readyz` answers 503.
    pub stopping: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin address {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr).await.map_err(|source| AdminError::Bind { addr, source })
}

/// What a listener answers: everything, or only the probes (for an address
/// that kubelet reaches, while the rest stays on loopback).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    All,
    HealthOnly,
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, endpoints: Endpoints) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&shared, request, endpoints)) }
            });
            if let Err(error) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn handle(shared: &Shared, request: Request<Incoming>, endpoints: Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let path = request.uri().path();
    if endpoints == Endpoints::HealthOnly && !matches!(path, "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found; this address serves /healthz and /readyz\n".into());
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if shared.stopping.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "stopping: draining, or handing over to a successor\n".into())
            } else if shared.published.borrow().ready {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "the first configuration is not in the kernel maps yet\n".into())
            }
        }
        "/status" => json(&status_report(shared)),
        // What /status says of the configuration's application, alone:
        // cheap to ask in a loop at any size (did my change apply yet?).
        "/reloads" => {
            let published = shared.published.borrow();
            json(&serde_json::json!({"reloads": published.reloads, "last_reload": published.last_reload}))
        }
        "/config_dump" => json(&config_dump(shared)),
        "/routes" => json(&routes(shared)),
        "/metrics" => {
            let body = metrics(shared);
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8".parse().expect("static header"),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /status /reloads /config_dump /routes /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    response
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

/// One service port's status; `proxy_on`: the kernel has a proxy address
/// to capture to (else it balances every port itself).
fn service_status(service: &ServicePortView, counters: &Counters, proxy_on: bool) -> ServiceStatus {
    let stats = counters.clusters.get(&service.cluster_id).copied().unwrap_or_default();
    ServiceStatus {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        port: service.port,
        protocol: format!("{:?}", service.protocol).to_uppercase(),
        frontends: service.frontends.iter().map(ToString::to_string).collect(),
        // Without a proxy address nothing is captured: the kernel balances.
        captured: service.captured && proxy_on,
        load_balancer: service.load_balancer.clone(),
        max_connections: service.max_connections,
        live_connections: counters.cluster_live.get(&service.cluster_id).copied().unwrap_or(0),
        connects: stats.connects,
        overflows: stats.overflows,
        no_backend: stats.no_backend,
        udp_datagrams: stats.udp_datagrams,
        backends: service
            .backends
            .iter()
            .map(|b| BackendStatus {
                address: b.address.to_string(),
                target: b.target.as_deref().map(str::to_owned),
                live_connections: counters.backend_live.get(&backend_key(b.address)).copied().unwrap_or(0),
            })
            .collect(),
    }
}

/// The kernel's counters now (none at a gateway).
fn read_counters(shared: &Shared) -> Counters {
    shared.counters.as_ref().map(CounterReader::read).unwrap_or_default()
}

pub fn status_report(shared: &Shared) -> StatusReport {
    let published = shared.published.borrow().clone();
    let counters = read_counters(shared);
    let program_stats = crate::dataplane::program_stats();
    StatusReport {
        version: shared.version.to_owned(),
        uptime_seconds: shared.started.elapsed().as_secs(),
        ready: published.ready,
        dataplane: shared.dataplane.as_ref().map(|dataplane| DataplaneStatus {
            cgroup: dataplane.cgroup.display().to_string(),
            bpffs: dataplane.bpffs.display().to_string(),
            maps_taken_over: dataplane.maps_taken_over,
            programs: dataplane
                .programs
                .iter()
                .map(|p| {
                    let stats = program_stats.get(&p.id).filter(|(runs, _)| *runs > 0);
                    ProgramStatus {
                        name: p.name.to_owned(),
                        attach_type: p.attach_type.to_owned(),
                        run_count: stats.map(|(runs, _)| *runs),
                        mean_run_ns: stats.map(|(runs, total)| *total as f64 / *runs as f64),
                    }
                })
                .collect(),
        }),
        gateway_listeners: shared.proxy.gateway_listeners(),
        proxy_listeners: shared.proxy_listeners.iter().map(ToString::to_string).collect(),
        upstream_pools: shared
            .proxy
            .pools()
            .into_iter()
            .map(|p| UpstreamPoolStatus {
                endpoint: p.endpoint.to_string(),
                in_flight: p.in_flight,
                http1_idle: p.http1_idle,
                http2_connections: p.http2_connections,
            })
            .collect(),
        ejected_hosts: shared
            .proxy
            .ejections()
            .into_iter()
            .map(|(cluster, e)| EjectedHost {
                cluster,
                host: e.host.to_string(),
                times_ejected: e.times_ejected,
                remaining_ms: e.remaining_ms,
            })
            .collect(),
        config: ConfigStatus {
            source: shared.source.clone(),
            watches: shared.watches.as_ref().map(|store| store.state()),
            status_writer: shared.status_writer.as_ref().map(|leading| leading.load(Ordering::Relaxed)),
            reloads: published.reloads,
            last_reload: published.last_reload.clone(),
            rejections: published.snapshot.rejections.iter().map(ToString::to_string).collect(),
            warnings: published.snapshot.model.warnings.iter().map(ToString::to_string).collect(),
        },
        kernel_counters: counters.global.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        // A gateway balances no service port in a kernel: its routes say
        // where requests go (`meshctl routes`).
        workloads: (published.snapshot.outbound.views.iter())
            .map(|w| WorkloadStatus {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                cgroup_id: w.cgroup_id,
                outbound_policy: match w.policy {
                    mesh_core::sidecar::OutboundPolicy::AllowAny => "ALLOW_ANY".into(),
                    mesh_core::sidecar::OutboundPolicy::RegistryOnly => "REGISTRY_ONLY".into(),
                },
                sidecar: w.sidecar.clone(),
                refused: (counters.refused_by_workload.get(&w.cgroup_id))
                    .map(|s| s.refused_registry + s.refused_scope)
                    .unwrap_or(0),
            })
            .collect(),
        services: match shared.dataplane {
            Some(_) => published
                .snapshot
                .services
                .iter()
                .map(|s| service_status(s, &counters, !shared.proxy_listeners.is_empty()))
                .collect(),
            None => Vec::new(),
        },
    }
}

/// The compiled route table per host, and which service ports the kernel
/// sends to the proxy.
fn routes(shared: &Shared) -> serde_json::Value {
    // A gateway routes per listener, by the Gateways that select it.
    if let Some(state) = shared.proxy.gateway_state() {
        let listeners: Vec<serde_json::Value> = (state.plan.listeners.iter().zip(&state.bound_ports))
            .map(|(listener, bound_port)| serde_json::json!({ "bound_port": bound_port, "listener": listener }))
            .collect();
        return serde_json::json!({ "listeners": listeners, "skipped_servers": state.plan.skipped });
    }
    let published = shared.published.borrow().clone();
    let snapshot = &published.snapshot;
    let captured: Vec<String> = snapshot
        .services
        .iter()
        .filter(|s| s.captured)
        .map(|s| format!("{}/{}:{}", s.namespace, s.name, s.port))
        .collect();
    serde_json::json!({ "captured": captured, "routes": &*snapshot.routes })
}

fn config_dump(shared: &Shared) -> serde_json::Value {
    let published = shared.published.borrow().clone();
    let snapshot = &published.snapshot;
    serde_json::json!({
        "version": shared.version,
        "source": shared.source,
        "reloads": published.reloads,
        "last_reload": published.last_reload,
        "kernel_maps": {
            "frontends": snapshot.frontends.len(),
            "backend_slots": snapshot.slots.len(),
            "maglev_tables": snapshot.maglev.len(),
            "workloads": snapshot.outbound.workloads.len(),
            "registry": snapshot.outbound.registry.len(),
            "egress_scopes": snapshot.outbound.scope_clusters.len(),
            "sizes": snapshot.model.node.map_sizes,
        },
        "services": snapshot.services,
        "rejected": snapshot.rejections.iter().map(|r| serde_json::json!({
            "file": r.file,
            "kind": r.kind,
            "namespace": r.namespace,
            "name": r.name,
            "field": r.field,
            "message": r.message,
            "error": r.to_string(),
        })).collect::<Vec<_>>(),
        "warnings": snapshot.model.warnings.iter().map(|w| serde_json::json!({
            "file": w.file,
            "kind": w.kind,
            "namespace": w.namespace,
            "name": w.name,
            "field": w.field,
            "message": w.message,
            "reason": w.reason,
            "warning": w.to_string(),
        })).collect::<Vec<_>>(),
    })
}

type Labels = Vec<(String, String)>;

fn metrics(shared: &Shared) -> String {
    let published = shared.published.borrow().clone();
    let counters = read_counters(shared);
    let mut registry = Registry::with_prefix("mesh");

    let decisions = Family::<Labels, Counter>::default();
    for (name, value) in &counters.global {
        decisions.get_or_create(&vec![("decision".into(), (*name).to_owned())]).inc_by(*value);
    }
    registry.register("kernel_decisions", "Kernel program decisions and drops, by reason", decisions);

    let connects = Family::<Labels, Counter>::default();
    let overflows = Family::<Labels, Counter>::default();
    let no_backend = Family::<Labels, Counter>::default();
    let datagrams = Family::<Labels, Counter>::default();
    let live = Family::<Labels, Gauge>::default();
    let backend_live = Family::<Labels, Gauge>::default();
    let backends_ready = Family::<Labels, Gauge>::default();
    for service in published.snapshot.services.iter() {
        let status = service_status(service, &counters, !shared.proxy_listeners.is_empty());
        let labels: Labels = vec![
            ("namespace".into(), service.namespace.clone()),
            ("service".into(), service.name.clone()),
            ("port".into(), service.port.to_string()),
            ("protocol".into(), status.protocol.clone()),
        ];
        connects.get_or_create(&labels).inc_by(status.connects);
        overflows.get_or_create(&labels).inc_by(status.overflows);
        no_backend.get_or_create(&labels).inc_by(status.no_backend);
        datagrams.get_or_create(&labels).inc_by(status.udp_datagrams);
        live.get_or_create(&labels).set(status.live_connections as i64);
        backends_ready.get_or_create(&labels).set(status.backends.len() as i64);
        for backend in &status.backends {
            let mut with_backend = labels.clone();
            with_backend.push(("backend".into(), backend.address.clone()));
            backend_live.get_or_create(&with_backend).set(backend.live_connections as i64);
        }
    }
    registry.register("service_connects", "Connects translated to a backend", connects);
    registry.register("service_connect_overflows", "Connects refused at connectionPool.tcp.maxConnections", overflows);
    registry.register("service_no_backend", "Connects or datagrams refused for lack of a ready backend", no_backend);
    registry.register("service_udp_datagrams", "Unconnected UDP datagrams translated", datagrams);
    registry.register("service_live_connections", "Live TCP connections per service port on this node", live);
    registry.register("service_ready_backends", "Ready backends per service port", backends_ready);
    registry.register("backend_live_connections", "Live TCP connections per backend on this node", backend_live);

    let refused = Family::<Labels, Counter>::default();
    for workload in &published.snapshot.outbound.views {
        let stats = counters.refused_by_workload.get(&workload.cgroup_id).copied().unwrap_or_default();
        for (reason, count) in [("registry_only", stats.refused_registry), ("sidecar_egress", stats.refused_scope)] {
            let labels: Labels = vec![
                ("namespace".into(), workload.namespace.clone()),
                ("pod".into(), workload.name.clone()),
                ("reason".into(), reason.into()),
            ];
            refused.get_or_create(&labels).inc_by(count);
        }
    }
    registry.register(
        "workload_refused_connects",
        "Connects and datagrams refused by a workload's outbound traffic policy, in the kernel",
        refused,
    );

    shared.proxy.metrics.register(&mut registry);
    let open = Gauge::<i64>::default();
    open.set(shared.proxy.drain.open() as i64);
    registry.register("proxy_open_connections", "Client connections the proxy has open", open);
    let ejected = Family::<Labels, Gauge>::default();
    for (cluster, _) in shared.proxy.ejections() {
        ejected.get_or_create(&vec![("cluster".into(), cluster)]).inc();
    }
    registry.register("outlier_ejected_hosts", "Hosts ejected by outlier detection right now", ejected);

    let rejected = Gauge::<i64>::default();
    rejected.set(published.snapshot.rejections.len() as i64);
    registry.register("config_rejected_objects", "Objects or files not served as written", rejected);
    let warnings = Gauge::<i64>::default();
    warnings.set(published.snapshot.model.warnings.len() as i64);
    registry.register("config_warnings", "Fields of serving objects that are set but not honoured", warnings);
    let reloads = Counter::<u64>::default();
    reloads.inc_by(published.reloads);
    registry.register("config_reloads", "Configuration reloads", reloads);
    if let Some(last) = &published.last_reload {
        let seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        seconds.set(last.duration_micros as f64 / 1e6);
        registry.register(
            "config_last_reload_duration_seconds",
            "The last reload, from the source's batch to the maps written",
            seconds,
        );
        let writes = Gauge::<i64>::default();
        writes.set((last.map_upserts + last.map_deletes) as i64);
        registry.register(
            "config_last_reload_map_writes",
            "Kernel map entries the last reload wrote or deleted",
            writes,
        );
    }

    let mut body = String::new();
    if let Err(error) = encode(&mut body, &registry) {
        tracing::warn!(%error, "encoding metrics failed");
    }
    body
}
