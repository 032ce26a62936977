//! VirtualService and DestinationRule validation, case by case, against
//! the verdicts of Istio's own validation (istio/istio
//! `pkg/config/validation`: `validation.go`, `virtualservice.go` and the
//! agent helpers `ValidateWildcardDomain`, `ValidateFQDN`, `ValidateTLS`,
//! `ValidateDuration`, `labels.Instance.Validate`). Each case names the
//! Istio rule it comes from; the YAML is our own.
//!
//! Every case goes the way the agent's objects go: decoded from YAML,
//! built into a [`Model`], and judged by the rejections the model reports
//! for that object.

use mesh_core::decode::parse_file;
use mesh_core::model::Model;
use mesh_core::object::Rejection;

const DOMAIN: &str = "cluster.local";

/// What Istio says of an object: accepted, or rejected at a field with a
/// reason (a fragment of our message saying the same).
#[derive(Clone, Copy, Debug)]
enum Verdict {
    Accepted,
    Rejected { field: &'static str, reason: &'static str },
}

use Verdict::Accepted;

const fn rejected(field: &'static str, reason: &'static str) -> Verdict {
    Verdict::Rejected { field, reason }
}

/// One case: the Istio rule it comes from, the object, Istio's verdict.
struct Case {
    rule: &'static str,
    yaml: String,
    verdict: Verdict,
}

fn case(rule: &'static str, yaml: String, verdict: Verdict) -> Case {
    Case { rule, yaml, verdict }
}

/// A VirtualService `shop/case` whose spec is the flow mapping `spec`.
fn vs(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: case, namespace: shop}}\nspec: {{{spec}}}\n")
}

/// A VirtualService for host `web` with one HTTP rule (a flow mapping).
fn http(rule: &str) -> String {
    vs(&format!("hosts: [web], http: [{{{rule}}}]"))
}

/// An HTTP rule that routes to `web`, plus `extra` fields.
fn routed(extra: &str) -> String {
    http(&format!("route: [{{destination: {{host: web}}}}], {extra}"))
}

/// An HTTP rule with one match block `block`, routed to `web`.
fn matching(block: &str) -> String {
    routed(&format!("match: [{block}]"))
}

/// A DestinationRule `shop/case` whose spec is the flow mapping `spec`.
fn dr(spec: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: case, namespace: shop}}\nspec: {{{spec}}}\n")
}

/// A DestinationRule for `web` with the traffic policy `policy`.
fn policy(policy: &str) -> String {
    dr(&format!("host: web, trafficPolicy: {{{policy}}}"))
}

