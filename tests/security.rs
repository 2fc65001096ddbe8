//! Security on a real etcd (issue: security and hostile input): TLS, mutual TLS, etcd
//! authentication with the documented least-privilege role, and the size limits.
//!
//! Certificates are generated here with `rcgen`: one CA signs the server certificate (valid
//! for 127.0.0.1) and a client certificate; a second, unrelated CA plays the attacker.
#![cfg(feature = "test-support")]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use darkrift_etcd::config::TlsConfig;
use darkrift_etcd::record::{RecordError, MAX_RECORD_LEN};
use darkrift_etcd::testing::{EtcdCluster, TlsFiles};
use darkrift_etcd::{list_servers, Connector, ConnectorConfig, Error, Event};
use etcd_client::{Client, ConnectOptions, GetOptions, Permission, PermissionType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A password that must never show up in an error or a log line.
const PASSWORD: &str = "s3cret-darkrift-pw";
const ROOT_PASSWORD: &str = "s3cret-root-pw";

/// PEM files of a test PKI in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.pem` signs `server.pem` (127.0.0.1, localhost) and `client.pem` (CN darkrift);
    /// `evil-ca.pem` is unrelated and signs `evil-client.pem`.
    fn generate() -> Pki {
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

    fn files(&self, client_cert_auth: bool) -> TlsFiles {
        TlsFiles {
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_cert_auth,
            client_identity: Some((self.path("client.pem"), self.path("client-key.pem"))),
        }
    }

    /// Our client settings: trust `ca.pem`, present `client.pem` when `mutual`.
    fn client_tls(&self, mutual: bool) -> TlsConfig {
        let tls = TlsConfig::new(self.path("ca.pem"));
        if mutual {
            tls.with_client_cert(self.path("client.pem"), self.path("client-key.pem"))
        } else {
            tls
        }
    }
}

async fn tls_etcd(pki: &Pki, client_cert_auth: bool) -> EtcdCluster {
    EtcdCluster::builder()
        .client_tls(pki.files(client_cert_auth))
        .build()
        .await
        .expect("etcd with TLS starts")
}

fn cfg(endpoints: Vec<String>, prefix: &str) -> ConnectorConfig {
    ConnectorConfig::new(endpoints)
        .with_prefix(prefix)
        .with_lease_ttl(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(5))
}

/// Register, watch (see our own join), list, deregister (see our leave): everything a server
/// does, on the given settings.
async fn full_cycle(config: ConnectorConfig) {
    let connector = Connector::connect(config.clone()).await.expect("connects");
    let mut events = connector.events().expect("events");
    assert!(until_synced(&mut events).await.is_empty(), "empty registry");
    let id = connector
        .register_server("lobby", "127.0.0.1", 4296, no_props())
        .await
        .expect("registers");
    let joined = collect_until(&mut events, PROMPT, |e| join_ids(e).contains(&id)).await;
    assert_eq!(join_ids(&joined), [id]);

    let (_, servers, skipped) = list_servers(&config).await.expect("ls");
    assert_eq!(
        servers.iter().map(|s| s.id).collect::<Vec<_>>(),
        [id],
        "ls sees the server"
    );
    assert_eq!(skipped, 0);

    connector.deregister_server().await.expect("deregisters");
    let left = collect_until(&mut events, PROMPT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::Leave { id: left, .. } if *left == id))
    })
    .await;
    assert!(!left.is_empty());
    assert_eq!(connector.registered_id(), None);
    let (_, servers, _) = list_servers(&config).await.expect("ls");
    assert!(servers.is_empty(), "ls no longer sees it: {servers:?}");
}

/// TLS with server verification: the whole cycle works over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_works() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false).await;
    assert!(etcd.endpoint(0).starts_with("https://"));
    full_cycle(cfg(etcd.endpoints(), &prefix()).with_tls(pki.client_tls(false))).await;
}

/// Mutual TLS: etcd requires a client certificate, we present one, the whole cycle works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    full_cycle(cfg(etcd.endpoints(), &prefix()).with_tls(pki.client_tls(true))).await;
}

fn assert_tls_error(err: &Error, expect: &[&str]) {
    let text = err.to_string();
    assert!(
        matches!(err, Error::Tls { .. }),
        "expected Error::Tls: {text}"
    );
    assert!(text.contains("TLS"), "names TLS: {text}");
    assert!(
        expect.iter().any(|e| text.contains(e)),
        "says why ({expect:?}): {text}"
    );
    assert!(!err.is_retryable(), "a TLS refusal is permanent: {text}");
}

