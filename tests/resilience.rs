//! Faults that break other etcd registries, on real etcd (issue: resilience).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use darkrift_etcd::{Connector, ConnectorConfig, Event, IdTakenPolicy, RegistrationStatus};
use darkrift_etcd_testing::{EtcdCluster, FaultProxy};
use etcd_client::{EventType, GetOptions, Txn, TxnOp, WatchOptions};

/// Membership events only (drops stale/fresh and registration events).
fn membership(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Join { server, .. } => Some(format!("join {}", server.id)),
            Event::Leave { id, .. } => Some(format!("leave {id}")),
            _ => None,
        })
        .collect()
}

fn ids(c: &Connector) -> BTreeSet<u16> {
    c.servers().iter().map(|s| s.id).collect()
}

async fn lease_of(etcd: &EtcdCluster, key: &str) -> i64 {
    let mut raw = etcd.client().await.expect("raw client");
    raw.get(key, None)
        .await
        .expect("get")
        .kvs()
        .first()
        .map_or(0, etcd_client::KeyValue::lease)
}

/// Waits (bounded) until the registration status satisfies `f`.
async fn status_until(
    c: &Connector,
    bound: Duration,
    f: impl Fn(&RegistrationStatus) -> bool,
) -> RegistrationStatus {
    let mut rx = c.status().expect("registered");
    let got = tokio::time::timeout(bound, rx.wait_for(|s| f(s)))
        .await
        .expect("status within bound")
        .expect("open");
    got.clone()
}

/// A single-node etcd restarted within the TTL: no leave, no re-registration, and watchers
/// resume without missing or repeating an event.
#[tokio::test]
async fn etcd_restart_within_ttl_loses_nothing() {
    let mut etcd = etcd().await;
    let prefix = prefix();
    // The TTL leaves room for a slow stop + restart on a loaded machine; that keep-alives
    // really resume is checked through the lease deadline below.
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(12));
    let (w, mut w_events) = synced(cfg.clone()).await;
    let (a, mut a_events) = connect(cfg.clone()).await;
    let a_id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    let (b, b_id) = registered(cfg.clone(), "lobby", 2).await;
    collect_until(&mut w_events, PROMPT, |e| membership(e).len() == 2).await;
    let a_lease = lease_of(&etcd, &format!("{prefix}/game/{a_id}")).await;

    etcd.stop(0).expect("stop");
    // No keep-alive can be acknowledged while etcd is down.
    let RegistrationStatus::Registered {
        deadline: before, ..
    } = a.status().expect("status").borrow().clone()
    else {
        panic!("registered")
    };
    etcd.restart(0).await.expect("restart");
    // Keep-alives resumed: A's lease deadline moves past the one it had while etcd was down.
    status_until(
        &a,
        PROMPT,
        |s| matches!(s, RegistrationStatus::Registered { deadline, .. } if *deadline > before),
    )
    .await;
    // A change after the restart reaches the watcher, and it is the only membership change.
    let (_c, c_id) = registered(cfg.clone(), "game", 3).await;
    let got = collect_until(&mut w_events, PROMPT, |e| membership(e).len() == 1).await;
    assert_eq!(membership(&got), [format!("join {c_id}")]);
    let more = drain_for(&mut w_events, Duration::from_millis(500)).await;
    assert!(membership(&more).is_empty(), "nothing repeated: {more:?}");
    assert_eq!(ids(&w), BTreeSet::from([a_id, b_id, c_id]));
    // The registrations kept their leases: no loss, no re-registration.
    assert_eq!(
        lease_of(&etcd, &format!("{prefix}/game/{a_id}")).await,
        a_lease
    );
    assert!(a.is_registered() && b.is_registered());
    let a_seen = drain_for(&mut a_events, Duration::from_millis(200)).await;
    assert!(
        !a_seen
            .iter()
            .any(|e| matches!(e, Event::LeaseLost { .. } | Event::Reregistered { .. })),
        "{a_seen:?}"
    );
}

