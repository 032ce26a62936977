//! A field of an object: where it is (a [`Path`] such as
//! `spec.http[0].route[1].weight`), what is wrong with it ([`FieldError`]),
//! and the parsers of the scalar values every kind shares: ports,
//! durations and percentages. Each parser names the field it read, so every
//! rejection can.

use std::time::Duration;

/// A validation failure inside one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A field path under construction, e.g. `spec.http[0].route[1]`.
#[derive(Clone, Debug)]
pub struct Path(String);

impl Path {
    pub fn new(path: impl Into<String>) -> Self {
        Self(path.into())
    }

    /// The path of a field under this one.
    pub fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.0)
    }

    pub fn child(&self, name: &str) -> Path {
        Path(self.field(name))
    }

    /// Entry `i` of the list `name` under this path.
    pub fn index(&self, name: &str, i: usize) -> Path {
        Path(format!("{}.{name}[{i}]", self.0))
    }

    /// An error at this path.
    pub fn error(&self, message: impl Into<String>) -> FieldError {
        FieldError::new(self.0.clone(), message)
    }
}

pub fn parse_port(field: &str, port: i64) -> Result<u16, FieldError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldError::new(field, format!("{port} is not a port number (1-65535)")))
}

/// A non-negative count that fits Istio's uint32 fields.
pub fn parse_count(field: &str, n: i64) -> Result<u32, FieldError> {
    u32::try_from(n).map_err(|_| FieldError::new(field, format!("{n} is not a count (0 to 4294967295)")))
}

/// A percentage in [0, 100].
pub fn parse_percentage(field: &str, value: f64) -> Result<f64, FieldError> {
    if value.is_finite() && (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new(field, format!("{value} is not a percentage between 0 and 100")))
    }
}

/// The longest duration accepted: protobuf's Duration range (10,000 years).
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000_000);

/// Parses a protobuf-JSON duration as Istio writes them: `10s`, `1.5s`,
/// `100ms`, `2m`, `1h`, `1h30m`, `250us`. Exact decimal arithmetic with
/// checked operations: it never panics, and anything beyond
/// [`MAX_DURATION`] is an error.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    let invalid = || FieldError::new(field, format!("{text:?} is not a duration (e.g. 10s, 100ms, 1m)"));
    let too_long = || FieldError::new(field, format!("{text:?} is longer than the longest duration (10,000 years)"));
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let max_nanos = MAX_DURATION.as_nanos();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let number = &rest[..number_end];
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let unit_end =
            rest[number_end..].find(|c: char| c.is_ascii_digit()).map(|i| number_end + i).unwrap_or(rest.len());
        let unit_nanos: u128 = match &rest[number_end..unit_end] {
            "h" => 3600 * NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "s" => NANOS_PER_SEC,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            _ => return Err(invalid()),
        };
        // Digits only, so parsing fails only when the number is too large.
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_long())? };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_long)?;
        // Digits past the 18th are below a nanosecond even in hours.
        let fraction = &fraction[..fraction.len().min(18)];
        if !fraction.is_empty() {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            nanos = nanos.checked_add(digits * unit_nanos / 10u128.pow(fraction.len() as u32)).ok_or_else(too_long)?;
        }
        total = total.checked_add(nanos).filter(|t| *t <= max_nanos).ok_or_else(too_long)?;
        rest = &rest[unit_end..];
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// A duration as Istio's `ValidateDuration` takes it: at least 1 ms, in
/// whole milliseconds (Envoy's timers have no finer grain).
pub fn parse_istio_duration(field: &str, text: &str) -> Result<Duration, FieldError> {
    let duration = parse_duration(field, text)?;
    if duration < Duration::from_millis(1) {
        return Err(FieldError::new(field, format!("{text:?} is under 1ms (Istio's minimum)")));
    }
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(FieldError::new(field, format!("{text:?} is not a whole number of milliseconds")));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_istio_writes_them() {
        assert_eq!(parse_duration("f", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("f", "1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("f", "1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("f", "250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("f", "0.1s").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("f", "7ms").unwrap(), Duration::from_millis(7));
        assert_eq!(parse_duration("f", "1.000000001s").unwrap(), Duration::new(1, 1));
        assert_eq!(parse_duration("f", ".5m").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("f", "250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("f", "10").is_err());
        assert!(parse_duration("f", "").is_err());
        for bad in ["-1s", "1.2.3s", ".s", "1e3s", "s", "1sec", "1s2"] {
            assert!(parse_duration("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absurd_durations_are_errors_not_panics() {
        for absurd in [
            "99999999999999999999999999999999999999999999999999h",
            "18446744073709551616s",
            "5124095576030431h",
            "315576000001s",
            "315576000000s1ns",
        ] {
            let err = parse_duration("spec.x", absurd).expect_err(absurd);
            assert_eq!(err.field, "spec.x");
        }
        assert_eq!(parse_duration("f", "315576000000s").unwrap(), MAX_DURATION);
        let nines = format!("0.{}s", "9".repeat(400));
        assert!(parse_duration("f", &nines).unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn istio_durations_start_at_a_millisecond() {
        assert_eq!(parse_istio_duration("f", "1ms").unwrap(), Duration::from_millis(1));
        assert_eq!(parse_istio_duration("f", "1.5s").unwrap(), Duration::from_millis(1500));
        for short in ["500us", "0s"] {
            assert!(parse_istio_duration("f", short).unwrap_err().message.contains("under 1ms"), "{short}");
        }
        assert!(parse_istio_duration("f", "1500us").unwrap_err().message.contains("milliseconds"));
    }

    #[test]
    fn percentages_are_between_0_and_100() {
        assert_eq!(parse_percentage("f", 12.5).unwrap(), 12.5);
        for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY] {
            assert!(parse_percentage("f", bad).is_err(), "{bad}");
        }
    }
}
