//! `darkrift-etcd agent`: one process that registers any number of game servers through a
//! local HTTP API (docs/agent-api.md), over one etcd connection, one watch and one view.
//!
//! | file | job |
//! |---|---|
//! | `api.rs` | the wire types of API version 1 and their validation (pure) |
//! | `handle.rs` | registration handles: unguessable, never stored, hashed into the record |
//! | `fate.rs` | is the game server still there? judged by its event stream (pure) |
//! | `ready.rs` | is it listening yet? TCP connects before a reserved id is announced |
//! | `table.rs` | the registrations, their streams, and the loop that removes the dead |
//! | `http.rs` | routes and error answers; no state |
//!
//! The agent prints one line on stdout, `{"v":1,"event":"listening","addr":…}`, once it accepts
//! connections; logs go to stderr. SIGINT, SIGTERM, or (with `--exit-with-stdin`) the end of its
//! standard input deregister every registration, bounded, and end the process with status 0
//! (`--on-stop keep` leaves them for the next agent to resume instead).

mod api;
mod fate;
mod handle;
mod http;
pub(crate) mod ready;
mod table;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use darkrift_etcd::config::layers::Layered;
use darkrift_etcd::Connector;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::fail::Failure;
use crate::log::TARGET;
use crate::out;

/// The agent's own flags (the registry settings are the CLI's global ones).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AgentArgs {
    /// Where the API listens: a loopback HOST:PORT (port 0 picks one) or unix:PATH.
    #[arg(
        long,
        env = "DARKRIFT_ETCD_AGENT_LISTEN",
        default_value = "127.0.0.1:7600",
        value_name = "ADDR"
    )]
    listen: String,
    /// Deregister everything and exit when standard input reaches its end (a child agent: its
    /// parent keeps the pipe open for as long as it lives).
    #[arg(long)]
    exit_with_stdin: bool,
    /// How long a closed event stream may take to come back before its registration is removed.
    #[arg(long, value_parser = duration, default_value = "150ms", value_name = "DURATION")]
    reattach_window: Duration,
    /// How long a registration may wait for its first event stream.
    #[arg(long, value_parser = duration, default_value = "10s", value_name = "DURATION")]
    attach_bound: Duration,
    /// How long a reserved registration waits for its server to listen (or for `ready`)
    /// before it is announced anyway.
    #[arg(long, value_parser = duration, default_value = "30s", value_name = "DURATION")]
    ready_bound: Duration,
    /// Silence after which an event stream carries a heartbeat line.
    #[arg(long, value_parser = duration, default_value = "5s", value_name = "DURATION")]
    heartbeat: Duration,
    /// What a stop (signal, or the end of stdin) does to the registrations: `deregister` them
    /// (a sidecar or child agent: its servers go with it), or `keep` them for the next agent
    /// to resume within the TTL (a per-node agent being replaced while its servers run on).
    #[arg(long, value_enum, default_value_t = OnStop::Deregister)]
    on_stop: OnStop,
}

/// `--on-stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnStop {
    /// Deregister every registration, bounded by the request timeout.
    Deregister,
    /// Leave them: their leases run out unless the next agent resumes them.
    Keep,
}

pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    darkrift_etcd::config::layers::parse_duration(text)
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// Parses `--listen`: loopback only, since the API has no authentication of its own beyond the
/// handles (a Unix socket's file permissions do that job for per-node use).
fn parse_listen(text: &str) -> Result<Listen, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path".into());
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    let addr: std::net::SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is neither HOST:PORT (an IP address) nor unix:PATH"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the agent's API listens on loopback or a Unix socket only"
        ));
    }
    Ok(Listen::Tcp(addr))
}

