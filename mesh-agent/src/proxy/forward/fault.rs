//! The fault stage (VirtualService `fault`): it acts on the client side,
//! before anything goes upstream: a delay (flag DI), then perhaps an abort
//! answered in place (flag FI).

use super::flags::ResponseFlag;
use super::outcome::{grpc_status_reply, local_reply};
use crate::proxy::body::ProxyBody;
use http::{Response, StatusCode};
use mesh_core::route::{Abort, FaultPolicy};

/// Sleeps the fault's delay when drawn; returns the abort to answer with
/// when drawn.
pub async fn inject(fault: &FaultPolicy, flags: &mut Vec<ResponseFlag>) -> Option<Response<ProxyBody>> {
    let decision = fault.decide(fastrand::f64(), fastrand::f64());
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
        flags.push(ResponseFlag::DI);
    }
    let abort = decision.abort?;
    flags.push(ResponseFlag::FI);
    Some(abort_response(abort))
}

/// An abort as Envoy's fault filter answers it: the HTTP status, or a
/// gRPC status in a trailers-only response.
pub fn abort_response(abort: Abort) -> Response<ProxyBody> {
    match abort {
        Abort::Http(status) => {
            local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), "fault filter abort")
        }
        Abort::Grpc(code) => grpc_status_reply(code, "fault filter abort"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborts_answer_their_http_or_grpc_status() {
        let http = abort_response(Abort::Http(418));
        assert_eq!(http.status(), StatusCode::IM_A_TEAPOT);
        let grpc = abort_response(Abort::Grpc(14));
        assert_eq!(grpc.status(), StatusCode::OK, "gRPC errors are trailers-only 200s");
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
    }
}