/// Mutual TLS without a client certificate: refused by etcd, reported as a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_a_client_cert_fails_clearly() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    let config = cfg(etcd.endpoints(), &prefix()).with_tls(pki.client_tls(false));
    let err = Connector::connect(config).await.expect_err("refused");
    assert_tls_error(&err, &["certificate", "Certificate"]);
}

/// Mutual TLS with a client certificate from another CA: refused, a TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_foreign_client_cert_fails_clearly() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    let tls = TlsConfig::new(pki.path("ca.pem"))
        .with_client_cert(pki.path("evil-client.pem"), pki.path("evil-client-key.pem"));
    let err = Connector::connect(cfg(etcd.endpoints(), &prefix()).with_tls(tls))
        .await
        .expect_err("refused");
    assert_tls_error(&err, &["certificate", "Certificate"]);
}

/// Trusting the wrong CA: etcd's certificate is refused, a TLS error naming the cause, and
/// nothing falls back to plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_clearly() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false).await;
    let config = cfg(etcd.endpoints(), &prefix()).with_tls(TlsConfig::new(pki.path("evil-ca.pem")));
    let err = Connector::connect(config.clone())
        .await
        .expect_err("refused");
    assert_tls_error(&err, &["UnknownIssuer", "certificate"]);
    let err = list_servers(&config).await.expect_err("ls refused too");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
}

/// No silent downgrade: a TLS server is not reachable by plaintext, and a TLS config with an
/// http:// endpoint (or an https:// endpoint without TLS settings) is refused before
/// connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_between_tls_and_plaintext() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false).await;
    let https = etcd.endpoint(0);
    let http = https.replacen("https://", "http://", 1);

    let err = Connector::connect(cfg(vec![https.clone()], &prefix()))
        .await
        .expect_err("https without TLS settings");
    assert!(
        matches!(&err, Error::InvalidConfig(why) if why.contains("no TLS settings")),
        "{err}"
    );
    let err =
        Connector::connect(cfg(vec![http.clone()], &prefix()).with_tls(pki.client_tls(false)))
            .await
            .expect_err("http with TLS settings");
    assert!(
        matches!(&err, Error::InvalidConfig(why) if why.contains("plaintext")),
        "{err}"
    );
    // Plaintext gRPC to a TLS port never works.
    let plain = cfg(vec![http], &prefix()).with_connect_timeout(Duration::from_secs(2));
    let err = Connector::connect(plain)
        .await
        .expect_err("plaintext refused");
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
}

// ---- authentication ----

/// Sets up etcd authentication as the README documents it: a `root` user, a `darkrift` role
/// with read-write on `<prefix>/` and `<prefix>.alloc/` only, a `darkrift` user with that
/// role; then enables auth.
async fn enable_auth(etcd: &EtcdCluster, prefix: &str) {
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

async fn client_as(etcd: &EtcdCluster, user: &str, password: &str) -> Client {
    let base = match etcd.tls() {
        Some(tls) => tls.connect_options().expect("tls options"),
        None => ConnectOptions::new(),
    };
    Client::connect(etcd.endpoints(), Some(base.with_user(user, password)))
        .await
        .expect("authenticated client")
}

fn is_permission_denied(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::PermissionDenied)
}

