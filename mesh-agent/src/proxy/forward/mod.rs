//! One request through the proxy. The matched rule is found first; CORS
//! preflights, redirects and direct responses are answered from it alone.
//! A request that goes upstream then passes named stages, each in its own
//! room: [`fault`] → [`destination`] → request [`edits`] → [`admission`]
//! (circuit breaking) → [`attempts`] (retries, per-try deadline, outlier
//! feedback) → [`response`]. Mirrors (`proxy::mirror`) go out beside it.
//! Metrics and the [`access_log`] line close it.

mod access_log;
mod admission;
mod attempts;
mod destination;
mod edits;
mod fault;
mod flags;
mod gateway;
mod hash;
mod headers;
mod outcome;
mod request_id;
mod response;
#[cfg(test)]
mod test_support;
mod upgrade;

use crate::proxy::body::{full, ClientBody, CountingBody, ProxyBody};
use crate::proxy::cluster::admit;
use crate::proxy::header_names::REQUEST_ID;
use crate::proxy::listener::{Connection, Entry, Proxy};
use crate::proxy::replay::RequestBody;
use access_log::AccessLogLine;
use attempts::{Attempts, Finished};
use bytes::Bytes;
use flags::{flag_list, ResponseFlag};
use http::header::{HeaderValue, ALLOW, CONNECTION, LOCATION, SET_COOKIE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use mesh_core::route::{first_match, HttpMatch, HttpRoute, RequestView, RetryPolicy, RouteAction};
use mesh_core::snapshot::Snapshot;
use outcome::{local_reply, Outcome};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// The copy of a request body kept for retries and mirrors: a body longer
/// than this is tried once and not mirrored.
const REPLAY_BUFFER_LIMIT: usize = 64 * 1024;

/// Istio's retry policy for rules that set none (and for requests no rule
/// matched: the host has no routes).
static DEFAULT_RETRY: LazyLock<RetryPolicy> = LazyLock::new(RetryPolicy::default);

impl Proxy {
    /// Answers one request of a captured connection.
    pub(super) async fn handle(&self, connection: &Connection, request: Request<ClientBody>) -> Response<ProxyBody> {
        let started = Instant::now();
        let start_time = if self.access_log { access_log::start_time() } else { String::new() };
        let snapshot = self.published.borrow().snapshot.clone();
        let (mut parts, body) = request.into_parts();
        let request_id = request_id::ensure_request_id(&mut parts.headers);
        let request_bytes = headers::declared_length(&parts.headers);
        let authority = headers::authority_of(&parts);
        let authority = authority.to_str().unwrap_or_default();
        // Kept for the access log only.
        let (path, method) = match self.access_log {
            true => (parts.uri.path().to_owned(), parts.method.clone()),
            false => (String::new(), http::Method::GET),
        };

        let outcome = match snapshot.service_index_at(connection.original) {
            _ if parts.method == Method::CONNECT => refuse_connect(),
            _ if matches!(connection.entry, Entry::Gateway { .. }) => match headers::host_problem(&parts) {
                Some(problem) => Outcome::local(StatusCode::BAD_REQUEST, problem, Some(ResponseFlag::DPE), "".into()),
                None => self.at_gateway(&snapshot, connection, parts, body, authority).await,
            },
            None => Outcome::local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::UH),
                Arc::from(""),
            ),
            Some(service) => match headers::host_problem(&parts) {
                Some(problem) => {
                    let cluster = Arc::from(snapshot.services[service].fqdn.as_str());
                    Outcome::local(StatusCode::BAD_REQUEST, problem, Some(ResponseFlag::DPE), cluster)
                }
                None => self.route(&snapshot, connection, service, parts, body, authority).await,
            },
        };
        let Outcome { response, flags, upstream, cluster, attempts } = outcome;
        let source = (connection.source_workload.as_str(), connection.source_namespace.as_str());
        let code = response.status().as_u16();
        let flag_text = flag_list(&flags);
        let response_bytes = self.metrics.record_request(
            &connection.series,
            source,
            &cluster,
            code,
            &flag_text,
            request_bytes,
            attempts,
            started,
        );
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
            AccessLogLine {
                start_time,
                method: method.as_str(),
                path: &path,
                authority,
                response_code: code,
                response_flags: flag_text,
                duration_ms: started.elapsed().as_millis(),
                upstream_host: upstream,
                upstream_cluster: &cluster,
                route_name: None,
                request_id: request_id.to_str().unwrap_or_default(),
                downstream_remote_address: connection.peer,
                attempts,
            }
            .print();
        }
        response
    }

    /// Finds the rule for a request to a captured service address and
    /// carries out its action: with no rules for the host, the request
    /// goes to the service as dialled.
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
        let client_namespace = connection.client().map(|(_, namespace)| namespace);
        let routes = snapshot.routes.http_routes_for(fqdn, client_namespace);
        let rules = Rules { routes, dialled: Some(service_index), answered_as: fqdn };
        self.follow(snapshot, connection, rules, parts, body, authority).await
    }

    /// Routes a request to a gateway listener: the server its Host (or the
    /// TLS handshake) picks, then the VirtualService bound to that server
    /// for the Host; nothing matching is 404. An `httpsRedirect` server
    /// answers plain HTTP with a 301 to https.
    async fn at_gateway(
        &self,
        snapshot: &Arc<Snapshot>,
        connection: &Connection,
        mut parts: Parts,
        body: ClientBody,
        authority: &str,
    ) -> Outcome {
        let Some(state) = self.gateway.as_ref().map(|state| state.borrow().clone()) else {
            return Outcome::local(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NR), "".into());
        };
        let host = gateway::host_of(authority);
        // A gateway connection's `original` carries its server's port.
        let listener = state.plan.listeners.iter().find(|l| l.port == connection.original.port());
        let routed = listener.and_then(|l| match &connection.entry {
            // Over TLS, within the server the handshake's name picks in this
            // plan (none left after a reload: nothing routes).
            Entry::Gateway { tls: true, sni } => l.route(Some(l.server_for_sni(sni.as_deref())?), &host),
            _ => l.route(None, &host),
        });
        let Some((_, virtual_host)) = routed else {
            return Outcome::local(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NR), Arc::from(host.as_str()));
        };
        // The host's flag: a host merged from several plain HTTP servers
        // redirects when any of them does.
        if connection.scheme == "http" && virtual_host.https_redirect {
            return Outcome::answer(gateway::https_redirect(authority, &parts), vec![], Arc::from(host.as_str()));
        }
        gateway::set_forwarded(&mut parts.headers, connection);
        let rules = Rules { routes: &virtual_host.routes, dialled: None, answered_as: &host };
        self.follow(snapshot, connection, rules, parts, body, authority).await
    }

    /// Finds the rule among `rules` and carries out its action: a CORS
    /// preflight, a redirect or a direct response is answered from it; the
    /// rest goes upstream.
    async fn follow(
        &self,
        snapshot: &Arc<Snapshot>,
        connection: &Connection,
        rules: Rules<'_>,
        parts: Parts,
        body: ClientBody,
        authority: &str,
    ) -> Outcome {
        let Rules { routes, dialled, answered_as: cluster } = rules;
        let matched = {
            let view = request_view(&parts, authority, connection);
            let matched = first_match(routes, &view);
            if matched.is_none() && (!routes.is_empty() || dialled.is_none()) {
                // Rules and none matches: Envoy's "no route".
                return Outcome::local(StatusCode::NOT_FOUND, "", Some(ResponseFlag::NR), Arc::from(cluster));
            }
            // CORS preflights and redirects are answered from the rule alone.
            if let Some(answer) = matched.and_then(|(route, _)| answer_from_rule(route, &view)) {
                return Outcome::answer(answer, vec![], Arc::from(cluster));
            }
            matched
        };
        let cors_headers = matched
            .and_then(|(route, _)| route.cors.as_ref())
            .map(|cors| cors.response_headers(&request_view(&parts, authority, connection)));
        let mut outcome = self.forward(snapshot, connection, dialled, cluster, matched, parts, body, authority).await;
        if let Some(headers) = cors_headers {
            outcome.response.headers_mut().extend(headers);
        }
        outcome
    }

    /// The stages of a request that goes upstream.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        snapshot: &Arc<Snapshot>,
        connection: &Connection,
        dialled: Option<usize>,
        answered_as: &str,
        matched: Option<(&HttpRoute, Option<&HttpMatch>)>,
        mut parts: Parts,
        body: ClientBody,
        authority: &str,
    ) -> Outcome {
        let route = matched.map(|(route, _)| route);
        let mut flags = Vec::new();

        if let Some(fault) = route.and_then(|r| r.fault.as_ref()) {
            if let Some(abort) = fault::inject(fault, &mut flags).await {
                return Outcome::answer(abort, flags, Arc::from(answered_as));
            }
        }

        let target = match destination::choose(snapshot, route, dialled, fastrand::u64(..)) {
            Ok(target) => target,
            Err(no_cluster) => return no_cluster.outcome(),
        };
        // A destination the client's Sidecar does not list in `egress` is,
        // to it, a cluster that does not exist (as Istio prunes it).
        let service = &snapshot.services[target.service];
        if !snapshot.visible_to(connection.client(), service) {
            return destination::NoCluster(&service.fqdn).outcome();
        }
        let plan = self.clusters.plan(snapshot, target.service, target.subset(), connection.client());
        let cluster = plan.name.clone();

        let upgrade = edits::edit_request(&mut parts, matched, target.destination, authority);

        let policy = &plan.policy;
        // Outlier detection keeps host health per cluster (service port and
        // subset), as Istio makes one Envoy cluster of each.
        let outliers = plan.outlier.as_ref();
        let all_endpoints = plan.endpoints(connection.original.is_ipv6());
        let healthy;
        let available = match outliers {
            Some(config) => {
                healthy = plan.healthy(all_endpoints, config, Instant::now());
                &healthy[..]
            }
            None => all_endpoints,
        };
        // The locality priority this request goes to.
        let endpoints = &*crate::proxy::balance::by_priority(all_endpoints, available, fastrand::f64());
        let (hash, issued_cookie) = hash::request_hash(&policy.load_balancer, &parts, connection.peer);
        let retry = route.map(|r| &r.retries).unwrap_or(&DEFAULT_RETRY);

        // The body streams upstream as it comes; its first 64 KiB are kept
        // to send again on retry and to copy to mirrors. A longer body
        // keeps no copy: it is tried once and not mirrored.
        let mirrors = route.map(|r| r.mirrors.as_slice()).unwrap_or_default();
        let replay_limit = if retry.attempts > 0 || !mirrors.is_empty() { REPLAY_BUFFER_LIMIT } else { 0 };
        let body = RequestBody::of(body, replay_limit);
        for mirror in mirrors {
            if fastrand::f64() * 100.0 < mirror.percentage {
                let copy = match &body {
                    RequestBody::Complete(bytes) => Ok(bytes.clone()),
                    RequestBody::Streaming(replay) => Err(replay.when_complete()),
                };
                let copy = async move {
                    match copy {
                        Ok(bytes) => Some(bytes),
                        Err(whole) => whole.await.ok(),
                    }
                };
                let client = connection.client();
                let to = &mirror.destination;
                self.mirrors.send(&self.dialer, &self.clusters, snapshot, to, &parts, copy, plan.port, client);
            }
        }

        let Some(admitted) = admit(&plan.state.active, plan.request_limit) else {
            flags.push(ResponseFlag::UO);
            return Outcome::answer(admission::overflow_reply(), flags, cluster);
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
                return Outcome::answer(response, flags, cluster);
            }
        };
        let deadline = route.and_then(|r| r.timeout).map(|t| Instant::now() + t);
        let attempts = Attempts {
            dialer: &self.dialer,
            metrics: &self.metrics,
            plan: &plan,
            endpoints,
            cluster_size: all_endpoints.len(),
            outliers,
            retry,
            hash,
            deadline,
            http2,
            tls: tls.as_ref(),
            head: &parts,
        };
        let (result, endpoint, tries, in_flight) = match attempts.run(body, upgrade.is_some()).await {
            Finished::NoEndpoint { tries } => {
                flags.push(ResponseFlag::UH);
                let response = local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
                return Outcome { response, flags, upstream: None, cluster, attempts: tries };
            }
            Finished::Last { result, endpoint, tries, exhausted, in_flight } => {
                if exhausted {
                    flags.push(ResponseFlag::URX);
                }
                (result, endpoint, tries, in_flight)
            }
        };
        let mut result = result;
        if let attempts::TryResult::Response(response) = &mut result {
            if let Some(cookie) = issued_cookie {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
            if let Some(client_side) = upgrade {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let headers = response.headers().clone();
                    upgrade::tunnel(client_side, hyper::upgrade::on(&mut *response), (in_flight, admitted));
                    let mut head = Response::new(full(Bytes::new()));
                    *head.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    *head.headers_mut() = headers;
                    return Outcome { response: head, flags, upstream: Some(endpoint), cluster, attempts: tries };
                }
            }
        }
        let guards = in_flight.map(|in_flight| (in_flight, admitted));
        let response = response::finish(result, &mut flags, endpoint, target.destination, route, deadline, guards);
        Outcome { response, flags, upstream: Some(endpoint), cluster, attempts: tries }
    }
}

