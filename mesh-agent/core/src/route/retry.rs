//! `retries`: when a failed attempt is tried again, and how long to wait.

use super::ser;
use crate::api::HttpRetry;
use crate::field::FieldError;
use crate::field::Path;
use crate::field::{parse_duration, parse_istio_duration};
use serde::{Serialize, Serializer};
use std::collections::BTreeSet;
use std::time::Duration;

/// Envoy's retry backoff: base interval, and the cap (10 × base).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Istio's default `retryOn`. It has no 503 since Istio 1.24: retrying 503
/// duplicated non-idempotent requests.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Istio's default number of retries.
pub const DEFAULT_ATTEMPTS: u32 = 2;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (not tries); 0 disables retries.
    pub attempts: u32,
    /// `None`: each try is bounded only by the route timeout.
    #[serde(serialize_with = "ser::opt_duration")]
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// Base interval of the jittered exponential backoff.
    #[serde(serialize_with = "ser::duration")]
    pub backoff_base: Duration,
}

/// What Istio configures when a rule has no `retries`: 2 retries on the
/// default conditions.
impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            per_try_timeout: None,
            retry_on: RetryOn::parse(DEFAULT_RETRY_ON).expect("the default parses"),
            backoff_base: DEFAULT_BACKOFF_BASE,
        }
    }
}

/// How one try ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A response arrived; `grpc_status` from its headers (a trailers-only
    /// gRPC response), if any.
    Status { status: u16, grpc_status: Option<u32> },
    /// No connection to the upstream (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection or stream broke before a response.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The per-try timeout fired.
    Timeout,
}

impl RetryPolicy {
    /// Whether an attempt that ended so may be retried under this policy
    /// (Envoy's `retry_on` semantics). The caller counts attempts, checks
    /// the route timeout, and never retries a body it cannot replay.
    pub fn should_retry(&self, outcome: &AttemptOutcome) -> bool {
        use RetryCondition as C;
        if self.attempts == 0 {
            return false;
        }
        let on = |c: C| self.retry_on.conditions.contains(&c);
        // Envoy counts a missing response as a 5xx (and as a gateway error).
        let no_response = on(C::FiveXx) || on(C::GatewayError) || on(C::Reset);
        match *outcome {
            AttemptOutcome::Status { status, grpc_status } => {
                (on(C::FiveXx) && status >= 500)
                    || (on(C::GatewayError) && matches!(status, 502..=504))
                    || (on(C::Retriable4xx) && status == 409)
                    || (on(C::RetriableStatusCodes) && self.retry_on.status_codes.contains(&status))
                    || grpc_status.is_some_and(|code| self.retry_on.retries_grpc(code))
            }
            AttemptOutcome::ConnectFailure => no_response || on(C::ConnectFailure) || on(C::ResetBeforeRequest),
            AttemptOutcome::RefusedStream => no_response || on(C::RefusedStream) || on(C::ResetBeforeRequest),
            AttemptOutcome::Reset | AttemptOutcome::Timeout => no_response,
        }
    }

    /// The wait before retry `retry_number` (1 for the first retry) with
    /// this policy's base interval; see [`retry_backoff`].
    pub fn backoff(&self, retry_number: u32, random: u64) -> Duration {
        backoff_from(self.backoff_base, retry_number, random)
    }
}

/// Envoy's jittered exponential backoff with the default base of 25 ms:
/// before retry `n` (1-based) a uniform wait in [0, min(25 ms × 2^(n-1),
/// 250 ms)), in whole milliseconds, from `random` (any `u64`).
pub fn retry_backoff(retry_number: u32, random: u64) -> Duration {
    backoff_from(DEFAULT_BACKOFF_BASE, retry_number, random)
}

fn backoff_from(base: Duration, retry_number: u32, random: u64) -> Duration {
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1);
    let cap_ms = base_ms.saturating_mul(10);
    let exponent = retry_number.saturating_sub(1).min(63);
    let interval = base_ms.saturating_mul(1u64 << exponent).min(cap_ms);
    Duration::from_millis(random % interval)
}

