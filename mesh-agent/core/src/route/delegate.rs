//! `http[].delegate`: a rule of a root VirtualService that stands for the
//! rules of another VirtualService, one without hosts, as Istio merges
//! them (pilot's `mergeVirtualServicesIfNeeded`, `mergeHTTPRoute`,
//! `mergeHTTPMatchRequests`):
//!
//! - each of the delegate's rules becomes one rule in the root's place,
//!   its match blocks narrowed by the root rule's: every delegate block is
//!   merged with each root block it fits within (a prefix within the root's
//!   prefix, an exact path under it, header and query conditions added);
//!   a delegate rule with a block that fits within none is left out;
//! - what a delegate rule leaves unset (rewrite, timeout, retries, fault,
//!   mirrors, CORS, headers, a direct response) it takes from the root rule;
//! - one level only: a delegate cannot delegate again (it is rejected),
//!   and one with hosts, a missing one or one not exported to the root's
//!   namespace stands for nothing, reported on the root.
//!
//! Where Istio differs: short names in the delegate's destinations resolve
//! in the delegate's namespace and the root's in the root's (Istio resolved
//! each VirtualService in its own namespace before merging for years);
//! a `mirror` and `mirrors` meeting in one merged rule are both kept (as
//! Istio's translation does), the single one joining the list.

use super::rule::HttpRoute;
use super::validate::{compile_merged_rule, VirtualServiceModel};
use crate::api::{self, HttpMatchRequest, HttpMirrorPolicy, Percent, StringMatch};
use crate::field::Path;
use crate::host::resolve_host;
use std::collections::BTreeMap;

/// A delegate as the model has it.
pub(crate) enum Target<'a> {
    /// Served: its model and its spec as accepted.
    Served(&'a VirtualServiceModel, &'a api::VirtualServiceSpec),
    /// Rejected, and no earlier version serves.
    Rejected,
    Missing,
}

/// What delegation makes of one root VirtualService.
#[derive(Debug, Default)]
pub(crate) struct Expansion {
    /// The root's own rules with the merged rules in the delegating rules' places.
    pub http: Vec<HttpRoute>,
    /// (field of the root, what happens instead), for warnings on the root.
    pub problems: Vec<(String, String)>,
    /// `(namespace, name)` of the delegates whose rules were merged.
    pub used: Vec<(String, String)>,
}

/// The rules of `root` (whose accepted spec is `spec`) with its delegations
/// expanded; `target` looks a delegate up by namespace and name.
pub(crate) fn expand<'a>(
    root: &VirtualServiceModel,
    spec: &api::VirtualServiceSpec,
    target: impl Fn(&str, &str) -> Target<'a>,
    cluster_domain: &str,
) -> Expansion {
    let mut out = Expansion::default();
    let mut delegations = root.delegations.iter().peekable();
    for position in 0..=root.http.len() {
        while let Some(delegation) = delegations.next_if(|d| d.position == position) {
            let (field, id) = (
                format!("spec.http[{}].delegate", delegation.rule),
                format!("{}/{}", delegation.namespace, delegation.name),
            );
            let (child, child_spec) = match target(&delegation.namespace, &delegation.name) {
                Target::Served(child, child_spec) => (child, child_spec),
                Target::Rejected => {
                    out.problems.push((
                        field,
                        format!("VirtualService {id} is rejected (see its error): this rule routes nothing"),
                    ));
                    continue;
                }
                Target::Missing => {
                    out.problems.push((field, format!("no VirtualService {id} exists: this rule routes nothing")));
                    continue;
                }
            };
            if !child.hosts.is_empty() {
                let message = format!(
                    "VirtualService {id} has hosts; only a VirtualService without hosts can be a delegate: this \
                     rule routes nothing"
                );
                out.problems.push((field, message));
                continue;
            }
            if !super::table::exported_to(&child.export_to, &child.namespace, Some(&root.namespace)) {
                let message = format!(
                    "VirtualService {id} is not exported to namespace {} (its exportTo): this rule routes nothing",
                    root.namespace
                );
                out.problems.push((field, message));
                continue;
            }
            out.used.push((child.namespace.clone(), child.name.clone()));
            let mut root_rule = spec.http[delegation.rule].clone();
            // The root's own destinations keep meaning what they mean in its namespace.
            let mirrors = root_rule.mirrors.iter_mut().filter_map(|m| m.destination.as_mut());
            for destination in root_rule.mirror.as_deref_mut().into_iter().chain(mirrors) {
                destination.host = resolve_host(&destination.host, &root.namespace, cluster_domain);
            }
            for (k, child_rule) in child_spec.http.iter().enumerate() {
                let Some(merged) = merge_rule(&root_rule, child_rule) else {
                    let message = format!(
                        "rule {k} of VirtualService {id} is left out: one of its match blocks fits within none of \
                         this rule's (a delegate's uri, scheme, method, authority, headers and query parameters \
                         must narrow the root's)"
                    );
                    out.problems.push((field.clone(), message));
                    continue;
                };
                let at = Path::new(format!("spec.http[{k}]"));
                match compile_merged_rule(&at, &merged, &child.namespace, cluster_domain) {
                    Ok(rule) => out.http.push(rule),
                    Err(error) => {
                        let message = format!(
                            "rule {k} of VirtualService {id} is left out: merged with this rule, {}: {}",
                            error.field, error.message
                        );
                        out.problems.push((field.clone(), message));
                    }
                }
            }
        }
        if let Some(own) = root.http.get(position) {
            out.http.push(own.clone());
        }
    }
    out
}

