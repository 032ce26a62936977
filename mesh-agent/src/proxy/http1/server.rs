//! The client side of a captured HTTP connection. Plain HTTP/1.1 requests
//! (a complete head, no body or a short one of declared length, nothing
//! that switches protocols or waits for `100 Continue`) are served here on
//! the connection's own task: the head is parsed out of one read buffer,
//! header values share its memory, and the response goes out in one write
//! when it is all at hand. The first request that is anything else (HTTP/2,
//! HTTP/1.0, chunked or long bodies, upgrades, malformed or oversized heads)
//! hands the connection, with the bytes already read, to hyper's server for
//! the rest of its life, which answers 400 and 431 and serves the rest.

use super::chunked::{write_chunk_header, LAST_CHUNK};
use super::common::{
    bodiless_status, body_framing, parse_decimal, push_decimal, tokens, FieldSpans, Framing, Message, MAX_FIELDS,
    MAX_HEAD_BYTES,
};
use crate::proxy::body::{BoxError, ClientBody, ProxyBody};
use crate::proxy::drain::Held;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Room made in the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// Room made for a response head at once (not grown from nothing).
const WRITE_RESERVE: usize = 4 * 1024;
/// A request body up to this size is read here; longer ones go to hyper.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Response bytes gathered before a write.
const WRITE_GATHER_BYTES: usize = 64 * 1024;

/// How serving a connection here ended.
pub enum Served<IO> {
    /// The connection is done (closed by either side, or broken).
    Closed,
    /// The next request is not one for this path: hyper takes the
    /// connection, with what was read of that request.
    HandOff(Rewind<IO>),
}

/// A client connection this path serves: a TCP stream, or TLS over one.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// Ready when the client has sent something (or closed): an idle
    /// connection waits here holding no read buffer. TLS reads its records
    /// into its own buffer anyway, so it is always "ready".
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// `poll_readable` really waits: buffers let go while idle are not
    /// taken again at once. (TLS would take them back for every request.)
    const WAITS_READABLE: bool = false;

    /// While a request is handled: what the client sends (appended to
    /// `read`; 0 when it shut its sending side down), Pending while it
    /// sends nothing.
    fn poll_client(&mut self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<std::io::Result<usize>>;
}

impl ClientIo for TcpStream {
    const WAITS_READABLE: bool = true;

    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }

    /// Only readiness is watched: no room is made in the buffer (whose
    /// front the request may still hold) unless the client sends.
    fn poll_client(&mut self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_read_ready(cx))?;
            read.reserve(READ_RESERVE);
            match self.try_read_buf(read) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ClientIo for tokio_rustls::server::TlsStream<IO> {
    /// Records must be decrypted to tell data from a close: they are read.
    fn poll_client(&mut self, cx: &mut Context<'_>, read: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        read.reserve(READ_RESERVE);
        tokio_util::io::poll_read_buf(Pin::new(self), cx, read)
    }
}

/// A request head found at the front of the read buffer.
enum Head {
    /// A plain request; its fields' spans are recorded beside it.
    Plain(PlainHead),
    /// Not complete yet.
    Partial,
    /// Anything hyper must see.
    Other,
}

/// Where a plain request's parts lie at the front of the read buffer.
struct PlainHead {
    head_length: usize,
    body_length: usize,
    method: Range<usize>,
    path: Range<usize>,
    /// `Connection: close`: the response is the connection's last.
    close: bool,
}

