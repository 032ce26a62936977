use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_agent::admin::{self, Shared, DEFAULT_ADMIN_ADDR};
use mesh_agent::agent::{NoMaps, ReloadLoop};
use mesh_agent::dataplane::{self, CounterReader, DataplaneOptions, OriginalDstTable};
use mesh_agent::dns;
use mesh_agent::handover::{self, Inherited, Offer};
use mesh_agent::k8s::{self, KubeSource, LeaseTiming, StatusWriter};
use mesh_agent::proxy::{self, Proxy};
use mesh_agent::source::{ConfigSource, FileSource};
use mesh_agent::state::StateDir;
use mesh_agent::workloads::{self, Layout, PodCgroups};
use mesh_core::locality::Locality;
use mesh_core::node::NodeContext;
use mesh_core::sidecar::OutboundPolicy;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "Per-node service-mesh agent: kernel L4 load balancing for Kubernetes services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the kernel programs and serve a configuration.
    Run(Box<RunArgs>),
    /// Serve as an ingress or egress gateway: the Gateways whose selector
    /// matches `--labels`, and the VirtualServices bound to them. No kernel
    /// programs, no privileges beyond binding the servers' ports.
    Gateway(Box<GatewayArgs>),
    /// Detach the programs and remove every pin under the bpffs directory.
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/mesh")]
        bpffs: PathBuf,
    },
    /// Write the Istio CRD manifests generated from the agent's types
    /// (`cargo xtask crds` writes them to deploy/crds).
    Crds {
        #[arg(long)]
        out: PathBuf,
    },
    /// Wait this many seconds, then exit: a `preStop` hook for images
    /// without a shell, on any Kubernetes version (the `sleep` action needs
    /// 1.30).
    Sleep { seconds: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OutboundMode {
    /// Connections outside the registry pass through.
    #[value(name = "ALLOW_ANY", alias = "allow-any")]
    AllowAny,
    /// Connections outside the registry are refused in the kernel.
    #[value(name = "REGISTRY_ONLY", alias = "registry-only")]
    RegistryOnly,
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (ip, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not a CIDR block (ip/prefix)"))?;
    let ip: IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| format!("{prefix:?} is not a prefix length"))?;
    if prefix > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(format!("/{prefix} is longer than the address"));
    }
    Ok((ip, prefix))
}

/// Every client and upstream connection of the proxy is a file: the
/// limit goes as high as the process may set it (as root 1,048,576; else
/// the hard limit), not the soft default (often 1,024) that would cap the
/// connections a node holds.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointers to rlimit structs.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            // Never lowered: only raised, to 1,048,576 where allowed.
            let wide = limit.rlim_max.max(1 << 20);
            let wanted = libc::rlimit { rlim_cur: wide, rlim_max: wide };
            libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 || {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
            }
        }
    };
    if !raised {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot raise the open files limit");
    }
}

