//! Id allocation: the decisions, the one transaction, and the reading of its answer.
//! No I/O here; [`crate::connector`] sends what this module builds.
//!
//! # The scheme
//! The cursor key holds a monotonically increasing *position* `P` (a `u64`, written as 20
//! zero-padded decimal digits so that etcd's byte-wise value compare is numeric compare).
//! Position `p` names id `(p - 1) % N + 1` for an id space of size `N`, so walking positions
//! walks the ids round-robin, 1, 2, …, N, 1, 2, …, and id 0 is never produced.
//!
//! To register, a server picks a position `p` among the first `spread_window` *free*
//! positions after `P` (free: its id is not held, as far as this server knows), using a
//! per-process random spread so that servers starting at the same moment mostly pick
//! different ids on their first attempt. Then ONE transaction:
//!
//! ```text
//! if   slot(id) absent  and  server_key(group, id) absent
//! then put slot(id)          = server_key        (our lease)
//!      put server_key        = ServerRecord      (our lease)
//!      txn { if cursor < p then put cursor = p
//!            else txn { if cursor absent then put cursor = p } }   // monotonic advance
//! else get cursor; get slot(id); get slot keys of the next 2 × spread_window positions
//!      (keys only); get server_key (keys only)
//! ```
//!
//! The slot key makes ids unique across *all* groups (one compare cannot look under every
//! group). The failure branch returns exactly what the next attempt needs (the new cursor and
//! which ids near it are taken), so a conflict costs no extra read. Because positions only move
//! forward, an id freed behind the cursor is handed out again only after the cursor has
//! walked the rest of the space: a peer that is slow to see a leave will not see the same id
//! come back moments later.
//!
//! The cursor key carries no lease on purpose: bound to a lease it would vanish with the last
//! server that wrote it and the round-robin would restart at id 1.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{
    Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::keys::KeyLayout;

/// Default size of the id space: every id DarkRift can carry except 0.
pub const DEFAULT_ID_SPACE: u16 = u16::MAX;
/// Default number of free positions a first attempt spreads over. With 1000 servers starting
/// at once about one in nine first attempts collide (birthday bound `n / 2w`).
pub const DEFAULT_SPREAD_WINDOW: u16 = 4096;
/// Default bound on allocation transactions per registration.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 32;

/// Encodes a cursor position as its stored value.
#[must_use]
pub fn encode_cursor(position: u64) -> String {
    format!("{position:020}")
}

/// Decodes a stored cursor value; anything but 20 ASCII digits is `None`.
#[must_use]
pub fn decode_cursor(value: &[u8]) -> Option<u64> {
    if value.len() != 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The id a position names in an id space of size `id_space` (>= 1). Position 0 is "before
/// the first id" and maps like position `id_space`.
#[must_use]
pub fn position_id(position: u64, id_space: u16) -> u16 {
    let n = u64::from(id_space.max(1));
    let zero_based = (position + n - 1) % n;
    // zero_based < n <= 65535, so the conversion cannot fail.
    u16::try_from(zero_based + 1).unwrap_or(1)
}

/// A set of ids, 8 KiB fixed, for "which ids are taken".
#[derive(Clone)]
pub struct IdSet {
    bits: Box<[u64; 1024]>,
    len: u32,
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSet").field("len", &self.len).finish()
    }
}

impl Default for IdSet {
    fn default() -> Self {
        IdSet {
            bits: Box::new([0; 1024]),
            len: 0,
        }
    }
}

impl IdSet {
    /// True when `id` is in the set.
    #[must_use]
    pub fn contains(&self, id: u16) -> bool {
        self.bits[usize::from(id >> 6)] & (1 << (id & 63)) != 0
    }
    /// Adds `id`.
    pub fn insert(&mut self, id: u16) {
        if !self.contains(id) {
            self.bits[usize::from(id >> 6)] |= 1 << (id & 63);
            self.len += 1;
        }
    }
    /// Removes `id`.
    pub fn remove(&mut self, id: u16) {
        if self.contains(id) {
            self.bits[usize::from(id >> 6)] &= !(1 << (id & 63));
            self.len -= 1;
        }
    }
    /// How many ids are in the set.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.len
    }
    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What this server knows when it picks an id.
