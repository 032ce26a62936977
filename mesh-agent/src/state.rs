//! The node's own record of the last good configuration (`--state-dir`),
//! so that an agent that restarts while an object is rejected serves that
//! object's last good version (as the other nodes do), not nothing. The
//! objects that serve are written after each applied reload (only when
//! they changed), atomically; at start they are read back as the model a
//! first load falls back on. Secrets, Pods and EndpointSlices are not kept:
//! they are not judged that way, and Secrets do not belong on a disk.

use mesh_core::decode::{decode_object, ParsedFile, NOT_KEPT};
use mesh_core::model::Model;
use mesh_core::object::SourcedObject;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

const FILE: &str = "last-good.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a saved configuration: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Where the last good configuration is kept.
pub struct StateDir {
    dir: PathBuf,
    /// What was written last (a hash), to skip unchanged writes.
    written: Option<u64>,
    /// The objects last saved, as shared with the model: a reload that
    /// keeps every one of them (a recompile on new DNS answers or pods, a
    /// change to a Pod or an EndpointSlice) needs no encoding to tell.
    saved: Vec<SourcedObject>,
}

/// One saved object, as written: borrowed from the model.
#[derive(serde::Serialize)]
struct Saved<'a> {
    /// The file it came from (empty: the API server).
    file: &'a str,
    object: &'a serde_json::value::RawValue,
}

/// One saved object, as read back.
#[derive(serde::Deserialize)]
struct Read {
    file: String,
    object: serde_json::Value,
}

impl StateDir {
    pub fn new(dir: &Path) -> Self {
        StateDir { dir: dir.into(), written: None, saved: Vec::new() }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The objects saved by the last run (none when nothing was saved).
    pub fn load(&self) -> Result<Vec<SourcedObject>, StateError> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let saved: Vec<Read> =
            serde_json::from_slice(&text).map_err(|source| StateError::Parse { path: path.clone(), source })?;
        let mut parsed = ParsedFile::default();
        for entry in saved {
            decode_object(&entry.file, entry.object, &mut parsed);
        }
        Ok(parsed.objects)
    }

    /// Saves the objects that serve in `model`, when they changed.
    pub fn save(&mut self, model: &Model) -> Result<(), StateError> {
        let kept: Vec<&SourcedObject> =
            model.served_objects().filter(|object| !NOT_KEPT.contains(&object.resource.kind())).collect();
        let same = |(object, saved): (&&SourcedObject, &SourcedObject)| {
            std::sync::Arc::ptr_eq(&object.raw, &saved.raw) && object.file == saved.file
        };
        if kept.len() == self.saved.len() && kept.iter().zip(&self.saved).all(same) {
            return Ok(());
        }
        let saved: Vec<Saved> = (kept.iter()).map(|object| Saved { file: &object.file, object: &object.raw }).collect();
        let text = serde_json::to_vec(&saved).map_err(|source| StateError::Parse { path: self.path(), source })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut hasher);
        let hash = hasher.finish();
        let objects = kept.into_iter().cloned().collect();
        if self.written == Some(hash) {
            self.saved = objects;
            return Ok(());
        }
        let path = self.path();
        let write_error = |source| StateError::Write { path: path.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(write_error)?;
        // Written beside, then renamed: a crash never leaves half a file.
        let partial = self.dir.join(format!("{FILE}.partial"));
        std::fs::write(&partial, &text).map_err(write_error)?;
        std::fs::rename(&partial, &path).map_err(write_error)?;
        self.written = Some(hash);
        self.saved = objects;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::decode::parse_file;

    #[test]
    fn what_serves_is_saved_and_read_back_and_secrets_are_not() {
        let dir = std::env::temp_dir().join(format!("mesh-state-{}", std::process::id()));
        let text = concat!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: web, namespace: shop, generation: 4}\n",
            "spec: {host: web, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n---\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: key, namespace: shop}\nstringData: {tls.key: secret}\n",
        );
        let objects = parse_file("rules.yaml", text).unwrap();
        let model = Model::build(&objects, vec![], &Model::default(), "cluster.local");
        let mut state = StateDir::new(&dir);
        assert!(state.load().unwrap().is_empty(), "nothing saved yet");
        state.save(&model).unwrap();
        let loaded = state.load().unwrap();
        assert_eq!(loaded.len(), 1, "the Secret stays off the disk");
        assert_eq!((loaded[0].resource.kind(), loaded[0].file.as_str()), ("DestinationRule", "rules.yaml"));
        assert_eq!(loaded[0].resource.metadata().generation, Some(4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
