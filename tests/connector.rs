//! The core connector end to end on a real etcd (issue: core connector).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use darkrift_etcd::record::RecordError;
use darkrift_etcd::{Connector, ConnectorConfig, Error, Event, PeerStatus};
use etcd_client::{GetOptions, PutOptions};

/// 50 registrations in parallel across 3 groups get 50 distinct ids, and every watcher sees
/// the 50 joins exactly once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_registrations_get_distinct_ids_and_every_watcher_sees_each_once() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut watchers = Vec::new();
    for _ in 0..3 {
        let (c, mut ev) = connect(config(&etcd, &prefix)).await;
        assert!(until_synced(&mut ev).await.is_empty());
        watchers.push((c, ev));
    }
    let groups = ["lobby", "game", "chat"];
    let mut tasks = Vec::new();
    for i in 0..50u16 {
        let cfg = config(&etcd, &prefix);
        tasks.push(tokio::spawn(async move {
            let c = Connector::connect(cfg).await.expect("connect");
            let id = c
                .register_server(
                    groups[usize::from(i) % 3],
                    "127.0.0.1",
                    5000 + i,
                    no_props(),
                )
                .await
                .expect("register");
            (c, id, i)
        }));
    }
    let mut registered = Vec::new();
    for t in tasks {
        registered.push(t.await.expect("task"));
    }
    let ids: HashSet<u16> = registered.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids.len(), 50, "ids must be distinct: {ids:?}");
    assert!(!ids.contains(&0));

    for (_, events) in &mut watchers {
        let got = collect_until(events, PROMPT, |e| join_ids(e).len() >= 50).await;
        let seen = join_ids(&got);
        assert_eq!(seen.len(), 50, "exactly 50 joins: {got:?}");
        assert_eq!(
            seen.iter().copied().collect::<HashSet<_>>(),
            ids,
            "the same 50 ids"
        );
        let revisions: Vec<i64> = got.iter().map(Event::revision).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing revisions: {revisions:?}"
        );
        // Nothing more: no duplicate join arrives later.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), events.recv())
                .await
                .is_err(),
            "no further event"
        );
    }
    // Each server's group and port is what it registered.
    let view = watchers[0].0.servers();
    for (c, id, i) in &registered {
        let s = view.iter().find(|s| s.id == *id).expect("in view");
        assert_eq!(c.registered_id(), Some(*id));
        assert!(groups.contains(&s.group.as_str()));
        assert_eq!(s.group, groups[usize::from(*i) % 3]);
        assert_eq!(s.port, 5000 + i);
    }
}

/// A connector started later sees every existing server in its snapshot, then `Synced`.
#[tokio::test]
async fn late_connector_sees_the_snapshot_then_synced() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut early = Vec::new();
    for (i, group) in ["a", "b", "a"].iter().enumerate() {
        let c = Connector::connect(config(&etcd, &prefix))
            .await
            .expect("connect");
        let mut props = BTreeMap::new();
        props.insert("region".to_owned(), format!("r{i}"));
        let id = c
            .register_server(group, "10.0.0.1", 7000, props)
            .await
            .expect("register");
        early.push((c, id));
    }
    let (_late, mut events) = connect(config(&etcd, &prefix)).await;
    let snapshot = until_synced(&mut events).await;
    let mut seen = join_ids(&snapshot);
    seen.sort_unstable();
    let mut want: Vec<u16> = early.iter().map(|(_, id)| *id).collect();
    want.sort_unstable();
    assert_eq!(seen, want);
    for e in &snapshot {
        let Event::Join { server, .. } = e else {
            panic!("only joins before synced: {e:?}")
        };
        assert_eq!(server.host, "10.0.0.1");
        assert_eq!(server.port, 7000);
        assert!(server.properties["region"].starts_with('r'));
    }
}

