//! `loadBalancer`: the algorithm (`simple` or `consistentHash`), locality
//! weighting and failover (`localityLbSetting`), and slow start (`warmup`).
//! Validated as Istio's `validateLoadBalancer` does; the kernel and the
//! proxy act on the algorithm, the rest is kept for when they act on it.

use crate::api::{self, ConsistentHashLb};
use crate::field::{parse_duration, parse_istio_duration, parse_percentage, FieldError, Path};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Maglev table the kernel uses where a rule asks for a ring hash.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65_537;
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Largest Maglev table the kernel map is sized for per group (Istio's own
/// limit, 5000011, is higher).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_000_003;

/// The balancing algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    LeastRequest,
    RoundRobin,
    Random,
    Passthrough,
    ConsistentHash { key: HashKey, table: HashTable },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashKey {
    UseSourceIp,
    HttpHeaderName(String),
    HttpCookie(HashCookie),
    HttpQueryParameterName(String),
    /// `consistentHash` with no hash key, which Istio accepts: Envoy then
    /// hashes a random value for each request, so it balances like RANDOM.
    Unset,
}

/// `consistentHash.httpCookie`: the cookie to hash on, issued when absent
/// (with these attributes) if it has a `ttl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HashCookie {
    pub name: String,
    pub path: Option<String>,
    pub ttl: Option<Duration>,
    /// Extra `Set-Cookie` attributes: name, and value if any.
    pub attributes: Vec<(String, Option<String>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HashTable {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u32 },
}

/// A whole `loadBalancer` block: it replaces an inherited one as a unit.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPolicy {
    pub algorithm: LoadBalancer,
    pub locality: Option<LocalityLbSetting>,
    pub warmup: Option<Warmup>,
}

/// `localityLbSetting`: weights between localities, or failover order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalityLbSetting {
    /// `from` locality, and the weights (1-100, summing to 100) of the
    /// localities its traffic goes to.
    pub distribute: Vec<(String, BTreeMap<String, u32>)>,
    /// `from` region, and the region to fail over to.
    pub failover: Vec<(String, String)>,
    pub failover_priority: Vec<String>,
    /// Unset: enabled when the rule sets anything.
    pub enabled: Option<bool>,
}

/// `warmup` (or the deprecated `warmupDurationSecs`): new endpoints get a
/// growing share of traffic over `duration`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Warmup {
    pub duration: Duration,
    /// The share a new endpoint starts with (Envoy's default: 10%).
    pub minimum_percent: Option<f64>,
    /// How fast the share grows (at least 1; 1 is linear).
    pub aggression: Option<f64>,
}

/// A `loadBalancer` that is set always decides the level's algorithm: with
/// neither `simple` nor `consistentHash` (or `simple: UNSPECIFIED`) it is
/// Istio's default, LEAST_REQUEST, and it still replaces an inherited one.
pub fn validate_load_balancer(at: &Path, lb: &api::LoadBalancerSettings) -> Result<LoadBalancerPolicy, FieldError> {
    let algorithm = match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => return Err(at.error("simple and consistentHash are mutually exclusive")),
        (Some(simple), None) => match simple.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => LoadBalancer::LeastRequest,
            "ROUND_ROBIN" => LoadBalancer::RoundRobin,
            "RANDOM" => LoadBalancer::Random,
            "PASSTHROUGH" => LoadBalancer::Passthrough,
            other => {
                return Err(FieldError::new(
                    at.field("simple"),
                    format!("unknown algorithm {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH"),
                ))
            }
        },
        (None, Some(hash)) => validate_consistent_hash(&at.child("consistentHash"), hash)?,
        (None, None) => LoadBalancer::LeastRequest,
    };
    let locality =
        lb.locality_lb_setting.as_ref().map(|l| validate_locality(&at.child("localityLbSetting"), l)).transpose()?;
    // With both, `warmup` wins, as Istio builds the cluster.
    let warmup = match (&lb.warmup, &lb.warmup_duration_secs) {
        (Some(warmup), _) => Some(validate_warmup(&at.child("warmup"), warmup)?),
        (None, Some(secs)) => Some(Warmup {
            duration: parse_istio_duration(&at.field("warmupDurationSecs"), secs)?,
            minimum_percent: None,
            aggression: None,
        }),
        (None, None) => None,
    };
    Ok(LoadBalancerPolicy { algorithm, locality, warmup })
}

