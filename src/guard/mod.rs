//! Every guarded write as a pure builder and a pure reader: no I/O here.
//!
//! A registration is *owned* by whoever holds its server key at the key's create revision
//! and its slot on a given lease ([`Owner`]); [`Owner::guard`] is that proof as two compares,
//! and every write that touches someone's registration is one transaction behind it (the
//! style of etcd's `concurrency.Mutex`: one `IsOwner()` compare, reused by every write):
//!
//! | write | builder | reader | who sends it |
//! |---|---|---|---|
//! | allocate | [`crate::alloc::build_txn`] | [`crate::alloc::read_answer`] | registration |
//! | restore / repair | [`restore::build`] | [`restore::read`] | registration supervisor |
//! | re-register | [`reregister::build`] | [`reregister::read`] | registration supervisor |
//! | deregister | [`deregister::build`] | [`deregister::read`] | registration |
//! | report a peer | [`report::build`] | [`report::read`] | eviction (on a connection failure) |
//! | evict | [`evict::build`] | [`evict::read`] | eviction (K reports), admin |
//!
//! A builder returns the `etcd_client::Txn` to send; its answer is converted once into the
//! plain [`Answer`] (`Answer::from(&resp)`) and a reader turns that into what it means. Both
//! halves are unit-tested without etcd: builders through `testing::describe`, readers on
//! hand-written answers.

pub(crate) mod deregister;
pub(crate) mod evict;
pub(crate) mod report;
pub(crate) mod reregister;
pub(crate) mod reservation;
pub(crate) mod restore;
#[cfg(test)]
pub(crate) mod testing;

use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, TxnOp, TxnResponse};

use crate::keys::KeyLayout;

/// One registration of an id as it was created, whoever holds it: its server key, its slot,
/// and the key's create revision (its identity: a re-creation of the same key is another
/// registration). A report names one; an [`Owner`] is one on a given lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    /// The server key (`<prefix>/<group>/<id>`).
    pub(crate) key: String,
    /// The id's slot key (`<prefix>.alloc/slot/<id>`).
    pub(crate) slot: String,
    /// The server key's create revision: the registration's identity.
    pub(crate) create_revision: i64,
}

impl Instance {
    /// Registration `create_revision` of `id` at server key `key`, its slot as `layout` places
    /// it.
    pub(crate) fn new(layout: &KeyLayout, id: u16, key: String, create_revision: i64) -> Self {
        Instance {
            key,
            slot: layout.slot_key(id),
            create_revision,
        }
    }

    /// The compare that this registration still exists (its key not deleted, nor re-created).
    pub(crate) fn exists(&self) -> Compare {
        created_at(&self.key, self.create_revision)
    }

    /// This registration as held on `lease` (the lease its slot is bound to).
    pub(crate) fn on_lease(self, lease: i64) -> Owner {
        Owner {
            key: self.key,
            slot: self.slot,
            create_revision: self.create_revision,
            lease,
        }
    }
}

/// One registration's identity and lease: what a guarded write checks before touching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The server key (`<prefix>/<group>/<id>`).
    pub(crate) key: String,
    /// The id's slot key (`<prefix>.alloc/slot/<id>`).
    pub(crate) slot: String,
    /// The server key's create revision: the registration's identity.
    pub(crate) create_revision: i64,
    /// The lease the slot is bound to.
    pub(crate) lease: i64,
}

impl Owner {
    /// Registration `create_revision` of `id` at server key `key`, held on `lease`; its slot
    /// as `layout` places it (so key and slot always name the same id).
    pub(crate) fn new(
        layout: &KeyLayout,
        id: u16,
        key: String,
        create_revision: i64,
        lease: i64,
    ) -> Self {
        Instance::new(layout, id, key, create_revision).on_lease(lease)
    }

    /// The owner guard: the server key is still at our create revision (not deleted and
    /// re-created by anyone, us included) and the slot is still on our lease (the id is
    /// still ours).
    pub(crate) fn guard(&self) -> [Compare; 2] {
        [
            created_at(&self.key, self.create_revision),
            on_lease(&self.slot, self.lease),
        ]
    }

