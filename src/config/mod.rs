//! Connector settings: the typed fields, their documented defaults, the builders and TOML
//! reading. The rest of the concept lives in one file per job:
//!
//! - [`validate`](ConnectorConfig::validate) (`validate.rs`): pure checks, no I/O, run before
//!   anything connects;
//! - `security.rs`: [`TlsConfig`], [`AuthConfig`], [`Secret`]; the TLS files are read and
//!   checked at connect ([`TlsConfig::read_pem_files`]);
//! - `durations.rs`: durations are read as a number of seconds or with a unit
//!   (`lease_ttl = 10`, `lease_ttl = "10s"`, `"1500ms"`, `"1m"`) and written as (fractional)
//!   seconds;
//! - `env.rs`: the `DARKRIFT_ETCD_*` variables ([`ConnectorConfig::with_env`]), typo warnings;
//! - `settings.rs`: the table of settings ([`layers::SETTINGS`]);
//! - [`layers`]: the settings resolved from defaults, a TOML file, `DARKRIFT_ETCD_*` variables
//!   and flags.

mod durations;
mod env;
pub mod layers;
mod security;
mod settings;
mod validate;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alloc::{AllocParams, DEFAULT_ID_SPACE, DEFAULT_MAX_ATTEMPTS, DEFAULT_SPREAD_WINDOW};
use crate::error::{Error, Result};
use crate::keys::DEFAULT_PREFIX;

pub(crate) use durations::secs;
pub use security::{AuthConfig, PemFiles, Secret, TlsConfig};

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
/// Default watch silence after which the watcher asks etcd for a progress notification.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Default watch silence (no event, no progress answer) after which the watch is recreated.
pub const DEFAULT_WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// What to do when, after losing its lease, this server finds its id held by another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdTakenPolicy {
    /// Stop: emit [`crate::Event::RegistrationStopped`] and stay unregistered. The default,
    /// because DarkRift peers key every table by id: a server that silently changes its id
    /// breaks connections that were identified under the old one.
    #[default]
    FailStop,
    /// Take a new id and carry on ([`crate::Event::Reregistered`] names both ids).
    NewId,
}

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
    /// TLS to etcd. `None` means plaintext, and then every endpoint must be `http://`; with
    /// TLS every endpoint must be `https://` (there is no fallback from one to the other).
    pub tls: Option<TlsConfig>,
    /// etcd authentication (user and password). `None` sends no credentials.
    pub auth: Option<AuthConfig>,
    /// After a lease loss, what to do if another server took our id meanwhile.
    pub on_id_taken: IdTakenPolicy,
    /// Watch silence after which the watcher requests a progress notification.
    #[serde(with = "secs")]
    pub progress_interval: Duration,
    /// Watch silence after which the watch stream is considered stuck and recreated.
    #[serde(with = "secs")]
    pub watch_idle_timeout: Duration,
    /// Health-gated liveness through DarkRift's HTTP health check: the lease is kept alive
    /// only while `GET url` answers 200. `None` (default): no HTTP probe (a probe can still be
    /// set in code with [`crate::Connector::set_health_probe`]).
    pub health: Option<crate::health::HealthConfig>,
    /// Peer-reported eviction (`handle_connection_failure`); `None` (default): off.
    pub eviction: Option<EvictionConfig>,
    /// What this server does when its key is removed by someone else (an operator, or peers'
    /// eviction) while its lease lives.
    pub on_key_removed: KeyRemovedPolicy,
    /// The groups this connector watches (its *interest*); empty (default): every group.
    ///
    /// A DarkRift server acts only on the groups it dials and those that dial it, so a
    /// connector given those (plus its own group: a server must watch its own key, and
    /// [`crate::Connector::register_server`] refuses a group outside this list) reads and
    /// watches only their key ranges: one range per group, all read at one pinned revision and
    /// watched on one stream. etcd then sends it the changes of those groups only, instead of
    /// every registration in the cluster. [`crate::cluster::Topology::interest`] gives the
    /// list from a cluster configuration. Events of one group keep etcd's order; those of
    /// different groups may interleave out of revision order (see [`crate::events`]).
    pub watch_groups: Vec<String>,
}

/// Peer-reported eviction: when at least `min_reporters` distinct live servers report the same
/// peer unreachable within `window`, its registration is deleted (guarded by its create
/// revision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvictionConfig {
    /// Distinct reporters needed (at least 1; 2 or more so one confused server cannot evict).
    pub min_reporters: u32,
    /// How recent a report must be to count. Also the anti-flap hold: after reporting one
    /// registration of an id, a server does not report a newer registration of the same id
    /// (one that came back after an eviction) for one window, doubling per further re-report
    /// up to 16 windows.
    #[serde(with = "secs")]
    pub window: Duration,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            min_reporters: 2,
            window: Duration::from_secs(30),
        }
    }
}

