//! The workspace as the developer commands see it: where it is, running
//! commands in it, and the binaries they build.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Paths of the binaries tests, the demo and benchmarks run.
pub struct Binaries {
    pub agent: PathBuf,
    pub meshctl: PathBuf,
    pub probe: PathBuf,
    /// This command, when it was built too ([`build_release_with_xtask`]).
    pub xtask: PathBuf,
}

pub fn build_binaries(release: bool) -> Result<Binaries> {
    build(release, &[])
}

/// Release binaries and a release build of this command (the L7 bench's
/// backend, which must not be a debug build).
pub fn build_release_with_xtask() -> Result<Binaries> {
    build(true, &["-p", "xtask"])
}

fn build(release: bool, also: &[&str]) -> Result<Binaries> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(["build", "-p", "mesh-agent", "-p", "mesh-tests"]).args(also).arg("--bins");
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let dir = workspace_root().join("target").join(if release { "release" } else { "debug" });
    Ok(Binaries {
        agent: dir.join("mesh-agent"),
        meshctl: dir.join("meshctl"),
        probe: dir.join("mesh-probe"),
        xtask: dir.join("xtask"),
    })
}
