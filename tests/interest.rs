//! A connector given its interest (`watch_groups`) on a real etcd: it holds exactly the servers
//! of those groups, never one of another group, from one snapshot, through live changes in
//! every group, and after an outage (with and without a compaction meanwhile) in which every
//! group changed: exactly the difference, then fresh. A frozen stream resumes each range at its
//! own point on another endpoint, without relisting (the recovery paths are also unit-tested
//! in src/watcher/tests.rs).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use darkrift_etcd::{Connector, ConnectorConfig, Error, Event, EventStream};
use darkrift_etcd_testing::{EtcdCluster, FaultProxy};

const WATCHED: [&str; 2] = ["lobby", "game"];

/// The ids etcd holds now in `groups`.
async fn truth_in(etcd: &EtcdCluster, prefix: &str, groups: &[&str]) -> BTreeMap<u16, String> {
    let mut raw = etcd.client().await.expect("raw client");
    let mut held = BTreeMap::new();
    for group in groups {
        let resp = raw
            .get(
                format!("{prefix}/{group}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("get");
        for kv in resp.kvs() {
            let id = kv.key_str().expect("utf-8").rsplit('/').next().expect("id");
            held.insert(id.parse().expect("an id"), (*group).to_owned());
        }
    }
    held
}

/// Applies events to `view` (id → group), failing on any event about an unwatched group.
fn apply(view: &mut BTreeMap<u16, String>, events: &[Event]) {
    for event in events {
        match event {
            Event::Join { server, .. } => {
                assert!(
                    WATCHED.contains(&server.group.as_str()),
                    "a join from unwatched group {}",
                    server.group
                );
                let before = view.insert(server.id, server.group.clone());
                assert!(before.is_none(), "two joins for {}", server.id);
            }
            Event::Leave { id, group, .. } => {
                assert!(
                    WATCHED.contains(&group.as_str()),
                    "a leave from unwatched group {group}"
                );
                assert!(view.remove(id).is_some(), "a leave for {id}, not joined");
            }
            _ => {}
        }
    }
}

/// Reads `events` into `view` until it equals `want`.
async fn until_view(
    events: &mut EventStream,
    view: &mut BTreeMap<u16, String>,
    want: &BTreeMap<u16, String>,
) -> Vec<Event> {
    let mut got = Vec::new();
    let reached = tokio::time::timeout(PROMPT, async {
        while view != want {
            let event = events.recv().await.expect("stream open");
            apply(view, std::slice::from_ref(&event));
            got.push(event);
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "view {view:?} never became {want:?}; got {got:?}"
    );
    got
}

fn interest(cfg: ConnectorConfig) -> ConnectorConfig {
    cfg.with_watch_groups(WATCHED)
}

/// Registers one server per `(group, port)`; returns the connectors (they keep the leases).
async fn register_all(cfg: &ConnectorConfig, servers: &[(&str, u16)]) -> Vec<(Connector, u16)> {
    let mut out = Vec::new();
    for (group, port) in servers {
        out.push(registered(cfg.clone(), group, *port).await);
    }
    out
}

#[tokio::test]
async fn an_interest_holds_exactly_its_groups_from_one_snapshot() {
    let etcd = etcd().await;
    let prefix = prefix();
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(10));
    let before = register_all(
        &cfg,
        &[
            ("lobby", 1),
            ("game", 2),
            ("chat", 3),
            ("chat", 4),
            ("game", 5),
        ],
    )
    .await;
    let (w, mut events) = connect(interest(cfg.clone())).await;
    let joins = until_synced(&mut events).await;
    let mut view = BTreeMap::new();
    apply(&mut view, &joins);
    let want = truth_in(&etcd, &prefix, &WATCHED).await;
    assert_eq!(want.len(), 3);
    assert_eq!(view, want, "the snapshot holds the watched groups only");
    assert_eq!(w.servers().len(), 3);
    assert_eq!(w.skipped_records(), 0);

    // Changes in every group: the watcher follows lobby and game, never sees chat.
    let chat_id = before[2].1;
    before[2].0.deregister_server().await.expect("deregister");
    let game_id = before[1].1;
    before[1].0.deregister_server().await.expect("deregister");
    let _later = register_all(&cfg, &[("chat", 6), ("lobby", 7), ("game", 8)]).await;
    let want = truth_in(&etcd, &prefix, &WATCHED).await;
    assert!(!want.contains_key(&game_id) && !want.contains_key(&chat_id));
    until_view(&mut events, &mut view, &want).await;
    let held: BTreeSet<u16> = w.servers().iter().map(|s| s.id).collect();
    assert_eq!(held, want.keys().copied().collect());
    assert!(
        truth(&etcd, &prefix).await.len() > want.len(),
        "chat servers exist in etcd, outside the interest"
    );
}

#[tokio::test]
async fn registering_outside_the_interest_is_refused_and_writes_nothing() {
    let etcd = etcd().await;
    let prefix = prefix();
    let c = Connector::connect(interest(config(&etcd, &prefix)))
        .await
        .expect("connects");
    let err = c
        .register_server("chat", "127.0.0.1", 1, no_props())
        .await
        .expect_err("chat is not watched");
    assert!(
        matches!(&err, Error::GroupNotWatched { group, watched } if group == "chat" && watched.len() == 2),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert!(truth(&etcd, &prefix).await.is_empty(), "nothing written");
    // Its own group is fine.
    let id = c
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("game is watched");
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::from([id]));
    // And a group name that is not one is a configuration error, before connecting.
    let bad = Connector::connect(config(&etcd, &prefix).with_watch_groups(["a/b"])).await;
    assert!(
        matches!(bad, Err(Error::InvalidConfig(ref why)) if why.contains("watch_groups")),
        "{bad:?}"
    );
}

/// A watcher behind a fault proxy, cut while every group changes, then healed; with
/// `compact`, etcd is compacted past its resume points meanwhile.
async fn cut_and_heal(compact: bool) {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy");
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(10));
    let mut servers = register_all(&cfg, &[("lobby", 1), ("game", 2), ("chat", 3)]).await;
    let (_w, mut events) = connect(interest(ConnectorConfig {
        endpoints: vec![proxy.endpoint()],
        ..cfg.clone()
    }))
    .await;
    let mut view = BTreeMap::new();
    apply(&mut view, &until_synced(&mut events).await);
    assert_eq!(view.len(), 2);

    proxy.cut();
    // Await the stale mark (a failed reopen), so the changes below happen while it is cut.
    let got = collect_until(&mut events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Stale { .. }))
    })
    .await;
    apply(&mut view, &got);
    let (lobby, _) = servers.remove(0);
    lobby.deregister_server().await.expect("deregister");
    let (chat, _) = servers.remove(1);
    chat.deregister_server().await.expect("deregister");
    let _new = register_all(&cfg, &[("game", 4), ("chat", 5), ("lobby", 6), ("game", 7)]).await;
    if compact {
        compact_now(&etcd).await;
    }
    proxy.restore();
    let want = truth_in(&etcd, &prefix, &WATCHED).await;
    let got = until_view(&mut events, &mut view, &want).await;
    // Exactly the difference: one leave (lobby 1), three joins; and the view is fresh again.
    let (joins, leaves) = got.iter().fold((0, 0), |(j, l), e| match e {
        Event::Join { .. } => (j + 1, l),
        Event::Leave { .. } => (j, l + 1),
        _ => (j, l),
    });
    assert_eq!((joins, leaves), (3, 1), "{got:?}");
    let fresh = collect_until(&mut events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Fresh { .. }))
    })
    .await;
    apply(&mut view, &fresh);
    assert_eq!(view, want, "nothing after the difference: {fresh:?}");
}

