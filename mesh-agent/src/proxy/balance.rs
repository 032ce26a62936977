//! L7 load balancing: which endpoint of a cluster takes a request (or a
//! relayed connection), by the DestinationRule's algorithm. Pure, over the
//! endpoints' in-flight counts and slow-start weights, so it is tested
//! without sockets.
//!
//! Locality (`localityLbSetting`, `PreferClose`): a request first goes to
//! one priority of endpoints, as Envoy spreads load over priorities by their
//! health ([`by_priority`]); within it, endpoints with `distribute` weights
//! are picked by weight.
//!
//! Slow start (`warmup`): while some endpoint is still warming up, ROUND_ROBIN
//! and LEAST_REQUEST pick by weight, as Envoy then does (its EDF scheduler):
//! round robin in proportion to each endpoint's slow-start factor, least
//! request by factor / (requests in flight + 1).

use super::cluster::Endpoint;
use mesh_core::destination_rule::LoadBalancer;
use mesh_core::locality::priority_load;
use mesh_core::maglev::stable_hash;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Picks an endpoint. Endpoints in `tried` are avoided while others remain
/// (a retry prefers a host not tried yet), except under consistent
/// hashing, where the hash decides. `cursor` is the cluster's round-robin
/// position.
pub fn pick<'a>(
    cursor: &AtomicUsize,
    endpoints: &'a [Endpoint],
    load_balancer: &LoadBalancer,
    hash: Option<u64>,
    tried: &[SocketAddr],
) -> Option<&'a Endpoint> {
    if endpoints.is_empty() {
        return None;
    }
    if let (LoadBalancer::ConsistentHash { .. }, Some(hash)) = (load_balancer, hash) {
        return rendezvous(endpoints, hash);
    }
    let fresh: Vec<&Endpoint> =
        if tried.is_empty() { Vec::new() } else { endpoints.iter().filter(|e| !tried.contains(&e.address)).collect() };
    if has_locality_weights(endpoints) {
        let candidates: Vec<&Endpoint> = if fresh.is_empty() { endpoints.iter().collect() } else { fresh };
        return by_locality_weight(&candidates, fastrand::f64());
    }
    // Only a cluster with `warmup` pays for the clock; once every window
    // is over, the plain algorithm is back.
    let now = endpoints.iter().any(|e| e.slow_start.is_some()).then(Instant::now);
    let warming = now.filter(|&now| endpoints.iter().any(|e| e.slow_start.is_some_and(|s| s.factor(now) < 1.0)));
    Some(match (fresh.is_empty(), warming) {
        (true, None) => choose(endpoints.len(), |i| &endpoints[i], cursor, load_balancer),
        (false, None) => choose(fresh.len(), |i| fresh[i], cursor, load_balancer),
        (true, Some(now)) => weighted(endpoints.iter(), load_balancer, now, fastrand::f64()),
        (false, Some(now)) => weighted(fresh.into_iter(), load_balancer, now, fastrand::f64()),
    })
}

/// The endpoints of the priority a request goes to: Envoy's load per
/// priority ([`priority_load`]) from `all` (the cluster's) and `available`
/// (those outlier detection has not ejected), and `draw` in [0, 1) to
/// choose. Without placements, `available` as it is.
pub fn by_priority<'a>(all: &[Endpoint], available: &'a [Endpoint], draw: f64) -> Cow<'a, [Endpoint]> {
    let priority = |e: &Endpoint| e.placement.map(|p| p.priority);
    let Some(lowest) = all.iter().filter_map(priority).max() else { return Cow::Borrowed(available) };
    let levels: Vec<(usize, usize)> = (0..=lowest)
        .map(|level| {
            let in_level = |e: &&Endpoint| priority(e) == Some(level);
            (available.iter().filter(in_level).count(), all.iter().filter(in_level).count())
        })
        .collect();
    let load = priority_load(&levels);
    let mut left = draw;
    let chosen = (load.iter().position(|share| {
        left -= share;
        left < 0.0
    }))
    .or_else(|| load.iter().rposition(|share| *share > 0.0));
    match chosen {
        Some(level) => Cow::Owned(available.iter().filter(|e| priority(e) == Some(level as u8)).cloned().collect()),
        None => Cow::Borrowed(available),
    }
}

/// Whether `distribute` weights tell the endpoints apart.
fn has_locality_weights(endpoints: &[Endpoint]) -> bool {
    let mut weights = endpoints.iter().filter_map(|e| e.placement.map(|p| p.weight));
    let Some(first) = weights.next() else { return false };
    weights.any(|w| w != first)
}

/// One of `candidates` (not empty) by its locality weight.
fn by_locality_weight<'a>(candidates: &[&'a Endpoint], draw: f64) -> Option<&'a Endpoint> {
    let weight = |e: &Endpoint| e.placement.map_or(0.0, |p| p.weight);
    let total: f64 = candidates.iter().map(|e| weight(e)).sum();
    if total <= 0.0 {
        return candidates.first().copied();
    }
    let mut left = draw * total;
    for candidate in candidates {
        left -= weight(candidate);
        if left < 0.0 {
            return Some(candidate);
        }
    }
    candidates.iter().rev().find(|e| weight(e) > 0.0).copied()
}

