//! Header helpers for forwarding: the request's authority, and the
//! connection-scoped fields that never cross the proxy.

use crate::proxy::header_names::{KEEP_ALIVE, PROXY_CONNECTION};
use crate::proxy::http1::common::{parse_decimal, tokens};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;

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

/// A body's size as its Content-Length declares it (0 when streamed).
pub fn declared_length(headers: &HeaderMap) -> u64 {
    headers.get(CONTENT_LENGTH).and_then(|v| parse_decimal(v.as_bytes())).unwrap_or(0)
}

/// Connection-scoped headers are not forwarded (RFC 9110 §7.6.1), nor
/// those `Connection` names; `te: trailers` is end to end (gRPC needs it).
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
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &TE, &TRANSFER_ENCODING, &UPGRADE] {
        headers.remove(name);
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
