//! The membership view: etcd key changes in, exact joins and leaves out. No I/O.
//!
//! What comes out is this module's own [`MemberChange`] (an id's holder inserted or removed,
//! in the manner of tower's `discover::Change { Insert, Remove }`), not the event stream's
//! type: membership is the bottom of the view's layers (membership ← events ← view), and
//! `crate::events` turns a change into an `Event` in one place (`From<MemberChange>`).
//!
//! # What a key is
//!
//! A key under the prefix is a **claim** on the id it names when it parses
//! (`<prefix>/<group>/<id>`, canonical), its value decodes to a valid record for that key, and
//! it is bound to a lease (etcd `lease != 0`). Anything else is skipped: logged once per key
//! version (mod revision), counted in [`Membership::skipped`], never a join.
//!
//! - **No lease, no claim.** A key without a lease can never expire, so a server that
//!   crashed would stay listed for ever. Our own servers always write on a lease; a lease-less
//!   record is an operator's `etcdctl put` without `--lease`, which also strips the lease
//!   from a live key. Such a version is skipped ("no lease"), and if the key was a member it
//!   leaves. The owner notices the stripped lease and re-puts its record on it, which is a
//!   join again.
//!
//! # Who holds an id
//!
//! Only a foreign writer can make two keys claim one id (`/darkrift/lobby/5` and
//! `/darkrift/game/5`): the allocator's slot keys forbid it. One rule decides, the same in
//! the live diff ([`Membership::apply`]) and in a snapshot ([`Membership::reload`]): **the
//! claim with the earliest create revision holds the id; a tie (one transaction created both)
//! goes to the smallest key bytes.** The rule depends only on the keys etcd holds, so any two
//! views that have applied revision R agree, whichever order they saw the claims in.
//! The losing claims are *shadowed*: kept aside (a separate map that is empty unless a
//! conflict exists, so members pay nothing for it), counted in [`Membership::shadowed`] (and
//! in [`Membership::skipped`]) and logged once per key version. When the holder is deleted or
//! stops being a claim (lease stripped, malformed value), the next claim by the rule is
//! promoted: a leave of the old holder, then a join of the promoted one, at that revision. A
//! claim that beats the holder (a live PUT creates a key later than every existing claim, but
//! an older key can *become* a claim, e.g. when its lease is re-attached) takes the id the
//! same way: a leave, then a join.
//!
//! # Changes of the holder
//!
//! Identity of a member is `(key, create_revision)`, and what peers were told at its join is
//! its group, host, port and properties:
//! - a PUT on a key that is not a claim yet is a join (if it wins its id);
//! - a PUT on the holder with the same create revision and the same group, host, port and
//!   properties (a re-put, e.g. the owner re-attaching its lease) is nothing; the view takes
//!   the new bookkeeping fields (`registered_at_unix_ms`, `alloc_position`) silently, so every
//!   view holds the same record;
//! - a PUT on the holder with the same create revision but another host, port or properties
//!   (an in-place edit) is a leave, then a join with the new record. DarkRift has no "server
//!   updated" call and delivers properties only at a join, so a leave and a join is the one
//!   way every peer learns the new record — a properties-only edit included;
//! - a PUT on the holder with a new create revision means the old registration was deleted and
//!   a new one created in between (events we did not see): a leave, then a join;
//! - a DELETE of the holder is a leave (then the promotion of a shadowed claim, if any); of
//!   anything else, nothing.
//!
//! The changes of one revision (a transaction, a lease revoke) are applied together and
//! announced as the difference between the view before and after that revision, so a
//! state that exists only halfway through a transaction is never a join or a leave.
//!
//! [`Membership::reload`] (or, page by page, [`Membership::begin_snapshot`],
//! [`Snapshot::add`] and [`Membership::install`]) replaces the view with a full snapshot and
//! returns the difference as leaves then joins, by the same rules, which is how a watcher
//! recovers after compaction without re-announcing what peers already know.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use crate::id_hash::{IdMap, IdSet};
use crate::keys::{KeyLayout, ParsedKey};
use crate::record::{decode, ServerInfo};

/// Why a lease-less record is skipped (the log line's reason).
const NO_LEASE: &str = "no lease: a record that cannot expire is not a live server";

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
    /// The lease the key is bound to; 0 for none (such a key is never a member).
    pub lease: i64,
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

impl KvChange {
    /// The key changed.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            KvChange::Put(kv) => &kv.key,
            KvChange::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    #[must_use]
    pub fn revision(&self) -> i64 {
        match self {
            KvChange::Put(kv) => kv.mod_revision,
            KvChange::Delete { revision, .. } => *revision,
        }
    }
}

