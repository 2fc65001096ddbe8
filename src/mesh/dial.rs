//! Dialling an upstream peer: TCP connect, Identify, wait for the Welcome, with jittered
//! exponential backoff (powers of two, unlike DarkRift's XOR) and a retry budget.

use std::time::Duration;

use backon::Retryable;
use tokio::net::TcpStream;

use super::frame::Frame;
use crate::record::ServerInfo;

/// How an upstream peer is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialPolicy {
    /// Attempts per round, the first included (DarkRift's `reconnectAttempts` is 5). When a
    /// round fails, the connector's `handle_connection_failure` decides what happens next.
    pub attempts: u32,
    /// Delay before the first retry (plus jitter); doubles per retry.
    pub min_delay: Duration,
    /// Cap on the delay between retries, jitter included.
    pub max_delay: Duration,
    /// Bound on one TCP connect.
    pub connect_timeout: Duration,
}

impl Default for DialPolicy {
    fn default() -> Self {
        DialPolicy {
            attempts: 5,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// A failed round: every attempt of the budget failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialFailure {
    /// Attempts made.
    pub(crate) attempts: u32,
    /// What the last attempt ran into.
    pub(crate) last_error: String,
}

/// One round of attempts to reach `peer` and have it accept our Identify. Returns the
/// identified socket.
pub(crate) async fn dial(
    peer: &ServerInfo,
    own_id: u16,
    policy: DialPolicy,
    handshake_timeout: Duration,
) -> Result<TcpStream, DialFailure> {
    let host = peer.host.clone();
    let (port, expected) = (peer.port, peer.id);
    let mut attempts = 0u32;
    let backoff = crate::backoff::bounded(policy.min_delay, policy.max_delay)
        .with_max_times(usize::try_from(policy.attempts.saturating_sub(1)).unwrap_or(usize::MAX));
    let result = (|| {
        attempts += 1;
        attempt(
            host.clone(),
            port,
            own_id,
            expected,
            policy.connect_timeout,
            handshake_timeout,
        )
    })
    .retry(backoff)
    .sleep(tokio::time::sleep)
    .notify(|err: &String, delay: Duration| {
        tracing::debug!(peer = expected, error = %err, ?delay, "dial failed; retrying");
    })
    .await;
    result.map_err(|last_error| DialFailure {
        attempts,
        last_error,
    })
}

/// One attempt: connect, send Identify, read the Welcome and check it names `expected`.
async fn attempt(
    host: String,
    port: u16,
    own_id: u16,
    expected: u16,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<TcpStream, String> {
    let mut stream = match tokio::time::timeout(
        connect_timeout,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => return Err(format!("connect to {host}:{port} timed out")),
        Ok(Err(e)) => return Err(format!("connect to {host}:{port}: {e}")),
        Ok(Ok(s)) => s,
    };
    // The handshake is a few bytes each way; Nagle would only delay it.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    Frame::Identify(own_id)
        .write_to(&mut stream)
        .await
        .map_err(|e| format!("sending Identify: {e}"))?;
    match Frame::read_from(&mut stream, handshake_timeout).await {
        Ok(Frame::Welcome(id)) if id == expected => Ok(stream),
        Ok(Frame::Welcome(id)) => Err(format!(
            "{host}:{port} answered as server {id}, expected {expected}"
        )),
        Ok(other) => Err(format!("unexpected {other:?} instead of a Welcome")),
        Err(e) => Err(format!(
            "no Welcome (refused or not yet announced there?): {e}"
        )),
    }
}
