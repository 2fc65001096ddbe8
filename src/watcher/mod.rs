//! List + watch of the server prefix as an explicit state machine, feeding [`Membership`].
//!
//! ```text
//!            ┌──────────── compaction / cancelled watch / resync request ───────────┐
//!            ▼                                                                      │
//!   List { pinned revision R, pages }  ──all pages──►  Open { from: R + 1 }  ──►  Watch { from }
//!            ▲                                              ▲                       │
//!            └─ error: Backoff ─┘                           └── Backoff ◄── stream error / end /
//!                                                                            silent (watchdog)
//! ```
//!
//! - **List**: a linearizable paginated read of `<prefix>/`; the first page fixes revision
//!   `R` and every later page is read at `R`, so the snapshot is one consistent cut however
//!   many pages it has. The first page is a read-only transaction that also reads the
//!   allocator cursor at `R`. Each page is decoded into a [`Snapshot`] on a blocking thread
//!   while the next one is read, and the view is replaced only once the last page is in.
//!   The initial list ends with [`Event::Synced`]; a later list (recovery) is diffed against
//!   the view and emits only the missing joins and leaves.
//! - **Open/Watch**: a watch from `from` with progress notifications, on a connection that
//!   requires a leader. It does not ask for `prev_kv`: a delete is matched to the member by
//!   its key, and the view already holds that member's record, so the previous value would
//!   be read and sent for nothing (etcd 3.4 reads it once per deleted key, which cut a mass
//!   leave from ~40k to ~4.7k events/s in the benchmark). Each response is applied as one
//!   batch. The resume point advances to the last event's revision + 1, and on
//!   a progress notification to `header.revision + 1` (a progress notification promises every
//!   event up to it was sent; an event response's header may run ahead of events still queued
//!   for a catching-up watcher, so it is not used).
//! - **Watchdog**: a stream silent for `progress_interval` is asked for a progress
//!   notification; one silent for `idle_timeout` (no event, no answer) is dropped and
//!   reopened at `from`. The answer to a progress *request* only proves the stream is alive:
//!   etcd before 3.4.24 / 3.5.8 answers it even for a watcher still catching up, so it never
//!   moves the resume point (server-initiated progress notifications, sent to caught-up
//!   watchers only, do).
//! - **Backoff**: any failure waits a jittered exponential delay (backon, at most half a TTL
//!   with the jitter included: [`crate::backoff`]) and retries the state it failed in. A broken stream that reopens at once resumes at `from`: no event is lost or
//!   repeated. A compacted resume point cannot be resumed (etcd only keeps history after the
//!   compaction), so it relists.
//!
//! The machine is generic over its [`KvSource`] (list a page pinned at a revision, open a
//! watch, request progress, the pool's suspicions): [`PoolSource`] is the real one, and the
//! unit tests (`tests.rs`) drive it over a scripted fake through every recovery path. What a
//! response means is decided by [`classify()`] and the pinned paginated read is [`ServerRange`]
//! (shared with the one-shot listings).
//!
//! When etcd cannot be reached (a failed reopen or read), the view keeps its last state (an
//! error never empties it) and is marked stale ([`Event::Stale`]). Once etcd answers again the
//! watcher relists, emits exactly the joins and leaves it missed, then [`Event::Fresh`]: a
//! completed relist is what proves the view caught up.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::alloc;
use crate::backoff::Delays;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::KeyLayout;
use crate::membership::{KeyValue, KvChange, Membership, Snapshot};
use crate::metrics as m;
use crate::pool::Pool;

mod classify;
mod list;
mod source;

use classify::{classify, Verdict};
pub(crate) use list::{Page, ServerRange};
use source::{KvSource, PoolSource, WatchFeed};

/// The view shared between the watcher task and the connector.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Live members as last seen.
    pub(crate) view: Membership,
    /// The allocator cursor as last read (a hint; etcd holds the truth).
    pub(crate) cursor: u64,
    /// Revision the view reflects.
    pub(crate) revision: i64,
    /// True between [`Event::Stale`] and [`Event::Fresh`].
    pub(crate) stale: bool,
    /// This connector's own registration, so the watcher can tell the supervisor when
    /// someone else deletes it.
    pub(crate) own: Option<OwnKey>,
}