/// One `retryOn` token (Envoy's `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RetryCondition {
    FiveXx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    EnvoyRatelimited,
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    RetriableHeaders,
    Http3PostConnectFailure,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

const TOKENS: [(RetryCondition, &str); 16] = [
    (RetryCondition::FiveXx, "5xx"),
    (RetryCondition::GatewayError, "gateway-error"),
    (RetryCondition::Reset, "reset"),
    (RetryCondition::ResetBeforeRequest, "reset-before-request"),
    (RetryCondition::ConnectFailure, "connect-failure"),
    (RetryCondition::EnvoyRatelimited, "envoy-ratelimited"),
    (RetryCondition::Retriable4xx, "retriable-4xx"),
    (RetryCondition::RefusedStream, "refused-stream"),
    (RetryCondition::RetriableStatusCodes, "retriable-status-codes"),
    (RetryCondition::RetriableHeaders, "retriable-headers"),
    (RetryCondition::Http3PostConnectFailure, "http3-post-connect-failure"),
    (RetryCondition::Cancelled, "cancelled"),
    (RetryCondition::DeadlineExceeded, "deadline-exceeded"),
    (RetryCondition::Internal, "internal"),
    (RetryCondition::ResourceExhausted, "resource-exhausted"),
    (RetryCondition::Unavailable, "unavailable"),
];

impl RetryCondition {
    pub fn token(self) -> &'static str {
        TOKENS.iter().find(|(c, _)| *c == self).map(|(_, t)| *t).unwrap_or_default()
    }

    fn from_token(token: &str) -> Option<Self> {
        TOKENS.iter().find(|(_, t)| *t == token).map(|(c, _)| *c)
    }

    /// The gRPC status a gRPC condition retries.
    fn grpc_code(self) -> Option<u32> {
        match self {
            RetryCondition::Cancelled => Some(1),
            RetryCondition::DeadlineExceeded => Some(4),
            RetryCondition::ResourceExhausted => Some(8),
            RetryCondition::Internal => Some(13),
            RetryCondition::Unavailable => Some(14),
            _ => None,
        }
    }
}

impl Serialize for RetryCondition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.token())
    }
}

/// A parsed `retryOn`: its conditions and the status codes it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    pub conditions: BTreeSet<RetryCondition>,
    /// Numbers in `retryOn`; they imply `retriable-status-codes`.
    pub status_codes: Vec<u16>,
}

impl RetryOn {
    /// Parses Istio's comma-separated `retryOn`; the error names the token.
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut retry_on = RetryOn::default();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(condition) = RetryCondition::from_token(token) {
                retry_on.conditions.insert(condition);
            } else if let Some(code) = token.parse::<u16>().ok().filter(|c| (100..=599).contains(c)) {
                if !retry_on.status_codes.contains(&code) {
                    retry_on.status_codes.push(code);
                }
                retry_on.conditions.insert(RetryCondition::RetriableStatusCodes);
            } else {
                return Err(format!("{token:?} is not a retryOn condition or an HTTP status code"));
            }
        }
        Ok(retry_on)
    }

    fn retries_grpc(&self, code: u32) -> bool {
        self.conditions.iter().any(|c| c.grpc_code() == Some(code))
    }
}

/// Whether `token` is a status code Go's `http.StatusText` names, which is
/// what Istio accepts as a number in `retryOn`.
fn is_known_status(token: &str) -> bool {
    const KNOWN: [u16; 62] = [
        100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308,
        400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 421, 422, 423,
        424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
    ];
    token.bytes().all(|b| b.is_ascii_digit()) && token.parse::<u16>().is_ok_and(|code| KNOWN.contains(&code))
}

