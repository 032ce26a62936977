//! The HTTP/1.1 rules both directions use (after pingora's `v1/common.rs`):
//! how a message's body is framed (RFC 9112 §6), the tokens of
//! `Connection` and the connection-scoped fields that never cross the
//! proxy (RFC 9110 §7.6.1), the limits on a head, the spans of a
//! parsed head's fields, and decimal numbers without the formatting
//! machinery. The server side ([`super::server`]) and the client side
//! ([`super::client`]) both read and write messages with these.

use crate::proxy::header_names::{KEEP_ALIVE, PROXY_CONNECTION};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE};

/// A message head (request or response) larger than this is refused:
/// 431 for a client's request, a malformed response from an upstream.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Fields in one head, both directions (hyper's default).
pub const MAX_FIELDS: usize = 100;

/// How a message's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body by the message's nature: a response to HEAD, a 1xx, 204
    /// or 304. Written with no length field.
    Empty,
    /// This many bytes.
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// What the framing of a message depends on besides its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Request,
    Response {
        status: u16,
        /// The request was a HEAD.
        to_head: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid content-length")]
    InvalidLength,
    #[error("conflicting content-length values")]
    ConflictingLengths,
    /// A request whose last transfer coding is not chunked: its length
    /// cannot be known (RFC 9112 §6.3, 400).
    #[error("transfer-encoding whose last coding is not chunked")]
    UnknownLength,
}

/// RFC 9112 §6.3: how the body of a message with these fields (name,
/// value) ends. Transfer-Encoding wins over Content-Length; chunked must
/// be the last coding (else a response runs to the close and a request is
/// an error); every Content-Length value must agree.
pub fn body_framing<'a>(
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    message: Message,
) -> Result<Framing, FramingError> {
    if let Message::Response { status, to_head } = message {
        if to_head || bodiless_status(status) {
            return Ok(Framing::Empty);
        }
    }
    // Content-Length only counts without Transfer-Encoding: its errors are
    // kept until that is known.
    let mut length: Result<Option<u64>, FramingError> = Ok(None);
    let mut last_coding: Option<&[u8]> = None;
    let mut transfer_encoded = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoded = true;
            if let Some(coding) = tokens(value).last() {
                last_coding = Some(coding);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            length = length.and_then(|known| content_length(value, known));
        }
    }
    if transfer_encoded {
        return match (last_coding, message) {
            (Some(coding), _) if coding.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            (_, Message::Request) => Err(FramingError::UnknownLength),
            (_, Message::Response { .. }) => Ok(Framing::UntilClose),
        };
    }
    Ok(match (length?, message) {
        (Some(length), _) => Framing::Length(length),
        (None, Message::Request) => Framing::Length(0),
        (None, Message::Response { .. }) => Framing::UntilClose,
    })
}

/// Statuses whose responses never have a body (RFC 9112 §6.3): 1xx, 204
/// and 304.
pub fn bodiless_status(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// The length a Content-Length value says (`7` or `7, 7`), which must
/// agree with the one already `known`.
fn content_length(value: &[u8], known: Option<u64>) -> Result<Option<u64>, FramingError> {
    let mut length = known;
    for item in value.split(|&b| b == b',') {
        let item = parse_decimal(item).ok_or(FramingError::InvalidLength)?;
        if length.is_some_and(|known| known != item) {
            return Err(FramingError::ConflictingLengths);
        }
        length = Some(item);
    }
    Ok(length)
}

/// [`body_framing`] of a header map.
pub fn framing_of(headers: &HeaderMap, message: Message) -> Result<Framing, FramingError> {
    body_framing(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())), message)
}

/// The tokens of a comma-separated field value (`Connection`,
/// `Transfer-Encoding`), trimmed, empty ones left out.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
}

