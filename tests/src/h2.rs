//! An HTTP/2 (prior knowledge) and gRPC-shaped backend for the L7 tests.
//!
//! Every response names the pod in `x-backend`. A request whose
//! content-type is `application/grpc` gets a gRPC answer: one
//! length-prefixed message (the pod name) and then the trailers
//! `grpc-status: 0`, which the proxy must carry through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Result;
use bytes::Bytes;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::background::Background;

/// A running HTTP/2 server; stops when dropped.
pub struct H2Server {
    requests: Arc<AtomicU64>,
    _serving: Background,
}

impl H2Server {
    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A body of at most one data frame and then, optionally, trailers.
pub struct OneShotBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl OneShotBody {
    pub fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self { data: Some(data), trailers }
    }
}

impl hyper::body::Body for OneShotBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A gRPC message frame: no compression flag, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// Serves HTTP/2 with prior knowledge on `addr`, inside network namespace
/// `netns`.
pub(crate) fn start(netns: &Path, addr: SocketAddr, pod: &str) -> Result<H2Server> {
    let requests = Arc::new(AtomicU64::new(0));
    let (counter, pod) = (requests.clone(), pod.to_owned());
    let serving = crate::background::spawn(netns, addr, move |stream| {
        let (counter, pod) = (counter.clone(), pod.clone());
        async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                counter.fetch_add(1, Ordering::SeqCst);
                let pod = pod.clone();
                async move { Ok::<_, Infallible>(answer(&request, &pod)) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })?;
    Ok(H2Server { requests, _serving: serving })
}

fn answer(request: &Request<Incoming>, pod: &str) -> Response<OneShotBody> {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let (body, trailers) = if grpc {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        (grpc_frame(pod.as_bytes()), Some(trailers))
    } else {
        (Bytes::copy_from_slice(pod.as_bytes()), None)
    };
    let mut response = Response::new(OneShotBody::new(body, trailers));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(pod) {
        headers.insert("x-backend", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("{:?}", request.version())) {
        headers.insert("x-seen-version", value);
    }
    if let Some(value) = request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
        headers.insert("x-seen-authority", value);
    }
    if grpc {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    }
    response
}
