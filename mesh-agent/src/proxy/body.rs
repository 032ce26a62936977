//! Bodies in both directions: the boxed type they all travel as, a request
//! body read ahead for replay, and response bodies that hold the request's
//! accounting until their last byte, enforce the route timeout on the
//! whole exchange (as Envoy does) and count the bytes they carry.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies in both directions: streamed from a peer or built here.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A body of bytes known in full.
pub fn full(bytes: Bytes) -> ProxyBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A request body as the client side hands it over.
pub enum ClientBody {
    /// Read whole with the head (the plain HTTP/1.1 path).
    Read(Bytes),
    /// Still on hyper's connection.
    Hyper(Incoming),
}

/// What the proxy could read of a request body before forwarding it.
pub enum RequestBody {
    /// The whole body: it can be sent again (retries, mirrors).
    Complete(Bytes),
    /// A prefix read while looking for the end, and the rest still to
    /// come: sent once, never retried.
    Partial(VecDeque<Frame<Bytes>>, Incoming),
}

impl RequestBody {
    /// Reads up to `limit` bytes; a body that ends within them is complete.
    pub async fn read_ahead(body: ClientBody, limit: usize) -> Result<Self, BoxError> {
        let mut body = match body {
            ClientBody::Read(bytes) => return Ok(RequestBody::Complete(bytes)),
            ClientBody::Hyper(body) => body,
        };
        let mut frames = VecDeque::new();
        let mut size = 0;
        loop {
            if body.is_end_stream() {
                break;
            }
            if size > limit {
                return Ok(RequestBody::Partial(frames, body));
            }
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(frame) => {
                    let frame = frame?;
                    if let Some(data) = frame.data_ref() {
                        size += data.len();
                    }
                    frames.push_back(frame);
                }
            }
        }
        // Trailers on a request (rare) cannot be replayed as plain bytes.
        if frames.iter().any(|f| f.is_trailers()) {
            return Ok(RequestBody::Partial(frames, body));
        }
        let mut all = Vec::with_capacity(size);
        for frame in frames {
            if let Ok(data) = frame.into_data() {
                all.extend_from_slice(&data);
            }
        }
        Ok(RequestBody::Complete(Bytes::from(all)))
    }

    /// The body as it is, none of it read yet.
    pub fn unread(body: ClientBody) -> Self {
        match body {
            ClientBody::Read(bytes) => RequestBody::Complete(bytes),
            ClientBody::Hyper(body) => RequestBody::Partial(VecDeque::new(), body),
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Complete(_))
    }
}

/// The read-ahead frames, then the rest of the client's body.
pub struct PrefixedBody {
    prefix: VecDeque<Frame<Bytes>>,
    rest: Incoming,
}

impl PrefixedBody {
    pub fn new(prefix: VecDeque<Frame<Bytes>>, rest: Incoming) -> Self {
        Self { prefix, rest }
    }
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.prefix.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut this.rest).poll_frame(cx).map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

/// A response body that keeps `guards` (in-flight and admission counts)
/// alive until it ends, and fails with a timeout at `deadline`.
pub struct GuardedBody<B, G> {
    inner: B,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _guards: G,
}

impl<B, G> GuardedBody<B, G>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static,
    G: Send + Sync + Unpin + 'static,
{
    /// The guarded body, boxed once (the inner body is not boxed first).
    pub fn wrap(inner: B, deadline: Option<Instant>, guards: G) -> ProxyBody {
        use http_body_util::BodyExt;
        GuardedBody {
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into()))),
            _guards: guards,
        }
        .boxed()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream request timeout while the response was streaming")]
pub struct StreamTimeout;

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin, G: Unpin> Body for GuardedBody<B, G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(Box::new(StreamTimeout))));
            }
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that adds the bytes of its data frames to a counter as
/// they pass (a streamed body declares no length).
pub struct CountingBody {
    inner: ProxyBody,
    counter: prometheus_client::metrics::counter::Counter,
}

impl CountingBody {
    pub fn wrap(inner: ProxyBody, counter: prometheus_client::metrics::counter::Counter) -> ProxyBody {
        use http_body_util::BodyExt;
        CountingBody { inner, counter }.boxed()
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.counter.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
