//! Does what the watcher applied touch our own key? A pure decision over what it announces
//! ([`Applied`]): the supervisor listens, the watcher does not know it exists.
//!
//! A yes makes the supervisor run its guarded restore check at once (instead of at the next
//! once-per-TTL check). A false yes costs one transaction that finds everything intact, so
//! when in doubt (a missed announcement) the answer is yes; a false no would leave an
//! operator's edit in place until the periodic check.

use crate::membership::KvChange;
use crate::view::Applied;

/// Our own server key, as the supervisor last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnKey {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
    /// The lease our key is bound to.
    pub(crate) lease: i64,
    /// The record we wrote: a put of anything else on our key is someone else's edit.
    pub(crate) record: Vec<u8>,
}

/// True when `applied` may have deleted, replaced or edited our key:
/// - a delete of it after we created it, or a put that re-created it (someone else's key now);
/// - a put that left it off our lease (an `etcdctl put` without `--lease`, or on another
///   lease) or holding another record: the key would outlive a crash of this server, or lie;
/// - a snapshot newer than our key that does not hold it (`holds` asks the view).
///
/// Our own writes (the record on our lease) match none of these.
pub(crate) fn touched(own: &OwnKey, applied: &Applied, holds: impl FnOnce() -> bool) -> bool {
    match applied {
        Applied::Changes(changes) => changes.iter().any(|change| match change {
            KvChange::Delete { key, revision } => {
                *key == own.key && *revision > own.create_revision
            }
            KvChange::Put(kv) => {
                kv.key == own.key
                    && (kv.create_revision > own.create_revision
                        || kv.lease != own.lease
                        || kv.value != own.record)
            }
        }),
        Applied::Snapshot { revision } => *revision > own.create_revision && !holds(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::membership::KeyValue;

    fn own() -> OwnKey {
        OwnKey {
            key: b"/p/game/7".to_vec(),
            create_revision: 10,
            lease: 5,
            record: b"ours".to_vec(),
        }
    }

    fn put(key: &[u8], create_revision: i64, lease: i64, value: &[u8]) -> KvChange {
        KvChange::Put(KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision,
            mod_revision: create_revision.max(11),
            lease,
        })
    }

    fn changes(changes: Vec<KvChange>) -> Applied {
        Applied::Changes(Arc::new(changes))
    }

    fn never_asked() -> bool {
        unreachable!("only a snapshot asks the view")
    }

    #[test]
    fn our_own_writes_and_other_keys_touch_nothing() {
        let own = own();
        let ours = put(b"/p/game/7", 10, 5, b"ours");
        let other = put(b"/p/game/8", 12, 0, b"junk");
        let gone = KvChange::Delete {
            key: b"/p/game/8".to_vec(),
            revision: 13,
        };
        assert!(!touched(
            &own,
            &changes(vec![ours, other, gone]),
            never_asked
        ));
    }

    #[test]
    fn a_delete_after_our_creation_touches_it_an_older_one_does_not() {
        let own = own();
        let delete = |revision| KvChange::Delete {
            key: b"/p/game/7".to_vec(),
            revision,
        };
        assert!(touched(&own, &changes(vec![delete(11)]), never_asked));
        // The previous holder's delete, announced after we re-created the key.
        assert!(!touched(&own, &changes(vec![delete(9)]), never_asked));
    }

    #[test]
    fn a_recreation_a_stripped_lease_or_another_value_touch_it() {
        let own = own();
        for edit in [
            put(b"/p/game/7", 12, 9, b"ours"),
            put(b"/p/game/7", 10, 0, b"ours"),
            put(b"/p/game/7", 10, 6, b"ours"),
            put(b"/p/game/7", 10, 5, b"edited"),
        ] {
            assert!(
                touched(&own, &changes(vec![edit.clone()]), never_asked),
                "{edit:?}"
            );
        }
    }

    #[test]
    fn a_snapshot_touches_it_only_when_newer_and_without_our_key() {
        let own = own();
        assert!(touched(&own, &Applied::Snapshot { revision: 11 }, || false));
        assert!(!touched(&own, &Applied::Snapshot { revision: 11 }, || true));
        // A snapshot older than our key cannot hold it: no news.
        assert!(!touched(
            &own,
            &Applied::Snapshot { revision: 9 },
            never_asked
        ));
    }
}
