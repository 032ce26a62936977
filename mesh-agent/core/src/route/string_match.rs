//! Istio's `StringMatch` (exact, prefix, regex), compiled once.

use crate::api::StringMatch;
use crate::field::FieldError;
use regex::Regex;
use serde::{Serialize, Serializer};

/// Istio's limit: Envoy's RE2 program size is approximated by the length.
pub const MAX_REGEX_LENGTH: usize = 1024;

/// A compiled RE2-syntax regex, kept with its source for display.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// A pattern that must match the whole value, as Envoy's `safe_regex`
    /// does (`\d+$` matches `123`, not `a123`).
    pub fn whole(field: &str, source: &str) -> Result<Self, FieldError> {
        Self::build(field, source, &format!("^(?:{source})$"))
    }

    /// A pattern that may match anywhere (a rewrite's search pattern).
    pub fn search(field: &str, source: &str) -> Result<Self, FieldError> {
        Self::build(field, source, source)
    }

    fn build(field: &str, source: &str, compiled: &str) -> Result<Self, FieldError> {
        if source.is_empty() {
            return Err(FieldError::new(field, "regex must not be empty"));
        }
        if source.len() > MAX_REGEX_LENGTH {
            return Err(FieldError::new(
                field,
                format!("regex is {} characters long; at most {MAX_REGEX_LENGTH} are allowed", source.len()),
            ));
        }
        let regex = Regex::new(compiled)
            .map_err(|e| FieldError::new(field, format!("{source:?} is not a valid RE2 regex: {e}")))?;
        Ok(Self { source: source.to_owned(), regex })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    pub(crate) fn regex(&self) -> &Regex {
        &self.regex
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(exact) => value == exact,
            StringMatcher::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatcher::Regex(pattern) => pattern.is_match(value),
        }
    }

    /// ASCII case-insensitive for exact and prefix; a regex is unaffected
    /// (Envoy's `case_sensitive: false` on a route, which `ignoreUriCase` sets).
    pub fn matches_ignoring_case(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(exact) => value.eq_ignore_ascii_case(exact),
            StringMatcher::Prefix(prefix) => {
                value.as_bytes().get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
            }
            StringMatcher::Regex(pattern) => pattern.is_match(value),
        }
    }

    /// Compiles a `StringMatch` at `field`; `Ok(None)` for an empty one
    /// (`{}`), whose meaning depends on where it is used. An empty prefix is
    /// allowed only where Envoy allows it (the URI).
    pub(crate) fn compile(
        field: &str,
        spec: &StringMatch,
        allow_empty_prefix: bool,
    ) -> Result<Option<StringMatcher>, FieldError> {
        let set = [spec.exact.is_some(), spec.prefix.is_some(), spec.regex.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(FieldError::new(field, "set only one of exact, prefix and regex"));
        }
        if let Some(exact) = &spec.exact {
            return Ok(Some(StringMatcher::Exact(exact.clone())));
        }
        if let Some(prefix) = &spec.prefix {
            if prefix.is_empty() && !allow_empty_prefix {
                return Err(FieldError::new(format!("{field}.prefix"), "must not be empty"));
            }
            return Ok(Some(StringMatcher::Prefix(prefix.clone())));
        }
        if let Some(regex) = &spec.regex {
            return Ok(Some(StringMatcher::Regex(Pattern::whole(&format!("{field}.regex"), regex)?)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(spec: StringMatch) -> Result<Option<StringMatcher>, FieldError> {
        StringMatcher::compile("m", &spec, false)
    }

    fn regex(source: &str) -> StringMatcher {
        compile(StringMatch { regex: Some(source.into()), ..Default::default() }).unwrap().unwrap()
    }

    #[test]
    fn exact_prefix_and_whole_string_regex() {
        let exact = StringMatcher::Exact("/a".into());
        assert!(exact.matches("/a") && !exact.matches("/a/") && !exact.matches("/A"));
        let prefix = StringMatcher::Prefix("/api".into());
        assert!(prefix.matches("/api") && prefix.matches("/api/v1") && !prefix.matches("/ap"));
        let digits = regex(r"\d+$");
        assert!(digits.matches("123"));
        assert!(!digits.matches("a123"), "anchored at the start too");
        let alternatives = regex("GET|POST");
        assert!(alternatives.matches("POST"));
        assert!(!alternatives.matches("GETX"), "the alternation is grouped before anchoring");
    }

    #[test]
    fn ignoring_case_covers_exact_and_prefix_not_regex() {
        assert!(StringMatcher::Exact("/Login".into()).matches_ignoring_case("/LOGIN"));
        assert!(StringMatcher::Prefix("/API".into()).matches_ignoring_case("/api/x"));
        assert!(!StringMatcher::Prefix("/API".into()).matches_ignoring_case("/ap"));
        assert!(!StringMatcher::Prefix("/é".into()).matches_ignoring_case("/"), "no slicing panic");
        assert!(!regex("/api").matches_ignoring_case("/API"), "a regex keeps its case");
    }

    #[test]
    fn invalid_specs_are_named() {
        let two = compile(StringMatch { exact: Some("a".into()), prefix: Some("b".into()), regex: None });
        assert_eq!(two.unwrap_err().field, "m");
        let empty_prefix = compile(StringMatch { prefix: Some(String::new()), ..Default::default() });
        assert_eq!(empty_prefix.unwrap_err().field, "m.prefix");
        assert!(StringMatcher::compile("m", &StringMatch { prefix: Some(String::new()), ..Default::default() }, true)
            .unwrap()
            .is_some());
        let bad = compile(StringMatch { regex: Some("(".into()), ..Default::default() }).unwrap_err();
        assert_eq!(bad.field, "m.regex");
        assert!(bad.message.contains("not a valid RE2 regex"), "{}", bad.message);
        let long = compile(StringMatch { regex: Some("a".repeat(1025)), ..Default::default() }).unwrap_err();
        assert!(long.message.contains("at most 1024"), "{}", long.message);
        assert!(compile(StringMatch { regex: Some("a".repeat(1024)), ..Default::default() }).is_ok());
        assert_eq!(compile(StringMatch::default()).unwrap(), None, "{{}} is empty");
    }
}
