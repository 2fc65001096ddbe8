//! The connector: DarkRift's `RegisterServer` / `DeregisterServer` /
//! `HandleConnectionFailure`, composed from the lease, the allocator, the registration
//! supervisor and the watcher.
//!
//! A [`Connector`] owns one etcd client, one watcher task (started at connect time, so the
//! view is warm before the server registers) and at most one registration at a time. Dropping
//! it stops every task it started; a registration dropped without deregistering expires with
//! its lease.
//!
//! It only wires the parts: the shared registry core (`shared`: pool, view, allocation
//! hint), one registration (`registration::Handle`: lease, claim, supervisor, status) and,
//! with eviction on, the reporter (`eviction`: what a connection failure does). Kept apart
//! so that the protocols are tested on their own and more registrations over one connection
//! are an addition here, not a rewrite.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::connect;
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::events::Event;
pub use crate::events::EventStream;
pub use crate::eviction::PeerStatus;
use crate::eviction::{self, Reports};
use crate::health::{HealthProbe, HttpHealthProbe};
use crate::pool::Pool;
use crate::record::{Registration, ServerInfo};
use crate::registration::{
    Handle, RegisterOptions, RegistrationHandle, RegistrationStatus, StatusRx, Terms,
};
use crate::shared::Shared;
use crate::watcher::{self, Command, WatcherSettings};

