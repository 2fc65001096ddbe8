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
//!      txn { if cursor < p then put cursor = p                  // monotonic advance
//!            else txn { if cursor absent then put cursor = p
//!                       else get cursor } }                         // what stopped it
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
//! # A damaged cursor
//! Valid positions are `0..=`[`MAX_POSITION`] (2^63 − 1: at a million registrations a second,
//! each moving the cursor by a whole id space, it lasts ~4,000 years). Anything else in the
//! cursor key (an operator's `abc`, `99999999999999999999`, `u64::MAX`) cannot be compared
//! numerically, and the monotonic advance above would never overwrite a value that sorts
//! above ours. So the advance's failure branch reads the cursor back: a value that does not
//! decode is repaired right after the win, by one more transaction guarded by that exact
//! value ([`build_repair_txn`]), so that concurrent repairs and valid advances are never
//! clobbered. Meanwhile the hint treats the damaged cursor as absent (position 0, or the
//! highest position carried by a record). A cursor that reaches the top of the range is
//! written past it once and repaired the same way: the round-robin starts again at id 1.
//! All position arithmetic is checked or saturating: hostile input cannot overflow it.
//!
//! The cursor key carries no lease on purpose: bound to a lease it would vanish with the last
//! server that wrote it and the round-robin would restart at id 1.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnResponse};

use crate::guard::{Answer, OpAnswer};
use crate::keys::KeyLayout;

/// Default size of the id space: every id DarkRift can carry except 0.
pub const DEFAULT_ID_SPACE: u16 = u16::MAX;
/// Default number of free positions a first attempt spreads over. With 1000 servers starting
/// at once about one in nine first attempts collide (birthday bound `n / 2w`).
pub const DEFAULT_SPREAD_WINDOW: u16 = 4096;
/// Default bound on allocation transactions per registration.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 32;
/// The highest valid cursor position (2^63 − 1). Leaves room above it, so a candidate
/// position (the cursor plus at most two id spaces) never overflows a `u64`.
pub const MAX_POSITION: u64 = u64::MAX / 2;

/// Encodes a cursor position as its stored value.
#[must_use]
pub fn encode_cursor(position: u64) -> String {
    format!("{position:020}")
}

/// Decodes a stored cursor value; anything but 20 ASCII digits naming a position of at most
/// [`MAX_POSITION`] is `None` (a damaged cursor, repaired by the next allocation).
#[must_use]
pub fn decode_cursor(value: &[u8]) -> Option<u64> {
    if value.len() != 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value)
        .ok()?
        .parse()
        .ok()
        .filter(|position| *position <= MAX_POSITION)
}

/// The later of two allocation hints, ignoring positions beyond [`MAX_POSITION`] (a hostile
/// record's, or a cursor written past the top): one of those would pin the hint at the top
/// of the range for good, because hints only move forward.
#[must_use]
pub fn later_position(known: u64, seen: u64) -> u64 {
    let valid = |p: u64| if p <= MAX_POSITION { p } else { 0 };
    valid(known).max(valid(seen))
}

/// The cursor position allocations start from: the latest of what this connector learnt
/// itself (its wins, the cursors its failed attempts read), the cursor its view's last snapshot
/// read, and the highest position a record in its view carries. A hint only: etcd's cursor is
/// the truth, and a stale hint costs one more attempt.
#[derive(Debug, Default)]
pub(crate) struct CursorHint {
    learned: std::sync::atomic::AtomicU64,
}

impl CursorHint {
    /// The hint, given what the view read (`cursor_read`) and holds (`max_record_position`).
    pub(crate) fn position(&self, cursor_read: u64, max_record_position: u64) -> u64 {
        let learned = self.learned.load(std::sync::atomic::Ordering::Relaxed);
        later_position(later_position(learned, cursor_read), max_record_position)
    }

