//! The attempts stage: tries of one request until one answers for good.
//! Each try picks an endpoint (a host not tried yet, unless hashing), goes
//! out with its attempt count under the per-try deadline (never past the
//! route's), and tells outlier detection how the host did. A try the retry
//! policy retries is followed by another after a jittered backoff, within
//! `attempts` and the cluster's `maxRetries`; the route timeout bounds all
//! of it.

use crate::proxy::balance::pick;
use crate::proxy::cluster::{admit, ClusterPlan, Endpoint, InFlight};
use crate::proxy::header_names::GRPC_STATUS;
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::outlier::{Observation, OutlierConfig};
use crate::proxy::replay::RequestBody;
use crate::proxy::upstream::connect::Tls;
use crate::proxy::upstream::dialer::{Dialer, Payload, Try, UpstreamBody};
use crate::proxy::upstream::error::UpstreamError;
use http::header::HeaderMap;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use mesh_core::route::{AttemptOutcome, RetryPolicy};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// How one try ended.
// One per try, moved a few times on its way out: boxing the response would
// cost an allocation per try.
#[allow(clippy::large_enum_variant)]
pub enum TryResult {
    Response(Response<UpstreamBody>),
    Failed(UpstreamError),
    /// Past its deadline (the per-try one or the route's).
    TimedOut,
}

impl TryResult {
    /// What the retry policy and outlier detection make of it.
    pub fn outcome(&self) -> AttemptOutcome {
        match self {
            TryResult::TimedOut => AttemptOutcome::Timeout,
            TryResult::Response(response) => answered(response.status(), response.headers()),
            TryResult::Failed(error) if error.is_connect() => AttemptOutcome::ConnectFailure,
            TryResult::Failed(UpstreamError::RefusedStream(_)) => AttemptOutcome::RefusedStream,
            TryResult::Failed(_) => AttemptOutcome::Reset,
        }
    }
}

/// A try that got a response: its status, and the gRPC one if any.
fn answered(status: StatusCode, headers: &HeaderMap) -> AttemptOutcome {
    let grpc_status = headers.get(&GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    AttemptOutcome::Status { status: status.as_u16(), grpc_status }
}

/// What outlier detection learns from a try: its status, or a local
/// failure (connect failure, reset, timeout).
pub fn observation(outcome: &AttemptOutcome) -> Observation {
    match outcome {
        AttemptOutcome::Status { status, .. } => Observation::Status(*status),
        _ => Observation::LocalFailure,
    }
}

/// Everything the tries of one request share.
pub struct Attempts<'a> {
    pub dialer: &'a Dialer,
    pub metrics: &'a ProxyMetrics,
    pub plan: &'a ClusterPlan,
    /// The endpoints to balance over (outlier detection's ejected left out).
    pub endpoints: &'a [Endpoint],
    /// All of the cluster's endpoints in the family, for `maxEjectionPercent`.
    pub cluster_size: usize,
    pub outliers: Option<&'a OutlierConfig>,
    pub retry: &'a RetryPolicy,
    /// The consistent-hash key, when the policy hashes.
    pub hash: Option<u64>,
    /// The route timeout, over all tries.
    pub deadline: Option<Instant>,
    pub http2: bool,
    pub tls: Option<&'a Tls>,
    pub head: &'a Parts,
}

/// How the tries ended.
#[allow(clippy::large_enum_variant)] // made once per request
pub enum Finished {
    /// No endpoint was left to try (503, flag UH).
    NoEndpoint { tries: u32 },
    /// The last try: its result from `endpoint`, and whether the retries
    /// ran out on a retriable answer (flag URX). `in_flight` counts the
    /// request against the endpoint until the response's body ends (none
    /// when the route's deadline passed while backing off).
    Last { result: TryResult, endpoint: SocketAddr, tries: u32, exhausted: bool, in_flight: Option<InFlight> },
}

