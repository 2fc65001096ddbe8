//! What an operator (or any client with write access) can do to our keys by hand, on a real
//! etcd: garbage in the allocation cursor, a server record overwritten without its lease or on
//! another lease. The registry repairs each, guarded so that nothing valid is overwritten.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use darkrift_etcd::alloc::{build_repair_txn, decode_cursor, encode_cursor, MAX_POSITION};
use darkrift_etcd::keys::KeyLayout;
use darkrift_etcd_testing::EtcdCluster;
use etcd_client::{EventType, KeyValue, PutOptions, WatchOptions};

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

/// The first `kind` event on `key` from revision `from` on, awaited through a watch within
/// `bound` (history included: an event before the watch opened counts).
async fn first_event(
    raw: &mut etcd_client::Client,
    key: &str,
    from: i64,
    kind: EventType,
    bound: Duration,
) -> KeyValue {
    let options = WatchOptions::new().with_start_revision(from);
    let mut stream = raw.watch(key, Some(options)).await.expect("watch");
    let found = tokio::time::timeout(bound, async {
        while let Some(resp) = stream.message().await.expect("watch stream") {
            let hit = resp.events().iter().find(|e| e.event_type() == kind);
            if let Some(kv) = hit.and_then(etcd_client::Event::kv) {
                return Some(kv.clone());
            }
        }
        None
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {kind:?} on {key} within {bound:?}"))
        .unwrap_or_else(|| panic!("the watch on {key} ended"))
}

/// How an operator overwrote the owner's record.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// `etcdctl put <key> <same value>` without `--lease`.
    LeaselessSameValue,
    /// `etcdctl put <key> <other value>` without `--lease`.
    LeaselessOtherValue,
    /// The same value, put on a lease of the operator's.
    OnForeignLease,
}

/// Registers a server, applies `edit` to its key, awaits the owner's re-put of its original
/// record on its own lease, then drops the owner without deregistering and awaits the key's
/// deletion by the lease expiry.
async fn repaired_then_leaves_on_a_crash(etcd: &EtcdCluster, edit: Edit) {
    // The periodic integrity check runs once per TTL, counted from registration: a repair
    // within half of it came from the watcher's notification about the put.
    let ttl = Duration::from_secs(6);
    let prefix = prefix();
    let (owner, id) = registered(config(etcd, &prefix).with_lease_ttl(ttl), "game", 1).await;
    let mut raw = etcd.client().await.expect("raw client");
    let key = KeyLayout::new(&prefix)
        .expect("layout")
        .server_key("game", id);
    let original = raw.get(key.as_str(), None).await.expect("get").kvs()[0].clone();
    assert_ne!(original.lease(), 0, "registered on a lease");

    let mut foreign = 0;
    let put = match edit {
        Edit::LeaselessSameValue => raw.put(key.as_str(), original.value(), None).await,
        Edit::LeaselessOtherValue => raw.put(key.as_str(), "edited by hand", None).await,
        Edit::OnForeignLease => {
            foreign = raw.lease_grant(60, None).await.expect("grant").id();
            let options = PutOptions::new().with_lease(foreign);
            raw.put(key.as_str(), original.value(), Some(options)).await
        }
    };
    let edited_at = put.expect("edit").header().expect("header").revision();

    let repaired = first_event(&mut raw, &key, edited_at + 1, EventType::Put, ttl / 2).await;
    assert_eq!(
        repaired.lease(),
        original.lease(),
        "{edit:?}: back on the owner's lease"
    );
    assert_eq!(
        repaired.value(),
        original.value(),
        "{edit:?}: the original record"
    );
    assert_eq!(
        repaired.create_revision(),
        original.create_revision(),
        "{edit:?}: the same key version (peers see no leave)"
    );
    assert!(owner.is_registered(), "{edit:?}");
    if foreign != 0 {
        // The key left the foreign lease: revoking that lease no longer deletes it.
        raw.lease_revoke(foreign).await.expect("revoke");
        let still = raw.get(key.as_str(), None).await.expect("get");
        assert_eq!(still.kvs().len(), 1, "{edit:?}: survives the foreign lease");
    }

    // A crash: the keep-alive stops, nothing is deregistered; the lease takes the key along.
    drop(owner);
    let margin = Duration::from_secs(5);
    let from = repaired.mod_revision() + 1;
    first_event(&mut raw, &key, from, EventType::Delete, ttl + margin).await;
}

/// An operator's `etcdctl put` on our key without `--lease`, with the same or other content,
/// or on another lease: the owner notices at once (the watcher sees the put), puts its record
/// back on its own lease, and a crash afterwards still ends in a leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_record_is_put_back_on_the_owners_lease() {
    let etcd = etcd().await;
    tokio::join!(
        repaired_then_leaves_on_a_crash(&etcd, Edit::LeaselessSameValue),
        repaired_then_leaves_on_a_crash(&etcd, Edit::LeaselessOtherValue),
        repaired_then_leaves_on_a_crash(&etcd, Edit::OnForeignLease),
    );
}
