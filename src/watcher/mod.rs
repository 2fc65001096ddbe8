//! List + watch of the server prefix as an explicit state machine, writing the view.
//!
//! The watcher is the only writer of the [`View`] (members, revision, freshness): each step that
//! changes it does so through its [`ViewWriter`], which sequences the joins and leaves of that
//! change in the same step and hands them to every subscription without waiting (see
//! [`crate::events`]). It announces each applied batch or snapshot
//! ([`crate::view::Applied`]) to whoever listens; it knows nothing of the registration.
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
//!   allocator cursor at `R`. Each page is decoded into a [`crate::membership::Snapshot`] on a blocking thread
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
//!   watchers only, do). A *busy* stream is never silent, so a member that answers seconds
//!   late would go unnoticed while the traffic lasts (the view lagging by that much): after
//!   each `progress_interval` of traffic the member is probed with a small serializable read
//!   in the background, and one that does not answer within the attempt timeout is
//!   suspected (if another member is not), which moves the watch (resumed at `from`: nothing
//!   lost). A stream kept alive only by the answers to our own progress requests is not
//!   probed: each answer, in time, proves the same (etcd's own notifications do not).
//! - **Backoff**: any failure waits a jittered exponential delay (backon, at most half a TTL
//!   with the jitter included: [`crate::backoff`]) and retries the state it failed in. A broken stream that reopens at once resumes at `from`: no event is lost or
//!   repeated. A compacted resume point cannot be resumed (etcd only keeps history after the
//!   compaction), so it relists.
//!
//! **Interest.** A connector given `watch_groups` watches one key range per group instead of
//! the whole prefix (the ranges come from `KeyLayout::watch_ranges`, in key order). List reads
//! the ranges one after another, every page pinned at the `R` the first page fixed, into one
//! snapshot: one consistent cut of all of them. Open puts one watch per range on one gRPC
//! stream, and Watch keeps a resume point per range (`from[lane]`): an answer moves only its
//! own range's point, a broken stream reopens every range at its own point, and a compaction
//! or cancel of any range relists them all. The watchdog, backoff and freshness rules are the
//! stream's, unchanged. Without `watch_groups` there is one range (the whole prefix) and the
//! machine is exactly the one above.
//!
//! The machine is generic over its [`KvSource`] (list a page pinned at a revision, open a
//! watch, request progress, the pool's suspicions): [`PoolSource`] is the real one, and the
//! unit tests (`tests.rs`) drive it over a scripted fake through every recovery path. What a
//! response means is decided by [`classify::classify`] and the pinned paginated read is [`ServerRange`]
//! (shared with the one-shot listings).
//!
//! When etcd cannot be reached (a failed reopen or read), the view keeps its last state (an
//! error never empties it) and is marked stale ([`Event::Stale`]). Once etcd answers again the
//! watcher relists, emits exactly the joins and leaves it missed, then [`Event::Fresh`]: a
//! completed relist is what proves the view caught up.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Delays;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::{KeyLayout, KeyRange};
use crate::membership::{KeyValue, Membership};
use crate::metrics as m;
use crate::pool::Pool;
use crate::view::{View, ViewReader, ViewWriter};

mod classify;
mod list;
mod paging;
mod source;
mod timers;
mod watching;

pub(crate) use list::{Page, ServerRange};
use paging::{list_from_scratch, Listing};
use source::{KvSource, PoolSource};
use watching::Watching;

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
    /// The ranges watched, in key order: the whole server range, or one per group of the
    /// connector's interest ([`crate::ConnectorConfig::watch_groups`]).
    pub(crate) ranges: Vec<KeyRange>,
    pub(crate) page_size: i64,
    pub(crate) request_timeout: Duration,
    pub(crate) progress_interval: Duration,
    pub(crate) idle_timeout: Duration,
    /// Longest pause between retries, jitter included: half a lease TTL (at most 5 s), so that
    /// after an outage a watcher notices etcd is back within half a TTL.
    pub(crate) max_backoff: Duration,
    /// Each event subscription's queue (`event_queue`).
    pub(crate) event_queue: usize,
}

impl WatcherSettings {
    /// The watcher settings a connector configuration implies.
    pub(crate) fn new(layout: KeyLayout, config: &crate::config::ConnectorConfig) -> Self {
        WatcherSettings {
            ranges: layout.watch_ranges(&config.interest()),
            layout,
            page_size: config.page_size,
            request_timeout: config.request_timeout,
            progress_interval: config.progress_interval,
            idle_timeout: config.watch_idle_timeout,
            max_backoff: crate::timing::recovery_bound(config.lease_ttl),
            event_queue: config.event_queue,
        }
    }
}

/// The states; see the module docs. `F` is the source's watch stream. Each state's data is
/// what the next step needs, and nothing else: one transition function ([`Watcher::step`])
/// moves from one to the next, with a helper per state (`list_step`, `open_step`,
/// `watch_step`, `backoff_step`).
enum State<F> {
    /// Reading the snapshot, page by page, range after range, at one revision.
    List(Listing),
    /// Opening a watch stream that starts each range `lane` at `from[lane]`.
    Open { from: Vec<i64> },
    /// Streaming: the resume points, the stream, its member, its timers.
    Watch(Watching<F>),
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
            State::List(_) => "list",
            State::Open { .. } => "open",
            State::Watch(_) => "watch",
            State::Backoff { .. } => "backoff",
        }
    }
}

/// The watcher task's handles.
pub(crate) struct WatcherTask {
    /// Read access to the view the watcher writes, and its subscriptions.
    pub(crate) view: ViewReader,
    pub(crate) synced: watch::Receiver<bool>,
    pub(crate) commands: mpsc::Sender<Command>,
}