/// One of `candidates` (not empty) by weight, with `draw` in [0, 1): each
/// endpoint's slow-start factor at `now` (1 once warm), divided under
/// LEAST_REQUEST by its requests in flight + 1. Only the algorithms with
/// slow start get factors (the plan sets them for those alone).
fn weighted<'a>(
    candidates: impl Iterator<Item = &'a Endpoint> + Clone,
    load_balancer: &LoadBalancer,
    now: Instant,
    draw: f64,
) -> &'a Endpoint {
    let weight = |e: &Endpoint| {
        let factor = e.slow_start.map_or(1.0, |s| s.factor(now));
        match load_balancer {
            LoadBalancer::LeastRequest => factor / (e.load() + 1) as f64,
            _ => factor,
        }
    };
    let total: f64 = candidates.clone().map(weight).sum();
    let mut left = draw * total;
    let mut last = None;
    for candidate in candidates {
        left -= weight(candidate);
        if left < 0.0 {
            return candidate;
        }
        last = Some(candidate);
    }
    last.expect("weighted() is called with candidates")
}

/// One of `n` candidates (`at` gives each), by the balancing algorithm.
fn choose<'a>(
    n: usize,
    at: impl Fn(usize) -> &'a Endpoint,
    cursor: &AtomicUsize,
    load_balancer: &LoadBalancer,
) -> &'a Endpoint {
    match load_balancer {
        LoadBalancer::RoundRobin => at(cursor.fetch_add(1, Ordering::Relaxed) % n),
        LoadBalancer::Random | LoadBalancer::ConsistentHash { .. } => at(fastrand::usize(..n)),
        LoadBalancer::LeastRequest | LoadBalancer::Passthrough => {
            // Power of two choices over requests in flight, as Envoy.
            let (a, b) = (at(fastrand::usize(..n)), at(fastrand::usize(..n)));
            if b.load() < a.load() {
                b
            } else {
                a
            }
        }
    }
}

