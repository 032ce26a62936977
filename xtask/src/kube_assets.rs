//! The real Kubernetes API server and etcd the `real_apiserver` test tier
//! runs, prepared like bpf-linker: taken from the environment when given,
//! else unpacked once into a cache outside the clone. No registry reachable
//! here serves kube-apiserver, so its binary comes from `../shared/tools/`
//! (or a path the user brings, as with envtest's assets); etcd comes from
//! Debian's `etcd-server` package, extracted, not installed as a service.

use crate::workspace::{output, run};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A kube-apiserver binary to use instead of the bundled one.
pub const APISERVER_ENV: &str = "MESH_KUBE_APISERVER";
/// An etcd binary to use instead of Debian's.
pub const ETCD_ENV: &str = "MESH_ETCD";

const APISERVER_VERSION: &str = "v1.28.0";
const APISERVER_ARCHIVE: &str = "kube-apiserver-v1.28.0-linux-amd64.xz";
/// sha256 of the unpacked v1.28.0 binary (from ../shared/tools/README.md).
const APISERVER_SHA256: &str = "1c7a0d88dc2b06e7e477a27c1bff9a661515d4a4ef495605d2e1be604712b528";

pub struct KubeAssets {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

/// Both binaries, prepared if missing; an error says what is missing where.
pub fn prepare(workspace: &Path) -> Result<KubeAssets> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    Ok(KubeAssets { apiserver: apiserver(workspace, &cache)?, etcd: etcd(&cache)? })
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("mesh-dataplane")
}

fn apiserver(workspace: &Path, cache: &Path) -> Result<PathBuf> {
    if let Some(path) = from_env(APISERVER_ENV)? {
        return Ok(path);
    }
    let cached = cache.join(format!("kube-apiserver-{APISERVER_VERSION}"));
    if cached.exists() && sha256(&cached)? == APISERVER_SHA256 {
        return Ok(cached);
    }
    let archive = workspace.join("..").join("shared").join("tools").join(APISERVER_ARCHIVE);
    if !archive.exists() {
        bail!(
            "the real-API-server tests need kube-apiserver {APISERVER_VERSION}: neither {APISERVER_ENV} is set \
             nor is {} there (no registry reachable here serves it; set {APISERVER_ENV} to a kube-apiserver binary)",
            archive.display()
        );
    }
    eprintln!("xtask: unpacking {} into {}", archive.display(), cached.display());
    let partial = cached.with_extension("partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    run(Command::new("xz").arg("-dc").arg(&archive).stdout(file))?;
    let sum = sha256(&partial)?;
    if sum != APISERVER_SHA256 {
        bail!("{} unpacks to sha256 {sum}, not {APISERVER_SHA256}", archive.display());
    }
    make_executable(&partial)?;
    std::fs::rename(&partial, &cached).with_context(|| format!("renaming into {}", cached.display()))?;
    Ok(cached)
}

fn etcd(cache: &Path) -> Result<PathBuf> {
    if let Some(path) = from_env(ETCD_ENV)? {
        return Ok(path);
    }
    if let Some(found) = output(Command::new("sh").args(["-c", "command -v etcd"])) {
        return Ok(PathBuf::from(found.trim()));
    }
    let dir = cache.join("etcd-server");
    let binary = dir.join("usr").join("bin").join("etcd");
    if binary.exists() {
        return Ok(binary);
    }
    eprintln!("xtask: fetching Debian's etcd-server into {}", dir.display());
    let download = cache.join("etcd-download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    let fetch = |cmd: &mut Command| run(cmd.current_dir(&download));
    if fetch(Command::new("apt-get").args(["download", "-q", "etcd-server"])).is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        fetch(Command::new("apt-get").args(["download", "-q", "etcd-server"]))
            .context("etcd: `apt-get download etcd-server` failed; or set MESH_ETCD to an etcd binary")?;
    }
    let deb = std::fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download etcd-server left no .deb")?;
    let partial = cache.join("etcd-server.partial");
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::rename(&partial, &dir).with_context(|| format!("renaming into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&download);
    if !binary.exists() {
        bail!("Debian's etcd-server package has no {}", binary.display());
    }
    Ok(binary)
}

/// The path in `var`, if set; an error if it names no file.
fn from_env(var: &str) -> Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os(var).map(PathBuf::from) else { return Ok(None) };
    if !path.is_file() {
        bail!("{var}={} is not a file", path.display());
    }
    Ok(Some(path))
}

fn sha256(path: &Path) -> Result<String> {
    let out = output(Command::new("sha256sum").arg(path)).with_context(|| format!("sha256sum {}", path.display()))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}