/// Graceful deregistration: every peer sees the leave; our keys and our lease are gone.
#[tokio::test]
async fn graceful_deregistration_removes_keys_and_lease_and_peers_see_the_leave() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let (me, id) = registered(config(&etcd, &prefix), "game", 4296).await;
    let joined = next(&mut peer_events, PROMPT).await;
    assert!(matches!(joined, Event::Join { ref server, .. } if server.id == id));

    let mut raw = etcd.client().await.expect("raw client");
    let lease = raw
        .get(format!("{prefix}/game/{id}"), None)
        .await
        .expect("get")
        .kvs()[0]
        .lease();
    assert_ne!(lease, 0, "the server key is bound to a lease");

    me.deregister_server().await.expect("deregister");
    match next(&mut peer_events, PROMPT).await {
        Event::Leave {
            id: left, group, ..
        } => {
            assert_eq!(left, id);
            assert_eq!(group, "game");
        }
        other => panic!("expected a leave, got {other:?}"),
    }
    assert_eq!(peer.servers().len(), 0);
    let left_keys = raw
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let slot_keys = raw
        .get(
            format!("{prefix}.alloc/slot/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert_eq!(
        left_keys.count() - 1,
        0,
        "only the cursor is left under {prefix}*: {:?}",
        left_keys.kvs()
    );
    assert_eq!(slot_keys.count(), 0);
    let ttl = raw
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl")
        .ttl();
    assert_eq!(ttl, -1, "the lease is revoked");
    assert!(matches!(
        me.deregister_server().await,
        Err(Error::NotRegistered)
    ));
}

/// A deregistration marks the record departing before it deletes it, and peers' leave says
/// so; a lease revoked under a live holder (etcd losing it, an operator) is no departure.
#[tokio::test]
async fn a_deregistration_is_a_departure_a_revoked_lease_is_not() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let (leaving, id) = registered(config(&etcd, &prefix), "game", 4296).await;
    let (_lost, lost_id) = registered(config(&etcd, &prefix), "game", 4297).await;
    let joins = collect_until(&mut peer_events, PROMPT, |e| join_ids(e).len() >= 2).await;
    assert_eq!(join_ids(&joins).len(), 2, "{joins:?}");

    leaving.deregister_server().await.expect("deregister");
    match next(&mut peer_events, PROMPT).await {
        Event::Leave {
            id: left,
            departing,
            ..
        } => {
            assert_eq!(left, id);
            assert!(departing, "a deregistration is a departure");
        }
        other => panic!("expected a leave, got {other:?}"),
    }

    let mut raw = etcd.client().await.expect("raw client");
    let lease = raw
        .get(format!("{prefix}/game/{lost_id}"), None)
        .await
        .expect("get")
        .kvs()[0]
        .lease();
    raw.lease_revoke(lease).await.expect("revoke");
    let got = collect_until(&mut peer_events, PROMPT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::Leave { id, .. } if *id == lost_id))
    })
    .await;
    let leave = got
        .iter()
        .find(|e| matches!(e, Event::Leave { id, .. } if *id == lost_id))
        .expect("the leave of the revoked lease");
    assert!(
        matches!(
            leave,
            Event::Leave {
                departing: false,
                ..
            }
        ),
        "a lost lease is no departure: {leave:?}"
    );
}

/// Malformed keys and values written under the prefix by someone else are skipped and
/// counted; watchers keep working and emit nothing for them.
#[tokio::test]
async fn malformed_records_are_skipped_counted_and_harmless() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw client");
    // Present before the snapshot.
    raw.put(format!("{prefix}/game/notanumber"), "x", None)
        .await
        .expect("put");
    raw.put(format!("{prefix}/game/7"), "not a protobuf", None)
        .await
        .expect("put");
    let (watcher, mut events) = connect(config(&etcd, &prefix)).await;
    assert!(
        until_synced(&mut events).await.is_empty(),
        "no bogus join from the snapshot"
    );
    assert_eq!(watcher.skipped_records(), 2);
    // Arriving through the watch.
    raw.put(format!("{prefix}/game/0"), "x", None)
        .await
        .expect("put");
    raw.put(format!("{prefix}/game/017"), "x", None)
        .await
        .expect("put");
    raw.put(format!("{prefix}/bad group/3"), "x", None)
        .await
        .expect("put");
    raw.put(format!("{prefix}/game"), "x", None)
        .await
        .expect("put");
    raw.put(format!("{prefix}/game/8"), vec![0xff, 0xff, 0xff], None)
        .await
        .expect("put");
    raw.delete(format!("{prefix}/game/7"), None)
        .await
        .expect("delete");
    // A real registration still comes through, and it is the next event.
    let (_c, id) = registered(config(&etcd, &prefix), "game", 4000).await;
    match next(&mut events, PROMPT).await {
        Event::Join { server, .. } => assert_eq!(server.id, id),
        other => panic!("expected our join first, got {other:?}"),
    }
    assert_eq!(watcher.skipped_records(), 7);
    assert_eq!(watcher.servers().len(), 1);
}

