//! The world every L7 bench runs in: the client pod, the backend pods
//! with their servers, and the agent on the node; and the backend server
//! itself (`cargo xtask bench l7-backend`).

use crate::workspace::build_release_with_xtask;
use anyhow::{bail, Context, Result};
use mesh_tests::{Pod, TestEnv};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::peers::{get_from, mesh_config, START_TIMEOUT};
use super::plan::{
    PathKind, BACKEND_IP, BACKEND_PORT, BODY_BYTES, CLIENT_CPU, CLIENT_IP, MESHED_BACKEND_IP, PROXY_CPU,
};
use super::procs::{pin_process, place, Cgroups};

/// The tiny backend every path ends at: one thread, tokio + hyper, HTTP/1.1
/// keep-alive (or, with `http2`, HTTP/2 with prior knowledge), 1 KiB of `x`
/// per response. Runs until killed (`cargo xtask bench l7-backend`, started
/// by the bench in a backend pod).
pub fn backend(port: u16, http2: bool) -> Result<()> {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::header::{HeaderValue, CONTENT_TYPE};
    use hyper::Response;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        let body = Bytes::from(vec![b'x'; BODY_BYTES]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let io = TokioIo::new(stream);
                let _ = match http2 {
                    true => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                    false => hyper::server::conn::http1::Builder::new().serve_connection(io, service).await,
                };
            });
        }
    })
}

/// The benches install packages, load BPF programs and make namespaces.
pub(super) fn require_root() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark installs packages, loads BPF programs and makes namespaces: run as root");
    }
    Ok(())
}

/// The first of the errors the agent logged during a bench, if any.
pub(super) fn print_agent_errors(agent_log: &str) {
    let errors: Vec<&str> = agent_log.lines().filter(|l| l.contains(" ERROR ")).take(10).collect();
    if !errors.is_empty() {
        eprintln!("bench: the agent logged errors:\n{}", errors.join("\n"));
    }
}

/// What every L7 bench runs in: a client pod, the backend pods with their
/// servers (one outside the mesh, one meshed), and the agent on the node
/// serving [`mesh_config`], pinned to the proxy CPU and checked to answer.
pub(super) struct World {
    // Dropped in this order: the processes before the namespaces they run in.
    pub(super) backends: Vec<Backend>,
    pub(super) cgroups: Cgroups,
    pub(super) backend_cgroup: std::path::PathBuf,
    pub(super) client: Pod,
    pub(super) meshed_backend_pod: Pod,
    /// The release build of this command, which is the backend server.
    pub(super) xtask: std::path::PathBuf,
    pub(super) peers_dir: std::path::PathBuf,
    pub(super) agent_pid: u32,
    pub(super) env: TestEnv,
}

impl World {
    pub(super) fn new(name: &str) -> Result<World> {
        let built = build_release_with_xtask()?;
        std::env::set_var("MESH_AGENT_BIN", &built.agent);
        std::env::set_var("MESH_PROBE_BIN", &built.probe);
        // This process (and what it starts, unless placed elsewhere) stays
        // off the proxy's CPU.
        pin_process(std::process::id(), CLIENT_CPU).context("pinning the bench to CPU 0")?;
        let env = TestEnv::new(name)?;
        let cgroups = Cgroups::create(env.cgroup_path())?;
        let client = env.add_pod("client", CLIENT_IP.0, CLIENT_IP.1);
        let backend_pod = env.add_pod("backend", BACKEND_IP.0, BACKEND_IP.1);
        let meshed_backend_pod = env.add_pod("meshed", MESHED_BACKEND_IP.0, MESHED_BACKEND_IP.1);
        let peers_dir = env.config_dir().parent().context("config dir has a parent")?.join("peers");
        std::fs::create_dir_all(&peers_dir)?;
        let backend_cgroup = cgroups.child("backend")?;
        let backends = [(&backend_pod, &backend_cgroup), (&meshed_backend_pod, &cgroups.meshed_backend)]
            .map(|(pod, cgroup)| start_backend(&built.xtask, &client, pod, cgroup, BACKEND_PORT, false));
        let backends = backends.into_iter().collect::<Result<Vec<Backend>>>()?;
        env.write_config("web.yaml", &mesh_config())?;
        env.start_agent_on_node(&[])?;
        let agent_pid = env.agent_pid().context("agent pid")?;
        pin_process(agent_pid, PROXY_CPU)?;
        for kind in [PathKind::Mesh, PathKind::MeshRemote] {
            let probe = env.probe(&client, &["http", "--target", &kind.target(), "--count", "20"])?;
            if probe["ok"] != 20 {
                bail!("requests to {} through the agent failed: {probe}\n{}", kind.target(), env.agent_log());
            }
        }
        Ok(World {
            backends,
            cgroups,
            backend_cgroup,
            client,
            meshed_backend_pod,
            xtask: built.xtask,
            peers_dir,
            agent_pid,
            env,
        })
    }

    /// One more backend server in the meshed backend pod, on `port`; it
    /// lives as long as the world.
    pub(super) fn add_meshed_backend(&mut self, port: u16, http2: bool) -> Result<()> {
        let (pod, cgroup) = (&self.meshed_backend_pod, &self.cgroups.meshed_backend);
        let backend = start_backend(&self.xtask, &self.client, pod, cgroup, port, http2)?;
        self.backends.push(backend);
        Ok(())
    }
}

/// A backend server process; dropping it kills it.
pub(super) struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The backend server (this xtask's release build, one thread) in `pod`
/// and `cgroup` on `port`, answering the client pod: a GET for HTTP/1.1;
/// for HTTP/2, whose check is the bench's own client, a TCP connect.
fn start_backend(xtask: &Path, client: &Pod, pod: &Pod, cgroup: &Path, port: u16, http2: bool) -> Result<Backend> {
    let mut cmd = Command::new(xtask);
    cmd.args(["bench", "l7-backend", "--port", &port.to_string()]);
    if http2 {
        cmd.arg("--http2");
    }
    place(&mut cmd, cgroup, &pod.netns_path(), CLIENT_CPU)?;
    let mut backend = Backend(cmd.stdin(Stdio::null()).spawn().context("starting the backend")?);
    let addr = SocketAddr::from((pod.ipv4(), port));
    let answers = || match http2 {
        true => mesh_tests::in_netns(&client.netns_path(), || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
        })
        .is_ok_and(|connected| connected.is_ok()),
        false => get_from(&client.netns_path(), addr).is_ok_and(|s| s == 200),
    };
    if !mesh_tests::wait_until(START_TIMEOUT, answers) {
        if let Ok(Some(status)) = backend.0.try_wait() {
            bail!("the backend for {addr} exited: {status}");
        }
        bail!("the backend at {addr} did not answer within {START_TIMEOUT:?}");
    }
    Ok(backend)
}
