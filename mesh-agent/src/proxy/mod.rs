//! The node proxy: connections to service ports with L7 rules are sent here
//! by the kernel, and each request is routed with the pure decisions of
//! `mesh_core::route` and forwarded to an endpoint directly (the proxy's
//! own connects are never captured).
//!
//! Rooms, lowest first: [`header_names`], [`body`]; our HTTP/1.1
//! ([`http1`]); [`upstream`] connections, pools and the dialer;
//! [`outlier`] detection, L7 [`balance`]ing and the per-snapshot
//! [`cluster`] plans; [`metrics`]; the [`listener`] that accepts captured
//! connections; then what it serves them with: the request pipeline
//! ([`forward`]) and the `tcp`/`tls` route relay ([`tcp`]).

pub mod balance;
pub mod body;
pub mod cluster;
pub mod forward;
pub mod header_names;
pub mod http1;
pub mod listener;
pub mod metrics;
pub mod outlier;
pub mod tcp;
pub mod upstream;

pub use listener::{bind, serve, Proxy, ProxyError, DEFAULT_HEADER_TIMEOUT};
