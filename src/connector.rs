//! The connector: DarkRift's `RegisterServer` / `DeregisterServer` /
//! `HandleConnectionFailure`, composed from the lease, the allocator and the watcher.
//!
//! A [`Connector`] owns one etcd client, one watcher task (started at connect time, so the
//! view is warm before the server registers) and at most one registration at a time. Dropping
//! it stops every task it started; a registration dropped without deregistering expires with
//! its lease.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp};
use futures::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::alloc::{self, AllocHint, AllocOutcome, AllocRequest, IdSet};
use crate::client::{bounded, connect};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::KeyLayout;
use crate::lease::LeaseSession;
use crate::record::{Registration, ServerInfo};
use crate::watcher::{self, lock, Command, SharedView, WatcherSettings};

/// A DarkRift server registry connector backed by etcd.
///
/// # Example
/// ```no_run
/// # async fn demo() -> darkrift_etcd::Result<()> {
/// use darkrift_etcd::{Connector, ConnectorConfig, Event};
/// use futures::StreamExt;
///
/// let connector = Connector::connect(ConnectorConfig::new(["http://127.0.0.1:2379"])).await?;
/// let mut events = connector.events()?;
/// let id = connector.register_server("game", "10.0.0.5", 4296, Default::default()).await?;
/// while let Some(event) = events.next().await {
///     match event {
///         Event::Join { server, .. } => println!("{} joined", server.id),
///         Event::Leave { id, .. } => println!("{id} left"),
///         _ => {}
///     }
/// }
/// connector.deregister_server().await?;
/// # Ok(()) }
/// ```
pub struct Connector {
    client: Client,
    config: ConnectorConfig,
    layout: KeyLayout,
    shared: SharedView,
    synced: watch::Receiver<bool>,
    commands: mpsc::Sender<Command>,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    registration: tokio::sync::Mutex<Option<Held>>,
    spread_seed: u64,
    requests: AtomicU64,
    _stop: DropGuard,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("prefix", &self.layout.prefix())
            .field("endpoints", &self.config.endpoints)
            .finish_non_exhaustive()
    }
}

/// What we hold while registered.
#[derive(Debug)]
struct Held {
    id: u16,
    server_key: String,
    create_revision: i64,
    lease: LeaseSession,
}

/// What [`Connector::handle_connection_failure`] found out about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Its registration is still in etcd: the failure is between us and it, not a departure.
    Registered,
    /// Its registration is gone; its leave has been delivered (or is about to be, in order).
    Gone,
    /// The id is not a member of our view (never joined, or already left).
    Unknown,
}

impl Connector {
    /// Validates `config`, connects to etcd (bounded by `connect_timeout`) and starts
    /// watching the registry.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad setting (nothing is contacted);
    /// [`Error::Unreachable`] when no endpoint answers within the connect timeout.
    pub async fn connect(config: ConnectorConfig) -> Result<Self> {
        let layout = config.validate()?;
        let client = connect(&config, &layout.cursor_key()).await?;
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(config.event_queue);
        let settings = WatcherSettings {
            layout: layout.clone(),
            page_size: config.page_size,
            request_timeout: config.request_timeout,
        };
        let task = watcher::spawn(client.clone(), settings, tx, cancel.clone());
        Ok(Connector {
            client,
            config,
            layout,
            shared: task.shared,
            synced: task.synced,
            commands: task.commands,
            events: Mutex::new(Some(rx)),
            registration: tokio::sync::Mutex::new(None),
            spread_seed: rand::random(),
            requests: AtomicU64::new(0),
            _stop: cancel.drop_guard(),
        })
    }

    /// The settings in force.
    #[must_use]
    pub fn config(&self) -> &ConnectorConfig {
        &self.config
    }

    /// The underlying etcd client (shares the connection).
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Takes the event stream: every join and leave of the registry (this server included),
    /// in etcd revision order, and [`Event::Synced`] once the initial snapshot is delivered.
    ///
    /// The stream is bounded (`event_queue`): a consumer that falls behind makes the watcher
    /// wait, it never loses an event. If nobody takes the stream the watcher still keeps
    /// the view current but stops reading etcd once the queue is full.
    ///
    /// # Errors
    /// [`Error::EventsTaken`] on the second call.
    pub fn events(&self) -> Result<EventStream> {
        let mut slot = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.take()
            .map(|rx| EventStream { rx })
            .ok_or(Error::EventsTaken)
    }

    /// Delivers every event to a DarkRift-style handler on its own task. Ends when the
    /// connector is dropped; returns the handler then.
    ///
    /// # Errors
    /// [`Error::EventsTaken`] when the event stream was already taken.
    pub fn spawn_handler<H: ServerRegistryHandler>(
        &self,
        mut handler: H,
    ) -> Result<tokio::task::JoinHandle<H>> {
        let mut events = self.events()?;
        Ok(tokio::spawn(async move {
            while let Some(event) = events.rx.recv().await {
                match event {
                    Event::Join { server, revision } => {
                        handler.handle_server_join(&server, revision)
                    }
                    Event::Leave { id, revision, .. } => handler.handle_server_leave(id, revision),
                    Event::Synced { revision } => handler.handle_synced(revision),
                }
            }
            handler
        }))
    }

