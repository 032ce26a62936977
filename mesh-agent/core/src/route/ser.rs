//! Serialization for `meshctl routes` / `/config_dump`: values are shown as
//! an operator would write them (durations as `250ms`, header names as
//! strings), not as the in-memory types that make matching fast.

use http::{HeaderName, HeaderValue};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serializer;
use std::time::Duration;

pub(crate) fn duration<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&format_args!("{value:?}"))
}

pub(crate) fn opt_duration<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => duration(value, serializer),
        None => serializer.serialize_none(),
    }
}

pub(crate) fn header_name<S: Serializer>(value: &HeaderName, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_str())
}

pub(crate) fn header_names<S: Serializer>(values: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for value in values {
        seq.serialize_element(value.as_str())?;
    }
    seq.end()
}

/// Header name/value pairs as a map (values that are not text are shown lossily).
pub(crate) fn header_pairs<S: Serializer>(
    values: &[(HeaderName, HeaderValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(values.len()))?;
    for (name, value) in values {
        map.serialize_entry(name.as_str(), &String::from_utf8_lossy(value.as_bytes()))?;
    }
    map.end()
}

/// A body as text when it is UTF-8, else as its length.
pub(crate) fn bytes<S: Serializer>(value: &bytes::Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(value) {
        Ok(text) => serializer.serialize_str(text),
        Err(_) => serializer.collect_str(&format_args!("<{} bytes>", value.len())),
    }
}
