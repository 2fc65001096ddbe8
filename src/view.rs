//! The registry view and the one place events are sequenced.
//!
//! The watcher alone writes the [`View`] (members, revision, freshness), through its
//! [`ViewWriter`]; everyone else reads it through a [`ViewReader`]. Writing a change and
//! sequencing the events it makes are one step under the view's write lock, so every
//! subscriber sees the same order, a new subscriber's starting view and what it receives next
//! fit together exactly, and a lifecycle event published by the registration (also under the
//! write lock) falls between two applied batches: the ordering rule of [`crate::events`].
//!
//! The watcher also announces each batch or snapshot it applied ([`Applied`]) to whoever
//! listens (the registration, for its own key): it does not know who they are. A listener
//! names the key it listens for ([`AppliedListener`]), and a batch touching none of the named
//! keys is not announced: otherwise every watch response would wake every registration's
//! task, which then finds the batch is not about its key (nearly always).
//!
//! ```text
//!   watcher ──update──► View ──events──► Slot ─► EventStream (subscriber 1)
//!                        │      └──────► Slot ─► EventStream (subscriber 2) …
//!                        └─ Applied ─► registration (own-key check)
//!   registration ──publish_lifecycle──► (sequenced like the watcher's events)
//! ```

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::events::{Event, EventStream, Slot, ViewSource, ViewState};
use crate::keys::KeyLayout;
use crate::membership::{KvChange, Membership};

/// What the watcher has applied: the live members, the revision they reflect, and whether
/// they may be out of date.
#[derive(Debug)]
pub(crate) struct View {
    /// Live members as last seen.
    pub(crate) members: Membership,
    /// Revision the view reflects.
    pub(crate) revision: i64,
    /// True between [`Event::Stale`] and [`Event::Fresh`].
    pub(crate) stale: bool,
    /// True once the initial snapshot is applied ([`Event::Synced`]).
    pub(crate) synced: bool,
    /// The allocator cursor as the last snapshot read it (the allocation hint is computed
    /// from it by [`crate::alloc::CursorHint`]).
    pub(crate) cursor_read: u64,
}

impl View {
    /// An empty view, before the initial snapshot.
    pub(crate) fn new(layout: KeyLayout) -> Self {
        View {
            members: Membership::new(layout),
            revision: 0,
            stale: false,
            synced: false,
            cursor_read: 0,
        }
    }

    /// What a subscription's catch-up reads of the view.
    pub(crate) fn state(&self) -> ViewState<'_> {
        ViewState {
            members: &self.members,
            revision: self.revision,
            synced: self.synced,
            stale: self.stale,
        }
    }
}

/// What one step of the watcher applied, as announced to listeners.
#[derive(Debug, Clone)]
pub(crate) enum Applied {
    /// A watch response's changes, in order.
    Changes(Arc<Vec<KvChange>>),
    /// A snapshot taken at `revision` replaced the view.
    Snapshot {
        /// Its revision.
        revision: i64,
    },
}

/// The view and its subscribers, under one lock.
#[derive(Debug)]
struct Shared {
    view: View,
    subscribers: Vec<Weak<Slot>>,
    /// The writer is gone: new subscriptions start closed.
    closed: bool,
}

impl Shared {
    /// Sequences `events`: hands them to every live subscriber, in order.
    fn publish(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let mut slots: Vec<Arc<Slot>> = Vec::with_capacity(self.subscribers.len());
        self.subscribers.retain(|weak| match weak.upgrade() {
            Some(slot) => {
                slots.push(slot);
                true
            }
            None => false,
        });
        let Some((last, others)) = slots.split_last() else {
            return;
        };
        for slot in others {
            slot.offer(events.iter().cloned());
        }
        // The last one takes the events themselves: one subscriber costs no copy.
        last.offer(events);
    }
}

/// Read access to the view, subscriptions, and the lifecycle events' entry into the sequence.
#[derive(Debug, Clone)]
pub(crate) struct ViewReader {
    shared: Arc<RwLock<Shared>>,
    applied: broadcast::Sender<Applied>,
    /// The keys the listeners of `applied` listen for, one entry per listener.
    listened: ListenedKeys,
    capacity: usize,
}

/// The keys whose changes are announced, one entry per [`AppliedListener`] (a connector has
/// one per registration, so a list is the cheapest set).
type ListenedKeys = Arc<Mutex<Vec<Vec<u8>>>>;

fn lock_keys(keys: &ListenedKeys) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
    // A poisoned list is still a list of keys.
    keys.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Hears every snapshot the watcher applies and every batch of changes touching its key