/// Our own server key, as the registration supervisor last wrote it.
#[derive(Debug, Clone)]
pub(crate) struct OwnKey {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
    /// The lease our keys are bound to (reports we file are bound to it too).
    pub(crate) lease: i64,
    /// The record we wrote: a put of anything else on our key is someone else's edit.
    pub(crate) record: Vec<u8>,
    pub(crate) gone: Arc<Notify>,
}

impl Shared {
    /// Wakes the supervisor if `changes` delete or re-create our key after we created it.
    fn check_own_changes(&self, changes: &[KvChange]) {
        let Some(own) = &self.own else { return };
        let hit = changes.iter().any(|c| match c {
            KvChange::Delete { key, revision } => {
                *key == own.key && *revision > own.create_revision
            }
            KvChange::Put(kv) => kv.key == own.key && kv.create_revision > own.create_revision,
        });
        if hit {
            own.gone.notify_one();
        }
    }

    /// Wakes the supervisor if a put left our key off our lease (an `etcdctl put` without
    /// `--lease`, or on another lease) or holding another record: the supervisor puts its
    /// record back on its lease, or the key would outlive a crash of this server. Our own
    /// re-put matches both and wakes nobody.
    fn check_own_edits(&self, changes: &[KvChange]) {
        let Some(own) = &self.own else { return };
        let edited = changes.iter().any(|c| match c {
            KvChange::Put(kv) => {
                kv.key == own.key && (kv.lease != own.lease || kv.value != own.record)
            }
            KvChange::Delete { .. } => false,
        });
        if edited {
            own.gone.notify_one();
        }
    }

    /// Wakes the supervisor if the view, just replaced by a snapshot taken at `revision`,
    /// lacks our key although the snapshot is newer than it.
    fn check_own_snapshot(&self, revision: i64) {
        let Some(own) = &self.own else { return };
        if revision > own.create_revision && !self.view.holds(&own.key, own.create_revision) {
            own.gone.notify_one();
        }
    }
}

/// Shared view handle.
pub(crate) type SharedView = Arc<Mutex<Shared>>;

/// Locks the view; a poisoned lock (a panic elsewhere) still holds a consistent view, because
/// every mutation is a single call into `Membership`.
pub(crate) fn lock(shared: &SharedView) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Requests to a running watcher.
#[derive(Debug)]
pub(crate) enum Command {
    /// Relist now and emit the difference; answer when done.
    Resync(oneshot::Sender<()>),
}

/// Settings of one watcher.
#[derive(Debug, Clone)]
pub(crate) struct WatcherSettings {
    pub(crate) layout: KeyLayout,
    pub(crate) page_size: i64,
    pub(crate) request_timeout: Duration,
    pub(crate) progress_interval: Duration,
    pub(crate) idle_timeout: Duration,
    /// Longest pause between retries, jitter included: half a lease TTL (at most 5 s), so that
    /// after an outage a watcher notices etcd is back within half a TTL.
    pub(crate) max_backoff: Duration,
}

impl WatcherSettings {
    /// The watcher settings a connector configuration implies.
    pub(crate) fn new(layout: KeyLayout, config: &crate::config::ConnectorConfig) -> Self {
        WatcherSettings {
            layout,
            page_size: config.page_size,
            request_timeout: config.request_timeout,
            progress_interval: config.progress_interval,
            idle_timeout: config.watch_idle_timeout,
            max_backoff: crate::timing::recovery_bound(config.lease_ttl),
        }
    }
}

/// The states; see the module docs. `F` is the source's watch stream.
enum State<F> {
    /// Reading the range; `pinned` is 0 until the first page fixed the revision. `pending`
    /// is the last page read, decoded into `snapshot` while the next page is read.
    List {
        initial: bool,
        pinned: i64,
        after: Option<Vec<u8>>,
        snapshot: Option<Box<Snapshot>>,
        pending: Vec<KeyValue>,
        cursor: u64,
    },
    /// Opening a watch that starts at `from`.
    Open { from: i64 },
    /// Streaming from pool member `member`; `from` is the next revision we need;
    /// `asked` is when we asked for a progress notification that has not come yet.
    Watch {
        from: i64,
        /// Boxed: the stream is most of the state's size, and the other states are small.
        stream: Box<F>,
        member: usize,
        last_heard: Instant,
        asked: Option<Instant>,
    },
    /// Waiting out a failure before `then`; `unreachable` marks the view stale (a broken
    /// stream that reopens at once does not).
    Backoff {
        then: Box<State<F>>,
        unreachable: bool,
    },
}

