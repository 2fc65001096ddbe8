//! The allocation cursor on arbitrary input: `alloc::decode_cursor` on arbitrary bytes never
//! panics, whatever it accepts is the canonical encoding of a position within
//! `MAX_POSITION`; and `alloc::choose` / `id_ranges_after` / `position_id` on arbitrary
//! cursors (the raw first 8 bytes as well as whatever the value decodes to), id spaces and
//! spreads never overflow, and a chosen candidate names a free id in range at its position.
#![no_main]

use darkrift_etcd::alloc::{
    choose, decode_cursor, encode_cursor, id_ranges_after, position_id, AllocHint, AllocParams,
    IdSet, MAX_POSITION,
};
use libfuzzer_sys::fuzz_target;

fn word(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, b) in data.iter().skip(at).take(8).enumerate() {
        bytes[i] = *b;
    }
    u64::from_le_bytes(bytes)
}

fuzz_target!(|data: &[u8]| {
    let decoded = decode_cursor(data);
    if let Some(position) = decoded {
        assert!(position <= MAX_POSITION, "out-of-range cursor accepted");
        assert_eq!(
            encode_cursor(position).as_bytes(),
            data,
            "non-canonical cursor accepted"
        );
    }
    let id_space = u16::try_from(word(data, 8) & 0xffff).unwrap_or(1).max(1);
    let spread_window = u16::try_from(word(data, 10) & 0xffff).unwrap_or(1);
    let spread = word(data, 12);
    let params = AllocParams {
        id_space,
        spread_window,
    };
    let mut taken = IdSet::default();
    // A few taken ids from the tail of the input.
    for pair in data.chunks_exact(2).skip(10).take(64) {
        taken.insert(u16::from_le_bytes([pair[0], pair[1]]));
    }
    for cursor in [word(data, 0), decoded.unwrap_or(0)] {
        let _ = position_id(cursor, id_space);
        let ranges = id_ranges_after(cursor, u64::from(spread_window) * 2, id_space);
        assert!(ranges.iter().all(|(lo, hi)| 1 <= *lo && lo <= hi && *hi <= id_space));
        let hint = AllocHint {
            cursor,
            taken: taken.clone(),
        };
        if let Some(c) = choose(&hint, params, spread) {
            assert!((1..=id_space).contains(&c.id), "id {} out of range", c.id);
            assert_eq!(c.id, position_id(c.position, id_space));
            assert!(!hint.taken.contains(c.id), "a taken id was chosen");
            assert!(c.position >= 1 && c.position <= MAX_POSITION + u64::from(id_space));
        }
    }
});
