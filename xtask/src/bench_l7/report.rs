//! Rounds and the report: each figure's median over the rounds, the table
//! as printed, and each round's figures after it.

use anyhow::{anyhow, Result};
use std::fmt::Write as _;

use super::plan::{load_name, Load, Options, PathKind, BODY_BYTES, CLIENT_CPU, PROXY_CPU};
use super::run::{micros, PathResult, Run, ATTEMPTS};
use super::tools::Tools;

/// Each path's runs with every figure the median of the rounds' (a load
/// that failed in every round keeps its first failure).
pub(super) fn median_of_rounds(rounds: &[Vec<(PathKind, PathResult)>]) -> Vec<(PathKind, PathResult)> {
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
pub(super) fn render_rounds(opts: &Options, rounds: &[Vec<(PathKind, PathResult)>]) -> String {
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
            let _ = writeln!(out, "  {:<9} {:<17} {}", load_name(*load), kind.name(), figures.join("  |  "));
        }
    }
    out
}

/// The median of an optional figure of `runs`, when every run has it.
pub(super) fn median_if_all<R>(runs: &[&R], figure: fn(&R) -> Option<f64>) -> Option<f64> {
    let values: Option<Vec<f64>> = runs.iter().map(|run| figure(run)).collect();
    values.map(|values| median(values.into_iter()))
}

/// The middle of the values (the mean of the middle two for an even count).
pub(super) fn median(values: impl Iterator<Item = f64>) -> f64 {
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
        let optional = |figure: fn(&Run) -> Option<f64>| median_if_all(runs, figure);
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

/// Each path's runs, in `--paths` order.
type Results = [(PathKind, PathResult)];

/// The table of every path at every load, as printed.
pub(super) fn render(opts: &Options, tools: &Tools, results: &Results) -> String {
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
        "mesh-10k-services: mesh with 10,000 more services configured, each with a VirtualService.",
        "mesh-remote: the same to the backend pod outside the mesh: proxy -> backend is TCP, as to another node.",
        "nginx, haproxy, envoy: client -> that proxy on the node -> backend pod.",
        "gateway, nginx-tls: HTTPS (keep-alive, TLS terminated) -> mesh-agent gateway or nginx -> backend pod.",
        "x dir: rps and p99 over direct's at the same load. µs/req: the proxy's utime+stime per request.",
        "RSS: the proxy's VmRSS after the run.",
        "",
    ] {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "{:<9} {:<17} {:>8} {:>6} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>6}",
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
            let _ = writeln!(out, "{label:<9} {:<17} {line}", kind.name());
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
