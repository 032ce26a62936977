//! Names as Istio checks them: DNS-1123 labels, hosts (short names resolved
//! in a namespace, wildcards), gateway references, `exportTo` lists and
//! label maps. Shared by every kind that names hosts or namespaces.
//!
//! Istio's labels accept upper case (`[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?`),
//! so its hosts, subset and namespace names do too. Host names are
//! case-insensitive (DNS, Envoy's domain match, Istio since 1.26 when it
//! selects VirtualServices): they are lowercased when resolved. Subset
//! names are compared as written.

use crate::field::FieldError;
use std::collections::{BTreeMap, BTreeSet};

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 63 at most
/// (what Kubernetes asks of namespace and object names).
pub fn is_dns1123_label(label: &str) -> bool {
    is_istio_label(label) && !label.bytes().any(|b| b.is_ascii_uppercase())
}

/// A label as Istio's `labels.IsDNS1123Label` checks it: letters of
/// either case, digits and `-`, neither first nor last; 63 at most.
pub fn is_istio_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Resolves a host as Istio does: a name without dots is short and lives
/// in the object's namespace; anything else is taken as is (a trailing
/// dot, which only makes the name absolute, is dropped). Lowercased: host
/// names are case-insensitive.
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host == "*" {
        host.strip_suffix('.').map(str::to_owned).unwrap_or(host)
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

/// Whether the last label of `name` (a trailing dot aside) is all digits:
/// such a name is an address, not a host.
pub fn top_label_all_digits(name: &str) -> bool {
    name.trim_end_matches('.').rsplit('.').next().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
}

/// Istio's `ValidateWildcardDomain`: 255 characters at most; labels of
/// letters, digits and `-`, the first of which may be `*`, `*x` or `*-x`;
/// a trailing dot is allowed; after the first label, the top-level label
/// is not all digits (`10.0.0.1` is an address, not a host).
pub fn validate_host_name(field: &str, host: &str) -> Result<(), FieldError> {
    let invalid = |why: String| Err(FieldError::new(field, format!("{host:?} is not a valid host name: {why}")));
    if host.is_empty() {
        return invalid("empty".into());
    }
    if host.len() > 255 {
        return invalid("longer than 255 characters".into());
    }
    let (first, rest) = host.split_once('.').map_or((host, None), |(first, rest)| (first, Some(rest)));
    let first_ok = match first.strip_prefix('*') {
        Some("") => true,
        Some(tail) => first.len() <= 63 && is_istio_label(tail.strip_prefix('-').unwrap_or(tail)),
        None => is_istio_label(first),
    };
    if !first_ok {
        return invalid(format!("label {first:?} is invalid (letters, digits and -, a leading * allowed)"));
    }
    if let Some(rest) = rest {
        validate_labels_of(rest)
            .map_err(|why| FieldError::new(field, format!("{host:?} is not a valid host name: {why}")))?;
    }
    Ok(())
}

/// Istio's `ValidateFQDN`: every label valid (no wildcard), a trailing dot
/// allowed, the top-level label not all digits.
pub fn validate_fqdn(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.len() > 255 {
        return Err(FieldError::new(field, format!("{name:?} is not a valid domain name (1 to 255 characters)")));
    }
    validate_labels_of(name)
        .map_err(|why| FieldError::new(field, format!("{name:?} is not a valid domain name: {why}")))
}

/// Istio's `ValidateDNS1123Labels`: dot-separated labels, the last of
/// which may be empty (a trailing dot); the top-level one not all digits.
fn validate_labels_of(domain: &str) -> Result<(), String> {
    let labels: Vec<&str> = domain.split('.').collect();
    let top = labels[labels.len() - 1];
    if !top.is_empty() && top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("its top-level label {top:?} is all digits"));
    }
    for (i, label) in labels.iter().enumerate() {
        if i == labels.len() - 1 && label.is_empty() {
            break;
        }
        if !is_istio_label(label) {
            return Err(format!("label {label:?} is invalid (letters, digits and -)"));
        }
    }
    Ok(())
}

/// The gateway name that stands for the sidecars of the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// Whether a VirtualService or match block bound to `gateways` applies to
/// the mesh: bound to none, or to `mesh` among others.
pub fn applies_to_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

/// A gateway name as a VirtualService in `namespace` means it, as Istio's
/// `resolveGatewayName` reads it: `namespace/name` (`./name` in its own
/// namespace), a short name in the VirtualService's namespace, the legacy
/// `name.namespace[.svc.cluster.local]` as `namespace/name`; `mesh` as is.
pub fn resolve_gateway(gateway: &str, namespace: &str) -> String {
    if gateway == MESH_GATEWAY {
        return gateway.to_owned();
    }
    match gateway.split_once('/') {
        Some((".", name)) => format!("{namespace}/{name}"),
        Some(_) => gateway.to_owned(),
        None => match gateway.split_once('.') {
            None => format!("{namespace}/{gateway}"),
            Some((name, rest)) => {
                let gateway_namespace = rest.split('.').next().unwrap_or(rest);
                format!("{gateway_namespace}/{name}")
            }
        },
    }
}