/// The rules a request is routed by.
struct Rules<'a> {
    routes: &'a [HttpRoute],
    /// The service the client dialled (none at a gateway): where a request
    /// goes when the host has no rules.
    dialled: Option<usize>,
    /// The name answers made without an upstream are counted under (made
    /// an `Arc` only for such an answer: forwarded requests use the plan's).
    answered_as: &'a str,
}

/// CONNECT asks for a tunnel, which no route here offers: refused at once
/// (as nginx does), and the connection closed, since the client may start
/// sending tunnel bytes.
fn refuse_connect() -> Outcome {
    let text = "CONNECT is not supported: the mesh proxy routes HTTP requests only";
    let mut outcome = Outcome::local(StatusCode::METHOD_NOT_ALLOWED, text, Some(ResponseFlag::DPE), Arc::from(""));
    let headers = outcome.response.headers_mut();
    headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    outcome
}

/// The answer a rule gives by itself: a CORS preflight's, a redirect or a
/// direct response. None: the request goes upstream.
fn answer_from_rule(route: &HttpRoute, view: &RequestView<'_>) -> Option<Response<ProxyBody>> {
    if let Some(preflight) = route.cors.as_ref().and_then(|c| c.preflight(view)) {
        let mut response = local_reply(StatusCode::OK, "");
        response.headers_mut().extend(preflight);
        return Some(response);
    }
    match &route.action {
        RouteAction::Redirect(redirect) => {
            let (status, location) = redirect.response(view);
            let mut response = local_reply(StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY), "");
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(LOCATION, value);
            }
            Some(response)
        }
        RouteAction::DirectResponse { status, body } => {
            let mut response = Response::new(full(body.clone()));
            *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            Some(response)
        }
        RouteAction::Forward(_) => None,
    }
}

