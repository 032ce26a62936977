//! An in-memory fake Kubernetes API server that speaks the HTTP conversation
//! kube-rs 5 (`kube-client`/`kube-runtime` 5.0.0) has with a real one: list,
//! watch (with bookmarks, resumption and "410 Gone"), metadata-only list and
//! watch, get/create/replace/delete, and merge/apply patches (of `/status`
//! too).
//!
//! It answers either in-process ([`FakeApiServer::client`], a `kube::Client`
//! over a `tower` service, no sockets) or over HTTP/1.1 on a listener
//! ([`FakeApiServer::serve`] + [`FakeApiServer::write_kubeconfig`]), so a real
//! agent binary can be pointed at it.
//!
//! What kube sends, and how this server answers it:
//! - Query strings come from `form_urlencoded` appended to `"path?"`, so they
//!   start with an empty pair (`pods?&watch=true&...`) and a patch of
//!   `/status` has an empty query (`.../status?`). Empty pairs are ignored.
//! - `watcher()` lists with `limit=500` and no `resourceVersion` (the default
//!   `ListSemantic::MostRecent`), then watches with `watch=true&
//!   timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=<list RV>`.
//!   When a watch body ends cleanly it re-watches from the last RV it saw (an
//!   event's or a bookmark's). Only a `{"type":"ERROR"}` event with code 410
//!   makes it relist: a watch *request* answered 410 just fails and is retried
//!   from the same RV forever, so the 410 must come as an event in a 200.
//! - `sendInitialEvents=true` (streaming lists) is only sent after
//!   `Config::streaming_lists()`; it is supported anyway (snapshot as ADDED
//!   events, then a bookmark annotated `k8s.io/initial-events-end`).
//! - Metadata-only requests (`metadata_watcher`, `list_metadata`, and any
//!   `Api<PartialObjectMeta<K>>`) are the same URLs with `Accept:
//!   application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`.
//! - Clients built from a kubeconfig retry 429/503/504 (up to 15 times, 5 ms
//!   doubling, honouring `Retry-After`); in-process clients do not. So while
//!   [`FakeApiServer::set_unavailable`] is on, an HTTP client's request keeps
//!   retrying for a while instead of failing at once.
//!
//! Simplifications: no pagination (`limit`/`continue` ignored), no
//! admission or validation beyond names, strategic-merge and apply patches
//! are treated as JSON merge patches (RFC 7386), `dryRun` is ignored, and a
//! watch filters each event by the object it carries (an object that stops
//! matching a selector sends no DELETED).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

/// Body of every response: a whole JSON document, or a watch stream.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Idle time after which an open watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// First resourceVersion handed out is this + 1 (an empty server lists at
/// "100", never "0", which means "any" to the API).
const INITIAL_RESOURCE_VERSION: u64 = 100;

