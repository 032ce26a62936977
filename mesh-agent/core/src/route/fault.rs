//! `fault`: delays and aborts injected by the client-side proxy.

use super::ser;
use crate::api::HttpFaultInjection;
use crate::field::parse_istio_duration;
use crate::field::FieldError;
use crate::field::{parse_percentage, Path};
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultPolicy {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(serialize_with = "ser::duration")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0 to 100; unset is 0, as in Istio.
    pub percentage: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    pub abort: Abort,
    /// Share of requests aborted, 0 to 100; unset is 0, as in Istio.
    pub percentage: f64,
}

/// How an aborted request is answered: exactly this HTTP status, or (for
/// gRPC) a trailers-only response with this `grpc-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Abort {
    Http(u16),
    Grpc(u32),
}

/// The faults for one request: delay first (flag DI), then abort (FI).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultPolicy {
    /// Decides independently, from two uniform draws in [0, 1), whether
    /// this request is delayed and whether it is aborted.
    pub fn decide(&self, random_delay: f64, random_abort: f64) -> FaultDecision {
        let hit = |random: f64, percentage: f64| random * 100.0 < percentage;
        FaultDecision {
            delay: self.delay.as_ref().filter(|d| hit(random_delay, d.percentage)).map(|d| d.fixed_delay),
            abort: self.abort.as_ref().filter(|a| hit(random_abort, a.percentage)).map(|a| a.abort),
        }
    }
}

/// gRPC status names as Istio accepts them for `abort.grpcStatus`.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Istio's `validatePercentage` for faults: 0, or between 0.0001 and 100
/// (Envoy's finest fraction is a millionth).
fn fault_percentage(field: &str, value: f64) -> Result<f64, FieldError> {
    let value = parse_percentage(field, value)?;
    if value > 0.0 && value < 0.0001 {
        return Err(FieldError::new(field, format!("{value} is neither 0 nor between 0.0001 and 100")));
    }
    Ok(value)
}

