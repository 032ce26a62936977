//! `cargo xtask bench scale`: what a large cluster costs the agent, side by
//! side with kube-proxy's way of doing the same.
//!
//! Per size (services, 10 endpoints each, and a DestinationRule and a
//! VirtualService for every tenth service), served from a (fake) API
//! server the agent watches through a kubeconfig, as in a cluster:
//! - the first full load: from the agent's start to ready, and the reload
//!   itself (batch to maps written);
//! - one endpoint added or removed, over many changes: from the watch event
//!   to the maps written (p50/p99), the reload's own time, and the map
//!   entries written per change;
//! - the agent's RSS after the load and after the changes;
//! - kube-proxy's iptables mode for the same services: a full
//!   `iptables-restore`, and the restore of one service's chains after one
//!   endpoint changed (`--noflush`, as kube-proxy's minimal restores).

use crate::bench::service_ip;
use crate::workspace::Binaries;
use anyhow::{bail, Context, Result};
use mesh_tests::apiserver::FakeApiServer;
use mesh_tests::TestEnv;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINTS: u32 = 10;
/// Watch events sent back to back after the changes: a rollout's burst.
const BURST: u32 = 10_000;
const NAMESPACE: &str = "bench";

/// Endpoint `e` of service `i`: 10.128.0.0/9 upwards, 16 addresses a service.
fn endpoint_ip(i: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i * 16 + e)
}

fn service(i: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACE},
           "spec": {"clusterIP": service_ip(i).to_string(),
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// Service `i`'s slice with its endpoints, and one more when `extra`.
fn slice(i: u32, extra: bool) -> Value {
    let count = ENDPOINTS + extra as u32;
    let endpoints: Vec<Value> = (0..count).map(|e| json!({"addresses": [endpoint_ip(i, e).to_string()]})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACE,
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints})
}

fn destination_rule(i: u32) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": {"name": format!("svc-{i}"), "namespace": NAMESPACE},
           "spec": {"host": format!("svc-{i}"),
                    "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"},
                                      "connectionPool": {"tcp": {"maxConnections": 100}}}}})
}

fn virtual_service(i: u32) -> Value {
    let host = format!("svc-{i}");
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": host, "namespace": NAMESPACE},
           "spec": {"hosts": [host],
                    "http": [{"match": [{"headers": {"x-canary": {"exact": "1"}}}],
                              "timeout": "2s", "route": [{"destination": {"host": host}}]},
                             {"route": [{"destination": {"host": host}}]}]}})
}

/// kube-proxy's iptables layout for services `range`, each with its
/// endpoints (one more for `extra`), as one restore input; `table_header`
/// declares the shared chains (a full restore) or not (a partial one).
fn iptables_rules(range: std::ops::Range<u32>, extra: Option<u32>, table_header: bool) -> String {
    let mut rules = String::from("*nat\n");
    if table_header {
        rules.push_str(":KUBE-SERVICES - [0:0]\n-A OUTPUT -j KUBE-SERVICES\n");
    }
    for i in range.clone() {
        let count = ENDPOINTS + (extra == Some(i)) as u32;
        let _ = writeln!(rules, ":KUBE-SVC-{i} - [0:0]");
        for e in 0..count {
            let _ = writeln!(rules, ":KUBE-SEP-{i}-{e} - [0:0]");
        }
        if table_header {
            let _ =
                writeln!(rules, "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}", service_ip(i));
        }
        for e in 0..count {
            let left = count - e;
            if left > 1 {
                let probability = 1.0 / left as f64;
                let _ = writeln!(
                    rules,
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {probability:.11} -j KUBE-SEP-{i}-{e}"
                );
            } else {
                let _ = writeln!(rules, "-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{e}");
            }
            let _ = writeln!(
                rules,
                "-A KUBE-SEP-{i}-{e} -p tcp -m tcp -j DNAT --to-destination {}:8080",
                endpoint_ip(i, e)
            );
        }
    }
    rules.push_str("COMMIT\n");
    rules
}

/// Runs `iptables-restore args` in network namespace `netns` with `input`;
/// how long it took.
fn iptables_restore(netns: &str, args: &[&str], input: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore"])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .context("iptables-restore")?;
    child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("iptables-restore {args:?} failed: {status}");
    }
    Ok(started.elapsed())
}