/// With the least-privilege role, register / watch / ls / deregister all work, and keys
/// outside `<prefix>/` and `<prefix>.alloc/` can be neither read nor written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_privilege_role_is_enough_and_nothing_more() {
    let etcd = etcd().await;
    let prefix = prefix();
    enable_auth(&etcd, &prefix).await;

    // Two servers, so watch sees a peer's join and leave too, all as the darkrift user.
    let config = common::config(&etcd, &prefix).with_auth("darkrift", PASSWORD);
    let peer = Connector::connect(config.clone()).await.expect("peer");
    let mut peer_events = peer.events().expect("events");
    assert!(until_synced(&mut peer_events).await.is_empty());
    full_cycle(config.clone()).await;
    let seen = collect_until(&mut peer_events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Leave { .. }))
    })
    .await;
    assert_eq!(join_ids(&seen).len(), 1, "the peer saw the join: {seen:?}");

    let mut client = client_as(&etcd, "darkrift", PASSWORD).await;
    // Inside: allowed (the same ranges the connector uses).
    client
        .put(format!("{prefix}/probe"), "x", None)
        .await
        .expect("write inside the prefix");
    client
        .get(format!("{prefix}.alloc/cursor"), None)
        .await
        .expect("read the allocator keys");
    // Outside: denied, for reads, writes, deletes, neighbouring keys and whole-keyspace reads.
    let outside = [
        "/other".to_owned(),
        prefix.clone(),
        format!("{prefix}x/1"),
        format!("{prefix}.allocx"),
        format!("{prefix}.alloc"),
    ];
    for key in &outside {
        let err = client.put(key.as_str(), "x", None).await.expect_err(key);
        assert!(is_permission_denied(&err), "put {key}: {err}");
        let err = client.get(key.as_str(), None).await.expect_err(key);
        assert!(is_permission_denied(&err), "get {key}: {err}");
        let err = client.delete(key.as_str(), None).await.expect_err(key);
        assert!(is_permission_denied(&err), "delete {key}: {err}");
    }
    let err = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect_err("whole keyspace");
    assert!(is_permission_denied(&err), "{err}");
    // Nor can the role manage users.
    let err = client
        .auth_client()
        .user_add("mallory", "pw", None)
        .await
        .expect_err("no user management");
    assert!(is_permission_denied(&err), "{err}");
    drop(peer);
}

/// A wrong password and a user without the role fail with `Error::Auth`, naming the user and
/// never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_clear_and_never_show_the_password() {
    let etcd = etcd().await;
    let prefix = prefix();
    enable_auth(&etcd, &prefix).await;

    let wrong = "wrong-pw-must-not-leak";
    let err = Connector::connect(common::config(&etcd, &prefix).with_auth("darkrift", wrong))
        .await
        .expect_err("wrong password");
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{text}");
    assert!(text.contains("darkrift"), "names the user: {text}");
    assert!(!text.contains(wrong), "the password leaked: {text}");

    let err = Connector::connect(common::config(&etcd, &prefix).with_auth("nobody", PASSWORD))
        .await
        .expect_err("no role");
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Auth { .. }), "{text}");
    assert!(text.contains("permission denied"), "{text}");
    assert!(
        text.contains(".alloc/cursor"),
        "names the key it could not read: {text}"
    );
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");

    // Without credentials on an auth-enabled etcd: refused, not an anonymous success.
    let err = Connector::connect(common::config(&etcd, &prefix))
        .await
        .expect_err("anonymous");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("requires authentication"), "{err}");
    assert!(!err.is_retryable(), "{err}");
}

/// Mutual TLS and authentication together (what a production deployment uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_auth_works() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    let prefix = prefix();
    enable_auth(&etcd, &prefix).await;
    full_cycle(
        cfg(etcd.endpoints(), &prefix)
            .with_tls(pki.client_tls(true))
            .with_auth("darkrift", PASSWORD),
    )
    .await;
}

// ---- limits ----

/// Oversize registrations (too many properties, too large a value, a long host, a record
/// over the encoded limit) are refused before anything is written: the registry, the
/// allocator keys and the lease list stay exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_registrations_write_nothing() {
    let etcd = etcd().await;
    let prefix = prefix();
    let connector = Connector::connect(common::config(&etcd, &prefix))
        .await
        .expect("connects");
    let mut raw = etcd.client().await.expect("client");
    let revision_before = current_revision(&mut raw).await;

    let many: BTreeMap<String, String> = (0..1000).map(|i| (format!("k{i}"), "v".into())).collect();
    let huge_value: BTreeMap<String, String> =
        [("k".to_owned(), "v".repeat(2 * 1024 * 1024))].into();
    // Within every per-item bound, but together over the encoded-record bound.
    let large: BTreeMap<String, String> = (0..32)
        .map(|i| (format!("{i:0>128}"), "v".repeat(1024)))
        .collect();
    let cases: Vec<(&str, String, BTreeMap<String, String>)> = vec![
        ("too many properties", "h".into(), many),
        (
            "value over etcd's 1.5 MiB request limit",
            "h".into(),
            huge_value,
        ),
        ("host too long", "h".repeat(300), no_props()),
        ("encoded record too large", "h".into(), large),
    ];
    for (what, host, props) in cases {
        let err = connector
            .register_server("lobby", &host, 4296, props)
            .await
            .expect_err(what);
        assert!(
            matches!(
                err,
                Error::InvalidRegistration(
                    RecordError::InvalidProperties(_) | RecordError::InvalidHost { .. }
                )
            ),
            "{what}: {err}"
        );
        assert!(!err.is_retryable(), "{what}");
        if what == "encoded record too large" {
            assert!(
                err.to_string().contains(&MAX_RECORD_LEN.to_string()),
                "{err}"
            );
        }
    }
    let after = raw
        .get(
            "/",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .expect("get");
    assert_eq!(
        after.header().expect("header").revision(),
        revision_before,
        "no write happened"
    );
    assert_eq!(after.count(), 0, "no key exists");
    let leases = raw.leases().await.expect("leases");
    assert!(leases.leases().is_empty(), "no lease was granted");
}