impl<F> State<F> {
    fn name(&self) -> &'static str {
        match self {
            State::List { .. } => "list",
            State::Open { .. } => "open",
            State::Watch { .. } => "watch",
            State::Backoff { .. } => "backoff",
        }
    }
}

/// The watcher task's handles.
pub(crate) struct WatcherTask {
    pub(crate) shared: SharedView,
    pub(crate) synced: watch::Receiver<bool>,
    pub(crate) commands: mpsc::Sender<Command>,
}

/// Starts a watcher task that applies changes to a shared view and sends events to `events`.
pub(crate) fn spawn(
    pool: Pool,
    settings: WatcherSettings,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> WatcherTask {
    let source = PoolSource {
        pool,
        layout: settings.layout.clone(),
        page_size: settings.page_size,
        request_timeout: settings.request_timeout,
    };
    let (watcher, task) = Watcher::new(source, settings, events);
    tokio::spawn(watcher.run(cancel));
    task
}

/// The machine: its source, the view it feeds and the channels it answers on.
struct Watcher<S: KvSource> {
    source: S,
    /// Members suspected by any request of this connector: a watch on one of them moves.
    suspicions: watch::Receiver<(u64, usize)>,
    settings: WatcherSettings,
    shared: SharedView,
    events: mpsc::Sender<Event>,
    commands: mpsc::Receiver<Command>,
    synced: watch::Sender<bool>,
    resync_waiters: Vec<oneshot::Sender<()>>,
    backoff: Option<Delays>,
}

fn list_from_scratch<F>(initial: bool) -> State<F> {
    State::List {
        initial,
        pinned: 0,
        after: None,
        snapshot: None,
        pending: Vec::new(),
        cursor: 0,
    }
}

impl<S: KvSource> Watcher<S> {
    /// A watcher over `source` and the handles the connector keeps.
    fn new(
        source: S,
        settings: WatcherSettings,
        events: mpsc::Sender<Event>,
    ) -> (Self, WatcherTask) {
        let shared = Arc::new(Mutex::new(Shared {
            view: Membership::new(settings.layout.clone()),
            cursor: 0,
            revision: 0,
            stale: false,
            own: None,
        }));
        let (synced_tx, synced) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let watcher = Watcher {
            suspicions: source.suspicions(),
            source,
            settings,
            shared: shared.clone(),
            events,
            commands: cmd_rx,
            synced: synced_tx,
            resync_waiters: Vec::new(),
            backoff: None,
        };
        let task = WatcherTask {
            shared,
            synced,
            commands: cmd_tx,
        };
        (watcher, task)
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut state = list_from_scratch(true);
        loop {
            let (events, next) = tokio::select! {
                () = cancel.cancelled() => return,
                step = self.step(state) => step,
            };
            for event in events {
                // The common case, a queue with room, without arming the cancellation.
                let event = match self.events.try_send(event) {
                    // Sent, or no receiver left (nobody consumes events; keep the view
                    // current).
                    Ok(()) | Err(TrySendError::Closed(_)) => continue,
                    Err(TrySendError::Full(event)) => event,
                };
                // Backpressure: a full queue makes us wait here, so nothing is dropped; the
                // keep-alive runs on its own task and is not delayed by it.
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = self.events.send(event) => {
                        // No receiver left: nobody consumes events; keep the view current.
                        let _ = sent;
                    }
                }
            }
            state = next;
        }
    }

    /// One transition. Returns the events to deliver (in order) and the next state.
    async fn step(&mut self, state: State<S::Feed>) -> (Vec<Event>, State<S::Feed>) {
        match state {
            State::List {
                initial,
                pinned,
                after,
                snapshot,
                pending,
                cursor,
            } => {
                let snapshot =
                    snapshot.unwrap_or_else(|| Box::new(lock(&self.shared).view.begin_snapshot()));
                // Decode the previous page on a blocking thread while this one is read: a
                // snapshot of many servers is mostly decoding, and doing it here, on the task
                // that drives the read, would delay the request until it is done.
                let op = if pinned == 0 {
                    "snapshot"
                } else {
                    "snapshot page"
                };
                let read = self.source.page(op, pinned, after.as_deref());
                let decode = async move {
                    if pending.is_empty() {
                        return Ok(snapshot);
                    }
                    tokio::task::spawn_blocking(move || {
                        let mut snapshot = snapshot;
                        snapshot.add(&pending);
                        snapshot
                    })
                    .await
                };
                let (page, decoded) = tokio::join!(read, decode);
                let mut snapshot = match decoded {
                    Ok(snapshot) => snapshot,
                    Err(e) => {
                        // A bug in decoding: let it surface as the panic it is.
                        if let Ok(panic) = e.try_into_panic() {
                            std::panic::resume_unwind(panic);
                        }
                        // The runtime is shutting down: start over, paced like any failure.
                        let then = Box::new(list_from_scratch(initial));
                        let backoff = State::Backoff {
                            then,
                            unreachable: false,
                        };
                        return (Vec::new(), backoff);
                    }
                };
                match page {
                    Ok(Page {
                        revision,
                        kvs,
                        next: Some(next),
                        cursor: read_cursor,
                    }) => {
                        let next = State::List {
                            initial,
                            pinned: revision,
                            after: Some(next),
                            snapshot: Some(snapshot),
                            pending: kvs,
                            cursor: read_cursor.unwrap_or(cursor),
                        };
                        (Vec::new(), next)
                    }
                    Ok(Page {
                        revision,
                        kvs,
                        next: None,
                        cursor: read_cursor,
                    }) => {
                        self.backoff = None;
                        snapshot.add(&kvs);
                        let cursor = read_cursor.unwrap_or(cursor);
                        let events = self.finish_list(initial, revision, *snapshot, cursor);
                        (events, State::Open { from: revision + 1 })
                    }
                    Err(e) => {
                        self.log_failure("snapshot read failed; retrying", &e, None);
                        // Restart the list from scratch: a pinned revision may be compacted.
                        let then = Box::new(list_from_scratch(initial));
                        (
                            Vec::new(),
                            State::Backoff {
                                then,
                                unreachable: true,
                            },
                        )
                    }
                }
            }
            State::Open { from } if lock(&self.shared).stale => {
                // After an outage, relist instead of resuming: the completed relist is what
                // proves the view caught up (etcd 3.4.23 / 3.5.1 answer a progress request even
                // for a watcher still catching up, so a progress answer proves nothing there).
                let _ = from;
                (Vec::new(), list_from_scratch(false))
            }
            State::Open { from } => match self.source.open(from).await {
                Ok((stream, member)) => {
                    metrics::counter!(m::WATCH_RESTARTS).increment(1);
                    let last_heard = Instant::now();
                    self.suspicions.mark_unchanged();
                    (
                        Vec::new(),
                        State::Watch {
                            from,
                            stream: Box::new(stream),
                            member,
                            last_heard,
                            asked: None,
                        },
                    )
                }
                Err(e) => {
                    self.log_failure("opening the watch failed; retrying", &e, Some(from));
                    let then = Box::new(State::Open { from });
                    (
                        Vec::new(),
                        State::Backoff {
                            then,
                            unreachable: true,
                        },
                    )
                }
            },
            State::Watch {
                from,
                stream,
                member,
                last_heard,
                asked,
            } => {
                self.watch_step(from, stream, member, last_heard, asked)
                    .await
            }
            State::Backoff { then, unreachable } => {
                let stale = if unreachable { self.mark_stale() } else { None };
                let delay = self
                    .backoff
                    .get_or_insert_with(|| {
                        crate::timing::recovery_backoff_within(self.settings.max_backoff)
                    })
                    .next()
                    .unwrap_or(self.settings.max_backoff);
                tracing::debug!(
                    delay_ms = delay.as_millis(),
                    next = then.name(),
                    "watcher backing off"
                );
                tokio::time::sleep(delay).await;
                (stale.into_iter().collect(), *then)
            }
        }
    }

    fn finish_list(
        &mut self,
        initial: bool,
        revision: i64,
        snapshot: Snapshot,
        cursor: u64,
    ) -> Vec<Event> {
        let (mut events, members) = {
            let mut shared = lock(&self.shared);
            let counts_before = (shared.view.skipped(), shared.view.shadowed());
            let events = shared.view.install(snapshot, revision);
            shared.cursor = alloc::later_position(
                alloc::later_position(shared.cursor, cursor),
                shared.view.max_alloc_position(),
            );
            shared.revision = revision;
            shared.check_own_snapshot(revision);
            record_view_metrics(&shared, counts_before, 0);
            (events, shared.view.len())
        };
        tracing::debug!(
            revision,
            members,
            changes = events.len(),
            initial,
            "snapshot applied"
        );
        if initial {
            events.push(Event::Synced { revision });
            self.synced.send_replace(true);
        } else {
            metrics::counter!(m::RESYNCS).increment(1);
        }
        events.extend(self.mark_fresh(revision));
        for waiter in self.resync_waiters.drain(..) {
            let _ = waiter.send(());
        }
        events
    }

    async fn watch_step(
        &mut self,
        from: i64,
        mut stream: Box<S::Feed>,
        member: usize,
        last_heard: Instant,
        asked: Option<Instant>,
    ) -> (Vec<Event>, State<S::Feed>) {
        // Watchdog: a silent stream is asked for progress after `progress_interval`. An
        // answer (or any message) proves the member alive; none within the pool's attempt
        // timeout means the member froze or answers too late: it is suspected and the watch
        // reopened on another member. A stream silent for `idle_timeout` is recreated anyway.
        let (ask_at, give_up_at) = crate::timing::watchdog(
            last_heard,
            asked,
            self.settings.progress_interval,
            self.settings.idle_timeout,
            self.source.attempt_timeout(),
        );
        let msg = tokio::select! {
            cmd = self.commands.recv() => {
                return match cmd {
                    Some(Command::Resync(done)) => {
                        self.resync_waiters.push(done);
                        (Vec::new(), list_from_scratch(false))
                    }
                    None => {
                        let watch = State::Watch { from, stream, member, last_heard, asked };
                        (Vec::new(), watch)
                    }
                };
            }
            changed = self.suspicions.changed() => {
                let suspected = self.suspicions.borrow_and_update().1;
                if changed.is_ok() && suspected == member && self.source.members() > 1 {
                    tracing::info!(from, "watch member suspected; moving the watch to another member");
                    return (Vec::new(), State::Open { from });
                }
                let watch = State::Watch { from, stream, member, last_heard, asked };
                return (Vec::new(), watch);
            }
            () = tokio::time::sleep_until(ask_at), if asked.is_none() => {
                let asked = match stream.request_progress().await {
                    Ok(()) => Some(Instant::now()),
                    Err(_) => None,
                };
                let watch = State::Watch { from, stream, member, last_heard, asked };
                return (Vec::new(), watch);
            }
            () = tokio::time::sleep_until(give_up_at) => {
                if asked.is_some() {
                    tracing::warn!(from, "watch stream did not answer a progress request in time; moving it to another member");
                    self.source.suspect(member, "watch did not answer a progress request");
                    return (Vec::new(), State::Open { from });
                }
                tracing::warn!(from, silent_for = ?self.settings.idle_timeout, "watch stream silent; recreating it");
                let then = Box::new(State::Open { from });
                return (Vec::new(), State::Backoff { then, unreachable: false });
            }
            msg = stream.message() => msg,
        };
        let answer = match msg {
            Ok(Some(answer)) => answer,
            ended => {
                // A stream that ends or fails resumes at `from` on another member: nothing
                // lost, nothing repeated.
                let why = if let Err(e) = ended {
                    tracing::info!(error = %e, from, "watch stream failed; resuming");
                    "watch stream failed"
                } else {
                    tracing::info!(from, "watch stream ended; resuming");
                    "watch stream ended"
                };
                self.source.suspect(member, why);
                let then = Box::new(State::Open { from });
                return (
                    Vec::new(),
                    State::Backoff {
                        then,
                        unreachable: false,
                    },
                );
            }
        };
        let verdict = classify(&answer, from);
        if !matches!(
            verdict,
            Verdict::Compacted { .. } | Verdict::Cancelled { .. }
        ) {
            self.backoff = None;
        }
        let heard = Instant::now();
        let watch = |from, asked| State::Watch {
            from,
            stream,
            member,
            last_heard: heard,
            asked,
        };
        match verdict {
            Verdict::Compacted { compact_revision } => {
                tracing::warn!(from, compact_revision, "watch compacted; relisting");
                (Vec::new(), list_from_scratch(false))
            }
            Verdict::Cancelled { auth } => {
                let reason = &answer.cancel_reason;
                tracing::warn!(from, reason, "watch cancelled by etcd; relisting");
                if auth {
                    // An expired auth token cancels a watch instead of failing it: get a
                    // fresh token first.
                    if let Err(e) = self.source.refresh_token(member).await {
                        tracing::debug!(error = %e, "refreshing the auth token failed");
                    }
                }
                (Vec::new(), list_from_scratch(false))
            }
            // `created` promises nothing about progress.
            Verdict::Created => (Vec::new(), watch(from, asked)),
            // The answer to our progress request: proof of life only (see `classify`).
            Verdict::ProofOfLife => (Vec::new(), watch(from, None)),
            Verdict::Progress { next } => {
                lock(&self.shared).revision = next - 1;
                metrics::gauge!(m::REVISION_LAG).set(0.0);
                (Vec::new(), watch(next, None))
            }
            Verdict::Apply { last } => {
                let changes = &answer.changes;
                let events = {
                    let mut shared = lock(&self.shared);
                    let counts_before = (shared.view.skipped(), shared.view.shadowed());
                    let events = shared.view.apply(changes);
                    shared.cursor =
                        alloc::later_position(shared.cursor, shared.view.max_alloc_position());
                    shared.revision = last;
                    shared.check_own_changes(changes);
                    shared.check_own_edits(changes);
                    record_view_metrics(&shared, counts_before, answer.header_revision - last);
                    events
                };
                (events, watch(last + 1, None))
            }
        }
    }

    /// Marks the view stale; returns the event the first time.
    /// Logs a failed read or open: a warning while the view is fresh (the first failure of
    /// an outage), then at debug level, so an outage costs one warning, the stale/fresh pair
    /// marks its span, and its retries do not flood the log (every host gets this, not only
    /// the CLI).
    fn log_failure(&self, what: &str, e: &Error, from: Option<i64>) {
        if lock(&self.shared).stale {
            tracing::debug!(error = %e, from, "{what}");
        } else {
            tracing::warn!(error = %e, from, "{what}");
        }
    }

    fn mark_stale(&mut self) -> Option<Event> {
        let mut shared = lock(&self.shared);
        if shared.stale || !*self.synced.borrow() {
            return None;
        }
        shared.stale = true;
        tracing::warn!(
            revision = shared.revision,
            "registry view is stale: etcd cannot be read"
        );
        Some(Event::Stale {
            revision: shared.revision,
        })
    }

    /// Marks the view fresh; returns the event if it was stale.
    fn mark_fresh(&mut self, revision: i64) -> Option<Event> {
        let mut shared = lock(&self.shared);
        if !shared.stale {
            return None;
        }
        shared.stale = false;
        tracing::info!(revision, "registry view is fresh again");
        Some(Event::Fresh { revision })
    }
}

