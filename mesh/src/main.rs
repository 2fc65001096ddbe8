//! A DarkRift-style mesh server on the etcd registry.
//!
//! It listens on its advertised port, registers in its group, dials the servers of the groups
//! its group connects to as they join (exponential backoff, a retry budget, then
//! `handle_connection_failure`), accepts Identify only from announced servers of groups that
//! connect to its own, and closes the links of servers that leave. Each change is printed to
//! stdout as one JSON line; logs go to stderr (`RUST_LOG`). SIGINT / SIGTERM deregister and
//! stop; SIGKILL is a crash: peers see the leave when the lease expires or, with eviction on
//! (`--eviction-min-reporters 2`), as soon as enough of the servers dialling it find their
//! connects refused and report it (see the README, "Fast crash detection").
//!
//! ```text
//! cargo run -p darkrift-etcd-mesh -- \
//!     --cluster compose/cluster.toml --group lobby --host 127.0.0.1 --port 7001
//! ```

use std::process::ExitCode;

use clap::Parser;
use darkrift_etcd_mesh::{Mesh, MeshArgs};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = MeshArgs::parse();
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mesh: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Bound before anything else: a bad address fails at once, before registering.
    let monitor = match args.metrics_addr {
        Some(addr) => match darkrift_etcd::monitor::bind(addr).await {
            Ok(bound) => Some(bound),
            Err(e) => {
                eprintln!("mesh: error: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let (mut mesh, mut events) = match Mesh::start(config).await {
        Ok(started) => started,
        Err(e) => {
            eprintln!("mesh: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(bound) = monitor {
        darkrift_etcd::monitor::serve(bound, mesh.readiness());
    }
    // Print every mesh change, in order; the printer ends when the mesh drops its sender.
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match serde_json::to_string(&event) {
                Ok(line) => println!("{line}"),
                Err(e) => tracing::warn!(error = %e, "event not printable"),
            }
        }
    });
    let outcome = tokio::select! {
        signal = darkrift_etcd::signal::shutdown_signal() => {
            if let Err(e) = signal {
                tracing::warn!(error = %e, "signal handling failed; stopping");
            }
            mesh.shutdown().await
        }
        stopped = mesh.wait() => stopped,
    };
    if let Err(e) = printer.await {
        tracing::warn!(error = %e, "printer task failed");
    }
    let code = match outcome {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mesh: error: {e}");
            1
        }
    };
    // Exit now rather than when the runtime is dropped: that waits for every blocking task,
    // and a dial may be stuck resolving a peer that is gone (getaddrinfo cannot be cancelled;
    // Docker's DNS took 20 s to fail the name of a killed container), which held `docker stop`
    // for up to its grace period after the deregistration. stdout is line-buffered and the
    // printer has finished, so nothing is lost.
    std::process::exit(code)
}
