//! Outlier detection (DestinationRule `outlierDetection`, Envoy's passive
//! health checking): hosts that fail in a row are ejected for
//! `baseEjectionTime × times ejected`, within `maxEjectionPercent`, unless
//! too few healthy hosts remain (`minHealthPercent`: then all are used).
//! Pure arithmetic over explicit time, so it is tested without sockets.

use mesh_core::destination_rule::OutlierDetection;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Envoy's default cap on one ejection's length.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// 5xx responses and local failures in a row; None disables.
    pub consecutive_5xx: Option<u32>,
    /// 502/503/504 and local failures in a row; None disables.
    pub consecutive_gateway: Option<u32>,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl OutlierConfig {
    /// From the DestinationRule's `outlierDetection` block, with Istio's
    /// defaults for what it leaves out.
    pub fn from_policy(block: &OutlierDetection) -> Self {
        // `consecutiveErrors` is the deprecated name of the gateway counter.
        let consecutive_5xx = match block.consecutive_5xx_errors {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(5),
        };
        let consecutive_gateway = block.consecutive_gateway_errors.or(block.consecutive_errors).filter(|n| *n > 0);
        Self {
            consecutive_5xx,
            consecutive_gateway,
            base_ejection: block.base_ejection_time.unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: block.max_ejection_percent.unwrap_or(10),
            min_health_percent: block.min_health_percent.unwrap_or(0),
        }
    }
}

/// What one try told about a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    Status(u16),
    /// Connect failure, reset or timeout: counts as a 5xx and a gateway error.
    LocalFailure,
}

#[derive(Clone, Debug, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

/// An ejected host, for status and metrics.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Ejected {
    pub host: SocketAddr,
    pub times_ejected: u32,
    pub remaining_ms: u64,
}

/// Per-cluster host health.
#[derive(Debug, Default)]
pub struct OutlierState {
    hosts: HashMap<SocketAddr, HostState>,
}

impl OutlierState {
    /// Records a try; returns true when it ejected the host.
    pub fn record(
        &mut self,
        host: SocketAddr,
        observation: Observation,
        now: Instant,
        config: &OutlierConfig,
        cluster_size: usize,
    ) -> bool {
        let (is_5xx, is_gateway) = match observation {
            Observation::LocalFailure => (true, true),
            Observation::Status(status) => ((500..600).contains(&status), matches!(status, 502..=504)),
        };
        let ejected_now = self.ejected_count(now);
        let state = self.hosts.entry(host).or_default();
        state.consecutive_5xx = if is_5xx { state.consecutive_5xx + 1 } else { 0 };
        state.consecutive_gateway = if is_gateway { state.consecutive_gateway + 1 } else { 0 };
        let tripped = config.consecutive_5xx.is_some_and(|n| state.consecutive_5xx >= n)
            || config.consecutive_gateway.is_some_and(|n| state.consecutive_gateway >= n);
        let already = state.ejected_until.is_some_and(|until| until > now);
        if !tripped || already {
            return false;
        }
        // As Envoy: a share of the hosts, rounded down (10% of 5 hosts
        // ejects none; set maxEjectionPercent: 100 to eject freely).
        let allowed = cluster_size * config.max_ejection_percent as usize / 100;
        if ejected_now >= allowed {
            return false;
        }
        state.times_ejected += 1;
        // Envoy's max_ejection_time (300 s by default) caps the growth.
        let ejection = (config.base_ejection * state.times_ejected).min(MAX_EJECTION_TIME.max(config.base_ejection));
        state.ejected_until = Some(now + ejection);
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        true
    }

    fn ejected_count(&self, now: Instant) -> usize {
        self.hosts.values().filter(|h| h.ejected_until.is_some_and(|until| until > now)).count()
    }

    /// The endpoints to balance over: all but the ejected ones, or all of
    /// them when fewer than `minHealthPercent` would remain (panic mode;
    /// off at 0, Istio's default, where an all-ejected cluster has none).
    pub fn available(&self, endpoints: &[SocketAddr], now: Instant, config: &OutlierConfig) -> Vec<SocketAddr> {
        let healthy: Vec<SocketAddr> = endpoints
            .iter()
            .copied()
            .filter(|e| self.hosts.get(e).and_then(|h| h.ejected_until).is_none_or(|until| until <= now))
            .collect();
        let healthy_percent = if endpoints.is_empty() { 100 } else { healthy.len() * 100 / endpoints.len() };
        if config.min_health_percent > 0 && healthy_percent < config.min_health_percent as usize {
            return endpoints.to_vec();
        }
        healthy
    }