/// (and maybe batches touching other listeners' keys). Its key stops being listened for when
/// it is dropped.
#[derive(Debug)]
pub(crate) struct AppliedListener {
    rx: broadcast::Receiver<Applied>,
    listened: ListenedKeys,
    key: Vec<u8>,
}

impl AppliedListener {
    /// The next announcement (see [`broadcast::Receiver::recv`]: `Lagged` when some were
    /// missed, `Closed` when the watcher is gone).
    pub(crate) async fn recv(&mut self) -> Result<Applied, RecvError> {
        self.rx.recv().await
    }

    /// Listens for changes of `key` from now on instead. Returns false when it is the key
    /// listened for already; true means changes of `key` applied before this call were not
    /// announced to this listener.
    pub(crate) fn listen_for(&mut self, key: &[u8]) -> bool {
        if self.key == key {
            return false;
        }
        let mut keys = lock_keys(&self.listened);
        if let Some(slot) = keys.iter_mut().find(|k| **k == self.key) {
            key.clone_into(slot);
        } else {
            keys.push(key.to_vec());
        }
        key.clone_into(&mut self.key);
        true
    }
}

impl Drop for AppliedListener {
    fn drop(&mut self) {
        let mut keys = lock_keys(&self.listened);
        if let Some(at) = keys.iter().position(|k| *k == self.key) {
            keys.swap_remove(at);
        }
    }
}

/// How many announcements a listener may fall behind before it is told it lagged (it then
/// checks as if anything had changed).
const APPLIED_BACKLOG: usize = 256;

impl ViewReader {
    /// Reads the view.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.lock_read().view)
    }

    fn lock_read(&self) -> RwLockReadGuard<'_, Shared> {
        // A poisoned lock (a panic elsewhere) still holds a consistent view: every mutation is
        // a single call into `Membership`.
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_write(&self) -> RwLockWriteGuard<'_, Shared> {
        self.shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new subscription. Before the initial snapshot it starts empty (the snapshot's joins
    /// and [`Event::Synced`] will come); after it, with the current view as joins, then
    /// [`Event::Synced`] (and [`Event::Stale`] if stale), at the view's revision.
    pub(crate) fn subscribe(&self) -> EventStream {
        let mut shared = self.lock_write();
        let initial = crate::events::catch_up_from_nothing(shared.view.state());
        let slot = Slot::new(self.capacity, initial, shared.closed);
        shared.subscribers.push(Arc::downgrade(&slot));
        drop(shared);
        EventStream::new(slot, Box::new(self.clone()))
    }

    /// Listens to what the watcher applies from now on: every snapshot, and every batch of
    /// changes that touches `key`.
    pub(crate) fn applied_to(&self, key: &[u8]) -> AppliedListener {
        // Subscribed before the key is listed: a batch announced in between is heard.
        let rx = self.applied.subscribe();
        lock_keys(&self.listened).push(key.to_vec());
        AppliedListener {
            rx,
            listened: self.listened.clone(),
            key: key.to_vec(),
        }
    }

    /// Sequences a lifecycle event made by `event` from the view's current revision: after
    /// every event of the changes applied so far, before those of the next.
    pub(crate) fn publish_lifecycle(&self, event: impl FnOnce(i64) -> Event) {
        let mut shared = self.lock_write();
        let event = event(shared.view.revision);
        shared.publish(vec![event]);
    }
}

/// A lagging subscription's catch-up reads the view under its read lock: nothing is published
/// meanwhile (publishing takes the write lock).
impl ViewSource for ViewReader {
    fn read_state(&self, f: &mut dyn FnMut(ViewState<'_>)) {
        f(self.lock_read().view.state());
    }
}

/// The watcher's handle: the only one that writes the view.
#[derive(Debug)]
pub(crate) struct ViewWriter {
    reader: ViewReader,
}

impl ViewWriter {
    /// An empty view whose subscriptions queue `capacity` events each; the writer and a
    /// reader.
    pub(crate) fn new(layout: KeyLayout, capacity: usize) -> (ViewWriter, ViewReader) {
        let (applied, _) = broadcast::channel(APPLIED_BACKLOG);
        let reader = ViewReader {
            shared: Arc::new(RwLock::new(Shared {
                view: View::new(layout),
                subscribers: Vec::new(),
                closed: false,
            })),
            applied,
            listened: ListenedKeys::default(),
            capacity,
        };
        (
            ViewWriter {
                reader: reader.clone(),
            },
            reader,
        )
    }

    /// Changes the view and sequences the events `f` pushes, in one step under the write
    /// lock.
    pub(crate) fn update<R>(&mut self, f: impl FnOnce(&mut View, &mut Vec<Event>) -> R) -> R {
        let mut shared = self.reader.lock_write();
        let mut events = Vec::new();
        let result = f(&mut shared.view, &mut events);
        shared.publish(events);
        result
    }

