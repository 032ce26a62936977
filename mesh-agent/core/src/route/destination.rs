//! Where a forwarded request goes: weighted destinations and mirrors.

use super::headers::HeaderRules;
use crate::api::Destination;
use crate::field::Path;
use crate::field::{parse_port, FieldError};
use crate::host::{is_istio_label, resolve_host};
use serde::Serialize;

/// One upstream of a rule: a host (a service FQDN), optionally a subset of
/// it (pods by DestinationRule labels) and a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Fully qualified: short names are resolved in the VirtualService's
    /// namespace, as Istio does.
    pub host: String,
    pub subset: Option<String>,
    /// `None`: the port the client used, when the service has it.
    pub port: Option<u16>,
    /// Relative to the other destinations of the rule.
    pub weight: u32,
    /// Applied before the rule's own header operations.
    pub headers: HeaderRules,
}

/// Picks a destination by relative weight from `random` (any `u64`, e.g.
/// from a fast PRNG): a single destination takes every request whatever
/// its weight; otherwise a destination of weight 0 gets none. `None` only
/// when there is nothing to pick (no destination, or every weight 0).
pub fn pick_destination(destinations: &[RouteDestination], random: u64) -> Option<&RouteDestination> {
    if let [only] = destinations {
        return Some(only);
    }
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for destination in destinations {
        let weight = u64::from(destination.weight);
        if point < weight {
            return Some(destination);
        }
        point -= weight;
    }
    None // unreachable: point < total
}

/// A copy of each request sent to another destination, fire-and-forget.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPolicy {
    /// Its `weight` and `headers` are unused.
    pub destination: RouteDestination,
    /// Share of requests mirrored, 0 to 100 (100 when unset, as in Istio).
    pub percentage: f64,
}

impl MirrorPolicy {
    /// Whether to mirror this request, from a uniform `random` in [0, 1).
    pub fn should_mirror(&self, random: f64) -> bool {
        random * 100.0 < self.percentage
    }
}

/// The authority of a mirrored request: `-shadow` appended to the host,
/// before any port (`reviews:9080` becomes `reviews-shadow:9080`), so the
/// shadow can tell mirrored traffic apart, as Envoy does.
pub fn shadow_authority(authority: &str) -> String {
    let port_start = match authority.rfind(':') {
        // A bracketed IPv6 literal: a port can only follow the `]`.
        Some(colon) if authority.starts_with('[') => authority.rfind("]:").map(|_| colon),
        // A colon in a bare IPv6 literal is not a port separator.
        Some(colon) if authority[..colon].contains(':') => None,
        other => other,
    };
    match port_start {
        Some(colon) => format!("{}-shadow{}", &authority[..colon], &authority[colon..]),
        None => format!("{authority}-shadow"),
    }
}

/// Istio's destination checks; the host comes back fully qualified.
pub(crate) fn compile_destination(
    at: &Path,
    spec: &Destination,
    namespace: &str,
    cluster_domain: &str,
) -> Result<RouteDestination, FieldError> {
    let host = spec.host.trim();
    if host.is_empty() {
        return Err(FieldError::new(at.field("host"), "required"));
    }
    if host == "*" {
        return Err(FieldError::new(at.field("host"), "`*` is not a destination; name a service"));
    }
    crate::host::validate_host_name(&at.field("host"), host)?;
    // An empty subset is proto3's "unset".
    let subset = spec.subset.clone().filter(|s| !s.is_empty());
    if let Some(subset) = &subset {
        // Istio's labels take upper case; subset names are compared as written.
        if !is_istio_label(subset) {
            return Err(FieldError::new(at.field("subset"), format!("{subset:?} is not a valid subset name")));
        }
    }
    let port = spec.port.as_ref().map(|p| parse_port(&at.field("port.number"), p.number)).transpose()?;
    Ok(RouteDestination {
        host: resolve_host(host, namespace, cluster_domain),
        subset,
        port,
        weight: 0,
        headers: HeaderRules::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(host: &str, weight: u32) -> RouteDestination {
        RouteDestination { host: host.into(), subset: None, port: None, weight, headers: HeaderRules::default() }
    }

    /// A small deterministic generator (SplitMix64) for the draws.
    fn draws(count: usize) -> impl Iterator<Item = u64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..count).map(move |_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    #[test]
    fn ninety_ten_over_ten_thousand_draws_is_within_one_and_a_half_percent() {
        let destinations = [destination("v1", 90), destination("v2", 10)];
        let draws = 10_000;
        let v2 = draws_of(&destinations, draws, "v2");
        let share = v2 as f64 / draws as f64;
        assert!((share - 0.10).abs() <= 0.015, "v2 got {share}");
        // Weights are relative: 9 and 1 split the same way.
        let relative = [destination("v1", 9), destination("v2", 1)];
        let share = draws_of(&relative, draws, "v2") as f64 / draws as f64;
        assert!((share - 0.10).abs() <= 0.015, "v2 got {share}");
    }

    fn draws_of(destinations: &[RouteDestination], count: usize, host: &str) -> usize {
        draws(count).filter(|r| pick_destination(destinations, *r).unwrap().host == host).count()
    }

    #[test]
    fn every_random_value_lands_on_the_cumulative_weight() {
        let destinations = [destination("a", 1), destination("b", 0), destination("c", 2)];
        let picked: Vec<&str> = (0..6).map(|r| pick_destination(&destinations, r).unwrap().host.as_str()).collect();
        assert_eq!(picked, ["a", "c", "c", "a", "c", "c"], "weight 0 gets nothing");
        assert_eq!(pick_destination(&destinations, u64::MAX).map(|d| d.host.as_str()), Some("a"));
    }

    #[test]
    fn a_single_destination_takes_all_and_nothing_picks_none() {
        let single = [destination("only", 0)];
        assert_eq!(pick_destination(&single, 7).unwrap().host, "only");
        assert!(pick_destination(&[], 7).is_none());
        assert!(pick_destination(&[destination("a", 0), destination("b", 0)], 7).is_none());
    }

    #[test]
    fn shadow_authority_goes_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews.shop.svc.cluster.local"), "reviews.shop.svc.cluster.local-shadow");
        assert_eq!(shadow_authority("10.0.0.1:80"), "10.0.0.1-shadow:80");
        assert_eq!(shadow_authority("[fd00::1]:80"), "[fd00::1]-shadow:80");
        assert_eq!(shadow_authority("[fd00::1]"), "[fd00::1]-shadow");
        assert_eq!(shadow_authority("fd00::1"), "fd00::1-shadow");
    }

    #[test]
    fn mirror_percentage_decides_per_request() {
        let mirror = |percentage| MirrorPolicy { destination: destination("m", 0), percentage };
        assert!(mirror(100.0).should_mirror(0.999_999));
        assert!(!mirror(0.0).should_mirror(0.0));
        assert!(mirror(25.0).should_mirror(0.2499) && !mirror(25.0).should_mirror(0.25));
    }
}
