//! Fast crash detection in the mesh, and its safety, on a real etcd (issue 13 part 1): lobby
//! servers dial game servers with eviction on (K = 2 reporters) and a 10 s lease TTL.
//!
//! - a crashed game is dropped by every lobby while its lease still lives (eviction, not
//!   expiry);
//! - one reporter never evicts;
//! - a link cut between one lobby and the game never evicts a game the other lobby reaches;
//! - a healthy game evicted by false reports is back with the same id promptly, ids stay
//!   unique throughout, and the same reporters do not evict it again (the anti-flap hold);
//! - a game cut off from both lobbies (while it reaches etcd) is evicted once, comes back, and
//!   is not evicted again while the cut lasts (the anti-flap hold);
//! - no report key outlives the registration it is about (eviction, deregistration).

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::{collect_until, join_ids, prefix, registered, synced};
use darkrift_etcd::cluster::Direction;
use darkrift_etcd::config::EvictionConfig;
use darkrift_etcd::{ConnectorConfig, Event, PeerStatus};
use darkrift_etcd_mesh::{Mesh, MeshConfig, MeshEvent, MeshEvents};
use darkrift_etcd_testing::{free_port, EtcdCluster, FaultProxy};
use support::wait_state;
use tokio::time::Instant;

/// The default TTL: anything that happens well before it was not a lease expiry.
const TTL: Duration = Duration::from_secs(10);
/// Bound on anything that should happen promptly.
const PROMPT: Duration = Duration::from_secs(15);

/// Registry settings of every server here: TTL 10 s, eviction by 2 reporters.
fn connector_config(etcd: &EtcdCluster, prefix: &str) -> ConnectorConfig {
    let mut c = ConnectorConfig::new(etcd.endpoints())
        .with_prefix(prefix)
        .with_lease_ttl(TTL);
    c.eviction = Some(EvictionConfig {
        min_reporters: 2,
        window: TTL,
    });
    c
}

fn mesh_config(etcd: &EtcdCluster, prefix: &str, group: &str, port: u16) -> MeshConfig {
    let mut config = support::mesh_config(etcd, prefix, group, port, TTL);
    config.connector = connector_config(etcd, prefix);
    config
}

/// A mesh server of `group` on a free port.
async fn start(etcd: &EtcdCluster, prefix: &str, group: &str) -> (Mesh, MeshEvents) {
    let config = mesh_config(etcd, prefix, group, free_port().expect("port"));
    Mesh::start(config).await.expect("mesh starts")
}

/// A game mesh server on a free port, and the port.
async fn game_and_port(etcd: &EtcdCluster, prefix: &str) -> (u16, (Mesh, MeshEvents)) {
    let port = free_port().expect("port");
    let game = Mesh::start(mesh_config(etcd, prefix, "game", port))
        .await
        .expect("mesh starts");
    (port, game)
}

/// A lobby whose dials to the game on `game_port` go through a fault proxy of its own.
async fn lobby_through_proxy(
    etcd: &EtcdCluster,
    prefix: &str,
    game_port: u16,
) -> (FaultProxy, (Mesh, MeshEvents)) {
    let proxy = FaultProxy::start(&format!("127.0.0.1:{game_port}"))
        .await
        .expect("proxy");
    let proxy_addr: SocketAddr = proxy
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("proxy address");
    let mut config = mesh_config(etcd, prefix, "lobby", free_port().expect("port"));
    config
        .dial_overrides
        .insert(format!("127.0.0.1:{game_port}"), proxy_addr);
    let lobby = Mesh::start(config).await.expect("mesh starts");
    (proxy, lobby)
}

/// Waits for the first event matching `want`; returns it and every event before it.
async fn until(
    events: &mut MeshEvents,
    mut want: impl FnMut(&MeshEvent) -> bool,
) -> (MeshEvent, Vec<MeshEvent>) {
    let mut before = Vec::new();
    tokio::time::timeout(PROMPT, async {
        loop {
            let e = events.recv().await.expect("events open");
            if want(&e) {
                return (e, before);
            }
            before.push(e);
        }
    })
    .await
    .expect("event in time")
}

