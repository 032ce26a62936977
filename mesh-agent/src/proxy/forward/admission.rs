//! The admission stage, circuit breaking: requests under way per cluster
//! are bounded as Envoy bounds them (HTTP/1.1: connections plus pending
//! requests; HTTP/2: requests), each holding a slot of
//! [`admit`](crate::proxy::cluster::admit). Past the bound the proxy
//! answers 503 with `x-envoy-overloaded` (flag UO) without trying the
//! upstream.

use super::outcome::local_reply;
use crate::proxy::body::ProxyBody;
use crate::proxy::header_names::OVERLOADED;
use http::header::HeaderValue;
use http::{Response, StatusCode};

/// Envoy's answer when the cluster has no slot for the request.
pub fn overflow_reply() -> Response<ProxyBody> {
    let mut response = local_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
    );
    response.headers_mut().insert(OVERLOADED.clone(), HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cluster::admit;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn past_the_limit_the_answer_is_overloaded_until_a_slot_frees() {
        let active = Arc::new(AtomicUsize::new(0));
        let Some(first) = admit(&active, Some(1)) else { panic!("not admitted") };
        assert!(admit(&active, Some(1)).is_none(), "admitted past the limit");
        let refused = overflow_reply();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()["x-envoy-overloaded"], "true");
        drop(first);
        assert!(admit(&active, Some(1)).is_some(), "the slot came back");
        assert!((0..100).all(|_| admit(&active, None).is_some()), "no limit, no overflow");
    }
}
