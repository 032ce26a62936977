//! What forwarding a request produced, for the client and the log: the
//! response, Envoy's flags, the upstream tried last, the cluster and the
//! number of tries; and the answers the proxy makes itself.

use super::flags::ResponseFlag;
use crate::proxy::body::{full, ProxyBody};
use crate::proxy::header_names::{GRPC_MESSAGE, GRPC_STATUS};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Outcome {
    pub response: Response<ProxyBody>,
    pub flags: Vec<ResponseFlag>,
    pub upstream: Option<SocketAddr>,
    /// `outbound|port|subset|host`, or a bare host for local answers.
    pub cluster: Arc<str>,
    pub attempts: u32,
}

impl Outcome {
    /// A local answer with `text`, flagged.
    pub fn local(status: StatusCode, text: &str, flag: Option<ResponseFlag>, cluster: Arc<str>) -> Self {
        Outcome::answer(local_reply(status, text), flag.into_iter().collect(), cluster)
    }

    /// An answer made without an upstream.
    pub fn answer(response: Response<ProxyBody>, flags: Vec<ResponseFlag>, cluster: Arc<str>) -> Self {
        Outcome { response, flags, upstream: None, cluster, attempts: 0 }
    }
}

/// A plain-text answer from the proxy itself.
pub fn local_reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// A gRPC error as trailers-only: HTTP 200 with grpc-status in the headers.
pub fn grpc_status_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert(GRPC_MESSAGE.clone(), value);
    }
    response
}