/// Serves plain HTTP/1.1 requests with `handle` until the connection ends or
/// a request is not plain. The header timeout runs from the moment a request
/// is awaited (a keep-alive connection's idle time counts, as with hyper).
pub async fn serve<IO, H, F>(mut io: IO, header_timeout: Duration, held: &mut Held, handle: H) -> Served<IO>
where
    IO: ClientIo,
    H: Fn(Request<ClientBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    // Allocated when the client sends, and let go while it is idle: an
    // idle keep-alive connection holds no buffer.
    let mut read = BytesMut::new();
    let mut write = Vec::new();
    let mut fields = FieldSpans::new();
    // One timer for the connection's life, moved on only when it fires: a
    // timer set and cleared for every request costs more than its parsing.
    let mut waiting_since = Instant::now();
    let mut idle = std::pin::pin!(tokio::time::sleep_until(waiting_since + header_timeout));
    loop {
        waiting_since = Instant::now();
        let plain = loop {
            match plain_head(&read, &mut fields) {
                Head::Plain(plain) => break plain,
                Head::Other => return Served::HandOff(Rewind { prefix: read.freeze(), io }),
                Head::Partial => {}
            }
            tokio::select! {
                biased;
                received = read_some(&mut io, &mut read) => match received {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
                // Draining does not close an idle connection here: closing
                // it races a request the client may be sending. Its next
                // request is served with `Connection: close`; one that
                // never comes is closed when the drain ends.
                () = idle.as_mut() => {
                    let deadline = waiting_since + header_timeout;
                    if Instant::now() >= deadline {
                        return Served::Closed;
                    }
                    idle.as_mut().reset(deadline);
                }
            }
        };
        // The body's bytes must keep coming, as nginx's client_body_timeout.
        let whole = plain.head_length + plain.body_length;
        while read.len() < whole {
            read.reserve(whole - read.len());
            match tokio::time::timeout(header_timeout, io.read_buf(&mut read)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Served::Closed,
                Ok(Ok(_)) => {}
            }
        }
        let head = read.split_to(plain.head_length).freeze();
        let body = read.split_to(plain.body_length).freeze();
        let Some(request) = build_request(&plain, &fields, head, body) else {
            // httparse let through what `http` refuses: answered here, as
            // hyper would, and the connection ends.
            let _ = io.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            return Served::Closed;
        };
        let head_only = request.method() == Method::HEAD;
        // Boxed: the handler's future is large, and held only while the
        // request is; an idle connection's future stays small.
        let mut handling = Box::pin(handle(request));
        let mut half_closed = false;
        let response = match read.is_empty() {
            true => match until_client_leaves(&mut io, &mut read, &mut half_closed, handling.as_mut()).await {
                Some(response) => response,
                // The client is gone: the request is dropped, with its
                // upstream exchange and its admission, as hyper does.
                None => return Served::Closed,
            },
            // A pipelined request is next: the client is still there.
            false => handling.await,
        };
        // A client that closed its sending side still reads: it gets its
        // response, and the connection ends with it.
        let last = plain.close || half_closed || held.draining();
        if write_response(&mut io, &mut write, response, head_only, last).await.is_err() || last {
            return Served::Closed;
        }
        // Nothing more sent yet: the connection goes idle without buffers.
        if read.is_empty() && IO::WAITS_READABLE {
            read = BytesMut::new();
            write = Vec::new();
            fields = FieldSpans::new();
        }
    }
}

/// Reads what the client sends next into `read`; while `read` is empty,
/// room is made only once the client has sent something.
async fn read_some<IO: ClientIo>(io: &mut IO, read: &mut BytesMut) -> std::io::Result<usize> {
    if read.is_empty() {
        std::future::poll_fn(|cx| io.poll_readable(cx)).await?;
    }
    read.reserve(READ_RESERVE);
    io.read_buf(read).await
}

/// What woke a connection whose request is being handled.
enum Woken {
    Answered(Response<ProxyBody>),
    /// The client sent something (0 bytes: it closed its sending side), or
    /// the connection broke.
    Sent(std::io::Result<usize>),
}

/// The handler's response, or None when the client resets the connection
/// first. Bytes the client sends meanwhile (a pipelined request) are kept.
/// A client that only shuts its sending side down (`half_closed` is set)
/// may still be reading: its response is awaited.
async fn until_client_leaves<IO: ClientIo, F: Future<Output = Response<ProxyBody>>>(
    io: &mut IO,
    read: &mut BytesMut,
    half_closed: &mut bool,
    mut handling: Pin<&mut F>,
) -> Option<Response<ProxyBody>> {
    let woken = std::future::poll_fn(|cx| match handling.as_mut().poll(cx) {
        Poll::Ready(response) => Poll::Ready(Woken::Answered(response)),
        Poll::Pending => io.poll_client(cx, read).map(Woken::Sent),
    })
    .await;
    match woken {
        Woken::Answered(response) => Some(response),
        Woken::Sent(Err(_)) => None,
        Woken::Sent(Ok(sent)) => {
            *half_closed = sent == 0;
            Some(handling.await)
        }
    }
}

/// Whether the buffer starts with a whole plain request head, where its
/// parts are and the length of its body; its fields go into `fields`.
fn plain_head(read: &[u8], fields: &mut FieldSpans) -> Head {
    if read.is_empty() {
        return Head::Partial;
    }
    // Slots left uninitialised: filling them would cost more than parsing.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let head_length = match request.parse_with_uninit_headers(read, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD_BYTES => return Head::Partial,
        _ => return Head::Other,
    };
    let (Some(method), Some(path)) = (request.method, request.path) else { return Head::Other };
    if head_length > MAX_HEAD_BYTES || request.version != Some(1) || method == "CONNECT" || !path.starts_with('/') {
        return Head::Other;
    }
    let mut close = false;
    let mut lengths = 0;
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            return Head::Other;
        }
        // Repeated lengths (`7, 7`, or two fields) are hyper's to judge: the
        // request would carry them on to the upstream as they are.
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if lengths > 1 || field.value.contains(&b',') {
                return Head::Other;
            }
        }
        if name.eq_ignore_ascii_case("connection") {
            close |= tokens(field.value).any(|token| token.eq_ignore_ascii_case(b"close"));
        }
    }
    // Chunked, unknown or long bodies: hyper reads (or refuses) them.
    let named = request.headers.iter().map(|field| (field.name, field.value));
    let body_length = match body_framing(named, Message::Request) {
        Ok(Framing::Length(length)) if length <= MAX_BODY_BYTES => length,
        _ => return Head::Other,
    };
    let base = read.as_ptr() as usize;
    fields.record(request.headers, base);
    let span = |part: &str| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    Head::Plain(PlainHead {
        head_length,
        body_length: body_length as usize,
        method: span(method),
        path: span(path),
        close,
    })
}