/// Istio's `mergeHTTPRoute`: the delegate's rule with the root rule's
/// matches merged in and what it leaves unset taken from the root rule;
/// None when a delegate block fits within no root block.
pub(crate) fn merge_rule(root: &api::HttpRoute, child: &api::HttpRoute) -> Option<api::HttpRoute> {
    let mut out = child.clone();
    out.matches = merge_match_blocks(&root.matches, &child.matches)?;
    out.name = joined_name(&root.name, &child.name);
    out.delegate = None;
    fill(&mut out.rewrite, &root.rewrite);
    fill(&mut out.timeout, &root.timeout);
    fill(&mut out.retries, &root.retries);
    fill(&mut out.fault, &root.fault);
    fill(&mut out.mirror, &root.mirror);
    fill(&mut out.mirror_percentage, &root.mirror_percentage);
    fill(&mut out.mirror_percent, &root.mirror_percent);
    if out.mirrors.is_empty() {
        out.mirrors = root.mirrors.clone();
    }
    fill(&mut out.cors_policy, &root.cors_policy);
    fill(&mut out.headers, &root.headers);
    if out.redirect.is_none() && out.direct_response.is_none() && root.direct_response.is_some() {
        // Envoy answers a route with a direct response without forwarding.
        out.direct_response = root.direct_response.clone();
        out.route.clear();
    }
    if out.redirect.is_some() || out.direct_response.is_some() {
        // What only a forwarded request uses, inherited, has nothing to act on.
        if child.rewrite.is_none() {
            out.rewrite = None;
        }
        if child.fault.is_none() {
            out.fault = None;
        }
    }
    if out.mirror.is_some() && !out.mirrors.is_empty() {
        let destination = out.mirror.take().map(|d| *d);
        let percentage =
            out.mirror_percentage.take().or(out.mirror_percent.take().map(|p| Percent { value: p as f64 }));
        out.mirror_percent = None;
        out.mirrors.insert(0, HttpMirrorPolicy { destination, percentage });
    }
    Some(out)
}

/// Istio's `mergeHTTPMatchRequests`: every delegate block merged with each
/// root block it does not conflict with; None when one fits within none.
/// No blocks on either side: the other side's.
pub(crate) fn merge_match_blocks(
    root: &[HttpMatchRequest],
    child: &[HttpMatchRequest],
) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(child.to_vec());
    }
    if child.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in child {
        let before = out.len();
        out.extend(root.iter().filter(|r| !blocks_conflict(r, leaf)).map(|r| merge_block(r, leaf)));
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

/// Istio's `mergeHTTPMatchRequest`: the delegate's block, with the root's
/// conditions it does not set; header and query conditions of both.
fn merge_block(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined_name(&root.name, &leaf.name);
    fill(&mut out.uri, &root.uri);
    fill(&mut out.scheme, &root.scheme);
    fill(&mut out.method, &root.method);
    fill(&mut out.authority, &root.authority);
    out.headers = union(&root.headers, &leaf.headers);
    out.without_headers = union(&root.without_headers, &leaf.without_headers);
    out.query_params = union(&root.query_params, &leaf.query_params);
    if out.port.is_none_or(|p| p == 0) {
        out.port = root.port;
    }
    out.source_labels = union(&root.source_labels, &leaf.source_labels);
    if out.source_namespace.as_deref().is_none_or(str::is_empty) {
        out.source_namespace = root.source_namespace.clone();
    }
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

/// Istio's `hasConflict`: whether the delegate's block cannot narrow the
/// root's.
fn blocks_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let strings = [(&root.uri, &leaf.uri), (&root.scheme, &leaf.scheme), (&root.method, &leaf.method)];
    let maps_conflict = |root: &BTreeMap<String, Option<StringMatch>>, leaf: &BTreeMap<String, Option<StringMatch>>| {
        leaf.iter().any(|(key, value)| string_match_conflict(root.get(key).and_then(Option::as_ref), value.as_ref()))
    };
    strings
        .into_iter()
        .chain([(&root.authority, &leaf.authority)])
        .any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref()))
        || maps_conflict(&root.headers, &leaf.headers)
        || maps_conflict(&root.without_headers, &leaf.without_headers)
        || maps_conflict(&root.query_params, &leaf.query_params)
        || root.ignore_uri_case.unwrap_or(false) != leaf.ignore_uri_case.unwrap_or(false)
        || matches!((root.port, leaf.port), (Some(r), Some(l)) if r > 0 && l > 0 && r != l)
        || root
            .source_namespace
            .as_deref()
            .is_some_and(|ns| !ns.is_empty() && leaf.source_namespace.as_deref() != Some(ns))
        || leaf.source_labels.iter().any(|(key, value)| root.source_labels.get(key).is_some_and(|r| r != value))
        || (!root.gateways.is_empty()
            && !leaf.gateways.is_empty()
            && !leaf.gateways.iter().all(|g| root.gateways.contains(g)))
}

