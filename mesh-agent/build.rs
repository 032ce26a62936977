//! Compiles the kernel programs (mesh-ebpf) for bpfel-unknown-none and puts
//! the object in OUT_DIR, where `dataplane/load.rs` embeds it. `MESH_EBPF_OBJECT`
//! names a prebuilt object instead (e.g. from `cargo xtask build-ebpf`).

#[path = "../xtask/src/ebpf_build.rs"]
mod ebpf_build;

use std::path::PathBuf;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("mesh-agent lives in the workspace").to_owned();
    println!("cargo:rerun-if-env-changed=MESH_EBPF_OBJECT");
    for watched in ["mesh-ebpf/src", "mesh-ebpf/Cargo.toml", "mesh-common/src", "xtask/src/ebpf_build.rs"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    let object = match std::env::var_os("MESH_EBPF_OBJECT") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            // Its own target dir: the outer cargo holds the lock on the main one.
            let target_dir = workspace.join("target").join("ebpf");
            ebpf_build::build_ebpf(&workspace, &target_dir).unwrap_or_else(|e| panic!("{e}"))
        }
    };
    std::fs::copy(&object, out_dir.join("mesh"))
        .unwrap_or_else(|e| panic!("copying the kernel object {}: {e}", object.display()));
}
