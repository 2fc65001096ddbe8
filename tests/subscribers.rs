//! Several subscribers on one connector, on a real etcd: a subscriber that reads nothing until
//! its queue overflowed delays neither the other subscriber nor the keep-alive, and once it
//! reads it is caught up to etcd's view, in revision order, never two joins for an id without
//! a leave between them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use darkrift_etcd::{Connector, Event, EventStream, ServerInfo};
use tokio::sync::mpsc;

/// Applies `events` to a view as a host would (id → server), checking the contract on the
/// way: revisions never decrease, joins and leaves alternate per id.
fn replay(view: &mut BTreeMap<u16, ServerInfo>, last_revision: &mut i64, events: &[Event]) {
    for event in events {
        assert!(
            event.revision() >= *last_revision,
            "revision went back: {event:?} after {last_revision}"
        );
        *last_revision = event.revision();
        match event {
            Event::Join { server, .. } => {
                let before = view.insert(server.id, server.clone());
                assert!(
                    before.is_none(),
                    "two joins for {} without a leave",
                    server.id
                );
            }
            Event::Leave { id, .. } => {
                assert!(view.remove(id).is_some(), "a leave for {id}, not joined");
            }
            _ => {}
        }
    }
}

/// etcd's view (a fresh one-shot listing): id → server.
async fn etcd_view(cfg: &darkrift_etcd::ConnectorConfig) -> BTreeMap<u16, ServerInfo> {
    let servers = darkrift_etcd::list_servers(cfg)
        .await
        .expect("list")
        .servers;
    servers.into_iter().map(|s| (s.id, s)).collect()
}

/// Reads `stream` on a task of its own, as fast as events come.
fn pump(mut stream: EventStream) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = stream.recv().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lease `key` is bound to.
async fn lease_of(raw: &mut etcd_client::Client, key: &str) -> i64 {
    let resp = raw.get(key, None).await.expect("get");
    resp.kvs().first().expect("the key").lease()
}

/// Reads `events` until the view built from them equals `want`.
async fn read_until_view(
    events: &mut mpsc::UnboundedReceiver<Event>,
    view: &mut BTreeMap<u16, ServerInfo>,
    last_revision: &mut i64,
    want: &BTreeMap<u16, ServerInfo>,
) -> Vec<Event> {
    let mut got = Vec::new();
    let reached = tokio::time::timeout(PROMPT, async {
        while view != want {
            let event = events.recv().await.expect("stream open");
            replay(view, last_revision, std::slice::from_ref(&event));
            got.push(event);
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "view never reached etcd's: have {:?}, want {:?}",
        view.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    got
}

#[tokio::test]
async fn a_slow_subscriber_delays_nobody_and_is_caught_up_to_etcd() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut cfg = config(&etcd, &prefix);
    cfg.event_queue = 4;
    let a = Connector::connect(cfg.clone()).await.expect("connect");
    let mut fast = pump(a.subscribe());
    let slow = a.subscribe();
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    let mut status = a.status().expect("status");
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("raw client");
    let key = format!("{prefix}/game/{id}");
    let lease = lease_of(&mut raw, &key).await;

    // Many changes while the slow one reads nothing: 24 servers join, 8 of them leave.
    let mut others = Vec::new();
    for port in 2..26 {
        others.push(registered(config(&etcd, &prefix), "lobby", port).await.0);
    }
    for c in others.drain(..8) {
        c.deregister_server().await.expect("deregister");
    }
    let want = etcd_view(&cfg).await;
    assert_eq!(want.len(), 17);
    assert!(want.contains_key(&id));

    // The fast one keeps up while the slow one's queue is long overflowed.
    let (mut fast_view, mut fast_rev) = (BTreeMap::new(), 0);
    let fast_got = read_until_view(&mut fast, &mut fast_view, &mut fast_rev, &want).await;
    assert_eq!(
        fast_got.iter().filter(|e| e.is_membership()).count(),
        1 + 24 + 8,
        "every join and leave, one by one"
    );

    // The keep-alive is not held up either: over two TTLs with the slow queue full, the fence
    // never drops and the lease stays the same.
    let watch_for = a.config().lease_ttl * 2;
    let started = tokio::time::Instant::now();
    while started.elapsed() < watch_for {
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        assert!(status.borrow().is_registered(), "fence dropped");
    }
    assert_eq!(a.registered_id(), Some(id));
    assert_eq!(
        lease_of(&mut raw, &key).await,
        lease,
        "same lease, never lost"
    );

    // More changes after the overflow, seen by the fast one at once.
    for c in others.drain(..4) {
        c.deregister_server().await.expect("deregister");
    }
    let want = etcd_view(&cfg).await;
    assert_eq!(want.len(), 13);
    read_until_view(&mut fast, &mut fast_view, &mut fast_rev, &want).await;

    // Now the slow one reads: what its queue held, then a catch-up to the current view, in
    // revision order, with no second join for any id.
    let mut slow = pump(slow);
    let (mut slow_view, mut slow_rev) = (BTreeMap::new(), 0);
    let slow_got = read_until_view(&mut slow, &mut slow_view, &mut slow_rev, &want).await;
    assert_eq!(slow_view, fast_view);
    let slow_changes = slow_got.iter().filter(|e| e.is_membership()).count();
    eprintln!(
        "slow subscriber: {} events ({slow_changes} joins and leaves) for the {} changes the fast one got one by one",
        slow_got.len(),
        1 + 24 + 8 + 4
    );
    assert!(
        slow_changes < 1 + 24 + 8 + 4,
        "it lagged (caught up instead of replaying every change): {slow_changes} changes"
    );
    assert!(
        slow_got.iter().any(|e| matches!(e, Event::Synced { .. })),
        "it got the synced marker"
    );

    // Both then go on in order: one more join reaches both.
    let (_late, late_id) = registered(config(&etcd, &prefix), "lobby", 99).await;
    let want = etcd_view(&cfg).await;
    assert!(want.contains_key(&late_id));
    read_until_view(&mut fast, &mut fast_view, &mut fast_rev, &want).await;
    read_until_view(&mut slow, &mut slow_view, &mut slow_rev, &want).await;

    // A subscriber made now starts with the current view, then synced, at one revision.
    let mut newcomer = a.subscribe();
    let first = collect_until(&mut newcomer, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Synced { .. }))
    })
    .await;
    let (mut new_view, mut new_rev) = (BTreeMap::new(), 0);
    replay(&mut new_view, &mut new_rev, &first);
    assert_eq!(new_view, want);
    assert!(
        first.iter().all(|e| e.revision() == new_rev),
        "one revision: {first:?}"
    );
}

