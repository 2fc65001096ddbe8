//! Connecting to etcd, and the time bound every unary request gets.
//!
//! etcd-client connects lazily and its streams never reconnect by themselves, so this module
//! proves reachability once at connect time (a clear [`Error::Unreachable`] within the connect
//! timeout rather than a hang), and every later caller owns its own recovery.
//!
//! It is also where the transport's security is applied: TLS (trusting only the configured
//! CA, presenting a client certificate for mutual TLS) and etcd user authentication. Failures
//! of either are reported as [`Error::Tls`] and [`Error::Auth`], never retried in plaintext
//! or without credentials. The password is handed to etcd-client and nowhere else: it is in no
//! error and no log line.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};

use crate::config::{ConnectorConfig, TlsConfig};
use crate::error::{Error, Result};
use crate::pool::{PickError, Picked, Pool};

use crate::timing::{HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, PROBE_RETRY};

/// Connects and proves that etcd answers, within `cfg.connect_timeout`.
///
/// Each endpoint gets its own client (see [`crate::pool`]); the first member that answers a
/// read of `probe_key` proves the cluster reachable, and members that do not answer in time are
/// suspected, not waited for.
///
/// `require_leader` is set so that a member cut off from its cluster's leader refuses our
/// watches and requests instead of serving a silently stale view.
///
/// `once` is for one-shot reads and writes (listings, the admin's get and evict): when every
/// endpoint has refused the connection (nothing listens there), it fails at once instead of
/// retrying until the connect timeout. A registrant (`once` false) keeps retrying, as an etcd
/// that is restarting refuses connections for a while.
pub(crate) async fn connect(cfg: &ConnectorConfig, probe_key: &str, once: bool) -> Result<Pool> {
    let endpoints = cfg.endpoints.join(",");
    let unreachable = |reason: String| Error::Unreachable {
        endpoints: endpoints.clone(),
        timeout: cfg.connect_timeout,
        reason,
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &cfg.tls {
        options = options.with_tls(tls_options(tls)?);
    }
    if let Some(auth) = &cfg.auth {
        if cfg.tls.is_none() && !cfg.endpoints.iter().all(|e| is_loopback(e)) {
            tracing::warn!(
                user = %auth.user,
                "etcd authentication without TLS: the password crosses the network in plaintext"
            );
        }
        // Tokens expire (`--auth-token-ttl`): etcd-client re-authenticates and retries a call
        // refused as Unauthenticated, which also covers reopening watch and keep-alive streams.
        options = options
            .with_user(auth.user.clone(), auth.password.expose())
            .with_auto_token_refresh(true);
    }
    let pool = Pool::new(&cfg.endpoints, options, cfg.request_timeout);
    let failed = |stage: Stage, e: etcd_client::Error| connect_error(cfg, &endpoints, stage, &e);
    let mut last_reason = String::from("no answer");
    let mut tls_closes = 0;
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let attempt = async {
        loop {
            let member = pool.choose();
            // With credentials, building the client already authenticates (and so completes
            // a TLS handshake). etcd refuses a missing or untrusted client certificate by
            // closing the connection right after the TLS 1.3 handshake, which reads like any
            // dropped connection; a second try gets the TLS alert that says why (or, if it
            // works, it was a passing close).
            let client = match pool.client(member).await {
                Ok(client) => client,
                Err(PickError::Etcd(e)) => {
                    if cfg.tls.is_some() && closed_by_peer(&e) && tls_closes == 0 {
                        tls_closes += 1;
                        continue;
                    }
                    match failed(Stage::Connect, e) {
                        Error::Unreachable { reason, .. } => {
                            pool.suspect(member, "connect failed");
                            if once && pool.all_suspected() && refused(&reason) {
                                return Err(unreachable(reason));
                            }
                            last_reason = reason;
                            pause_if_all_suspected(&pool, deadline).await;
                            continue;
                        }
                        final_error => return Err(final_error),
                    }
                }
                Err(PickError::Timeout | PickError::NoMember) => {
                    pool.suspect(member, "no answer to connect");
                    last_reason = "no answer".into();
                    continue;
                }
            };
            // A count-only read of a key we are allowed to read: proves a working, authorised
            // path to a member that has a leader. A member down or frozen is suspected and
            // another tried until the connect timeout, but TLS and authorisation errors are
            // final at once.
            let mut kv = client.kv_client();
            let probe = kv.get(probe_key, Some(GetOptions::new().with_count_only()));
            match tokio::time::timeout(pool.attempt_timeout(), probe).await {
                Ok(Ok(_)) => {
                    pool.confirm(member);
                    return Ok(());
                }
                Ok(Err(e))
                    if crate::error::is_transient(&e) && !looks_like_tls(&error_chain(&e)) =>
                {
                    tracing::debug!(error = %e, "etcd probe failed; trying again");
                    pool.suspect(member, "probe failed");
                    last_reason = error_chain(&e);
                    if once && pool.all_suspected() && refused(&last_reason) {
                        return Err(unreachable(last_reason.clone()));
                    }
                    pause_if_all_suspected(&pool, deadline).await;
                }
                Ok(Err(e)) => return Err(failed(Stage::Probe(probe_key), e)),
                Err(_) => {
                    pool.suspect(member, "no answer to the probe");
                    last_reason = "no answer".into();
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(())) => Ok(pool),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(unreachable(last_reason)),
    }
}

/// Whether a connect failure says that nothing listens at the address.
fn refused(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("connection refused")
}

/// Waits [`PROBE_RETRY`] when every member has just failed (so a cluster that refuses is not
/// hammered), and not at all while an untried member is left.
async fn pause_if_all_suspected(pool: &Pool, deadline: tokio::time::Instant) {
    if pool.all_suspected() {
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + PROBE_RETRY)).await;
    }
}

/// Reads the PEM files of the TLS settings into etcd-client's options (checking that each holds
/// the expected block: [`TlsConfig::read_pem_files`]). Only the configured CA is trusted (no
/// system roots), so a server certificate from any other CA is refused.
fn tls_options(tls: &TlsConfig) -> Result<TlsOptions> {
    let pems = tls.read_pem_files()?;
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(pems.ca_cert));
    if let Some((cert, key)) = pems.identity {
        options = options.identity(Identity::from_pem(cert, key));
    }
    Ok(options)
}