/// Highest-random-weight hashing: every key has a stable favourite among
/// the endpoints, and an endpoint leaving moves only its own keys.
fn rendezvous(endpoints: &[Endpoint], hash: u64) -> Option<&Endpoint> {
    endpoints.iter().max_by_key(|e| {
        let mut key = [0u8; 18];
        match e.address.ip() {
            std::net::IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
            std::net::IpAddr::V6(v6) => key[..16].copy_from_slice(&v6.octets()),
        }
        key[16..].copy_from_slice(&e.address.port().to_be_bytes());
        stable_hash(hash, &key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::cluster::SlowStart;
    use std::time::Duration;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint {
                placement: None,
                address: SocketAddr::from(([10, 244, i, 2], 8080)),
                counters: Default::default(),
                slow_start: None,
            })
            .collect()
    }

    fn addresses(endpoints: &[Endpoint]) -> Vec<SocketAddr> {
        endpoints.iter().map(|e| e.address).collect()
    }

    #[test]
    fn round_robin_cycles_and_retries_avoid_tried_hosts() {
        let cursor = AtomicUsize::new(0);
        let e = endpoints(3);
        let a = addresses(&e);
        let picks: Vec<_> =
            (0..6).map(|_| pick(&cursor, &e, &LoadBalancer::RoundRobin, None, &[]).unwrap().address).collect();
        assert_eq!(&picks[..3], &picks[3..]);
        for _ in 0..20 {
            let p = pick(&cursor, &e, &LoadBalancer::Random, None, &[a[0], a[1]]).unwrap();
            assert_eq!(p.address, a[2], "the only untried host");
        }
        let all_tried = pick(&cursor, &e, &LoadBalancer::Random, None, &a);
        assert!(all_tried.is_some(), "with every host tried, any is fine");
    }

    #[test]
    fn least_request_prefers_idle_endpoints() {
        let cursor = AtomicUsize::new(0);
        let e = endpoints(2);
        let _busy: Vec<_> = (0..5).map(|_| e[0].start()).collect();
        for _ in 0..50 {
            let p = pick(&cursor, &e, &LoadBalancer::LeastRequest, None, &[]).unwrap();
            // Both choices may land on the busy one; over two endpoints a
            // different draw wins most of the time.
            if p.address == e[1].address {
                return;
            }
        }
        panic!("never picked the idle endpoint");
    }

    /// Counts per endpoint of `n` picks with evenly spread draws.
    fn shares(e: &[Endpoint], load_balancer: &LoadBalancer, now: Instant, n: usize) -> Vec<usize> {
        let mut counts = vec![0; e.len()];
        for k in 0..n {
            let picked = weighted(e.iter(), load_balancer, now, (k as f64 + 0.5) / n as f64);
            counts[e.iter().position(|x| x.address == picked.address).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn a_new_endpoint_warms_up_from_its_minimum_share() {
        let t0 = Instant::now();
        let mut e = endpoints(2);
        let window = Duration::from_secs(100);
        e[1].slow_start = Some(SlowStart { joined: t0, window, min_factor: 0.1, aggression: 1.0 });
        let slow = e[1].slow_start.unwrap();
        assert_eq!(slow.factor(t0), 0.1, "the minimum at first (1 s of 100 is below it)");
        assert!((slow.factor(t0 + Duration::from_secs(50)) - 0.5).abs() < 1e-9, "linear at aggression 1");
        assert_eq!(slow.factor(t0 + window), 1.0, "whole once the window is over");
        let square = SlowStart { aggression: 2.0, ..slow };
        assert!((square.factor(t0 + Duration::from_secs(25)) - 0.5).abs() < 1e-9, "(1/4)^(1/2)");

        // Weighted 1 : 0.1 at first, 1 : 0.5 halfway, even at the end.
        let rr = LoadBalancer::RoundRobin;
        assert_eq!(shares(&e, &rr, t0, 1100), [1000, 100]);
        assert_eq!(shares(&e, &rr, t0 + Duration::from_secs(50), 1500), [1000, 500]);
        assert_eq!(shares(&e, &rr, t0 + window, 1000), [500, 500]);
        // Least request also weighs by load: busy warm endpoints lose share.
        let _busy: Vec<_> = (0..9).map(|_| e[0].start()).collect();
        assert_eq!(shares(&e, &LoadBalancer::LeastRequest, t0, 1000), [500, 500], "1/10 against 0.1/1");
    }

    #[test]
    fn picks_go_by_weight_only_while_an_endpoint_warms_up() {
        let cursor = AtomicUsize::new(0);
        let mut e = endpoints(2);
        let joined = Instant::now();
        e[1].slow_start =
            Some(SlowStart { joined, window: Duration::from_secs(3600), min_factor: 0.05, aggression: 1.0 });
        let new = (0..2000)
            .filter(|_| pick(&cursor, &e, &LoadBalancer::RoundRobin, None, &[]).unwrap().address == e[1].address)
            .count();
        assert!((40..=200).contains(&new), "about 1 in 21: {new}");
        let retry = pick(&cursor, &e, &LoadBalancer::RoundRobin, None, &[e[0].address]).unwrap();
        assert_eq!(retry.address, e[1].address, "a retry still avoids the tried host");
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_only_the_leavers_keys() {
        let e = endpoints(5);
        let before: Vec<_> = (0..1000u64).map(|k| rendezvous(&e, k).unwrap().address).collect();
        let after: Vec<_> = (0..1000u64).map(|k| rendezvous(&e[..4], k).unwrap().address).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != e[4].address {
                assert_eq!(a, b);
            }
        }
        let moved = before.iter().filter(|b| **b == e[4].address).count();
        assert!((120..=280).contains(&moved), "about a fifth: {moved}");
    }

    fn placed(n: u8, placements: &[(u8, f64)]) -> Vec<Endpoint> {
        let mut e = endpoints(n);
        for (endpoint, (priority, weight)) in e.iter_mut().zip(placements) {
            endpoint.placement = Some(mesh_core::locality::Placement { priority: *priority, weight: *weight });
        }
        e
    }

    #[test]
    fn requests_go_to_the_nearest_priority_and_fail_over_as_it_loses_health() {
        let all = placed(4, &[(0, 1.0), (0, 1.0), (1, 1.0), (1, 1.0)]);
        let addresses = |chosen: &[Endpoint]| chosen.iter().map(|e| e.address).collect::<Vec<_>>();
        assert_eq!(addresses(&by_priority(&all, &all, 0.99)), addresses(&all[..2]), "local first, all of it");
        // One local left of two: 70% stays local, 30% spills.
        let one_local: Vec<Endpoint> = [&all[0], &all[2], &all[3]].into_iter().cloned().collect();
        assert_eq!(addresses(&by_priority(&all, &one_local, 0.5)), addresses(&all[..1]));
        assert_eq!(addresses(&by_priority(&all, &one_local, 0.8)), addresses(&all[2..]));
        // Both local endpoints ejected: everything to the next priority.
        assert_eq!(addresses(&by_priority(&all, &all[2..], 0.1)), addresses(&all[2..]));
        let plain = endpoints(2);
        assert_eq!(addresses(&by_priority(&plain, &plain[..1], 0.1)), addresses(&plain[..1]), "no locality");
    }

    #[test]
    fn distribute_weights_share_the_picks() {
        let cursor = AtomicUsize::new(0);
        let e = placed(3, &[(0, 35.0), (0, 35.0), (0, 30.0)]);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            let picked = pick(&cursor, &e, &LoadBalancer::RoundRobin, None, &[]).unwrap();
            counts[e.iter().position(|x| x.address == picked.address).unwrap()] += 1;
        }
        assert!(counts.iter().zip([3500, 3500, 3000]).all(|(c, want)| c.abs_diff(want) < 300), "{counts:?}");
    }
}