    /// Puts `value` at `key` on the owner's lease.
    pub(crate) fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> TxnOp {
        put_on_lease(key, value, self.lease)
    }

    /// Deletes the server key and the slot.
    pub(crate) fn delete_both(&self) -> [TxnOp; 2] {
        [
            TxnOp::delete(self.key.as_str(), None::<DeleteOptions>),
            TxnOp::delete(self.slot.as_str(), None::<DeleteOptions>),
        ]
    }
}

/// `key` exists at create revision `create_revision` (0: does not exist).
pub(crate) fn created_at(key: &str, create_revision: i64) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, create_revision)
}

/// `key` is bound to `lease`.
pub(crate) fn on_lease(key: &str, lease: i64) -> Compare {
    Compare::lease(key, CompareOp::Equal, lease)
}

/// Puts `value` at `key`, bound to `lease`.
pub(crate) fn put_on_lease(key: &str, value: impl Into<Vec<u8>>, lease: i64) -> TxnOp {
    TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
}

/// `key` does not exist (create revision 0).
pub(crate) fn absent(key: &str) -> Compare {
    created_at(key, 0)
}

/// A transaction's answer, as plain data: what readers look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The compares held (the success branch ran).
    pub(crate) succeeded: bool,
    /// The header revision (0 when etcd sent no header).
    pub(crate) revision: i64,
    /// One answer per operation of the branch that ran, in order.
    pub(crate) ops: Vec<OpAnswer>,
}

/// One operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpAnswer {
    /// A put.
    Put,
    /// A delete, and how many keys it removed.
    Delete(i64),
    /// A read: the keys found.
    Get(Vec<Kv>),
    /// A nested transaction.
    Txn(Answer),
}

/// A key as a read returned it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Kv {
    /// The key.
    pub(crate) key: Vec<u8>,
    /// The value.
    pub(crate) value: Vec<u8>,
    /// Its lease (0: none).
    pub(crate) lease: i64,
    /// Its create revision.
    pub(crate) create_revision: i64,
}

impl Answer {
    /// The nested transaction answer at the top of the branch that ran, if that is what it is.
    pub(crate) fn nested(&self) -> Option<&Answer> {
        match self.ops.first() {
            Some(OpAnswer::Txn(inner)) => Some(inner),
            _ => None,
        }
    }
}

impl From<&TxnResponse> for Answer {
    fn from(resp: &TxnResponse) -> Self {
        Answer {
            succeeded: resp.succeeded(),
            revision: resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
            ops: resp.op_responses().iter().map(OpAnswer::from).collect(),
        }
    }
}

impl From<&etcd_client::TxnOpResponse> for OpAnswer {
    fn from(op: &etcd_client::TxnOpResponse) -> Self {
        use etcd_client::TxnOpResponse as R;
        match op {
            R::Put(_) => OpAnswer::Put,
            R::Delete(delete) => OpAnswer::Delete(delete.deleted()),
            R::Get(get) => OpAnswer::Get(
                get.kvs()
                    .iter()
                    .map(|kv| Kv {
                        key: kv.key().to_vec(),
                        value: kv.value().to_vec(),
                        lease: kv.lease(),
                        create_revision: kv.create_revision(),
                    })
                    .collect(),
            ),
            R::Txn(inner) => OpAnswer::Txn(Answer::from(inner)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{describe, owner};
    use super::*;

    #[test]
    fn the_owner_guard_is_our_create_revision_and_our_slot_lease() {
        let txn = etcd_client::Txn::new().when(owner().guard());
        assert_eq!(
            describe(&txn),
            [
                "if create(/darkrift/game/7) == 42",
                "if lease(/darkrift.alloc/slot/00007) == 9",
            ]
        );
    }

    #[test]
    fn nested_is_the_first_op_when_it_is_a_transaction() {
        let inner = Answer {
            succeeded: true,
            ..Answer::default()
        };
        let outer = Answer {
            ops: vec![OpAnswer::Txn(inner.clone()), OpAnswer::Put],
            ..Answer::default()
        };
        assert_eq!(outer.nested(), Some(&inner));
        let flat = Answer {
            ops: vec![OpAnswer::Put],
            ..Answer::default()
        };
        assert_eq!(flat.nested(), None);
    }
}
