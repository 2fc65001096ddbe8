//! TLS material for the members' client URLs, and the client options that trust it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::TestingError;

/// TLS material for the members' client URLs; see
/// [`EtcdClusterBuilder::client_tls`](crate::EtcdClusterBuilder::client_tls).
///
/// All paths are PEM files. Peer traffic between members stays plaintext on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate that signed `cert` and, with `client_cert_auth`, the client
    /// certificates etcd accepts (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// Server certificate of every member (`--cert-file`); must be valid for `127.0.0.1`.
    pub cert: PathBuf,
    /// Key of `cert` (`--key-file`).
    pub key: PathBuf,
    /// Require a client certificate signed by `ca` (`--client-cert-auth`): mutual TLS.
    pub client_cert_auth: bool,
    /// Client certificate and key the harness uses for its own health checks and for
    /// [`EtcdCluster::client`](crate::EtcdCluster::client); required when `client_cert_auth`
    /// is set.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// etcd client options trusting `ca` and presenting `client_identity`, if any.
    ///
    /// # Errors
    ///
    /// [`TestingError::Io`] if a file cannot be read.
    pub fn connect_options(&self) -> Result<ConnectOptions, TestingError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|err| TestingError::io(format!("reading {}", path.display()), err))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let Some((cert, key)) = &self.client_identity {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(ConnectOptions::new().with_tls(tls))
    }

    pub(crate) fn member_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--cert-file".into(),
            self.cert.clone().into(),
            "--key-file".into(),
            self.key.clone().into(),
        ];
        if self.client_cert_auth {
            args.extend([
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                self.ca.clone().into(),
            ]);
        }
        args
    }
}