impl Attempts<'_> {
    /// Runs the tries of a request with `body`. A streaming body is sent
    /// again only while its copy holds all of it (else the try it is on is
    /// the last, counted); an upgrade is tried once.
    pub async fn run(&self, body: RequestBody, upgrading: bool) -> Finished {
        let allowed = if upgrading { 1 } else { self.retry.attempts + 1 };
        let mut tried: Vec<SocketAddr> = Vec::new();
        // Retries under way per cluster are bounded by `http.maxRetries`;
        // the slot is held until the tries end.
        let mut _retry_slot: Option<InFlight> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let picked =
                pick(&self.plan.state.cursor, self.endpoints, &self.plan.policy.load_balancer, self.hash, &tried);
            let Some(picked) = picked else { return Finished::NoEndpoint { tries: attempt - 1 } };
            let endpoint = picked.address;
            let payload = match &body {
                RequestBody::Complete(bytes) => Payload::Complete(bytes.clone()),
                RequestBody::Streaming(replay) => Payload::Streamed(replay.body().boxed()),
            };
            let per_try = self.retry.per_try_timeout.map(|t| Instant::now() + t);
            let try_deadline = match (self.deadline, per_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let in_flight = picked.start();
            // Every try sends the same head; the future is made in place
            // (a future held in a local and then wrapped would take its
            // room twice in this one).
            let to = Try {
                endpoint,
                http2: self.http2,
                tls: self.tls,
                limits: self.plan.limits,
                head: self.head,
                attempt: Some(attempt),
            };
            let result = match Within::new(try_deadline, self.dialer.send(to, payload)).await {
                Err(()) => TryResult::TimedOut,
                Ok(Ok(response)) => TryResult::Response(response),
                Ok(Err(error)) => TryResult::Failed(error),
            };
            // A request body that failed on the client's side is not the
            // upstream's failure: neither judged nor retried.
            if let TryResult::Failed(UpstreamError::RequestBody(_)) = result {
                return Finished::Last {
                    result,
                    endpoint,
                    tries: attempt,
                    exhausted: false,
                    in_flight: Some(in_flight),
                };
            }
            let outcome = result.outcome();
            if let Some(config) = self.outliers {
                if self.plan.observe(endpoint, observation(&outcome), config, self.cluster_size, Instant::now()) {
                    tracing::info!(cluster = %self.plan.name, host = %endpoint, "outlier ejected");
                    self.metrics.ejections.get_or_create(&vec![("cluster".into(), self.plan.name.to_string())]).inc();
                }
            }
            let retriable = self.retry.should_retry(&outcome);
            let route_timed_out = self.deadline.is_some_and(|d| Instant::now() >= d);
            let mut retry_slot = None;
            if retriable && attempt < allowed && !route_timed_out {
                if body.replayable() {
                    retry_slot = admit(&self.plan.state.retries, self.plan.max_retries());
                } else {
                    self.metrics.retry_skipped(&self.plan.name, "request_body_over_retry_buffer");
                }
            }
            let Some(slot) = retry_slot else {
                let exhausted = retriable && allowed > 1 && attempt >= allowed;
                return Finished::Last { result, endpoint, tries: attempt, exhausted, in_flight: Some(in_flight) };
            };
            _retry_slot = Some(slot);
            tried.push(endpoint);
            drop(in_flight);
            // The backoff never outlasts the route timeout: past it, 504.
            let wake = Instant::now() + self.retry.backoff(attempt, fastrand::u64(..));
            tokio::time::sleep_until(self.deadline.map_or(wake, |d| d.min(wake)).into()).await;
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                let result = TryResult::TimedOut;
                return Finished::Last { result, endpoint, tries: attempt, exhausted: false, in_flight: None };
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A future cut at an optional deadline (`Err(())` past it). Unlike
    /// `tokio::time::timeout`, no timer is made without a deadline, and
    /// one that is made is boxed: the wrapped future is nearly all of it.
    pub struct Within<F> {
        #[pin]
        future: F,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Within<F> {
    pub fn new(deadline: Option<Instant>, future: F) -> Self {
        Within { future, timer: deadline.map(|at| Box::pin(tokio::time::sleep_until(at.into()))) }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_are_classified_for_retries_and_outlier_detection() {
        let unavailable = answered(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new());
        assert_eq!(unavailable, AttemptOutcome::Status { status: 503, grpc_status: None });
        assert_eq!(observation(&unavailable), Observation::Status(503));
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "14".parse().unwrap());
        let grpc = answered(StatusCode::OK, &headers);
        assert_eq!(grpc, AttemptOutcome::Status { status: 200, grpc_status: Some(14) });
        assert_eq!(TryResult::TimedOut.outcome(), AttemptOutcome::Timeout);
        assert_eq!(TryResult::Failed(UpstreamError::ConnectTimeout).outcome(), AttemptOutcome::ConnectFailure);
        let reset = TryResult::Failed(UpstreamError::Failed("reset".into())).outcome();
        assert_eq!(reset, AttemptOutcome::Reset);
        assert_eq!(observation(&reset), Observation::LocalFailure);
    }

    #[tokio::test]
    async fn within_cuts_at_the_deadline_and_waits_without_one() {
        let never = std::future::pending::<()>();
        let soon = Some(Instant::now() + std::time::Duration::from_millis(5));
        assert_eq!(Within::new(soon, never).await, Err(()));
        assert_eq!(Within::new(None, async { 7 }).await, Ok(7));
    }
}