fn parse_map_entries(text: &str) -> Result<(dataplane::SizedMap, u32), String> {
    let (name, entries) = text.split_once('=').ok_or_else(|| format!("{text:?} is not MAP=ENTRIES"))?;
    let map = dataplane::SizedMap::by_flag(name)
        .ok_or_else(|| format!("no map {name:?}: one of {}", dataplane::SizedMap::flag_names().join(", ")))?;
    let entries: u32 = entries.parse().map_err(|_| format!("{entries:?} is not a number of entries"))?;
    if entries == 0 {
        return Err(format!("{name} needs at least one entry"));
    }
    Ok((map, entries))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SourceKind {
    /// A directory of YAML (`--config-dir`).
    Files,
    /// The Kubernetes API server: in-cluster service account, or KUBECONFIG.
    Kubernetes,
}

/// What the node agent and a gateway both take: where the configuration
/// comes from, the admin API, and how the proxy serves.
#[derive(clap::Args)]
struct CommonArgs {
    /// Where the configuration comes from.
    #[arg(long, value_enum, default_value = "files")]
    source: SourceKind,
    /// Directory of Kubernetes YAML (Service, EndpointSlice, Pod and the
    /// Istio kinds), for `--source files`.
    #[arg(long, required_if_eq("source", "files"))]
    config_dir: Option<PathBuf>,
    /// A kubeconfig for `--source kubernetes` (default: the in-cluster
    /// service account, or KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Admin API address.
    #[arg(long, default_value = DEFAULT_ADMIN_ADDR)]
    admin: SocketAddr,
    /// An address that serves only /healthz and /readyz (for kubelet
    /// probes), beside the admin API.
    #[arg(long)]
    health: Option<SocketAddr>,
    /// Print a JSON access-log line per proxied request on stdout.
    #[arg(long)]
    access_log: bool,
    /// Cut off a proxy client that has not sent its request headers (or,
    /// at a gateway's TLS port, its ClientHello) in this many milliseconds.
    #[arg(long, default_value_t = proxy::DEFAULT_HEADER_TIMEOUT.as_millis() as u64)]
    header_timeout_ms: u64,
    /// On SIGTERM, how long requests in flight through the proxy may take
    /// to finish before the agent exits (Istio's terminationDrainDuration).
    #[arg(long, default_value_t = 5)]
    drain_timeout_secs: u64,
    /// Cluster DNS domain, for resolving short host names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// This node's (or gateway's) `region/zone/subzone`, for locality-aware
    /// balancing (the node agent in a cluster reads its Node's topology
    /// labels when not given).
    #[arg(long)]
    locality: Option<String>,
    /// The resolver configuration the names of `resolution: DNS`
    /// ServiceEntries are looked up with.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// This node's name (downward API `spec.nodeName`): its pods are the
    /// local ones, watched with their addresses.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the status Lease (the agents' own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    lease_namespace: String,
    /// This agent's name as Lease holder (its pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Take the listening sockets and the pins over from the agent running
    /// on the same pins (an upgrade: the DaemonSet's surge pod); it drains
    /// and exits once this one serves. Without it a second agent is refused.
    /// With no agent running, a plain start.
    #[arg(long)]
    take_over: bool,
    /// How long to wait for the first complete sync before attaching the
    /// programs anyway (unready until the sync is applied).
    #[arg(long, default_value_t = 30)]
    sync_timeout_secs: u64,
    /// cgroup v2 directory to attach to; defaults to the root of the cgroup v2 mount.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Per-instance pin directory on bpffs.
    #[arg(long, default_value = "/sys/fs/bpf/mesh")]
    bpffs: PathBuf,
    /// Keep kernel run statistics (count, time) for the programs and show
    /// them in status; costs a clock read per program run.
    #[arg(long)]
    program_stats: bool,
    /// This node's address where pods reach the L7 proxy (in a cluster, the
    /// downward API's status.hostIP); one per family. Without one, nothing
    /// is captured and every service is balanced in the kernel.
    #[arg(long = "node-ip")]
    node_ips: Vec<IpAddr>,
    /// Port of the L7 proxy on the node addresses.
    #[arg(long, default_value_t = 15001)]
    proxy_port: u16,
    /// The mesh-wide outbound traffic policy (Istio's
    /// meshConfig.outboundTrafficPolicy); Sidecars override it per workload.
    #[arg(long, value_enum, default_value = "ALLOW_ANY")]
    outbound_traffic_policy: OutboundMode,
    /// A cgroup directory whose subdirectories `<namespace>_<pod>` are this
    /// node's pod cgroups: their outbound policy is enforced in the kernel.
    #[arg(long)]
    pod_cgroups: Option<PathBuf>,
    /// The kubelet's pod cgroups (its `kubepods` cgroup, e.g.
    /// /sys/fs/cgroup/kubepods.slice): pods found by UID, in a cluster.
    #[arg(long)]
    kubelet_cgroups: Option<PathBuf>,
    /// An address block of the mesh (a pod network): always reachable, also
    /// under REGISTRY_ONLY. Repeatable.
    #[arg(long = "mesh-cidr", value_parser = parse_cidr)]
    mesh_cidrs: Vec<(IpAddr, u8)>,
    /// While no proxy listens (the agent restarting or gone), connects to
    /// ports with L7 rules are balanced in the kernel at L4 (their L7 rules
    /// do not apply to those connections); `false`: they are refused.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    l7_fail_open: bool,
    /// Where the last good configuration is kept across restarts (the
    /// DaemonSet mounts a hostPath there).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The size of a kernel map, `MAP=ENTRIES` (repeatable): MAP is one of
    /// service-addresses, service-ips, backend-slots, backends, clusters,
    /// maglev-tables, maglev-entries (all tables' entries together, 2
    /// bytes each of kernel memory), workloads, registry or egress-scopes
    /// (outbound policy). Applies to maps this agent creates (pinned maps
    /// keep their size until `mesh-agent uninstall`); what does not fit is
    /// rejected per object (a service port, a Sidecar's egress scope, a
    /// workload, a source of registry addresses), named in the status.
    #[arg(long = "map-entries", value_parser = parse_map_entries)]
    map_entries: Vec<(dataplane::SizedMap, u32)>,
}

#[derive(clap::Args)]
struct GatewayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// This gateway workload's labels, `key=value` (comma-separated or
    /// repeated): the Gateways whose selector they match are served.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The pod's labels as the downward API writes them (`key="value"`
    /// lines), added to `--labels`.
    #[arg(long)]
    labels_file: Option<PathBuf>,
    /// This gateway's namespace (in a cluster, the pod's).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    namespace: String,
    /// The address listeners bind when a server names no `bind` (default:
    /// all addresses, both families).
    #[arg(long)]
    listen_ip: Option<IpAddr>,
}

