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
//! response means is decided by [`classify()`] and the pinned paginated read is [`ServerRange`]
//! (shared with the one-shot listings).
//!
//! When etcd cannot be reached (a failed reopen or read), the view keeps its last state (an
//! error never empties it) and is marked stale ([`Event::Stale`]). Once etcd answers again the
//! watcher relists, emits exactly the joins and leaves it missed, then [`Event::Fresh`]: a
//! completed relist is what proves the view caught up.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::alloc;
use crate::backoff::Delays;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::{KeyLayout, KeyRange};
use crate::membership::{KeyValue, Membership, Snapshot};
use crate::metrics as m;
use crate::pool::Pool;
use crate::view::{View, ViewReader, ViewWriter};

mod classify;
mod list;
mod source;

use classify::{classify, Verdict};
pub(crate) use list::{Page, ServerRange};
use source::{KvSource, PoolSource, WatchFeed};

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

/// The states; see the module docs. `F` is the source's watch stream.
enum State<F> {
    /// Reading range `lane` (the ranges one after the other); `pinned` is 0 until the first
    /// page fixed the revision. `pending` is the last page read, decoded into `snapshot` while
    /// the next page is read.
    List {
        initial: bool,
        lane: usize,
        pinned: i64,
        after: Option<Vec<u8>>,
        snapshot: Option<Box<Snapshot>>,
        pending: Vec<KeyValue>,
        cursor: u64,
    },
    /// Opening a watch stream that starts each range `lane` at `from[lane]`.
    Open { from: Vec<i64> },
    /// Streaming from pool member `member`; `from[lane]` is the next revision range `lane`
    /// needs; `asked` is when we asked for a progress notification that has not come yet.
    Watch {
        from: Vec<i64>,
        /// Boxed: the stream is most of the state's size, and the other states are small.
        stream: Box<F>,
        member: usize,
        last_heard: Instant,
        asked: Option<Instant>,
        /// When the member was last probed (or the stream opened): a busy stream's member is
        /// probed once per `progress_interval`.
        probed: Instant,
        /// The watchdog's timer, kept from message to message: moving a pending timer later
        /// is an atomic update, where a new timer per message is registered with the runtime's
        /// timer wheel and removed again (a measurable share of a busy watcher's time).
        watchdog: Pin<Box<Sleep>>,
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

fn list_from_scratch<F>(initial: bool) -> State<F> {
    State::List {
        initial,
        lane: 0,
        pinned: 0,
        after: None,
        snapshot: None,
        pending: Vec::new(),
        cursor: 0,
    }
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
            State::List {
                initial,
                lane,
                pinned,
                after,
                snapshot,
                pending,
                cursor,
            } => {
                let snapshot = snapshot
                    .unwrap_or_else(|| Box::new(self.view.read(|v| v.members.begin_snapshot())));
                // Decode the previous page on a blocking thread while this one is read: a
                // snapshot of many servers is mostly decoding, and doing it here, on the task
                // that drives the read, would delay the request until it is done.
                let op = if pinned == 0 {
                    "snapshot"
                } else {
                    "snapshot page"
                };
                let read = self.source.page(lane, op, pinned, after.as_deref());
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
                        return State::Backoff {
                            then,
                            unreachable: false,
                        };
                    }
                };
                match page {
                    Ok(Page {
                        revision,
                        kvs,
                        next: Some(next),
                        cursor: read_cursor,
                    }) => State::List {
                        initial,
                        lane,
                        pinned: revision,
                        after: Some(next),
                        snapshot: Some(snapshot),
                        pending: kvs,
                        cursor: read_cursor.unwrap_or(cursor),
                    },
                    // The next range, read at the same revision: one cut across ranges.
                    Ok(Page {
                        revision,
                        kvs,
                        next: None,
                        cursor: read_cursor,
                    }) if lane + 1 < self.source.ranges() => State::List {
                        initial,
                        lane: lane + 1,
                        pinned: revision,
                        after: None,
                        snapshot: Some(snapshot),
                        pending: kvs,
                        cursor: read_cursor.unwrap_or(cursor),
                    },
                    Ok(Page {
                        revision,
                        kvs,
                        next: None,
                        cursor: read_cursor,
                    }) => {
                        self.backoff = None;
                        snapshot.add(&kvs);
                        let cursor = read_cursor.unwrap_or(cursor);
                        self.finish_list(initial, revision, *snapshot, cursor);
                        State::Open {
                            from: vec![revision + 1; self.source.ranges()],
                        }
                    }
                    Err(e) => {
                        self.log_failure("snapshot read failed; retrying", &e, None);
                        // Restart the list from scratch: a pinned revision may be compacted.
                        let then = Box::new(list_from_scratch(initial));
                        State::Backoff {
                            then,
                            unreachable: true,
                        }
                    }
                }
            }
            State::Open { from } if self.view.read(|v| v.stale) => {
                // After an outage, relist instead of resuming: the completed relist is what
                // proves the view caught up (etcd 3.4.23 / 3.5.1 answer a progress request even
                // for a watcher still catching up, so a progress answer proves nothing there).
                let _ = from;
                list_from_scratch(false)
            }
            State::Open { from } => match self.source.open(&from).await {
                Ok((stream, member)) => {
                    metrics::counter!(m::WATCH_RESTARTS).increment(1);
                    let last_heard = Instant::now();
                    self.suspicions.mark_unchanged();
                    State::Watch {
                        from,
                        stream: Box::new(stream),
                        member,
                        last_heard,
                        asked: None,
                        probed: last_heard,
                        watchdog: Box::pin(tokio::time::sleep_until(
                            last_heard + self.settings.progress_interval,
                        )),
                    }
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
            },
            State::Watch {
                from,
                stream,
                member,
                last_heard,
                asked,
                probed,
                watchdog,
            } => {
                self.watch_step(from, stream, member, (last_heard, asked, probed), watchdog)
                    .await
            }
            State::Backoff { then, unreachable } => {
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
                *then
            }
        }
    }

    /// Installs a completed snapshot: its joins and leaves, [`Event::Synced`] the first time,
    /// [`Event::Fresh`] after an outage, all sequenced in one step.
    fn finish_list(&mut self, initial: bool, revision: i64, snapshot: Snapshot, cursor: u64) {
        let synced = &self.synced;
        let (changes, members) = self.view.update(|view, events| {
            let counts_before = (view.members.skipped(), view.members.shadowed());
            events.extend(
                view.members
                    .install(snapshot, revision)
                    .into_iter()
                    .map(Event::from),
            );
            let changes = events.len();
            view.cursor_read = alloc::later_position(view.cursor_read, cursor);
            view.revision = revision;
            record_view_metrics(view, counts_before, 0);
            if initial {
                view.synced = true;
                events.push(Event::Synced { revision });
                synced.send_replace(true);
            }
            if view.stale {
                view.stale = false;
                tracing::info!(revision, "registry view is fresh again");
                events.push(Event::Fresh { revision });
            }
            (changes, view.members.len())
        });
        self.view.announce_snapshot(revision);
        tracing::debug!(revision, members, changes, initial, "snapshot applied");
        if !initial {
            metrics::counter!(m::RESYNCS).increment(1);
        }
        for waiter in self.resync_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    async fn watch_step(
        &mut self,
        mut from: Vec<i64>,
        mut stream: Box<S::Feed>,
        member: usize,
        (last_heard, asked, mut probed): (Instant, Option<Instant>, Instant),
        mut watchdog: Pin<Box<Sleep>>,
    ) -> State<S::Feed> {
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
        // One timer for both instants: the earlier one that is still to come.
        let ask = asked.is_none() && ask_at < give_up_at;
        let due = if ask { ask_at } else { give_up_at };
        if watchdog.deadline() != due {
            watchdog.as_mut().reset(due);
        }
        let msg = tokio::select! {
            // Biased: no random start per message; every branch but the stream is a cheap
            // check, and the stream is polled on every step.
            biased;
            cmd = self.commands.recv() => {
                return match cmd {
                    Some(Command::Resync(done)) => {
                        self.resync_waiters.push(done);
                        list_from_scratch(false)
                    }
                    None => State::Watch { from, stream, member, last_heard, asked, probed, watchdog },
                };
            }
            changed = self.suspicions.changed() => {
                let suspected = self.suspicions.borrow_and_update().1;
                if changed.is_ok() && suspected == member && self.source.members() > 1 {
                    tracing::info!(from = ?from, "watch member suspected; moving the watch to another member");
                    return State::Open { from };
                }
                return State::Watch { from, stream, member, last_heard, asked, probed, watchdog };
            }
            () = &mut watchdog => {
                if ask {
                    return match stream.request_progress().await {
                        Ok(()) => {
                            let asked = Some(Instant::now());
                            State::Watch { from, stream, member, last_heard, asked, probed, watchdog }
                        }
                        // The stream cannot take a request: it is gone. Resume elsewhere,
                        // as when it fails.
                        Err(e) => {
                            tracing::info!(error = %e, from = ?from, "watch stream refused a progress request; resuming");
                            self.source.suspect(member, "watch stream failed");
                            let then = Box::new(State::Open { from });
                            State::Backoff { then, unreachable: false }
                        }
                    };
                }
                if asked.is_some() {
                    tracing::warn!(from = ?from, "watch stream did not answer a progress request in time; moving it to another member");
                    self.source.suspect(member, "watch did not answer a progress request");
                    return State::Open { from };
                }
                tracing::warn!(from = ?from, silent_for = ?self.settings.idle_timeout, "watch stream silent; recreating it");
                let then = Box::new(State::Open { from });
                return State::Backoff { then, unreachable: false };
            }
            msg = stream.message() => msg,
        };
        let mut answer = match msg {
            Ok(Some(answer)) => answer,
            ended => {
                // A stream that ends or fails resumes at `from` on another member: nothing
                // lost, nothing repeated.
                let why = if let Err(e) = ended {
                    tracing::info!(error = %e, from = ?from, "watch stream failed; resuming");
                    "watch stream failed"
                } else {
                    tracing::info!(from = ?from, "watch stream ended; resuming");
                    "watch stream ended"
                };
                self.source.suspect(member, why);
                let then = Box::new(State::Open { from });
                return State::Backoff {
                    then,
                    unreachable: false,
                };
            }
        };
        // Which range it is about: the answer to a progress request is the stream's (proof of
        // life only, whatever `from` is given); any other answer names its range's watch.
        let lane = match answer.lane {
            Some(lane) if lane < from.len() => lane,
            Some(_) | None if answer.watch_id == -1 => 0,
            _ => {
                // A response for no watch of ours, or with keys outside the range its watch id
                // names: etcd or a proxy broke the protocol. The stream cannot be trusted to
                // carry every range's events (nor its resume points); reopen it.
                tracing::warn!(watch_id = answer.watch_id, from = ?from, "watch answer that matches none of our watches; reopening the stream");
                self.source
                    .suspect(member, "watch answer matching none of our watches");
                let then = Box::new(State::Open { from });
                return State::Backoff {
                    then,
                    unreachable: false,
                };
            }
        };
        let verdict = classify(&answer, from[lane]);
        if !matches!(
            verdict,
            Verdict::Compacted { .. } | Verdict::Cancelled { .. }
        ) {
            self.backoff = None;
        }
        let heard = Instant::now();
        if matches!(verdict, Verdict::ProofOfLife) {
            // The member answered our progress request within the attempt timeout: as good
            // as a probe.
            probed = heard;
        } else if heard.saturating_duration_since(probed) >= self.settings.progress_interval
            && self.source.members() > 1
        {
            // A busy stream is never silent, so the watchdog never asks its member for
            // progress: a member answering seconds late would go unnoticed, and the view lag
            // by as much, for as long as the traffic lasts. Probe it once per progress
            // interval instead.
            self.source.probe(member);
            probed = heard;
        }
        let watch = |from, asked| State::Watch {
            from,
            stream,
            member,
            last_heard: heard,
            asked,
            probed,
            watchdog,
        };
        match verdict {
            Verdict::Compacted { compact_revision } => {
                tracing::warn!(
                    lane,
                    from = from[lane],
                    compact_revision,
                    "watch compacted; relisting"
                );
                list_from_scratch(false)
            }
            Verdict::Cancelled { auth } => {
                let reason = &answer.cancel_reason;
                tracing::warn!(
                    lane,
                    from = from[lane],
                    reason,
                    "watch cancelled by etcd; relisting"
                );
                if auth {
                    // An expired auth token cancels a watch instead of failing it: get a
                    // fresh token first.
                    if let Err(e) = self.source.refresh_token(member).await {
                        tracing::debug!(error = %e, "refreshing the auth token failed");
                    }
                }
                list_from_scratch(false)
            }
            // `created` promises nothing about progress.
            Verdict::Created => watch(from, asked),
            // The answer to our progress request: proof of life only (see `classify`).
            Verdict::ProofOfLife => watch(from, None),
            Verdict::Progress { next } => {
                // With several ranges, the view reflects the furthest any range has got (each
                // range's own events are applied in order; see `events` on interleaving).
                self.view
                    .update(|view, _| view.revision = view.revision.max(next - 1));
                metrics::gauge!(m::REVISION_LAG).set(0.0);
                from[lane] = next;
                watch(from, None)
            }
            Verdict::Apply { last } => {
                let changes = std::mem::take(&mut answer.changes);
                let lag = answer.header_revision - last;
                self.view.update(|view, events| {
                    let counts_before = (view.members.skipped(), view.members.shadowed());
                    events.extend(view.members.apply(&changes).into_iter().map(Event::from));
                    view.revision = view.revision.max(last);
                    record_view_metrics(view, counts_before, lag);
                });
                self.view.announce_changes(changes);
                from[lane] = last + 1;
                watch(from, None)
            }
        }
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
