//! The proxies measured beside the agent's: the mesh's configuration and
//! nginx's, HAProxy's and Envoy's, and starting a peer until it answers.

use anyhow::Result;
use mesh_tests::tls::Pki;
use mesh_tests::{TestEnv, NODE_IPV4};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::plan::{
    PathKind, BACKEND_IP, BACKEND_PORT, H2_BACKEND_PORT, H2_SERVICE_IP, MESHED_BACKEND_IP, PROXY_CPU,
    REMOTE_SERVICE_IP, SERVICE_IP, SERVICE_PORT,
};
use super::procs::{kill_cgroup, place, Cgroups};
use super::tools::Tools;

/// A peer (or the backend) must answer within this after it starts.
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Two HTTP services with a VirtualService each (so the kernel sends them
/// to the proxy): `web` in front of the meshed backend pod, `web-remote` in
/// front of the one outside the mesh.
pub(super) fn mesh_config() -> String {
    [("web", SERVICE_IP, MESHED_BACKEND_IP.0), ("web-remote", REMOTE_SERVICE_IP, BACKEND_IP.0)]
        .map(|(name, cluster_ip, backend)| http_service(name, cluster_ip, backend))
        .join("---\n")
}

/// `count` more HTTP services, each with an endpoint and a VirtualService,
/// on addresses of their own (10.100.0.0/16).
pub(super) fn filler_config(count: u32) -> String {
    (0..count)
        .map(|i| {
            let ip = format!("10.100.{}.{}", i / 250, i % 250 + 1);
            http_service(&format!("filler-{i}"), &ip, MESHED_BACKEND_IP.0)
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `web-h2`: the meshed backend pod's HTTP/2 server behind a service whose
/// port says HTTP/2 (`appProtocol: kubernetes.io/h2c`, and the name), so the
/// proxy speaks HTTP/2 to it; with a VirtualService, as `web`.
pub(super) fn h2_config() -> String {
    service_yaml("web-h2", H2_SERVICE_IP, MESHED_BACKEND_IP.0, ("http2", Some("kubernetes.io/h2c")), H2_BACKEND_PORT)
}

/// An HTTP service at `cluster_ip` with `backend` as its endpoint and a
/// VirtualService (so the kernel sends it to the proxy).
fn http_service(name: &str, cluster_ip: &str, backend: &str) -> String {
    service_yaml(name, cluster_ip, backend, ("http", None), BACKEND_PORT)
}

/// A service at `cluster_ip` whose port has `port`'s name and appProtocol,
/// with `backend:backend_port` as its endpoint and a VirtualService.
fn service_yaml(
    name: &str,
    cluster_ip: &str,
    backend: &str,
    (port_name, app_protocol): (&str, Option<&str>),
    backend_port: u16,
) -> String {
    let app_protocol = app_protocol.map(|p| format!(", appProtocol: {p}")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n\
         spec: {{clusterIP: {cluster_ip}, ports: [{{name: {port_name}{app_protocol}, port: {SERVICE_PORT}, targetPort: {backend_port}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: {port_name}, port: {backend_port}}}]\nendpoints: [{{addresses: [{backend}]}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bench}}\n\
         spec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n"
    )
}

/// `connections`: client connections nginx must hold at once (it
/// preallocates a slot per worker connection, before the RSS "before").
fn nginx_config(dir: &Path, connections: u32) -> String {
    let d = dir.display();
    // Each client connection may take an upstream one too.
    let workers = (connections + 1024).max(4096);
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         worker_rlimit_nofile {files};\nevents {{ worker_connections {workers}; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_timeout 300s;\n  keepalive_requests 100000000;\n\
           upstream backend {{\n    server {backend}:{BACKEND_PORT};\n    keepalive 128;\n    keepalive_requests 100000000;\n    keepalive_timeout 300s;\n  }}\n\
           server {{\n    listen {target} backlog=4096;\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        backend = BACKEND_IP.0,
        target = PathKind::Nginx.target(),
        files = (workers * 2).min(open_files_hard_limit()),
    )
}

/// What nginx may raise its workers' open files to (without
/// CAP_SYS_RESOURCE, not past the hard limit).
fn open_files_hard_limit() -> u32 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => limit.rlim_max.min(u64::from(u32::MAX)) as u32,
        _ => 4096,
    }
}

/// nginx terminating TLS with the bench's certificate, otherwise as above.
fn nginx_tls_config(dir: &Path, pki: &Pki, connections: u32) -> String {
    nginx_config(dir, connections).replace(
        &format!("    listen {} backlog=4096;\n", PathKind::Nginx.target()),
        &format!(
            "    listen {} ssl backlog=4096;\n    ssl_certificate {};\n    ssl_certificate_key {};\n",
            PathKind::NginxTls.target(),
            pki.server_cert.display(),
            pki.server_key.display(),
        ),
    )
}

/// The gateway's configuration: an HTTPS server with the bench's
/// certificate, routing everything to the backend pod outside the mesh.
fn gateway_config(pki: &Pki) -> String {
    let (cert, key) = (pki.server_cert.display(), pki.server_key.display());
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: bench}}\n\
         spec: {{ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web, namespace: bench, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {BACKEND_PORT}}}]\nendpoints: [{{addresses: [{backend}]}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: bench, namespace: bench}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 18443, name: https, protocol: HTTPS}}\n\
         \x20   hosts: ['*']\n    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: bench}}\n\
         spec:\n  hosts: ['*']\n  gateways: [bench]\n  http:\n  - route:\n    - destination: {{host: web}}\n",
        backend = BACKEND_IP.0,
    )
}

