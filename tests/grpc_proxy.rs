//! The registry's guarantees through etcd's own gRPC proxy (`etcd grpc-proxy start`), on real
//! etcd: connectors whose only endpoint is a proxy register, keep their leases, watch, recover
//! from compaction and from a proxy restart exactly as they do against etcd itself.
//!
//! What the proxy changes (docs/grpc-proxy.md): it drops watch progress *requests* (etcd 3.4.23
//! and 3.5.1 both; etcd-io/etcd#19710), and it keeps leases alive itself on behalf of the
//! keep-alive streams open to it (one etcd-client lessor per lease), answering each client
//! keep-alive with the lessor's next answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use darkrift_etcd::{Connector, ConnectorConfig, Event, EventStream};
use darkrift_etcd_testing::{metric_sum, scrape, EtcdCluster, FaultProxy, GrpcProxy};
use tokio::time::Instant;

/// Logs to the test's output when `RUST_LOG` is set (to see the watchdog and keep-alive
/// decisions through a proxy).
fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A fresh etcd, one proxy in front of it and a fresh prefix.
async fn etcd_behind_a_proxy() -> (EtcdCluster, GrpcProxy, String) {
    logs();
    let etcd = etcd().await;
    let proxy = GrpcProxy::start(&etcd).await.expect("grpc-proxy");
    (etcd, proxy, prefix())
}

/// Events until (and with) the first one `is` accepts, bounded by `bound`.
async fn until_event(
    events: &mut EventStream,
    bound: Duration,
    is: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    collect_until(events, bound, |e| e.iter().any(&is)).await
}

/// Registers one server per port of `ports` in `group`; the connectors and their ids.
async fn register_each(
    cfg: &ConnectorConfig,
    group: &str,
    ports: std::ops::Range<u16>,
) -> (Vec<Connector>, BTreeSet<u16>) {
    let mut keep = Vec::new();
    let mut ids = BTreeSet::new();
    for port in ports {
        let (c, id) = registered(cfg.clone(), group, port).await;
        ids.insert(id);
        keep.push(c);
    }
    (keep, ids)
}

/// Membership events only, as comparable lines.
fn membership(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Join { server, revision } => Some(format!("join {} @{revision}", server.id)),
            Event::Leave { id, revision, .. } => Some(format!("leave {id} @{revision}")),
            _ => None,
        })
        .collect()
}

/// Membership events as `join <id>` / `leave <id>` lines, sorted (what a relist emits is a
/// set: its order is the diff's, not etcd's).
fn sorted_changes(events: &[Event]) -> Vec<String> {
    let mut changes: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Join { server, .. } => Some(format!("join {}", server.id)),
            Event::Leave { id, .. } => Some(format!("leave {id}")),
            _ => None,
        })
        .collect();
    changes.sort();
    changes
}

fn ids(c: &Connector) -> BTreeSet<u16> {
    c.servers().iter().map(|s| s.id).collect()
}

/// `cfg` with `endpoints` instead of etcd's.
fn through(cfg: &ConnectorConfig, endpoints: Vec<String>) -> ConnectorConfig {
    ConnectorConfig {
        endpoints,
        ..cfg.clone()
    }
}

/// Streams of `method` the proxy has accepted so far (its gRPC server's own counter).
async fn streams_opened(proxy: &GrpcProxy, method: &str) -> f64 {
    let text = scrape(&proxy.metrics_url()).await.expect("proxy /metrics");
    metric_sum(
        &text,
        "grpc_server_started_total",
        &[("grpc_method", method)],
    )
}

/// Watch streams the proxy has accepted so far.
async fn watch_streams_opened(proxy: &GrpcProxy) -> f64 {
    streams_opened(proxy, "Watch").await
}

/// Waits until `events` holds membership lines equal to `want`'s count, then returns them.
async fn membership_until(events: &mut EventStream, count: usize) -> Vec<String> {
    let got = collect_until(events, PROMPT, |e| {
        e.iter().filter(|e| e.is_membership()).count() >= count
    })
    .await;
    membership(&got)
}

