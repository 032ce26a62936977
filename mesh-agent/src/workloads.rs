//! The pods of this node by their cgroups, for the kernel's per-workload
//! outbound policy, in one of two layouts:
//!
//! - named (`--pod-cgroups DIR`, standalone): the subdirectories of DIR are
//!   pod cgroups named `<namespace>_<pod>`;
//! - the kubelet's (`--kubelet-cgroups DIR`, in a cluster, DIR its
//!   `kubepods` cgroup): pod cgroups named by the pod's UID, one level down
//!   for Guaranteed pods and two (below the QoS class) for the others, with
//!   the systemd driver's names (`kubepods-burstable-pod<uid>.slice`, dashes
//!   of the UID as `_`) or cgroupfs's (`burstable/pod<uid>`).
//!
//! A pod's processes live in cgroups below its own (one per container). A
//! cgroup's id is its directory's inode number, as the kernel's
//! `bpf_get_current_cgroup_id` reports it, and its level its depth below
//! the root of the cgroup v2 hierarchy.

use mesh_core::node::PodCgroup;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WorkloadsError {
    #[error("pod cgroups {path} are not under a cgroup v2 mount")]
    NotUnderRoot { path: PathBuf },
}

/// How pod cgroups are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `<namespace>_<pod>` directories.
    Named,
    /// The kubelet's, by pod UID.
    Kubelet,
}

/// Lists the pod cgroups of one directory; [`changed`](Self::changed) says
/// when the list differs from the last one.
pub struct PodCgroups {
    dir: PathBuf,
    layout: Layout,
    /// The directory's own depth in the hierarchy.
    level: u32,
    last: Option<Vec<PodCgroup>>,
}

impl PodCgroups {
    /// Pod cgroups in `dir`, laid out as `layout`; the hierarchy's root is
    /// the cgroup v2 mount (from `mountinfo`, the text of
    /// `/proc/self/mountinfo`) that holds `dir`.
    pub fn new(dir: &Path, layout: Layout, mountinfo: &str) -> Result<Self, WorkloadsError> {
        let root =
            cgroup2_mount_for(dir, mountinfo).ok_or_else(|| WorkloadsError::NotUnderRoot { path: dir.into() })?;
        let level = dir.strip_prefix(&root).map(|r| r.components().count() as u32).unwrap_or(0);
        Ok(Self { dir: dir.into(), layout, level, last: None })
    }

    /// The pod cgroups now (other directories are skipped). A directory
    /// that cannot be read has none.
    pub fn scan(&self) -> Vec<PodCgroup> {
        let mut pods = Vec::new();
        for (path, name, depth) in subdirectories(&self.dir, if self.layout == Layout::Kubelet { 2 } else { 1 }) {
            let Ok(metadata) = std::fs::metadata(&path) else { continue };
            let (id, level) = (metadata.ino(), self.level + depth);
            match self.layout {
                Layout::Named => {
                    if let Some((namespace, pod)) = name.split_once('_') {
                        pods.push(PodCgroup { namespace: namespace.into(), name: pod.into(), uid: None, id, level });
                    }
                }
                Layout::Kubelet => {
                    if let Some(uid) = kubelet_pod_uid(&name) {
                        pods.push(PodCgroup {
                            namespace: String::new(),
                            name: String::new(),
                            uid: Some(uid),
                            id,
                            level,
                        });
                    }
                }
            }
        }
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

/// Directories below `dir` down to `depth` levels: (path, name, depth).
fn subdirectories(dir: &Path, depth: u32) -> Vec<(PathBuf, String, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if depth > 1 {
            found.extend(subdirectories(&entry.path(), depth - 1).into_iter().map(|(p, n, d)| (p, n, d + 1)));
        }
        found.push((entry.path(), name, 1));
    }
    found
}

/// The pod UID a kubelet cgroup name carries: `kubepods-pod<uid>.slice`,
/// `kubepods-<qos>-pod<uid>.slice` (systemd, the UID's dashes as `_`) or
/// `pod<uid>` (cgroupfs).
pub fn kubelet_pod_uid(name: &str) -> Option<String> {
    let name = name.strip_suffix(".slice").unwrap_or(name);
    let uid = match name.rsplit_once("-pod") {
        Some((_, uid)) => uid,
        None => name.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    let well_formed = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    well_formed.then_some(uid)
}

/// The cgroup v2 mount points the text of `/proc/self/mountinfo` lists,
/// in its order (the first is the hierarchy's, or this namespace's, root).
pub fn cgroup2_mounts(mountinfo: &str) -> impl Iterator<Item = &Path> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| Path::new(mount_point))
    })
}