/// One server cut from etcd for longer than its TTL: peers see its leave; after the heal it
/// re-registers with the same id, peers see the join, and its own view equals etcd's truth.
#[tokio::test]
async fn server_cut_longer_than_ttl_reregisters_with_the_same_id() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy");
    let (peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let cut_cfg = ConnectorConfig {
        endpoints: vec![proxy.endpoint()],
        ..config(&etcd, &prefix)
    };
    let (a, mut a_events) = connect(cut_cfg).await;
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    assert!(
        matches!(next(&mut peer_events, PROMPT).await, Event::Join { ref server, .. } if server.id == id)
    );

    proxy.stall();
    let ttl = a.config().lease_ttl;
    // Fenced as soon as the local deadline passes.
    status_until(&a, ttl + Duration::from_secs(1), |s| !s.is_registered()).await;
    assert!(!a.is_registered());
    let left = next(&mut peer_events, ttl + Duration::from_secs(3)).await;
    assert!(
        matches!(left, Event::Leave { id: l, .. } if l == id),
        "{left:?}"
    );

    proxy.restore();
    let back = next(&mut peer_events, PROMPT).await;
    assert!(
        matches!(back, Event::Join { ref server, .. } if server.id == id),
        "{back:?}"
    );
    status_until(&a, PROMPT, RegistrationStatus::is_registered).await;
    let seen = collect_until(&mut a_events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Reregistered { .. }))
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::LeaseLost { id: l, .. } if *l == id)),
        "{seen:?}"
    );
    assert!(seen.iter().any(
        |e| matches!(e, Event::Reregistered { id: n, previous_id: p, .. } if *n == id && *p == id)
    ));
    // Its view converges to etcd's truth.
    let want = truth(&etcd, &prefix).await;
    assert_eq!(want, BTreeSet::from([id]));
    collect_until(&mut a_events, PROMPT, |_| ids(&a) == want).await;
    assert_eq!(ids(&peer), want);
}

/// 3-node cluster, leader killed: no spurious leaves; watches and keep-alives continue.
#[tokio::test]
async fn leader_killed_causes_no_spurious_leave() {
    let mut etcd = EtcdCluster::three_node().await.expect("cluster");
    let prefix = prefix();
    // A TTL well above an election on a loaded machine; that keep-alives continue is checked
    // through the lease deadline, which must move forward.
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(6));
    let (w, mut w_events) = synced(cfg.clone()).await;
    let (a, a_id) = registered(cfg.clone(), "game", 1).await;
    let (b, b_id) = registered(cfg.clone(), "lobby", 2).await;
    collect_until(&mut w_events, PROMPT, |e| membership(e).len() == 2).await;

    let leader = etcd.leader_index().await.expect("a leader");
    etcd.kill(leader).expect("kill leader");
    // Keep-alives continue: A's lease deadline moves forward past the old one, twice.
    let RegistrationStatus::Registered {
        deadline: before, ..
    } = a.status().expect("status").borrow().clone()
    else {
        panic!("registered")
    };
    status_until(&a, PROMPT, |s| matches!(s, RegistrationStatus::Registered { deadline, .. } if *deadline > before + Duration::from_secs(2))).await;
    // Watches continue: a new registration reaches the watcher.
    let (_c, c_id) = registered(cfg.clone(), "game", 3).await;
    let got = collect_until(&mut w_events, PROMPT, |e| {
        membership(e).contains(&format!("join {c_id}"))
    })
    .await;
    assert_eq!(
        membership(&got),
        [format!("join {c_id}")],
        "no spurious leave"
    );
    assert_eq!(ids(&w), BTreeSet::from([a_id, b_id, c_id]));
    assert!(a.is_registered() && b.is_registered());
}

