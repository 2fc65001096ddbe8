//! List + watch of the server prefix as an explicit state machine, feeding [`Membership`].
//!
//! ```text
//!            ┌──────────── compaction / cancelled watch / resync request ───────────┐
//!            ▼                                                                      │
//!   List { pinned revision R, pages }  ──all pages──►  Open { from: R + 1 }  ──►  Watch { from }
//!            ▲                                              ▲                       │
//!            └─ error: Backoff ─┘                           └──── Backoff ◄── stream error / end
//! ```
//!
//! - **List**: a linearizable paginated read of `<prefix>/`; the first page fixes revision
//!   `R` and every later page is read at `R`, so the snapshot is one consistent cut however
//!   many pages it has. The first page is a read-only transaction that also reads the
//!   allocator cursor at `R`. The initial list ends with [`Event::Synced`]; a later list
//!   (recovery) is diffed against the view and emits only the missing joins and leaves.
//! - **Open/Watch**: a watch from `from` with `prev_kv` and progress notifications. Each
//!   response is applied as one batch. The resume point advances to the last event's
//!   revision + 1, and on a progress notification to `header.revision + 1` (a progress
//!   notification promises every event up to it was sent; an event response's header may run
//!   ahead of events still queued for a catching-up watcher, so it is not used).
//! - **Backoff**: any failure waits a jittered exponential delay (backon) and retries the state
//!   it failed in, resuming where it was: no event is lost or repeated. A compacted resume
//!   point cannot be resumed (etcd only keeps history after the compaction), so it relists.
//!
//! While failing, the view keeps its last state: an error never empties it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use etcd_client::{
    Client, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::alloc::decode_cursor;
use crate::client::bounded;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::keys::KeyLayout;
use crate::membership::{KeyValue, KvChange, Membership};

/// The view shared between the watcher task and the connector.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Live members as last seen.
    pub(crate) view: Membership,
    /// The allocator cursor as last read (a hint; etcd holds the truth).
    pub(crate) cursor: u64,
    /// Revision the view reflects.
    pub(crate) revision: i64,
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
}

/// The states; see the module docs.
enum State {
    List {
        initial: bool,
        pinned: i64,
        after: Option<Vec<u8>>,
        acc: Vec<KeyValue>,
        cursor: u64,
    },
    Open {
        from: i64,
    },
    Watch {
        from: i64,
        stream: WatchStream,
    },
    Backoff {
        then: Box<State>,
    },
}

impl State {
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
    client: Client,
    settings: WatcherSettings,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
) -> WatcherTask {
    let shared = Arc::new(Mutex::new(Shared {
        view: Membership::new(settings.layout.clone()),
        cursor: 0,
        revision: 0,
    }));
    let (synced_tx, synced) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let watcher = Watcher {
        client,
        settings,
        shared: shared.clone(),
        events,
        commands: cmd_rx,
        synced: synced_tx,
        resync_waiters: Vec::new(),
        backoff: None,
    };
    tokio::spawn(watcher.run(cancel));
    WatcherTask {
        shared,
        synced,
        commands: cmd_tx,
    }
}

struct Watcher {
    client: Client,
    settings: WatcherSettings,
    shared: SharedView,
    events: mpsc::Sender<Event>,
    commands: mpsc::Receiver<Command>,
    synced: watch::Sender<bool>,
    resync_waiters: Vec<oneshot::Sender<()>>,
    backoff: Option<backon::ExponentialBackoff>,
}

fn backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

fn list_from_scratch(initial: bool) -> State {
    State::List {
        initial,
        pinned: 0,
        after: None,
        acc: Vec::new(),
        cursor: 0,
    }
}

