//! Security on a real etcd (issue: security and hostile input): TLS, mutual TLS, etcd
//! authentication with the documented least-privilege role, and the size limits.
//!
//! Certificates are generated here with `rcgen`: one CA signs the server certificate (valid
//! for 127.0.0.1) and a client certificate; a second, unrelated CA plays the attacker.

mod common;
#[path = "common/security.rs"]
mod pki;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use darkrift_etcd::config::TlsConfig;
use darkrift_etcd::record::{RecordError, MAX_RECORD_LEN};
use darkrift_etcd::{list_servers, Connector, ConnectorConfig, Error, Event};
use darkrift_etcd_testing::EtcdCluster;
use etcd_client::{Client, ConnectOptions, GetOptions};
use pki::{enable_auth, tls_etcd, Pki, PASSWORD};

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

    let darkrift_etcd::ServerList {
        servers, skipped, ..
    } = list_servers(&config).await.expect("ls");
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
    let servers = list_servers(&config).await.expect("ls").servers;
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
