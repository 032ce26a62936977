//! Which objects a list or watch is about: namespace, label selector and
//! field selector.

use serde_json::Value;

use super::kinds::Key;
use super::request::{Query, Route};
use super::response::ApiError;

/// Which objects a list or watch is about.
pub(super) struct Filter {
    pub(super) kind: usize,
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    pub(super) fn new(route: &Route, query: &Query) -> Result<Filter, ApiError> {
        Ok(Filter {
            kind: route.kind,
            namespace: route.namespace.clone(),
            labels: parse_label_selector(query.get("labelSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("bad labelSelector: {e}")))?,
            fields: parse_field_selector(query.get("fieldSelector").unwrap_or(""))
                .map_err(|e| ApiError::bad_request(format!("bad fieldSelector: {e}")))?,
        })
    }

    pub(super) fn matches(&self, key: &Key, object: &Value) -> bool {
        key.0 == self.kind
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.labels.iter().all(|r| r.matches(object.pointer("/metadata/labels")))
            && self.fields.iter().all(|r| r.matches(object))
    }
}

#[derive(Debug, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&Value>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            Self::Equals(k, v) => label(k) == Some(v),
            // As on a real server, "!=" and "notin" match objects without the label.
            Self::NotEquals(k, v) => label(k) != Some(v),
            Self::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Self::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Self::Exists(k) => label(k).is_some(),
            Self::NotExists(k) => label(k).is_none(),
        }
    }
}

/// `a=b,c==d,e!=f,g,!h,i in (j,k),l notin (m)`.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    let valid_key = |k: &str| {
        let k = k.trim();
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            Ok(k.to_string())
        } else {
            Err(format!("bad label key {k:?}"))
        }
    };
    let mut requirements = Vec::new();
    for term in split_outside_parens(selector) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let requirement = if let Some(key) = term.strip_prefix('!') {
            LabelRequirement::NotExists(valid_key(key)?)
        } else if let Some((head, values)) = term.split_once('(') {
            let values = values.strip_suffix(')').ok_or_else(|| format!("unclosed '(' in {term:?}"))?;
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
            match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                [key, "in"] => LabelRequirement::In(valid_key(key)?, values),
                [key, "notin"] => LabelRequirement::NotIn(valid_key(key)?, values),
                _ => return Err(format!("bad set requirement {term:?}")),
            }
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelRequirement::NotEquals(valid_key(key)?, value.trim().to_string())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelRequirement::Equals(valid_key(key)?, value.trim().to_string())
        } else {
            LabelRequirement::Exists(valid_key(term)?)
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `path=value`, `path==value` or `path!=value`, `path` dotted into the object.
#[derive(Debug, PartialEq)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, object: &Value) -> bool {
        let pointer = format!("/{}", self.path.replace('.', "/"));
        // A missing field compares as "", as on a real server.
        let actual = match object.pointer(&pointer) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        (actual == self.value) == self.equal
    }
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut requirements = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (p, v, true)
        } else {
            return Err(format!("{term:?} is not field=value"));
        };
        if path.trim().is_empty() {
            return Err(format!("{term:?} has no field"));
        }
        requirements.push(FieldRequirement { path: path.trim().to_string(), value: value.trim().to_string(), equal });
    }
    Ok(requirements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector_terms() {
        assert_eq!(
            parse_label_selector("a=b,c==d,e!=f,g,!h,i in (j,k),l notin (m)").unwrap(),
            [
                LabelRequirement::Equals("a".into(), "b".into()),
                LabelRequirement::Equals("c".into(), "d".into()),
                LabelRequirement::NotEquals("e".into(), "f".into()),
                LabelRequirement::Exists("g".into()),
                LabelRequirement::NotExists("h".into()),
                LabelRequirement::In("i".into(), vec!["j".into(), "k".into()]),
                LabelRequirement::NotIn("l".into(), vec!["m".into()]),
            ]
        );
    }
}
