//! What a request gets at a gateway besides the mesh's stages: the Host it
//! is routed by, Istio's forwarding headers, and the redirect of an
//! `httpsRedirect` server.

use super::outcome::local_reply;
use crate::proxy::body::ProxyBody;
use crate::proxy::listener::Connection;
use http::header::{HeaderMap, HeaderName, HeaderValue, LOCATION};
use http::request::Parts;
use http::{Response, StatusCode};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// The host an authority names, lowercased and without its port.
pub fn host_of(authority: &str) -> String {
    mesh_core::host::strip_port(authority).to_ascii_lowercase()
}

/// As Istio's gateways do at the edge: the client's address appended to
/// `x-forwarded-for` and given as `x-envoy-external-address`, and the
/// scheme it spoke as `x-forwarded-proto`.
pub fn set_forwarded(headers: &mut HeaderMap, connection: &Connection) {
    let client = connection.peer.ip().to_canonical().to_string();
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) if !earlier.is_empty() => format!("{earlier}, {client}"),
        _ => client.clone(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if let Ok(value) = HeaderValue::from_str(&client) {
        headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(connection.scheme));
}

/// 301 to the same authority and path over https.
pub fn https_redirect(authority: &str, parts: &Parts) -> Response<ProxyBody> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut response = local_reply(StatusCode::MOVED_PERMANENTLY, "");
    if let Ok(location) = HeaderValue::from_str(&format!("https://{}{path}", host_of(authority))) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(host_of("Bookinfo.Example.com:8080"), "bookinfo.example.com");
        assert_eq!(host_of("bookinfo.example.com"), "bookinfo.example.com");
        assert_eq!(host_of("[fd00::1]:80"), "[fd00::1]");
        assert_eq!(host_of("fd00::1"), "fd00::1");
    }

    #[test]
    fn forwarding_headers_name_the_client_and_scheme() {
        use crate::proxy::listener::Entry;
        let connection = Connection {
            peer: "203.0.113.7:5555".parse().unwrap(),
            original: "10.0.0.1:443".parse().unwrap(),
            source_workload: "unknown".into(),
            source_namespace: "unknown".into(),
            source: None,
            scheme: "https",
            entry: Entry::Gateway { tls: true, sni: Some("a.example.com".into()) },
            series: Default::default(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from_static("198.51.100.1"));
        set_forwarded(&mut headers, &connection);
        assert_eq!(headers[&X_FORWARDED_FOR], "198.51.100.1, 203.0.113.7");
        assert_eq!(headers[&X_ENVOY_EXTERNAL_ADDRESS], "203.0.113.7");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
    }
}
