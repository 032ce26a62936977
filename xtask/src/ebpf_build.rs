//! Builds the kernel object. Shared, as a source file, by `xtask` and by
//! `mesh-agent/build.rs`, so `cargo xtask build-ebpf` and a plain
//! `cargo build` compile the programs the same way.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub const EBPF_TARGET: &str = "bpfel-unknown-none";
pub const EBPF_BINARY: &str = "mesh";

/// Compiles `mesh-ebpf` (release, with BTF) into `target_dir` and returns
/// the path of the object.
pub fn build_ebpf(workspace_root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    let manifest = workspace_root.join("mesh-ebpf").join("Cargo.toml");
    let rustflags = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
        // v3: atomic fetch-add returning the old value (connection limits).
        "-Ctarget-cpu=v3",
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", EBPF_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // Inherited from an outer cargo (build.rs): they would point the inner
    // build at the host toolchain and its flags.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
        "CARGO_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("running `rustup run nightly cargo build` for mesh-ebpf: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building mesh-ebpf failed ({status}); it needs the nightly toolchain with rust-src and bpf-linker 0.10.4 (`cargo xtask setup` installs them)"
        ));
    }
    Ok(target_dir.join(EBPF_TARGET).join("release").join(EBPF_BINARY))
}
