//! The connector: DarkRift's `RegisterServer` / `DeregisterServer` /
//! `HandleConnectionFailure`, composed from the lease, the allocator, the registration
//! supervisor and the watcher.
//!
//! A [`Connector`] owns one etcd client, one watcher task (started at connect time, so the
//! view is warm before the server registers) and at most one registration at a time. Dropping
//! it stops every task it started; a registration dropped without deregistering expires with
//! its lease.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::{connect, retrying, retrying_txn};
use crate::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::events::Event;
pub use crate::events::EventStream;
use crate::guard::{self, deregister::Deregistered, evict::Evicted, report::Filed, Answer, Owner};
use crate::health::{spawn_gate, HealthProbe, HttpHealthProbe};
use crate::lease::LeaseSession;
use crate::pool::Pool;
use crate::record::{Registration, ServerInfo};
use crate::registration::{allocate, Ctx, Held, RegistrationStatus, Supervisor};
use crate::reporter::{Admit, FiledReport, Reporter};
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
    ctx: Arc<Ctx>,
    synced: watch::Receiver<bool>,
    commands: mpsc::Sender<Command>,
    registration: tokio::sync::Mutex<Option<Running>>,
    status: Mutex<Option<watch::Receiver<RegistrationStatus>>>,
    probe: Mutex<Option<Arc<dyn HealthProbe>>>,
    /// The reports this server filed and its anti-flap hold (eviction on only).
    reporter: Option<Arc<Mutex<Reporter>>>,
    _stop: DropGuard,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("prefix", &self.ctx.layout.prefix())
            .field("endpoints", &self.ctx.config.endpoints)
            .finish_non_exhaustive()
    }
}

/// A registration's supervisor task.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    task: JoinHandle<Option<Held>>,
    /// Cancels the supervisor when the connector is dropped while registered, so the
    /// keep-alive stops and the lease expires (a crash, as peers see it).
    _stop: DropGuard,
}

