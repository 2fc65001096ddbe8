//! Claiming an id: one allocation transaction per attempt (see [`crate::alloc`]), learning
//! from each lost attempt, and repairing a damaged cursor on the way.

use std::sync::atomic::Ordering;

use super::{Claim, Terms};
use crate::alloc::{self, AllocHint, AllocOutcome, AllocRequest, IdSet};
use crate::client::retrying;
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::record::Registration;
use crate::shared::Shared;
use crate::watcher::Command;

/// Claims an id: one transaction per attempt, bounded (see [`crate::alloc`]).
pub(crate) async fn allocate(
    shared: &Shared,
    registration: &Registration,
    lease_id: i64,
    terms: Terms,
) -> Result<Claim> {
    let params = shared.config.alloc_params();
    let mut learned = IdSet::default();
    // The view was resynchronised after it looked full (see [`when_full`]).
    let mut resynced = false;
    // Transactions sent: only a lost transaction is a conflicting attempt.
    let mut attempt = 0;
    while attempt < shared.config.max_alloc_attempts {
        let hint = shared.view.read(|view| {
            let mut taken = learned.clone();
            for id in view.members.ids() {
                taken.insert(id);
            }
            AllocHint {
                cursor: shared
                    .cursor
                    .position(view.cursor_read, view.members.max_alloc_position()),
                taken,
            }
        });
        let spread = splitmix(terms.spread_seed.wrapping_add(u64::from(attempt)));
        let Some(candidate) = alloc::choose(&hint, params, spread) else {
            if !learned.is_empty() {
                // What we learnt from conflicts may be stale: start over from the view.
                learned = IdSet::default();
                continue;
            }
            let slots = if resynced {
                None
            } else {
                Some(count_slots(shared).await?)
            };
            match when_full(slots, shared.config.id_space) {
                WhenFull::Exhausted => {
                    return Err(Error::IdSpaceExhausted {
                        id_space: shared.config.id_space,
                    })
                }
                WhenFull::Resync => {
                    resync(shared).await?;
                    resynced = true;
                    continue;
                }
            }
        };
        attempt += 1;
        let record = registration.encode(candidate.id, candidate.position, alloc::now_unix_ms());
        let request = AllocRequest {
            layout: &shared.layout,
            group: registration.group(),
            candidate,
            cursor: hint.cursor,
            record: record.clone(),
            lease_id,
            params,
            announce: terms.announce,
        };
        metrics::counter!(m::ALLOC_TXNS).increment(1);
        let txn = alloc::build_txn(&request);
        let resp = counted_txn(shared, "allocate id", &txn).await?;
        match alloc::read_answer(&shared.layout, candidate, lease_id, &resp) {
            Ok(AllocOutcome::Won {
                revision,
                damaged_cursor,
            }) => {
                if let Some(damaged) = damaged_cursor {
                    repair_cursor(shared, &damaged, candidate.position).await;
                }
                shared.cursor.learn(candidate.position);
                return Ok(Claim {
                    id: candidate.id,
                    position: candidate.position,
                    server_key: shared.layout.server_key(registration.group(), candidate.id),
                    create_revision: revision,
                    record,
                    terms,
                    announced: terms.announce,
                });
            }
            Ok(AllocOutcome::Lost { cursor, taken }) => {
                tracing::debug!(
                    attempt,
                    id = candidate.id,
                    cursor,
                    taken = taken.len(),
                    "id taken; retrying"
                );
                metrics::counter!(m::ALLOC_CONFLICTS).increment(1);
                shared.cursor.learn(cursor);
                learned.insert(candidate.id);
                for id in taken {
                    learned.insert(id);
                }
            }
            Err(why) => {
                return Err(Error::InvalidConfig(format!(
                    "allocator state under the prefix: {why}"
                )))
            }
        }
    }
    Err(Error::AllocationContention {
        attempts: shared.config.max_alloc_attempts,
    })
}

/// Sends a transaction of the allocator, retrying transient errors, and counts every send in
/// [`Shared::requests`] (a retry is one more request to etcd).
async fn counted_txn(
    shared: &Shared,
    op: &'static str,
    txn: &etcd_client::Txn,
) -> Result<etcd_client::TxnResponse> {
    retrying(&shared.pool, op, shared.config.request_timeout, |client| {
        // Counted per send: a transient error's retry is one more request to etcd.
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let txn = txn.clone();
        async move { client.kv_client().txn(txn).await }
    })
    .await
}