/// One served resource type.
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    /// Has a `/status` subresource: then writes to the main resource keep
    /// the stored status, as on a real server.
    status_subresource: bool,
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural[.group]`, as in the API server's messages.
    fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Every served kind; all are namespaced.
const KINDS: &[Kind] = &[
    Kind { group: "", version: "v1", kind: "Service", plural: "services", status_subresource: true },
    Kind { group: "", version: "v1", kind: "Pod", plural: "pods", status_subresource: true },
    Kind { group: "", version: "v1", kind: "Secret", plural: "secrets", status_subresource: false },
    Kind {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        status_subresource: false,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "VirtualService",
        plural: "virtualservices",
        status_subresource: true,
    },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "DestinationRule",
        plural: "destinationrules",
        status_subresource: true,
    },
    Kind { group: "networking.istio.io", version: "v1", kind: "Gateway", plural: "gateways", status_subresource: true },
    Kind {
        group: "networking.istio.io",
        version: "v1",
        kind: "ServiceEntry",
        plural: "serviceentries",
        status_subresource: true,
    },
    Kind { group: "networking.istio.io", version: "v1", kind: "Sidecar", plural: "sidecars", status_subresource: true },
    Kind { group: "coordination.k8s.io", version: "v1", kind: "Lease", plural: "leases", status_subresource: false },
];

fn kind_by_type(api_version: &str, kind: &str) -> Option<usize> {
    KINDS.iter().position(|k| k.kind == kind && k.api_version() == api_version)
}

fn kind_by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    KINDS.iter().position(|k| k.group == group && k.version == version && k.plural == plural)
}

/// (index in [`KINDS`], namespace, name).
type Key = (usize, String, String);

/// One change, kept for watches to replay.
struct Change {
    rv: u64,
    key: Key,
    event: &'static str,
    /// The object as of this change (with apiVersion and kind).
    object: Value,
}

struct Store {
    /// Last resourceVersion handed out (one counter for all kinds, as etcd).
    rv: u64,
    /// Requests for a resourceVersion older than this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change since the start, in rv order. Kept whole, even after
    /// `compact()`, so open watches that lag behind still catch up; only new
    /// requests are refused.
    history: Vec<Change>,
    next_uid: u64,
    /// Bumped by `drop_watches()`: watches opened in an older epoch end.
    watch_epoch: u64,
    unavailable: bool,
    requests: Vec<(String, String, String)>,
    status_patches: Vec<(String, String, Value)>,
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
    fn write(&mut self, key: Key, mut object: Value) -> Value {
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
    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), self.rv.to_string().into());
        self.history.push(Change { rv: self.rv, key: key.clone(), event: "DELETED", object: object.clone() });
        Some(object)
    }

    /// The objects as they were at `rv` (replayed from the full history).
    fn objects_at(&self, rv: u64) -> BTreeMap<Key, Value> {
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

    fn too_old(&self, rv: u64) -> ApiError {
        ApiError::new(StatusCode::GONE, "Expired", format!("too old resource version: {rv} ({})", self.compacted))
    }
}

struct Shared {
    store: Mutex<Store>,
    /// Ticks on every change that open watches must look at.
    wake: watch::Sender<u64>,
}

/// Handle on one fake API server; clones share it.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Shared>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    pub fn new() -> Self {
        let (wake, _) = watch::channel(0);
        FakeApiServer { inner: Arc::new(Shared { store: Mutex::new(Store::default()), wake }) }
    }

    /// A kube client whose every request is answered in-process;
    /// `identity` tags the requests it makes in [`requests`](Self::requests).
    /// Unlike a client built from a kubeconfig it has no retry layer.
    pub fn client(&self, identity: &str) -> kube::Client {
        let server = self.clone();
        let identity: Arc<str> = identity.into();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            let identity = identity.clone();
            async move { Ok::<_, Infallible>(server.handle(&identity, request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Serves HTTP/1.1 on `listener` until the returned task is aborted
    /// (which also ends its connections). Requests are tagged "http".
    pub fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            // Owned here so that aborting this task drops (aborts) them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of descriptors or the like: let it pass.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let server = server.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle("http", request).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // A client hanging up mid-watch is an error here; nothing to do about it.
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        })
    }

    /// Writes `dir/kubeconfig`, pointing at `http://{addr}` with no auth and
    /// namespace "default", and returns its path.
    pub fn write_kubeconfig(dir: &Path, addr: SocketAddr) -> std::io::Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\n"
        );
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// Creates or replaces an object (JSON with apiVersion, kind,
    /// metadata.name and metadata.namespace, "default" if absent), status
    /// included. Sets resourceVersion, uid, generation and creationTimestamp,
    /// emits ADDED or MODIFIED, and returns the stored object. Panics on an
    /// unknown kind or a missing name: this is the test's own input.
    pub fn apply(&self, object: Value) -> Value {
        let key = object_key(&object).unwrap_or_else(|e| panic!("FakeApiServer::apply: {}: {object}", e.message));
        let stored = self.store().write(key, object);
        self.wake();
        stored
    }

    /// Deletes an object, emitting DELETED; false if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(key) = key_of(api_version, kind, namespace, name) else {
            return false;
        };
        let removed = self.store().remove(&key).is_some();
        self.wake();
        removed
    }

    /// The stored object, if any.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = key_of(api_version, kind, namespace, name)?;
        self.store().objects.get(&key).cloned()
    }

    /// Ends every open watch stream cleanly (a dropped connection): clients
    /// resume from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.store().watch_epoch += 1;
        self.wake();
    }

    /// Forgets history: a watch, or an `Exact` list, asking for a
    /// resourceVersion older than the current one gets 410 Gone (a watch as
    /// HTTP 200 with one ERROR event, as a real server), so clients must
    /// relist. Open watches are not affected; see [`drop_watches`](Self::drop_watches).
    pub fn compact(&self) {
        let mut store = self.store();
        store.compacted = store.rv;
    }

    /// While true, every request gets 503 and open watches end.
    pub fn set_unavailable(&self, down: bool) {
        self.store().unavailable = down;
        self.wake();
    }

    /// Every request seen: (identity, method, path with query).
    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.store().requests.clone()
    }

    /// PATCHes of `/status` received, applied or not: (identity, path
    /// without query, body).
    pub fn status_patches(&self) -> Vec<(String, String, Value)> {
        self.store().status_patches.clone()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        crate::lock(&self.inner.store)
    }

    fn wake(&self) {
        self.inner.wake.send_modify(|tick| *tick = tick.wrapping_add(1));
    }

    /// Answers one request (from either transport).
    async fn handle<B>(&self, identity: &str, request: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body,
        B::Error: Display,
    {
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.to_string());
        let unavailable = {
            let mut store = self.store();
            store.requests.push((identity.to_string(), parts.method.to_string(), target));
            store.unavailable
        };
        if unavailable {
            let message = "the fake API server is unavailable".to_string();
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message).into_response();
        }
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return ApiError::bad_request(format!("reading the request body: {e}")).into_response(),
        };
        let call = Call {
            identity,
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: Query::parse(parts.uri.query()),
            headers: parts.headers,
            body,
        };
        self.dispatch(&call).unwrap_or_else(ApiError::into_response)
    }

    fn dispatch(&self, call: &Call) -> Result<Response<Body>, ApiError> {
        // `Client::apiserver_version()`, a common "is it up" probe.
        if call.method == Method::GET && call.path == "/version" {
            return Ok(json_response(StatusCode::OK, &version_info()));
        }
        let route = Route::parse(&call.path).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", call.path))
        })?;
        match (&call.method, route.name.as_deref()) {
            (&Method::GET, None) if call.query.is_watch() => self.watch(call, &route),
            (&Method::GET, None) => self.list(call, &route),
            (&Method::POST, None) => self.create(call, &route),
            (&Method::DELETE, None) => self.delete_collection(call, &route),
            (&Method::GET, Some(name)) => self.get_one(call, &route, name),
            (&Method::PUT, Some(name)) => self.replace(call, &route, name),
            (&Method::PATCH, Some(name)) => self.patch(call, &route, name),
            (&Method::DELETE, Some(name)) if !route.status => self.delete_one(call, &route, name),
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{} is not supported on {}", call.method, call.path),
            )),
        }
    }

    fn list(&self, call: &Call, route: &Route) -> Result<Response<Body>, ApiError> {
        let filter = Filter::new(route, &call.query)?;
        let exact = call.query.get("resourceVersionMatch") == Some("Exact");
        let requested = call.query.resource_version()?;
        let store = self.store();
        // Exact asks for the state at that revision; anything else ("",
        // "0", NotOlderThan) is served from the current state.
        let (rv, at_rv);
        let objects = match requested {
            Some(wanted) if exact && wanted != store.rv => {
                if wanted < store.compacted {
                    return Err(store.too_old(wanted));
                }
                if wanted > store.rv {
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "Timeout",
                        format!("Too large resource version: {wanted}, current: {}", store.rv),
                    ));
                }
                rv = wanted;
                at_rv = store.objects_at(wanted);
                &at_rv
            }
            _ => {
                rv = store.rv;
                &store.objects
            }
        };
        let kind = &KINDS[route.kind];
        let metadata_only = call.metadata_only();
        let items: Vec<Value> = objects
            .iter()
            .filter(|(key, object)| filter.matches(key, object))
            .map(|(_, object)| if metadata_only { partial(object) } else { strip_type(object) })
            .collect();
        let list = if metadata_only {
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            })
        } else {
            json!({
                "apiVersion": kind.api_version(),
                "kind": format!("{}List", kind.kind),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            })
        };
        Ok(json_response(StatusCode::OK, &list))
    }

    fn watch(&self, call: &Call, route: &Route) -> Result<Response<Body>, ApiError> {
        let filter = Filter::new(route, &call.query)?;
        let from = call.query.resource_version()?.filter(|&rv| rv != 0);
        let timeout = match call.query.get("timeoutSeconds") {
            None | Some("") | Some("0") => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("bad timeoutSeconds {s:?}")))?),
        };
        let initial_events = call.query.get("sendInitialEvents") == Some("true");
        let metadata_only = call.metadata_only();
        let store = self.store();
        let mut stream = WatchStream {
            server: self.clone(),
            filter,
            metadata_only,
            bookmarks: call.query.get("allowWatchBookmarks") == Some("true"),
            cursor: store.rv,
            epoch: store.watch_epoch,
            deadline: timeout.map(|s| Instant::now() + Duration::from_secs(s)),
            // Subscribed under the lock: no change after this point is missed.
            wake: self.inner.wake.subscribe(),
            pending: VecDeque::new(),
            finished: false,
        };
        match from {
            Some(rv) if rv < store.compacted && !initial_events => {
                // Real servers answer 200 and then this one event.
                let status = store.too_old(rv).to_json();
                stream.pending.push_back(event_line("ERROR", &status));
                stream.finished = true;
            }
            // Replay the changes after the requested revision.
            Some(rv) if !initial_events => stream.cursor = rv,
            // "0", none, or streaming list: the current state as ADDED events.
            _ => {
                for (key, object) in &store.objects {
                    if stream.filter.matches(key, object) {
                        stream.pending.push_back(stream.event("ADDED", object));
                    }
                }
                if initial_events {
                    let mut bookmark = stream.bookmark(store.rv);
                    bookmark["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                    stream.pending.push_back(event_line("BOOKMARK", &bookmark));
                }
            }
        }
        drop(store);
        let body = futures::stream::unfold(stream, |mut stream| async move {
            let chunk = stream.next_chunk().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), stream))
        });
        Ok(response(StatusCode::OK, StreamBody::new(body).boxed_unsync()))
    }

    fn get_one(&self, call: &Call, route: &Route, name: &str) -> Result<Response<Body>, ApiError> {
        let key = route.key(name);
        let object = self.store().objects.get(&key).cloned().ok_or_else(|| ApiError::not_found(&key))?;
        Ok(self.object_response(StatusCode::OK, &object, call))
    }

    fn create(&self, call: &Call, route: &Route) -> Result<Response<Body>, ApiError> {
        let namespace = route.namespace.as_deref().ok_or_else(|| {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "create needs a namespace".into())
        })?;
        let object = call.json_body()?;
        check_body(&object, route, None)?;
        let stored = {
            let mut store = self.store();
            let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => name.to_string(),
                _ => match object.pointer("/metadata/generateName").and_then(Value::as_str) {
                    Some(prefix) => format!("{prefix}{:05x}", store.next_uid),
                    None => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            "metadata.name or metadata.generateName is required".into(),
                        ))
                    }
                },
            };
            let key = (route.kind, namespace.to_string(), name);
            if store.objects.contains_key(&key) {
                return Err(ApiError::already_exists(&key));
            }
            store.write(key, object)
        };
        self.wake();
        Ok(self.object_response(StatusCode::CREATED, &stored, call))
    }

    fn replace(&self, call: &Call, route: &Route, name: &str) -> Result<Response<Body>, ApiError> {
        let body = call.json_body()?;
        check_body(&body, route, Some(name))?;
        let key = route.key(name);
        let stored = {
            let mut store = self.store();
            let current = store.objects.get(&key).ok_or_else(|| ApiError::not_found(&key))?;
            check_resource_version(&body, current, &key)?;
            let new = if route.status {
                with_status_of(current.clone(), &body)
            } else if KINDS[route.kind].status_subresource {
                with_status_of(body, current)
            } else {
                body
            };
            store.write(key, new)
        };
        self.wake();
        Ok(self.object_response(StatusCode::OK, &stored, call))
    }

    fn patch(&self, call: &Call, route: &Route, name: &str) -> Result<Response<Body>, ApiError> {
        let content_type = call.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let apply = content_type.starts_with("application/apply-patch");
        if !apply
            && !content_type.starts_with("application/merge-patch+json")
            && !content_type.starts_with("application/strategic-merge-patch+json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the fake API server does not take {content_type:?} patches"),
            ));
        }
        // kube serialises apply patches as JSON too, which is valid YAML.
        let patch = call.json_body()?;
        let key = route.key(name);
        let stored = {
            let mut store = self.store();
            if route.status {
                store.status_patches.push((call.identity.to_string(), call.path.clone(), patch.clone()));
            }
            let new = match store.objects.get(&key) {
                // Server-side apply creates what is missing.
                None if apply && !route.status => {
                    check_body(&patch, route, Some(name))?;
                    patch
                }
                None => return Err(ApiError::not_found(&key)),
                Some(current) => {
                    check_resource_version(&patch, current, &key)?;
                    let mut new = current.clone();
                    if route.status {
                        if let Some(status) = patch.get("status") {
                            merge_patch(ensure_object(&mut new).entry("status").or_insert(Value::Null), status);
                        }
                        new
                    } else {
                        merge_patch(&mut new, &patch);
                        if KINDS[route.kind].status_subresource {
                            with_status_of(new, current)
                        } else {
                            new
                        }
                    }
                }
            };
            store.write(key, new)
        };
        self.wake();
        Ok(self.object_response(StatusCode::OK, &stored, call))
    }

    fn delete_one(&self, call: &Call, route: &Route, name: &str) -> Result<Response<Body>, ApiError> {
        // DeleteOptions may carry preconditions; an empty body is fine.
        let options: Value = if call.body.is_empty() { Value::Null } else { call.json_body()? };
        let key = route.key(name);
        let removed = {
            let mut store = self.store();
            let current = store.objects.get(&key).ok_or_else(|| ApiError::not_found(&key))?;
            if let Some(rv) = options.pointer("/preconditions/resourceVersion").and_then(Value::as_str) {
                if current.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(rv) {
                    return Err(ApiError::conflict(&key));
                }
            }
            if let Some(uid) = options.pointer("/preconditions/uid").and_then(Value::as_str) {
                if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(ApiError::conflict(&key));
                }
            }
            store.remove(&key).ok_or_else(|| ApiError::not_found(&key))?
        };
        self.wake();
        Ok(self.object_response(StatusCode::OK, &removed, call))
    }

    fn delete_collection(&self, call: &Call, route: &Route) -> Result<Response<Body>, ApiError> {
        let filter = Filter::new(route, &call.query)?;
        let removed: Vec<Value> = {
            let mut store = self.store();
            let keys: Vec<Key> = store
                .objects
                .iter()
                .filter(|(key, object)| filter.matches(key, object))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|key| store.remove(key)).map(|object| strip_type(&object)).collect()
        };
        self.wake();
        let kind = &KINDS[route.kind];
        let list = json!({
            "apiVersion": kind.api_version(),
            "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": self.store().rv.to_string()},
            "items": removed,
        });
        Ok(json_response(StatusCode::OK, &list))
    }

    fn object_response(&self, code: StatusCode, object: &Value, call: &Call) -> Response<Body> {
        json_response(code, &if call.metadata_only() { partial(object) } else { object.clone() })
    }
}

