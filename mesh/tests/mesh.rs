//! The mesh on a real etcd: 3 lobby servers dial 3 game servers (lobby connectsTo game), a
//! game server crashes and comes back, and the handshake refuses whoever it must.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::prefix;
use darkrift_etcd::cluster::Direction;
use darkrift_etcd::ConnectorConfig;
use darkrift_etcd_mesh::{Frame, Link, Mesh, MeshConfig, MeshEvent, MeshEvents};
use darkrift_etcd_testing::{free_port, EtcdCluster};
use support::{mesh_config as config, wait_state};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);
const PROMPT: Duration = Duration::from_secs(15);

fn mesh_config(etcd: &EtcdCluster, prefix: &str, group: &str, port: u16) -> MeshConfig {
    config(etcd, prefix, group, port, TTL)
}

async fn start(etcd: &EtcdCluster, prefix: &str, group: &str, port: u16) -> (Mesh, MeshEvents) {
    Mesh::start(mesh_config(etcd, prefix, group, port))
        .await
        .expect("mesh starts")
}

fn links(peers: &BTreeSet<u16>, direction: Direction) -> BTreeSet<Link> {
    peers.iter().map(|&peer| Link { peer, direction }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lobbies_link_to_every_game_and_a_crashed_game_leaves_within_ttl_then_rejoins() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let mut games = Vec::new();
    let mut lobbies = Vec::new();
    for _ in 0..3 {
        let port = free_port().expect("port");
        games.push((start(&etcd, &prefix, "game", port).await.0, port));
        let port = free_port().expect("port");
        lobbies.push(start(&etcd, &prefix, "lobby", port).await.0);
    }
    let game_ids: BTreeSet<u16> = games.iter().map(|(m, _)| m.id()).collect();
    let lobby_ids: BTreeSet<u16> = lobbies.iter().map(Mesh::id).collect();
    assert_eq!(game_ids.len() + lobby_ids.len(), 6, "distinct ids");
    assert!(
        game_ids.is_disjoint(&lobby_ids),
        "distinct ids across groups"
    );

    // Every lobby ends with an identified link to every game, none to a lobby; every game
    // with a link from every lobby and nothing else.
    let deadline = Instant::now() + PROMPT;
    for lobby in &lobbies {
        let want = links(&game_ids, Direction::Upstream);
        wait_state(lobby, deadline, "linked to every game", |s| {
            s.links == want && s.upstream == game_ids
        })
        .await;
        let state = lobby.state().borrow().clone();
        assert!(state.downstream.is_empty(), "{state:?}");
        assert!(state.links.iter().all(|l| !lobby_ids.contains(&l.peer)));
    }
    for (game, _) in &games {
        let want = links(&lobby_ids, Direction::Downstream);
        wait_state(game, deadline, "linked from every lobby", |s| {
            s.links == want && s.downstream == lobby_ids && s.upstream.is_empty()
        })
        .await;
    }

    // A game crashes: no deregistration, listener and sockets gone at once.
    let (crashed, port) = games.remove(0);
    let crashed_id = crashed.id();
    let killed_at = Instant::now();
    crashed.abort();
    // The bound: TTL + 1.5 s (etcd's expiry scan, commit and delivery).
    let bound = TTL + Duration::from_millis(1500);
    for lobby in &lobbies {
        wait_state(lobby, killed_at + bound, "rid of the crashed game", |s| {
            !s.knows(crashed_id)
        })
        .await;
    }
    let gone_after = killed_at.elapsed();
    assert!(gone_after <= bound, "{gone_after:?}");
    eprintln!(
        "crashed game {crashed_id} gone from every lobby after {gone_after:?} (bound {bound:?})"
    );
    // The other games are untouched.
    for lobby in &lobbies {
        let state = lobby.state().borrow().clone();
        let rest: BTreeSet<u16> = games.iter().map(|(m, _)| m.id()).collect();
        assert_eq!(state.links, links(&rest, Direction::Upstream));
    }

    // Restarted on the same port, it is linked again from every lobby.
    let (restarted, _events) = start(&etcd, &prefix, "game", port).await;
    let deadline = Instant::now() + PROMPT;
    for lobby in &lobbies {
        wait_state(lobby, deadline, "linked to the restarted game", |s| {
            s.is_linked(restarted.id(), Direction::Upstream) && s.links.len() == 3
        })
        .await;
    }
    wait_state(&restarted, deadline, "linked from every lobby", |s| {
        s.links == links(&lobby_ids, Direction::Downstream)
    })
    .await;

    // A clean stop: the games see the lobby leave and drop its link.
    let lobby = lobbies.pop().expect("a lobby");
    let lobby_id = lobby.id();
    lobby.shutdown().await.expect("clean shutdown");
    let deadline = Instant::now() + PROMPT;
    for (game, _) in &games {
        wait_state(game, deadline, "rid of the stopped lobby", |s| {
            !s.knows(lobby_id)
        })
        .await;
    }
    for mesh in lobbies.into_iter().chain(games.into_iter().map(|(m, _)| m)) {
        mesh.shutdown().await.expect("shutdown");
    }
    restarted.shutdown().await.expect("shutdown");
}

/// Reads until the peer closes the socket, bounded; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PROMPT, stream.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .expect("read");
    got
}