/// Istio's `host.Name.SubsetOf`: every name `inner` (perhaps a wildcard)
/// covers, `outer` covers too. Both lowercase.
pub fn host_subset_of(inner: &str, outer: &str) -> bool {
    match (inner.strip_prefix('*'), outer.strip_prefix('*')) {
        (Some(inner), Some(outer)) => inner.ends_with(outer),
        (Some(_), None) => false,
        (None, Some(outer)) => inner.ends_with(outer),
        (None, None) => inner == outer,
    }
}

/// How closely `pattern` (a lowercase host, perhaps a wildcard) covers
/// `name` (any case, a trailing dot ignored): exact beats any wildcard, a
/// longer wildcard a shorter one, `*` last; None when it does not.
pub fn host_specificity(pattern: &str, name: &str) -> Option<usize> {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix('*') {
        Some(suffix) => (name.len() > suffix.len()
            && name.get(name.len() - suffix.len()..).is_some_and(|tail| tail.eq_ignore_ascii_case(suffix)))
        .then_some(suffix.len()),
        None => name.eq_ignore_ascii_case(pattern).then_some(usize::MAX),
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Gateway names as Istio's `validateGatewayNames` checks them:
/// `namespace/name` (two labels), or a name checked as an FQDN (`mesh`,
/// `name`, the legacy `name.namespace`).
pub fn validate_gateways(field: &str, gateways: &[String]) -> Result<(), FieldError> {
    for (i, gateway) in gateways.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match gateway.split_once('/') {
            Some((namespace, name)) => {
                if !is_istio_label(namespace) || !is_istio_label(name) {
                    return Err(FieldError::new(
                        field,
                        format!("{gateway:?} is not a gateway name (mesh, name or namespace/name)"),
                    ));
                }
            }
            None => validate_fqdn(&field, gateway)?,
        }
    }
    Ok(())
}

/// Whether `exportTo` may name `~` (visible to no one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportToNone {
    /// ServiceEntries only.
    Allowed,
    /// VirtualServices and DestinationRules: Istio refuses `~` for them.
    Refused,
}

/// `spec.exportTo` of an object in `namespace`, as Istio's
/// `validateExportTo` checks it: `*`, `.` or namespace names, each once
/// (`.` and the object's own namespace are the same entry); `*` (and `~`
/// where allowed) alone.
pub fn validate_export_to(export_to: &[String], namespace: &str, none: ExportToNone) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    let alone = |to: &str| to == "*" || (none == ExportToNone::Allowed && to == "~");
    for (i, to) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if to == "~" && none == ExportToNone::Refused {
            return Err(FieldError::new(field, "`~` (visible to no one) is only for ServiceEntries"));
        }
        if !(alone(to) || to == "." || is_istio_label(to)) {
            let expected = match none {
                ExportToNone::Allowed => "`*`, `.`, `~` or a namespace name",
                ExportToNone::Refused => "`*`, `.` or a namespace name",
            };
            return Err(FieldError::new(field, format!("{to:?} is not {expected}")));
        }
        let key = if to == "." { namespace } else { to.as_str() };
        if !seen.insert(key) {
            let why = if key != to {
                format!("`.` and {namespace:?} are the same namespace")
            } else {
                format!("{to:?} is listed twice")
            };
            return Err(FieldError::new(field, why));
        }
        if alone(to) && export_to.len() > 1 {
            return Err(FieldError::new(field, format!("`{to}` cannot be combined with other entries")));
        }
    }
    Ok(())
}

/// A set of labels shared by the objects that carry it (a pod's, by each
/// backend it stands behind).
pub type Labels = std::sync::Arc<BTreeMap<String, String>>;

/// Whether `labels` carry every key of `selector` with its value (an
/// empty selector: any labels), as a `matchLabels` selector picks.
pub fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// A label map (subset labels, `sourceLabels`) as Istio's
/// `labels.Instance.Validate` checks it: keys are Kubernetes label names
/// (an optional DNS prefix and `/`, then a name of letters, digits, `-`,
/// `_` and `.` starting and ending alphanumeric, 63 at most); values are
/// empty or such a name.
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (key, value) in labels {
        let at = format!("{field}[{key}]");
        let (prefix, name) = key.rsplit_once('/').map_or((None, key.as_str()), |(p, n)| (Some(p), n));
        let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_istio_label));
        if !prefix_ok || !is_qualified_name(name) || name.len() > 63 || key.matches('/').count() > 1 {
            return Err(FieldError::new(at, format!("{key:?} is not a valid label key")));
        }
        if !value.is_empty() && !is_qualified_name(value) {
            return Err(FieldError::new(at, format!("{value:?} is not a valid label value")));
        }
    }
    Ok(())
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}
