//! The dialer: sends one try of a request to one endpoint, over the
//! right client: HTTP/2 on the endpoint's multiplexed connection, plain
//! HTTP/1.1 with a known body on the direct client, the rest through
//! hyper's HTTP/1.1 client.

use super::connect::Tls;
use super::error::UpstreamError;
use super::http2::{Http2Connections, Stream};
use super::http2_exchange::{exchange, open, Http2Body, Opened};
use super::hyper_http1::Http1Pool;
use super::pool::ConnectionLimits;
use crate::proxy::body::{full, BoxError, ProxyBody};
use crate::proxy::header_names::ATTEMPT_COUNT;
use crate::proxy::http1::client::{DirectBody, DirectPool};
use bytes::Bytes;
use http::header::{HeaderValue, HOST, TRANSFER_ENCODING, UPGRADE};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The upstream connections; a cheap, owned handle to them (clone it to
/// send from a spawned task, as mirrors do).
#[derive(Clone, Default)]
pub struct Dialer {
    direct: Arc<DirectPool>,
    http1: Arc<Http1Pool>,
    h2: Http2Connections,
}

/// Where and how one try of a request goes.
#[derive(Clone, Copy)]
pub struct Try<'a> {
    pub endpoint: SocketAddr,
    /// The endpoint's port speaks HTTP/2.
    pub http2: bool,
    pub tls: Option<&'a Tls>,
    pub limits: ConnectionLimits,
    /// The request head, the same for every try.
    pub head: &'a http::request::Parts,
    /// The `x-envoy-attempt-count` to send (none for a mirror).
    pub attempt: Option<u32>,
}

impl Try<'_> {
    /// Whether the direct client, which frames a known body by its length,
    /// can send it: plaintext HTTP/1.1, nothing switching protocols, and no
    /// transfer coding the client chose.
    fn direct(&self) -> bool {
        let headers = &self.head.headers;
        !self.http2 && self.tls.is_none() && !headers.contains_key(UPGRADE) && !headers.contains_key(TRANSFER_ENCODING)
    }
}

/// A request body as the upstream clients take it.
pub enum Payload {
    /// All of it, known before sending (it may be sent again).
    Complete(Bytes),
    /// Still arriving from the client.
    Streamed(ProxyBody),
}

impl Payload {
    fn into_body(self) -> ProxyBody {
        match self {
            Payload::Complete(bytes) => full(bytes),
            Payload::Streamed(body) => body,
        }
    }
}

/// A response body from either HTTP/1.1 client or HTTP/2.
pub enum UpstreamBody {
    Direct(DirectBody),
    Hyper(Incoming),
    /// An HTTP/2 response, holding its stream's place on the connection
    /// until it is done with.
    Http2 {
        body: Http2Body,
        _stream: Stream,
    },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Direct(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
            UpstreamBody::Http2 { body, .. } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Direct(body) => body.is_end_stream(),
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::Http2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Direct(body) => body.size_hint(),
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::Http2 { body, .. } => body.size_hint(),
        }
    }
}

/// One upstream endpoint as the proxy sees it, for status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UpstreamPool {
    pub endpoint: SocketAddr,
    pub in_flight: usize,
    pub http1_idle: usize,
    pub http2_connections: usize,
}