/// Unreachable endpoints: a clear error within the connect timeout.
#[tokio::test]
async fn unreachable_endpoints_fail_within_the_connect_timeout() {
    let port = darkrift_etcd_testing::free_port().expect("port");
    let timeout = Duration::from_secs(1);
    let cfg =
        ConnectorConfig::new([format!("http://127.0.0.1:{port}")]).with_connect_timeout(timeout);
    let started = tokio::time::Instant::now();
    let err = Connector::connect(cfg)
        .await
        .expect_err("nothing listens there");
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&port.to_string()),
        "names the endpoint: {err}"
    );
    assert!(err.is_retryable());
    assert!(
        elapsed <= timeout + Duration::from_millis(500),
        "took {elapsed:?}"
    );
}

/// Invalid group name and port 0: a clear typed error and nothing written.
#[tokio::test]
async fn invalid_input_is_rejected_and_nothing_is_written() {
    let etcd = etcd().await;
    let prefix = prefix();
    let c = Connector::connect(config(&etcd, &prefix))
        .await
        .expect("connect");
    let mut raw = etcd.client().await.expect("raw client");
    let before = current_revision(&mut raw).await;
    for (group, port) in [("", 1), ("has space", 1), ("a/b", 1), (&*"x".repeat(65), 1)] {
        let err = c
            .register_server(group, "127.0.0.1", port, no_props())
            .await
            .expect_err("invalid group");
        assert!(
            matches!(
                err,
                Error::InvalidRegistration(RecordError::InvalidGroup { .. })
            ),
            "{err}"
        );
    }
    let err = c
        .register_server("game", "127.0.0.1", 0, no_props())
        .await
        .expect_err("port 0");
    assert!(
        matches!(err, Error::InvalidRegistration(RecordError::PortZero)),
        "{err}"
    );
    assert!(err.to_string().contains("port 0"));
    let err = c
        .register_server("game", "", 1, no_props())
        .await
        .expect_err("empty host");
    assert!(
        matches!(
            err,
            Error::InvalidRegistration(RecordError::InvalidHost { .. })
        ),
        "{err}"
    );
    let after = raw
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get");
    assert_eq!(
        after.header().expect("header").revision(),
        before,
        "no write reached etcd"
    );
    assert_eq!(after.count(), 0);
    assert_eq!(
        raw.leases().await.expect("leases").leases().len(),
        0,
        "no lease granted"
    );
    assert_eq!(c.registration_requests(), 0);
}

