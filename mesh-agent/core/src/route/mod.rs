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
mod delegate;
mod destination;
mod fault;
mod headers;
mod l4;
mod matching;
mod redirect;
mod retry;
mod rewrite;
mod rule;
mod ser;
mod string_match;
mod table;
mod validate;

#[cfg(test)]
mod test_support;

pub use cors::CorsPolicy;
pub(crate) use delegate::{expand as expand_delegations, Target as DelegateTarget};
pub use destination::{pick_destination, shadow_authority, MirrorPolicy, RouteDestination};
pub use fault::{Abort, FaultAbort, FaultDecision, FaultDelay, FaultPolicy};
pub use headers::{HeaderOps, HeaderRules};
pub use l4::{first_tcp_match, first_tls_match, ConnectionView, Subnet, TcpMatch, TcpRoute, TlsMatch, TlsRoute};
pub(crate) use matching::source_holds;
pub use matching::{HeaderMatch, HttpMatch, QueryParamMatch, RequestView, UriMatch};
pub use redirect::{RedirectPolicy, RedirectPort};
pub use retry::{retry_backoff, AttemptOutcome, RetryCondition, RetryOn, RetryPolicy};
pub use rewrite::{PathRewrite, Rewrite};
pub use rule::{first_match, HttpRoute, RouteAction};
pub use string_match::{Pattern, StringMatcher, MAX_REGEX_LENGTH};
pub(crate) use table::{exported_to, rules_where};
pub use table::{shadowed_hosts, HostRoutes, RouteTable, ShadowedHost};
pub use validate::{validate_virtual_service, Delegation, SubsetRef, VirtualServiceModel};