#[derive(Debug, Clone)]
pub struct AllocHint {
    /// The last cursor position seen (0 when the cursor key does not exist yet).
    pub cursor: u64,
    /// Ids known to be held.
    pub taken: IdSet,
}

/// Tunables of the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocParams {
    /// Ids are `1..=id_space`.
    pub id_space: u16,
    /// How many free positions after the cursor a pick spreads over.
    pub spread_window: u16,
}

/// One chosen candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The cursor position it stands at.
    pub position: u64,
    /// The id it names.
    pub id: u16,
}

/// Picks a candidate: among the first `spread_window` positions after `hint.cursor` whose id
/// is not known to be taken, the one `spread` selects. `None` when every id is known taken.
#[must_use]
pub fn choose(hint: &AllocHint, params: AllocParams, spread: u64) -> Option<Candidate> {
    let n = u64::from(params.id_space.max(1));
    let window = u64::from(params.spread_window.max(1));
    let pick = spread % window;
    let mut free_seen = 0u64;
    let mut last_free = None;
    for step in 1..=n {
        let position = hint.cursor + step;
        let id = position_id(position, params.id_space);
        if hint.taken.contains(id) {
            continue;
        }
        last_free = Some(Candidate { position, id });
        if free_seen == pick {
            return last_free;
        }
        free_seen += 1;
        if free_seen == window {
            break;
        }
    }
    // Fewer free positions than `pick`: spread over the ones there are.
    if free_seen == 0 {
        return None;
    }
    let pick = spread % free_seen;
    let mut seen = 0u64;
    for step in 1..=n {
        let position = hint.cursor + step;
        let id = position_id(position, params.id_space);
        if !hint.taken.contains(id) {
            if seen == pick {
                return Some(Candidate { position, id });
            }
            seen += 1;
        }
    }
    last_free
}

/// The inclusive id ranges covering the `count` positions after `cursor` (one range, or two
/// when they wrap, or the whole space).
#[must_use]
pub fn id_ranges_after(cursor: u64, count: u64, id_space: u16) -> Vec<(u16, u16)> {
    let n = u64::from(id_space.max(1));
    if count >= n {
        return vec![(1, id_space.max(1))];
    }
    let lo = position_id(cursor + 1, id_space);
    let hi = position_id(cursor + count, id_space);
    if lo <= hi {
        vec![(lo, hi)]
    } else {
        vec![(lo, id_space), (1, hi)]
    }
}

/// Everything one allocation transaction writes.
#[derive(Debug)]
pub struct AllocRequest<'a> {
    /// Key layout.
    pub layout: &'a KeyLayout,
    /// The server's group.
    pub group: &'a str,
    /// The candidate.
    pub candidate: Candidate,
    /// The cursor this attempt believed (bounds the failure branch's slot read).
    pub cursor: u64,
    /// The encoded record for the candidate id.
    pub record: Vec<u8>,
    /// Our lease.
    pub lease_id: i64,
    /// Allocator tunables.
    pub params: AllocParams,
}

