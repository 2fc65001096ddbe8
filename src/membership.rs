//! The membership view: etcd key changes in, exact joins and leaves out. No I/O.
//!
//! Identity of a member is `(key, create_revision)`:
//! - a PUT on a key we do not know is a join;
//! - a PUT on a known key with the same create revision is the same registration rewritten
//!   (a re-put, a keep-alive-ish update): nothing;
//! - a PUT on a known key with a new create revision means the old registration was deleted
//!   and a new one created in between (events we did not see): a leave, then a join;
//! - a DELETE of a known key is a leave; of an unknown key, nothing.
//!
//! A key that does not parse, or a value that is not a valid record, is skipped: it is
//! logged once (per key and version), counted in [`Membership::skipped`], and never becomes
//! an event. Two keys claiming one id (only a foreign writer can do that: the allocator's slot
//! keys forbid it) are treated the same way: the first holder stays, the second is skipped.
//!
//! [`Membership::reload`] (or, page by page, [`Membership::begin_snapshot`],
//! [`Snapshot::add`] and [`Membership::install`]) replaces the view with a full snapshot and
//! returns the difference as leaves then joins, which is how a watcher recovers after
//! compaction without re-announcing what peers already know.

use std::collections::HashMap;

use crate::events::Event;
use crate::keys::{KeyLayout, ParsedKey};
use crate::record::{decode, ServerInfo};

/// One key-value as read from etcd (from a range or a watch event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Revision that created the key.
    pub create_revision: i64,
    /// Revision of the last modification.
    pub mod_revision: i64,
}

/// One change of a watch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvChange {
    /// A key was created or overwritten.
    Put(KeyValue),
    /// A key was deleted at `revision`.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// Revision of the deletion.
        revision: i64,
    },
}

#[derive(Debug, Clone)]
struct Member {
    server: ServerInfo,
    create_revision: i64,
}

/// The set of live servers as last seen, and the logic that turns etcd changes into events.
#[derive(Debug)]
pub struct Membership {
    layout: KeyLayout,
    members: HashMap<Vec<u8>, Member>,
    holders: HashMap<u16, Vec<u8>>,
    /// Keys currently holding something we skipped, with the mod revision we skipped, so each
    /// bad version is logged and counted once.
    skipped_keys: HashMap<Vec<u8>, i64>,
    skipped: u64,
    max_position: u64,
}

/// A full read of the range being assembled, page by page, before it replaces a view.
///
/// Built by [`Membership::begin_snapshot`], filled by [`Snapshot::add`], applied by
/// [`Membership::install`]. Decoding a page while the next one is in flight is what keeps a
/// snapshot of many servers close to the speed of the raw read.
#[derive(Debug)]
pub struct Snapshot {
    /// The new view under construction (members, holders, counters).
    fresh: Membership,
    /// Key versions the old view had skipped: the same version found again is not logged
    /// or counted twice. Keys absent from the snapshot are forgotten.
    previously_skipped: HashMap<Vec<u8>, i64>,
    /// Every member found, with its create revision, in the order read; the joins the
    /// install emits are those the old view did not know (kept here rather than cloned
    /// again from the new view: a snapshot of many servers spends its time here).
    servers: Vec<(ServerInfo, i64)>,
}

impl Snapshot {
    /// Adds the key-values of one page (in key order, after every earlier page).
    pub fn add(&mut self, page: &[KeyValue]) {
        self.fresh.members.reserve(page.len());
        self.fresh.holders.reserve(page.len());
        self.servers.reserve(page.len());
        let mut emitted = Vec::new();
        for kv in page {
            if let Some(&skipped_at) = self.previously_skipped.get(&kv.key) {
                self.fresh.skipped_keys.insert(kv.key.clone(), skipped_at);
            }
            self.fresh.put(kv, &mut emitted);
            for event in emitted.drain(..) {
                if let Event::Join { server, .. } = event {
                    self.servers.push((server, kv.create_revision));
                }
            }
        }
    }

    /// Number of members found so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.fresh.len()
    }

    /// True when no member was found so far.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.fresh.is_empty()
    }
}

impl Membership {
    /// An empty view for one key layout.
    #[must_use]
    pub fn new(layout: KeyLayout) -> Self {
        Membership {
            layout,
            members: HashMap::new(),
            holders: HashMap::new(),
            skipped_keys: HashMap::new(),
            skipped: 0,
            max_position: 0,
        }
    }