/// Registrations through a proxy (the allocation transaction, the lease grant and its
/// keep-alive) and a watcher behind the proxy: unique ids, and the watcher sees exactly the
/// joins and leaves, at the same revisions and in the same order, as a watcher on etcd itself;
/// both views equal etcd's keys.
#[tokio::test]
async fn registrations_and_watch_through_a_proxy_equal_etcd() {
    let (etcd, proxy, prefix) = etcd_behind_a_proxy().await;
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(5));
    let via = through(&cfg, vec![proxy.endpoint()]);
    let (direct, mut direct_events) = synced(cfg.clone()).await;
    let (proxied, mut proxied_events) = synced(via.clone()).await;

    let mut tasks = Vec::new();
    for port in 0..8 {
        let via = via.clone();
        tasks.push(tokio::spawn(async move {
            registered(via, "game", 4000 + port).await
        }));
    }
    let mut servers = Vec::new();
    for t in tasks {
        servers.push(t.await.expect("task"));
    }
    let held: BTreeSet<u16> = servers.iter().map(|(_, id)| *id).collect();
    assert_eq!(held.len(), 8, "ids unique: {servers:?}");
    for (c, _) in servers.iter().take(3) {
        c.deregister_server().await.expect("deregister");
    }

    let want = membership_until(&mut direct_events, 11).await;
    let got = membership_until(&mut proxied_events, 11).await;
    assert_eq!(got, want, "same changes, revisions and order as on etcd");
    let expected: BTreeSet<u16> = servers.iter().skip(3).map(|(_, id)| *id).collect();
    assert_eq!(truth(&etcd, &prefix).await, expected);
    assert_eq!(ids(&proxied), expected);
    assert_eq!(ids(&direct), expected);
    let more = drain_for(&mut proxied_events, Duration::from_millis(300)).await;
    assert!(membership(&more).is_empty(), "{more:?}");
}

/// The proxy keeps leases alive itself (one lessor per lease, answering each client keep-alive
/// with its own next answer): leases held through it for 4 TTLs are never lost and nobody
/// leaves. A server whose connections to the proxy close (a crash, as the proxy sees it) leaves
/// within its TTL: the proxy stops renewing with the stream.
#[tokio::test]
async fn leases_through_a_proxy_hold_and_a_crashed_server_leaves_within_its_ttl() {
    let (etcd, proxy, prefix) = etcd_behind_a_proxy().await;
    let ttl = Duration::from_secs(3);
    let cfg = config(&etcd, &prefix).with_lease_ttl(ttl);
    let (_watcher, mut events) = synced(cfg.clone()).await;
    // The crashing server reaches the proxy through a fault proxy it can be cut off by.
    let route = FaultProxy::start(&proxy.endpoint()).await.expect("route");
    let (stays, stays_id) = registered(through(&cfg, vec![proxy.endpoint()]), "game", 1).await;
    let mut stays_events = stays.events().expect("events");
    let (crashes, crashes_id) = registered(through(&cfg, vec![route.endpoint()]), "game", 2).await;
    let mut crashes_events = crashes.events().expect("events");
    let joins = collect_until(&mut events, PROMPT, |e| {
        e.iter().filter(|e| e.is_membership()).count() >= 2
    })
    .await;
    assert_eq!(join_ids(&joins).len(), 2, "{joins:?}");

    // Four TTLs of keep-alives through the proxy: nothing is lost, nobody leaves. The proxy
    // answers a keep-alive with its own lessor's next answer (up to TTL/3 + 0.5 s later), so
    // the keep-alive's stall bound (TTL/4) sometimes opens a second stream: counted, printed.
    let opened_before = streams_opened(&proxy, "LeaseKeepAlive").await;
    let quiet = drain_for(&mut events, ttl * 4).await;
    let opened = streams_opened(&proxy, "LeaseKeepAlive").await - opened_before;
    println!("keep-alive streams opened at the proxy by 2 servers in 4 TTLs: {opened}");
    assert!(membership(&quiet).is_empty(), "{quiet:?}");
    for (name, evs) in [
        ("stays", drain_for(&mut stays_events, Duration::ZERO).await),
        (
            "crashes",
            drain_for(&mut crashes_events, Duration::ZERO).await,
        ),
    ] {
        assert!(
            !evs.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
            "{name}: {evs:?}"
        );
    }
    assert!(stays.is_registered() && crashes.is_registered());

    route.cut();
    let cut_at = Instant::now();
    let bound = ttl + Duration::from_millis(1500);
    match next(&mut events, bound).await {
        Event::Leave { id, .. } => assert_eq!(id, crashes_id),
        other => panic!("expected the crashed server's leave, got {other:?}"),
    }
    let elapsed = cut_at.elapsed();
    println!("cut → leave through the proxy: {elapsed:?} (TTL {ttl:?})");
    assert!(elapsed <= bound, "{elapsed:?}");
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::from([stays_id]));
    drop(crashes);
}

