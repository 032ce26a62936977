//! The node status report: served as JSON at `/status`, read by `meshctl`.

use mesh_core::published::ReloadStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_seconds: u64,
    pub ready: bool,
    /// The kernel programs (none at a gateway).
    #[serde(default)]
    pub dataplane: Option<DataplaneStatus>,
    /// A gateway's listeners (none on a node).
    #[serde(default)]
    pub gateway_listeners: Vec<crate::proxy::gateway_state::ListenerStatus>,
    /// Where the L7 proxy listens; empty when capture is off.
    #[serde(default)]
    pub proxy_listeners: Vec<String>,
    /// Hosts ejected by outlier detection right now.
    #[serde(default)]
    pub ejected_hosts: Vec<EjectedHost>,
    /// Upstream endpoints the proxy talks to.
    #[serde(default)]
    pub upstream_pools: Vec<UpstreamPoolStatus>,
    pub config: ConfigStatus,
    /// Global kernel decision and drop counters, summed over CPUs.
    pub kernel_counters: BTreeMap<String, u64>,
    /// The pods of this node with an outbound policy (`--pod-cgroups`).
    #[serde(default)]
    pub workloads: Vec<WorkloadStatus>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub namespace: String,
    pub name: String,
    pub cgroup_id: u64,
    /// `ALLOW_ANY` or `REGISTRY_ONLY`.
    pub outbound_policy: String,
    /// `namespace/name` of the Sidecar that set it (none: the mesh default).
    pub sidecar: Option<String>,
    /// Connects and datagrams the kernel refused for it.
    pub refused: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub cgroup: String,
    pub bpffs: String,
    pub maps_taken_over: bool,
    pub programs: Vec<ProgramStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub attach_type: String,
    /// Runs and mean run time, when the kernel keeps run statistics.
    pub run_count: Option<u64>,
    pub mean_run_ns: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub source: String,
    /// The API-server source's watches (absent for a directory).
    #[serde(default)]
    pub watches: Option<crate::k8s::SourceState>,
    /// Whether this agent holds the status Lease and writes conditions
    /// (absent for a directory).
    #[serde(default)]
    pub status_writer: Option<bool>,
    pub reloads: u64,
    pub last_reload: Option<ReloadStatus>,
    /// Every object or file not served as written, with the reason.
    pub rejections: Vec<String>,
    /// Every field of a serving object that is set but not honoured, with
    /// what happens instead.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpstreamPoolStatus {
    pub endpoint: String,
    pub in_flight: usize,
    /// Idle pooled HTTP/1.1 connections.
    #[serde(default)]
    pub http1_idle: usize,
    /// Open HTTP/2 connections.
    #[serde(default)]
    pub http2_connections: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EjectedHost {
    pub cluster: String,
    pub host: String,
    pub times_ejected: u32,
    pub remaining_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub frontends: Vec<String>,
    /// Connects go to the node proxy (L7 rules).
    #[serde(default)]
    pub captured: bool,
    pub load_balancer: String,
    pub max_connections: u32,
    pub live_connections: u64,
    pub connects: u64,
    pub overflows: u64,
    pub no_backend: u64,
    pub udp_datagrams: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub target: Option<String>,
    pub live_connections: u64,
}

impl DataplaneStatus {
    fn render(&self, out: &mut String, proxy_listeners: &[String]) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "kernel: {} programs attached to cgroup {}{} (pins {}{})",
            self.programs.iter().filter(|p| p.attach_type != "sk_msg").count(),
            self.cgroup,
            if self.programs.iter().any(|p| p.attach_type == "sk_msg") { ", sk_msg on the sock hash" } else { "" },
            self.bpffs,
            if self.maps_taken_over { ", maps taken over from a previous agent" } else { "" }
        );
        let names: Vec<String> = self
            .programs
            .iter()
            .map(|p| match (p.run_count, p.mean_run_ns) {
                (Some(runs), Some(ns)) if runs > 0 => format!("{} ({runs} runs, {ns:.0} ns each)", p.attach_type),
                _ => p.attach_type.clone(),
            })
            .collect();
        let _ = writeln!(out, "  programs: {}", names.join(", "));
        if proxy_listeners.is_empty() {
            let _ = writeln!(out, "proxy: off (no --node-ip): every service is balanced in the kernel");
        } else {
            let _ = writeln!(out, "proxy: listening on {}", proxy_listeners.join(", "));
        }
    }
}