/// The cgroup v2 mount point that holds `path` (the longest), from the
/// text of `/proc/self/mountinfo`.
pub fn cgroup2_mount_for(path: &Path, mountinfo: &str) -> Option<PathBuf> {
    cgroup2_mounts(mountinfo)
        .filter(|mount| path.starts_with(mount))
        .max_by_key(|mount| mount.components().count())
        .map(Path::to_path_buf)
}

/// The id of this process's own cgroup v2 (0 when it cannot be told): the
/// inode of its directory, found from `/proc/self/cgroup` under the
/// hierarchy's mount (`mountinfo`).
pub fn own_cgroup_id(proc_self_cgroup: &str, mountinfo: &str) -> u64 {
    let Some(path) = proc_self_cgroup.lines().find_map(|line| line.strip_prefix("0::")) else { return 0 };
    let Some(root) = cgroup2_mounts(mountinfo).next() else { return 0 };
    std::fs::metadata(root.join(path.trim_start_matches('/'))).map(|m| m.ino()).unwrap_or(0)
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
        let mountinfo = format!("30 1 0:26 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        let mut pods = PodCgroups::new(&dir, Layout::Named, &mountinfo).unwrap();
        let found: Vec<(String, String, u32)> =
            pods.scan().into_iter().map(|p| (p.namespace, p.name, p.level)).collect();
        assert_eq!(found, [("locked".into(), "db-0".into(), 2), ("shop".into(), "web-1".into(), 2)]);
        assert!(pods.changed().is_some() && pods.changed().is_none());
        std::fs::create_dir(dir.join("shop_web-2")).unwrap();
        assert_eq!(pods.changed().map(|p| p.len()), Some(3));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(PodCgroups::new(Path::new("/elsewhere"), Layout::Named, &mountinfo).is_err());
    }

    #[test]
    fn kubelet_cgroups_are_named_by_pod_uid_in_either_driver() {
        let uid = "0b3c5a8e-1d2f-4a6b-9c7d-112233445566";
        for name in [
            "kubepods-burstable-pod0b3c5a8e_1d2f_4a6b_9c7d_112233445566.slice",
            "kubepods-pod0b3c5a8e_1d2f_4a6b_9c7d_112233445566.slice",
            "pod0b3c5a8e-1d2f-4a6b-9c7d-112233445566",
        ] {
            assert_eq!(kubelet_pod_uid(name).as_deref(), Some(uid), "{name}");
        }
        for name in ["kubepods-burstable.slice", "besteffort", "cri-containerd-abc.scope", "podnot-a-uid"] {
            assert_eq!(kubelet_pod_uid(name), None, "{name}");
        }
        let mountinfo = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                         40 25 0:22 / /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let mount = cgroup2_mount_for(Path::new("/host/sys/fs/cgroup/kubepods.slice"), mountinfo);
        assert_eq!(mount.as_deref(), Some(Path::new("/host/sys/fs/cgroup")), "the mount that holds it");
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\n# nameserver 1.1.1.1\n";
        let found: Vec<String> = nameservers(text).iter().map(ToString::to_string).collect();
        assert_eq!(found, ["10.96.0.10", "fe80::1"]);
    }
}