/// A server that stops renewing (its health probe fails) but keeps its keep-alive stream
/// open. The proxy alone would keep its lease up to about a TTL longer (see
/// `the_proxy_renews_a_lease_past_its_clients_last_keep_alive`), but the connector revokes
/// its lease when its own deadline passes, so peers still see the leave within TTL + 1.5 s
/// (+ one probe interval), as directly (tests/liveness.rs).
#[tokio::test]
async fn a_server_that_stops_renewing_through_a_proxy_leaves_within_its_ttl() {
    let (etcd, proxy, prefix) = etcd_behind_a_proxy().await;
    let ttl = Duration::from_secs(3);
    let cfg = config(&etcd, &prefix).with_lease_ttl(ttl);
    let (_watcher, mut events) = synced(cfg.clone()).await;
    let a = Connector::connect(through(&cfg, vec![proxy.endpoint()]))
        .await
        .expect("connect");
    let healthy = Arc::new(AtomicBool::new(true));
    let probe = healthy.clone();
    a.set_health_probe(move || {
        let healthy = probe.load(Ordering::SeqCst);
        async move { healthy }
    });
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    let joins = collect_until(&mut events, PROMPT, |e| e.iter().any(Event::is_membership)).await;
    assert_eq!(join_ids(&joins), vec![id]);

    healthy.store(false, Ordering::SeqCst);
    let failed_at = Instant::now();
    // The TTL, one probe interval (1 s) and the usual 1.5 s.
    let bound = ttl + Duration::from_millis(2500);
    match next(&mut events, bound).await {
        Event::Leave { id: left, .. } => assert_eq!(left, id),
        other => panic!("expected a leave, got {other:?}"),
    }
    let elapsed = failed_at.elapsed();
    println!("probe fails → leave through the proxy: {elapsed:?} (TTL {ttl:?})");
    assert!(elapsed <= bound, "{elapsed:?}");
}

/// A watcher behind the proxy, cut off while servers join and leave and etcd compacts past
/// its resume point: the proxy passes etcd's compaction answer on, the watcher relists and
/// emits exactly the missing changes, then Fresh; its view equals etcd's.
#[tokio::test]
async fn compaction_behind_a_proxy_relists_exactly_the_difference() {
    logs();
    let etcd = etcd().await;
    let proxy = GrpcProxy::start(&etcd).await.expect("grpc-proxy");
    let route = FaultProxy::start(&proxy.endpoint()).await.expect("route");
    let prefix = prefix();
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(10));
    let (_stays, stays_id) = registered(cfg.clone(), "game", 1).await;
    let (goes, goes_id) = registered(cfg.clone(), "game", 2).await;
    let (w, mut w_events) = connect(through(&cfg, vec![route.endpoint()])).await;
    assert_eq!(join_ids(&until_synced(&mut w_events).await).len(), 2);

    route.cut();
    let mut got = until_event(&mut w_events, PROMPT, |e| matches!(e, Event::Stale { .. })).await;
    goes.deregister_server().await.expect("deregister");
    let (_keep, new_ids) = register_each(&cfg, "lobby", 10..13).await;
    compact_now(&etcd).await;
    route.restore();

    got.extend(
        until_event(&mut w_events, Duration::from_secs(20), |e| {
            matches!(e, Event::Fresh { .. })
        })
        .await,
    );
    let changes = sorted_changes(&got);
    let mut want: Vec<String> = new_ids.iter().map(|id| format!("join {id}")).collect();
    want.push(format!("leave {goes_id}"));
    want.sort();
    assert_eq!(
        changes, want,
        "exactly the missing joins and leaves: {got:?}"
    );
    let mut expected = new_ids.clone();
    expected.insert(stays_id);
    assert_eq!(ids(&w), expected);
    assert_eq!(truth(&etcd, &prefix).await, expected);

    // Compaction while the stream is open and caught up: nothing to relist, every later
    // change arrives once.
    let (_late, late_id) = registered(cfg.clone(), "lobby", 20).await;
    compact_now(&etcd).await;
    let (_later, later_id) = registered(cfg.clone(), "lobby", 21).await;
    let late = membership_until(&mut w_events, 2).await;
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(late[0].starts_with(&format!("join {late_id} ")), "{late:?}");
    assert!(
        late[1].starts_with(&format!("join {later_id} ")),
        "{late:?}"
    );
    expected.extend([late_id, later_id]);
    assert_eq!(ids(&w), expected);
    let more = drain_for(&mut w_events, Duration::from_millis(300)).await;
    assert!(more.is_empty(), "no relist, nothing else: {more:?}");
}

