//! Real DarkRift 2.11.0 servers (mono, the plugin and host of `darkrift/`) registered through
//! `darkrift-etcd agent` processes on a real etcd: joins, leaves, stalls, eviction of a zombie,
//! agent restarts, and, after every scenario, id uniqueness by etcd's own history.
//!
//! The cluster is `darkrift/config/Cluster.config`: `lobby` connects to `game`. Servers use
//! `darkrift/config/Server.config` (a running agent, readiness probe, `HttpHealthCheck` with
//! `healthUrl`, `reconnectAttempts="1"`); agents run with `--ttl 5s`. Tests wait for DarkRift's
//! own log lines (darkrift/README.md lists them) with bounds, never for fixed times, except
//! where an absence is the claim (scenario 5 watches past the lease TTL). Times are printed as
//! `darkrift-bench:` rows, never asserted. The scenarios run one at a time (two cores; the
//! bench rows would mean little otherwise). Without mono or DarkRift they skip with a message,
//! except under `CI=true`, where that fails. See darkrift/README.md, "Tests".

#[path = "support/darkrift.rs"]
mod harness;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use harness::{darkrift, http, ms, Bed, EventStream, Server, EVENT, TTL};
use serde_json::Value;

/// One scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bound for a leave that needs a lease to expire first (TTL, the health check's 2 s, slack).
const EXPIRY: Duration = Duration::from_secs(40);

/// Every line of `log` with `needle`, for assertion messages.
fn lines_with(server: &Server, needle: &str) -> Vec<String> {
    server
        .log()
        .all(needle)
        .into_iter()
        .map(|l| l.text)
        .collect()
}

/// 1. A game joining a running cluster is linked at once: the lobby connects on its first dial
/// because the agent announced the game only after its listener accepted (reserve, TCP probe,
/// announce). A join announced earlier would make the lobby's single dial fail (`Could not
/// connect to server N`) and call `HandleConnectionFailure`.
#[tokio::test]
async fn a_joining_game_is_announced_after_its_listener_is_up() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "join").await;
    let a = bed.agent("agent-a", "127.0.0.1:0", &[]).await;
    let b = bed.agent("agent-b", "127.0.0.1:0", &[]).await;
    let lobby = bed.server("lobby", "lobby", &a.addr).await;
    let game1 = bed.server("game1", "game", &a.addr).await;
    lobby.linked_to(game1.id, 0).await;

    // The cluster runs; a game joins through another agent.
    let mark = lobby.log().len();
    let game2 = bed.server("game2", "game", &b.addr).await;
    let mounted = game2
        .log()
        .wait(0, "Server mounted, listening on port", EVENT)
        .await;
    let join = lobby
        .log()
        .wait(mark, &Server::join_line(game2.id, "game"), EVENT)
        .await;
    // The lobby's first dial either links or fails (reconnectAttempts="1"): whichever comes.
    let connected = format!("Connected to server {} on ", game2.id);
    let failed = format!("Could not connect to server {} on ", game2.id);
    let linked = lobby
        .log()
        .wait_by(mark, "a link or a failed dial", EVENT, |t| {
            t.contains(&connected) || t.contains(&failed)
        })
        .await;
    let failed = lines_with(&lobby, &failed);
    assert!(
        failed.is_empty() && linked.text.contains(&connected),
        "the lobby dialled game {} before it listened: {failed:?}",
        game2.id
    );
    let retried = lines_with(&lobby, &format!("Connecting to server {} on", game2.id));
    assert_eq!(retried.len(), 1, "one dial, and it connected: {retried:?}");
    // The id was reserved first (the register answer's state; the stream may already start
    // with `registered` when the probe succeeded before it attached) and announced later.
    let reserved = game2
        .log()
        .find(0, &format!("gave id {} (reserved", game2.id));
    let announced = game2
        .log()
        .find(0, &format!("Registry: id {} announced", game2.id));
    assert!(
        reserved.is_some() && announced.is_some(),
        "game2 was reserved, then announced: {reserved:?} {announced:?}"
    );
    println!(
        "darkrift-bench: join_after_listen_ms={:.1} link_after_listen_ms={:.1} (target <= 200)",
        ms(mounted.at, join.at),
        ms(mounted.at, linked.at)
    );
    bed.assert_ids_unique().await;
}

