//! One subscription: its bounded queue (the publisher's side, [`Slot`]) and the consumer's
//! side ([`EventStream`]), which hands events out, remembers what it handed out and computes
//! the catch-up of a lagging subscription (see the overflow rule in the [module docs](super)).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;

use super::catch_up::{catch_up, Received, ViewState};
use super::{Event, LIFECYCLE_SLACK};

/// The view as a lagging subscription reads it for its catch-up. The view's reader implements
/// it: the view hands events to the subscriptions, so this module names none of its types and
/// the dependency runs one way (view → events). Called only for a catch-up, never per event.
pub(crate) trait ViewSource: Send + Sync + std::fmt::Debug {
    /// Calls `f` with the view's current state while holding the view's read lock: nothing is
    /// published until `f` returns.
    fn read_state(&self, f: &mut dyn FnMut(ViewState<'_>));
}

/// A queue this long (a snapshot, a mass join) makes the consumer's record of what it holds
/// grow once for all of it.
const RESERVE_AHEAD: usize = 64;

/// The queue between the publisher and one subscription. The publisher only ever locks it
/// briefly to push (never waits for room); the consumer pops.
#[derive(Debug)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Debug)]
struct SlotState {
    queue: VecDeque<Event>,
    capacity: usize,
    /// Events were dropped for want of room: a catch-up is due once the queue is empty.
    lagging: bool,
    /// The publisher is gone (the connector was dropped): what is queued is the last.
    closed: bool,
    /// The consumer waiting for an event, if any.
    waker: Option<Waker>,
}

impl Slot {
    /// A slot of `capacity` events; `lagging` when it starts with a catch-up due, `closed` when
    /// there is no publisher any more.
    pub(crate) fn new(capacity: usize, initial: Vec<Event>, closed: bool) -> Arc<Slot> {
        Arc::new(Slot {
            state: Mutex::new(SlotState {
                queue: initial.into(),
                capacity: capacity.max(1),
                lagging: false,
                closed,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A poisoned slot (a panic while pushing) still holds whole events.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues one batch of `events` in order, by the overflow rule: never waits, drops what
    /// does not fit and marks the slot lagging. A batch that finds the queue empty is queued
    /// whole, however long: the consumer has kept up, and its catch-up would be as long.
    pub(crate) fn offer(&self, events: impl IntoIterator<Item = Event>) {
        let waker = {
            let mut s = self.lock();
            let before = s.queue.len();
            let whole = before == 0;
            for event in events {
                if event.is_lifecycle() {
                    if s.queue.len() < s.capacity + LIFECYCLE_SLACK {
                        s.queue.push_back(event);
                    } else {
                        tracing::warn!(
                            ?event,
                            "a subscriber's queue is full of lifecycle events; dropping this one"
                        );
                    }
                } else if s.lagging {
                    // Replaced by the catch-up.
                } else if whole || s.queue.len() < s.capacity {
                    s.queue.push_back(event);
                } else {
                    tracing::debug!(
                        capacity = s.capacity,
                        "a subscriber fell behind; it will get a catch-up"
                    );
                    metrics::counter!(crate::metrics::SUBSCRIBER_LAGS).increment(1);
                    s.lagging = true;
                }
            }
            if s.queue.len() == before {
                None
            } else {
                s.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// No more events will come.
    pub(crate) fn close(&self) {
        let waker = {
            let mut s = self.lock();
            s.closed = true;
            s.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One subscription to a connector's events ([`crate::Connector::subscribe`]), as a [`Stream`];
/// ends once the connector is dropped and what was queued has been received.
///
/// Events come by the contract of the [`events`](super) module: revision order, lifecycle
/// events placed by its rule, and a catch-up instead of the events a full queue could not
/// take. Dropping the stream unsubscribes.
#[derive(Debug)]
pub struct EventStream {
    slot: Arc<Slot>,
    /// Where a catch-up reads the view.
    view: Box<dyn ViewSource>,
    /// A catch-up being handed out (it goes before anything queued after it).
    pending: VecDeque<Event>,
    received: Received,
}

impl EventStream {
    pub(crate) fn new(slot: Arc<Slot>, view: Box<dyn ViewSource>) -> Self {
        EventStream {
            slot,
            view,
            pending: VecDeque::new(),
            received: Received::default(),
        }
    }

    /// The next event, or `None` once the connector is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn hand_out(&mut self, event: Event) -> Poll<Option<Event>> {
        self.received.note(&event);
        Poll::Ready(Some(event))
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // A catch-up can be as long as the view: do not keep its buffer.
                    self.pending = VecDeque::new();
                }
                return self.hand_out(event);
            }
            let mut s = self.slot.lock();
            if let Some(event) = s.queue.pop_front() {
                if s.queue.is_empty() && s.queue.capacity() > s.capacity {
                    // A whole batch made it grow past its bound (a first snapshot): do not keep
                    // that buffer.
                    s.queue = VecDeque::new();
                } else if s.queue.len() >= RESERVE_AHEAD {
                    // Mostly joins: room for them in one step (a no-op once there is).
                    self.received.reserve(s.queue.len());
                }
                drop(s);
                return self.hand_out(event);
            }
            if s.lagging && !s.closed {
                drop(s);
                self.catch_up();
                continue;
            }
            if s.closed {
                return Poll::Ready(None);
            }
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }

    /// Computes a lagging subscription's catch-up into `pending` and clears the lag, unless a
    /// lifecycle event came in meanwhile: that one is handed out first, then this is tried
    /// again.
    fn catch_up(&mut self) {
        let EventStream {
            slot,
            view,
            pending,
            received,
        } = self;
        // Lock order as the publisher's: the view, then the slot. Holding the view's read
        // lock, nothing is published: the catch-up reflects the view at its revision, and
        // whatever is published next comes after it.
        view.read_state(&mut |state| {
            let mut s = slot.lock();
            if !s.queue.is_empty() {
                // A lifecycle event came in meanwhile: it goes first.
                return;
            }
            *pending = catch_up(received, state).into();
            s.lagging = false;
            tracing::debug!(events = pending.len(), "subscriber caught up");
        });
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.poll_event(cx)
    }
}