/// Idles a watcher behind a proxy for `window` (after its snapshot) and returns the watch
/// streams the proxy accepted meanwhile: each one is the watcher giving up on its stream.
async fn reopens_while_idle(etcd: &EtcdCluster, window: Duration) -> f64 {
    let proxy = GrpcProxy::start(etcd).await.expect("grpc-proxy");
    let prefix = prefix();
    let mut cfg = config(etcd, &prefix).with_lease_ttl(Duration::from_secs(5));
    cfg.progress_interval = Duration::from_secs(1);
    cfg.watch_idle_timeout = Duration::from_secs(3);
    let (_w, mut events) = synced(through(&cfg, vec![proxy.endpoint()])).await;
    // The watch opens after the snapshot (Synced): wait for it before counting.
    let opened = Instant::now();
    while watch_streams_opened(&proxy).await < 1.0 {
        assert!(opened.elapsed() < PROMPT, "the watch never opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = watch_streams_opened(&proxy).await;
    let idle = drain_for(&mut events, window).await;
    let after = watch_streams_opened(&proxy).await;
    assert!(idle.is_empty(), "{idle:?}");
    // Still delivering.
    let (_s, id) = registered(cfg.clone(), "game", 1).await;
    let joins = membership_until(&mut events, 1).await;
    assert!(joins[0].starts_with(&format!("join {id} ")), "{joins:?}");
    after - before
}

/// The proxy drops watch progress *requests* (etcd 3.4.23 and 3.5.1; etcd-io/etcd#19710): a
/// watcher's watchdog (here `progress_interval` 1 s, `watch_idle_timeout` 3 s) gets no
/// answer and reopens its idle stream again and again. Nothing is lost (it resumes where it
/// was), but it is churn and a warning each time; the next test shows the remedy.
#[tokio::test]
async fn the_proxy_drops_progress_requests_so_an_idle_watch_is_reopened() {
    logs();
    let etcd = etcd().await;
    let reopened = reopens_while_idle(&etcd, Duration::from_secs(8)).await;
    println!("watch streams reopened through the proxy in 8 idle seconds: {reopened}");
    assert!(reopened >= 1.0, "{reopened}");
}

/// The remedy, with no change to the watcher: etcd sends progress *notifications* on its own
/// (`--experimental-watch-progress-notify-interval`, 10 min by default) to every idle watch
/// that asked for them, the proxy's coalesced upstream watch included, and the proxy passes
/// them on to each client. With the interval below the connector's `progress_interval`, an
/// idle watcher behind the proxy hears from its stream before it would ask: in 8 idle seconds
/// no stream is reopened.
#[tokio::test]
async fn with_server_progress_notifications_an_idle_watch_through_a_proxy_stays_open() {
    logs();
    let etcd = EtcdCluster::builder()
        .extra_args(["--experimental-watch-progress-notify-interval", "400ms"])
        .build()
        .await
        .expect("etcd");
    let reopened = reopens_while_idle(&etcd, Duration::from_secs(8)).await;
    println!("watch streams reopened through the proxy in 8 idle seconds: {reopened}");
    assert!(
        reopened < 0.5,
        "an idle watch was reopened {reopened} times"
    );
}

/// The proxy killed and restarted on its port while servers join and leave: the watcher
/// behind it is stale while the proxy is down, then relists and emits exactly what it missed
/// (nothing twice), then Fresh; a server registered through the proxy keeps its lease and id
/// (the restart is shorter than its TTL) and nobody sees it leave.
#[tokio::test]
async fn a_proxy_restart_loses_and_repeats_nothing() {
    let (etcd, mut proxy, prefix) = etcd_behind_a_proxy().await;
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(6));
    let via = through(&cfg, vec![proxy.endpoint()]);
    let (_direct, mut direct_events) = synced(cfg.clone()).await;
    let (behind, behind_id) = registered(via.clone(), "game", 1).await;
    let mut behind_events = behind.events().expect("events");
    let (goes, goes_id) = registered(cfg.clone(), "game", 2).await;
    let (w, mut w_events) = synced(via.clone()).await;
    assert_eq!(ids(&w), BTreeSet::from([behind_id, goes_id]));
    assert_eq!(membership_until(&mut direct_events, 2).await.len(), 2);

    proxy.kill().expect("kill proxy");
    let mut got = until_event(&mut w_events, PROMPT, |e| matches!(e, Event::Stale { .. })).await;
    goes.deregister_server().await.expect("deregister");
    let (_new, new_id) = registered(cfg.clone(), "lobby", 3).await;
    proxy.restart().await.expect("restart proxy");
    got.extend(until_event(&mut w_events, PROMPT, |e| matches!(e, Event::Fresh { .. })).await);
    let changes = sorted_changes(&got);
    let mut want = vec![format!("join {new_id}"), format!("leave {goes_id}")];
    want.sort();
    assert_eq!(changes, want, "exactly what was missed: {got:?}");
    let expected = BTreeSet::from([behind_id, new_id]);
    assert_eq!(ids(&w), expected);
    assert_eq!(truth(&etcd, &prefix).await, expected);

    // After the restart: a new change arrives once, and the server behind the proxy never
    // lost its lease.
    let (_later, later_id) = registered(via.clone(), "lobby", 4).await;
    let later = membership_until(&mut w_events, 1).await;
    assert!(
        later[0].starts_with(&format!("join {later_id} ")),
        "{later:?}"
    );
    let direct = membership(&drain_for(&mut direct_events, Duration::from_millis(500)).await);
    assert!(
        !direct
            .iter()
            .any(|l| l.starts_with(&format!("leave {behind_id} "))),
        "{direct:?}"
    );
    let own = drain_for(&mut behind_events, Duration::ZERO).await;
    assert!(
        !own.iter().any(|e| matches!(e, Event::LeaseLost { .. })),
        "{own:?}"
    );
    assert_eq!(behind.registered_id(), Some(behind_id));
}

/// Two proxies in a row (a node-local proxy in front of a shared one): registration and the
/// watch still see exactly etcd's changes.
#[tokio::test]
async fn two_proxies_in_a_row_pass_everything_through() {
    logs();
    let etcd = etcd().await;
    let first = GrpcProxy::start(&etcd).await.expect("grpc-proxy");
    let second = GrpcProxy::start_upstream(etcd.binary(), vec![first.endpoint()])
        .await
        .expect("second grpc-proxy");
    let prefix = prefix();
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(5));
    let via = through(&cfg, vec![second.endpoint()]);
    let (_direct, mut direct_events) = synced(cfg.clone()).await;
    let (w, mut w_events) = synced(via.clone()).await;
    let (a, a_id) = registered(via.clone(), "game", 1).await;
    let (_b, b_id) = registered(via.clone(), "game", 2).await;
    a.deregister_server().await.expect("deregister");
    let want = membership_until(&mut direct_events, 3).await;
    let got = membership_until(&mut w_events, 3).await;
    assert_eq!(got, want);
    assert_eq!(ids(&w), BTreeSet::from([b_id]));
    assert_ne!(a_id, b_id);
    assert_eq!(truth(&etcd, &prefix).await, BTreeSet::from([b_id]));
}

