//! Config sources, and the local-file one: a directory of Kubernetes YAML.
//! (The API-server source is [`crate::k8s::KubeSource`]; both decode objects
//! with [`decode_object`], so they feed the model identically.)
//!
//! Every `*.yaml`/`*.yml` file may hold several documents (or a `kind: List`).
//! A file is read only once its metadata has stayed the same for two polls
//! in a row, so a file caught mid-write is not read. A file whose YAML does
//! not parse keeps serving the objects it held the last time it parsed; an
//! object that does not decode (a wrongly typed field, a wrong kind or
//! apiVersion) is rejected alone, and the model serves its last good
//! version. Every problem is reported as a [`Rejection`].

use crate::model::{ObjectKey, Rejection, SourcedObject};
use crate::resources::Resource;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What changes in a file's metadata when it is written or replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: SystemTime,
    len: u64,
    device: u64,
    inode: u64,
    ctime: (i64, i64),
}

type Fingerprint = BTreeMap<PathBuf, Stamp>;

/// On the very first poll there is no earlier look to compare with: the
/// directory is looked at twice, this far apart, before files are read.
const FIRST_LOOK_INTERVAL: Duration = crate::agent::POLL_INTERVAL;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading config directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
}

/// The objects of one load, plus the problems met on the way.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub objects: Vec<SourcedObject>,
    /// Objects present but not decodable: the model keeps serving their
    /// last accepted version and reports the rejection.
    pub undecodable: Vec<(ObjectKey, Rejection)>,
    /// Problems that belong to no servable object (a file whose YAML does
    /// not parse, a document without kind or name).
    pub rejections: Vec<Rejection>,
}

/// Where the configuration comes from.
pub trait ConfigSource: Send {
    /// What changed since the last call, as a whole batch; `Ok(None)` when
    /// nothing did, or before the source's first complete sync.
    fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError>;
}

impl ConfigSource for FileSource {
    fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        FileSource::poll(self)
    }
}

pub struct FileSource {
    dir: PathBuf,
    /// What the previous poll saw; `None` before the first poll.
    seen: Option<Fingerprint>,
    /// The files as last read.
    files: BTreeMap<PathBuf, FileState>,
}

impl FileSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), seen: None, files: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads what changed since the last call; `Ok(None)` when nothing did.
    /// A file is (re)read, or dropped when deleted, once two polls in a row
    /// saw it the same; until then its previous content keeps serving. The
    /// first call always returns a batch.
    pub fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let first = self.seen.is_none();
        let mut scan = self.scan()?;
        if first && !scan.is_empty() {
            std::thread::sleep(FIRST_LOOK_INTERVAL);
            let again = self.scan()?;
            self.seen = Some(std::mem::replace(&mut scan, again));
        }
        let seen = self.seen.take().unwrap_or_default();
        let loaded = self.files.len();
        // Gone now and at the previous poll: the file's objects go.
        self.files.retain(|path, _| scan.contains_key(path) || seen.contains_key(path));
        let mut changed = self.files.len() != loaded;
        for (path, stamp) in &scan {
            let current = self.files.get(path).is_some_and(|file| file.stamp == *stamp);
            let settled = seen.get(path) == Some(stamp);
            if current || !settled {
                continue;
            }
            let previous = self.files.remove(path);
            self.files.insert(path.clone(), read_file(path, *stamp, previous));
            changed = true;
        }
        self.seen = Some(scan);
        if !changed && !first {
            return Ok(None);
        }
        let mut batch = SourceBatch::default();
        for file in self.files.values() {
            batch.objects.extend(file.parsed.objects.iter().cloned());
            batch.undecodable.extend(file.parsed.undecodable.iter().cloned());
            batch.rejections.extend(file.parsed.problems.iter().cloned());
        }
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
                    let stamp = Stamp {
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        len: meta.len(),
                        device: meta.dev(),
                        inode: meta.ino(),
                        ctime: (meta.ctime(), meta.ctime_nsec()),
                    };
                    files.insert(path, stamp);
                }
            }
        }
        Ok(files)
    }
}

/// What one file holds as of its last read.
struct FileState {
    stamp: Stamp,
    /// Its last parse whose YAML was readable, with the problems of the
    /// current content when that one is not.
    parsed: ParsedFile,
}

fn read_file(path: &Path, stamp: Stamp, previous: Option<FileState>) -> FileState {
    let display = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| vec![Rejection::file(&display, format!("cannot read: {e}"))])
        .and_then(|text| parse_documents(&display, &text));
    match parsed {
        Ok(parsed) => FileState { stamp, parsed },
        Err(mut problems) => {
            let mut parsed = previous.map(|p| p.parsed).unwrap_or_default();
            let count = parsed.objects.len() + parsed.undecodable.len();
            if count > 0 {
                let note = format!(" (the file's last good version, {count} objects, keeps serving)");
                problems.iter_mut().for_each(|p| p.message.push_str(&note));
            }
            parsed.problems = problems;
            FileState { stamp, parsed }
        }
    }
}