/// The lease and create revision of `id`'s registration in `group`, read from etcd.
async fn registration(
    raw: &mut etcd_client::Client,
    prefix: &str,
    group: &str,
    id: u16,
) -> Option<(i64, i64)> {
    let resp = raw
        .get(format!("{prefix}/{group}/{id}"), None)
        .await
        .expect("get");
    resp.kvs()
        .first()
        .map(|kv| (kv.lease(), kv.create_revision()))
}

/// Report keys filed about `id` (any registration of it).
async fn reports(raw: &mut etcd_client::Client, prefix: &str, id: u16) -> usize {
    raw.get(
        format!("{prefix}.alloc/reports/{id:05}/"),
        Some(etcd_client::GetOptions::new().with_prefix()),
    )
    .await
    .expect("get")
    .kvs()
    .len()
}

/// Waits (bounded by [`PROMPT`]) until no report key about `id` remains; returns how long it
/// took. Event-driven: a watch on the reports from the revision read, until one changes.
async fn no_reports_left(raw: &mut etcd_client::Client, prefix: &str, id: u16) -> Duration {
    let start = Instant::now();
    let range = format!("{prefix}.alloc/reports/{id:05}/");
    let prefixed = || etcd_client::GetOptions::new().with_prefix();
    tokio::time::timeout(PROMPT, async {
        loop {
            let resp = raw
                .get(range.as_str(), Some(prefixed()))
                .await
                .expect("get");
            if resp.kvs().is_empty() {
                return;
            }
            let from = resp.header().expect("header").revision() + 1;
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(from);
            let mut stream = raw
                .watch(range.as_str(), Some(options))
                .await
                .expect("watch");
            while stream
                .message()
                .await
                .expect("watch ok")
                .expect("watch open")
                .events()
                .is_empty()
            {}
        }
    })
    .await
    .unwrap_or_else(|_| panic!("report keys about {id} still there after {PROMPT:?}"));
    start.elapsed()
}

