//! The file source: a directory of Kubernetes YAML. Every `*.yaml`/`*.yml` file may hold several documents (or a `kind: List`).
//! A file is read only once its metadata has stayed the same for two polls
//! in a row, so a file caught mid-write is not read. A file whose YAML does
//! not parse keeps serving the objects it held the last time it parsed; an
//! object that does not decode (a wrongly typed field, a wrong kind or
//! apiVersion) is rejected alone, and the model serves its last good
//! version. Every problem is reported as a [`Rejection`].

use super::contract::{ConfigSource, SourceError, POLL_INTERVAL};
use mesh_core::decode::{parse_documents, ParsedFile};
use mesh_core::object::{Rejection, SourceBatch};
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
const FIRST_LOOK_INTERVAL: Duration = POLL_INTERVAL;

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

/// A file larger than this is refused unread: parsing cost grows with
/// size, and one file must not hold the others' changes back. (A whole
/// cluster's Istio configuration is a few MiB.)
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

fn read_file(path: &Path, stamp: Stamp, previous: Option<FileState>) -> FileState {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parsed = if stamp.len > MAX_FILE_BYTES {
        let message = format!("{} bytes is over the limit of {MAX_FILE_BYTES} bytes per file; not read", stamp.len);
        Err(vec![Rejection::file(&file, message)])
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| vec![Rejection::file(&file, format!("cannot read: {e}"))])
            .and_then(|text| parse_documents(&file, &text))
    };
    match parsed {
        Ok(parsed) => {
            for (api_version, kind) in &parsed.ignored {
                tracing::debug!(%file, %api_version, %kind, "ignoring an object of a kind the agent does not use");
            }
            FileState { stamp, parsed }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