/// Whether any `name` field holds `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().flat_map(|v| tokens(v.as_bytes())).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Connection-scoped headers are not forwarded (RFC 9110 §7.6.1), nor
/// those `Connection` names; `te: trailers` is end to end (gRPC needs it).
/// A Transfer-Encoding with codings besides `chunked` (`gzip, chunked`) is
/// kept as sent: the next HTTP/1.1 hop frames it with its last coding, and
/// the others are the body's.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names (standard ones
    // compare as numbers) spares the lookups below.
    let hop_by_hop = [&CONNECTION, &TE, &TRANSFER_ENCODING, &UPGRADE, &KEEP_ALIVE, &PROXY_CONNECTION];
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: the coding framed the message, not the length, and
        // the next hop frames it anew.
        headers.remove(CONTENT_LENGTH);
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|value| tokens(value.as_bytes()))
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    let te_trailers = headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let only_chunked = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| tokens(value.as_bytes()))
        .all(|coding| coding.eq_ignore_ascii_case(b"chunked"));
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &TE, &UPGRADE] {
        headers.remove(name);
    }
    if only_chunked {
        headers.remove(TRANSFER_ENCODING);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// A Content-Length value: ASCII digits only (no sign, no other spaces
/// than the optional whitespace around it), as hyper takes it.
pub fn parse_decimal(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &digit| n.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

/// `n` in decimal, without the formatting machinery.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
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

/// Where each parsed field's name and value sit in a head, as offsets
/// from its start, while the head leaves its read buffer, so the values
/// can be slices of it. Sized to the fields a message has (reused by the
/// next message of the connection): an inline array of the most a head
/// may have would weigh on every connection's task, idle ones too.
#[derive(Default)]
pub struct FieldSpans {
    /// Name start and length, value start and length.
    spans: Vec<[u32; 4]>,
}

impl FieldSpans {
    pub fn new() -> Self {
        FieldSpans::default()
    }

    /// The fields httparse found in the buffer that starts at `base`
    /// (heads are far below 4 GiB).
    pub fn record(&mut self, fields: &[httparse::Header<'_>], base: usize) {
        self.spans.clear();
        self.spans.extend(fields.iter().take(MAX_FIELDS).map(|field| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            [name as u32, field.name.len() as u32, value as u32, field.value.len() as u32]
        }));
    }

    /// The header map of `head` (the bytes the spans were recorded in,
    /// frozen), whose values share its memory.
    pub fn header_map(&self, head: &Bytes) -> Result<HeaderMap, http::Error> {
        // Room for the few fields the proxy may add (the request id, Host
        // or Set-Cookie), so the map does not grow and rehash for them.
        let mut headers = HeaderMap::with_capacity(self.spans.len() + 2);
        for &[name, name_length, value, value_length] in &self.spans {
            let name = HeaderName::from_bytes(&head[name as usize..(name + name_length) as usize])?;
            let value = head.slice(value as usize..(value + value_length) as usize);
            headers.append(name, HeaderValue::from_maybe_shared(value)?);
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go_and_a_coded_message_loses_its_length() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);

        let mut headers = HeaderMap::new();
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers[TRANSFER_ENCODING], "gzip, chunked", "the body's own coding is kept");
        assert!(headers.get(CONTENT_LENGTH).is_none());
    }

    fn framing(pairs: &[(&str, &str)], message: Message) -> Result<Framing, FramingError> {
        body_framing(pairs.iter().map(|(n, v)| (*n, v.as_bytes())), message)
    }

    const OK: Message = Message::Response { status: 200, to_head: false };

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(framing(&[("content-length", "12")], OK), Ok(Framing::Length(12)));
        let head = Message::Response { status: 200, to_head: true };
        assert_eq!(framing(&[("content-length", "12")], head), Ok(Framing::Empty), "HEAD has no body");
        for status in [101, 204, 304] {
            assert_eq!(
                framing(&[("content-length", "12")], Message::Response { status, to_head: false }),
                Ok(Framing::Empty)
            );
        }
        let chunked = [("transfer-encoding", "gzip, chunked"), ("content-length", "12")];
        assert_eq!(framing(&chunked, OK), Ok(Framing::Chunked), "chunked last wins over the length");
        let bad_length = [("transfer-encoding", "chunked"), ("content-length", "abc"), ("content-length", "5")];
        assert_eq!(framing(&bad_length, OK), Ok(Framing::Chunked), "a length that does not count cannot be wrong");
        let gzip = [("transfer-encoding", "chunked"), ("transfer-encoding", "gzip")];
        assert_eq!(framing(&gzip, OK), Ok(Framing::UntilClose));
        assert_eq!(framing(&[], OK), Ok(Framing::UntilClose));
        assert_eq!(framing(&[("content-length", "7, 7")], OK), Ok(Framing::Length(7)));
        assert_eq!(
            framing(&[("content-length", "7"), ("content-length", "8")], OK),
            Err(FramingError::ConflictingLengths)
        );
        assert_eq!(framing(&[("content-length", "-1")], OK), Err(FramingError::InvalidLength));
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let request = Message::Request;
        assert_eq!(framing(&[], request), Ok(Framing::Length(0)), "no framing: no body");
        assert_eq!(framing(&[("Content-Length", " 5 ")], request), Ok(Framing::Length(5)));
        assert_eq!(framing(&[("Transfer-Encoding", "chunked")], request), Ok(Framing::Chunked));
        assert_eq!(framing(&[("transfer-encoding", "chunked, gzip")], request), Err(FramingError::UnknownLength));
        assert_eq!(framing(&[("content-length", "+5")], request), Err(FramingError::InvalidLength));
    }

    #[test]
    fn connection_tokens_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.append(http::header::CONNECTION, HeaderValue::from_static(" ,close"));
        assert!(has_token(&headers, &http::header::CONNECTION, "upgrade"));
        assert!(has_token(&headers, &http::header::CONNECTION, "close"));
        assert!(!has_token(&headers, &http::header::CONNECTION, "te"));
        let found: Vec<&[u8]> = tokens(b" a ,, b").collect();
        assert_eq!(found, [&b"a"[..], b"b"]);
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
    fn decimal_lengths_are_strict() {
        assert_eq!(parse_decimal(b" 42\t"), Some(42));
        for bad in [&b""[..], b"+1", b"-1", b"1 2", b"0x10", b"99999999999999999999"] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