/// 2. A game killed with SIGKILL leaves every lobby's view (its event stream closed, the agent
/// deregistered it after the reattach window); a game host stopped with SIGTERM deregisters
/// itself (`DeregisterServer` during `Dispose`) and leaves too.
#[tokio::test]
async fn killed_and_stopped_games_leave_every_lobby() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "leave").await;
    let a = bed.agent("agent-a", "127.0.0.1:0", &[]).await;
    let b = bed.agent("agent-b", "127.0.0.1:0", &[]).await;
    let lobby1 = bed.server("lobby1", "lobby", &a.addr).await;
    let lobby2 = bed.server("lobby2", "lobby", &b.addr).await;
    let mut game1 = bed.server("game1", "game", &a.addr).await;
    let mut game2 = bed.server("game2", "game", &b.addr).await;
    for lobby in [&lobby1, &lobby2] {
        lobby.linked_to(game1.id, 0).await;
        lobby.linked_to(game2.id, 0).await;
    }

    // kill -9
    let marks = [lobby1.log().len(), lobby2.log().len()];
    game1.proc.signal("KILL");
    let killed = Instant::now();
    let mut row = String::from("darkrift-bench: leave_after_kill9_ms");
    for (lobby, mark) in [&lobby1, &lobby2].into_iter().zip(marks) {
        let leave = lobby
            .log()
            .wait(mark, &Server::leave_line(game1.id), EVENT)
            .await;
        let _ = write!(row, " {}={:.1}", lobby.log().name, ms(killed, leave.at));
    }
    println!("{row}");
    assert!(!game1.proc.running(), "game1 was killed");

    // SIGTERM
    let marks = [lobby1.log().len(), lobby2.log().len()];
    game2.proc.signal("TERM");
    let stopped = Instant::now();
    let deregistered = game2
        .log()
        .wait(0, "Deregistered server from registry.", EVENT)
        .await;
    game2.log().wait(0, "DarkRiftHost: stopped", EVENT).await;
    let status = game2.proc.exited(EVENT).await;
    assert!(status.success(), "the host exits 0 after SIGTERM: {status}");
    let mut row = format!(
        "darkrift-bench: sigterm deregistered_ms={:.1} leave_ms",
        ms(stopped, deregistered.at)
    );
    for (lobby, mark) in [&lobby1, &lobby2].into_iter().zip(marks) {
        let leave = lobby
            .log()
            .wait(mark, &Server::leave_line(game2.id), EVENT)
            .await;
        let _ = write!(row, " {}={:.1}", lobby.log().name, ms(stopped, leave.at));
    }
    println!("{row}");
    bed.assert_ids_unique().await;
}

/// 3. A stalled game (SIGSTOP) fails its health check: the agent stops keeping its lease alive
/// and the lobby sees it leave after about the TTL. On SIGCONT the game is alive (its process
/// runs, `HttpHealthCheck` answers: the agent never abandoned a probe) and comes back under
/// the same id.
#[tokio::test]
async fn a_stalled_game_leaves_and_comes_back_with_its_id() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "stall").await;
    let a = bed.agent("agent-a", "127.0.0.1:0", &[]).await;
    let b = bed.agent("agent-b", "127.0.0.1:0", &[]).await;
    let lobby = bed.server("lobby", "lobby", &a.addr).await;
    let mut game = bed.server("game", "game", &b.addr).await;
    lobby.linked_to(game.id, 0).await;
    let health = format!("localhost:{}", game.health_port);
    let (status, body) = http(&health, &health, "GET", "/health", None).await;
    assert_eq!(
        status, 200,
        "the health check answers before the stall: {body}"
    );

    let mark = lobby.log().len();
    game.proc.signal("STOP");
    let stalled = Instant::now();
    let leave = lobby
        .log()
        .wait(mark, &Server::leave_line(game.id), EXPIRY)
        .await;

    game.proc.signal("CONT");
    let resumed = Instant::now();
    let join = lobby
        .log()
        .wait(leave.index + 1, &Server::join_line(game.id, "game"), EXPIRY)
        .await;
    let linked = lobby.linked_to(game.id, leave.index + 1).await;
    // The path it took: the lease lapsed while the health check failed, and the agent put the
    // same id back once it answered again (the plugin would stop the server on another id).
    game.log()
        .wait(0, &format!("the lease of id {} was lost", game.id), EVENT)
        .await;
    game.log()
        .wait(0, &format!("id {} registered again", game.id), EVENT)
        .await;
    assert!(game.proc.running(), "the game survived the stall");
    let (status, body) = http(&health, &health, "GET", "/health", None).await;
    assert_eq!(
        status, 200,
        "the health check answers after the stall: {body}"
    );
    assert!(
        game.proc.running(),
        "the game survived its health checks after the stall"
    );
    let fatal = lines_with(&game, "Fatal");
    assert!(fatal.is_empty(), "the game logged: {fatal:?}");
    println!(
        "darkrift-bench: leave_after_sigstop_ms={:.1} (ttl {} s) rejoin_after_sigcont_ms={:.1} relink_after_sigcont_ms={:.1}",
        ms(stalled, leave.at),
        TTL.as_secs(),
        ms(resumed, join.at),
        ms(resumed, linked.at)
    );
    bed.assert_ids_unique().await;
}

