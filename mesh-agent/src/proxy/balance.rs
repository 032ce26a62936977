//! L7 load balancing: which endpoint of a cluster takes a request (or a
//! relayed connection), by the DestinationRule's algorithm. Pure, over the
//! endpoints' in-flight counts, so it is tested without sockets.

use super::cluster::Endpoint;
use mesh_core::destination_rule::LoadBalancer;
use mesh_core::maglev::stable_hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    Some(if fresh.is_empty() {
        choose(endpoints.len(), |i| &endpoints[i], cursor, load_balancer)
    } else {
        choose(fresh.len(), |i| fresh[i], cursor, load_balancer)
    })
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

    fn endpoints(n: u8) -> Vec<Endpoint> {
        (1..=n)
            .map(|i| Endpoint { address: SocketAddr::from(([10, 244, i, 2], 8080)), counters: Default::default() })
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
}
