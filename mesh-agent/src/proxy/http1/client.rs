//! HTTP/1.1 to upstreams with no task of its own. The request whose body is
//! known goes out in one write from the request's own task; the response
//! head is parsed out of the connection's read buffer; and the body is read
//! from the socket by whoever polls it (the client's connection, writing
//! it on), with no channel or hand-off between tasks. When the body ends,
//! the connection goes back to the idle pool.
//!
//! Request bodies that stream, and protocol upgrades, go through hyper's
//! client instead (`upstream::hyper_http1`).

use super::chunked::{ChunkedError, Decoder};
use super::common::{
    framing_of, has_token, push_decimal, FieldSpans, Framing, FramingError, Message, MAX_FIELDS, MAX_HEAD_BYTES,
};
use crate::proxy::body::BoxError;
use crate::proxy::header_names::ATTEMPT_COUNT;
use crate::proxy::upstream::connect::tcp_connect;
use crate::proxy::upstream::error::UpstreamError;
use crate::proxy::upstream::pool::{ConnectionLimits, IdlePool, Key, Lease, ReturnTo, Reusable};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;
/// A body up to this size is copied behind the head, for a single write.
const COALESCE_BODY_BYTES: usize = 16 * 1024;
/// More 1xx responses than this before the final one is an abuse.
const MAX_INTERIM_RESPONSES: usize = 16;

/// One plaintext HTTP/1.1 connection to an endpoint.
pub struct Connection {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    read: BytesMut,
    /// The request head being written (kept for its allocation).
    write: Vec<u8>,
}

impl Reusable for Connection {
    fn is_closed(&self) -> bool {
        // Idle, it must have nothing to say: a FIN, a reset or stray bytes
        // all end it. With no readiness recorded since the last read,
        // tokio answers WouldBlock without a system call.
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// The direct client's idle connections.
pub type DirectPool = IdlePool<Connection>;

/// Why one exchange on a connection failed.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The connection broke or closed before any byte of a response: on a
    /// reused connection, the upstream most likely closed it while idle.
    #[error("connection closed before a response: {0}")]
    BeforeResponse(std::io::Error),
    #[error("upstream connection failed: {0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("response framing: {0}")]
    Framing(#[from] FramingError),
}

impl From<ExchangeError> for UpstreamError {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Malformed(_) | ExchangeError::Framing(_) => UpstreamError::Protocol(Box::new(error)),
            _ => UpstreamError::Failed(Box::new(error)),
        }
    }
}

/// Why a response body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the upstream response body: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection in the middle of the response body")]
    Truncated,
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
}