fn haproxy_config() -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\n\
         defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n\
         frontend fe\n  bind {target}\n  default_backend be\n\
         backend be\n  server b1 {backend}:{BACKEND_PORT}\n",
        backend = BACKEND_IP.0,
        target = PathKind::Haproxy.target(),
    )
}

fn envoy_config() -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: {node}, port_value: 18082}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: HTTP1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {backend}, port_value: {BACKEND_PORT}}}}}}}
"#,
        node = NODE_IPV4,
        backend = BACKEND_IP.0,
    )
}

/// A peer proxy running in its own cgroup in the node namespace, on the
/// proxy CPU. Stopping it kills the whole cgroup (nginx's master and
/// worker alike).
pub(super) struct Peer {
    child: Child,
    pub(super) cgroup: PathBuf,
}

impl Peer {
    pub(super) fn stop(mut self) {
        kill_cgroup(&self.cgroup);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the peer `kind` in the node namespace and waits until it answers;
/// the error says why it cannot run (then the path is listed unavailable).
pub(super) fn start_peer(
    kind: PathKind,
    tools: &Tools,
    env: &TestEnv,
    cgroups: &Cgroups,
    dir: &Path,
    connections: u32,
) -> Result<Peer, String> {
    let dir = dir.join(kind.name());
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let log = File::create(dir.join("output.log")).map_err(|e| e.to_string())?;
    // The TLS peers serve the bench's certificate; the readiness check trusts its CA.
    let pki = match kind.scheme() {
        "https" => Some(mesh_tests::tls::make_pki(&dir, &["bench.mesh.test"]).map_err(|e| format!("{e:#}"))?),
        _ => None,
    };
    let mut cmd = match kind {
        PathKind::Nginx => {
            let nginx = tools.nginx.clone()?;
            std::fs::write(dir.join("nginx.conf"), nginx_config(&dir, connections)).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).args(["-e", "stderr"]);
            cmd
        }
        PathKind::Haproxy => {
            let haproxy = tools.haproxy.clone()?;
            std::fs::write(dir.join("haproxy.cfg"), haproxy_config()).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(haproxy);
            // -db: foreground, one process.
            cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
            cmd
        }
        PathKind::Envoy => {
            let envoy = tools.envoy.clone()?;
            std::fs::write(dir.join("envoy.yaml"), envoy_config()).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(envoy);
            cmd.arg("-c").arg(dir.join("envoy.yaml")).args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ]);
            cmd
        }
        PathKind::NginxTls => {
            let nginx = tools.nginx.clone()?;
            let pki = pki.as_ref().ok_or("no certificate")?;
            std::fs::write(dir.join("nginx.conf"), nginx_tls_config(&dir, pki, connections))
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-p").arg(&dir).arg("-c").arg(dir.join("nginx.conf")).args(["-e", "stderr"]);
            cmd
        }
        PathKind::Gateway => {
            let pki = pki.as_ref().ok_or("no certificate")?;
            let config = dir.join("config");
            std::fs::create_dir_all(&config).map_err(|e| e.to_string())?;
            std::fs::write(config.join("gateway.yaml"), gateway_config(pki)).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(mesh_tests::agent_bin());
            cmd.arg("gateway").arg("--config-dir").arg(&config);
            cmd.args(["--labels", "istio=ingressgateway", "--listen-ip", NODE_IPV4, "--admin", "127.0.0.1:18999"]);
            cmd
        }
        PathKind::Direct | PathKind::DirectBpf | PathKind::Mesh | PathKind::MeshManyServices | PathKind::MeshRemote => {
            return Err("not a peer".into())
        }
    };
    let cgroup = cgroups.child(kind.name()).map_err(|e| format!("{e:#}"))?;
    place(&mut cmd, &cgroup, &env.node_netns_path(), PROXY_CPU).map_err(|e| format!("{e:#}"))?;
    let stderr = log.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", kind.name()))?;
    let mut peer = Peer { child, cgroup };
    let target: SocketAddr = kind.target().parse().expect("a socket address");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = peer.child.try_wait() {
            let output = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
            peer.stop();
            return Err(format!("{} exited ({status}): {}", kind.name(), last_line(&output)));
        }
        let answers = match &pki {
            Some(pki) => https_answers(&env.node_netns_path(), target, &pki.ca),
            None => get_from(&env.node_netns_path(), target).is_ok_and(|status| status == 200),
        };
        if answers {
            return Ok(peer);
        }
        if Instant::now() > deadline {
            let output = std::fs::read_to_string(dir.join("output.log")).unwrap_or_default();
            peer.stop();
            return Err(format!("{} did not answer within {START_TIMEOUT:?}: {}", kind.name(), last_line(&output)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned()
}

/// Whether a GET over TLS from inside `netns` (curl, trusting `ca`)
/// answers 200.
fn https_answers(netns: &Path, target: SocketAddr, ca: &Path) -> bool {
    let url = format!("https://bench.mesh.test:{}/", target.port());
    let resolve = format!("bench.mesh.test:{}:{}", target.port(), target.ip());
    let output = mesh_tests::in_netns(netns, || {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "--resolve", &resolve, "--cacert"])
            .arg(ca)
            .arg(&url)
            .output()
    });
    matches!(output, Ok(Ok(out)) if out.stdout == b"200")
}

/// One GET from inside `netns`: the status code.
pub(super) fn get_from(netns: &Path, target: SocketAddr) -> Result<u16> {
    Ok(mesh_tests::in_netns(netns, || mesh_tests::http_get(target, "/"))??.0)
}