/// One request, body read.
struct Call<'a> {
    identity: &'a str,
    method: Method,
    path: String,
    query: Query,
    headers: HeaderMap,
    body: Bytes,
}

impl Call<'_> {
    /// `Accept: application/json;as=PartialObjectMetadata[List];...`
    fn metadata_only(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=PartialObjectMetadata"))
    }

    /// The body as a JSON object.
    fn json_body(&self) -> Result<Value, ApiError> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err(ApiError::bad_request("the body is not a JSON object".into())),
            Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
        }
    }
}

/// Decoded query parameters (empty pairs, as in kube's `?&watch=true`, dropped).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Query {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn is_watch(&self) -> bool {
        matches!(self.get("watch"), Some("true" | "1"))
    }

    /// `resourceVersion`, None when absent or empty.
    fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.get("resourceVersion") {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| ApiError::bad_request(format!("bad resourceVersion {s:?}"))),
        }
    }
}

/// What a URL path names.
struct Route {
    kind: usize,
    /// None for the cluster-wide collection (`/api/v1/pods`).
    namespace: Option<String>,
    name: Option<String>,
    /// The `/status` subresource.
    status: bool,
}

impl Route {
    /// `/api/v1[/namespaces/{ns}]/{plural}[/{name}[/status]]`, or
    /// `/apis/{group}/{version}/...` likewise. Objects are only reachable
    /// through their namespace (all served kinds are namespaced).
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
            _ => (None, rest),
        };
        let (plural, name, status) = match rest {
            [plural] => (*plural, None, false),
            [plural, name] if namespace.is_some() => (*plural, Some(name.to_string()), false),
            [plural, name, "status"] if namespace.is_some() => (*plural, Some(name.to_string()), true),
            _ => return None,
        };
        let kind = kind_by_path(group, version, plural)?;
        if name.as_deref() == Some("") || (status && !KINDS[kind].status_subresource) {
            return None;
        }
        Some(Route { kind, namespace, name, status })
    }

    fn key(&self, name: &str) -> Key {
        (self.kind, self.namespace.clone().unwrap_or_default(), name.to_string())
    }
}