impl StatusReport {
    /// The human-readable form `meshctl status` prints.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mesh-agent {}  up {}s  {}",
            self.version,
            self.uptime_seconds,
            if self.ready { "ready" } else { "NOT READY" }
        );
        match &self.dataplane {
            Some(dataplane) => dataplane.render(&mut out, &self.proxy_listeners),
            None => {
                let _ = writeln!(out, "gateway: {} listeners (no kernel programs)", self.gateway_listeners.len());
            }
        }
        for listener in &self.gateway_listeners {
            let _ = writeln!(out, "  port {} ({})", listener.port, listener.kind);
            for server in &listener.servers {
                let tls = match (&server.tls_mode, &server.tls_error) {
                    (Some(mode), None) => format!(", tls {mode}"),
                    (Some(mode), Some(error)) => format!(", tls {mode} NOT SERVING: {error}"),
                    (None, _) => String::new(),
                };
                let _ =
                    writeln!(out, "    {} {} hosts {}{tls}", server.gateway, server.protocol, server.hosts.join(", "));
                if let Some(certificate) = &server.certificate {
                    let _ = writeln!(out, "      certificate: {}", certificate.describe(std::time::SystemTime::now()));
                }
                for virtual_service in &server.virtual_services {
                    let _ = writeln!(out, "      routes: {virtual_service}");
                }
            }
        }
        if !self.upstream_pools.is_empty() {
            let pools: Vec<String> = self
                .upstream_pools
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} in flight, {} idle{})",
                        p.endpoint,
                        p.in_flight,
                        p.http1_idle,
                        match p.http2_connections {
                            0 => String::new(),
                            n => format!(", {n} h2"),
                        }
                    )
                })
                .collect();
            let _ = writeln!(out, "  upstreams: {}", pools.join(", "));
        }
        for e in &self.ejected_hosts {
            let _ = writeln!(
                out,
                "  ejected: {} in {} ({} times; back in {} ms)",
                e.host, e.cluster, e.times_ejected, e.remaining_ms
            );
        }
        let _ = writeln!(out, "config: {}  reloads: {}", self.config.source, self.config.reloads);
        if let Some(watches) = &self.config.watches {
            let _ = writeln!(out, "  watches: {}", if watches.synced { "synced" } else { "SYNCING" });
            for kind in &watches.kinds {
                let _ = writeln!(
                    out,
                    "    {:<18} {:>6} objects  {}{}",
                    kind.name,
                    kind.objects,
                    if kind.synced { "listed" } else { "listing" },
                    kind.error.as_ref().map(|e| format!("  FAILING: {e}")).unwrap_or_default()
                );
            }
        }
        if let Some(writer) = self.config.status_writer {
            let role = if writer { "this agent (lease holder)" } else { "another agent" };
            let _ = writeln!(out, "  status conditions written by: {role}");
        }
        if let Some(reload) = &self.config.last_reload {
            let _ = writeln!(
                out,
                "  last reload: {}s ago, {} µs, {} map writes, {} deletes{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|now| now.as_secs().saturating_sub(reload.at_unix))
                    .unwrap_or(0),
                reload.duration_micros,
                reload.map_upserts,
                reload.map_deletes,
                reload.error.as_ref().map(|e| format!(", FAILED: {e}")).unwrap_or_default()
            );
        }
        if self.config.rejections.is_empty() {
            let _ = writeln!(out, "  rejected: none");
        } else {
            let _ = writeln!(out, "  rejected ({}):", self.config.rejections.len());
            for rejection in &self.config.rejections {
                let _ = writeln!(out, "    - {rejection}");
            }
        }
        // Shown only when there are some: most configurations have none.
        if !self.config.warnings.is_empty() {
            let _ = writeln!(out, "  warnings ({}):", self.config.warnings.len());
            for warning in &self.config.warnings {
                let _ = writeln!(out, "    - {warning}");
            }
        }
        if self.dataplane.is_none() {
            // A gateway: no kernel counters, no kernel-balanced services.
            return out;
        }
        let counters: Vec<String> =
            self.kernel_counters.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "kernel counters: {}",
            if counters.is_empty() { "all zero".into() } else { counters.join(" ") }
        );
        if !self.workloads.is_empty() {
            let _ = writeln!(out, "workloads ({}):", self.workloads.len());
            for w in &self.workloads {
                let _ = writeln!(
                    out,
                    "  {:<40} {:<13} {:>6} refused  {}",
                    format!("{}/{}", w.namespace, w.name),
                    w.outbound_policy,
                    w.refused,
                    w.sidecar.as_deref().map(|s| format!("(Sidecar {s})")).unwrap_or_else(|| "(mesh default)".into())
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<32} {:<6} {:<26} {:>6} {:>6} {:>9} {:>9} {:>9}",
            "SERVICE", "PROTO", "LB", "LIMIT", "LIVE", "CONNECTS", "OVERFLOW", "NO-BACKEND"
        );
        for s in &self.services {
            let limit = if s.max_connections == 0 { "-".to_owned() } else { s.max_connections.to_string() };
            let connects = s.connects + s.udp_datagrams;
            let _ = writeln!(
                out,
                "{:<32} {:<6} {:<26} {:>6} {:>6} {:>9} {:>9} {:>9}",
                format!("{}/{}:{}", s.namespace, s.name, s.port),
                s.protocol,
                if s.captured { format!("L7 proxy ({})", s.load_balancer) } else { s.load_balancer.clone() },
                limit,
                s.live_connections,
                connects,
                s.overflows,
                s.no_backend
            );
            if s.backends.is_empty() {
                let _ = writeln!(out, "    (no ready backend: connects fail at once)");
            }
            for b in &s.backends {
                let _ = writeln!(
                    out,
                    "    -> {:<40} live {:>5}  {}",
                    b.address,
                    b.live_connections,
                    b.target.as_deref().unwrap_or("")
                );
            }
        }
        out
    }
}
