//! Dialling an upstream peer: TCP connect, Identify, wait for the Welcome, with jittered
//! exponential backoff (powers of two, unlike DarkRift's XOR) and a retry budget.
//!
//! A round ends early when the connect itself is refused ([`classify`]): the peer's host
//! answered that nothing listens on the port, so its process is gone and waiting out the
//! budget would only delay the registry check (and, with eviction on, the peer's leave).
//! Anything else (a connect that times out, a handshake that fails) may be a slow network
//! or a peer that has not seen our join yet, and is retried within the budget.

use std::io;
use std::time::Duration;

use backon::Retryable;
use tokio::net::TcpStream;

use super::frame::Frame;
use darkrift_etcd::record::ServerInfo;

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

/// What a failed connect says about the peer (see [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The peer's host answered and nothing listens there (or it reset the connect): the
    /// process is gone. The round ends at once and the registry is asked.
    Refused,
    /// No answer, or an answer that proves nothing (timed out, unreachable network or host,
    /// anything else): maybe a slow or broken network, so the round keeps retrying within its
    /// budget.
    Inconclusive,
}

/// Classifies a failed TCP connect by its error kind.
///
/// Only a refusal or a reset counts as proof that the peer's process is gone: its host's
/// kernel answered. A timeout or an unreachable route says nothing about the process (a host
/// or network loss looks the same), so those keep the patient policy and, with eviction on,
/// fall back to the other reporters or to the lease TTL.
#[must_use]
pub fn classify(kind: io::ErrorKind) -> ConnectFailure {
    match kind {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
            ConnectFailure::Refused
        }
        _ => ConnectFailure::Inconclusive,
    }
}

/// A failed round: every attempt of the budget failed, or one connect was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DialFailure {
    /// Attempts made.
    pub(crate) attempts: u32,
    /// What the last attempt ran into.
    pub(crate) last_error: String,
    /// The round ended on a refused connect ([`ConnectFailure::Refused`]).
    pub(crate) refused: bool,
}

/// One failed attempt.
#[derive(Debug)]
struct AttemptError {
    message: String,
    refused: bool,
}

impl AttemptError {
    /// A failure that proves nothing about the peer's process.
    fn inconclusive(message: String) -> Self {
        AttemptError {
            message,
            refused: false,
        }
    }
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
    let backoff = darkrift_etcd::backoff::bounded(policy.min_delay, policy.max_delay)
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
    // A refused connect ends the round: the process is gone, retrying only delays the check.
    .when(|err: &AttemptError| !err.refused)
    .notify(|err: &AttemptError, delay: Duration| {
        tracing::debug!(peer = expected, error = %err.message, ?delay, "dial failed; retrying");
    })
    .await;
    result.map_err(|err| DialFailure {
        attempts,
        last_error: err.message,
        refused: err.refused,
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
) -> Result<TcpStream, AttemptError> {
    let mut stream = match tokio::time::timeout(
        connect_timeout,
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => {
            return Err(AttemptError::inconclusive(format!(
                "connect to {host}:{port} timed out"
            )))
        }
        Ok(Err(e)) => {
            return Err(AttemptError {
                message: format!("connect to {host}:{port}: {e}"),
                refused: classify(e.kind()) == ConnectFailure::Refused,
            })
        }
        Ok(Ok(s)) => s,
    };
    // The handshake is a few bytes each way; Nagle would only delay it.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    // Past the connect, every failure is inconclusive: a live peer that has not seen our join
    // yet closes our Identify, exactly as a crashing one would.
    Frame::Identify(own_id)
        .write_to(&mut stream)
        .await
        .map_err(|e| AttemptError::inconclusive(format!("sending Identify: {e}")))?;
    match Frame::read_from(&mut stream, handshake_timeout).await {
        Ok(Frame::Welcome(id)) if id == expected => Ok(stream),
        Ok(Frame::Welcome(id)) => Err(AttemptError::inconclusive(format!(
            "{host}:{port} answered as server {id}, expected {expected}"
        ))),
        Ok(other) => Err(AttemptError::inconclusive(format!(
            "unexpected {other:?} instead of a Welcome"
        ))),
        Err(e) => Err(AttemptError::inconclusive(format!(
            "no Welcome (refused or not yet announced there?): {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_or_a_reset_proves_the_process_gone() {
        assert_eq!(
            classify(io::ErrorKind::ConnectionRefused),
            ConnectFailure::Refused
        );
        assert_eq!(
            classify(io::ErrorKind::ConnectionReset),
            ConnectFailure::Refused
        );
        for kind in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::NetworkDown,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::AddrNotAvailable,
            io::ErrorKind::PermissionDenied,
            io::ErrorKind::Interrupted,
            io::ErrorKind::Other,
        ] {
            assert_eq!(classify(kind), ConnectFailure::Inconclusive, "{kind:?}");
        }
    }

    fn peer(port: u16) -> ServerInfo {
        ServerInfo {
            id: 7,
            group: "game".into(),
            host: "127.0.0.1".into(),
            port,
            properties: std::collections::BTreeMap::default(),
            registered_at_unix_ms: 0,
            alloc_position: 0,
            departing: false,
        }
    }

    #[tokio::test]
    async fn a_refused_connect_ends_the_round_at_the_first_attempt() {
        // A port nothing listens on: bind, note it, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let peer = peer(port);
        let policy = DialPolicy {
            attempts: 5,
            ..DialPolicy::default()
        };
        let failure = dial(&peer, 1, policy, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(failure.refused, "{failure:?}");
        assert_eq!(failure.attempts, 1, "{failure:?}");
    }

    #[tokio::test]
    async fn a_closed_handshake_is_retried_within_the_budget() {
        // Accepts and closes at once, like a peer that has not seen our join.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = listener.accept().await {
                    drop(s);
                }
            }
        });
        let peer = peer(port);
        let policy = DialPolicy {
            attempts: 3,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            connect_timeout: Duration::from_secs(1),
        };
        let failure = dial(&peer, 1, policy, Duration::from_secs(1))
            .await
            .unwrap_err();
        server.abort();
        assert!(!failure.refused, "{failure:?}");
        assert_eq!(failure.attempts, 3, "{failure:?}");
    }
}
