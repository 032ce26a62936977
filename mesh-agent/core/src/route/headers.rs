//! `headers.request` / `headers.response`: set, add and remove.

use super::ser;
use crate::api::{HeaderOperations, Headers};
use crate::field::FieldError;
use crate::field::Path;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

/// Operations on one header block, applied in Envoy's order: removals
/// first, then `set` (replacing every existing value), then `add`
/// (appending a value).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOps {
    #[serde(serialize_with = "ser::header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser::header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "ser::header_names")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// The operations on the request (before it goes upstream) and on the
/// response (before it goes back to the client).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderRules {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

pub(crate) fn compile_headers(at: &Path, spec: Option<&Headers>) -> Result<HeaderRules, FieldError> {
    let Some(spec) = spec else { return Ok(HeaderRules::default()) };
    let request = spec.request.as_ref().map(|ops| compile_ops(&at.child("request"), ops, true)).transpose()?;
    let response = spec.response.as_ref().map(|ops| compile_ops(&at.child("response"), ops, false)).transpose()?;
    Ok(HeaderRules { request: request.unwrap_or_default(), response: response.unwrap_or_default() })
}

/// Pseudo-headers and `host` cannot be touched, except that a request may
/// set or add the authority (`:authority` is written as `host`), as Istio
/// allows.
fn operation_name(field: &str, name: &str, authority_allowed: bool) -> Result<HeaderName, FieldError> {
    let lower = name.to_ascii_lowercase();
    let lower = if lower == ":authority" { "host".to_owned() } else { lower };
    let is_authority = lower == "host";
    if lower.starts_with(':') || (is_authority && !authority_allowed) {
        return Err(FieldError::new(field, format!("{name:?} cannot be modified here")));
    }
    HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| FieldError::new(field, format!("{name:?} is not a valid header name")))
}

fn compile_ops(at: &Path, spec: &HeaderOperations, request: bool) -> Result<HeaderOps, FieldError> {
    let pairs = |kind: &str, entries: &std::collections::BTreeMap<String, String>| {
        entries
            .iter()
            .map(|(name, value)| {
                let field = at.field(&format!("{kind}[{name}]"));
                let name = operation_name(&field, name, request)?;
                let value = HeaderValue::from_str(value)
                    .map_err(|_| FieldError::new(&field, format!("{value:?} is not a valid header value")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, FieldError>>()
    };
    let remove = spec
        .remove
        .iter()
        .enumerate()
        .map(|(i, name)| operation_name(&at.field(&format!("remove[{i}]")), name, false))
        .collect::<Result<Vec<_>, FieldError>>()?;
    Ok(HeaderOps { set: pairs("set", &spec.set)?, add: pairs("add", &spec.add)?, remove })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::test_support::vs;

    #[test]
    fn remove_then_set_then_add() {
        let ops = HeaderOps {
            set: vec![(HeaderName::from_static("x-set"), HeaderValue::from_static("new"))],
            add: vec![
                (HeaderName::from_static("x-add"), HeaderValue::from_static("2")),
                (HeaderName::from_static("x-gone"), HeaderValue::from_static("back")),
            ],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        let mut headers = HeaderMap::new();
        headers.append("x-set", HeaderValue::from_static("old1"));
        headers.append("x-set", HeaderValue::from_static("old2"));
        headers.append("x-add", HeaderValue::from_static("1"));
        headers.append("x-gone", HeaderValue::from_static("a"));
        ops.apply(&mut headers);
        let all = |name: &str| headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(all("x-set"), ["new"]);
        assert_eq!(all("x-add"), ["1", "2"]);
        assert_eq!(all("x-gone"), ["back"], "an add after a remove of the same header survives");
    }

    #[test]
    fn rule_and_destination_headers_compile_lowercase() {
        let model = vs("  hosts: [web]\n  http:\n  - headers:\n      request: {set: {X-Env: prod, ':authority': web.example}, remove: [Cookie]}\n      response: {add: {x-served-by: mesh}}\n    route:\n    - destination: {host: web}\n      headers: {request: {add: {x-dest: v1}}}\n").unwrap();
        let rule = &model.http[0];
        assert_eq!(rule.headers.request.set[0].0.as_str(), "host", ":authority is written as host");
        assert_eq!(rule.headers.request.set[1].0.as_str(), "x-env");
        assert_eq!(rule.headers.request.remove[0].as_str(), "cookie");
        assert_eq!(rule.headers.response.add[0].1, "mesh");
        let crate::route::rule::RouteAction::Forward(destinations) = &rule.action else { panic!() };
        assert_eq!(destinations[0].headers.request.add[0].0.as_str(), "x-dest");
    }

    #[test]
    fn invalid_operations_are_named() {
        let cases = [
            ("request: {set: {'bad header': x}}", "spec.http[0].headers.request.set[bad header]"),
            ("request: {set: {x-a: \"a\\nb\"}}", "spec.http[0].headers.request.set[x-a]"),
            ("request: {remove: [host]}", "spec.http[0].headers.request.remove[0]"),
            ("response: {set: {host: a}}", "spec.http[0].headers.response.set[host]"),
            ("request: {add: {':path': /x}}", "spec.http[0].headers.request.add[:path]"),
        ];
        for (ops, field) in cases {
            let spec = format!(
                "  hosts: [web]\n  http:\n  - headers: {{{ops}}}\n    route: [{{destination: {{host: web}}}}]\n"
            );
            assert_eq!(vs(&spec).unwrap_err().field, field, "{ops}");
        }
    }
}
