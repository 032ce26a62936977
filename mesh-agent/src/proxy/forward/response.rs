//! The response stage: the answer for the last try. An upstream's response
//! goes back without its connection-scoped fields, with the destination's
//! and the route's header rules applied, holding the request's accounting
//! (and its pooled connection) until its body ends and cut at the route's
//! deadline; a try that got none becomes Envoy's local answer and flag.

use super::attempts::TryResult;
use super::flags::ResponseFlag;
use super::outcome::local_reply;
use crate::proxy::body::{GuardedBody, ProxyBody};
use crate::proxy::cluster::InFlight;
use crate::proxy::http1::common::strip_hop_by_hop;
use crate::proxy::upstream::error::UpstreamError;
use crate::proxy::upstream::hyper_http1::CheckinSlot;
use http::{Response, StatusCode};
use mesh_core::route::{HttpRoute, RouteDestination};
use std::net::SocketAddr;
use std::time::Instant;

/// The response for `result`, the last try's.
pub fn finish(
    result: TryResult,
    flags: &mut Vec<ResponseFlag>,
    endpoint: SocketAddr,
    destination: Option<&RouteDestination>,
    route: Option<&HttpRoute>,
    deadline: Option<Instant>,
    guards: Option<(InFlight, InFlight)>,
) -> Response<ProxyBody> {
    let error = match result {
        TryResult::Response(response) => {
            let (mut head, upstream_body) = response.into_parts();
            strip_hop_by_hop(&mut head.headers);
            // The upstream connection goes back to its pool with the body.
            let checkin = head.extensions.remove::<CheckinSlot>().and_then(|slot| slot.take());
            let guards = (guards, checkin);
            let mut response = Response::from_parts(head, GuardedBody::wrap(upstream_body, deadline, guards));
            if let Some(destination) = destination {
                destination.headers.response.apply(response.headers_mut());
            }
            if let Some(route) = route {
                route.headers.response.apply(response.headers_mut());
            }
            return response;
        }
        TryResult::TimedOut => None,
        TryResult::Failed(error) => Some(error),
    };
    if let Some(error) = &error {
        tracing::debug!(%error, %endpoint, "upstream try got no response");
    }
    let (response, flag) = error_reply(error.as_ref());
    flags.push(flag);
    response
}

/// Envoy's local answer for a try that got no response (None: it timed
/// out), and its flag.
pub fn error_reply(error: Option<&UpstreamError>) -> (Response<ProxyBody>, ResponseFlag) {
    const CONNECTION_FAILURE: &str =
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
    const REMOTE_RESET: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
    let (status, text, flag) = match error {
        None => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout", ResponseFlag::UT),
        Some(error) if error.is_connect() => (StatusCode::SERVICE_UNAVAILABLE, CONNECTION_FAILURE, ResponseFlag::UF),
        Some(UpstreamError::Protocol(_)) => {
            (StatusCode::BAD_GATEWAY, "upstream sent a malformed response", ResponseFlag::UPE)
        }
        Some(UpstreamError::RequestBody(_)) => (StatusCode::BAD_REQUEST, "bad request body", ResponseFlag::DPE),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, REMOTE_RESET, ResponseFlag::UR),
    };
    (local_reply(status, text), flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_without_a_response_get_envoys_answers() {
        let cases = [
            (None, StatusCode::GATEWAY_TIMEOUT, ResponseFlag::UT),
            (Some(UpstreamError::ConnectTimeout), StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::UF),
            (Some(UpstreamError::Protocol("bad".into())), StatusCode::BAD_GATEWAY, ResponseFlag::UPE),
            (Some(UpstreamError::Failed("reset".into())), StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::UR),
        ];
        for (error, status, flag) in cases {
            let (response, got) = error_reply(error.as_ref());
            assert_eq!((response.status(), got), (status, flag), "{error:?}");
        }
    }
}