/// Waits for the first event matching `want`.
async fn next_matching(
    events: &mut MeshEvents,
    mut want: impl FnMut(&MeshEvent) -> bool,
) -> MeshEvent {
    tokio::time::timeout(PROMPT, async {
        loop {
            let e = events.recv().await.expect("events open");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_is_refused_unless_announced_from_a_dialling_group_and_in_time() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let game_port = free_port().expect("port");
    let (game, mut game_events) = start(&etcd, &prefix, "game", game_port).await;
    let lobby_port = free_port().expect("port");
    let (lobby, mut lobby_events) = start(&etcd, &prefix, "lobby", lobby_port).await;
    let deadline = Instant::now() + PROMPT;
    wait_state(&game, deadline, "linked from the lobby", |s| {
        s.is_linked(lobby.id(), Direction::Downstream)
    })
    .await;

    // An id the registry never announced: closed without a Welcome.
    let mut s = TcpStream::connect(("127.0.0.1", game_port))
        .await
        .expect("connect");
    Frame::Identify(60_000)
        .write_to(&mut s)
        .await
        .expect("write");
    assert!(read_to_close(&mut s).await.is_empty(), "no Welcome");
    // (The lobby's own first dial may have been refused too, before the game saw its join.)
    let e = next_matching(&mut game_events, |e| {
        matches!(
            e,
            MeshEvent::Rejected {
                peer: Some(60_000),
                ..
            }
        )
    })
    .await;
    assert_eq!(
        e,
        MeshEvent::Rejected {
            peer: Some(60_000),
            reason: "not announced by the registry".into()
        }
    );

    // An announced server whose group does not dial ours: the game identifying to the lobby.
    let mut s = TcpStream::connect(("127.0.0.1", lobby_port))
        .await
        .expect("connect");
    Frame::Identify(game.id())
        .write_to(&mut s)
        .await
        .expect("write");
    assert!(read_to_close(&mut s).await.is_empty(), "no Welcome");
    let e = next_matching(&mut lobby_events, |e| {
        matches!(e, MeshEvent::Rejected { .. })
    })
    .await;
    assert!(
        matches!(&e, MeshEvent::Rejected { peer: Some(id), reason } if *id == game.id() && reason.contains("does not connect")),
        "{e:?}"
    );

    // Silence: closed once the identify timeout has passed.
    // Taken before connecting: the server's timer starts at accept.
    let opened = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", game_port))
        .await
        .expect("connect");
    assert!(read_to_close(&mut s).await.is_empty());
    assert!(
        opened.elapsed() >= Duration::from_millis(700),
        "not before the timeout"
    );
    let e = next_matching(&mut game_events, |e| {
        matches!(e, MeshEvent::Rejected { peer: None, .. })
    })
    .await;
    assert!(
        matches!(&e, MeshEvent::Rejected { reason, .. } if reason.contains("no frame within")),
        "{e:?}"
    );

    // The announced lobby's own link was never disturbed, and its Welcome named the game.
    assert!(game
        .state()
        .borrow()
        .is_linked(lobby.id(), Direction::Downstream));
    assert!(lobby
        .state()
        .borrow()
        .is_linked(game.id(), Direction::Upstream));
    lobby.shutdown().await.expect("shutdown");
    game.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_checked_with_the_registry_after_each_round() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    // A "game" that registers a port nobody listens on: alive to etcd, unreachable.
    let dead_port = free_port().expect("port");
    let ghost = darkrift_etcd::Connector::connect(
        ConnectorConfig::new(etcd.endpoints())
            .with_prefix(prefix.as_str())
            .with_lease_ttl(TTL),
    )
    .await
    .expect("connect");
    let ghost_id = ghost
        .register_server(
            "game",
            "127.0.0.1",
            dead_port,
            std::collections::BTreeMap::default(),
        )
        .await
        .expect("register");
    let (lobby, mut events) = start(&etcd, &prefix, "lobby", free_port().expect("port")).await;
    let e = next_matching(&mut events, |e| matches!(e, MeshEvent::GaveUp { .. })).await;
    assert!(
        matches!(&e, MeshEvent::GaveUp { peer, attempts: 1, status, refused: true, .. } if *peer == ghost_id && status == "registered"),
        "{e:?}"
    );
    // Nothing listens there: the connect is refused, which ends the round at its first attempt.
    // Still registered: another round follows (after a pause), and gives up the same way.
    let e = next_matching(&mut events, |e| matches!(e, MeshEvent::GaveUp { .. })).await;
    assert!(
        matches!(&e, MeshEvent::GaveUp { peer, .. } if *peer == ghost_id),
        "{e:?}"
    );
    // Once it deregisters, the lobby forgets it and stops dialling.
    ghost.deregister_server().await.expect("deregister");
    let e = next_matching(&mut events, |e| matches!(e, MeshEvent::Left { .. })).await;
    assert_eq!(
        e,
        MeshEvent::Left {
            peer: ghost_id,
            direction: Direction::Upstream
        }
    );
    wait_state(&lobby, Instant::now() + PROMPT, "forgot the ghost", |s| {
        !s.knows(ghost_id)
    })
    .await;
    lobby.shutdown().await.expect("shutdown");
}

/// `/healthz` of a mesh server (`--metrics-addr`) follows `Mesh::readiness`: ready once
/// registered with a fresh view, not ready while etcd cannot be reached (the lease is
/// unconfirmed past its deadline, the view stale), ready again when etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_registration_and_the_view() {
    let mut etcd = EtcdCluster::single().await.expect("etcd");
    let prefix = prefix();
    let port = free_port().expect("port");
    let (mesh, _events) = start(&etcd, &prefix, "game", port).await;
    let ready = mesh.readiness();
    assert!(ready(), "registered with a fresh view: ready");
    etcd.kill(0).expect("kill etcd");
    let deadline = Instant::now() + TTL + PROMPT;
    while ready() {
        assert!(Instant::now() < deadline, "still ready with etcd gone");
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition with a bound
    }
    etcd.restart(0).await.expect("restart etcd");
    let deadline = Instant::now() + PROMPT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "not ready again after etcd came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling a condition with a bound
    }
    mesh.shutdown().await.expect("clean stop");
}
