//! Request metrics of the proxy, per source workload → destination service,
//! subset, response code and flags, Istio's standard labels in spirit.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

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
    /// Retries the policy asked for and the proxy could not make.
    retries_skipped: Family<Labels, Counter>,
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
            retries_skipped: Family::default(),
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
        registry.register("response_bytes", "Response body bytes sent to clients", self.response_bytes.clone());
        registry.register("request_retries", "Retries made by the proxy", self.retries.clone());
        registry.register(
            "request_retries_skipped",
            "Retries the policy asked for and the proxy could not make, by reason",
            self.retries_skipped.clone(),
        );
        registry.register("outlier_ejections", "Hosts ejected by outlier detection", self.ejections.clone());
        registry.register("tcp_connections", "Connections relayed by tcp routes", self.tcp_connections.clone());
    }
}

impl ProxyMetrics {
    /// Counts a retry of `cluster` that could not be made, and why.
    pub fn retry_skipped(&self, cluster: &str, reason: &str) {
        let labels = vec![("cluster".into(), cluster.to_owned()), ("reason".into(), reason.to_owned())];
        self.retries_skipped.get_or_create(&labels).inc();
    }
}

/// The series that the requests of one client connection to one cluster
/// feed, kept on the connection so that a keep-alive connection finds them
/// again without building and hashing label sets per request.
pub struct RequestSeries {
    cluster: Arc<str>,
    code: u16,
    flags: String,
    labels: Labels,
    requests: Counter,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
    retries: Counter,
}

impl ProxyMetrics {
    /// The series for a request from `source` (workload, namespace) to
    /// `cluster` (`outbound|port|subset|host`, or a bare host for local
    /// answers) that got `code` with `flags`, reusing `cached` when it fits.
    fn series<'a>(
        &self,
        cached: &'a mut Option<RequestSeries>,
        source: (&str, &str),
        cluster: &Arc<str>,
        code: u16,
        flags: &str,
    ) -> &'a RequestSeries {
        let same_cluster = cached.as_ref().is_some_and(|c| Arc::ptr_eq(&c.cluster, cluster) || c.cluster == *cluster);
        if !same_cluster {
            let (destination, subset) = match super::cluster::name_fields(cluster) {
                Some((_, subset, host)) => (host, subset),
                None => (&**cluster, ""),
            };
            let labels: Labels = vec![
                ("source_workload".into(), source.0.to_owned()),
                ("source_namespace".into(), source.1.to_owned()),
                ("destination_service".into(), destination.to_owned()),
                ("destination_subset".into(), subset.to_owned()),
            ];
            *cached = Some(RequestSeries {
                cluster: cluster.clone(),
                code,
                flags: flags.to_owned(),
                requests: self.requests.get_or_create(&with_outcome(&labels, code, flags)).clone(),
                duration: self.duration.get_or_create(&labels).clone(),
                request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                response_bytes: self.response_bytes.get_or_create(&labels).clone(),
                retries: self.retries.get_or_create(&labels).clone(),
                labels,
            });
        }
        let series = cached.as_mut().expect("filled above");
        if series.code != code || series.flags != flags {
            series.requests = self.requests.get_or_create(&with_outcome(&series.labels, code, flags)).clone();
            series.code = code;
            series.flags = flags.to_owned();
        }
        series
    }
}

impl ProxyMetrics {
    /// Counts one finished request from `source` (workload, namespace) to
    /// `cluster`, in the series `cached` for its connection; returns the
    /// response-bytes counter, which a streamed body feeds as it goes.
    #[allow(clippy::too_many_arguments)]
    pub fn record_request(
        &self,
        cached: &std::sync::Mutex<Option<RequestSeries>>,
        source: (&str, &str),
        cluster: &Arc<str>,
        code: u16,
        flags: &str,
        request_bytes: u64,
        attempts: u32,
        started: std::time::Instant,
    ) -> Counter {
        let mut cached = crate::sync::lock(cached);
        let series = self.series(&mut cached, source, cluster, code, flags);
        series.requests.inc();
        series.duration.observe(started.elapsed().as_secs_f64());
        series.request_bytes.inc_by(request_bytes);
        if attempts > 1 {
            series.retries.inc_by(u64::from(attempts - 1));
        }
        series.response_bytes.clone()
    }
}

fn with_outcome(labels: &Labels, code: u16, flags: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push(("response_code".into(), code.to_string()));
    labels.push(("response_flags".into(), flags.to_owned()));
    labels
}
