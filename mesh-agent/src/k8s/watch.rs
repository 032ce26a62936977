//! The API-server config source: one kube-rs watcher per kind (list, then
//! watch from the list's resourceVersion, resumed after a broken stream,
//! relisted after `410 Gone`, with backoff), each object decoded as the file
//! source decodes it ([`decode_object`]) into a store by kind. The reload
//! loop polls the store: a burst of events becomes one batch per poll
//! interval, and nothing is served before every kind has listed once.

use crate::source::{ConfigSource, SourceError};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::watcher::{self, watcher, Event};
use mesh_core::decode::{decode_object, ParsedFile};
use mesh_core::object::{ObjectKey, Rejection, SourceBatch, SourcedObject};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One watch: what it lists and how its objects become YAML documents.
#[derive(Clone, Debug)]
pub struct WatchedKind {
    /// Shown in status: the kind, or `Pod (this node)`.
    pub name: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    /// Only the metadata (labels): `metadata_watcher`.
    pub metadata_only: bool,
    /// A field selector, e.g. the pods of this node.
    pub field_selector: Option<String>,
}

impl WatchedKind {
    const fn new(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Self {
        Self { name: kind, group, version, kind, plural, metadata_only: false, field_selector: None }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

/// The Istio kinds, watched as `networking.istio.io/v1` (Istio 1.22+).
pub const ISTIO_KINDS: [WatchedKind; 6] = [
    WatchedKind::new("networking.istio.io", "v1", "VirtualService", "virtualservices"),
    WatchedKind::new("networking.istio.io", "v1", "DestinationRule", "destinationrules"),
    // Gateways gate too: the gateway processes serve them, and a
    // VirtualService naming one is judged against them.
    WatchedKind::new("networking.istio.io", "v1", "Gateway", "gateways"),
    WatchedKind::new("networking.istio.io", "v1", "ServiceEntry", "serviceentries"),
    WatchedKind::new("networking.istio.io", "v1", "Sidecar", "sidecars"),
    WatchedKind::new("networking.istio.io", "v1", "WorkloadEntry", "workloadentries"),
];

/// What a gateway watches: destinations and their endpoints, every pod's
/// labels, and the Istio kinds that route or add destinations (Sidecars
/// scope sidecars, not gateways).
pub fn gateway_watched_kinds() -> Vec<WatchedKind> {
    let mut kinds = watched_kinds(None);
    kinds.retain(|kind| kind.kind != "Sidecar");
    kinds
}

/// Everything the agent watches. Pods twice, and never whole pods of other
/// nodes: every pod's labels (metadata only, for subsets, joined to
/// endpoints by their `targetRef`), and this node's pods with their
/// addresses (to know which client sent a request).
pub fn watched_kinds(node_name: Option<&str>) -> Vec<WatchedKind> {
    let mut kinds = vec![
        WatchedKind::new("", "v1", "Service", "services"),
        WatchedKind::new("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
        WatchedKind { name: "Pod (labels)", metadata_only: true, ..WatchedKind::new("", "v1", "Pod", "pods") },
    ];
    if let Some(node) = node_name {
        kinds.push(WatchedKind {
            name: "Pod (this node)",
            field_selector: Some(format!("spec.nodeName={node}")),
            ..WatchedKind::new("", "v1", "Pod", "pods")
        });
    }
    kinds.extend(ISTIO_KINDS);
    kinds
}

/// What `meshctl status` shows of the source.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct SourceState {
    /// Every kind has listed once.
    pub synced: bool,
    pub kinds: Vec<KindState>,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct KindState {
    pub name: String,
    pub objects: usize,
    pub synced: bool,
    /// The watch is failing (retried with backoff): the last error.
    pub error: Option<String>,
    /// The API server does not serve the kind (404): empty, not failing.
    #[serde(default)]
    pub not_served: bool,
    /// Unix seconds of the last event or error.
    pub last_event_unix: u64,
}

/// An object as decoded, with its generation (for status conditions).
#[derive(Clone, Debug)]
pub struct StoredObject {
    decoded: Decoded,
    pub generation: Option<i64>,
}

/// What an object decoded to: almost always the object alone, kept as one
/// entry rather than a [`ParsedFile`]'s four `Vec`s (a large cluster holds
/// tens of thousands).
#[derive(Clone, Debug, PartialEq)]
enum Decoded {
    Object(SourcedObject),
    /// Not decodable, or decoded with problems.
    Other(Box<ParsedFile>),
}

impl StoredObject {
    fn new(mut parsed: ParsedFile, generation: Option<i64>) -> Self {
        let alone = parsed.undecodable.is_empty() && parsed.problems.is_empty() && parsed.objects.len() == 1;
        let decoded = if alone { Decoded::Object(parsed.objects.remove(0)) } else { Decoded::Other(Box::new(parsed)) };
        StoredObject { decoded, generation }
    }

    fn objects(&self) -> &[SourcedObject] {
        match &self.decoded {
            Decoded::Object(object) => std::slice::from_ref(object),
            Decoded::Other(parsed) => &parsed.objects,
        }
    }

    fn undecodable(&self) -> &[(ObjectKey, Rejection)] {
        match &self.decoded {
            Decoded::Object(_) => &[],
            Decoded::Other(parsed) => &parsed.undecodable,
        }
    }

    fn problems(&self) -> &[Rejection] {
        match &self.decoded {
            Decoded::Object(_) => &[],
            Decoded::Other(parsed) => &parsed.problems,
        }
    }
}

#[derive(Default)]
struct KindStore {
    /// Which watch feeds it (for per-name Secret watches: a name dropped
    /// and named again gets a new watch, and the old one's events are
    /// ignored).
    epoch: u64,
    objects: BTreeMap<(String, String), StoredObject>,
    /// A list (or relist) under way: what it has brought so far. It
    /// replaces `objects` whole when done, so objects deleted while the
    /// watch was down go too. A list, not a map: a map built from it at
    /// once has full nodes, one filled in key order half-empty ones.
    relist: Option<Vec<((String, String), StoredObject)>>,
    synced: bool,
    error: Option<String>,
    /// The API server answered 404 for the kind: empty, not failing.
    not_served: bool,
    last_event_unix: u64,
}

#[derive(Default)]
struct Store {
    kinds: Vec<(WatchedKind, KindStore)>,
    /// The Secrets DestinationRules name by `credentialName`, each watched
    /// alone, by namespace and name: the agent never lists all Secrets.
    secrets: BTreeMap<(String, String), KindStore>,
    /// Something changed since the last poll.
    dirty: bool,
    /// What changed since the last poll, object by object; None when that
    /// is unknown (a relist, Secrets coming and going, before the first
    /// batch): the model is built whole then.
    changed: Option<BTreeSet<ObjectKey>>,
    /// Hands out [`KindStore::epoch`]s.
    next_epoch: u64,
    /// A gateway process's namespace: the Gateways' `credentialName`
    /// Secrets are read there, as Istio reads them from the gateway
    /// workload's namespace (None on a node: it serves no Gateway).
    gateway_namespace: Option<String>,
}

impl Store {
    /// Every kind the model uses has listed once. Secrets do not count: one
    /// that has not arrived yet is a missing credential (503 for that
    /// cluster), not a frozen node.
    fn synced(&self) -> bool {
        self.kinds.iter().all(|(_, s)| s.synced)
    }
}

/// The kinds that name Secrets by `credentialName`.
const NAMES_SECRETS: [&str; 2] = ["DestinationRule", "Gateway"];

/// The Secret kind, for the per-name watches.
pub static SECRET: WatchedKind = WatchedKind::new("", "v1", "Secret", "secrets");

/// The shared store the watchers write and the reload loop reads.
#[derive(Clone, Default)]
pub struct KubeStore {
    store: Arc<Mutex<Store>>,
    /// Notified whenever the store becomes dirty: the reload loop wakes at
    /// once instead of at its next tick.
    changed: Arc<std::sync::Condvar>,
    /// Events applied so far (see [`ConfigSource::changes_seen`]).
    events: Arc<std::sync::atomic::AtomicU64>,
    /// Woken when the set of referenced Secrets changes.
    secrets_changed: Arc<tokio::sync::Notify>,
}

impl KubeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        crate::sync::lock(&self.store)
    }

    pub fn new(kinds: &[WatchedKind]) -> Self {
        let store = Store {
            kinds: kinds.iter().map(|k| (k.clone(), KindStore::default())).collect(),
            secrets: BTreeMap::new(),
            dirty: false,
            changed: None,
            next_epoch: 1,
            gateway_namespace: None,
        };
        Self {
            store: Arc::new(Mutex::new(store)),
            changed: Arc::default(),
            events: Arc::default(),
            secrets_changed: Arc::default(),
        }
    }

    /// The Secrets to watch now.
    /// The Secrets to watch now, with the epoch their watch must carry.
    fn referenced_secrets(&self) -> Vec<((String, String), u64)> {
        self.lock().secrets.iter().map(|(key, s)| (key.clone(), s.epoch)).collect()
    }

    /// Brings the set of watched Secrets in line with the DestinationRules
    /// and Gateways that name them:
    /// a new name gets an (unlisted) entry, which holds the sync back until
    /// its watch has listed; a name no rule uses any more goes.
    fn track_secrets(store: &mut Store) -> bool {
        let mut wanted = std::collections::BTreeSet::new();
        for (kind, s) in &store.kinds {
            if !NAMES_SECRETS.contains(&kind.kind) {
                continue;
            }
            for object in s.objects.values().flat_map(StoredObject::objects) {
                let (namespace, names) = match &*object.resource {
                    mesh_core::api::Resource::DestinationRule(rule) => {
                        (rule.metadata.namespace_or_default(), rule.credential_names())
                    }
                    mesh_core::api::Resource::Gateway(gateway) => match &store.gateway_namespace {
                        Some(namespace) => (namespace.as_str(), gateway.credential_names()),
                        None => continue,
                    },
                    _ => continue,
                };
                wanted.extend(names.into_iter().map(|name| (namespace.to_owned(), name)));
            }
        }
        let before = store.secrets.len();
        store.secrets.retain(|key, _| wanted.contains(key));
        let removed = store.secrets.len() != before;
        let mut added = false;
        for key in wanted {
            if !store.secrets.contains_key(&key) {
                let epoch = store.next_epoch;
                store.next_epoch += 1;
                store.secrets.insert(key, KindStore { epoch, ..KindStore::default() });
                added = true;
            }
        }
        if removed {
            store.dirty = true;
            store.changed = None;
        }
        removed || added
    }

    fn secret_event(&self, key: &(String, String), epoch: u64, event: Event<serde_json::Value>) {
        let mut store = self.lock();
        // No longer referenced, or referenced again with a newer watch.
        let Some(s) = store.secrets.get_mut(key).filter(|s| s.epoch == epoch) else { return };
        let changed = apply_event(&SECRET, s, event);
        self.applied(&mut store, SECRET.kind, changed);
    }

    fn secret_error(&self, key: &(String, String), epoch: u64, error: String) {
        if let Some(s) = self.lock().secrets.get_mut(key).filter(|s| s.epoch == epoch) {
            s.error = Some(error);
            s.last_event_unix = unix_now();
        }
    }

    pub fn state(&self) -> SourceState {
        let store = self.lock();
        let mut kinds: Vec<KindState> = store
            .kinds
            .iter()
            .map(|(kind, s)| KindState {
                name: kind.name.into(),
                objects: s.objects.len(),
                synced: s.synced,
                error: s.error.clone(),
                not_served: s.not_served,
                last_event_unix: s.last_event_unix,
            })
            .collect();
        if !store.secrets.is_empty() {
            let secrets = store.secrets.values();
            kinds.push(KindState {
                name: format!("Secret ({} named)", store.secrets.len()),
                objects: secrets.clone().map(|s| s.objects.len()).sum(),
                synced: secrets.clone().all(|s| s.synced),
                error: secrets.clone().find_map(|s| s.error.clone()),
                not_served: false,
                last_event_unix: secrets.map(|s| s.last_event_unix).max().unwrap_or(0),
            });
        }
        SourceState { synced: store.synced(), kinds }
    }

    /// The objects of one Istio kind: key and generation, for status.
    pub fn istio_objects(&self, kind: &str) -> Vec<(ObjectKey, Option<i64>, Option<String>)> {
        let store = self.lock();
        let Some((_, s)) = store.kinds.iter().find(|(k, _)| k.group == "networking.istio.io" && k.kind == kind) else {
            return Vec::new();
        };
        s.objects
            .iter()
            .map(|((namespace, name), o)| {
                let key = ObjectKey::new(kind, namespace, name);
                let uid = o.objects().first().and_then(|object| object.resource.metadata().uid.clone());
                (key, o.generation, uid)
            })
            .collect()
    }

    /// Applies one watcher event of watch `index`.
    fn event(&self, index: usize, event: Event<serde_json::Value>) {
        let mut store = self.lock();
        let (kind, s) = &mut store.kinds[index];
        let is_rule = NAMES_SECRETS.contains(&kind.kind);
        let (name, changed) = (kind.kind, apply_event(&kind.clone(), s, event));
        let touched = changed != Changed::Nothing;
        self.applied(&mut store, name, changed);
        if touched && is_rule && Self::track_secrets(&mut store) {
            self.secrets_changed.notify_one();
        }
    }

    fn not_served(&self, index: usize) {
        let mut store = self.lock();
        let (kind, s) = &mut store.kinds[index];
        if s.error.is_none() {
            tracing::warn!(kind = kind.name, api_version = %kind.api_version(), "not served by the API server; treated as empty");
        }
        s.error = Some(format!("{} is not served by the API server (404)", kind.api_version()));
        s.not_served = true;
        s.last_event_unix = unix_now();
        if !s.synced || !s.objects.is_empty() {
            s.objects.clear();
            s.synced = true;
            let kind = kind.kind;
            self.applied(&mut store, kind, Changed::Whole);
        }
    }

    fn error(&self, index: usize, error: String) {
        let mut store = self.lock();
        let (kind, s) = &mut store.kinds[index];
        if s.error.is_none() {
            tracing::warn!(kind = kind.name, %error, "watch failing; retrying with backoff, the last good configuration keeps serving");
        }
        s.error = Some(error);
        s.last_event_unix = unix_now();
    }

    /// After an event of `kind` was applied to `store` (`changed`: what
    /// it serves changed): counted, and the reload loop woken.
    fn applied(&self, store: &mut Store, kind: &'static str, changed: Changed) {
        match changed {
            Changed::Nothing => {}
            Changed::Object((namespace, name)) => {
                store.dirty = true;
                if let Some(keys) = &mut store.changed {
                    keys.insert(ObjectKey::new(kind, &namespace, &name));
                }
            }
            Changed::Whole => {
                store.dirty = true;
                store.changed = None;
            }
        }
        self.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` until there is a batch to take; true if there is.
    fn wait_for_batch(&self, timeout: Duration) -> bool {
        let store = self.lock();
        let waited = self.changed.wait_timeout_while(store, timeout, |store| !(store.dirty && store.synced()));
        let (store, _) = waited.unwrap_or_else(|poisoned| poisoned.into_inner());
        store.dirty && store.synced()
    }

    /// The whole configuration, once every kind has listed, if it changed.
    fn take_batch(&self) -> Option<SourceBatch> {
        let mut store = self.lock();
        if !store.dirty || !store.synced() {
            return None;
        }
        store.dirty = false;
        let changed = store.changed.replace(BTreeSet::new());
        // This node's pods (with addresses) stand for their labels-only copies.
        let local_pods: std::collections::BTreeSet<(String, String)> = store
            .kinds
            .iter()
            .filter(|(k, _)| k.kind == "Pod" && !k.metadata_only)
            .flat_map(|(_, s)| s.objects.keys().cloned())
            .collect();
        let mut batch = SourceBatch::default();
        let all = store.kinds.iter().map(|(kind, s)| (kind, s)).chain(store.secrets.values().map(|s| (&SECRET, s)));
        for (kind, s) in all {
            for (key, object) in &s.objects {
                if kind.kind == "Pod" && kind.metadata_only && local_pods.contains(key) {
                    continue;
                }
                batch.objects.extend(object.objects().iter().cloned());
                batch.undecodable.extend(object.undecodable().iter().cloned());
                batch.rejections.extend(object.problems().iter().cloned());
            }
        }
        batch.changed = changed;
        Some(batch)
    }
}

/// What an event changed in what a kind's store serves.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Changed {
    Nothing,
    /// One object, by namespace and name.
    Object((String, String)),
    /// Possibly any (a list replaced the objects).
    Whole,
}

/// Applies a watcher event to one kind's store. A list (and a relist after
/// 410) replaces the objects whole.
fn apply_event(kind: &WatchedKind, s: &mut KindStore, event: Event<serde_json::Value>) -> Changed {
    s.last_event_unix = unix_now();
    s.error = None;
    s.not_served = false;
    let changed_if =
        |changed: bool, key: (String, String)| if changed { Changed::Object(key) } else { Changed::Nothing };
    match event {
        Event::Init => {
            s.relist = Some(Vec::new());
            Changed::Nothing
        }
        Event::InitApply(object) => {
            let (key, stored) = decode(kind, object);
            s.relist.get_or_insert_with(Vec::new).push((key, stored));
            Changed::Nothing
        }
        Event::InitDone => {
            // A key listed twice keeps its last object, as inserting did.
            let listed: BTreeMap<_, _> = s.relist.take().unwrap_or_default().into_iter().collect();
            let same = listed.len() == s.objects.len()
                && listed.iter().zip(&s.objects).all(|((k1, a), (k2, b))| k1 == k2 && a.decoded == b.decoded);
            s.objects = listed;
            let first = !s.synced;
            s.synced = true;
            if first || !same {
                Changed::Whole
            } else {
                Changed::Nothing
            }
        }
        Event::Apply(object) => {
            // Most updates change nothing the agent keeps (a pod's status,
            // managedFields): no new configuration for those.
            let (key, stored) = decode(kind, object);
            let unchanged = s.objects.get(&key).is_some_and(|old| old.decoded == stored.decoded);
            s.objects.insert(key.clone(), stored);
            changed_if(!unchanged, key)
        }
        Event::Delete(object) => {
            let key = object_key(&object);
            changed_if(s.objects.remove(&key).is_some(), key)
        }
    }
}

/// An event's object as a store entry: its key and its decoding. Objects in
/// list responses carry no apiVersion/kind, so the watch's are set.
fn decode(kind: &WatchedKind, mut object: serde_json::Value) -> ((String, String), StoredObject) {
    let key = object_key(&object);
    let generation = object.pointer("/metadata/generation").and_then(|g| g.as_i64());
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), kind.api_version().into());
        map.insert("kind".into(), kind.kind.into());
    }
    let mut parsed = ParsedFile::default();
    decode_object("", object, &mut parsed);
    (key, StoredObject::new(parsed, generation))
}

/// The store key of an event's object: its namespace and name.
fn object_key(object: &serde_json::Value) -> (String, String) {
    let text =
        |field: &str| object.get("metadata").and_then(|m| m.get(field)).and_then(|v| v.as_str()).unwrap_or_default();
    (text("namespace").to_owned(), text("name").to_owned())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Watches the API server into a [`KubeStore`].
pub struct KubeSource {
    store: KubeStore,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KubeSource {
    /// Starts one watcher task per kind on `runtime`.
    pub fn start(client: kube::Client, kinds: Vec<WatchedKind>, runtime: &tokio::runtime::Handle) -> Self {
        Self::start_in(client, kinds, None, runtime)
    }

    /// [`KubeSource::start`] for a gateway in `gateway_namespace`, which
    /// also watches the Secrets its Gateways name.
    pub fn start_in(
        client: kube::Client,
        kinds: Vec<WatchedKind>,
        gateway_namespace: Option<String>,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let store = KubeStore::new(&kinds);
        store.lock().gateway_namespace = gateway_namespace;
        let mut tasks: Vec<_> = kinds
            .into_iter()
            .enumerate()
            .map(|(index, kind)| runtime.spawn(watch(client.clone(), kind, index, store.clone())))
            .collect();
        tasks.push(runtime.spawn(watch_named_secrets(client, store.clone())));
        Self { store, tasks }
    }

    pub fn store(&self) -> KubeStore {
        self.store.clone()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|task| task.abort());
    }
}

impl ConfigSource for KubeSource {
    fn poll(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        Ok(self.store.take_batch())
    }

    fn wait(&mut self, timeout: Duration) -> bool {
        self.store.wait_for_batch(timeout)
    }

    fn changes_seen(&self) -> u64 {
        self.store.events.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One kind's watch loop. kube-rs's watcher lists, watches from the list's
/// resourceVersion, resumes a broken stream where it stopped, and relists
/// on `410 Gone`; errors come through as items ([`follow`] spaces the
/// retries).
async fn watch(client: kube::Client, kind: WatchedKind, index: usize, store: KubeStore) {
    let resource = kind.api_resource();
    let mut config = watcher::Config::default();
    if let Some(selector) = &kind.field_selector {
        config = config.fields(selector);
    }
    let events = if kind.metadata_only {
        let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
        watcher(api, config)
            .map(|event| event.map(|e| map_event(e, |meta| serde_json::json!({ "metadata": meta.metadata }))))
            .boxed()
    } else {
        object_events(Api::all_with(client, &resource), config)
    };
    follow(events, |event| match event {
        Ok(event) => store.event(index, event),
        Err(error) if is_gone(&error) => tracing::debug!(kind = kind.name, "watch expired (410); relisting"),
        Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.code == 404 => {
            // The API server does not serve the kind (CRDs not installed,
            // or an Istio without v1): as good as empty, and said so.
            store.not_served(index);
        }
        Err(error) => store.error(index, error.to_string()),
    })
    .await;
}

type Events = futures::stream::BoxStream<'static, Result<Event<serde_json::Value>, watcher::Error>>;

/// Whole objects of one watch, as JSON.
fn object_events(api: Api<DynamicObject>, config: watcher::Config) -> Events {
    watcher(api, config)
        .map(|event| event.map(|e| map_event(e, |object| serde_json::to_value(object).unwrap_or_default())))
        .boxed()
}

/// Hands every item of `events` to `handle`, and after a failure waits
/// ([`CappedBackoff`]) before the watcher tries again. Not after `410
/// Gone`: the history moved on (an API server that came back has a new
/// one) and the watcher relists at once; a wait there only put off the
/// recovery of a watch that had already waited out the outage.
async fn follow(mut events: Events, mut handle: impl FnMut(Result<Event<serde_json::Value>, watcher::Error>)) {
    let mut backoff = CappedBackoff::default();
    while let Some(item) = events.next().await {
        let wait = match &item {
            Ok(_) => {
                backoff.reset();
                None
            }
            Err(error) if is_gone(error) => None,
            Err(_) => backoff.next(),
        };
        handle(item);
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// `410 Gone`: the resourceVersion a watch resumes from is too old. That is
/// the protocol at work, not a failure.
fn is_gone(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// The retry delays of a failing watch: from 0.5 s, doubling, at most
/// 4 s, each with up to a quarter of jitter; back to the start after any
/// event. kube-rs's default grows to 30 s, so a watch could come back half
/// a minute after the API server did.
#[derive(Debug, Default)]
struct CappedBackoff {
    failures: u32,
}

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(4);

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = BACKOFF_FIRST.saturating_mul(1 << self.failures.min(8)).min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        Some(base.mul_f64(1.0 + fastrand::f64() / 4.0))
    }
}

impl CappedBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

fn map_event<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Apply(object) => Event::Apply(f(object)),
        Event::Delete(object) => Event::Delete(f(object)),
        Event::Init => Event::Init,
        Event::InitApply(object) => Event::InitApply(f(object)),
        Event::InitDone => Event::InitDone,
    }
}

/// Keeps one watch per Secret that a DestinationRule names, started and
/// stopped as the rules change.
async fn watch_named_secrets(client: kube::Client, store: KubeStore) {
    let mut running: BTreeMap<(String, String), (u64, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    loop {
        let wanted: BTreeMap<(String, String), u64> = store.referenced_secrets().into_iter().collect();
        running.retain(|key, (epoch, task)| {
            let keep = wanted.get(key) == Some(epoch);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, epoch) in wanted {
            if let std::collections::btree_map::Entry::Vacant(entry) = running.entry(key) {
                let task = tokio::spawn(watch_secret(client.clone(), entry.key().clone(), epoch, store.clone()));
                entry.insert((epoch, task));
            }
        }
        let _abort_on_drop = AbortAll(&mut running);
        store.secrets_changed.notified().await;
        std::mem::forget(_abort_on_drop);
    }
}

/// Aborts the per-Secret watches if the manager itself is aborted (its
/// future dropped while waiting).
struct AbortAll<'a>(&'a mut BTreeMap<(String, String), (u64, tokio::task::JoinHandle<()>)>);

impl Drop for AbortAll<'_> {
    fn drop(&mut self) {
        self.0.values().for_each(|(_, task)| task.abort());
    }
}

async fn watch_secret(client: kube::Client, key: (String, String), epoch: u64, store: KubeStore) {
    let api = Api::namespaced_with(client, &key.0, &SECRET.api_resource());
    let config = watcher::Config::default().fields(&format!("metadata.name={}", key.1));
    follow(object_events(api, config), |event| match event {
        Ok(event) => store.secret_event(&key, epoch, event),
        Err(error) if is_gone(&error) => {}
        Err(error) => store.secret_error(&key, epoch, error.to_string()),
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_watch_retries_within_a_few_seconds() {
        let mut backoff = CappedBackoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next().unwrap()).collect();
        assert!(delays[0] >= BACKOFF_FIRST && delays[0] <= BACKOFF_FIRST.mul_f64(1.25), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX.mul_f64(1.25)), "{delays:?}");
        backoff.reset();
        assert!(backoff.next().unwrap() <= BACKOFF_FIRST.mul_f64(1.25), "back to the start");
    }

    /// A store of every kind, each listed (empty), its first batch taken.
    fn synced_store() -> (Vec<WatchedKind>, KubeStore) {
        let kinds = watched_kinds(None);
        let store = KubeStore::new(&kinds);
        for index in 0..kinds.len() {
            store.event(index, Event::Init);
            store.event(index, Event::InitDone);
        }
        assert!(store.take_batch().is_some(), "the first complete sync");
        (kinds, store)
    }

    #[test]
    fn the_reload_loop_is_woken_by_an_event_not_by_its_tick() {
        let (kinds, store) = synced_store();
        assert!(!store.wait_for_batch(Duration::from_millis(10)), "nothing new");
        let service = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"clusterIP": "10.96.0.1"}});
        let index = kinds.iter().position(|k| k.kind == "Service").unwrap();
        let sender = store.clone();
        let event = std::thread::spawn(move || sender.event(index, Event::Apply(service)));
        // Woken by the event, not at the end of the wait.
        let woken = std::time::Instant::now();
        assert!(store.wait_for_batch(Duration::from_secs(120)));
        assert!(woken.elapsed() < Duration::from_secs(60));
        event.join().unwrap();
        assert!(store.take_batch().is_some_and(|batch| batch.objects.len() == 1));
    }

