//! Developer commands: `cargo xtask <command>`.
//!
//! `setup` installs what the build needs and is missing (rust-src for
//! nightly, bpf-linker 0.10.4, iproute2/iptables); every other command runs
//! it first, so a fresh machine needs nothing by hand.

mod bench;
mod bench_l7;
mod bench_scale;
mod demo;
#[allow(dead_code)] // shared with mesh-agent/build.rs, which uses part of it
mod ebpf_build;
mod kube_assets;
mod layers;
mod workspace;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::process::Command;
use workspace::{build_binaries, output, run, workspace_root};

const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Parser)]
#[command(name = "xtask", about = "Developer commands for the mesh workspace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install missing build and test prerequisites.
    Setup,
    /// Build the kernel programs (bpfel, release, with BTF) into target/ebpf.
    BuildEbpf,
    /// Run every test: unit tests and the kernel integration tests (root).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the agent on a demo: pods in namespaces, traffic, the split, `meshctl status`.
    Demo,
    /// Regenerate deploy/crds/ from the agent's Istio CRD types (the test
    /// suite fails when they drift).
    Crds,
    /// Check that no crate has an import cycle and that the agent's
    /// modules import only from their layer or below (part of `test`).
    Layers,
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchKind,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// Connect cost through the kernel translation vs direct vs iptables DNAT.
    L4 {
        /// Connections per measurement round.
        #[arg(long, default_value_t = 4000)]
        connections: u32,
        /// Rounds per variant (interleaved); the median is reported.
        #[arg(long, default_value_t = 11)]
        rounds: u32,
        /// Service counts to measure.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
        services: Vec<u32>,
    },
    /// HTTP/1.1 through the agent's L7 proxy vs direct, nginx, HAProxy and Envoy.
    L7 {
        /// Paths to measure, in order (ratios are to `direct`).
        #[arg(long, value_delimiter = ',', value_parser = bench_l7::PathKind::parse,
              default_value = "direct,direct+bpf,mesh,mesh-remote,nginx,haproxy,envoy,gateway,nginx-tls")]
        paths: Vec<bench_l7::PathKind>,
        /// Fixed request rates (open loop, oha); a maximum-rate run (wrk) follows.
        #[arg(long, value_delimiter = ',', default_value = "2000,20000")]
        rates: Vec<u32>,
        /// Keep-alive connections of the load generator.
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Length of each run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds, each running every path in turn; the table shows each
        /// figure's median over them.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// HTTP/2 clients (h2load) through the L7 proxy to an HTTP/1.1 and an
    /// HTTP/2 upstream on the same backend, vs direct.
    H2 {
        /// Client connections of h2load.
        #[arg(long, default_value_t = 16)]
        connections: u32,
        /// Requests under way at once on each client connection (h2load -m).
        #[arg(long, default_value_t = 10)]
        streams: u32,
        /// Length of each run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds, each running every row in turn; the table shows each
        /// figure's median over them.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// A large cluster: first load, one endpoint changed (latency, map
    /// writes), RSS, against kube-proxy's iptables-restore and nft.
    Scale {
        /// Service counts to measure (10 endpoints each).
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        services: Vec<u32>,
        /// Endpoint changes per size.
        #[arg(long, default_value_t = 100)]
        changes: u32,
    },
    /// What an idle keep-alive client connection costs the proxy, and nginx.
    Idle {
        /// Connections held by each proxy (100000: the figure).
        #[arg(long, default_value_t = 3000)]
        connections: u32,
    },
    /// The backend `bench l7` runs in its backend pod (1 KiB per response).
    #[command(hide = true)]
    L7Backend {
        #[arg(long)]
        port: u16,
        /// HTTP/2 with prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup(),
        Cmd::BuildEbpf => {
            setup()?;
            let root = workspace_root();
            let object =
                ebpf_build::build_ebpf(&root, &root.join("target").join("ebpf")).map_err(anyhow::Error::msg)?;
            println!("{}", object.display());
            Ok(())
        }
        Cmd::Test { args } => test(&args),
        Cmd::Layers => layers(),
        Cmd::Crds => {
            setup()?;
            let root = workspace_root();
            run(Command::new("cargo")
                .current_dir(&root)
                .args(["run", "-q", "-p", "mesh-agent", "--bin", "mesh-agent"])
                .args(["--", "crds", "--out"])
                .arg(root.join("deploy").join("crds")))
        }
        Cmd::Demo => {
            setup()?;
            let bins = build_binaries(false)?;
            demo::run(&bins)
        }
        Cmd::Bench { which: BenchKind::L4 { connections, rounds, services } } => {
            setup()?;
            let bins = build_binaries(true)?;
            bench::l4(&bins, connections, rounds, &services)
        }
        Cmd::Bench { which: BenchKind::L7 { paths, rates, connections, seconds, rounds } } => {
            setup()?;
            bench_l7::l7(&bench_l7::Options { paths, rates, connections, seconds, rounds })
        }
        Cmd::Bench { which: BenchKind::H2 { connections, streams, seconds, rounds } } => {
            setup()?;
            bench_l7::h2(&bench_l7::H2Options { connections, streams, seconds, rounds })
        }
        Cmd::Bench { which: BenchKind::Scale { services, changes } } => {
            setup()?;
            let bins = build_binaries(true)?;
            bench_scale::scale(&bins, &services, changes)
        }
        Cmd::Bench { which: BenchKind::Idle { connections } } => {
            setup()?;
            bench_l7::idle(connections)
        }
        Cmd::Bench { which: BenchKind::L7Backend { port, http2 } } => bench_l7::backend(port, http2),
    }
}