#[tokio::test]
async fn a_cut_watcher_catches_up_every_group_exactly() {
    cut_and_heal(false).await;
}

#[tokio::test]
async fn a_cut_across_compaction_relists_every_group_exactly() {
    cut_and_heal(true).await;
}

/// Per-range resume on a real etcd. The watcher's endpoints are two fault proxies to the same
/// member. Before the fault, a lobby server joins and leaves, so the lobby range's resume point
/// moves past them while the game range's stays at the snapshot. The proxy carrying the watch
/// then freezes (every byte held, connections open): the watchdog's unanswered progress request
/// moves the watch to the other proxy, and each range resumes at its own point.
///
/// What tells the paths apart, from the events alone:
/// - a *resume* replays what happened while frozen: a lobby server that joined and left, and a
///   game server that joined. A relist would show only the game join (the lobby server is gone
///   by then), and would come with `Stale`/`Fresh`.
/// - resuming every range at the *smallest* point would replay the lobby server that joined and
///   left before the fault: a second join of a server already gone.
#[tokio::test]
async fn a_frozen_stream_resumes_each_range_at_its_own_point_without_relisting() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (first, second) = two_paths_to_one_member(&etcd).await;
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(10));
    let (_w, mut events) = connect(interest(ConnectorConfig {
        endpoints: vec![first.endpoint(), second.endpoint()],
        progress_interval: Duration::from_secs(1),
        ..cfg.clone()
    }))
    .await;
    let mut view = BTreeMap::new();
    apply(&mut view, &until_synced(&mut events).await);
    assert!(view.is_empty());

    // The lobby range moves on; the game range does not.
    let (before, before_id) = registered(cfg.clone(), "lobby", 1).await;
    before.deregister_server().await.expect("deregister");
    let got = collect_until(&mut events, PROMPT, |e| {
        e.iter().any(|e| matches!(e, Event::Leave { .. }))
    })
    .await;
    apply(&mut view, &got);
    assert_eq!(join_ids(&got), vec![before_id]);
    assert!(view.is_empty());
    // Clients start on a random member (spread over the cluster): `first` is the path the watch
    // took, `second` the one not dialled yet.
    let (first, second) = if first.open_connections() > 0 {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        second.open_connections() == 0,
        "the watch starts on one path; the other is not dialled yet"
    );

    first.stall();
    let (during, during_id) = registered(cfg.clone(), "lobby", 2).await;
    during.deregister_server().await.expect("deregister");
    let (_game, game_id) = registered(cfg.clone(), "game", 3).await;
    let want = truth_in(&etcd, &prefix, &WATCHED).await;
    assert_eq!(want, BTreeMap::from([(game_id, "game".to_owned())]));

    // Every event of the freeze, each once, in each range's order; nothing else.
    let got = collect_until(&mut events, PROMPT, |e| {
        let mut v = view.clone();
        apply(&mut v, e);
        v == want && e.iter().any(|e| matches!(e, Event::Leave { .. }))
    })
    .await;
    apply(&mut view, &got);
    let lobby: Vec<String> = got
        .iter()
        .filter_map(|e| match e {
            Event::Join { server, .. } if server.group == "lobby" => {
                Some(format!("join {}", server.id))
            }
            Event::Leave { id, group, .. } if group == "lobby" => Some(format!("leave {id}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        lobby,
        vec![format!("join {during_id}"), format!("leave {during_id}")],
        "the lobby range replayed from its own point: {got:?}"
    );
    assert_eq!(join_ids(&got).len(), 2, "{got:?}");
    assert!(
        got.iter()
            .all(|e| matches!(e, Event::Join { .. } | Event::Leave { .. })),
        "a resume, not a relist (no stale, no fresh): {got:?}"
    );
    assert!(
        second.open_connections() > 0,
        "the watch moved to the second endpoint"
    );
    let after = drain_for(&mut events, Duration::from_millis(500)).await;
    assert!(after.is_empty(), "nothing repeated: {after:?}");
    first.restore();
}
