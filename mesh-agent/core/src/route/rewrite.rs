//! `rewrite`: the path and authority sent upstream.

use super::matching::HttpMatch;
use super::string_match::{Pattern, StringMatcher};
use crate::api::HttpRewrite;
use crate::field::FieldError;
use crate::field::Path;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    pub uri: Option<PathRewrite>,
    pub authority: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathRewrite {
    /// `rewrite.uri`: replaces the part of the path the route matched
    /// (Envoy's `prefix_rewrite`).
    Prefix(String),
    /// `uriRegexRewrite`: every match of `pattern` in the path is replaced
    /// by `substitution` (Envoy's `regex_rewrite`, RE2 `\1` groups).
    Regex {
        pattern: Pattern,
        /// As written (`/\1/x`).
        substitution: String,
        /// The same in the `regex` crate's syntax (`/${1}/x`).
        #[serde(skip)]
        replacement: String,
    },
}

impl Rewrite {
    /// The path (without query) to send upstream, or `None` when the rule
    /// does not rewrite the path. `matched` is the block [`first_match`]
    /// returned: a prefix rewrite replaces the matched prefix; for an exact
    /// or regex match, the whole path; with no URI condition Istio matches
    /// the prefix `/`, so only the leading `/` is replaced (Envoy's
    /// behaviour: rewrite `/v2/` turns `/a` into `/v2/a`).
    ///
    /// [`first_match`]: super::first_match
    pub fn path(&self, path: &str, matched: Option<&HttpMatch>) -> Option<String> {
        match self.uri.as_ref()? {
            PathRewrite::Prefix(replacement) => {
                let matched_len = match matched.and_then(|m| m.uri.as_ref()) {
                    Some(uri) => match &uri.matcher {
                        StringMatcher::Prefix(prefix) => prefix.len(),
                        StringMatcher::Exact(_) | StringMatcher::Regex(_) => path.len(),
                    },
                    None => usize::from(path.starts_with('/')),
                };
                let rest = path.get(matched_len.min(path.len())..).unwrap_or("");
                Some(format!("{replacement}{rest}"))
            }
            PathRewrite::Regex { pattern, replacement, .. } => {
                Some(pattern.regex().replace_all(path, replacement.as_str()).into_owned())
            }
        }
    }

    /// The authority (`Host`) to send upstream instead of the client's.
    pub fn authority(&self) -> Option<&str> {
        self.authority.as_deref()
    }
}

/// RE2's `\N` substitution syntax in the `regex` crate's (`${N}`, `$$`).
fn replacement_syntax(field: &str, substitution: &str, groups: usize) -> Result<String, FieldError> {
    let mut out = String::with_capacity(substitution.len() + 8);
    let mut chars = substitution.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some(digit @ '0'..='9') => {
                    let group = digit as usize - '0' as usize;
                    if group >= groups {
                        return Err(FieldError::new(
                            field,
                            format!("\\{group} names a group the pattern does not have ({} groups)", groups - 1),
                        ));
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                _ => return Err(FieldError::new(field, "a backslash must be followed by a digit or a backslash")),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

pub(crate) fn compile_rewrite(at: &Path, spec: &HttpRewrite) -> Result<Rewrite, FieldError> {
    let uri = spec.uri.as_deref().filter(|u| !u.is_empty());
    let authority = spec.authority.as_deref().filter(|a| !a.is_empty()).map(str::to_owned);
    let uri = match (uri, &spec.uri_regex_rewrite) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(at.field("uriRegexRewrite"), "set only one of uri and uriRegexRewrite"))
        }
        (Some(uri), None) => Some(PathRewrite::Prefix(uri.to_owned())),
        (None, Some(regex)) => {
            let at = at.child("uriRegexRewrite");
            let source = regex.pattern.as_deref().ok_or_else(|| FieldError::new(at.field("match"), "required"))?;
            let substitution =
                regex.rewrite.as_deref().ok_or_else(|| FieldError::new(at.field("rewrite"), "required"))?;
            let pattern = Pattern::search(&at.field("match"), source)?;
            let groups = pattern.regex().captures_len();
            let replacement = replacement_syntax(&at.field("rewrite"), substitution, groups)?;
            Some(PathRewrite::Regex { pattern, substitution: substitution.to_owned(), replacement })
        }
        (None, None) => None,
    };
    if uri.is_none() && authority.is_none() {
        return Err(at.error("must set uri, uriRegexRewrite or authority"));
    }
    Ok(Rewrite { uri, authority })
}

