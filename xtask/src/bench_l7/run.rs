//! One measured run: the load generator (oha at a fixed rate, wrk at the
//! maximum) in the client pod, the proxy's and backend's CPU counted around
//! it, and its output parsed; a path's runs at every load, repeated while
//! the machine disturbs them.

use anyhow::{anyhow, bail, Context, Result};
use mesh_tests::{wait_until, Pod, TestEnv};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::peers::{filler_config, start_peer};
use super::plan::{load_name, Load, Options, PathKind, CLIENT_CPU, FILLER_SERVICES, PROXY_CPU};
use super::procs::{
    cgroup_pids, children_cpu_micros, cpu_delta_micros, cpu_micros, cpu_times, place, process_times, rss_kib,
    wait_quiet, Cgroups, CPU_BUSY, CPU_PROCESS, CPU_STEAL,
};
use super::tools::Tools;

/// Runs of one measurement when other processes disturb it.
pub(super) const ATTEMPTS: u32 = 3;
/// Warm-up before each path's measurements: pools filled, caches warm.
const WARMUP: Duration = Duration::from_secs(2);

/// A CPU figure per request as the tables print it (`-` when not measured).
pub(super) fn micros(value: Option<f64>) -> String {
    value.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())
}

fn verbose() -> bool {
    std::env::var_os("MESH_BENCH_VERBOSE").is_some()
}

/// What one run measured.
#[derive(Default, Clone)]
pub(super) struct Run {
    pub(super) rps: f64,
    /// Milliseconds.
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    /// Successful (2xx) responses.
    pub(super) ok: u64,
    /// Errors and non-2xx responses.
    pub(super) errors: u64,
    pub(super) proxy_micros_per_request: Option<f64>,
    /// All busy time of the proxy's CPU per request.
    pub(super) cpu1_micros_per_request: Option<f64>,
    /// CPU time of other processes during the run.
    pub(super) foreign_micros: u64,
    /// Time the hypervisor gave the machine's CPUs to someone else.
    pub(super) steal_micros: u64,
    /// Disturbed in every attempt (this is the least disturbed one).
    pub(super) noisy: bool,
    pub(super) backend_micros_per_request: f64,
    pub(super) rss_kib: Option<u64>,
}

/// A measured run that other processes or the hypervisor may have skewed.
pub(super) trait Disturbed {
    /// Other processes' CPU time during the run, and the hypervisor's steal.
    fn foreign_and_steal_micros(&self) -> (u64, u64);
    /// Marks it as disturbed in every attempt.
    fn mark_noisy(&mut self);

    /// The larger of the two things that skew a run.
    fn disturbance_micros(&self) -> u64 {
        let (foreign, steal) = self.foreign_and_steal_micros();
        foreign.max(steal)
    }
}

impl Disturbed for Run {
    fn foreign_and_steal_micros(&self) -> (u64, u64) {
        (self.foreign_micros, self.steal_micros)
    }

    fn mark_noisy(&mut self) {
        self.noisy = true;
    }
}

/// Runs `measure` (once the machine is quiet) until a run of `seconds` is
/// disturbed by at most 5% of one CPU (other processes' CPU time, or the
/// hypervisor's steal), at most [`ATTEMPTS`] times; else the least
/// disturbed run, marked. `what` names the run in the messages.
pub(super) fn least_disturbed<R: Disturbed>(
    what: &str,
    seconds: u32,
    mut measure: impl FnMut() -> Result<R>,
) -> Result<R> {
    let limit = u64::from(seconds) * 50_000;
    let mut calmest: Option<R> = None;
    for attempt in 1..=ATTEMPTS {
        wait_quiet();
        let run = measure()?;
        if run.disturbance_micros() <= limit {
            return Ok(run);
        }
        let (foreign, steal) = run.foreign_and_steal_micros();
        eprintln!(
            "bench: {what}: other processes used {} ms of CPU and the hypervisor took {} ms (steal) during the run{}",
            foreign / 1000,
            steal / 1000,
            if attempt < ATTEMPTS { "; again" } else { "; keeping the least disturbed attempt, marked" }
        );
        if calmest.as_ref().is_none_or(|c| run.disturbance_micros() < c.disturbance_micros()) {
            calmest = Some(run);
        }
    }
    let mut run = calmest.expect("at least one attempt");
    run.mark_noisy();
    Ok(run)
}

