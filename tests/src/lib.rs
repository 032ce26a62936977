//! Integration-test harness for the mesh dataplane. Needs root.
//!
//! A [`TestEnv`] owns one isolated world: a child cgroup (the one the agent
//! attaches to), a "node" network namespace, pods (namespaces wired to the
//! node by veth pairs), a bpffs pin directory and a config directory. Tests
//! in one binary run in parallel; environments share nothing, and all of it
//! goes away when the `TestEnv` drops.
//!
//! Backends are threads of the test process ([`Pod::serve_tcp`] and friends).
//! Clients are `mesh-probe` subprocesses ([`TestEnv::probe`]), because a
//! socket takes its cgroup from the process that creates it: the probe joins
//! the test cgroup first, then enters the pod's namespace.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let env = mesh_tests::TestEnv::new("my_test")?;
//! let a = env.add_pod("a", "10.244.1.2", "fd00:244::1:2");
//! let b = env.add_pod("b", "10.244.2.2", "fd00:244::2:2");
//! let _srv = b.serve_tcp(8080);
//! env.write_config("svc.yaml", "...")?;
//! env.start_agent(&[])?;
//! let out = env.probe(&a, &["tcp", "--target", "10.96.0.10:80", "--count", "10"])?;
//! assert_eq!(out["backends"]["b"], 10);
//! # Ok(()) }
//! ```
//!
//! The agent binary is not built by `cargo test -p mesh-tests`; build it
//! first (`cargo build -p mesh-agent`) or point `MESH_AGENT_BIN` at it.

mod agent;
pub mod apiserver;
mod background;
pub mod deploy;
pub mod dns;
pub mod grpc;
pub mod h2;
mod names;
mod netns;
pub mod objects;
mod pod;
pub mod real_apiserver;
pub mod recorder;
mod server;
mod sync;
mod system;
pub mod tls;

#[doc(hidden)]
pub mod sys;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

pub use agent::http_get;
pub use netns::in_netns;
pub use pod::Pod;
pub use server::{read_http_head, HttpRequest, Server};
pub use sync::wait_until;

use agent::{Agent, AgentSpec};
use names::Names;
use pod::PodSpec;
use sync::lock;

/// Grace period between SIGTERM and SIGKILL when stopping the agent.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a new agent may take to load and serve in an upgrade.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of agent log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// One test's isolated cgroup, namespaces, pin dir, config dir and agent.
pub struct TestEnv {
    names: Names,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    tmp_dir: PathBuf,
    config_dir: PathBuf,
    node_netns: String,
    /// Namespace names of the pods, in creation order (index = veth number).
    pods: Mutex<Vec<String>>,
    servers: Arc<server::Registry>,
    agent: Mutex<Option<Agent>>,
    admin: Mutex<Option<SocketAddr>>,
    /// Set while the agent runs inside the node namespace.
    agent_netns: Mutex<Option<PathBuf>>,
}

/// The node's own addresses (on its loopback), where the agent's proxy
/// listens when it runs on the node: inside the pod ranges, so every pod
/// already routes to them through the node.
pub const NODE_IPV4: &str = "10.244.255.1";
pub const NODE_IPV6: &str = "fd00:244::ffff:1";