/// A DarkRift server registry connector backed by etcd.
///
/// # Example
/// ```no_run
/// # async fn demo() -> darkrift_etcd::Result<()> {
/// use darkrift_etcd::{Connector, ConnectorConfig, Event};
/// use futures::StreamExt;
///
/// let connector = Connector::connect(ConnectorConfig::new(["http://127.0.0.1:2379"])).await?;
/// let mut events = connector.subscribe();
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
///
/// # Recovery
/// The watcher resumes by itself after any etcd error (see the crate's ARCHITECTURE.md); a
/// lost lease is re-registered by itself with the same id ([`Event::LeaseLost`], then
/// [`Event::Reregistered`]); [`Connector::status`] tells where the registration stands.
pub struct Connector {
    shared: Arc<Shared>,
    synced: watch::Receiver<bool>,
    commands: mpsc::Sender<Command>,
    /// The registration, while registered (held across its start and its deregistration).
    registration: tokio::sync::Mutex<Option<Handle>>,
    /// Its status, for the synchronous readers.
    status: Mutex<Option<StatusRx>>,
    probe: Mutex<Option<Arc<dyn HealthProbe>>>,
    /// The reports this server filed and its anti-flap hold (eviction on only).
    reports: Option<Reports>,
    /// The status of each registration made by [`Connector::register`]: together they are
    /// ONE reporter (the first that holds its id files the reports), so that one host cut off
    /// from a healthy server cannot evict it by itself.
    handles: Mutex<Vec<StatusRx>>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("prefix", &self.shared.layout.prefix())
            .field("endpoints", &self.shared.config.endpoints)
            .finish_non_exhaustive()
    }
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
        let pool = connect(&config, &layout.cursor_key(), false).await?;
        Ok(Self::start(pool, config, layout))
    }

    /// Like [`Connector::connect`] but on an existing etcd client (for hosts that share one
    /// connection between several registrations, e.g. benchmarks). The client should have
    /// been built with `require_leader`.
    ///
    /// A client given this way is used as one member: etcd-client balances its requests over
    /// its endpoints, and this connector cannot steer around a member of it that freezes
    /// (see ARCHITECTURE.md, "Gray failures"). [`Connector::connect`] can.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a bad setting.
    pub fn with_client(client: Client, config: ConnectorConfig) -> Result<Self> {
        let layout = config.validate()?;
        let pool = Pool::from_client(client, config.request_timeout);
        Ok(Self::start(pool, config, layout))
    }

    fn start(pool: Pool, config: ConnectorConfig, layout: crate::keys::KeyLayout) -> Self {
        let cancel = CancellationToken::new();
        let settings = WatcherSettings::new(layout.clone(), &config);
        let task = watcher::spawn(pool.clone(), settings, cancel.clone());
        let shared = Arc::new(Shared {
            pool,
            config,
            layout,
            view: task.view,
            commands: task.commands.clone(),
            cursor: crate::alloc::CursorHint::default(),
            spread_seed: rand::random(),
            requests: AtomicU64::new(0),
        });
        let reports = Reports::start(&shared, cancel.child_token());
        Connector {
            shared,
            synced: task.synced,
            commands: task.commands,
            registration: tokio::sync::Mutex::new(None),
            status: Mutex::new(None),
            probe: Mutex::new(None),
            reports,
            handles: Mutex::new(Vec::new()),
            _stop: cancel.drop_guard(),
        }
    }

    /// The settings in force.
    #[must_use]
    pub fn config(&self) -> &ConnectorConfig {
        &self.shared.config
    }

    /// The etcd members this connector talks to (shared with [`crate::admin::Admin`]).
    pub(crate) fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// A new subscription to this connector's events: every join and leave of the registry
    /// (this server included) in etcd revision order, [`Event::Synced`] once the initial
    /// snapshot is delivered, the view's freshness, and this registration's lifecycle
    /// ([`Event::LeaseLost`], [`Event::Reregistered`], …) placed in that order by the rule of
    /// [`crate::events`].
    ///
    /// Any number of subscriptions may be open; each has its own queue of `event_queue`
    /// events. A subscription made after the initial snapshot starts with the current view
    /// (a join per member, then [`Event::Synced`]). Publishing never waits: a consumer that
    /// falls behind by more than its queue is caught up from the view once it reads again
    /// (see the overflow rule in [`crate::events`]), and neither the watcher, the lease
    /// keep-alive nor the other subscriptions wait for it.
    #[must_use]
    pub fn subscribe(&self) -> EventStream {
        self.shared.view.subscribe()
    }

    /// The same as [`Connector::subscribe`] (the name this crate's first versions used, when
    /// a connector had a single stream).
    ///
    /// # Errors
    /// None today; kept as a `Result` so that existing callers compile unchanged.
    pub fn events(&self) -> Result<EventStream> {
        Ok(self.subscribe())
    }

    /// Delivers every event to a DarkRift-style handler on its own task, through a
    /// subscription of its own ([`Connector::subscribe`]). Ends when the connector is dropped;
    /// returns the handler then.
    ///
    /// # Errors
    /// None today; kept as a `Result` so that existing callers compile unchanged.
    pub fn spawn_handler<H: ServerRegistryHandler>(&self, mut handler: H) -> Result<JoinHandle<H>> {
        let mut events = self.subscribe();
        Ok(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Join { server, revision } => {
                        handler.handle_server_join(&server, revision);
                    }
                    Event::Leave { id, revision, .. } => handler.handle_server_leave(id, revision),
                    Event::Synced { revision } => handler.handle_synced(revision),
                    other => handler.handle_other(&other),
                }
            }
            handler
        }))
    }

    /// Waits until the initial snapshot has been applied to the view.
    ///
    /// # Errors
    /// [`Error::Timeout`] when etcd did not deliver it within `bound`.
    pub async fn wait_synced(&self, bound: Duration) -> Result<()> {
        let mut synced = self.synced.clone();
        let wait = async { synced.wait_for(|s| *s).await.is_ok() };
        match tokio::time::timeout(bound, wait).await {
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
        self.shared.view.read(|v| v.members.servers())
    }

    /// True while the view may be out of date (between [`Event::Stale`] and [`Event::Fresh`]).
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.shared.view.read(|v| v.stale)
    }

    /// How many record versions under the prefix were skipped so far: malformed, without a
    /// lease, or shadowed (see [`Connector::shadowed_records`]).
    #[must_use]
    pub fn skipped_records(&self) -> u64 {
        self.shared.view.read(|v| v.members.skipped())
    }

    /// How many valid record versions were shadowed so far: a second key claiming an id that
    /// a key created earlier holds (only a foreign writer can do that). They are also counted
    /// in [`Connector::skipped_records`].
    #[must_use]
    pub fn shadowed_records(&self) -> u64 {
        self.shared.view.read(|v| v.members.shadowed())
    }

    /// How many etcd requests registrations have sent so far (lease grants and allocation
    /// transactions; the watcher's reads are not counted).
    #[must_use]
    pub fn registration_requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// The registration's status, if this connector registered (a `watch` receiver: await
    /// `changed()` to follow it).
    #[must_use]
    pub fn status(&self) -> Option<watch::Receiver<RegistrationStatus>> {
        self.status_rx().map(|status| status.status())
    }

    /// The registration's status channels, if registered.
    fn status_rx(&self) -> Option<StatusRx> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The id held (or being recovered), if registered.
    #[must_use]
    pub fn registered_id(&self) -> Option<u16> {
        self.status().map(|s| s.borrow().id())
    }

    /// The fence: true only while registered and the lease's local deadline has not passed.
    #[must_use]
    pub fn is_registered(&self) -> bool {
        self.status().is_some_and(|s| s.borrow().is_registered())
    }

    /// Gates this server's liveness on `probe` (instead of the HTTP probe of
    /// [`ConnectorConfig::health`]): keep-alives are sent only while it passes, so a server
    /// unhealthy for longer than the TTL leaves, and comes back with the same id once healthy.
    /// Takes effect at the next registration. The probe is polled every
    /// `health.interval` (1 s when no `health` settings are given).
    pub fn set_health_probe(&self, probe: impl HealthProbe) {
        let probe: Arc<dyn HealthProbe> = Arc::new(probe);
        *self
            .probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(probe);
    }

    /// The health probe in force, if any, and its polling interval.
    fn health_probe(&self) -> Result<Option<(Arc<dyn HealthProbe>, Duration)>> {
        let health = self.shared.config.health.clone();
        let interval = health
            .as_ref()
            .map_or(Duration::from_secs(1), |h| h.interval);
        let set = self
            .probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(probe) = set {
            return Ok(Some((probe, interval)));
        }
        match health {
            Some(h) => {
                let probe: Arc<dyn HealthProbe> =
                    Arc::new(HttpHealthProbe::new(&h.url, h.timeout)?);
                Ok(Some((probe, h.interval)))
            }
            None => Ok(None),
        }
    }

    /// Registers this server and returns its cluster-unique id (DarkRift's `RegisterServer`).
    ///
    /// Validates the input first (nothing is written on a bad input), waits for the initial
    /// snapshot (it tells which ids are taken), grants a lease of `lease_ttl`, then claims an id
    /// with one transaction per attempt (ARCHITECTURE.md, "Data path of one registration").
    /// From then on a supervisor task keeps the registration (ARCHITECTURE.md, "Registration
    /// supervisor").
    ///
    /// # Errors
    /// [`Error::InvalidRegistration`], [`Error::GroupNotWatched`], [`Error::AlreadyRegistered`],
    /// [`Error::IdSpaceExhausted`], [`Error::AllocationContention`], or an etcd failure.
    pub async fn register_server(
        &self,
        group: &str,
        host: &str,
        port: u16,
        properties: BTreeMap<String, String>,
    ) -> Result<u16> {
        let registration = Registration::new(group, host, port, properties)?;
        let never = CancellationToken::new();
        self.register_server_or_stop(registration, true, &never)
            .await
    }

    /// [`Connector::register_server`], given up when `stop` resolves first (a host's SIGTERM
    /// during start-up): `Ok(None)` then, and nothing of it is left in etcd. Stopped before its
    /// lease was granted, it wrote nothing; after, the lease is revoked (bounded by the
    /// request timeout), which deletes whatever the allocation may have written on it and
    /// nothing else. A registration that completed before `stop` was noticed is returned as
    /// usual (`Ok(Some(id))`): deregister it.
    ///
    /// # Errors
    /// As [`Connector::register_server`].
    pub async fn register_server_until(
        &self,
        group: &str,
        host: &str,
        port: u16,
        properties: BTreeMap<String, String>,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<u16>> {
        let registration = Registration::new(group, host, port, properties)?;
        self.start_until(registration, true, stop).await
    }

    /// Like [`Connector::register_server_until`], but the id is only *reserved*: peers are
    /// not told until [`Connector::announce_server`] (a server that learns its id before it
    /// can serve, as DarkRift's `RegisterServer` does before its listeners start).
    ///
    /// # Errors
    /// As [`Connector::register_server`].
    pub async fn reserve_server_until(
        &self,
        registration: Registration,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<u16>> {
        self.start_until(registration, false, stop).await
    }

    /// Announces the registration reserved by [`Connector::reserve_server_until`] (a no-op
    /// once announced): its server key is written, guarded by the reservation, and peers see
    /// its join.
    ///
    /// # Errors
    /// [`Error::NotRegistered`] without a registration, or when its reservation was lost (it
    /// is reserved again by itself and announced once back); an etcd failure.
    pub async fn announce_server(&self) -> Result<()> {
        let running = self.registration.lock().await;
        match running.as_ref() {
            Some(handle) => handle.announce().await,
            None => Err(Error::NotRegistered),
        }
    }

    async fn start_until(
        &self,
        registration: Registration,
        announce: bool,
        stop: impl Future<Output = ()>,
    ) -> Result<Option<u16>> {
        let token = CancellationToken::new();
        let register = self.register_server_or_stop(registration, announce, &token);
        tokio::pin!(register, stop);
        let result = tokio::select! {
            result = &mut register => result,
            () = &mut stop => {
                token.cancel();
                register.await
            }
        };
        match result {
            Ok(id) => Ok(Some(id)),
            Err(Error::Shutdown) if token.is_cancelled() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn register_server_or_stop(
        &self,
        registration: Registration,
        announce: bool,
        stop: &CancellationToken,
    ) -> Result<u16> {
        let watched = &self.shared.config.watch_groups;
        let group = registration.group();
        if !watched.is_empty() && !watched.iter().any(|g| g == group) {
            return Err(Error::GroupNotWatched {
                group: group.to_owned(),
                watched: watched.clone(),
            });
        }
        let mut running = self.registration.lock().await;
        if running.is_some() {
            return Err(Error::AlreadyRegistered {
                id: self.registered_id().unwrap_or(0),
            });
        }
        let cfg = &self.shared.config;
        tokio::select! {
            biased;
            () = stop.cancelled() => return Err(Error::Shutdown),
            synced = self.wait_synced(cfg.connect_timeout.max(cfg.request_timeout)) => synced?,
        }
        let terms = Terms {
            lease_ttl: cfg.lease_ttl,
            announce,
            spread_seed: self.shared.spread_seed,
        };
        let probe = self.health_probe()?;
        let (handle, id) = Handle::start(&self.shared, registration, probe, terms, stop).await?;
        let status = handle.status().clone();
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
        *running = Some(handle);
        Ok(id)
    }

    /// Registers a server and returns its handle: any number of registrations over this
    /// connector's one connection, watch and view (an agent's), each with its own lease, id,
    /// health gate and fate. See [`RegisterOptions`] for reserve-then-announce and resume.
    ///
    /// # Errors
    /// As [`Connector::register_server`] (but never [`Error::AlreadyRegistered`]);
    /// [`Error::IdTaken`] for a resume whose id another server holds.
    pub async fn register(
        &self,
        registration: Registration,
        options: RegisterOptions,
    ) -> Result<RegistrationHandle> {
        let cfg = &self.shared.config;
        let watched = &cfg.watch_groups;
        if !watched.is_empty() && !watched.iter().any(|g| g == registration.group()) {
            return Err(Error::GroupNotWatched {
                group: registration.group().to_owned(),
                watched: watched.clone(),
            });
        }
        let lease_ttl = options.lease_ttl.unwrap_or(cfg.lease_ttl);
        if lease_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig("lease_ttl must be at least 1s".into()));
        }
        self.wait_synced(cfg.connect_timeout.max(cfg.request_timeout))
            .await?;
        let terms = Terms {
            lease_ttl,
            announce: !options.reserve,
            // Each its own: registrations started together must not race for one candidate.
            spread_seed: rand::random(),
        };
        let probe = match options.health_probe {
            Some(probe) => Some((probe, Duration::from_secs(1))),
            None => self.health_probe()?,
        };
        let shared = &self.shared;
        let (handle, announced, adopted) = if let Some(id) = options.resume {
            let (handle, _, adopted) =
                Handle::resume(shared, registration, id, probe, terms).await?;
            (handle, adopted || terms.announce, adopted)
        } else {
            let never = CancellationToken::new();
            let (handle, _) = Handle::start(shared, registration, probe, terms, &never).await?;
            (handle, terms.announce, false)
        };
        let registered = RegistrationHandle::new(shared.clone(), handle, announced, adopted);
        self.handles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(registered.status_rx().clone());
        Ok(registered)
    }

    /// Removes this server from the registry (DarkRift's `DeregisterServer`).
    ///
    /// Stops the supervisor, deletes our server and slot keys only if they are still the
    /// ones we created (guarded by their create revision: a stale handle never deletes a newer
    /// registration of the same id), then revokes the lease, bounded by the smaller of the
    /// request timeout and the TTL.
    ///
    /// # Errors
    /// [`Error::NotRegistered`], or an etcd failure (the lease then expires by itself).
    pub async fn deregister_server(&self) -> Result<()> {
        let Some(running) = self.registration.lock().await.take() else {
            return Err(Error::NotRegistered);
        };
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        running.deregister(&self.shared).await
    }

    /// DarkRift could not reach server `id` (its `HandleConnectionFailure`): re-reads the
    /// peer's key. If the registration is gone, the view is resynchronised so its leave is
    /// delivered, in order, before this returns.
    ///
    /// With eviction on, a registered server files its report about the peer instead (one
    /// transaction that also reads every report about it), and evicts it once enough distinct
    /// live servers reported it within the window (see [`crate::config::EvictionConfig`]). A
    /// server that reported an earlier registration of the same id recently (the peer came
    /// back after an eviction) does not report the new one for a while: it answers as with
    /// eviction off (the anti-flap hold, see ARCHITECTURE.md).
    ///
    /// # Errors
    /// An etcd failure while reading.
    pub async fn handle_connection_failure(&self, id: u16) -> Result<PeerStatus> {
        let held = self
            .status_rx()
            .and_then(|status| status.held())
            .or_else(|| {
                let mut handles = self
                    .handles
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                handles.retain(StatusRx::is_live);
                handles.iter().find_map(StatusRx::held)
            });
        eviction::connection_failure(
            &self.shared,
            self.reports.as_ref(),
            held,
            &self.commands,
            id,
        )
        .await
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
    /// Any other event (lease lost, re-registered, stale, fresh, …).
    fn handle_other(&mut self, _event: &Event) {}
}