/// A watcher cut off while servers join and leave and etcd compacts past its revision: after
/// the heal its view is exact and it emitted exactly the missing joins and leaves.
#[tokio::test]
async fn watcher_cut_across_compaction_emits_exactly_the_difference() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy");
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(10));
    let (_stays, stays_id) = registered(cfg.clone(), "game", 1).await;
    let (goes, goes_id) = registered(cfg.clone(), "game", 2).await;
    let (w, mut w_events) = connect(ConnectorConfig {
        endpoints: vec![proxy.endpoint()],
        ..cfg.clone()
    })
    .await;
    assert_eq!(join_ids(&until_synced(&mut w_events).await).len(), 2);

    proxy.cut();
    // Await the stale mark (a failed reopen) before changing anything, so the watcher cannot
    // reopen only after the heal and skip being stale.
    let mut got = collect_until(&mut w_events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Stale { .. }))
    })
    .await;
    goes.deregister_server().await.expect("deregister");
    let mut new_ids = BTreeSet::new();
    let mut keep = Vec::new();
    for port in 10..13 {
        let c = Connector::connect(cfg.clone()).await.expect("connect");
        new_ids.insert(
            c.register_server("lobby", "127.0.0.1", port, no_props())
                .await
                .expect("register"),
        );
        keep.push(c);
    }
    compact_now(&etcd).await;
    proxy.restore();

    got.extend(
        collect_until(&mut w_events, Duration::from_secs(20), |e| {
            e.iter().any(|e| matches!(e, Event::Fresh { .. }))
        })
        .await,
    );
    let mut changes = membership(&got);
    changes.sort();
    let mut want: Vec<String> = new_ids.iter().map(|id| format!("join {id}")).collect();
    want.push(format!("leave {goes_id}"));
    want.sort();
    assert_eq!(
        changes, want,
        "exactly the missing joins and leaves: {got:?}"
    );
    // Stale (awaited above) came first; every missed change arrived after it, then Fresh last.
    let stale_at = got.iter().position(|e| matches!(e, Event::Stale { .. }));
    let fresh_at = got.iter().position(|e| matches!(e, Event::Fresh { .. }));
    let first_change = got.iter().position(Event::is_membership);
    assert!(
        stale_at < first_change && first_change < fresh_at && fresh_at == Some(got.len() - 1),
        "stale, then the missed changes, then fresh: {got:?}"
    );
    let mut expected = new_ids.clone();
    expected.insert(stays_id);
    assert_eq!(ids(&w), expected);
    assert_eq!(truth(&etcd, &prefix).await, expected);
    assert!(!w.is_stale());
    let more = drain_for(&mut w_events, Duration::from_millis(300)).await;
    assert!(membership(&more).is_empty(), "{more:?}");
}

/// Our key deleted with a raw client while our lease lives: it is restored. Peers see a
/// leave then a join of the same id (the key's create revision changed).
#[tokio::test]
async fn own_key_deleted_by_someone_else_is_restored() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let (a, mut a_events) = connect(config(&etcd, &prefix)).await;
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    next(&mut peer_events, PROMPT).await;
    let key = format!("{prefix}/game/{id}");
    let lease = lease_of(&etcd, &key).await;

    let mut raw = etcd.client().await.expect("raw client");
    raw.delete(key.clone(), None).await.expect("delete");
    let got = collect_until(&mut peer_events, PROMPT, |e| membership(e).len() == 2).await;
    assert_eq!(
        membership(&got),
        [format!("leave {id}"), format!("join {id}")]
    );
    assert_eq!(
        lease_of(&etcd, &key).await,
        lease,
        "restored on the same lease"
    );
    assert_eq!(ids(&peer), BTreeSet::from([id]));
    assert!(a.is_registered());
    let seen = drain_for(&mut a_events, Duration::from_millis(300)).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "{seen:?}"
    );

    // Slot and server key both deleted in one transaction: both come back, together.
    let slot = format!("{prefix}.alloc/slot/{id:05}");
    raw.txn(Txn::new().and_then([
        TxnOp::delete(key.clone(), None),
        TxnOp::delete(slot.clone(), None),
    ]))
    .await
    .expect("delete both");
    collect_until(&mut peer_events, PROMPT, |e| membership(e).len() == 2).await;
    assert_eq!(lease_of(&etcd, &slot).await, lease, "slot restored");
    assert_eq!(lease_of(&etcd, &key).await, lease, "server key restored");

    // Only the slot deleted: the watch never sees it (it is not a server key), so the
    // once-per-TTL integrity check must put it back. Await its PUT through a watch.
    let deleted = raw.delete(slot.clone(), None).await.expect("delete slot");
    let from = deleted.header().expect("header").revision() + 1;
    let mut stream = raw
        .watch(
            slot.clone(),
            Some(WatchOptions::new().with_start_revision(from)),
        )
        .await
        .expect("watch slot");
    let bound = a.config().lease_ttl + PROMPT;
    let put = tokio::time::timeout(bound, async {
        while let Some(resp) = stream.message().await.expect("watch") {
            if let Some(e) = resp
                .events()
                .iter()
                .find(|e| e.event_type() == EventType::Put)
            {
                return e.kv().map(etcd_client::KeyValue::lease);
            }
        }
        None
    })
    .await
    .expect("slot restored within one TTL");
    assert_eq!(put, Some(lease), "slot restored on our lease");
    let more = drain_for(&mut peer_events, Duration::from_millis(300)).await;
    assert!(membership(&more).is_empty(), "peers saw nothing: {more:?}");
}

