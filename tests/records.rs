//! Records that lie (issue 11), on a real etcd: a record edited in place, a record whose
//! lease is stripped, and two keys claiming one id. A watcher started before the writes (live
//! diff) and one started after (snapshot) must end with the same view and have announced the
//! same changes.
//!
//! The records are written with a raw client on a lease of its own, as `etcdctl` would, and
//! not by a registered connector: its supervisor reacts to changes of its own key, and these
//! tests are about what the watchers make of the keys.

mod common;

use std::collections::BTreeMap;

use common::*;
use darkrift_etcd::{Event, EventStream, Registration};
use darkrift_etcd_testing::EtcdCluster;
use etcd_client::{Client, PutOptions, Txn, TxnOp};

/// Writes records the way an operator's `etcdctl` would: directly, on a lease of its own
/// that outlives the test (or on none).
struct Writer {
    raw: Client,
    prefix: String,
    lease: i64,
}

impl Writer {
    async fn new(etcd: &EtcdCluster, prefix: &str) -> Self {
        let mut raw = etcd.client().await.expect("raw client");
        let lease = raw.lease_grant(600, None).await.expect("lease").id();
        Writer {
            raw,
            prefix: prefix.to_owned(),
            lease,
        }
    }

    /// Puts the record of server `id` in `group` at `host` under its key, on the lease, or
    /// on none (`etcdctl put` without `--lease`) when `on_lease` is false.
    async fn put(
        &mut self,
        (group, id): (&str, u16),
        host: &str,
        props: &[(&str, &str)],
        on_lease: bool,
    ) {
        let options = on_lease.then(|| PutOptions::new().with_lease(self.lease));
        let key = format!("{}/{group}/{id}", self.prefix);
        let value = record(group, id, host, props);
        self.raw.put(key, value, options).await.expect("put");
    }
}

/// The record of server `id` in `group` at `host`, as a registered server writes it.
fn record(group: &str, id: u16, host: &str, props: &[(&str, &str)]) -> Vec<u8> {
    let props = props
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<BTreeMap<_, _>>();
    Registration::new(group, host, 4000 + id, props)
        .expect("valid registration")
        .encode(id, u64::from(id), 0)
}

