//! The local-file config source: a directory of Kubernetes YAML.
//!
//! Every `*.yaml`/`*.yml` file may hold several documents (or a `kind: List`).
//! A file that fails to parse keeps serving the objects it held the last
//! time it parsed, and the failure is reported as a [`Rejection`].

use crate::model::{Rejection, SourcedObject};
use crate::resources::Resource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What changes in a file's metadata: when any of it moves, reload.
type Fingerprint = BTreeMap<PathBuf, (SystemTime, u64)>;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading config directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
}

/// The objects of one load, plus the problems met on the way.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub objects: Vec<SourcedObject>,
    pub rejections: Vec<Rejection>,
}

pub struct FileSource {
    dir: PathBuf,
    fingerprint: Option<Fingerprint>,
    files: BTreeMap<PathBuf, FileState>,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), fingerprint: None, files: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the directory when it changed since the last call (always on the
    /// first); `Ok(None)` when nothing changed.
    pub fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let fingerprint = self.scan()?;
        if self.fingerprint.as_ref() == Some(&fingerprint) {
            return Ok(None);
        }
        let batch = self.load(&fingerprint);
        self.fingerprint = Some(fingerprint);
        Ok(Some(batch))
    }

    fn scan(&self) -> Result<Fingerprint, SourceError> {
        let read_dir_error = |source| SourceError::ReadDir { dir: self.dir.clone(), source };
        let mut files = Fingerprint::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            let is_yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if !is_yaml || hidden {
                continue;
            }
            // A file that vanished between listing and stat is simply gone.
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.is_file() {
                    files.insert(path, (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
                }
            }
        }
        Ok(files)
    }

    fn load(&mut self, fingerprint: &Fingerprint) -> SourceBatch {
        let mut batch = SourceBatch::default();
        self.files.retain(|path, _| fingerprint.contains_key(path));
        for (path, stamp) in fingerprint {
            // Only files that changed are read and parsed again.
            if self.files.get(path).is_none_or(|file| file.stamp != *stamp) {
                let previous = self.files.remove(path);
                self.files.insert(path.clone(), read_file(path, *stamp, previous));
            }
            let file = &self.files[path];
            batch.objects.extend(file.objects.iter().cloned());
            batch.rejections.extend(file.problems.iter().cloned());
        }
        batch
    }
}

/// What one file holds as of its last read.
struct FileState {
    stamp: (SystemTime, u64),
    /// The objects of its last successful parse.
    objects: Vec<SourcedObject>,
    /// Why its current content is not served, if it is not.
    problems: Vec<Rejection>,
}

fn read_file(path: &Path, stamp: (SystemTime, u64), previous: Option<FileState>) -> FileState {
    let display = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| vec![Rejection::file(&display, format!("cannot read: {e}"))])
        .and_then(|text| parse_file(&display, &text));
    match parsed {
        Ok(objects) => FileState { stamp, objects, problems: Vec::new() },
        Err(mut problems) => {
            let objects = previous.map(|p| p.objects).unwrap_or_default();
            if !objects.is_empty() {
                let note = format!(" (the file's last good version, {} objects, keeps serving)", objects.len());
                problems.iter_mut().for_each(|p| p.message.push_str(&note));
            }
            FileState { stamp, objects, problems }
        }
    }
}

/// Parses every document of one file. Any problem fails the whole file, so
/// a half-written file never replaces its last good version.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<SourcedObject>, Vec<Rejection>> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                problems.push(Rejection::file(file, format!("document {}: YAML does not parse: {e}", index + 1)));
                // serde_yaml cannot resume after a syntax error.
                break;
            }
        };
        collect(file, value, &mut objects, &mut problems);
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

fn collect(file: &str, value: serde_yaml::Value, objects: &mut Vec<SourcedObject>, problems: &mut Vec<Rejection>) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    if kind == "List" {
        if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
            for item in items.clone() {
                collect(file, item, objects, problems);
            }
        }
        return;
    }
    let name_of = |v: &serde_yaml::Value, field: &str| {
        v.get("metadata").and_then(|m| m.get(field)).and_then(|n| n.as_str()).unwrap_or_default().to_owned()
    };
    let (namespace, name) = (name_of(&value, "namespace"), name_of(&value, "name"));
    let reject = |field: &str, message: String| Rejection {
        file: Some(file.to_owned()),
        kind: kind.clone(),
        namespace: if namespace.is_empty() { "default".into() } else { namespace.clone() },
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    let decoded = match (group_of(&api_version), kind.as_str()) {
        ("core", "Service") => decode(value).map(Resource::Service),
        ("core", "Pod") => decode(value).map(Resource::Pod),
        ("discovery.k8s.io", "EndpointSlice") => decode(value).map(Resource::EndpointSlice),
        ("networking.istio.io", "DestinationRule") => {
            if !matches!(
                api_version.as_str(),
                "networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3"
            ) {
                problems.push(reject(
                    "apiVersion",
                    format!("{api_version} is not served; use networking.istio.io/v1, v1beta1 or v1alpha3"),
                ));
                return;
            }
            decode(value).map(Resource::DestinationRule)
        }
        _ if kind.is_empty() => {
            problems.push(reject("kind", "missing".into()));
            return;
        }
        // Kinds this agent does not serve (yet) are left alone, as the API
        // server would store them.
        _ => {
            tracing::debug!(file, %api_version, %kind, "ignoring object of a kind the agent does not use");
            return;
        }
    };
    match decoded {
        Ok(resource) if resource.metadata().name.is_empty() => problems.push(reject("metadata.name", "missing".into())),
        Ok(resource) => objects.push(SourcedObject { file: file.to_owned(), resource }),
        Err((field, message)) => problems.push(reject(&field, message)),
    }
}

fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "core",
    }
}

/// Decodes into `T`, naming the field that does not fit.
fn decode<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        (if field == "." { String::new() } else { field }, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_documents_and_lists() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  status: {podIP: 10.244.0.5}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: ignored}\n";
        let objects = parse_file("f.yaml", text).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].resource.kind(), "Service");
        assert_eq!(objects[1].resource.metadata().name, "p");
    }

    #[test]
    fn a_bad_field_is_named_with_file_kind_and_object() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  ports:\n  - port: eighty\n";
        let problems = parse_file("svc.yaml", text).unwrap_err();
        let shown = problems[0].to_string();
        assert!(shown.contains("svc.yaml"), "{shown}");
        assert!(shown.contains("Service ns/a"), "{shown}");
        assert!(shown.contains("spec.ports[0].port"), "{shown}");
    }

    #[test]
    fn broken_yaml_keeps_the_last_good_version_of_the_file() {
        let dir = std::env::temp_dir().join(format!("mesh-source-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.yaml");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
        let mut source = FileSource::new(&dir);
        let first = source.poll().unwrap().unwrap();
        assert_eq!(first.objects.len(), 1);
        assert!(source.poll().unwrap().is_none(), "no change, no reload");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n  broken: [\n").unwrap();
        let second = source.poll().unwrap().unwrap();
        assert_eq!(second.objects.len(), 1, "last good version keeps serving");
        assert_eq!(second.rejections.len(), 1);
        std::fs::remove_file(&file).unwrap();
        let third = source.poll().unwrap().unwrap();
        assert!(third.objects.is_empty(), "a deleted file takes its objects along");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
