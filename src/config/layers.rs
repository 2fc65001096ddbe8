//! One configuration path for the library and the CLI.
//!
//! Every setting is resolved the same way, lowest to highest precedence: its default, the TOML
//! file (`--config`), its `DARKRIFT_ETCD_*` variable, its command-line flag. [`SETTINGS`] is
//! the single table of settings: the TOML key, the variable, the flag, how a value is parsed
//! and how it is shown. The CLI builds its flags from it, [`ConnectorConfig::with_vars`] reads
//! the variables through it, and [`Layered::describe`] says where each effective value came
//! from (`darkrift-etcd config`).
//!
//! Durations are written alike everywhere: `10` (seconds), `10s`, `1500ms`, `1m`
//! ([`parse_duration`], from `durations.rs`). The variables themselves (prefix, reading the
//! process environment, typo warnings) are `env.rs`'s job; this file holds the table and the
//! merge order. [`ENV_PREFIX`], [`UnknownVar`], [`read_password_file`] and the duration
//! functions are re-exported here, where they have always been reachable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::{AuthConfig, ConnectorConfig, EvictionConfig, Secret, TlsConfig};
use crate::error::{Error, Result};
use crate::health::HealthConfig;

pub use super::durations::{format_duration, parse_duration};
pub use super::env::{UnknownVar, ENV_PREFIX};
pub use super::security::read_password_file;

/// Which part of the program a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A [`ConnectorConfig`] field: every command and the library read it.
    Connector,
    /// The identity a server registers with (`darkrift-etcd register`).
    Server,
}

/// Where a value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML file.
    File,
    /// A `DARKRIFT_ETCD_*` variable.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        })
    }
}

/// A value's source and the name it was given under there (file path, variable, flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The layer.
    pub source: Source,
    /// The file's path, the variable's name or `--flag`; empty for defaults.
    pub name: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "{}", self.source)
        } else {
            write!(f, "{} {}", self.source, self.name)
        }
    }
}

/// The identity `darkrift-etcd register` registers with; `None` where nothing set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// DarkRift group.
    pub group: Option<String>,
    /// Host peers dial (on Kubernetes, the pod's IP through `DARKRIFT_ETCD_HOST`).
    pub host: Option<String>,
    /// Port peers dial.
    pub port: Option<u16>,
    /// Server properties.
    pub properties: BTreeMap<String, String>,
}

/// Everything the layers resolve: the connector's settings and the server's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The connector's settings.
    pub connector: ConnectorConfig,
    /// The registering server's identity.
    pub server: ServerSettings,
}

type Apply = fn(&mut Settings, &str) -> std::result::Result<(), String>;
type Show = fn(&Settings) -> Option<String>;

/// One setting: its names in each layer, its parser and its printer.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// TOML key (dotted inside a table: `tls.ca_cert`).
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Other accepted variables (e.g. `DARKRIFT_ETCD_TTL`).
    pub env_aliases: &'static [&'static str],
    /// Long flag, without the dashes.
    pub flag: &'static str,
    /// What the setting means (the flag's help).
    pub about: &'static str,
    /// Placeholder of the value in help.
    pub value_name: &'static str,
    /// Who reads it.
    pub scope: Scope,
    /// Never printed.
    pub secret: bool,
    apply: Apply,
    show: Show,
}

/// Parses `text` as a number; the message names the expected range.
fn number<T: std::str::FromStr>(text: &str, what: &str) -> std::result::Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not {what}"))
}

fn tls(s: &mut Settings) -> &mut TlsConfig {
    s.connector
        .tls
        .get_or_insert_with(|| TlsConfig::new(PathBuf::new()))
}

fn auth(s: &mut Settings) -> &mut AuthConfig {
    s.connector
        .auth
        .get_or_insert_with(|| AuthConfig::new(String::new(), Secret::default()))
}

fn health(s: &mut Settings) -> &mut HealthConfig {
    s.connector.health.get_or_insert_with(HealthConfig::default)
}

fn eviction(s: &mut Settings) -> &mut EvictionConfig {
    s.connector
        .eviction
        .get_or_insert_with(EvictionConfig::default)
}

fn policy<T: serde::de::DeserializeOwned>(
    text: &str,
    choices: &str,
) -> std::result::Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_owned()))
        .map_err(|_| format!("{text:?} is not one of {choices}"))
}

