//! Header helpers for forwarding: the request's authority, and the
//! connection-scoped fields that never cross the proxy.

use crate::proxy::header_names::{KEEP_ALIVE, PROXY_CONNECTION};
use crate::proxy::http1::common::{parse_decimal, tokens};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::Version;

/// The request's authority: the URI's (HTTP/2, absolute form) or Host's,
/// a copy that shares the request's memory when it is Host's.
pub fn authority_of(parts: &Parts) -> HeaderValue {
    match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).unwrap_or(HeaderValue::from_static("")),
        None => parts.headers.get(HOST).cloned().unwrap_or(HeaderValue::from_static("")),
    }
}

pub fn set_authority(parts: &mut Parts, authority: &str) {
    if let Ok(value) = HeaderValue::from_str(authority) {
        parts.headers.insert(HOST, value);
    }
}

/// Why a request cannot go on as the client framed it, if it cannot: an
/// HTTP/1.x request with more than one Host, an HTTP/1.1 one with none,
/// or one whose absolute-form target names another authority (RFC 9112
/// §3.2: a server answers 400; nginx and Envoy do, so the upstream never
/// sees a Host the routing did not).
pub fn host_problem(parts: &Parts) -> Option<&'static str> {
    if parts.version >= Version::HTTP_2 {
        return None; // `:authority` is the host
    }
    let mut hosts = parts.headers.get_all(HOST).iter();
    let Some(host) = hosts.next() else {
        return (parts.version == Version::HTTP_11).then_some("missing Host header");
    };
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match parts.uri.authority() {
        Some(target) if !target.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes()) => {
            Some("Host header disagrees with the request target")
        }
        _ => None,
    }
}

/// A body's size as its Content-Length declares it (0 when streamed).
pub fn declared_length(headers: &HeaderMap) -> u64 {
    headers.get(CONTENT_LENGTH).and_then(|v| parse_decimal(v.as_bytes())).unwrap_or(0)
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

    #[test]
    fn http1_requests_need_one_host_that_agrees_with_the_target() {
        let parts = |request: http::request::Builder| request.body(()).unwrap().into_parts().0;
        let get = |uri: &str| http::Request::get(uri).version(Version::HTTP_11);
        assert_eq!(host_problem(&parts(get("/").header("host", "a"))), None);
        assert_eq!(host_problem(&parts(get("/"))), Some("missing Host header"));
        assert_eq!(host_problem(&parts(get("/").version(Version::HTTP_10))), None, "HTTP/1.0 may omit it");
        let two = get("/").header("host", "a").header("host", "b");
        assert_eq!(host_problem(&parts(two)), Some("more than one Host header"));
        assert_eq!(host_problem(&parts(get("http://A:80/").header("host", "a:80"))), None);
        let other = get("http://a/").header("host", "b");
        assert_eq!(host_problem(&parts(other)), Some("Host header disagrees with the request target"));
        assert_eq!(host_problem(&parts(get("http://a/").version(Version::HTTP_2))), None);
    }

    #[test]
    fn the_authority_is_the_uris_or_hosts() {
        let (parts, ()) =
            http::Request::get("http://a.example/x").header("host", "b.example").body(()).unwrap().into_parts();
        assert_eq!(authority_of(&parts), "a.example");
        let (mut parts, ()) = http::Request::get("/x").header("host", "b.example").body(()).unwrap().into_parts();
        assert_eq!(authority_of(&parts), "b.example");
        set_authority(&mut parts, "c.example:8080");
        assert_eq!(authority_of(&parts), "c.example:8080");
        assert_eq!(declared_length(&parts.headers), 0);
    }
}
