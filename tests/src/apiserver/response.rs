//! API errors, answered as `Status` objects, and the JSON responses.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::kinds::{Key, KINDS};

/// Body of every response: a whole JSON document, or a watch stream.
pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// An API error, answered as a `Status` object.
#[derive(Debug)]
pub(super) struct ApiError {
    code: StatusCode,
    reason: &'static str,
    pub(super) message: String,
    /// (name, group, plural) of the object concerned.
    details: Option<(String, &'static str, &'static str)>,
}

impl ApiError {
    pub(super) fn new(code: StatusCode, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, details: None }
    }

    pub(super) fn bad_request(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn about(code: StatusCode, reason: &'static str, key: &Key, message: String) -> Self {
        let kind = &KINDS[key.0];
        ApiError { code, reason, message, details: Some((key.2.clone(), kind.group, kind.plural)) }
    }

    pub(super) fn not_found(key: &Key) -> Self {
        let message = format!("{} \"{}\" not found", KINDS[key.0].resource(), key.2);
        Self::about(StatusCode::NOT_FOUND, "NotFound", key, message)
    }

    pub(super) fn already_exists(key: &Key) -> Self {
        let message = format!("{} \"{}\" already exists", KINDS[key.0].resource(), key.2);
        Self::about(StatusCode::CONFLICT, "AlreadyExists", key, message)
    }

    pub(super) fn conflict(key: &Key) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            KINDS[key.0].resource(),
            key.2
        );
        Self::about(StatusCode::CONFLICT, "Conflict", key, message)
    }

    pub(super) fn to_json(&self) -> Value {
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

    pub(super) fn into_response(self) -> Response<Body> {
        json_response(self.code, &self.to_json())
    }
}

/// The answer to `GET /version`.
pub(super) fn version_info() -> Value {
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

pub(super) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    response(code, Full::new(Bytes::from(value.to_string())).boxed_unsync())
}

pub(super) fn response(code: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
