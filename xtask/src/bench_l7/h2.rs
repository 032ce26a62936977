//! `cargo xtask bench h2`: HTTP/2 clients through the agent's proxy, to an
//! HTTP/1.1 upstream and to an HTTP/2 one on the same backend pod, next to
//! the limit (no proxy). The aim: h2 → h2 carries at least as many
//! requests a second as h2 → HTTP/1.1.
//!
//! The world is `bench l7`'s, with one more server in the meshed backend
//! pod: the same 1 KiB answer over HTTP/2 with prior knowledge (h2c), on
//! [`H2_BACKEND_PORT`], behind the service `web-h2`, whose port says
//! HTTP/2 (appProtocol `kubernetes.io/h2c`), so the proxy speaks HTTP/2 to
//! it. The load generator is h2load (Debian's `nghttp2-client`, installed
//! when missing), h2c with prior knowledge, `--connections` connections
//! with up to `--streams` requests under way on each, in the client pod on
//! the client CPU: in the mesh's cgroup for the mesh rows (its connects are
//! captured and sent to the proxy), in one without programs for `direct-h2`.
//!
//! Rows take turns within a round; each row gets a warm-up run (pools
//! filled) and then a measured run of `--seconds`, run again (as `bench
//! l7`'s) when other processes or the hypervisor took more than 5% of a CPU
//! meanwhile. The agent's CPU per request is its utime+stime over the run
//! divided by the requests that succeeded.

use anyhow::{bail, Context, Result};
use mesh_tests::{wait_until, TestEnv};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::peers::h2_config;
use super::plan::{
    BACKEND_PORT, BODY_BYTES, CLIENT_CPU, H2_BACKEND_PORT, H2_SERVICE_IP, MESHED_BACKEND_IP, PROXY_CPU, SERVICE_IP,
    SERVICE_PORT,
};
use super::procs::{
    cgroup_pids, children_cpu_micros, cpu_delta_micros, cpu_micros, cpu_times, place, rss_kib, CPU_PROCESS, CPU_STEAL,
};
use super::report::{median, median_if_all};
use super::run::{duration_millis, least_disturbed, Disturbed, ATTEMPTS};
use super::tools::ensure_h2load;
use super::world::{print_agent_errors, require_root, World};

/// Warm-up before each row's measured run: the proxy's upstream
/// connections open, caches warm. Not counted: h2load's own warm-up would
/// leave its requests out of the count but not out of the proxy's CPU.
const WARMUP_SECONDS: u32 = 2;

/// The command line of `bench h2`.
pub struct H2Options {
    pub connections: u32,
    pub streams: u32,
    pub seconds: u32,
    pub rounds: u32,
}

/// One row of the table: where h2load sends its requests.
#[derive(Clone, Copy, PartialEq)]
enum Row {
    /// Straight to the backend pod's HTTP/2 server.
    Direct,
    /// Service `web`: the proxy speaks HTTP/1.1 to the backend.
    ToHttp1,
    /// Service `web-h2`: the proxy speaks HTTP/2 to the backend.
    ToHttp2,
}

impl Row {
    const ALL: [Row; 3] = [Row::Direct, Row::ToHttp1, Row::ToHttp2];

    fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct-h2",
            Row::ToHttp1 => "h2→h1",
            Row::ToHttp2 => "h2→h2",
        }
    }

    fn url(self) -> String {
        match self {
            Row::Direct => format!("http://{}:{H2_BACKEND_PORT}/", MESHED_BACKEND_IP.0),
            Row::ToHttp1 => format!("http://{SERVICE_IP}:{SERVICE_PORT}/"),
            Row::ToHttp2 => format!("http://{H2_SERVICE_IP}:{SERVICE_PORT}/"),
        }
    }

    fn is_mesh(self) -> bool {
        self != Row::Direct
    }

    /// The backend endpoint the proxy's upstream connections go to, as
    /// `/status` names it.
    fn upstream(self) -> Option<String> {
        match self {
            Row::Direct => None,
            Row::ToHttp1 => Some(format!("{}:{BACKEND_PORT}", MESHED_BACKEND_IP.0)),
            Row::ToHttp2 => Some(format!("{}:{H2_BACKEND_PORT}", MESHED_BACKEND_IP.0)),
        }
    }
}

