//! Envoy's response flags, as access logs and metrics show them.

use std::borrow::Cow;

// Envoy's names, as logs and metrics show them (`flag_list` prints them).
#[allow(clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFlag {
    /// Upstream connection failure.
    UF,
    /// No healthy upstream.
    UH,
    /// Upstream overflow (circuit breaking).
    UO,
    /// Upstream request timeout.
    UT,
    /// Upstream reset before a response.
    UR,
    /// Upstream protocol error (a malformed response).
    UPE,
    /// Upstream retry limit exceeded.
    URX,
    /// Fault injection: abort.
    FI,
    /// Fault injection: delay.
    DI,
    /// No route matched.
    NR,
    /// No cluster: a route's destination host is not known.
    NC,
    /// Downstream protocol error: a request the proxy refuses to forward.
    DPE,
}

/// Response flags as logs and metrics show them: `UF,URX`, or `-`.
pub fn flag_list(flags: &[ResponseFlag]) -> Cow<'static, str> {
    if flags.is_empty() {
        return "-".into();
    }
    flags.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(",").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_listed_as_envoy_logs_them() {
        assert_eq!(flag_list(&[]), "-");
        assert_eq!(flag_list(&[ResponseFlag::UF, ResponseFlag::URX]), "UF,URX");
    }
}
