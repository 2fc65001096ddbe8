//! Connector settings: typed, documented defaults, validated before anything connects.
//!
//! Durations are read as a number of seconds or with a unit (`lease_ttl = 10`,
//! `lease_ttl = "10s"`, `"1500ms"`, `"1m"`) and written as (fractional) seconds. [`layers`]
//! resolves the settings from defaults, a TOML file, `DARKRIFT_ETCD_*` variables and flags.

pub mod layers;

use std::fmt;
use std::path::{Path, PathBuf};
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

/// TLS settings: the CA that signed etcd's server certificate and, for mutual TLS, this
/// client's certificate and key. All three are paths to PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) that etcd's server certificate must chain to. Only these are trusted:
    /// the system's roots are not used.
    pub ca_cert: PathBuf,
    /// Client certificate for mutual TLS (etcd `--client-cert-auth`); needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Private key of `cert`; needs `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Server verification only: trust the CA in `ca_cert`.
    #[must_use]
    pub fn new(ca_cert: impl Into<PathBuf>) -> Self {
        TlsConfig {
            ca_cert: ca_cert.into(),
            cert: None,
            key: None,
        }
    }

    /// Adds a client certificate and key (mutual TLS).
    #[must_use]
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some(cert.into());
        self.key = Some(key.into());
        self
    }

    fn validate(&self) -> Result<()> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(Error::InvalidConfig(
                    "tls.cert: a client certificate needs its key (tls.key)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidConfig(
                    "tls.key: a client key needs its certificate (tls.cert)".into(),
                ))
            }
            _ => {}
        }
        check_pem("tls.ca_cert", &self.ca_cert, "CERTIFICATE-----")?;
        if let Some(cert) = &self.cert {
            check_pem("tls.cert", cert, "CERTIFICATE-----")?;
        }
        if let Some(key) = &self.key {
            check_pem("tls.key", key, "PRIVATE KEY-----")?;
        }
        Ok(())
    }
}

/// Checks an endpoint's form up front, so that a typo is a configuration error at once rather
/// than a connect timeout: `[http://|https://]host:port[/]`, a port in 1..=65535.
fn check_endpoint(e: &str) -> std::result::Result<(), &'static str> {
    if e.trim().is_empty() || e.contains(char::is_whitespace) {
        return Err("empty or contains spaces");
    }
    let rest = match e.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        Some(_) => return Err("the scheme must be http or https"),
        None => e,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("a path, query or user part is not allowed");
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err("no port");
    };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        }
    };
    if !host_ok {
        return Err("bad host");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err("the port must be in 1..=65535"),
    }
}

/// Checks that `path` is a readable PEM file with a `-----BEGIN ...<marker>` block, so that a
/// wrong path or a swapped certificate and key fail here with the field's name rather than
/// later as an anonymous handshake failure (rustls silently ignores unparsable CA files).
fn check_pem(field: &str, path: &Path, marker: &str) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::InvalidConfig(format!("{field}: cannot read {}: {e}", path.display()))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.match_indices("-----BEGIN ").any(|(i, _)| {
        text[i..]
            .lines()
            .next()
            .is_some_and(|l| l.trim_end().ends_with(marker))
    });
    if found {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{field}: {} is not a PEM file with a `-----BEGIN ...{marker}` block",
            path.display()
        )))
    }
}

/// etcd user and password. The password is a [`Secret`]: it is never printed by `Debug` and
/// never serialized (a config written back out has no password; load it from a file or the
/// environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// etcd user name.
    pub user: String,
    /// The user's password.
    #[serde(skip_serializing)]
    pub password: Secret,
}

impl AuthConfig {
    /// A user and its password.
    #[must_use]
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        AuthConfig {
            user: user.into(),
            password: password.into(),
        }
    }
}

