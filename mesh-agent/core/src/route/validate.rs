//! A VirtualService, checked as Istio's validation does and compiled into
//! the route types. The first problem found is reported, by field path.

use super::cors::compile_cors;
use super::destination::{compile_destination, MirrorPolicy, RouteDestination};
use super::fault::compile_fault;
use super::headers::compile_headers;
use super::l4::{compile_tcp_match, compile_tls_match, TcpRoute, TlsRoute};
use super::matching::compile_match;
use super::redirect::{compile_direct_response, compile_redirect};
use super::retry::compile_retries;
use super::rewrite::compile_rewrite;
use super::rule::{HttpRoute, RouteAction};
use crate::api::{self, Destination, Headers, VirtualService};
use crate::field::{parse_istio_duration, parse_percentage, FieldError, Path};
use crate::host::{
    applies_to_mesh, resolve_gateway, resolve_host, validate_export_to, validate_gateways, validate_host_name,
    ExportToNone,
};
use serde::Serialize;
use std::net::IpAddr;

/// A rule of a root VirtualService that delegates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// Index of the delegating rule in `spec.http`.
    pub rule: usize,
    /// Where the delegate's rules go among the root's own rules (before
    /// the own rule of this index).
    pub position: usize,
    pub namespace: String,
    pub name: String,
}

/// A VirtualService as the route table uses it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceModel {
    pub namespace: String,
    pub name: String,
    /// In spec order; short names resolved in the VirtualService's namespace,
    /// wildcards and IP addresses as written.
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    /// As written: empty means every namespace.
    pub export_to: Vec<String>,
    /// Rules in spec order, each as written (the route table leaves out
    /// match blocks meant for gateways only). In the model, the rules of
    /// the delegates stand where the delegating rules are (see
    /// [`crate::route::Delegation`]); as validated alone, those rules are
    /// left out.
    pub http: std::sync::Arc<[HttpRoute]>,
    /// The rules with `delegate`, in spec order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delegations: Vec<Delegation>,
    pub tcp: Vec<TcpRoute>,
    pub tls: Vec<TlsRoute>,
    /// Every destination subset, for the check against DestinationRules.
    #[serde(skip)]
    pub subset_refs: Vec<SubsetRef>,
}

/// A subset named by a destination, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsetRef {
    /// E.g. `spec.http[0].route[1].destination.subset`.
    pub field: String,
    pub host: String,
    pub subset: String,
}

impl VirtualServiceModel {
    /// Whether sidecars (the mesh) apply it: no gateways, or `mesh` among them.
    pub fn applies_to_mesh(&self) -> bool {
        applies_to_mesh(&self.gateways)
    }

    /// Whether it is bound to the Gateway `namespace/name`: `spec.gateways`
    /// names it, a short name meaning one in the VirtualService's namespace.
    pub fn binds_gateway(&self, gateway: &str) -> bool {
        self.gateways.iter().any(|g| resolve_gateway(g, &self.namespace) == gateway)
    }
}

/// What the rules of one VirtualService share while compiling.
struct Context<'a> {
    namespace: &'a str,
    cluster_domain: &'a str,
    subset_refs: Vec<SubsetRef>,
}

impl Context<'_> {
    fn destination(&mut self, at: &Path, spec: &Destination) -> Result<RouteDestination, FieldError> {
        let destination = compile_destination(at, spec, self.namespace, self.cluster_domain)?;
        if let Some(subset) = &destination.subset {
            self.subset_refs.push(SubsetRef {
                field: at.field("subset"),
                host: destination.host.clone(),
                subset: subset.clone(),
            });
        }
        Ok(destination)
    }

    /// `route` of an http, tcp or tls rule: every entry needs a destination;
    /// weights are relative, not negative, and not all 0 when there are
    /// several (Istio since 1.15 no longer asks for a sum of 100).
    fn weighted(
        &mut self,
        at: &Path,
        entries: &[(Option<&Destination>, Option<i64>, Option<&Headers>)],
    ) -> Result<Vec<RouteDestination>, FieldError> {
        let mut destinations = Vec::new();
        for (j, (destination, weight, headers)) in entries.iter().enumerate() {
            let at = at.index("route", j);
            let spec = destination.ok_or_else(|| FieldError::new(at.field("destination"), "required"))?;
            let mut destination = self.destination(&at.child("destination"), spec)?;
            let weight = weight.unwrap_or(0);
            destination.weight = u32::try_from(weight)
                .ok()
                .filter(|w| *w <= i32::MAX as u32)
                .ok_or_else(|| FieldError::new(at.field("weight"), format!("{weight} is negative or too large")))?;
            destination.headers = compile_headers(&at.child("headers"), *headers)?;
            destinations.push(destination);
        }
        if destinations.len() > 1 && destinations.iter().all(|d| d.weight == 0) {
            return Err(FieldError::new(
                at.field("route"),
                "the weights add up to 0: with several destinations, give at least one a weight",
            ));
        }
        Ok(destinations)
    }
}

