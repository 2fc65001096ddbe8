//! "Is the game server listening yet?": TCP connects to its advertised host:port.
//!
//! DarkRift asks for its id before its listeners start, so a reserved registration is
//! announced only once a connect succeeds: a peer told of it then dials a listener that is up,
//! instead of failing once and waiting out DarkRift's 4 s reconnect backoff. The probe stops
//! at the first accepted connect (closed at once; DarkRift sees a client that leaves without a
//! word, which it handles). After `bound` the server is announced anyway, logged and counted:
//! its id is in use already, and a server that never listens on its advertised port is a
//! configuration error better shown to its peers than hidden.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Time between connects: small against the 200 ms a join may take to get linked.
pub(crate) const INTERVAL: Duration = Duration::from_millis(20);

/// Bound on one connect: a black-holed address must not hold the probe past its interval for
/// long.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// How the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// A connect succeeded after `attempts` tries.
    Listening {
        /// Connects tried, the successful one included.
        attempts: u32,
    },
    /// Nothing accepted within the bound.
    GaveUp,
}

/// Connects to `host:port` every [`INTERVAL`] until one succeeds or `bound` passes.
pub(crate) async fn wait_listening(host: &str, port: u16, bound: Duration) -> Readiness {
    let until = Instant::now() + bound;
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let left = until.saturating_duration_since(Instant::now());
        // One connect is bounded too: a black-holed address would otherwise hang past `bound`.
        let attempt = CONNECT_TIMEOUT.min(left);
        if let Ok(Ok(stream)) =
            tokio::time::timeout(attempt, TcpStream::connect((host, port))).await
        {
            drop(stream);
            return Readiness::Listening { attempts };
        }
        if Instant::now() + INTERVAL >= until {
            return Readiness::GaveUp;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_comes_up_later_is_seen_within_an_interval_or_two() {
        // Reserve a free port, close it, and open it again a little later.
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let opened = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("rebind");
            // Keep it open until the probe has connected.
            let _ = listener.accept().await;
        });
        let r = wait_listening("127.0.0.1", port, Duration::from_secs(10)).await;
        assert!(
            matches!(r, Readiness::Listening { attempts } if attempts >= 2),
            "{r:?}"
        );
        opened.await.expect("listener task");
    }

    #[tokio::test]
    async fn a_port_that_never_listens_gives_up_after_the_bound() {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = probe.local_addr().expect("addr").port();
        drop(probe);
        let r = wait_listening("127.0.0.1", port, Duration::from_millis(150)).await;
        assert_eq!(r, Readiness::GaveUp);
    }
}
