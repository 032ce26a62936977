//! `retryBudget`: retries to the destination bounded by a share of the
//! requests under way rather than by a count (`connectionPool.http.maxRetries`).

use crate::api;
use crate::field::{parse_count, parse_percentage, FieldError, Path};
use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Of the active requests (Envoy's default: 20%).
    pub percent: Option<f64>,
    /// Retries always allowed whatever the share (Envoy's default: 3).
    pub min_retry_concurrency: Option<u32>,
}

pub fn validate_retry_budget(at: &Path, budget: &api::RetryBudget) -> Result<RetryBudget, FieldError> {
    let percent = budget.percent.map(|p| parse_percentage(&at.field("percent"), p)).transpose()?;
    let min_retry_concurrency =
        budget.min_retry_concurrency.map(|n| parse_count(&at.field("minRetryConcurrency"), n)).transpose()?;
    Ok(RetryBudget { percent, min_retry_concurrency })
}