/// What h2load printed at the end of a run.
#[derive(Debug, Default, PartialEq)]
struct H2loadReport {
    /// "Application protocol:", which must be h2c.
    protocol: String,
    rps: f64,
    /// The mean of "time for request", in milliseconds.
    mean_ms: f64,
    succeeded: u64,
    /// h2load's "failed": non-2xx answers, stream and connection errors
    /// and timeouts.
    failed: u64,
}

/// Parses h2load's text output: "Application protocol: h2c", "finished in
/// 10.00s, 12345.67 req/s, 1.23MB/s", "requests: N total, N started, N
/// done, N succeeded, N failed, N errored, N timeout" and "time for
/// request: MIN MAX MEAN SD +/-SD" (durations in us, ms or s).
fn parse_h2load(text: &str) -> Result<H2loadReport> {
    let mut report = H2loadReport::default();
    let (mut finished, mut requests, mut latency) = (false, false, false);
    for line in text.lines().map(str::trim) {
        if let Some(protocol) = line.strip_prefix("Application protocol:") {
            report.protocol = protocol.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("finished in") {
            let rps = rest.split(',').map(str::trim).find_map(|part| part.strip_suffix(" req/s"));
            report.rps = rps.with_context(|| format!("no req/s in {line:?}"))?.trim().parse()?;
            finished = true;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            for part in rest.split(',') {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else { continue };
                let count: u64 = count.parse().with_context(|| format!("bad count in {line:?}"))?;
                match what {
                    "succeeded" => report.succeeded = count,
                    "failed" => report.failed = count,
                    _ => {}
                }
            }
            requests = true;
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            let mean = rest.split_whitespace().nth(2).with_context(|| format!("no mean in {line:?}"))?;
            report.mean_ms = duration_millis(mean)?;
            latency = true;
        }
    }
    if !(finished && requests && latency) {
        bail!("h2load's output lacks its summary: {text}");
    }
    Ok(report)
}

/// What one row measured in one run.
#[derive(Clone, Default)]
struct Measured {
    rps: f64,
    mean_ms: f64,
    failed: u64,
    /// The agent's CPU per request (mesh rows).
    proxy_micros_per_request: Option<f64>,
    /// The agent's VmRSS after the run (mesh rows).
    rss_kib: Option<u64>,
    /// The proxy's connections to the backend after the run: HTTP/1.1
    /// idle in the pool, or HTTP/2 open (mesh rows, from `/status`).
    upstream_connections: Option<u64>,
    foreign_micros: u64,
    steal_micros: u64,
    /// Disturbed in every attempt (this is the least disturbed one).
    noisy: bool,
}

impl Disturbed for Measured {
    fn foreign_and_steal_micros(&self) -> (u64, u64) {
        (self.foreign_micros, self.steal_micros)
    }

    fn mark_noisy(&mut self) {
        self.noisy = true;
    }
}

struct Bench<'a> {
    world: &'a World,
    h2load: &'a Path,
    opts: &'a H2Options,
    /// A cgroup with no programs, for the client of `direct-h2`.
    plain_cgroup: PathBuf,
}