/// Istio's checks of a whole VirtualService, then of each rule.
pub fn validate_virtual_service(
    object: &VirtualService,
    cluster_domain: &str,
) -> Result<VirtualServiceModel, FieldError> {
    let spec = &object.spec;
    let namespace = object.metadata.namespace_or_default();
    validate_gateways("spec.gateways", &spec.gateways)?;
    let hosts = validate_hosts(spec, namespace, cluster_domain)?;
    validate_export_to(&spec.export_to, namespace, ExportToNone::Refused)?;
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        return Err(FieldError::new("spec.http", "a VirtualService needs at least one http, tcp or tls rule"));
    }
    let mut context = Context { namespace, cluster_domain, subset_refs: Vec::new() };
    let mut http = Vec::new();
    let mut delegations = Vec::new();
    for (i, rule) in spec.http.iter().enumerate() {
        let at = Path::new(format!("spec.http[{i}]"));
        let compiled = compile_http_route(&at, rule, &mut context)?;
        match &rule.delegate {
            None => http.push(compiled),
            Some(delegate) => {
                if spec.hosts.is_empty() {
                    return Err(FieldError::new(
                        at.field("delegate"),
                        "a delegate VirtualService (no hosts) cannot delegate again: only one level of delegation",
                    ));
                }
                if delegate.name.is_empty() {
                    return Err(FieldError::new(at.field("delegate.name"), "required"));
                }
                let delegate_namespace = delegate.namespace.as_deref().filter(|ns| !ns.is_empty());
                delegations.push(Delegation {
                    rule: i,
                    position: http.len(),
                    namespace: delegate_namespace.unwrap_or(namespace).to_owned(),
                    name: delegate.name.clone(),
                });
            }
        }
    }
    let tcp = (spec.tcp.iter().enumerate())
        .map(|(i, rule)| {
            let at = Path::new(format!("spec.tcp[{i}]"));
            let matches = (rule.matches.iter().enumerate())
                .map(|(k, m)| compile_tcp_match(&at.index("match", k), m))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TcpRoute { matches, destinations: l4_destinations(&at, &rule.route, &mut context)? })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    // Istio checks SNI hosts against the hosts as written.
    let host_names: Vec<&str> = spec.hosts.iter().map(String::as_str).collect();
    let tls = (spec.tls.iter().enumerate())
        .map(|(i, rule)| {
            let at = Path::new(format!("spec.tls[{i}]"));
            if rule.matches.is_empty() {
                return Err(FieldError::new(at.field("match"), "required: at least one match with sniHosts"));
            }
            let matches = (rule.matches.iter().enumerate())
                .map(|(k, m)| compile_tls_match(&at.index("match", k), m, &host_names))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(TlsRoute { matches, destinations: l4_destinations(&at, &rule.route, &mut context)? })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    Ok(VirtualServiceModel {
        namespace: namespace.to_owned(),
        name: object.metadata.name.clone(),
        hosts,
        gateways: spec.gateways.clone(),
        export_to: spec.export_to.clone(),
        http: http.into(),
        delegations,
        tcp,
        tls,
        subset_refs: context.subset_refs,
    })
}

fn l4_destinations(
    at: &Path,
    route: &[api::RouteDestination],
    context: &mut Context<'_>,
) -> Result<Vec<RouteDestination>, FieldError> {
    if route.is_empty() {
        return Err(FieldError::new(at.field("route"), "required: at least one destination"));
    }
    let entries: Vec<_> = route.iter().map(|r| (r.destination.as_ref(), r.weight, None)).collect();
    context.weighted(at, &entries)
}

/// Hosts as Istio checks them: each a DNS name (upper case allowed, a
/// leading wildcard allowed), an IP address, or `*` (not for the mesh);
/// none overlapping another as written (`web` and its FQDN do not: they
/// resolve to one host, kept once). No hosts at all is a delegate
/// VirtualService, meant to be included by another: Istio accepts one
/// with HTTP rules only, which routes nothing by itself here.
fn validate_hosts(
    spec: &api::VirtualServiceSpec,
    namespace: &str,
    cluster_domain: &str,
) -> Result<Vec<String>, FieldError> {
    let hosts = &spec.hosts;
    if hosts.is_empty() {
        if !spec.gateways.is_empty() {
            return Err(FieldError::new("spec.gateways", "a delegate VirtualService (no hosts) cannot name gateways"));
        }
        if !spec.tcp.is_empty() {
            return Err(FieldError::new("spec.tcp", "a delegate VirtualService (no hosts) cannot have tcp routes"));
        }
        if !spec.tls.is_empty() {
            return Err(FieldError::new("spec.tls", "a delegate VirtualService (no hosts) cannot have tls routes"));
        }
        return Ok(Vec::new());
    }
    let for_mesh = applies_to_mesh(&spec.gateways);
    let mut resolved: Vec<String> = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("spec.hosts[{i}]");
        if host == "*" {
            if for_mesh {
                return Err(FieldError::new(field, "`*` is not allowed for the mesh: name the services"));
            }
        } else if host.parse::<IpAddr>().is_err() {
            validate_host_name(&field, host)?;
        }
        if let Some(j) = hosts[..i].iter().position(|other| hosts_overlap(other, host)) {
            return Err(FieldError::new(field, format!("{host:?} overlaps spec.hosts[{j}] {:?}", hosts[j])));
        }
        let host = resolve_host(host, namespace, cluster_domain);
        if !resolved.contains(&host) {
            resolved.push(host);
        }
    }
    Ok(resolved)
}

/// Istio's `host.Name.Matches`, on the hosts as written.
fn hosts_overlap(a: &str, b: &str) -> bool {
    let covers = |wildcard: &str, other: &str| {
        wildcard == "*" || wildcard.strip_prefix('*').is_some_and(|suffix| other.ends_with(suffix))
    };
    a == b || covers(a, b) || covers(b, a)
}

/// One rule of a delegate merged with the delegating rule (see
/// [`crate::route::Delegation`]), compiled in the delegate's `namespace`.
pub(crate) fn compile_merged_rule(
    at: &Path,
    spec: &api::HttpRoute,
    namespace: &str,
    cluster_domain: &str,
) -> Result<HttpRoute, FieldError> {
    compile_http_route(at, spec, &mut Context { namespace, cluster_domain, subset_refs: Vec::new() })
}

/// Istio's rule conflicts, then each part of the rule. A rule that
/// delegates compiles without an action (an empty forward): it stands for
/// its delegate's rules, and only its other parts are checked here.
fn compile_http_route(at: &Path, spec: &api::HttpRoute, context: &mut Context<'_>) -> Result<HttpRoute, FieldError> {
    check_conflicts(at, spec)?;
    let matches = (spec.matches.iter().enumerate())
        .map(|(k, m)| compile_match(&at.index("match", k), m))
        .collect::<Result<Vec<_>, _>>()?;
    let rewrite = spec.rewrite.as_ref().map(|r| compile_rewrite(&at.child("rewrite"), r)).transpose()?;
    let action = if let Some(redirect) = &spec.redirect {
        RouteAction::Redirect(compile_redirect(&at.child("redirect"), redirect)?)
    } else if let Some(direct) = &spec.direct_response {
        let (status, body) = compile_direct_response(&at.child("directResponse"), direct)?;
        RouteAction::DirectResponse { status, body }
    } else if spec.delegate.is_some() {
        RouteAction::Forward(Vec::new())
    } else {
        let entries: Vec<_> =
            spec.route.iter().map(|r| (r.destination.as_ref(), r.weight, r.headers.as_ref())).collect();
        RouteAction::Forward(context.weighted(at, &entries)?)
    };
    let timeout = match spec.timeout.as_deref() {
        Some(text) => Some(parse_istio_duration(&at.field("timeout"), text)?),
        None => None,
    };
    let headers = compile_headers(&at.child("headers"), spec.headers.as_deref())?;
    let authority_headers = [&headers.request.set, &headers.request.add]
        .into_iter()
        .flatten()
        .filter(|(name, _)| *name == http::header::HOST)
        .count();
    if authority_headers + usize::from(rewrite.as_ref().is_some_and(|r| r.authority.is_some())) > 1 {
        return Err(FieldError::new(at.field("headers.request"), "the authority is set in more than one place"));
    }
    Ok(HttpRoute {
        name: spec.name.clone(),
        matches,
        action,
        timeout,
        retries: compile_retries(&at.child("retries"), spec.retries.as_deref())?,
        fault: spec.fault.as_ref().map(|f| compile_fault(&at.child("fault"), f)).transpose()?,
        mirrors: compile_mirrors(at, spec, context)?,
        rewrite,
        headers,
        cors: spec.cors_policy.as_ref().map(|c| compile_cors(&at.child("corsPolicy"), c)).transpose()?,
    })
}

/// What one rule cannot combine (Istio's `validateHTTPRouteConflict`).
/// A rule that delegates may have no route or redirect (its delegate's
/// rules have them), and nothing else is checked against them, as Istio.
fn check_conflicts(at: &Path, spec: &api::HttpRoute) -> Result<(), FieldError> {
    let conflict = |field: &str, other: &str| -> Result<(), FieldError> {
        Err(FieldError::new(at.field(field), format!("cannot be combined with {other}")))
    };
    let has_route = !spec.route.is_empty();
    if spec.delegate.is_some() {
        if has_route {
            return conflict("route", "delegate: the delegate's rules route");
        }
        if spec.redirect.is_some() {
            return conflict("redirect", "delegate: the delegate's rules redirect");
        }
        return Ok(());
    }
    if spec.redirect.is_some() {
        if has_route {
            return conflict("redirect", "route");
        }
        if spec.direct_response.is_some() {
            return conflict("directResponse", "redirect");
        }
        if spec.fault.is_some() {
            return conflict("fault", "redirect");
        }
        if spec.rewrite.is_some() {
            return conflict("rewrite", "redirect");
        }
    } else if spec.direct_response.is_some() {
        if has_route {
            return conflict("directResponse", "route");
        }
        if spec.fault.is_some() {
            return conflict("fault", "directResponse");
        }
        if spec.rewrite.is_some() {
            return conflict("rewrite", "directResponse");
        }
    } else if !has_route {
        return Err(FieldError::new(at.field("route"), "required: a rule needs route, redirect or directResponse"));
    }
    if spec.mirror.is_some() && !spec.mirrors.is_empty() {
        return conflict("mirrors", "mirror");
    }
    Ok(())
}

/// `mirror` with `mirrorPercentage` (or the deprecated `mirrorPercent`),
/// or `mirrors`; 100% when no percentage is given.
fn compile_mirrors(
    at: &Path,
    spec: &api::HttpRoute,
    context: &mut Context<'_>,
) -> Result<Vec<MirrorPolicy>, FieldError> {
    let mut mirrors = Vec::new();
    if let Some(mirror) = &spec.mirror {
        let percentage = match (&spec.mirror_percentage, spec.mirror_percent) {
            (Some(p), _) => parse_percentage(&at.field("mirrorPercentage.value"), p.value)?,
            (None, Some(percent)) => parse_percentage(&at.field("mirrorPercent"), percent as f64)?,
            (None, None) => 100.0,
        };
        mirrors.push(MirrorPolicy { destination: context.destination(&at.child("mirror"), mirror)?, percentage });
    }
    for (k, mirror) in spec.mirrors.iter().enumerate() {
        let at = at.index("mirrors", k);
        let destination =
            mirror.destination.as_ref().ok_or_else(|| FieldError::new(at.field("destination"), "required"))?;
        let percentage = match &mirror.percentage {
            Some(p) => parse_percentage(&at.field("percentage.value"), p.value)?,
            None => 100.0,
        };
        mirrors.push(MirrorPolicy {
            destination: context.destination(&at.child("destination"), destination)?,
            percentage,
        });
    }
    Ok(mirrors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::vs;

    const ROUTE: &str = "    route: [{destination: {host: web}}]\n";
    /// A whole rule that only routes.
    const RULE: &str = "  - route: [{destination: {host: web}}]\n";

    fn error(spec: &str) -> FieldError {
        vs(spec).expect_err(spec)
    }

    #[test]
    fn a_valid_virtual_service_resolves_short_names_in_its_namespace() {
        let model = vs("  hosts: [reviews, ratings.other.svc.cluster.local, '*.example.com', 10.0.0.1]\n  http:\n  - route:\n    - {destination: {host: reviews, subset: v2}, weight: 90}\n    - {destination: {host: reviews.shop, subset: v1, port: {number: 9080}}, weight: 10}\n    mirror: {host: shadow, subset: v3}\n").unwrap();
        assert_eq!(
            model.hosts,
            ["reviews.shop.svc.cluster.local", "ratings.other.svc.cluster.local", "*.example.com", "10.0.0.1"]
        );
        let RouteAction::Forward(destinations) = &model.http[0].action else { panic!() };
        assert_eq!(destinations[0].host, "reviews.shop.svc.cluster.local");
        assert_eq!(destinations[1].host, "reviews.shop", "a name with a dot is taken as written");
        assert_eq!(destinations[1].port, Some(9080));
        assert_eq!((destinations[0].weight, destinations[1].weight), (90, 10));
        let fields: Vec<&str> = model.subset_refs.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.http[0].route[0].destination.subset",
                "spec.http[0].route[1].destination.subset",
                "spec.http[0].mirror.subset"
            ]
        );
        assert_eq!(model.http[0].mirrors[0].percentage, 100.0);
        assert_eq!(model.http[0].timeout, None);
        assert!(model.applies_to_mesh());
    }

    #[test]
    fn host_errors() {
        let cases = [
            ("  hosts: []\n  gateways: [ingress]\n", "spec.gateways"),
            ("  hosts: ['*']\n", "spec.hosts[0]"),
            ("  hosts: [web, web]\n", "spec.hosts[1]"),
            ("  hosts: ['web_1']\n", "spec.hosts[0]"),
            ("  hosts: ['a.*.com']\n", "spec.hosts[0]"),
            ("  hosts: ['*.example.com', a.example.com]\n", "spec.hosts[1]"),
            ("  hosts: [web]\n  gateways: ['bad/gw/x']\n", "spec.gateways[0]"),
            ("  hosts: [web]\n  exportTo: ['*', '.']\n", "spec.exportTo[0]"),
            ("  hosts: [web]\n  exportTo: ['~']\n", "spec.exportTo[0]"),
            ("  hosts: [web]\n  exportTo: ['.', shop]\n", "spec.exportTo[1]"),
        ];
        for (hosts, field) in cases {
            assert_eq!(error(&format!("{hosts}  http:\n{RULE}")).field, field, "{hosts}");
        }
        // `*` is fine for a VirtualService bound to a gateway only.
        assert!(vs(&format!("  hosts: ['*']\n  gateways: [istio-system/ingress]\n  http:\n{RULE}")).is_ok());
        assert!(vs(&format!("  hosts: ['*']\n  gateways: [ingress, mesh]\n  http:\n{RULE}")).is_err());
        // Names as written do not overlap when they resolve to one host: it
        // is kept once, lowercased.
        let same = vs(&format!("  hosts: [web, Web, web.shop.svc.cluster.local]\n  http:\n{RULE}")).unwrap();
        assert_eq!(same.hosts, ["web.shop.svc.cluster.local"]);
        // No hosts: a delegate, which Istio accepts with HTTP rules only.
        assert!(vs(&format!("  hosts: []\n  http:\n{RULE}")).unwrap().hosts.is_empty());
    }

    #[test]
    fn a_delegating_rule_has_no_route_of_its_own_and_stands_apart() {
        let model = vs(concat!(
            "  hosts: [web]\n  http:\n",
            "  - route: [{destination: {host: a}}]\n",
            "  - match: [{uri: {prefix: /p}}]\n    delegate: {name: p}\n    timeout: 2s\n",
            "  - delegate: {name: q, namespace: other}\n",
            "  - route: [{destination: {host: b}}]\n",
        ))
        .unwrap();
        assert_eq!(model.http.len(), 2, "validated alone, the delegating rules route nothing");
        let delegations: Vec<(usize, usize, &str, &str)> =
            model.delegations.iter().map(|d| (d.rule, d.position, d.namespace.as_str(), d.name.as_str())).collect();
        assert_eq!(delegations, [(1, 1, "shop", "p"), (2, 1, "other", "q")], "the namespace defaults to its own");
        let cases = [
            ("  - delegate: {name: p}\n    route: [{destination: {host: a}}]\n", "spec.http[0].route"),
            ("  - delegate: {name: p}\n    redirect: {uri: /x}\n", "spec.http[0].redirect"),
            ("  - delegate: {namespace: x}\n", "spec.http[0].delegate.name"),
            ("  - delegate: {name: p}\n    timeout: soon\n", "spec.http[0].timeout"),
        ];
        for (rule, field) in cases {
            assert_eq!(error(&format!("  hosts: [web]\n  http:\n{rule}")).field, field, "{rule}");
        }
        // One level only.
        let again = error("  http:\n  - delegate: {name: p}\n");
        assert_eq!(again.field, "spec.http[0].delegate");
    }

    #[test]
    fn a_virtual_service_needs_rules() {
        assert_eq!(error("  hosts: [web]\n").field, "spec.http");
    }

    #[test]
    fn rule_conflicts_are_named() {
        let cases = [
            ("  - redirect: {uri: /x}\n    route: [{destination: {host: web}}]\n", "spec.http[0].redirect"),
            ("  - directResponse: {status: 200}\n    route: [{destination: {host: web}}]\n", "spec.http[0].directResponse"),
            ("  - directResponse: {status: 200}\n    redirect: {uri: /x}\n", "spec.http[0].directResponse"),
            ("  - redirect: {uri: /x}\n    fault: {abort: {httpStatus: 500}}\n", "spec.http[0].fault"),
            ("  - redirect: {uri: /x}\n    rewrite: {uri: /y}\n", "spec.http[0].rewrite"),
            ("  - directResponse: {status: 200}\n    fault: {abort: {httpStatus: 500}}\n", "spec.http[0].fault"),
            ("  - mirror: {host: m}\n    mirrors: [{destination: {host: n}}]\n    route: [{destination: {host: web}}]\n", "spec.http[0].mirrors"),
            ("  - timeout: 1s\n", "spec.http[0].route"),
        ];
        for (rule, field) in cases {
            assert_eq!(error(&format!("  hosts: [web]\n  http:\n{rule}")).field, field, "{rule}");
        }
    }

    #[test]
    fn weight_errors_are_named() {
        let cases = [
            (
                "[{destination: {host: a}, weight: 90}, {destination: {host: b}, weight: -10}]",
                "spec.http[0].route[1].weight",
            ),
            ("[{destination: {host: a}, weight: 0}, {destination: {host: b}}]", "spec.http[0].route"),
            ("[{weight: 100}]", "spec.http[0].route[0].destination"),
            ("[{destination: {host: ''}}]", "spec.http[0].route[0].destination.host"),
            ("[{destination: {host: '*'}}]", "spec.http[0].route[0].destination.host"),
            ("[{destination: {host: a, subset: v1.0}}]", "spec.http[0].route[0].destination.subset"),
            ("[{destination: {host: a, port: {number: 70000}}}]", "spec.http[0].route[0].destination.port.number"),
        ];
        for (route, field) in cases {
            assert_eq!(error(&format!("  hosts: [web]\n  http:\n  - route: {route}\n")).field, field, "{route}");
        }
        // One destination takes all whatever its weight; weights need not sum to 100.
        assert!(vs("  hosts: [web]\n  http:\n  - route: [{destination: {host: a}, weight: 0}]\n").is_ok());
        assert!(vs("  hosts: [web]\n  http:\n  - route: [{destination: {host: a}, weight: 3}, {destination: {host: b}, weight: 1}]\n").is_ok());
    }

    #[test]
    fn match_errors_are_named() {
        let cases = [
            ("{uri: {regex: '(unclosed'}}", "spec.http[0].match[0].uri.regex"),
            ("{headers: {end-user: {regex: '['}}}", "spec.http[0].match[0].headers[end-user].regex"),
            ("{headers: {end-user: }}", "spec.http[0].match[0].headers[end-user]"),
            ("{headers: {'bad header': {exact: a}}}", "spec.http[0].match[0].headers[bad header]"),
            ("{withoutHeaders: {x: {prefix: ''}}}", "spec.http[0].match[0].withoutHeaders[x].prefix"),
            ("{queryParams: {q: {regex: '*'}}}", "spec.http[0].match[0].queryParams[q].regex"),
            ("{method: {exact: GET, regex: G.*}}", "spec.http[0].match[0].method"),
            ("{port: 70000}", "spec.http[0].match[0].port"),
            ("{sourceNamespace: shop_a}", "spec.http[0].match[0].sourceNamespace"),
            ("{sourceLabels: {'a b': c}}", "spec.http[0].match[0].sourceLabels[a b]"),
        ];
        for (block, field) in cases {
            let spec = format!("  hosts: [web]\n  http:\n  - match: [{{}}, {block}]\n{ROUTE}");
            let expected = field.replace("match[0]", "match[1]");
            assert_eq!(error(&spec).field, expected, "{block}");
        }
        let long =
            format!("  hosts: [web]\n  http:\n  - match: [{{authority: {{regex: '{}'}}}}]\n{ROUTE}", "a".repeat(1025));
        let long = error(&long);
        assert_eq!(long.field, "spec.http[0].match[0].authority.regex");
        assert!(long.message.contains("1024"), "{}", long.message);
    }

    #[test]
    fn prefix_rewrite_goes_with_any_uri_match() {
        // Istio accepts it; for an exact or regex match it replaces the
        // whole path, as Envoy does.
        for uri in ["{prefix: /c}", "{}", "{exact: /c}", "{regex: /c.*}"] {
            let spec =
                format!("  hosts: [web]\n  http:\n  - match: [{{uri: {uri}}}]\n    rewrite: {{uri: /b}}\n{ROUTE}");
            assert!(vs(&spec).is_ok(), "{uri}");
        }
    }

    #[test]
    fn timeouts_mirrors_and_authority_errors_are_named() {
        let cases = [
            ("    timeout: fast\n", "spec.http[0].timeout"),
            ("    mirror: {host: m}\n    mirrorPercentage: {value: 120}\n", "spec.http[0].mirrorPercentage.value"),
            (
                "    mirrors: [{destination: {host: m}, percentage: {value: -5}}]\n",
                "spec.http[0].mirrors[0].percentage.value",
            ),
            ("    mirrors: [{percentage: {value: 5}}]\n", "spec.http[0].mirrors[0].destination"),
            ("    rewrite: {authority: a}\n    headers: {request: {set: {host: b}}}\n", "spec.http[0].headers.request"),
        ];
        for (extra, field) in cases {
            assert_eq!(error(&format!("  hosts: [web]\n  http:\n{RULE}{extra}")).field, field, "{extra}");
        }
        let zero = error(&format!("  hosts: [web]\n  http:\n{RULE}    timeout: 0s\n"));
        assert_eq!(zero.field, "spec.http[0].timeout", "Istio's durations start at 1ms");
        let set = vs(&format!("  hosts: [web]\n  http:\n{RULE}    timeout: 1.5s\n    mirrors: [{{destination: {{host: m}}, percentage: {{value: 5}}}}, {{destination: {{host: n}}}}]\n")).unwrap();
        assert_eq!(set.http[0].timeout, Some(std::time::Duration::from_millis(1500)));
        let percentages: Vec<f64> = set.http[0].mirrors.iter().map(|m| m.percentage).collect();
        assert_eq!(percentages, [5.0, 100.0]);
    }
}