/// A request body's type and identity must agree with its URL.
fn check_body(object: &Value, route: &Route, name: Option<&str>) -> Result<(), ApiError> {
    let kind = &KINDS[route.kind];
    if let Some(api_version) = object.get("apiVersion").and_then(Value::as_str) {
        if api_version != kind.api_version() {
            return Err(ApiError::bad_request(format!(
                "apiVersion {api_version:?} in the body does not match {:?}",
                kind.api_version()
            )));
        }
    }
    if let Some(body_kind) = object.get("kind").and_then(Value::as_str) {
        if body_kind != kind.kind {
            return Err(ApiError::bad_request(format!(
                "kind {body_kind:?} in the body does not match {:?}",
                kind.kind
            )));
        }
    }
    if let (Some(want), Some(got)) =
        (route.namespace.as_deref(), object.pointer("/metadata/namespace").and_then(Value::as_str))
    {
        if want != got {
            return Err(ApiError::bad_request(format!(
                "the namespace of the object ({got}) does not match the namespace on the request ({want})"
            )));
        }
    }
    if let (Some(want), Some(got)) = (name, object.pointer("/metadata/name").and_then(Value::as_str)) {
        if want != got {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({got}) does not match the name on the URL ({want})"
            )));
        }
    }
    Ok(())
}

/// Optimistic concurrency: a body that names a resourceVersion must name
/// the stored one.
fn check_resource_version(body: &Value, current: &Value, key: &Key) -> Result<(), ApiError> {
    match body.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        Some(rv)
            if !rv.is_empty() && current.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(rv) =>
        {
            Err(ApiError::conflict(key))
        }
        _ => Ok(()),
    }
}

/// `object` with the `status` of `source` (or none if it has none).
fn with_status_of(mut object: Value, source: &Value) -> Value {
    let top = ensure_object(&mut object);
    match source.get("status") {
        Some(status) => top.insert("status".into(), status.clone()),
        None => top.remove("status"),
    };
    object
}

/// The key an object given to `apply` is stored under.
fn object_key(object: &Value) -> Result<Key, ApiError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind_name = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let kind = kind_by_type(api_version, kind_name)
        .ok_or_else(|| ApiError::bad_request(format!("unknown kind {api_version}/{kind_name}")))?;
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("metadata.name is required".into()))?;
    let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
    Ok((kind, namespace.to_string(), name.to_string()))
}

fn key_of(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Key> {
    Some((kind_by_type(api_version, kind)?, namespace.unwrap_or("default").to_string(), name.to_string()))
}

/// Which objects a list or watch is about.
struct Filter {
    kind: usize,
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    fn new(route: &Route, query: &Query) -> Result<Filter, ApiError> {
        Ok(Filter {
            kind: route.kind,
            namespace: route.namespace.clone(),
            labels: parse_label_selector(query.get("labelSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("bad labelSelector: {e}")))?,
            fields: parse_field_selector(query.get("fieldSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("bad fieldSelector: {e}")))?,
        })
    }

    fn matches(&self, key: &Key, object: &Value) -> bool {
        key.0 == self.kind
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.labels.iter().all(|r| r.matches(object.pointer("/metadata/labels")))
            && self.fields.iter().all(|r| r.matches(object))
    }
}

#[derive(Debug, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            Self::Equals(k, v) => label(k) == Some(v),
            // As on a real server, "!=" and "notin" match objects without the label.
            Self::NotEquals(k, v) => label(k) != Some(v),
            Self::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Self::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Self::Exists(k) => label(k).is_some(),
            Self::NotExists(k) => label(k).is_none(),
        }
    }
}

/// `a=b,c==d,e!=f,g,!h,i in (j,k),l notin (m)`.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    let valid_key = |k: &str| {
        let k = k.trim();
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            Ok(k.to_string())
        } else {
            Err(format!("bad label key {k:?}"))
        }
    };
    let mut requirements = Vec::new();
    for term in split_outside_parens(selector) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let requirement = if let Some(key) = term.strip_prefix('!') {
            LabelRequirement::NotExists(valid_key(key)?)
        } else if let Some((head, values)) = term.split_once('(') {
            let values = values.strip_suffix(')').ok_or_else(|| format!("unclosed '(' in {term:?}"))?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [key, "in"] => LabelRequirement::In(valid_key(key)?, values),
                [key, "notin"] => LabelRequirement::NotIn(valid_key(key)?, values),
                _ => return Err(format!("bad set requirement {term:?}")),
            }
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelRequirement::NotEquals(valid_key(key)?, value.trim().to_string())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelRequirement::Equals(valid_key(key)?, value.trim().to_string())
        } else {
            LabelRequirement::Exists(valid_key(term)?)
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `path=value`, `path==value` or `path!=value`, `path` dotted into the object.
#[derive(Debug, PartialEq)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, object: &Value) -> bool {
        let pointer = format!("/{}", self.path.replace('.', "/"));
        // A missing field compares as "", as on a real server.
        let actual = match object.pointer(&pointer) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        (actual == self.value) == self.equal
    }
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut requirements = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("{term:?} is not field=value"));
        };
        if path.trim().is_empty() {
            return Err(format!("{term:?} has no field"));
        }
        requirements.push(FieldRequirement { path: path.trim().to_string(), value: value.trim().to_string(), equal });
    }
    Ok(requirements)
}

/// The producer behind one watch response body.
struct WatchStream {
    server: FakeApiServer,
    filter: Filter,
    metadata_only: bool,
    bookmarks: bool,
    /// Changes up to this resourceVersion have been looked at.
    cursor: u64,
    /// `watch_epoch` when opened; `drop_watches()` moves it on.
    epoch: u64,
    /// `timeoutSeconds`.
    deadline: Option<Instant>,
    wake: watch::Receiver<u64>,
    /// Event lines ready to send.
    pending: VecDeque<Bytes>,
    /// End once `pending` is sent.
    finished: bool,
}

