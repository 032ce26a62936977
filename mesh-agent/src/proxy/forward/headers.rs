//! Header helpers for forwarding: the request's authority and Host.

use crate::proxy::http1::common::parse_decimal;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, HOST};
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

#[cfg(test)]
mod tests {
    use super::*;

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
