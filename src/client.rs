//! Connecting to etcd, and the time bound every unary request gets.
//!
//! etcd-client connects lazily and its streams never reconnect by themselves, so this module
//! proves reachability once at connect time (a clear [`Error::Unreachable`] within the connect
//! timeout rather than a hang), and every later caller owns its own recovery.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::config::ConnectorConfig;
use crate::error::{Error, Result};

/// HTTP/2 keep-alive: detect a dead TCP connection (a cut cable, a frozen member) in about
/// 10 s even when no request is in flight, so watches and keep-alives fail over promptly.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

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
    let options = ConnectOptions::new()
        .with_connect_timeout(cfg.connect_timeout)
        .with_keep_alive(HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let attempt = async {
        let mut client = Client::connect(&cfg.endpoints, Some(options))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // A count-only read of a key we are allowed to read: proves a working, authorised
        // path to a member that has a leader.
        client
            .get(probe_key, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(client)
    };
    match tokio::time::timeout(cfg.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(unreachable("no answer".into())),
    }
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
