//! Watch streams: a `watch=true` request answered by a body of event lines
//! that follows the store, with bookmarks, timeouts and 410 Gone.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::http::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::json::partial;
use super::kinds::KINDS;
use super::request::{Call, Route};
use super::response::{response, ApiError, Body};
use super::selectors::Filter;
use super::store::Shared;

/// Idle time after which an open watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Answers a `watch=true` request: 200 and a stream of events.
pub(super) fn watch(shared: &Arc<Shared>, call: &Call, route: &Route) -> Result<Response<Body>, ApiError> {
    let filter = Filter::new(route, &call.query)?;
    let from = call.query.resource_version()?.filter(|&rv| rv != 0);
    let timeout = match call.query.get("timeoutSeconds") {
        None | Some("") | Some("0") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("bad timeoutSeconds {s:?}")))?),
    };
    let initial_events = call.query.get("sendInitialEvents") == Some("true");
    let metadata_only = call.metadata_only();
    let store = shared.store();
    let mut stream = WatchStream {
        shared: Arc::clone(shared),
        filter,
        metadata_only,
        bookmarks: call.query.get("allowWatchBookmarks") == Some("true"),
        cursor: store.rv,
        epoch: store.watch_epoch,
        deadline: timeout.map(|s| Instant::now() + Duration::from_secs(s)),
        // Subscribed under the lock: no change after this point is missed.
        wake: shared.wake.subscribe(),
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

/// The producer behind one watch response body.
struct WatchStream {
    shared: Arc<Shared>,
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
        let shared = Arc::clone(&self.shared);
        let store = shared.store();
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