/// `counts_before`: the view's skipped and shadowed counts before the change.
fn record_view_metrics(shared: &Shared, counts_before: (u64, u64), lag: i64) {
    let skipped = shared.view.skipped().saturating_sub(counts_before.0);
    if skipped > 0 {
        metrics::counter!(m::SKIPPED_RECORDS).increment(skipped);
    }
    let shadowed = shared.view.shadowed().saturating_sub(counts_before.1);
    if shadowed > 0 {
        metrics::counter!(m::SHADOWED_RECORDS).increment(shadowed);
    }
    // Gauges are f64; member counts and revision lags are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(m::MEMBERS).set(shared.view.len() as f64);
        metrics::gauge!(m::REVISION_LAG).set(lag.max(0) as f64);
    }
}

/// A watch event's key-value, copied into the view's form.
pub(crate) fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

/// Reads the whole server range once (paginated, pinned), for one-shot listings.
pub(crate) async fn list_once(
    pool: &Pool,
    settings: &WatcherSettings,
) -> Result<(i64, Membership)> {
    let mut view = Membership::new(settings.layout.clone());
    let mut snapshot = view.begin_snapshot();
    let range = ServerRange {
        pool,
        layout: &settings.layout,
        page_size: settings.page_size,
        timeout: settings.request_timeout,
    };
    let pinned = range.read_all("list", |page| snapshot.add(&page)).await?;
    if pinned == 0 {
        return Err(Error::InvalidConfig("etcd returned no revision".into()));
    }
    view.install(snapshot, pinned);
    Ok((pinned, view))
}

#[cfg(test)]
mod tests;