fn virtual_service_cases() -> Vec<Case> {
    let long_label = "a".repeat(64);
    let long_regex = "a".repeat(1025);
    vec![
        // --- hosts: ValidateVirtualService, ValidateWildcardDomain -------------
        case("hosts: a short name", http("route: [{destination: {host: web}}]"), Accepted),
        case("hosts: an FQDN", vs("hosts: [web.shop.svc.cluster.local], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: a `*.` wildcard", vs("hosts: ['*.example.com'], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: IsWildcardDNS1123Label takes `*x`", vs("hosts: ['*web.example.com'], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: labels.IsDNS1123Label takes upper case", vs("hosts: [Web.Example.com], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: an IPv4 address is accepted (IsValidIPAddress)", vs("hosts: [10.0.0.1], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: an IPv6 address is accepted (IsValidIPAddress)", vs("hosts: ['fd00::1'], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: a trailing dot is allowed (ValidateDNS1123Labels)", vs("hosts: [web.example.com.], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: `*` is not allowed for the mesh gateway", vs("hosts: ['*'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "not allowed for the mesh")),
        case("hosts: `*` is fine bound to gateways only", vs("hosts: ['*'], gateways: [istio-system/ingress], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: `*` with `mesh` among the gateways", vs("hosts: ['*'], gateways: [ingress, mesh], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "not allowed for the mesh")),
        case("hosts: wildcards only in the first label", vs("hosts: ['a.*.com'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "not a valid host name")),
        case("hosts: DNS-1123 labels have no underscore", vs("hosts: [web_1], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "not a valid host name")),
        case("hosts: the top-level label cannot be all digits", vs("hosts: [1.2.3], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "all digits")),
        case("hosts: a label is at most 63 characters", vs(&format!("hosts: [{long_label}.example.com], http: [{{route: [{{destination: {{host: web}}}}]}}]")), rejected("spec.hosts[0]", "not a valid host name")),
        case("hosts: an empty domain name is not allowed", vs("hosts: [''], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[0]", "empty")),
        case("hosts: duplicate hosts", vs("hosts: [web, web], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[1]", "overlaps")),
        case("hosts: a wildcard duplicates the hosts it covers", vs("hosts: ['*.example.com', a.example.com], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[1]", "overlaps")),
        case("hosts: nested wildcards are duplicates", vs("hosts: ['*.example.com', '*.a.example.com'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.hosts[1]", "overlaps")),
        case("hosts: duplicates are compared as written (a short name and its FQDN)", vs("hosts: [web, web.shop.svc.cluster.local], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: duplicates are compared as written (case)", vs("hosts: [web, Web], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: none is a delegate VirtualService", vs("hosts: [], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("hosts: a delegate has no tcp routes", vs("hosts: [], tcp: [{route: [{destination: {host: web}}]}]"), rejected("spec.tcp", "delegate")),
        case("hosts: a delegate names no gateways", vs("hosts: [], gateways: [ingress], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.gateways", "delegate")),
        case("http, tcp or tls must be provided", vs("hosts: [web]"), rejected("spec.http", "at least one http, tcp or tls")),
        // --- gateways: validateGatewayNames ---------------------------------------
        case("gateways: namespace/name", vs("hosts: [web], gateways: [istio-system/ingress, mesh], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("gateways: the legacy name.namespace form (a warning in Istio)", vs("hosts: [web], gateways: [ingress.istio-system], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("gateways: labels take upper case", vs("hosts: [web], gateways: [Istio-System/Ingress], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("gateways: the name part is a DNS label", vs("hosts: [web], gateways: ['bad/gw/x'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.gateways[0]", "not a gateway name")),
        case("gateways: namespace and name cannot be empty", vs("hosts: [web], gateways: ['/ingress'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.gateways[0]", "not a gateway name")),
        case("gateways: a match block's gateways too", matching("{gateways: ['a/b/c']}"), rejected("spec.http[0].match[0].gateways[0]", "not a gateway name")),
        // --- exportTo: validateExportTo, visibility.Instance.Validate -------------
        case("exportTo: `.`", vs("hosts: [web], exportTo: ['.'], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("exportTo: namespaces", vs("hosts: [web], exportTo: [shop, other], http: [{route: [{destination: {host: web}}]}]"), Accepted),
        case("exportTo: `*` cannot go with other entries", vs("hosts: [web], exportTo: ['*', other], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.exportTo[0]", "cannot be combined")),
        case("exportTo: duplicate entries", vs("hosts: [web], exportTo: [other, other], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.exportTo[1]", "listed twice")),
        case("exportTo: `.` and the current namespace are duplicates", vs("hosts: [web], exportTo: [shop, '.'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.exportTo[1]", "same namespace")),
        case("exportTo: `~` is not allowed for Istio configuration objects", vs("hosts: [web], exportTo: ['~'], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.exportTo[0]", "only for ServiceEntries")),
        case("exportTo: entries are DNS labels", vs("hosts: [web], exportTo: [other_ns], http: [{route: [{destination: {host: web}}]}]"), rejected("spec.exportTo[0]", "is not")),
        // --- http match: validateHTTPRouteMatchRequest ------------------------------
        case("match: an empty match block matches everything", matching("{}"), Accepted),
        case("match: uri allows an empty prefix", matching("{uri: {prefix: ''}}"), Accepted),
        case("match: a valid RE2 uri regex", matching("{uri: {regex: '/api/v[0-9]+/.*'}}"), Accepted),
        case("match: validateStringRegexp compiles the regex", matching("{uri: {regex: '(unclosed'}}"), rejected("spec.http[0].match[0].uri.regex", "not a valid RE2 regex")),
        case("match: regex string match should not be empty", matching("{uri: {regex: ''}}"), rejected("spec.http[0].match[0].uri.regex", "must not be empty")),
        case("match: regex is too large (1024 at most)", matching(&format!("{{authority: {{regex: '{long_regex}'}}}}")), rejected("spec.http[0].match[0].authority.regex", "1024")),
        case("match: authority allows no empty prefix", matching("{authority: {prefix: ''}}"), rejected("spec.http[0].match[0].authority.prefix", "must not be empty")),
        case("match: method allows no empty prefix", matching("{method: {prefix: ''}}"), rejected("spec.http[0].match[0].method.prefix", "must not be empty")),
        case("match: scheme and method exact", matching("{scheme: {exact: https}, method: {exact: GET}}"), Accepted),
        case("match: header exact", matching("{headers: {end-user: {exact: jason}}}"), Accepted),
        case("match: a header match {} means present", matching("{headers: {end-user: {}}}"), Accepted),
        case("match: header match cannot be null", matching("{headers: {end-user: }}"), rejected("spec.http[0].match[0].headers[end-user]", "must not be null")),
        case("match: ValidateHTTPHeaderName", matching("{headers: {'bad header': {exact: a}}}"), rejected("spec.http[0].match[0].headers[bad header]", "not a header name")),
        case("match: header regex compiles", matching("{headers: {x-v: {regex: '['}}}"), rejected("spec.http[0].match[0].headers[x-v].regex", "not a valid RE2 regex")),
        case("match: header prefix should not be empty", matching("{headers: {x-v: {prefix: ''}}}"), rejected("spec.http[0].match[0].headers[x-v].prefix", "must not be empty")),
        case("match: withoutHeaders regex `*` is present_match", matching("{withoutHeaders: {x-v: {regex: '*'}}}"), Accepted),
        case("match: withoutHeaders may be null", matching("{withoutHeaders: {x-v: }}"), Accepted),
        case("match: withoutHeaders names are header names", matching("{withoutHeaders: {'x v': {exact: a}}}"), rejected("spec.http[0].match[0].withoutHeaders[x v]", "not a header name")),
        case("match: query parameter exact", matching("{queryParams: {q: {exact: a}}}"), Accepted),
        case("match: query parameter regex compiles", matching("{queryParams: {q: {regex: '*'}}}"), rejected("spec.http[0].match[0].queryParams[q].regex", "not a valid RE2 regex")),
        case("match: port", matching("{port: 8080}"), Accepted),
        case("match: ValidatePort", matching("{port: 70000}"), rejected("spec.http[0].match[0].port", "not a port")),
        case("match: sourceLabels", matching("{sourceLabels: {app: web, app.kubernetes.io/version: v1}}"), Accepted),
        case("match: sourceLabels keys are label names", matching("{sourceLabels: {'a b': c}}"), rejected("spec.http[0].match[0].sourceLabels[a b]", "not a valid label key")),
        case("match: sourceLabels values are label values", matching("{sourceLabels: {app: 'x y'}}"), rejected("spec.http[0].match[0].sourceLabels[app]", "not a valid label value")),
        case("match: sourceNamespace is IsDNS1123Label, upper case included", matching("{sourceNamespace: Shop}"), Accepted),
        case("match: sourceNamespace match is invalid", matching("{sourceNamespace: shop_a}"), rejected("spec.http[0].match[0].sourceNamespace", "not a namespace name")),
        case("match: ignoreUriCase", matching("{uri: {prefix: /API}, ignoreUriCase: true}"), Accepted),
        // --- route destinations: validateHTTPRouteDestinations, validateDestination -
        case("route: one destination with a weight (no sum of 100)", http("route: [{destination: {host: web}, weight: 50}]"), Accepted),
        case("route: one destination with weight 0", http("route: [{destination: {host: web}, weight: 0}]"), Accepted),
        case("route: relative weights", http("route: [{destination: {host: a}, weight: 3}, {destination: {host: b}, weight: 1}]"), Accepted),
        case("route: weight < 0", http("route: [{destination: {host: a}, weight: 90}, {destination: {host: b}, weight: -10}]"), rejected("spec.http[0].route[1].weight", "negative")),
        case("route: total destination weight = 0", http("route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]"), rejected("spec.http[0].route", "add up to 0")),
        case("route: destination is required", http("route: [{weight: 100}]"), rejected("spec.http[0].route[0].destination", "required")),
        case("destination: invalid destination host `*`", http("route: [{destination: {host: '*'}}]"), rejected("spec.http[0].route[0].destination.host", "not a destination")),
        case("destination: ValidateWildcardDomain takes a wildcard", http("route: [{destination: {host: '*.example.com'}}]"), Accepted),
        case("destination: an IP address is no domain (all-numeric top label)", http("route: [{destination: {host: 10.0.0.1}}]"), rejected("spec.http[0].route[0].destination.host", "all digits")),
        case("destination: upper-case host", http("route: [{destination: {host: Web}}]"), Accepted),
        case("destination: empty host", http("route: [{destination: {host: ''}}]"), rejected("spec.http[0].route[0].destination.host", "required")),
        case("destination: validateSubsetName", http("route: [{destination: {host: web, subset: v1.0}}]"), rejected("spec.http[0].route[0].destination.subset", "not a valid subset name")),
        case("destination: ValidatePort (0)", http("route: [{destination: {host: web, port: {number: 0}}}]"), rejected("spec.http[0].route[0].destination.port.number", "not a port")),
        case("destination: ValidatePort (70000)", http("route: [{destination: {host: web, port: {number: 70000}}}]"), rejected("spec.http[0].route[0].destination.port.number", "not a port")),
        // --- conflicts: validateHTTPRouteConflict --------------------------------
        case("conflict: route and redirect", http("redirect: {uri: /x}, route: [{destination: {host: web}}]"), rejected("spec.http[0].redirect", "route")),
        case("conflict: fault and redirect", http("redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}"), rejected("spec.http[0].fault", "redirect")),
        case("conflict: rewrite and redirect", http("redirect: {uri: /x}, rewrite: {uri: /y}"), rejected("spec.http[0].rewrite", "redirect")),
        case("conflict: direct_response and redirect", http("redirect: {uri: /x}, directResponse: {status: 200}"), rejected("spec.http[0].directResponse", "redirect")),
        case("conflict: route and direct_response", http("directResponse: {status: 200}, route: [{destination: {host: web}}]"), rejected("spec.http[0].directResponse", "route")),
        case("conflict: route, redirect or direct_response is required", http("timeout: 1s"), rejected("spec.http[0].route", "required")),
        // --- validateHTTPRedirect, validateHTTPDirectResponse, validateHTTPRewrite --
        case("redirect: must specify URI, authority, scheme, or port", http("redirect: {}"), rejected("spec.http[0].redirect", "must set")),
        case("redirect: a 3xx code", http("redirect: {uri: /new, redirectCode: 302}"), Accepted),
        case("redirect: not a valid redirect code", http("redirect: {uri: /new, redirectCode: 200}"), rejected("spec.http[0].redirect.redirectCode", "3xx")),
        case("redirect: scheme http or https", http("redirect: {scheme: ftp}"), rejected("spec.http[0].redirect.scheme", "not http or https")),
        case("redirect: ValidatePort", http("redirect: {port: 70000}"), rejected("spec.http[0].redirect.port", "not a port")),
        case("directResponse: status and body", http("directResponse: {status: 503, body: {string: unavailable}}"), Accepted),
        case("directResponse: HTTP status not in range 200-599", http("directResponse: {status: 700}"), rejected("spec.http[0].directResponse.status", "200-599")),
        case("directResponse: informational status", http("directResponse: {status: 100}"), rejected("spec.http[0].directResponse.status", "200-599")),
        case("rewrite: must specify at least one of URI, UriRegexRewrite, or authority", routed("rewrite: {}"), rejected("spec.http[0].rewrite", "must set")),
        case("rewrite: only one of URI or UriRegexRewrite", routed("rewrite: {uri: /a, uriRegexRewrite: {match: /b, rewrite: /c}}"), rejected("spec.http[0].rewrite.uriRegexRewrite", "only one")),
        case("rewrite: UriRegexRewrite requires both Rewrite and Match", routed("rewrite: {uriRegexRewrite: {match: /b}}"), rejected("spec.http[0].rewrite.uriRegexRewrite.rewrite", "required")),
        case("rewrite: UriRegexRewrite.Match compiles", routed("rewrite: {uriRegexRewrite: {match: '(', rewrite: /c}}"), rejected("spec.http[0].rewrite.uriRegexRewrite.match", "not a valid RE2 regex")),
        case("rewrite: a prefix rewrite goes with an exact match", routed("match: [{uri: {exact: /a}}], rewrite: {uri: /b}"), Accepted),
        case("rewrite: authority alone", routed("rewrite: {authority: other}"), Accepted),
        case("validateAuthorityRewrite: authority set in one place only", routed("rewrite: {authority: a}, headers: {request: {set: {host: b}}}"), rejected("spec.http[0].headers.request", "more than one place")),
        // --- retries: validateHTTPRetry ------------------------------------------
        case("retries: a full policy", routed("retries: {attempts: 3, perTryTimeout: 2s, retryOn: '5xx,connect-failure,refused-stream'}"), Accepted),
        case("retries: attempts cannot be negative", routed("retries: {attempts: -1}"), rejected("spec.http[0].retries.attempts", "negative")),
        case("retries: policy configured when attempts are 0 (perTryTimeout)", routed("retries: {attempts: 0, perTryTimeout: 1s}"), rejected("spec.http[0].retries.perTryTimeout", "attempts is 0")),
        case("retries: policy configured when attempts are 0 (retryOn)", routed("retries: {attempts: 0, retryOn: 5xx}"), rejected("spec.http[0].retries.retryOn", "attempts is 0")),
        case("retries: attempts 0 alone disables retries", routed("retries: {attempts: 0}"), Accepted),
        case("retries: not a valid retryOn policy", routed("retries: {attempts: 2, retryOn: sometimes}"), rejected("spec.http[0].retries.retryOn", "not a valid retryOn policy")),
        case("retries: retryOn takes status codes", routed("retries: {attempts: 2, retryOn: 'retriable-status-codes,503'}"), Accepted),
        case("retries: retryOn codes are ones http.StatusText knows", routed("retries: {attempts: 2, retryOn: '599'}"), rejected("spec.http[0].retries.retryOn", "\"599\"")),
        case("retries: retryOn tokens are not trimmed", routed("retries: {attempts: 2, retryOn: '5xx, reset'}"), rejected("spec.http[0].retries.retryOn", "\" reset\"")),
        case("retries: gRPC retryOn policies", routed("retries: {attempts: 2, retryOn: 'cancelled,unavailable,resource-exhausted'}"), Accepted),
        case("retries: ValidateDuration on perTryTimeout", routed("retries: {attempts: 2, perTryTimeout: 500us}"), rejected("spec.http[0].retries.perTryTimeout", "under 1ms")),
        // --- timeout: ValidateDuration --------------------------------------------
        case("timeout: 1ms is the minimum", routed("timeout: 1ms"), Accepted),
        case("timeout: duration must be greater than 1ms", routed("timeout: 0s"), rejected("spec.http[0].timeout", "under 1ms")),
        case("timeout: only durations to ms precision", routed("timeout: 1.5ms"), rejected("spec.http[0].timeout", "whole number of milliseconds")),
        case("timeout: a negative duration", routed("timeout: -1s"), rejected("spec.http[0].timeout", "not a duration")),
        case("timeout: protobuf durations have a unit", routed("timeout: '10'"), rejected("spec.http[0].timeout", "not a duration")),
        // --- fault: validateHTTPFaultInjection ------------------------------------
        case("fault: a fixed delay", routed("fault: {delay: {fixedDelay: 5s, percentage: {value: 10}}}"), Accepted),
        case("fault: an HTTP abort", routed("fault: {abort: {httpStatus: 503, percentage: {value: 100}}}"), Accepted),
        case("fault: must have an abort and/or a delay", routed("fault: {}"), rejected("spec.http[0].fault", "delay, an abort")),
        case("fault: validateHTTPStatus", routed("fault: {abort: {httpStatus: 199}}"), rejected("spec.http[0].fault.abort.httpStatus", "200-599")),
        case("fault: a gRPC abort", routed("fault: {abort: {grpcStatus: UNAVAILABLE}}"), Accepted),
        case("fault: validateGRPCStatus", routed("fault: {abort: {grpcStatus: BROKEN}}"), rejected("spec.http[0].fault.abort.grpcStatus", "not a gRPC status")),
        case("fault: HTTP/2 abort fault injection not supported yet", routed("fault: {abort: {http2Error: REFUSED_STREAM}}"), rejected("spec.http[0].fault.abort.http2Error", "not supported")),
        case("fault: validatePercentage (over 100)", routed("fault: {abort: {httpStatus: 503, percentage: {value: 101}}}"), rejected("spec.http[0].fault.abort.percentage.value", "percentage")),
        case("fault: validatePercentage (neither 0 nor at least 0.0001)", routed("fault: {delay: {fixedDelay: 1s, percentage: {value: 0.00001}}}"), rejected("spec.http[0].fault.delay.percentage.value", "neither 0")),
        case("fault: exponentialDelay not supported yet", routed("fault: {delay: {exponentialDelay: 1s}}"), rejected("spec.http[0].fault.delay.exponentialDelay", "not supported")),
        case("fault: ValidateDuration on fixedDelay", routed("fault: {delay: {fixedDelay: 0.5ms}}"), rejected("spec.http[0].fault.delay.fixedDelay", "under 1ms")),
        case("fault: abort configured, but error type not set (a warning only)", routed("fault: {abort: {percentage: {value: 10}}}"), Accepted),
        // --- mirror, mirrors, mirrorPercentage ------------------------------------
        case("mirror: with mirrorPercentage", routed("mirror: {host: shadow}, mirrorPercentage: {value: 50}"), Accepted),
        case("mirror: mirror_percentage must have a max value of 100", routed("mirror: {host: shadow}, mirrorPercentage: {value: 120}"), rejected("spec.http[0].mirrorPercentage.value", "percentage")),
        case("mirror: mirror_percentage must have a min value of 0", routed("mirror: {host: shadow}, mirrorPercentage: {value: -1}"), rejected("spec.http[0].mirrorPercentage.value", "percentage")),
        case("mirror: mirror_percent must have a max value of 100", routed("mirror: {host: shadow}, mirrorPercent: 101"), rejected("spec.http[0].mirrorPercent", "percentage")),
        case("mirror: both mirror and mirrors", routed("mirror: {host: m}, mirrors: [{destination: {host: n}}]"), rejected("spec.http[0].mirrors", "mirror")),
        case("mirrors: destination is required for mirrors", routed("mirrors: [{percentage: {value: 5}}]"), rejected("spec.http[0].mirrors[0].destination", "required")),
        case("mirrors: mirror percentage must have a max value of 100", routed("mirrors: [{destination: {host: m}, percentage: {value: 150}}]"), rejected("spec.http[0].mirrors[0].percentage.value", "percentage")),
        case("mirror: validateDestination", routed("mirror: {host: '*'}"), rejected("spec.http[0].mirror.host", "not a destination")),
        // --- corsPolicy: validateCORSPolicy -----------------------------------------
        case("cors: a full policy", routed("corsPolicy: {allowOrigins: [{exact: 'https://a.example.com'}], allowMethods: [GET, POST], allowHeaders: ['*'], maxAge: 24h}"), Accepted),
        case("cors: '' is not a valid match type for CORS allow origins", routed("corsPolicy: {allowOrigins: [{exact: ''}]}"), rejected("spec.http[0].corsPolicy.allowOrigins[0]", "must not be empty")),
        case("cors: allowOrigins regex compiles", routed("corsPolicy: {allowOrigins: [{regex: '('}]}"), rejected("spec.http[0].corsPolicy.allowOrigins[0].regex", "not a valid RE2 regex")),
        case("cors: `*` is not a supported HTTP method", routed("corsPolicy: {allowMethods: ['*']}"), rejected("spec.http[0].corsPolicy.allowMethods[0]", "not a supported HTTP method")),
        case("cors: methods are upper case", routed("corsPolicy: {allowMethods: [get]}"), rejected("spec.http[0].corsPolicy.allowMethods[0]", "not a supported HTTP method")),
        case("cors: ValidateCORSHTTPHeaderName", routed("corsPolicy: {exposeHeaders: [x.y]}"), rejected("spec.http[0].corsPolicy.exposeHeaders[0]", "not a header name")),
        case("cors: max_age is accurate only to seconds", routed("corsPolicy: {maxAge: 1.5s}"), rejected("spec.http[0].corsPolicy.maxAge", "whole seconds")),
        case("cors: ValidateDuration on maxAge", routed("corsPolicy: {maxAge: 0s}"), rejected("spec.http[0].corsPolicy.maxAge", "under 1ms")),
        // --- headers: ValidateHTTPHeader*OperationName, ValidateHTTPHeaderValue -----
        case("headers: set, add and remove", routed("headers: {request: {set: {x-a: '1'}, remove: [x-b]}, response: {add: {x-c: '2'}}}"), Accepted),
        case("headers: header cannot have \":\" prefix", routed("headers: {request: {set: {':path': /x}}}"), rejected("spec.http[0].headers.request.set[:path]", "cannot be modified")),
        case("headers: a request may set the authority", routed("headers: {request: {set: {':authority': other}}}"), Accepted),
        case("headers: cannot remove Host", routed("headers: {request: {remove: [host]}}"), rejected("spec.http[0].headers.request.remove[0]", "cannot be modified")),
        case("headers: cannot set Host in a response", routed("headers: {response: {set: {host: x}}}"), rejected("spec.http[0].headers.response.set[host]", "cannot be modified")),
        case("headers: header name cannot be empty", routed("headers: {request: {add: {'': x}}}"), rejected("spec.http[0].headers.request.add[]", "not a valid header name")),
        case("headers: per destination, no pseudo-header", http("route: [{destination: {host: web}, headers: {response: {remove: [':status']}}}]"), rejected("spec.http[0].route[0].headers.response.remove[0]", "cannot be modified")),
        case("headers: a header value has no control characters", routed("headers: {request: {set: {x-a: \"a\\nb\"}}}"), rejected("spec.http[0].headers.request.set[x-a]", "not a valid header value")),
        // --- tcp: validateTCPRoute, validateTCPMatch -----------------------------
        case("tcp: a route with a port match", vs("hosts: [db], tcp: [{match: [{port: 3306}], route: [{destination: {host: db}}]}]"), Accepted),
        case("tcp: TCP route is required", vs("hosts: [db], tcp: [{match: [{port: 3306}]}]"), rejected("spec.tcp[0].route", "required")),
        case("tcp: ValidateIPSubnet", vs("hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], route: [{destination: {host: db}}]}]"), rejected("spec.tcp[0].match[0].destinationSubnets[0]", "not an IP or CIDR")),
        case("tcp: a CIDR destination subnet", vs("hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: db}}]}]"), Accepted),
        case("tcp: sourceLabels are labels", vs("hosts: [db], tcp: [{match: [{sourceLabels: {'a b': c}}], route: [{destination: {host: db}}]}]"), rejected("spec.tcp[0].match[0].sourceLabels[a b]", "not a valid label key")),
        case("tcp: total destination weight = 0", vs("hosts: [db], tcp: [{route: [{destination: {host: a}}, {destination: {host: b}}]}]"), rejected("spec.tcp[0].route", "add up to 0")),
        // --- tls: validateTLSRoute, validateTLSMatch, validateSniHost --------------
        case("tls: TLS route must have at least one match condition", vs("hosts: [a.example.com], tls: [{route: [{destination: {host: a.example.com}}]}]"), rejected("spec.tls[0].match", "required")),
        case("tls: TLS match must have at least one SNI host", vs("hosts: [a.example.com], tls: [{match: [{port: 443}], route: [{destination: {host: a.example.com}}]}]"), rejected("spec.tls[0].match[0].sniHosts", "required")),
        case("tls: an SNI host under a wildcard host", vs("hosts: ['*.example.com'], tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: a.example.com}}]}]"), Accepted),
        case("tls: SNI host is not a compatible subset of any host", vs("hosts: [a.example.com], tls: [{match: [{sniHosts: [b.example.com]}], route: [{destination: {host: a.example.com}}]}]"), rejected("spec.tls[0].match[0].sniHosts[0]", "not one of the hosts")),
        case("tls: a wildcard SNI is no subset of one host", vs("hosts: [a.example.com], tls: [{match: [{sniHosts: ['*.example.com']}], route: [{destination: {host: a.example.com}}]}]"), rejected("spec.tls[0].match[0].sniHosts[0]", "not one of the hosts")),
        case("tls: SNI hosts are compared with the hosts as written", vs("hosts: [web], tls: [{match: [{sniHosts: [web.shop.svc.cluster.local]}], route: [{destination: {host: web}}]}]"), rejected("spec.tls[0].match[0].sniHosts[0]", "not one of the hosts")),
        case("tls: an IP SNI host (a warning only)", vs("hosts: [a.example.com], tls: [{match: [{sniHosts: [10.0.0.1]}], route: [{destination: {host: a.example.com}}]}]"), Accepted),
        case("tls: TLS route is required", vs("hosts: [a.example.com], tls: [{match: [{sniHosts: [a.example.com]}]}]"), rejected("spec.tls[0].route", "required")),
        case("tls: match port", vs("hosts: [a.example.com], tls: [{match: [{sniHosts: [a.example.com], port: 0}], route: [{destination: {host: a.example.com}}]}]"), Accepted),
    ]
}

fn destination_rule_cases() -> Vec<Case> {
    vec![
        // --- host: ValidateWildcardDomain ---------------------------------------
        case("host: empty domain name not allowed", dr("trafficPolicy: {loadBalancer: {simple: RANDOM}}"), rejected("spec.host", "required")),
        case("host: labels take upper case", dr("host: Reviews"), Accepted),
        case("host: an IP address is no host", dr("host: 10.0.0.1"), rejected("spec.host", "all digits")),
        case("host: `*`", dr("host: '*'"), Accepted),
        case("host: a wildcard", dr("host: '*.shop.svc.cluster.local'"), Accepted),
        case("host: wildcards only in the first label", dr("host: 'web.*.shop'"), rejected("spec.host", "not a valid host name")),
        // --- subsets: validateSubset, validateSubsetName, labels.Instance.Validate --
        case("subsets: no labels (every endpoint of the host)", dr("host: web, subsets: [{name: all}]"), Accepted),
        case("subsets: upper-case names", dr("host: web, subsets: [{name: V1, labels: {version: v1}}]"), Accepted),
        case("subsets: subset name is invalid", dr("host: web, subsets: [{name: v1.0, labels: {version: v1}}]"), rejected("spec.subsets[0].name", "not a valid subset name")),
        case("subsets: subset name cannot be empty", dr("host: web, subsets: [{labels: {version: v1}}]"), rejected("spec.subsets[0].name", "required")),
        case("subsets: duplicate subset names", dr("host: web, subsets: [{name: v1, labels: {a: b}}, {name: v1, labels: {a: c}}]"), rejected("spec.subsets[1].name", "defined twice")),
        case("subsets: invalid tag value", dr("host: web, subsets: [{name: v1, labels: {version: 'v 1'}}]"), rejected("spec.subsets[0].labels[version]", "not a valid label value")),
        case("subsets: a prefixed label key", dr("host: web, subsets: [{name: v1, labels: {app.kubernetes.io/version: v1}}]"), Accepted),
        case("subsets: invalid tag key", dr("host: web, subsets: [{name: v1, labels: {'-bad': v1}}]"), rejected("spec.subsets[0].labels[-bad]", "not a valid label key")),
        // --- trafficPolicy: validateTrafficPolicy ---------------------------------
        case("trafficPolicy: must have at least one field", dr("host: web, trafficPolicy: {}"), rejected("spec.trafficPolicy", "at least one field")),
        case("trafficPolicy: a subset's too", dr("host: web, subsets: [{name: v1, labels: {a: b}, trafficPolicy: {}}]"), rejected("spec.subsets[0].trafficPolicy", "at least one field")),
        case("trafficPolicy: tunnel and proxyProtocol must not be set together", policy("tunnel: {targetHost: egress.example.com, targetPort: 443}, proxyProtocol: {version: V2}"), rejected("spec.trafficPolicy.proxyProtocol", "tunnel")),
        case("trafficPolicy: tunnel protocol must be CONNECT or POST", policy("tunnel: {protocol: UDP, targetHost: egress.example.com, targetPort: 443}"), rejected("spec.trafficPolicy.tunnel.protocol", "CONNECT or POST")),
        // --- connectionPool: validateConnectionPool -------------------------------
        case("connectionPool: must have at least one field", policy("connectionPool: {}"), rejected("spec.trafficPolicy.connectionPool", "must set tcp or http")),
        case("connectionPool: tcp limits", policy("connectionPool: {tcp: {maxConnections: 100, connectTimeout: 30ms}}"), Accepted),
        case("connectionPool: ValidateDuration on idleTimeout", policy("connectionPool: {http: {idleTimeout: 0.5ms}}"), rejected("spec.trafficPolicy.connectionPool.http.idleTimeout", "under 1ms")),
        case("connectionPool: use client protocol must not be true when UPGRADE", policy("connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}"), rejected("spec.trafficPolicy.connectionPool.http.useClientProtocol", "UPGRADE")),
        case("connectionPool: max connections must be non-negative", policy("connectionPool: {tcp: {maxConnections: -1}}"), rejected("spec.trafficPolicy.connectionPool.tcp.maxConnections", "not a count")),
        // --- loadBalancer: validateLoadBalancer -----------------------------------
        case("loadBalancer: simple", policy("loadBalancer: {simple: ROUND_ROBIN}"), Accepted),
        case("loadBalancer: an unknown algorithm (no such enum value)", policy("loadBalancer: {simple: FASTEST}"), rejected("spec.trafficPolicy.loadBalancer.simple", "unknown algorithm")),
        case("loadBalancer: consistentHash with ringHash", policy("loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 1024}}}"), Accepted),
        case("loadBalancer: consistentHash with maglev", policy("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}"), Accepted),
        case("loadBalancer: tableSize must be a prime number for maglev", policy("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}"), rejected("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "not a prime")),
        case("loadBalancer: tableSize must be set for maglev", policy("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}}}"), rejected("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "must be set")),
        case("loadBalancer: tableSize must be less than 5000011", policy("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}"), rejected("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "out of range")),
        case("loadBalancer: a prime table above the kernel's limit", policy("loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000033}}}"), Accepted),
        case("loadBalancer: only one of MinimumRingSize or Maglev/Ringhash", policy("loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 1024, maglev: {tableSize: 251}}}"), rejected("spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize", "maglev or ringHash")),
        case("loadBalancer: name required for HttpCookie", policy("loadBalancer: {consistentHash: {httpCookie: {ttl: 10s}}}"), rejected("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "required")),
        case("loadBalancer: a cookie with a name and ttl", policy("loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}"), Accepted),
        case("loadBalancer: ValidateDuration on warmupDurationSecs", policy("loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 100us}"), rejected("spec.trafficPolicy.loadBalancer.warmupDurationSecs", "under 1ms")),
        case("loadBalancer: warmup", policy("loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 10, aggression: 2}}"), Accepted),
        case("loadBalancer: total locality weight != 100", policy("loadBalancer: {localityLbSetting: {distribute: [{from: us-east/*, to: {us-east/*: 80, us-west/*: 30}}]}}"), rejected("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "add up to 110")),
        case("loadBalancer: cannot specify both distribute and failover", policy("loadBalancer: {localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}}"), rejected("spec.trafficPolicy.loadBalancer.localityLbSetting", "cannot both be set")),
        case("loadBalancer: failover must specify different regions", policy("loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: us-east}]}}"), rejected("spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0].to", "another region")),
        // --- outlierDetection: validateOutlierDetection ---------------------------
        case("outlierDetection: percentages and durations", policy("outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}"), Accepted),
        case("outlierDetection: ValidatePercent (over 100)", policy("outlierDetection: {maxEjectionPercent: 120}"), rejected("spec.trafficPolicy.outlierDetection.maxEjectionPercent", "percentage")),
        case("outlierDetection: ValidatePercent (negative)", policy("outlierDetection: {minHealthPercent: -1}"), rejected("spec.trafficPolicy.outlierDetection.minHealthPercent", "percentage")),
        case("outlierDetection: local origin failures need the split", policy("outlierDetection: {consecutiveLocalOriginFailures: 3}"), rejected("spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors")),
        case("outlierDetection: ValidateDuration on baseEjectionTime", policy("outlierDetection: {baseEjectionTime: 500us}"), rejected("spec.trafficPolicy.outlierDetection.baseEjectionTime", "under 1ms")),
        // --- tls: ValidateTLS ----------------------------------------------------
        case("tls: DISABLE", policy("tls: {mode: DISABLE}"), Accepted),
        case("tls: SIMPLE", policy("tls: {mode: SIMPLE, sni: api.example.com}"), Accepted),
        case("tls: SIMPLE with InsecureSkipVerify cannot name a CA", policy("tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}"), rejected("spec.trafficPolicy.tls.caCertificates", "insecureSkipVerify")),
        case("tls: MUTUAL with files", policy("tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}"), Accepted),
        case("tls: private key required for mutual tls", policy("tls: {mode: MUTUAL, clientCertificate: /c.pem}"), rejected("spec.trafficPolicy.tls.privateKey", "required for MUTUAL")),
        case("tls: MUTUAL with credentialName", policy("tls: {mode: MUTUAL, credentialName: client-cert}"), Accepted),
        case("tls: no client certificates if credentialName is set", policy("tls: {mode: MUTUAL, credentialName: client-cert, clientCertificate: /c.pem}"), rejected("spec.trafficPolicy.tls.clientCertificate", "credentialName")),
        case("tls: ISTIO_MUTUAL", policy("tls: {mode: ISTIO_MUTUAL}"), Accepted),
        case("tls: ISTIO_MUTUAL with sni and subjectAltNames", policy("tls: {mode: ISTIO_MUTUAL, sni: web.shop.svc.cluster.local, subjectAltNames: ['spiffe://cluster.local/ns/shop/sa/web']}"), Accepted),
        case("tls: ISTIO_MUTUAL per subset (Bookinfo's destination-rule-all-mtls)", dr("host: reviews, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}]"), Accepted),
        case("tls: an unknown mode (no such enum value)", policy("tls: {mode: STRICT}"), rejected("spec.trafficPolicy.tls.mode", "unknown mode")),
        case("tls: enum values are case-sensitive", policy("tls: {mode: simple}"), rejected("spec.trafficPolicy.tls.mode", "unknown mode")),
        // --- portLevelSettings: validatePortTrafficPolicies -----------------------
        case("portLevelSettings: a port", policy("portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]"), Accepted),
        case("portLevelSettings: portTrafficPolicy must have valid port", policy("portLevelSettings: [{loadBalancer: {simple: RANDOM}}]"), rejected("spec.trafficPolicy.portLevelSettings[0].port", "required")),
        case("portLevelSettings: port traffic policy must have at least one field", policy("portLevelSettings: [{port: {number: 80}}]"), rejected("spec.trafficPolicy.portLevelSettings[0]", "sets only `port`")),
        case("portLevelSettings: a port listed twice (the first applies)", policy("portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}, {port: {number: 80}, loadBalancer: {simple: ROUND_ROBIN}}]"), Accepted),
        case("portLevelSettings: ValidateTLS per port", policy("portLevelSettings: [{port: {number: 80}, tls: {mode: BOGUS}}]"), rejected("spec.trafficPolicy.portLevelSettings[0].tls.mode", "unknown mode")),
        // --- exportTo and workloadSelector: validateExportTo, validateWorkloadSelector
        case("exportTo: `~` is not allowed for a DestinationRule", dr("host: web, exportTo: ['~']"), rejected("spec.exportTo[0]", "only for ServiceEntries")),
        case("exportTo: namespace labels take upper case", dr("host: web, exportTo: [Other]"), Accepted),
        case("workloadSelector: labels", dr("host: web, workloadSelector: {matchLabels: {app: checkout}}"), Accepted),
        case("workloadSelector: wildcard is not supported in selector", dr("host: web, workloadSelector: {matchLabels: {app: '*'}}"), rejected("spec.workloadSelector.matchLabels[app]", "wildcard")),
        case("workloadSelector: empty key is not supported in selector", dr("host: web, workloadSelector: {matchLabels: {'': x}}"), rejected("spec.workloadSelector.matchLabels[]", "empty key")),
        case("workloadSelector: cannot have exportTo beyond current namespace", dr("host: web, exportTo: ['*'], workloadSelector: {matchLabels: {app: checkout}}"), rejected("spec.exportTo[0]", "beyond its own namespace")),
        case("workloadSelector: exportTo the current namespace", dr("host: web, exportTo: ['.'], workloadSelector: {matchLabels: {app: checkout}}"), Accepted),
    ]
}

/// The rejections of the object `kind shop/case` when `yaml` is built
/// into a model on its own.
fn rejections_of(kind: &str, yaml: &str) -> Vec<Rejection> {
    let objects = parse_file("case.yaml", yaml).unwrap_or_else(|e| panic!("{yaml}\ndoes not decode: {e:?}"));
    let model = Model::build(&objects, vec![], &Model::default(), DOMAIN);
    model.rejections.into_iter().filter(|r| r.kind == kind && r.name == "case").collect()
}

/// Runs every case, then fails once listing every case that disagrees.
fn check(kind: &str, cases: Vec<Case>) -> usize {
    let mut disagreements = Vec::new();
    for case in &cases {
        let rejections = rejections_of(kind, &case.yaml);
        let agrees = match (case.verdict, rejections.first()) {
            (Verdict::Accepted, None) => true,
            (Verdict::Rejected { field, reason }, Some(first)) => {
                first.field == field && first.message.contains(reason)
            }
            _ => false,
        };
        if !agrees {
            let got: Vec<String> = rejections.iter().map(|r| format!("{}: {}", r.field, r.message)).collect();
            disagreements
                .push(format!("{}\n  istio: {:?}\n  ours:  {got:?}\n  {}", case.rule, case.verdict, case.yaml));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree with Istio:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
    cases.len()
}

#[test]
fn virtual_services_are_judged_as_istio_judges_them() {
    assert!(check("VirtualService", virtual_service_cases()) >= 100);
}

#[test]
fn destination_rules_are_judged_as_istio_judges_them() {
    assert!(check("DestinationRule", destination_rule_cases()) >= 50);
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: 8080}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- {addresses: [10.244.0.2], targetRef: {kind: Pod, name: web-a}}\n- {addresses: [10.244.0.3], targetRef: {kind: Pod, name: web-b}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-a, namespace: shop, labels: {app: web, version: v1}}\nstatus: {podIP: 10.244.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-b, namespace: shop, labels: {app: web, version: v2}}\nstatus: {podIP: 10.244.0.3}\n";

/// Istio's egress task names a subset without labels: it is every
/// endpoint of the host, and a VirtualService naming it is served.
#[test]
fn a_subset_without_labels_selects_every_endpoint_and_serves_its_routes() {
    let rule = dr("host: web, subsets: [{name: all}, {name: V2, labels: {version: v2}}]");
    let route = vs("hosts: [web], http: [{route: [{destination: {host: Web, subset: all}, weight: 50}, {destination: {host: web, subset: V2}, weight: 50}]}]");
    let text = format!("{SERVICE}---\n{rule}---\n{route}");
    let objects = parse_file("case.yaml", &text).unwrap();
    let model = Model::build(&objects, vec![], &Model::default(), DOMAIN);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    assert_eq!(model.virtual_services.len(), 1, "not cascaded: the VirtualService serves");
    let snapshot = mesh_core::snapshot::compile(&model, DOMAIN);
    let service = snapshot.services.iter().find(|s| s.port == 80).unwrap();
    let mut all = snapshot.endpoints_any_family(service, Some("all"));
    all.sort();
    assert_eq!(all, ["10.244.0.2:8080".parse().unwrap(), "10.244.0.3:8080".parse().unwrap()]);
    assert_eq!(snapshot.endpoints_any_family(service, Some("V2")), ["10.244.0.3:8080".parse().unwrap()]);
    assert!(snapshot.endpoints_any_family(service, Some("v2")).is_empty(), "subset names are compared as written");
}

/// ISTIO_MUTUAL is accepted and served in plaintext; the rest of the rule
/// applies.
#[test]
fn istio_mutual_is_served_without_tls_origination() {
    let rule = dr("host: web, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}, loadBalancer: {simple: ROUND_ROBIN}}");
    let objects = parse_file("case.yaml", &format!("{SERVICE}---\n{rule}")).unwrap();
    let model = Model::build(&objects, vec![], &Model::default(), DOMAIN);
    assert!(model.rejections.is_empty(), "{:?}", model.rejections);
    let snapshot = mesh_core::snapshot::compile(&model, DOMAIN);
    let service = snapshot.services.iter().find(|s| s.port == 80).unwrap();
    let policy = snapshot.policy_for(service, None);
    assert_eq!(policy.tls, None);
    assert_eq!(policy.load_balancer, mesh_core::destination_rule::LoadBalancer::RoundRobin);
}
