//! One request through the proxy: route, fault, pick a destination and an
//! endpoint, forward with timeouts and retries, mirror, and log.

use super::balance::{pick, random_u64, random_unit};
use super::balance::{Payload, Try, UpstreamBody, UpstreamError};
use super::body::{full, ClientBody, CountingBody, GuardedBody, PrefixedBody, RequestBody};
use super::cluster::{admit, InFlight};
use super::outlier::Observation;
use super::pool::CheckinSlot;
use super::{Connection, Proxy, ProxyBody};
use crate::policy::{HashKey, LoadBalancer};
use crate::route::{
    first_match, pick_destination, shadow_authority, Abort, AttemptOutcome, HttpMatch, HttpRoute, RequestView,
    RetryPolicy, RouteAction, RouteDestination,
};
use crate::snapshot::Snapshot;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// Request bodies up to this size are kept for retries and mirrors; larger
/// ones stream through once and are never retried.
const REPLAY_BUFFER_LIMIT: usize = 64 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
// Names as constants: a string would be parsed on every request.
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static DEFAULT_RETRY: LazyLock<RetryPolicy> = LazyLock::new(RetryPolicy::default);

/// Mirrored requests under way; past the cap, copies are dropped rather
/// than piling up behind a slow shadow.
static MIRRORS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Envoy's response flags, as they appear in access logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ResponseFlag {
    /// Upstream connection failure.
    UF,
    /// No healthy upstream.
    UH,
    /// Upstream overflow (circuit breaking).
    UO,
    /// Upstream request timeout.
    UT,
    /// Upstream reset before a response.
    UR,
    /// Upstream protocol error (a malformed response).
    UPE,
    /// Upstream retry limit exceeded.
    URX,
    /// Fault injection: abort.
    FI,
    /// Fault injection: delay.
    DI,
    /// No route matched.
    NR,
    /// No cluster: a route's destination host is not known.
    NC,
}

/// One access-log line, JSON.
#[derive(Serialize)]
struct AccessLogLine<'a> {
    start_time: String,
    method: &'a str,
    path: &'a str,
    authority: &'a str,
    response_code: u16,
    response_flags: std::borrow::Cow<'static, str>,
    duration_ms: u128,
    upstream_host: Option<SocketAddr>,
    upstream_cluster: &'a str,
    route_name: Option<&'a str>,
    request_id: &'a str,
    downstream_remote_address: SocketAddr,
    attempts: u32,
}

/// What a forward produced, for the log.
struct Outcome {
    response: Response<ProxyBody>,
    flags: Vec<ResponseFlag>,
    upstream: Option<SocketAddr>,
    cluster: Arc<str>,
    attempts: u32,
}

impl Outcome {
    fn local(status: StatusCode, text: &str, flag: Option<ResponseFlag>, cluster: Arc<str>) -> Self {
        Outcome {
            response: local_reply(status, text),
            flags: flag.into_iter().collect(),
            upstream: None,
            cluster,
            attempts: 0,
        }
    }
}

