//! A reserved id: held in the allocator's slot on our lease, not yet announced to peers.
//!
//! Reserve-then-announce lets a server hold its id before it can serve (DarkRift asks for its
//! id before its listeners start, and a peer told of a server that still refuses connections
//! waits 4 s before it dials again). The allocation writes only the slot; the server key, the
//! thing peers watch, is written later by [`announce`], guarded by the reservation:
//!
//! ```text
//! announce:  if slot on our lease and slot names our key and our key absent
//!            then put key = record (our lease)
//!            else get key, get slot                       (what stopped it)
//! release:   if slot on our lease and our key absent  then delete slot
//! ```
//!
//! A reservation is a state of its own for every own-key check: no server key exists yet, so
//! "our key was removed" must not be concluded from its absence (no restore, no premature join).
//! The slot alone carries the uniqueness guarantee, exactly as during an allocation.

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp};

use super::{absent, Answer, OpAnswer};

/// A reservation: the id's slot on `lease`, naming `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    /// The server key the announcement will create (`<prefix>/<group>/<id>`).
    pub(crate) key: String,
    /// The id's slot key.
    pub(crate) slot: String,
    /// The lease the slot is bound to.
    pub(crate) lease: i64,
}

impl Reservation {
    /// The reservation guard: the slot is on our lease and names our key (the id is still
    /// ours and for this group).
    fn guard(&self) -> [Compare; 2] {
        [
            Compare::lease(self.slot.as_str(), CompareOp::Equal, self.lease),
            Compare::value(self.slot.as_str(), CompareOp::Equal, self.key.as_str()),
        ]
    }
}

/// Builds the announcement: the server key, holding `record`, on the reservation's lease.
pub(crate) fn announce(reservation: &Reservation, record: &[u8]) -> Txn {
    let [on_lease, names_key] = reservation.guard();
    Txn::new()
        .when([on_lease, names_key, absent(&reservation.key)])
        .and_then([TxnOp::put(
            reservation.key.as_str(),
            record,
            Some(PutOptions::new().with_lease(reservation.lease)),
        )])
        .or_else([
            TxnOp::get(reservation.key.as_str(), None),
            TxnOp::get(reservation.slot.as_str(), None),
        ])
}

/// What the announcement's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Announced {
    /// The server key was created at `revision`: the registration's identity from now on.
    Created {
        /// Create revision of the server key.
        revision: i64,
    },
    /// An earlier send of this very announcement succeeded (its answer was lost): the key is
    /// on our lease, created at `revision`.
    Already {
        /// Create revision of the server key.
        revision: i64,
    },
    /// The slot is no longer ours (the lease was lost, or an operator removed it), or the key
    /// is someone else's: nothing written.
    Lost,
}

/// Reads the answer of [`announce`] sent for `reservation`.
pub(crate) fn read_announce(answer: &Answer, reservation: &Reservation) -> Announced {
    if answer.succeeded {
        return Announced::Created {
            revision: answer.revision,
        };
    }
    let key = match answer.ops.first() {
        Some(OpAnswer::Get(kvs)) => kvs.first(),
        _ => None,
    };
    let slot_ours = matches!(
        answer.ops.get(1),
        Some(OpAnswer::Get(kvs))
            if kvs.first().is_some_and(|kv| kv.lease == reservation.lease
                && kv.value == reservation.key.as_bytes())
    );
    match key {
        Some(kv) if slot_ours && kv.lease == reservation.lease && reservation.lease != 0 => {
            Announced::Already {
                revision: kv.create_revision,
            }
        }
        _ => Announced::Lost,
    }
}

/// Builds the release of a reservation never announced: its slot, if still ours and no key
/// was written under it.
pub(crate) fn release(reservation: &Reservation) -> Txn {
    let [on_lease, _] = reservation.guard();
    Txn::new()
        .when([on_lease, absent(&reservation.key)])
        .and_then([TxnOp::delete(
            reservation.slot.as_str(),
            None::<DeleteOptions>,
        )])
}

#[cfg(test)]
mod tests {
    use super::super::testing::describe;
    use super::super::Kv;
    use super::*;

    fn reservation() -> Reservation {
        Reservation {
            key: "/darkrift/game/7".into(),
            slot: "/darkrift.alloc/slot/00007".into(),
            lease: 9,
        }
    }

    #[test]
    fn the_announcement_is_guarded_by_the_reservation() {
        assert_eq!(
            describe(&announce(&reservation(), b"rec")),
            [
                "if lease(/darkrift.alloc/slot/00007) == 9",
                "if value(/darkrift.alloc/slot/00007) == \"/darkrift/game/7\"",
                "if create(/darkrift/game/7) == 0",
                "then put /darkrift/game/7 = \"rec\" lease 9",
                "else get /darkrift/game/7",
                "else get /darkrift.alloc/slot/00007",
            ]
        );
    }

    #[test]
    fn the_release_deletes_only_an_unannounced_slot_of_ours() {
        assert_eq!(
            describe(&release(&reservation())),
            [
                "if lease(/darkrift.alloc/slot/00007) == 9",
                "if create(/darkrift/game/7) == 0",
                "then delete /darkrift.alloc/slot/00007",
            ]
        );
    }

    fn failed(key: Option<Kv>, slot: Option<Kv>) -> Answer {
        Answer {
            succeeded: false,
            revision: 50,
            ops: vec![
                OpAnswer::Get(key.into_iter().collect()),
                OpAnswer::Get(slot.into_iter().collect()),
            ],
        }
    }

    fn kv(key: &str, value: &str, lease: i64, create_revision: i64) -> Kv {
        Kv {
            key: key.into(),
            value: value.into(),
            lease,
            create_revision,
        }
    }

    #[test]
    fn answers_read_as_created_already_or_lost() {
        let r = reservation();
        let won = Answer {
            succeeded: true,
            revision: 44,
            ops: vec![OpAnswer::Put],
        };
        assert_eq!(read_announce(&won, &r), Announced::Created { revision: 44 });
        let slot = || Some(kv(&r.slot, &r.key, 9, 40));
        // Our own earlier announcement whose answer was lost.
        let ours = failed(Some(kv(&r.key, "rec", 9, 44)), slot());
        assert_eq!(
            read_announce(&ours, &r),
            Announced::Already { revision: 44 }
        );
        // The slot went (lease lost): nothing is ours, whatever the key.
        assert_eq!(read_announce(&failed(None, None), &r), Announced::Lost);
        assert_eq!(
            read_announce(&failed(Some(kv(&r.key, "rec", 9, 44)), None), &r),
            Announced::Lost
        );
        // An operator's key on another lease under our slot: not ours to claim.
        assert_eq!(
            read_announce(&failed(Some(kv(&r.key, "x", 0, 45)), slot()), &r),
            Announced::Lost
        );
        // The slot now on another lease (someone else's id).
        assert_eq!(
            read_announce(
                &failed(
                    Some(kv(&r.key, "rec", 11, 46)),
                    Some(kv(&r.slot, &r.key, 11, 46))
                ),
                &r
            ),
            Announced::Lost
        );
    }
}
