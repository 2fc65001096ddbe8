//! The agent's registrations: one entry per handle, each with its own lease, id and fate, all
//! over the agent's one connector (one etcd connection, one watch, one view).
//!
//! The table is the only owner of the entries; the HTTP handlers call its methods and hold no
//! state of their own. Locks are short and never held across an await: etcd requests run on
//! an `Arc` of the library's registration handle taken out of the entry first.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use darkrift_etcd::health::HttpHealthProbe;
use darkrift_etcd::{
    Connector, Event, PeerStatus, RegisterOptions, Registration, RegistrationHandle,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiError, Readiness, RegisterRequest};
use super::fate::{self, Fate, Verdict};
use super::handle::Handle;
use super::ready;
use crate::out::EventLines;

/// The agent's settings (its command line).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Attach bound and reattach window.
    pub(crate) fate: fate::Bounds,
    /// How long a reserved registration waits for its server to listen (or for `ready`).
    pub(crate) ready_bound: Duration,
    /// Silence after which a stream carries a heartbeat line.
    pub(crate) heartbeat: Duration,
}

/// Where a registration stands, as its stream tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The id is held; peers not told yet.
    Reserved,
    /// The server key is written.
    Registered,
}

/// One registration.
struct Entry {
    id: u16,
    registration: Registration,
    /// Groups whose joins and leaves its stream carries (`None`: all).
    watch_groups: Option<BTreeSet<String>>,
    held: Arc<RegistrationHandle>,
    fate: Fate,
    phase: watch::Sender<Phase>,
    /// Stops the attached stream (replaced by a newer one, or deregistered).
    stream: Option<CancellationToken>,
    /// Stops the entry's own tasks (the readiness probe).
    tasks: CancellationToken,
}