fn main() -> anyhow::Result<()> {
    // A panic anywhere (say in the reload thread) ends the process, so a
    // supervisor restarts it; the pinned programs keep serving meanwhile.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    raise_open_files_limit();
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Gateway(args) => gateway(*args),
        Command::Crds { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (name, text) in k8s::crd::manifests() {
                let path = out.join(name);
                std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Sleep { seconds } => {
            std::thread::sleep(Duration::from_secs(seconds));
            Ok(())
        }
        Command::Uninstall { bpffs } => {
            // Never from under a running agent; the lock (and a killed
            // agent's lock file) goes with the pins.
            let _lock = dataplane::lock_instance(&bpffs)
                .with_context(|| format!("an agent still runs on {}; stop it first", bpffs.display()))?;
            std::fs::remove_dir_all(&bpffs).with_context(|| format!("removing {}", bpffs.display()))?;
            // A killed agent's handover socket, which nothing answers.
            let _ = std::fs::remove_file(handover::socket_path(&bpffs));
            tracing::info!(bpffs = %bpffs.display(), "pins removed; programs detached");
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let common = &args.common;
    let config_dir = config_dir(common)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let cgroup = match (&args.cgroup, config_dir) {
        (Some(path), _) => path.clone(),
        // Standalone, the root would mesh every process of the host.
        (None, Some(_)) => anyhow::bail!(
            "--cgroup is required with a config directory: it names the cgroup whose processes the mesh serves \
             (the cgroup root would capture every process on this host)"
        ),
        (None, None) => {
            let root =
                workloads::cgroup2_mounts(&mountinfo).next().context("no cgroup v2 mount found; pass --cgroup")?;
            let root = root.to_path_buf();
            tracing::warn!(cgroup = %root.display(), "no --cgroup: attaching to the cgroup root; every process on this host is meshed");
            root
        }
    };
    let _stats_guard = if args.program_stats { Some(dataplane::enable_program_stats()?) } else { None };
    let options = DataplaneOptions { cgroup, bpffs: args.bpffs.clone(), map_entries: args.map_entries.clone() };
    // An agent running on this instance (an upgrade, a restart) hands its
    // listeners over and lets the instance lock go before we take it.
    let handover_path = handover::socket_path(&args.bpffs);
    let mut inherited = match args.take_over {
        true => handover::take_over(&handover_path).context("taking over from the running agent")?,
        false => None,
    };
    if inherited.is_some() {
        tracing::info!("took the listeners over from the running agent");
    }
    let dataplane::Loaded { writer, mut ebpf, maps_taken_over, lock, map_sizes } =
        dataplane::load(&options).context("loading the kernel maps")?;
    let counters = CounterReader::open(&args.bpffs).context("opening the counter maps")?;
    // One thread for the proxy, the admin API and the watches: a
    // single-threaded scheduler has no cross-thread hand-offs per request.
    // (Map writes run on the reload thread.)
    let runtime = runtime()?;

    // The proxy listens before any connect can be captured to it.
    let node_v4 = args.node_ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let node_v6 = args.node_ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    let proxy_listeners = runtime.block_on(async {
        let mut listeners = Vec::new();
        for ip in node_v4.map(IpAddr::V4).into_iter().chain(node_v6.map(IpAddr::V6)) {
            let addr = SocketAddr::new(ip, args.proxy_port);
            listeners.push(match inherited.as_mut().and_then(|from| from.take(addr)) {
                Some(listener) => listener,
                None => proxy::bind(addr).await?,
            });
        }
        anyhow::Ok(listeners)
    })?;
    dataplane::set_proxy_target(&args.bpffs, node_v4, node_v6, args.proxy_port).context("setting the proxy address")?;
    dataplane::register_proxy_listeners(&args.bpffs, &proxy_listeners).context("registering the proxy's listeners")?;
    let original_dst = OriginalDstTable::open(&args.bpffs).context("opening the original-destination map")?;

    let (source, source_name, kube): (Box<dyn ConfigSource>, String, Option<(kube::Client, k8s::KubeStore)>) =
        match config_dir {
            Some(dir) => (Box::new(FileSource::new(dir)), format!("directory {}", dir.display()), None),
            None => {
                let client = runtime
                    .block_on(k8s::client(common.kubeconfig.as_deref()))
                    .context("connecting to the Kubernetes API")?;
                let kinds = k8s::watched_kinds(args.node_name.as_deref());
                let source = KubeSource::start(client.clone(), kinds, runtime.handle());
                let store = source.store();
                let name = format!("kubernetes (node {})", args.node_name.as_deref().unwrap_or("unknown"));
                (Box::new(source), name, Some((client, store)))
            }
        };
    let (reload, published) = ReloadLoop::new(source, Box::new(writer), common.cluster_domain.clone(), maps_taken_over);
    let reload = with_resolver(reload, &runtime, &common.resolv_conf);
    let pods = match (&args.pod_cgroups, &args.kubelet_cgroups) {
        (Some(_), Some(_)) => anyhow::bail!("--pod-cgroups and --kubelet-cgroups are two layouts: give one"),
        (Some(dir), None) | (None, Some(dir)) => {
            let layout = if args.pod_cgroups.is_some() { Layout::Named } else { Layout::Kubelet };
            Some(PodCgroups::new(dir, layout, &mountinfo)?)
        }
        (None, None) => None,
    };
    let node = NodeContext {
        default_policy: match args.outbound_traffic_policy {
            OutboundMode::AllowAny => OutboundPolicy::AllowAny,
            OutboundMode::RegistryOnly => OutboundPolicy::RegistryOnly,
        },
        pod_cgroups: Vec::new(),
        node_ips: args.node_ips.clone(),
        mesh_cidrs: args.mesh_cidrs.clone(),
        resolvers: std::fs::read_to_string(&common.resolv_conf).map(|t| workloads::nameservers(&t)).unwrap_or_default(),
        l7_fail_open: args.l7_fail_open,
        exempt_namespaces: vec!["kube-system".into(), args.lease_namespace.clone()],
        map_sizes,
        agent_cgroup: workloads::own_cgroup_id(
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            &mountinfo,
        ),
        locality: match (&common.locality, &kube, &args.node_name) {
            (Some(text), ..) => Some(Locality::parse(text)),
            (None, Some((client, _)), Some(node)) => match runtime.block_on(k8s::node_locality(client, node)) {
                Ok(locality) => locality,
                Err(error) => {
                    tracing::warn!(%error, node, "cannot read this node's locality; balancing ignores localities");
                    None
                }
            },
            _ => None,
        },
    };
    tracing::info!(locality = ?node.locality.as_ref().map(ToString::to_string), "node locality");
    let reload = reload.with_node(node, pods);
    let reload = match &args.state_dir {
        Some(dir) => reload.with_state(StateDir::new(dir)),
        None => reload,
    };
    // The first configuration goes into the maps before any program can
    // read them. It waits off the runtime, which meanwhile drives the
    // watches it waits for.
    let patience = if kube.is_some() { Duration::from_secs(args.sync_timeout_secs) } else { Duration::ZERO };
    let reload = first_load(&runtime, reload, patience)?;
    let info = dataplane::attach(&mut ebpf, &options, maps_taken_over).context("attaching the kernel programs")?;
    let reloading = Reloading::start(reload)?;
    let header_timeout = Duration::from_millis(common.header_timeout_ms);
    let proxy = Arc::new(Proxy::new(published.clone(), original_dst, common.access_log, header_timeout));
    let proxy_addrs = proxy_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let status_writer = kube.as_ref().map(|(client, store)| {
        let identity = args.identity.clone().unwrap_or_else(hostname);
        StatusWriter::new(
            client.clone(),
            args.lease_namespace.clone(),
            identity,
            LeaseTiming::default(),
            store.clone(),
            published.clone(),
        )
    });
    let shared = Arc::new(Shared {
        version: env!("CARGO_PKG_VERSION"),
        started: std::time::Instant::now(),
        source: source_name,
        watches: kube.as_ref().map(|(_, store)| store.clone()),
        status_writer: status_writer.as_ref().map(StatusWriter::leading),
        dataplane: Some(info),
        counters: Some(counters),
        published,
        proxy_listeners: proxy_addrs,
        proxy: proxy.clone(),
        stopping: AtomicBool::new(false),
    });

    let handover = Handover { path: handover_path, inherited };
    let serving = Serving { proxy: &proxy, proxy_listeners, handover: Some(handover) };
    let start = || {
        if let Some(writer) = status_writer {
            tokio::spawn(writer.run());
        }
    };
    // No map is written once stopped (or handed over): the successor, if
    // any, takes the lock at once, and loads while this one drains.
    let release = move || {
        reloading.stop();
        drop(lock);
    };
    serve_until_stopped(&runtime, common, shared, serving, start, release)?;
    // Maps and links stay pinned: connections keep being balanced by the
    // programs until the next agent takes them over.
    tracing::info!("stopped; kernel programs stay attached with the last configuration");
    Ok(())
}

fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let mut labels = std::collections::BTreeMap::new();
    if let Some(path) = &args.labels_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        labels.extend(downward_labels(&text));
    }
    for label in &args.labels {
        let (key, value) = label.split_once('=').with_context(|| format!("--labels {label:?}: expected key=value"))?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    if labels.is_empty() {
        anyhow::bail!("a gateway needs its labels (--labels or --labels-file): Gateways select workloads by them");
    }
    let common = &args.common;
    let config_dir = config_dir(common)?;
    let runtime = runtime()?;
    let (source, source_name, watches): (Box<dyn ConfigSource>, String, Option<k8s::KubeStore>) = match config_dir {
        Some(dir) => (Box::new(FileSource::new(dir)), format!("directory {}", dir.display()), None),
        None => {
            let client = runtime
                .block_on(k8s::client(common.kubeconfig.as_deref()))
                .context("connecting to the Kubernetes API")?;
            // Every pod's labels (for subsets), no pod's address: a
            // gateway has no clients in the mesh to tell apart.
            let namespace = Some(args.namespace.clone());
            let source = KubeSource::start_in(client, k8s::gateway_watched_kinds(), namespace, runtime.handle());
            let store = source.store();
            (Box::new(source), format!("kubernetes (gateway in {})", args.namespace), Some(store))
        }
    };
    let (reload, published) = ReloadLoop::new(source, Box::new(NoMaps), common.cluster_domain.clone(), false);
    let reload = with_resolver(reload, &runtime, &common.resolv_conf);
    let node = NodeContext { locality: common.locality.as_deref().map(Locality::parse), ..NodeContext::default() };
    let reload = reload.with_node(node, None);
    let patience = if watches.is_some() { Duration::from_secs(30) } else { Duration::ZERO };
    let reload = first_load(&runtime, reload, patience)?;
    let reloading = Reloading::start(reload)?;
    let header_timeout = Duration::from_millis(common.header_timeout_ms);
    let (proxy, state) = Proxy::for_gateway(published.clone(), common.access_log, header_timeout);
    let proxy = Arc::new(proxy);
    let shared = Arc::new(Shared {
        version: env!("CARGO_PKG_VERSION"),
        started: std::time::Instant::now(),
        source: source_name,
        watches,
        status_writer: None,
        dataplane: None,
        counters: None,
        published,
        proxy_listeners: Vec::new(),
        proxy: proxy.clone(),
        stopping: AtomicBool::new(false),
    });
    let options =
        proxy::gateway_state::GatewayOptions { labels, namespace: args.namespace.clone(), listen_ip: args.listen_ip };
    let serving = Serving { proxy: &proxy, proxy_listeners: Vec::new(), handover: None };
    let start = || {
        tokio::spawn(proxy::gateway::run(proxy.clone(), options, state));
    };
    serve_until_stopped(&runtime, common, shared, serving, start, || reloading.stop())
}

/// The YAML directory of `--source files` (None: `--source kubernetes`),
/// checked before anything starts.
fn config_dir(common: &CommonArgs) -> anyhow::Result<Option<&std::path::Path>> {
    match (common.source, &common.config_dir) {
        (SourceKind::Kubernetes, _) => Ok(None),
        (SourceKind::Files, Some(dir)) if dir.is_dir() => Ok(Some(dir)),
        (SourceKind::Files, Some(dir)) => anyhow::bail!("--config-dir {} is not a directory", dir.display()),
        (SourceKind::Files, None) => anyhow::bail!("--source files needs --config-dir"),
    }
}

/// The agent's runtime: one thread, which gives back what it freed when it
/// goes idle (the watches decode whole relists on it).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let collector = mesh_agent::memory::IdleCollector::default();
    tokio::runtime::Builder::new_current_thread().enable_all().on_thread_park(move || collector.parked()).build()
}

/// `reload` with the resolver of DNS ServiceEntries. Without a readable
/// resolver configuration the agent runs on, and those entries say they
/// have no answer.
fn with_resolver(reload: ReloadLoop, runtime: &tokio::runtime::Runtime, resolv_conf: &std::path::Path) -> ReloadLoop {
    match dns::start(runtime.handle(), resolv_conf) {
        Ok(link) => reload.with_dns(link),
        Err(error) => {
            tracing::warn!(%error, "no resolver: ServiceEntries with resolution DNS get no addresses");
            reload
        }
    }
}

/// The first load of `reload`, waiting up to `patience` for its source to
/// sync. It runs off the runtime, which meanwhile drives the watches it
/// waits for.
fn first_load(
    runtime: &tokio::runtime::Runtime,
    mut reload: ReloadLoop,
    patience: Duration,
) -> anyhow::Result<ReloadLoop> {
    let reload = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            reload.first_load(patience);
            reload
        })
        .await
    })?;
    Ok(reload)
}