impl Proxy {
    pub(super) async fn handle(&self, connection: &Connection, request: Request<ClientBody>) -> Response<ProxyBody> {
        let started = Instant::now();
        let start_time = if self.access_log { humantime_now() } else { String::new() };
        let snapshot = self.published.borrow().snapshot.clone();
        let (mut parts, body) = request.into_parts();
        let request_id = ensure_request_id(&mut parts.headers);
        let request_bytes = declared_length(&parts.headers);
        let authority = authority_of(&parts);
        let authority = authority.to_str().unwrap_or_default();
        // Kept for the access log only.
        let (path, method) = match self.access_log {
            true => (parts.uri.path().to_owned(), parts.method.clone()),
            false => (String::new(), http::Method::GET),
        };

        let outcome = match snapshot.service_index_at(connection.original) {
            None => Outcome::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::UH),
                Arc::from(""),
            ),
            Some(service) => self.route(&snapshot, connection, service, parts, body, authority).await,
        };
        let Outcome { response, flags, upstream, cluster, attempts } = outcome;
        let response_bytes =
            self.record_metrics(connection, request_bytes, &response, &flags, &cluster, attempts, started);
        // A body of known length is counted now; a streamed one as it goes.
        let mut response = match hyper::body::Body::size_hint(response.body()).exact() {
            Some(length) => {
                response_bytes.inc_by(length);
                response
            }
            None => response.map(|body| CountingBody::wrap(body, response_bytes)),
        };
        response.headers_mut().entry(REQUEST_ID.clone()).or_insert_with(|| request_id.clone());
        if self.access_log {
            let line = AccessLogLine {
                start_time,
                method: method.as_str(),
                path: &path,
                authority,
                response_code: response.status().as_u16(),
                response_flags: flag_list(&flags),
                duration_ms: started.elapsed().as_millis(),
                upstream_host: upstream,
                upstream_cluster: &cluster,
                route_name: None,
                request_id: request_id.to_str().unwrap_or_default(),
                downstream_remote_address: connection.peer,
                attempts,
            };
            if let Ok(json) = serde_json::to_string(&line) {
                println!("{json}");
            }
        }
        response
    }

    /// Finds the rule for the request and carries out its action.
    async fn route(
        &self,
        snapshot: &Arc<Snapshot>,
        connection: &Connection,
        service_index: usize,
        parts: Parts,
        body: ClientBody,
        authority: &str,
    ) -> Outcome {
        let fqdn = &snapshot.services[service_index].fqdn;
        let cluster = || Arc::<str>::from(fqdn.as_str());
        let client_namespace = connection.source.as_ref().map(|(_, namespace)| namespace.as_str());
        let routes = snapshot.routes.http_routes_for(fqdn, client_namespace);
        let matched = {
            let view = request_view(&parts, authority, connection);
            let matched = first_match(routes, &view);
            if matched.is_none() && !routes.is_empty() {
                // The host has rules and none matches: Envoy's "no route".
                return Outcome::local(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NR), cluster());
            }
            // CORS preflights and redirects are answered from the rule alone.
            if let Some((route, _)) = matched {
                if let Some(preflight) = route.cors.as_ref().and_then(|c| c.preflight(&view)) {
                    let mut response = local_reply(StatusCode::OK, "");
                    response.headers_mut().extend(preflight);
                    return Outcome { response, flags: vec![], upstream: None, cluster: cluster(), attempts: 0 };
                }
                match &route.action {
                    RouteAction::Redirect(redirect) => {
                        let (status, location) = redirect.response(&view);
                        let mut response =
                            local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
                        if let Ok(value) = HeaderValue::from_str(&location) {
                            response.headers_mut().insert(LOCATION, value);
                        }
                        return Outcome { response, flags: vec![], upstream: None, cluster: cluster(), attempts: 0 };
                    }
                    RouteAction::DirectResponse { status, body } => {
                        let mut response = Response::new(full(body.clone()));
                        *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                        return Outcome { response, flags: vec![], upstream: None, cluster: cluster(), attempts: 0 };
                    }
                    RouteAction::Forward(_) => {}
                }
            }
            matched
        };
        let cors_headers = matched
            .and_then(|(route, _)| route.cors.as_ref())
            .map(|cors| cors.response_headers(&request_view(&parts, authority, connection)));
        let mut outcome = self.forward(snapshot, connection, service_index, matched, parts, body, authority).await;
        if let Some(headers) = cors_headers {
            outcome.response.headers_mut().extend(headers);
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        snapshot: &Arc<Snapshot>,
        connection: &Connection,
        service_index: usize,
        matched: Option<(&HttpRoute, Option<&HttpMatch>)>,
        mut parts: Parts,
        body: ClientBody,
        authority: &str,
    ) -> Outcome {
        let route = matched.map(|(route, _)| route);
        let service = &snapshot.services[service_index];
        let mut flags = Vec::new();

        // Faults act on the client side, before anything goes upstream.
        if let Some(fault) = route.and_then(|r| r.fault.as_ref()) {
            let decision = fault.decide(random_unit(), random_unit());
            if let Some(delay) = decision.delay {
                tokio::time::sleep(delay).await;
                flags.push(ResponseFlag::DI);
            }
            if let Some(abort) = decision.abort {
                flags.push(ResponseFlag::FI);
                let response = match abort {
                    Abort::Http(status) => local_reply(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                        "fault filter abort",
                    ),
                    Abort::Grpc(code) => grpc_status_reply(code, "fault filter abort"),
                };
                return Outcome { response, flags, upstream: None, cluster: service.fqdn.as_str().into(), attempts: 0 };
            }
        }

        // Which service (and subset) this request goes to.
        let destination: Option<&RouteDestination> = match route.map(|r| &r.action) {
            Some(RouteAction::Forward(destinations)) => pick_destination(destinations, random_u64()),
            _ => None,
        };
        let target = match destination {
            None => Some(service_index),
            Some(d) => snapshot.service_index_for_host(&d.host, d.port.unwrap_or(service.port)),
        };
        let Some(target) = target else {
            let host = destination.map(|d| d.host.as_str()).unwrap_or_default();
            return Outcome::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::NC),
                host.into(),
            );
        };
        let plan = self.clusters.plan(snapshot, target, destination.and_then(|d| d.subset.as_deref()));
        let cluster = plan.name.clone();

        // The route's rewrite, then the header rules.
        if let Some((route, matched_block)) = matched {
            if let Some(rewrite) = &route.rewrite {
                if let Some(path) = rewrite.path(parts.uri.path(), matched_block) {
                    let path_and_query = match parts.uri.query() {
                        Some(query) => format!("{path}?{query}"),
                        None => path,
                    };
                    if let Ok(uri) = path_and_query.parse::<Uri>() {
                        parts.uri = uri;
                    }
                }
                if let Some(new_authority) = rewrite.authority() {
                    set_authority(&mut parts, new_authority);
                }
            }
        }
        // Envoy's order: the destination's rules, then the route's, so the
        // route's `set` wins.
        if let Some(destination) = destination {
            destination.headers.request.apply(&mut parts.headers);
        }
        if let Some(route) = route {
            route.headers.request.apply(&mut parts.headers);
        }
        if parts.headers.get(HOST).is_none() {
            set_authority(&mut parts, authority);
        }
        // An Upgrade (WebSocket and the like) keeps its Connection/Upgrade
        // headers and goes to the upstream over HTTP/1.1, once.
        let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>().filter(|_| is_upgrade(&parts.headers));
        if upgrade.is_some() {
            let protocol = parts.headers.remove(UPGRADE);
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                parts.headers.insert(UPGRADE, protocol);
            }
        } else {
            strip_hop_by_hop(&mut parts.headers);
        }

        let policy = &plan.policy;
        // Outlier detection keeps host health per cluster (service port and
        // subset), as Istio makes one Envoy cluster of each.
        let outliers = plan.outlier.as_ref();
        let all_endpoints = plan.endpoints(connection.original.is_ipv6());
        let healthy;
        let endpoints = match outliers {
            Some(config) => {
                healthy = plan.healthy(all_endpoints, config);
                &healthy[..]
            }
            None => all_endpoints,
        };
        let (hash, issued_cookie) = request_hash(&policy.load_balancer, &parts, connection.peer);
        let mut _retry_slot: Option<InFlight> = None;
        let retry = route.map(|r| &r.retries).unwrap_or(&DEFAULT_RETRY);

        // A body that ends within the first 64 KiB is kept: it can be sent
        // again on retry and copied to mirrors. Anything longer streams
        // through once and is never retried.
        let mirrors = route.map(|r| r.mirrors.as_slice()).unwrap_or_default();
        let body = if retry.attempts > 0 || !mirrors.is_empty() {
            match RequestBody::read_ahead(body, REPLAY_BUFFER_LIMIT).await {
                Ok(body) => body,
                Err(error) => {
                    tracing::debug!(%error, "client body failed");
                    return Outcome::local(StatusCode::BAD_REQUEST, "bad request body", None, cluster);
                }
            }
        } else {
            RequestBody::unread(body)
        };
        for mirror in mirrors {
            if random_unit() * 100.0 < mirror.percentage {
                if let RequestBody::Complete(bytes) = &body {
                    self.mirror(snapshot, &mirror.destination, &parts, bytes.clone(), plan.port);
                }
            }
        }

        // Circuit breaking: requests under way per cluster, as Envoy bounds
        // them (HTTP/1: connections plus pending; HTTP/2: requests).
        let Some(admitted) = admit(&plan.state.active, plan.request_limit) else {
            flags.push(ResponseFlag::UO);
            let mut response = local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            );
            response.headers_mut().insert(OVERLOADED.clone(), HeaderValue::from_static("true"));
            return Outcome { response, flags, upstream: None, cluster, attempts: 0 };
        };
        // An upgrade goes over HTTP/1.1 whatever the port speaks.
        let http2 = plan.http2 && upgrade.is_none();
        // TLS origination, when the DestinationRule asks for it.
        let tls = match plan.tls(http2) {
            Ok(tls) => tls,
            Err(error) => {
                tracing::warn!(%cluster, %error, "cannot originate TLS");
                flags.push(ResponseFlag::UF);
                let response = local_reply(StatusCode::SERVICE_UNAVAILABLE, &format!("upstream TLS: {error}"));
                return Outcome { response, flags, upstream: None, cluster, attempts: 0 };
            }
        };
        let deadline = route.and_then(|r| r.timeout).map(|t| Instant::now() + t);
        let attempts_allowed = if body.replayable() && upgrade.is_none() { retry.attempts + 1 } else { 1 };
        let mut upgrade = upgrade;
        let mut body = Some(body);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let picked = pick(&plan.state.cursor, endpoints, &policy.load_balancer, hash, &tried);
            let Some(picked) = picked else {
                flags.push(ResponseFlag::UH);
                return Outcome {
                    response: local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                    flags,
                    upstream: None,
                    cluster,
                    attempts: attempt - 1,
                };
            };
            let endpoint = picked.address;
            let this_body = match body.as_ref() {
                Some(RequestBody::Complete(bytes)) => Payload::Complete(bytes.clone()),
                _ => match body.take() {
                    Some(RequestBody::Partial(prefix, rest)) => {
                        Payload::Streamed(PrefixedBody::new(prefix, rest).boxed())
                    }
                    _ => Payload::Complete(Bytes::new()),
                },
            };
            let per_try = retry.per_try_timeout.map(|t| Instant::now() + t);
            let try_deadline = match (deadline, per_try) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let in_flight = picked.start();
            // Every try sends the same head; the future is made in place
            // (a future held in a local and then wrapped would take its
            // room twice in this one).
            let to =
                Try { endpoint, http2, tls: tls.as_ref(), limits: plan.limits, head: &parts, attempt: Some(attempt) };
            let mut result = Within::new(try_deadline, self.upstreams.dialer().send(to, this_body)).await;
            let outcome = match &result {
                Err(()) => AttemptOutcome::Timeout,
                Ok(Ok(response)) => AttemptOutcome::Status {
                    status: response.status().as_u16(),
                    grpc_status: response
                        .headers()
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok()),
                },
                Ok(Err(error)) if error.is_connect() => AttemptOutcome::ConnectFailure,
                Ok(Err(UpstreamError::RefusedStream(_))) => AttemptOutcome::RefusedStream,
                Ok(Err(_)) => AttemptOutcome::Reset,
            };
            if let Some(config) = outliers {
                let observation = match outcome {
                    AttemptOutcome::Status { status, .. } => Observation::Status(status),
                    _ => Observation::LocalFailure,
                };
                if plan.observe(endpoint, observation, config, all_endpoints.len()) {
                    tracing::info!(%cluster, host = %endpoint, "outlier ejected");
                    self.metrics.ejections.get_or_create(&vec![("cluster".into(), cluster.to_string())]).inc();
                }
            }
            let retriable = retry.should_retry(&outcome);
            let route_timed_out = deadline.is_some_and(|d| Instant::now() >= d);
            let retry_slot = if retriable && attempt < attempts_allowed && !route_timed_out {
                // Retries under way per cluster are bounded by `http.maxRetries`.
                admit(&plan.state.retries, plan.max_retries)
            } else {
                None
            };
            if let Some(slot) = retry_slot {
                _retry_slot = Some(slot);
                tried.push(endpoint);
                drop(in_flight);
                // The backoff never outlasts the route timeout: past it, 504.
                let wake = Instant::now() + retry.backoff(attempt, random_u64());
                tokio::time::sleep_until(deadline.map_or(wake, |d| d.min(wake)).into()).await;
                if deadline.is_none_or(|d| Instant::now() < d) {
                    continue;
                }
                return self.finish(Err(()), flags, endpoint, cluster, attempt, destination, route, deadline, None);
            }
            if retriable && attempts_allowed > 1 && attempt >= attempts_allowed {
                flags.push(ResponseFlag::URX);
            }
            if let (Some(cookie), Ok(Ok(response))) = (&issued_cookie, result.as_mut()) {
                response.headers_mut().append(http::header::SET_COOKIE, cookie.clone());
            }
            if let (Some(client_side), Ok(Ok(response))) = (upgrade.take(), result.as_mut()) {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let headers = response.headers().clone();
                    tunnel(client_side, hyper::upgrade::on(&mut *response), (in_flight, admitted));
                    let mut head = Response::new(full(Bytes::new()));
                    *head.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    *head.headers_mut() = headers;
                    return Outcome { response: head, flags, upstream: Some(endpoint), cluster, attempts: attempt };
                }
            }
            return self.finish(
                result,
                flags,
                endpoint,
                cluster,
                attempt,
                destination,
                route,
                deadline,
                Some((in_flight, admitted)),
            );
        }
    }

    /// The answer for the last try: the upstream's response (holding the
    /// request's accounting until its body ends, and cut at the route
    /// deadline) or a local error with its flag.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        result: Result<Result<Response<UpstreamBody>, UpstreamError>, ()>,
        mut flags: Vec<ResponseFlag>,
        endpoint: SocketAddr,
        cluster: Arc<str>,
        attempt: u32,
        destination: Option<&RouteDestination>,
        route: Option<&HttpRoute>,
        deadline: Option<Instant>,
        guards: Option<(InFlight, InFlight)>,
    ) -> Outcome {
        {
            let response = match result {
                Ok(Ok(response)) => {
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
                    response
                }
                Err(()) => {
                    flags.push(ResponseFlag::UT);
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
                Ok(Err(error)) if error.is_connect() => {
                    flags.push(ResponseFlag::UF);
                    local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                    )
                }
                Ok(Err(UpstreamError::Protocol(error))) => {
                    tracing::debug!(%error, %endpoint, "upstream sent a malformed response");
                    flags.push(ResponseFlag::UPE);
                    local_reply(StatusCode::BAD_GATEWAY, "upstream sent a malformed response")
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, %endpoint, "upstream failed");
                    flags.push(ResponseFlag::UR);
                    local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
                    )
                }
            };
            Outcome { response, flags, upstream: Some(endpoint), cluster, attempts: attempt }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_metrics(
        &self,
        connection: &Connection,
        request_bytes: u64,
        response: &Response<ProxyBody>,
        flags: &[ResponseFlag],
        cluster: &Arc<str>,
        attempts: u32,
        started: Instant,
    ) -> prometheus_client::metrics::counter::Counter {
        let flags = flag_list(flags);
        let mut cached = crate::lock(&connection.series);
        let source = (connection.source_workload.as_str(), connection.source_namespace.as_str());
        let series = self.metrics.series(&mut cached, source, cluster, response.status().as_u16(), &flags);
        series.requests.inc();
        series.duration.observe(started.elapsed().as_secs_f64());
        series.request_bytes.inc_by(request_bytes);
        if attempts > 1 {
            series.retries.inc_by(u64::from(attempts - 1));
        }
        // Response bytes are counted as the body streams.
        series.response_bytes.clone()
    }

    /// Fire and forget: a copy to the mirror, its answer dropped, never
    /// delaying the caller.
    fn mirror(
        &self,
        snapshot: &Arc<Snapshot>,
        destination: &RouteDestination,
        parts: &Parts,
        body: Bytes,
        default_port: u16,
    ) {
        let Some(target) = snapshot.service_index_for_host(&destination.host, destination.port.unwrap_or(default_port))
        else {
            return;
        };
        let plan = self.clusters.plan(snapshot, target, destination.subset.as_deref());
        let Some(endpoint) = pick(&plan.state.cursor, plan.endpoints(false), &plan.policy.load_balancer, None, &[])
        else {
            return;
        };
        let endpoint = endpoint.address;
        let mut parts = parts.clone();
        let authority = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
        set_authority(&mut parts, &shadow_authority(&authority));
        let Ok(tls) = plan.tls(plan.http2) else { return };
        if MIRRORS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_MIRRORS_IN_FLIGHT {
            MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let dialer = self.upstreams.dialer().clone();
        let (http2, limits) = (plan.http2, plan.limits);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let to = Try { endpoint, http2, tls: tls.as_ref(), limits, head: &parts, attempt: None };
                if let Ok(response) = dialer.send(to, Payload::Complete(body)).await {
                    // Drain so the connection returns to the pool.
                    let _ = response.into_body().collect().await;
                }
            })
            .await;
            MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Response flags as logs and metrics show them: `UF,URX`, or `-`.
