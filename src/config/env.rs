//! The `DARKRIFT_ETCD_*` environment layer: which variables are read (the names come from
//! [`layers::SETTINGS`]), the library's [`ConnectorConfig::with_env`] and
//! [`ConnectorConfig::with_vars`], and the warning for a variable under the prefix that nothing
//! reads (most likely a typo), naming the closest known one.

use std::collections::BTreeMap;
use std::fmt;

use super::layers::{self, Layers, Origin, Source, SETTINGS};
use super::ConnectorConfig;
use crate::error::{Error, Result};

/// The prefix of every variable this crate reads.
pub const ENV_PREFIX: &str = "DARKRIFT_ETCD_";

/// A `DARKRIFT_ETCD_*` variable that no setting reads: most likely a typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVar {
    /// The variable as set.
    pub name: String,
    /// The known variable closest to it.
    pub closest: String,
}

impl fmt::Display for UnknownVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a darkrift-etcd variable and is ignored; did you mean {}?",
            self.name, self.closest
        )
    }
}

impl Layers {
    /// The process environment's `DARKRIFT_ETCD_*` variables, no file, no flags.
    #[must_use]
    pub fn from_env() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, v)| k.starts_with(ENV_PREFIX) && !v.is_empty())
            .collect();
        Layers {
            vars,
            ..Layers::default()
        }
    }

    /// The variables' values by setting key.
    pub(super) fn env_values(&self) -> Result<BTreeMap<&'static str, (Origin, Vec<String>)>> {
        let mut out: BTreeMap<&'static str, (Origin, Vec<String>)> = BTreeMap::new();
        for s in SETTINGS {
            let mut found = self.vars.iter().filter(|(k, v)| {
                (k == s.env || s.env_aliases.contains(&k.as_str())) && !v.is_empty()
            });
            let Some((name, value)) = found.next() else {
                continue;
            };
            if let Some((other, other_value)) = found.next() {
                if other_value != value {
                    return Err(Error::InvalidConfig(format!(
                        "{name}={value:?} and {other}={other_value:?} disagree; set one of them"
                    )));
                }
            }
            out.insert(
                s.key,
                (
                    Origin {
                        source: Source::Env,
                        name: name.clone(),
                    },
                    vec![value.clone()],
                ),
            );
        }
        Ok(out)
    }

    /// Set variables under the prefix that nothing reads, each with its closest known name.
    pub(super) fn unknown_vars(&self) -> Vec<UnknownVar> {
        let known: Vec<&str> = SETTINGS
            .iter()
            .flat_map(|s| std::iter::once(s.env).chain(s.env_aliases.iter().copied()))
            .chain(self.also_known.iter().map(String::as_str))
            .collect();
        self.vars
            .iter()
            .map(|(name, _)| name)
            .filter(|name| name.starts_with(ENV_PREFIX) && !known.contains(&name.as_str()))
            .filter_map(|name| {
                let closest = known.iter().min_by_key(|k| strsim::levenshtein(k, name))?;
                Some(UnknownVar {
                    name: name.clone(),
                    closest: (*closest).to_owned(),
                })
            })
            .collect()
    }
}

impl ConnectorConfig {
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
                let value = var(name.strip_prefix(ENV_PREFIX)?)?;
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
}
