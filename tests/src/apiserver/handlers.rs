//! The handlers: one request in, one response out, for every verb the
//! server takes (the watch itself is in `watch`).

use std::fmt::Display;
use std::ops::Bound;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::http::{header, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::json::{ensure_object, merge_patch, partial, strip_type, with_status_of};
use super::kinds::{Key, KINDS};
use super::request::{check_body, check_resource_version, Call, Query, Route};
use super::response::{json_response, version_info, ApiError, Body};
use super::selectors::Filter;
use super::store::Shared;
use super::watch::watch;

impl Shared {
    /// Answers one request (from either transport).
    pub(super) async fn handle<B>(self: &Arc<Self>, identity: &str, request: Request<B>) -> Response<Body>
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

    fn dispatch(self: &Arc<Self>, call: &Call) -> Result<Response<Body>, ApiError> {
        // `Client::apiserver_version()`, a common "is it up" probe.
        if call.method == Method::GET && call.path == "/version" {
            return Ok(json_response(StatusCode::OK, &version_info()));
        }
        let route = Route::parse(&call.path).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", call.path))
        })?;
        match (&call.method, route.name.as_deref()) {
            (&Method::GET, None) if call.query.is_watch() => watch(self, call, &route),
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
        let page = Page::of(&call.query)?;
        let store = self.store();
        // Exact asks for the state at that revision, and a continued list
        // for its first page's; anything else ("", "0", NotOlderThan) is
        // served from the current state.
        let wanted = match (&page.after, requested) {
            (Some((rv, _)), _) => Some(*rv),
            (None, Some(wanted)) if exact => Some(wanted),
            (None, _) => None,
        };
        let (rv, at_rv);
        let objects = match wanted {
            Some(wanted) if wanted != store.rv => {
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
        let from = match &page.after {
            Some((_, (namespace, name))) => Bound::Excluded((route.kind, namespace.clone(), name.clone())),
            None => Bound::Unbounded,
        };
        let mut matching = objects.range((from, Bound::Unbounded)).filter(|(key, object)| filter.matches(key, object));
        let mut items = Vec::new();
        let mut last = None;
        for (key, object) in matching.by_ref().take(page.limit) {
            items.push(if metadata_only { partial(object) } else { strip_type(object) });
            last = Some(key);
        }
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let (Some((_, namespace, name)), Some(_)) = (last, matching.next()) {
            metadata["continue"] = format!("{rv}/{namespace}/{name}").into();
        }
        let list = if metadata_only {
            json!({
                "apiVersion": "meta.k8s.io/v1",
                "kind": "PartialObjectMetadataList",
                "metadata": metadata,
                "items": items,
            })
        } else {
            json!({
                "apiVersion": kind.api_version(),
                "kind": format!("{}List", kind.kind),
                "metadata": metadata,
                "items": items,
            })
        };
        Ok(json_response(StatusCode::OK, &list))
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
            let new =
                if route.status { with_status_of(current.clone(), &body) } else { keep_status(route, body, current) };
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
                        keep_status(route, new, current)
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

/// A write to the main resource of a kind with a `/status` subresource
/// keeps the stored status, as on a real server.
fn keep_status(route: &Route, new: Value, current: &Value) -> Value {
    if KINDS[route.kind].status_subresource {
        with_status_of(new, current)
    } else {
        new
    }
}

/// A list's page: at most `limit` objects (`limit`; all without one),
/// after the key a `continue` token names, at the revision of the list's
/// first page, as the API server pages its lists (kube-rs's `watcher()`
/// asks for 500 at a time).
struct Page {
    limit: usize,
    /// The first page's revision, and the namespace and name of the last
    /// object sent.
    after: Option<(u64, (String, String))>,
}

impl Page {
    fn of(query: &Query) -> Result<Page, ApiError> {
        let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", what.to_owned());
        let limit = match query.get("limit").filter(|l| !l.is_empty()) {
            Some(limit) => limit.parse::<usize>().map_err(|_| bad("limit must be a number"))?,
            None => 0,
        };
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '/');
                let (rv, namespace, name) = (parts.next(), parts.next(), parts.next());
                match (rv.and_then(|rv| rv.parse::<u64>().ok()), namespace, name) {
                    (Some(rv), Some(namespace), Some(name)) => Some((rv, (namespace.to_owned(), name.to_owned()))),
                    _ => return Err(bad("invalid continue token")),
                }
            }
            None => None,
        };
        Ok(Page { limit: if limit == 0 { usize::MAX } else { limit }, after })
    }
}
