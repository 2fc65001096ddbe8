//! `--metrics-addr`: Prometheus `/metrics` (the library's metrics, through the `metrics`
//! facade, with their HELP text), `/healthz` (200 while healthy, 503 otherwise: for
//! monitoring) and `/readyz` (200 while this server may take traffic: for a readiness probe),
//! shared by the CLI's `register` and `watch` and the mesh server.
//!
//! Why two: `/healthz` says "registered and the view of the cluster is fresh", so during an
//! etcd outage it is 503 on every server at once. A readiness probe on it would take every
//! game server out of service because the *registry* is down, although each still serves its
//! players; `/readyz` asks only whether this server holds (and announced) its registration.
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
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Whether `/healthz` answers 200.
pub type Healthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// Run before each `/metrics` render: the host sets gauges read from its state there.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// The standard process series of Prometheus's client libraries (what `process_*` alerts and
/// dashboards expect), read from Linux's /proc at each scrape; absent elsewhere.
const PROCESS_CPU: &str = "process_cpu_seconds_total";
const PROCESS_RSS: &str = "process_resident_memory_bytes";
const PROCESS_FDS: &str = "process_open_fds";
const PROCESS_START: &str = "process_start_time_seconds";
/// Linux's clock tick as user space sees it (`USER_HZ`, what `getconf CLK_TCK` prints): fixed at
/// 100 by the kernel's ABI on every architecture Rust targets.
const TICKS_PER_SECOND: f64 = 100.0;

fn describe_process() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "User and system CPU time spent."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory size.");
    describe_gauge!(PROCESS_FDS, "Open file descriptors.");
    describe_gauge!(
        PROCESS_START,
        Unit::Seconds,
        "Start time of the process since the Unix epoch."
    );
}

/// Sets the process series from /proc/self (a few reads; no crate needed for four numbers).
fn process_metrics() {
    #[allow(
        clippy::cast_precision_loss,
        reason = "ticks, bytes and descriptor counts are far below 2^52"
    )]
    fn f(v: u64) -> f64 {
        v as f64
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name, which may hold spaces: field 3 is index 0.
    let fields: Vec<u64> = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .unwrap_or_default()
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if let (Some(utime), Some(stime), Some(start)) =
        (fields.get(11), fields.get(12), fields.get(19))
    {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a counter is u64; CPU seconds are small and never negative"
        )]
        let cpu = (f(utime + stime) / TICKS_PER_SECOND) as u64;
        metrics::counter!(PROCESS_CPU).absolute(cpu);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        });
        if let Some(boot) = boot {
            metrics::gauge!(PROCESS_START).set(f(boot) + f(*start) / TICKS_PER_SECOND);
        }
    }
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
    if let Some(kib) = rss_kib {
        metrics::gauge!(PROCESS_RSS).set(f(kib * 1024));
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_FDS).set(f(dir.count() as u64));
    }
}

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
    // The keep-alive RTT as a histogram with buckets (the exporter's default is a summary,
    // whose quantiles cannot be aggregated across processes).
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::KEEPALIVE_RTT.to_owned()),
            crate::metrics::KEEPALIVE_RTT_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| MonitorError::Recorder(e.to_string()))?;
    crate::metrics::describe();
    describe_process();
    crate::metrics::export_zeros();
    process_metrics();
    Ok(Bound { listener, handle })
}

fn metrics(handle: &PrometheusHandle, refresh: &Refresh) -> impl IntoResponse {
    process_metrics();
    refresh();
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

fn readyz(ready: &Healthy) -> impl IntoResponse {
    if ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not registered\n")
    }
}

/// The endpoint's routes: `/metrics`, `/healthz`, `/readyz`, 404 for anything else.
fn router(handle: PrometheusHandle, probes: Probes) -> Router {
    let Probes {
        healthy,
        ready,
        refresh,
    } = probes;
    Router::new()
        .route(
            "/metrics",
            get(move || async move { metrics(&handle, &refresh) }),
        )
        .route("/healthz", get(move || async move { healthz(&healthy) }))
        .route("/readyz", get(move || async move { readyz(&ready) }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
}

/// Serves `/metrics` and `/healthz` on its own task until the process ends.
///
/// The server is axum's (`axum::serve`, over hyper): a failed accept (out of file descriptors,
/// say) is retried after a pause of one second, not at once, so a process at its descriptor
/// limit waits for connections to close instead of spinning on `accept`.
/// `/readyz` answers as `/healthz` here.
pub fn serve(bound: Bound, healthy: Healthy) {
    serve_with(
        bound,
        Probes {
            ready: healthy.clone(),
            healthy,
            refresh: Arc::new(|| {}),
        },
    );
}

/// What the endpoint answers with.
#[derive(Clone)]
pub struct Probes {
    /// `/healthz`: registered (if registering) and the view fresh.
    pub healthy: Healthy,
    /// `/readyz`: this server may take traffic (registered and announced), whatever etcd's
    /// state.
    pub ready: Healthy,
    /// Run before each `/metrics` render (to set gauges such as
    /// [`crate::metrics::REGISTERED`] and [`crate::metrics::VIEW_FRESH`] from the host's
    /// state).
    pub refresh: Refresh,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

/// [`serve`] with a `/readyz` rule of its own and a refresh before each `/metrics` render.
pub fn serve_with(bound: Bound, probes: Probes) {
    let Bound { listener, handle } = bound;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(handle, probes)).await {
            tracing::warn!(error = %e, "metrics: the endpoint stopped");
        }
    });
}
