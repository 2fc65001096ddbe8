//! What a subscription has received, and the catch-up that brings a lagging one to the current
//! view (see the overflow rule in the [module docs](super)). Pure: no I/O, no locks.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::events::Event;
use crate::id_hash::IdMap;
use crate::membership::Membership;
use crate::record::ServerInfo;

/// What a catch-up reads of the view, borrowed from it under its lock: the members and where
/// the view stands. The view (`crate::view::View::state`) lends it; this module does not name
/// the view's types, so that the view can depend on the events and not the reverse.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ViewState<'a> {
    /// The live members.
    pub(crate) members: &'a Membership,
    /// The revision the view reflects: every catch-up event carries it.
    pub(crate) revision: i64,
    /// The initial snapshot is applied (a catch-up before it gives nothing).
    pub(crate) synced: bool,
    /// The view may be out of date ([`Event::Stale`] was its last freshness event).
    pub(crate) stale: bool,
}

/// The state a consumer has been handed so far: the members it holds (by id, a fingerprint of
/// the record it got and its group, for the leave), whether it got [`Event::Synced`] and
/// whether its last freshness event was [`Event::Stale`].
///
/// A fingerprint, not the record, and the group as an index into the groups it has seen: 16
/// bytes per member and per subscription. A changed record (an in-place edit, a
/// re-registration with a new timestamp) has another fingerprint.
#[derive(Debug, Default)]
pub(crate) struct Received {
    members: IdMap<(u64, u32)>,
    groups: Groups,
    synced: bool,
    stale: bool,
}

/// Group names, each stored once.
#[derive(Debug, Default)]
struct Groups {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    /// The group interned last: consecutive joins are mostly of one group (a snapshot is read
    /// in key order), and comparing one name is cheaper than hashing it.
    last: u32,
}

impl Groups {
    fn intern(&mut self, group: &str) -> u32 {
        if self.name(self.last) == group && !self.names.is_empty() {
            return self.last;
        }
        let i = if let Some(&i) = self.index.get(group) {
            i
        } else {
            let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
            self.names.push(group.into());
            self.index.insert(group.into(), i);
            i
        };
        self.last = i;
        i
    }

    fn name(&self, i: u32) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.names.get(i))
            .map_or("", |name| name)
    }
}

impl Received {
    /// Makes room for `more` members at once (a queued snapshot), instead of growing the map
    /// step by step while they are handed out.
    pub(crate) fn reserve(&mut self, more: usize) {
        self.members.reserve(more);
    }

    /// Records that `event` was handed to the consumer.
    pub(crate) fn note(&mut self, event: &Event) {
        match event {
            Event::Join { server, .. } => {
                let group = self.groups.intern(&server.group);
                self.members.insert(server.id, (fingerprint(server), group));
            }
            Event::Leave { id, .. } => {
                self.members.remove(id);
            }
            Event::Synced { .. } => self.synced = true,
            Event::Stale { .. } => self.stale = true,
            Event::Fresh { .. } => self.stale = false,
            Event::LeaseLost { .. }
            | Event::Reregistered { .. }
            | Event::RegistrationStopped { .. } => {}
        }
    }
}

/// A record's fingerprint: equal records, equal fingerprints.
fn fingerprint(server: &ServerInfo) -> u64 {
    // `DefaultHasher::new()` has fixed keys: the same record hashes the same way every time.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    server.hash(&mut hasher);
    hasher.finish()
}