fn show_policy<T: serde::Serialize>(p: &T) -> Option<String> {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn show_path(p: Option<&PathBuf>) -> Option<String> {
    p.filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string())
}

macro_rules! setting {
    ($key:literal, $env:literal, $flag:literal, $scope:ident, $value:literal, $about:literal,
     apply: $apply:expr, show: $show:expr $(, aliases: $aliases:expr)? $(, secret: $secret:expr)?) => {
        Setting {
            key: $key,
            env: concat!("DARKRIFT_ETCD_", $env),
            env_aliases: setting!(@aliases $($aliases)?),
            flag: $flag,
            about: $about,
            value_name: $value,
            scope: Scope::$scope,
            secret: setting!(@secret $($secret)?),
            apply: $apply,
            show: $show,
        }
    };
    (@aliases) => { &[] };
    (@aliases $a:expr) => { $a };
    (@secret) => { false };
    (@secret $s:expr) => { $s };
}

/// Every setting, in the order `darkrift-etcd config` prints them.
pub static SETTINGS: &[Setting] = &[
    setting!("endpoints", "ENDPOINTS", "endpoints", Connector, "URLS",
        "etcd endpoints, comma-separated (http://host:port, https:// with TLS)",
        apply: |s, v| {
            s.connector.endpoints = v.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect();
            Ok(())
        },
        show: |s| Some(s.connector.endpoints.join(","))),
    setting!("prefix", "PREFIX", "prefix", Connector, "PREFIX",
        "key prefix of the registry (several clusters can share one etcd)",
        apply: |s, v| { v.clone_into(&mut s.connector.prefix); Ok(()) },
        show: |s| Some(s.connector.prefix.clone())),
    setting!("lease_ttl", "LEASE_TTL", "ttl", Connector, "DURATION",
        "lease TTL, whole seconds: a crashed server leaves within about this long",
        apply: |s, v| { s.connector.lease_ttl = parse_duration(v)?; Ok(()) },
        show: |s| Some(format_duration(s.connector.lease_ttl)),
        aliases: &["DARKRIFT_ETCD_TTL"]),
    setting!("connect_timeout", "CONNECT_TIMEOUT", "connect-timeout", Connector, "DURATION",
        "bound on reaching etcd",
        apply: |s, v| { s.connector.connect_timeout = parse_duration(v)?; Ok(()) },
        show: |s| Some(format_duration(s.connector.connect_timeout))),
    setting!("request_timeout", "REQUEST_TIMEOUT", "request-timeout", Connector, "DURATION",
        "bound on each etcd request, retries included",
        apply: |s, v| { s.connector.request_timeout = parse_duration(v)?; Ok(()) },
        show: |s| Some(format_duration(s.connector.request_timeout))),
    setting!("id_space", "ID_SPACE", "id-space", Connector, "N",
        "size of the id space (ids 1..=N); every server of a prefix must agree",
        apply: |s, v| { s.connector.id_space = number(v, "in 1..=65535")?; Ok(()) },
        show: |s| Some(s.connector.id_space.to_string())),
    setting!("spread_window", "SPREAD_WINDOW", "spread-window", Connector, "N",
        "free ids after the cursor a first allocation attempt spreads over",
        apply: |s, v| { s.connector.spread_window = number(v, "in 1..=65535")?; Ok(()) },
        show: |s| Some(s.connector.spread_window.to_string())),
    setting!("max_alloc_attempts", "MAX_ALLOC_ATTEMPTS", "max-alloc-attempts", Connector, "N",
        "allocation transactions per registration",
        apply: |s, v| { s.connector.max_alloc_attempts = number(v, "a positive number")?; Ok(()) },
        show: |s| Some(s.connector.max_alloc_attempts.to_string())),
    setting!("event_queue", "EVENT_QUEUE", "event-queue", Connector, "N",
        "capacity of the event queue",
        apply: |s, v| { s.connector.event_queue = number(v, "a positive number")?; Ok(()) },
        show: |s| Some(s.connector.event_queue.to_string())),
    setting!("page_size", "PAGE_SIZE", "page-size", Connector, "N",
        "page size of snapshot reads (1..=10000)",
        apply: |s, v| { s.connector.page_size = number(v, "in 1..=10000")?; Ok(()) },
        show: |s| Some(s.connector.page_size.to_string())),
    setting!("on_id_taken", "ON_ID_TAKEN", "on-id-taken", Connector, "POLICY",
        "after a lease loss, if the id was taken: fail-stop or new-id",
        apply: |s, v| { s.connector.on_id_taken = policy(v, "fail-stop, new-id")?; Ok(()) },
        show: |s| show_policy(&s.connector.on_id_taken)),
    setting!("on_key_removed", "ON_KEY_REMOVED", "on-key-removed", Connector, "POLICY",
        "when our key is removed by someone else (e.g. `evict`): restore or stop",
        apply: |s, v| { s.connector.on_key_removed = policy(v, "restore, stop")?; Ok(()) },
        show: |s| show_policy(&s.connector.on_key_removed)),
    setting!("progress_interval", "PROGRESS_INTERVAL", "progress-interval", Connector, "DURATION",
        "watch silence before asking etcd for progress",
        apply: |s, v| { s.connector.progress_interval = parse_duration(v)?; Ok(()) },
        show: |s| Some(format_duration(s.connector.progress_interval))),
    setting!("watch_idle_timeout", "WATCH_IDLE_TIMEOUT", "watch-idle-timeout", Connector, "DURATION",
        "watch silence before the stream is recreated",
        apply: |s, v| { s.connector.watch_idle_timeout = parse_duration(v)?; Ok(()) },
        show: |s| Some(format_duration(s.connector.watch_idle_timeout))),
    setting!("tls.ca_cert", "CA_CERT", "ca-cert", Connector, "PEM",
        "CA certificate that signed etcd's; turns TLS on (endpoints must be https://)",
        apply: |s, v| { tls(s).ca_cert = v.into(); Ok(()) },
        show: |s| show_path(s.connector.tls.as_ref().map(|t| &t.ca_cert))),
    setting!("tls.cert", "CERT", "cert", Connector, "PEM",
        "client certificate for mutual TLS; needs --key and --ca-cert",
        apply: |s, v| { tls(s).cert = Some(v.into()); Ok(()) },
        show: |s| show_path(s.connector.tls.as_ref().and_then(|t| t.cert.as_ref()))),
    setting!("tls.key", "KEY", "key", Connector, "PEM",
        "private key of --cert",
        apply: |s, v| { tls(s).key = Some(v.into()); Ok(()) },
        show: |s| show_path(s.connector.tls.as_ref().and_then(|t| t.key.as_ref()))),
    setting!("auth.user", "USER", "user", Connector, "USER",
        "etcd user; needs --password or --password-file",
        apply: |s, v| { v.clone_into(&mut auth(s).user); Ok(()) },
        show: |s| s.connector.auth.as_ref().map(|a| a.user.clone())),
    setting!("auth.password", "PASSWORD", "password", Connector, "PASSWORD",
        "password of --user (prefer --password-file: arguments are visible to local users)",
        apply: |s, v| { auth(s).password = Secret::new(v); Ok(()) },
        show: |s| s.connector.auth.as_ref().filter(|a| !a.password.is_empty()).map(|_| "***".to_owned()),
        secret: true),
    setting!("auth.password_file", "PASSWORD_FILE", "password-file", Connector, "PATH",
        "file holding the password of --user (one trailing newline is ignored)",
        apply: |s, v| { auth(s).password = read_password_file(Path::new(v))?; Ok(()) },
        show: |_| None),
    setting!("health.url", "HEALTH_URL", "health-url", Connector, "URL",
        "DarkRift health check: keep the lease alive only while GET URL answers 200",
        apply: |s, v| { v.clone_into(&mut health(s).url); Ok(()) },
        show: |s| s.connector.health.as_ref().map(|h| h.url.clone())),
    setting!("health.interval", "HEALTH_INTERVAL", "health-interval", Connector, "DURATION",
        "time between health checks",
        apply: |s, v| { health(s).interval = parse_duration(v)?; Ok(()) },
        show: |s| s.connector.health.as_ref().map(|h| format_duration(h.interval))),
    setting!("health.timeout", "HEALTH_TIMEOUT", "health-timeout", Connector, "DURATION",
        "bound on one health check",
        apply: |s, v| { health(s).timeout = parse_duration(v)?; Ok(()) },
        show: |s| s.connector.health.as_ref().map(|h| format_duration(h.timeout))),
    setting!("eviction.min_reporters", "EVICTION_MIN_REPORTERS", "eviction-min-reporters", Connector, "N",
        "peer-reported eviction (turns it on): distinct reporters needed",
        apply: |s, v| { eviction(s).min_reporters = number(v, "a positive number")?; Ok(()) },
        show: |s| s.connector.eviction.as_ref().map(|e| e.min_reporters.to_string())),
    setting!("eviction.window", "EVICTION_WINDOW", "eviction-window", Connector, "DURATION",
        "peer-reported eviction (turns it on): how recent a report must be",
        apply: |s, v| { eviction(s).window = parse_duration(v)?; Ok(()) },
        show: |s| s.connector.eviction.as_ref().map(|e| format_duration(e.window))),
    setting!("group", "GROUP", "group", Server, "GROUP",
        "DarkRift group of this server",
        apply: |s, v| { s.server.group = Some(v.to_owned()); Ok(()) },
        show: |s| s.server.group.clone()),
    setting!("host", "HOST", "host", Server, "HOST",
        "host other servers dial (on Kubernetes: the pod IP)",
        apply: |s, v| { s.server.host = Some(v.to_owned()); Ok(()) },
        show: |s| s.server.host.clone()),
    setting!("port", "PORT", "port", Server, "PORT",
        "port other servers dial (1..=65535)",
        apply: |s, v| { s.server.port = Some(number(v, "a port in 1..=65535")?); Ok(()) },
        show: |s| s.server.port.map(|p| p.to_string())),
    setting!("properties", "PROPERTIES", "property", Server, "KEY=VALUE",
    "server properties, key=value (repeat the flag; comma-separated in the variable)",
    apply: |s, v| {
        for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, val) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
            s.server.properties.insert(k.to_owned(), val.to_owned());
        }
        Ok(())
    },
    show: |s| (!s.server.properties.is_empty()).then(|| {
        s.server.properties.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    })),
];

