//! Locality-aware load balancing as Istio sets it up for Envoy
//! (`ApplyLocalityLoadBalancer`): each endpoint gets a priority (0 is
//! tried first) and a weight within it, from the client's locality, the
//! endpoints' and the DestinationRule's `localityLbSetting`:
//!
//! - `distribute`: the first entry whose `from` matches the client gives
//!   each destination locality its share; an endpoint's weight is its
//!   locality's share over the endpoints there; localities not listed get
//!   no traffic.
//! - failover (the default when outlier detection is set, as in Istio,
//!   which needs it to ever move traffic): priority 0 for the client's
//!   region/zone/subzone, 1 for its region/zone, 2 for its region, 3 for
//!   the region `failover` names for the client's, 4 for the rest.
//! - Kubernetes' `trafficDistribution: PreferClose`: the client's zone
//!   first, then the rest.
//!
//! Who uses it: the proxy spreads requests over priorities by their
//! health (Envoy's overprovisioning factor 1.4) and by weight; the kernel
//! fills a port's slots from its best priority, replicated by weight.

use crate::destination_rule::LocalityLbSetting;

/// `region/zone/subzone`, any part unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// `region[/zone[/subzone]]`; the subzone takes the rest.
    pub fn parse(text: &str) -> Locality {
        let mut parts = text.splitn(3, '/').map(str::to_owned);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    /// Whether a `distribute` pattern (`region[/zone[/subzone]]`, a last
    /// part `*` for any) names this locality.
    pub fn matches(&self, pattern: &str) -> bool {
        let parts = [&self.region, &self.zone, &self.subzone];
        for (i, want) in pattern.splitn(3, '/').enumerate() {
            if want == "*" {
                return true;
            }
            if parts[i] != want {
                return false;
            }
        }
        true
    }
}

/// Written as `region/zone/subzone` (status, config dumps).
impl serde::Serialize for Locality {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// Where an endpoint stands for one client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// 0 is tried first.
    pub priority: u8,
    /// Its share of its priority's traffic (any scale; 0: none).
    pub weight: f64,
}

/// How a destination's endpoints are placed.
#[derive(Clone, Copy, Debug)]
pub struct Setting<'a> {
    pub rule: Option<&'a LocalityLbSetting>,
    /// The destination's rule sets outlier detection.
    pub outlier_detection: bool,
    /// The Service asks for `trafficDistribution: PreferClose`.
    pub prefer_close: bool,
}

/// Each endpoint's placement for a client at `own`, or None when locality
/// plays no part (every endpoint equal).
pub fn placements(setting: Setting<'_>, own: Option<&Locality>, endpoints: &[Locality]) -> Option<Vec<Placement>> {
    let own = own?;
    if setting.rule.is_some_and(|rule| rule.enabled == Some(false)) {
        return None;
    }
    let rule = setting.rule.cloned().unwrap_or_default();
    if let Some((_, to)) = rule.distribute.iter().find(|(from, _)| own.matches(from)) {
        // Each endpoint takes the share of the first destination naming it.
        let shares: Vec<Option<(usize, u32)>> = (endpoints.iter())
            .map(|e| to.iter().enumerate().find(|(_, (pattern, _))| e.matches(pattern)).map(|(i, (_, w))| (i, *w)))
            .collect();
        let mut count = vec![0usize; to.len()];
        for (i, _) in shares.iter().flatten() {
            count[*i] += 1;
        }
        return Some(
            (shares.iter())
                .map(|share| Placement {
                    priority: 0,
                    weight: share.map_or(0.0, |(i, w)| f64::from(w) / count[i] as f64),
                })
                .collect(),
        );
    }
    if setting.outlier_detection {
        let failover_to = rule.failover.iter().find(|(from, _)| *from == own.region).map(|(_, to)| to.as_str());
        return Some(
            (endpoints.iter())
                .map(|e| {
                    let priority = match (e.region == own.region, e.zone == own.zone, e.subzone == own.subzone) {
                        (true, true, true) => 0,
                        (true, true, false) => 1,
                        (true, false, _) => 2,
                        _ if Some(e.region.as_str()) == failover_to => 3,
                        _ => 4,
                    };
                    Placement { priority, weight: 1.0 }
                })
                .collect(),
        );
    }
    if setting.prefer_close {
        let close = |e: &Locality| e.region == own.region && e.zone == own.zone;
        return Some(endpoints.iter().map(|e| Placement { priority: u8::from(!close(e)), weight: 1.0 }).collect());
    }
    None
}

