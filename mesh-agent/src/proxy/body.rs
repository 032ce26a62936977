//! Bodies in both directions: the boxed type they all travel as, the
//! client's request body as the server hands it over, and response bodies
//! that hold the request's accounting until their last byte, enforce the
//! route timeout on the whole exchange (as Envoy does) and count the bytes
//! they carry.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
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
