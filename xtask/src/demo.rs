//! `cargo xtask demo`: the agent's main job with no cluster. Pods are
//! network namespaces, the agent serves `deploy/examples/demo/`, a client pod
//! dials the services, and the per-backend split and `meshctl status` print.

use crate::workspace::{workspace_root, Binaries};
use anyhow::{Context, Result};
use mesh_tests::TestEnv;
use std::process::Command;

const CLIENT: (&str, &str, &str) = ("client", "10.244.0.2", "fd00:244::2");
const BACKENDS: [(&str, &str, &str); 3] = [
    ("web-1", "10.244.1.2", "fd00:244::1:2"),
    ("web-2", "10.244.2.2", "fd00:244::2:2"),
    ("web-3", "10.244.3.2", "fd00:244::3:2"),
];

pub fn run(bins: &Binaries) -> Result<()> {
    std::env::set_var("MESH_AGENT_BIN", &bins.agent);
    std::env::set_var("MESH_PROBE_BIN", &bins.probe);
    let env = TestEnv::new("demo")?;
    let client = env.add_pod(CLIENT.0, CLIENT.1, CLIENT.2);
    let mut servers = Vec::new();
    for (name, v4, v6) in BACKENDS {
        let pod = env.add_pod(name, v4, v6);
        servers.push(pod.serve_tcp(8080));
        servers.push(pod.serve_udp(5353));
        servers.push(pod.serve_http(9080));
    }
    let examples = workspace_root().join("deploy/examples/demo");
    for entry in std::fs::read_dir(&examples).with_context(|| format!("reading {}", examples.display()))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        env.write_config(&path.file_name().unwrap_or_default().to_string_lossy(), &text)?;
        println!("config: {}", path.display());
    }
    // On the node, with the L7 proxy on the node address.
    env.start_agent_on_node(&[])?;
    println!(
        "\nagent ready: kernel programs attached to {}, L7 proxy on {}:15001\n",
        env.cgroup_path().display(),
        mesh_tests::NODE_IPV4
    );

    let show = |title: &str, args: &[&str]| -> Result<()> {
        let out = env.probe(&client, args)?;
        println!("{title}");
        let peer = out.get("peer").filter(|p| !p.is_null()).map(|p| format!("  getpeername {p}"));
        let reply = out.get("reply_from").filter(|p| !p.is_null()).map(|p| format!("  replies from {p}"));
        println!("  ok {}  errors {}{}", out["ok"], out["errors"], peer.or(reply).unwrap_or_default());
        if let Some(backends) = out["backends"].as_object() {
            let total: u64 = backends.values().filter_map(|v| v.as_u64()).sum();
            for (backend, count) in backends {
                let count = count.as_u64().unwrap_or(0);
                println!("  {backend:<8} {count:>5}  {:>5.1}%", 100.0 * count as f64 / total.max(1) as f64);
            }
        }
        println!();
        Ok(())
    };
    show(
        "web (10.96.0.10:80, ROUND_ROBIN), 300 TCP connections:",
        &["tcp", "--target", "10.96.0.10:80", "--count", "300"],
    )?;
    show(
        "web over IPv6 ([fd00:96::10]:80), 300 TCP connections:",
        &["tcp", "--target", "[fd00:96::10]:80", "--count", "300"],
    )?;
    show("dns (10.96.0.53:53/UDP, RANDOM), 200 datagrams:", &["udp", "--target", "10.96.0.53:53", "--count", "200"])?;
    show(
        "cache (10.96.0.20:6379, Maglev on source IP), 100 connections from one client:",
        &["tcp", "--target", "10.96.0.20:6379", "--count", "100"],
    )?;
    show(
        "a service address with no Service (10.96.0.99:80): not translated, fails locally:",
        &["tcp", "--target", "10.96.0.99:80", "--count", "1"],
    )?;

    show(
        "reviews (10.96.0.30:9080, HTTP through the node proxy): 500 requests, 80/20 canary v1/v2:",
        &["http", "--target", "10.96.0.30:9080", "--count", "500"],
    )?;
    show(
        "reviews with end-user: jason (routed to v2 = web-3), 50 requests:",
        &["http", "--target", "10.96.0.30:9080", "--count", "50", "--headers", "end-user: jason"],
    )?;

    // The agent runs in the node namespace: so does meshctl.
    let node = env.agent_netns().context("the agent runs on the node")?;
    println!("$ meshctl status --admin {}", env.admin_addr());
    let status = Command::new("nsenter")
        .arg(format!("--net={}", node.display()))
        .arg(&bins.meshctl)
        .args(["status", "--admin", &env.admin_addr().to_string()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&status.stdout));
    eprint!("{}", String::from_utf8_lossy(&status.stderr));
    env.stop_agent()?;
    drop(servers);
    println!("demo done; namespaces, cgroup and pins removed");
    Ok(())
}