/// Starts a watcher task that applies changes to its view and sequences their events.
pub(crate) fn spawn(
    pool: Pool,
    settings: WatcherSettings,
    cancel: CancellationToken,
) -> WatcherTask {
    let source = PoolSource {
        pool,
        layout: settings.layout.clone(),
        ranges: settings.ranges.clone(),
        page_size: settings.page_size,
        request_timeout: settings.request_timeout,
        probing: std::sync::Arc::default(),
        cancel: cancel.clone(),
    };
    let (watcher, task) = Watcher::new(source, settings);
    tokio::spawn(watcher.run(cancel));
    task
}

/// The machine: its source, the view it writes and the channels it answers on.
struct Watcher<S: KvSource> {
    source: S,
    /// Members suspected by any request of this connector: a watch on one of them moves.
    suspicions: watch::Receiver<(u64, usize)>,
    settings: WatcherSettings,
    view: ViewWriter,
    commands: mpsc::Receiver<Command>,
    synced: watch::Sender<bool>,
    resync_waiters: Vec<oneshot::Sender<()>>,
    backoff: Option<Delays>,
}

impl<S: KvSource> Watcher<S> {
    /// A watcher over `source` and the handles the connector keeps.
    fn new(source: S, settings: WatcherSettings) -> (Self, WatcherTask) {
        let (view, reader) = ViewWriter::new(settings.layout.clone(), settings.event_queue);
        let (synced_tx, synced) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let watcher = Watcher {
            suspicions: source.suspicions(),
            source,
            settings,
            view,
            commands: cmd_rx,
            synced: synced_tx,
            resync_waiters: Vec::new(),
            backoff: None,
        };
        let task = WatcherTask {
            view: reader,
            synced,
            commands: cmd_tx,
        };
        (watcher, task)
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut state = list_from_scratch(true);
        // One cancellation future for the task's life: a new one per step would register and
        // remove a waiter under the token's lock at every message.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            // Events are sequenced as each step writes the view; publishing never waits for a
            // subscriber (see `events`), so nothing here is held up by a slow one.
            state = tokio::select! {
                biased;
                () = &mut cancelled => return,
                next = self.step(state) => next,
            };
        }
    }

    /// One transition; returns the next state. The events it makes are sequenced as it
    /// writes the view.
    async fn step(&mut self, state: State<S::Feed>) -> State<S::Feed> {
        match state {
            State::List(listing) => self.list_step(listing).await,
            State::Open { from } => self.open_step(from).await,
            State::Watch(watching) => self.watch_step(watching).await,
            State::Backoff { then, unreachable } => self.backoff_step(*then, unreachable).await,
        }
    }

    /// Opens the watch stream (after an outage, relists instead); a failure marks the view
    /// stale and retries after a pause.
    async fn open_step(&mut self, from: Vec<i64>) -> State<S::Feed> {
        if self.view.read(|v| v.stale) {
            // After an outage, relist instead of resuming: the completed relist is what
            // proves the view caught up (etcd 3.4.23 / 3.5.1 answer a progress request even
            // for a watcher still catching up, so a progress answer proves nothing there).
            return list_from_scratch(false);
        }
        match self.source.open(&from).await {
            Ok((stream, member)) => {
                metrics::counter!(m::WATCH_RESTARTS).increment(1);
                let watching =
                    Watching::opened(from, stream, member, self.settings.progress_interval);
                self.suspicions.mark_unchanged();
                State::Watch(watching)
            }
            Err(e) => {
                self.log_failure(
                    "opening the watch failed; retrying",
                    &e,
                    from.first().copied(),
                );
                let then = Box::new(State::Open { from });
                State::Backoff {
                    then,
                    unreachable: true,
                }
            }
        }
    }

    /// Waits out a failure (jittered exponential, within `max_backoff`), marking the view
    /// stale first when etcd is `unreachable`; then `then`.
    async fn backoff_step(&mut self, then: State<S::Feed>, unreachable: bool) -> State<S::Feed> {
        if unreachable {
            self.mark_stale();
        }
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
        then
    }

    /// Logs a failed read or open: a warning while the view is fresh (the first failure of
    /// an outage), then at debug level, so an outage costs one warning, the stale/fresh pair
    /// marks its span, and its retries do not flood the log (every host gets this, not only
    /// the CLI).
    fn log_failure(&self, what: &str, e: &Error, from: Option<i64>) {
        if self.view.read(|v| v.stale) {
            tracing::debug!(error = %e, from, "{what}");
        } else {
            tracing::warn!(error = %e, from, "{what}");
        }
    }

    /// Marks a synced view stale, with [`Event::Stale`] the first time.
    fn mark_stale(&mut self) {
        self.view.update(|view, events| {
            if view.stale || !view.synced {
                return;
            }
            view.stale = true;
            tracing::warn!(
                revision = view.revision,
                "registry view is stale: etcd cannot be read"
            );
            events.push(Event::Stale {
                revision: view.revision,
            });
        });
    }
}

/// `counts_before`: the view's skipped and shadowed counts before the change.
fn record_view_metrics(view: &View, counts_before: (u64, u64), lag: i64) {
    let skipped = view.members.skipped().saturating_sub(counts_before.0);
    if skipped > 0 {
        metrics::counter!(m::SKIPPED_RECORDS).increment(skipped);
    }
    let shadowed = view.members.shadowed().saturating_sub(counts_before.1);
    if shadowed > 0 {
        metrics::counter!(m::SHADOWED_RECORDS).increment(shadowed);
    }
    // Gauges are f64; member counts and revision lags are far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(m::MEMBERS).set(view.members.len() as f64);
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
    let keys = settings.layout.servers_range();
    let range = ServerRange {
        pool,
        layout: &settings.layout,
        keys: &keys,
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
