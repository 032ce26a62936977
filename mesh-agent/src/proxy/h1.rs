//! HTTP/1.1 to upstreams with no task of its own. The request whose body is
//! known goes out in one write from the request's own task; the response
//! head is parsed out of the connection's read buffer; and the body is read
//! from the socket by whoever polls it (the client's connection, writing
//! it on), with no channel or hand-off between tasks. When the body ends,
//! the connection goes back to the idle pool.
//!
//! Request bodies that stream, and protocol upgrades, go through hyper's
//! client instead ([`super::pool::Http1Pool`]).

use super::balance::{tcp_connect, UpstreamError, ATTEMPT_COUNT};
use super::pool::{ConnectionLimits, IdlePool, Key, ReturnTo, Reusable};
use super::BoxError;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head larger than this is refused, as a malformed response.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;
/// A body up to this size is copied behind the head, for a single write.
const COALESCE_BODY_BYTES: usize = 16 * 1024;
/// A chunk-size line longer than this is not one.
const MAX_CHUNK_LINE: usize = 1024;
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
}

impl From<ExchangeError> for UpstreamError {
    fn from(error: ExchangeError) -> Self {
        match error {
            ExchangeError::Malformed(_) => UpstreamError::Protocol(error.to_string()),
            _ => UpstreamError::Failed(error.to_string()),
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
    #[error("malformed chunked response body: {0}")]
    Chunked(&'static str),
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
            let (mut connection, served, reused) = match self.checkout(key) {
                Some((connection, served)) => (connection, served, true),
                None => (Box::pin(Connection::open(endpoint, limits.connect_timeout)).await?, 0, false),
            };
            let served = served + 1;
            let last = limits.max_requests.is_some_and(|max| served >= max);
            encode_request(&mut connection.write, head, attempt, &body, last);
            match connection.exchange(&body, head_only).await {
                Ok(parsed) => {
                    let reusable = !last && parsed.keep_alive && !matches!(parsed.framing, Framing::UntilClose);
                    let return_to = reusable.then(|| ReturnTo::new(self, key, served, limits.idle_timeout));
                    let mut response =
                        Response::new(DirectBody { connection: Some(connection), framing: parsed.framing, return_to });
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
        // Slots left uninitialised: filling 128 of them would cost more
        // than parsing a short head.
        let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
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
        let framing = framing(&headers, status, head_only)?;
        let keep_alive = match version {
            Version::HTTP_10 => has_token(&headers, CONNECTION, "keep-alive"),
            _ => !has_token(&headers, CONNECTION, "close"),
        };
        Ok(Parsed::Final(ParsedHead { status, version, headers, framing, keep_alive }))
    }
}

/// Where each parsed field's name and value sit in a head, as offsets
/// from its start: kept on the stack (no allocation per message) while
/// the head leaves its read buffer, so the values can be slices of it.
pub(super) struct FieldSpans {
    /// Name start and length, value start and length.
    spans: [[u32; 4]; MAX_HEADERS],
    len: usize,
}

impl FieldSpans {
    pub(super) fn new() -> Self {
        FieldSpans { spans: [[0; 4]; MAX_HEADERS], len: 0 }
    }

    /// The fields httparse found in the buffer that starts at `base`
    /// (heads are far below 4 GiB).
    pub(super) fn record(&mut self, fields: &[httparse::Header<'_>], base: usize) {
        self.len = fields.len().min(MAX_HEADERS);
        for (slot, field) in self.spans.iter_mut().zip(fields) {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            *slot = [name as u32, field.name.len() as u32, value as u32, field.value.len() as u32];
        }
    }

    /// The header map of `head` (the bytes the spans were recorded in,
    /// frozen), whose values share its memory.
    pub(super) fn header_map(&self, head: &Bytes) -> Result<HeaderMap, http::Error> {
        // Room for the few fields the proxy may add (the request id, Host
        // or Set-Cookie), so the map does not grow and rehash for them.
        let mut headers = HeaderMap::with_capacity(self.len + 2);
        for &[name, name_length, value, value_length] in &self.spans[..self.len] {
            let name = HeaderName::from_bytes(&head[name as usize..(name + name_length) as usize])?;
            let value = head.slice(value as usize..(value + value_length) as usize);
            headers.append(name, HeaderValue::from_maybe_shared(value)?);
        }
        Ok(headers)
    }
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    Done,
}

fn framing(headers: &HeaderMap, status: StatusCode, head_only: bool) -> Result<Framing, ExchangeError> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked only when it is the last coding; otherwise the body runs
        // to the close.
        let last_coding = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            // A value that is not text is a coding we do not know.
            .map(|v| v.to_str().unwrap_or("unknown"))
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|coding| !coding.is_empty());
        return Ok(match last_coding {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunked::Size),
            _ => Framing::UntilClose,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = parse_decimal(item).ok_or(ExchangeError::Malformed("invalid content-length in the response"))?;
            if length.is_some_and(|known| known != item) {
                return Err(ExchangeError::Malformed("conflicting content-length values in the response"));
            }
            length = Some(item);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A Content-Length value: ASCII digits only (no sign, no other spaces
/// than the optional whitespace around it), as hyper takes it.
pub(super) fn parse_decimal(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &digit| n.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

/// `n` in decimal, without the formatting machinery.
pub(super) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

pub(super) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
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

/// A response body read straight from the upstream connection.
pub struct DirectBody {
    /// None once the body is done (the connection went back or closed).
    connection: Option<Connection>,
    framing: Framing,
    /// Set when the connection may carry another request.
    return_to: Option<ReturnTo<Connection>>,
}

impl DirectBody {
    fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Length(0) | Framing::Chunked(Chunked::Done))
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
        match &mut self.framing {
            Framing::Length(0) => Ok(None),
            Framing::Length(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = (*left).min(read.len() as u64) as usize;
                *left -= take as u64;
                Ok(Some(Frame::data(read.split_to(take).freeze())))
            }
            Framing::UntilClose => Ok((!read.is_empty()).then(|| Frame::data(read.split().freeze()))),
            Framing::Chunked(state) => decode_chunked(state, read),
        }
    }
}

/// Decodes what the buffer holds of a chunked body: a data frame, the
/// trailers, or nothing yet (more bytes needed, or the end reached).
fn decode_chunked(state: &mut Chunked, read: &mut BytesMut) -> Result<Option<Frame<Bytes>>, BodyError> {
    loop {
        match *state {
            Chunked::Done => return Ok(None),
            Chunked::Size => {
                let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
                    return match read.len() > MAX_CHUNK_LINE {
                        true => Err(BodyError::Chunked("chunk-size line too long")),
                        false => Ok(None),
                    };
                };
                let line = std::str::from_utf8(&read[..end]).map_err(|_| BodyError::Chunked("chunk-size line"))?;
                // Chunk extensions (after `;`) carry nothing for a proxy.
                let digits = line.split(';').next().unwrap_or_default().trim();
                let hex = !digits.is_empty() && digits.len() <= 16 && digits.bytes().all(|b| b.is_ascii_hexdigit());
                let size =
                    u64::from_str_radix(digits, 16).ok().filter(|_| hex).ok_or(BodyError::Chunked("chunk size"))?;
                read.advance(end + 2);
                *state = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
            }
            Chunked::Data(left) => {
                if read.is_empty() {
                    return Ok(None);
                }
                let take = left.min(read.len() as u64) as usize;
                *state = if take as u64 == left { Chunked::DataEnd } else { Chunked::Data(left - take as u64) };
                return Ok(Some(Frame::data(read.split_to(take).freeze())));
            }
            Chunked::DataEnd => {
                if read.len() < 2 {
                    return Ok(None);
                }
                if &read[..2] != b"\r\n" {
                    return Err(BodyError::Chunked("no CRLF after chunk data"));
                }
                read.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (length, fields) = match httparse::parse_headers(read, &mut slots) {
                    Ok(httparse::Status::Complete(parsed)) => parsed,
                    Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD_BYTES => return Ok(None),
                    _ => return Err(BodyError::Chunked("trailer section")),
                };
                let mut trailers = HeaderMap::new();
                for field in fields {
                    if let (Ok(name), Ok(value)) =
                        (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
                    {
                        trailers.append(name, value);
                    }
                }
                read.advance(length);
                *state = Chunked::Done;
                return Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers)));
            }
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
                    return match this.framing {
                        Framing::UntilClose => Poll::Ready(None),
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
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    fn drain_chunked(mut read: BytesMut) -> Result<(Vec<u8>, Option<HeaderMap>, Chunked, BytesMut), BodyError> {
        let mut state = Chunked::Size;
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = decode_chunked(&mut state, &mut read)? {
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers, state, read))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, state, rest) =
            drain_chunked(buffer(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\nNEXT")).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        assert_eq!(state, Chunked::Done);
        assert_eq!(&rest[..], b"NEXT", "bytes past the body stay in the buffer");
    }

    #[test]
    fn chunked_decoding_waits_for_more_bytes_at_any_point() {
        let whole = b"a\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..whole.len() {
            let mut state = Chunked::Size;
            let mut read = buffer(&whole[..split]);
            let mut data = Vec::new();
            while let Some(frame) = decode_chunked(&mut state, &mut read).unwrap() {
                data.extend_from_slice(&frame.into_data().unwrap());
            }
            read.extend_from_slice(&whole[split..]);
            while let Some(frame) = decode_chunked(&mut state, &mut read).unwrap() {
                data.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(data, b"0123456789", "split at {split}");
            assert_eq!(state, Chunked::Done, "split at {split}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        assert!(drain_chunked(buffer(b"zz\r\n")).is_err());
        assert!(drain_chunked(buffer(b"2\r\nabXX")).is_err());
        assert!(drain_chunked(buffer(&[b'1'; MAX_CHUNK_LINE + 1])).is_err());
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            map
        };
        let ok = StatusCode::OK;
        let length = headers(&[("content-length", "12")]);
        assert_eq!(framing(&length, ok, false).unwrap(), Framing::Length(12));
        assert_eq!(framing(&length, ok, true).unwrap(), Framing::Length(0), "HEAD has no body");
        assert_eq!(framing(&length, StatusCode::NOT_MODIFIED, false).unwrap(), Framing::Length(0));
        let chunked = headers(&[("transfer-encoding", "gzip, chunked"), ("content-length", "12")]);
        assert_eq!(framing(&chunked, ok, false).unwrap(), Framing::Chunked(Chunked::Size));
        let gzip = headers(&[("transfer-encoding", "chunked"), ("transfer-encoding", "gzip")]);
        assert_eq!(framing(&gzip, ok, false).unwrap(), Framing::UntilClose);
        assert_eq!(framing(&headers(&[]), ok, false).unwrap(), Framing::UntilClose);
        assert_eq!(framing(&headers(&[("content-length", "7, 7")]), ok, false).unwrap(), Framing::Length(7));
        assert!(framing(&headers(&[("content-length", "7"), ("content-length", "8")]), ok, false).is_err());
        assert!(framing(&headers(&[("content-length", "-1")]), ok, false).is_err());
    }

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
    /// the next canned reply, then closes after the last.
    async fn upstream(replies: Vec<&'static [u8]>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
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
        address
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
        let address = upstream(vec![
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
        let address = upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let pool = Arc::new(DirectPool::default());
        assert!(get(&pool, address).await.is_err(), "five bytes of ten, then a close");

        let address = upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let (status, _, _) = get(&pool, address).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // The upstream closed after its one reply: the pooled connection is
        // found closed (or fails before a response and the GET goes again
        // on a fresh connection, which is refused).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = get(&pool, address).await.unwrap_err();
        assert!(error.downcast_ref::<UpstreamError>().is_some_and(UpstreamError::is_connect), "{error}");
    }

    #[tokio::test]
    async fn malformed_responses_are_protocol_errors() {
        let flood: &'static [u8] = "HTTP/1.1 100 Continue\r\n\r\n".repeat(2000).leak().as_bytes();
        for reply in [&b"HTTP/1.1 2xx Nope\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", flood] {
            let address = upstream(vec![reply]).await;
            let pool = Arc::new(DirectPool::default());
            let error = get(&pool, address).await.unwrap_err();
            assert!(matches!(error.downcast_ref::<UpstreamError>(), Some(UpstreamError::Protocol(_))), "{error}");
        }
    }

    #[test]
    fn decimals_are_written_and_read_back() {
        for n in [0, 7, 10, 1024, 99_999, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
            assert_eq!(parse_decimal(&out[1..]), Some(n));
        }
    }

    #[test]
    fn decimal_lengths_and_hex_chunk_sizes_are_strict() {
        assert_eq!(parse_decimal(b" 42\t"), Some(42));
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
        assert!(drain_chunked(buffer(b"+5\r\nhello\r\n0\r\n\r\n")).is_err());
    }
}
