//! Transport and credential settings (TLS files, etcd user, the [`Secret`] password), reading
//! a password file ([`read_password_file`], while the settings are resolved) and the one place
//! the TLS files are read: [`TlsConfig::read_pem_files`], called when a connector connects. [`ConnectorConfig::validate`](super::ConnectorConfig::validate) checks only their
//! shape and reads nothing, so that validating settings stays pure.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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

    /// Reads the PEM files and checks that each holds the block it should (certificates for
    /// `ca_cert` and `cert`, a private key for `key`), so that a wrong path or a swapped
    /// certificate and key fail with the field's name rather than later as an anonymous
    /// handshake failure (rustls silently ignores unparsable CA files). Called at connect,
    /// before any network attempt.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field: the file cannot be read, or it is not a PEM
    /// file with the expected block.
    pub fn read_pem_files(&self) -> Result<PemFiles> {
        let ca_cert = read_pem("tls.ca_cert", &self.ca_cert, CERT_MARKER)?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read_pem("tls.cert", cert, CERT_MARKER)?,
                read_pem("tls.key", key, KEY_MARKER)?,
            )),
            // A lone certificate or key is refused by `validate`; read it anyway so that a
            // caller who skipped validation still hears about an unreadable file.
            (Some(cert), None) => {
                read_pem("tls.cert", cert, CERT_MARKER)?;
                None
            }
            (None, Some(key)) => {
                read_pem("tls.key", key, KEY_MARKER)?;
                None
            }
            (None, None) => None,
        };
        Ok(PemFiles { ca_cert, identity })
    }
}

/// The contents of a [`TlsConfig`]'s files, checked to hold the expected PEM blocks.
#[derive(Clone)]
pub struct PemFiles {
    /// The CA certificate(s).
    pub ca_cert: Vec<u8>,
    /// The client certificate and its key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for PemFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is a secret: print sizes only.
        f.debug_struct("PemFiles")
            .field("ca_cert", &self.ca_cert.len())
            .field(
                "identity",
                &self.identity.as_ref().map(|(c, k)| (c.len(), k.len())),
            )
            .finish()
    }
}

const CERT_MARKER: &str = "CERTIFICATE-----";
const KEY_MARKER: &str = "PRIVATE KEY-----";

/// Reads `path` and checks it with [`has_pem_block`]; errors name `field`.
fn read_pem(field: &str, path: &Path, marker: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::InvalidConfig(format!("{field}: cannot read {}: {e}", path.display()))
    })?;
    if has_pem_block(&bytes, marker) {
        Ok(bytes)
    } else {
        Err(Error::InvalidConfig(format!(
            "{field}: {} is not a PEM file with a `-----BEGIN ...{marker}` block",
            path.display()
        )))
    }
}

/// Whether `bytes` hold a line `-----BEGIN ...<marker>` (pure: the check apart from the read).
fn has_pem_block(bytes: &[u8], marker: &str) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("-----BEGIN ").any(|(i, _)| {
        text[i..]
            .lines()
            .next()
            .is_some_and(|l| l.trim_end().ends_with(marker))
    })
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

/// Reads a password file: one trailing line break is not part of the password. The error
/// names the file, never its content.
///
/// # Errors
/// A message naming the file when it cannot be read or is empty.
pub fn read_password_file(path: &Path) -> std::result::Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if password.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(Secret::new(password))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConnectorConfig;

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    #[test]
    fn pem_blocks_are_recognised_by_their_marker() {
        assert!(has_pem_block(CERT_PEM.as_bytes(), CERT_MARKER));
        assert!(has_pem_block(KEY_PEM.as_bytes(), KEY_MARKER));
        let ec_key = "x\n-----BEGIN EC PRIVATE KEY-----\nMHc\n";
        assert!(has_pem_block(ec_key.as_bytes(), KEY_MARKER));
        // Swapped certificate and key, garbage, a marker only in the END line.
        assert!(!has_pem_block(KEY_PEM.as_bytes(), CERT_MARKER));
        assert!(!has_pem_block(CERT_PEM.as_bytes(), KEY_MARKER));
        assert!(!has_pem_block(b"not a certificate", CERT_MARKER));
        assert!(!has_pem_block(b"-----END CERTIFICATE-----", CERT_MARKER));
        assert!(!has_pem_block(&[0xff, 0xfe, 0x00], CERT_MARKER));
    }

    #[test]
    fn the_files_are_read_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        std::fs::write(p("ca.pem"), CERT_PEM).unwrap();
        std::fs::write(p("cert.pem"), CERT_PEM).unwrap();
        std::fs::write(p("key.pem"), KEY_PEM).unwrap();
        std::fs::write(p("garbage"), "not a certificate").unwrap();
        let err = |tls: TlsConfig| match tls.read_pem_files() {
            Err(Error::InvalidConfig(why)) => why,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let read = TlsConfig::new(p("ca.pem"))
            .with_client_cert(p("cert.pem"), p("key.pem"))
            .read_pem_files()
            .unwrap();
        assert_eq!(read.ca_cert, CERT_PEM.as_bytes());
        assert_eq!(
            read.identity,
            Some((CERT_PEM.as_bytes().to_vec(), KEY_PEM.as_bytes().to_vec()))
        );
        let why = err(TlsConfig::new(p("nope.pem")));
        assert!(
            why.contains("tls.ca_cert") && why.contains("cannot read"),
            "{why}"
        );
        let why = err(TlsConfig::new(p("garbage")));
        assert!(
            why.contains("tls.ca_cert") && why.contains("not a PEM"),
            "{why}"
        );
        // Certificate and key swapped: the certificate is named first.
        let why = err(TlsConfig::new(p("ca.pem")).with_client_cert(p("key.pem"), p("cert.pem")));
        assert!(why.starts_with("tls.cert"), "{why}");
        let why = err(TlsConfig::new(p("ca.pem")).with_client_cert(p("cert.pem"), p("nope")));
        assert!(
            why.starts_with("tls.key") && why.contains("cannot read"),
            "{why}"
        );
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
