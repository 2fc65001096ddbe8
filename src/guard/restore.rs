//! Restore or repair our own registration: one transaction that checks our server key and
//! slot and puts back whatever someone else deleted or edited, never touching another
//! registration ("ours": our create revision for the server key, our lease for the slot).
//!
//! ```text
//! if server is ours, on our lease, holding our record, and slot is ours  → intact
//! elif server is ours and slot is ours          → put server (our record, our lease)
//! elif server is ours and slot is absent        → put slot, put server
//! elif server is absent and slot is ours        → put server (new create revision)
//! elif server is absent and slot is absent      → put both   (new create revision)
//! else                                          → not ours any more
//! ```
//!
//! The second line undoes an operator's `etcdctl put` of our key without `--lease` (or on
//! another lease, or with another value): the create revision survives such a put, so it
//! still proves the key is ours, and the slot on our lease proves our id still is. With the
//! key-removed policy `stop`, the last three lines are left out: a removal is not undone.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{absent, Answer, Owner};

/// Builds the restore transaction for `owner`, whose key must hold `record`.
/// `restore_removed` is false under the key-removed policy `stop`.
pub(crate) fn build(owner: &Owner, record: &[u8], restore_removed: bool) -> Txn {
    let server_is = |rev: i64| Compare::create_revision(owner.key.as_str(), CompareOp::Equal, rev);
    let [ours, slot_ours] = owner.guard();
    let put_slot = || owner.put(&owner.slot, owner.key.as_str());
    let put_server = || owner.put(&owner.key, record);
    let both_absent = Txn::new()
        .when([server_is(0), absent(&owner.slot)])
        .and_then([put_slot(), put_server()]);
    let server_absent = Txn::new()
        .when([server_is(0), slot_ours.clone()])
        .and_then([put_server()])
        .or_else([TxnOp::txn(both_absent)]);
    let slot_missing = Txn::new()
        .when([ours.clone(), absent(&owner.slot)])
        .and_then([
            put_slot(),
            // The server key may have lost its lease too; a re-put of the same record on the
            // same lease is no change to anyone.
            put_server(),
        ])
        .or_else([TxnOp::txn(server_absent)]);
    let edited = Txn::new()
        .when([ours.clone(), slot_ours.clone()])
        .and_then([put_server()]);
    let edited = if restore_removed {
        edited.or_else([TxnOp::txn(slot_missing)])
    } else {
        edited
    };
    Txn::new()
        .when([
            ours,
            Compare::lease(owner.key.as_str(), CompareOp::Equal, owner.lease),
            Compare::value(owner.key.as_str(), CompareOp::Equal, record),
            slot_ours,
        ])
        .or_else([TxnOp::txn(edited)])
}

/// What the restore transaction found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restored {
    /// Key and slot were intact; nothing written.
    Intact,
    /// Our key had been put off our lease or with another value; our record is back on it.
    Record,
    /// Our slot had been deleted; it is back (and the record re-put).
    Slot,
    /// Our server key had been deleted; it is back, created at `revision` (our new identity).
    Key {
        /// The new create revision of the server key.
        revision: i64,
    },
    /// Neither ours nor absent (or, under the `stop` policy, removed): not restored.
    NotOurs,
}

/// Reads the answer of [`build`]: which level of the chain succeeded.
pub(crate) fn read(answer: &Answer) -> Restored {
    if answer.succeeded {
        return Restored::Intact;
    }
    let mut level = 0;
    let mut at = answer;
    while let Some(inner) = at.nested() {
        level += 1;
        if inner.succeeded {
            return match level {
                1 => Restored::Record,
                2 => Restored::Slot,
                _ => Restored::Key {
                    revision: answer.revision,
                },
            };
        }
        at = inner;
    }
    Restored::NotOurs
}

#[cfg(test)]
mod tests {
    use super::super::testing::{describe, owner};
    use super::super::OpAnswer;
    use super::*;

    const PUT_SLOT: &str = "put /darkrift.alloc/slot/00007 = \"/darkrift/game/7\" lease 9";
    const PUT_KEY: &str = "put /darkrift/game/7 = \"rec\" lease 9";

    #[test]
    fn checks_everything_then_repairs_then_restores_level_by_level() {
        let lines = describe(&build(&owner(), b"rec", true));
        let expected = [
            "if create(/darkrift/game/7) == 42".to_owned(),
            "if lease(/darkrift/game/7) == 9".into(),
            "if value(/darkrift/game/7) == \"rec\"".into(),
            "if lease(/darkrift.alloc/slot/00007) == 9".into(),
            "else txn".into(),
            "  if create(/darkrift/game/7) == 42".into(),
            "  if lease(/darkrift.alloc/slot/00007) == 9".into(),
            format!("  then {PUT_KEY}"),
            "  else txn".into(),
            "    if create(/darkrift/game/7) == 42".into(),
            "    if create(/darkrift.alloc/slot/00007) == 0".into(),
            format!("    then {PUT_SLOT}"),
            format!("    then {PUT_KEY}"),
            "    else txn".into(),
            "      if create(/darkrift/game/7) == 0".into(),
            "      if lease(/darkrift.alloc/slot/00007) == 9".into(),
            format!("      then {PUT_KEY}"),
            "      else txn".into(),
            "        if create(/darkrift/game/7) == 0".into(),
            "        if create(/darkrift.alloc/slot/00007) == 0".into(),
            format!("        then {PUT_SLOT}"),
            format!("        then {PUT_KEY}"),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn under_the_stop_policy_only_an_edit_is_repaired() {
        let lines = describe(&build(&owner(), b"rec", false));
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert_eq!(lines[7], format!("  then {PUT_KEY}"));
        assert!(!lines.iter().any(|l| l.contains("== 0")), "{lines:#?}");
    }

    /// An answer whose chain failed down to `level` (0 = the outer compare) and succeeded
    /// there, or failed throughout when `level` is `None`; `depth` levels in all.
    fn chain(succeeded_at: Option<usize>, depth: usize) -> Answer {
        let mut answer = Answer {
            succeeded: succeeded_at == Some(depth),
            ..Answer::default()
        };
        for level in (0..depth).rev() {
            answer = Answer {
                succeeded: succeeded_at == Some(level),
                revision: 77,
                ops: vec![OpAnswer::Txn(answer)],
            };
        }
        answer
    }

    #[test]
    fn the_level_that_succeeded_says_what_was_restored() {
        assert_eq!(read(&chain(Some(0), 4)), Restored::Intact);
        assert_eq!(read(&chain(Some(1), 4)), Restored::Record);
        assert_eq!(read(&chain(Some(2), 4)), Restored::Slot);
        assert_eq!(read(&chain(Some(3), 4)), Restored::Key { revision: 77 });
        assert_eq!(read(&chain(Some(4), 4)), Restored::Key { revision: 77 });
        assert_eq!(read(&chain(None, 4)), Restored::NotOurs);
        // The `stop` policy's shorter chain.
        assert_eq!(read(&chain(Some(1), 1)), Restored::Record);
        assert_eq!(read(&chain(None, 1)), Restored::NotOurs);
    }
}
