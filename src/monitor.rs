//! `--metrics-addr`: Prometheus `/metrics` (the library's metrics, through the `metrics`
//! facade, with their HELP text) and `/healthz` (200 while healthy, 503 otherwise), shared by
//! the CLI's `register` and `watch` and the mesh server.
//!
//! Bind the listener ([`bind`]) before anything else happens, so a bad or busy address fails
//! the command at once rather than after it registered; then [`serve`] with the host's
//! readiness rule (registered and fresh, for a server: a Kubernetes readiness probe).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Whether `/healthz` answers 200.
pub type Healthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the monitoring endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The address cannot be listened on (in use, not local, no permission): a usage error.
    #[error("--metrics-addr {addr}: cannot listen: {source}")]
    Listen {
        /// The address given.
        addr: SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// A metrics recorder is already installed in this process.
    #[error("metrics: {0}")]
    Recorder(String),
}

/// A bound listener and the installed recorder.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    handle: PrometheusHandle,
}

/// Installs the Prometheus recorder (process-wide, once) and binds `addr`.
///
/// # Errors
/// [`MonitorError::Listen`] or [`MonitorError::Recorder`].
pub async fn bind(addr: SocketAddr) -> Result<Bound, MonitorError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MonitorError::Listen { addr, source })?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| MonitorError::Recorder(e.to_string()))?;
    crate::metrics::describe();
    Ok(Bound { listener, handle })
}

fn metrics(handle: &PrometheusHandle) -> impl IntoResponse {
    // Histograms are folded into their buckets on upkeep; doing it per scrape keeps them
    // current without a background task.
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

fn healthz(healthy: &Healthy) -> impl IntoResponse {
    if healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered, or the view is stale\n",
        )
    }
}

/// The endpoint's routes: `/metrics`, `/healthz`, 404 for anything else.
fn router(handle: PrometheusHandle, healthy: Healthy) -> Router {
    Router::new()
        .route("/metrics", get(move || async move { metrics(&handle) }))
        .route("/healthz", get(move || async move { healthz(&healthy) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

/// Serves `/metrics` and `/healthz` on its own task until the process ends.
///
/// The server is axum's (`axum::serve`, over hyper): a failed accept (out of file descriptors,
/// say) is retried after a pause of one second, not at once, so a process at its descriptor
/// limit waits for connections to close instead of spinning on `accept`.
pub fn serve(bound: Bound, healthy: Healthy) {
    let Bound { listener, handle } = bound;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(handle, healthy)).await {
            tracing::warn!(error = %e, "metrics: the endpoint stopped");
        }
    });
}