    #[test]
    fn the_agents_own_status_write_coming_back_is_no_change() {
        let (kinds, store) = synced_store();
        let rule = |rv: &str, status: serde_json::Value| {
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "web", "namespace": "shop", "generation": 1, "resourceVersion": rv},
                "spec": {"host": "web"}, "status": status})
        };
        let index = kinds.iter().position(|k| k.kind == "DestinationRule").unwrap();
        store.event(index, Event::Apply(rule("10", serde_json::json!({}))));
        assert!(store.take_batch().is_some(), "a new rule");
        let written = serde_json::json!({"observedGeneration": 1, "conditions": [{"type": "Reconciled"}]});
        store.event(index, Event::Apply(rule("11", written)));
        assert!(!store.wait_for_batch(Duration::from_millis(10)), "its status written: nothing to rebuild");
    }

    #[test]
    fn an_object_that_does_not_decode_goes_in_the_batch_as_undecodable_until_fixed() {
        let (kinds, store) = synced_store();
        let index = kinds.iter().position(|k| k.kind == "DestinationRule").unwrap();
        let rule = |host: serde_json::Value| {
            serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "web", "namespace": "shop"}, "spec": {"host": host}})
        };
        store.event(index, Event::Apply(rule(serde_json::json!(5))));
        let batch = store.take_batch().expect("a new rule");
        assert!(batch.objects.is_empty());
        assert_eq!(batch.undecodable.len(), 1, "{:?}", batch.undecodable);
        assert!(batch.undecodable[0].1.field.contains("spec.host"), "{:?}", batch.undecodable);
        store.event(index, Event::Apply(rule(serde_json::json!("web"))));
        let batch = store.take_batch().expect("the rule fixed");
        assert_eq!((batch.objects.len(), batch.undecodable.len()), (1, 0));
    }

    #[test]
    fn a_relist_replaces_the_objects_and_an_object_listed_twice_keeps_its_last_version() {
        let (kinds, store) = synced_store();
        let index = kinds.iter().position(|k| k.kind == "Service").unwrap();
        let service = |name: &str, ip: &str| {
            serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"}, "spec": {"clusterIP": ip}})
        };
        store.event(index, Event::Apply(service("gone", "10.96.0.9")));
        store.take_batch();
        store.event(index, Event::Init);
        for (name, ip) in [("web", "10.96.0.1"), ("api", "10.96.0.2"), ("web", "10.96.0.3")] {
            store.event(index, Event::InitApply(service(name, ip)));
        }
        store.event(index, Event::InitDone);
        let batch = store.take_batch().expect("the relist changed the services");
        let ips: Vec<(String, String)> = (batch.objects.iter())
            .filter_map(|object| match &*object.resource {
                mesh_core::api::Resource::Service(s) => Some((s.metadata.name.clone(), s.spec.cluster_ip.clone()?)),
                _ => None,
            })
            .collect();
        assert_eq!(ips, [("api".to_owned(), "10.96.0.2".to_owned()), ("web".to_owned(), "10.96.0.3".to_owned())]);
    }
}