/// The agent's reload count, and the last reload's time (ms) and map writes
/// (`/reloads`: cheap, unlike `/metrics` at ten thousand services).
fn reloads(env: &TestEnv) -> (u64, f64, f64) {
    let reloads = env.admin_json("/reloads");
    let last = &reloads["last_reload"];
    let writes = last["map_upserts"].as_f64().unwrap_or(0.0) + last["map_deletes"].as_f64().unwrap_or(0.0);
    let millis = last["duration_micros"].as_f64().unwrap_or(0.0) / 1000.0;
    (reloads["reloads"].as_u64().unwrap_or(0), millis, writes)
}

fn rss_mib(pid: u32) -> f64 {
    crate::bench_l7::rss_kib(&[pid]) as f64 / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    services: u32,
    ready: Duration,
    first_reload: f64,
    rss_loaded: f64,
    change_p50: f64,
    change_p99: f64,
    reload_p50: f64,
    reload_p99: f64,
    writes: f64,
    rss_after: f64,
    iptables_full: Duration,
    iptables_one: Duration,
    burst_sent: Duration,
    burst_reloads: u64,
    istio_objects: usize,
    /// From ready to every Istio object's status written (None: not in 60 s).
    statuses: Option<Duration>,
}

pub fn scale(bins: &Binaries, sizes: &[u32], changes: u32) -> Result<()> {
    std::env::set_var("MESH_AGENT_BIN", &bins.agent);
    std::env::set_var("MESH_PROBE_BIN", &bins.probe);
    println!(
        "Scale: services with {ENDPOINTS} endpoints each, a DestinationRule and a VirtualService for every tenth,"
    );
    println!("watched from an API server. {changes} changes of one endpoint each (added, then removed).\n");
    let mut rows = Vec::new();
    for &size in sizes {
        rows.push(measure(size, changes)?);
    }
    println!(
        "{:>8}  {:>9} {:>9} {:>8} | {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} | {:>10} {:>10} {:>8}",
        "services",
        "ready",
        "1st load",
        "RSS",
        "change50",
        "change99",
        "reload50",
        "reload99",
        "writes",
        "RSS now",
        "ipt full",
        "ipt one",
        "one/ipt"
    );
    for r in &rows {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>8}  {:>7.0}ms {:>7.1}ms {:>6.0}MB | {:>7.1}ms {:>7.1}ms {:>7.2}ms {:>7.2}ms {:>7.0} {:>6.0}MB | {:>8.1}ms {:>8.1}ms {:>7.2}x",
            r.services,
            ms(r.ready),
            r.first_reload,
            r.rss_loaded,
            r.change_p50,
            r.change_p99,
            r.reload_p50,
            r.reload_p99,
            r.writes,
            r.rss_after,
            ms(r.iptables_full),
            ms(r.iptables_one),
            r.reload_p50 / ms(r.iptables_one),
        );
    }
    for r in &rows {
        println!(
            "{:>8} services: a burst of {BURST} slice changes sent in {:.0} ms cost {} reloads; the status of {} Istio objects written {}",
            r.services,
            r.burst_sent.as_secs_f64() * 1000.0,
            r.burst_reloads,
            r.istio_objects,
            match r.statuses {
                Some(took) => format!("in {:.1} s after ready (the Lease lasts 15 s)", took.as_secs_f64()),
                None => "not within 60 s".to_owned(),
            }
        );
    }
    println!("\nready: agent start to /readyz (programs loaded, every kind listed, first load applied);");
    println!("1st load: that reload alone; change: watch event sent to the reload counted in /reloads, each");
    println!("change sent once the agent is idle again;");
    println!("reload: batch to maps written; writes: map entries per change (median);");
    println!("ipt full / one: iptables-restore of the whole kube-proxy layout / of one service's chains (--noflush);");
    println!("one/ipt: the agent's reload (p50) over that one-service restore.");
    Ok(())
}