/// Which step of [`connect`] failed.
#[derive(Debug, Clone, Copy)]
enum Stage<'a> {
    /// Building the client (and authenticating, with credentials).
    Connect,
    /// The first read, of this key.
    Probe(&'a str),
}

/// Names a connect failure: TLS, authentication or permissions, or plain unreachability.
fn connect_error(
    cfg: &ConnectorConfig,
    endpoints: &str,
    stage: Stage<'_>,
    e: &etcd_client::Error,
) -> Error {
    let reason = error_chain(e);
    if let etcd_client::Error::GRpcStatus(status) = e {
        use tonic::Code;
        let message = status.message();
        let refused = match status.code() {
            Code::InvalidArgument | Code::Unauthenticated | Code::FailedPrecondition => {
                message.contains("auth") || message.contains("user name is empty")
            }
            Code::PermissionDenied => true,
            _ => false,
        };
        if refused {
            let mut reason = match stage {
                Stage::Probe(key) => format!("cannot read {key:?}: {message}"),
                Stage::Connect => message.to_owned(),
            };
            if cfg.auth.is_none() && message.contains("user name is empty") {
                reason.push_str(" (etcd requires authentication: configure a user and password)");
            }
            return Error::Auth {
                user: cfg
                    .auth
                    .as_ref()
                    .map(|a| a.user.clone())
                    .unwrap_or_default(),
                reason,
            };
        }
    }
    if cfg.tls.is_some() && looks_like_tls(&reason) {
        return Error::Tls {
            endpoints: endpoints.to_owned(),
            reason,
        };
    }
    if cfg.tls.is_some() && closed_by_peer(e) {
        let hint = match cfg.tls.as_ref().and_then(|t| t.cert.as_ref()) {
            None => "no client certificate was presented (set tls.cert and tls.key)",
            Some(_) => "check that etcd trusts the CA of tls.cert",
        };
        return Error::Tls {
            endpoints: endpoints.to_owned(),
            reason: format!(
                "{reason}; etcd closed the connection after the TLS handshake, which is how \
                 it refuses a missing or untrusted client certificate (mutual TLS): {hint}"
            ),
        };
    }
    Error::Unreachable {
        endpoints: endpoints.to_owned(),
        timeout: cfg.connect_timeout,
        reason,
    }
}

/// The error and all its sources, `: `-separated: tonic's transport errors say only
/// "transport error" at the top; the cause (an unknown issuer, a refused connection) is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether an endpoint names this machine (where plaintext does not cross a network).
fn is_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    ["127.", "localhost:", "[::1]:"]
        .iter()
        .any(|p| host.starts_with(p))
}

/// Whether the server hung up on us (rather than refusing to connect, or timing out).
fn closed_by_peer(e: &etcd_client::Error) -> bool {
    let chain = error_chain(e).to_ascii_lowercase();
    ["connection closed", "connection reset", "broken pipe"]
        .iter()
        .any(|needle| chain.contains(needle))
}

