//! Which rule a request takes: rules in order, the first that matches
//! wins; a rule without `match` matches everything; within one match block
//! every condition must hold, and any block of a rule may match.

use super::ser;
use super::string_match::StringMatcher;
use crate::api::{HttpMatchRequest, StringMatch};
use crate::field::Path;
use crate::field::{parse_port, FieldError};
use crate::host::validate_gateways;
use crate::host::{is_istio_label, labels_match, validate_labels};
use http::HeaderName;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What routing looks at in a request; the proxy fills it from the request
/// it holds, without copying.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a http::Method,
    /// `http` or `https`, as the client spoke to the service.
    pub scheme: &'a str,
    /// The `:authority` (HTTP/2) or `Host` (HTTP/1.1), port included if sent.
    pub authority: &'a str,
    /// The path without the query string, after the proxy's normalisation.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    /// The service port the client connected to.
    pub port: u16,
    /// The client workload's labels, when the proxy knows them.
    pub source_labels: Option<&'a BTreeMap<String, String>>,
    /// The client workload's namespace, when the proxy knows it.
    pub source_namespace: Option<&'a str>,
}

/// One `match` block.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<UriMatch>,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    /// `headers` and `withoutHeaders` (inverted) together.
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
    pub port: Option<u16>,
    /// Istio applies these when it builds a sidecar's config; here the
    /// block matches only when the proxy supplies the client's labels.
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    /// Where the block applies: empty means wherever the VirtualService
    /// does. Blocks not for the mesh are left out of the route table.
    pub gateways: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UriMatch {
    pub matcher: StringMatcher,
    /// `ignoreUriCase`: exact and prefix compare ASCII case-insensitively.
    pub ignore_case: bool,
}

impl UriMatch {
    pub fn matches(&self, path: &str) -> bool {
        if self.ignore_case {
            self.matcher.matches_ignoring_case(path)
        } else {
            self.matcher.matches(path)
        }
    }

    /// The prefix a prefix match stands on; a prefix rewrite replaces it.
    pub fn prefix(&self) -> Option<&str> {
        match &self.matcher {
            StringMatcher::Prefix(prefix) => Some(prefix),
            _ => None,
        }
    }
}

/// A condition on one request header, with Envoy's treatment of an absent
/// header: it fails every condition except an inverted presence test
/// (`withoutHeaders: {x: {}}`). So `withoutHeaders: {x: {exact: v}}` needs
/// `x` present with another value (istio/istio#50988).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(serialize_with = "ser::header_name")]
    pub name: HeaderName,
    /// `None`: the header must be present (`{}`).
    pub value: Option<StringMatcher>,
    /// From `withoutHeaders`.
    pub invert: bool,
}

impl HeaderMatch {
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return self.invert && self.value.is_none();
        };
        let Some(matcher) = &self.value else {
            return !self.invert;
        };
        // Several instances of a header are matched as one value joined by
        // commas, as Envoy does.
        let mut joined: Cow<'_, str> = String::from_utf8_lossy(first.as_bytes());
        for more in values {
            let joined = joined.to_mut();
            joined.push(',');
            joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
        }
        matcher.matches(&joined) != self.invert
    }
}

/// A condition on one query parameter: its first value, percent-decoded.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    pub name: String,
    /// `None`: the parameter must be present (`{}`).
    pub value: Option<StringMatcher>,
}

impl HttpMatch {
    /// Whether every condition of the block holds for `request`.
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        let holds = |matcher: &Option<StringMatcher>, value: &str| matcher.as_ref().is_none_or(|m| m.matches(value));
        self.uri.as_ref().is_none_or(|uri| uri.matches(request.path))
            && holds(&self.scheme, request.scheme)
            && holds(&self.method, request.method.as_str())
            && holds(&self.authority, request.authority)
            && self.port.is_none_or(|port| port == request.port)
            && self.headers.iter().all(|h| h.matches(request.headers))
            && self.query_params_match(request.query)
            && self.source_matches(request)
    }

    fn query_params_match(&self, query: Option<&str>) -> bool {
        if self.query_params.is_empty() {
            return true;
        }
        let params = parse_query(query.unwrap_or(""));
        self.query_params.iter().all(|condition| match params.iter().find(|(name, _)| *name == condition.name) {
            None => false,
            Some((_, value)) => condition.value.as_ref().is_none_or(|m| m.matches(value)),
        })
    }

    fn source_matches(&self, request: &RequestView<'_>) -> bool {
        source_holds(
            &self.source_labels,
            self.source_namespace.as_deref(),
            request.source_labels,
            request.source_namespace,
        )
    }

    /// Whether the block applies to sidecars (no gateways, or `mesh`).
    pub fn applies_to_mesh(&self) -> bool {
        crate::host::applies_to_mesh(&self.gateways)
    }
}

