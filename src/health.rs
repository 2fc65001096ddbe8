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
#[derive(Debug, Clone)]
pub struct HttpHealthProbe {
    url: hyper::Uri,
    timeout: Duration,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

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
        })
    }
}

impl HealthProbe for HttpHealthProbe {
    fn check(&self) -> ProbeFuture {
        let request = self.client.get(self.url.clone());
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, request).await {
                Ok(Ok(resp)) => resp.status() == hyper::StatusCode::OK,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "health probe failed");
                    false
                }
                Err(_) => false,
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
