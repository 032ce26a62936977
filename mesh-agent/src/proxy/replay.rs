//! A request body that goes upstream as the client sends it, while a copy
//! of its first bytes is kept so that another try (a retry) or a mirror can
//! send it again: Envoy's retry buffer. Nothing waits for the copy: the
//! head and the first bytes leave at once, so a gRPC stream that sends one
//! message and waits for the reply gets it. A body longer than the limit
//! loses its copy, and the request then has the one try it is on.
//!
//! Only the newest try reads from the client; a try that was given up
//! (its upstream may still be polling its body) gets an error instead of
//! bytes the newer try needs.

use crate::proxy::body::{BoxError, ClientBody, ProxyBody};
use crate::sync::lock;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// A request body as the tries of the request send it.
pub enum RequestBody {
    /// Known in full before anything is sent.
    Complete(Bytes),
    /// Still arriving from the client: it streams, with a copy of up to a
    /// limit kept for further tries.
    Streaming(Replay),
}

impl RequestBody {
    /// The client's body, keeping up to `replay_limit` bytes for further
    /// tries and mirrors (0 when there will be none).
    pub fn of(body: ClientBody, replay_limit: usize) -> Self {
        use http_body_util::BodyExt;
        match body {
            ClientBody::Read(bytes) => RequestBody::Complete(bytes),
            ClientBody::Hyper(body) if body.is_end_stream() => RequestBody::Complete(Bytes::new()),
            ClientBody::Hyper(body) => {
                RequestBody::Streaming(Replay::new(body.map_err(|e| Box::new(e) as BoxError).boxed(), replay_limit))
            }
        }
    }

    /// Whether another try can send the body again (a streaming body only
    /// while its copy holds all that was read).
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Complete(_) => true,
            RequestBody::Streaming(replay) => replay.replayable(),
        }
    }
}

/// The client's body, shared by the tries of one request.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    source: ProxyBody,
    /// The frames read so far, while they fit in `limit` bytes.
    kept: Vec<Kept>,
    kept_bytes: usize,
    limit: usize,
    /// Frames read from the client so far.
    read: usize,
    /// More than `limit` bytes came: the copy is dropped for good.
    overflowed: bool,
    /// The client's body has ended.
    ended: bool,
    /// The try that reads now.
    current: u32,
    /// The client's declared length, for every try's framing.
    hint: SizeHint,
    /// Mirrors waiting for the whole body.
    on_complete: Vec<oneshot::Sender<Bytes>>,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the request body was given to a newer try")]
    Superseded,
    #[error("the request body is past the retry buffer and cannot be sent again")]
    Overflowed,
}

impl Replay {
    /// Keeps up to `limit` bytes of `source` for further tries (0: none).
    pub fn new(source: ProxyBody, limit: usize) -> Self {
        let hint = source.size_hint();
        let shared = Shared {
            source,
            kept: Vec::new(),
            kept_bytes: 0,
            limit,
            read: 0,
            overflowed: false,
            ended: false,
            current: 0,
            hint,
            on_complete: Vec::new(),
        };
        Replay { shared: Arc::new(Mutex::new(shared)) }
    }

    /// The body for a new try, from its first byte; earlier tries' bodies
    /// stop yielding.
    pub fn body(&self) -> ReplayBody {
        let mut shared = lock(&self.shared);
        shared.current += 1;
        ReplayBody { shared: self.shared.clone(), try_id: shared.current, next: 0 }
    }

    /// Whether a new try can still send the whole body: the copy holds
    /// everything read so far.
    pub fn replayable(&self) -> bool {
        !lock(&self.shared).overflowed
    }

    /// The whole body once the client has sent it, if it fits the copy
    /// (the receiver fails otherwise).
    pub fn when_complete(&self) -> oneshot::Receiver<Bytes> {
        let (sender, receiver) = oneshot::channel();
        let mut shared = lock(&self.shared);
        if shared.ended && !shared.overflowed {
            let _ = sender.send(shared.whole());
        } else if !shared.overflowed {
            shared.on_complete.push(sender);
        }
        receiver
    }
}