/// Every registration of this agent.
pub(crate) struct Table {
    connector: Arc<Connector>,
    settings: Settings,
    entries: Mutex<HashMap<Handle, Entry>>,
    /// Wakes the fate loop when a stream opens or closes or an entry comes or goes.
    fate_changed: Notify,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("registrations", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// The answer to a register request.
#[derive(Debug)]
pub(crate) struct Registered {
    pub(crate) id: u16,
    pub(crate) handle: Handle,
    pub(crate) reserved: bool,
    /// The lease it holds (0 if none at this instant).
    pub(crate) lease: i64,
}

impl Table {
    /// A table over `connector`; start its fate loop with [`Table::run_fates`].
    pub(crate) fn new(connector: Arc<Connector>, settings: Settings) -> Arc<Self> {
        Arc::new(Table {
            connector,
            settings,
            entries: Mutex::new(HashMap::new()),
            fate_changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Handle, Entry>> {
        // An entry is plain data: a panic elsewhere cannot leave it half-changed.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many registrations the agent holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The connector (for `/v1/health`).
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// `POST /v1/registrations`.
    pub(crate) async fn register(
        self: &Arc<Self>,
        req: RegisterRequest,
    ) -> Result<Registered, ApiError> {
        let checked = req.check()?;
        let (handle, resume_id) = match checked.resume {
            Some((id, handle)) => {
                if self.lock().contains_key(&handle) {
                    return Err(ApiError::conflict(
                        "this handle's registration is live in this agent: attach its stream instead",
                    ));
                }
                (handle, Some(id))
            }
            None => (
                Handle::generate().map_err(|e| ApiError::internal(e.to_string()))?,
                None,
            ),
        };
        let registration =
            Registration::new(&req.group, &req.host, req.port, req.properties.clone())
                .and_then(|r| r.with_owner_token_hash(handle.token_hash()))
                .map_err(|e| ApiError::invalid(e.to_string()))?;
        let health = match &checked.health_url {
            // DarkRift's HttpHealthCheck answers within milliseconds when it runs: 2 s late
            // is a frozen server (the probe never abandons its request: see HttpHealthProbe).
            Some(url) => Some(Arc::new(
                HttpHealthProbe::new(url, Duration::from_secs(2))
                    .map_err(|e| ApiError::invalid(e.to_string()))?,
            ) as Arc<dyn darkrift_etcd::health::HealthProbe>),
            None => None,
        };
        let options = RegisterOptions {
            lease_ttl: checked.ttl,
            reserve: req.readiness != Readiness::Immediate,
            health_probe: health,
            resume: resume_id,
        };
        let held = self
            .connector
            .register(registration.clone(), options)
            .await
            .map_err(|e| ApiError::from_registry(&e))?;
        let id = held.id();
        let reserved = !held.is_announced();
        let lease = held.lease_id().unwrap_or(0);
        let tasks = CancellationToken::new();
        let (phase, _) = watch::channel(if reserved {
            Phase::Reserved
        } else {
            Phase::Registered
        });
        let held = Arc::new(held);
        let entry = Entry {
            id,
            registration,
            watch_groups: req.watch_groups.map(|g| g.into_iter().collect()),
            held: held.clone(),
            fate: Fate::new(self.settings.fate, Instant::now()),
            phase,
            stream: None,
            tasks: tasks.clone(),
        };
        self.lock().insert(handle.clone(), entry);
        self.fate_changed.notify_one();
        tracing::info!(id, group = %req.group, host = %req.host, port = req.port, ?handle, reserved, "registration added");
        if reserved && req.readiness == Readiness::Probe {
            let table = self.clone();
            let handle = handle.clone();
            let (host, port, bound) = (req.host.clone(), req.port, self.settings.ready_bound);
            tokio::spawn(async move {
                let waited = tokio::select! {
                    () = tasks.cancelled() => return,
                    r = ready::wait_listening(&host, port, bound) => r,
                };
                match waited {
                    ready::Readiness::Listening { attempts } => {
                        tracing::debug!(id, attempts, "server listens: announcing");
                    }
                    ready::Readiness::GaveUp => {
                        metrics::counter!(READY_GAVE_UP).increment(1);
                        tracing::warn!(id, host, port, ?bound, "server did not accept a connection within the ready bound: announcing anyway (its id is in use)");
                    }
                }
                if let Err(e) = table.ready(&handle).await {
                    tracing::warn!(id, error = %e.message, "announcing failed");
                }
            });
        } else if reserved {
            let table = self.clone();
            let handle = handle.clone();
            let bound = self.settings.ready_bound;
            tokio::spawn(async move {
                tokio::select! {
                    () = tasks.cancelled() => return,
                    () = tokio::time::sleep(bound) => {}
                }
                metrics::counter!(READY_GAVE_UP).increment(1);
                tracing::warn!(
                    id,
                    ?bound,
                    "no ready call within the ready bound: announcing anyway (its id is in use)"
                );
                if let Err(e) = table.ready(&handle).await {
                    tracing::warn!(id, error = %e.message, "announcing failed");
                }
            });
        }
        Ok(Registered {
            id,
            handle,
            reserved,
            lease,
        })
    }

    fn held(&self, handle: &Handle) -> Result<Arc<RegistrationHandle>, ApiError> {
        self.lock()
            .get(handle)
            .map(|e| e.held.clone())
            .ok_or_else(unknown)
    }

    /// `POST …/ready`: announce (a no-op once announced).
    pub(crate) async fn ready(&self, handle: &Handle) -> Result<(), ApiError> {
        let held = self.held(handle)?;
        held.announce()
            .await
            .map_err(|e| ApiError::from_registry(&e))?;
        if let Some(entry) = self.lock().get(handle) {
            entry.tasks.cancel();
            entry.phase.send_replace(Phase::Registered);
        }
        Ok(())
    }

    /// `DELETE …`: deregister, guarded, bounded by the library's request timeout.
    pub(crate) async fn deregister(&self, handle: &Handle) -> Result<(), ApiError> {
        let entry = self.lock().remove(handle).ok_or_else(unknown)?;
        self.fate_changed.notify_one();
        // On a task of its own: a client that stops waiting (its request future is dropped)
        // must not leave the keys behind half-deleted.
        let ending = tokio::spawn(end(entry, "deregistered"));
        ending
            .await
            .map_err(|e| ApiError::internal(format!("deregistration task failed: {e}")))
    }
}

/// Stops an entry's tasks and stream, and gives its id back.
async fn end(entry: Entry, why: &'static str) {
    entry.tasks.cancel();
    if let Some(stream) = &entry.stream {
        stream.cancel();
    }
    let id = entry.id;
    drop(entry.phase);
    // Deregistering is idempotent and takes the handle by reference: an announce still in
    // flight on another clone finds it deregistered and writes nothing.
    match entry.held.deregister().await {
        Ok(()) => tracing::info!(id, why, "registration removed"),
        Err(e) => {
            tracing::warn!(id, error = %e, "deregistering failed; the lease expires by itself");
        }
    }
}

impl Table {
    /// `POST …/unreachable`: the agent's one reporter verdict for peer `peer`.
    pub(crate) async fn unreachable(
        &self,
        handle: &Handle,
        peer: u16,
    ) -> Result<PeerStatus, ApiError> {
        self.held(handle)?;
        self.connector
            .handle_connection_failure(peer)
            .await
            .map_err(|e| ApiError::from_registry(&e))
    }

    /// `GET …/events`: attaches a stream (replacing any other) and returns its lines.
    pub(crate) fn attach(
        self: &Arc<Self>,
        handle: &Handle,
    ) -> Result<mpsc::Receiver<String>, ApiError> {
        let (tx, rx) = mpsc::channel(256);
        let stop = CancellationToken::new();
        let (stream, id, registration, groups, phase) = {
            let mut entries = self.lock();
            let entry = entries.get_mut(handle).ok_or_else(unknown)?;
            if let Some(previous) = entry.stream.replace(stop.clone()) {
                previous.cancel();
            }
            (
                entry.fate.attach(),
                entry.id,
                entry.registration.clone(),
                entry.watch_groups.clone(),
                entry.phase.subscribe(),
            )
        };
        self.fate_changed.notify_one();
        // Subscribed before the stream task starts, so nothing between is missed.
        let events = self.connector.subscribe();
        let table = self.clone();
        let handle = handle.clone();
        let heartbeat = self.settings.heartbeat;
        tokio::spawn(async move {
            let lines = StreamLines {
                id,
                registration,
                lines: EventLines::with_groups(groups),
            };
            lines.run(events, phase, &tx, &stop, heartbeat).await;
            if let Some(entry) = table.lock().get_mut(&handle) {
                entry.fate.detach(stream, Instant::now());
            }
            table.fate_changed.notify_one();
        });
        Ok(rx)
    }

    /// Deregisters every registration whose server is gone (see [`fate`]); runs until `stop`.
    pub(crate) async fn run_fates(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = Instant::now();
            let mut gone = Vec::new();
            let mut next: Option<Instant> = None;
            {
                let entries = self.lock();
                for (handle, entry) in entries.iter() {
                    match entry.fate.judge(now) {
                        Verdict::Deregister => gone.push(handle.clone()),
                        Verdict::Keep(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                        Verdict::Keep(None) => {}
                    }
                }
            }
            for handle in gone {
                let entry = self.lock().remove(&handle);
                if let Some(entry) = entry {
                    tracing::info!(id = entry.id, "its server's stream is gone: deregistering");
                    tokio::spawn(end(entry, "stream gone"));
                }
            }
            let wake = self.fate_changed.notified();
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake => {}
                () = sleep_until(next) => {}
            }
        }
    }

    /// Deregisters everything, concurrently; each is bounded by the library's request timeout.
    pub(crate) async fn deregister_all(&self) {
        let entries: Vec<Entry> = self.lock().drain().map(|(_, e)| e).collect();
        let n = entries.len();
        futures::future::join_all(entries.into_iter().map(|e| end(e, "agent stopping"))).await;
        if n > 0 {
            tracing::info!(registrations = n, "every registration deregistered");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unknown() -> ApiError {
    ApiError::not_found("no registration has this handle (deregistered, expired, or the agent restarted: resume it)")
}

/// Counter: reserved registrations announced because the ready bound passed.
pub(crate) const READY_GAVE_UP: &str = "darkrift_etcd_agent_ready_bound_passed_total";

/// One stream's lines: the registration's state, the view, then live events.
struct StreamLines {
    id: u16,
    registration: Registration,
    lines: EventLines,
}

impl StreamLines {
    fn own(&self, event: &str) -> String {
        let r = &self.registration;
        line(
            event,
            json!({"id": self.id, "group": r.group(), "host": r.host(), "port": r.port(),
                   "properties": r.properties()}),
        )
    }

    /// True for a lifecycle event of another registration of this agent.
    fn foreign(&self, event: &Event) -> bool {
        match event {
            Event::LeaseLost { id, .. } | Event::RegistrationStopped { id, .. } => *id != self.id,
            Event::Reregistered {
                id, previous_id, ..
            } => *id != self.id && *previous_id != self.id,
            _ => false,
        }
    }

    async fn run(
        mut self,
        mut events: darkrift_etcd::EventStream,
        mut phase: watch::Receiver<Phase>,
        tx: &mpsc::Sender<String>,
        stop: &CancellationToken,
        heartbeat: Duration,
    ) {
        let mut said = *phase.borrow_and_update();
        let first = match said {
            Phase::Reserved => self.own("reserved"),
            Phase::Registered => self.own("registered"),
        };
        if tx.send(first).await.is_err() {
            return;
        }
        let mut silence = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        let mut revision: Option<i64> = None;
        loop {
            let out = tokio::select! {
                () = stop.cancelled() => return,
                () = tx.closed() => return,
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The entry is gone (deregistered): the stream ends with it.
                        return;
                    }
                    let now = *phase.borrow_and_update();
                    if now == said {
                        continue;
                    }
                    said = now;
                    self.own(if now == Phase::Registered { "registered" } else { "reserved" })
                }
                _ = silence.tick() => line("heartbeat", json!({"revision": revision})),
                event = events.recv() => {
                    let Some(event) = event else { return };
                    revision = Some(event.revision()).filter(|r| *r > 0).or(revision);
                    if self.foreign(&event) {
                        continue;
                    }
                    match self.lines.line(&event) {
                        Some((name, fields)) => line(name, fields),
                        None => continue,
                    }
                }
            };
            silence.reset();
            if tx.send(out).await.is_err() {
                return;
            }
        }
    }
}

/// One JSON line of the schema-1 contract (docs/cli.md), newline included.
fn line(event: &str, fields: Value) -> String {
    let mut map = serde_json::Map::new();
    map.insert("v".into(), json!(api::VERSION));
    map.insert("event".into(), json!(event));
    if let Value::Object(fields) = fields {
        map.extend(fields);
    }
    let mut text = Value::Object(map).to_string();
    text.push('\n');
    text
}