impl Watcher {
    async fn run(mut self, cancel: CancellationToken) {
        let mut state = list_from_scratch(true);
        loop {
            let step = tokio::select! {
                () = cancel.cancelled() => return,
                step = self.step(state) => step,
            };
            let (events, next) = step;
            for event in events {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = self.events.send(event) => {
                        // No receiver: nobody consumes events, keep the view current anyway.
                        let _ = sent;
                    }
                }
            }
            state = next;
        }
    }

    /// One transition. Returns the events to deliver (in order) and the next state.
    async fn step(&mut self, state: State) -> (Vec<Event>, State) {
        match state {
            State::List {
                initial,
                pinned,
                after,
                mut acc,
                mut cursor,
            } => {
                match self
                    .list_page(pinned, after.as_deref(), &mut acc, &mut cursor)
                    .await
                {
                    Ok((revision, Some(next))) => {
                        let next = State::List {
                            initial,
                            pinned: revision,
                            after: Some(next),
                            acc,
                            cursor,
                        };
                        (Vec::new(), next)
                    }
                    Ok((revision, None)) => {
                        self.backoff = None;
                        let events = self.finish_list(initial, revision, &acc, cursor);
                        (events, State::Open { from: revision + 1 })
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot read failed; retrying");
                        // Restart the list from scratch: a pinned revision may be compacted.
                        (
                            Vec::new(),
                            State::Backoff {
                                then: Box::new(list_from_scratch(initial)),
                            },
                        )
                    }
                }
            }
            State::Open { from } => match self.open(from).await {
                Ok(stream) => (Vec::new(), State::Watch { from, stream }),
                Err(e) => {
                    tracing::warn!(error = %e, from, "opening the watch failed; retrying");
                    (
                        Vec::new(),
                        State::Backoff {
                            then: Box::new(State::Open { from }),
                        },
                    )
                }
            },
            State::Watch { from, stream } => self.watch_step(from, stream).await,
            State::Backoff { then } => {
                let delay = self
                    .backoff
                    .get_or_insert_with(backoff)
                    .next()
                    .unwrap_or(Duration::from_secs(5));
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    next = then.name(),
                    "watcher backing off"
                );
                tokio::time::sleep(delay).await;
                (Vec::new(), *then)
            }
        }
    }

    /// Reads one page. Returns the pinned revision and the key to continue after, if more.
    async fn list_page(
        &mut self,
        pinned: i64,
        after: Option<&[u8]>,
        acc: &mut Vec<KeyValue>,
        cursor: &mut u64,
    ) -> Result<(i64, Option<Vec<u8>>)> {
        let layout = &self.settings.layout;
        let start = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => layout.servers_prefix().into_bytes(),
        };
        let mut options = GetOptions::new()
            .with_range(prefix_end(layout.servers_prefix().as_bytes()))
            .with_limit(self.settings.page_size);
        if pinned > 0 {
            options = options.with_revision(pinned);
        }
        let timeout = self.settings.request_timeout;
        let (revision, kvs, more) = if pinned == 0 {
            // First page and the cursor, at one revision.
            let txn = Txn::new().and_then([
                TxnOp::get(start, Some(options)),
                TxnOp::get(layout.cursor_key(), None),
            ]);
            let resp = bounded("snapshot", timeout, self.client.txn(txn)).await?;
            let revision = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            let mut page = None;
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    if page.is_none() {
                        page = Some((get.kvs().to_vec(), get.more()));
                    } else if let Some(kv) = get.kvs().first() {
                        *cursor = decode_cursor(kv.value()).unwrap_or(0);
                    }
                }
            }
            let (kvs, more) = page.unwrap_or_default();
            (revision, kvs, more)
        } else {
            let resp = bounded(
                "snapshot page",
                timeout,
                self.client.get(start, Some(options)),
            )
            .await?;
            (pinned, resp.kvs().to_vec(), resp.more())
        };
        let last = kvs.last().map(|kv| kv.key().to_vec());
        acc.extend(kvs.iter().map(convert_kv));
        Ok((revision, if more { last } else { None }))
    }

    fn finish_list(
        &mut self,
        initial: bool,
        revision: i64,
        acc: &[KeyValue],
        cursor: u64,
    ) -> Vec<Event> {
        let mut events = {
            let mut shared = lock(&self.shared);
            let events = shared.view.reload(acc, revision);
            shared.cursor = shared
                .cursor
                .max(cursor)
                .max(shared.view.max_alloc_position());
            shared.revision = revision;
            events
        };
        tracing::debug!(
            revision,
            members = acc.len(),
            changes = events.len(),
            initial,
            "snapshot applied"
        );
        if initial {
            events.push(Event::Synced { revision });
            self.synced.send_replace(true);
        }
        for waiter in self.resync_waiters.drain(..) {
            let _ = waiter.send(());
        }
        events
    }

    async fn open(&mut self, from: i64) -> Result<WatchStream> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_prev_key()
            .with_progress_notify();
        let prefix = self.settings.layout.servers_prefix();
        bounded(
            "watch",
            self.settings.request_timeout,
            self.client.watch(prefix, Some(options)),
        )
        .await
    }

    async fn watch_step(&mut self, from: i64, mut stream: WatchStream) -> (Vec<Event>, State) {
        let msg = tokio::select! {
            cmd = self.commands.recv() => {
                return match cmd {
                    Some(Command::Resync(done)) => {
                        self.resync_waiters.push(done);
                        (Vec::new(), list_from_scratch(false))
                    }
                    None => (Vec::new(), State::Watch { from, stream }),
                };
            }
            msg = stream.message() => msg,
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                tracing::info!(from, "watch stream ended; resuming");
                return (
                    Vec::new(),
                    State::Backoff {
                        then: Box::new(State::Open { from }),
                    },
                );
            }
            Err(e) => {
                tracing::info!(error = %e, from, "watch stream failed; resuming");
                return (
                    Vec::new(),
                    State::Backoff {
                        then: Box::new(State::Open { from }),
                    },
                );
            }
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                tracing::warn!(
                    from,
                    compact_revision = resp.compact_revision(),
                    "watch compacted; relisting"
                );
            } else {
                tracing::warn!(
                    from,
                    reason = resp.cancel_reason(),
                    "watch cancelled by etcd; relisting"
                );
            }
            return (Vec::new(), list_from_scratch(false));
        }
        self.backoff = None;
        let header_revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        if resp.events().is_empty() {
            // A progress notification promises everything up to its revision was sent; the
            // `created` response promises nothing.
            let next = if resp.created() {
                from
            } else {
                from.max(header_revision + 1)
            };
            if !resp.created() {
                lock(&self.shared).revision = next - 1;
            }
            return (Vec::new(), State::Watch { from: next, stream });
        }
        let mut changes = Vec::with_capacity(resp.events().len());
        let mut last = from - 1;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            last = last.max(kv.mod_revision());
            changes.push(match ev.event_type() {
                EventType::Put => KvChange::Put(convert_kv(kv)),
                EventType::Delete => KvChange::Delete {
                    key: kv.key().to_vec(),
                    revision: kv.mod_revision(),
                },
            });
        }
        let events = {
            let mut shared = lock(&self.shared);
            let events = shared.view.apply(&changes);
            shared.cursor = shared.cursor.max(shared.view.max_alloc_position());
            shared.revision = last;
            events
        };
        (
            events,
            State::Watch {
                from: last + 1,
                stream,
            },
        )
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Reads the whole server range once (paginated, pinned), for one-shot listings.
pub(crate) async fn list_once(
    client: &Client,
    settings: &WatcherSettings,
) -> Result<(i64, Membership)> {
    let mut view = Membership::new(settings.layout.clone());
    let mut acc = Vec::new();
    let prefix = settings.layout.servers_prefix();
    let end = prefix_end(prefix.as_bytes());
    let mut start = prefix.into_bytes();
    let mut pinned = 0;
    let mut kv = client.kv_client();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(settings.page_size);
        if pinned > 0 {
            options = options.with_revision(pinned);
        }
        let resp = bounded(
            "list",
            settings.request_timeout,
            kv.get(start.clone(), Some(options)),
        )
        .await?;
        if pinned == 0 {
            pinned = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
        }
        acc.extend(resp.kvs().iter().map(convert_kv));
        match (resp.more(), resp.kvs().last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    view.reload(&acc, pinned);
    if pinned == 0 {
        return Err(Error::InvalidConfig("etcd returned no revision".into()));
    }
    Ok((pinned, view))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/darkrift/"), b"/darkrift0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
