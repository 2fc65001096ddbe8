//! What an operator (or any client with write access) can do to our keys by hand, on a real
//! etcd: garbage in the allocation cursor, a server record overwritten without its lease or on
//! another lease. The registry repairs each, guarded so that nothing valid is overwritten.
#![cfg(feature = "test-support")]

mod common;

use std::collections::HashSet;

use common::*;
use darkrift_etcd::alloc::{build_repair_txn, decode_cursor, encode_cursor, MAX_POSITION};
use darkrift_etcd::keys::KeyLayout;

async fn cursor_value(raw: &mut etcd_client::Client, layout: &KeyLayout) -> Vec<u8> {
    let resp = raw
        .get(layout.cursor_key(), None)
        .await
        .expect("get cursor");
    resp.kvs().first().expect("cursor exists").value().to_vec()
}

/// Every kind of damaged cursor is repaired by the next registration, which succeeds even
/// through a conflict (whose failure branch reads the damaged cursor: that used to fail the
/// registration), and ids stay unique.
#[tokio::test]
async fn a_damaged_cursor_is_repaired_by_the_next_registration() {
    let etcd = etcd().await;
    let mut raw = etcd.client().await.expect("raw client");
    let damaged = [
        "abc".to_owned(),
        "99999999999999999999".to_owned(),
        u64::MAX.to_string(),
        encode_cursor(MAX_POSITION + 1),
        "0000000000000000000500".to_owned(),
        String::new(),
    ];
    for value in damaged {
        let prefix = prefix();
        let layout = KeyLayout::new(&prefix).expect("layout");
        let cfg = config(&etcd, &prefix)
            .with_id_space(16)
            .with_spread_window(1);
        let (_first, a) = registered(cfg.clone(), "g", 1).await;
        raw.put(layout.cursor_key(), value.as_str(), None)
            .await
            .expect("plant the damaged cursor");
        // Hold the next id with a slot nobody's view knows of, so that the next allocation
        // conflicts first and reads the damaged cursor in its failure branch.
        raw.put(layout.slot_key(a + 1), "planted", None)
            .await
            .expect("plant a slot");
        let (_second, b) = registered(cfg.clone(), "g", 2).await;
        let repaired = decode_cursor(&cursor_value(&mut raw, &layout).await)
            .unwrap_or_else(|| panic!("{value:?}: the cursor is still damaged"));
        let (_third, c) = registered(cfg.clone(), "g", 3).await;
        let after = decode_cursor(&cursor_value(&mut raw, &layout).await)
            .unwrap_or_else(|| panic!("{value:?}: the cursor is damaged again"));
        assert!(
            after > repaired,
            "{value:?}: the cursor advances from the repair"
        );
        let ids: HashSet<u16> = [a, a + 1, b, c].into_iter().collect();
        assert_eq!(
            ids.len(),
            4,
            "{value:?}: ids {a}, {b}, {c} and the planted {}",
            a + 1
        );
    }
}

/// A cursor at the top of the valid range is written past it once, then repaired (the
/// round-robin starts over) by the following registration; ids stay unique.
#[tokio::test]
async fn a_cursor_at_the_top_of_the_range_starts_over() {
    let etcd = etcd().await;
    let mut raw = etcd.client().await.expect("raw client");
    let prefix = prefix();
    let layout = KeyLayout::new(&prefix).expect("layout");
    raw.put(layout.cursor_key(), encode_cursor(MAX_POSITION), None)
        .await
        .expect("plant the cursor");
    let cfg = config(&etcd, &prefix)
        .with_id_space(16)
        .with_spread_window(1);
    let (_first, a) = registered(cfg.clone(), "g", 1).await;
    assert_eq!(
        cursor_value(&mut raw, &layout).await,
        encode_cursor(MAX_POSITION + 1).into_bytes(),
        "one step past the top"
    );
    let (_second, b) = registered(cfg.clone(), "g", 2).await;
    let cursor = decode_cursor(&cursor_value(&mut raw, &layout).await).expect("repaired");
    assert!(cursor <= 16, "started over: {cursor}");
    assert_ne!(a, b);
}

/// The repair is guarded by the exact damaged value: a cursor someone advanced meanwhile is
/// never lowered, and of two repairs only the first applies.
#[tokio::test]
async fn the_repair_never_overwrites_a_valid_advance() {
    let etcd = etcd().await;
    let mut raw = etcd.client().await.expect("raw client");
    let layout = KeyLayout::new(&prefix()).expect("layout");
    raw.put(layout.cursor_key(), "abc", None)
        .await
        .expect("plant");
    let repair_then_read = |position: u64| {
        let (mut raw, layout) = (raw.clone(), layout.clone());
        async move {
            raw.txn(build_repair_txn(&layout, b"abc", position))
                .await
                .expect("repair");
            decode_cursor(&cursor_value(&mut raw, &layout).await)
        }
    };
    assert_eq!(repair_then_read(7).await, Some(7), "the repair applies");
    // A second server read the same damage and repairs late, with a lower position.
    assert_eq!(repair_then_read(5).await, Some(7), "never lowered");
    // A late repair with a higher position is an ordinary monotonic advance.
    assert_eq!(repair_then_read(9).await, Some(9), "advanced");
}
