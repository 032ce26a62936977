//! The admission stage, circuit breaking: requests under way per cluster
//! are bounded as Envoy bounds them (HTTP/1.1: connections plus pending
//! requests; HTTP/2: requests). Past the bound the proxy answers 503 with
//! `x-envoy-overloaded` (flag UO) without trying the upstream.

use super::outcome::local_reply;
use crate::proxy::body::ProxyBody;
use crate::proxy::cluster::{admit, InFlight};
use crate::proxy::header_names::OVERLOADED;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

/// The cluster is full: no slot for this request.
#[derive(Debug)]
pub struct Overflow;

impl Overflow {
    /// Envoy's answer to an overflow.
    pub fn response(&self) -> Response<ProxyBody> {
        let mut response = local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        );
        response.headers_mut().insert(OVERLOADED.clone(), HeaderValue::from_static("true"));
        response
    }
}

/// A slot among the cluster's `active` requests.
pub fn admit_request(active: &Arc<AtomicUsize>, limit: Option<usize>) -> Result<InFlight, Overflow> {
    admit(active, limit).ok_or(Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_answer_is_overloaded_until_a_slot_frees() {
        let active = Arc::new(AtomicUsize::new(0));
        let Ok(first) = admit_request(&active, Some(1)) else { panic!("not admitted") };
        let Err(overflow) = admit_request(&active, Some(1)) else { panic!("admitted past the limit") };
        let refused = overflow.response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["x-envoy-overloaded"], "true");
        drop(first);
        assert!(admit_request(&active, Some(1)).is_ok(), "the slot came back");
        assert!((0..100).all(|_| admit_request(&active, None).is_ok()), "no limit, no overflow");
    }
}