/// A stale handle never deletes a newer registration of the same id: the old lease expires
/// while the old server is cut off, the id is registered again, then the old handle
/// deregisters; the new key survives.
#[tokio::test]
async fn stale_handle_never_deletes_a_newer_registration() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = darkrift_etcd_testing::FaultProxy::start(&etcd.endpoint(0))
        .await
        .expect("proxy");
    let cfg = config(&etcd, &prefix)
        .with_id_space(1)
        .with_lease_ttl(Duration::from_secs(30));
    let old_cfg = ConnectorConfig {
        endpoints: vec![proxy.endpoint()],
        ..cfg.clone()
    };
    let old = Connector::connect(old_cfg).await.expect("connect");
    assert_eq!(
        old.register_server("game", "127.0.0.1", 1, no_props())
            .await
            .expect("register"),
        1
    );
    // The old server is cut off (it cannot notice anything), and its lease goes away.
    proxy.stall();
    let mut raw = etcd.client().await.expect("raw client");
    let key = format!("{prefix}/game/1");
    let old_lease = raw.get(key.clone(), None).await.expect("get").kvs()[0].lease();
    raw.lease_revoke(old_lease).await.expect("revoke");
    // The id is registered again by another server.
    let (new, _new_events) = synced(cfg).await;
    assert_eq!(
        new.register_server("lobby", "127.0.0.2", 2, no_props())
            .await
            .expect("register"),
        1
    );
    let new_key = format!("{prefix}/lobby/1");
    let before = raw.get(new_key.clone(), None).await.expect("get").kvs()[0].create_revision();
    // The old handle, still believing it is registered, deregisters: its guarded delete
    // matches nothing of the new registration.
    assert!(
        old.is_registered(),
        "the old handle's local deadline has not passed yet"
    );
    proxy.restore();
    old.deregister_server()
        .await
        .expect("deregister is not an error");
    let after = raw.get(new_key, None).await.expect("get");
    assert_eq!(after.kvs().len(), 1, "the new key survives");
    assert_eq!(after.kvs()[0].create_revision(), before);
    let slot = raw
        .get(format!("{prefix}.alloc/slot/00001"), None)
        .await
        .expect("get");
    assert_eq!(slot.kvs().len(), 1, "the new slot survives");
    assert!(new.is_registered());
}

/// The cursor wraps: freed ids come back only after the wrap, live ids are skipped, and a
/// full id space is a clear error.
#[tokio::test]
async fn cursor_wraps_reuses_freed_ids_skips_live_ones_and_reports_a_full_space() {
    let etcd = etcd().await;
    let prefix = prefix();
    let cfg = config(&etcd, &prefix)
        .with_id_space(4)
        .with_spread_window(1);
    let mut servers = Vec::new();
    for expected in [1, 2, 3] {
        let c = Connector::connect(cfg.clone()).await.expect("connect");
        assert_eq!(
            c.register_server("g", "h", 1, no_props())
                .await
                .expect("register"),
            expected
        );
        servers.push(c);
    }
    // Free id 1: it is not reused before the wrap; 4 comes first.
    servers
        .remove(0)
        .deregister_server()
        .await
        .expect("deregister");
    let c = Connector::connect(cfg.clone()).await.expect("connect");
    assert_eq!(
        c.register_server("g", "h", 1, no_props())
            .await
            .expect("register"),
        4
    );
    servers.push(c);
    // Free id 3; the cursor wraps: 1 is free again, 2 is live and skipped.
    servers
        .remove(1)
        .deregister_server()
        .await
        .expect("deregister");
    let c = Connector::connect(cfg.clone()).await.expect("connect");
    assert_eq!(
        c.register_server("g", "h", 1, no_props())
            .await
            .expect("register"),
        1
    );
    servers.push(c);
    let c = Connector::connect(cfg.clone()).await.expect("connect");
    assert_eq!(
        c.register_server("g", "h", 1, no_props())
            .await
            .expect("register"),
        3
    );
    servers.push(c);
    // All four live: the next registration fails with the clear error, and writes nothing.
    let c = Connector::connect(cfg.clone()).await.expect("connect");
    let err = c
        .register_server("g", "h", 1, no_props())
        .await
        .expect_err("full");
    assert!(
        matches!(err, Error::IdSpaceExhausted { id_space: 4 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("no free server id"));
    assert!(!err.is_retryable());
    assert_eq!(c.registered_id(), None);
}

/// `handle_connection_failure`: a live peer stays; a peer whose key is gone gets its leave.
#[tokio::test]
async fn connection_failure_rereads_the_peer() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (me, mut events) = synced(config(&etcd, &prefix)).await;
    let (peer, id) = registered(config(&etcd, &prefix), "game", 9).await;
    next(&mut events, PROMPT).await;
    assert_eq!(
        me.handle_connection_failure(id).await.expect("check"),
        PeerStatus::Registered
    );
    assert_eq!(
        me.handle_connection_failure(999).await.expect("check"),
        PeerStatus::Unknown
    );
    peer.deregister_server().await.expect("deregister");
    // Whether the watch or the re-read delivers it, exactly one leave arrives.
    let status = me.handle_connection_failure(id).await.expect("check");
    assert!(matches!(status, PeerStatus::Gone | PeerStatus::Unknown));
    assert!(matches!(next(&mut events, PROMPT).await, Event::Leave { id: left, .. } if left == id));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err()
    );
}

