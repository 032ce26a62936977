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
//! - Lists are paged as the API server pages them: `limit` objects, and a
//!   `continue` token while more remain; the next pages are of the first
//!   page's revision.
//!
//! Simplifications: no admission or validation beyond names, strategic-merge and apply patches
//! are treated as JSON merge patches (RFC 7386), `dryRun` is ignored, and a
//! watch filters each event by the object it carries (an object that stops
//! matching a selector sends no DELETED).
//!
//! The files, each using only those listed before it: `kinds` (the served
//! kinds, object keys), `json` (merge patch, metadata), `response` (API
//! errors, JSON answers), `store` (objects and history), `request` (`Call`,
//! `Query`, `Route`, body checks), `selectors` (label and field selectors),
//! `watch` (watch streams) and `handlers` (the verbs).

mod handlers;
mod json;
mod kinds;
mod request;
mod response;
mod selectors;
mod store;
#[cfg(test)]
mod tests;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use hyper::http::Request;
use serde_json::Value;

use kinds::key_of;
use request::object_key;
use store::{Shared, Store};

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
        FakeApiServer { inner: Arc::new(Shared::new()) }
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
            async move { Ok::<_, Infallible>(server.inner.handle(&identity, request).await) }
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
                        async move { Ok::<_, Infallible>(server.inner.handle("http", request).await) }
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
        self.inner.store()
    }

    fn wake(&self) {
        self.inner.wake();
    }
}
