//! A server-to-server mesh driven by the registry (feature `mesh`): what DarkRift's core does
//! with joins and leaves, as a small runnable server. `mesh/src/main.rs` wraps it in a
//! process; `mesh/tests/mesh.rs` runs several in one test.
//!
//! A [`Mesh`] listens on its TCP port, registers, feeds a [`ClusterCore`] with the registry's
//! events, and then:
//! - dials each upstream server as it joins ([`DialPolicy`]: exponential backoff, a retry
//!   budget), sends [`Frame::Identify`] with its id and waits for the [`Frame::Welcome`]; a
//!   refused connect ends the round at once ([`classify`]: the peer's process is gone);
//! - redials at once when an upstream link closes, so a peer that crashed is refused and
//!   checked within milliseconds of its sockets closing;
//! - accepts a connection only if it identifies itself within `identify_timeout` (10 s, as
//!   DarkRift) as a server the registry has announced, in a group that connects to ours;
//! - closes the connections of a server that leaves, and stops dialling it;
//! - when a round of dial attempts fails, asks the connector
//!   ([`Connector::handle_connection_failure`]): a peer still registered gets a new round, a
//!   peer gone gets its leave;
//! - reports every change as a [`MeshEvent`] and keeps a [`MeshState`] to watch.
//!
//! [`ClusterCore`]: darkrift_etcd::cluster::ClusterCore
//! [`Connector::handle_connection_failure`]: darkrift_etcd::Connector::handle_connection_failure

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use darkrift_etcd::cluster::{Direction, Topology};
use darkrift_etcd::config::ConnectorConfig;

pub mod args;
mod dial;
pub mod frame;
mod server;

pub use args::MeshArgs;
pub use dial::{classify, ConnectFailure, DialPolicy};
pub use frame::Frame;

/// DarkRift's bound on an incoming connection's Identify.
pub const DEFAULT_IDENTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a [`Mesh`] server needs.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Registry settings.
    pub connector: ConnectorConfig,
    /// Advertised host (registered; what peers dial).
    pub host: String,
    /// Advertised port (registered; what peers dial).
    pub port: u16,
    /// Where to listen; usually `0.0.0.0:<port>`, or the advertised address.
    pub listen: SocketAddr,
    /// Our group and how the other groups relate to it.
    pub topology: Topology,
    /// How upstream servers are dialled.
    pub dial: DialPolicy,
    /// Addresses dialled instead of advertised ones, keyed `host:port` as registered (a local
    /// proxy or a NAT in front of a peer); usually empty.
    pub dial_overrides: BTreeMap<String, SocketAddr>,
    /// Bound on an incoming connection's Identify, and on the Welcome we wait for.
    pub identify_timeout: Duration,
}

/// One connection of the mesh: a peer and who dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Link {
    /// The peer's id.
    pub peer: u16,
    /// [`Direction::Upstream`]: we dialled it; [`Direction::Downstream`]: it dialled us.
    pub direction: Direction,
}

/// The mesh as it stands; watch it with [`Mesh::state`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MeshState {
    /// Our id.
    pub id: u16,
    /// Upstream servers announced by the registry (connected or not).
    pub upstream: BTreeSet<u16>,
    /// Downstream servers announced by the registry (connected or not).
    pub downstream: BTreeSet<u16>,
    /// Identified connections.
    pub links: BTreeSet<Link>,
}

impl MeshState {
    /// True when an identified connection to or from `peer` in `direction` is up.
    #[must_use]
    pub fn is_linked(&self, peer: u16, direction: Direction) -> bool {
        self.links.contains(&Link { peer, direction })
    }

    /// True when `peer` is tracked (upstream or downstream) or linked at all.
    #[must_use]
    pub fn knows(&self, peer: u16) -> bool {
        self.upstream.contains(&peer)
            || self.downstream.contains(&peer)
            || self.links.iter().any(|l| l.peer == peer)
    }
}

