//! The object store: every object, the history of changes watches replay,
//! and the state shared by the server's handles and its open watches.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use hyper::http::StatusCode;
use serde_json::Value;
use tokio::sync::watch;

use super::json::{ensure_object, metadata_mut, now_secs, rfc3339};
use super::kinds::{Key, KINDS};
use super::response::ApiError;

/// First resourceVersion handed out is this + 1 (an empty server lists at
/// "100", never "0", which means "any" to the API).
const INITIAL_RESOURCE_VERSION: u64 = 100;

/// One change, kept for watches to replay.
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) key: Key,
    pub(super) event: &'static str,
    /// The object as of this change (with apiVersion and kind).
    pub(super) object: Value,
}

/// The server's state, behind [`Shared`]'s lock.
pub(super) struct Store {
    /// Last resourceVersion handed out (one counter for all kinds, as etcd).
    pub(super) rv: u64,
    /// Requests for a resourceVersion older than this get 410 Gone.
    pub(super) compacted: u64,
    pub(super) objects: BTreeMap<Key, Value>,
    /// Every change since the start, in rv order. Kept whole, even after
    /// `compact()`, so open watches that lag behind still catch up; only new
    /// requests are refused.
    pub(super) history: Vec<Change>,
    pub(super) next_uid: u64,
    /// Bumped by `drop_watches()`: watches opened in an older epoch end.
    pub(super) watch_epoch: u64,
    pub(super) unavailable: bool,
    pub(super) requests: Vec<(String, String, String)>,
    pub(super) status_patches: Vec<(String, String, Value)>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            rv: INITIAL_RESOURCE_VERSION,
            compacted: 0,
            objects: BTreeMap::new(),
            history: Vec::new(),
            next_uid: 1,
            watch_epoch: 0,
            unavailable: false,
            requests: Vec::new(),
            status_patches: Vec::new(),
        }
    }
}

impl Store {
    /// Stores `object` as the new revision of `key` and records the change.
    /// Sets the server-owned metadata: name, namespace, resourceVersion, uid
    /// and creationTimestamp (kept from the previous revision), generation
    /// (1, then +1 whenever `spec` changes).
    pub(super) fn write(&mut self, key: Key, mut object: Value) -> Value {
        let kind = &KINDS[key.0];
        self.rv += 1;
        let old = self.objects.get(&key);
        let top = ensure_object(&mut object);
        top.insert("apiVersion".into(), kind.api_version().into());
        top.insert("kind".into(), kind.kind.into());
        let (uid, created, generation, event) = match old {
            Some(old) => {
                let spec_changed = old.get("spec") != top.get("spec");
                let generation = old.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
                (
                    old.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                    old.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
                    generation + u64::from(spec_changed),
                    "MODIFIED",
                )
            }
            None => {
                let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
                self.next_uid += 1;
                (uid.into(), rfc3339(now_secs()).into(), 1, "ADDED")
            }
        };
        let meta = metadata_mut(&mut object);
        meta.insert("name".into(), key.2.clone().into());
        meta.insert("namespace".into(), key.1.clone().into());
        meta.insert("resourceVersion".into(), self.rv.to_string().into());
        meta.insert("uid".into(), uid);
        meta.insert("creationTimestamp".into(), created);
        meta.insert("generation".into(), generation.into());
        self.history.push(Change { rv: self.rv, key: key.clone(), event, object: object.clone() });
        self.objects.insert(key, object.clone());
        object
    }

    /// Removes `key`; the DELETED event carries the deletion's
    /// resourceVersion, as on a real server (watchers resume from it).
    pub(super) fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), self.rv.to_string().into());
        self.history.push(Change { rv: self.rv, key: key.clone(), event: "DELETED", object: object.clone() });
        Some(object)
    }

    /// The objects as they were at `rv` (replayed from the full history).
    pub(super) fn objects_at(&self, rv: u64) -> BTreeMap<Key, Value> {
        let mut objects = BTreeMap::new();
        for change in self.history.iter().take_while(|c| c.rv <= rv) {
            if change.event == "DELETED" {
                objects.remove(&change.key);
            } else {
                objects.insert(change.key.clone(), change.object.clone());
            }
        }
        objects
    }

    pub(super) fn too_old(&self, rv: u64) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", format!("too old resource version: {rv} ({})", self.compacted))
    }
}

/// What the server's handles and its open watches share.
pub(super) struct Shared {
    store: Mutex<Store>,
    /// Ticks on every change that open watches must look at.
    pub(super) wake: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn new() -> Self {
        let (wake, _) = watch::channel(0);
        Shared { store: Mutex::new(Store::default()), wake }
    }

    pub(super) fn store(&self) -> MutexGuard<'_, Store> {
        crate::sync::lock(&self.store)
    }

    /// Tells open watches to look at the store again.
    pub(super) fn wake(&self) {
        self.wake.send_modify(|tick| *tick = tick.wrapping_add(1));
    }
}