/// The setting with TOML key `key`.
#[must_use]
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The inputs of one resolution.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// The TOML file, if any.
    pub file: Option<PathBuf>,
    /// The `DARKRIFT_ETCD_*` variables (others are ignored), unset or empty ones left out.
    pub vars: Vec<(String, String)>,
    /// Flag values by setting key, in command-line order (a repeatable flag appears once per
    /// occurrence).
    pub flags: Vec<(&'static str, String)>,
    /// Other variables the host reads itself (not warned about as unknown).
    pub also_known: Vec<String>,
}

/// The resolved settings and where each came from.
#[derive(Debug, Clone)]
pub struct Layered {
    /// The effective settings.
    pub settings: Settings,
    origins: BTreeMap<&'static str, Origin>,
    /// Variables under `DARKRIFT_ETCD_` that nothing reads.
    pub unknown_vars: Vec<UnknownVar>,
}

/// One line of [`Layered::describe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// The setting.
    pub setting: &'static Setting,
    /// Its effective value as text (`***` for secrets); `None` when unset.
    pub value: Option<String>,
    /// Where the value came from.
    pub origin: Origin,
}

impl PartialEq for Setting {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Setting {}

impl Layered {
    /// Where setting `key` came from ([`Source::Default`] when no layer set it).
    #[must_use]
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin {
            source: Source::Default,
            name: String::new(),
        })
    }

    /// Every setting of `scopes` with its effective value and origin, secrets masked.
    #[must_use]
    pub fn describe(&self, scopes: &[Scope]) -> Vec<Described> {
        SETTINGS
            .iter()
            .filter(|s| scopes.contains(&s.scope))
            .map(|s| Described {
                setting: s,
                value: (s.show)(&self.settings).map(|v| if s.secret { "***".into() } else { v }),
                origin: self.origin(s.key),
            })
            .collect()
    }
}