fn validate_consistent_hash(at: &Path, hash: &ConsistentHashLb) -> Result<LoadBalancer, FieldError> {
    let mut keys = Vec::new();
    if let Some(header) = &hash.http_header_name {
        if header.is_empty() {
            return Err(FieldError::new(at.field("httpHeaderName"), "must not be empty"));
        }
        keys.push(HashKey::HttpHeaderName(header.to_ascii_lowercase()));
    }
    if let Some(cookie) = &hash.http_cookie {
        let name = cookie
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| FieldError::new(at.field("httpCookie.name"), "required"))?;
        let ttl = cookie.ttl.as_deref().map(|ttl| parse_duration(&at.field("httpCookie.ttl"), ttl)).transpose()?;
        let mut attributes = Vec::new();
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            if attribute.name.is_empty() {
                return Err(FieldError::new(at.child("httpCookie").index("attributes", i).field("name"), "required"));
            }
            attributes.push((attribute.name.clone(), attribute.value.clone()));
        }
        keys.push(HashKey::HttpCookie(HashCookie { name, path: cookie.path.clone(), ttl, attributes }));
    }
    // `useSourceIp: false` still names the key (a protobuf oneof): it
    // counts against the one-key rule, and hashes nothing.
    match hash.use_source_ip {
        Some(true) => keys.push(HashKey::UseSourceIp),
        Some(false) => keys.push(HashKey::Unset),
        None => {}
    }
    if let Some(param) = &hash.http_query_parameter_name {
        if param.is_empty() {
            return Err(FieldError::new(at.field("httpQueryParameterName"), "must not be empty"));
        }
        keys.push(HashKey::HttpQueryParameterName(param.clone()));
    }
    let key = match keys.len() {
        0 => HashKey::Unset,
        1 => keys.remove(0),
        _ => return Err(at.error("only one hash key may be set")),
    };
    // The deprecated top-level minimumRingSize; 0 is proto3's "unset".
    let legacy_ring_size = hash.minimum_ring_size.filter(|n| *n != 0);
    if legacy_ring_size.is_some() && (hash.ring_hash.is_some() || hash.maglev.is_some()) {
        return Err(FieldError::new(
            at.field("minimumRingSize"),
            "cannot be set together with maglev or ringHash (it is the deprecated form of ringHash.minimumRingSize)",
        ));
    }
    let table = match (&hash.ring_hash, &hash.maglev) {
        (Some(_), Some(_)) => return Err(at.error("ringHash and maglev are mutually exclusive")),
        (_, Some(maglev)) => {
            HashTable::Maglev { table_size: maglev_table_size(&at.field("maglev.tableSize"), maglev.table_size)? }
        }
        (Some(ring), None) => HashTable::RingHash {
            minimum_ring_size: ring_size(&at.field("ringHash.minimumRingSize"), ring.minimum_ring_size)?,
        },
        (None, None) => {
            HashTable::RingHash { minimum_ring_size: ring_size(&at.field("minimumRingSize"), legacy_ring_size)? }
        }
    };
    Ok(LoadBalancer::ConsistentHash { key, table })
}

/// Istio's limit: a prime below 5000011. A larger table than the kernel
/// map holds per service is served at [`MAX_MAGLEV_TABLE_SIZE`] (also a
/// prime): the same hashing, slightly coarser.
fn maglev_table_size(path: &str, size: Option<i64>) -> Result<u32, FieldError> {
    // Istio has no default here: 0 is proto3's "unset".
    let size = size.filter(|s| *s != 0).ok_or_else(|| FieldError::new(path, "tableSize must be set for maglev"))?;
    let size = u32::try_from(size).ok().filter(|s| *s > 1 && *s < ISTIO_MAX_MAGLEV_TABLE_SIZE).ok_or_else(|| {
        FieldError::new(path, format!("{size} is out of range (a prime less than {ISTIO_MAX_MAGLEV_TABLE_SIZE})"))
    })?;
    if !is_prime(size as u64) {
        return Err(FieldError::new(path, format!("{size} is not a prime number")));
    }
    Ok(size.min(MAX_MAGLEV_TABLE_SIZE))
}

/// Istio refuses a Maglev table of this size or more.
const ISTIO_MAX_MAGLEV_TABLE_SIZE: u32 = 5_000_011;

fn ring_size(path: &str, size: Option<i64>) -> Result<u64, FieldError> {
    match size {
        None | Some(0) => Ok(DEFAULT_MINIMUM_RING_SIZE),
        Some(n) => u64::try_from(n).map_err(|_| FieldError::new(path, format!("{n} is negative"))),
    }
}

pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The topology labels `failoverPriority` may not name together with
/// `failover` (they would fight over the order).
const TOPOLOGY_LABELS: [&str; 3] =
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