/// One file's documents, object by object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    pub objects: Vec<SourcedObject>,
    /// Objects of a served kind, named, that do not decode.
    pub undecodable: Vec<(ObjectKey, Rejection)>,
    /// Documents that name no object the agent could serve.
    pub problems: Vec<Rejection>,
}

/// Parses every document of one file. Only YAML that does not parse fails
/// the whole file (serde_yaml cannot resume after it, and a half-written
/// file must not replace its last good version); any other problem rejects
/// just its object.
pub fn parse_documents(file: &str, text: &str) -> Result<ParsedFile, Vec<Rejection>> {
    let mut parsed = ParsedFile::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match serde_yaml::Value::deserialize(document) {
            Ok(value) => collect(file, value, &mut parsed),
            Err(e) => {
                let message = format!("document {}: YAML does not parse: {e}", index + 1);
                return Err(vec![Rejection::file(file, message)]);
            }
        }
    }
    Ok(parsed)
}

/// [`parse_documents`], strictly: any problem at all is an error.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<SourcedObject>, Vec<Rejection>> {
    let parsed = parse_documents(file, text)?;
    let mut problems = parsed.problems;
    problems.extend(parsed.undecodable.into_iter().map(|(_, rejection)| rejection));
    if problems.is_empty() {
        Ok(parsed.objects)
    } else {
        Err(problems)
    }
}

