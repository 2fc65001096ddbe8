//! Taking a registration back after its keeper restarted: the agent's resume.
//!
//! An agent killed and restarted within the TTL must cost nothing: the client presents its
//! registration again (id and secret handle) and the registration goes on **on its own lease**
//! (no leave, no join, same create revision). Proof of ownership comes from etcd alone and
//! trusts no reader of it: the record holds the SHA-256 of the owner's handle
//! (`owner_token_hash`), and keys and lease ids, which every reader sees, prove nothing.
//!
//! ```text
//! key and slot on one live lease, record's owner hash ours  → adopt that lease   (no leave)
//! key and slot absent                                       → re-register the id (leave, join)
//! anything else (a reservation, another owner, a torn pair) → wait up to one TTL for it to go,
//!                                                             then re-register, or IdTaken
//! ```
//!
//! A reservation never announced has no record to prove ownership with, so it is waited out
//! like another owner's registration (its lease expires within the TTL, its keeper being gone).
//! Taking back one's own id is the only "preferred id" there is: another server's freed id is
//! never asked for, so the cursor's round-robin guarantee is untouched.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Txn, TxnOp};
use tokio::time::Instant;

use super::{Claim, Terms};
use crate::client::{retrying, retrying_txn};
use crate::error::{Error, Result};
use crate::guard::reregister::{self, Reregistered};
use crate::guard::{Answer, OpAnswer, Owner};
use crate::lease::LeaseSession;
use crate::record::{self, Registration};
use crate::shared::Shared;

/// What etcd holds for the id, as far as a resume cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// Key and slot on `lease`, the record's owner hash ours.
    Ours {
        lease: i64,
        create_revision: i64,
        record: Vec<u8>,
        position: u64,
    },
    /// Neither key nor slot.
    Free,
    /// Something else: a reservation, another owner, an operator's edit.
    Held {
        /// The lease holding the slot (or the key), 0 if none.
        lease: i64,
    },
}

/// The key and slot as read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Read {
    /// The server key: value, lease, create revision.
    pub(crate) key: Option<(Vec<u8>, i64, i64)>,
    /// The slot: value, lease.
    pub(crate) slot: Option<(Vec<u8>, i64)>,
}

/// Decides what the resume found (pure).
pub(crate) fn judge(read: &Read, server_key: &str, token_hash: &[u8]) -> Found {
    match (&read.key, &read.slot) {
        (None, None) => Found::Free,
        (Some((value, key_lease, create_revision)), Some((slot_value, slot_lease)))
            if key_lease == slot_lease
                && *key_lease != 0
                && slot_value.as_slice() == server_key.as_bytes()
                && !token_hash.is_empty()
                && record::owner_token_hash_of(value).as_deref() == Some(token_hash) =>
        {
            let position = record::decode_position(value).unwrap_or(0);
            Found::Ours {
                lease: *key_lease,
                create_revision: *create_revision,
                record: value.clone(),
                position,
            }
        }
        (key, slot) => Found::Held {
            lease: slot
                .as_ref()
                .map(|s| s.1)
                .or(key.as_ref().map(|k| k.1))
                .unwrap_or(0),
        },
    }
}