/// etcd's default `--max-request-bytes` (1.5 MiB).
const ETCD_DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
// The encoded-record bound keeps any valid registration far below etcd's request limit: the
// allocation transaction carries the record, its key, the slot key and the cursor.
const _: () = assert!(MAX_RECORD_LEN * 4 < ETCD_DEFAULT_MAX_REQUEST_BYTES);

// ---- CLI ----

/// Runs the CLI with `args` and `env` (the caller's `DARKRIFT_ETCD_*` removed), bounded.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"));
    command.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("DARKRIFT_ETCD_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--help` documents every security option with its environment variable, and shows no
/// password taken from the environment.
#[tokio::test]
async fn cli_help_documents_the_security_options_and_hides_the_password() {
    let secret = "env-password-must-not-show";
    for args in [&["--help"][..], &["ls", "--help"], &["register", "--help"]] {
        let (ok, stdout, stderr) = cli(
            args,
            &[
                ("DARKRIFT_ETCD_PASSWORD", secret),
                ("DARKRIFT_ETCD_USER", "darkrift"),
            ],
        )
        .await;
        assert!(ok, "{args:?}: {stderr}");
        for option in [
            "--ca-cert",
            "--cert",
            "--key",
            "--user",
            "--password",
            "--password-file",
            "DARKRIFT_ETCD_CA_CERT",
            "DARKRIFT_ETCD_CERT",
            "DARKRIFT_ETCD_KEY",
            "DARKRIFT_ETCD_USER",
            "DARKRIFT_ETCD_PASSWORD",
            "DARKRIFT_ETCD_PASSWORD_FILE",
        ] {
            assert!(
                stdout.contains(option),
                "{args:?} does not document {option}"
            );
        }
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{args:?} shows the password"
        );
    }
}

/// The CLI over mutual TLS with authentication: `ls` works with a password file; a wrong
/// password fails with a clear message, and neither the message nor trace-level logs
/// contain the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uses_tls_and_auth_and_never_prints_the_password() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    let prefix = prefix();
    enable_auth(&etcd, &prefix).await;
    let password_file = pki.path("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write");
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    let endpoint = etcd.endpoint(0);
    let base = [
        "--endpoints",
        endpoint.as_str(),
        "--prefix",
        prefix.as_str(),
        "--ca-cert",
        ca.to_str().expect("utf-8"),
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--user",
        "darkrift",
    ];

    let file = password_file.to_str().expect("utf-8");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--password-file", file, "ls", "-o", "json"])
        .collect();
    let (ok, stdout, stderr) = cli(&args, &[]).await;
    assert!(ok, "ls with TLS and a password file: {stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON line");
    assert_eq!(listed["servers"], serde_json::json!([]));

    // The same through the environment.
    let args: Vec<&str> = base.iter().copied().chain(["ls", "-o", "json"]).collect();
    let (ok, _, stderr) = cli(&args, &[("DARKRIFT_ETCD_PASSWORD", PASSWORD)]).await;
    assert!(ok, "ls with the password in the environment: {stderr}");

    let wrong = "wrong-password-must-not-show";
    for env in [
        vec![("DARKRIFT_ETCD_PASSWORD", wrong), ("RUST_LOG", "trace")],
        vec![("RUST_LOG", "trace")],
    ] {
        let mut args: Vec<&str> = base.to_vec();
        if env.len() == 1 {
            args.extend(["--password", wrong]);
        }
        args.extend(["ls"]);
        let (ok, stdout, stderr) = cli(&args, &env).await;
        assert!(!ok, "a wrong password fails");
        assert!(
            stderr.contains("authentication as user \"darkrift\" failed"),
            "clear message: {stderr}"
        );
        assert!(
            !stdout.contains(wrong) && !stderr.contains(wrong),
            "the password leaked:\n{stderr}"
        );
    }
}
