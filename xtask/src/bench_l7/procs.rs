//! Processes and the machine: the bench's cgroups, placing a process in a
//! cgroup, network namespace and CPU, and the CPU and memory accounting
//! (per process, per CPU, and whether the machine is quiet).

use anyhow::{Context, Result};
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const CGROUP_PREFIX: &str = "mesh-bench-l7-";

/// Sibling cgroups of the test cgroup, one per long-lived process group the
/// bench starts (backend, each peer), and one inside it for the meshed
/// backend. Dropping kills and removes them all.
pub(super) struct Cgroups {
    root: PathBuf,
    pub(super) meshed_backend: PathBuf,
}

impl Cgroups {
    pub(super) fn create(mesh: &Path) -> Result<Self> {
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

    pub(super) fn child(&self, name: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        if !path.exists() {
            std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(path)
    }
}

/// Kills every process of `cgroup` and waits (5 s at most) until it is empty.
pub(super) fn kill_cgroup(cgroup: &Path) {
    let _ = std::fs::write(cgroup.join("cgroup.kill"), "1");
    mesh_tests::wait_until(Duration::from_secs(5), || cgroup_pids(cgroup).is_empty());
}

pub(super) fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
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
pub(super) fn place(cmd: &mut Command, cgroup: &Path, netns: &Path, cpu: usize) -> Result<()> {
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
pub(super) fn pin_process(pid: u32, cpu: usize) -> Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        pin_task(tid, cpu).with_context(|| format!("pinning thread {tid} of {pid} to CPU {cpu}"))?;
    }
    Ok(())
}

/// utime+stime of the processes, in microseconds.
pub(super) fn cpu_micros(pids: &[u32]) -> u64 {
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
pub(super) fn children_cpu_micros() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// utime+stime (µs) and name of every process.
pub(super) fn process_times() -> std::collections::HashMap<u32, (String, u64)> {
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
pub(super) const CPU_PROCESS: [usize; 3] = [0, 1, 2];
pub(super) const CPU_BUSY: [usize; 5] = [0, 1, 2, 5, 6];
pub(super) const CPU_STEAL: usize = 7;

pub(super) fn clock_ticks() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// Per-CPU times from /proc/stat (user nice system idle iowait irq softirq
/// steal ...), in ticks.
pub(super) fn cpu_times() -> Vec<Vec<u64>> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| l.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
        .collect()
}

/// The time (µs) CPU `cpu` spent in the /proc/stat `fields` between two
/// [`cpu_times`] readings.
pub(super) fn cpu_delta_micros(before: &[Vec<u64>], after: &[Vec<u64>], cpu: usize, fields: &[usize]) -> u64 {
    let (Some(before), Some(after)) = (before.get(cpu), after.get(cpu)) else { return 0 };
    let ticks: u64 = fields
        .iter()
        .map(|&f| after.get(f).copied().unwrap_or(0).saturating_sub(before.get(f).copied().unwrap_or(0)))
        .sum();
    ticks * 1_000_000 / clock_ticks()
}

/// VmRSS of the processes, in KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// How long to wait for the machine to calm down before a run.
const QUIET_WAIT: Duration = Duration::from_secs(120);

/// Waits (up to QUIET_WAIT) for a second in which the machine's processes
/// use under 5% of one CPU: another session's build would skew the run.
pub(super) fn wait_quiet() {
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
