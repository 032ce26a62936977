//! `connectionPool`: limits on the connections to a destination (`tcp`,
//! enforced at connect time by the kernel and by the proxy) and on the
//! requests over them (`http`, the proxy's circuit breaking and pooling).
//! Validated as Istio's `validateConnectionPool` does.

use crate::api;
use crate::field::{parse_count, parse_istio_duration, FieldError, Path};
use serde::Serialize;
use std::time::Duration;

/// One unit in the merge: a level that sets only `http` drops an
/// inherited `tcp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConnectionPool {
    pub tcp: Option<TcpPool>,
    pub http: Option<HttpPool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPool {
    /// 0 means unlimited, as in Istio.
    pub max_connections: u32,
    pub connect_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<TcpKeepalive>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// `connectionPool.http`, numbers as written (unset: Istio's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPool {
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
    pub h2_upgrade_policy: H2UpgradePolicy,
    pub use_client_protocol: bool,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    #[default]
    Default,
    DoNotUpgrade,
    Upgrade,
}

pub fn validate_connection_pool(at: &Path, pool: &api::ConnectionPoolSettings) -> Result<ConnectionPool, FieldError> {
    if pool.tcp.is_none() && pool.http.is_none() {
        return Err(at.error("must set tcp or http (Istio rejects an empty connectionPool)"));
    }
    let tcp = pool.tcp.as_ref().map(|tcp| validate_tcp(&at.child("tcp"), tcp)).transpose()?;
    let http = pool.http.as_ref().map(|http| validate_http(&at.child("http"), http)).transpose()?;
    Ok(ConnectionPool { tcp, http })
}

fn validate_tcp(at: &Path, tcp: &api::TcpSettings) -> Result<TcpPool, FieldError> {
    let max_connections = count(&at.field("maxConnections"), tcp.max_connections)?.unwrap_or(0);
    let keepalive = tcp
        .tcp_keepalive
        .as_ref()
        .map(|k| {
            let at = at.child("tcpKeepalive");
            Ok::<_, FieldError>(TcpKeepalive {
                probes: count(&at.field("probes"), k.probes)?,
                time: duration(&at.field("time"), k.time.as_deref())?,
                interval: duration(&at.field("interval"), k.interval.as_deref())?,
            })
        })
        .transpose()?;
    Ok(TcpPool {
        max_connections,
        connect_timeout: duration(&at.field("connectTimeout"), tcp.connect_timeout.as_deref())?,
        max_connection_duration: duration(&at.field("maxConnectionDuration"), tcp.max_connection_duration.as_deref())?,
        idle_timeout: duration(&at.field("idleTimeout"), tcp.idle_timeout.as_deref())?,
        keepalive,
    })
}

fn validate_http(at: &Path, http: &api::HttpSettings) -> Result<HttpPool, FieldError> {
    let h2_upgrade_policy = match http.h2_upgrade_policy.as_deref() {
        None | Some("DEFAULT") => H2UpgradePolicy::Default,
        Some("DO_NOT_UPGRADE") => H2UpgradePolicy::DoNotUpgrade,
        Some("UPGRADE") => H2UpgradePolicy::Upgrade,
        Some(other) => {
            return Err(FieldError::new(
                at.field("h2UpgradePolicy"),
                format!("unknown policy {other:?}; expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
            ))
        }
    };
    let use_client_protocol = http.use_client_protocol.unwrap_or(false);
    if use_client_protocol && h2_upgrade_policy == H2UpgradePolicy::Upgrade {
        return Err(FieldError::new(at.field("useClientProtocol"), "cannot be true when h2UpgradePolicy is UPGRADE"));
    }
    Ok(HttpPool {
        http1_max_pending_requests: count(&at.field("http1MaxPendingRequests"), http.http1_max_pending_requests)?,
        http2_max_requests: count(&at.field("http2MaxRequests"), http.http2_max_requests)?,
        max_requests_per_connection: count(&at.field("maxRequestsPerConnection"), http.max_requests_per_connection)?,
        max_retries: count(&at.field("maxRetries"), http.max_retries)?,
        idle_timeout: duration(&at.field("idleTimeout"), http.idle_timeout.as_deref())?,
        h2_upgrade_policy,
        use_client_protocol,
        max_concurrent_streams: count(&at.field("maxConcurrentStreams"), http.max_concurrent_streams)?,
    })
}

/// A non-negative count, as written.
fn count(field: &str, value: Option<i64>) -> Result<Option<u32>, FieldError> {
    value.map(|n| parse_count(field, n)).transpose()
}

/// A duration Istio checks with `ValidateDuration`.
fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, FieldError> {
    text.map(|text| parse_istio_duration(field, text)).transpose()
}
