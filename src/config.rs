//! Connector settings: typed, documented defaults, validated before anything connects.
//!
//! Durations are written in (fractional) seconds in serialized form, e.g. `lease_ttl = 10`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocParams, DEFAULT_ID_SPACE, DEFAULT_MAX_ATTEMPTS, DEFAULT_SPREAD_WINDOW};
use crate::error::{Error, Result};
use crate::keys::{KeyLayout, DEFAULT_PREFIX};

/// Default etcd endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default lease TTL: DarkRift peers see a crashed server leave within about this long.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default bound on establishing the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on one unary etcd request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default capacity of the ordered event queue between the watcher and the consumer.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;
/// Default page size of snapshot reads.
pub const DEFAULT_PAGE_SIZE: i64 = 1000;

/// Everything a [`crate::Connector`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorConfig {
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's registry (several clusters can share one etcd).
    pub prefix: String,
    /// Lease TTL (whole seconds, at least 1; etcd raises TTLs below its own minimum).
    #[serde(with = "secs")]
    pub lease_ttl: Duration,
    /// Bound on reaching etcd when connecting.
    #[serde(with = "secs")]
    pub connect_timeout: Duration,
    /// Bound on each unary etcd request (grant, transaction, range, revoke).
    #[serde(with = "secs")]
    pub request_timeout: Duration,
    /// Size of the id space: ids are `1..=id_space`. Every server of a prefix must use the
    /// same value. Tests use a small one.
    pub id_space: u16,
    /// How many free ids after the cursor a first attempt spreads over (1 = strictly
    /// sequential ids; larger = fewer conflicts when many servers start at once).
    pub spread_window: u16,
    /// Bound on allocation transactions per registration.
    pub max_alloc_attempts: u32,
    /// Capacity of the ordered event queue. When the consumer falls this far behind, the
    /// watcher stops reading from etcd until it catches up; nothing is dropped.
    pub event_queue: usize,
    /// Page size of snapshot reads.
    pub page_size: i64,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            id_space: DEFAULT_ID_SPACE,
            spread_window: DEFAULT_SPREAD_WINDOW,
            max_alloc_attempts: DEFAULT_MAX_ATTEMPTS,
            event_queue: DEFAULT_EVENT_QUEUE,
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

impl ConnectorConfig {
    /// Default settings for the given endpoints.
    #[must_use]
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ConnectorConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the lease TTL.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets the id space size.
    #[must_use]
    pub fn with_id_space(mut self, n: u16) -> Self {
        self.id_space = n;
        self
    }

    /// Sets the spread window.
    #[must_use]
    pub fn with_spread_window(mut self, w: u16) -> Self {
        self.spread_window = w;
        self
    }

    /// Checks every field; returns the key layout the prefix describes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field and the rule.
    pub fn validate(&self) -> Result<KeyLayout> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        if self.endpoints.is_empty() {
            return bad("endpoints: at least one etcd endpoint is needed".into());
        }
        for e in &self.endpoints {
            if e.trim().is_empty() || e.contains(char::is_whitespace) {
                return bad(format!("endpoints: {e:?} is not an endpoint"));
            }
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            return bad(format!(
                "lease_ttl: {:?} must be a whole number of seconds, at least 1",
                self.lease_ttl
            ));
        }
        if self.lease_ttl > Duration::from_secs(3600) {
            return bad("lease_ttl: at most 3600 s".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{name}: must be more than zero"));
            }
        }
        if self.id_space == 0 {
            return bad("id_space: at least 1 (ids are 1..=id_space)".into());
        }
        if self.spread_window == 0 {
            return bad("spread_window: at least 1".into());
        }
        if self.max_alloc_attempts == 0 {
            return bad("max_alloc_attempts: at least 1".into());
        }
        if self.event_queue == 0 {
            return bad("event_queue: at least 1".into());
        }
        if !(1..=10_000).contains(&self.page_size) {
            return bad("page_size: 1..=10000".into());
        }
        KeyLayout::new(&self.prefix)
    }

    /// The allocator tunables.
    #[must_use]
    pub fn alloc_params(&self) -> AllocParams {
        AllocParams {
            id_space: self.id_space,
            spread_window: self.spread_window,
        }
    }

    /// The lease TTL in etcd's unit.
    #[must_use]
    pub fn ttl_secs(&self) -> i64 {
        i64::try_from(self.lease_ttl.as_secs()).unwrap_or(i64::MAX)
    }
}

/// Serde for `Duration` as (fractional) seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ConnectorConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.id_space, 65535);
    }

    #[test]
    fn each_rule_is_enforced() {
        let ok = ConnectorConfig::default();
        let cases: Vec<ConnectorConfig> = vec![
            ConnectorConfig {
                endpoints: vec![],
                ..ok.clone()
            },
            ConnectorConfig {
                endpoints: vec![" ".into()],
                ..ok.clone()
            },
            ConnectorConfig {
                prefix: "nope".into(),
                ..ok.clone()
            },
            ConnectorConfig {
                lease_ttl: Duration::from_millis(500),
                ..ok.clone()
            },
            ConnectorConfig {
                lease_ttl: Duration::from_millis(1500),
                ..ok.clone()
            },
            ConnectorConfig {
                connect_timeout: Duration::ZERO,
                ..ok.clone()
            },
            ConnectorConfig {
                id_space: 0,
                ..ok.clone()
            },
            ConnectorConfig {
                spread_window: 0,
                ..ok.clone()
            },
            ConnectorConfig {
                event_queue: 0,
                ..ok.clone()
            },
            ConnectorConfig {
                page_size: 0,
                ..ok.clone()
            },
        ];
        for c in cases {
            assert!(
                matches!(c.validate(), Err(Error::InvalidConfig(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn serde_roundtrip_in_seconds() {
        let c = ConnectorConfig::default().with_lease_ttl(Duration::from_secs(3));
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"lease_ttl\":3.0"), "{json}");
        let back: ConnectorConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        let partial: ConnectorConfig = serde_json::from_str(r#"{"prefix":"/x"}"#).unwrap();
        assert_eq!(partial.prefix, "/x");
        assert!(serde_json::from_str::<ConnectorConfig>(r#"{"typo":1}"#).is_err());
    }
}
