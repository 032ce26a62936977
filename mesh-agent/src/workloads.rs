//! The pods of this node by their cgroups, for the kernel's per-workload
//! outbound policy. Standalone, `--pod-cgroups DIR` names a directory in
//! the cgroup v2 tree whose subdirectories are pod cgroups, each named
//! `<namespace>_<pod>`; a pod's processes may live in cgroups below its
//! own (one per container). A cgroup's id is its directory's inode number,
//! as the kernel's `bpf_get_current_cgroup_id` reports it, and its level
//! its depth below the cgroup root.

use mesh_core::node::PodCgroup;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadsError {
    #[error("--pod-cgroups {path} is not under the cgroup v2 mount {root}")]
    NotUnderRoot { path: PathBuf, root: PathBuf },
}

/// Lists the pod cgroups of one directory; [`changed`](Self::changed) says
/// when the list differs from the last one.
pub struct PodCgroups {
    dir: PathBuf,
    /// The depth of the pod cgroups (the directory's, plus one).
    level: u32,
    last: Option<Vec<PodCgroup>>,
}

impl PodCgroups {
    pub fn new(dir: &Path, cgroup_root: &Path) -> Result<Self, WorkloadsError> {
        let relative = dir
            .strip_prefix(cgroup_root)
            .map_err(|_| WorkloadsError::NotUnderRoot { path: dir.into(), root: cgroup_root.into() })?;
        let level = relative.components().count() as u32 + 1;
        Ok(Self { dir: dir.into(), level, last: None })
    }

    /// The pod cgroups now: `<namespace>_<pod>` subdirectories (others are
    /// skipped). A directory that cannot be read has none.
    pub fn scan(&self) -> Vec<PodCgroup> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut pods: Vec<PodCgroup> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let metadata = entry.metadata().ok().filter(|m| m.is_dir())?;
                let name = entry.file_name().into_string().ok()?;
                let (namespace, pod) = name.split_once('_')?;
                Some(PodCgroup { namespace: namespace.into(), name: pod.into(), id: metadata.ino(), level: self.level })
            })
            .collect();
        pods.sort();
        pods
    }

    /// The pod cgroups, when they changed since the last call (the first
    /// call always answers).
    pub fn changed(&mut self) -> Option<Vec<PodCgroup>> {
        let now = self.scan();
        if self.last.as_ref() == Some(&now) {
            return None;
        }
        if let Some(last) = &self.last {
            tracing::info!(before = last.len(), now = now.len(), "pod cgroups changed");
        }
        self.last = Some(now.clone());
        Some(now)
    }
}

/// The nameservers of a resolv.conf text: pods that use them reach them on
/// port 53 whatever their policy.
pub fn nameservers(resolv_conf: &str) -> Vec<std::net::IpAddr> {
    (resolv_conf.lines())
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_are_named_namespace_underscore_pod() {
        let root = std::env::temp_dir().join(format!("mesh-pods-{}", std::process::id()));
        let dir = root.join("kubepods");
        for name in ["shop_web-1", "locked_db-0", "not-a-pod"] {
            std::fs::create_dir_all(dir.join(name).join("container")).unwrap();
        }
        let mut pods = PodCgroups::new(&dir, &root).unwrap();
        let found: Vec<(String, String, u32)> =
            pods.scan().into_iter().map(|p| (p.namespace, p.name, p.level)).collect();
        assert_eq!(found, [("locked".into(), "db-0".into(), 2), ("shop".into(), "web-1".into(), 2)]);
        assert!(pods.changed().is_some() && pods.changed().is_none());
        std::fs::create_dir(dir.join("shop_web-2")).unwrap();
        assert_eq!(pods.changed().map(|p| p.len()), Some(3));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(PodCgroups::new(Path::new("/elsewhere"), Path::new("/sys/fs/cgroup")).is_err());
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n# nameserver 1.1.1.1\n";
        let found: Vec<String> = nameservers(text).iter().map(ToString::to_string).collect();
        assert_eq!(found, ["10.96.0.10", "fe80::1"]);
    }
}
