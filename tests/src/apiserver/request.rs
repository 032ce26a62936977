//! One request as the handlers see it: the call (`Call`), its query
//! (`Query`), what its path names (`Route`), and the checks of its body.

use bytes::Bytes;
use hyper::http::{header, HeaderMap, Method};
use serde_json::Value;

use super::kinds::{kind_by_path, kind_by_type, Key, KINDS};
use super::response::ApiError;

/// One request, body read.
pub(super) struct Call<'a> {
    pub(super) identity: &'a str,
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) query: Query,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Call<'_> {
    /// `Accept: application/json;as=PartialObjectMetadata[List];...`
    pub(super) fn metadata_only(&self) -> bool {
        self.headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("as=PartialObjectMetadata"))
    }

    /// The body as a JSON object.
    pub(super) fn json_body(&self) -> Result<Value, ApiError> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(_) => Err(ApiError::bad_request("the body is not a JSON object".into())),
            Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
        }
    }
}

/// Decoded query parameters (empty pairs, as in kube's `?&watch=true`, dropped).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Query {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(super) fn is_watch(&self) -> bool {
        matches!(self.get("watch"), Some("true" | "1"))
    }

    /// `resourceVersion`, None when absent or empty.
    pub(super) fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.get("resourceVersion") {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| ApiError::bad_request(format!("bad resourceVersion {s:?}"))),
        }
    }
}

/// What a URL path names.
pub(super) struct Route {
    pub(super) kind: usize,
    /// None for the cluster-wide collection (`/api/v1/pods`).
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    /// The `/status` subresource.
    pub(super) status: bool,
}

impl Route {
    /// `/api/v1[/namespaces/{ns}]/{plural}[/{name}[/status]]`, or
    /// `/apis/{group}/{version}/...` likewise. Objects are only reachable
    /// through their namespace (all served kinds are namespaced).
    pub(super) fn parse(path: &str) -> Option<Route> {
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

    pub(super) fn key(&self, name: &str) -> Key {
        (self.kind, self.namespace.clone().unwrap_or_default(), name.to_string())
    }
}

/// A request body's type and identity must agree with its URL.
pub(super) fn check_body(object: &Value, route: &Route, name: Option<&str>) -> Result<(), ApiError> {
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
pub(super) fn check_resource_version(body: &Value, current: &Value, key: &Key) -> Result<(), ApiError> {
    match body.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        Some(rv)
            if !rv.is_empty() && current.pointer("/metadata/resourceVersion").and_then(Value::as_str) != Some(rv) =>
        {
            Err(ApiError::conflict(key))
        }
        _ => Ok(()),
    }
}

/// The key an object given to `apply` is stored under.
pub(super) fn object_key(object: &Value) -> Result<Key, ApiError> {
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