/// 3b. The agent dies while its health probe of a stalled server is still open (the probe's
/// connection is closed by the dying process, like any abandoned probe): the server, resumed,
/// answers that closed connection and must survive it (DarkRift's `HttpHealthCheck` ends the
/// process on that write unless the plugin hardened it), and takes its registration back from
/// the restarted agent.
#[tokio::test]
async fn a_stalled_game_survives_its_agent_dying_mid_probe() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "probe-restart").await;
    let a = bed.agent("agent-a", "127.0.0.1:0", &[]).await;
    let mut b = bed.agent("agent-b", "127.0.0.1:0", &[]).await;
    let lobby = bed.server("lobby", "lobby", &a.addr).await;
    let mut game = bed.server("game", "game", &b.addr).await;
    lobby.linked_to(game.id, 0).await;

    let mark = b.proc.log.len();
    game.proc.signal("STOP");
    // The agent's probe went unanswered for its 2 s: a request is open at the frozen server.
    b.proc.log.wait(mark, "health probe fails", EXPIRY).await;
    b.proc.signal("KILL");
    b.proc.exited(EVENT).await;
    let b2 = bed.agent("agent-b2", &b.addr, &[]).await;
    let game_mark = game.log().len();
    game.proc.signal("CONT");
    // DarkRift answers its queued health requests in order: ours comes after the abandoned
    // one, so a 200 here means the abandoned one was answered first, to a closed connection.
    let health = format!("localhost:{}", game.health_port);
    let (status, body) = http(&health, &health, "GET", "/health", None).await;
    assert_eq!(
        status, 200,
        "the health check answers after the stall: {body}"
    );
    assert!(
        game.proc.running(),
        "the game survived answering its dead agent's probe"
    );
    game.log()
        .wait(game_mark, &format!("Resumed id {} ", game.id), EXPIRY)
        .await;
    let (status, body) = http(&b2.addr, &b2.addr, "GET", "/v1/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"registrations\":1"), "{body}");
    assert!(game.proc.running(), "the game still runs");
    let fatal = lines_with(&game, "Fatal");
    assert!(fatal.is_empty(), "the game logged: {fatal:?}");
    bed.assert_ids_unique().await;
}

/// 4. A zombie (a live registration whose advertised port refuses) is evicted by DarkRift's own
/// `HandleConnectionFailure` from two lobbies on different agents (two reporters; eviction on
/// with `--eviction-min-reporters 2`).
#[tokio::test]
async fn two_lobbies_on_different_agents_evict_a_zombie() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "zombie").await;
    let eviction = ["--eviction-min-reporters", "2", "--eviction-window", "30s"];
    let a = bed.agent("agent-a", "127.0.0.1:0", &eviction).await;
    let b = bed.agent("agent-b", "127.0.0.1:0", &eviction).await;
    // The zombie's own agent stops it when its key is removed (instead of putting it back).
    let z = bed
        .agent(
            "agent-z",
            "127.0.0.1:0",
            &[&eviction[..], &["--on-key-removed", "stop"]].concat(),
        )
        .await;

    // Register the zombie through the agent's API: a port nothing listens on.
    let dead = darkrift_etcd_testing::free_port().expect("free port");
    let request = format!(
        r#"{{"group":"game","host":"127.0.0.1","port":{dead},"readiness":"immediate","ttl_ms":{}}}"#,
        TTL.as_millis()
    );
    let (status, body) = http(
        &z.addr,
        &z.addr,
        "POST",
        "/v1/registrations",
        Some(&request),
    )
    .await;
    assert_eq!(status, 201, "the zombie registers: {body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON answer");
    let zombie = u16::try_from(answer["id"].as_u64().expect("id")).expect("u16 id");
    let handle = answer["handle"].as_str().expect("handle").to_owned();
    let events = EventStream::attach(&z.addr, &handle, "zombie-events").await;
    events.log.wait(0, "\"event\":\"synced\"", EVENT).await;

    let lobby1 = bed.server("lobby1", "lobby", &a.addr).await;
    let lobby2 = bed.server("lobby2", "lobby", &b.addr).await;
    let mut reports = Vec::new();
    for lobby in [&lobby1, &lobby2] {
        lobby
            .log()
            .wait(
                0,
                &format!("Could not connect to server {zombie} on"),
                EVENT,
            )
            .await;
        reports.push(
            lobby
                .log()
                .wait(0, &format!("Reported server {zombie} unreachable"), EVENT)
                .await,
        );
    }
    let second = reports.iter().map(|r| r.at).max().expect("two reports");
    let mut row = String::from("darkrift-bench: evict_after_second_report_ms");
    for lobby in [&lobby1, &lobby2] {
        let leave = lobby
            .log()
            .wait(0, &Server::leave_line(zombie), EVENT)
            .await;
        let _ = write!(row, " {}={:.1}", lobby.log().name, ms(second, leave.at));
    }
    println!("{row}");
    println!(
        "darkrift: the lobbies' reports: {:?}",
        reports.iter().map(|r| r.text.clone()).collect::<Vec<_>>()
    );
    // The zombie's own stream hears that it is over (`--on-key-removed stop`).
    events
        .log
        .wait(0, "\"event\":\"registration_stopped\"", EVENT)
        .await;
    bed.assert_ids_unique().await;
}