impl Bench<'_> {
    /// h2load against `row` for `seconds` (`-D`), or `requests` (`-n`)
    /// on one connection; its report.
    fn h2load(&self, row: Row, load: Load) -> Result<H2loadReport> {
        let mut cmd = Command::new(self.h2load);
        match load {
            Load::Seconds(seconds) => cmd
                .args(["-c", &self.opts.connections.to_string(), "-m", &self.opts.streams.to_string()])
                .args(["-D", &seconds.to_string()]),
            Load::Requests(requests) => cmd.args(["-c", "1", "-m", "1", "-n", &requests.to_string()]),
        };
        cmd.arg(row.url());
        let cgroup = if row.is_mesh() { self.world.env.cgroup_path() } else { &self.plain_cgroup };
        place(&mut cmd, cgroup, &self.world.client.netns_path(), CLIENT_CPU)?;
        let out = cmd.stdin(Stdio::null()).output().context("running h2load")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("h2load failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let report = parse_h2load(&stdout)?;
        if report.protocol != "h2c" {
            bail!("h2load spoke {:?}, not h2c: {stdout}", report.protocol);
        }
        Ok(report)
    }

    /// Every row answers its requests (the services served, the kernel
    /// sending them to the proxy) before anything is measured.
    fn check(&self, row: Row) -> Result<()> {
        let mut last = None;
        let answered = wait_until(Duration::from_secs(10), || {
            let report = self.h2load(row, Load::Requests(20));
            let ok = report.as_ref().is_ok_and(|r| r.succeeded == 20);
            last = Some(report);
            ok
        });
        if !answered {
            let why = match last {
                Some(Ok(report)) => format!("{} of 20 succeeded", report.succeeded),
                Some(Err(e)) => format!("{e:#}"),
                None => "not run".into(),
            };
            bail!("{} ({}): {why}\n{}", row.name(), row.url(), self.world.env.agent_log());
        }
        Ok(())
    }

    /// One measured run: h2load, the agent's and the backends' CPU counted
    /// around it, and the rest of the machine's.
    fn measure(&self, row: Row) -> Result<Measured> {
        let agent = [self.world.agent_pid];
        let backends = cgroup_pids(&self.world.cgroups.meshed_backend);
        let (agent_before, backends_before) = (cpu_micros(&agent), cpu_micros(&backends));
        let client_before = children_cpu_micros();
        let cpus_before = cpu_times();
        let report = self.h2load(row, Load::Seconds(self.opts.seconds))?;
        let (agent_micros, backend_micros) =
            (cpu_micros(&agent) - agent_before, cpu_micros(&backends) - backends_before);
        let client_micros = children_cpu_micros() - client_before;
        let cpus_after = cpu_times();
        if report.succeeded == 0 {
            bail!("no request succeeded ({} failed)", report.failed);
        }
        let cpus = 0..cpus_after.len();
        let process_time: u64 =
            cpus.clone().map(|cpu| cpu_delta_micros(&cpus_before, &cpus_after, cpu, &CPU_PROCESS)).sum();
        let mut run = Measured {
            rps: report.rps,
            mean_ms: report.mean_ms,
            failed: report.failed,
            // The agent runs during every row; only the rest is someone else's.
            foreign_micros: process_time.saturating_sub(client_micros + agent_micros + backend_micros),
            steal_micros: cpus.map(|cpu| cpu_delta_micros(&cpus_before, &cpus_after, cpu, &[CPU_STEAL])).sum(),
            ..Measured::default()
        };
        if let Some(upstream) = row.upstream() {
            run.proxy_micros_per_request = Some(agent_micros as f64 / report.succeeded as f64);
            run.rss_kib = Some(rss_kib(&agent));
            run.upstream_connections = self.upstream_connections(&upstream, row == Row::ToHttp2);
        }
        Ok(run)
    }

    /// The proxy's connections to `endpoint` from its `/status`: open
    /// HTTP/2 ones, or idle pooled HTTP/1.1 ones.
    fn upstream_connections(&self, endpoint: &str, http2: bool) -> Option<u64> {
        let Ok((200, body)) = self.world.env.admin_get("/status") else { return None };
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        let pools = status["upstream_pools"].as_array()?;
        let pool = pools.iter().find(|pool| pool["endpoint"] == endpoint)?;
        pool[if http2 { "http2_connections" } else { "http1_idle" }].as_u64()
    }

    /// A row's warm-up, then its measured run, again while the machine
    /// disturbs it (the least disturbed attempt kept, marked).
    fn row(&self, row: Row) -> Result<Measured> {
        if let Err(e) = self.h2load(row, Load::Seconds(WARMUP_SECONDS)) {
            eprintln!("bench: warm-up of {} failed: {e:#}", row.name());
        }
        least_disturbed(row.name(), self.opts.seconds, || self.measure(row))
    }
}

/// What an h2load run is given: a duration, with the bench's connections
/// and streams; or a number of requests, on one connection.
#[derive(Clone, Copy)]
enum Load {
    Seconds(u32),
    Requests(u32),
}