/// The events that take a consumer from what it `received` to `view`, all at the view's
/// revision: leaves first (a server it holds that is gone, or whose record changed), then joins
/// (a server it lacks, or the changed record), then [`Event::Synced`] if it never got one, then
/// the freshness if it differs. Empty when it is up to date. Ids ascend within the leaves and
/// within the joins.
pub(crate) fn catch_up(received: &Received, view: ViewState<'_>) -> Vec<Event> {
    let revision = view.revision;
    let members = view.members;
    let mut leaves: Vec<(u16, &str)> = received
        .members
        .iter()
        .filter(|(id, (print, _))| {
            members
                .get(**id)
                .is_none_or(|server| fingerprint(server) != *print)
        })
        .map(|(id, (_, group))| (*id, received.groups.name(*group)))
        .collect();
    leaves.sort_unstable_by_key(|(id, _)| *id);
    let mut events: Vec<Event> = leaves
        .into_iter()
        .map(|(id, group)| Event::Leave {
            id,
            group: group.to_owned(),
            revision,
            // Whether it left on purpose is not known here: the grace of the layers above
            // applies (a held-back leave is only late, never lost).
            departing: false,
        })
        .collect();
    let mut ids: Vec<u16> = members.ids().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(server) = members.get(id) else {
            continue;
        };
        let held = received
            .members
            .get(&id)
            .is_some_and(|(print, _)| *print == fingerprint(server));
        if !held {
            events.push(Event::Join {
                server: server.clone(),
                revision,
            });
        }
    }
    if view.synced && !received.synced {
        events.push(Event::Synced { revision });
    }
    // Freshness is only reported after the initial snapshot (as the watcher does).
    if view.synced && view.stale != received.stale {
        events.push(if view.stale {
            Event::Stale { revision }
        } else {
            Event::Fresh { revision }
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::fixtures::{delete, layout, put};
    use crate::membership::KvChange;

    /// The part of a view a catch-up reads, owned.
    struct View {
        members: Membership,
        revision: i64,
        synced: bool,
        stale: bool,
    }

    impl View {
        fn new(layout: crate::keys::KeyLayout) -> Self {
            View {
                members: Membership::new(layout),
                revision: 0,
                synced: false,
                stale: false,
            }
        }

        fn state(&self) -> ViewState<'_> {
            ViewState {
                members: &self.members,
                revision: self.revision,
                synced: self.synced,
                stale: self.stale,
            }
        }
    }

    fn describe(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Join { server, revision } => {
                    format!("join {}:{} @{revision}", server.id, server.port)
                }
                Event::Leave { id, revision, .. } => format!("leave {id} @{revision}"),
                Event::Synced { revision } => format!("synced @{revision}"),
                Event::Stale { revision } => format!("stale @{revision}"),
                Event::Fresh { revision } => format!("fresh @{revision}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// A view after `changes`, synced at `revision`.
    fn view(changes: &[KvChange], revision: i64) -> View {
        let mut view = View::new(layout());
        view.members.apply(changes);
        view.revision = revision;
        view.synced = true;
        view
    }

    #[test]
    fn a_new_subscription_gets_every_member_then_synced() {
        let v = view(&[put(2, 2, 5), put(1, 1, 6)], 9);
        let got = catch_up(&Received::default(), v.state());
        assert_eq!(describe(&got), ["join 1:1 @9", "join 2:2 @9", "synced @9"]);
    }

    #[test]
    fn an_empty_unsynced_view_gives_nothing() {
        let v = View::new(layout());
        assert!(catch_up(&Received::default(), v.state()).is_empty());
    }

    #[test]
    fn lagging_gets_leaves_for_the_gone_joins_for_the_new_and_a_changed_record_as_both() {
        let before = view(&[put(1, 1, 5), put(2, 2, 6), put(3, 3, 7)], 7);
        let mut received = Received::default();
        for e in catch_up(&Received::default(), before.state()) {
            received.note(&e);
        }
        // While it lagged: 1 left, 3 re-registered with another record, 4 joined, 5 joined
        // and left (never seen).
        let now = view(
            &[
                put(1, 1, 5),
                put(2, 2, 6),
                put(3, 3, 7),
                delete(1, 8),
                delete(3, 9),
                put(3, 33, 10),
                put(4, 4, 11),
                put(5, 5, 12),
                delete(5, 13),
            ],
            13,
        );
        let got = catch_up(&received, now.state());
        assert_eq!(
            describe(&got),
            [
                "leave 1 @13",
                "leave 3 @13",
                "join 3:33 @13",
                "join 4:4 @13"
            ]
        );
        for e in &got {
            received.note(e);
        }
        assert!(
            catch_up(&received, now.state()).is_empty(),
            "up to date after it"
        );
    }

    #[test]
    fn a_leave_it_got_and_a_join_it_got_are_not_repeated() {
        let v = view(&[put(1, 1, 5)], 5);
        let mut received = Received::default();
        for e in catch_up(&Received::default(), v.state()) {
            received.note(&e);
        }
        received.note(&Event::Leave {
            id: 1,
            group: "game".into(),
            revision: 6,
            departing: false,
        });
        let now = view(&[put(1, 1, 5), delete(1, 6)], 6);
        assert!(catch_up(&received, now.state()).is_empty());
    }

    #[test]
    fn freshness_is_caught_up_both_ways() {
        let mut v = view(&[put(1, 1, 5)], 5);
        let mut received = Received::default();
        for e in catch_up(&Received::default(), v.state()) {
            received.note(&e);
        }
        v.stale = true;
        let got = catch_up(&received, v.state());
        assert_eq!(describe(&got), ["stale @5"]);
        received.note(&got[0]);
        v.stale = false;
        v.revision = 8;
        assert_eq!(describe(&catch_up(&received, v.state())), ["fresh @8"]);
    }
}
