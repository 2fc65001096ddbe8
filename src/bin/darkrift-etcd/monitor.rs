//! `--metrics-addr`: Prometheus `/metrics` (the library's metrics, through the `metrics`
//! facade, with their HELP text) and `/healthz` (200 while healthy, 503 otherwise).
//!
//! The listener is bound before anything else happens, so a bad or busy address fails the
//! command at once (exit 2) rather than after it registered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::fail::Failure;
use crate::log::TARGET;

/// Whether `/healthz` answers 200.
pub(crate) type Healthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// A bound listener and the installed recorder.
pub(crate) struct Bound {
    listener: TcpListener,
    handle: PrometheusHandle,
}

/// Installs the Prometheus recorder and binds `addr`.
pub(crate) async fn bind(addr: SocketAddr) -> Result<Bound, Failure> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::usage(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| Failure::new(crate::fail::Exit::Other, format!("metrics: {e}")))?;
    darkrift_etcd::metrics::describe();
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
pub(crate) fn serve(bound: Bound, healthy: Healthy) {
    let Bound { listener, handle } = bound;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(target: TARGET, error = %e, "metrics: accept failed");
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
                    tracing::debug!(target: TARGET, error = %e, "metrics: connection failed");
                }
            });
        }
    });
}