/// A change of the mesh, serialized as one JSON line by `mesh/src/main.rs`
/// (`{"event":"connected","peer":3,"direction":"upstream"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MeshEvent {
    /// Listening and registered.
    Registered {
        /// Our id.
        id: u16,
        /// Our group.
        group: String,
        /// Advertised host.
        host: String,
        /// Advertised port.
        port: u16,
    },
    /// The registry announced a tracked server.
    Joined {
        /// Its id.
        peer: u16,
        /// Its group.
        group: String,
        /// Its relation to us.
        direction: Direction,
    },
    /// A tracked server left the registry.
    Left {
        /// Its id.
        peer: u16,
        /// Its relation to us.
        direction: Direction,
    },
    /// An identified connection is up.
    Connected {
        /// The peer.
        peer: u16,
        /// Who dialled.
        direction: Direction,
    },
    /// An identified connection is down.
    Disconnected {
        /// The peer.
        peer: u16,
        /// Who dialled.
        direction: Direction,
        /// Why.
        reason: String,
    },
    /// An incoming connection was refused.
    Rejected {
        /// The id it claimed, if it sent an Identify.
        peer: Option<u16>,
        /// Why.
        reason: String,
    },
    /// A round of dial attempts failed; `status` is what the registry said about the peer.
    GaveUp {
        /// The peer.
        peer: u16,
        /// Attempts made in the round.
        attempts: u32,
        /// The last attempt's error.
        error: String,
        /// `registered`, `gone`, `evicted`, `unknown`, or the error of the check.
        status: String,
        /// The round ended on a refused connect (the peer's process looked gone).
        refused: bool,
    },
    /// Our registration was renewed after a loss (peers saw a leave and a join).
    Reregistered {
        /// The id now held.
        id: u16,
        /// The id held before.
        previous_id: u16,
    },
    /// The mesh stopped.
    Stopped {
        /// Our id.
        id: u16,
        /// Why.
        reason: String,
    },
}

/// Why a mesh could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The registry failed (connect, register, deregister).
    #[error(transparent)]
    Registry(#[from] darkrift_etcd::Error),
    /// The registry stopped our registration for good (see
    /// [`darkrift_etcd::Event::RegistrationStopped`]).
    #[error("registration of server {id} stopped: {reason}")]
    RegistrationStopped {
        /// The id that was held.
        id: u16,
        /// Why.
        reason: String,
    },
    /// The registry's event stream ended (the connector shut down).
    #[error("the registry's event stream ended")]
    EventsEnded,
}

/// A running mesh server. Dropping it is a crash (see [`Mesh::abort`]).
#[derive(Debug)]
pub struct Mesh {
    id: u16,
    local_addr: SocketAddr,
    state: watch::Receiver<MeshState>,
    connector: std::sync::Arc<darkrift_etcd::Connector>,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), MeshError>>>,
}

/// The mesh's events, in order. Drain it or drop it: it is unbounded.
pub type MeshEvents = mpsc::UnboundedReceiver<MeshEvent>;

impl Mesh {
    /// Listens, connects to the registry, registers, and runs the mesh on a task.
    ///
    /// # Errors
    /// [`MeshError::Listen`], or [`MeshError::Registry`] when connecting or registering fails.
    pub async fn start(config: MeshConfig) -> Result<(Mesh, MeshEvents), MeshError> {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let started = server::Runner::start(config, out_tx, stop.clone()).await?;
        let (id, local_addr, state) = (started.id, started.local_addr, started.state.clone());
        let connector = started.connector;
        let task = tokio::spawn(started.runner.run());
        Ok((
            Mesh {
                id,
                local_addr,
                state,
                connector,
                stop,
                task: Some(task),
            },
            out_rx,
        ))
    }

    /// Our id.
    #[must_use]
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The address the listener is bound to.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The readiness rule of `/healthz` (see [`darkrift_etcd::monitor`]): registered (the lease is
    /// confirmed) and the registry view is fresh. Cheap; callable from any thread.
    #[must_use]
    pub fn readiness(&self) -> darkrift_etcd::monitor::Healthy {
        let connector = std::sync::Arc::clone(&self.connector);
        std::sync::Arc::new(move || connector.is_registered() && !connector.is_stale())
    }

    /// The current state, to watch (`wait_for`).
    #[must_use]
    pub fn state(&self) -> watch::Receiver<MeshState> {
        self.state.clone()
    }

    /// Stops cleanly: deregisters first (peers see the leave), then closes every connection.
    ///
    /// # Errors
    /// What stopped the mesh, if it stopped by itself, or the deregistration's error.
    pub async fn shutdown(mut self) -> Result<(), MeshError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|join| {
                tracing::warn!(error = %join, "mesh task ended abnormally");
                Ok(())
            }),
            None => Ok(()),
        }
    }

    /// Resolves when the mesh stops by itself (registry failure, registration stopped) or
    /// after [`Mesh::shutdown`] was requested elsewhere.
    ///
    /// # Errors
    /// What stopped the mesh.
    pub async fn wait(&mut self) -> Result<(), MeshError> {
        match self.task.as_mut() {
            Some(task) => {
                let out = task.await.unwrap_or(Ok(()));
                self.task = None;
                out
            }
            None => Ok(()),
        }
    }

    /// Stops like a crash: no deregistration (peers see the leave when the lease expires),
    /// the listener and every connection closed at once.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
