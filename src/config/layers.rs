//! One configuration path for the library and the CLI.
//!
//! Every setting is resolved the same way, lowest to highest precedence: its default, the TOML
//! file (`--config`), its `DARKRIFT_ETCD_*` variable, its command-line flag: that merge order,
//! and where each value came from, is this file's job. [`SETTINGS`] (in `settings.rs`, re-exported
//! here) is the single table of settings: the TOML key, the variable, the flag, how a value is
//! parsed and how it is shown. The CLI builds its flags from it, [`ConnectorConfig::with_vars`] reads
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
use std::path::PathBuf;

use super::ConnectorConfig;
use crate::error::{Error, Result};

pub use super::durations::{format_duration, parse_duration};
pub use super::env::{UnknownVar, ENV_PREFIX};
pub use super::security::read_password_file;
pub use super::settings::{setting, Scope, ServerSettings, Setting, Settings, SETTINGS};

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
                value: s.shown(&self.settings),
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
    use crate::config::{AuthConfig, EvictionConfig, TlsConfig};
    use crate::health::HealthConfig;

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