impl Dialer {
    /// Sends one try of a request to `endpoint`, with `attempt` as its
    /// attempt count: HTTP/2 on our per-endpoint connection (the request's
    /// URI carries the logical authority), HTTP/1.1 on a pooled connection
    /// (origin form; Host carries the name). Plaintext HTTP/1.1 with a
    /// known body, nothing asking to switch protocols, goes through the
    /// direct client, which encodes the borrowed head as it is; the rest
    /// through hyper, with a copy of it.
    pub async fn send(&self, to: Try<'_>, payload: Payload) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        match payload {
            Payload::Complete(body) if to.direct() => {
                let response = self.direct.send(to.endpoint, to.limits, to.head, to.attempt, body).await?;
                Ok(response.map(UpstreamBody::Direct))
            }
            // Boxed: the common path's future stays small.
            payload => Box::pin(self.send_framed(to, payload)).await,
        }
    }

    /// Sends a try the direct client does not: on the endpoint's HTTP/2
    /// connection, or through hyper's HTTP/1.1 client.
    async fn send_framed(&self, to: Try<'_>, payload: Payload) -> Result<http::Response<UpstreamBody>, UpstreamError> {
        let Try { endpoint, http2, tls, limits, .. } = to;
        let body = payload.into_body();
        if !http2 {
            let request = http::Request::from_parts(upstream_head(&to), body);
            return Ok(self.http1.send(endpoint, tls.cloned(), limits, request).await?.map(UpstreamBody::Hyper));
        }
        let (opened, stream) = self.open_http2(to, &body).await?;
        match exchange(opened, body).await {
            Ok(response) => Ok(response.map(|body| UpstreamBody::Http2 { body, _stream: stream })),
            Err(error) => {
                if error.is_go_away() {
                    stream.retire();
                }
                Err(error)
            }
        }
    }

    /// Opens the try's stream on a connection to its endpoint. One the
    /// upstream has sent away (GOAWAY) took nothing of the request: it is
    /// retired, and the stream opened on another.
    async fn open_http2(&self, to: Try<'_>, body: &ProxyBody) -> Result<(Opened, Stream), UpstreamError> {
        let Try { endpoint, tls, limits, .. } = to;
        let mut retired = false;
        loop {
            let (sender, stream) = self.h2.sender(endpoint, tls.cloned(), limits).await?;
            match open(sender, upstream_head(&to), body).await {
                Ok(opened) => return Ok((opened, stream)),
                Err(error) if error.is_go_away() && !retired => {
                    stream.retire();
                    retired = true;
                }
                Err(error) => return Err(UpstreamError::from_h2(error)),
            }
        }
    }
}

/// A try's request head: a copy of the request's, with its attempt count,
/// as the upstream gets it.
fn upstream_head(to: &Try<'_>) -> http::request::Parts {
    let mut request = http::Request::from_parts(to.head.clone(), ());
    if let Some(attempt) = to.attempt {
        request.headers_mut().insert(ATTEMPT_COUNT.clone(), HeaderValue::from(attempt));
    }
    upstream_request(request, to.endpoint, to.http2, to.tls.is_some()).into_parts().0
}

/// The request as the upstream gets it, on a connection that is already
/// the endpoint's. HTTP/1.1: the origin form, and Host keeps the service's
/// name. HTTP/2: `:authority` is the service's name (from Host, which h2
/// must not also carry), and `:scheme` says whether the connection is TLS
/// (as Envoy sets it from its upstream transport), whatever the client's.
fn upstream_request<B>(
    mut request: http::Request<B>,
    endpoint: SocketAddr,
    http2: bool,
    tls: bool,
) -> http::Request<B> {
    use http::uri::{Authority, Parts, PathAndQuery, Scheme};
    use http::Uri;
    if http2 {
        // From its parts: per request, no formatting and parsing again.
        let mut parts = Parts::default();
        parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
        parts.path_and_query =
            Some(request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        let host = request.headers_mut().remove(HOST);
        parts.authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok()).or_else(|| {
            // No Host, or one that is no authority: the endpoint's address.
            Authority::try_from(endpoint.to_string()).ok()
        });
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
        *request.version_mut() = http::Version::HTTP_2;
    } else {
        if request.uri().scheme().is_some() || request.uri().path_and_query().is_none() {
            // An absolute-form request line from the client: send the origin form.
            let origin =
                request.uri().path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(origin);
        }
        // The upstream speaks what its port says, whatever the client spoke.
        *request.version_mut() = http::Version::HTTP_11;
    }
    request
}

