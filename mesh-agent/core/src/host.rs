//! Names as Istio checks them: DNS-1123 labels, hosts (short names resolved
//! in a namespace, wildcards), gateway references and `exportTo` lists.
//! Shared by every kind that names hosts or namespaces.

use crate::field::FieldError;
use std::collections::BTreeSet;

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, 63 at most.
pub fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Resolves a host as Istio does: a name without dots is short and lives
/// in the object's namespace; anything else is taken as is (a trailing
/// dot, which only makes the name absolute, is dropped).
pub fn resolve_host(host: &str, namespace: &str, cluster_domain: &str) -> String {
    if host.contains('.') || host == "*" {
        host.strip_suffix('.').unwrap_or(host).to_owned()
    } else {
        format!("{host}.{namespace}.svc.{cluster_domain}")
    }
}

/// Istio's check of a DestinationRule host: lowercase DNS-1123 labels, the
/// first of which may be `*`; a trailing dot is allowed; the top-level
/// label is not all digits (an IP address is not a host).
pub fn validate_rule_host(field: &str, host: &str) -> Result<(), FieldError> {
    let wrong = |why: &str| {
        Err(FieldError::new(
            field,
            format!("{host:?} is not a lowercase DNS-1123 name{why} (a leading `*.` wildcard or `*` alone is allowed)"),
        ))
    };
    if host == "*" {
        return Ok(());
    }
    if host.len() > 255 {
        return wrong(": longer than 255 characters");
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let name = name.strip_prefix("*.").unwrap_or(name);
    if let Some(label) = name.split('.').find(|l| !is_dns1123_label(l)) {
        let why = if label.bytes().any(|b| b.is_ascii_uppercase()) {
            format!(": {label:?} has upper case")
        } else {
            format!(": label {label:?} is invalid")
        };
        return wrong(&why);
    }
    if top_label_all_digits(name) {
        return wrong(": its top-level label is all digits");
    }
    Ok(())
}

/// Whether the last label of `name` (a trailing dot aside) is all digits:
/// such a name is an address, not a host.
pub fn top_label_all_digits(name: &str) -> bool {
    name.trim_end_matches('.').rsplit('.').next().is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
}

/// Istio's wildcard domain check: DNS-1123 labels in lowercase, the first
/// of which may be `*`, `*x` or `*-x`; a trailing dot is allowed.
pub fn validate_host_name(field: &str, host: &str) -> Result<(), FieldError> {
    let invalid = |why: String| Err(FieldError::new(field, format!("{host:?} is not a valid host name: {why}")));
    if host.len() > 255 {
        return invalid("longer than 255 characters".into());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let (first, rest) = name.split_once('.').map_or((name, None), |(first, rest)| (first, Some(rest)));
    let first_ok = match first.strip_prefix('*') {
        Some("") => true,
        Some(tail) => first.len() <= 63 && is_dns1123_label(tail.strip_prefix('-').unwrap_or(tail)),
        None => is_dns1123_label(first),
    };
    if !first_ok {
        return invalid(format!("label {first:?} is invalid (lowercase letters, digits and -)"));
    }
    if let Some(label) = rest.into_iter().flat_map(|r| r.split('.')).find(|l| !is_dns1123_label(l)) {
        return invalid(format!("label {label:?} is invalid (lowercase letters, digits and -)"));
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

/// Gateway names: `mesh`, `name`, `namespace/name` or a legacy FQDN.
pub fn validate_gateways(field: &str, gateways: &[String]) -> Result<(), FieldError> {
    for (i, gateway) in gateways.iter().enumerate() {
        let valid = match gateway.split_once('/') {
            Some((namespace, name)) => is_dns1123_label(namespace) && is_dns1123_label(name),
            None => !gateway.is_empty() && gateway.split('.').all(is_dns1123_label),
        };
        if !valid {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{gateway:?} is not a gateway name (mesh, name or namespace/name)"),
            ));
        }
    }
    Ok(())
}

/// Whether `exportTo` may name `~` (visible to no one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportToNone {
    Allowed,
    Refused,
}

/// `spec.exportTo`: `*`, `.` or namespace names, each once; `*` (and `~`
/// where allowed) alone.
pub fn validate_export_to(export_to: &[String], none: ExportToNone) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    let alone = |to: &str| to == "*" || (none == ExportToNone::Allowed && to == "~");
    for (i, to) in export_to.iter().enumerate() {
        let field = format!("spec.exportTo[{i}]");
        if !(alone(to) || to == "." || is_dns1123_label(to)) {
            let expected = match none {
                ExportToNone::Allowed => "`*`, `.`, `~` or a namespace name",
                ExportToNone::Refused => "`*`, `.` or a namespace name",
            };
            return Err(FieldError::new(field, format!("{to:?} is not {expected}")));
        }
        if !seen.insert(to.as_str()) {
            return Err(FieldError::new(field, format!("{to:?} is listed twice")));
        }
        if alone(to) && export_to.len() > 1 {
            return Err(FieldError::new(field, format!("`{to}` cannot be combined with other entries")));
        }
    }
    Ok(())
}