#[tokio::test]
async fn lifecycle_events_come_in_the_view_order_for_every_subscriber() {
    let etcd = etcd().await;
    let prefix = prefix();
    let cfg = config(&etcd, &prefix);
    let a = Connector::connect(cfg.clone()).await.expect("connect");
    let mut one = a.subscribe();
    let mut two = a.subscribe();
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    // Revoke our lease behind the connector's back: it notices, re-registers, and both
    // subscribers see the same sequence, in revision order.
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .expect("raw client");
    let key = format!("{prefix}/game/{id}");
    let lease = lease_of(&mut raw, &key).await;
    raw.lease_revoke(lease).await.expect("revoke");
    // Until the re-registration and the join of its new key (either may come first).
    let done = |e: &[Event]| {
        let rejoined = e
            .iter()
            .filter(|e| matches!(e, Event::Join { server, .. } if server.id == id))
            .count()
            == 2;
        rejoined && e.iter().any(|e| matches!(e, Event::Reregistered { .. }))
    };
    let got_one = collect_until(&mut one, PROMPT, done).await;
    let got_two = collect_until(&mut two, PROMPT, done).await;
    assert_eq!(got_one, got_two, "one sequence for every subscriber");
    let (mut view, mut revision) = (BTreeMap::new(), 0);
    replay(&mut view, &mut revision, &got_one);
    let lost = got_one
        .iter()
        .position(|e| matches!(e, Event::LeaseLost { .. }))
        .expect("lease lost");
    let own_leave = got_one
        .iter()
        .position(|e| matches!(e, Event::Leave { id: l, .. } if *l == id))
        .expect("our leave");
    // The loss is noticed (keep-alive answer) and the leave seen (watch) independently; the
    // rule only says each is placed where the view stood: both orders are possible, but the
    // lease-lost event's revision is the view's at that point.
    let Event::LeaseLost { revision: at, .. } = &got_one[lost] else {
        unreachable!()
    };
    let Event::Leave { revision: left, .. } = &got_one[own_leave] else {
        unreachable!()
    };
    if lost < own_leave {
        assert!(at < left, "lost before the leave was applied: {got_one:?}");
    } else {
        assert!(at >= left, "lost after the leave was applied: {got_one:?}");
    }
    let again = got_one
        .iter()
        .position(|e| matches!(e, Event::Reregistered { .. }))
        .expect("re-registered");
    let Event::Reregistered {
        id: new_id,
        create_revision,
        revision,
        ..
    } = &got_one[again]
    else {
        unreachable!()
    };
    assert_eq!(*new_id, id, "same id");
    let rejoin = got_one
        .iter()
        .rposition(|e| matches!(e, Event::Join { server, .. } if server.id == id))
        .expect("our join");
    assert_eq!(got_one[rejoin].revision(), *create_revision);
    // Sequenced where the view stood: before the watcher applied the new key, or after.
    if again < rejoin {
        assert!(revision < create_revision, "{got_one:?}");
    } else {
        assert!(revision >= create_revision, "{got_one:?}");
    }
    assert!(lost < again);
}