/// The request from its head and body bytes (header values and the path
/// are slices of the head). None when `http` refuses a part.
fn build_request(plain: &PlainHead, fields: &FieldSpans, head: Bytes, body: Bytes) -> Option<Request<ClientBody>> {
    let method = Method::from_bytes(&head[plain.method.clone()]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(plain.path.clone())).ok()?;
    let headers = fields.header_map(&head).ok()?;
    let mut request = Request::new(ClientBody::Read(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// Writes the response: the head and as much body as is at hand go out
/// together; a body that streams is written as it comes. The framing
/// fields are the proxy's own, written with the head (the map is not
/// touched). An error means the connection cannot carry another response.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    write: &mut Vec<u8>,
    response: Response<ProxyBody>,
    head_only: bool,
    close: bool,
) -> Result<(), BoxError> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = bodiless_status(status.as_u16());
    // Whether the map's Content-Length is sent as it is, and the framing.
    let (keep_length, framing) = if bodiless {
        // A 304 may carry the length of what it validates; the others none.
        (status == StatusCode::NOT_MODIFIED, Framing::Empty)
    } else if head_only {
        // HEAD keeps the length the upstream declared, and sends no body;
        // a local answer says the length its body would have.
        let length = body.size_hint().exact().filter(|&n| n > 0 && !parts.headers.contains_key(CONTENT_LENGTH));
        (true, length.map_or(Framing::Empty, Framing::Length))
    } else {
        let length = body
            .size_hint()
            .exact()
            .or_else(|| parts.headers.get(CONTENT_LENGTH).and_then(|value| parse_decimal(value.as_bytes())));
        (false, length.map_or(Framing::Chunked, Framing::Length))
    };

    write.clear();
    write.reserve(WRITE_RESERVE);
    write.extend_from_slice(b"HTTP/1.1 ");
    write.extend_from_slice(status.as_str().as_bytes());
    write.push(b' ');
    write.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    write.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && !keep_length) || (close && name == CONNECTION) {
            continue;
        }
        has_date |= name == DATE;
        write.extend_from_slice(name.as_str().as_bytes());
        write.extend_from_slice(b": ");
        write.extend_from_slice(value.as_bytes());
        write.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(length) => {
            write.extend_from_slice(b"content-length: ");
            push_decimal(write, length);
            write.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => write.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
    if close {
        write.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        write.extend_from_slice(b"date: ");
        write_http_date(write);
        write.extend_from_slice(b"\r\n");
    }
    write.extend_from_slice(b"\r\n");
    let mut left = match framing {
        Framing::Length(length) if !head_only => length,
        Framing::Chunked => u64::MAX,
        // No body follows (a HEAD's length is said all the same).
        _ => return send(io, write).await,
    };
    let chunked = matches!(framing, Framing::Chunked);
    loop {
        // What is ready now joins the buffer; before waiting for more, the
        // buffer goes out, so a streamed body is never held back.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                send(io, write).await?;
                write.clear();
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(frame) => match frame?.into_data() {
                Ok(data) => data,
                // HTTP/1.1 trailers would need the client to have asked.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            write_chunk_header(write, data.len());
        } else {
            left = left.checked_sub(data.len() as u64).ok_or("response body longer than its content-length")?;
        }
        if write.len() + data.len() <= WRITE_GATHER_BYTES {
            write.extend_from_slice(&data);
        } else {
            io.write_all(write).await?;
            write.clear();
            io.write_all(&data).await?;
        }
        if chunked {
            write.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        write.extend_from_slice(LAST_CHUNK);
    } else if left != 0 {
        io.write_all(write).await?;
        return Err("response body shorter than its content-length".into());
    }
    send(io, write).await
}

/// Writes `bytes` and flushes them (TLS holds what it has not sent).
async fn send<IO: AsyncWrite + Unpin>(io: &mut IO, bytes: &[u8]) -> Result<(), BoxError> {
    io.write_all(bytes).await?;
    io.flush().await?;
    Ok(())
}

/// The Date header's value, formatted once a second per thread.
fn write_http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    })
}