/// One change of who holds an id, at the revision it happened (or the revision of the snapshot
/// that found it): what [`Membership::apply`], [`Membership::install`] and
/// [`Membership::reload`] yield. For a given id, inserts and removes alternate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// `server` now holds its id: a new claim won it, or the holder's record changed (after
    /// the [`MemberChange::Remove`] of the old record).
    Insert {
        /// The holder's record.
        server: ServerInfo,
        /// Revision of the change (or of the snapshot).
        revision: i64,
    },
    /// The holder of `id` no longer holds it: its key was deleted, stopped being a claim, was
    /// changed, or lost the id to an earlier claim.
    Remove {
        /// The id.
        id: u16,
        /// The group of the holder that was removed.
        group: String,
        /// Revision of the change (or of the snapshot).
        revision: i64,
        /// Its owner had marked it departing before its key went (a deregistration, not a
        /// lost lease).
        departing: bool,
    },
}

/// One valid claim on an id. Its key is not stored: a claim's key is exactly
/// `<prefix>/<group>/<id>` (the parser accepts only the canonical spelling), so the group and
/// id say it, and the members map is keyed by id alone (this is most of a view's memory).
#[derive(Debug, Clone)]
struct Member {
    server: ServerInfo,
    create_revision: i64,
    /// The version held, so that a claim pushed aside is logged once per version.
    mod_revision: i64,
}

impl Member {
    /// True when `self` comes before `other` by the holder rule: earliest create revision,
    /// then smallest key bytes. Both claim one id, so their keys differ only in the group
    /// segment: comparing `group/` compares the keys (a plain group comparison would not:
    /// `a-b/` sorts before `a/`).
    fn precedes(&self, other: &Member) -> bool {
        let key_order = || {
            let slash = std::iter::once(b'/');
            let mine = self.server.group.bytes().chain(slash.clone());
            mine.cmp(other.server.group.bytes().chain(slash))
        };
        match self.create_revision.cmp(&other.create_revision) {
            Ordering::Equal => key_order() == Ordering::Less,
            order => order == Ordering::Less,
        }
    }

    /// True when `other` is this registration (same key and create revision) with the same
    /// record as far as peers were told at its join: group, host, port and properties. The
    /// other fields (registration time, cursor position) are bookkeeping no join consumer acts
    /// on, so a re-put that refreshes them is not a leave and a join.
    fn same_as_announced(&self, other: &Member) -> bool {
        let (a, b) = (&self.server, &other.server);
        self.create_revision == other.create_revision
            && a.group == b.group
            && a.host == b.host
            && a.port == b.port
            && a.properties == b.properties
    }
}

/// The holders replaced during one revision, each as it was before the revision.
#[derive(Debug, Default)]
struct Changed {
    /// Ids in the order first changed, with the holder before (`None`: there was none).
    order: Vec<(u16, Option<Member>)>,
    /// The ids in `order`, once there are more than [`Changed::SCAN`]: only an id's first
    /// change within a revision is recorded.
    seen: IdSet,
}

impl Changed {
    /// Up to this many ids, `order` is searched instead of `seen`: nearly every revision
    /// changes one id (a registration, a lease expiry), and a set built for one id per
    /// watch event was a measurable share of a busy watcher's time.
    const SCAN: usize = 16;

    fn note(&mut self, id: u16, before: Option<Member>) {
        let first = if self.order.len() < Self::SCAN {
            !self.order.iter().any(|(noted, _)| *noted == id)
        } else {
            if self.seen.is_empty() {
                self.seen.extend(self.order.iter().map(|(noted, _)| *noted));
            }
            self.seen.insert(id)
        };
        if first {
            self.order.push((id, before));
        }
    }
}

/// The set of live servers as last seen, and the logic that turns etcd changes into events.
#[derive(Debug)]
pub struct Membership {
    layout: KeyLayout,
    /// The holder of each id.
    members: IdMap<Member>,
    /// Valid claims that lose to the holder of their id, in no order. Empty unless a foreign
    /// writer made two keys for one id; an id appears here only while it has a holder.
    shadowed: IdMap<Vec<Member>>,
    /// Keys whose current version was skipped (malformed, lease-less) or shadowed, with that
    /// mod revision, so each such version is logged and counted once.
    skipped_keys: HashMap<Vec<u8>, i64>,
    skipped: u64,
    shadowed_count: u64,
    max_position: u64,
}

/// A full read of the range being assembled, page by page, before it replaces a view.
///
/// Built by [`Membership::begin_snapshot`], filled by [`Snapshot::add`], applied by
/// [`Membership::install`]. Decoding a page while the next one is in flight is what keeps a
/// snapshot of many servers close to the speed of the raw read.
#[derive(Debug)]
pub struct Snapshot {
    /// The new view under construction (members, shadowed claims, counters).
    fresh: Membership,
    /// Key versions the old view had skipped or shadowed: the same version found again is not
    /// logged or counted twice. Keys absent from the snapshot are forgotten.
    previously_skipped: HashMap<Vec<u8>, i64>,
    /// Every claim that took its id while the snapshot was built, with its create and mod
    /// revisions, in the order read (a later page may still push one aside: install keeps
    /// those the new view ends up holding). The joins the install emits are those the old
    /// view did not know, cloned here, on the decoding thread, rather than from the new view
    /// under the view's lock.
    servers: Vec<(ServerInfo, i64, i64)>,
}