/// `sourceLabels` and `sourceNamespace` (`wanted_*`) against the client
/// workload's (None: not a pod the proxy knows, which meets neither).
pub(crate) fn source_holds(
    wanted_labels: &BTreeMap<String, String>,
    wanted_namespace: Option<&str>,
    labels: Option<&BTreeMap<String, String>>,
    namespace: Option<&str>,
) -> bool {
    let labels_hold = wanted_labels.is_empty() || labels.is_some_and(|labels| labels_match(wanted_labels, labels));
    labels_hold && wanted_namespace.is_none_or(|ns| namespace == Some(ns))
}

/// `a=1&b=%2F&c` as `[(a, 1), (b, /), (c, "")]`; `+` stays a plus, as in
/// Envoy's decoding of query parameters.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// Decodes `%xx`; a `%` not followed by two hex digits is kept as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Istio's header name check for matches: letters, digits, `-` and `_`.
fn header_name(field: &str, name: &str) -> Result<HeaderName, FieldError> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid
        .then(|| HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok())
        .flatten()
        .ok_or_else(|| FieldError::new(field, format!("{name:?} is not a header name (letters, digits, - and _)")))
}

/// Compiles `spec.http[i].match[k]`.
pub(crate) fn compile_match(at: &Path, spec: &HttpMatchRequest) -> Result<HttpMatch, FieldError> {
    let string = |name: &str, spec: &Option<StringMatch>| -> Result<Option<StringMatcher>, FieldError> {
        spec.as_ref().map(|s| StringMatcher::compile(&at.field(name), s, false)).transpose().map(Option::flatten)
    };
    let uri = spec
        .uri
        .as_ref()
        .map(|uri| StringMatcher::compile(&at.field("uri"), uri, true))
        .transpose()?
        .flatten()
        .map(|matcher| UriMatch { matcher, ignore_case: spec.ignore_uri_case.unwrap_or(false) });
    let mut headers = Vec::new();
    for (name, condition) in &spec.headers {
        let field = at.field(&format!("headers[{name}]"));
        let name = header_name(&field, name)?;
        let condition =
            condition.as_ref().ok_or_else(|| FieldError::new(&field, "must not be null; {} means present"))?;
        headers.push(HeaderMatch { name, value: StringMatcher::compile(&field, condition, false)?, invert: false });
    }
    for (name, condition) in &spec.without_headers {
        let field = at.field(&format!("withoutHeaders[{name}]"));
        let name = header_name(&field, name)?;
        // `regex: "*"` is Istio's spelling of "present", not a regex.
        let value = match condition {
            None => None,
            Some(c) if c.regex.as_deref() == Some("*") && c.exact.is_none() && c.prefix.is_none() => None,
            Some(c) => StringMatcher::compile(&field, c, false)?,
        };
        headers.push(HeaderMatch { name, value, invert: true });
    }
    let mut query_params = Vec::new();
    for (name, condition) in &spec.query_params {
        let field = at.field(&format!("queryParams[{name}]"));
        if name.is_empty() {
            return Err(FieldError::new(field, "a query parameter name must not be empty"));
        }
        let condition =
            condition.as_ref().ok_or_else(|| FieldError::new(&field, "must not be null; {} means present"))?;
        query_params
            .push(QueryParamMatch { name: name.clone(), value: StringMatcher::compile(&field, condition, false)? });
    }
    if let Some(namespace) = spec.source_namespace.as_deref().filter(|ns| !ns.is_empty() && !is_istio_label(ns)) {
        return Err(FieldError::new(at.field("sourceNamespace"), format!("{namespace:?} is not a namespace name")));
    }
    validate_labels(&at.field("sourceLabels"), &spec.source_labels)?;
    validate_gateways(&at.field("gateways"), &spec.gateways)?;
    Ok(HttpMatch {
        name: spec.name.clone(),
        uri,
        scheme: string("scheme", &spec.scheme)?,
        method: string("method", &spec.method)?,
        authority: string("authority", &spec.authority)?,
        headers,
        query_params,
        // 0 is proto3's "unset", as Istio reads it.
        port: spec.port.filter(|p| *p != 0).map(|p| parse_port(&at.field("port"), p)).transpose()?,
        source_labels: spec.source_labels.clone(),
        source_namespace: spec.source_namespace.clone(),
        gateways: spec.gateways.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::rule::first_match;
    use crate::route::test_support::{request, vs_routes, Req};

    fn route_names(yaml_http: &str, req: &Req) -> Option<String> {
        let routes = vs_routes(yaml_http);
        let view = req.view();
        first_match(&routes, &view).map(|(route, _)| route.name.clone().unwrap_or_default())
    }

    #[test]
    fn first_matching_rule_wins_and_a_rule_without_match_takes_the_rest() {
        let http = "
- name: api
  match: [{uri: {prefix: /api}}]
  route: [{destination: {host: api}}]
- name: api-v2
  match: [{uri: {prefix: /api/v2}}]
  route: [{destination: {host: v2}}]
- name: rest
  route: [{destination: {host: web}}]
- name: never
  route: [{destination: {host: web}}]
";
        assert_eq!(route_names(http, &request("/api/v2/x")).as_deref(), Some("api"), "order, not specificity");
        assert_eq!(route_names(http, &request("/other")).as_deref(), Some("rest"));
        let only_api = "
- name: api
  match: [{uri: {exact: /api}}]
  route: [{destination: {host: api}}]
";
        assert_eq!(route_names(only_api, &request("/web")), None, "no rule: the proxy answers 404");
    }

    #[test]
    fn conditions_in_one_block_and_blocks_or() {
        let http = "
- name: both
  match:
  - uri: {prefix: /a}
    headers: {end-user: {exact: jason}}
  - method: {exact: DELETE}
  route: [{destination: {host: v2}}]
- name: rest
  route: [{destination: {host: v1}}]
";
        assert_eq!(route_names(http, &request("/a").header("end-user", "jason")).as_deref(), Some("both"));
        assert_eq!(route_names(http, &request("/a")).as_deref(), Some("rest"), "AND within a block");
        assert_eq!(route_names(http, &request("/b").header("end-user", "jason")).as_deref(), Some("rest"));
        assert_eq!(route_names(http, &request("/b").method("DELETE")).as_deref(), Some("both"), "OR across blocks");
        let routes = vs_routes(http);
        let delete = request("/b").method("DELETE");
        let (_, block) = first_match(&routes, &delete.view()).unwrap();
        assert_eq!(block.unwrap().method, Some(StringMatcher::Exact("DELETE".into())), "the matched block");
    }

    #[test]
    fn every_string_match_kind_on_uri_scheme_method_and_authority() {
        let http = "
- name: exact
  match: [{uri: {exact: /login}}]
  route: [{destination: {host: a}}]
- name: regex
  match: [{uri: {regex: '/users/[0-9]+'}}]
  route: [{destination: {host: a}}]
- name: nocase
  match: [{uri: {prefix: /Static}, ignoreUriCase: true}]
  route: [{destination: {host: a}}]
- name: nocase-regex
  match: [{uri: {regex: /Img/.*}, ignoreUriCase: true}]
  route: [{destination: {host: a}}]
- name: scheme
  match: [{scheme: {exact: https}}]
  route: [{destination: {host: a}}]
- name: method
  match: [{method: {regex: 'PUT|PATCH'}}]
  route: [{destination: {host: a}}]
- name: authority
  match: [{authority: {prefix: admin.}}]
  route: [{destination: {host: a}}]
- name: port
  match: [{port: 8080}]
  route: [{destination: {host: a}}]
";
        let name = |req: Req| route_names(http, &req);
        assert_eq!(name(request("/login")).as_deref(), Some("exact"));
        assert_eq!(name(request("/login/")), None);
        assert_eq!(name(request("/users/42")).as_deref(), Some("regex"));
        assert_eq!(name(request("/x/users/42")), None, "a regex matches the whole path");
        assert_eq!(name(request("/users/42a")), None);
        assert_eq!(name(request("/STATIC/app.js")).as_deref(), Some("nocase"));
        assert_eq!(name(request("/img/a.png")), None, "ignoreUriCase does not apply to a regex");
        assert_eq!(name(request("/Img/a.png")).as_deref(), Some("nocase-regex"));
        assert_eq!(name(request("/x").scheme("https")).as_deref(), Some("scheme"));
        assert_eq!(name(request("/x").method("PATCH")).as_deref(), Some("method"));
        assert_eq!(name(request("/x").method("PATCHY")), None);
        assert_eq!(name(request("/x").authority("admin.shop:80")).as_deref(), Some("authority"));
        assert_eq!(name(request("/x").port(8080)).as_deref(), Some("port"));
        assert_eq!(name(request("/x")), None);
        assert_eq!(name(request("/login").query("a=b")).as_deref(), Some("exact"), "the query is not the path");
    }

    #[test]
    fn headers_present_absent_and_without() {
        let http = "
- name: present
  match: [{headers: {x-canary: {}}}]
  route: [{destination: {host: a}}]
- name: not-debug
  match: [{withoutHeaders: {x-debug: {exact: '1'}}, uri: {exact: /w}}]
  route: [{destination: {host: a}}]
- name: no-trace
  match: [{withoutHeaders: {x-trace: {}}, uri: {exact: /t}}]
  route: [{destination: {host: a}}]
- name: star
  match: [{withoutHeaders: {x-star: {regex: '*'}}, uri: {exact: /s}}]
  route: [{destination: {host: a}}]
- name: user
  match: [{headers: {End-User: {regex: 'ja.*'}}}]
  route: [{destination: {host: a}}]
";
        let name = |req: Req| route_names(http, &req);
        assert_eq!(name(request("/").header("x-canary", "")).as_deref(), Some("present"), "{{}}: present, any value");
        assert_eq!(name(request("/w").header("x-debug", "0")).as_deref(), Some("not-debug"));
        assert_eq!(name(request("/w").header("x-debug", "1")), None);
        assert_eq!(name(request("/w")), None, "Envoy: an absent header fails an inverted value match");
        assert_eq!(name(request("/t")).as_deref(), Some("no-trace"));
        assert_eq!(name(request("/t").header("x-trace", "a")), None);
        assert_eq!(name(request("/s")).as_deref(), Some("star"), "regex '*' means present");
        assert_eq!(name(request("/s").header("x-star", "*")), None);
        assert_eq!(name(request("/").header("end-user", "jason")).as_deref(), Some("user"), "keys are lowercased");
        assert_eq!(name(request("/").header("end-user", "x").header("end-user", "jason")), None, "joined: x,jason");
    }

    #[test]
    fn query_params_are_decoded_and_first_value_counts() {
        let http = "
- name: exact
  match: [{queryParams: {env: {exact: 'a b/c'}}}]
  route: [{destination: {host: a}}]
- name: present
  match: [{queryParams: {debug: {}}}]
  route: [{destination: {host: a}}]
- name: regex
  match: [{queryParams: {id: {regex: '[0-9]+'}}}]
  route: [{destination: {host: a}}]
";
        let name = |query: &str| route_names(http, &request("/").query(query));
        assert_eq!(name("env=a%20b%2Fc").as_deref(), Some("exact"));
        assert_eq!(name("env=a+b/c"), None, "+ is not a space here");
        assert_eq!(name("x=1&debug").as_deref(), Some("present"));
        assert_eq!(name("id=12&id=x").as_deref(), Some("regex"));
        assert_eq!(name("id=x&id=12"), None, "the first value counts");
        assert_eq!(route_names(http, &request("/")), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn source_conditions_need_the_callers_knowledge() {
        let http = "
- name: from-v1
  match: [{sourceLabels: {app: web, version: v1}, sourceNamespace: shop}]
  route: [{destination: {host: a}}]
";
        assert_eq!(route_names(http, &request("/")), None, "unknown source: the block does not match");
        let labels: BTreeMap<String, String> =
            [("app", "web"), ("version", "v1"), ("pod", "x")].map(|(k, v)| (k.into(), v.into())).into();
        let routes = vs_routes(http);
        let req = request("/");
        let mut view = req.view();
        view.source_labels = Some(&labels);
        assert!(first_match(&routes, &view).is_none(), "the namespace is unknown");
        view.source_namespace = Some("shop");
        assert!(first_match(&routes, &view).is_some());
        view.source_namespace = Some("other");
        assert!(first_match(&routes, &view).is_none());
    }
}
