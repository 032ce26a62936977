//! Names of the system objects one `TestEnv` owns.
//!
//! Every name carries a tag derived from the test name and the owner's pid,
//! so a later run of the same test can find leftovers of a crashed run and
//! tell them from objects of a live process. An id looks like `k3f-pa8-0`:
//! tag (3 base-36 chars), pid and per-process counter (base 36). Base 36
//! keeps network-namespace names within the 15 characters of an interface
//! name even for 7-digit pids.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
pub(crate) const NETNS_DIR: &str = "/var/run/netns";
pub(crate) const TMP_ROOT: &str = "/tmp";

/// Prefix of cgroups, pin dirs and temp dirs.
const DIR_PREFIX: &str = "mesh-test-";
/// Prefix of network namespaces (short, see module docs).
const NETNS_PREFIX: &str = "mt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) struct Names {
    pub id: String,
}

impl Names {
    pub fn new(test_name: &str) -> Names {
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{}", tag(test_name), base36(std::process::id()), base36(counter));
        Names { id }
    }

    pub fn cgroup(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(format!("{DIR_PREFIX}{}", self.id))
    }

    /// The agent runs in a child of the test cgroup, as a node agent runs
    /// inside the cgroup it attaches to: the short-circuit only pairs
    /// sockets that are both in that cgroup (pods and the agent's proxy).
    /// Its own connects go to pod addresses, which pass through untouched.
    /// `cgroup.kill` of the test cgroup kills it along with the probes.
    pub fn agent_cgroup(&self) -> PathBuf {
        self.cgroup().join("agent")
    }

    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPFFS).join(format!("{DIR_PREFIX}{}", self.id))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        Path::new(TMP_ROOT).join(format!("{DIR_PREFIX}{}", self.id))
    }

    pub fn node_netns(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.id)
    }

    pub fn pod_netns(&self, index: usize) -> String {
        format!("{NETNS_PREFIX}{}-{}", self.id, base36(index as u32))
    }
}

/// One place that holds objects named with a test tag.
pub(crate) struct LeftoverDir {
    pub dir: &'static str,
    prefix: &'static str,
}

pub(crate) const NETNS_LEFTOVERS: LeftoverDir = LeftoverDir { dir: NETNS_DIR, prefix: NETNS_PREFIX };
pub(crate) const CGROUP_LEFTOVERS: LeftoverDir = LeftoverDir { dir: CGROUP_ROOT, prefix: DIR_PREFIX };
pub(crate) const PIN_LEFTOVERS: LeftoverDir = LeftoverDir { dir: BPFFS, prefix: DIR_PREFIX };
pub(crate) const TMP_LEFTOVERS: LeftoverDir = LeftoverDir { dir: TMP_ROOT, prefix: DIR_PREFIX };

impl LeftoverDir {
    /// Entries of this dir named for `test_name`, with the pid that made them.
    pub fn entries(&self, test_name: &str) -> Vec<(String, u32)> {
        let prefix = format!("{}{}-", self.prefix, tag(test_name));
        let Ok(read) = std::fs::read_dir(self.dir) else {
            return Vec::new();
        };
        read.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| {
                let pid = name.strip_prefix(&prefix)?.split('-').next()?;
                let pid = u32::from_str_radix(pid, 36).ok()?;
                Some((name, pid))
            })
            .collect()
    }
}

/// Three base-36 chars of an FNV-1a hash of the test name.
fn tag(test_name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in test_name.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("{:0>3}", base36(h % (36 * 36 * 36)))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_fit_an_interface_name() {
        let n = Names { id: format!("{}-{}-{}", tag("x"), base36(4_194_304), base36(35)) };
        assert!(n.pod_netns(35).len() <= 15, "{}", n.pod_netns(35));
    }

    #[test]
    fn base36_round_trips() {
        for n in [0, 35, 36, 32768, 4_194_304] {
            assert_eq!(u32::from_str_radix(&base36(n), 36).unwrap(), n);
        }
    }
}