pub fn h2(opts: &H2Options) -> Result<()> {
    require_root()?;
    if opts.seconds == 0 || opts.connections == 0 || opts.streams == 0 || opts.rounds == 0 {
        bail!("--seconds, --connections, --streams and --rounds must be positive");
    }
    let (h2load, h2load_version) = ensure_h2load()?;
    let mut world = World::new("bench-h2")?;
    world.add_meshed_backend(H2_BACKEND_PORT, true)?;
    let services = |env: &TestEnv| env.admin_json("/config_dump")["services"].as_array().map_or(0, Vec::len);
    let before = services(&world.env);
    world.env.write_config("web-h2.yaml", &h2_config())?;
    if !wait_until(Duration::from_secs(30), || services(&world.env) > before) {
        bail!("the agent did not serve web-h2 within 30 s\n{}", world.env.agent_log());
    }
    let plain_cgroup = world.cgroups.child("client")?;
    let bench = Bench { world: &world, h2load: &h2load, opts, plain_cgroup };
    for row in Row::ALL {
        bench.check(row)?;
    }
    // Rows take turns within a round, so a slow spell of the machine
    // spreads over all of them rather than one.
    let mut rounds: Vec<Vec<Result<Measured, String>>> = Vec::new();
    for round in 1..=opts.rounds {
        let mut results = Vec::new();
        for row in Row::ALL {
            eprintln!("bench: {} (round {round} of {})", row.name(), opts.rounds);
            let result = bench.row(row).map_err(|e| format!("{e:#}"));
            if let Err(e) = &result {
                eprintln!("bench: {}: {e}", row.name());
            }
            results.push(result);
        }
        rounds.push(results);
    }
    let agent_log = world.env.agent_log();
    world.env.stop_agent()?;
    drop(world);

    print!("{}", render(opts, &h2load_version, &rounds));
    print_agent_errors(&agent_log);
    Ok(())
}

/// Each figure the median of the runs' (counts summed; memory and
/// connections the largest; noisy only when every run was).
fn median_of(runs: &[&Measured]) -> Measured {
    let optional = |figure: fn(&Measured) -> Option<f64>| median_if_all(runs, figure);
    Measured {
        rps: median(runs.iter().map(|r| r.rps)),
        mean_ms: median(runs.iter().map(|r| r.mean_ms)),
        failed: runs.iter().map(|r| r.failed).sum(),
        proxy_micros_per_request: optional(|r| r.proxy_micros_per_request),
        rss_kib: runs.iter().filter_map(|r| r.rss_kib).max(),
        upstream_connections: runs.iter().filter_map(|r| r.upstream_connections).max(),
        foreign_micros: runs.iter().map(|r| r.foreign_micros).max().unwrap_or_default(),
        steal_micros: runs.iter().map(|r| r.steal_micros).max().unwrap_or_default(),
        noisy: runs.iter().all(|r| r.noisy),
    }
}

