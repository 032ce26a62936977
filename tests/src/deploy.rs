//! The manifests under deploy/, read as `kubectl apply -k` would read them:
//! each kustomization's resources, files and nested kustomizations in
//! order, every YAML document as JSON.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// The repository's deploy/ directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of a YAML file, as JSON.
pub fn documents(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    mesh_core::decode::yaml_documents(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The documents of the kustomization in `dir`: its resources' files, and
/// those of the directories it names (kustomizations themselves).
pub fn kustomization_documents(dir: &Path) -> Result<Vec<Value>> {
    let kustomization = documents(&dir.join("kustomization.yaml"))?;
    let resources = kustomization
        .first()
        .and_then(|k| k["resources"].as_array())
        .with_context(|| format!("{}/kustomization.yaml has no resources", dir.display()))?;
    let mut docs = Vec::new();
    for resource in resources {
        let path = dir.join(resource.as_str().context("a resource that is not a string")?);
        if path.is_dir() {
            docs.extend(kustomization_documents(&path)?);
        } else {
            docs.extend(documents(&path)?);
        }
    }
    Ok(docs)
}