/// 5. An agent serving two DarkRift servers is killed with SIGKILL and restarted on the same
/// address within the TTL: both resume with their handles, keep their ids, and no peer (one on
/// another agent included) sees a leave. etcd's history shows no delete at all.
#[tokio::test]
async fn an_agent_restart_costs_no_id_and_no_leave() {
    let Some(built) = darkrift() else { return };
    let _serial = SERIAL.lock().await;
    let bed = Bed::new(built, "restart").await;
    let mut a = bed.agent("agent-a", "127.0.0.1:0", &[]).await;
    let b = bed.agent("agent-b", "127.0.0.1:0", &[]).await;
    // Two DarkRift servers share agent a.
    let lobby1 = bed.server("lobby1", "lobby", &a.addr).await;
    let game1 = bed.server("game1", "game", &a.addr).await;
    let lobby2 = bed.server("lobby2", "lobby", &b.addr).await;
    lobby1.linked_to(game1.id, 0).await;
    lobby2.linked_to(game1.id, 0).await;
    let (status, body) = http(&a.addr, &a.addr, "GET", "/v1/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"registrations\":2"),
        "agent a serves both: {body}"
    );

    let marks = [lobby1.log().len(), game1.log().len()];
    a.proc.signal("KILL");
    let killed = Instant::now();
    a.proc.exited(EVENT).await;
    let addr = a.addr.clone();
    let a2 = bed.agent("agent-a2", &addr, &[]).await;
    let listening = Instant::now();
    let mut row = format!(
        "darkrift-bench: agent_restart listening_after_kill_ms={:.1} resumed_after_kill_ms",
        ms(killed, listening)
    );
    for (server, mark) in [&lobby1, &game1].into_iter().zip(marks) {
        let resumed = server
            .log()
            .wait(mark, &format!("Resumed id {} ", server.id), EVENT)
            .await;
        let _ = write!(row, " {}={:.1}", server.log().name, ms(killed, resumed.at));
    }
    println!("{row}");
    let (status, body) = http(&a2.addr, &a2.addr, "GET", "/v1/health", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"registrations\":2"),
        "the restarted agent serves both again: {body}"
    );

    // An absence cannot be awaited: watch until the leases would have expired had the new
    // agent not adopted them (TTL after the kill, plus margin), then pass a barrier event (a
    // new game's join, seen by both lobbies: their streams delivered everything before it).
    tokio::time::sleep_until((killed + TTL + Duration::from_secs(2)).into()).await;
    let game2 = bed.server("game2", "game", &a2.addr).await;
    lobby1.linked_to(game2.id, 0).await;
    lobby2.linked_to(game2.id, 0).await;
    // game1 tracks the lobbies (downstream), the lobbies track game1 (upstream).
    for observer in [&lobby1, &lobby2, &game1] {
        for id in [lobby1.id, lobby2.id, game1.id] {
            let leaves = lines_with(observer, &Server::leave_line(id));
            assert!(
                leaves.is_empty(),
                "{} saw a leave: {leaves:?}",
                observer.log().name
            );
        }
    }
    for server in [&lobby1, &game1] {
        let fatal = lines_with(server, "Fatal");
        assert!(fatal.is_empty(), "{}: {fatal:?}", server.log().name);
        let joins = lines_with(&lobby2, &Server::join_line(server.id, &server.group));
        assert!(
            joins.len() <= 1,
            "lobby2 saw {} join again: {joins:?}",
            server.log().name
        );
    }
    let replay = bed.assert_ids_unique().await;
    assert_eq!(
        replay.deletes, 0,
        "no server key was deleted across the agent restart: {replay:?}"
    );
}
