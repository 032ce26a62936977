//! The node proxy: connections to service ports with L7 rules are sent here
//! by the kernel, and each request is routed with the pure decisions of
//! `mesh_core::route` and forwarded to an endpoint directly (the proxy's
//! own connects are never captured).
//!
//! Rooms, lowest first: `header_names` and `body`; the request body the
//! tries share (`replay`); upstream connecting,
//! errors and idle pools (`upstream::{connect, error, pool}`); our own
//! HTTP/1.1, both directions (`http1`), on which the dialer that sends each
//! try builds (`upstream::dialer`, with hyper's HTTP/1.1 and HTTP/2
//! clients); outlier detection, L7 balancing and the per-snapshot cluster
//! plans (`outlier`, `balance`, `cluster`); `metrics` and `mirror`; the
//! `listener` that holds the [`Proxy`] and accepts captured connections;
//! then what it serves them with: the request pipeline (`forward`) and the
//! `tcp`/`tls` route relay (`tcp`).

mod balance;
mod body;
mod cluster;
pub mod drain;
mod forward;
pub mod gateway;
pub mod gateway_state;
mod header_names;
mod http1;
mod listener;
mod metrics;
mod mirror;
mod outlier;
mod replay;
mod tcp;
#[cfg(test)]
mod test_support;
mod upstream;

pub use listener::{bind, serve, Proxy, ProxyError, DEFAULT_HEADER_TIMEOUT};
pub use outlier::Ejected;
pub use upstream::dialer::UpstreamPool;