/// The dotted keys a TOML document sets (`tls.ca_cert`), one table level deep.
fn toml_keys(text: &str) -> BTreeSet<String> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return BTreeSet::new();
    };
    let mut keys = BTreeSet::new();
    for (k, v) in &table {
        match v {
            toml::Value::Table(inner) => {
                keys.extend(inner.keys().map(|ik| format!("{k}.{ik}")));
            }
            _ => {
                keys.insert(k.clone());
            }
        }
    }
    keys
}

impl Layers {
    /// Resolves every setting: default < file < variable < flag, then checks how TLS and
    /// authentication settings pair up (the full check is [`ConnectorConfig::validate`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file, variable or flag whose value does not parse.
    pub fn resolve(&self) -> Result<Layered> {
        let (connector, origins) = self.read_file()?;
        self.resolve_over(connector, origins)
    }

    /// The file's settings and the keys it set.
    fn read_file(&self) -> Result<(ConnectorConfig, BTreeMap<&'static str, Origin>)> {
        let mut origins = BTreeMap::new();
        let connector = match &self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::InvalidConfig(format!("cannot read {}: {e}", path.display()))
                })?;
                let c = ConnectorConfig::from_toml_str(&text)
                    .map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))?;
                for key in toml_keys(&text) {
                    if let Some(s) = SETTINGS.iter().find(|s| s.key == key) {
                        origins.insert(
                            s.key,
                            Origin {
                                source: Source::File,
                                name: path.display().to_string(),
                            },
                        );
                    }
                }
                c
            }
            None => ConnectorConfig::default(),
        };
        Ok((connector, origins))
    }

    /// Applies the variables and flags over `connector` (the file is not read).
    pub(crate) fn resolve_over(
        &self,
        connector: ConnectorConfig,
        mut origins: BTreeMap<&'static str, Origin>,
    ) -> Result<Layered> {
        let mut settings = Settings {
            connector,
            server: ServerSettings::default(),
        };
        let env = self.env_values()?;
        let mut layer: BTreeMap<&'static str, (Origin, Vec<String>)> = env;
        let mut flags: BTreeMap<&'static str, (Origin, Vec<String>)> = BTreeMap::new();
        for (key, value) in &self.flags {
            let s = setting(key).ok_or_else(|| {
                Error::InvalidConfig(format!("no setting named {key:?} (a CLI bug)"))
            })?;
            flags
                .entry(s.key)
                .or_insert_with(|| {
                    (
                        Origin {
                            source: Source::Flag,
                            name: format!("--{}", s.flag),
                        },
                        Vec::new(),
                    )
                })
                .1
                .push(value.clone());
        }
        // A password and a password file from the same layer contradict each other; from
        // different layers the higher one wins.
        for l in [&layer, &flags] {
            if l.contains_key("auth.password") && l.contains_key("auth.password_file") {
                return Err(Error::InvalidConfig(format!(
                    "give either {} or {}, not both",
                    l["auth.password"].0.name, l["auth.password_file"].0.name
                )));
            }
        }
        if flags.contains_key("auth.password") {
            layer.remove("auth.password_file");
        }
        if flags.contains_key("auth.password_file") {
            layer.remove("auth.password");
        }
        layer.extend(flags);
        for s in SETTINGS {
            let Some((origin, values)) = layer.remove(s.key) else {
                continue;
            };
            if s.key == "properties" {
                settings.server.properties.clear();
            }
            let values = if s.key == "properties" {
                values
            } else {
                values.into_iter().last().into_iter().collect()
            };
            for v in &values {
                (s.apply)(&mut settings, v)
                    .map_err(|why| Error::InvalidConfig(format!("{}: {why}", origin.name)))?;
            }
            origins.insert(s.key, origin);
        }
        check_pairs(&settings.connector, &origins)?;
        Ok(Layered {
            settings,
            origins,
            unknown_vars: self.unknown_vars(),
        })
    }
}