/// The kinds the agent reads: kind, API group (`""` is core) and versions.
const SERVED_KINDS: [(&str, &str, &[&str]); 6] = [
    ("Service", "", &["v1"]),
    ("Pod", "", &["v1"]),
    ("Secret", "", &["v1"]),
    ("EndpointSlice", "discovery.k8s.io", &["v1"]),
    ("DestinationRule", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("VirtualService", "networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
];

/// A group of some third party's API (e.g. Knative's `serving.knative.dev`,
/// which has its own `Service`): its kinds are not ours, whatever their name.
fn is_third_party_group(group: &str) -> bool {
    group.contains('.') && !(group.ends_with(".k8s.io") || group.ends_with("istio.io"))
}

fn api_version_text(group: &str, versions: &[&str]) -> String {
    let full: Vec<String> =
        versions.iter().map(|v| if group.is_empty() { (*v).to_owned() } else { format!("{group}/{v}") }).collect();
    full.join(", ")
}

/// Decodes one object as both sources read it. `origin` is the file it came
/// from, or empty for the API server. Kinds the agent does not serve are
/// left out; a served kind that does not decode is reported in
/// `undecodable` by field.
pub fn decode_object(origin: &str, value: serde_yaml::Value, parsed: &mut ParsedFile) {
    collect(origin, value, parsed)
}

fn collect(file: &str, value: serde_yaml::Value, parsed: &mut ParsedFile) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    if kind == "List" {
        if let Some(items) = value.get("items").and_then(|i| i.as_sequence()) {
            for item in items.clone() {
                collect(file, item, parsed);
            }
        }
        return;
    }
    let name_of = |v: &serde_yaml::Value, field: &str| {
        v.get("metadata").and_then(|m| m.get(field)).and_then(|n| n.as_str()).unwrap_or_default().to_owned()
    };
    let (namespace, name) = (name_of(&value, "namespace"), name_of(&value, "name"));
    let namespace = if namespace.is_empty() { "default".to_owned() } else { namespace };
    let reject = |field: &str, message: String| Rejection {
        file: (!file.is_empty()).then(|| file.to_owned()),
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.clone(),
        field: field.to_owned(),
        message,
    };
    if kind.is_empty() {
        parsed.problems.push(reject("kind", "missing".into()));
        return;
    }
    let served = SERVED_KINDS
        .iter()
        .find(|(served, ..)| *served == kind)
        .or_else(|| SERVED_KINDS.iter().find(|(served, ..)| served.eq_ignore_ascii_case(&kind)));
    let Some(&(served_kind, served_group, versions)) = served else {
        // Kinds this agent does not serve (yet) are left alone, as the API
        // server would store them.
        tracing::debug!(file, %api_version, %kind, "ignoring object of a kind the agent does not use");
        return;
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
    let served_version = group == served_group && versions.contains(&version);
    if !served_version && is_third_party_group(group) {
        tracing::debug!(file, %api_version, %kind, "ignoring object of another API group");
        return;
    }
    // A served kind that cannot be read as written: its last good version
    // keeps serving (when it is named, so that it can be found).
    let mut undecodable = |field: &str, message: String| {
        let rejection = reject(field, message);
        if name.is_empty() {
            parsed.problems.push(rejection);
        } else {
            let key = ObjectKey { kind: served_kind.to_owned(), namespace: namespace.clone(), name: name.clone() };
            parsed.undecodable.push((key, rejection));
        }
    };
    if kind != served_kind {
        undecodable("kind", format!("{kind:?} is not a kind; kinds are case-sensitive: did you mean {served_kind}?"));
        return;
    }
    if !served_version {
        let expected = api_version_text(served_group, versions);
        let message = if api_version.is_empty() {
            format!("missing; {kind} is served as {expected}")
        } else {
            format!("{kind} is not served as {api_version:?}; use {expected}")
        };
        undecodable("apiVersion", message);
        return;
    }
    let decoded = match served_kind {
        "Service" => decode(value).map(Resource::Service),
        "Pod" => decode(value).map(Resource::Pod),
        "EndpointSlice" => decode(value).map(Resource::EndpointSlice),
        "VirtualService" => decode(value).map(Resource::VirtualService),
        "Secret" => decode(value).map(Resource::Secret),
        _ => decode(value).map(Resource::DestinationRule),
    };
    match decoded {
        Ok(resource) if resource.metadata().name.is_empty() => {
            parsed.problems.push(reject("metadata.name", "missing".into()))
        }
        Ok(resource) => parsed.objects.push(SourcedObject { file: file.to_owned(), resource }),
        Err((field, message)) => undecodable(&field, message),
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
    use crate::agent::POLL_INTERVAL;
    use std::time::Instant;

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
    fn a_wrongly_typed_field_rejects_only_its_object() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  ports:\n  - port: eighty\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
        let parsed = parse_documents("svc.yaml", text).unwrap();
        assert_eq!(parsed.objects.len(), 1, "the pod is read");
        assert!(parsed.problems.is_empty());
        let (key, rejection) = &parsed.undecodable[0];
        assert_eq!(key, &ObjectKey { kind: "Service".into(), namespace: "ns".into(), name: "a".into() });
        assert_eq!(rejection.field, "spec.ports[0].port");
        // A document that names no object is a problem of its own.
        let parsed = parse_documents("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {}\n---\nfoo: bar\n").unwrap();
        let fields: Vec<&str> = parsed.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "kind"]);
    }

    #[test]
    fn served_kinds_with_the_wrong_case_or_api_version_are_rejected() {
        let cases = [
            ("networking.istio.io/v1", "Destinationrule", "kind", "did you mean DestinationRule"),
            ("v1", "service", "kind", "did you mean Service"),
            ("v1", "DestinationRule", "apiVersion", "networking.istio.io/v1, networking.istio.io/v1beta1"),
            ("networking.istio.io/v2", "DestinationRule", "apiVersion", "not served as \"networking.istio.io/v2\""),
            ("security.istio.io/v1", "DestinationRule", "apiVersion", "use networking.istio.io/v1"),
            ("", "DestinationRule", "apiVersion", "missing"),
            ("v1", "EndpointSlice", "apiVersion", "use discovery.k8s.io/v1"),
            ("discovery.k8s.io/v1beta1", "EndpointSlice", "apiVersion", "use discovery.k8s.io/v1"),
            ("apps/v1", "Service", "apiVersion", "use v1"),
            ("v2", "Pod", "apiVersion", "use v1"),
            ("networking.istio.io/v1", "Virtualservice", "kind", "did you mean VirtualService"),
            (
                "networking.istio.io/v2",
                "VirtualService",
                "apiVersion",
                "use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3",
            ),
        ];
        for (api_version, kind, field, message) in cases {
            let text = format!("apiVersion: '{api_version}'\nkind: {kind}\nmetadata: {{name: web, namespace: shop}}\n");
            let parsed = parse_documents("k.yaml", &text).unwrap();
            assert!(parsed.objects.is_empty(), "{text}");
            let (key, rejection) = parsed.undecodable.first().unwrap_or_else(|| panic!("{text}: not rejected"));
            assert_eq!(key.kind.to_ascii_lowercase(), kind.to_ascii_lowercase(), "keyed by the served kind");
            assert_eq!(rejection.field, field, "{text}");
            assert!(rejection.message.contains(message), "{text}: {}", rejection.message);
            assert_eq!(rejection.kind, kind, "named as written");
        }
        // Another API's kind of the same name is not ours: skipped.
        let knative = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: web}\n";
        let parsed = parse_documents("k.yaml", knative).unwrap();
        assert!(parsed.objects.is_empty() && parsed.undecodable.is_empty() && parsed.problems.is_empty());
    }

    #[test]
    fn virtual_services_are_read_in_every_served_version() {
        for version in ["v1", "v1beta1", "v1alpha3"] {
            let text = format!("apiVersion: networking.istio.io/{version}\nkind: VirtualService\nmetadata: {{name: web, namespace: shop}}\nspec:\n  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}, weight: 100}}]\n    futureField: ignored\n");
            let objects = parse_file("vs.yaml", &text).unwrap();
            let Resource::VirtualService(vs) = &objects[0].resource else { panic!("{version}") };
            assert_eq!(vs.spec.http[0].route[0].weight, Some(100), "{version}");
        }
        let typo = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: web}\nspec:\n  hosts: [web]\n  http:\n  - route: [{destination: {host: web}, weight: ten}]\n";
        let parsed = parse_documents("vs.yaml", typo).unwrap();
        assert_eq!(parsed.undecodable[0].1.field, "spec.http[0].route[0].weight");
    }

    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mesh-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn broken_yaml_keeps_the_last_good_version_of_the_file() {
        let dir = test_dir("broken");
        let file = dir.join("svc.yaml");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
        let mut source = FileSource::new(&dir);
        let first = source.poll().unwrap().expect("the first poll always loads");
        assert_eq!(first.objects.len(), 1);
        assert!(source.poll().unwrap().is_none(), "no change, no reload");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p\n  broken: [\n").unwrap();
        assert!(source.poll().unwrap().is_none(), "seen once: not read yet");
        let second = source.poll().unwrap().expect("the same at two polls: read");
        assert_eq!(second.objects.len(), 1, "last good version keeps serving");
        assert_eq!(second.rejections.len(), 1);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(source.poll().unwrap().map(|b| b.objects.len()), None, "gone once: still serving");
        let third = source.poll().unwrap().unwrap();
        assert!(third.objects.is_empty(), "a deleted file takes its objects along");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_caught_mid_write_is_not_read() {
        let dir = test_dir("midwrite");
        let mut source = FileSource::new(&dir);
        assert!(source.poll().unwrap().unwrap().objects.is_empty(), "an empty directory loads at once");
        let file = dir.join("pod.yaml");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p").unwrap();
        assert!(source.poll().unwrap().is_none());
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: ns}\n").unwrap();
        assert!(source.poll().unwrap().is_none(), "still changing");
        let batch = source.poll().unwrap().unwrap();
        assert!(batch.rejections.is_empty(), "the half-written content was never parsed: {:?}", batch.rejections);
        assert_eq!(batch.objects[0].resource.metadata().namespace.as_deref(), Some("ns"));
        // A file replaced by rename (a new inode) is noticed too.
        let staged = dir.join(".pod.yaml.tmp");
        std::fs::write(&staged, "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: ns}\n").unwrap();
        std::fs::rename(&staged, &file).unwrap();
        assert!(source.poll().unwrap().is_none());
        assert_eq!(source.poll().unwrap().unwrap().objects[0].resource.metadata().name, "q");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_edit_applies_well_within_a_second_at_the_poll_interval() {
        let dir = test_dir("latency");
        let file = dir.join("pod.yaml");
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
        let mut source = FileSource::new(&dir);
        assert_eq!(source.poll().unwrap().unwrap().objects.len(), 1);
        std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata: {name: renamed}\n").unwrap();
        let edited = Instant::now();
        let batch = loop {
            std::thread::sleep(POLL_INTERVAL);
            if let Some(batch) = source.poll().unwrap() {
                break batch;
            }
            assert!(edited.elapsed() < Duration::from_secs(2), "never applied");
        };
        assert!(edited.elapsed() < Duration::from_millis(700), "took {:?}", edited.elapsed());
        assert_eq!(batch.objects[0].resource.metadata().name, "renamed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_undecodable_object_survives_a_yaml_error_in_its_file() {
        let dir = test_dir("undecodable");
        let file = dir.join("svc.yaml");
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n";
        std::fs::write(&file, text).unwrap();
        let mut source = FileSource::new(&dir);
        let batch = source.poll().unwrap().unwrap();
        assert_eq!((batch.objects.len(), batch.undecodable.len(), batch.rejections.len()), (1, 1, 0));
        std::fs::write(&file, "kind: [\n").unwrap();
        assert!(source.poll().unwrap().is_none());
        let batch = source.poll().unwrap().unwrap();
        assert_eq!((batch.objects.len(), batch.undecodable.len()), (1, 1), "the file's last parse keeps serving");
        assert!(batch.rejections[0].message.contains("2 objects, keeps serving"), "{:?}", batch.rejections);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