fn flag_list(flags: &[ResponseFlag]) -> std::borrow::Cow<'static, str> {
    if flags.is_empty() {
        return "-".into();
    }
    flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(",").into()
}

/// What routing looks at in a request, and who sent it.
fn request_view<'a>(parts: &'a Parts, authority: &'a str, connection: &'a Connection) -> RequestView<'a> {
    RequestView {
        method: &parts.method,
        scheme: "http",
        authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        port: connection.original.port(),
        source_labels: connection.source.as_ref().map(|(labels, _)| labels),
        source_namespace: connection.source.as_ref().map(|(_, namespace)| namespace.as_str()),
    }
}

/// A body's size as its Content-Length declares it (0 when streamed).
fn declared_length(headers: &http::HeaderMap) -> u64 {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn local_reply(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::copy_from_slice(text.as_bytes())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// A gRPC error as trailers-only: HTTP 200 with grpc-status in the headers.
fn grpc_status_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", value);
    }
    response
}

/// The request's authority: the URI's (HTTP/2, absolute form) or Host's,
/// a copy that shares the request's memory when it is Host's.
fn authority_of(parts: &Parts) -> HeaderValue {
    match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).unwrap_or(HeaderValue::from_static("")),
        None => parts.headers.get(HOST).cloned().unwrap_or(HeaderValue::from_static("")),
    }
}

