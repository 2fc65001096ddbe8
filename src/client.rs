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

/// HTTP/2 keep-alive: detect a dead TCP connection (a cut cable, a frozen member) in about
/// 10 s even when no request is in flight, so watches and keep-alives fail over promptly.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause between connect probes while an endpoint refuses.
const PROBE_RETRY: Duration = Duration::from_millis(100);

/// Connects and proves that etcd answers, within `cfg.connect_timeout`.
///
/// `require_leader` is set so that a member cut off from its cluster's leader refuses our
/// watches and requests instead of serving a silently stale view.
pub(crate) async fn connect(cfg: &ConnectorConfig, probe_key: &str) -> Result<Client> {
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
    let failed = |stage: Stage, e: etcd_client::Error| connect_error(cfg, &endpoints, stage, &e);
    let attempt = async {
        // With credentials, this already authenticates (and so completes a TLS handshake).
        // etcd refuses a missing or untrusted client certificate by closing the connection
        // right after the TLS 1.3 handshake, which reads like any dropped connection; a second
        // try gets the TLS alert that says why (or, if it works, it was a passing close).
        let mut client = match Client::connect(&cfg.endpoints, Some(options.clone())).await {
            Err(e) if cfg.tls.is_some() && closed_by_peer(&e) => {
                Client::connect(&cfg.endpoints, Some(options)).await
            }
            other => other,
        }
        .map_err(|e| failed(Stage::Connect, e))?;
        // A count-only read of a key we are allowed to read: proves a working, authorised
        // path to a member that has a leader.
        // One endpoint down (a dead member of a cluster) is retried on another until the
        // connect timeout, but TLS and authorisation errors are final at once.
        let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
        loop {
            match client
                .get(probe_key, Some(GetOptions::new().with_count_only()))
                .await
            {
                Ok(_) => return Ok(client),
                Err(e)
                    if crate::error::is_transient(&e)
                        && !looks_like_tls(&error_chain(&e))
                        && tokio::time::Instant::now() + PROBE_RETRY < deadline =>
                {
                    tracing::debug!(error = %e, "etcd probe failed; retrying");
                    tokio::time::sleep(PROBE_RETRY).await;
                }
                Err(e) => return Err(failed(Stage::Probe(probe_key), e)),
            }
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(unreachable("no answer".into())),
    }
}

/// Reads the PEM files of the TLS settings into etcd-client's options. Only the configured CA
/// is trusted (no system roots), so a server certificate from any other CA is refused.
fn tls_options(tls: &TlsConfig) -> Result<TlsOptions> {
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::InvalidConfig(format!("{field}: cannot read {}: {e}", path.display()))
        })
    };
    let mut options =
        TlsOptions::new().ca_certificate(Certificate::from_pem(read("tls.ca_cert", &tls.ca_cert)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        options = options.identity(Identity::from_pem(
            read("tls.cert", cert)?,
            read("tls.key", key)?,
        ));
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

/// Runs one unary etcd request with a time bound, naming the operation in the error.
pub(crate) async fn bounded<T, F>(op: &'static str, timeout: Duration, fut: F) -> Result<T>
where
    F: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::etcd(op, e)),
        Err(_) => Err(Error::Timeout { op, timeout }),
    }
}

/// [`retrying`] for one transaction (guarded, so safe to repeat).
pub(crate) async fn retrying_txn(
    client: &Client,
    op: &'static str,
    timeout: Duration,
    txn: &etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    let kv = client.kv_client();
    retrying(client, op, timeout, || {
        let (mut kv, txn) = (kv.clone(), txn.clone());
        async move { kv.txn(txn).await }
    })
    .await
}

/// Runs an idempotent unary request, retrying transient failures (an endpoint down, a leader
/// change, a refused connection) with jittered exponential backoff until `timeout` has passed
/// in total. Every caller's request is safe to repeat: reads, guarded transactions whose
/// failure branch recognises our own earlier success, and lease grants (a lease lost in a
/// retry expires by itself).
///
/// An expired or outdated auth token (`Unauthenticated`, "invalid auth token", "revision of
/// auth store is old") is refreshed with the configured credentials and the request retried.
pub(crate) async fn retrying<T, F, Fut>(
    client: &Client,
    op: &'static str,
    timeout: Duration,
    mut call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    use backon::BackoffBuilder;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delays =
        crate::backoff::bounded(Duration::from_millis(20), Duration::from_millis(500)).build();
    loop {
        let outcome = tokio::time::timeout_at(deadline, call()).await;
        match outcome {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_auth_token_error(&e) => {
                tracing::info!(op, error = %e, "auth token refused; refreshing it");
                // The refresh is a request too: it shares the caller's deadline.
                match tokio::time::timeout_at(deadline, client.refresh_token()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refresh)) => return Err(Error::etcd(op, refresh)),
                    Err(_) => return Err(Error::Timeout { op, timeout }),
                }
            }
            Ok(Err(e)) if crate::error::is_transient(&e) => {
                let delay = delays.next().unwrap_or(Duration::from_millis(500));
                if tokio::time::Instant::now() + delay >= deadline {
                    return Err(Error::etcd(op, e));
                }
                tracing::debug!(op, error = %e, "transient etcd error; retrying");
                tokio::time::sleep(delay).await;
            }
            Ok(Err(e)) => return Err(Error::etcd(op, e)),
            Err(_) => return Err(Error::Timeout { op, timeout }),
        }
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