/// Istio's reading of `retries`: unset is the default policy; `attempts`
/// 0 (or unset) disables retries, and then setting anything else is an
/// error; `retryOn`, when set, replaces the default conditions.
pub(crate) fn compile_retries(at: &Path, spec: Option<&HttpRetry>) -> Result<RetryPolicy, FieldError> {
    let Some(spec) = spec else { return Ok(RetryPolicy::default()) };
    let attempts = spec.attempts.unwrap_or(0);
    let attempts = u32::try_from(attempts)
        .map_err(|_| FieldError::new(at.field("attempts"), format!("{attempts} is negative or too large")))?;
    if attempts == 0 {
        let disabled = |field: &str| {
            FieldError::new(
                at.field(field),
                "set while attempts is 0, which disables retries; set attempts or remove it",
            )
        };
        if spec.per_try_timeout.is_some() {
            return Err(disabled("perTryTimeout"));
        }
        if spec.retry_on.is_some() {
            return Err(disabled("retryOn"));
        }
        if spec.retry_remote_localities.is_some() {
            return Err(disabled("retryRemoteLocalities"));
        }
    }
    let mut policy = RetryPolicy { attempts, ..RetryPolicy::default() };
    if let Some(text) = spec.per_try_timeout.as_deref() {
        policy.per_try_timeout = Some(parse_istio_duration(&at.field("perTryTimeout"), text)?);
    }
    if let Some(text) = spec.retry_on.as_deref().filter(|t| !t.is_empty()) {
        // Istio's check is stricter than the parsing: every comma-separated
        // token as written (no spaces) is a condition or a known status.
        if let Some(token) = text.split(',').find(|t| RetryCondition::from_token(t).is_none() && !is_known_status(t)) {
            return Err(FieldError::new(at.field("retryOn"), format!("{token:?} is not a valid retryOn policy")));
        }
        policy.retry_on = RetryOn::parse(text).map_err(|message| FieldError::new(at.field("retryOn"), message))?;
    }
    if let Some(text) = spec.backoff.as_deref() {
        let base = parse_duration(&at.field("backoff"), text)?;
        if base < Duration::from_millis(1) {
            return Err(FieldError::new(at.field("backoff"), "must be at least 1ms"));
        }
        policy.backoff_base = base;
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::vs;

    fn status(status: u16) -> AttemptOutcome {
        AttemptOutcome::Status { status, grpc_status: None }
    }

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy { retry_on: RetryOn::parse(retry_on).unwrap(), ..RetryPolicy::default() }
    }

    fn retries(yaml: &str) -> Result<RetryPolicy, crate::field::FieldError> {
        let spec = format!("  hosts: [web]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n{yaml}");
        vs(&spec).map(|model| model.http[0].retries.clone())
    }

    #[test]
    fn the_default_retries_twice_on_connect_failure_refused_stream_and_grpc_unavailable() {
        let default = RetryPolicy::default();
        assert_eq!(default.attempts, 2);
        assert_eq!(retries("").unwrap(), default, "no retries block: Istio's default");
        assert!(default.should_retry(&AttemptOutcome::ConnectFailure));
        assert!(default.should_retry(&AttemptOutcome::RefusedStream));
        assert!(default.should_retry(&AttemptOutcome::Status { status: 200, grpc_status: Some(14) }));
        assert!(default.should_retry(&AttemptOutcome::Status { status: 200, grpc_status: Some(1) }));
        assert!(!default.should_retry(&status(503)), "no 503 by default");
        assert!(!default.should_retry(&status(500)));
        assert!(!default.should_retry(&AttemptOutcome::Reset));
        assert!(!default.should_retry(&AttemptOutcome::Timeout));
        assert!(default.retry_on.status_codes.is_empty());
    }

    #[test]
    fn each_token_retries_what_envoy_does() {
        let five_xx = policy("5xx");
        assert!(five_xx.should_retry(&status(500)) && five_xx.should_retry(&status(503)));
        assert!(!five_xx.should_retry(&status(404)));
        for outcome in [AttemptOutcome::ConnectFailure, AttemptOutcome::Reset, AttemptOutcome::Timeout] {
            assert!(five_xx.should_retry(&outcome), "5xx covers no response: {outcome:?}");
        }
        let gateway = policy("gateway-error");
        assert!(gateway.should_retry(&status(502)) && gateway.should_retry(&status(504)));
        assert!(!gateway.should_retry(&status(500)));
        assert!(gateway.should_retry(&AttemptOutcome::Timeout));
        let reset = policy("reset");
        assert!(reset.should_retry(&AttemptOutcome::Reset) && !reset.should_retry(&status(503)));
        let connect = policy("connect-failure");
        assert!(connect.should_retry(&AttemptOutcome::ConnectFailure));
        assert!(!connect.should_retry(&AttemptOutcome::Reset) && !connect.should_retry(&AttemptOutcome::Timeout));
        let conflict = policy("retriable-4xx");
        assert!(conflict.should_retry(&status(409)) && !conflict.should_retry(&status(404)));
        let refused = policy("refused-stream");
        assert!(refused.should_retry(&AttemptOutcome::RefusedStream));
        assert!(!refused.should_retry(&AttemptOutcome::Reset));
        let codes = policy("503,429");
        assert!(codes.should_retry(&status(429)) && codes.should_retry(&status(503)));
        assert!(!codes.should_retry(&status(500)));
        assert!(codes.retry_on.conditions.contains(&RetryCondition::RetriableStatusCodes), "numbers imply the token");
        let grpc = policy("deadline-exceeded,internal,resource-exhausted");
        for code in [4, 13, 8] {
            assert!(grpc.should_retry(&AttemptOutcome::Status { status: 200, grpc_status: Some(code) }));
        }
        assert!(!grpc.should_retry(&AttemptOutcome::Status { status: 200, grpc_status: Some(14) }));
        assert!(!grpc.should_retry(&AttemptOutcome::Status { status: 200, grpc_status: None }));
    }

    #[test]
    fn retries_block_overrides_the_default_field_by_field() {
        let set = retries("    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error,503'}\n").unwrap();
        assert_eq!(set.attempts, 3);
        assert_eq!(set.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(set.retry_on.status_codes, [503]);
        assert!(!set.retry_on.conditions.contains(&RetryCondition::ConnectFailure), "retryOn replaces the default");
        let attempts_only = retries("    retries: {attempts: 5}\n").unwrap();
        assert_eq!(attempts_only.retry_on, RetryPolicy::default().retry_on, "retryOn unset keeps the default");
        let disabled = retries("    retries: {attempts: 0}\n").unwrap();
        assert_eq!(disabled.attempts, 0);
        assert!(!disabled.should_retry(&AttemptOutcome::ConnectFailure), "attempts 0 disables retries");
        let backoff = retries("    retries: {attempts: 1, backoff: 100ms}\n").unwrap();
        assert_eq!(backoff.backoff(1, 150), Duration::from_millis(50));
    }

    #[test]
    fn invalid_retries_are_named() {
        let cases = [
            ("{attempts: 0, perTryTimeout: 1s}", "spec.http[0].retries.perTryTimeout"),
            ("{attempts: 0, retryOn: 5xx}", "spec.http[0].retries.retryOn"),
            ("{retryOn: 5xx}", "spec.http[0].retries.retryOn"),
            ("{attempts: -1}", "spec.http[0].retries.attempts"),
            ("{attempts: 2, retryOn: '5xx,sometimes'}", "spec.http[0].retries.retryOn"),
            ("{attempts: 2, perTryTimeout: soon}", "spec.http[0].retries.perTryTimeout"),
        ];
        for (block, field) in cases {
            let error = retries(&format!("    retries: {block}\n")).unwrap_err();
            assert_eq!(error.field, field, "{block}: {error}");
        }
    }

    #[test]
    fn backoff_is_full_jitter_over_a_doubling_capped_interval() {
        let bounds = [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (6, 250), (40, 250)];
        for (retry, bound) in bounds {
            assert_eq!(retry_backoff(retry, 0), Duration::ZERO);
            assert_eq!(retry_backoff(retry, bound - 1), Duration::from_millis(bound - 1), "retry {retry}");
            assert_eq!(retry_backoff(retry, bound), Duration::ZERO, "wraps: strictly below {bound} ms");
            for random in [u64::MAX, 0xDEAD_BEEF, 12345] {
                assert!(retry_backoff(retry, random) < Duration::from_millis(bound));
            }
        }
        assert_eq!(retry_backoff(0, 30), Duration::from_millis(5), "retry 0 is treated as the first");
    }
}
