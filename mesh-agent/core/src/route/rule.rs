//! One `http` rule of a VirtualService as compiled: its match blocks, its
//! action, and everything it does to a request on the way.

use super::cors::CorsPolicy;
use super::destination::{MirrorPolicy, RouteDestination};
use super::fault::FaultPolicy;
use super::headers::HeaderRules;
use super::matching::{HttpMatch, RequestView};
use super::redirect::RedirectPolicy;
use super::retry::RetryPolicy;
use super::rewrite::Rewrite;
use super::ser;
use serde::Serialize;
use std::time::Duration;

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

/// The first rule that matches the request, with the match block that
/// matched (`None` for a rule without `match`); a prefix rewrite needs the
/// block. `None` when no rule matches: Envoy then answers 404 (flag NR)
/// for a host that has routes.
pub fn first_match<'a>(
    routes: &'a [HttpRoute],
    request: &RequestView<'_>,
) -> Option<(&'a HttpRoute, Option<&'a HttpMatch>)> {
    routes.iter().find_map(|route| {
        if route.matches.is_empty() {
            return Some((route, None));
        }
        route.matches.iter().find(|m| m.matches(request)).map(|m| (route, Some(m)))
    })
}