/// A consumer that blocks for 3 × TTL does not cost the lease.
#[tokio::test]
async fn blocked_consumer_does_not_starve_the_keep_alive() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut cfg = config(&etcd, &prefix);
    cfg.event_queue = 2;
    let (a, mut a_events) = connect(cfg.clone()).await;
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    let key = format!("{prefix}/game/{id}");
    let lease = lease_of(&etcd, &key).await;
    // Fill the queue far beyond its capacity while nobody reads it, for 3 × TTL.
    let mut others = Vec::new();
    for port in 2..8 {
        let c = Connector::connect(config(&etcd, &prefix))
            .await
            .expect("connect");
        c.register_server("lobby", "127.0.0.1", port, no_props())
            .await
            .expect("register");
        others.push(c);
    }
    let blocked_for = a.config().lease_ttl * 3;
    let started = tokio::time::Instant::now();
    let mut status = a.status().expect("status");
    // Watch the fence throughout the blocked period: it must never drop.
    while started.elapsed() < blocked_for {
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        assert!(
            status.borrow().is_registered(),
            "fence dropped while the consumer was blocked"
        );
    }
    assert_eq!(lease_of(&etcd, &key).await, lease, "same lease, never lost");
    // The consumer catches up with every event, in order, nothing lost.
    let got = collect_until(&mut a_events, PROMPT, |e| membership(e).len() == 7).await;
    assert!(!got.iter().any(|e| matches!(e, Event::LeaseLost { .. })));
    assert_eq!(join_ids(&got).len(), 7);
}

/// Another server takes our id while we are cut off: the default policy stops us with a clear
/// error; the other policy gives us a new id; never two live holders.
#[tokio::test]
async fn id_taken_while_away_fail_stop_and_new_id_policies() {
    for policy in [IdTakenPolicy::FailStop, IdTakenPolicy::NewId] {
        let etcd = etcd().await;
        let prefix = prefix();
        let proxy = FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy");
        let cfg = config(&etcd, &prefix)
            .with_id_space(2)
            .with_spread_window(1);
        let (a, mut a_events) = connect(
            ConnectorConfig {
                endpoints: vec![proxy.endpoint()],
                ..cfg.clone()
            }
            .with_on_id_taken(policy),
        )
        .await;
        assert_eq!(
            a.register_server("game", "127.0.0.1", 1, no_props())
                .await
                .expect("register"),
            1
        );
        // Move the cursor past 2 so that the next registration wraps to id 1.
        let h = Connector::connect(cfg.clone()).await.expect("connect");
        assert_eq!(
            h.register_server("game", "127.0.0.1", 2, no_props())
                .await
                .expect("register"),
            2
        );
        h.deregister_server().await.expect("deregister");

        proxy.cut();
        status_until(&a, PROMPT, |s| !s.is_registered()).await;
        // Wait until etcd expired A's registration, then B takes id 1.
        let mut raw = etcd.client().await.expect("raw client");
        let deadline = tokio::time::Instant::now() + PROMPT;
        while raw
            .get(format!("{prefix}/game/1"), None)
            .await
            .expect("get")
            .count()
            > 0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "A's key never expired"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), std::future::pending::<()>())
                .await;
        }
        let b = Connector::connect(cfg.clone()).await.expect("connect");
        assert_eq!(
            b.register_server("lobby", "127.0.0.1", 3, no_props())
                .await
                .expect("register"),
            1
        );
        proxy.restore();

        match policy {
            IdTakenPolicy::FailStop => {
                let got = collect_until(&mut a_events, PROMPT, |e| {
                    e.iter()
                        .any(|e| matches!(e, Event::RegistrationStopped { .. }))
                })
                .await;
                let Some(Event::RegistrationStopped { id, reason, .. }) = got.last() else {
                    unreachable!()
                };
                assert_eq!(*id, 1);
                assert!(reason.contains("taken by another server"), "{reason}");
                let s = status_until(&a, PROMPT, |s| {
                    matches!(s, RegistrationStatus::Stopped { .. })
                })
                .await;
                assert_eq!(s.id(), 1);
                assert!(!a.is_registered());
            }
            IdTakenPolicy::NewId => {
                let got = collect_until(&mut a_events, PROMPT, |e| {
                    e.iter().any(|e| matches!(e, Event::Reregistered { .. }))
                })
                .await;
                assert!(
                    got.iter().any(|e| matches!(
                        e,
                        Event::Reregistered {
                            id: 2,
                            previous_id: 1,
                            ..
                        }
                    )),
                    "{got:?}"
                );
                status_until(&a, PROMPT, RegistrationStatus::is_registered).await;
                assert_eq!(a.registered_id(), Some(2));
            }
        }
        // Never two live holders: one key per id in etcd, B still holds 1.
        let mut raw = etcd.client().await.expect("raw client");
        let servers = raw
            .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
            .await
            .expect("get");
        let held: Vec<String> = servers
            .kvs()
            .iter()
            .map(|kv| kv.key_str().expect("utf8").to_owned())
            .collect();
        assert!(held.contains(&format!("{prefix}/lobby/1")), "{held:?}");
        assert!(!held.contains(&format!("{prefix}/game/1")), "{held:?}");
        assert!(b.is_registered());
    }
}

