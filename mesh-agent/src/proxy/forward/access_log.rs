//! The access log: one JSON line per request on stdout, with Envoy's
//! fields.

use serde::Serialize;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

#[derive(Serialize)]
pub struct AccessLogLine<'a> {
    pub start_time: String,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub response_code: u16,
    pub response_flags: Cow<'static, str>,
    pub duration_ms: u128,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: Option<&'a str>,
    pub request_id: &'a str,
    pub downstream_remote_address: SocketAddr,
    pub attempts: u32,
}

impl AccessLogLine<'_> {
    pub fn print(&self) {
        if let Ok(json) = serde_json::to_string(self) {
            println!("{json}");
        }
    }
}

/// Now, as seconds and milliseconds since the Unix epoch.
pub fn start_time() -> String {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    format!("{}.{:03}", since.as_secs(), since.subsec_millis())
}