/// Resolves when the agent should stop: a signal, or the end of stdin when asked.
async fn stop_requested(exit_with_stdin: bool) {
    let signal = darkrift_etcd::signal::shutdown_signal();
    let stdin = async {
        if !exit_with_stdin {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        // Whatever the parent writes is ignored; only the end of the pipe matters.
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        tracing::info!(target: TARGET, "standard input closed (the parent is gone): stopping");
    };
    tokio::select! {
        r = signal => {
            if let Err(e) = r {
                tracing::warn!(target: TARGET, error = %e, "signal handling failed; stopping");
            }
        }
        () = stdin => {}
    }
}

/// `darkrift-etcd agent`.
pub(crate) async fn run(layered: &Layered, args: &AgentArgs) -> Result<(), Failure> {
    let listen = parse_listen(&args.listen).map_err(Failure::usage)?;
    let cfg = layered.settings.connector.clone();
    cfg.validate()?;
    let settings = table::Settings {
        fate: fate::Bounds {
            attach: args.attach_bound,
            reattach: args.reattach_window,
        },
        ready_bound: args.ready_bound,
        heartbeat: args.heartbeat.max(Duration::from_millis(100)),
    };
    // Bound before etcd is contacted, so a bad address fails at once.
    let listener = bind(&listen).await?;
    let connector = Arc::new(Connector::connect(cfg).await?);
    let table = table::Table::new(connector.clone(), settings);
    let stop = CancellationToken::new();
    tokio::spawn(table.clone().run_fates(stop.child_token()));
    let app = http::router(table.clone());
    let shutdown = {
        let stop = stop.clone();
        let exit_with_stdin = args.exit_with_stdin;
        async move {
            tokio::select! {
                () = stop_requested(exit_with_stdin) => stop.cancel(),
                () = stop.cancelled() => {}
            }
        }
    };
    let serving = match listener {
        Bound::Tcp(l) => {
            let addr = l.local_addr().map_err(|e| Failure::usage(e.to_string()))?;
            announce_listening(&addr.to_string())?;
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(shutdown).await })
        }
        Bound::Unix(l, path) => {
            announce_listening(&format!("unix:{}", path.display()))?;
            tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(shutdown).await })
        }
    };
    // The server ends only at shutdown (graceful: open event streams end with the table's
    // entries below, and the HTTP server then stops).
    stop.cancelled().await;
    match args.on_stop {
        OnStop::Deregister => table.deregister_all().await,
        OnStop::Keep => tracing::info!(
            target: TARGET,
            registrations = table.len(),
            "stopping without deregistering (--on-stop keep): the next agent resumes them within the TTL"
        ),
    }
    match tokio::time::timeout(Duration::from_secs(2), serving).await {
        Ok(Ok(Err(e))) => {
            tracing::warn!(target: TARGET, error = %e, "API server ended with an error");
        }
        Ok(Err(e)) => tracing::warn!(target: TARGET, error = %e, "API server task failed"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    if let Listen::Unix(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn announce_listening(addr: &str) -> Result<(), Failure> {
    out::line("listening", json!({"addr": addr})).map_err(Failure::closed)
}

enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

async fn bind(listen: &Listen) -> Result<Bound, Failure> {
    match listen {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Bound::Tcp)
            .map_err(|e| Failure::usage(format!("cannot listen on {addr}: {e}"))),
        Listen::Unix(path) => bind_unix(path).map(|l| Bound::Unix(l, path.clone())),
    }
}

/// A Unix socket only its owner can use: the directory is created 0700 if missing, the socket
/// made 0600. A stale socket file from a killed agent is replaced (nothing listens on it).
fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, Failure> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail =
        |what: &str, e: std::io::Error| Failure::usage(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("cannot create the directory of", e))?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Failure::usage(format!(
                "{} is in use by a running agent",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| fail("cannot replace the stale socket", e))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| fail("cannot listen on", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail("cannot restrict", e))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_unix_sockets_are_accepted() {
        assert!(matches!(parse_listen("127.0.0.1:0"), Ok(Listen::Tcp(_))));
        assert!(matches!(parse_listen("[::1]:7600"), Ok(Listen::Tcp(_))));
        assert_eq!(
            parse_listen("unix:/run/darkrift/agent.sock"),
            Ok(Listen::Unix("/run/darkrift/agent.sock".into()))
        );
        for bad in [
            "0.0.0.0:7600",
            "10.0.0.5:7600",
            "localhost:7600",
            "unix:",
            "7600",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