impl Dialer {
    /// Upstream endpoints the proxy has talked to, given their requests in
    /// flight: and how many multiplexed HTTP/2 connections to each are open.
    pub fn pools(&self, in_flight: Vec<(SocketAddr, usize)>) -> Vec<UpstreamPool> {
        let mut idle = HashMap::new();
        self.http1.count_idle(&mut idle);
        self.direct.count_idle(&mut idle);
        let mut pools: Vec<UpstreamPool> = in_flight
            .into_iter()
            .map(|(endpoint, in_flight)| UpstreamPool {
                endpoint,
                in_flight,
                http1_idle: idle.get(&endpoint).copied().unwrap_or(0),
                http2_connections: self.h2.open_to(endpoint),
            })
            .collect();
        pools.sort_by_key(|p| p.endpoint);
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    #[test]
    fn an_http2_request_carries_host_as_authority_or_else_the_endpoint() {
        let endpoint: SocketAddr = "10.244.1.2:8080".parse().unwrap();
        let sent = |host: Option<&str>, uri: &str, tls: bool| {
            let mut builder = http::Request::builder().uri(uri);
            if let Some(host) = host {
                builder = builder.header(HOST, host);
            }
            let sent = upstream_request(builder.body(()).unwrap(), endpoint, true, tls);
            (sent.uri().to_string(), sent.headers().contains_key(HOST), sent.version())
        };
        let request = |host: Option<&str>, uri: &str| sent(host, uri, false);
        let h2 = http::Version::HTTP_2;
        assert_eq!(request(Some("web.shop:80"), "/a?b=1"), ("http://web.shop:80/a?b=1".into(), false, h2));
        assert_eq!(request(None, "/"), ("http://10.244.1.2:8080/".into(), false, h2));
        assert_eq!(request(Some("bad host"), "/x"), ("http://10.244.1.2:8080/x".into(), false, h2));
        // Over TLS, whatever the client's scheme (an absolute-form http URI here).
        assert_eq!(sent(Some("web.shop"), "http://web.shop/a", true), ("https://web.shop/a".into(), false, h2));
    }

    #[tokio::test]
    async fn a_streamed_get_body_goes_out_chunked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0u8; 1024];
            while !seen.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buffer).await.unwrap();
                assert!(n > 0, "closed before the body's end: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buffer[..n]);
            }
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
            String::from_utf8(seen).unwrap()
        });
        let (parts, receiver) = tokio::sync::mpsc::channel(1);
        parts.send(Bytes::from_static(b"hello")).await.unwrap();
        drop(parts);
        let body = crate::proxy::http1::server::tests::Streamed(receiver).boxed();
        let (head, ()) = http::Request::get("/").header("host", "web").body(()).unwrap().into_parts();
        let dialer = Dialer::default();
        let to = Try {
            endpoint: address,
            http2: false,
            tls: None,
            limits: ConnectionLimits::default(),
            head: &head,
            attempt: None,
        };
        let sent = dialer.send(to, Payload::Streamed(body));
        // Without framing the upstream never sees the body's end.
        let response = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered").unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let seen = upstream.await.unwrap();
        assert!(seen.to_ascii_lowercase().contains("transfer-encoding: chunked\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_sent_away_takes_no_new_request() {
        use std::sync::atomic::Ordering;
        // An upstream that, on its first connection, holds the first request
        // and sends GOAWAY, keeping the connection for that one stream; on
        // the next, answers everything.
        let (address, accepted) = super::super::http2::counting_upstream(|stream, number| async move {
            let mut connection = h2::server::handshake(stream).await.unwrap();
            let mut held = Vec::new();
            while let Some(Ok((_request, mut respond))) = connection.accept().await {
                if number == 0 {
                    held.push(respond);
                    connection.graceful_shutdown();
                } else {
                    respond.send_response(http::Response::new(()), true).unwrap();
                }
            }
        })
        .await;
        let dialer = Dialer::default();
        let (head, ()) = http::Request::get("/").header("host", "web").body(()).unwrap().into_parts();
        let to = Try {
            endpoint: address,
            http2: true,
            tls: None,
            limits: ConnectionLimits::default(),
            head: &head,
            attempt: None,
        };
        let (held, _held_stream) = dialer.open_http2(to, &full(Bytes::new())).await.unwrap();
        // Until the client has read the GOAWAY, the connection looks usable.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (sender, _stream) = dialer.h2.sender(address, None, to.limits).await.unwrap();
            match open(sender, upstream_head(&to), &full(Bytes::new())).await {
                Err(error) if error.is_go_away() => break,
                _ => assert!(std::time::Instant::now() < deadline, "no GOAWAY seen"),
            }
            tokio::task::yield_now().await;
        }
        let sent = dialer.send(to, Payload::Complete(Bytes::new()));
        let response = tokio::time::timeout(Duration::from_secs(5), sent).await.expect("answered").unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "the request went on a new connection");
        drop(held);
    }
}