/// Whether an error text comes from the TLS layer (rustls' wording).
fn looks_like_tls(reason: &str) -> bool {
    let lower = reason.to_ascii_lowercase();
    [
        "certificate",
        "tls",
        "handshake",
        "alert",
        "unknownissuer",
        "peer sent no certificates",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// [`retrying`] for one transaction (guarded, so safe to repeat).
pub(crate) async fn retrying_txn(
    pool: &Pool,
    op: &'static str,
    timeout: Duration,
    txn: &etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    retrying(pool, op, timeout, |client| {
        let txn = txn.clone();
        async move { client.kv_client().txn(txn).await }
    })
    .await
}

/// Runs an idempotent unary request, retrying transient failures (an endpoint down or frozen,
/// a leader change, a refused connection) until `timeout` has passed in total. Every caller's
/// request is safe to repeat: reads, guarded transactions whose failure branch recognises our
/// own earlier success, lease grants (a lease lost in a retry expires by itself) and revokes.
///
/// Each attempt goes to the pool's chosen member and is bounded by the pool's attempt timeout
/// (a third of the request timeout at most), so a member that does not answer costs one
/// attempt, not the whole request: it is suspected and the next attempt goes to another
/// member at once. Only when every member has failed recently does the loop back off
/// (jittered, exponential, 20–500 ms).
///
/// An expired or outdated auth token (`Unauthenticated`, "invalid auth token", "revision of
/// auth store is old") is refreshed with the configured credentials and the request retried.
pub(crate) async fn retrying<T, F, Fut>(
    pool: &Pool,
    op: &'static str,
    timeout: Duration,
    call: F,
) -> Result<T>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    retrying_on(pool, op, timeout, call).await.map(|(v, _)| v)
}

/// [`retrying`], also returning the member that answered (a stream opened this way lives
/// there, and must move if that member is suspected later).
pub(crate) async fn retrying_on<T, F, Fut>(
    pool: &Pool,
    op: &'static str,
    timeout: Duration,
    mut call: F,
) -> Result<(T, usize)>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    // Once every member has failed recently (see `timing::request_backoff`).
    let mut delays = crate::timing::request_backoff();
    let timed_out = || Error::Timeout { op, timeout };
    loop {
        let picked = match tokio::time::timeout_at(deadline, pool.pick()).await {
            Ok(Ok(picked)) => Some(picked),
            // Building the member's client failed: the pool suspected it; try another.
            Ok(Err(PickError::Etcd(e))) if !crate::error::is_transient(&e) => {
                return Err(Error::etcd(op, e));
            }
            Ok(Err(_)) => None,
            Err(_) => return Err(timed_out()),
        };
        if let Some(Picked { member, client }) = picked {
            let attempt_deadline =
                deadline.min(tokio::time::Instant::now() + pool.attempt_timeout());
            match tokio::time::timeout_at(attempt_deadline, call(client.clone())).await {
                Ok(Ok(v)) => {
                    pool.confirm(member);
                    return Ok((v, member));
                }
                Ok(Err(e)) if is_auth_token_error(&e) => {
                    tracing::info!(op, error = %e, "auth token refused; refreshing it");
                    // The refresh is a request too: it shares the caller's deadline.
                    match tokio::time::timeout_at(deadline, client.refresh_token()).await {
                        Ok(Ok(())) => continue,
                        Ok(Err(refresh)) => return Err(Error::etcd(op, refresh)),
                        Err(_) => return Err(timed_out()),
                    }
                }
                Ok(Err(e)) if crate::error::is_transient(&e) => {
                    tracing::debug!(op, error = %e, "transient etcd error; trying again");
                    pool.suspect(member, "transient error");
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::etcd(op, e));
                    }
                }
                Ok(Err(e)) => return Err(Error::etcd(op, e)),
                Err(_) if tokio::time::Instant::now() >= deadline => return Err(timed_out()),
                Err(_) => {
                    tracing::debug!(
                        op,
                        "no answer within the attempt timeout; trying another member"
                    );
                    pool.suspect(member, "no answer within the attempt timeout");
                }
            }
        }
        if pool.all_suspected() {
            let delay = delays
                .next()
                .unwrap_or(crate::timing::REQUEST_BACKOFF_BOUND);
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Revokes lease `id`, retried like any request (a revoke is safe to repeat). A lease that is
/// already gone (expired, or revoked by an earlier attempt whose answer was lost) counts as
/// revoked.
///
/// # Errors
/// The revoke failed for another reason or timed out; the lease then expires by itself.
pub(crate) async fn revoke_lease(pool: &Pool, id: i64, timeout: Duration) -> Result<()> {
    let revoke = retrying(pool, "lease revoke", timeout, |client| async move {
        client.lease_client().revoke(id).await
    });
    match revoke.await {
        Ok(_) => Ok(()),
        Err(Error::Etcd { source, .. }) if crate::error::is_lease_not_found(&source) => Ok(()),
        Err(e) => Err(e),
    }
}

/// True when etcd refused the request's auth token: expired, unknown, or issued before the
/// auth store changed. A refreshed token fixes all three.
pub(crate) fn is_auth_token_error(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let msg = status.message();
    status.code() == tonic::Code::Unauthenticated
        || msg.contains("invalid auth token")
        || msg.contains("revision of auth store is old")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints() {
        for e in [
            "http://127.0.0.1:2379",
            "localhost:2379",
            "https://[::1]:2379",
        ] {
            assert!(is_loopback(e), "{e}");
        }
        for e in [
            "http://10.0.0.1:2379",
            "https://etcd.example:2379",
            "http://localhostx:1",
        ] {
            assert!(!is_loopback(e), "{e}");
        }
    }

    #[test]
    fn tls_wording_is_recognised() {
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(looks_like_tls("received fatal alert: BadCertificate"));
        assert!(!looks_like_tls("tcp connect error: Connection refused"));
    }
}