impl WatchStream {
    /// The next event line, None when the watch ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(line);
            }
            if self.finished || self.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            // Marked seen before looking, so a change made after the look wakes us.
            self.wake.borrow_and_update();
            if !self.catch_up() {
                return None;
            }
            if !self.pending.is_empty() {
                continue;
            }
            let deadline = self.deadline;
            let until_deadline = async move {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.wake.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                    if self.bookmarks {
                        // Everything up to the cursor has been sent.
                        let bookmark = self.bookmark(self.cursor);
                        self.pending.push_back(event_line("BOOKMARK", &bookmark));
                    }
                }
                () = until_deadline => return None,
            }
        }
    }

    /// Queues the matching changes after the cursor; false if the watch
    /// must end (dropped, or the server is down).
    fn catch_up(&mut self) -> bool {
        let server = self.server.clone();
        let store = server.store();
        if store.unavailable || store.watch_epoch != self.epoch {
            return false;
        }
        let start = store.history.partition_point(|c| c.rv <= self.cursor);
        for change in &store.history[start..] {
            if self.filter.matches(&change.key, &change.object) {
                let line = self.event(change.event, &change.object);
                self.pending.push_back(line);
            }
        }
        self.cursor = self.cursor.max(store.rv);
        true
    }

    fn event(&self, event: &str, object: &Value) -> Bytes {
        event_line(event, &if self.metadata_only { partial(object) } else { object.clone() })
    }

    fn bookmark(&self, rv: u64) -> Value {
        let kind = &KINDS[self.filter.kind];
        let (api_version, kind) = if self.metadata_only {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata")
        } else {
            (kind.api_version(), kind.kind)
        };
        json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}})
    }
}