/// etcd with auth enabled and a 1 s `--auth-token-ttl`: registration, keep-alive and watch
/// keep working across several token lifetimes, for a least-privilege user.
#[tokio::test]
async fn auth_tokens_expire_and_are_refreshed() {
    use darkrift_etcd::config::AuthConfig;
    use etcd_client::Permission;

    let etcd = EtcdCluster::builder()
        .extra_args(["--auth-token-ttl", "1"])
        .build()
        .await
        .expect("etcd");
    let prefix = prefix();
    let mut root = etcd.client().await.expect("raw client");
    root.user_add("root", "rootpw", None)
        .await
        .expect("root user");
    root.role_add("root").await.expect("root role");
    root.user_grant_role("root", "root")
        .await
        .expect("grant root");
    root.role_add("darkrift").await.expect("role");
    for range in [format!("{prefix}/"), format!("{prefix}.alloc/")] {
        let perm = Permission::read_write(range).with_prefix();
        root.role_grant_permission("darkrift", perm)
            .await
            .expect("grant");
    }
    root.user_add("darkrift", "pw", None).await.expect("user");
    root.user_grant_role("darkrift", "darkrift")
        .await
        .expect("grant role");
    root.auth_enable().await.expect("auth enable");

    let mut cfg = config(&etcd, &prefix);
    cfg.auth = Some(AuthConfig::new("darkrift", "pw"));
    let (w, mut w_events) = synced(cfg.clone()).await;
    let (a, mut a_events) = connect(cfg.clone()).await;
    let a_id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    next(&mut w_events, PROMPT).await;
    // Several token lifetimes later (the fence is watched throughout: the lease never lapses),
    // a new registration and its join still go through.
    let mut status = a.status().expect("status");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
        assert!(
            status.borrow().is_registered(),
            "lease lapsed while tokens expired"
        );
    }
    let (b, b_id) = registered(cfg.clone(), "lobby", 2).await;
    let got = collect_until(&mut w_events, PROMPT, |e| membership(e).len() == 1).await;
    assert_eq!(membership(&got), [format!("join {b_id}")]);
    assert_eq!(ids(&w), BTreeSet::from([a_id, b_id]));
    b.deregister_server()
        .await
        .expect("deregister after token expiry");
    let got = collect_until(&mut w_events, PROMPT, |e| membership(e).len() == 1).await;
    assert_eq!(membership(&got), [format!("leave {b_id}")]);
    let seen = drain_for(&mut a_events, Duration::from_millis(100)).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "{seen:?}"
    );
}