/// The table, each figure the median of the rounds', and each round's
/// req/s after it.
fn render(opts: &H2Options, h2load_version: &str, rounds: &[Vec<Result<Measured, String>>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "H2: HTTP/2 GET with prior knowledge (h2c), {BODY_BYTES} B responses; h2load ({h2load_version}), {} connections x {} streams, {} s per run;",
        opts.connections, opts.streams, opts.seconds
    );
    let _ = writeln!(out, "client and backends on CPU {CLIENT_CPU}, proxy alone on CPU {PROXY_CPU}.");
    let _ = writeln!(
        out,
        "Figures: the median of {} round(s), each running every row in turn (failed: the sum).",
        opts.rounds
    );
    for line in [
        "direct-h2: client -> the meshed backend pod's HTTP/2 server, no proxy (the limit).",
        "h2→h1: client -> service web, sent by the kernel to the agent's proxy -> the pod's HTTP/1.1 server.",
        "h2→h2: client -> service web-h2 (appProtocol kubernetes.io/h2c) -> the proxy -> the pod's HTTP/2 server.",
        "x dir: req/s over direct-h2's. mean: h2load's mean time for request. µs/req: the agent's utime+stime",
        "per request. RSS: the agent's VmRSS after the run. upstream: the proxy's connections to the backend",
        "after the run (h2→h1: idle pooled HTTP/1.1; h2→h2: open HTTP/2), from /status.",
        "",
    ] {
        let _ = writeln!(out, "{line}");
    }
    let medians: Vec<Result<Measured, String>> = (0..Row::ALL.len())
        .map(|index| {
            let ok: Vec<&Measured> = rounds.iter().filter_map(|round| round.get(index)?.as_ref().ok()).collect();
            match ok.is_empty() {
                false => Ok(median_of(&ok)),
                true => Err(rounds.iter().find_map(|round| round.get(index)?.clone().err()).unwrap_or_default()),
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "{:<10} {:>9} {:>6} {:>8} {:>7} {:>7} {:>7} {:>9}",
        "row", "req/s", "x dir", "mean ms", "failed", "µs/req", "RSS MB", "upstream"
    );
    let direct = medians.first().and_then(|m| m.as_ref().ok()).map(|m| m.rps);
    let mut noisy = false;
    for (row, measured) in Row::ALL.iter().zip(&medians) {
        let line = match measured {
            Err(reason) => format!("failed: {}", reason.lines().next().unwrap_or_default()),
            Ok(m) => {
                noisy |= m.noisy;
                let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
                format!(
                    "{:>9.0} {:>6} {:>8.3} {:>7} {:>7} {:>7} {:>9}{}",
                    m.rps,
                    optional(direct.filter(|d| *d > 0.0).map(|d| format!("{:.2}x", m.rps / d))),
                    m.mean_ms,
                    m.failed,
                    optional(m.proxy_micros_per_request.map(|v| format!("{v:.1}"))),
                    optional(m.rss_kib.map(|k| format!("{:.1}", k as f64 / 1024.0))),
                    optional(m.upstream_connections.map(|c| c.to_string())),
                    if m.noisy { " *" } else { "" },
                )
            }
        };
        let _ = writeln!(out, "{:<10} {line}", row.name());
    }
    if let (Some(Ok(to_h1)), Some(Ok(to_h2))) = (medians.get(1), medians.get(2)) {
        let cpu = match (to_h1.proxy_micros_per_request, to_h2.proxy_micros_per_request) {
            (Some(h1), Some(h2)) if h1 > 0.0 => format!(", agent µs/req {:.2}x", h2 / h1),
            _ => String::new(),
        };
        let _ = writeln!(out, "h2→h2 / h2→h1: req/s {:.2}x{cpu}", to_h2.rps / to_h1.rps.max(f64::MIN_POSITIVE));
    }
    if noisy {
        let _ = writeln!(
            out,
            "* other processes or the hypervisor (steal) took over 5% of a CPU during all {ATTEMPTS} attempts of this run (the least disturbed is kept), in every round"
        );
    }
    if rounds.len() > 1 {
        let _ = writeln!(out, "Each round (req/s; µs/req):");
        for (index, row) in Row::ALL.iter().enumerate() {
            let figures: Vec<String> = rounds
                .iter()
                .map(|round| match round.get(index) {
                    Some(Ok(m)) => format!(
                        "{:.0}; {}",
                        m.rps,
                        m.proxy_micros_per_request.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
                    ),
                    _ => "failed".into(),
                })
                .collect();
            let _ = writeln!(out, "  {:<10} {}", row.name(), figures.join("  |  "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2load 1.52's output for a duration run (-D), progress lines and all.
    const SAMPLE: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Application protocol: h2c
Main benchmark duration is started for client #0.
Main benchmark duration is over for client #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 41234.56 req/s, 45.05MB/s
requests: 206173 total, 206333 started, 206173 done, 206170 succeeded, 3 failed, 2 errored, 0 timeout
status codes: 206170 2xx, 0 3xx, 0 4xx, 1 5xx
traffic: 225.27MB (236212345) total, 1.18MB (1237038) headers (space savings 96.15%), 211.12MB (221378752) data
                     min         max         mean         sd        +/- sd
time for request:    850.12us     12.34ms      3.87ms      1.02ms    71.23%
time for connect:       123us       456us       234us        56us    75.00%
time to 1st byte:      1.23ms      2.34ms      1.56ms       345us    62.50%
req/s           :    2500.12     2700.34     2577.16       50.12    68.75%
";

    #[test]
    fn h2load_output_is_read() {
        let report = parse_h2load(SAMPLE).unwrap();
        assert_eq!(
            report,
            H2loadReport { protocol: "h2c".into(), rps: 41234.56, mean_ms: 3.87, succeeded: 206170, failed: 3 }
        );
        assert_eq!(duration_millis("850.12us").unwrap(), 0.85012);
        assert_eq!(duration_millis("2.00s").unwrap(), 2e3);
        assert!(duration_millis("5min").is_err());
        // A run that never got to its summary (say, nothing to connect to).
        assert!(parse_h2load("starting benchmark...\nclient could not connect to host\n").is_err());
    }

    #[test]
    fn a_median_takes_each_figure_on_its_own() {
        let run = |rps: f64, micros: Option<f64>, failed: u64| Measured {
            rps,
            proxy_micros_per_request: micros,
            failed,
            upstream_connections: Some(failed),
            ..Measured::default()
        };
        let runs = [run(30.0, Some(9.0), 1), run(10.0, Some(8.0), 0), run(20.0, Some(7.0), 2)];
        let median = median_of(&runs.iter().collect::<Vec<_>>());
        assert_eq!((median.rps, median.proxy_micros_per_request), (20.0, Some(8.0)));
        assert_eq!((median.failed, median.upstream_connections), (3, Some(2)));
    }
}