/// Why the connector's own deadline matters behind a proxy: the proxy renews a lease on its own (its lessor sends a
/// keep-alive every TTL/3) for as long as a client's keep-alive stream is open and a client
/// keep-alive came within the last TTL. One keep-alive through the proxy, then silence on an
/// open stream, keeps the lease well past its TTL; directly, it expires a TTL after the
/// keep-alive.
#[tokio::test]
async fn the_proxy_renews_a_lease_past_its_clients_last_keep_alive() {
    logs();
    let etcd = etcd().await;
    let proxy = GrpcProxy::start(&etcd).await.expect("grpc-proxy");
    let ttl = 6;
    let mut direct = etcd.client().await.expect("client");
    let mut via = etcd_client::Client::connect([proxy.endpoint()], None)
        .await
        .expect("client through the proxy");
    let mut lifetimes = Vec::new();
    for client in [&mut direct, &mut via] {
        let lease = client.lease_grant(ttl, None).await.expect("grant").id();
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.expect("keep-alive");
        keeper.keep_alive().await.expect("send");
        stream.message().await.expect("answer").expect("answer");
        let renewed = Instant::now();
        // The stream stays open (keeper and stream alive), nothing more is sent.
        let mut raw = etcd.client().await.expect("raw client");
        loop {
            let left = raw
                .lease_time_to_live(lease, None)
                .await
                .expect("time to live")
                .ttl();
            if left <= 0 {
                break;
            }
            assert!(renewed.elapsed() < Duration::from_secs(20), "never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        lifetimes.push(renewed.elapsed());
        drop((keeper, stream));
    }
    println!(
        "lease of TTL {ttl}s after its last keep-alive: direct {:?}, through the proxy {:?}",
        lifetimes[0], lifetimes[1]
    );
    // (TimeToLive counts whole seconds, so both read up to 1 s short.)
    assert!(lifetimes[0] < Duration::from_millis(6600), "{lifetimes:?}");
    assert!(
        lifetimes[1] > lifetimes[0] + Duration::from_secs(2),
        "{lifetimes:?}"
    );
}

/// Membership lines per group, each group's in the order received.
fn per_group(events: &[Event]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for event in events {
        let group = match event {
            Event::Join { server, .. } => &server.group,
            Event::Leave { group, .. } => group,
            _ => continue,
        };
        groups
            .entry(group.clone())
            .or_default()
            .extend(membership(std::slice::from_ref(event)));
    }
    groups
}

/// A connector watching only its interest (`watch_groups`: one watch per group on one
/// stream) through a proxy: the proxy numbers the stream's watches itself, yet each group's
/// changes reach the view (watch id `n` is range `n`, by etcd and by the proxy), each group's in
/// etcd's order and at etcd's revisions, the same as a connector with the same interest on
/// etcd itself, and nothing of the unwatched group. Two groups' events may interleave out of
/// revision order (the contract with `watch_groups`): the proxy catches a new watch up on its
/// own, and here it delivered `game`'s joins before `lobby`'s.
#[tokio::test]
async fn an_interest_through_a_proxy_sees_its_groups_as_on_etcd() {
    let (etcd, proxy, prefix) = etcd_behind_a_proxy().await;
    let cfg = config(&etcd, &prefix).with_lease_ttl(Duration::from_secs(5));
    let interest = cfg.clone().with_watch_groups(["lobby", "game"]);
    let (direct, mut direct_events) = synced(interest.clone()).await;
    let (proxied, mut proxied_events) = synced(through(&interest, vec![proxy.endpoint()])).await;

    let (_lobby, lobby_ids) = register_each(&cfg, "lobby", 1..3).await;
    let (_chat, chat_ids) = register_each(&cfg, "chat", 3..5).await;
    let (mut game, game_ids) = register_each(&cfg, "game", 5..8).await;
    game.remove(0)
        .deregister_server()
        .await
        .expect("deregister");

    let six = |e: &[Event]| e.iter().filter(|e| e.is_membership()).count() >= 6;
    let want = collect_until(&mut direct_events, PROMPT, six).await;
    let got = collect_until(&mut proxied_events, PROMPT, six).await;
    let want = per_group(&want);
    assert_eq!(want.len(), 2, "{want:?}");
    assert_eq!(
        per_group(&got),
        want,
        "per group: same changes, revisions and order as on etcd"
    );
    let watched: BTreeSet<u16> = lobby_ids.union(&game_ids).copied().collect();
    assert_eq!(ids(&direct), ids(&proxied));
    assert_eq!(
        ids(&proxied).len(),
        watched.len() - 1,
        "one game server left"
    );
    assert!(ids(&proxied).is_subset(&watched));
    assert!(ids(&proxied).is_disjoint(&chat_ids), "chat is not watched");
    let more = drain_for(&mut proxied_events, Duration::from_millis(300)).await;
    assert!(membership(&more).is_empty(), "{more:?}");
}
