//! The single table of settings, [`SETTINGS`]: for each one its TOML key, `DARKRIFT_ETCD_*`
//! variable, flag, how a value is parsed into [`Settings`] and how it is shown. The merge
//! order that applies it lives in [`super::layers`], which re-exports these items.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::durations::{format_duration, parse_duration};
use super::security::read_password_file;
use super::{AuthConfig, ConnectorConfig, EvictionConfig, Secret, TlsConfig};
use crate::health::HealthConfig;

/// Which part of the program a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A [`ConnectorConfig`] field: every command and the library read it.
    Connector,
    /// The identity a server registers with (`darkrift-etcd register`).
    Server,
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

pub(super) type Apply = fn(&mut Settings, &str) -> std::result::Result<(), String>;
pub(super) type Show = fn(&Settings) -> Option<String>;

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
    pub(super) apply: Apply,
    pub(super) show: Show,
}

/// A comma-separated list, items trimmed, empty items dropped (`a, b,` is `[a, b]`).
fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
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
        "etcd endpoints, comma-separated (http://host:port, https:// with TLS; host:port is http://)",
        apply: |s, v| {
            s.connector.endpoints = comma_list(v);
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
    setting!("watch_groups", "WATCH_GROUPS", "watch-groups", Connector, "GROUPS",
        "watch only these groups, comma-separated (own group included); empty: every group",
        apply: |s, v| {
            s.connector.watch_groups = comma_list(v);
            Ok(())
        },
        show: |s| Some(s.connector.watch_groups.join(","))),
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

impl Setting {
    /// This setting's value in `settings` as text (`***` for a secret); `None` when unset.
    #[must_use]
    pub fn shown(&self, settings: &Settings) -> Option<String> {
        (self.show)(settings).map(|v| if self.secret { "***".into() } else { v })
    }

    /// Its value when nothing sets it (what `--help` shows); `None` when it has none.
    #[must_use]
    pub fn default_shown(&self) -> Option<String> {
        self.shown(&Settings {
            connector: ConnectorConfig::default(),
            server: ServerSettings::default(),
        })
        .filter(|v| !v.is_empty())
    }
}

impl PartialEq for Setting {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Setting {}
