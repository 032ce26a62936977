//! `corsPolicy`: the proxy answers preflights and decorates responses, as
//! Envoy's CORS filter does.

use super::matching::RequestView;
use super::ser;
use super::string_match::StringMatcher;
use crate::field::parse_istio_duration;
use crate::field::FieldError;
use crate::field::Path;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    #[serde(serialize_with = "ser::opt_duration")]
    pub max_age: Option<Duration>,
    pub allow_credentials: Option<bool>,
}

impl CorsPolicy {
    /// The client's `Origin` when the policy allows it. A matcher that
    /// accepts the literal `*` allows every origin (Envoy's rule).
    fn allowed_origin<'r>(&self, request: &'r RequestView<'_>) -> Option<&'r HeaderValue> {
        let origin = request.headers.get(header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        self.allow_origins.iter().any(|m| m.matches("*") || m.matches(text)).then_some(origin)
    }

    /// The headers of the proxy's own `200` answer when `request` is a
    /// preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) from an allowed origin; `None`
    /// otherwise, and then the request is routed as usual.
    pub fn preflight(&self, request: &RequestView<'_>) -> Option<HeaderMap> {
        if *request.method != Method::OPTIONS || !request.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let origin = self.allowed_origin(request)?;
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        self.insert_credentials(&mut headers);
        insert_list(&mut headers, header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods);
        insert_list(&mut headers, header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers);
        if let Some(max_age) = self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(max_age.as_secs()));
        }
        Some(headers)
    }

    /// Headers to add to the upstream's response to a request from an
    /// allowed origin; empty for any other request.
    pub fn response_headers(&self, request: &RequestView<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(origin) = self.allowed_origin(request) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            self.insert_credentials(&mut headers);
            insert_list(&mut headers, header::ACCESS_CONTROL_EXPOSE_HEADERS, &self.expose_headers);
        }
        headers
    }

    fn insert_credentials(&self, headers: &mut HeaderMap) {
        if self.allow_credentials == Some(true) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

/// A comma-separated list header; nothing when the list is empty.
fn insert_list(headers: &mut HeaderMap, name: header::HeaderName, values: &[String]) {
    if values.is_empty() {
        return;
    }
    // Validation admitted only header-safe tokens, so this holds.
    if let Ok(value) = HeaderValue::from_str(&values.join(",")) {
        headers.insert(name, value);
    }
}

/// The methods Istio's validation knows (Go's `net/http` constants),
/// written in upper case: `*` and extension methods are refused.
const SUPPORTED_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

pub(crate) fn compile_cors(at: &Path, spec: &crate::api::CorsPolicy) -> Result<CorsPolicy, FieldError> {
    let mut allow_origins = Vec::new();
    for (i, origin) in spec.allow_origins.iter().enumerate() {
        let field = at.field(&format!("allowOrigins[{i}]"));
        let empty =
            [&origin.exact, &origin.prefix, &origin.regex].iter().all(|s| s.as_deref().unwrap_or("").is_empty());
        if empty {
            return Err(FieldError::new(field, "an origin match must not be empty"));
        }
        allow_origins.extend(StringMatcher::compile(&field, origin, false)?);
    }
    // The deprecated `allowOrigin`: exact origins, as Istio translates them.
    allow_origins.extend(spec.allow_origin.iter().map(|origin| StringMatcher::Exact(origin.clone())));
    for (i, method) in spec.allow_methods.iter().enumerate() {
        if !SUPPORTED_METHODS.contains(&method.as_str()) {
            let field = at.field(&format!("allowMethods[{i}]"));
            return Err(FieldError::new(
                field,
                format!("{method:?} is not a supported HTTP method ({})", SUPPORTED_METHODS.join(", ")),
            ));
        }
    }
    // Istio's CORS header names: `*`, or letters, digits, `-` and `_`.
    let header_name = |name: &str| {
        name == "*" || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    for (kind, names) in [("allowHeaders", &spec.allow_headers), ("exposeHeaders", &spec.expose_headers)] {
        for (i, name) in names.iter().enumerate() {
            if !header_name(name) {
                let field = at.field(&format!("{kind}[{i}]"));
                return Err(FieldError::new(field, format!("{name:?} is not a header name")));
            }
        }
    }
    let max_age = spec
        .max_age
        .as_deref()
        .map(|text| {
            let max_age = parse_istio_duration(&at.field("maxAge"), text)?;
            if max_age.subsec_nanos() != 0 {
                return Err(FieldError::new(at.field("maxAge"), "is sent in whole seconds; give whole seconds"));
            }
            Ok(max_age)
        })
        .transpose()?;
    Ok(CorsPolicy {
        allow_origins,
        allow_methods: spec.allow_methods.clone(),
        allow_headers: spec.allow_headers.clone(),
        expose_headers: spec.expose_headers.clone(),
        max_age,
        allow_credentials: spec.allow_credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::{request, vs};

    fn cors(block: &str) -> Result<CorsPolicy, FieldError> {
        let spec =
            format!("  hosts: [web]\n  http:\n  - corsPolicy: {block}\n    route: [{{destination: {{host: web}}}}]\n");
        vs(&spec).map(|model| model.http[0].cors.clone().unwrap())
    }

    const POLICY: &str = "{allowOrigins: [{exact: 'https://shop.example'}, {regex: 'https://.*\\.partner\\.example'}], allowMethods: [GET, POST], allowHeaders: [x-user, content-type], exposeHeaders: [x-trace], maxAge: 24h, allowCredentials: true}";

    #[test]
    fn preflight_from_an_allowed_origin_is_answered() {
        let policy = cors(POLICY).unwrap();
        let preflight = request("/api")
            .method("OPTIONS")
            .header("origin", "https://a.partner.example")
            .header("access-control-request-method", "POST");
        let headers = policy.preflight(&preflight.view()).expect("answered");
        assert_eq!(headers["access-control-allow-origin"], "https://a.partner.example");
        assert_eq!(headers["access-control-allow-methods"], "GET,POST");
        assert_eq!(headers["access-control-allow-headers"], "x-user,content-type");
        assert_eq!(headers["access-control-max-age"], "86400");
        assert_eq!(headers["access-control-allow-credentials"], "true");
        assert!(!headers.contains_key("access-control-expose-headers"), "only on actual responses");
    }

    #[test]
    fn other_requests_are_not_preflights() {
        let policy = cors(POLICY).unwrap();
        let evil = request("/")
            .method("OPTIONS")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET");
        assert!(policy.preflight(&evil.view()).is_none(), "origin not allowed: routed as usual");
        let plain_options = request("/").method("OPTIONS").header("origin", "https://shop.example");
        assert!(policy.preflight(&plain_options.view()).is_none(), "no Access-Control-Request-Method");
        let get = request("/").header("origin", "https://shop.example").header("access-control-request-method", "GET");
        assert!(policy.preflight(&get.view()).is_none(), "not OPTIONS");
    }

    #[test]
    fn actual_responses_get_origin_credentials_and_exposed_headers() {
        let policy = cors(POLICY).unwrap();
        let get = request("/").header("origin", "https://shop.example");
        let headers = policy.response_headers(&get.view());
        assert_eq!(headers["access-control-allow-origin"], "https://shop.example");
        assert_eq!(headers["access-control-expose-headers"], "x-trace");
        assert_eq!(headers["access-control-allow-credentials"], "true");
        assert!(policy.response_headers(&request("/").view()).is_empty(), "no Origin, nothing added");
        let star = cors("{allowOrigins: [{exact: '*'}]}").unwrap();
        let any = request("/").header("origin", "https://any.example");
        assert_eq!(star.response_headers(&any.view())["access-control-allow-origin"], "https://any.example");
        assert!(!star.response_headers(&any.view()).contains_key("access-control-allow-credentials"));
    }

    #[test]
    fn the_deprecated_allow_origin_adds_exact_origins() {
        let policy = cors("{allowOrigin: ['https://old.example'], allowOrigins: [{prefix: 'https://new.'}]}").unwrap();
        for (origin, allowed) in
            [("https://old.example", true), ("https://new.example", true), ("https://old.example.evil", false)]
        {
            let get = request("/").header("origin", origin);
            assert_eq!(
                policy.response_headers(&get.view()).contains_key("access-control-allow-origin"),
                allowed,
                "{origin}"
            );
        }
        let star = cors("{allowOrigin: ['*']}").unwrap();
        let any = request("/").header("origin", "https://any.example");
        assert_eq!(star.response_headers(&any.view())["access-control-allow-origin"], "https://any.example");
    }

    #[test]
    fn invalid_policies_are_named() {
        let cases = [
            ("{allowOrigins: [{exact: ''}]}", "spec.http[0].corsPolicy.allowOrigins[0]"),
            ("{allowOrigins: [{regex: '['}]}", "spec.http[0].corsPolicy.allowOrigins[0].regex"),
            ("{allowMethods: ['GE T']}", "spec.http[0].corsPolicy.allowMethods[0]"),
            ("{allowHeaders: ['a b']}", "spec.http[0].corsPolicy.allowHeaders[0]"),
            ("{maxAge: 1.5s}", "spec.http[0].corsPolicy.maxAge"),
        ];
        for (block, field) in cases {
            assert_eq!(cors(block).unwrap_err().field, field, "{block}");
        }
    }
}