/// Puts a valid position over a damaged cursor that our allocation read (see
/// [`alloc::build_repair_txn`]). Best effort: the id is already ours, and whoever allocates
/// next finds the cursor still damaged and repairs it then.
async fn repair_cursor(shared: &Shared, damaged: &[u8], position: u64) {
    let txn = alloc::build_repair_txn(&shared.layout, damaged, position);
    match counted_txn(shared, "repair cursor", &txn).await {
        Ok(resp) if resp.succeeded() => {
            tracing::warn!(
                damaged = %String::from_utf8_lossy(damaged),
                position,
                "allocation cursor was damaged; repaired"
            );
        }
        // Someone else repaired or advanced it first: nothing of theirs was overwritten.
        Ok(_) => tracing::debug!(
            position,
            "damaged cursor already repaired by another server"
        ),
        Err(e) => tracing::warn!(error = %e, "repairing the damaged allocation cursor failed"),
    }
}

/// What a view in which every id looks taken (and nothing learnt from conflicts) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Every id is held: [`Error::IdSpaceExhausted`].
    Exhausted,
    /// etcd holds fewer slots than the view has members: resynchronise the view and look
    /// again.
    Resync,
}

/// Decides what a full view means. `slots` is how many slot keys etcd counted after the view
/// looked full, or `None` when the view has been resynchronised since that count (so it holds
/// at least what etcd held then).
///
/// As many slots as ids: exhausted. Fewer are no proof of a free id: a slot deleted by hand
/// whose server key still lives (its holder restores it within one TTL), or a server that left
/// after the view was read (its leave not applied yet). Only the second frees an id, and a view
/// brought up to etcd's revision tells them apart: still full after a resync, every id has a
/// live claim (exhausted); otherwise the next attempt takes the freed id. Neither is a
/// conflicting attempt: no transaction was sent.
pub(crate) fn when_full(slots: Option<i64>, id_space: u16) -> WhenFull {
    match slots {
        None => WhenFull::Exhausted,
        Some(n) if n >= i64::from(id_space) => WhenFull::Exhausted,
        Some(_) => WhenFull::Resync,
    }
}

/// How many slot keys etcd holds.
async fn count_slots(shared: &Shared) -> Result<i64> {
    let options = etcd_client::GetOptions::new()
        .with_prefix()
        .with_count_only();
    let prefix = shared.layout.slots_prefix();
    let resp = retrying(
        &shared.pool,
        "count slots",
        shared.config.request_timeout,
        |client| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { client.kv_client().get(prefix, Some(options)).await }
        },
    )
    .await?;
    Ok(resp.count())
}

/// Has the watcher relist, so that the view holds at least what etcd holds now; bounded by
/// the request timeout (a watcher waiting out an outage must not hang the registration).
async fn resync(shared: &Shared) -> Result<()> {
    let (done, wait) = tokio::sync::oneshot::channel();
    let bound = shared.config.request_timeout;
    let resync = async {
        shared
            .commands
            .send(Command::Resync(done))
            .await
            .map_err(|_| Error::Shutdown)?;
        wait.await.map_err(|_| Error::Shutdown)
    };
    tokio::time::timeout(bound, resync)
        .await
        .map_err(|_| Error::Timeout {
            op: "resync of a full view",
            timeout: bound,
        })?
}

/// A well-mixed 64-bit hash (splitmix64), to derive each attempt's spread from the seed.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_many_slots_as_ids_is_exhaustion() {
        assert_eq!(when_full(Some(2), 2), WhenFull::Exhausted);
        assert_eq!(when_full(Some(3), 2), WhenFull::Exhausted);
        assert_eq!(when_full(Some(65_535), u16::MAX), WhenFull::Exhausted);
    }

    #[test]
    fn fewer_slots_than_ids_first_brings_the_view_up_to_date() {
        // A server left after the view was read, or a slot was deleted by hand.
        assert_eq!(when_full(Some(1), 2), WhenFull::Resync);
        assert_eq!(when_full(Some(0), 1), WhenFull::Resync);
    }

    #[test]
    fn a_view_still_full_after_a_resync_is_exhaustion() {
        // Every id has a live claim at a revision at least that of the count.
        assert_eq!(when_full(None, 2), WhenFull::Exhausted);
    }
}