/// What [`Connector::handle_connection_failure`] found out about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStatus {
    /// Its registration is still in etcd: the failure is between us and it, not a departure.
    Registered,
    /// Its registration is gone; its leave has been delivered (or is about to be, in order).
    Gone,
    /// Enough live servers reported it unreachable (eviction is on): its registration was
    /// deleted, guarded by its create revision, and its leave follows.
    Evicted,
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
        let pool = connect(&config, &layout.cursor_key()).await?;
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
        let ctx = Arc::new(Ctx {
            pool,
            config,
            layout,
            view: task.view,
            cursor: crate::alloc::CursorHint::default(),
            own_lease: AtomicI64::new(0),
            spread_seed: rand::random(),
            requests: AtomicU64::new(0),
        });
        let reporter = ctx.config.eviction.as_ref().map(|eviction| {
            let reporter = Arc::new(Mutex::new(Reporter::new(eviction.window)));
            tokio::spawn(sweep_reports(
                ctx.clone(),
                reporter.clone(),
                cancel.child_token(),
            ));
            reporter
        });
        Connector {
            ctx,
            synced: task.synced,
            commands: task.commands,
            registration: tokio::sync::Mutex::new(None),
            status: Mutex::new(None),
            probe: Mutex::new(None),
            reporter,
            _stop: cancel.drop_guard(),
        }
    }

    /// The settings in force.
    #[must_use]
    pub fn config(&self) -> &ConnectorConfig {
        &self.ctx.config
    }

    /// The etcd members this connector talks to (shared with [`crate::admin::Admin`]).
    pub(crate) fn pool(&self) -> &Pool {
        &self.ctx.pool
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
        self.ctx.view.subscribe()
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
        self.ctx.view.read(|v| v.members.servers())
    }

    /// True while the view may be out of date (between [`Event::Stale`] and [`Event::Fresh`]).
    #[must_use]
    pub fn is_stale(&self) -> bool {
        self.ctx.view.read(|v| v.stale)
    }

    /// How many record versions under the prefix were skipped so far: malformed, without a
    /// lease, or shadowed (see [`Connector::shadowed_records`]).
    #[must_use]
    pub fn skipped_records(&self) -> u64 {
        self.ctx.view.read(|v| v.members.skipped())
    }

    /// How many valid record versions were shadowed so far: a second key claiming an id that
    /// a key created earlier holds (only a foreign writer can do that). They are also counted
    /// in [`Connector::skipped_records`].
    #[must_use]
    pub fn shadowed_records(&self) -> u64 {
        self.ctx.view.read(|v| v.members.shadowed())
    }

    /// How many etcd requests registrations have sent so far (lease grants and allocation
    /// transactions; the watcher's reads are not counted).
    #[must_use]
    pub fn registration_requests(&self) -> u64 {
        self.ctx.requests.load(Ordering::Relaxed)
    }

    /// The registration's status, if this connector registered (a `watch` receiver: await
    /// `changed()` to follow it).
    #[must_use]
    pub fn status(&self) -> Option<watch::Receiver<RegistrationStatus>> {
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
        let health = self.ctx.config.health.clone();
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
        let watched = &self.ctx.config.watch_groups;
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
        let cfg = &self.ctx.config;
        self.wait_synced(cfg.connect_timeout.max(cfg.request_timeout))
            .await?;
        let cancel = CancellationToken::new();
        let gate = self
            .health_probe()?
            .map(|(probe, interval)| spawn_gate(probe, interval, cancel.child_token()));
        self.ctx.requests.fetch_add(1, Ordering::Relaxed);
        let granted = LeaseSession::grant_gated(
            &self.ctx.pool,
            cfg.lease_ttl,
            cfg.request_timeout,
            gate.clone(),
        )
        .await;
        let lease = match granted {
            Ok(lease) => lease,
            Err(e) => {
                cancel.cancel();
                return Err(e);
            }
        };
        let claim = match allocate(&self.ctx, &registration, lease.id()).await {
            Ok(claim) => claim,
            Err(e) => {
                cancel.cancel();
                if let Err(revoke) = lease.revoke(&self.ctx.pool, cfg.request_timeout).await {
                    tracing::debug!(error = %revoke, "revoking the unused lease failed; it expires");
                }
                return Err(e);
            }
        };
        let id = claim.id;
        tracing::info!(
            id,
            group,
            host,
            port,
            revision = claim.create_revision,
            "registered"
        );
        let (status, task) = Supervisor::spawn(
            self.ctx.clone(),
            registration,
            claim,
            lease,
            cancel.clone(),
            gate,
        );
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
        *running = Some(Running {
            _stop: cancel.clone().drop_guard(),
            cancel,
            task,
        });
        Ok(id)
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
        running.cancel.cancel();
        let Ok(Some(held)) = running.task.await else {
            // Stopped by policy or recovering: nothing of ours is in etcd.
            return Ok(());
        };
        let Held { claim, lease } = held;
        let owner = Owner {
            key: claim.server_key.clone(),
            slot: self.ctx.layout.slot_key(claim.id),
            create_revision: claim.create_revision,
            lease: lease.id(),
        };
        let guard = guard::deregister::build(&owner);
        let cfg = &self.ctx.config;
        let deleted = retrying_txn(&self.ctx.pool, "deregister", cfg.request_timeout, &guard).await;
        let timeout = crate::timing::revoke_bound(cfg.request_timeout, lease.ttl());
        let revoked = lease.revoke(&self.ctx.pool, timeout).await;
        match guard::deregister::read(&Answer::from(&deleted?)) {
            Deregistered::Deleted => tracing::info!(id = claim.id, "deregistered"),
            Deregistered::NotOurs => tracing::warn!(
                id = claim.id,
                "our keys were already gone or re-created by another server; nothing deleted"
            ),
        }
        revoked
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
        let known =
            self.ctx.view.read(
                |v| match (v.members.get(id), v.members.create_revision(id)) {
                    (Some(server), Some(rev)) => {
                        Some((self.ctx.layout.server_key(&server.group, id), rev))
                    }
                    _ => None,
                },
            );
        let Some((key, create_revision)) = known else {
            return Ok(PeerStatus::Unknown);
        };
        let reported = match &self.ctx.config.eviction {
            Some(eviction) => self.report(id, &key, create_revision, eviction).await?,
            None => Reported::NotFiled,
        };
        match reported {
            Reported::Status(status) => return Ok(status),
            Reported::PeerChanged => {}
            Reported::NotFiled => {
                let resp = retrying(
                    &self.ctx.pool,
                    "read peer",
                    self.ctx.config.request_timeout,
                    |client| {
                        let key = key.clone();
                        async move { client.kv_client().get(key, None).await }
                    },
                )
                .await?;
                if resp
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.create_revision() == create_revision)
                {
                    return Ok(PeerStatus::Registered);
                }
            }
        }
        // The watcher relists and delivers the leave in order. Bounded: a watcher waiting out an
        // unreachable etcd (backoff) must not hang the caller.
        let (done, wait) = oneshot::channel();
        let bound = self.ctx.config.request_timeout;
        let resync = async {
            self.commands
                .send(Command::Resync(done))
                .await
                .map_err(|_| Error::Shutdown)?;
            wait.await.map_err(|_| Error::Shutdown)
        };
        match tokio::time::timeout(bound, resync).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout {
                    op: "resync after a connection failure",
                    timeout: bound,
                })
            }
        }
        Ok(PeerStatus::Gone)
    }
}