/// Every registered id under `prefix`, with the number of keys holding it (any group).
async fn registered_ids(raw: &mut etcd_client::Client, prefix: &str) -> BTreeMap<u16, usize> {
    let resp = raw
        .get(
            format!("{prefix}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    let mut ids = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str().expect("utf-8 key");
        if let Some(id) = key.rsplit('/').next().and_then(|s| s.parse::<u16>().ok()) {
            *ids.entry(id).or_insert(0) += 1;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_game_leaves_every_lobby_while_its_lease_still_lives() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw");
    let (game, _g) = start(&etcd, &prefix, "game").await;
    let game_id = game.id();
    let mut lobbies = Vec::new();
    for _ in 0..2 {
        lobbies.push(start(&etcd, &prefix, "lobby").await);
    }
    let deadline = Instant::now() + PROMPT;
    for (lobby, _) in &lobbies {
        wait_state(lobby, deadline, "linked to the game", |s| {
            s.is_linked(game_id, Direction::Upstream)
        })
        .await;
    }
    let (lease, _) = registration(&mut raw, &prefix, "game", game_id)
        .await
        .expect("game registered");

    let killed = Instant::now();
    game.abort();
    let deadline = killed + PROMPT;
    for (lobby, _) in &lobbies {
        wait_state(lobby, deadline, "rid of the crashed game", |s| {
            !s.knows(game_id)
        })
        .await;
    }
    let elapsed = killed.elapsed();
    // The proof that eviction, not expiry, removed it: its lease is still alive.
    let ttl = raw
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl")
        .ttl();
    assert!(ttl > 0, "the lease expired (ttl {ttl}): not an eviction");
    assert_eq!(registration(&mut raw, &prefix, "game", game_id).await, None);
    eprintln!(
        "crashed game {game_id} gone from both lobbies after {elapsed:?}, its lease still \
         alive for {ttl} s (TTL {TTL:?})"
    );
    // Any round that ended before the leave ended on a refused connect. (The evicting check's
    // own verdict usually arrives after the leave, which drops it, so it is not awaited.)
    let mut verdicts = Vec::new();
    for (lobby, events) in &mut lobbies {
        let (left, before) = until(
            events,
            |e| matches!(e, MeshEvent::Left { peer, .. } if *peer == game_id),
        )
        .await;
        assert!(matches!(left, MeshEvent::Left { .. }));
        verdicts.extend(before.into_iter().filter_map(|e| match e {
            MeshEvent::GaveUp {
                peer,
                status,
                refused,
                ..
            } if peer == game_id => Some((status, refused)),
            _ => None,
        }));
        assert!(lobby.state().borrow().links.is_empty());
    }
    assert!(verdicts.iter().all(|(_, refused)| *refused), "{verdicts:?}");
    // The eviction deleted the reports with the registration, and no late report could be
    // filed about a registration already gone.
    assert_eq!(
        reports(&mut raw, &prefix, game_id).await,
        0,
        "no report key left"
    );
    for (lobby, _) in lobbies {
        lobby.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reporter_never_evicts() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw");
    // A game alive to etcd whose port refuses every connect: the lobby reports it each round.
    let dead_port = free_port().expect("port");
    let (ghost, ghost_id) = registered(connector_config(&etcd, &prefix), "game", dead_port).await;
    let registered = registration(&mut raw, &prefix, "game", ghost_id).await;
    let (lobby, mut events) = start(&etcd, &prefix, "lobby").await;
    for round in 0..3 {
        let (e, before) = until(&mut events, |e| matches!(e, MeshEvent::GaveUp { .. })).await;
        assert!(
            matches!(&e, MeshEvent::GaveUp { peer, attempts: 1, status, refused: true, .. }
                if *peer == ghost_id && status == "registered"),
            "round {round}: {e:?}"
        );
        assert!(
            !before.iter().any(|e| matches!(e, MeshEvent::Left { .. })),
            "{before:?}"
        );
    }
    assert_eq!(
        registration(&mut raw, &prefix, "game", ghost_id).await,
        registered,
        "the same registration, untouched"
    );
    assert!(ghost.is_registered());
    assert_eq!(
        reports(&mut raw, &prefix, ghost_id).await,
        1,
        "one reporter"
    );
    assert!(lobby.state().borrow().upstream.contains(&ghost_id));
    // The ghost leaves normally: the lobby, still alive, withdraws its report.
    ghost.deregister_server().await.expect("deregister");
    let took = no_reports_left(&mut raw, &prefix, ghost_id).await;
    eprintln!("the lone report withdrawn {took:?} after the reported server deregistered");
    lobby.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_between_one_lobby_and_the_game_never_evicts_it() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw");
    let (game_port, (game, _g)) = game_and_port(&etcd, &prefix).await;
    let game_id = game.id();
    let registered = registration(&mut raw, &prefix, "game", game_id).await;
    // Lobby A reaches the game through a fault proxy; lobby B directly.
    let (proxy, (a, mut a_events)) = lobby_through_proxy(&etcd, &prefix, game_port).await;
    let (b, mut b_events) = start(&etcd, &prefix, "lobby").await;
    let deadline = Instant::now() + PROMPT;
    for lobby in [&a, &b] {
        wait_state(lobby, deadline, "linked to the game", |s| {
            s.is_linked(game_id, Direction::Upstream)
        })
        .await;
    }
    assert!(
        proxy.open_connections() > 0,
        "A's link goes through the proxy"
    );

    proxy.cut();
    // A loses its link and gives up round after round: the cut route accepts and closes, which
    // is not a refusal, so each round spends its budget; the registry keeps the game, since A
    // is its only reporter.
    for round in 0..3 {
        let (e, _) = until(&mut a_events, |e| matches!(e, MeshEvent::GaveUp { .. })).await;
        assert!(
            matches!(&e, MeshEvent::GaveUp { peer, status, refused: false, .. }
                if *peer == game_id && status == "registered"),
            "round {round}: {e:?}"
        );
    }
    assert_eq!(
        registration(&mut raw, &prefix, "game", game_id).await,
        registered,
        "the same registration, untouched"
    );
    assert_eq!(
        reports(&mut raw, &prefix, game_id).await,
        1,
        "only A reported"
    );
    assert!(b.state().borrow().is_linked(game_id, Direction::Upstream));
    assert!(game
        .state()
        .borrow()
        .is_linked(b.id(), Direction::Downstream));
    while let Ok(e) = b_events.try_recv() {
        assert!(
            !matches!(&e, MeshEvent::Left { peer, .. } | MeshEvent::Disconnected { peer, .. } if *peer == game_id),
            "B was disturbed: {e:?}"
        );
    }

    // Healed: A links again, to the same game.
    proxy.restore();
    wait_state(&a, Instant::now() + PROMPT, "linked again", |s| {
        s.is_linked(game_id, Direction::Upstream)
    })
    .await;
    for mesh in [a, b, game] {
        mesh.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_game_evicted_by_false_reports_is_back_with_its_id_and_ids_stay_unique() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw");
    let (game, _g) = start(&etcd, &prefix, "game").await;
    let game_id = game.id();
    let (lobby, _l) = start(&etcd, &prefix, "lobby").await;
    wait_state(&lobby, Instant::now() + PROMPT, "linked to the game", |s| {
        s.is_linked(game_id, Direction::Upstream)
    })
    .await;
    let (_observer, mut seen) = synced(connector_config(&etcd, &prefix)).await;
    // Two registered servers that wrongly believe the game is gone.
    let mut liars = Vec::new();
    for port in [1, 2] {
        let (c, _) = registered(connector_config(&etcd, &prefix), "lobby", port).await;
        let mut events = c.events().expect("events");
        collect_until(&mut events, PROMPT, |e| join_ids(e).contains(&game_id)).await;
        liars.push(c);
    }

    assert_eq!(
        liars[0]
            .handle_connection_failure(game_id)
            .await
            .expect("report"),
        PeerStatus::Registered
    );
    let evicted_at = Instant::now();
    assert_eq!(
        liars[1]
            .handle_connection_failure(game_id)
            .await
            .expect("report"),
        PeerStatus::Evicted
    );
    // Newcomers register while the game's id is out of the registry: none may take it.
    let mut newcomers = Vec::new();
    for port in 3..6 {
        newcomers.push(registered(connector_config(&etcd, &prefix), "game", port).await);
    }
    // The observer sees the leave, then the game back under the same id.
    let mut left = false;
    let back = tokio::time::timeout(PROMPT, async {
        while let Some(e) = seen.recv().await {
            match &e {
                Event::Leave { id, .. } if *id == game_id => left = true,
                Event::Join { server, .. } if server.id == game_id && left => {
                    return Instant::now();
                }
                _ => {}
            }
        }
        panic!("observer stream ended");
    })
    .await
    .expect("the game is back");
    let took = back - evicted_at;
    eprintln!("falsely evicted game {game_id} back with its id after {took:?} (TTL {TTL:?})");
    assert!(took <= TTL / 2, "back after {took:?}");
    assert_eq!(game.id(), game_id);
    // The eviction took the reports along.
    assert_eq!(reports(&mut raw, &prefix, game_id).await, 0);
    // The same liars, still failing to reach it, do not evict it again: they reported its
    // previous registration a moment ago (the anti-flap hold), so they do not report this
    // one, and it stays.
    let (_, back_revision) = registration(&mut raw, &prefix, "game", game_id)
        .await
        .expect("the game is registered");
    for liar in &liars {
        assert_eq!(
            liar.handle_connection_failure(game_id)
                .await
                .expect("report"),
            PeerStatus::Registered
        );
    }
    not_evicted_again(&mut raw, &prefix, game_id, back_revision).await;
    // Still the same mesh: the lobby links to it again.
    wait_state(&lobby, Instant::now() + PROMPT, "linked again", |s| {
        s.is_linked(game_id, Direction::Upstream)
    })
    .await;
    // Ids unique: every server in etcd under exactly one key, and all ids distinct.
    let ids = registered_ids(&mut raw, &prefix).await;
    assert!(ids.values().all(|&n| n == 1), "{ids:?}");
    let mut expected: BTreeSet<u16> = newcomers.iter().map(|(_, id)| *id).collect();
    expected.extend([game_id, lobby.id()]);
    assert_eq!(expected.len(), 2 + newcomers.len(), "distinct ids");
    assert!(expected.iter().all(|id| ids.contains_key(id)), "{ids:?}");
    for (c, _) in newcomers {
        c.deregister_server().await.expect("deregister");
    }
    for c in liars {
        c.deregister_server().await.expect("deregister");
    }
    lobby.shutdown().await.expect("shutdown");
    game.shutdown().await.expect("shutdown");
}

/// The game `id` is still at create revision `revision` (not evicted again), and no report
/// about it was filed (its reporters are held).
async fn not_evicted_again(raw: &mut etcd_client::Client, prefix: &str, id: u16, revision: i64) {
    assert_eq!(
        registration(raw, prefix, "game", id)
            .await
            .map(|(_, rev)| rev),
        Some(revision),
        "not evicted again"
    );
    assert_eq!(reports(raw, prefix, id).await, 0, "held: nothing filed");
}

/// Waits (bounded by [`PROMPT`]) for `group`/`id` to be put again under a create revision
/// newer than `before`; returns that revision.
async fn recreated(
    raw: &mut etcd_client::Client,
    prefix: &str,
    group: &str,
    id: u16,
    before: i64,
) -> i64 {
    let key = format!("{prefix}/{group}/{id}");
    let options = etcd_client::WatchOptions::new().with_start_revision(before + 1);
    let mut stream = raw.watch(key.as_str(), Some(options)).await.expect("watch");
    tokio::time::timeout(PROMPT, async {
        loop {
            let resp = stream
                .message()
                .await
                .expect("watch ok")
                .expect("watch open");
            let newer = resp.events().iter().find_map(|ev| {
                let kv = ev.kv()?;
                (ev.event_type() == etcd_client::EventType::Put && kv.create_revision() > before)
                    .then(|| kv.create_revision())
            });
            if let Some(revision) = newer {
                return revision;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{key} not re-created within {PROMPT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_cut_off_from_every_lobby_is_evicted_once_not_again_and_again() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut raw = etcd.client().await.expect("raw");
    let (game_port, (game, _g)) = game_and_port(&etcd, &prefix).await;
    let game_id = game.id();
    // Both lobbies reach the game through a fault proxy each; the game reaches etcd directly.
    let mut lobbies = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..2 {
        let (proxy, lobby) = lobby_through_proxy(&etcd, &prefix, game_port).await;
        lobbies.push(lobby);
        proxies.push(proxy);
    }
    let deadline = Instant::now() + PROMPT;
    for (lobby, _) in &lobbies {
        wait_state(lobby, deadline, "linked to the game", |s| {
            s.is_linked(game_id, Direction::Upstream)
        })
        .await;
    }
    let (_, first) = registration(&mut raw, &prefix, "game", game_id)
        .await
        .expect("game registered");

    // Cut: every round of both lobbies fails (inconclusively) and is reported; two reporters
    // evict the game, healthy as it is, and it puts itself back under the same id.
    for proxy in &proxies {
        proxy.cut();
    }
    let cut_at = Instant::now();
    let second = recreated(&mut raw, &prefix, "game", game_id, first).await;
    eprintln!(
        "cut-off game {game_id} evicted and back after {:?}",
        cut_at.elapsed()
    );
    assert_eq!(game.id(), game_id);
    // The lobbies keep failing to reach it, round after round, and report nothing: they
    // reported its previous registration a moment ago. It stays.
    for (lobby, events) in &mut lobbies {
        while events.try_recv().is_ok() {}
        for round in 0..2 {
            let (e, _) = until(
                events,
                |e| matches!(e, MeshEvent::GaveUp { peer, .. } if *peer == game_id),
            )
            .await;
            assert!(
                matches!(&e, MeshEvent::GaveUp { status, refused: false, .. }
                    if status == "registered"),
                "lobby {} round {round}: {e:?}",
                lobby.id()
            );
        }
    }
    not_evicted_again(&mut raw, &prefix, game_id, second).await;

    // Healed: both lobbies link to it again.
    for proxy in &proxies {
        proxy.restore();
    }
    let deadline = Instant::now() + PROMPT;
    for (lobby, _) in &lobbies {
        wait_state(lobby, deadline, "linked again", |s| {
            s.is_linked(game_id, Direction::Upstream)
        })
        .await;
    }
    for (lobby, _) in lobbies {
        lobby.shutdown().await.expect("shutdown");
    }
    game.shutdown().await.expect("shutdown");
}
