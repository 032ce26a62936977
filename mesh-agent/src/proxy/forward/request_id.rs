//! `x-request-id`: the client's, or a new version 4 UUID.

use crate::proxy::header_names::REQUEST_ID;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};

/// Keeps the client's request id, or makes one (122 random bits, the UUID
/// form Envoy uses).
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID) {
        return id.clone();
    }
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text);
    let value = HeaderValue::from_maybe_shared(id_bytes(&text)).unwrap_or_else(|_| HeaderValue::from_static("-"));
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
    }
}