impl TestEnv {
    /// Creates the environment, first clearing leftovers of crashed runs of
    /// the same `test_name`. Fails if not root.
    pub fn new(test_name: &str) -> Result<TestEnv> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("mesh integration tests need root (cgroups, namespaces, bpffs)");
        }
        system::ensure_bpffs()?;
        system::remove_leftovers(test_name);
        let names = Names::new(test_name);
        let tmp_dir = names.tmp_dir();
        let env = TestEnv {
            cgroup: names.cgroup(),
            pin_dir: names.pin_dir(),
            config_dir: tmp_dir.join("config"),
            tmp_dir,
            node_netns: names.node_netns(),
            names,
            pods: Mutex::new(Vec::new()),
            servers: Arc::default(),
            agent: Mutex::new(None),
            admin: Mutex::new(None),
            agent_netns: Mutex::new(None),
        };
        // Built before anything exists, so Drop cleans up a half-made env.
        env.create().with_context(|| format!("creating test env {}", env.id()))?;
        Ok(env)
    }

    fn create(&self) -> Result<()> {
        system::create_cgroup(&self.cgroup)?;
        fs::create_dir_all(&self.config_dir).context("creating config dir")?;
        system::netns_add(&self.node_netns)?;
        system::set_net_sysctls(
            &self.node_netns,
            &[("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1")],
        )
    }

    /// Short unique id embedded in every name this env uses.
    pub fn id(&self) -> &str {
        &self.names.id
    }

    /// The cgroup v2 directory probes join and the agent attaches to.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The bpffs directory the agent pins under (created by the agent).
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The agent's `--config-dir`.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// A path of this test's own beside the config directory (PKI, state,
    /// uploads), removed with the environment.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.tmp_dir.join(name)
    }

    /// The agent's stdout/stderr log (appended to across restarts).
    pub fn agent_log_path(&self) -> PathBuf {
        self.tmp_dir.join("agent.log")
    }

    /// The whole agent log so far ("" if the agent never ran).
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.agent_log_path()).unwrap_or_default()
    }

    /// Path of the node namespace (`/var/run/netns/<name>`).
    pub fn node_netns_path(&self) -> PathBuf {
        system::netns_path(&self.node_netns)
    }

    /// Adds a pod with `ipv4`/32 and `ipv6`/128 on its eth0, routed to the
    /// other pods through the node namespace. Panics on bad addresses or if
    /// the namespace cannot be set up.
    pub fn add_pod(&self, name: &str, ipv4: &str, ipv6: &str) -> Pod {
        self.try_add_pod(name, ipv4, ipv6).unwrap_or_else(|e| panic!("adding pod {name}: {e:#}"))
    }

    fn try_add_pod(&self, name: &str, ipv4: &str, ipv6: &str) -> Result<Pod> {
        let ipv4: Ipv4Addr = ipv4.parse().with_context(|| format!("bad IPv4 {ipv4:?}"))?;
        let ipv6: Ipv6Addr = ipv6.parse().with_context(|| format!("bad IPv6 {ipv6:?}"))?;
        let mut pods = lock(&self.pods);
        let index = pods.len();
        let netns = self.names.pod_netns(index);
        // Recorded first so Drop deletes it even if wiring fails half-way.
        pods.push(netns.clone());
        let spec = PodSpec { name, ipv4, ipv6, index, netns, node_netns: &self.node_netns };
        Pod::create(spec, self.servers.clone())
    }

    /// Atomically (re)places `file_name` in the config dir: written beside
    /// the config dir, then renamed in, so the agent never sees a partial
    /// file nor a temp file.
    pub fn write_config(&self, file_name: &str, yaml: &str) -> Result<()> {
        let tmp = self.tmp_dir.join(format!(".{file_name}.tmp"));
        fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        let dest = self.config_dir.join(file_name);
        fs::rename(&tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))
    }

    /// Removes `file_name` from the config dir.
    pub fn remove_config(&self, file_name: &str) -> Result<()> {
        let path = self.config_dir.join(file_name);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// Starts `mesh-agent run --config-dir .. --cgroup .. --admin 127.0.0.1:<free port>
    /// --bpffs <pin dir> [extra_args]` and waits (20 s) until `/readyz` is 200.
    pub fn start_agent(&self, extra_args: &[&str]) -> Result<()> {
        self.start_agent_in(None, extra_args)
    }

    /// Starts the agent inside the node namespace with its proxy on the
    /// node addresses ([`NODE_IPV4`], [`NODE_IPV6`]), as a DaemonSet pod on
    /// the host network would run. Admin requests then go through the node
    /// namespace too.
    pub fn start_agent_on_node(&self, extra_args: &[&str]) -> Result<()> {
        let node = self.node_netns_path();
        system::ip_batch(
            &self.node_netns,
            &[
                "link set lo up".to_string(),
                format!("addr replace {NODE_IPV4}/32 dev lo"),
                format!("addr replace {NODE_IPV6}/128 dev lo"),
            ],
        )?;
        self.start_agent_in(Some(node), &on_node(extra_args))
    }

    /// An upgrade on the node, as the DaemonSet's surge pod makes it: starts
    /// a new agent like [`TestEnv::start_agent_on_node`], with `--take-over`,
    /// while the running one serves, on the same admin address. The new one
    /// takes the listeners over and the old one drains (up to `drain`); then
    /// the old one is stopped (SIGTERM, as its pod's deletion). Returns the
    /// old one's exit status.
    pub fn upgrade_agent_on_node(&self, extra_args: &[&str], drain: Duration) -> Result<ExitStatus> {
        let old = lock(&self.agent).take().ok_or_else(|| anyhow!("no agent to upgrade"))?;
        let admin = self.admin_addr();
        let node = self.node_netns_path();
        let mut args = vec!["--take-over"];
        args.extend(on_node(extra_args));
        let done = "handed over and drained";
        let before = self.agent_log().matches(done).count();
        // Its readiness is asked once the old one has handed over: until
        // then the old one answers on the shared admin address.
        let mut new = self.spawn_agent(Some(node.clone()), Some(admin), &args)?;
        let handed_over = wait_until(drain + HANDOVER_TIMEOUT, || self.agent_log().matches(done).count() > before);
        if !handed_over {
            let _ = old.stop(Duration::ZERO);
            new.kill();
            bail!("the old agent did not hand over and drain\n{}", self.agent_log());
        }
        new.wait_ready(admin, Some(&node))?;
        *lock(&self.agent) = Some(new);
        old.stop(AGENT_STOP_GRACE)
    }

    fn start_agent_in(&self, netns: Option<PathBuf>, extra_args: &[&str]) -> Result<()> {
        if lock(&self.agent).is_some() {
            bail!("agent already running");
        }
        let agent = self.spawn_agent(netns, None, extra_args)?;
        *lock(&self.agent) = Some(agent);
        Ok(())
    }

    /// Starts the agent (ready unless `admin` is given: then the caller
    /// asks) on `admin`, else on a free port.
    fn spawn_agent(&self, netns: Option<PathBuf>, admin: Option<SocketAddr>, extra_args: &[&str]) -> Result<Agent> {
        let wait_ready = admin.is_none();
        let admin = admin.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let log = self.agent_log_path();
        let own_cgroup = self.names.agent_cgroup();
        let mut args: Vec<OsString> = vec!["run".into(), "--config-dir".into(), self.config_dir.clone().into()];
        args.extend(["--cgroup".into(), self.cgroup.clone().into(), "--admin".into(), admin.to_string().into()]);
        args.extend(["--bpffs".into(), self.pin_dir.clone().into()]);
        args.extend(extra_args.iter().map(OsString::from));
        let spec =
            AgentSpec { bin: agent_bin(), args, own_cgroup: &own_cgroup, admin, log: &log, netns: netns.clone() };
        *lock(&self.admin) = Some(admin);
        *lock(&self.agent_netns) = netns;
        if wait_ready {
            Agent::start(&spec)
        } else {
            Agent::spawn(&spec)
        }
    }

    /// Starts `mesh-agent gateway --config-dir <the env's> --admin
    /// <pod ip>:15000 [args]` inside `pod`'s network namespace (no kernel
    /// programs: a gateway dials endpoints directly) and waits until it is
    /// ready. It stops when the handle drops.
    pub fn start_gateway(&self, pod: &Pod, args: &[&str]) -> Result<Gateway> {
        let admin = SocketAddr::new(pod.ipv4().into(), 15000);
        let log = self.tmp_dir.join(format!("gateway-{}.log", pod.name()));
        let own_cgroup = self.names.agent_cgroup();
        let mut all: Vec<OsString> = vec!["gateway".into(), "--config-dir".into(), self.config_dir.clone().into()];
        all.extend(["--admin".into(), admin.to_string().into()]);
        all.extend(args.iter().map(OsString::from));
        let netns = Some(pod.netns_path());
        let spec = AgentSpec { bin: agent_bin(), args: all, own_cgroup: &own_cgroup, admin, log: &log, netns };
        let process = Agent::start(&spec)?;
        Ok(Gateway { process: Some(process), admin, netns: pod.netns_path(), log })
    }

    /// SIGTERM to the agent, SIGKILL after 5 s; returns its exit status.
    pub fn stop_agent(&self) -> Result<ExitStatus> {
        let agent = lock(&self.agent).take().ok_or_else(|| anyhow!("agent not running"))?;
        agent.stop(AGENT_STOP_GRACE)
    }

    /// SIGKILL to the agent (a crash: pinned state stays behind).
    pub fn kill_agent(&self) -> Result<()> {
        let mut agent = lock(&self.agent).take().ok_or_else(|| anyhow!("agent not running"))?;
        agent.kill();
        Ok(())
    }

    /// Pid of the running agent, if any.
    pub fn agent_pid(&self) -> Option<u32> {
        lock(&self.agent).as_ref().map(Agent::pid)
    }

    /// Admin address of the current (or last) agent. Panics if none was started.
    pub fn admin_addr(&self) -> SocketAddr {
        lock(&self.admin).expect("admin_addr: the agent was never started")
    }

    /// `GET path` on the admin API: (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let netns = lock(&self.agent_netns).clone();
        agent::http_get_in(netns.as_deref(), self.admin_addr(), path)
    }

    /// The namespace the agent runs in, when not the test's own.
    pub fn agent_netns(&self) -> Option<PathBuf> {
        lock(&self.agent_netns).clone()
    }

    /// `GET path` on the admin API, parsed as JSON. Panics unless the answer
    /// is 200 with a JSON body.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(path).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// Runs `mesh-probe --cgroup <cgroup> --netns <pod netns> args...` to
    /// completion and parses its stdout as JSON; errors (with its stderr) if
    /// it exits non-zero.
    pub fn probe(&self, pod: &Pod, args: &[&str]) -> Result<serde_json::Value> {
        self.probe_in(&self.cgroup, pod, args)
    }

    /// The directory of pod cgroups (`--pod-cgroups` for the agent), below
    /// the test cgroup.
    pub fn pod_cgroups_dir(&self) -> PathBuf {
        self.cgroup.join("pods")
    }

    /// The cgroup of a container of pod `namespace/pod`, nested as a
    /// kubelet nests it: the pod cgroup `<pods>/<namespace>_<pod>`, and one
    /// below for the container. Made on first use.
    pub fn container_cgroup(&self, namespace: &str, pod: &str) -> PathBuf {
        let path = self.pod_cgroups_dir().join(format!("{namespace}_{pod}")).join("app");
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        path
    }

    /// [`probe`](Self::probe), run in `cgroup` (one below the test cgroup).
    pub fn probe_in(&self, cgroup: &Path, pod: &Pod, args: &[&str]) -> Result<serde_json::Value> {
        let out = probe_command(cgroup, pod, args).stdin(Stdio::null()).output().context("running mesh-probe")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("mesh-probe {args:?} in pod {} failed ({}): {}", pod.name(), out.status, stderr.trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!("mesh-probe {args:?}: stdout is not JSON: {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// Spawns a long-lived probe (e.g. `hold`) with stdin and stdout piped:
    /// read its JSON line with [`read_json_line`], close stdin to end it.
    /// It is killed with the cgroup when the env drops.
    pub fn spawn_probe(&self, pod: &Pod, args: &[&str]) -> Child {
        self.probe_command(pod, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", probe_bin().display()))
    }

    fn probe_command(&self, pod: &Pod, args: &[&str]) -> Command {
        probe_command(&self.cgroup, pod, args)
    }

    fn print_agent_log_tail(&self) {
        let tail = agent::log_tail(&self.agent_log_path(), LOG_TAIL_LINES);
        if !tail.is_empty() {
            eprintln!("---- mesh-agent log tail ({}) ----\n{tail}\n----", self.agent_log_path().display());
        }
    }

    /// Teardown in dependency order; errors are reported, never panic.
    fn teardown(&mut self) -> Vec<anyhow::Error> {
        let mut errors = Vec::new();
        if let Some(agent) = self.agent.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            if let Err(e) = agent.stop(AGENT_STOP_GRACE) {
                errors.push(e.context("stopping agent"));
            }
        }
        // Server sockets would keep the pod namespaces alive.
        self.servers.stop_all();
        // The agent's cgroup is a child of the test cgroup: it goes first.
        for cgroup in [self.names.agent_cgroup(), self.cgroup.clone()] {
            errors.extend(system::remove_cgroup(&cgroup).err());
        }
        let pods = std::mem::take(self.pods.get_mut().unwrap_or_else(|e| e.into_inner()));
        for netns in pods.iter().rev().chain([&self.node_netns]) {
            errors.extend(system::netns_del(netns).err());
        }
        if self.pin_dir.exists() {
            // As an operator would: `uninstall` removes the pins, and what
            // an agent killed (by `kill_agent`, or past its stop grace)
            // left in /run/mesh-agent.
            let uninstalled = Command::new(agent_bin()).arg("uninstall").arg("--bpffs").arg(&self.pin_dir).output();
            if let Err(error) = uninstalled.as_ref().map_err(ToString::to_string).and_then(|out| {
                out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
            }) {
                errors.push(anyhow!("mesh-agent uninstall: {error}"));
            }
        }
        errors.extend(system::remove_pin_tree(&self.pin_dir).err());
        if std::env::var_os("MESH_TEST_KEEP_TMP").is_none() {
            errors.extend(system::remove_tmp_dir(&self.tmp_dir).err());
        }
        errors
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_agent_log_tail();
        }
        for e in self.teardown() {
            eprintln!("mesh-tests: cleanup of {}: {e:#}", self.names.id);
        }
    }
}

/// A running `mesh-agent gateway`; stopped when dropped.
pub struct Gateway {
    process: Option<Agent>,
    admin: SocketAddr,
    netns: PathBuf,
    log: PathBuf,
}

impl Gateway {
    /// `GET path` on its admin API.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        agent::http_get_in(Some(&self.netns), self.admin, path)
    }

    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = self.admin_get(path).unwrap_or_else(|e| panic!("gateway {path}: {e:#}"));
        assert_eq!(code, 200, "gateway {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("gateway {path}: {e}: {body}"))
    }

    pub fn log(&self) -> String {
        agent::log_tail(&self.log, 200)
    }

    /// `meshctl args...` against this gateway's admin API.
    pub fn meshctl(&self, args: &[&str]) -> String {
        meshctl(Some(&self.netns), self.admin, args).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let _ = process.stop(AGENT_STOP_GRACE);
        }
    }
}