    /// Remembers a position this connector allocated at or read.
    pub(crate) fn learn(&self, position: u64) {
        // `later_position` ignores a position past the top; so does this.
        if position <= MAX_POSITION {
            self.learned
                .fetch_max(position, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The id a position names in an id space of size `id_space` (>= 1). Position 0 is "before
/// the first id" and maps like position `id_space`.
#[must_use]
pub fn position_id(position: u64, id_space: u16) -> u16 {
    id_after(position, 0, id_space)
}

/// The id of position `position + step`, computed without overflow for any `position`.
fn id_after(position: u64, step: u64, id_space: u16) -> u16 {
    let n = u64::from(id_space.max(1));
    // Every term is below n <= 65535, so nothing here can overflow; (p + n - 1) % n is the
    // zero-based id of p, and position 0 maps like position n.
    let zero_based = (position % n + step % n + n - 1) % n;
    u16::try_from(zero_based + 1).unwrap_or(1)
}

/// A set of ids, 8 KiB fixed, for "which ids are taken".
#[derive(Clone)]
pub struct IdSet {
    bits: Box<[u64; 1024]>,
    len: u32,
}

#[allow(
    clippy::missing_fields_in_debug,
    reason = "the 8 KiB bitmap would flood every print; its count says enough"
)]
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
            self.len = self.len.saturating_add(1);
        }
    }
    /// Removes `id`.
    pub fn remove(&mut self, id: u16) {
        if self.contains(id) {
            self.bits[usize::from(id >> 6)] &= !(1 << (id & 63));
            self.len = self.len.saturating_sub(1);
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
    /// The last cursor position seen (0 when the cursor key does not exist yet). A position
    /// beyond [`MAX_POSITION`] reads as 0.
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
/// A cursor beyond [`MAX_POSITION`] counts as 0, so a candidate's position is at most
/// `MAX_POSITION + id_space` and never overflows.
#[must_use]
pub fn choose(hint: &AllocHint, params: AllocParams, spread: u64) -> Option<Candidate> {
    let n = u64::from(params.id_space.max(1));
    let window = u64::from(params.spread_window.max(1));
    let pick = spread % window;
    let cursor = later_position(hint.cursor, 0);
    let at = |step: u64| Candidate {
        position: cursor.saturating_add(step),
        id: id_after(cursor, step, params.id_space),
    };
    let mut free_seen = 0u64;
    let mut last_free = None;
    for step in 1..=n {
        let Candidate { position, id } = at(step);
        if hint.taken.contains(id) {
            continue;
        }
        last_free = Some(Candidate { position, id });
        if free_seen == pick {
            return last_free;
        }
        free_seen = free_seen.saturating_add(1);
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
        let candidate = at(step);
        if !hint.taken.contains(candidate.id) {
            if seen == pick {
                return Some(candidate);
            }
            seen = seen.saturating_add(1);
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
    let lo = id_after(cursor, 1, id_space);
    let hi = id_after(cursor, count, id_space);
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
    /// Write the server key too (announce at once). False reserves the id: only the slot is
    /// written, and the server key follows later, guarded by the reservation (see
    /// `guard::reservation`). The compares are the same either way.
    pub announce: bool,
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

    let advance_cursor = advance_cursor(&cursor_key, &new_cursor);

    // The candidate's slot comes second: if it is held by *our* lease, an earlier attempt of
    // this very transaction succeeded and only its answer was lost (a retried request).
    let mut on_conflict = vec![TxnOp::get(cursor_key, None), TxnOp::get(slot.clone(), None)];
    let read_ahead = u64::from(req.params.spread_window.max(1)).saturating_mul(2);
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
        .and_then(if req.announce {
            vec![
                TxnOp::put(slot, server.clone(), lease.clone()),
                TxnOp::put(server, req.record.clone(), lease),
                TxnOp::txn(advance_cursor),
            ]
        } else {
            vec![
                TxnOp::put(slot, server, lease),
                TxnOp::txn(advance_cursor),
            ]
        })
        .or_else(on_conflict)
}

/// The monotonic advance of the cursor to `new_cursor`: put it if the stored value sorts
/// below (the fixed-width encoding makes byte order numeric order) or the key is absent;
/// otherwise read it back, so that [`read_answer`] can tell a cursor that is simply further
/// on from a damaged one that no compare would ever let us overwrite.
fn advance_cursor(cursor_key: &str, new_cursor: &str) -> Txn {
    let put = || TxnOp::put(cursor_key, new_cursor, None);
    Txn::new()
        .when([Compare::value(cursor_key, CompareOp::Less, new_cursor)])
        .and_then([put()])
        .or_else([TxnOp::txn(
            Txn::new()
                .when([Compare::create_revision(cursor_key, CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(cursor_key, None)]),
        )])
}

/// Repairs a damaged cursor: put `position` if the cursor still holds exactly `damaged` (the
/// value our allocation read), else advance it monotonically as an allocation would. The
/// exact-value guard is what proves nobody repaired or advanced it since: a concurrent
/// repair wins once, and a valid advance is never overwritten by a lower position.
#[must_use]
pub fn build_repair_txn(layout: &KeyLayout, damaged: &[u8], position: u64) -> Txn {
    let cursor_key = layout.cursor_key();
    let new_cursor = encode_cursor(position);
    Txn::new()
        .when([Compare::value(
            cursor_key.as_str(),
            CompareOp::Equal,
            damaged,
        )])
        .and_then([TxnOp::put(cursor_key.as_str(), new_cursor.as_str(), None)])
        .or_else([TxnOp::txn(advance_cursor(&cursor_key, &new_cursor))])
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
        /// The cursor's value when it does not decode (damaged, or beyond
        /// [`MAX_POSITION`]): repair it with [`build_repair_txn`].
        damaged_cursor: Option<Vec<u8>>,
    },
    /// Someone holds the id (or took a nearby one); retry with what we learnt.
    Lost {
        /// The cursor as etcd has it now (0 when absent or damaged: the win repairs it).
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
    read(layout, candidate, lease_id, &Answer::from(resp))
}

/// [`read_answer`] on the plain answer (unit-tested without etcd).
pub(crate) fn read(
    layout: &KeyLayout,
    candidate: Candidate,
    lease_id: i64,
    answer: &Answer,
) -> Result<AllocOutcome, String> {
    if answer.succeeded {
        return Ok(AllocOutcome::Won {
            revision: answer.revision,
            damaged_cursor: damaged_cursor(answer),
        });
    }
    let mut cursor = 0;
    let mut taken = Vec::new();
    let last = answer.ops.len().saturating_sub(1);
    for (i, op) in answer.ops.iter().enumerate() {
        let OpAnswer::Get(kvs) = op else {
            return Err(format!("unexpected op response #{i} in the failure branch"));
        };
        if i == 0 {
            // A damaged cursor reads as absent: the next attempt's win repairs it.
            cursor = kvs
                .first()
                .and_then(|kv| decode_cursor(&kv.value))
                .unwrap_or(0);
        } else if i == 1 {
            if let Some(kv) = kvs.first() {
                if kv.lease == lease_id && lease_id != 0 {
                    // The lost answer held the cursor's state; the next allocation repairs a
                    // damaged one.
                    return Ok(AllocOutcome::Won {
                        revision: kv.create_revision,
                        damaged_cursor: None,
                    });
                }
                taken.push(candidate.id);
            }
        } else if i == last {
            // The server key exists although its slot may not: treat the id as taken.
            if !kvs.is_empty() {
                taken.push(candidate.id);
            }
        } else {
            taken.extend(kvs.iter().filter_map(|kv| layout.parse_slot_key(&kv.key)));
        }
    }
    Ok(AllocOutcome::Lost { cursor, taken })
}

/// The cursor value a won transaction read back because its advance did not apply, if that
/// value is damaged (does not decode). Walks `txn(advance) → txn(absent) → get cursor`.
fn damaged_cursor(answer: &Answer) -> Option<Vec<u8>> {
    let mut ops = &answer.ops;
    loop {
        match ops.last()? {
            OpAnswer::Txn(inner) if !inner.succeeded => ops = &inner.ops,
            OpAnswer::Get(kvs) => {
                let value = &kvs.first()?.value;
                return decode_cursor(value).is_none().then(|| value.clone());
            }
            _ => return None,
        }
    }
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
            decode_cursor(encode_cursor(MAX_POSITION).as_bytes()),
            Some(MAX_POSITION)
        );
        assert!(encode_cursor(9) < encode_cursor(10));
        assert!(encode_cursor(65535) < encode_cursor(65536));
        assert_eq!(decode_cursor(b"7"), None);
        assert_eq!(decode_cursor(b"0000000000000000000x"), None);
    }

    /// The id of a position by wide arithmetic, as the reference for the edges.
    fn reference_id(position: u64, id_space: u16) -> u16 {
        let n = u128::from(id_space);
        u16::try_from((u128::from(position) + n - 1) % n + 1).unwrap()
    }

    #[test]
    fn damaged_and_out_of_range_cursors_do_not_decode() {
        assert_eq!(decode_cursor(encode_cursor(0).as_bytes()), Some(0));
        assert_eq!(
            decode_cursor(encode_cursor(MAX_POSITION).as_bytes()),
            Some(MAX_POSITION)
        );
        for damaged in [
            encode_cursor(MAX_POSITION + 1),
            encode_cursor(u64::MAX),
            "99999999999999999999".to_owned(),
            "abc".to_owned(),
            String::new(),
            " 0000000000000000007".to_owned(),
        ] {
            assert_eq!(decode_cursor(damaged.as_bytes()), None, "{damaged:?}");
        }
        // Every damaged cursor that still has 20 digits sorts above every valid one, so the
        // monotonic advance alone could never overwrite it.
        assert!(encode_cursor(MAX_POSITION + 1) > encode_cursor(MAX_POSITION));
    }

    #[test]
    fn hints_ignore_positions_beyond_the_range() {
        assert_eq!(later_position(5, MAX_POSITION + 1), 5);
        assert_eq!(later_position(u64::MAX, 3), 3);
        assert_eq!(later_position(MAX_POSITION, 3), MAX_POSITION);
        assert_eq!(later_position(0, 0), 0);
    }

    #[test]
    fn position_arithmetic_at_the_edges_does_not_overflow() {
        for id_space in [1u16, 3, 100, u16::MAX] {
            for position in [0, 1, MAX_POSITION, MAX_POSITION + 1, u64::MAX - 1, u64::MAX] {
                assert_eq!(
                    position_id(position, id_space),
                    reference_id(position, id_space),
                    "{position} in {id_space}"
                );
            }
            for cursor in [0, MAX_POSITION, u64::MAX] {
                let ranges = id_ranges_after(cursor, 10, id_space);
                assert!(!ranges.is_empty(), "{cursor}");
            }
        }
        // A cursor at the top of the range: candidates go just past it (the next allocation
        // repairs the cursor) with the ids the round-robin would name there.
        let c = choose(&hint(MAX_POSITION, &[]), params(u16::MAX, 1), 0).unwrap();
        assert_eq!(c.position, MAX_POSITION + 1);
        assert_eq!(c.id, reference_id(MAX_POSITION + 1, u16::MAX));
        // Beyond the range, or unparsable (read as 0): start over from the first id.
        for cursor in [MAX_POSITION + 1, u64::MAX] {
            let c = choose(&hint(cursor, &[1]), params(10, 1), 0).unwrap();
            assert_eq!(c, Candidate { position: 2, id: 2 }, "{cursor}");
        }
        for spread in [0, 1, u64::MAX] {
            let c = choose(&hint(u64::MAX, &[]), params(u16::MAX, u16::MAX), spread).unwrap();
            assert_eq!(c.id, position_id(c.position, u16::MAX));
        }
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

    mod txn {
        use super::super::*;
        use crate::guard::testing::describe;
        use crate::guard::Kv;

        fn request(layout: &KeyLayout) -> AllocRequest<'_> {
            AllocRequest {
                layout,
                group: "game",
                candidate: Candidate { position: 8, id: 7 },
                cursor: 5,
                record: b"rec".to_vec(),
                lease_id: 9,
                params: AllocParams {
                    id_space: 10,
                    spread_window: 2,
                },
                announce: true,
            }
        }

        const C8: &str = "00000000000000000008";

        #[test]
        fn the_one_transaction_claims_slot_and_key_and_advances_the_cursor() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let lines = describe(&build_txn(&request(&layout)));
            let expected = [
                "if create(/darkrift.alloc/slot/00007) == 0".to_owned(),
                "if create(/darkrift/game/7) == 0".into(),
                "then put /darkrift.alloc/slot/00007 = \"/darkrift/game/7\" lease 9".into(),
                "then put /darkrift/game/7 = \"rec\" lease 9".into(),
                "then txn".into(),
                format!("  if value(/darkrift.alloc/cursor) < \"{C8}\""),
                format!("  then put /darkrift.alloc/cursor = \"{C8}\""),
                "  else txn".into(),
                "    if create(/darkrift.alloc/cursor) == 0".into(),
                format!("    then put /darkrift.alloc/cursor = \"{C8}\""),
                "    else get /darkrift.alloc/cursor".into(),
                // The failure branch: cursor, candidate slot, the 4 positions after the
                // cursor (ids 6..=9) as one range, the server key.
                "else get /darkrift.alloc/cursor".into(),
                "else get /darkrift.alloc/slot/00007".into(),
                "else get /darkrift.alloc/slot/00006../darkrift.alloc/slot/00010 keys-only".into(),
                "else get /darkrift/game/7 keys-only".into(),
            ];
            assert_eq!(lines, expected);
        }

        #[test]
        fn a_reservation_claims_the_slot_alone_under_the_same_compares() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let announced = describe(&build_txn(&request(&layout)));
            let reserved = describe(&build_txn(&AllocRequest {
                announce: false,
                ..request(&layout)
            }));
            // Same compares (the server key must be absent too: the id is free in every
            // group), same cursor advance, same failure branch; no server key put.
            let without_key: Vec<_> = announced
                .iter()
                .filter(|l| l.as_str() != "then put /darkrift/game/7 = \"rec\" lease 9")
                .cloned()
                .collect();
            assert_eq!(reserved, without_key);
            assert_eq!(reserved.len() + 1, announced.len());
        }

        #[test]
        fn a_repair_overwrites_exactly_the_damaged_value_else_advances() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let lines = describe(&build_repair_txn(&layout, b"abc", 8));
            assert_eq!(
                lines[..2],
                [
                    "if value(/darkrift.alloc/cursor) == \"abc\"".to_owned(),
                    format!("then put /darkrift.alloc/cursor = \"{C8}\""),
                ]
            );
            assert_eq!(lines[2], "else txn");
            assert_eq!(
                lines[3],
                format!("  if value(/darkrift.alloc/cursor) < \"{C8}\"")
            );
        }

        fn get(kvs: &[(&str, &[u8], i64, i64)]) -> OpAnswer {
            OpAnswer::Get(
                kvs.iter()
                    .map(|&(key, value, lease, create_revision)| Kv {
                        key: key.into(),
                        value: value.to_vec(),
                        lease,
                        create_revision,
                    })
                    .collect(),
            )
        }

        fn failed(ops: Vec<OpAnswer>) -> Answer {
            Answer {
                succeeded: false,
                revision: 30,
                ops,
            }
        }

        const CANDIDATE: Candidate = Candidate { position: 8, id: 7 };

        #[test]
        fn a_win_reads_back_a_damaged_cursor_only() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let won = |cursor_answer: OpAnswer| Answer {
                succeeded: true,
                revision: 21,
                ops: vec![
                    OpAnswer::Put,
                    OpAnswer::Put,
                    OpAnswer::Txn(failed(vec![OpAnswer::Txn(failed(vec![cursor_answer]))])),
                ],
            };
            let damaged = won(get(&[("/darkrift.alloc/cursor", b"abc", 0, 1)]));
            assert_eq!(
                read(&layout, CANDIDATE, 9, &damaged),
                Ok(AllocOutcome::Won {
                    revision: 21,
                    damaged_cursor: Some(b"abc".to_vec())
                })
            );
            let further = won(get(&[("/darkrift.alloc/cursor", C8.as_bytes(), 0, 1)]));
            assert_eq!(
                read(&layout, CANDIDATE, 9, &further),
                Ok(AllocOutcome::Won {
                    revision: 21,
                    damaged_cursor: None
                })
            );
            let advanced = Answer {
                succeeded: true,
                revision: 21,
                ops: vec![
                    OpAnswer::Put,
                    OpAnswer::Put,
                    OpAnswer::Txn(Answer {
                        succeeded: true,
                        ..Answer::default()
                    }),
                ],
            };
            assert_eq!(
                read(&layout, CANDIDATE, 9, &advanced),
                Ok(AllocOutcome::Won {
                    revision: 21,
                    damaged_cursor: None
                })
            );
        }

        #[test]
        fn a_conflict_returns_the_cursor_and_the_ids_taken_nearby() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let answer = failed(vec![
                get(&[("/darkrift.alloc/cursor", b"00000000000000000012", 0, 1)]),
                get(&[("/darkrift.alloc/slot/00007", b"k", 4, 3)]),
                get(&[
                    ("/darkrift.alloc/slot/00006", b"", 0, 0),
                    ("/darkrift.alloc/slot/00009", b"", 0, 0),
                ]),
                get(&[]),
            ]);
            assert_eq!(
                read(&layout, CANDIDATE, 9, &answer),
                Ok(AllocOutcome::Lost {
                    cursor: 12,
                    taken: vec![7, 6, 9]
                })
            );
            // The slot free but the server key there (a foreign write): taken all the same;
            // a damaged cursor reads as 0.
            let answer = failed(vec![
                get(&[("/darkrift.alloc/cursor", b"abc", 0, 1)]),
                get(&[]),
                get(&[]),
                get(&[("/darkrift/game/7", b"", 0, 0)]),
            ]);
            assert_eq!(
                read(&layout, CANDIDATE, 9, &answer),
                Ok(AllocOutcome::Lost {
                    cursor: 0,
                    taken: vec![7]
                })
            );
        }

        #[test]
        fn our_own_lease_on_the_slot_is_our_lost_answer() {
            let layout = KeyLayout::new("/darkrift").unwrap();
            let answer = failed(vec![
                get(&[]),
                get(&[("/darkrift.alloc/slot/00007", b"k", 9, 17)]),
                get(&[]),
                get(&[("/darkrift/game/7", b"", 9, 17)]),
            ]);
            assert_eq!(
                read(&layout, CANDIDATE, 9, &answer),
                Ok(AllocOutcome::Won {
                    revision: 17,
                    damaged_cursor: None
                })
            );
            assert!(read(&layout, CANDIDATE, 9, &failed(vec![OpAnswer::Put])).is_err());
        }
    }
}