    pub fn ejected(&self, now: Instant) -> Vec<Ejected> {
        let mut out: Vec<Ejected> = self
            .hosts
            .iter()
            .filter_map(|(host, state)| {
                let until = state.ejected_until.filter(|until| *until > now)?;
                Some(Ejected {
                    host: *host,
                    times_ejected: state.times_ejected,
                    remaining_ms: (until - now).as_millis() as u64,
                })
            })
            .collect();
        out.sort_by_key(|e| e.host);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config of an `outlierDetection` block written in YAML, validated
    /// as a DestinationRule's would be.
    fn config(yaml: &str) -> OutlierConfig {
        let text = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r}}\nspec: {{host: web, trafficPolicy: {{outlierDetection: {yaml}}}}}\n");
        let objects = mesh_core::decode::parse_file("t.yaml", &text).unwrap();
        let mesh_core::api::Resource::DestinationRule(rule) = &*objects[0].resource else { unreachable!() };
        let rule = mesh_core::destination_rule::validate_destination_rule(rule, "cluster.local").unwrap();
        OutlierConfig::from_policy(&rule.effective(None, 80).outlier_detection.unwrap())
    }

    fn hosts(n: u8) -> Vec<SocketAddr> {
        (1..=n).map(|i| SocketAddr::from(([10, 244, i, 2], 8080))).collect()
    }

    #[test]
    fn defaults_follow_istio() {
        let c = config("{}");
        assert_eq!(c.consecutive_5xx, Some(5));
        assert_eq!(c.consecutive_gateway, None);
        assert_eq!(c.base_ejection, Duration::from_secs(30));
        assert_eq!((c.max_ejection_percent, c.min_health_percent), (10, 0));
        assert_eq!(config("{consecutive5xxErrors: 0}").consecutive_5xx, None);
    }

    #[test]
    fn consecutive_5xx_ejects_for_base_time_times_ejections() {
        let c = config("{consecutive5xxErrors: 3, baseEjectionTime: 10s, maxEjectionPercent: 100}");
        let h = hosts(3);
        let mut state = OutlierState::default();
        let t0 = Instant::now();
        assert!(!state.record(h[0], Observation::Status(500), t0, &c, 3));
        assert!(!state.record(h[0], Observation::Status(200), t0, &c, 3), "a success resets the streak");
        assert!(!state.record(h[0], Observation::Status(503), t0, &c, 3));
        assert!(!state.record(h[0], Observation::LocalFailure, t0, &c, 3));
        assert!(state.record(h[0], Observation::Status(502), t0, &c, 3), "third in a row ejects");
        assert_eq!(state.available(&h, t0, &c), vec![h[1], h[2]]);
        assert_eq!(state.available(&h, t0 + Duration::from_secs(10), &c), h, "back after 10 s");
        for _ in 0..3 {
            state.record(h[0], Observation::Status(500), t0 + Duration::from_secs(11), &c, 3);
        }
        let second = state.ejected(t0 + Duration::from_secs(11));
        assert_eq!(second[0].times_ejected, 2);
        assert_eq!(second[0].remaining_ms, 20_000, "second ejection lasts twice as long");
    }

    #[test]
    fn gateway_errors_count_only_502_to_504() {
        let c = config("{consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, maxEjectionPercent: 100}");
        let h = hosts(2);
        let mut state = OutlierState::default();
        let t0 = Instant::now();
        assert!(!state.record(h[0], Observation::Status(500), t0, &c, 2));
        assert!(!state.record(h[0], Observation::Status(500), t0, &c, 2), "500 is not a gateway error");
        assert!(!state.record(h[0], Observation::Status(503), t0, &c, 2));
        assert!(state.record(h[0], Observation::Status(504), t0, &c, 2));
    }

    #[test]
    fn max_ejection_percent_caps_ejections_rounding_down() {
        let h = hosts(4);
        let t0 = Instant::now();
        let ten = config("{consecutive5xxErrors: 1, maxEjectionPercent: 10}");
        let mut state = OutlierState::default();
        assert!(!state.record(h[0], Observation::Status(500), t0, &ten, 4), "10% of 4 hosts is none");
        let quarter = config("{consecutive5xxErrors: 1, maxEjectionPercent: 25}");
        let mut state = OutlierState::default();
        assert!(state.record(h[0], Observation::Status(500), t0, &quarter, 4));
        assert!(!state.record(h[1], Observation::Status(500), t0, &quarter, 4), "25% of 4 is one");
    }

    #[test]
    fn ejections_grow_but_stop_at_300_seconds() {
        let c = config("{consecutive5xxErrors: 1, baseEjectionTime: 200s, maxEjectionPercent: 100}");
        let h = hosts(2);
        let mut state = OutlierState::default();
        let t0 = Instant::now();
        assert!(state.record(h[0], Observation::Status(500), t0, &c, 2));
        let later = t0 + Duration::from_secs(201);
        assert!(state.record(h[0], Observation::Status(500), later, &c, 2));
        assert_eq!(state.ejected(later)[0].remaining_ms, 300_000, "400 s capped at 300 s");
    }

    #[test]
    fn with_every_host_ejected_and_no_panic_threshold_none_is_available() {
        let c = config("{consecutive5xxErrors: 1, maxEjectionPercent: 100}");
        let h = hosts(1);
        let mut state = OutlierState::default();
        let t0 = Instant::now();
        assert!(state.record(h[0], Observation::Status(500), t0, &c, 1));
        assert!(state.available(&h, t0, &c).is_empty(), "503 UH, as Envoy with panic mode off");
    }

    #[test]
    fn below_min_health_percent_every_host_is_used() {
        let c = config("{consecutive5xxErrors: 1, maxEjectionPercent: 100, minHealthPercent: 60}");
        let h = hosts(2);
        let mut state = OutlierState::default();
        let t0 = Instant::now();
        assert!(state.record(h[0], Observation::Status(500), t0, &c, 2));
        assert_eq!(state.available(&h, t0, &c), h, "50% healthy is under 60%: panic, use all");
    }
}
