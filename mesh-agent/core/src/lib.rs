//! mesh-core: what the mesh decides, with none of the doing. Kubernetes and
//! Istio objects come in ([`decode`] into [`api`] types), are validated
//! into the [`model`] (with [`destination_rule`] policy and [`route`]s, each
//! rejection naming file, object and field; every field set but not
//! honoured a [`warnings`] entry), and are compiled into one
//! immutable [`snapshot`]: the exact kernel map contents ([`maglev`]
//! tables included) and the route table the proxy consults per request.
//! [`diff`] says what a map write must change.
//!
//! No IO, no async runtime, no kernel: randomness and clocks are
//! parameters, so every decision is tested without sockets or root. The
//! agent crate does the IO around it.

pub mod api;
pub mod decode;
pub mod destination_rule;
pub mod diff;
pub mod field;
pub mod gateway;
pub mod host;
pub mod locality;
pub mod maglev;
pub mod model;
pub mod node;
pub mod object;
pub mod outbound;
pub mod packed;
pub mod published;
pub mod registry;
pub mod route;
pub mod service_entry;
pub mod sidecar;
pub mod snapshot;
pub mod warnings;

#[cfg(test)]
mod test_support;
