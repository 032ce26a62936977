//! `outlierDetection`: passive health checking by the proxy, validated as
//! Istio's `validateOutlierDetection` does. Values are kept as written;
//! the proxy fills in Istio's defaults for what is left out.

use crate::api;
use crate::field::{parse_count, parse_istio_duration, FieldError, Path};
use serde::Serialize;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: what `consecutiveGatewayErrors` counts.
    pub consecutive_errors: Option<u32>,
    pub consecutive_5xx_errors: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_local_origin_failures: Option<u32>,
    pub split_external_local_origin_errors: bool,
    pub interval: Option<Duration>,
    pub base_ejection_time: Option<Duration>,
    pub max_ejection_percent: Option<u32>,
    pub min_health_percent: Option<u32>,
}

pub fn validate_outlier_detection(at: &Path, outlier: &api::OutlierDetection) -> Result<OutlierDetection, FieldError> {
    let count = |name: &str, value: Option<i64>| value.map(|n| parse_count(&at.field(name), n)).transpose();
    let percent = |name: &str, value: Option<i64>| {
        value
            .map(|n| {
                u32::try_from(n).ok().filter(|p| *p <= 100).ok_or_else(|| {
                    FieldError::new(at.field(name), format!("{n} is not a percentage between 0 and 100"))
                })
            })
            .transpose()
    };
    let duration =
        |name: &str, value: Option<&str>| value.map(|t| parse_istio_duration(&at.field(name), t)).transpose();
    let split = outlier.split_external_local_origin_errors.unwrap_or(false);
    let local_origin = count("consecutiveLocalOriginFailures", outlier.consecutive_local_origin_failures)?;
    if !split && local_origin.is_some_and(|n| n > 0) {
        return Err(FieldError::new(
            at.field("consecutiveLocalOriginFailures"),
            "needs splitExternalLocalOriginErrors: true (otherwise local failures count as 5xx)",
        ));
    }
    Ok(OutlierDetection {
        // Deprecated, and an int32 in Istio, which only warns about it: a
        // value that is no count is left unset.
        consecutive_errors: outlier.consecutive_errors.and_then(|n| u32::try_from(n).ok()),
        consecutive_5xx_errors: count("consecutive5xxErrors", outlier.consecutive_5xx_errors)?,
        consecutive_gateway_errors: count("consecutiveGatewayErrors", outlier.consecutive_gateway_errors)?,
        consecutive_local_origin_failures: local_origin,
        split_external_local_origin_errors: split,
        interval: duration("interval", outlier.interval.as_deref())?,
        base_ejection_time: duration("baseEjectionTime", outlier.base_ejection_time.as_deref())?,
        max_ejection_percent: percent("maxEjectionPercent", outlier.max_ejection_percent)?,
        min_health_percent: percent("minHealthPercent", outlier.min_health_percent)?,
    })
}