/// Envoy's share of traffic per priority: each takes up to its health
/// (healthy over all, times the overprovisioning factor 1.4, at most
/// 100%) of what the priorities before it left; when all of them together
/// are under 100%, the shares are scaled up to fill it. `levels` holds
/// (healthy, total) per priority, in order.
pub fn priority_load(levels: &[(usize, usize)]) -> Vec<f64> {
    let health: Vec<f64> = (levels.iter())
        .map(|&(healthy, total)| if total == 0 { 0.0 } else { (1.4 * healthy as f64 / total as f64).min(1.0) })
        .collect();
    let sum: f64 = health.iter().sum();
    if sum == 0.0 {
        return vec![0.0; levels.len()];
    }
    let mut left = 1.0;
    let mut load = Vec::with_capacity(levels.len());
    for h in health {
        let take = (h / sum.min(1.0)).min(left);
        load.push(take);
        left -= take;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn at(text: &str) -> Locality {
        Locality::parse(text)
    }

    #[test]
    fn patterns_match_by_part_and_wildcard() {
        let l = at("us-east/1a/rack-1");
        for yes in ["us-east", "us-east/1a", "us-east/*", "*", "us-east/1a/rack-1", "us-east/1a/*"] {
            assert!(l.matches(yes), "{yes}");
        }
        for no in ["us-west", "us-east/1b", "us-east/1a/rack-2"] {
            assert!(!l.matches(no), "{no}");
        }
    }

    #[test]
    fn distribute_splits_each_locality_share_over_its_endpoints() {
        let rule = LocalityLbSetting {
            distribute: vec![(
                "us-east/*".into(),
                BTreeMap::from([("us-east/1a/*".to_owned(), 70), ("us-east/1b/*".to_owned(), 30)]),
            )],
            ..Default::default()
        };
        let setting = Setting { rule: Some(&rule), outlier_detection: false, prefer_close: false };
        let endpoints = [at("us-east/1a/x"), at("us-east/1a/y"), at("us-east/1b/x"), at("eu/1/x")];
        let placed = placements(setting, Some(&at("us-east/1a/x")), &endpoints).unwrap();
        let weights: Vec<f64> = placed.iter().map(|p| p.weight).collect();
        assert_eq!(weights, [35.0, 35.0, 30.0, 0.0]);
        assert_eq!(placements(setting, Some(&at("eu/1/x")), &endpoints), None, "no entry for this client");
        assert_eq!(placements(setting, None, &endpoints), None, "no locality known for the client");
    }

    #[test]
    fn failover_orders_by_nearness_and_needs_outlier_detection() {
        let rule = LocalityLbSetting { failover: vec![("us-east".into(), "eu".into())], ..Default::default() };
        let endpoints = [at("us-east/1a/x"), at("us-east/1a/y"), at("us-east/1b/x"), at("eu/1/x"), at("ap/1/x")];
        let own = at("us-east/1a/x");
        let with = Setting { rule: Some(&rule), outlier_detection: true, prefer_close: false };
        let priorities: Vec<u8> =
            placements(with, Some(&own), &endpoints).unwrap().iter().map(|p| p.priority).collect();
        assert_eq!(priorities, [0, 1, 2, 3, 4]);
        let default = Setting { rule: None, outlier_detection: true, prefer_close: false };
        assert!(placements(default, Some(&own), &endpoints).is_some(), "Istio's default with outlier detection");
        let without = Setting { rule: Some(&rule), outlier_detection: false, prefer_close: false };
        assert_eq!(placements(without, Some(&own), &endpoints), None);
        let off = LocalityLbSetting { enabled: Some(false), ..rule.clone() };
        assert_eq!(placements(Setting { rule: Some(&off), ..with }, Some(&own), &endpoints), None);
    }

    #[test]
    fn prefer_close_is_the_zone_first() {
        let endpoints = [at("r/1a/"), at("r/1b/")];
        let setting = Setting { rule: None, outlier_detection: false, prefer_close: true };
        let priorities: Vec<u8> =
            placements(setting, Some(&at("r/1a/")), &endpoints).unwrap().iter().map(|p| p.priority).collect();
        assert_eq!(priorities, [0, 1]);
    }

    #[test]
    fn load_spills_over_as_envoy_spills_it() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let load = priority_load(&[(4, 4), (2, 2)]);
        assert!(close(load[0], 1.0) && close(load[1], 0.0), "{load:?}");
        // 2 of 4 healthy: 70% stays, 30% spills.
        let load = priority_load(&[(2, 4), (2, 2)]);
        assert!(close(load[0], 0.7) && close(load[1], 0.3), "{load:?}");
        // Everything local ejected: all to the next.
        let load = priority_load(&[(0, 2), (1, 1)]);
        assert!(close(load[0], 0.0) && close(load[1], 1.0), "{load:?}");
        // Too little health overall: scaled up to 100%.
        let load = priority_load(&[(1, 4), (0, 2)]);
        assert!(close(load[0], 1.0), "{load:?}");
    }
}
