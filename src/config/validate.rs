//! Pure validation of [`ConnectorConfig`]: endpoints, durations, limits, the prefix (which
//! becomes a [`KeyLayout`]) and the shape of the security settings. It reads no file and builds
//! no client: the TLS files are read and checked when a connector connects
//! ([`super::TlsConfig::read_pem_files`]).

use std::time::Duration;

use super::ConnectorConfig;
use crate::error::{Error, Result};
use crate::keys::KeyLayout;

impl ConnectorConfig {
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
            crate::health::parse_url(&h.url)?;
            if h.interval.is_zero() || h.timeout.is_zero() {
                return bad("health: interval and timeout must be more than zero".into());
            }
        }
        if let Some(e) = &self.eviction {
            if e.min_reporters == 0 || e.window.is_zero() {
                return bad("eviction: min_reporters and window must be more than zero".into());
            }
        }
        for group in &self.watch_groups {
            crate::record::validate_group(group)
                .map_err(|e| Error::InvalidConfig(format!("watch_groups: {e}")))?;
        }
        self.validate_security()?;
        KeyLayout::new(&self.prefix)
    }

    /// Checks the transport and credential settings: endpoint schemes agree with the TLS
    /// setting (no silent downgrade to plaintext, no guessing of trust roots), certificate and
    /// key come together, and a user has a password. The files are not read here.
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
            match (&tls.cert, &tls.key) {
                (Some(_), None) => {
                    return bad("tls.cert: a client certificate needs its key (tls.key)".into())
                }
                (None, Some(_)) => {
                    return bad("tls.key: a client key needs its certificate (tls.cert)".into())
                }
                _ => {}
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsConfig;

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
                watch_groups: vec!["lobby".into(), "a/b".into()],
                ..ok.clone()
            },
            ConnectorConfig {
                watch_groups: vec![String::new()],
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

    fn invalid(c: &ConnectorConfig) -> String {
        match c.validate() {
            Err(Error::InvalidConfig(why)) => why,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn tls_and_endpoint_schemes_must_agree() {
        // No file is read: the CA's path need not exist.
        let tls = TlsConfig::new("/nonexistent/ca.pem");
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
    fn client_cert_and_key_come_together() {
        // Validation reads no file: these paths need not exist (they are read at connect,
        // see `security`).
        let p = |f: &str| std::path::Path::new("/nonexistent").join(f);
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
        assert!(invalid(&base.with_tls(no_cert)).contains("tls.cert"));
    }

    #[test]
    fn auth_needs_user_and_password() {
        let base = ConnectorConfig::default();
        assert!(base.clone().with_auth("darkrift", "pw").validate().is_ok());
        assert!(invalid(&base.clone().with_auth("", "pw")).contains("auth.user"));
        assert!(invalid(&base.with_auth("darkrift", "")).contains("auth.password"));
    }

    #[test]
    fn a_health_url_is_checked_without_building_a_client() {
        let mut c = ConnectorConfig {
            health: Some(crate::health::HealthConfig {
                url: "https://localhost/health".into(),
                ..crate::health::HealthConfig::default()
            }),
            ..ConnectorConfig::default()
        };
        assert!(invalid(&c).contains("health.url"));
        c.health = Some(crate::health::HealthConfig::default());
        assert!(c.validate().is_ok());
    }
}
