//! One request and its response on an upstream HTTP/2 connection, driven
//! with `h2` itself rather than through hyper's client: hyper hands each
//! request to the connection's task over a channel and spawns a task per
//! request to wait for the response, which cost a proxied h2 -> h2 request
//! more than the h2 -> HTTP/1.1 one (`cargo xtask bench h2`). Here the
//! request's own task opens the stream, sends the body while it waits for
//! the response head, and reads the response body.

use super::error::UpstreamError;
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::http1::common::strip_hop_by_hop;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::header::{HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use hyper::body::{Body, Frame, SizeHint};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A request's stream, open on a connection: its head sent, and its end
/// too when it has no body.
pub struct Opened {
    response: h2::client::ResponseFuture,
    send: SendStream<Bytes>,
    end_of_stream: bool,
}

/// Opens a stream for the request `head` (its URI absolute: the authority
/// becomes `:authority`) with `body` to follow. An error means nothing of
/// the request went out: the connection is going away or gone.
pub async fn open(sender: SendRequest<Bytes>, mut head: Parts, body: &ProxyBody) -> Result<Opened, h2::Error> {
    // HTTP/2 has no connection-scoped fields (RFC 9113 §8.2.2): a peer
    // rejects a message with any. The forward path strips them already,
    // but for an upgrade's, which an HTTP/2 upstream cannot take up; and
    // it frames bodies itself, with no transfer coding at all.
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(TRANSFER_ENCODING);
    if let Some(length) = body.size_hint().exact() {
        if length != 0 && !head.headers.contains_key(CONTENT_LENGTH) {
            head.headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let end_of_stream = body.is_end_stream();
    let mut sender = sender.ready().await?;
    let (response, send) = sender.send_request(http::Request::from_parts(head, ()), end_of_stream)?;
    Ok(Opened { response, send, end_of_stream })
}

/// Sends the body on the opened stream and waits for the response head. A
/// body still arriving from the client when the head comes goes on being
/// sent from a task of its own.
pub async fn exchange(opened: Opened, body: ProxyBody) -> Result<http::Response<Http2Body>, UpstreamError> {
    let Opened { mut response, send, end_of_stream } = opened;
    let mut pipe = (!end_of_stream).then(|| Box::pin(pipe(body, send)));
    let response = poll_fn(|cx| {
        if let Some(sending) = pipe.as_mut() {
            match sending.as_mut().poll(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(error @ UpstreamError::RequestBody(_))) => return Poll::Ready(Err(error)),
                Poll::Ready(sent) => {
                    // An upstream may answer in full and reset the rest of
                    // the request (RFC 9113 §8.1): the response says how
                    // the exchange went.
                    if let Err(error) = sent {
                        tracing::debug!(%error, "request body to an HTTP/2 upstream cut short");
                    }
                    pipe = None;
                }
            }
        }
        Pin::new(&mut response).poll(cx).map_err(UpstreamError::from_h2)
    })
    .await?;
    if let Some(sending) = pipe {
        tokio::spawn(async move {
            if let Err(error) = sending.await {
                tracing::debug!(%error, "request body to an HTTP/2 upstream ended early");
            }
        });
    }
    let remaining = response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(response.map(|recv| Http2Body { recv, remaining, data_done: false }))
}

/// Sends the client's body on the stream as it arrives, as far as the
/// upstream's flow control lets it (h2 holds the rest of a frame and
/// grants no more capacity past its send buffer), then its trailers or the
/// end of the stream. A failed client body resets the stream.
async fn pipe(mut body: ProxyBody, mut send: SendStream<Bytes>) -> Result<(), UpstreamError> {
    loop {
        send.reserve_capacity(1);
        let frame = poll_fn(|cx| {
            if send.capacity() == 0 {
                loop {
                    match ready!(send.poll_capacity(cx)) {
                        Some(Ok(0)) => {}
                        Some(Ok(_)) => break,
                        Some(Err(error)) => return Poll::Ready(Err(UpstreamError::from_h2(error))),
                        None => {
                            return Poll::Ready(Err(UpstreamError::Failed("the upstream closed the stream".into())))
                        }
                    }
                }
            } else if let Poll::Ready(reset) = send.poll_reset(cx) {
                // The upstream answered and reset the rest (or failed).
                return Poll::Ready(Err(match reset {
                    Ok(reason) => UpstreamError::Failed(Box::new(h2::Error::from(reason))),
                    Err(error) => UpstreamError::from_h2(error),
                }));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await?;
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    send.send_data(data, end).map_err(UpstreamError::from_h2)?;
                    if end {
                        return Ok(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return send.send_trailers(trailers).map_err(UpstreamError::from_h2);
                    }
                }
            },
            Some(Err(error)) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(UpstreamError::RequestBody(error));
            }
            None => return send.send_data(Bytes::new(), true).map_err(UpstreamError::from_h2),
        }
    }
}

/// A response body on an HTTP/2 stream: what arrives is given back to the
/// upstream's flow-control window as it is taken.
pub struct Http2Body {
    recv: RecvStream,
    /// What Content-Length declared and has not arrived yet (a proxied
    /// HTTP/1.1 client then gets the body framed by length, not chunked).
    remaining: Option<u64>,
    data_done: bool,
}

impl Body for Http2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = this.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(Box::new(error)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(Box::new(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            _ if self.recv.is_end_stream() => SizeHint::with_exact(0),
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}