fn set_authority(parts: &mut Parts, authority: &str) {
    if let Ok(value) = HeaderValue::from_str(authority) {
        parts.headers.insert(HOST, value);
    }
}

/// `Connection: upgrade` with an `Upgrade` protocol named.
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// After a 101 on both sides, relays bytes between the client and the
/// upstream until either closes; the request's accounting lasts as long.
fn tunnel<G: Send + 'static>(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, guards: G) {
    tokio::spawn(async move {
        let _guards = guards;
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    });
}

/// Connection-scoped headers are not forwarded (RFC 9110 §7.6.1), nor
/// those `Connection` names; `te: trailers` is end to end (gRPC needs it).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    // Most messages have none: one pass over the names (standard ones
    // compare as numbers) spares the lookups below.
    let hop_by_hop = [&CONNECTION, &TE, &TRANSFER_ENCODING, &UPGRADE, &KEEP_ALIVE, &PROXY_CONNECTION];
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: the coding framed the message, not the length, and
        // the next hop frames it anew.
        headers.remove(CONTENT_LENGTH);
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    let te_trailers = headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION, &TE, &TRANSFER_ENCODING, &UPGRADE] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Keeps the client's request id, or makes one (128 random bits, UUID form).
fn ensure_request_id(headers: &mut http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID) {
        return id.clone();
    }
    // A version 4 UUID: 122 random bits, written out by hand (format! was
    // a visible share of the proxy's time).
    let (a, b) = (random_u64(), random_u64());
    let bytes =
        ((u128::from(a) << 64 | u128::from(b)) & !(0xf000 << 64 | 0xc000 << 48)) | (0x4000 << 64 | 0x8000 << 48);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 36];
    let mut nibble = 32;
    for (i, slot) in id.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            nibble -= 1;
            *slot = HEX[(bytes >> (nibble * 4)) as usize & 0xf];
        }
    }
    let value = HeaderValue::from_maybe_shared(id_bytes(&id)).unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(REQUEST_ID.clone(), value.clone());
    value
}