fn event_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A list item as real servers send it: without apiVersion and kind.
fn strip_type(object: &Value) -> Value {
    let mut object = object.clone();
    if let Value::Object(map) = &mut object {
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

/// The PartialObjectMetadata form of an object.
fn partial(object: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes,
/// anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = ensure_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// `value` as a map, replaced by `{}` if it is not an object.
fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("made an object just above"),
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    ensure_object(ensure_object(object).entry("metadata").or_insert(Value::Null))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (civil-from-days,
/// after Howard Hinnant), to avoid a date crate for one timestamp.
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// An API error, answered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// (name, group, plural) of the object concerned.
    details: Option<(String, &'static str, &'static str)>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, details: None }
    }

    fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn about(code: StatusCode, reason: &'static str, key: &Key, message: String) -> Self {
        let kind = &KINDS[key.0];
        ApiError { code, reason, message, details: Some((key.2.clone(), kind.group, kind.plural)) }
    }

    fn not_found(key: &Key) -> Self {
        let message = format!("{} \"{}\" not found", KINDS[key.0].resource(), key.2);
        Self::about(StatusCode::NOT_FOUND, "NotFound", key, message)
    }

    fn already_exists(key: &Key) -> Self {
        let message = format!("{} \"{}\" already exists", KINDS[key.0].resource(), key.2);
        Self::about(StatusCode::CONFLICT, "AlreadyExists", key, message)
    }

    fn conflict(key: &Key) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            KINDS[key.0].resource(),
            key.2
        );
        Self::about(StatusCode::CONFLICT, "Conflict", key, message)
    }

    fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some((name, group, kind)) = &self.details {
            status["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        status
    }

    fn into_response(self) -> Response<Body> {
        json_response(self.code, &self.to_json())
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    response(code, Full::new(Bytes::from(value.to_string())).boxed_unsync())
}

fn response(code: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::{Stream, StreamExt};
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
        PatchParams, PostParams, WatchEvent, WatchParams,
    };
    use kube::runtime::watcher::{self, Event};

    const WAIT: Duration = Duration::from_secs(5);

    fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
    }

    fn services() -> ApiResource {
        resource("", "v1", "Service", "services")
    }

    fn service(name: &str, namespace: &str, port: u16) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"ports": [{"port": port}]},
        })
    }

    fn api_code(error: &kube::Error) -> Option<(u16, String)> {
        match error {
            kube::Error::Api(status) => Some((status.code, status.reason.clone())),
            _ => None,
        }
    }

    fn rv_of(object: &DynamicObject) -> u64 {
        object.metadata.resource_version.as_deref().and_then(|rv| rv.parse().ok()).expect("resourceVersion")
    }

    /// "Init", "InitApply a", "Apply a@port", "Delete a", "InitDone".
    fn describe(event: &Event<DynamicObject>) -> String {
        let port =
            |o: &DynamicObject| o.data.pointer("/spec/ports/0/port").map(|p| format!("@{p}")).unwrap_or_default();
        let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
        match event {
            Event::Init => "Init".into(),
            Event::InitApply(o) => format!("InitApply {}{}", name(o), port(o)),
            Event::InitDone => "InitDone".into(),
            Event::Apply(o) => format!("Apply {}{}", name(o), port(o)),
            Event::Delete(o) => format!("Delete {}", name(o)),
        }
    }

    async fn next<S, T>(stream: &mut S) -> T
    where
        S: Stream<Item = T> + Unpin,
    {
        tokio::time::timeout(WAIT, stream.next()).await.expect("stream stalled").expect("stream ended")
    }

    /// The next `n` watcher events, described; panics on a watcher error.
    async fn take_events<S>(stream: &mut S, n: usize) -> Vec<String>
    where
        S: Stream<Item = Result<Event<DynamicObject>, watcher::Error>> + Unpin,
    {
        let mut out = Vec::new();
        for _ in 0..n {
            match next(stream).await {
                Ok(event) => out.push(describe(&event)),
                Err(e) => panic!("watcher error after {out:?}: {e}"),
            }
        }
        out
    }

    /// No watcher event for a moment (bookmarks are absorbed by the watcher).
    async fn assert_quiet<S, T: std::fmt::Debug>(stream: &mut S)
    where
        S: Stream<Item = T> + Unpin,
    {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await {
            panic!("unexpected item {item:?}");
        }
    }

    #[tokio::test]
    async fn list_get_create_replace_delete() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        server.apply(service("b", "other", 81));
        let api = Api::<DynamicObject>::namespaced_with(server.client("test"), "default", &services());

        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        let a = &list.items[0];
        assert_eq!(a.metadata.name.as_deref(), Some("a"));
        assert!(a.types.is_none(), "list items carry no apiVersion/kind");
        assert_eq!(a.metadata.generation, Some(1));
        assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
        assert_eq!(list.metadata.resource_version.as_deref(), Some("102"));

        let got = api.get("a").await.unwrap();
        assert_eq!(got.types.as_ref().map(|t| t.kind.as_str()), Some("Service"));
        assert_eq!(api_code(&api.get("nope").await.unwrap_err()), Some((404, "NotFound".into())));
        assert!(api.get_opt("nope").await.unwrap().is_none());

        // Create: 201, then AlreadyExists.
        let c = DynamicObject::new("c", &services()).within("default").data(json!({"spec": {"ports": [{"port": 82}]}}));
        let created = api.create(&PostParams::default(), &c).await.unwrap();
        assert_eq!(rv_of(&created), 103);
        assert_eq!(
            api_code(&api.create(&PostParams::default(), &c).await.unwrap_err()),
            Some((409, "AlreadyExists".into()))
        );

        // Replace: a stale resourceVersion conflicts, the current one wins;
        // generation moves with spec only.
        let mut stale = created.clone();
        stale.metadata.resource_version = Some("1".into());
        stale.data["spec"]["ports"][0]["port"] = json!(83);
        let err = api.replace("c", &PostParams::default(), &stale).await.unwrap_err();
        assert_eq!(api_code(&err), Some((409, "Conflict".into())));
        let mut fresh = created.clone();
        fresh.data["spec"]["ports"][0]["port"] = json!(83);
        let replaced = api.replace("c", &PostParams::default(), &fresh).await.unwrap();
        assert_eq!(replaced.metadata.generation, Some(2));
        assert_eq!(replaced.metadata.uid, created.metadata.uid);
        assert_eq!(replaced.metadata.creation_timestamp, created.metadata.creation_timestamp);
        fresh.metadata.resource_version = replaced.metadata.resource_version.clone();
        fresh.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        let relabelled = api.replace("c", &PostParams::default(), &fresh).await.unwrap();
        assert_eq!(relabelled.metadata.generation, Some(2));
        let mut missing = fresh.clone();
        missing.metadata.name = Some("gone".into());
        assert_eq!(
            api_code(&api.replace("gone", &PostParams::default(), &missing).await.unwrap_err()).map(|c| c.0),
            Some(404)
        );

        // Delete answers the object; then it is gone everywhere.
        let deleted = api.delete("c", &DeleteParams::default()).await.unwrap();
        assert!(deleted.is_left());
        assert!(server.get("v1", "Service", Some("default"), "c").is_none());
        assert_eq!(api_code(&api.delete("c", &DeleteParams::default()).await.unwrap_err()).map(|c| c.0), Some(404));

        // Cluster-wide list sees both namespaces.
        let all = Api::<DynamicObject>::all_with(server.client("test"), &services());
        let names: Vec<_> =
            all.list(&ListParams::default()).await.unwrap().items.into_iter().map(|o| o.metadata.name).collect();
        assert_eq!(names, [Some("a".to_string()), Some("b".to_string())]);

        let requests = server.requests();
        assert!(requests.iter().all(|(who, _, _)| who == "test"));
        assert!(requests.contains(&("test".into(), "GET".into(), "/api/v1/namespaces/default/services/a".into())));
    }

    #[tokio::test]
    async fn status_patches_touch_status_only() {
        let server = FakeApiServer::new();
        let vs = resource("networking.istio.io", "v1", "VirtualService", "virtualservices");
        server.apply(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "mesh"},
            "spec": {"hosts": ["r"]},
            "status": {"conditions": [], "observedGeneration": 0},
        }));
        let api = Api::<DynamicObject>::namespaced_with(server.client("agent"), "mesh", &vs);
        let patch = json!({"spec": {"hosts": ["evil"]}, "status": {"observedGeneration": 1, "mesh": {"ok": true}}});
        let patched = api.patch_status("r", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        assert_eq!(patched.data["spec"], json!({"hosts": ["r"]}), "spec is not patched through /status");
        assert_eq!(patched.data["status"], json!({"conditions": [], "observedGeneration": 1, "mesh": {"ok": true}}));
        assert_eq!(patched.metadata.generation, Some(1));

        // null deletes a key (RFC 7386); apply patches merge too.
        let patch2 = json!({"status": {"mesh": null}});
        api.patch_status("r", &PatchParams::apply("agent"), &Patch::Apply(&patch2)).await.unwrap();
        let stored = server.get("networking.istio.io/v1", "VirtualService", Some("mesh"), "r").unwrap();
        assert_eq!(stored["status"], json!({"conditions": [], "observedGeneration": 1}));

        // A resourceVersion in the patch is a precondition.
        let stale = json!({"metadata": {"resourceVersion": "1"}, "status": {"x": 1}});
        let err = api.patch_status("r", &PatchParams::default(), &Patch::Merge(&stale)).await.unwrap_err();
        assert_eq!(api_code(&err), Some((409, "Conflict".into())));
        let err = api.patch_status("nope", &PatchParams::default(), &Patch::Merge(&patch2)).await.unwrap_err();
        assert_eq!(api_code(&err).map(|c| c.0), Some(404));

        let patches = server.status_patches();
        assert_eq!(patches.len(), 4);
        assert_eq!(
            patches[0],
            (
                "agent".to_string(),
                "/apis/networking.istio.io/v1/namespaces/mesh/virtualservices/r/status".to_string(),
                patch
            )
        );

        // A patch of the main resource changes spec (and generation) but not status.
        let main = json!({"spec": {"hosts": ["r", "s"]}, "status": {"observedGeneration": 99}});
        let patched = api.patch("r", &PatchParams::default(), &Patch::Merge(&main)).await.unwrap();
        assert_eq!(patched.data["spec"]["hosts"], json!(["r", "s"]));
        assert_eq!(patched.data["status"]["observedGeneration"], json!(1));
        assert_eq!(patched.metadata.generation, Some(2));
        // JSON patches are not supported: 415, not a silent misapply.
        let json_patch = Patch::Json::<()>(Default::default());
        assert_eq!(
            api_code(&api.patch("r", &PatchParams::default(), &json_patch).await.unwrap_err()).map(|c| c.0),
            Some(415)
        );
    }

    #[tokio::test]
    async fn lease_get_create_replace() {
        let server = FakeApiServer::new();
        let leases = resource("coordination.k8s.io", "v1", "Lease", "leases");
        let api = Api::<DynamicObject>::namespaced_with(server.client("agent-1"), "mesh-system", &leases);
        assert!(api.get_opt("leader").await.unwrap().is_none());
        let lease = DynamicObject::new("leader", &leases)
            .within("mesh-system")
            .data(json!({"spec": {"holderIdentity": "agent-1", "leaseDurationSeconds": 15}}));
        let created = api.create(&PostParams::default(), &lease).await.unwrap();

        // Two contenders replace from the same read: the second conflicts.
        let mut mine = api.get("leader").await.unwrap();
        let mut theirs = mine.clone();
        mine.data["spec"]["renewTime"] = json!("2025-01-01T00:00:00.000000Z");
        theirs.data["spec"]["holderIdentity"] = json!("agent-2");
        let renewed = api.replace("leader", &PostParams::default(), &mine).await.unwrap();
        assert!(rv_of(&renewed) > rv_of(&created));
        let err = api.replace("leader", &PostParams::default(), &theirs).await.unwrap_err();
        assert_eq!(api_code(&err), Some((409, "Conflict".into())));
        let stored = server.get("coordination.k8s.io/v1", "Lease", Some("mesh-system"), "leader").unwrap();
        assert_eq!(stored["spec"]["holderIdentity"], "agent-1");
        assert_eq!(
            server.requests().iter().map(|(_, m, _)| m.as_str()).collect::<Vec<_>>(),
            ["GET", "POST", "GET", "PUT", "PUT"]
        );
    }

    #[tokio::test]
    async fn selectors() {
        let server = FakeApiServer::new();
        let pods = resource("", "v1", "Pod", "pods");
        for (name, ns, node, tier) in [("p1", "a", "n1", "web"), ("p2", "a", "n2", "db"), ("p3", "b", "n1", "web")] {
            server.apply(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": {"tier": tier, "app": "x"}},
                "spec": {"nodeName": node},
            }));
        }
        let all = Api::<DynamicObject>::all_with(server.client("t"), &pods);
        let names = |lp: ListParams| {
            let all = all.clone();
            async move {
                let list = all.list(&lp).await.unwrap();
                list.items.into_iter().filter_map(|o| o.metadata.name).collect::<Vec<_>>()
            }
        };
        assert_eq!(names(ListParams::default().fields("spec.nodeName=n1")).await, ["p1", "p3"]);
        assert_eq!(names(ListParams::default().fields("metadata.namespace=a,spec.nodeName!=n1")).await, ["p2"]);
        assert_eq!(names(ListParams::default().fields("metadata.name=p3")).await, ["p3"]);
        assert_eq!(names(ListParams::default().labels("tier=web,app=x")).await, ["p1", "p3"]);
        assert_eq!(names(ListParams::default().labels("tier in (db, cache)")).await, ["p2"]);
        assert_eq!(names(ListParams::default().labels("tier!=web")).await, ["p2"]);
        assert_eq!(names(ListParams::default().labels("!app")).await, Vec::<String>::new());
        let err = all.list(&ListParams::default().labels("tier in (web")).await.unwrap_err();
        assert_eq!(api_code(&err).map(|c| c.0), Some(400));

        assert_eq!(
            parse_label_selector("a=b,c==d,e!=f,g,!h,i in (j,k),l notin (m)").unwrap(),
            [
                LabelRequirement::Equals("a".into(), "b".into()),
                LabelRequirement::Equals("c".into(), "d".into()),
                LabelRequirement::NotEquals("e".into(), "f".into()),
                LabelRequirement::Exists("g".into()),
                LabelRequirement::NotExists("h".into()),
                LabelRequirement::In("i".into(), vec!["j".into(), "k".into()]),
                LabelRequirement::NotIn("l".into(), vec!["m".into()]),
            ]
        );
    }

    #[tokio::test]
    async fn watcher_follows_resumes_and_relists() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        server.apply(service("b", "default", 80));
        server.apply(service("x", "elsewhere", 80));
        let api = Api::<DynamicObject>::namespaced_with(server.client("watcher"), "default", &services());
        let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();

        assert_eq!(take_events(&mut stream, 4).await, ["Init", "InitApply a@80", "InitApply b@80", "InitDone"]);
        server.apply(service("a", "default", 81));
        server.apply(service("c", "default", 80));
        server.apply(service("x", "elsewhere", 81));
        assert!(server.delete("v1", "Service", Some("default"), "b"));
        assert_eq!(take_events(&mut stream, 3).await, ["Apply a@81", "Apply c@80", "Delete b"]);
        assert_quiet(&mut stream).await;

        // A dropped stream resumes from the last resourceVersion: what changed
        // meanwhile arrives once, nothing is repeated, no relist.
        server.drop_watches();
        server.apply(service("a", "default", 82));
        server.delete("v1", "Service", Some("default"), "c");
        assert_eq!(take_events(&mut stream, 2).await, ["Apply a@82", "Delete c"]);
        assert_quiet(&mut stream).await;

        // Disconnected while history is compacted away: 410, then a relist
        // that no longer has the deleted object.
        server.drop_watches();
        server.delete("v1", "Service", Some("default"), "a");
        server.apply(service("d", "default", 80));
        server.compact();
        match next(&mut stream).await {
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
            }
            other => panic!("expected a 410 watch error, got {:?}", other.map(|e| describe(&e))),
        }
        assert_eq!(take_events(&mut stream, 3).await, ["Init", "InitApply d@80", "InitDone"]);
        server.apply(service("d", "default", 81));
        assert_eq!(take_events(&mut stream, 1).await, ["Apply d@81"]);

        // The watcher lists once per (re)list and watches with bookmarks.
        let requests = server.requests();
        let lists = requests.iter().filter(|(_, _, p)| !p.contains("watch=")).count();
        assert_eq!(lists, 2, "{requests:#?}");
        let watch = requests.iter().find(|(_, _, p)| p.contains("watch=true")).unwrap();
        assert!(watch.2.contains("allowWatchBookmarks=true"), "{watch:?}");
    }

    #[tokio::test]
    async fn raw_watch_bookmarks_timeout_and_rv_zero() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
        let current = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();

        // timeoutSeconds is honoured; idle watches get bookmarks at the current RV.
        let started = std::time::Instant::now();
        let mut stream = api.watch(&WatchParams::default().timeout(2), &current).await.unwrap().boxed();
        match next(&mut stream).await.unwrap() {
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, current);
                assert_eq!(b.types.kind, "Service");
            }
            other => panic!("expected a bookmark, got {other:?}"),
        }
        while tokio::time::timeout(WAIT, stream.next()).await.expect("watch outlived its timeout").is_some() {}
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(4), "{took:?}");

        // resourceVersion=0 starts with the current state as ADDED events.
        let mut stream = api.watch(&WatchParams::default().disable_bookmarks(), "0").await.unwrap().boxed();
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(o) => {
                assert_eq!(o.metadata.name.as_deref(), Some("a"));
                assert_eq!(o.types.map(|t| t.kind), Some("Service".into()), "watch objects carry their kind");
            }
            other => panic!("expected ADDED, got {other:?}"),
        }
        // An old RV after compaction: one ERROR 410 event, then the end.
        server.apply(service("a", "default", 81));
        server.compact();
        let mut stream = api.watch(&WatchParams::default(), &current).await.unwrap().boxed();
        match next(&mut stream).await {
            Ok(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
            other => panic!("expected an ERROR event, got {other:?}"),
        }
        assert!(next_none(&mut stream).await);
        // An Exact list of the compacted revision is 410 too; NotOlderThan is served.
        let lp = ListParams::default().at(&current).matching(kube::api::VersionMatch::Exact);
        assert_eq!(api_code(&api.list(&lp).await.unwrap_err()).map(|c| c.0), Some(410));
        let lp = ListParams::default().at(&current).matching(kube::api::VersionMatch::NotOlderThan);
        assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    }

    async fn next_none<S: Stream + Unpin>(stream: &mut S) -> bool {
        tokio::time::timeout(WAIT, stream.next()).await.expect("stream stalled").is_none()
    }

    #[tokio::test]
    async fn streaming_list_watcher() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
        let mut stream = watcher::watcher(api, watcher::Config::default().streaming_lists()).boxed();
        assert_eq!(take_events(&mut stream, 3).await, ["Init", "InitApply a@80", "InitDone"]);
        server.apply(service("b", "default", 80));
        assert_eq!(take_events(&mut stream, 1).await, ["Apply b@80"]);
        assert!(server.requests().iter().all(|(_, _, p)| p.contains("watch=true")));
    }

    #[tokio::test]
    async fn metadata_watcher_gets_partial_objects() {
        let server = FakeApiServer::new();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "namespace": "default", "labels": {"k": "v"}},
            "data": {"key": "c2VjcmV0"},
        });
        server.apply(secret.clone());
        let secrets = resource("", "v1", "Secret", "secrets");
        let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &secrets);
        #[allow(deprecated)] // kube 5 prefers Api<PartialObjectMeta<K>>; same requests.
        let mut stream = watcher::metadata_watcher(api, watcher::Config::default()).boxed();
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(next(&mut stream).await.unwrap());
        }
        match &events[1] {
            Event::InitApply(meta) => {
                assert_eq!(meta.metadata.name.as_deref(), Some("s"));
                assert_eq!(meta.types.as_ref().map(|t| t.kind.as_str()), Some("PartialObjectMetadata"));
            }
            other => panic!("expected InitApply, got {other:?}"),
        }
        server.apply(secret);
        match next(&mut stream).await.unwrap() {
            Event::Apply(meta) => assert_eq!(meta.metadata.labels.unwrap()["k"], "v"),
            other => panic!("expected Apply, got {other:?}"),
        }

        // The raw answers hold metadata only (no secret data).
        let meta_api =
            Api::<PartialObjectMeta<DynamicObject>>::namespaced_with(server.client("t"), "default", &secrets);
        let list = meta_api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.types.kind, "PartialObjectMetadataList");
        let got = meta_api.get("s").await.unwrap();
        assert_eq!(got.metadata.name.as_deref(), Some("s"));
        let request = Request::get("/api/v1/namespaces/default/secrets")
            .header(header::ACCEPT, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
            .body(Vec::new())
            .unwrap();
        let raw: Value = serde_json::from_str(&server.client("t").request_text(request).await.unwrap()).unwrap();
        assert_eq!(raw["kind"], "PartialObjectMetadataList");
        assert_eq!(raw["items"][0]["kind"], "PartialObjectMetadata");
        assert_eq!(raw["items"][0]["metadata"]["labels"], json!({"k": "v"}));
        assert!(raw["items"][0].get("data").is_none(), "{raw}");
    }

    #[tokio::test]
    async fn unavailable_gives_503_and_ends_watches() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        let api = Api::<DynamicObject>::namespaced_with(server.client("t"), "default", &services());
        let mut stream = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
        assert!(matches!(next(&mut stream).await, Ok(WatchEvent::Added(_))));
        server.set_unavailable(true);
        assert!(next_none(&mut stream).await);
        let err = api.list(&ListParams::default()).await.unwrap_err();
        assert_eq!(api_code(&err), Some((503, "ServiceUnavailable".into())));
        server.set_unavailable(false);
        assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 1);
    }

    #[tokio::test]
    async fn serves_http_through_a_kubeconfig() {
        let server = FakeApiServer::new();
        server.apply(service("a", "default", 80));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = server.serve(listener);

        let dir = std::env::temp_dir().join(format!("fake-apiserver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = FakeApiServer::write_kubeconfig(&dir, addr).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.unwrap();
        assert_eq!(config.default_namespace, "default");
        let client = kube::Client::try_from(config).unwrap();

        let api = Api::<DynamicObject>::default_namespaced_with(client, &services());
        let list = api.list(&ListParams::default()).await.unwrap();
        assert_eq!(list.items.len(), 1);
        // A watch streams over chunked HTTP/1.1 and ends on drop_watches().
        let rv = list.metadata.resource_version.unwrap();
        let mut stream = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
        server.apply(service("b", "default", 80));
        match next(&mut stream).await.unwrap() {
            WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
            other => panic!("expected ADDED, got {other:?}"),
        }
        server.drop_watches();
        assert!(next_none(&mut stream).await);
        assert_eq!(api_code(&api.get("nope").await.unwrap_err()).map(|c| c.0), Some(404));

        let requests = server.requests();
        assert!(requests.iter().all(|(who, _, _)| who == "http"));
        assert_eq!(requests[0].2, "/api/v1/namespaces/default/services?");
        task.abort();
    }

    #[tokio::test]
    async fn bad_requests_get_status_answers() {
        let server = FakeApiServer::new();
        let client = server.client("t");
        let send = |method: &str, uri: &str, body: &str| {
            let request = Request::builder().method(method).uri(uri).body(body.as_bytes().to_vec()).unwrap();
            let client = client.clone();
            async move {
                match client.request_text(request).await {
                    Ok(text) => (200, text),
                    Err(e) => (api_code(&e).map_or(0, |c| c.0), String::new()),
                }
            }
        };
        assert_eq!(send("GET", "/api/v1/nodes", "").await.0, 404);
        assert_eq!(send("GET", "/apis/networking.istio.io/v9/gateways", "").await.0, 404);
        assert_eq!(send("GET", "/api/v1/services/a", "").await.0, 404);
        assert_eq!(send("POST", "/api/v1/namespaces/default/services", "{not json").await.0, 400);
        assert_eq!(send("POST", "/api/v1/namespaces/default/services", r#"{"kind":"Pod"}"#).await.0, 400);
        assert_eq!(send("POST", "/api/v1/namespaces/default/services", r#"{"metadata":{}}"#).await.0, 422);
        assert_eq!(send("GET", "/api/v1/services?watch=true&timeoutSeconds=x", "").await.0, 400);
        assert_eq!(send("GET", "/api/v1/services?resourceVersion=abc", "").await.0, 400);
        let (code, text) =
            send("POST", "/api/v1/namespaces/default/services", r#"{"metadata":{"generateName":"svc-"}}"#).await;
        assert_eq!(code, 200, "kube maps 201 to Ok");
        let created: Value = serde_json::from_str(&text).unwrap();
        assert!(created["metadata"]["name"].as_str().unwrap().starts_with("svc-"));
        assert_eq!(created["kind"], "Service");
    }

    #[tokio::test]
    async fn version_and_status_routes() {
        let server = FakeApiServer::new();
        let client = server.client("t");
        assert_eq!(client.apiserver_version().await.unwrap().minor, "33");
        // Leases have no /status subresource.
        let request =
            Request::get("/apis/coordination.k8s.io/v1/namespaces/a/leases/l/status").body(Vec::new()).unwrap();
        assert_eq!(api_code(&client.request_text(request).await.unwrap_err()).map(|c| c.0), Some(404));
    }

    #[tokio::test]
    async fn http_watch_is_released_when_the_client_goes_away() {
        let server = FakeApiServer::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = server.serve(listener);
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let api = Api::<DynamicObject>::default_namespaced_with(kube::Client::try_from(config).unwrap(), &services());
        let stream = api.watch(&WatchParams::default(), "0").await.unwrap();
        assert_eq!(server.inner.wake.receiver_count(), 1);
        drop(stream);
        // Noticed at the latest when the next bookmark cannot be written.
        let deadline = Instant::now() + WAIT;
        while server.inner.wake.receiver_count() > 0 {
            assert!(Instant::now() < deadline, "the watch outlived its client");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"m": 1}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"m": 1}}));
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }
}
