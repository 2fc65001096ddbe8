//! Deregister: delete our server key and slot only if they are still the ones we created, so
//! a stale handle never deletes a newer registration of the same id.
//!
//! ```text
//! if server at our create revision and slot on our lease  then delete server, delete slot
//! ```

use etcd_client::Txn;

use super::{Answer, Owner};

/// Builds the deregistration of `owner`.
pub(crate) fn build(owner: &Owner) -> Txn {
    Txn::new().when(owner.guard()).and_then(owner.delete_both())
}

/// Builds the departing mark that precedes [`build`]: `departing` (our record with its
/// `departing` flag set) put on our key, behind the same owner guard. A re-put of the same
/// announced record, so no watcher sees a leave or a join for it; the leave that follows
/// carries the flag.
pub(crate) fn mark_departing(owner: &Owner, departing: Vec<u8>) -> Txn {
    Txn::new()
        .when(owner.guard())
        .and_then([owner.put(&owner.key, departing)])
}

/// What the deregistration's answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deregistered {
    /// Our keys were deleted.
    Deleted,
    /// They were already gone or belong to another registration: nothing deleted.
    NotOurs,
}

/// Reads the answer of [`build`].
pub(crate) fn read(answer: &Answer) -> Deregistered {
    if answer.succeeded {
        Deregistered::Deleted
    } else {
        Deregistered::NotOurs
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{describe, owner};
    use super::*;

    #[test]
    fn deletes_both_keys_behind_the_owner_guard() {
        assert_eq!(
            describe(&build(&owner())),
            [
                "if create(/darkrift/game/7) == 42",
                "if lease(/darkrift.alloc/slot/00007) == 9",
                "then delete /darkrift/game/7",
                "then delete /darkrift.alloc/slot/00007",
            ]
        );
    }

    #[test]
    fn the_departing_mark_is_a_guarded_put_of_our_key_on_our_lease() {
        assert_eq!(
            describe(&mark_departing(&owner(), b"rec!".to_vec())),
            [
                "if create(/darkrift/game/7) == 42",
                "if lease(/darkrift.alloc/slot/00007) == 9",
                "then put /darkrift/game/7 = \"rec!\" lease 9",
            ]
        );
    }

    #[test]
    fn only_a_success_deleted_anything() {
        let mut answer = Answer {
            succeeded: true,
            ..Answer::default()
        };
        assert_eq!(read(&answer), Deregistered::Deleted);
        answer.succeeded = false;
        assert_eq!(read(&answer), Deregistered::NotOurs);
    }
}
