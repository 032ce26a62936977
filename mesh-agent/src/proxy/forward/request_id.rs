//! `x-request-id`: the client's, or a new version 4 UUID.

use crate::proxy::header_names::REQUEST_ID;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

/// Keeps the client's request id, or makes one (122 random bits, the UUID
/// form Envoy uses).
///
/// The id is marked sensitive, which only HPACK heeds: a value no other
/// request shares is not worth a place in an HTTP/2 peer's dynamic table,
/// where each one evicts a useful entry and makes every later lookup of
/// the name walk past it (a tenth of the proxy's time on h2 -> h2 before).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get_mut(&REQUEST_ID) {
        id.set_sensitive(true);
        return id.clone();
    }
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text);
    let mut value = HeaderValue::from_maybe_shared(id_bytes(&text)).unwrap_or_else(|_| HeaderValue::from_static("-"));
    value.set_sensitive(true);
    headers.insert(REQUEST_ID.clone(), value.clone());
    value
}

/// A request id's bytes, cut from a per-thread block shared by many ids:
/// no allocation per id, and copies of it (request, response, log) only
/// count references.
fn id_bytes(id: &[u8; 36]) -> Bytes {
    use std::cell::RefCell;
    const BLOCK: usize = 36 * 512;
    thread_local! {
        static BLOCK_LEFT: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    BLOCK_LEFT.with(|left| {
        let mut left = left.borrow_mut();
        if left.capacity() < id.len() {
            *left = bytes::BytesMut::with_capacity(BLOCK);
        }
        left.extend_from_slice(id);
        left.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let mut headers = HeaderMap::new();
        let id = ensure_request_id(&mut headers);
        let text = id.to_str().unwrap();
        let parsed = uuid::Uuid::parse_str(text).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random), "{text}");
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{text}");
        assert_eq!(text, text.to_ascii_lowercase());
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
        assert_eq!(ensure_request_id(&mut headers), id, "a present id is kept");
        assert!(id.is_sensitive() && headers[&REQUEST_ID].is_sensitive(), "kept out of HPACK tables");
        let mut sent = HeaderMap::new();
        sent.insert(&REQUEST_ID, HeaderValue::from_static("from-the-client"));
        assert!(ensure_request_id(&mut sent).is_sensitive() && sent[&REQUEST_ID].is_sensitive());
    }
}