impl IdlePool<Connection> {
    /// Sends a request with a known body to `endpoint` on an idle
    /// connection or a new one, with `attempt` as its attempt count. The
    /// head is borrowed: every try of a request encodes the same one.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        limits: ConnectionLimits,
        head: &http::request::Parts,
        attempt: Option<u32>,
        body: Bytes,
    ) -> Result<Response<DirectBody>, UpstreamError> {
        let key: Key = (endpoint, 0);
        let head_only = head.method == Method::HEAD;
        loop {
            let (mut connection, lease, reused) = match self.checkout(key) {
                Some((connection, lease)) => (connection, lease, true),
                None => (Box::pin(Connection::open(endpoint, limits.connect_timeout)).await?, Lease::default(), false),
            };
            let lease = lease.next();
            let last = limits.max_requests.is_some_and(|max| lease.served >= max);
            encode_request(&mut connection.write, head, attempt, &body, last);
            match connection.exchange(&body, head_only).await {
                Ok(parsed) => {
                    let reusable = !last && parsed.keep_alive && !matches!(parsed.framing, Framing::UntilClose);
                    let return_to = reusable.then(|| ReturnTo::new(self, key, lease, limits));
                    let remaining = Remaining::from(parsed.framing);
                    let mut response = Response::new(DirectBody { connection: Some(connection), remaining, return_to });
                    *response.status_mut() = parsed.status;
                    *response.version_mut() = parsed.version;
                    *response.headers_mut() = parsed.headers;
                    response.body_mut().finish_if_done();
                    return Ok(response);
                }
                // An idle connection the upstream had closed: a request that
                // may be repeated goes again on a fresh one.
                Err(ExchangeError::BeforeResponse(_)) if reused && is_idempotent(&head.method) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Methods whose repetition has the effect of one (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// What the front of the read buffer holds.
enum Parsed {
    Final(ParsedHead),
    /// A 1xx response, now skipped.
    Interim,
    /// Not a whole head yet.
    Partial,
}

/// A parsed response head and how its body is framed.
struct ParsedHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl Connection {
    async fn open(endpoint: SocketAddr, timeout: Duration) -> Result<Self, UpstreamError> {
        let io = tcp_connect(endpoint, timeout).await?;
        Ok(Connection { io, read: BytesMut::with_capacity(READ_RESERVE), write: Vec::with_capacity(1024) })
    }

    /// Writes the encoded head and the body, and reads the response head
    /// (interim 1xx responses are skipped).
    async fn exchange(&mut self, body: &Bytes, head_only: bool) -> Result<ParsedHead, ExchangeError> {
        let written = match body.len() {
            0 => self.io.write_all(&self.write).await,
            n if n <= COALESCE_BODY_BYTES => {
                self.write.extend_from_slice(body);
                self.io.write_all(&self.write).await
            }
            _ => match self.io.write_all(&self.write).await {
                Ok(()) => self.io.write_all(body).await,
                error => error,
            },
        };
        written.map_err(ExchangeError::BeforeResponse)?;
        let mut received = false;
        let mut interim = 0;
        loop {
            if !self.read.is_empty() {
                match self.parse_head(head_only)? {
                    Parsed::Final(parsed) => return Ok(parsed),
                    Parsed::Interim if interim < MAX_INTERIM_RESPONSES => {
                        // The final response may already be behind it.
                        interim += 1;
                        continue;
                    }
                    Parsed::Interim => return Err(ExchangeError::Malformed("too many interim responses")),
                    Parsed::Partial => {}
                }
                if self.read.len() > MAX_HEAD_BYTES {
                    return Err(ExchangeError::Malformed("response head too large"));
                }
            }
            self.read.reserve(READ_RESERVE);
            match self.io.read_buf(&mut self.read).await {
                Ok(0) if !received => {
                    return Err(ExchangeError::BeforeResponse(std::io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(0) => return Err(ExchangeError::Malformed("connection closed within the response head")),
                Ok(_) => received = true,
                Err(error) if !received => return Err(ExchangeError::BeforeResponse(error)),
                Err(error) => return Err(ExchangeError::Io(error)),
            }
        }
    }

    /// The response head at the front of the read buffer, taken out of it,
    /// when it is all there. Header values share the buffer's memory.
    fn parse_head(&mut self, head_only: bool) -> Result<Parsed, ExchangeError> {
        // Slots left uninitialised: filling all of them would cost more
        // than parsing a short head.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
        let mut response = httparse::Response::new(&mut []);
        let parsed =
            httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, &self.read, &mut slots);
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(ExchangeError::Malformed("too many response headers")),
            Err(_) => return Err(ExchangeError::Malformed("malformed response head")),
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| ExchangeError::Malformed("invalid status code"))?;
        let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // Only asked for through hyper's client.
                return Err(ExchangeError::Malformed("protocol switch that was not asked for"));
            }
            self.read.advance(length);
            return Ok(Parsed::Interim);
        }
        // Offsets of names and values, so the head can leave the buffer
        // as one shared `Bytes` the values are slices of.
        let mut spans = FieldSpans::new();
        spans.record(response.headers, self.read.as_ptr() as usize);
        let head = self.read.split_to(length).freeze();
        let headers = spans.header_map(&head).map_err(|_| ExchangeError::Malformed("invalid response header field"))?;
        let framing = framing_of(&headers, Message::Response { status: code, to_head: head_only })?;
        let keep_alive = match version {
            Version::HTTP_10 => has_token(&headers, &CONNECTION, "keep-alive"),
            _ => !has_token(&headers, &CONNECTION, "close"),
        };
        Ok(Parsed::Final(ParsedHead { status, version, headers, framing, keep_alive }))
    }
}

/// The request line (origin form), the headers, the attempt count, the
/// body's length, and `Connection: close` on a connection's last request.
fn encode_request(out: &mut Vec<u8>, head: &http::request::Parts, attempt: Option<u32>, body: &[u8], close: bool) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == CONNECTION || name == TRANSFER_ENCODING {
            continue;
        }
        if attempt.is_some() && name == ATTEMPT_COUNT {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let declares_length =
        head.headers.contains_key(CONTENT_LENGTH) || matches!(head.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || declares_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(attempt) = attempt {
        out.extend_from_slice(ATTEMPT_COUNT.as_str().as_bytes());
        out.extend_from_slice(b": ");
        push_decimal(out, u64::from(attempt));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What is left of a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Remaining {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
}

impl From<Framing> for Remaining {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Remaining::Length(0),
            Framing::Length(length) => Remaining::Length(length),
            Framing::Chunked => Remaining::Chunked(Decoder::new()),
            Framing::UntilClose => Remaining::UntilClose,
        }
    }
}

/// A response body read straight from the upstream connection.
pub struct DirectBody {
    /// None once the body is done (the connection went back or closed).
    connection: Option<Connection>,
    remaining: Remaining,
    /// Set when the connection may carry another request.
    return_to: Option<ReturnTo<Connection>>,
}

impl DirectBody {
    fn is_done(&self) -> bool {
        match self.remaining {
            Remaining::Length(left) => left == 0,
            Remaining::Chunked(decoder) => decoder.is_done(),
            Remaining::UntilClose => false,
        }
    }

    /// Once the whole body is read, the connection goes back to its pool
    /// (when nothing beyond the response came with it).
    fn finish_if_done(&mut self) {
        if !self.is_done() {
            return;
        }
        let Some(connection) = self.connection.take() else { return };
        if let (Some(to), true) = (self.return_to.take(), connection.read.is_empty()) {
            to.give_back(connection);
        }
    }

    /// The next frame the buffered bytes make, if any.
    fn next_frame(&mut self) -> Result<Option<Frame<Bytes>>, BodyError> {
        let Some(connection) = self.connection.as_mut() else { return Ok(None) };
        let read = &mut connection.read;
        match &mut self.remaining {
            Remaining::Length(0) => Ok(None),
            Remaining::Length(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = (*left).min(read.len() as u64) as usize;
                *left -= take as u64;
                Ok(Some(Frame::data(read.split_to(take).freeze())))
            }
            Remaining::UntilClose => Ok((!read.is_empty()).then(|| Frame::data(read.split().freeze()))),
            Remaining::Chunked(decoder) => Ok(decoder.decode(read)?),
        }
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.next_frame() {
                Ok(Some(frame)) => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.is_done() => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
            let Some(connection) = this.connection.as_mut() else { return Poll::Ready(None) };
            connection.read.reserve(READ_RESERVE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut connection.io), cx, &mut connection.read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.connection = None;
                    return match this.remaining {
                        Remaining::UntilClose => Poll::Ready(None),
                        _ => Poll::Ready(Some(Err(BodyError::Truncated.into()))),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => {
                    this.connection = None;
                    return Poll::Ready(Some(Err(BodyError::Io(error).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn requests_are_encoded_with_their_length_and_without_hop_by_hop_fields() {
        let (mut head, ()) = http::Request::post("/submit?x=1")
            .header("host", "reviews")
            .header("content-length", "999")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_request(&mut out, &head, None, b"abc", true);
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "POST /submit?x=1 HTTP/1.1\r\nhost: reviews\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        // The attempt count is the proxy's: one the client sent is replaced.
        head.headers.insert(ATTEMPT_COUNT.clone(), HeaderValue::from_static("7"));
        encode_request(&mut out, &head, Some(2), b"abc", false);
        assert!(String::from_utf8(out.clone())
            .unwrap()
            .ends_with("content-length: 3\r\nx-envoy-attempt-count: 2\r\n\r\n"));
        head.headers.remove(&ATTEMPT_COUNT);
        head.method = Method::GET;
        head.headers.remove(CONTENT_LENGTH);
        encode_request(&mut out, &head, None, b"", false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /submit?x=1 HTTP/1.1\r\nhost: reviews\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    /// A one-connection upstream on loopback that answers each request with
    /// the next canned reply, then closes (and stops listening) after the
    /// last: the handle ends once it has.
    async fn upstream(replies: Vec<&'static [u8]>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = vec![0u8; 4096];
            for reply in replies {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buffer).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buffer[..n]);
                }
                stream.write_all(reply).await.unwrap();
            }
        });
        (address, task)
    }

    async fn get(pool: &Arc<DirectPool>, address: SocketAddr) -> Result<(StatusCode, HeaderMap, Vec<u8>), BoxError> {
        use http_body_util::BodyExt;
        let (head, ()) = http::Request::get("/").header("host", "web").body(()).unwrap().into_parts();
        let response = pool.send(address, ConnectionLimits::default(), &head, None, Bytes::new()).await?;
        let (parts, body) = response.into_parts();
        Ok((parts.status, parts.headers, body.collect().await?.to_bytes().to_vec()))
    }

    #[tokio::test]
    async fn a_connection_is_reused_after_its_body_and_interim_responses_are_skipped() {
        let (address, _) = upstream(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-shared: yes\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ])
        .await;
        let pool = Arc::new(DirectPool::default());
        let (status, headers, body) = get(&pool, address).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(headers["x-shared"], "yes");
        let mut idle = std::collections::HashMap::new();
        pool.count_idle(&mut idle);
        assert_eq!(idle.get(&address), Some(&1), "back in the pool after the body");
        // The upstream accepts one connection: this must reuse it.
        let (status, _, body) = get(&pool, address).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"abc"[..]));
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_a_closed_idle_connection_is_not_reused() {
        let (address, _) = upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let pool = Arc::new(DirectPool::default());
        assert!(get(&pool, address).await.is_err(), "five bytes of ten, then a close");

        let (address, closed) = upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let (status, _, _) = get(&pool, address).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // The upstream closed after its one reply: the pooled connection is
        // found closed (or fails before a response and the GET goes again
        // on a fresh connection, which is refused).
        closed.await.unwrap();
        let error = get(&pool, address).await.unwrap_err();
        assert!(error.downcast_ref::<UpstreamError>().is_some_and(UpstreamError::is_connect), "{error}");
    }

    #[tokio::test]
    async fn malformed_responses_are_protocol_errors() {
        let flood: &'static [u8] = "HTTP/1.1 100 Continue\r\n\r\n".repeat(2000).leak().as_bytes();
        for reply in [&b"HTTP/1.1 2xx Nope\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", flood] {
            let (address, _) = upstream(vec![reply]).await;
            let pool = Arc::new(DirectPool::default());
            let error = get(&pool, address).await.unwrap_err();
            assert!(matches!(error.downcast_ref::<UpstreamError>(), Some(UpstreamError::Protocol(_))), "{error}");
        }
    }
}