#[cfg(test)]
mod tests {
    use crate::route::first_match;
    use crate::route::test_support::{request, vs, vs_routes};

    /// The path sent upstream for `path` under the single-rule `http`.
    fn rewritten(http: &str, path: &str) -> Option<String> {
        let routes = vs_routes(http);
        let req = request(path);
        let (route, block) = first_match(&routes, &req.view()).expect("a rule matches");
        route.rewrite.as_ref().unwrap().path(path, block)
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix() {
        let http = "
- match: [{uri: {prefix: /reviews/}}, {uri: {prefix: /ratings}}]
  rewrite: {uri: /api/}
  route: [{destination: {host: web}}]
";
        assert_eq!(rewritten(http, "/reviews/1").as_deref(), Some("/api/1"));
        assert_eq!(rewritten(http, "/ratings/2").as_deref(), Some("/api//2"), "the block that matched counts");
        let nocase = "
- match: [{uri: {prefix: /Old}, ignoreUriCase: true}]
  rewrite: {uri: /new}
  route: [{destination: {host: web}}]
";
        assert_eq!(rewritten(nocase, "/OLD/x").as_deref(), Some("/new/x"));
        let no_uri = "
- match: [{headers: {x-v: {exact: '2'}}}]
  rewrite: {uri: /v2/}
  route: [{destination: {host: web}}]
";
        let routes = vs_routes(no_uri);
        let req = request("/a").header("x-v", "2");
        let (route, block) = first_match(&routes, &req.view()).unwrap();
        assert_eq!(route.rewrite.as_ref().unwrap().path("/a", block).as_deref(), Some("/v2/a"), "Envoy's prefix `/`");
        assert_eq!(route.rewrite.as_ref().unwrap().path("/a", None).as_deref(), Some("/v2/a"));
    }

    #[test]
    fn regex_rewrite_substitutes_groups_everywhere() {
        let http = r"
- rewrite: {uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\2/instance/\1'}}
  route: [{destination: {host: web}}]
";
        assert_eq!(rewritten(http, "/service/foo/v1/api").as_deref(), Some("/v1/api/instance/foo"));
        let every = r"
- rewrite: {uriRegexRewrite: {match: 'a', rewrite: '$b\\'}}
  route: [{destination: {host: web}}]
";
        assert_eq!(rewritten(every, "/aXa").as_deref(), Some("/$b\\X$b\\"), "all matches; $ and \\\\ literal");
    }

    #[test]
    fn authority_only_leaves_the_path() {
        let model = vs(
            "  hosts: [web]\n  http:\n  - rewrite: {authority: api.example}\n    route: [{destination: {host: web}}]\n",
        )
        .unwrap();
        let rewrite = model.http[0].rewrite.as_ref().unwrap();
        assert_eq!(rewrite.authority(), Some("api.example"));
        assert_eq!(rewrite.path("/x", None), None);
    }

    #[test]
    fn invalid_rewrites_are_named() {
        let cases = [
            ("{}", "spec.http[0].rewrite"),
            ("{uri: /a, uriRegexRewrite: {match: a, rewrite: b}}", "spec.http[0].rewrite.uriRegexRewrite"),
            ("{uriRegexRewrite: {match: '(', rewrite: b}}", "spec.http[0].rewrite.uriRegexRewrite.match"),
            ("{uriRegexRewrite: {match: '(a)', rewrite: '\\2'}}", "spec.http[0].rewrite.uriRegexRewrite.rewrite"),
            ("{uriRegexRewrite: {match: 'a', rewrite: '\\x'}}", "spec.http[0].rewrite.uriRegexRewrite.rewrite"),
            ("{uriRegexRewrite: {rewrite: b}}", "spec.http[0].rewrite.uriRegexRewrite.match"),
        ];
        for (block, field) in cases {
            let spec =
                format!("  hosts: [web]\n  http:\n  - rewrite: {block}\n    route: [{{destination: {{host: web}}}}]\n");
            assert_eq!(vs(&spec).unwrap_err().field, field, "{block}");
        }
    }
}
