//! Evict exactly one registration, never a newer holder of the same id: the owner guard with
//! what was read (the key's create revision, the slot's lease), then delete both, and the
//! reports filed against it when there are any.
//!
//! ```text
//! if server at its create revision and slot on its lease
//! then delete server, delete slot [, delete reports/<id>/<create revision>/…]
//! ```
//!
//! An operator's eviction ([`crate::admin::Admin::evict`]) removes the registration *with its
//! lease* instead: the same guard without a branch ([`check`]), then a revoke of the lease it
//! names, which deletes key and slot in one revision. Deleting first and revoking after would
//! let a live holder restore its key on the still-live lease in between, so its peers would
//! see a leave and a join for the restore, then again for the revoke and the re-registration.

use etcd_client::{DeleteOptions, Txn, TxnOp};

use super::{Answer, Owner};

/// Builds the eviction of `peer`; `reports` is the prefix of the reports filed against it
/// (deleted with it), if any.
pub(crate) fn build(peer: &Owner, reports: Option<&str>) -> Txn {
    let mut ops = peer.delete_both().to_vec();
    if let Some(prefix) = reports {
        ops.push(TxnOp::delete(
            prefix,
            Some(DeleteOptions::new().with_prefix()),
        ));
    }
    Txn::new().when(peer.guard()).and_then(ops)
}

/// The owner guard alone, nothing written: does `peer` still hold its id on its lease? Sent
/// before an operator's eviction revokes that lease (read with [`read`]).
pub(crate) fn check(peer: &Owner) -> Txn {
    Txn::new().when(peer.guard())
}

/// What the eviction's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evicted {
    /// Deleted, at `revision`.
    Done {
        /// The revision of the deletion.
        revision: i64,
    },
    /// The registration changed since it was read (gone, or a newer one): nothing deleted.
    Changed,
}

/// Reads the answer of [`build`].
pub(crate) fn read(answer: &Answer) -> Evicted {
    if answer.succeeded {
        Evicted::Done {
            revision: answer.revision,
        }
    } else {
        Evicted::Changed
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{describe, owner};
    use super::*;

    const GUARDED_DELETE: [&str; 4] = [
        "if create(/darkrift/game/7) == 42",
        "if lease(/darkrift.alloc/slot/00007) == 9",
        "then delete /darkrift/game/7",
        "then delete /darkrift.alloc/slot/00007",
    ];

    #[test]
    fn an_operator_eviction_deletes_key_and_slot_behind_the_guard() {
        assert_eq!(describe(&build(&owner(), None)), GUARDED_DELETE);
    }

    #[test]
    fn an_eviction_on_reports_also_deletes_the_reports() {
        let lines = describe(&build(&owner(), Some("/darkrift.alloc/reports/00007/42/")));
        assert_eq!(lines[..4], GUARDED_DELETE);
        assert_eq!(
            lines[4..],
            ["then delete /darkrift.alloc/reports/00007/42/../darkrift.alloc/reports/00007/420"]
        );
    }

    #[test]
    fn an_operator_eviction_checks_the_guard_and_writes_nothing() {
        assert_eq!(describe(&check(&owner())), GUARDED_DELETE[..2]);
    }

    #[test]
    fn a_failed_guard_means_the_registration_changed() {
        let mut answer = Answer {
            succeeded: true,
            revision: 12,
            ..Answer::default()
        };
        assert_eq!(read(&answer), Evicted::Done { revision: 12 });
        answer.succeeded = false;
        assert_eq!(read(&answer), Evicted::Changed);
    }
}
