//! Protocol upgrades (WebSocket and the like): the request keeps its
//! `Connection: upgrade` and `Upgrade` fields and goes to the upstream over
//! HTTP/1.1, once; after a 101 on both sides the proxy relays bytes.

use crate::proxy::http1::common::has_token;
use crate::proxy::http1::common::strip_hop_by_hop;
use http::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use http::request::Parts;
use hyper_util::rt::TokioIo;

/// `Connection: upgrade` with an `Upgrade` protocol named.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && has_token(headers, &CONNECTION, "upgrade")
}

/// Takes the client side of an upgrade the request asks for, and leaves
/// the request's connection-scoped fields as the upstream must see them:
/// only `Connection: upgrade` and the protocol for an upgrade, none else.
pub fn prepare(parts: &mut Parts) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>().filter(|_| is_upgrade(&parts.headers));
    if upgrade.is_some() {
        let protocol = parts.headers.remove(UPGRADE);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            parts.headers.insert(UPGRADE, protocol);
        }
    } else {
        strip_hop_by_hop(&mut parts.headers);
    }
    upgrade
}

/// After a 101 on both sides, relays bytes between the client and the
/// upstream until either closes; the request's accounting lasts as long.
pub fn tunnel<G: Send + 'static>(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, guards: G) {
    tokio::spawn(async move {
        let _guards = guards;
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_needs_both_fields_and_keeps_them() {
        let request = |connection: &str| {
            http::Request::get("/ws")
                .header("connection", connection)
                .header("upgrade", "websocket")
                .header("keep-alive", "timeout=5")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert!(is_upgrade(&request("keep-alive, Upgrade").headers));
        assert!(!is_upgrade(&request("keep-alive").headers));
        // Without hyper's upgrade handle nothing can switch: the fields go.
        let mut parts = request("upgrade");
        assert!(prepare(&mut parts).is_none());
        assert!(parts.headers.get(UPGRADE).is_none() && parts.headers.get(CONNECTION).is_none());
        assert!(parts.headers.get("keep-alive").is_none());
    }
}
