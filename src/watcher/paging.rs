//! The List state: the snapshot, read page by page at one revision and decoded while the next
//! page is read, then installed in one step (see the module docs of [`super`]). A failed list
//! leaves the view untouched: nothing is installed before the last page.

use tokio::task::JoinError;

use super::source::KvSource;
use super::{Page, State, Watcher};
use crate::alloc;
use crate::events::Event;
use crate::membership::{KeyValue, Snapshot};
use crate::metrics as m;

/// Where a list stands between two pages.
pub(super) struct Listing {
    /// The watcher's first list: it ends with [`Event::Synced`]. A later one (recovery, a
    /// resync request) emits the difference, then [`Event::Fresh`] after an outage.
    pub(super) initial: bool,
    /// The range being read: ranges are read one after the other, in key order, so the pages
    /// of all of them are in key order as a whole.
    pub(super) lane: usize,
    /// The revision every page is read at, fixed by the first page (0 until then): one
    /// consistent cut however many pages and ranges there are.
    pub(super) pinned: i64,
    /// The last key of range `lane` read so far; `None` before its first page.
    pub(super) after: Option<Vec<u8>>,
    /// The snapshot being built; `None` before the first page. Begun from the view, whose
    /// counters it carries forward; the view itself is replaced only after the last page.
    pub(super) snapshot: Option<Box<Snapshot>>,
    /// The last page read, not yet decoded: it is decoded on a blocking thread while the next
    /// page is read (a snapshot of many servers is mostly decoding).
    pub(super) pending: Vec<KeyValue>,
    /// The allocator cursor as the first page read it (0 until then).
    pub(super) cursor: u64,
}

/// A list from its first page: the initial one, or a relist.
pub(super) fn list_from_scratch<F>(initial: bool) -> State<F> {
    State::List(Listing {
        initial,
        lane: 0,
        pinned: 0,
        after: None,
        snapshot: None,
        pending: Vec::new(),
        cursor: 0,
    })
}

/// Where a list goes after a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterPage {
    /// The range has more: its next page, at the same revision.
    NextPage,
    /// The range is done and another follows: its first page, at the same revision.
    NextRange,
    /// The last page of the last range: install the snapshot.
    Done,
}

/// Where a list goes after a page of range `lane` (of `ranges`) that says whether its range
/// has more (`more`).
pub(super) fn after_page(more: bool, lane: usize, ranges: usize) -> AfterPage {
    if more {
        AfterPage::NextPage
    } else if lane + 1 < ranges {
        AfterPage::NextRange
    } else {
        AfterPage::Done
    }
}

/// Decodes `pending` into `snapshot` on a blocking thread (nothing to do for no page).
async fn decode(
    snapshot: Box<Snapshot>,
    pending: Vec<KeyValue>,
) -> Result<Box<Snapshot>, JoinError> {
    if pending.is_empty() {
        return Ok(snapshot);
    }
    tokio::task::spawn_blocking(move || {
        let mut snapshot = snapshot;
        snapshot.add(&pending);
        snapshot
    })
    .await
}

impl<S: KvSource> Watcher<S> {
    /// One step of a list: reads the next page while the previous one is decoded, then goes
    /// on to the next page, the next range, or the install and the watch.
    pub(super) async fn list_step(&mut self, listing: Listing) -> State<S::Feed> {
        let Listing {
            initial,
            lane,
            pinned,
            after,
            snapshot,
            pending,
            cursor,
        } = listing;
        let snapshot =
            snapshot.unwrap_or_else(|| Box::new(self.view.read(|v| v.members.begin_snapshot())));
        // Decode the previous page on a blocking thread while this one is read: doing it here,
        // on the task that drives the read, would delay the request until it is done.
        let op = if pinned == 0 {
            "snapshot"
        } else {
            "snapshot page"
        };
        let read = self.source.page(lane, op, pinned, after.as_deref());
        let (page, decoded) = tokio::join!(read, decode(snapshot, pending));
        let snapshot = match decoded {
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
            Ok(page) => self.after_page(initial, lane, snapshot, cursor, page),
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

    /// The state after `page` of range `lane`: the next page or range, pinned at the page's
    /// revision, or, after the last one, the install and a watch from just after it.
    fn after_page(
        &mut self,
        initial: bool,
        lane: usize,
        mut snapshot: Box<Snapshot>,
        cursor: u64,
        page: Page,
    ) -> State<S::Feed> {
        let Page {
            revision,
            kvs,
            next,
            cursor: read_cursor,
        } = page;
        let cursor = read_cursor.unwrap_or(cursor);
        let ranges = self.source.ranges();
        let (lane, after) = match after_page(next.is_some(), lane, ranges) {
            AfterPage::NextPage => (lane, next),
            // The next range, read at the same revision: one cut across ranges.
            AfterPage::NextRange => (lane + 1, None),
            AfterPage::Done => {
                self.backoff = None;
                snapshot.add(&kvs);
                self.finish_list(initial, revision, *snapshot, cursor);
                return State::Open {
                    from: vec![revision + 1; ranges],
                };
            }
        };
        State::List(Listing {
            initial,
            lane,
            pinned: revision,
            after,
            snapshot: Some(snapshot),
            pending: kvs,
            cursor,
        })
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
            super::record_view_metrics(view, counts_before, 0);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_leads_to_the_next_page_then_the_next_range_then_the_install() {
        // One range: pages until the last, then the install.
        assert_eq!(after_page(true, 0, 1), AfterPage::NextPage);
        assert_eq!(after_page(false, 0, 1), AfterPage::Done);
        // Three ranges: each range's pages, then the next range; the last range's last page
        // installs.
        assert_eq!(after_page(true, 1, 3), AfterPage::NextPage);
        assert_eq!(after_page(false, 0, 3), AfterPage::NextRange);
        assert_eq!(after_page(false, 1, 3), AfterPage::NextRange);
        assert_eq!(after_page(true, 2, 3), AfterPage::NextPage);
        assert_eq!(after_page(false, 2, 3), AfterPage::Done);
    }
}
