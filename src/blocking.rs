//! A blocking facade over [`crate::Connector`], for hosts that are not async: DarkRift's
//! `RegisterServer` is a synchronous call made once at start-up, before any listener runs.
//!
//! [`Connector`] owns a small multi-threaded tokio runtime: the lease keep-alive and the
//! watcher run on its worker thread whatever the host does, so a host that blocks for a while
//! between calls keeps its registration. Every method blocks the calling thread until the
//! async call completes.
//!
//! Do not call these methods from inside an async runtime (tokio panics on a nested
//! `block_on`); async hosts use [`crate::Connector`] directly.
//!
//! ```no_run
//! use std::time::Duration;
//! use darkrift_etcd::{blocking, ConnectorConfig, Event};
//!
//! # fn main() -> darkrift_etcd::Result<()> {
//! let connector = blocking::Connector::connect(ConnectorConfig::new(["http://127.0.0.1:2379"]))?;
//! let mut events = connector.subscribe();
//! let id = connector.register_server("game", "10.0.0.5", 4296, Default::default())?;
//! println!("registered as {id}");
//! for event in events.iter().take(10) {
//!     if let Event::Join { server, .. } = event {
//!         println!("{} joined", server.id);
//!     }
//! }
//! connector.deregister_server()?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::config::ConnectorConfig;
use crate::connector::{EventStream, PeerStatus};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::record::ServerInfo;

/// Worker threads of the facade's runtime: the connector's tasks are I/O-bound and few.
const WORKER_THREADS: usize = 1;

/// The blocking connector. Dropping it stops the connector's tasks; a registration dropped
/// without [`Connector::deregister_server`] expires with its lease, as after a crash.
#[derive(Debug)]
pub struct Connector {
    // Field order matters: the connector is dropped (its tasks cancelled) before our handle
    // on the runtime; the runtime itself lives until the last `Events` is gone too.
    inner: crate::Connector,
    runtime: Arc<Runtime>,
}

impl Connector {
    /// Starts a runtime, then [`crate::Connector::connect`]s on it.
    ///
    /// # Errors
    /// [`Error::Runtime`] when the runtime cannot start, else as
    /// [`crate::Connector::connect`].
    pub fn connect(config: ConnectorConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("darkrift-etcd")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let inner = runtime.block_on(crate::Connector::connect(config))?;
        Ok(Connector {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// The async connector underneath, for calls this facade does not wrap. Its async methods
    /// must be driven by [`Connector::block_on`].
    #[must_use]
    pub fn inner(&self) -> &crate::Connector {
        &self.inner
    }

    /// Runs a future to completion on the facade's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A new subscription as a blocking receiver (see [`crate::Connector::subscribe`]).
    #[must_use]
    pub fn subscribe(&self) -> Events {
        Events {
            stream: self.inner.subscribe(),
            runtime: Arc::clone(&self.runtime),
        }
    }

    /// The same as [`Connector::subscribe`] (see [`crate::Connector::events`]).
    ///
    /// # Errors
    /// None today; kept as a `Result` so that existing callers compile unchanged.
    pub fn events(&self) -> Result<Events> {
        Ok(self.subscribe())
    }

    /// Registers this server and returns its id (DarkRift's `RegisterServer`); see
    /// [`crate::Connector::register_server`].
    ///
    /// # Errors
    /// As [`crate::Connector::register_server`].
    pub fn register_server(
        &self,
        group: &str,
        host: &str,
        port: u16,
        properties: BTreeMap<String, String>,
    ) -> Result<u16> {
        self.runtime
            .block_on(self.inner.register_server(group, host, port, properties))
    }

    /// Removes this server from the registry (DarkRift's `DeregisterServer`); see
    /// [`crate::Connector::deregister_server`].
    ///
    /// # Errors
    /// As [`crate::Connector::deregister_server`].
    pub fn deregister_server(&self) -> Result<()> {
        self.runtime.block_on(self.inner.deregister_server())
    }

    /// Re-verifies an unreachable peer (DarkRift's `HandleConnectionFailure`); see
    /// [`crate::Connector::handle_connection_failure`].
    ///
    /// # Errors
    /// As [`crate::Connector::handle_connection_failure`].
    pub fn handle_connection_failure(&self, id: u16) -> Result<PeerStatus> {
        self.runtime
            .block_on(self.inner.handle_connection_failure(id))
    }

    /// Waits until the initial snapshot is applied; see [`crate::Connector::wait_synced`].
    ///
    /// # Errors
    /// As [`crate::Connector::wait_synced`].
    pub fn wait_synced(&self, bound: Duration) -> Result<()> {
        self.runtime.block_on(self.inner.wait_synced(bound))
    }

    /// The live servers of the view, sorted by id.
    #[must_use]
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.inner.servers()
    }

    /// The id held, if registered.
    #[must_use]
    pub fn registered_id(&self) -> Option<u16> {
        self.inner.registered_id()
    }
}

/// The connector's events, received by blocking the calling thread. Also an [`Iterator`] that
/// ends when the connector is dropped.
#[derive(Debug)]
pub struct Events {
    stream: EventStream,
    runtime: Arc<Runtime>,
}

impl Events {
    /// The next event, or `None` once the connector is gone.
    pub fn recv(&mut self) -> Option<Event> {
        self.runtime.block_on(self.stream.recv())
    }

    /// The next event, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when nothing arrived in time,
    /// [`RecvTimeoutError::Disconnected`] once the connector is gone.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        let stream = &mut self.stream;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, stream.recv()).await })
        {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(RecvTimeoutError::Disconnected),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// A borrowing iterator over the events; see [`Events::recv`].
    pub fn iter(&mut self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.recv())
    }
}

impl Iterator for Events {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}
