//! Durations as settings are written: read from a number of seconds or a string with a unit
//! (`10`, `0.5`, `"10s"`, `"1500ms"`, `"1m"`), written back as (fractional) seconds in TOML and
//! JSON and as humantime text (`10s`, `1s 500ms`) where a person reads them.

use std::time::Duration;

/// Parses a duration: a plain number is seconds (`10`, `0.5`), anything else is humantime's
/// syntax (`10s`, `1500ms`, `1m`, `1m 30s`).
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a duration (e.g. 10, 10s, 1500ms, 1m)");
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    humantime::parse_duration(t).map_err(|_| bad())
}

/// Formats a duration the way [`parse_duration`] reads it back (`10s`, `1s 500ms`).
#[must_use]
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde for `Duration`: written as (fractional) seconds, read from seconds or a string with
/// a unit (`"10s"`, `"1500ms"`, `"1m"`).
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// A number of seconds, or a string in any form [`super::parse_duration`] reads.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Secs(f64),
        Text(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Written::deserialize(d)? {
            Written::Secs(v) => Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom),
            Written::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_seconds_and_units_are_read() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 0.5 "), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        for bad in ["soon", "-1", "", "10 parsecs"] {
            let why = parse_duration(bad).unwrap_err();
            assert!(why.contains("not a duration"), "{bad}: {why}");
        }
    }

    #[test]
    fn formatted_durations_read_back() {
        for d in [Duration::from_secs(10), Duration::from_millis(1500)] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s 500ms");
    }
}