impl Shared {
    fn whole(&self) -> Bytes {
        let mut all = BytesMut::with_capacity(self.kept_bytes);
        for kept in &self.kept {
            if let Kept::Data(data) = kept {
                all.extend_from_slice(data);
            }
        }
        all.freeze()
    }

    /// Keeps a frame just read, unless the copy is over its limit.
    fn keep(&mut self, frame: &Frame<Bytes>) {
        self.read += 1;
        if self.overflowed {
            return;
        }
        if let Some(data) = frame.data_ref() {
            if self.kept_bytes + data.len() > self.limit {
                self.overflowed = true;
                self.kept = Vec::new();
                self.on_complete.clear();
                return;
            }
            self.kept_bytes += data.len();
            self.kept.push(Kept::Data(data.clone()));
        } else if let Some(trailers) = frame.trailers_ref() {
            self.kept.push(Kept::Trailers(trailers.clone()));
        }
    }

    fn end(&mut self) {
        self.ended = true;
        if !self.overflowed && !self.on_complete.is_empty() {
            let whole = self.whole();
            for waiter in self.on_complete.drain(..) {
                let _ = waiter.send(whole.clone());
            }
        }
    }
}

/// One try's view of the request body.
pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    try_id: u32,
    /// Frames this try has sent.
    next: usize,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut shared = lock(&this.shared);
        if shared.current != this.try_id {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Superseded))));
        }
        if this.next < shared.read {
            // Behind the client: from the copy, when there is one.
            if shared.overflowed {
                return Poll::Ready(Some(Err(Box::new(ReplayError::Overflowed))));
            }
            let frame = shared.kept[this.next].frame();
            this.next += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut shared.source).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                shared.keep(&frame);
                this.next += 1;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                shared.end();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        self.next >= shared.read && (shared.ended || shared.source.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client body fed by the test, one part at a time.
    fn client_body() -> (tokio::sync::mpsc::Sender<Bytes>, ProxyBody) {
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        (sender, crate::proxy::http1::server::tests::Streamed(receiver).boxed())
    }

    async fn next_data(body: &mut ReplayBody) -> Option<Bytes> {
        let frame = body.frame().await?.expect("no error");
        Some(frame.into_data().expect("data"))
    }

    #[tokio::test]
    async fn bytes_go_out_as_they_come_and_a_new_try_gets_them_again() {
        let (sender, source) = client_body();
        let replay = Replay::new(source, 1024);
        let mut first = replay.body();
        sender.send(Bytes::from_static(b"ping")).await.unwrap();
        // The first part leaves before the client has sent the rest.
        assert_eq!(next_data(&mut first).await.unwrap(), "ping");
        let mirrored = replay.when_complete();
        let mut second = replay.body();
        assert!(first.frame().await.unwrap().is_err(), "a given-up try stops reading");
        assert_eq!(next_data(&mut second).await.unwrap(), "ping", "replayed from the copy");
        sender.send(Bytes::from_static(b"pong")).await.unwrap();
        drop(sender);
        assert_eq!(next_data(&mut second).await.unwrap(), "pong", "then on from the client");
        assert!(second.frame().await.is_none());
        assert!(replay.replayable());
        assert_eq!(mirrored.await.unwrap(), "pingpong", "a mirror gets the whole body");
        let third = replay.body();
        assert_eq!(third.collect().await.unwrap().to_bytes(), "pingpong");
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_on_without_a_copy() {
        let (sender, source) = client_body();
        let replay = Replay::new(source, 6);
        let mirrored = replay.when_complete();
        let only = replay.body();
        for part in ["abcd", "efgh", "ij"] {
            sender.send(Bytes::from_static(part.as_bytes())).await.unwrap();
        }
        drop(sender);
        assert_eq!(only.collect().await.unwrap().to_bytes(), "abcdefghij", "the try gets all of it");
        assert!(!replay.replayable());
        assert!(mirrored.await.is_err(), "no mirror of a body that was not kept");
        assert!(replay.body().frame().await.unwrap().is_err(), "no try can start it again");
    }
}
