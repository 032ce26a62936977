//! VirtualService routing without sockets: validation of VirtualServices
//! into compiled routes ([`validate_virtual_service`]), the per-host route
//! table the proxy consults ([`RouteTable`]), and every per-request
//! decision (which rule matches, which destination, whether to retry, which
//! fault to inject, where to redirect, how to rewrite). The proxy only does
//! the I/O around these answers.
//!
//! Semantics follow Istio's translation to Envoy (istio/istio
//! `pilot/pkg/networking/core/route`) and Istio's validation
//! (`pkg/config/validation`); each module says where it differs and why.

mod cors;
mod destination;
mod fault;
mod headers;
mod l4;
mod matching;
mod redirect;
mod retry;
mod rewrite;
mod ser;
mod string_match;
mod table;
mod validate;

#[cfg(test)]
mod test_support;

pub use cors::CorsPolicy;
pub use destination::{pick_destination, shadow_authority, MirrorPolicy, RouteDestination};
pub use fault::{Abort, FaultAbort, FaultDecision, FaultDelay, FaultPolicy};
pub use headers::{HeaderOps, HeaderRules};
pub use l4::{first_tcp_match, first_tls_match, Subnet, TcpMatch, TcpRoute, TlsMatch, TlsRoute};
pub use matching::{first_match, HeaderMatch, HttpMatch, QueryParamMatch, RequestView, UriMatch};
pub use redirect::{RedirectPolicy, RedirectPort};
pub use retry::{retry_backoff, AttemptOutcome, RetryCondition, RetryOn, RetryPolicy};
pub use rewrite::{PathRewrite, Rewrite};
pub use string_match::{Pattern, StringMatcher, MAX_REGEX_LENGTH};
pub use table::{shadowed_hosts, HostRoutes, RouteTable, ShadowedHost};
pub use validate::{validate_virtual_service, SubsetRef, VirtualServiceModel};

use serde::Serialize;
use std::time::Duration;

/// The gateway name that stands for the sidecars of the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// One `http` rule of a VirtualService, compiled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Empty: the rule matches every request. Otherwise any block may match.
    pub matches: Vec<HttpMatch>,
    pub action: RouteAction,
    /// The whole request, retries included; `None` (unset or `0s`) is no
    /// timeout, as Istio configures Envoy.
    #[serde(serialize_with = "ser::opt_duration")]
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<FaultPolicy>,
    pub mirrors: Vec<MirrorPolicy>,
    pub rewrite: Option<Rewrite>,
    /// The rule's own header operations. A destination's operations apply
    /// first and these after, so that the rule's `set` wins (Envoy applies
    /// the more specific level first unless told otherwise).
    pub headers: HeaderRules,
    pub cors: Option<CorsPolicy>,
}

/// What a matched rule does with the request.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    /// Send upstream to one of these (see [`pick_destination`]).
    Forward(Vec<RouteDestination>),
    Redirect(RedirectPolicy),
    DirectResponse {
        status: u16,
        #[serde(serialize_with = "ser::bytes")]
        body: bytes::Bytes,
    },
}