/// A string that must not leak: `Debug` and `Display` print `***`, and it has no `Serialize`.
/// [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to the etcd client. Never log what this returns.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is the empty string.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
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

    /// Checks the transport and credential settings: endpoint schemes agree with the TLS
    /// setting (no silent downgrade to plaintext, no guessing of trust roots), certificate and
    /// key come together, the PEM files are readable, and a user has a password.
    fn validate_security(&self) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidConfig(s));
        for e in &self.endpoints {
            let lower = e.to_ascii_lowercase();
            match (
                &self.tls,
                lower.starts_with("https://"),
                lower.starts_with("http://"),
            ) {
                (None, true, _) => {
                    return bad(format!(
                        "endpoints: {e:?} is https:// but no TLS settings are given; set \
                         tls.ca_cert (--ca-cert) to the CA that signed etcd's certificate"
                    ))
                }
                (Some(_), _, true) => {
                    return bad(format!(
                        "endpoints: {e:?} is plaintext http:// but TLS settings are given; use \
                         https:// (refusing to mix TLS and plaintext)"
                    ))
                }
                (Some(_), false, false) => {
                    return bad(format!(
                        "endpoints: {e:?} needs an explicit https:// scheme when TLS is set"
                    ))
                }
                _ => {}
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if let Some(auth) = &self.auth {
            if auth.user.is_empty() {
                return bad("auth.user: must not be empty".into());
            }
            if auth.password.is_empty() {
                return bad(format!(
                    "auth.password: user {:?} has an empty password",
                    auth.user
                ));
            }
        }
        Ok(())
    }

    /// Sets the policy for an id taken while this server was away.
    #[must_use]
    pub fn with_on_id_taken(mut self, policy: IdTakenPolicy) -> Self {
        self.on_id_taken = policy;
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
            check_endpoint(e).map_err(|why| {
                Error::InvalidConfig(format!(
                    "endpoints: {e:?} is not an etcd endpoint ({why}); write http://host:port"
                ))
            })?;
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
        if self.watch_idle_timeout <= self.progress_interval {
            return bad("watch_idle_timeout: must be longer than progress_interval".into());
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
        if let Some(h) = &self.health {
            crate::health::HttpHealthProbe::new(&h.url, h.timeout)?;
            if h.interval.is_zero() || h.timeout.is_zero() {
                return bad("health: interval and timeout must be more than zero".into());
            }
        }
        if let Some(e) = &self.eviction {
            if e.min_reporters == 0 || e.window.is_zero() {
                return bad("eviction: min_reporters and window must be more than zero".into());
            }
        }
        self.validate_security()?;
        KeyLayout::new(&self.prefix)
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

    /// Overrides settings from the `DARKRIFT_ETCD_*` environment variables of
    /// [`layers::SETTINGS`] (the names the CLI reads, e.g. `ENDPOINTS`, `PREFIX`, `LEASE_TTL`,
    /// `REQUEST_TIMEOUT`, `CA_CERT`, `USER`, `PASSWORD_FILE`, `HEALTH_URL`). Unset or empty
    /// variables change nothing; durations read `10`, `10s`, `1500ms`, `1m`. A variable under
    /// the prefix that nothing reads is logged as a warning naming the closest known one.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming a variable whose value does not parse.
    pub fn with_env(self) -> Result<Self> {
        let layered =
            layers::Layers::from_env().resolve_over(self, std::collections::BTreeMap::default())?;
        for unknown in &layered.unknown_vars {
            tracing::warn!("{unknown}");
        }
        Ok(layered.settings.connector)
    }

    /// [`ConnectorConfig::with_env`] over any variable source (testable without touching the
    /// process environment): `var` is asked for each name without the `DARKRIFT_ETCD_`
    /// prefix. Only connector settings are read (not the registering server's identity).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming a variable whose value does not parse.
    pub fn with_vars(self, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let vars = layers::SETTINGS
            .iter()
            .filter(|s| s.scope == layers::Scope::Connector)
            .flat_map(|s| std::iter::once(s.env).chain(s.env_aliases.iter().copied()))
            .filter_map(|name| {
                let value = var(name.strip_prefix(layers::ENV_PREFIX)?)?;
                (!value.is_empty()).then(|| (name.to_owned(), value))
            })
            .collect();
        let layers = layers::Layers {
            vars,
            ..layers::Layers::default()
        };
        Ok(layers
            .resolve_over(self, std::collections::BTreeMap::default())?
            .settings
            .connector)
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

/// Serde for `Duration`: written as (fractional) seconds, read from seconds or a string with
/// a unit (`"10s"`, `"1500ms"`, `"1m"`).
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    /// A number of seconds, or a string in any form [`super::layers::parse_duration`] reads.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Secs(f64),
        Text(String),
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Written::deserialize(d)? {
            Written::Secs(v) => Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom),
            Written::Text(t) => super::layers::parse_duration(&t).map_err(serde::de::Error::custom),
        }
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
                endpoints: vec!["notaurl".into()],
                ..ok.clone()
            },
            ConnectorConfig {
                endpoints: vec!["ftp://a:1".into()],
                ..ok.clone()
            },
            ConnectorConfig {
                endpoints: vec!["http://a:0".into()],
                ..ok.clone()
            },
            ConnectorConfig {
                endpoints: vec!["http://a:1/v3/kv".into()],
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
    fn endpoint_forms() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd-1:2379/",
            "localhost:2379",
            "http://[::1]:2379",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "notaurl",
            "http://",
            "http://:2379",
            "http://a:b",
            "http://[::1:2379",
            "a b:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

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

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    /// A directory with `ca.pem`, `cert.pem` (certificate markers) and `key.pem` (key markers).
    fn pem_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), CERT_PEM).unwrap();
        std::fs::write(dir.path().join("cert.pem"), CERT_PEM).unwrap();
        std::fs::write(dir.path().join("key.pem"), KEY_PEM).unwrap();
        dir
    }

    fn invalid(c: &ConnectorConfig) -> String {
        match c.validate() {
            Err(Error::InvalidConfig(why)) => why,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn tls_and_endpoint_schemes_must_agree() {
        let dir = pem_dir();
        let tls = TlsConfig::new(dir.path().join("ca.pem"));
        let https = ConnectorConfig::new(["https://127.0.0.1:2379"]);
        assert!(https.clone().with_tls(tls.clone()).validate().is_ok());
        assert!(invalid(&https).contains("no TLS settings"));
        let http = ConnectorConfig::new(["http://127.0.0.1:2379"]).with_tls(tls.clone());
        assert!(invalid(&http).contains("plaintext http://"));
        let bare = ConnectorConfig::new(["127.0.0.1:2379"]).with_tls(tls);
        assert!(invalid(&bare).contains("https://"));
        // Mixed endpoints are refused too, whichever comes first.
        let mixed = ConnectorConfig::new(["http://a:1", "https://b:1"]);
        assert!(invalid(&mixed).contains("no TLS settings"));
    }

    #[test]
    fn client_cert_and_key_come_together_and_must_be_readable_pem() {
        let dir = pem_dir();
        let p = |f: &str| dir.path().join(f);
        let base = ConnectorConfig::new(["https://127.0.0.1:2379"]);
        let ok = base
            .clone()
            .with_tls(TlsConfig::new(p("ca.pem")).with_client_cert(p("cert.pem"), p("key.pem")));
        assert!(ok.validate().is_ok());
        let mut no_key = TlsConfig::new(p("ca.pem"));
        no_key.cert = Some(p("cert.pem"));
        assert!(invalid(&base.clone().with_tls(no_key)).contains("tls.key"));
        let mut no_cert = TlsConfig::new(p("ca.pem"));
        no_cert.key = Some(p("key.pem"));
        assert!(invalid(&base.clone().with_tls(no_cert)).contains("tls.cert"));
        let missing = base.clone().with_tls(TlsConfig::new(p("nope.pem")));
        let why = invalid(&missing);
        assert!(
            why.contains("tls.ca_cert") && why.contains("cannot read"),
            "{why}"
        );
        // Certificate and key swapped: named before any connection is tried.
        let swapped = base
            .clone()
            .with_tls(TlsConfig::new(p("ca.pem")).with_client_cert(p("key.pem"), p("cert.pem")));
        assert!(invalid(&swapped).contains("tls.cert"));
        std::fs::write(p("garbage"), "not a certificate").unwrap();
        let not_pem = base.with_tls(TlsConfig::new(p("garbage")));
        let why = invalid(&not_pem);
        assert!(
            why.contains("tls.ca_cert") && why.contains("not a PEM"),
            "{why}"
        );
    }

    #[test]
    fn auth_needs_user_and_password() {
        let base = ConnectorConfig::default();
        assert!(base.clone().with_auth("darkrift", "pw").validate().is_ok());
        assert!(invalid(&base.clone().with_auth("", "pw")).contains("auth.user"));
        assert!(invalid(&base.with_auth("darkrift", "")).contains("auth.password"));
    }

    #[test]
    fn the_password_is_never_printed_nor_serialized() {
        let c = ConnectorConfig::default().with_auth("darkrift", "hunter2-secret");
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
        assert_eq!(Secret::new("hunter2").to_string(), "***");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        // Reading a password from a config file works; writing one back never does.
        let read: ConnectorConfig =
            serde_json::from_str(r#"{"auth":{"user":"u","password":"p"}}"#).unwrap();
        assert_eq!(
            read.auth.map(|a| a.password.expose().to_owned()),
            Some("p".into())
        );
    }
}
