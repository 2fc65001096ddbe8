//! `--metrics-addr`: Prometheus `/metrics` (the library's metrics, through the `metrics`
//! facade, with their HELP text) and `/healthz` (200 while healthy, 503 otherwise), shared by
//! the CLI's `register` and `watch` and the mesh server.
//!
//! Bind the listener ([`bind`]) before anything else happens, so a bad or busy address fails
//! the command at once rather than after it registered; then [`serve`] with the host's
//! readiness rule (registered and fresh, for a server: a Kubernetes readiness probe).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

fn route(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    healthy: &Healthy,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            // Histograms are folded into their buckets on upkeep; doing it per scrape keeps
            // them current without a background task.
            handle.run_upkeep();
            answer(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
        }
        "/healthz" if healthy() => answer(StatusCode::OK, "text/plain", "ok\n".into()),
        "/healthz" => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not registered, or the view is stale\n".into(),
        ),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves `/metrics` and `/healthz` on its own task until the process ends.
pub fn serve(bound: Bound, healthy: Healthy) {
    let Bound { listener, handle } = bound;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    continue;
                }
            };
            let (handle, healthy) = (handle.clone(), healthy.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = route(&req, &handle, &healthy);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "metrics: connection failed");
                }
            });
        }
    });
}