/// Builds the one transaction of an attempt (see the module docs).
#[must_use]
pub fn build_txn(req: &AllocRequest<'_>) -> Txn {
    let l = req.layout;
    let id = req.candidate.id;
    let slot = l.slot_key(id);
    let server = l.server_key(req.group, id);
    let cursor_key = l.cursor_key();
    let new_cursor = encode_cursor(req.candidate.position);
    let lease = Some(PutOptions::new().with_lease(req.lease_id));

    let advance_cursor = Txn::new()
        .when([Compare::value(
            cursor_key.clone(),
            CompareOp::Less,
            new_cursor.clone(),
        )])
        .and_then([TxnOp::put(cursor_key.clone(), new_cursor.clone(), None)])
        .or_else([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision(
                    cursor_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(cursor_key.clone(), new_cursor, None)]),
        )]);

    // The candidate's slot comes second: if it is held by *our* lease, an earlier attempt of
    // this very transaction succeeded and only its answer was lost (a retried request).
    let mut on_conflict = vec![TxnOp::get(cursor_key, None), TxnOp::get(slot.clone(), None)];
    let read_ahead = u64::from(req.params.spread_window.max(1)) * 2;
    for (lo, hi) in id_ranges_after(req.cursor, read_ahead, req.params.id_space) {
        on_conflict.push(TxnOp::get(
            l.slot_key(lo),
            Some(
                GetOptions::new()
                    .with_range(slot_range_end(l, hi))
                    .with_keys_only(),
            ),
        ));
    }
    on_conflict.push(TxnOp::get(
        server.clone(),
        Some(GetOptions::new().with_keys_only()),
    ));

    Txn::new()
        .when([
            Compare::create_revision(slot.clone(), CompareOp::Equal, 0),
            Compare::create_revision(server.clone(), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(slot, server.clone(), lease.clone()),
            TxnOp::put(server, req.record.clone(), lease),
            TxnOp::txn(advance_cursor),
        ])
        .or_else(on_conflict)
}

/// End key (exclusive) of a slot range ending at id `hi` inclusive.
fn slot_range_end(layout: &KeyLayout, hi: u16) -> String {
    format!("{}{:05}", layout.slots_prefix(), u32::from(hi) + 1)
}

/// What an attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocOutcome {
    /// We hold the id; the server key was created at `revision`.
    Won {
        /// Create revision of our server key and slot key.
        revision: i64,
    },
    /// Someone holds the id (or took a nearby one); retry with what we learnt.
    Lost {
        /// The cursor as etcd has it now (0 when absent).
        cursor: u64,
        /// Ids seen taken in the read-ahead ranges (the candidate included, if taken).
        taken: Vec<u16>,
    },
}

/// Reads the answer of [`build_txn`]'s transaction sent with lease `lease_id`. A failure
/// whose candidate slot is held by `lease_id` is our own earlier success (the request was
/// retried after its answer was lost), and reads as [`AllocOutcome::Won`].
///
/// # Errors
/// A description of the unexpected shape (it would be a bug in this module or a foreign etcd).
pub fn read_answer(
    layout: &KeyLayout,
    candidate: Candidate,
    lease_id: i64,
    resp: &TxnResponse,
) -> Result<AllocOutcome, String> {
    let revision = resp
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    if resp.succeeded() {
        return Ok(AllocOutcome::Won { revision });
    }
    let mut cursor = 0;
    let mut taken = Vec::new();
    let ops = resp.op_responses();
    let last = ops.len().saturating_sub(1);
    for (i, op) in ops.into_iter().enumerate() {
        let TxnOpResponse::Get(get) = op else {
            return Err(format!("unexpected op response #{i} in the failure branch"));
        };
        if i == 0 {
            if let Some(kv) = get.kvs().first() {
                cursor = decode_cursor(kv.value())
                    .ok_or_else(|| format!("cursor value {:?} is not 20 digits", kv.value_str()))?;
            }
        } else if i == 1 {
            if let Some(kv) = get.kvs().first() {
                if kv.lease() == lease_id && lease_id != 0 {
                    return Ok(AllocOutcome::Won {
                        revision: kv.create_revision(),
                    });
                }
                taken.push(candidate.id);
            }
        } else if i == last {
            // The server key exists although its slot may not: treat the id as taken.
            if !get.kvs().is_empty() {
                taken.push(candidate.id);
            }
        } else {
            taken.extend(
                get.kvs()
                    .iter()
                    .filter_map(|kv| layout.parse_slot_key(kv.key())),
            );
        }
    }
    Ok(AllocOutcome::Lost { cursor, taken })
}

