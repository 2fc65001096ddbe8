//! Re-register the same id with a fresh lease after ours was lost: create the slot and the
//! server key only if both are absent; otherwise read who holds them.
//!
//! ```text
//! if slot absent and server absent  then put slot, put server (new lease)
//! else get slot, get server
//! ```
//!
//! The failure branch's reads tell three cases apart: our *new* lease holds them (an earlier
//! try of this very request succeeded and only its answer was lost), only our *old* lease
//! holds them (its revoke has not got through yet: revoke it again and retry), or another
//! registration does (the id was taken while we were away).

use etcd_client::{Txn, TxnOp};

use super::{absent, Answer, OpAnswer, Owner};

/// Builds the re-registration of `owner.key` and `owner.slot` on `owner.lease` (the new
/// lease; `owner.create_revision` is not used: the keys are created anew). Unless
/// `announce`, only the slot is written: a reservation lost is re-reserved, not announced.
pub(crate) fn build(owner: &Owner, record: &[u8], announce: bool) -> Txn {
    let mut puts = vec![owner.put(&owner.slot, owner.key.as_str())];
    if announce {
        puts.push(owner.put(&owner.key, record));
    }
    Txn::new()
        .when([absent(&owner.slot), absent(&owner.key)])
        .and_then(puts)
        .or_else([
            TxnOp::get(owner.slot.as_str(), None),
            TxnOp::get(owner.key.as_str(), None),
        ])
}

/// What the re-registration's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reregistered {
    /// The id is ours again; the keys were created at `revision`.
    Done {
        /// The new create revision of the server key (and slot).
        revision: i64,
    },
    /// Only our old lease still holds the keys: revoke it again, then retry.
    OldLeaseHolds,
    /// Another registration holds the id.
    Taken,
}

/// Reads the answer of [`build`] sent with lease `lease`; `old_lease` is the lost lease (0 if
/// none is known).
pub(crate) fn read(answer: &Answer, lease: i64, old_lease: i64) -> Reregistered {
    if answer.succeeded {
        return Reregistered::Done {
            revision: answer.revision,
        };
    }
    // The first key found (the slot, else the server key) of each read.
    let found: Vec<_> = answer
        .ops
        .iter()
        .filter_map(|op| match op {
            OpAnswer::Get(kvs) => kvs.first(),
            _ => None,
        })
        .collect();
    if found.first().map(|kv| kv.lease) == Some(lease) {
        // A retried request whose first attempt succeeded.
        return Reregistered::Done {
            revision: found[0].create_revision,
        };
    }
    if old_lease != 0 && found.iter().all(|kv| kv.lease == old_lease) {
        return Reregistered::OldLeaseHolds;
    }
    Reregistered::Taken
}

#[cfg(test)]
mod tests {
    use super::super::testing::{describe, owner};
    use super::super::Kv;
    use super::*;

    #[test]
    fn creates_both_keys_only_where_nothing_is() {
        assert_eq!(
            describe(&build(&owner(), b"rec", true)),
            [
                "if create(/darkrift.alloc/slot/00007) == 0",
                "if create(/darkrift/game/7) == 0",
                "then put /darkrift.alloc/slot/00007 = \"/darkrift/game/7\" lease 9",
                "then put /darkrift/game/7 = \"rec\" lease 9",
                "else get /darkrift.alloc/slot/00007",
                "else get /darkrift/game/7",
            ]
        );
    }

    #[test]
    fn a_lost_reservation_is_reserved_again_not_announced() {
        assert_eq!(
            describe(&build(&owner(), b"rec", false)),
            [
                "if create(/darkrift.alloc/slot/00007) == 0",
                "if create(/darkrift/game/7) == 0",
                "then put /darkrift.alloc/slot/00007 = \"/darkrift/game/7\" lease 9",
                "else get /darkrift.alloc/slot/00007",
                "else get /darkrift/game/7",
            ]
        );
    }

    fn found(leases: &[Option<(i64, i64)>]) -> Answer {
        Answer {
            succeeded: false,
            revision: 100,
            ops: leases
                .iter()
                .map(|l| {
                    OpAnswer::Get(
                        l.iter()
                            .map(|&(lease, create_revision)| Kv {
                                lease,
                                create_revision,
                                ..Kv::default()
                            })
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn success_is_done_at_the_header_revision() {
        let answer = Answer {
            succeeded: true,
            revision: 55,
            ops: vec![OpAnswer::Put, OpAnswer::Put],
        };
        assert_eq!(read(&answer, 9, 3), Reregistered::Done { revision: 55 });
    }

    #[test]
    fn our_new_lease_on_the_keys_is_our_own_lost_answer() {
        let answer = found(&[Some((9, 50)), Some((9, 50))]);
        assert_eq!(read(&answer, 9, 3), Reregistered::Done { revision: 50 });
        // The slot gone meanwhile: the server key's lease decides.
        let answer = found(&[None, Some((9, 51))]);
        assert_eq!(read(&answer, 9, 3), Reregistered::Done { revision: 51 });
    }

    #[test]
    fn only_the_old_lease_is_retried_anything_else_is_taken() {
        assert_eq!(
            read(&found(&[Some((3, 10)), Some((3, 10))]), 9, 3),
            Reregistered::OldLeaseHolds
        );
        assert_eq!(
            read(&found(&[None, Some((3, 10))]), 9, 3),
            Reregistered::OldLeaseHolds
        );
        assert_eq!(
            read(&found(&[Some((4, 10)), Some((3, 10))]), 9, 3),
            Reregistered::Taken
        );
        // No old lease known: whoever holds it took it.
        assert_eq!(
            read(&found(&[Some((3, 10)), None]), 9, 0),
            Reregistered::Taken
        );
        // A lease-less key (an operator's put) is not our old lease.
        assert_eq!(
            read(&found(&[None, Some((0, 10))]), 9, 3),
            Reregistered::Taken
        );
    }
}
