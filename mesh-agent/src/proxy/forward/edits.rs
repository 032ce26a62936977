//! The request edits stage: the request as the upstream must see it. The
//! route's rewrite (path, authority), then the destination's header rules
//! and the route's (Envoy's order, so the route's `set` wins), the Host
//! the client sent when nothing set one, no `Expect` (answered here), and
//! no connection-scoped fields (an upgrade keeps its own).

use super::headers::set_authority;
use super::upgrade;
use http::header::{EXPECT, HOST};
use http::request::Parts;
use http::Uri;
use mesh_core::route::{HttpMatch, HttpRoute, RouteDestination};

/// Edits `parts` for the upstream; returns the client side of an upgrade
/// the request asks for.
pub fn edit_request(
    parts: &mut Parts,
    matched: Option<(&HttpRoute, Option<&HttpMatch>)>,
    destination: Option<&RouteDestination>,
    authority: &str,
) -> Option<hyper::upgrade::OnUpgrade> {
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
                set_authority(parts, new_authority);
            }
        }
    }
    if let Some(destination) = destination {
        destination.headers.request.apply(&mut parts.headers);
    }
    if let Some((route, _)) = matched {
        route.headers.request.apply(&mut parts.headers);
    }
    if parts.headers.get(HOST).is_none() {
        set_authority(parts, authority);
    }
    // The client's `100-continue` was answered here when its body was first
    // read (hyper does so), and the body streams on at once: as Envoy does,
    // the upstream is not asked again.
    parts.headers.remove(EXPECT);
    upgrade::prepare(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::forward::test_support::routes;

    #[test]
    fn rewrite_then_header_rules_then_hop_by_hop() {
        let rules = routes(concat!(
            "- match: [{uri: {prefix: /api}}]\n",
            "  rewrite: {uri: /v2, authority: api.internal}\n",
            "  headers: {request: {set: {x-tier: route}, remove: [x-secret]}}\n",
            "  route:\n",
            "  - destination: {host: reviews}\n",
            "    headers: {request: {set: {x-tier: destination, x-dest: 'yes'}}}\n",
        ));
        let rule = &rules[0];
        let mesh_core::route::RouteAction::Forward(destinations) = &rule.action else { panic!() };
        let (mut parts, ()) = http::Request::get("/api/items?page=2")
            .header("host", "reviews")
            .header("x-secret", "1")
            .header("connection", "keep-alive")
            .body(())
            .unwrap()
            .into_parts();
        let upgrade = edit_request(&mut parts, Some((rule, rule.matches.first())), destinations.first(), "reviews");
        assert!(upgrade.is_none());
        assert_eq!(parts.uri, "/v2/items?page=2");
        assert_eq!(parts.headers["host"], "api.internal");
        assert_eq!(parts.headers["x-tier"], "route", "the route's set wins over the destination's");
        assert_eq!(parts.headers["x-dest"], "yes");
        assert!(parts.headers.get("x-secret").is_none() && parts.headers.get("connection").is_none());
    }

    #[test]
    fn a_request_without_host_gets_the_authority_it_was_routed_by() {
        let (mut parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
        edit_request(&mut parts, None, None, "reviews:9080");
        assert_eq!(parts.headers["host"], "reviews:9080");
    }
}