/// What routing looks at in a request, and who sent it.
fn request_view<'a>(parts: &'a Parts, authority: &'a str, connection: &'a Connection) -> RequestView<'a> {
    RequestView {
        method: &parts.method,
        scheme: connection.scheme,
        authority,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        port: connection.original.port(),
        source_labels: connection.client().map(|(labels, _)| labels),
        source_namespace: connection.client().map(|(_, namespace)| namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::routes;

    fn view_of(parts: &Parts) -> RequestView<'_> {
        RequestView {
            method: &parts.method,
            scheme: "http",
            authority: "reviews",
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            port: 9080,
            source_labels: None,
            source_namespace: None,
        }
    }

    #[test]
    fn redirects_and_direct_responses_are_answered_from_the_rule() {
        let rules = routes(concat!(
            "- match: [{uri: {prefix: /old}}]\n  redirect: {uri: /new, redirectCode: 308}\n",
            "- match: [{uri: {prefix: /down}}]\n  directResponse: {status: 503, body: {string: maintenance}}\n",
            "- route: [{destination: {host: reviews}}]\n",
        ));
        let (parts, ()) = Request::get("/old/x").body(()).unwrap().into_parts();
        let redirect = answer_from_rule(&rules[0], &view_of(&parts)).unwrap();
        assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(redirect.headers()["location"], "http://reviews/new");
        let direct = answer_from_rule(&rules[1], &view_of(&parts)).unwrap();
        assert_eq!(direct.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer_from_rule(&rules[2], &view_of(&parts)).is_none(), "forwarded");
    }
}
