//! Request metrics of the proxy, per source workload → destination service,
//! subset, response code and flags, Istio's standard labels in spirit.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Kept for the proxy's lifetime; registered into each scrape's registry
/// (families share their data when cloned).
#[derive(Clone)]
pub struct ProxyMetrics {
    pub requests: Family<Labels, Counter>,
    pub duration: HistogramFamily,
    pub request_bytes: Family<Labels, Counter>,
    pub response_bytes: Family<Labels, Counter>,
    pub retries: Family<Labels, Counter>,
    pub ejections: Family<Labels, Counter>,
    pub tcp_connections: Family<Labels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            tcp_connections: Family::default(),
        }
    }
}

impl ProxyMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("requests", "Requests through the L7 proxy", self.requests.clone());
        registry.register("request_duration_seconds", "Request duration through the L7 proxy", self.duration.clone());
        registry.register("request_bytes", "Request body bytes (as declared)", self.request_bytes.clone());
        registry.register("response_bytes", "Response body bytes (as declared)", self.response_bytes.clone());
        registry.register("request_retries", "Retries made by the proxy", self.retries.clone());
        registry.register("outlier_ejections", "Hosts ejected by outlier detection", self.ejections.clone());
        registry.register("tcp_connections", "Connections relayed by tcp routes", self.tcp_connections.clone());
    }
}