    /// Reads the view.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        self.reader.read(f)
    }

    /// Tells the listeners that a snapshot taken at `revision` replaced the view.
    pub(crate) fn announce_snapshot(&self, revision: i64) {
        if self.reader.applied.receiver_count() > 0 {
            // An error means every listener left meanwhile: nobody to tell.
            let _ = self.reader.applied.send(Applied::Snapshot { revision });
        }
    }

    /// Tells the listeners about a batch of changes just applied, if it touches a key one of
    /// them listens for (nothing is built otherwise).
    pub(crate) fn announce_changes(&self, changes: Vec<KvChange>) {
        if self.reader.applied.receiver_count() == 0 {
            return;
        }
        let touches_a_listened_key = {
            let keys = lock_keys(&self.reader.listened);
            changes
                .iter()
                .any(|change| keys.iter().any(|key| key.as_slice() == change.key()))
        };
        if touches_a_listened_key {
            let _ = self
                .reader
                .applied
                .send(Applied::Changes(Arc::new(changes)));
        }
    }
}

impl Drop for ViewWriter {
    /// The watcher is gone: every subscription ends once it has received what was queued.
    fn drop(&mut self) {
        let mut shared = self.reader.lock_write();
        shared.closed = true;
        for slot in shared
            .subscribers
            .drain(..)
            .filter_map(|weak| weak.upgrade())
        {
            slot.close();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The ordering rule, without etcd: a lifecycle event falls exactly between the batches
    //! applied before and after it, for every subscriber, whatever their pace.

    use futures::FutureExt;

    use super::*;
    use crate::membership::fixtures::{delete, layout};

    fn put(id: u16, revision: i64) -> KvChange {
        crate::membership::fixtures::put(id, 4000 + id, revision)
    }

    /// Applies `changes` as the watcher does: one batch, its events sequenced with it.
    fn apply(writer: &mut ViewWriter, changes: &[KvChange]) {
        writer.update(|view, events| {
            events.extend(view.members.apply(changes).into_iter().map(Event::from));
            if let Some(last) = changes.last() {
                view.revision = match last {
                    KvChange::Put(kv) => kv.mod_revision,
                    KvChange::Delete { revision, .. } => *revision,
                };
            }
        });
    }

    fn sync(writer: &mut ViewWriter, revision: i64) {
        writer.update(|view, events| {
            view.revision = revision;
            view.synced = true;
            events.push(Event::Synced { revision });
        });
    }

    fn lease_lost(reader: &ViewReader) {
        reader.publish_lifecycle(|revision| Event::LeaseLost {
            id: 1,
            reason: "test".into(),
            revision,
        });
    }

    /// Everything ready now.
    fn drain(stream: &mut EventStream) -> Vec<String> {
        let mut got = Vec::new();
        while let Some(Some(event)) = stream.recv().now_or_never() {
            got.push(match event {
                Event::Join { server, revision } => format!("join {} @{revision}", server.id),
                Event::Leave { id, revision, .. } => format!("leave {id} @{revision}"),
                Event::Synced { revision } => format!("synced @{revision}"),
                Event::LeaseLost { revision, .. } => format!("lease lost @{revision}"),
                other => format!("{other:?}"),
            });
        }
        got
    }

    #[test]
    fn a_lifecycle_event_falls_between_the_batches_before_and_after_it() {
        let (mut writer, reader) = ViewWriter::new(layout(), 16);
        let mut early = reader.subscribe();
        sync(&mut writer, 1);
        apply(&mut writer, &[put(1, 2), put(2, 3)]);
        lease_lost(&reader);
        apply(&mut writer, &[delete(1, 4)]);
        let late = reader.subscribe();
        lease_lost(&reader);
        let want = [
            "synced @1",
            "join 1 @2",
            "join 2 @3",
            "lease lost @3",
            "leave 1 @4",
            "lease lost @4",
        ];
        assert_eq!(drain(&mut early), want);
        // A subscriber that came later starts at the view, then the same order.
        let mut late = late;
        assert_eq!(
            drain(&mut late),
            ["join 2 @4", "synced @4", "lease lost @4"]
        );
    }

    #[test]
    fn a_full_queue_lags_keeps_lifecycle_events_and_catches_up_in_order() {
        let (mut writer, reader) = ViewWriter::new(layout(), 3);
        let mut slow = reader.subscribe();
        let mut fast = reader.subscribe();
        sync(&mut writer, 1);
        apply(&mut writer, &[put(1, 2)]);
        // The fast one keeps up; the slow one reads nothing until later.
        assert_eq!(drain(&mut fast), ["synced @1", "join 1 @2"]);
        apply(&mut writer, &[put(2, 3), put(3, 4)]);
        lease_lost(&reader);
        assert_eq!(
            drain(&mut fast),
            ["join 2 @3", "join 3 @4", "lease lost @4"]
        );
        apply(&mut writer, &[delete(2, 5), put(4, 6), delete(1, 7)]);
        assert_eq!(drain(&mut fast), ["leave 2 @5", "join 4 @6", "leave 1 @7"]);
        // The slow one: the three events its queue took, the lifecycle event in place, then the
        // catch-up (1 and 2 gone, 3 and 4 new) at the view's revision; never a second join for
        // an id, and revisions never go back.
        assert_eq!(
            drain(&mut slow),
            [
                "synced @1",
                "join 1 @2",
                "join 2 @3",
                "lease lost @4",
                "leave 1 @7",
                "leave 2 @7",
                "join 3 @7",
                "join 4 @7"
            ]
        );
        // Then in order again.
        apply(&mut writer, &[put(5, 8)]);
        assert_eq!(drain(&mut slow), ["join 5 @8"]);
        assert_eq!(drain(&mut fast), ["join 5 @8"]);
    }

    #[test]
    fn a_batch_longer_than_the_queue_is_taken_whole_by_a_consumer_that_kept_up() {
        let (mut writer, reader) = ViewWriter::new(layout(), 2);
        let mut stream = reader.subscribe();
        sync(&mut writer, 1);
        assert_eq!(drain(&mut stream), ["synced @1"]);
        apply(&mut writer, &[put(1, 2), put(2, 3), put(3, 4)]);
        // A second batch finds the queue full (over its capacity): the subscription lags.
        apply(&mut writer, &[put(4, 5)]);
        assert_eq!(
            drain(&mut stream),
            ["join 1 @2", "join 2 @3", "join 3 @4", "join 4 @5"],
            "the whole batch, then the catch-up"
        );
    }

    #[test]
    fn every_subscription_ends_when_the_writer_goes() {
        let (mut writer, reader) = ViewWriter::new(layout(), 4);
        let mut stream = reader.subscribe();
        sync(&mut writer, 1);
        drop(writer);
        assert_eq!(
            stream.recv().now_or_never(),
            Some(Some(Event::Synced { revision: 1 }))
        );
        assert_eq!(stream.recv().now_or_never(), Some(None));
        assert_eq!(
            reader
                .subscribe()
                .recv()
                .now_or_never()
                .map(|e| e.is_some()),
            Some(true),
            "a late one still gets the view"
        );
    }

    /// What the listener hears right now, as short strings.
    fn heard(listener: &mut AppliedListener) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(applied) = listener.recv().now_or_never() {
            out.push(match applied {
                Ok(Applied::Snapshot { revision }) => format!("snapshot @{revision}"),
                Ok(Applied::Changes(changes)) => {
                    format!("changes @{}", changes.last().map_or(0, KvChange::revision))
                }
                Err(e) => format!("{e}"),
            });
        }
        out
    }

    #[test]
    fn a_listener_hears_snapshots_and_the_changes_of_its_key_only() {
        let (writer, reader) = ViewWriter::new(layout(), 4);
        let key = |id| layout().server_key("game", id).into_bytes();
        let mut listener = reader.applied_to(&key(1));
        writer.announce_snapshot(2);
        writer.announce_changes(vec![put(2, 3)]);
        writer.announce_changes(vec![put(3, 4), delete(1, 4)]);
        assert_eq!(heard(&mut listener), ["snapshot @2", "changes @4"]);
        // Another key from now on: changes of the old one are no longer heard.
        assert!(listener.listen_for(&key(2)));
        assert!(!listener.listen_for(&key(2)), "already that key");
        writer.announce_changes(vec![put(1, 5)]);
        writer.announce_changes(vec![delete(2, 6)]);
        assert_eq!(heard(&mut listener), ["changes @6"]);
        // A second listener's key is announced to both (each checks what is about its own).
        let mut other = reader.applied_to(&key(7));
        writer.announce_changes(vec![put(7, 7)]);
        assert_eq!(heard(&mut listener), ["changes @7"]);
        assert_eq!(heard(&mut other), ["changes @7"]);
        // A dropped listener's key is forgotten.
        drop(other);
        writer.announce_changes(vec![delete(7, 8)]);
        assert!(heard(&mut listener).is_empty());
        assert_eq!(*lock_keys(&reader.listened), vec![key(2)]);
    }
}