fn measure(size: u32, changes: u32) -> Result<Row> {
    let env = TestEnv::new(&format!("bench-scale-{size}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let _context = runtime.enter();
    let server = FakeApiServer::new();
    for i in 0..size {
        server.apply(service(i));
        server.apply(slice(i, false));
        if i % 10 == 0 {
            server.apply(destination_rule(i));
            server.apply(virtual_service(i));
        }
    }
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let kubeconfig = FakeApiServer::write_kubeconfig(env.config_dir(), listener.local_addr()?)?;
    let _serving = server.serve(listener);
    let kubeconfig = kubeconfig.to_str().context("kubeconfig path")?;

    let started = Instant::now();
    env.start_agent(&["--source", "kubernetes", "--kubeconfig", kubeconfig, "--node-name", "bench-node"])?;
    let ready = started.elapsed();
    let pid = env.agent_pid().context("agent pid")?;
    let (_, first_reload, _) = reloads(&env);
    let rss_loaded = rss_mib(pid);
    // The status of every Istio object, written by the Lease holder (the
    // only agent here): from ready to the last one.
    let istio_objects = size.div_ceil(10) as usize * 2;
    let written = |server: &FakeApiServer| {
        let patches = server.status_patches();
        patches.iter().map(|(_, path, _)| path.clone()).collect::<std::collections::BTreeSet<_>>().len()
    };
    let statuses = mesh_tests::wait_until(Duration::from_secs(60), || written(&server) >= istio_objects)
        .then(|| started.elapsed().saturating_sub(ready));

    let (mut latencies, mut durations, mut writes) = (Vec::new(), Vec::new(), Vec::new());
    // The last reload's time (ms).
    let mut last = first_reload;
    for c in 0..changes {
        // Each change alone: the agent idles after a reload for as long as
        // it took (under churn, reloads take at most half a core), so the
        // next change waits until then.
        std::thread::sleep(Duration::from_secs_f64(last * 2.0 / 1000.0).max(Duration::from_millis(20)));
        // Service c/2 gains an endpoint, then loses it again.
        let i = (c / 2 * 7919) % size;
        let (before, ..) = reloads(&env);
        let sent = Instant::now();
        server.apply(slice(i, c % 2 == 0));
        let deadline = sent + Duration::from_secs(10);
        let (took, written) = loop {
            let (count, took, written) = reloads(&env);
            if count > before {
                break (took, written);
            }
            if Instant::now() > deadline {
                bail!("change {c} was not applied within 10 s\n{}", env.agent_log());
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        durations.push(took);
        last = took;
        writes.push(written);
    }
    // A burst: slices changed back to back, as fast as the API server
    // takes them; then the reloads it cost, once the agent is quiet.
    let (before, ..) = reloads(&env);
    let sent = Instant::now();
    for k in 0..BURST {
        server.apply(slice(k % size, (k / size).is_multiple_of(2)));
    }
    let burst_sent = sent.elapsed();
    let (mut last, mut quiet_since) = (before, Instant::now());
    while quiet_since.elapsed() < Duration::from_millis(1000) {
        std::thread::sleep(Duration::from_millis(20));
        let (now, ..) = reloads(&env);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
    let rss_after = rss_mib(pid);
    env.stop_agent()?;
    for list in [&mut latencies, &mut durations, &mut writes] {
        list.sort_by(f64::total_cmp);
    }

    let netns = format!("mesh-bench-ipt-{size}");
    let _ = Command::new("ip").args(["netns", "del", &netns]).stderr(Stdio::null()).status();
    crate::workspace::run(Command::new("ip").args(["netns", "add", &netns]))?;
    let full = iptables_restore(&netns, &[], &iptables_rules(0..size, None, true));
    let one = iptables_restore(&netns, &["--noflush"], &iptables_rules(0..1, Some(0), false));
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    Ok(Row {
        services: size,
        ready,
        first_reload,
        rss_loaded,
        change_p50: percentile(&latencies, 0.5),
        change_p99: percentile(&latencies, 0.99),
        reload_p50: percentile(&durations, 0.5),
        reload_p99: percentile(&durations, 0.99),
        writes: percentile(&writes, 0.5),
        rss_after,
        iptables_full: full?,
        iptables_one: one?,
        burst_sent,
        burst_reloads: last - before,
        istio_objects,
        statuses,
    })
}