/// TLS and authentication settings that do not pair up, named by where they were set.
fn check_pairs(c: &ConnectorConfig, origins: &BTreeMap<&'static str, Origin>) -> Result<()> {
    let named = |key: &str| {
        origins
            .get(key)
            .map_or_else(|| key.to_owned(), |o| o.name.clone())
    };
    if let Some(tls) = &c.tls {
        if tls.ca_cert.as_os_str().is_empty() {
            let what = if tls.cert.is_some() {
                "tls.cert"
            } else {
                "tls.key"
            };
            return Err(Error::InvalidConfig(format!(
                "{} needs a CA certificate (--ca-cert, DARKRIFT_ETCD_CA_CERT or tls.ca_cert)",
                named(what)
            )));
        }
    }
    if let Some(auth) = &c.auth {
        if auth.user.is_empty() {
            let what = if origins.contains_key("auth.password_file") {
                "auth.password_file"
            } else {
                "auth.password"
            };
            return Err(Error::InvalidConfig(format!(
                "{} needs a user (--user, DARKRIFT_ETCD_USER or auth.user)",
                named(what)
            )));
        }
        if auth.password.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "{} needs a password (--password, --password-file or their variables)",
                named("auth.user")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn layers(vars: &[(&str, &str)], flags: &[(&'static str, &str)]) -> Layers {
        Layers {
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            flags: flags.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            ..Layers::default()
        }
    }

    #[test]
    fn durations_read_alike_everywhere() {
        for (text, want) in [
            ("10", Duration::from_secs(10)),
            ("0.5", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1500ms", Duration::from_millis(1500)),
            ("1m", Duration::from_secs(60)),
            ("1m 30s", Duration::from_secs(90)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want));
        }
        for bad in ["", "soon", "-1", "10 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn precedence_is_default_file_env_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "prefix = \"/file\"\nlease_ttl = \"3s\"\nconnect_timeout = 2\nrequest_timeout = 4\n",
        )
        .unwrap();
        let mut l = layers(
            &[
                ("DARKRIFT_ETCD_LEASE_TTL", "1m"),
                ("DARKRIFT_ETCD_CONNECT_TIMEOUT", "1500ms"),
            ],
            &[("connect_timeout", "7s")],
        );
        l.file = Some(file.clone());
        let r = l.resolve().unwrap();
        let c = &r.settings.connector;
        assert_eq!(c.endpoints, [super::super::DEFAULT_ENDPOINT]);
        assert_eq!(r.origin("endpoints").source, Source::Default);
        assert_eq!(c.prefix, "/file");
        assert_eq!(r.origin("prefix").source, Source::File);
        assert_eq!(r.origin("prefix").name, file.display().to_string());
        assert_eq!(c.request_timeout, Duration::from_secs(4));
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert_eq!(
            r.origin("lease_ttl").to_string(),
            "env DARKRIFT_ETCD_LEASE_TTL"
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert_eq!(
            r.origin("connect_timeout").to_string(),
            "flag --connect-timeout"
        );
    }

    #[test]
    fn every_setting_has_a_variable_and_a_flag_and_they_are_distinct() {
        let mut envs = BTreeSet::new();
        let mut flags = BTreeSet::new();
        for s in SETTINGS {
            assert!(s.env.starts_with(ENV_PREFIX), "{}", s.key);
            assert!(envs.insert(s.env), "{} twice", s.env);
            assert!(flags.insert(s.flag), "--{} twice", s.flag);
        }
        // Each ConnectorConfig field has a setting (nested tables by their fields).
        let toml = toml::to_string(&ConnectorConfig {
            tls: Some(TlsConfig::new("ca").with_client_cert("c", "k")),
            auth: Some(AuthConfig::new("u", "p")),
            health: Some(HealthConfig::default()),
            eviction: Some(EvictionConfig::default()),
            ..ConnectorConfig::default()
        })
        .unwrap();
        for key in toml_keys(&toml) {
            assert!(setting(&key).is_some(), "no setting for {key}");
        }
    }

    #[test]
    fn register_identity_comes_from_variables_too() {
        let r = layers(
            &[
                ("DARKRIFT_ETCD_GROUP", "game"),
                ("DARKRIFT_ETCD_HOST", "10.1.2.3"),
                ("DARKRIFT_ETCD_PORT", "4296"),
                ("DARKRIFT_ETCD_TTL", "5s"),
                ("DARKRIFT_ETCD_PROPERTIES", "region=eu, tier=1"),
            ],
            &[("port", "4297")],
        )
        .resolve()
        .unwrap();
        let s = &r.settings;
        assert_eq!(s.server.group.as_deref(), Some("game"));
        assert_eq!(s.server.host.as_deref(), Some("10.1.2.3"));
        assert_eq!(s.server.port, Some(4297));
        assert_eq!(s.connector.lease_ttl, Duration::from_secs(5));
        assert_eq!(r.origin("lease_ttl").name, "DARKRIFT_ETCD_TTL");
        assert_eq!(s.server.properties.len(), 2);
        // Flags replace the variable's properties as a whole.
        let r = layers(
            &[("DARKRIFT_ETCD_PROPERTIES", "region=eu")],
            &[("properties", "a=1"), ("properties", "b=2")],
        )
        .resolve()
        .unwrap();
        let keys: Vec<&str> = r
            .settings
            .server
            .properties
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        let err = layers(
            &[("DARKRIFT_ETCD_TTL", "5"), ("DARKRIFT_ETCD_LEASE_TTL", "6")],
            &[],
        )
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn bad_values_name_their_origin() {
        let err = |vars: &[(&str, &str)], flags: &[(&'static str, &str)]| {
            layers(vars, flags).resolve().unwrap_err().to_string()
        };
        let e = err(&[("DARKRIFT_ETCD_REQUEST_TIMEOUT", "soon")], &[]);
        assert!(
            e.contains("DARKRIFT_ETCD_REQUEST_TIMEOUT") && e.contains("soon"),
            "{e}"
        );
        let e = err(&[], &[("id_space", "70000")]);
        assert!(e.contains("--id-space"), "{e}");
        let e = err(&[], &[("on_id_taken", "maybe")]);
        assert!(e.contains("fail-stop"), "{e}");
        let e = err(&[], &[("properties", "novalue")]);
        assert!(e.contains("key=value"), "{e}");
        let e = err(&[], &[("tls.cert", "c"), ("tls.key", "k")]);
        assert!(e.contains("--cert needs a CA"), "{e}");
        let e = err(&[], &[("auth.user", "u")]);
        assert!(e.contains("--user needs a password"), "{e}");
        let e = err(&[("DARKRIFT_ETCD_PASSWORD", "p")], &[]);
        assert!(e.contains("DARKRIFT_ETCD_PASSWORD needs a user"), "{e}");
        let e = err(&[], &[("auth.password", "p"), ("auth.password_file", "f")]);
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn a_flag_password_file_beats_a_variable_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let path = path.display().to_string();
        let r = layers(
            &[
                ("DARKRIFT_ETCD_USER", "u"),
                ("DARKRIFT_ETCD_PASSWORD", "from-env"),
            ],
            &[("auth.password_file", &path)],
        )
        .resolve()
        .unwrap();
        let auth = r.settings.connector.auth.as_ref().unwrap();
        assert_eq!(auth.password.expose(), "from-file");
        let shown = r.describe(&[Scope::Connector]);
        let pw = shown
            .iter()
            .find(|d| d.setting.key == "auth.password")
            .unwrap();
        assert_eq!(pw.value.as_deref(), Some("***"));
    }

    #[test]
    fn password_files_lose_one_newline_and_errors_hide_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        for (content, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw", "pw"),
            ("p w\n\n", "p w\n"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap().expose(), want);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).unwrap_err().contains("empty"));
        std::fs::write(&path, "secret-content\n").unwrap();
        let missing = read_password_file(&dir.path().join("nope")).unwrap_err();
        assert!(
            missing.contains("nope") && !missing.contains("secret"),
            "{missing}"
        );
    }

    #[test]
    fn a_mistyped_variable_is_named_with_the_closest_known_one() {
        let mut l = layers(
            &[
                ("DARKRIFT_ETCD_LEASE_TTLL", "5"),
                ("DARKRIFT_ETCD_ENDPOINT", "http://x:1"),
                ("DARKRIFT_ETCD_LOG_FORMAT", "json"),
            ],
            &[],
        );
        l.also_known = vec!["DARKRIFT_ETCD_LOG_FORMAT".into()];
        let r = l.resolve().unwrap();
        let lines: Vec<String> = r.unknown_vars.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("DARKRIFT_ETCD_LEASE_TTLL")
                && lines[0].ends_with("DARKRIFT_ETCD_LEASE_TTL?")
        );
        assert!(
            lines[1].ends_with("DARKRIFT_ETCD_ENDPOINTS?"),
            "{}",
            lines[1]
        );
    }
}