/// Reads one line of JSON from a spawned probe's stdout (e.g. `hold`'s
/// `{"held": ..}`), byte by byte so nothing after it is swallowed.
pub fn read_json_line(child: &mut Child) -> Result<serde_json::Value> {
    let stdout = child.stdout.as_mut().ok_or_else(|| anyhow!("probe stdout not piped"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    serde_json::from_slice(&line)
        .with_context(|| format!("probe line is not JSON: {:?}", String::from_utf8_lossy(&line)))
}

/// `mesh-probe --cgroup <cgroup> --netns <pod netns> args...`.
fn probe_command(cgroup: &Path, pod: &Pod, args: &[&str]) -> Command {
    let mut command = Command::new(probe_bin());
    command.arg("--cgroup").arg(cgroup).arg("--netns").arg(pod.netns_path()).args(args);
    command
}

/// The arguments of an agent on the node: its proxy on the node addresses.
fn on_node<'a>(extra_args: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--node-ip", NODE_IPV4, "--node-ip", NODE_IPV6];
    args.extend_from_slice(extra_args);
    args
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding 127.0.0.1:0")
}

/// The `mesh-probe` binary: `MESH_PROBE_BIN`, else next to the running test.
pub fn probe_bin() -> PathBuf {
    built_bin("MESH_PROBE_BIN", "mesh-probe")
}

/// The `mesh-agent` binary: `MESH_AGENT_BIN`, else next to the running test.
pub fn agent_bin() -> PathBuf {
    built_bin("MESH_AGENT_BIN", "mesh-agent")
}

/// The `meshctl` binary: `MESHCTL_BIN`, else next to the running test.
pub fn meshctl_bin() -> PathBuf {
    built_bin("MESHCTL_BIN", "meshctl")
}

/// Runs `meshctl args... --admin admin` in `netns` (the host's when None);
/// its stdout, or an error with its stderr when it fails.
pub fn meshctl(netns: Option<&Path>, admin: SocketAddr, args: &[&str]) -> Result<String> {
    let run = || std::process::Command::new(meshctl_bin()).args(args).args(["--admin", &admin.to_string()]).output();
    let output = match netns {
        Some(netns) => in_netns(netns, run)?,
        None => run(),
    }
    .context("running meshctl")?;
    anyhow::ensure!(output.status.success(), "meshctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `$var`, else the target dir of the running test binary (which honours
/// CARGO_TARGET_DIR and the profile), else `<workspace>/target/debug`.
fn built_bin(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let beside_test = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.ends_with("deps") { dir.parent()? } else { dir };
        Some(dir.join(name)).filter(|p| p.exists())
    });
    beside_test.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name))
}