/// What a server does when its key disappears while its lease lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyRemovedPolicy {
    /// Put it back (same id, same lease); peers see a leave then a join. The default.
    #[default]
    Restore,
    /// Stop: revoke the lease and emit [`crate::Event::RegistrationStopped`] (for clusters that
    /// use eviction and want an evicted server out until restarted).
    Stop,
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
            tls: None,
            auth: None,
            on_id_taken: IdTakenPolicy::FailStop,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            watch_idle_timeout: DEFAULT_WATCH_IDLE_TIMEOUT,
            health: None,
            eviction: None,
            on_key_removed: KeyRemovedPolicy::Restore,
            watch_groups: Vec::new(),
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

    /// Sets the TLS settings (endpoints must then be `https://`).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the etcd user and password.
    #[must_use]
    pub fn with_auth(mut self, user: impl Into<String>, password: impl Into<Secret>) -> Self {
        self.auth = Some(AuthConfig::new(user, password));
        self
    }

    /// Watches only `groups` (this server's interest; see [`ConnectorConfig::watch_groups`]).
    #[must_use]
    pub fn with_watch_groups<S: Into<String>>(
        mut self,
        groups: impl IntoIterator<Item = S>,
    ) -> Self {
        self.watch_groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// The watched groups as a set (empty: every group).
    pub(crate) fn interest(&self) -> std::collections::BTreeSet<String> {
        self.watch_groups.iter().cloned().collect()
    }

    /// Sets the policy for an id taken while this server was away.
    #[must_use]
    pub fn with_on_id_taken(mut self, policy: IdTakenPolicy) -> Self {
        self.on_id_taken = policy;
        self
    }

    /// Reads settings from a TOML file (every field optional, unknown fields rejected), e.g.
    ///
    /// ```toml
    /// endpoints = ["http://etcd-1:2379", "http://etcd-2:2379"]
    /// prefix = "/darkrift-eu-1"
    /// lease_ttl = 10
    /// [health]
    /// url = "http://localhost:10666/health"
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file and what is wrong with it.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidConfig(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
            .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }

    /// Parses settings from TOML text (see [`ConnectorConfig::from_toml_file`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] with the parser's message.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::InvalidConfig(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_toml_take_units() {
        let c = ConnectorConfig::from_toml_str(
            "lease_ttl = \"1m\"\nconnect_timeout = \"1500ms\"\nrequest_timeout = 2.5\n[health]\ninterval = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.request_timeout, Duration::from_millis(2500));
        assert_eq!(c.health.map(|h| h.interval), Some(Duration::from_secs(2)));
        let e = ConnectorConfig::from_toml_str("lease_ttl = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("not a duration"), "{e}");
    }

    #[test]
    fn toml_and_env_overrides() {
        let toml = "endpoints = [\"http://a:2379\"]\nprefix = \"/x\"\nlease_ttl = 3\non_id_taken = \"new-id\"\n[health]\nurl = \"http://localhost:10666/health\"\n";
        let c = ConnectorConfig::from_toml_str(toml).unwrap();
        assert_eq!(c.endpoints, ["http://a:2379"]);
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.on_id_taken, IdTakenPolicy::NewId);
        assert_eq!(
            c.health.as_ref().map(|h| h.interval),
            Some(Duration::from_secs(1))
        );
        assert!(ConnectorConfig::from_toml_str("nonsense = 1").is_err());
        let env = |name: &str| match name {
            "ENDPOINTS" => Some("http://b:1, http://c:2".to_owned()),
            "LEASE_TTL" => Some("7".to_owned()),
            "USER" => Some("u".to_owned()),
            "PASSWORD" => Some("p".to_owned()),
            _ => None,
        };
        let c = c.with_vars(env).unwrap();
        assert_eq!(c.endpoints, ["http://b:1", "http://c:2"]);
        assert_eq!(c.lease_ttl, Duration::from_secs(7));
        assert_eq!(c.prefix, "/x", "unset variables change nothing");
        assert_eq!(c.auth.as_ref().map(|a| a.user.as_str()), Some("u"));
        let bad =
            ConnectorConfig::default().with_vars(|n| (n == "LEASE_TTL").then(|| "soon".to_owned()));
        assert!(matches!(bad, Err(Error::InvalidConfig(m)) if m.contains("LEASE_TTL")));
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
