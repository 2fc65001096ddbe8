//! The moment a host should deregister: SIGTERM (what Kubernetes and `docker stop` send before
//! killing a pod) or SIGINT (Ctrl-C). Deregistering then lets peers see the leave at once
//! instead of one lease TTL later.

/// Resolves when SIGTERM or SIGINT arrives.
///
/// # Errors
/// The signal handlers could not be installed.
#[cfg(unix)]
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Resolves when Ctrl-C arrives (the only shutdown signal outside Unix).
///
/// # Errors
/// The signal handler could not be installed.
#[cfg(not(unix))]
pub async fn shutdown_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
