//! `cargo xtask bench l4`: the cost of one connection (connect, one small
//! request/response, close) to a service, three ways, side by side:
//!
//! - direct: the client dials the backend pod itself, no programs attached
//!   (the limit);
//! - iptables: kube-proxy's iptables mode in the client's namespace (one
//!   KUBE-SVC chain per service, `-m statistic --mode random`, DNAT);
//! - mesh: the agent's connect-time translation in the kernel;
//! - mesh+RO: the same from a REGISTRY_ONLY workload (a pod cgroup);
//! - pod+RO: a REGISTRY_ONLY workload dialling a backend pod directly: a
//!   frontend miss, so its workload and the registry are looked up.
//!
//! Variants run interleaved, round after round, and the median is reported
//! with its ratio to direct.

use crate::workspace::Binaries;
use anyhow::{bail, Context, Result};
use mesh_tests::{Pod, TestEnv};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BACKENDS: [(&str, &str, &str); 2] =
    [("b1", "10.244.1.2", "fd00:244::1:2"), ("b2", "10.244.2.2", "fd00:244::2:2")];

/// The cluster IP of service `i`: 10.96.0.1 upwards, skipping .0 and .255.
pub(crate) fn service_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn mesh_config(services: u32) -> String {
    let mut yaml = String::with_capacity(services as usize * 600);
    for i in 0..services {
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec: {{clusterIP: {ip}, ports: [{{name: tcp, port: 80, targetPort: 8080}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
             addressType: IPv4\nports: [{{name: tcp, port: 8080}}]\nendpoints: [{{addresses: [{b1}]}}, {{addresses: [{b2}]}}]\n---\n",
            ip = service_ip(i),
            b1 = BACKENDS[0].1,
            b2 = BACKENDS[1].1,
        );
    }
    yaml
}

/// kube-proxy's iptables layout for `services` services of two endpoints.
fn iptables_rules(services: u32) -> String {
    let mut rules = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..services {
        let _ = writeln!(rules, ":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i}-A - [0:0]\n:KUBE-SEP-{i}-B - [0:0]");
    }
    rules.push_str("-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..services {
        let _ = writeln!(rules, "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}", service_ip(i));
        let _ =
            writeln!(rules, "-A KUBE-SVC-{i} -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-{i}-A");
        let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-B");
        let _ = writeln!(rules, "-A KUBE-SEP-{i}-A -p tcp -m tcp -j DNAT --to-destination {}:8080", BACKENDS[0].1);
        let _ = writeln!(rules, "-A KUBE-SEP-{i}-B -p tcp -m tcp -j DNAT --to-destination {}:8080", BACKENDS[1].1);
    }
    rules.push_str("COMMIT\n");
    rules
}

/// A backend for the benchmark: threads that each accept and serve one
/// connection at a time (no hand-off between threads), so the server adds as
/// little as possible to what is measured.
fn serve_backend(pod: &Pod, port: u16) -> Result<()> {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
    let listener = mesh_tests::in_netns(&pod.netns_path(), move || mesh_tests::sys::tcp_listener(addr, 4096))??;
    for _ in 0..4 {
        let listener = listener.try_clone()?;
        std::thread::spawn(move || {
            while let Ok((stream, _)) = listener.accept() {
                let _ = answer(stream);
            }
        });
    }
    Ok(())
}

/// Answers each request line with `ok\n` until the client closes.
fn answer(stream: std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        writer.write_all(b"ok\n")?;
        line.clear();
    }
    Ok(())
}

/// A sibling cgroup with nothing attached, for the direct and iptables runs.
struct PlainCgroup(PathBuf);

impl PlainCgroup {
    fn create(beside: &Path) -> Result<Self> {
        let path = beside.with_file_name(format!("mesh-bench-plain-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn nsenter(pod: &Pod, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", pod.netns_path().display()))
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("nsenter {args:?}"))?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let status = child.wait()?;
    if !status.success() {
        bail!("nsenter {args:?} in {}: {status}", pod.name());
    }
    Ok(())
}

/// Runs the probe in `cgroup` inside `pod` and returns µs per connection.
fn measure(bins: &Binaries, cgroup: &Path, pod: &Pod, target: &str, connections: u32) -> Result<f64> {
    // The client on CPU 1, the backends (threads of this process) on CPU 0.
    let out = Command::new("taskset")
        .args(["-c", "1"])
        .arg(&bins.probe)
        .arg("--cgroup")
        .arg(cgroup)
        .arg("--netns")
        .arg(pod.netns_path())
        .args(["tcp", "--target", target, "--count", &connections.to_string()])
        .output()
        .context("running mesh-probe")?;
    if !out.status.success() {
        bail!("probe to {target} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ok = report["ok"].as_u64().unwrap_or(0);
    if ok != connections as u64 {
        bail!("probe to {target}: {ok} of {connections} connections succeeded: {report}");
    }
    report["micros_per_conn"].as_f64().context("probe reported no timing")
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn l4(bins: &Binaries, connections: u32, rounds: u32, sizes: &[u32]) -> Result<()> {
    std::env::set_var("MESH_AGENT_BIN", &bins.agent);
    std::env::set_var("MESH_PROBE_BIN", &bins.probe);
    // Threads spawned from here on (the backends) inherit CPU 0.
    let pinned = Command::new("taskset").args(["-p", "-c", "0", &std::process::id().to_string()]).output();
    if !pinned.is_ok_and(|o| o.status.success()) {
        eprintln!("bench: could not pin to CPU 0; figures will be noisier");
    }
    let env = TestEnv::new("bench-l4")?;
    let mesh_client = env.add_pod("client", "10.244.0.2", "fd00:244::2");
    let iptables_client = env.add_pod("ipt-client", "10.244.0.3", "fd00:244::3");
    nsenter(&iptables_client, &["ip", "route", "add", "10.96.0.0/12", "dev", "eth0"], None)?;
    for (name, v4, v6) in BACKENDS {
        serve_backend(&env.add_pod(name, v4, v6), 8080)?;
    }
    let plain = PlainCgroup::create(env.cgroup_path())?;
    let restricted = env.container_cgroup("bench", "client");
    let pods = env.pod_cgroups_dir();
    let pods = pods.to_str().context("pod cgroup path")?;
    env.start_agent(&["--program-stats", "--pod-cgroups", pods, "--outbound-traffic-policy", "REGISTRY_ONLY"])?;

    println!("L4 connect cost: connect + 1 request/response (6 B each way) + close, one client, sequential.");
    println!("{connections} connections per round, {rounds} rounds interleaved; medians of µs and of the per-round ratio to direct.\n");
    println!(
        "{:>8}  {:<10} {:>10} {:>12} {:>10}  {:>12}",
        "services", "path", "µs/conn", "conns/s", "vs direct", "config apply"
    );
    for &size in sizes {
        if size == 0 {
            continue;
        }
        env.write_config("bench.yaml", &mesh_config(size))?;
        nsenter(&iptables_client, &["iptables-restore"], Some(&iptables_rules(size)))?;
        let target_ip = service_ip(size - 1);
        let target = format!("{target_ip}:80");
        // Wait until the agent serves this size: the last service answers.
        let served = mesh_tests::wait_until(Duration::from_secs(120), || {
            let status = env.admin_json("/status");
            status["services"].as_array().map(|s| s.len()) == Some(size as usize)
                && status["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|svc| svc["frontends"][0] == target.as_str()))
        });
        if !served {
            bail!("the agent did not serve {size} services within 120 s");
        }
        let apply_micros = env.admin_json("/status")["config"]["last_reload"]["duration_micros"].as_u64().unwrap_or(0);
        let backend = format!("{}:8080", BACKENDS[0].1);
        // Per path: µs per connection in each round, and its ratio to direct
        // in the same round (rounds drift by ±10% on a shared machine; the
        // ratio within a round does not).
        let mut micros: [Vec<f64>; 5] = Default::default();
        let mut ratios: [Vec<f64>; 5] = Default::default();
        // REGISTRY_ONLY's own cost: mesh+RO over mesh, pod+RO over direct.
        let mut registry_only: [Vec<f64>; 2] = Default::default();
        // One warm-up round, not recorded.
        for round in 0..=rounds {
            // Direct from the pod without iptables rules: the nat table and
            // conntrack of the iptables pod would tax direct connects too.
            let d = measure(bins, &plain.0, &mesh_client, &backend, connections)?;
            let i = measure(bins, &plain.0, &iptables_client, &target, connections)?;
            let m = measure(bins, env.cgroup_path(), &mesh_client, &target, connections)?;
            let mr = measure(bins, &restricted, &mesh_client, &target, connections)?;
            let pr = measure(bins, &restricted, &mesh_client, &backend, connections)?;
            if std::env::var_os("MESH_BENCH_VERBOSE").is_some() {
                eprintln!("  round {round}: direct {d:.1} iptables {i:.1} mesh {m:.1} mesh+RO {mr:.1} pod+RO {pr:.1}");
            }
            if round > 0 {
                for (path, value) in [d, i, m, mr, pr].into_iter().enumerate() {
                    micros[path].push(value);
                    ratios[path].push(value / d);
                }
                registry_only[0].push(mr / m);
                registry_only[1].push(pr / d);
            }
        }
        let direct_us = median(&mut micros[0].clone());
        for (path, name) in ["direct", "iptables", "mesh", "mesh+RO", "pod+RO"].into_iter().enumerate() {
            let us = median(&mut micros[path]);
            let ratio = median(&mut ratios[path]);
            let apply = if name == "mesh" { format!("{:.1} ms", apply_micros as f64 / 1000.0) } else { String::new() };
            println!("{size:>8}  {name:<10} {us:>10.2} {:>12.0} {ratio:>9.3}x  {apply:>12}", 1e6 / us);
        }
        println!(
            "{:>8}  REGISTRY_ONLY: a service connect {:.3}x of mesh's, a registered pod {:.3}x of direct",
            "",
            median(&mut registry_only[0]),
            median(&mut registry_only[1])
        );
        // The kernel's own accounting of the programs a connection runs: the
        // translation's cost with no scheduling noise in it.
        let status = env.admin_json("/status");
        let mean_ns = |attach: &str| {
            status["dataplane"]["programs"].as_array().and_then(|programs| {
                programs.iter().find(|p| p["attach_type"] == attach).and_then(|p| p["mean_run_ns"].as_f64())
            })
        };
        if let (Some(connect), Some(release)) = (mean_ns("connect4"), mean_ns("sock_release")) {
            let total = connect + release;
            println!(
                "{:>8}  kernel programs per connection: connect4 {connect:.0} ns + sock_release {release:.0} ns = {:.2}% of a direct connection",
                "",
                total / 10.0 / direct_us
            );
        }
        println!();
    }
    nsenter(&iptables_client, &["iptables", "-t", "nat", "-F"], None)?;
    env.stop_agent()?;
    Ok(())
}