/// What filing a report came to (see [`Connector::report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// Filed: the peer is still registered, or was evicted now (or changed under the
    /// eviction).
    Status(PeerStatus),
    /// The registration we could not reach is gone or was re-created: nothing was filed.
    PeerChanged,
    /// Nothing was filed (we are not registered, or the anti-flap hold): check as with
    /// eviction off.
    NotFiled,
}

impl Connector {
    /// Files our report that peer `id` (registration `create_revision`, server key `key`) is
    /// unreachable and reads every report about it, in one transaction; evicts it once
    /// `min_reporters` distinct live servers reported it within the window.
    ///
    /// Reports are keys bound to the reporters' leases, so a reporter that dies takes its
    /// report with it; they name the peer's create revision, so reports about an earlier
    /// registration of the same id never count against a new one. Ours is withdrawn once the
    /// registration leaves our view ([`sweep_reports`]).
    async fn report(
        &self,
        id: u16,
        key: &str,
        create_revision: i64,
        eviction: &crate::config::EvictionConfig,
    ) -> Result<Reported> {
        let Some(reporter) = &self.reporter else {
            return Ok(Reported::NotFiled);
        };
        let Some((me, lease)) = self.current_claim() else {
            // Only a registered server may report: its report must die with it.
            return Ok(Reported::NotFiled);
        };
        let admitted = reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(id, create_revision, tokio::time::Instant::now());
        if let Admit::Hold { until } = admitted {
            tracing::info!(
                peer = id,
                revision = create_revision,
                held_for = ?until.saturating_duration_since(tokio::time::Instant::now()),
                "not reporting a peer that came back after our report on its previous \
                 registration (anti-flap hold); its lease decides"
            );
            return Ok(Reported::NotFiled);
        }
        let layout = &self.ctx.layout;
        let cfg = &self.ctx.config;
        let (slot, reports, report) = (
            layout.slot_key(id),
            layout.reports_prefix(id, create_revision),
            layout.report_key(id, create_revision, me),
        );
        let filing = guard::report::Filing {
            peer_key: key,
            peer_slot: &slot,
            create_revision,
            reports: &reports,
            report: &report,
            lease,
            now_ms: crate::alloc::now_unix_ms(),
        };
        let txn = guard::report::build(&filing);
        let resp = retrying_txn(&self.ctx.pool, "report peer", cfg.request_timeout, &txn).await?;
        let window_ms = i64::try_from(eviction.window.as_millis()).unwrap_or(i64::MAX);
        let tally = match guard::report::read(&Answer::from(&resp), &filing, window_ms) {
            Filed::PeerChanged => return Ok(Reported::PeerChanged),
            Filed::Counted(tally) => tally,
        };
        if tally.ours.is_none() {
            tracing::warn!(
                key = %report,
                "our report key holds a value we did not write; leaving it alone"
            );
        }
        let filed = tally.ours.map(|key_revision| FiledReport {
            peer: id,
            create_revision,
            key: report.clone(),
            lease,
            key_revision,
        });
        reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reported(id, create_revision, filed, tokio::time::Instant::now());
        tracing::info!(
            peer = id,
            reporters = tally.recent,
            needed = eviction.min_reporters,
            "reported an unreachable peer"
        );
        if tally.recent < usize::try_from(eviction.min_reporters).unwrap_or(usize::MAX) {
            return Ok(Reported::Status(PeerStatus::Registered));
        }
        if tally.peer_lease == 0 {
            // No slot, or one without a lease: not a state a registration leaves behind (its
            // owner repairs it); the eviction guard would compare against nothing. Leave it.
            tracing::warn!(
                peer = id,
                "enough reports, but the peer's slot is damaged; not evicting"
            );
            return Ok(Reported::Status(PeerStatus::Registered));
        }
        // Evict exactly that registration: its key only if still the same create revision,
        // its slot only if still on its lease; the reports about it go with it.
        let peer = Owner {
            key: key.to_owned(),
            slot,
            create_revision,
            lease: tally.peer_lease,
        };
        let evict = guard::evict::build(&peer, Some(&reports));
        let resp = retrying_txn(&self.ctx.pool, "evict peer", cfg.request_timeout, &evict).await?;
        match guard::evict::read(&Answer::from(&resp)) {
            Evicted::Done { .. } => {
                tracing::warn!(
                    peer = id,
                    reporters = tally.recent,
                    "peer evicted after enough reports"
                );
                Ok(Reported::Status(PeerStatus::Evicted))
            }
            Evicted::Changed => Ok(Reported::Status(PeerStatus::Gone)),
        }
    }