/// The next `n` membership events, as `join <id> <group> <host>` / `leave <id> <group>`, all
/// at one revision (each change here is one etcd revision).
async fn changes(events: &mut EventStream, n: usize) -> Vec<String> {
    let got = collect_until(events, PROMPT, |e| {
        e.iter().filter(|e| e.is_membership()).count() >= n
    })
    .await;
    let got: Vec<&Event> = got.iter().filter(|e| e.is_membership()).collect();
    let revisions: Vec<i64> = got.iter().map(|e| e.revision()).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] == w[1]),
        "one revision: {got:?}"
    );
    got.iter()
        .map(|e| match e {
            Event::Join { server, .. } => {
                format!("join {} {} {}", server.id, server.group, server.host)
            }
            Event::Leave { id, group, .. } => format!("leave {id} {group}"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// An edit in place (same key, same lease, another host or properties) is a leave then a
/// join at both watchers; an identical re-put is nothing; stripping the lease is a leave.
#[tokio::test]
async fn an_edited_or_lease_stripped_record_reaches_every_watcher_alike() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut w = Writer::new(&etcd, &prefix).await;
    let (before, mut before_events) = synced(config(&etcd, &prefix)).await;
    w.put(("game", 5), "10.0.0.1", &[], true).await;
    assert_eq!(
        changes(&mut before_events, 1).await,
        ["join 5 game 10.0.0.1"]
    );
    let (after, mut after_events) = connect(config(&etcd, &prefix)).await;
    assert_eq!(join_ids(&until_synced(&mut after_events).await), [5]);

    // `etcdctl put` of an edited record on the same lease: another host.
    w.put(("game", 5), "10.0.0.2", &[], true).await;
    for events in [&mut before_events, &mut after_events] {
        assert_eq!(
            changes(events, 2).await,
            ["leave 5 game", "join 5 game 10.0.0.2"]
        );
    }
    assert_eq!(before.servers(), after.servers());
    assert_eq!(before.servers()[0].host, "10.0.0.2");

    // Properties only: also a leave and a join (DarkRift delivers properties at a join).
    let map = [("map", "dust")];
    w.put(("game", 5), "10.0.0.2", &map, true).await;
    for events in [&mut before_events, &mut after_events] {
        assert_eq!(
            changes(events, 2).await,
            ["leave 5 game", "join 5 game 10.0.0.2"]
        );
    }
    assert_eq!(before.servers(), after.servers());
    assert_eq!(before.servers()[0].properties["map"], "dust");

    // The same record again (the owner re-attaching its lease): nothing. The next event is
    // the join of another server written afterwards.
    w.put(("game", 5), "10.0.0.2", &map, true).await;
    w.put(("game", 6), "10.0.0.6", &[], true).await;
    for events in [&mut before_events, &mut after_events] {
        assert_eq!(changes(events, 1).await, ["join 6 game 10.0.0.6"]);
    }

    // `etcdctl put` without `--lease` strips the lease: the record can never expire, so it
    // is no longer a member.
    w.put(("game", 5), "10.0.0.2", &map, false).await;
    for events in [&mut before_events, &mut after_events] {
        assert_eq!(changes(events, 1).await, ["leave 5 game"]);
    }
    assert_eq!(before.servers(), after.servers());
    assert_eq!(
        before.servers().iter().map(|s| s.id).collect::<Vec<_>>(),
        [6]
    );
    assert_eq!((before.skipped_records(), after.skipped_records()), (1, 1));
}

/// Two keys claiming one id: the earliest created holds it at both watchers, although the
/// later one sorts first (a snapshot reads it first); a tie within one transaction goes to
/// the smallest key; when the holder is deleted the other claim is promoted at both.
#[tokio::test]
async fn duplicate_claims_resolve_alike_in_every_watcher() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut w = Writer::new(&etcd, &prefix).await;
    let (before, mut before_events) = synced(config(&etcd, &prefix)).await;

    // lobby/5 first, then game/5 ("game" sorts before "lobby").
    w.put(("lobby", 5), "l", &[], true).await;
    w.put(("game", 5), "g", &[], true).await;
    // a/7 and a-b/7 in one transaction: one create revision; "/a-b/7" < "/a/7".
    let on_lease = || Some(PutOptions::new().with_lease(w.lease));
    let claim = |group: &str, host: &str| {
        let key = format!("{prefix}/{group}/7");
        TxnOp::put(key, record(group, 7, host, &[]), on_lease())
    };
    let txn = Txn::new().and_then([claim("a", "a"), claim("a-b", "ab")]);
    w.raw.txn(txn).await.expect("txn");
    assert_eq!(changes(&mut before_events, 1).await, ["join 5 lobby l"]);
    assert_eq!(changes(&mut before_events, 1).await, ["join 7 a-b ab"]);

    let (after, mut after_events) = connect(config(&etcd, &prefix)).await;
    assert_eq!(join_ids(&until_synced(&mut after_events).await), [5, 7]);
    assert_eq!(before.servers(), after.servers());
    let groups: Vec<String> = after.servers().into_iter().map(|s| s.group).collect();
    assert_eq!(groups, ["lobby", "a-b"]);
    assert_eq!(
        (before.shadowed_records(), after.shadowed_records()),
        (2, 2)
    );

    // The holder deleted: the other claim is promoted, at both.
    w.raw
        .delete(format!("{prefix}/lobby/5"), None)
        .await
        .expect("delete");
    for events in [&mut before_events, &mut after_events] {
        assert_eq!(changes(events, 2).await, ["leave 5 lobby", "join 5 game g"]);
    }
    assert_eq!(before.servers(), after.servers());

    // The lease revoked: both claims of 7 go in one revision, one leave (the loser is never
    // announced), and the rest of the view alike.
    w.raw.lease_revoke(w.lease).await.expect("revoke");
    for events in [&mut before_events, &mut after_events] {
        let mut got = changes(events, 2).await;
        got.sort();
        assert_eq!(got, ["leave 5 game", "leave 7 a-b"]);
    }
    assert!(before.servers().is_empty());
    assert!(after.servers().is_empty());
}