/// Resumes `registration` (whose owner token hash is set) under `id`: adopts its lease, or
/// registers the id again, or fails with [`Error::IdTaken`].
pub(crate) async fn resume(
    shared: &Arc<Shared>,
    registration: &Registration,
    id: u16,
    terms: Terms,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<(Claim, LeaseSession, bool)> {
    let server_key = shared.layout.server_key(registration.group(), id);
    let hash = registration.owner_token_hash().to_vec();
    // Another holder's lease, if its keeper is gone, expires within its TTL: wait that long
    // (plus a margin for etcd's own expiry pass), never longer.
    let mut give_up: Option<Instant> = None;
    loop {
        let read = read(shared, &server_key, id).await?;
        match judge(&read, &server_key, &hash) {
            Found::Ours {
                lease,
                create_revision,
                record,
                position,
            } => {
                if let Some((ttl, remaining)) = time_to_live(shared, lease).await? {
                    let lease = LeaseSession::adopt(&shared.pool, lease, ttl, remaining, gate);
                    tracing::info!(id, create_revision, "resumed on its own lease");
                    let claim = Claim {
                        id,
                        position,
                        server_key,
                        create_revision,
                        record,
                        terms: Terms {
                            lease_ttl: ttl,
                            announce: true,
                            ..terms
                        },
                        announced: true,
                    };
                    return Ok((claim, lease, true));
                }
                // Expired between the two reads: its keys go with it.
            }
            Found::Free => {
                if let Some(done) =
                    reregister_free(shared, registration, id, &server_key, terms, gate.clone())
                        .await?
                {
                    return Ok((done.0, done.1, false));
                }
            }
            Found::Held { lease } => {
                let now = Instant::now();
                let bound = if let Some(at) = give_up {
                    at
                } else {
                    let left = time_to_live(shared, lease)
                        .await?
                        .map_or(Duration::ZERO, |(_, remaining)| remaining);
                    let at = now + left + Duration::from_secs(2);
                    give_up = Some(at);
                    at
                };
                if now >= bound {
                    return Err(Error::IdTaken { id });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Registers `id` again on a fresh lease, both keys created anew (or the slot alone for a
/// reservation). `None`: someone took it between the read and the write (read again).
async fn reregister_free(
    shared: &Arc<Shared>,
    registration: &Registration,
    id: u16,
    server_key: &str,
    terms: Terms,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Option<(Claim, LeaseSession)>> {
    let cfg = &shared.config;
    let lease =
        LeaseSession::grant_gated(&shared.pool, terms.lease_ttl, cfg.request_timeout, gate).await?;
    let record = registration.encode(id, 0, crate::alloc::now_unix_ms());
    let owner = Owner::new(&shared.layout, id, server_key.to_owned(), 0, lease.id());
    let txn = reregister::build(&owner, &record, terms.announce);
    let resp = match retrying_txn(&shared.pool, "resume", cfg.request_timeout, &txn).await {
        Ok(resp) => resp,
        Err(e) => {
            super::revoke_quietly(shared, lease).await;
            return Err(e);
        }
    };
    match reregister::read(&Answer::from(&resp), lease.id(), 0) {
        Reregistered::Done { revision } => {
            tracing::info!(
                id,
                revision,
                "resumed: its lease had expired, the id registered again"
            );
            Ok(Some((
                Claim {
                    id,
                    position: 0,
                    server_key: server_key.to_owned(),
                    create_revision: revision,
                    record,
                    terms,
                    announced: terms.announce,
                },
                lease,
            )))
        }
        Reregistered::OldLeaseHolds | Reregistered::Taken => {
            super::revoke_quietly(shared, lease).await;
            Ok(None)
        }
    }
}

/// Reads the server key and the slot of `id` in one transaction: one round trip, and both at
/// one revision (two reads could see a key and a slot of two different registrations).
async fn read(shared: &Shared, server_key: &str, id: u16) -> Result<Read> {
    let txn = Txn::new().and_then([
        TxnOp::get(server_key, None),
        TxnOp::get(shared.layout.slot_key(id), None),
    ]);
    let resp = retrying_txn(
        &shared.pool,
        "resume: read key and slot",
        shared.config.request_timeout,
        &txn,
    )
    .await?;
    let answer = Answer::from(&resp);
    let first = |i: usize| match answer.ops.get(i) {
        Some(OpAnswer::Get(kvs)) => kvs.first().cloned(),
        _ => None,
    };
    Ok(Read {
        key: first(0).map(|kv| (kv.value, kv.lease, kv.create_revision)),
        slot: first(1).map(|kv| (kv.value, kv.lease)),
    })
}

/// The granted TTL and the time left of `lease`; `None` when it is gone.
async fn time_to_live(shared: &Shared, lease: i64) -> Result<Option<(Duration, Duration)>> {
    if lease == 0 {
        return Ok(None);
    }
    let resp = retrying(
        &shared.pool,
        "resume: lease ttl",
        shared.config.request_timeout,
        |client| async move { client.lease_client().time_to_live(lease, None).await },
    )
    .await;
    let resp = match resp {
        Ok(resp) => resp,
        Err(Error::Etcd { source, .. }) if crate::error::is_lease_not_found(&source) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let left = u64::try_from(resp.ttl()).unwrap_or(0);
    if left == 0 {
        return Ok(None);
    }
    let granted = u64::try_from(resp.granted_ttl()).unwrap_or(left).max(left);
    Ok(Some((
        Duration::from_secs(granted),
        Duration::from_secs(left),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "/darkrift/game/7";

    fn record(hash: &[u8]) -> Vec<u8> {
        Registration::new("game", "10.0.0.5", 4296, std::collections::BTreeMap::new())
            .and_then(|r| r.with_owner_token_hash(hash.to_vec()))
            .map(|r| r.encode(7, 12, 0))
            .unwrap_or_default()
    }

    fn read(key: Option<(&[u8], i64)>, slot: Option<(&str, i64)>) -> Read {
        Read {
            key: key.map(|(v, lease)| (v.to_vec(), lease, 40)),
            slot: slot.map(|(v, lease)| (v.as_bytes().to_vec(), lease)),
        }
    }

    #[test]
    fn our_record_on_one_lease_is_ours_to_adopt() {
        let ours = record(&[1; 32]);
        assert_eq!(
            judge(&read(Some((&ours, 9)), Some((KEY, 9))), KEY, &[1; 32]),
            Found::Ours {
                lease: 9,
                create_revision: 40,
                record: ours,
                position: 12
            }
        );
    }

    #[test]
    fn nothing_there_is_free() {
        assert_eq!(judge(&read(None, None), KEY, &[1; 32]), Found::Free);
    }

    #[test]
    fn anything_not_provably_ours_is_held() {
        let ours = record(&[1; 32]);
        let theirs = record(&[2; 32]);
        let unowned = record(&[]);
        for (what, r) in [
            (
                "another owner's hash",
                read(Some((&theirs, 9)), Some((KEY, 9))),
            ),
            ("no owner hash", read(Some((&unowned, 9)), Some((KEY, 9)))),
            (
                "key and slot on two leases",
                read(Some((&ours, 9)), Some((KEY, 11))),
            ),
            (
                "slot naming another key",
                read(Some((&ours, 9)), Some(("/darkrift/lobby/7", 9))),
            ),
            ("a reservation (slot alone)", read(None, Some((KEY, 9)))),
            ("a key without its slot", read(Some((&ours, 9)), None)),
            (
                "our record on no lease",
                read(Some((&ours, 0)), Some((KEY, 0))),
            ),
        ] {
            assert!(
                matches!(judge(&r, KEY, &[1; 32]), Found::Held { .. }),
                "{what}"
            );
        }
        // An empty token never proves anything, even against a record without one.
        assert!(matches!(
            judge(&read(Some((&unowned, 9)), Some((KEY, 9))), KEY, &[]),
            Found::Held { .. }
        ));
    }
}
