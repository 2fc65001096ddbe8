//! A test PKI (CA, server and client certificates), an etcd serving TLS with it, and etcd
//! authentication set up as the README documents it: shared by the library's security tests
//! and the CLI's. Not part of `common` (whose crates need no rcgen): a test that uses it
//! declares it by path.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use darkrift_etcd::config::TlsConfig;
use darkrift_etcd_testing::{EtcdCluster, TlsFiles};
use etcd_client::{Permission, PermissionType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A password that must never show up in an error or a log line.
pub const PASSWORD: &str = "s3cret-darkrift-pw";
pub const ROOT_PASSWORD: &str = "s3cret-root-pw";

/// PEM files of a test PKI in a temporary directory.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.pem` signs `server.pem` (127.0.0.1, localhost) and `client.pem` (CN darkrift);
    /// `evil-ca.pem` is unrelated and signs `evil-client.pem`.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        for (ca_name, prefix) in [("test CA", ""), ("evil CA", "evil-")] {
            let ca_key = KeyPair::generate().expect("ca key");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.distinguished_name.push(DnType::CommonName, ca_name);
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            write(
                &format!("{prefix}ca.pem"),
                ca.self_signed(&ca_key).expect("ca cert").pem(),
            );
            let issuer = Issuer::from_params(&ca, &ca_key);

            let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose, name: &str| {
                let key = KeyPair::generate().expect("leaf key");
                let mut params = CertificateParams::new(sans).expect("leaf params");
                params.distinguished_name.push(DnType::CommonName, cn);
                params.extended_key_usages = vec![eku];
                let cert = params.signed_by(&key, &issuer).expect("leaf cert");
                write(&format!("{prefix}{name}.pem"), cert.pem());
                write(&format!("{prefix}{name}-key.pem"), key.serialize_pem());
            };
            leaf(
                vec!["127.0.0.1".into(), "localhost".into()],
                "etcd",
                ExtendedKeyUsagePurpose::ServerAuth,
                "server",
            );
            leaf(
                vec![],
                "darkrift",
                ExtendedKeyUsagePurpose::ClientAuth,
                "client",
            );
        }
        Pki { dir }
    }

    pub fn files(&self, client_cert_auth: bool) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_cert_auth,
            client_identity: Some((self.path("client.pem"), self.path("client-key.pem"))),
        }
    }

    /// Our client settings: trust `ca.pem`, present `client.pem` when `mutual`.
    pub fn client_tls(&self, mutual: bool) -> TlsConfig {
        let tls = TlsConfig::new(self.path("ca.pem"));
        if mutual {
            tls.with_client_cert(self.path("client.pem"), self.path("client-key.pem"))
        } else {
            tls
        }
    }
}

pub async fn tls_etcd(pki: &Pki, client_cert_auth: bool) -> EtcdCluster {
    EtcdCluster::builder()
        .client_tls(pki.files(client_cert_auth))
        .build()
        .await
        .expect("etcd with TLS starts")
}

/// Sets up etcd authentication as the README documents it: a `root` user, a `darkrift` role
/// with read-write on `<prefix>/` and `<prefix>.alloc/` only, a `darkrift` user with that
/// role; then enables auth.
pub async fn enable_auth(etcd: &EtcdCluster, prefix: &str) {
    let client = etcd.client().await.expect("client");
    let mut auth = client.auth_client();
    auth.user_add("root", ROOT_PASSWORD, None)
        .await
        .expect("root");
    auth.user_grant_role("root", "root")
        .await
        .expect("root role");
    auth.role_add("darkrift").await.expect("role");
    for range in [format!("{prefix}/"), format!("{prefix}.alloc/")] {
        auth.role_grant_permission(
            "darkrift",
            Permission::new(PermissionType::Readwrite, range).with_prefix(),
        )
        .await
        .expect("grant");
    }
    auth.user_add("darkrift", PASSWORD, None)
        .await
        .expect("user");
    auth.user_grant_role("darkrift", "darkrift")
        .await
        .expect("user role");
    // A user with no role at all, to check that a missing grant is reported clearly.
    auth.user_add("nobody", PASSWORD, None)
        .await
        .expect("nobody");
    auth.auth_enable().await.expect("auth enable");
}
