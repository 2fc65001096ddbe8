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

/// Installs the SIGTERM and SIGINT handlers now, and returns what resolves when one arrives.
///
/// Unlike [`shutdown_signal`], whose handlers are installed when it is first polled, a signal
/// that arrives before the returned future is polled (during start-up, while registering) is
/// neither missed nor fatal: from this call on it no longer ends the process by its default
/// action.
///
/// # Errors
/// The signal handlers could not be installed.
#[cfg(unix)]
pub fn install_shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Installs the Ctrl-C handler when first polled (the only shutdown signal outside Unix).
///
/// # Errors
/// Never here; a handler that cannot be installed resolves the future.
#[cfg(not(unix))]
pub fn install_shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