pub(crate) fn compile_fault(at: &Path, spec: &HttpFaultInjection) -> Result<FaultPolicy, FieldError> {
    if spec.delay.is_none() && spec.abort.is_none() {
        return Err(at.error("needs a delay, an abort or both"));
    }
    let delay = spec
        .delay
        .as_ref()
        .map(|delay| {
            let at = at.child("delay");
            if delay.exponential_delay.is_some() {
                return Err(FieldError::new(at.field("exponentialDelay"), "is not supported (Istio rejects it too)"));
            }
            // The deprecated integer `percent` counts only without `percentage`.
            let percentage = match (&delay.percentage, delay.percent) {
                (Some(p), _) => fault_percentage(&at.field("percentage.value"), p.value)?,
                (None, Some(percent)) => parse_percentage(&at.field("percent"), percent as f64)?,
                (None, None) => 0.0,
            };
            // Without a delay type Istio accepts the block and configures no
            // delay.
            let Some(text) = delay.fixed_delay.as_deref() else { return Ok(None) };
            let fixed_delay = parse_istio_duration(&at.field("fixedDelay"), text)?;
            Ok(Some(FaultDelay { fixed_delay, percentage }))
        })
        .transpose()?
        .flatten();
    let abort = spec
        .abort
        .as_ref()
        .map(|abort| {
            let at = at.child("abort");
            let percentage = match &abort.percentage {
                Some(p) => fault_percentage(&at.field("percentage.value"), p.value)?,
                None => 0.0,
            };
            let kind = match (abort.http_status, abort.grpc_status.as_deref(), abort.http2_error.as_deref()) {
                (Some(status), None, None) => {
                    Abort::Http(u16::try_from(status).ok().filter(|s| (200..=599).contains(s)).ok_or_else(|| {
                        FieldError::new(at.field("httpStatus"), format!("{status} is not in 200-599"))
                    })?)
                }
                (None, Some(name), None) => Abort::Grpc(
                    GRPC_CODES.iter().position(|code| *code == name).map(|code| code as u32).ok_or_else(|| {
                        FieldError::new(
                            at.field("grpcStatus"),
                            format!("{name:?} is not a gRPC status name (e.g. UNAVAILABLE)"),
                        )
                    })?,
                ),
                (None, None, Some(_)) => {
                    return Err(FieldError::new(at.field("http2Error"), "is not supported (Istio rejects it too)"))
                }
                // Istio only warns, and configures no abort.
                (None, None, None) => return Ok(None),
                _ => return Err(at.error("set only one of httpStatus, grpcStatus and http2Error")),
            };
            Ok(Some(FaultAbort { abort: kind, percentage }))
        })
        .transpose()?
        .flatten();
    Ok(FaultPolicy { delay, abort })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::vs;

    fn fault(block: &str) -> Result<FaultPolicy, FieldError> {
        let spec =
            format!("  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n    fault: {block}\n");
        vs(&spec).map(|model| model.http[0].fault.clone().unwrap())
    }

    #[test]
    fn percentages_decide_each_fault_independently() {
        let policy = fault(
            "{delay: {fixedDelay: 5s, percentage: {value: 10}}, abort: {httpStatus: 503, percentage: {value: 50}}}",
        )
        .unwrap();
        let decision = policy.decide(0.05, 0.6);
        assert_eq!(decision.delay, Some(Duration::from_secs(5)));
        assert_eq!(decision.abort, None);
        let decision = policy.decide(0.1, 0.499);
        assert_eq!((decision.delay, decision.abort), (None, Some(Abort::Http(503))));
        // Over a uniform grid of draws the shares are exact.
        let grid = (0..1000).map(|i| f64::from(i) / 1000.0);
        let aborted = grid.filter(|r| policy.decide(0.99, *r).abort.is_some()).count();
        assert_eq!(aborted, 500);
    }

    #[test]
    fn missing_percentage_is_zero_and_100_is_always() {
        let never = fault("{abort: {httpStatus: 500}}").unwrap();
        assert_eq!(never.decide(0.0, 0.0), FaultDecision::default());
        let always = fault("{delay: {fixedDelay: 100ms, percentage: {value: 100}}}").unwrap();
        assert_eq!(always.decide(0.999_999, 0.0).delay, Some(Duration::from_millis(100)));
        let legacy = fault("{delay: {fixedDelay: 1s, percent: 30}}").unwrap();
        assert_eq!(legacy.delay.unwrap().percentage, 30.0);
        let grpc = fault("{abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}").unwrap();
        assert_eq!(grpc.decide(0.0, 0.5).abort, Some(Abort::Grpc(14)));
    }

    #[test]
    fn invalid_faults_are_named() {
        let cases = [
            ("{delay: {fixedDelay: 1s, percentage: {value: 101}}}", "spec.http[0].fault.delay.percentage.value"),
            ("{delay: {fixedDelay: 1s, percentage: {value: -1}}}", "spec.http[0].fault.delay.percentage.value"),
            ("{abort: {httpStatus: 503, percentage: {value: 100.5}}}", "spec.http[0].fault.abort.percentage.value"),
            ("{abort: {httpStatus: 199}}", "spec.http[0].fault.abort.httpStatus"),
            ("{abort: {httpStatus: 600}}", "spec.http[0].fault.abort.httpStatus"),
            ("{abort: {grpcStatus: BROKEN}}", "spec.http[0].fault.abort.grpcStatus"),
            ("{abort: {httpStatus: 503, percentage: {value: 0.00001}}}", "spec.http[0].fault.abort.percentage.value"),
            ("{delay: {fixedDelay: 0s}}", "spec.http[0].fault.delay.fixedDelay"),
            ("{delay: {fixedDelay: 1s, percent: 200}}", "spec.http[0].fault.delay.percent"),
            ("{}", "spec.http[0].fault"),
        ];
        for (block, field) in cases {
            assert_eq!(fault(block).unwrap_err().field, field, "{block}");
        }
        assert!(fault("{abort: {httpStatus: 200}}").is_ok() && fault("{abort: {httpStatus: 599}}").is_ok());
        // Istio accepts a block without its type (it only warns) and
        // configures nothing for it.
        let untyped = fault("{abort: {percentage: {value: 10}}, delay: {percentage: {value: 10}}}").unwrap();
        assert!(untyped.abort.is_none() && untyped.delay.is_none());
    }
}