    /// Our id and lease while registered.
    fn current_claim(&self) -> Option<(u16, i64)> {
        let status = self.status()?;
        let status = status.borrow();
        match &*status {
            RegistrationStatus::Registered { id, .. } if status.is_registered() => {
                let lease = self.ctx.own_lease.load(Ordering::Relaxed);
                (lease != 0).then_some((*id, lease))
            }
            _ => None,
        }
    }
}

/// Withdraws our reports about registrations that have left our view (a leave, an eviction,
/// a re-creation), each behind its guard (our lease, the report's create revision), every
/// [`crate::timing::REPORT_SWEEP`] while there are any; until the connector is dropped.
///
/// A local check of the view, not a watch of its own: the watcher already delivers every
/// leave, and a report that outlives its registration by a sweep period is harmless (it names
/// a create revision nobody will hold again).
async fn sweep_reports(ctx: Arc<Ctx>, reporter: Arc<Mutex<Reporter>>, stop: CancellationToken) {
    let lock_reporter = || {
        reporter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut tick = tokio::time::interval(crate::timing::REPORT_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gone = {
            let mut reporter = lock_reporter();
            if !reporter.has_filed() {
                continue;
            }
            ctx.view.read(|v| {
                reporter.take_gone(|peer, rev| v.members.create_revision(peer) == Some(rev))
            })
        };
        for report in gone {
            let txn = guard::report::withdraw(&report.key, report.lease, report.key_revision);
            let timeout = ctx.config.request_timeout;
            match retrying_txn(&ctx.pool, "withdraw report", timeout, &txn).await {
                Ok(resp) if guard::report::withdrawn(&Answer::from(&resp)) => {
                    tracing::debug!(key = %report.key, "report withdrawn: the peer left");
                }
                // Deleted with an eviction or with our lease, or not ours any more.
                Ok(_) => tracing::debug!(key = %report.key, "report already gone"),
                Err(error) => {
                    tracing::debug!(key = %report.key, %error, "withdrawing a report failed; retrying");
                    lock_reporter().retry(report);
                }
            }
        }
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