/// Istio's `ValidateLocalityLbSetting`: `distribute` or `failover`, not
/// both; distribute weights 1-100 summing to 100 per source; localities
/// `region[/zone[/subzone]]` with at most one `*`, last; failover between
/// different regions named alone.
fn validate_locality(at: &Path, setting: &api::LocalityLoadBalancerSetting) -> Result<LocalityLbSetting, FieldError> {
    if !setting.distribute.is_empty() && !setting.failover.is_empty() {
        return Err(at.error("distribute and failover cannot both be set"));
    }
    if !setting.failover.is_empty() {
        if let Some(i) = setting.failover_priority.iter().position(|l| TOPOLOGY_LABELS.contains(&l.as_str())) {
            return Err(at
                .index("failoverPriority", i)
                .error(format!("{:?} cannot be used together with failover", setting.failover_priority[i])));
        }
    }
    let mut distribute = Vec::new();
    let mut sources: Vec<&str> = Vec::new();
    for (i, entry) in setting.distribute.iter().enumerate() {
        let at = at.index("distribute", i);
        validate_locality_name(&at.field("from"), &entry.from)?;
        check_overlap(&at.field("from"), &entry.from, &sources)?;
        sources.push(&entry.from);
        let mut weights = BTreeMap::new();
        let destinations: Vec<&str> = entry.to.keys().map(String::as_str).collect();
        for (j, (locality, weight)) in entry.to.iter().enumerate() {
            let field = format!("{}[{locality}]", at.field("to"));
            validate_locality_name(&field, locality)?;
            check_overlap(&field, locality, &destinations[..j])?;
            let weight = u32::try_from(*weight)
                .ok()
                .filter(|w| (1..=100).contains(w))
                .ok_or_else(|| FieldError::new(&field, format!("weight {weight} is not in 1-100")))?;
            weights.insert(locality.clone(), weight);
        }
        let total: u32 = weights.values().sum();
        if total != 100 {
            return Err(FieldError::new(at.field("to"), format!("the weights add up to {total}, not 100")));
        }
        distribute.push((entry.from.clone(), weights));
    }
    let mut failover = Vec::new();
    for (i, entry) in setting.failover.iter().enumerate() {
        let at = at.index("failover", i);
        for (field, region) in [("from", &entry.from), ("to", &entry.to)] {
            if region.contains('/') || region.contains('*') {
                return Err(FieldError::new(
                    at.field(field),
                    format!("{region:?} is not a region (failover names regions alone, without `/` or `*`)"),
                ));
            }
        }
        if entry.from == entry.to {
            return Err(FieldError::new(at.field("to"), "must be another region than from"));
        }
        failover.push((entry.from.clone(), entry.to.clone()));
    }
    Ok(LocalityLbSetting {
        distribute,
        failover,
        failover_priority: setting.failover_priority.clone(),
        enabled: setting.enabled,
    })
}

/// `region`, `region/zone` or `region/zone/subzone` (the subzone takes
/// the rest, as Istio splits it), none empty; a single `*` may end it
/// (`us-east/*`, `*`).
fn validate_locality_name(field: &str, locality: &str) -> Result<(), FieldError> {
    let wildcards = locality.matches('*').count();
    if wildcards > 1 || (wildcards == 1 && !locality.ends_with('*')) {
        return Err(FieldError::new(field, format!("{locality:?}: a `*` may appear once, at the end")));
    }
    if locality.is_empty() || locality.splitn(3, '/').any(str::is_empty) {
        return Err(FieldError::new(field, format!("{locality:?} is not region[/zone[/subzone]]")));
    }
    Ok(())
}

/// Istio's `validateLocalities`: a locality may not be named twice, nor
/// fall under another's wildcard (`us-east/*` covers `us-east/1a`).
fn check_overlap(field: &str, locality: &str, earlier: &[&str]) -> Result<(), FieldError> {
    let covers =
        |wide: &str, narrow: &str| wide == narrow || wide.strip_suffix('*').is_some_and(|p| narrow.starts_with(p));
    match earlier.iter().find(|other| covers(other, locality) || covers(locality, other)) {
        Some(other) => Err(FieldError::new(field, format!("{locality:?} overlaps {other:?}"))),
        None => Ok(()),
    }
}

fn validate_warmup(at: &Path, warmup: &api::WarmupConfiguration) -> Result<Warmup, FieldError> {
    let duration = warmup.duration.as_deref().ok_or_else(|| FieldError::new(at.field("duration"), "required"))?;
    let duration = parse_istio_duration(&at.field("duration"), duration)?;
    let minimum_percent =
        warmup.minimum_percent.map(|p| parse_percentage(&at.field("minimumPercent"), p)).transpose()?;
    if let Some(aggression) = warmup.aggression.filter(|a| !(a.is_finite() && *a >= 1.0)) {
        return Err(FieldError::new(at.field("aggression"), format!("{aggression} is below 1")));
    }
    Ok(Warmup { duration, minimum_percent, aggression: warmup.aggression })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes() {
        assert!(is_prime(65_537) && is_prime(251) && is_prime(2));
        assert!(!is_prime(65_536) && !is_prime(1) && !is_prime(1000));
    }

    #[test]
    fn locality_names_are_region_zone_subzone_with_one_trailing_wildcard() {
        for good in ["us-east", "us-east/1a", "us-east/1a/rack-2", "us-east/*", "*"] {
            assert!(validate_locality_name("f", good).is_ok(), "{good}");
        }
        assert!(validate_locality_name("f", "a/b/c/d").is_ok(), "the subzone takes the rest");
        for bad in ["", "us-east//1a", "a/b/", "*/1a", "us-*/1a", "us/**"] {
            assert!(validate_locality_name("f", bad).is_err(), "{bad}");
        }
        assert!(check_overlap("f", "us-east/1a", &["us-west/*", "us-east/*"]).is_err());
        assert!(check_overlap("f", "us-east/*", &["us-east/1a"]).is_err());
        assert!(check_overlap("f", "us-east/1a", &["us-east/1a"]).is_err());
        assert!(check_overlap("f", "us-east/1a", &["us-east/1b", "us-west/*"]).is_ok());
    }
}