/// What every run needs: the world, the tools and the options.
pub(super) struct Bench<'a> {
    pub(super) env: &'a TestEnv,
    pub(super) client: &'a Pod,
    pub(super) tools: &'a Tools,
    pub(super) opts: &'a Options,
    /// The backend pod's cgroup, outside the mesh.
    pub(super) backend_cgroup: PathBuf,
    /// The meshed backend pod's cgroup, inside the mesh's.
    pub(super) meshed_backend_cgroup: PathBuf,
    /// A cgroup with no programs, for clients of the paths without the mesh.
    pub(super) plain_cgroup: PathBuf,
}

impl Bench<'_> {
    /// Runs the load generator from the client pod, inside the test cgroup,
    /// on the client CPU, while counting the proxy's and backend's CPU.
    fn measure(&self, kind: PathKind, proxy_pids: &[u32], load: Load, seconds: u32) -> Result<Run> {
        let url = format!("{}://{}/", kind.scheme(), kind.target());
        let mut cmd = match load {
            Load::Rate(rate) => {
                let oha = self.tools.oha.clone().map_err(|e| anyhow!("oha unavailable: {e}"))?;
                let mut cmd = Command::new(oha);
                cmd.args(["--no-tui", "--output-format", "json", "--wait-ongoing-requests-after-deadline"])
                    .args(["-z", &format!("{seconds}s"), "-c", &self.opts.connections.to_string()])
                    .args(["-q", &rate.to_string(), "--latency-correction", &url]);
                if kind.scheme() == "https" {
                    // The bench's own CA; wrk does not verify either.
                    cmd.arg("--insecure");
                }
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
        let meshed = matches!(kind, PathKind::Mesh | PathKind::MeshManyServices);
        let backend_cgroup = if meshed { &self.meshed_backend_cgroup } else { &self.backend_cgroup };
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
        let cpu_delta = |cpu: usize, fields: &[usize]| cpu_delta_micros(&cpus_before, &cpus_after, cpu, fields);
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
                let what = format!("{} at {}", kind.name(), load_name(load));
                let run = least_disturbed(&what, self.opts.seconds, || {
                    self.measure(kind, proxy_pids, load, self.opts.seconds)
                });
                if let Err(e) = &run {
                    eprintln!("bench: {what}: {e:#}");
                }
                (load, run)
            })
            .collect()
    }

    /// One path's runs at every load: the peer it needs started for them
    /// and stopped after.
    pub(super) fn path_measured(
        &self,
        kind: PathKind,
        agent_pid: u32,
        cgroups: &Cgroups,
        peers_dir: &Path,
    ) -> PathResult {
        let (env, tools) = (self.env, self.tools);
        match kind {
            PathKind::Direct | PathKind::DirectBpf => Ok(self.path(kind, &[])),
            PathKind::MeshManyServices => {
                let services =
                    |env: &TestEnv| env.admin_json("/config_dump")["services"].as_array().map_or(0, Vec::len);
                let base = services(env);
                let added = env.write_config("filler.yaml", &filler_config(FILLER_SERVICES)).is_ok()
                    && wait_until(Duration::from_secs(60), || services(env) >= base + FILLER_SERVICES as usize);
                let runs = added.then(|| self.path(kind, &[agent_pid]));
                let _ = env.remove_config("filler.yaml");
                let _ = wait_until(Duration::from_secs(60), || services(env) == base);
                runs.ok_or_else(|| format!("the {FILLER_SERVICES} services did not load"))
            }
            _ if kind.is_mesh() => Ok(self.path(kind, &[agent_pid])),
            _ => match start_peer(kind, tools, env, cgroups, peers_dir, 0) {
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
            ["50%", value] => run.p50 = duration_millis(value)?,
            ["90%", value] => run.p90 = duration_millis(value)?,
            ["99%", value] => run.p99 = duration_millis(value)?,
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

/// A load generator's duration ("850.12us", "1.23ms", "2.00s", "1.5m": wrk's
/// and h2load's) in milliseconds.
pub(super) fn duration_millis(value: &str) -> Result<f64> {
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

/// One path's runs per load, or why the path could not run.
pub(super) type PathResult = Result<Vec<(Load, Result<Run>)>, String>;