/// The reload loop on a thread of its own, until stopped.
struct Reloading {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reloading {
    fn start(reload: ReloadLoop) -> anyhow::Result<Reloading> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("reload".into()).spawn(move || reload.run(flag))?;
        Ok(Reloading { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The node agent's side of a handover ([`handover`]): where it offers its
/// listeners to a successor, and what it took over itself.
struct Handover {
    path: PathBuf,
    inherited: Option<Inherited>,
}

/// What serves until stopped: the proxy and its listeners.
struct Serving<'a> {
    proxy: &'a Arc<Proxy>,
    proxy_listeners: Vec<tokio::net::TcpListener>,
    handover: Option<Handover>,
}

/// How long a successor may take from the listeners to serving (its first
/// sync included) before this agent drains anyway.
const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the admin API, the proxy's listeners and what `start` spawns (on
/// `runtime`) until SIGTERM or SIGINT, or until a successor takes the
/// listeners over; then `release`s what the successor needs (the reload
/// loop stops) and drains the proxy. Handed over, it then waits for SIGTERM.
fn serve_until_stopped(
    runtime: &tokio::runtime::Runtime,
    common: &CommonArgs,
    shared: Arc<Shared>,
    serving: Serving<'_>,
    start: impl FnOnce(),
    release: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    let Serving { proxy, proxy_listeners, handover } = serving;
    let (offer_path, mut inherited) = match handover {
        Some(Handover { path, inherited }) => (Some(path), inherited),
        None => (None, None),
    };
    runtime.block_on(async {
        // Registered once, for the agent's whole life: a signal that comes
        // while nothing waits for it is kept for the next wait.
        let mut stop = StopSignals::new()?;
        let mut take = |addr| inherited.as_mut().and_then(|from| from.take(addr));
        let admin_listener = match take(common.admin) {
            Some(listener) => listener,
            None => admin::bind(common.admin).await?,
        };
        let health_listener = match common.health {
            Some(addr) => Some(match take(addr) {
                Some(listener) => listener,
                None => admin::bind(addr).await?,
            }),
            None => None,
        };
        let mut offered: Vec<&tokio::net::TcpListener> = proxy_listeners.iter().collect();
        offered.push(&admin_listener);
        offered.extend(health_listener.as_ref());
        // Without the socket this agent serves, only never hands over.
        let offer = offer_path.and_then(|path| match Offer::new(&path, &offered) {
            Ok(offer) => Some(offer),
            Err(error) => {
                tracing::warn!(%error, "no handover socket: a successor will not take over from this agent");
                None
            }
        });
        let servers = serve_admin(admin_listener, health_listener, shared.clone());
        start();
        for listener in proxy_listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "L7 proxy listening");
            }
            tokio::spawn(proxy::serve(listener, proxy.clone()));
        }
        if let Some(from) = inherited {
            from.serving();
        }
        let successor = match &offer {
            Some(offer) => tokio::select! {
                () = stop.recv() => None,
                successor = offer.successor() => Some(successor),
            },
            None => {
                stop.recv().await;
                None
            }
        };
        // Unready from now on: a probe on a shared health socket must not
        // count this agent for its successor.
        shared.stopping.store(true, Ordering::Relaxed);
        // Our copies of the listeners close: on a plain stop the sockets
        // close with the accept loops, and the kernel fails open at once.
        drop(offer);
        // Joined off the runtime, which keeps serving meanwhile.
        tokio::task::spawn_blocking(release).await?;
        let mut outcome = Ok(());
        let handed_over = successor.is_some();
        if let Some(mut successor) = successor {
            tracing::info!("a successor takes the listeners over");
            let served = match successor.released() {
                Ok(()) => successor.serving(SUCCESSOR_TIMEOUT).await,
                Err(error) => Err(error),
            };
            match served {
                Ok(()) => tracing::info!("the successor serves"),
                // This agent no longer writes the maps: it exits, for its
                // supervisor to start it again (the kernel fails open).
                Err(error) => {
                    tracing::error!(%error, "the successor did not come to serve; draining and exiting");
                    outcome = Err(anyhow::anyhow!("the handover failed: {error}"));
                }
            }
            // Its admin API answers from now on.
            servers.iter().for_each(tokio::task::JoinHandle::abort);
        }
        drain(proxy, Duration::from_secs(common.drain_timeout_secs)).await;
        servers.iter().for_each(tokio::task::JoinHandle::abort);
        if handed_over && outcome.is_ok() {
            // Holding nothing now, but not gone: in a pod, an exit would
            // have the container restarted, and the restart take the
            // listeners back. The pod's deletion (SIGTERM) ends it, and
            // with it what the drain left (TCP relays, idle connections).
            tracing::info!("handed over and drained; waiting to be stopped");
            stop.recv().await;
        }
        outcome
    })
}