/// A request id's bytes, cut from a per-thread block shared by many ids:
/// no allocation per id, and copies of it (request, response, log) only
/// count references.
fn id_bytes(id: &[u8; 36]) -> Bytes {
    use std::cell::RefCell;
    const BLOCK: usize = 36 * 512;
    thread_local! {
        static BLOCK_LEFT: RefCell<bytes::BytesMut> = RefCell::new(bytes::BytesMut::new());
    }
    BLOCK_LEFT.with(|left| {
        let mut left = left.borrow_mut();
        if left.capacity() < id.len() {
            *left = bytes::BytesMut::with_capacity(BLOCK);
        }
        left.extend_from_slice(id);
        left.split().freeze()
    })
}

/// The consistent-hash key of a request, when the policy hashes, and the
/// `Set-Cookie` to issue when hashing on a cookie with a `ttl` that the
/// request lacks (as Envoy: the new value decides the host from now on).
fn request_hash(load_balancer: &LoadBalancer, parts: &Parts, peer: SocketAddr) -> (Option<u64>, Option<HeaderValue>) {
    let LoadBalancer::ConsistentHash { key, .. } = load_balancer else { return (None, None) };
    let mut issued = None;
    let material: Option<String> = match key {
        HashKey::HttpHeaderName(name) => {
            parts.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned)
        }
        HashKey::HttpCookie { name, path, ttl } => cookie(&parts.headers, name).or_else(|| {
            let ttl = ttl.as_deref().and_then(|t| crate::policy::parse_duration("ttl", t).ok())?;
            let value = format!("{:016x}", random_u64());
            let mut header = format!("{name}=\"{value}\"");
            if let Some(path) = path {
                header.push_str(&format!("; Path={path}"));
            }
            if !ttl.is_zero() {
                header.push_str(&format!("; Max-Age={}", ttl.as_secs()));
            }
            header.push_str("; HttpOnly");
            issued = HeaderValue::from_str(&header).ok();
            Some(format!("\"{value}\""))
        }),
        HashKey::HttpQueryParameterName(name) => parts.uri.query().and_then(|q| {
            q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| k == name).map(|(_, v)| v.to_owned()))
        }),
        HashKey::UseSourceIp => Some(peer.ip().to_string()),
        HashKey::Unset => None,
    };
    (material.map(|m| crate::maglev::stable_hash(7, m.as_bytes())), issued)
}

fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';')
            .find_map(|pair| pair.trim().split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
    })
}

pin_project_lite::pin_project! {
    /// A future cut at an optional deadline (`Err(())` past it). Unlike
    /// `tokio::time::timeout`, no timer is made without a deadline, and
    /// one that is made is boxed: the wrapped future is nearly all of it.
    struct Within<F> {
        #[pin]
        future: F,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Within<F> {
    fn new(deadline: Option<Instant>, future: F) -> Self {
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

fn humantime_now() -> String {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{}.{:03}", since.as_secs(), since.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_go_and_a_coded_message_loses_its_length() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "3"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ] {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["te", "x-kept"]);
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let mut headers = http::HeaderMap::new();
        let id = ensure_request_id(&mut headers);
        let text = id.to_str().unwrap();
        let groups: Vec<usize> = text.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{text}");
        assert!(text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{text}");
        assert_eq!(&text[14..15], "4", "version: {text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "variant: {text}");
        assert_ne!(ensure_request_id(&mut http::HeaderMap::new()), id);
        assert_eq!(ensure_request_id(&mut headers), id, "a present id is kept");
    }
}