/// Installs whatever is missing; does nothing when all is there.
fn setup() -> Result<()> {
    let nightly_ok = output(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some();
    if !nightly_ok {
        eprintln!("xtask: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
            .unwrap_or_default();
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (found: {:?})", linker.trim());
        run(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }
    let missing: Vec<&str> = [("ip", "iproute2"), ("iptables-restore", "iptables"), ("curl", "curl")]
        .into_iter()
        .filter(|(tool, _)| output(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_none())
        .map(|(_, package)| package)
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {missing:?}");
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// Fails with every import cycle and layer violation found.
fn layers() -> Result<()> {
    let problems = layers::check(&workspace_root()).map_err(anyhow::Error::msg)?;
    for problem in &problems {
        eprintln!("layers: {}", problem.0);
    }
    if !problems.is_empty() {
        bail!("{} import problems: see above, and the layering in mesh-agent/src/lib.rs", problems.len());
    }
    println!("layers: no import cycles; every agent module imports from its layer or below");
    Ok(())
}

fn test(args: &[String]) -> Result<()> {
    setup()?;
    if effective_uid() != 0 {
        bail!("the kernel tests load BPF programs and make namespaces: run as root");
    }
    let root = workspace_root();
    run(Command::new("cargo").current_dir(&root).args(["fmt", "--all", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    // The kernel crate is outside the workspace: check it by hand.
    run(Command::new("rustfmt").current_dir(&root).args(["--check", "--edition", "2021", "mesh-ebpf/src/main.rs"]))
        .context("mesh-ebpf is not formatted: run `rustfmt --edition 2021 mesh-ebpf/src/main.rs`")?;
    layers()?;
    run(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems")?;
    let bins = build_binaries(false)?;
    let kube = kube_assets::prepare(&root)?;
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["test", "--workspace", "--"])
        .args(args)
        .env(kube_assets::APISERVER_ENV, &kube.apiserver)
        .env(kube_assets::ETCD_ENV, &kube.etcd)
        .env("MESH_AGENT_BIN", &bins.agent)
        .env("MESHCTL_BIN", &bins.meshctl)
        .env("MESH_PROBE_BIN", &bins.probe))
}

fn effective_uid() -> u32 {
    output(Command::new("id").arg("-u")).and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX)
}
