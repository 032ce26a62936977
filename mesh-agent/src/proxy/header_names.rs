//! Header names the proxy reads or writes, made once: a name parsed from a
//! string would be parsed again on every request.

use http::HeaderName;

/// The proxy's own `x-envoy-attempt-count`, on every try but a mirror's.
pub static ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Set on a local 503 for a circuit-breaker overflow, as Envoy does.
pub static OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
