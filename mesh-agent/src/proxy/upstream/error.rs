//! Why a try of a request got no response from an upstream, sorted the
//! way the retry policy and the response flags need: a connect failure
//! (UF, retried as `connect-failure`), a reset before any response (UR), a
//! malformed response (UPE, 502), an HTTP/2 stream the upstream refused
//! (retried as `refused-stream`), or a request body that failed on the
//! client's side (400, neither retried nor held against the upstream).

use crate::proxy::body::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the upstream timed out")]
    ConnectTimeout,
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] std::io::Error),
    #[error("TLS handshake with the upstream: {0}")]
    TlsHandshake(#[source] std::io::Error),
    #[error("HTTP handshake with the upstream: {0}")]
    Handshake(#[source] BoxError),
    /// Reset or closed before a response (503, as Envoy).
    #[error("upstream exchange failed: {0}")]
    Failed(#[source] BoxError),
    /// The upstream answered something that is not HTTP (502).
    #[error("upstream sent a malformed response: {0}")]
    Protocol(#[source] BoxError),
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    #[error("upstream refused the stream: {0}")]
    RefusedStream(#[source] BoxError),
    /// The client's request body failed while it was being sent (a broken
    /// chunked body, a client gone): the client's fault, not the upstream's.
    #[error("the request body failed: {0}")]
    RequestBody(#[source] BoxError),
}

impl UpstreamError {
    /// No connection was made: nothing reached the upstream.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout
                | UpstreamError::Connect(_)
                | UpstreamError::TlsHandshake(_)
                | UpstreamError::Handshake(_)
        )
    }

    /// A failed exchange through hyper's clients, sorted.
    pub fn from_hyper(error: hyper::Error) -> Self {
        if is_refused_stream(&error) {
            UpstreamError::RefusedStream(Box::new(error))
        } else if error.is_user() && std::error::Error::source(&error).is_some() {
            // A user error with a cause: the one our request body gave.
            UpstreamError::RequestBody(Box::new(error))
        } else if error.is_parse() || error.is_parse_status() {
            UpstreamError::Protocol(Box::new(error))
        } else {
            UpstreamError::Failed(Box::new(error))
        }
    }

    /// A failed exchange on one of our HTTP/2 connections, sorted.
    pub fn from_h2(error: h2::Error) -> Self {
        if is_refused_stream(&error) {
            UpstreamError::RefusedStream(Box::new(error))
        } else {
            UpstreamError::Failed(Box::new(error))
        }
    }

    /// The upstream's GOAWAY cut the exchange off: its connection is closing.
    pub fn is_go_away(&self) -> bool {
        let source = std::error::Error::source(self);
        source.and_then(|e| e.downcast_ref::<h2::Error>()).is_some_and(h2::Error::is_go_away)
    }
}

/// An HTTP/2 stream reset with REFUSED_STREAM, anywhere in the chain.
fn is_refused_stream(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stream_is_told_from_other_resets() {
        assert!(is_refused_stream(&h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert!(!is_refused_stream(&h2::Error::from(h2::Reason::CANCEL)));
        assert!(!is_refused_stream(&std::io::Error::other("reset")));
    }
}
