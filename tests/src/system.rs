//! Creating and removing the system objects of a test: network namespaces,
//! cgroups, bpffs pin dirs, and clearing leftovers of crashed runs.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::names::{self, LeftoverDir};

/// `ip` with `args`; the error carries the command line and ip's stderr.
pub(crate) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Several `ip` commands in one process (`ip -n <netns> -batch -`): one
/// fork per pod side instead of one per command.
pub(crate) fn ip_batch(netns: &str, commands: &[String]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(commands.join("\n").as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ip -n {netns} -batch: {}\n{}", String::from_utf8_lossy(&out.stderr).trim(), commands.join("\n"));
    }
    Ok(())
}

/// Serializes `ip netns add`: the first one makes /var/run/netns a shared
/// mount, and two racing first calls stack two mounts there.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// Creates the named network namespace with loopback up.
pub(crate) fn netns_add(name: &str) -> Result<()> {
    {
        let _guard = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

pub(crate) fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new(names::NETNS_DIR).join(name)
}

/// Deletes the namespace's name; the kernel frees it once no socket or
/// process holds it any more.
pub(crate) fn netns_del(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "del", name])
}

/// Writes sysctls of a network namespace: /proc/sys/net resolves against the
/// writing thread's namespace, so a thread inside it is enough.
pub(crate) fn set_net_sysctls(netns: &str, sysctls: &[(&str, &str)]) -> Result<()> {
    crate::netns::in_netns(&netns_path(netns), || -> Result<()> {
        for (key, value) in sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).with_context(|| format!("sysctl {key}={value}"))?;
        }
        Ok(())
    })?
}

pub(crate) fn create_cgroup(path: &Path) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating cgroup {}", path.display()))
}

/// Kills everything in the cgroup and its descendants (`cgroup.kill`) and
/// removes them, children first. rmdir fails with EBUSY until the killed
/// processes have exited.
pub(crate) fn remove_cgroup(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    // Missing on kernels before 5.14; then only an empty cgroup can go.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path())?;
            }
        }
    }
    let mut last = None;
    let removed = crate::sync::wait_until(Duration::from_secs(5), || match fs::remove_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            last = Some(e);
            false
        }
    });
    if !removed {
        bail!("removing cgroup {}: {:?}", path.display(), last);
    }
    Ok(())
}

/// Moves the calling process into `cgroup` (writing "0" means "myself").
/// Only async-signal-safe calls, so it can run between fork and exec.
pub(crate) fn join_cgroup_pre_exec(procs_file: &CString) -> io::Result<()> {
    let fd = crate::sys::cvt(unsafe { libc::open(procs_file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    let ret = unsafe { libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) };
    let err = io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if ret != 1 {
        return Err(err);
    }
    Ok(())
}

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
static BPFFS_MOUNT: Mutex<()> = Mutex::new(());

/// Mounts bpffs at /sys/fs/bpf unless it already is; the lock keeps
/// parallel tests from stacking two mounts.
pub(crate) fn ensure_bpffs() -> Result<()> {
    let _guard = BPFFS_MOUNT.lock().unwrap_or_else(|e| e.into_inner());
    let target = CString::new(names::BPFFS).expect("no nul");
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    crate::sys::cvt(unsafe { libc::statfs(target.as_ptr(), &mut st) }).context("statfs /sys/fs/bpf")?;
    if st.f_type as u32 == BPF_FS_MAGIC {
        return Ok(());
    }
    let source = CString::new("bpffs").expect("no nul");
    let fstype = CString::new("bpf").expect("no nul");
    crate::sys::cvt(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) })
        .context("mounting bpffs at /sys/fs/bpf")?;
    Ok(())
}

/// Removes a pin directory tree. bpffs only knows unlink and rmdir, so walk
/// it by hand rather than trusting a generic recursive remove.
pub(crate) fn remove_pin_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat {}", path.display())),
    };
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            remove_pin_tree(&entry?.path())?;
        }
        fs::remove_dir(path).with_context(|| format!("rmdir {}", path.display()))
    } else {
        fs::remove_file(path).with_context(|| format!("unlink {}", path.display()))
    }
}

pub(crate) fn remove_tmp_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

type RemoveFn = fn(&str) -> Result<()>;

fn pid_alive(pid: u32) -> bool {
    let ret = unsafe { libc::kill(pid as libc::pid_t, 0) };
    ret == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes what crashed runs of `test_name` left behind: objects named with
/// its tag whose owner pid is dead. Processes first (they may hold the rest),
/// then namespaces, pins and temp dirs. Best effort: a leftover that cannot
/// go is reported, not fatal, since it cannot clash with fresh names.
pub(crate) fn remove_leftovers(test_name: &str) {
    let remove: [(&LeftoverDir, RemoveFn); 4] = [
        (&names::CGROUP_LEFTOVERS, |n| remove_cgroup(&Path::new(names::CGROUP_ROOT).join(n))),
        (&names::NETNS_LEFTOVERS, netns_del),
        (&names::PIN_LEFTOVERS, |n| remove_pin_tree(&Path::new(names::BPFFS).join(n))),
        (&names::TMP_LEFTOVERS, |n| remove_tmp_dir(&Path::new(names::TMP_ROOT).join(n))),
    ];
    for (dir, remove_one) in remove {
        for (name, pid) in dir.entries(test_name) {
            if pid_alive(pid) {
                continue;
            }
            if let Err(e) = remove_one(&name) {
                eprintln!("mesh-tests: leftover {}/{name} of dead pid {pid}: {e:#}", dir.dir);
            }
        }
    }
}
