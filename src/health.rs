//! Health-gated liveness: the lease is kept alive only while a health probe passes.
//!
//! DarkRift's registry should not list a server that is up but not serving. A [`HealthProbe`]
//! (a user closure, or [`HttpHealthProbe`], compatible with DarkRift's built-in
//! `GET http://localhost:10666/health`, 200 = healthy) is polled every `interval`; its
//! verdict gates the keep-alive. Unhealthy for longer than the TTL → the lease expires and
//! peers see a leave; healthy again → the registration comes back with the same id
//! (ARCHITECTURE.md, "Registration supervisor"). A probe that does not answer within its timeout counts as
//! unhealthy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// DarkRift's default health-check URL.
pub const DEFAULT_HEALTH_URL: &str = "http://localhost:10666/health";

/// A boxed future returned by a probe.
pub type ProbeFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Decides whether this server is healthy.
pub trait HealthProbe: Send + Sync + 'static {
    /// One check; `true` = healthy.
    fn check(&self) -> ProbeFuture;
}

impl<F, Fut> HealthProbe for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn check(&self) -> ProbeFuture {
        Box::pin(self())
    }
}

/// Health probe settings (the HTTP probe), as found in [`crate::ConnectorConfig::health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// URL to GET; 200 = healthy (DarkRift's `healthCheckUrl`).
    pub url: String,
    /// Time between checks (DarkRift Consul connector's `healthCheckPollIntervalMs`).
    #[serde(with = "crate::config::secs")]
    pub interval: Duration,
    /// Bound on one check; no answer in time = unhealthy (`healthCheckTimeoutMs`).
    #[serde(with = "crate::config::secs")]
    pub timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            url: DEFAULT_HEALTH_URL.to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `GET url` → healthy iff the status is 200 within the timeout.
///
/// # A probe is never abandoned
/// DarkRift's `HttpHealthCheck` answers on a thread of its own and does not catch the error of
/// writing to a connection its client already closed: a probe that times out on our side and
/// is answered later (the server was frozen by SIGSTOP, or a stalled disk, then resumed) ends
/// the whole DarkRift process. So a probe that misses its timeout counts as unhealthy, but its
/// request stays open until the server answers it, and no second request is sent while one is
/// in flight: a server that resumes answers one request, to a client that is still there. The
/// request is dropped only after [`ABANDON_AFTER`] (a server frozen that long is gone for any
/// purpose), or when the process ends.
#[derive(Debug, Clone)]
pub struct HttpHealthProbe {
    url: hyper::Uri,
    timeout: Duration,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    /// The request still waiting for its answer, if one missed its timeout.
    in_flight: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<bool>>>>,
}

/// How long a probe request is kept open, at most, waiting for a late answer.
pub const ABANDON_AFTER: Duration = Duration::from_secs(600);

impl HttpHealthProbe {
    /// A probe of `url` (http only) bounded by `timeout`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidConfig`] when the URL does not parse or is not `http://`.
    pub fn new(url: &str, timeout: Duration) -> crate::Result<Self> {
        let uri = parse_url(url)?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(HttpHealthProbe {
            url: uri,
            timeout,
            client,
            in_flight: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }
}

impl HealthProbe for HttpHealthProbe {
    fn check(&self) -> ProbeFuture {
        let this = self.clone();
        Box::pin(async move {
            let mut slot = this.in_flight.lock().await;
            // A request still out from an earlier check is waited for, never replaced.
            let mut request = if let Some(request) = slot.take() {
                request
            } else {
                let request = this.client.get(this.url.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(ABANDON_AFTER, request).await {
                        Ok(Ok(resp)) => resp.status() == hyper::StatusCode::OK,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "health probe failed");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(after = ?ABANDON_AFTER, "health probe unanswered: abandoned");
                            false
                        }
                    }
                })
            };
            if let Ok(verdict) = tokio::time::timeout(this.timeout, &mut request).await {
                verdict.unwrap_or(false)
            } else {
                // Late: unhealthy now, and the request stays open for its answer.
                *slot = Some(request);
                false
            }
        })
    }
}

/// Parses a health URL (pure: [`crate::ConnectorConfig::validate`] calls it without building
/// a client).
///
/// # Errors
/// [`crate::Error::InvalidConfig`] when the URL does not parse or is not `http://` with a host.
pub(crate) fn parse_url(url: &str) -> crate::Result<hyper::Uri> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| crate::Error::InvalidConfig(format!("health.url {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(crate::Error::InvalidConfig(format!(
            "health.url {url:?}: must be an http:// URL with a host"
        )));
    }
    Ok(uri)
}

/// Polls `probe` every `interval` until cancelled; publishes each verdict (only changes wake
/// the receivers). The first verdict is taken at once.
pub(crate) fn spawn_gate(
    probe: Arc<dyn HealthProbe>,
    interval: Duration,
    cancel: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let healthy = tokio::select! {
                () = cancel.cancelled() => return,
                h = probe.check() => h,
            };
            let changed = tx.send_if_modified(|v| {
                let changed = *v != healthy;
                *v = healthy;
                changed
            });
            if changed {
                if healthy {
                    tracing::info!("health probe passes again");
                } else {
                    tracing::warn!("health probe fails: keep-alive paused");
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers its first request only after `delay` (a frozen, then resumed,
    /// DarkRift), counts connections, and reports whether its late answer found the client
    /// still there.
    async fn slow_server(
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let first = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            counter.fetch_add(1, Ordering::SeqCst);
            // Count any further connection while the first waits.
            let more = tokio::spawn(async move {
                while let Ok((_conn, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            tokio::time::sleep(delay).await;
            let body = "{\"listening\": true}\n";
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let wrote = conn.write_all(answer.as_bytes()).await.is_ok();
            // A closed client shows as EOF (or a reset) on a read; a live one keeps the
            // connection open for reuse, so the read times out.
            let still_open = tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf))
                .await
                .is_err();
            more.abort();
            wrote && still_open
        });
        (format!("http://{addr}/health"), accepted, first)
    }

    #[tokio::test]
    async fn a_late_probe_counts_unhealthy_but_stays_open_for_its_answer() {
        let (url, accepted, answered) = slow_server(Duration::from_millis(600)).await;
        let probe = HttpHealthProbe::new(&url, Duration::from_millis(100)).expect("url");
        assert!(!probe.check().await, "late: unhealthy");
        assert!(!probe.check().await, "still late: unhealthy");
        // The first request was not abandoned: its answer, when it comes, is the verdict.
        let mut verdict = false;
        for _ in 0..20 {
            if probe.check().await {
                verdict = true;
                break;
            }
        }
        assert!(verdict, "the late answer was taken as healthy");
        assert!(
            answered.await.expect("server"),
            "the late answer found its client there"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "no second request while the first was out"
        );
    }
}