/// SIGTERM and SIGINT, registered once.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}

/// The admin API, and the health probes alone on their own listener.
fn serve_admin(
    admin: tokio::net::TcpListener,
    health: Option<tokio::net::TcpListener>,
    shared: Arc<Shared>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if let Ok(addr) = admin.local_addr() {
        tracing::info!(admin = %addr, "admin API listening");
    }
    let mut servers = vec![tokio::spawn(admin::serve(admin, shared.clone(), admin::Endpoints::All))];
    if let Some(listener) = health {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "health probes listening");
        }
        servers.push(tokio::spawn(admin::serve(listener, shared, admin::Endpoints::HealthOnly)));
    }
    servers
}

/// Labels as the downward API writes them: `key="value"` per line.
fn downward_labels(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once('=')?;
        let value = value.trim().trim_matches('"');
        Some((key.trim().to_owned(), value.to_owned()))
    })
}

/// Stops the proxy's listeners and lets its connections finish what they
/// serve, up to `timeout`.
async fn drain(proxy: &Proxy, timeout: Duration) {
    let open = proxy.drain.open();
    proxy.drain.start();
    tracing::info!(open, timeout_secs = timeout.as_secs(), "draining the proxy");
    if proxy.drain.finished(timeout).await {
        tracing::info!("proxy drained");
    } else {
        tracing::warn!(open = proxy.drain.open(), "drain timeout: closing the connections still open");
    }
}

/// This host's name, the Lease identity outside a pod.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "mesh-agent".into())
}