    /// The highest allocation cursor position carried by any record seen so far: a lower
    /// bound of the cursor, kept current by the watch at no cost.
    #[must_use]
    pub fn max_alloc_position(&self) -> u64 {
        self.max_position
    }

    /// Ids of the live members.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.holders.keys().copied()
    }

    /// Number of live members.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no member is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How many key versions were skipped as malformed or conflicting so far.
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The live members, sorted by id.
    #[must_use]
    pub fn servers(&self) -> Vec<ServerInfo> {
        let mut v: Vec<ServerInfo> = self.members.values().map(|m| m.server.clone()).collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// The member holding `id`, if any.
    #[must_use]
    pub fn get(&self, id: u16) -> Option<&ServerInfo> {
        self.holders
            .get(&id)
            .and_then(|k| self.members.get(k))
            .map(|m| &m.server)
    }

    /// The create revision of the member holding `id`.
    #[must_use]
    pub fn create_revision(&self, id: u16) -> Option<i64> {
        self.holders
            .get(&id)
            .and_then(|k| self.members.get(k))
            .map(|m| m.create_revision)
    }

    /// Applies every change of one watch response, in order, and returns the events.
    pub fn apply(&mut self, changes: &[KvChange]) -> Vec<Event> {
        let mut out = Vec::new();
        for change in changes {
            match change {
                KvChange::Put(kv) => self.put(kv, &mut out),
                KvChange::Delete { key, revision } => {
                    self.skipped_keys.remove(key);
                    self.remove(key, *revision, &mut out);
                }
            }
        }
        out
    }

    /// Replaces the view by a full snapshot taken at `revision` and returns the difference:
    /// leaves of members that are gone or were re-created, then joins of new members.
    ///
    /// The same as [`Membership::begin_snapshot`], one [`Snapshot::add`] and
    /// [`Membership::install`].
    pub fn reload(&mut self, snapshot: &[KeyValue], revision: i64) -> Vec<Event> {
        let mut next = self.begin_snapshot();
        next.add(snapshot);
        self.install(next, revision)
    }

    /// Starts a full snapshot of the range, to be filled page by page with [`Snapshot::add`]
    /// (each page is decoded as it arrives, while the next one is read) and swapped in by
    /// [`Membership::install`]. The view itself is untouched until then, and must not change
    /// in between (the watcher applies no watch event while it lists): the snapshot carries
    /// the view's skip count and cursor bound forward from this moment.
    #[must_use]
    pub fn begin_snapshot(&self) -> Snapshot {
        let mut fresh = Membership::new(self.layout.clone());
        fresh.skipped = self.skipped;
        fresh.max_position = self.max_position;
        Snapshot {
            fresh,
            previously_skipped: self.skipped_keys.clone(),
            servers: Vec::new(),
        }
    }

    /// Replaces the view by a completed snapshot taken at `revision` and returns the
    /// difference: leaves (by id) of members that are gone or were re-created, then joins
    /// (by id) of members new to this view.
    pub fn install(&mut self, snapshot: Snapshot, revision: i64) -> Vec<Event> {
        let Snapshot {
            fresh,
            previously_skipped: _,
            servers,
        } = snapshot;
        let mut leaves: Vec<&Member> = self
            .members
            .iter()
            .filter(|(k, m)| {
                fresh
                    .members
                    .get(*k)
                    .is_none_or(|n| n.create_revision != m.create_revision)
            })
            .map(|(_, m)| m)
            .collect();
        leaves.sort_by_key(|m| m.server.id);
        let mut joins: Vec<ServerInfo> = servers
            .into_iter()
            .filter(|(server, create_revision)| !self.knows(server, *create_revision))
            .map(|(server, _)| server)
            .collect();
        // Ids are unique among members: an unstable sort is exact.
        joins.sort_unstable_by_key(|s| s.id);

        let mut out: Vec<Event> = leaves
            .into_iter()
            .map(|m| Event::Leave {
                id: m.server.id,
                group: m.server.group.clone(),
                revision,
            })
            .collect();
        out.extend(
            joins
                .into_iter()
                .map(|server| Event::Join { server, revision }),
        );
        *self = fresh;
        out
    }

    /// True when this view holds the member `key` with this create revision.
    #[must_use]
    pub fn holds(&self, key: &[u8], create_revision: i64) -> bool {
        self.members
            .get(key)
            .is_some_and(|m| m.create_revision == create_revision)
    }

    /// True when this view already has `server` as the same registration (same id, group
    /// and so key, and create revision).
    fn knows(&self, server: &ServerInfo, create_revision: i64) -> bool {
        self.holders
            .get(&server.id)
            .and_then(|k| self.members.get(k))
            .is_some_and(|m| m.create_revision == create_revision && m.server.group == server.group)
    }

    fn put(&mut self, kv: &KeyValue, out: &mut Vec<Event>) {
        if let Some(known) = self.members.get(&kv.key) {
            if known.create_revision == kv.create_revision {
                // Same registration rewritten: not a join. (Its content is not re-read: the
                // connector never rewrites a record in place.)
                return;
            }
            // Re-created under our nose: the old registration is gone.
            self.remove(&kv.key.clone(), kv.mod_revision, out);
        }
        match self.parse(kv) {
            Ok(server) => {
                if let Some(holder) = self.holders.get(&server.id) {
                    let holder = String::from_utf8_lossy(holder).into_owned();
                    self.skip(kv, &format!("id {} is already held by {holder}", server.id));
                    return;
                }
                if !self.skipped_keys.is_empty() {
                    self.skipped_keys.remove(&kv.key);
                }
                self.max_position = self.max_position.max(server.alloc_position);
                self.holders.insert(server.id, kv.key.clone());
                self.members.insert(
                    kv.key.clone(),
                    Member {
                        server: server.clone(),
                        create_revision: kv.create_revision,
                    },
                );
                out.push(Event::Join {
                    server,
                    revision: kv.mod_revision,
                });
            }
            Err(why) => self.skip(kv, &why),
        }
    }

    fn remove(&mut self, key: &[u8], revision: i64, out: &mut Vec<Event>) {
        if let Some(m) = self.members.remove(key) {
            self.holders.remove(&m.server.id);
            out.push(Event::Leave {
                id: m.server.id,
                group: m.server.group,
                revision,
            });
        }
    }

    fn parse(&self, kv: &KeyValue) -> Result<ServerInfo, String> {
        match self.layout.parse_server_key(&kv.key) {
            ParsedKey::Server { group, id } => {
                decode(group, id, &kv.value).map_err(|e| e.to_string())
            }
            ParsedKey::Malformed(why) => Err(format!("key: {why}")),
        }
    }

    fn skip(&mut self, kv: &KeyValue, why: &str) {
        if self.skipped_keys.get(&kv.key) == Some(&kv.mod_revision) {
            return;
        }
        self.skipped_keys.insert(kv.key.clone(), kv.mod_revision);
        self.skipped += 1;
        tracing::warn!(
            key = %String::from_utf8_lossy(&kv.key),
            mod_revision = kv.mod_revision,
            reason = why,
            "skipping a record under the registry prefix that is not a valid server"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::Registration;

    fn layout() -> KeyLayout {
        KeyLayout::new("/dr").unwrap()
    }

    fn server_kv(group: &str, id: u16, create: i64, modr: i64) -> KeyValue {
        let reg = Registration::new(group, "h", 1000 + id, BTreeMap::new()).unwrap();
        KeyValue {
            key: layout().server_key(group, id).into_bytes(),
            value: reg.encode(id, u64::from(id), 0),
            create_revision: create,
            mod_revision: modr,
        }
    }

    fn put(group: &str, id: u16, create: i64, modr: i64) -> KvChange {
        KvChange::Put(server_kv(group, id, create, modr))
    }

    fn del(group: &str, id: u16, rev: i64) -> KvChange {
        KvChange::Delete {
            key: layout().server_key(group, id).into_bytes(),
            revision: rev,
        }
    }

    fn summary(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Join { server, revision } => format!("join {} @{revision}", server.id),
                Event::Leave { id, revision, .. } => format!("leave {id} @{revision}"),
                Event::Synced { revision } => format!("synced @{revision}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn join_then_leave() {
        let mut m = Membership::new(layout());
        assert_eq!(summary(&m.apply(&[put("g", 1, 5, 5)])), ["join 1 @5"]);
        assert_eq!(m.len(), 1);
        assert_eq!(summary(&m.apply(&[del("g", 1, 9)])), ["leave 1 @9"]);
        assert!(m.is_empty());
    }

    #[test]
    fn repeated_put_is_not_a_join_and_unknown_delete_is_nothing() {
        let mut m = Membership::new(layout());
        m.apply(&[put("g", 1, 5, 5)]);
        assert!(m.apply(&[put("g", 1, 5, 6)]).is_empty());
        assert!(m.apply(&[del("g", 2, 7)]).is_empty());
    }

    #[test]
    fn new_create_revision_is_leave_then_join() {
        let mut m = Membership::new(layout());
        m.apply(&[put("g", 1, 5, 5)]);
        assert_eq!(
            summary(&m.apply(&[put("g", 1, 8, 8)])),
            ["leave 1 @8", "join 1 @8"]
        );
    }

    #[test]
    fn a_whole_batch_is_applied_in_order() {
        // A lease revoke deletes several keys in one revision.
        let mut m = Membership::new(layout());
        m.apply(&[put("a", 1, 2, 2), put("b", 2, 3, 3), put("a", 3, 4, 4)]);
        let ev = m.apply(&[del("a", 1, 10), del("b", 2, 10), del("a", 3, 10)]);
        assert_eq!(summary(&ev), ["leave 1 @10", "leave 2 @10", "leave 3 @10"]);
    }

    #[test]
    fn malformed_records_are_skipped_counted_once() {
        let mut m = Membership::new(layout());
        let bad_value = KvChange::Put(KeyValue {
            key: b"/dr/g/4".to_vec(),
            value: b"garbage".to_vec(),
            create_revision: 3,
            mod_revision: 3,
        });
        let bad_key = KvChange::Put(KeyValue {
            key: b"/dr/g/notanid".to_vec(),
            value: server_kv("g", 4, 1, 1).value,
            create_revision: 4,
            mod_revision: 4,
        });
        assert!(m.apply(&[bad_value.clone(), bad_key]).is_empty());
        assert_eq!(m.skipped(), 2);
        // Seen again (e.g. in a reload): not counted twice.
        let KvChange::Put(kv) = bad_value else {
            unreachable!()
        };
        m.reload(&[kv], 5);
        assert_eq!(m.skipped(), 2);
        assert!(m.is_empty());
    }

    #[test]
    fn second_holder_of_an_id_is_skipped() {
        let mut m = Membership::new(layout());
        m.apply(&[put("a", 7, 2, 2)]);
        assert!(m.apply(&[put("b", 7, 3, 3)]).is_empty());
        assert_eq!(m.skipped(), 1);
        assert_eq!(m.get(7).map(|s| s.group.as_str()), Some("a"));
        // Deleting the skipped key is not a leave of server 7.
        assert!(m.apply(&[del("b", 7, 4)]).is_empty());
    }

    #[test]
    fn reload_emits_exactly_the_difference() {
        let mut m = Membership::new(layout());
        m.apply(&[put("g", 1, 2, 2), put("g", 2, 3, 3), put("g", 3, 4, 4)]);
        // At 20: 1 unchanged, 2 gone, 3 re-created, 4 new.
        let snap = [
            server_kv("g", 1, 2, 2),
            server_kv("g", 3, 15, 15),
            server_kv("g", 4, 18, 18),
        ];
        let ev = m.reload(&snap, 20);
        assert_eq!(
            summary(&ev),
            ["leave 2 @20", "leave 3 @20", "join 3 @20", "join 4 @20"]
        );
        assert_eq!(
            m.servers().iter().map(|s| s.id).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert!(
            m.reload(&snap, 21).is_empty(),
            "a reload of the same state is silent"
        );
    }

    #[test]
    fn a_snapshot_read_page_by_page_touches_the_view_only_when_installed() {
        let mut m = Membership::new(layout());
        let garbage = KeyValue {
            key: b"/dr/g/9".to_vec(),
            value: b"garbage".to_vec(),
            create_revision: 5,
            mod_revision: 5,
        };
        m.apply(&[put("g", 1, 2, 2), KvChange::Put(garbage.clone())]);
        assert_eq!(m.skipped(), 1);

        let mut next = m.begin_snapshot();
        next.add(&[server_kv("g", 1, 2, 2), garbage.clone()]);
        next.add(&[server_kv("g", 2, 7, 7)]);
        assert_eq!(next.len(), 2);
        assert_eq!(m.len(), 1, "the view is untouched until installed");
        let ev = m.install(next, 8);
        assert_eq!(summary(&ev), ["join 2 @8"]);
        assert_eq!(m.skipped(), 1, "the same bad version is not counted twice");
        assert!(m.holds(b"/dr/g/2", 7));
        assert!(!m.holds(b"/dr/g/2", 6));

        // The bad key is gone from the next snapshot: forgotten, so its return counts again.
        let mut next = m.begin_snapshot();
        next.add(&[server_kv("g", 1, 2, 2), server_kv("g", 2, 7, 7)]);
        assert!(m.install(next, 9).is_empty());
        m.apply(&[KvChange::Put(garbage)]);
        assert_eq!(m.skipped(), 2);
    }
}
