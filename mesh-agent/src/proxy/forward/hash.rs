//! The consistent-hash key of a request, for `consistentHash` load
//! balancing: a header, a cookie (issued when absent), a query parameter
//! or the client's address.

use http::header::{HeaderMap, HeaderValue, COOKIE};
use http::request::Parts;
use mesh_core::destination_rule::{HashCookie, HashKey, LoadBalancer};
use mesh_core::maglev::stable_hash;
use std::net::SocketAddr;

/// The hash of the request's key when the policy hashes, and the
/// `Set-Cookie` to issue when hashing on a cookie with a `ttl` that the
/// request lacks (as Envoy: the new value decides the host from now on).
pub fn request_hash(
    load_balancer: &LoadBalancer,
    parts: &Parts,
    peer: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let LoadBalancer::ConsistentHash { key, .. } = load_balancer else { return (None, None) };
    let mut issued = None;
    let material: Option<String> = match key {
        HashKey::HttpHeaderName(name) => {
            parts.headers.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned)
        }
        HashKey::HttpCookie(spec) => cookie(&parts.headers, &spec.name).or_else(|| {
            let (header, value) = issue_cookie(spec, fastrand::u64(..))?;
            issued = Some(header);
            Some(value)
        }),
        HashKey::HttpQueryParameterName(name) => parts.uri.query().and_then(|q| {
            q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| k == name).map(|(_, v)| v.to_owned()))
        }),
        HashKey::UseSourceIp => Some(peer.ip().to_string()),
        HashKey::Unset => None,
    };
    (material.map(|m| stable_hash(7, m.as_bytes())), issued)
}

/// The `Set-Cookie` for a new hash cookie of random value `random`, and
/// the cookie's value as the request would have sent it; none without a
/// `ttl` (Envoy issues cookies only then).
fn issue_cookie(spec: &HashCookie, random: u64) -> Option<(HeaderValue, String)> {
    let ttl = spec.ttl?;
    let value = format!("\"{random:016x}\"");
    let mut header = format!("{}={value}", spec.name);
    if let Some(path) = &spec.path {
        header.push_str(&format!("; Path={path}"));
    }
    if !ttl.is_zero() {
        header.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    for (name, attribute) in &spec.attributes {
        match attribute {
            Some(attribute) => header.push_str(&format!("; {name}={attribute}")),
            None => header.push_str(&format!("; {name}")),
        }
    }
    header.push_str("; HttpOnly");
    Some((HeaderValue::from_str(&header).ok()?, value))
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';')
            .find_map(|pair| pair.trim().split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::destination_rule::HashTable;
    use std::time::Duration;

    fn hashing(key: HashKey) -> LoadBalancer {
        LoadBalancer::ConsistentHash { key, table: HashTable::RingHash { minimum_ring_size: 1024 } }
    }

    fn parts(request: http::request::Builder) -> Parts {
        request.body(()).unwrap().into_parts().0
    }

    const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 4000);

    #[test]
    fn the_same_key_hashes_the_same_and_no_key_hashes_nothing() {
        let lb = hashing(HashKey::HttpHeaderName("end-user".into()));
        let jason = |id| parts(http::Request::get("/").header("end-user", "jason").header("x-id", id));
        assert_eq!(request_hash(&lb, &jason("1"), PEER).0, request_hash(&lb, &jason("2"), PEER).0);
        assert_eq!(request_hash(&lb, &parts(http::Request::get("/")), PEER).0, None);
        let by_query = hashing(HashKey::HttpQueryParameterName("u".into()));
        let (a, _) = request_hash(&by_query, &parts(http::Request::get("/?x=1&u=7")), PEER);
        assert_eq!(a, request_hash(&by_query, &parts(http::Request::get("/?u=7")), PEER).0);
        assert!(a.is_some());
        assert_eq!(request_hash(&LoadBalancer::RoundRobin, &jason("1"), PEER), (None, None));
    }

    #[test]
    fn a_missing_hash_cookie_is_issued_with_its_attributes_and_then_decides() {
        let spec = HashCookie {
            name: "user".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
            attributes: vec![("SameSite".into(), Some("Strict".into())), ("Secure".into(), None)],
        };
        let lb = hashing(HashKey::HttpCookie(spec.clone()));
        let (hash, issued) = request_hash(&lb, &parts(http::Request::get("/")), PEER);
        let issued = issued.expect("issued").to_str().unwrap().to_owned();
        assert!(issued.starts_with("user=\""), "{issued}");
        assert!(issued.ends_with("; Path=/; Max-Age=60; SameSite=Strict; Secure; HttpOnly"), "{issued}");
        let value = issued.split(';').next().unwrap().split_once('=').unwrap().1;
        let again = parts(http::Request::get("/").header("cookie", format!("a=b; user={value}")));
        assert_eq!(request_hash(&lb, &again, PEER), (hash, None), "the issued cookie keeps the client on its host");
        let no_ttl = hashing(HashKey::HttpCookie(HashCookie { ttl: None, ..spec }));
        assert_eq!(request_hash(&no_ttl, &parts(http::Request::get("/")), PEER), (None, None));
    }
}