/// A connection with bytes already read from it in front.
pub struct Rewind<IO = TcpStream> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Self {
        Rewind { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(in crate::proxy) mod tests {
    use super::*;
    use crate::proxy::drain::Drain;
    use http_body_util::BodyExt;

    /// What `plain_head` makes of a buffer.
    fn head_of(text: &[u8]) -> Head {
        plain_head(text, &mut FieldSpans::new())
    }

    #[test]
    fn plain_requests_are_told_from_the_rest() {
        let plain = |text: &str| match head_of(text.as_bytes()) {
            Head::Plain(plain) => Some((plain.head_length, plain.body_length)),
            _ => None,
        };
        assert_eq!(plain("GET / HTTP/1.1\r\nhost: a\r\n\r\n"), Some((27, 0)));
        assert_eq!(plain("POST /x HTTP/1.1\r\ncontent-length: 3\r\n\r\nab"), Some((39, 3)));
        assert!(matches!(head_of(b"GET / HTTP/1.1\r\nhost: a\r\n"), Head::Partial));
        assert!(matches!(head_of(b""), Head::Partial));
        for other in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 9999999\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(matches!(head_of(other.as_bytes()), Head::Other), "{other}");
        }
    }

    #[test]
    fn requests_are_built_on_the_head_bytes() {
        let head = Bytes::from_static(b"PUT /a?b=1 HTTP/1.1\r\nHost: web\r\nx-a: 1\r\nConnection: a, Close\r\n\r\n");
        let mut fields = FieldSpans::new();
        let Head::Plain(plain) = plain_head(&head, &mut fields) else { panic!("a plain head") };
        assert!(plain.close, "Connection: close is seen among other tokens");
        let request = build_request(&plain, &fields, head, Bytes::from_static(b"xyz")).unwrap();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(request.headers()["host"], "web");
        assert_eq!(request.headers()["x-a"], "1");
        assert_eq!(request.headers().len(), 3);
        assert!(matches!(request.body(), ClientBody::Read(body) if &body[..] == b"xyz"));
    }

    /// Runs `serve` on one accepted loopback connection with a handler that
    /// answers `reply(request)`, and returns the client end.
    async fn connection_served_by(
        reply: fn(&Request<ClientBody>) -> Response<ProxyBody>,
    ) -> (TcpStream, tokio::task::JoinHandle<Served<TcpStream>>) {
        connection_served_within(Duration::from_secs(5), reply).await
    }

    /// The same, with `header_timeout`.
    async fn connection_served_within(
        header_timeout: Duration,
        reply: fn(&Request<ClientBody>) -> Response<ProxyBody>,
    ) -> (TcpStream, tokio::task::JoinHandle<Served<TcpStream>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let task = tokio::spawn(async move {
            let drain = Drain::default();
            let mut held = drain.hold();
            serve(server, header_timeout, &mut held, move |request| {
                let response = reply(&request);
                async move { response }
            })
            .await
        });
        (client, task)
    }

    async fn read_until(client: &mut TcpStream, end: &[u8]) -> String {
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !seen.windows(end.len()).any(|w| w == end) {
            let n = client.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8(seen).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_get_framed_responses_in_order_and_close_is_honoured() {
        let (mut client, task) = connection_served_by(|request| {
            let text = format!("{} {}", request.method(), request.uri());
            Response::new(http_body_util::Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
        })
        .await;
        client
            .write_all(b"GET /one HTTP/1.1\r\nhost: a\r\n\r\nHEAD /two HTTP/1.1\r\nhost: a\r\n\r\nGET /three HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        let responses: Vec<&str> = all.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
        assert_eq!(responses.len(), 3, "{all}");
        assert!(responses[0].contains("content-length: 8\r\n") && responses[0].ends_with("\r\n\r\nGET /one"), "{all}");
        assert!(responses[1].contains("content-length: 9\r\n") && responses[1].ends_with("\r\n\r\n"), "HEAD: {all}");
        assert!(responses[2].contains("connection: close\r\n") && responses[2].ends_with("GET /three"), "{all}");
        assert!(responses[0].contains("date: "), "{all}");
        assert!(matches!(task.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn the_header_timeout_counts_from_each_wait_for_a_request() {
        let (mut client, task) = connection_served_within(Duration::from_millis(300), |_| {
            Response::new(crate::proxy::body::full(Bytes::new()))
        })
        .await;
        // Three requests 200 ms apart: each within the timeout of its own
        // wait, all together past the connection's first deadline.
        for _ in 0..3 {
            client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
            read_until(&mut client, b"content-length: 0\r\n").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Then idle past it: the connection is closed.
        let served = tokio::time::timeout(Duration::from_secs(2), task).await.expect("cut after the timeout").unwrap();
        assert!(matches!(served, Served::Closed));
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// A body of unknown length whose parts arrive over time.
    pub(in crate::proxy) struct Streamed(pub tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Streamed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|part| part.map(|data| Ok(hyper::body::Frame::data(data))))
        }
    }

    #[tokio::test]
    async fn a_streamed_body_is_chunked() {
        let (mut client, _task) = connection_served_by(|_| {
            let (sender, receiver) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                for part in ["ab", "cde"] {
                    sender.send(Bytes::from_static(part.as_bytes())).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            Response::new(Streamed(receiver).boxed())
        })
        .await;
        client.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let text = read_until(&mut client, b"0\r\n\r\n").await;
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let channels = std::sync::Mutex::new(Some((dropped_tx, started_tx)));
        let task = tokio::spawn(async move {
            let drain = Drain::default();
            let mut held = drain.hold();
            serve(server, Duration::from_secs(5), &mut held, move |_| {
                // The guard is held by the handler's future: dropped with it.
                let (guard, started) = channels.lock().unwrap().take().expect("one request");
                let _ = started.send(());
                async move {
                    let _guard = guard;
                    std::future::pending::<Response<ProxyBody>>().await
                }
            })
            .await
        });
        client.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        started_rx.await.expect("the request reached the handler");
        // Reset, not a half-close: a client that only shuts its sending side
        // down still waits for its response.
        client.set_zero_linger().unwrap();
        drop(client);
        let served = tokio::time::timeout(Duration::from_secs(2), task).await.expect("serve ends").unwrap();
        assert!(matches!(served, Served::Closed));
        assert!(dropped_rx.await.is_err(), "the handler's future was dropped");
    }

    #[tokio::test]
    async fn a_half_closed_client_gets_its_response_and_the_connection_ends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // The client ends its sending side while its request is handled (a
        // handler not ready at its first poll, as one waiting on an upstream).
        client.shutdown().await.unwrap();
        server.readable().await.unwrap();
        let handling = std::pin::pin!(async {
            tokio::task::yield_now().await;
            Response::new(crate::proxy::body::full(Bytes::from_static(b"done")))
        });
        let (mut read, mut half_closed) = (BytesMut::new(), false);
        let response = until_client_leaves(&mut server, &mut read, &mut half_closed, handling).await;
        assert!(response.is_some(), "a half-closed client still gets its response");
        assert!(half_closed, "and it is the connection's last");
        // Written as `serve` writes it then: the last, with `connection: close`.
        let mut io = server;
        let mut write = Vec::new();
        write_response(&mut io, &mut write, response.unwrap(), false, half_closed).await.unwrap();
        drop(io);
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n") && all.ends_with("\r\n\r\ndone"), "{all}");
        assert!(all.contains("connection: close\r\n"), "{all}");
    }

    #[test]
    fn content_lengths_are_digits_only() {
        assert!(matches!(head_of(b"POST / HTTP/1.1\r\ncontent-length: +5\r\n\r\n"), Head::Other));
        assert!(matches!(head_of(b"POST / HTTP/1.1\r\ncontent-length: 5\xc2\xa0\r\n\r\n"), Head::Other));
        assert!(matches!(head_of(b"POST / HTTP/1.1\r\ncontent-length:  5 \r\n\r\n"), Head::Plain(_)));
    }

    #[tokio::test]
    async fn other_requests_are_handed_off_with_the_bytes_read() {
        let (mut client, task) = connection_served_by(|_| unreachable!("not served here")).await;
        client.write_all(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n").await.unwrap();
        let Served::HandOff(mut rewind) = task.await.unwrap() else { panic!("expected a hand-off") };
        client.write_all(b"0\r\n\r\n").await.unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"0\r\n\r\n") {
            let mut buffer = [0u8; 256];
            let n = rewind.read(&mut buffer).await.unwrap();
            seen.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(seen, b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    }
}
