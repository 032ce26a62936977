//! The chunked transfer coding (RFC 9112 §7.1): a decoder that takes what
//! a read buffer holds and hands out data frames and trailers as they
//! complete, and the few bytes an encoder writes around each chunk.

use super::common::{MAX_FIELDS, MAX_HEAD_BYTES};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::Frame;

/// A chunk-size line longer than this is not one.
const MAX_CHUNK_LINE: usize = 1024;

/// The end of a chunked body with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkedError(&'static str);

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoder {
    /// At a chunk-size line.
    #[default]
    Size,
    /// In a chunk's data, with this much left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    Done,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Decodes what `read` holds: a data frame, the trailers, or nothing
    /// yet (more bytes needed, or the end reached). Bytes past the body
    /// stay in `read`.
    pub fn decode(&mut self, read: &mut BytesMut) -> Result<Option<Frame<Bytes>>, ChunkedError> {
        loop {
            match *self {
                Decoder::Done => return Ok(None),
                Decoder::Size => {
                    let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
                        return match read.len() > MAX_CHUNK_LINE {
                            true => Err(ChunkedError("chunk-size line too long")),
                            false => Ok(None),
                        };
                    };
                    let line = std::str::from_utf8(&read[..end]).map_err(|_| ChunkedError("chunk-size line"))?;
                    // Chunk extensions (after `;`) carry nothing for a proxy.
                    let digits = line.split(';').next().unwrap_or_default().trim();
                    let hex = !digits.is_empty() && digits.len() <= 16 && digits.bytes().all(|b| b.is_ascii_hexdigit());
                    let size =
                        u64::from_str_radix(digits, 16).ok().filter(|_| hex).ok_or(ChunkedError("chunk size"))?;
                    read.advance(end + 2);
                    *self = if size == 0 { Decoder::Trailers } else { Decoder::Data(size) };
                }
                Decoder::Data(left) => {
                    if read.is_empty() {
                        return Ok(None);
                    }
                    let take = left.min(read.len() as u64) as usize;
                    *self = if take as u64 == left { Decoder::DataEnd } else { Decoder::Data(left - take as u64) };
                    return Ok(Some(Frame::data(read.split_to(take).freeze())));
                }
                Decoder::DataEnd => {
                    if read.len() < 2 {
                        return Ok(None);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(ChunkedError("no CRLF after chunk data"));
                    }
                    read.advance(2);
                    *self = Decoder::Size;
                }
                Decoder::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    let (length, fields) = match httparse::parse_headers(read, &mut slots) {
                        Ok(httparse::Status::Complete(parsed)) => parsed,
                        Ok(httparse::Status::Partial) if read.len() <= MAX_HEAD_BYTES => return Ok(None),
                        _ => return Err(ChunkedError("trailer section")),
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
                    *self = Decoder::Done;
                    return Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers)));
                }
            }
        }
    }
}

/// Writes the size line of a chunk of `length` bytes (the data and a CRLF
/// follow it).
pub fn write_chunk_header(out: &mut Vec<u8>, length: usize) {
    use std::io::Write;
    let _ = write!(out, "{length:x}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    fn drain(mut read: BytesMut) -> Result<(Vec<u8>, Option<HeaderMap>, Decoder, BytesMut), ChunkedError> {
        let mut decoder = Decoder::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = decoder.decode(&mut read)? {
            match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers, decoder, read))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, decoder, rest) =
            drain(buffer(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\n\r\nNEXT")).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        assert!(decoder.is_done());
        assert_eq!(&rest[..], b"NEXT", "bytes past the body stay in the buffer");
    }

    #[test]
    fn decoding_waits_for_more_bytes_at_any_point() {
        let whole = b"a\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..whole.len() {
            let mut decoder = Decoder::new();
            let mut read = buffer(&whole[..split]);
            let mut data = Vec::new();
            while let Some(frame) = decoder.decode(&mut read).unwrap() {
                data.extend_from_slice(&frame.into_data().unwrap());
            }
            read.extend_from_slice(&whole[split..]);
            while let Some(frame) = decoder.decode(&mut read).unwrap() {
                data.extend_from_slice(&frame.into_data().unwrap());
            }
            assert_eq!(data, b"0123456789", "split at {split}");
            assert!(decoder.is_done(), "split at {split}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        assert!(drain(buffer(b"zz\r\n")).is_err());
        assert!(drain(buffer(b"2\r\nabXX")).is_err());
        assert!(drain(buffer(&[b'1'; MAX_CHUNK_LINE + 1])).is_err());
        assert!(drain(buffer(b"+5\r\nhello\r\n0\r\n\r\n")).is_err(), "hex digits only");
    }

    #[test]
    fn chunk_headers_are_hex() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 1024);
        assert_eq!(out, b"400\r\n");
    }
}