impl Snapshot {
    /// Adds the key-values of one page (in key order, after every earlier page).
    pub fn add(&mut self, page: &[KeyValue]) {
        self.fresh.members.reserve(page.len());
        self.servers.reserve(page.len());
        for kv in page {
            if let Some(&skipped_at) = self.previously_skipped.get(&kv.key) {
                self.fresh.skipped_keys.insert(kv.key.clone(), skipped_at);
            }
            if let Some(server) = self.fresh.put(kv, None) {
                self.servers
                    .push((server.clone(), kv.create_revision, kv.mod_revision));
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
            members: IdMap::default(),
            shadowed: IdMap::default(),
            skipped_keys: HashMap::new(),
            skipped: 0,
            shadowed_count: 0,
            max_position: 0,
        }
    }

    /// The highest allocation cursor position carried by any valid record seen so far: a
    /// lower bound of the cursor, kept current by the watch at no cost.
    #[must_use]
    pub fn max_alloc_position(&self) -> u64 {
        self.max_position
    }

    /// Ids of the live members.
    pub fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.members.keys().copied()
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

    /// How many key versions were skipped so far: malformed, lease-less, or shadowed (a valid
    /// claim on an id another key holds; those are also counted in [`Membership::shadowed`]).
    #[must_use]
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// How many key versions were shadowed so far: valid claims on an id that an earlier
    /// claim (see the module docs) holds.
    #[must_use]
    pub fn shadowed(&self) -> u64 {
        self.shadowed_count
    }

    /// The live members, sorted by id.
    #[must_use]
    pub fn servers(&self) -> Vec<ServerInfo> {
        // References are sorted, not the records: a record is ~100 bytes, a reference 8.
        let mut v: Vec<&Member> = self.members.values().collect();
        v.sort_unstable_by_key(|m| m.server.id);
        v.into_iter().map(|m| m.server.clone()).collect()
    }

    /// The member holding `id`, if any.
    #[must_use]
    pub fn get(&self, id: u16) -> Option<&ServerInfo> {
        self.members.get(&id).map(|m| &m.server)
    }

    /// The create revision of the member holding `id`.
    #[must_use]
    pub fn create_revision(&self, id: u16) -> Option<i64> {
        self.members.get(&id).map(|m| m.create_revision)
    }

    /// Applies every change of one watch response, in order, and returns the events.
    ///
    /// The changes of one revision (one transaction, or a lease revoke deleting many keys)
    /// are applied together: the events say how the view at the end of that revision differs
    /// from the view before it, so a state that exists only halfway through a transaction is
    /// never announced (two claims created together are one join of the winner; a holder and
    /// its shadowed rival deleted together are one leave).
    pub fn apply(&mut self, changes: &[KvChange]) -> Vec<MemberChange> {
        let mut out = Vec::new();
        let mut changed = Changed::default();
        let mut current = None;
        for change in changes {
            let revision = change.revision();
            if let Some(previous) = current.filter(|r| *r != revision) {
                self.announce(&mut changed, previous, &mut out);
            }
            current = Some(revision);
            match change {
                KvChange::Put(kv) => {
                    self.put(kv, Some(&mut changed));
                }
                KvChange::Delete { key, .. } => self.delete(key, &mut changed),
            }
        }
        if let Some(revision) = current {
            self.announce(&mut changed, revision, &mut out);
        }
        out
    }

    /// Emits, for each id whose holder changed during one revision (in the order first
    /// changed), the difference between its holder before and now: nothing if it is the
    /// same registration with the same announced record, else a leave of the old one (if
    /// any), then a join of the new one (if any).
    fn announce(&self, changed: &mut Changed, revision: i64, out: &mut Vec<MemberChange>) {
        for (id, before) in changed.order.drain(..) {
            let now = self.members.get(&id);
            if let (Some(b), Some(n)) = (&before, now) {
                if b.same_as_announced(n) {
                    continue;
                }
            }
            if let Some(before) = before {
                out.push(remove(before.server, revision));
            }
            if let Some(now) = now {
                out.push(MemberChange::Insert {
                    server: now.server.clone(),
                    revision,
                });
            }
        }
        changed.seen.clear();
    }

    /// Replaces the view by a full snapshot taken at `revision` and returns the difference:
    /// leaves of members that are gone, were re-created or changed, then joins of new members.
    ///
    /// The same as [`Membership::begin_snapshot`], one [`Snapshot::add`] and
    /// [`Membership::install`].
    pub fn reload(&mut self, snapshot: &[KeyValue], revision: i64) -> Vec<MemberChange> {
        let mut next = self.begin_snapshot();
        next.add(snapshot);
        self.install(next, revision)
    }

    /// Starts a full snapshot of the range, to be filled page by page with [`Snapshot::add`]
    /// (each page is decoded as it arrives, while the next one is read) and swapped in by
    /// [`Membership::install`]. The view itself is untouched until then, and must not change
    /// in between (the watcher applies no watch event while it lists): the snapshot carries
    /// the view's counters and cursor bound forward from this moment.
    #[must_use]
    pub fn begin_snapshot(&self) -> Snapshot {
        let mut fresh = Membership::new(self.layout.clone());
        fresh.skipped = self.skipped;
        fresh.shadowed_count = self.shadowed_count;
        fresh.max_position = self.max_position;
        Snapshot {
            fresh,
            previously_skipped: self.skipped_keys.clone(),
            servers: Vec::new(),
        }
    }

    /// Replaces the view by a completed snapshot taken at `revision` and returns the
    /// difference: leaves (by id) of members that are gone, re-created, changed (see the
    /// module docs) or pushed aside by an earlier claim, then joins (by id) of members new to
    /// this view.
    pub fn install(&mut self, snapshot: Snapshot, revision: i64) -> Vec<MemberChange> {
        let Snapshot {
            fresh,
            previously_skipped: _,
            servers,
        } = snapshot;
        let mut leaves: Vec<&Member> = self
            .members
            .iter()
            .filter(|(id, m)| {
                fresh
                    .members
                    .get(*id)
                    .is_none_or(|n| !m.same_as_announced(n))
            })
            .map(|(_, m)| m)
            .collect();
        leaves.sort_unstable_by_key(|m| m.server.id);
        let mut joins: Vec<ServerInfo> = servers
            .into_iter()
            .filter(|(server, create_revision, mod_revision)| {
                // Held by the new view (not pushed aside later in the snapshot) ...
                fresh.members.get(&server.id).is_some_and(|n| {
                    n.create_revision == *create_revision
                        && n.mod_revision == *mod_revision
                        && n.server.group == server.group
                        // ... and not already announced by this one.
                        && self
                            .members
                            .get(&server.id)
                            .is_none_or(|m| !m.same_as_announced(n))
                })
            })
            .map(|(server, _, _)| server)
            .collect();
        // Sorted by a cached key: the ids are sorted with their positions and the records then
        // moved once each, instead of moving records of ~100 bytes through a whole sort.
        joins.sort_by_cached_key(|s| s.id);
        // A key read twice (never from etcd) would be two joins of one id.
        joins.dedup_by_key(|s| s.id);

        let mut out: Vec<MemberChange> = leaves
            .into_iter()
            .map(|m| MemberChange::Remove {
                id: m.server.id,
                group: m.server.group.clone(),
                revision,
                departing: m.server.departing,
            })
            .collect();
        out.extend(
            joins
                .into_iter()
                .map(|server| MemberChange::Insert { server, revision }),
        );
        *self = fresh;
        out
    }

    /// True when this view holds the member `key` with this create revision (a shadowed claim
    /// is not held).
    #[must_use]
    pub fn holds(&self, key: &[u8], create_revision: i64) -> bool {
        match self.layout.parse_server_key(key) {
            ParsedKey::Server { group, id } => self
                .members
                .get(&id)
                .is_some_and(|m| m.create_revision == create_revision && m.server.group == group),
            ParsedKey::Malformed(_) => false,
        }
    }

    /// Applies one PUT; returns the record if this version now holds its id. `changed`
    /// collects the holders it replaces (`None` while a snapshot is built: its differences
    /// are computed at install).
    fn put(&mut self, kv: &KeyValue, changed: Option<&mut Changed>) -> Option<&ServerInfo> {
        let (group, id) = match self.layout.parse_server_key(&kv.key) {
            ParsedKey::Server { group, id } => (group, id),
            // Not a claim on any id, so it cannot have been one either.
            ParsedKey::Malformed(why) => {
                self.skip(kv, &format!("key: {why}"));
                return None;
            }
        };
        // The lease first: it is the cheap check, and the record is not decoded for nothing.
        let claim = if kv.lease == 0 {
            Err(NO_LEASE.to_owned())
        } else {
            decode(group, id, &kv.value).map_err(|e| e.to_string())
        };
        match claim {
            Ok(server) => {
                self.max_position = self.max_position.max(server.alloc_position);
                let claim = Member {
                    server,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                };
                if self.settle(id, group, Some(claim), changed) {
                    return self.members.get(&id).map(|m| &m.server);
                }
            }
            Err(why) => {
                self.skip(kv, &why);
                // The key's earlier version may have been a claim: it is withdrawn.
                self.settle(id, group, None, changed);
            }
        }
        None
    }

    fn delete(&mut self, key: &[u8], changed: &mut Changed) {
        if !self.skipped_keys.is_empty() {
            self.skipped_keys.remove(key);
        }
        if let ParsedKey::Server { group, id } = self.layout.parse_server_key(key) {
            self.settle(id, group, None, Some(changed));
        }
    }

    /// Replaces the claim of the key `<prefix>/<group>/<id>` on `id` by `claim` (`None`:
    /// withdraws it) and lets the holder rule decide who holds `id` now. The holder it
    /// replaces, if any, goes to `changed`. Returns true when `claim` holds the id.
    fn settle(
        &mut self,
        id: u16,
        group: &str,
        claim: Option<Member>,
        changed: Option<&mut Changed>,
    ) -> bool {
        // The common case, a claim on a free id with no rival anywhere, in one lookup: what
        // the general rule below concludes for it, without moving members in and out.
        let claim = match (claim, self.shadowed.is_empty()) {
            (Some(new), true) => match self.members.entry(id) {
                Entry::Vacant(free) => {
                    if let Some(changed) = changed {
                        changed.note(id, None);
                    }
                    free.insert(new);
                    return true;
                }
                Entry::Occupied(_) => Some(new),
            },
            (claim, _) => claim,
        };
        let mut rivals = if self.shadowed.is_empty() {
            Vec::new()
        } else {
            self.shadowed.remove(&id).unwrap_or_default()
        };
        let held_by_key = self
            .members
            .get(&id)
            .is_some_and(|m| m.server.group == group);
        // The key's earlier claim, if shadowed, is replaced.
        let was_shadowed = rivals.len();
        rivals.retain(|m| m.server.group != group);
        if claim.is_none() && !held_by_key && rivals.len() == was_shadowed {
            // Not a claim before, not one now: nothing changes (an unknown delete, a
            // malformed put on a fresh key).
            if !rivals.is_empty() {
                self.shadowed.insert(id, rivals);
            }
            return false;
        }
        let (previous, mut holder) = match self.members.remove(&id) {
            Some(m) if held_by_key => (Some(m), None),
            other => (None, other),
        };
        let kept_holder = holder.is_some();
        if holder.is_none() {
            // The holder was this key (or there was none): promote the best remaining claim.
            holder = take_first(&mut rivals);
        }
        let mut pushed_aside = None;
        let mut claim_holds = false;
        if let Some(claim) = claim {
            if holder.as_ref().is_none_or(|h| claim.precedes(h)) {
                pushed_aside = holder.replace(claim);
                claim_holds = true;
            } else {
                pushed_aside = Some(claim);
            }
        }
        // The holder replaced: this key's earlier version, or another key's claim that this
        // one pushed aside (cloned: it stays among the rivals). Unchanged otherwise.
        let replaced = match previous {
            Some(previous) => Some(Some(previous)),
            None if kept_holder => claim_holds.then(|| pushed_aside.clone()),
            None => holder.is_some().then_some(None),
        };
        if let (Some(changed), Some(before)) = (changed, replaced) {
            changed.note(id, before);
        }
        if let Some(holder) = holder {
            // Log and count the claim that now loses (once per version), and keep it aside.
            if let Some(loser) = pushed_aside {
                self.shadow(&loser, &holder);
                rivals.push(loser);
            }
            self.members.insert(id, holder);
        }
        if !rivals.is_empty() {
            self.shadowed.insert(id, rivals);
        }
        claim_holds
    }

    /// Logs and counts a valid claim that loses its id to `winner`, once per key version.
    fn shadow(&mut self, loser: &Member, winner: &Member) {
        let key = self
            .layout
            .server_key(&loser.server.group, loser.server.id)
            .into_bytes();
        if self.skipped_keys.get(&key) == Some(&loser.mod_revision) {
            return;
        }
        self.skipped_keys.insert(key, loser.mod_revision);
        self.skipped += 1;
        self.shadowed_count += 1;
        tracing::warn!(
            key = %self.layout.server_key(&loser.server.group, loser.server.id),
            mod_revision = loser.mod_revision,
            create_revision = loser.create_revision,
            holder = %self.layout.server_key(&winner.server.group, winner.server.id),
            holder_create_revision = winner.create_revision,
            "a second key claims a live server id; the earliest claim holds it, this one is \
             ignored while it does"
        );
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

/// Removes and returns the claim that comes first by the holder rule.
fn take_first(claims: &mut Vec<Member>) -> Option<Member> {
    let mut best = None::<usize>;
    for (i, c) in claims.iter().enumerate() {
        if best.is_none_or(|b| c.precedes(&claims[b])) {
            best = Some(i);
        }
    }
    best.map(|i| claims.swap_remove(i))
}

fn remove(server: ServerInfo, revision: i64) -> MemberChange {
    MemberChange::Remove {
        id: server.id,
        group: server.group,
        revision,
        departing: server.departing,
    }
}
/// Changes for the unit tests of the layers above: the view, the subscriptions' catch-up.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;

    use crate::keys::KeyLayout;
    use super::{KeyValue, KvChange};
    use crate::record::Registration;

    /// The layout of every fixture (prefix `/t`).
    pub(crate) fn layout() -> KeyLayout {
        KeyLayout::new("/t").unwrap()
    }

    /// Server `id` of group `game`, listening on `port`, created at `revision`.
    pub(crate) fn put(id: u16, port: u16, revision: i64) -> KvChange {
        let reg = Registration::new("game", "10.0.0.1", port, BTreeMap::new()).unwrap();
        KvChange::Put(KeyValue {
            key: layout().server_key("game", id).into_bytes(),
            value: reg.encode(id, u64::from(id), 0),
            create_revision: revision,
            mod_revision: revision,
            lease: 1,
        })
    }

    /// Server `id`'s key deleted at `revision`.
    pub(crate) fn delete(id: u16, revision: i64) -> KvChange {
        KvChange::Delete {
            key: layout().server_key("game", id).into_bytes(),
            revision,
        }
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
            lease: 1,
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

    fn summary(changes: &[MemberChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                MemberChange::Insert { server, revision } => {
                    format!("join {} @{revision}", server.id)
                }
                MemberChange::Remove { id, revision, .. } => format!("leave {id} @{revision}"),
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
    fn one_revision_of_many_ids_announces_each_id_once() {
        // Past the number of ids searched in order, ids are found by set: ids 3 and 18 are
        // claimed again in the revision by an earlier-created rival key of another group,
        // which takes the id; each id is still announced once, as the rival's join.
        let mut m = Membership::new(layout());
        let mut changes: Vec<KvChange> = (1..=20).map(|id| put("g", id, 5, 5)).collect();
        changes.push(put("h", 18, 4, 5));
        changes.push(put("h", 3, 4, 5));
        let events = summary(&m.apply(&changes));
        let expected: Vec<String> = (1..=20).map(|id| format!("join {id} @5")).collect();
        assert_eq!(events, expected);
        // The next revision starts afresh: id 1 leaves once.
        assert_eq!(summary(&m.apply(&[del("g", 1, 6)])), ["leave 1 @6"]);
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
    fn a_departing_mark_is_silent_and_its_leave_says_so() {
        let mut m = Membership::new(layout());
        m.apply(&[put("g", 1, 5, 5), put("g", 2, 6, 6)]);
        // The owner re-puts its record flagged departing: no join, no leave.
        let mut marked = server_kv("g", 1, 5, 7);
        marked.value = crate::record::mark_departing(&marked.value).unwrap();
        assert!(m.apply(&[KvChange::Put(marked)]).is_empty());
        let departed = |changes: &[MemberChange]| -> Vec<(u16, bool)> {
            changes
                .iter()
                .filter_map(|c| match c {
                    MemberChange::Remove { id, departing, .. } => Some((*id, *departing)),
                    MemberChange::Insert { .. } => None,
                })
                .collect()
        };
        // Its deletion is a departure; a key deleted without the mark (a lease lost) is not.
        assert_eq!(departed(&m.apply(&[del("g", 1, 8)])), [(1, true)]);
        assert_eq!(departed(&m.apply(&[del("g", 2, 9)])), [(2, false)]);
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
            lease: 1,
        });
        let bad_key = KvChange::Put(KeyValue {
            key: b"/dr/g/notanid".to_vec(),
            value: server_kv("g", 4, 1, 1).value,
            create_revision: 4,
            mod_revision: 4,
            lease: 1,
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
            lease: 1,
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

    /// A record of `group/id` with this host and properties, on a lease or not.
    fn record(
        group: &str,
        id: u16,
        host: &str,
        props: &[(&str, &str)],
        (create, modr, lease): (i64, i64, i64),
    ) -> KeyValue {
        let props = props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let reg = Registration::new(group, host, 1000 + id, props).unwrap();
        KeyValue {
            key: layout().server_key(group, id).into_bytes(),
            value: reg.encode(id, u64::from(id), modr),
            create_revision: create,
            mod_revision: modr,
            lease,
        }
    }

    fn events_of(m: &mut Membership, kvs: &[KeyValue]) -> Vec<String> {
        let changes: Vec<KvChange> = kvs.iter().cloned().map(KvChange::Put).collect();
        summary(&m.apply(&changes))
    }

    /// The view as a comparable value: each member's id, group, host, properties and create
    /// revision.
    fn state(m: &Membership) -> Vec<(ServerInfo, Option<i64>)> {
        m.servers()
            .into_iter()
            .map(|s| {
                let rev = m.create_revision(s.id);
                (s, rev)
            })
            .collect()
    }

    #[test]
    fn a_record_without_a_lease_is_skipped_never_a_join() {
        let mut m = Membership::new(layout());
        let bare = record("g", 5, "h", &[], (3, 3, 0));
        assert!(events_of(&mut m, std::slice::from_ref(&bare)).is_empty());
        assert!(m.is_empty());
        assert_eq!(m.skipped(), 1);
        // The same version again (a reload): not counted twice.
        assert!(m.reload(&[bare], 4).is_empty());
        assert_eq!(m.skipped(), 1);
        assert_eq!(m.shadowed(), 0);
    }

    #[test]
    fn stripping_the_lease_of_a_member_is_a_leave_and_putting_it_back_a_join() {
        let mut m = Membership::new(layout());
        assert_eq!(
            events_of(&mut m, &[record("g", 5, "h", &[], (3, 3, 7))]),
            ["join 5 @3"]
        );
        // `etcdctl put /dr/g/5 ...` without --lease: same key, same create revision.
        assert_eq!(
            events_of(&mut m, &[record("g", 5, "h", &[], (3, 6, 0))]),
            ["leave 5 @6"]
        );
        assert!(m.get(5).is_none());
        assert_eq!(m.skipped(), 1);
        // The owner re-puts it on its lease.
        assert_eq!(
            events_of(&mut m, &[record("g", 5, "h", &[], (3, 8, 7))]),
            ["join 5 @8"]
        );
    }

    #[test]
    fn a_record_changed_in_place_is_a_leave_then_a_join() {
        let mut m = Membership::new(layout());
        events_of(&mut m, &[record("g", 5, "h1", &[("k", "v")], (3, 3, 7))]);
        assert_eq!(
            events_of(&mut m, &[record("g", 5, "h2", &[("k", "v")], (3, 6, 7))]),
            ["leave 5 @6", "join 5 @6"]
        );
        assert_eq!(m.get(5).map(|s| s.host.as_str()), Some("h2"));
        // Properties only: also a leave and a join (DarkRift delivers them only at a join).
        assert_eq!(
            events_of(&mut m, &[record("g", 5, "h2", &[("k", "w")], (3, 9, 7))]),
            ["leave 5 @9", "join 5 @9"]
        );
        assert_eq!(m.get(5).map(|s| s.properties["k"].as_str()), Some("w"));
        assert_eq!(m.create_revision(5), Some(3));
    }

    #[test]
    fn an_identical_re_put_is_nothing_but_the_view_takes_its_bookkeeping() {
        let mut m = Membership::new(layout());
        events_of(&mut m, &[record("g", 5, "h", &[], (3, 3, 7))]);
        // The owner re-attaching its lease: same announced record, a new registration time
        // (the helper writes the mod revision there) and another lease.
        assert!(events_of(&mut m, &[record("g", 5, "h", &[], (3, 6, 8))]).is_empty());
        assert_eq!(m.get(5).map(|s| s.registered_at_unix_ms), Some(6));
        assert_eq!(m.skipped(), 0);
    }

    #[test]
    fn the_earliest_claim_holds_an_id_whatever_the_order_seen() {
        let lobby = |modr, lease| record("lobby", 5, "l", &[], (2, modr, lease));
        let game = record("game", 5, "g", &[], (3, 3, 7));
        // Live: lobby/5 was created first but without a lease; game/5 takes the id, until
        // lobby/5 gets a lease: it was created earlier, so it takes the id over.
        let mut live = Membership::new(layout());
        assert!(events_of(&mut live, &[lobby(2, 0)]).is_empty());
        assert_eq!(
            events_of(&mut live, std::slice::from_ref(&game)),
            ["join 5 @3"]
        );
        assert_eq!(
            events_of(&mut live, &[lobby(4, 7)]),
            ["leave 5 @4", "join 5 @4"]
        );
        assert_eq!(live.get(5).map(|s| s.group.as_str()), Some("lobby"));
        assert_eq!((live.skipped(), live.shadowed()), (2, 1));
        // A snapshot of the same keys, in key order (game/5 first): the same holder.
        let mut snap = Membership::new(layout());
        assert_eq!(
            summary(&snap.reload(&[game, lobby(4, 7)], 4)),
            ["join 5 @4"]
        );
        assert_eq!(state(&snap), state(&live));
        assert_eq!(snap.shadowed(), 1);
    }

    #[test]
    fn a_tie_in_one_transaction_goes_to_the_smallest_key() {
        // "/dr/a-b/5" < "/dr/a/5" ('-' < '/'), although "a" < "a-b".
        let ab = record("a-b", 5, "x", &[], (4, 4, 7));
        let a = record("a", 5, "y", &[], (4, 4, 7));
        for order in [[ab.clone(), a.clone()], [a.clone(), ab.clone()]] {
            let mut live = Membership::new(layout());
            assert_eq!(events_of(&mut live, &order), ["join 5 @4"]);
            assert_eq!(live.get(5).map(|s| s.group.as_str()), Some("a-b"));
            let mut snap = Membership::new(layout());
            snap.reload(&order, 4);
            assert_eq!(state(&snap), state(&live));
        }
    }

    #[test]
    fn the_next_claim_is_promoted_when_the_holder_goes() {
        let mut m = Membership::new(layout());
        let claims = [
            record("a", 5, "a", &[], (2, 2, 7)),
            record("b", 5, "b", &[], (3, 3, 7)),
            record("c", 5, "c", &[], (4, 4, 7)),
        ];
        assert_eq!(events_of(&mut m, &claims), ["join 5 @2"]);
        assert_eq!((m.shadowed(), m.len()), (2, 1));
        // Deleting a shadowed claim changes nothing.
        assert!(m.apply(&[del("c", 5, 5)]).is_empty());
        // The holder deleted: the next claim by the rule is promoted.
        assert_eq!(
            summary(&m.apply(&[del("a", 5, 6)])),
            ["leave 5 @6", "join 5 @6"]
        );
        assert_eq!(m.get(5).map(|s| s.group.as_str()), Some("b"));
        // The holder becomes malformed: it leaves, and nobody is left to promote.
        let garbage = KeyValue {
            value: b"garbage".to_vec(),
            mod_revision: 7,
            ..claims[1].clone()
        };
        assert_eq!(events_of(&mut m, &[garbage]), ["leave 5 @7"]);
        assert!(m.is_empty());
        assert_eq!(m.shadowed(), 2);
    }

    #[test]
    fn a_holder_and_its_rival_deleted_together_are_one_leave() {
        // Both keys on one lease: its expiry deletes them in one revision. The rival is never
        // announced, although it holds the id for an instant between the two deletes.
        let mut m = Membership::new(layout());
        events_of(
            &mut m,
            &[
                record("a", 5, "a", &[], (2, 2, 7)),
                record("b", 5, "b", &[], (3, 3, 7)),
            ],
        );
        let ev = m.apply(&[del("a", 5, 9), del("b", 5, 9)]);
        assert_eq!(summary(&ev), ["leave 5 @9"]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_promoted_claim_is_not_counted_again_when_pushed_aside_again() {
        let mut m = Membership::new(layout());
        let lobby = record("lobby", 5, "l", &[], (2, 2, 7));
        let game = record("game", 5, "g", &[], (3, 3, 7));
        events_of(&mut m, &[lobby.clone(), game.clone()]);
        assert_eq!(m.shadowed(), 1);
        // lobby/5 loses its lease: game/5 is promoted.
        let bare = KeyValue {
            lease: 0,
            mod_revision: 4,
            ..lobby.clone()
        };
        assert_eq!(events_of(&mut m, &[bare]), ["leave 5 @4", "join 5 @4"]);
        // lobby/5 gets it back: game/5, same version, is pushed aside again; not recounted.
        let back = KeyValue {
            mod_revision: 5,
            ..lobby
        };
        assert_eq!(events_of(&mut m, &[back]), ["leave 5 @5", "join 5 @5"]);
        assert_eq!(m.shadowed(), 1);
        assert_eq!(m.get(5).map(|s| s.group.as_str()), Some("lobby"));
    }

    #[test]
    fn live_and_snapshot_agree_on_every_rule() {
        let mut live = Membership::new(layout());
        let mut etcd: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let batches = [
            vec![
                record("a", 1, "h", &[], (2, 2, 7)),
                record("b", 1, "h", &[], (2, 2, 7)),
            ],
            vec![record("a", 2, "h", &[], (3, 3, 0))],
            vec![record("b", 2, "h", &[], (4, 4, 7))],
            vec![record("a", 2, "h", &[], (3, 5, 7))],
            vec![record("b", 1, "new", &[], (2, 6, 7))],
            vec![record("a", 1, "h", &[], (2, 7, 0))],
        ];
        for batch in batches {
            let revision = batch[0].mod_revision;
            events_of(&mut live, &batch);
            for kv in batch {
                etcd.insert(kv.key.clone(), kv);
            }
            let mut snap = Membership::new(layout());
            snap.reload(&etcd.values().cloned().collect::<Vec<_>>(), revision);
            assert_eq!(state(&snap), state(&live), "at {revision}");
        }
        // At the end: /dr/b/1 holds 1 with its new host, /dr/a/2 (created earlier, lease back)
        // holds 2.
        assert_eq!(live.get(1).map(|s| s.host.as_str()), Some("new"));
        assert_eq!(live.get(2).map(|s| s.group.as_str()), Some("a"));
    }
}