/// Istio's `stringMatchConflict`: a condition on one side only narrows
/// nothing; otherwise the delegate's exact value or prefix must lie within
/// the root's (an exact root takes only the same exact value). A regex
/// merges with nothing, and an empty match conflicts.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    // proto3: an empty string is unset.
    let get = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
    let (root_exact, root_prefix, root_regex) = (get(&root.exact), get(&root.prefix), get(&root.regex));
    let (leaf_exact, leaf_prefix, leaf_regex) = (get(&leaf.exact), get(&leaf.prefix), get(&leaf.regex));
    if root_regex.is_some() && (leaf_regex.is_some() || leaf_prefix.is_some() || leaf_exact.is_some()) {
        return true;
    }
    if leaf_regex.is_some() && (root_prefix.is_some() || root_exact.is_some()) {
        return true;
    }
    if let Some(exact) = root_exact {
        return leaf_prefix.is_some() || leaf_exact.as_ref() != Some(&exact);
    }
    if let Some(prefix) = root_prefix {
        if let Some(leaf_prefix) = leaf_prefix {
            return !leaf_prefix.starts_with(&prefix);
        }
        if let Some(leaf_exact) = leaf_exact {
            return !leaf_exact.starts_with(&prefix);
        }
    }
    true
}

/// `root-child` when both are named, else whichever is.
fn joined_name(root: &Option<String>, child: &Option<String>) -> Option<String> {
    let named = |name: &Option<String>| name.clone().filter(|n| !n.is_empty());
    match (named(root), named(child)) {
        (Some(root), Some(child)) => Some(format!("{root}-{child}")),
        (root, child) => child.or(root),
    }
}

fn fill<T: Clone>(value: &mut Option<T>, from: &Option<T>) {
    if value.is_none() {
        value.clone_from(from);
    }
}