/// Milliseconds since the Unix epoch, for the record's registration time.
#[must_use]
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(id_space: u16, spread_window: u16) -> AllocParams {
        AllocParams {
            id_space,
            spread_window,
        }
    }

    fn hint(cursor: u64, taken: &[u16]) -> AllocHint {
        let mut set = IdSet::default();
        for id in taken {
            set.insert(*id);
        }
        AllocHint { cursor, taken: set }
    }

    #[test]
    fn cursor_encoding_is_fixed_width_and_ordered() {
        assert_eq!(encode_cursor(7), "00000000000000000007");
        assert_eq!(
            decode_cursor(encode_cursor(u64::MAX).as_bytes()),
            Some(u64::MAX)
        );
        assert!(encode_cursor(9) < encode_cursor(10));
        assert!(encode_cursor(65535) < encode_cursor(65536));
        assert_eq!(decode_cursor(b"7"), None);
        assert_eq!(decode_cursor(b"0000000000000000000x"), None);
    }

    #[test]
    fn positions_walk_ids_round_robin_and_skip_zero() {
        let ids: Vec<u16> = (1..=7).map(|p| position_id(p, 3)).collect();
        assert_eq!(ids, [1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(position_id(0, 3), 3);
        assert_eq!(position_id(65535, u16::MAX), 65535);
        assert_eq!(position_id(65536, u16::MAX), 1);
        assert!((0..200_000u64).all(|p| position_id(p, u16::MAX) != 0));
    }

    #[test]
    fn first_free_after_cursor_without_spread() {
        let c = choose(&hint(0, &[]), params(10, 1), 12345).unwrap();
        assert_eq!(c, Candidate { position: 1, id: 1 });
        let c = choose(&hint(4, &[5, 6]), params(10, 1), 0).unwrap();
        assert_eq!(c, Candidate { position: 7, id: 7 });
    }

    #[test]
    fn freed_ids_come_back_only_after_the_wrap() {
        // Ids 1 and 2 were freed, cursor stands at 3: the next picks are 4, 5, then 1 at position 6.
        let mut h = hint(3, &[3]);
        let mut got = Vec::new();
        for _ in 0..3 {
            let c = choose(&h, params(5, 1), 0).unwrap();
            got.push(c.id);
            h.cursor = c.position;
            h.taken.insert(c.id);
        }
        assert_eq!(got, [4, 5, 1]);
    }

    #[test]
    fn live_ids_are_skipped_and_full_space_is_none() {
        let c = choose(&hint(0, &[1, 2, 3]), params(4, 1), 0).unwrap();
        assert_eq!(c.id, 4);
        assert_eq!(choose(&hint(0, &[1, 2, 3, 4]), params(4, 16), 3), None);
    }

    #[test]
    fn spread_stays_within_the_window_of_free_ids() {
        for spread in 0..1000 {
            let c = choose(&hint(100, &[102]), params(u16::MAX, 8), spread).unwrap();
            assert!((101..=109).contains(&c.position) && c.id != 102, "{c:?}");
        }
        // Window larger than the free ids: still a free one.
        for spread in 0..100 {
            let c = choose(&hint(0, &[1, 3]), params(4, 64), spread).unwrap();
            assert!(c.id == 2 || c.id == 4);
        }
    }

    #[test]
    fn read_ahead_ranges() {
        assert_eq!(id_ranges_after(0, 10, 100), vec![(1, 10)]);
        assert_eq!(id_ranges_after(95, 10, 100), vec![(96, 100), (1, 5)]);
        assert_eq!(id_ranges_after(3, 10, 8), vec![(1, 8)]);
    }

    #[test]
    fn idset_counts() {
        let mut s = IdSet::default();
        s.insert(0);
        s.insert(65535);
        s.insert(65535);
        assert_eq!(s.len(), 2);
        assert!(s.contains(65535) && !s.contains(1));
        s.remove(65535);
        s.remove(65535);
        assert_eq!(s.len(), 1);
    }
}