    /// Waits until the initial snapshot has been applied to the view.
    ///
    /// # Errors
    /// [`Error::Timeout`] when etcd did not deliver it within `bound`.
    pub async fn wait_synced(&self, bound: std::time::Duration) -> Result<()> {
        let mut synced = self.synced.clone();
        let outcome =
            tokio::time::timeout(bound, async { synced.wait_for(|s| *s).await.is_ok() }).await;
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout {
                op: "initial snapshot",
                timeout: bound,
            }),
        }
    }

    /// The live servers as this connector's view has them, sorted by id.
    #[must_use]
    pub fn servers(&self) -> Vec<ServerInfo> {
        lock(&self.shared).view.servers()
    }

    /// How many malformed or conflicting records under the prefix were skipped so far.
    #[must_use]
    pub fn skipped_records(&self) -> u64 {
        lock(&self.shared).view.skipped()
    }

    /// How many etcd requests registrations have sent so far (lease grants and allocation
    /// transactions; the watcher's reads are not counted).
    #[must_use]
    pub fn registration_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The id held, if registered.
    pub async fn registered_id(&self) -> Option<u16> {
        self.registration.lock().await.as_ref().map(|h| h.id)
    }

    /// True while registered and the lease is confirmed alive by the local deadline.
    pub async fn is_registered(&self) -> bool {
        self.registration
            .lock()
            .await
            .as_ref()
            .is_some_and(|h| h.lease.is_alive())
    }

    /// Registers this server and returns its cluster-unique id (DarkRift's `RegisterServer`).
    ///
    /// Validates the input first (nothing is written on a bad input), waits for the initial
    /// snapshot (it tells which ids are taken), grants a lease of `lease_ttl`, then claims an id
    /// with one transaction per attempt (see [`crate::alloc`]).
    ///
    /// # Errors
    /// [`Error::InvalidRegistration`], [`Error::AlreadyRegistered`],
    /// [`Error::IdSpaceExhausted`], [`Error::AllocationContention`], or an etcd failure.
    pub async fn register_server(
        &self,
        group: &str,
        host: &str,
        port: u16,
        properties: BTreeMap<String, String>,
    ) -> Result<u16> {
        let registration = Registration::new(group, host, port, properties)?;
        let mut held = self.registration.lock().await;
        if let Some(h) = held.as_ref() {
            return Err(Error::AlreadyRegistered { id: h.id });
        }
        self.wait_synced(self.config.connect_timeout.max(self.config.request_timeout))
            .await?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let lease = LeaseSession::grant(
            &self.client,
            self.config.lease_ttl,
            self.config.request_timeout,
        )
        .await?;
        match self.allocate(&registration, lease.id()).await {
            Ok((id, server_key, create_revision)) => {
                tracing::info!(
                    id,
                    group,
                    host,
                    port,
                    revision = create_revision,
                    "registered"
                );
                *held = Some(Held {
                    id,
                    server_key,
                    create_revision,
                    lease,
                });
                Ok(id)
            }
            Err(e) => {
                if let Err(revoke) = lease
                    .revoke(&self.client, self.config.request_timeout)
                    .await
                {
                    tracing::debug!(error = %revoke, "revoking the unused lease failed; it expires");
                }
                Err(e)
            }
        }
    }

    /// Claims an id: one transaction per attempt, bounded.
    async fn allocate(
        &self,
        registration: &Registration,
        lease_id: i64,
    ) -> Result<(u16, String, i64)> {
        let params = self.config.alloc_params();
        let mut learned = IdSet::default();
        let mut cursor_seen = 0u64;
        let mut kv = self.client.kv_client();
        for attempt in 0..self.config.max_alloc_attempts {
            let hint = {
                let shared = lock(&self.shared);
                let mut taken = learned.clone();
                for id in shared.view.ids() {
                    taken.insert(id);
                }
                AllocHint {
                    cursor: shared.cursor.max(cursor_seen),
                    taken,
                }
            };
            let spread = splitmix(self.spread_seed.wrapping_add(u64::from(attempt)));
            let Some(candidate) = alloc::choose(&hint, params, spread) else {
                if !learned.is_empty() {
                    // What we learnt from conflicts may be stale: start over from the view.
                    learned = IdSet::default();
                    continue;
                }
                return Err(self.exhausted_or_contention(attempt).await);
            };
            let record =
                registration.encode(candidate.id, candidate.position, alloc::now_unix_ms());
            let request = AllocRequest {
                layout: &self.layout,
                group: registration.group(),
                candidate,
                cursor: hint.cursor,
                record,
                lease_id,
                params,
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = bounded(
                "allocate id",
                self.config.request_timeout,
                kv.txn(alloc::build_txn(&request)),
            )
            .await?;
            match alloc::read_answer(&self.layout, candidate, &resp) {
                Ok(AllocOutcome::Won { revision }) => {
                    let mut shared = lock(&self.shared);
                    shared.cursor = shared.cursor.max(candidate.position);
                    return Ok((
                        candidate.id,
                        self.layout.server_key(registration.group(), candidate.id),
                        revision,
                    ));
                }
                Ok(AllocOutcome::Lost { cursor, taken }) => {
                    tracing::debug!(
                        attempt,
                        id = candidate.id,
                        cursor,
                        taken = taken.len(),
                        "id taken; retrying"
                    );
                    cursor_seen = cursor_seen.max(cursor);
                    learned.insert(candidate.id);
                    for id in taken {
                        learned.insert(id);
                    }
                }
                Err(why) => {
                    return Err(Error::InvalidConfig(format!(
                        "allocator state under the prefix: {why}"
                    )))
                }
            }
        }
        Err(Error::AllocationContention {
            attempts: self.config.max_alloc_attempts,
        })
    }

    /// Every id looks taken: count the slots to tell a full space from a stale view.
    async fn exhausted_or_contention(&self, attempt: u32) -> Error {
        let mut kv = self.client.kv_client();
        let options = GetOptions::new().with_prefix().with_count_only();
        match bounded(
            "count slots",
            self.config.request_timeout,
            kv.get(self.layout.slots_prefix(), Some(options)),
        )
        .await
        {
            Ok(resp) if resp.count() >= i64::from(self.config.id_space) => {
                Error::IdSpaceExhausted {
                    id_space: self.config.id_space,
                }
            }
            Ok(_) => Error::AllocationContention {
                attempts: attempt + 1,
            },
            Err(e) => e,
        }
    }

    /// Removes this server from the registry (DarkRift's `DeregisterServer`).
    ///
    /// Deletes our server and slot keys only if they are still the ones we created (guarded
    /// by their create revision: a stale handle never deletes a newer registration of the same
    /// id), then revokes the lease, bounded by the smaller of the request timeout and the TTL.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], or an etcd failure (the lease then expires by itself).
    pub async fn deregister_server(&self) -> Result<()> {
        let Some(held) = self.registration.lock().await.take() else {
            return Err(Error::NotRegistered);
        };
        let slot = self.layout.slot_key(held.id);
        let guard = Txn::new()
            .when([
                Compare::create_revision(
                    held.server_key.clone(),
                    CompareOp::Equal,
                    held.create_revision,
                ),
                Compare::create_revision(slot.clone(), CompareOp::Equal, held.create_revision),
            ])
            .and_then([
                TxnOp::delete(held.server_key.clone(), None::<DeleteOptions>),
                TxnOp::delete(slot, None::<DeleteOptions>),
            ]);
        let mut kv = self.client.kv_client();
        let deleted = bounded("deregister", self.config.request_timeout, kv.txn(guard)).await;
        let timeout = self
            .config
            .request_timeout
            .min(held.lease.ttl())
            .max(std::time::Duration::from_millis(100));
        let revoked = held.lease.revoke(&self.client, timeout).await;
        match deleted {
            Ok(resp) if resp.succeeded() => tracing::info!(id = held.id, "deregistered"),
            Ok(_) => tracing::warn!(
                id = held.id,
                "our keys were already gone or re-created by another server; nothing deleted"
            ),
            Err(e) => return Err(e),
        }
        revoked
    }

    /// DarkRift could not reach server `id` (its `HandleConnectionFailure`): re-reads the
    /// peer's key. If the registration is gone, the view is resynchronised so its leave is
    /// delivered, in order, before this returns.
    ///
    /// # Errors
    /// An etcd failure while reading.
    pub async fn handle_connection_failure(&self, id: u16) -> Result<PeerStatus> {
        let (key, create_revision) = {
            let shared = lock(&self.shared);
            match (shared.view.get(id), shared.view.create_revision(id)) {
                (Some(server), Some(rev)) => (self.layout.server_key(&server.group, id), rev),
                _ => return Ok(PeerStatus::Unknown),
            }
        };
        let mut kv = self.client.kv_client();
        let resp = bounded("read peer", self.config.request_timeout, kv.get(key, None)).await?;
        if resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == create_revision)
        {
            return Ok(PeerStatus::Registered);
        }
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Resync(done))
            .await
            .map_err(|_| Error::Shutdown)?;
        wait.await.map_err(|_| Error::Shutdown)?;
        Ok(PeerStatus::Gone)
    }
}

/// DarkRift's join/leave callbacks, for hosts that prefer them to a stream.
pub trait ServerRegistryHandler: Send + 'static {
    /// A server joined (DarkRift's `HandleServerJoin`), this one included.
    fn handle_server_join(&mut self, server: &ServerInfo, revision: i64);
    /// A server left (DarkRift's `HandleServerLeave`).
    fn handle_server_leave(&mut self, id: u16, revision: i64);
    /// The initial snapshot has been delivered.
    fn handle_synced(&mut self, _revision: i64) {}
}

/// The connector's events as a [`Stream`]; ends when the connector is dropped.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event, or `None` once the connector is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// A well-mixed 64-bit hash (splitmix64), to derive each attempt's spread from the seed.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