/// The registration record is readable by any protobuf reader and bound to the lease.
#[tokio::test]
async fn stored_record_layout() {
    let etcd = etcd().await;
    let prefix = prefix();
    let c = Connector::connect(config(&etcd, &prefix))
        .await
        .expect("connect");
    let mut props = BTreeMap::new();
    props.insert("k".to_owned(), "v".to_owned());
    let id = c
        .register_server("game", "10.1.2.3", 4296, props.clone())
        .await
        .expect("register");
    let mut raw = etcd.client().await.expect("raw client");
    let kv = raw
        .get(format!("{prefix}/game/{id}"), None)
        .await
        .expect("get")
        .kvs()[0]
        .clone();
    let rec: darkrift_etcd::record::ServerRecord =
        prost::Message::decode(kv.value()).expect("protobuf");
    assert_eq!(
        (rec.id, rec.group.as_str(), rec.host.as_str(), rec.port),
        (u32::from(id), "game", "10.1.2.3", 4296)
    );
    assert_eq!(rec.properties, props);
    assert_eq!(rec.schema_version, 1);
    let slot = raw
        .get(format!("{prefix}.alloc/slot/{id:05}"), None)
        .await
        .expect("get")
        .kvs()[0]
        .clone();
    assert_eq!(
        slot.lease(),
        kv.lease(),
        "slot and server key share the lease"
    );
    assert_eq!(
        slot.create_revision(),
        kv.create_revision(),
        "written by one transaction"
    );
    let _ = raw.put("unrelated", "x", Some(PutOptions::new())).await;
    assert_eq!(
        c.registration_requests(),
        2,
        "lease grant + one transaction"
    );
}

/// `register_server_until` stopped after its allocation reached etcd but before the answer
/// came back (a slow path to etcd; the stop is the slot's put seen by a direct watch): the
/// half-made registration's lease is revoked, so its key and slot are gone at once, not one
/// TTL later, and the call answers `Ok(None)`.
#[tokio::test]
async fn a_registration_stopped_midway_leaves_nothing_behind() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = darkrift_etcd_testing::FaultProxy::start(&etcd.endpoint(0))
        .await
        .expect("proxy");
    let cfg = ConnectorConfig::new(vec![proxy.endpoint()])
        .with_prefix(&prefix)
        .with_lease_ttl(Duration::from_secs(60))
        .with_connect_timeout(Duration::from_secs(5));
    let (c, _events) = synced(cfg).await;
    let mut raw = etcd.client().await.expect("raw");
    let slots = darkrift_etcd::keys::KeyLayout::new(&prefix)
        .expect("layout")
        .slots_prefix();
    let mut slot_changes = raw
        .watch(
            slots.clone(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch");
    proxy.slow(Duration::from_millis(400));
    let allocated = async {
        loop {
            let resp = slot_changes.message().await.expect("watch").expect("open");
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == etcd_client::EventType::Put)
            {
                return;
            }
        }
    };
    let got = tokio::time::timeout(
        PROMPT,
        c.register_server_until("game", "127.0.0.1", 4296, no_props(), allocated),
    )
    .await
    .expect("in time")
    .expect("no error");
    assert_eq!(got, None, "stopped, not registered");
    assert!(truth(&etcd, &prefix).await.is_empty(), "no server key left");
    let left = raw
        .get(
            slots,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    assert_eq!(left, 0, "no slot left");
    // Nothing is left half-made: the connector can register afterwards.
    proxy.restore();
    c.register_server("game", "127.0.0.1", 4296, no_props())
        .await
        .expect("registers");
}