/// Both maps; the delegate's entry wins a key in both.
fn union<V: Clone>(root: &BTreeMap<String, V>, leaf: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    root.iter().chain(leaf).map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Match blocks from a YAML flow list.
    fn blocks(yaml: &str) -> Vec<HttpMatchRequest> {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn merged(root: &str, child: &str) -> Option<Vec<HttpMatchRequest>> {
        merge_match_blocks(&blocks(root), &blocks(child))
    }

    fn uri(exact: Option<&str>, prefix: Option<&str>) -> Option<StringMatch> {
        Some(StringMatch { exact: exact.map(Into::into), prefix: prefix.map(Into::into), regex: None })
    }

    #[test]
    fn a_delegate_prefix_must_lie_within_the_root_prefix() {
        let out = merged("[{uri: {prefix: /productpage}}]", "[{uri: {prefix: /productpage/v1}}]").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].uri, uri(None, Some("/productpage/v1")));
        assert_eq!(
            merged("[{uri: {prefix: /productpage}}]", "[{uri: {prefix: /product}}]"),
            None,
            "wider than the root"
        );
        assert_eq!(merged("[{uri: {prefix: /a}}]", "[{uri: {prefix: /b}}]"), None);
    }

    #[test]
    fn an_exact_path_within_a_prefix_merges_and_an_exact_root_takes_only_itself() {
        let out = merged("[{uri: {prefix: /api}}]", "[{uri: {exact: /api/users}}]").unwrap();
        assert_eq!(out[0].uri, uri(Some("/api/users"), None));
        assert_eq!(merged("[{uri: {prefix: /api}}]", "[{uri: {exact: /web}}]"), None);
        assert!(merged("[{uri: {exact: /login}}]", "[{uri: {exact: /login}}]").is_some());
        assert_eq!(merged("[{uri: {exact: /login}}]", "[{uri: {prefix: /login}}]"), None);
        assert_eq!(merged("[{uri: {exact: /login}}]", "[{uri: {exact: /logout}}]"), None);
        // A regex merges with no condition of the same kind.
        assert_eq!(merged("[{uri: {regex: /a.*}}]", "[{uri: {prefix: /a}}]"), None);
        assert_eq!(merged("[{uri: {prefix: /a}}]", "[{uri: {regex: /a.*}}]"), None);
    }

    #[test]
    fn a_condition_on_one_side_is_kept_and_headers_and_query_params_are_combined() {
        let out = merged(
            "[{name: root, uri: {prefix: /reviews}, method: {exact: GET}, headers: {x-team: {exact: a}}, queryParams: {v: {exact: '1'}}}]",
            "[{name: leaf, headers: {x-user: {prefix: j}}, withoutHeaders: {x-debug: {}}}]",
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        let block = &out[0];
        assert_eq!(block.name.as_deref(), Some("root-leaf"));
        assert_eq!(block.uri, uri(None, Some("/reviews")), "the root's uri when the delegate has none");
        assert_eq!(block.method, Some(StringMatch { exact: Some("GET".into()), ..Default::default() }));
        let headers: Vec<&str> = block.headers.keys().map(String::as_str).collect();
        assert_eq!(headers, ["x-team", "x-user"]);
        assert!(block.without_headers.contains_key("x-debug"));
        assert!(block.query_params.contains_key("v"));
        // The same header on both sides: the delegate's must narrow the root's.
        assert!(merged("[{headers: {x-team: {prefix: a}}}]", "[{headers: {x-team: {exact: ab}}}]").is_some());
        assert_eq!(merged("[{headers: {x-team: {exact: a}}}]", "[{headers: {x-team: {exact: b}}}]"), None);
        assert_eq!(merged("[{queryParams: {v: {exact: '1'}}}]", "[{queryParams: {v: {exact: '2'}}}]"), None);
        assert_eq!(merged("[{port: 80}]", "[{port: 8080}]"), None);
        assert_eq!(merged("[{ignoreUriCase: true, uri: {prefix: /a}}]", "[{uri: {prefix: /a/b}}]"), None);
    }

    #[test]
    fn each_delegate_block_merges_with_every_root_block_it_fits_and_one_that_fits_none_drops_the_rule() {
        let root = "[{uri: {prefix: /a}}, {uri: {prefix: /a/b}}, {uri: {prefix: /c}}]";
        let out = merged(root, "[{uri: {prefix: /a/b/c}}, {uri: {exact: /c/d}}]").unwrap();
        let uris: Vec<Option<StringMatch>> = out.into_iter().map(|b| b.uri).collect();
        assert_eq!(
            uris,
            [uri(None, Some("/a/b/c")), uri(None, Some("/a/b/c")), uri(Some("/c/d"), None)],
            "a conflicting pair is skipped; the others merge"
        );
        assert_eq!(merged(root, "[{uri: {prefix: /a/x}}, {uri: {prefix: /z}}]"), None, "/z fits nowhere");
        // No blocks on one side: the other side's blocks.
        assert_eq!(merged("[]", "[{uri: {prefix: /z}}]").unwrap()[0].uri, uri(None, Some("/z")));
        assert_eq!(merged("[{uri: {prefix: /z}}]", "[]").unwrap()[0].uri, uri(None, Some("/z")));
    }

    fn rule(yaml: &str) -> api::HttpRoute {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn a_delegate_rule_takes_what_it_leaves_unset_from_the_root_rule() {
        let root = rule(
            "{name: pp, match: [{uri: {prefix: /p}}], delegate: {name: d}, timeout: 5s, retries: {attempts: 1}, \
             headers: {request: {set: {x-root: '1'}}}, mirror: {host: shadow}, rewrite: {uri: /}}",
        );
        let child =
            rule("{name: v1, route: [{destination: {host: web}}], timeout: 1s, mirrors: [{destination: {host: m2}}]}");
        let out = merge_rule(&root, &child).unwrap();
        assert_eq!(out.name.as_deref(), Some("pp-v1"));
        assert_eq!(out.timeout.as_deref(), Some("1s"), "the delegate's own");
        assert_eq!(out.retries, root.retries, "inherited");
        assert_eq!(out.headers, root.headers);
        assert_eq!(out.rewrite, root.rewrite);
        assert_eq!(out.delegate, None);
        let mirrors: Vec<&str> = out.mirrors.iter().map(|m| m.destination.as_ref().unwrap().host.as_str()).collect();
        assert_eq!(mirrors, ["shadow", "m2"], "both kept, in one list");
        assert_eq!(out.mirror, None);
        // A redirect takes nothing only forwarding uses.
        let out = merge_rule(&root, &rule("{redirect: {uri: /new}}")).unwrap();
        assert_eq!(out.rewrite, None);
        // A direct response on the root answers where the delegate forwards.
        let answering = rule("{delegate: {name: d}, directResponse: {status: 503}}");
        let out = merge_rule(&answering, &child).unwrap();
        assert!(out.route.is_empty() && out.direct_response.is_some());
    }
}
