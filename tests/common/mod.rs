//! Shared helpers of the integration tests: every test talks to a real etcd started by
//! `darkrift_etcd_testing`, on its own key prefix.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use darkrift_etcd::{Connector, ConnectorConfig, Event, EventStream};
use darkrift_etcd_testing::{EtcdCluster, FaultProxy};

/// Bound on waiting for anything that should happen promptly.
pub const PROMPT: Duration = Duration::from_secs(10);

/// A fresh single-node etcd.
pub async fn etcd() -> EtcdCluster {
    EtcdCluster::single().await.expect("etcd starts")
}

/// A unique prefix per call, so tests sharing an etcd never see each other.
pub fn prefix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "/t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Test settings: short TTL, the given prefix.
pub fn config(etcd: &EtcdCluster, prefix: &str) -> ConnectorConfig {
    ConnectorConfig::new(etcd.endpoints())
        .with_prefix(prefix)
        .with_lease_ttl(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(5))
}

/// Connects and takes the event stream.
pub async fn connect(cfg: ConnectorConfig) -> (Connector, EventStream) {
    let c = Connector::connect(cfg).await.expect("connects");
    let events = c.events().expect("events");
    (c, events)
}

/// Connects, takes the event stream and waits for the initial snapshot (`Synced`).
pub async fn synced(cfg: ConnectorConfig) -> (Connector, EventStream) {
    let (c, mut events) = connect(cfg).await;
    until_synced(&mut events).await;
    (c, events)
}

/// Connects and registers one server (no properties); returns the connector and its id.
pub async fn registered(cfg: ConnectorConfig, group: &str, port: u16) -> (Connector, u16) {
    let c = Connector::connect(cfg).await.expect("connects");
    let id = c
        .register_server(group, "127.0.0.1", port, no_props())
        .await
        .expect("registers");
    (c, id)
}

/// etcd's current revision (a count-only read's header).
pub async fn current_revision(raw: &mut etcd_client::Client) -> i64 {
    raw.get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// No properties.
pub fn no_props() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// The next event, bounded.
pub async fn next(events: &mut EventStream, bound: Duration) -> Event {
    tokio::time::timeout(bound, events.recv())
        .await
        .expect("an event within the bound")
        .expect("stream open")
}

/// Collects events until `done` says so, bounded.
pub async fn collect_until(
    events: &mut EventStream,
    bound: Duration,
    mut done: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("stream ended; got {got:?}"),
            Err(tokio::time::error::Elapsed { .. }) => {
                panic!("timed out after {bound:?}; got {got:?}")
            }
        }
    }
    got
}

/// Waits for the `Synced` marker, returning the joins before it.
pub async fn until_synced(events: &mut EventStream) -> Vec<Event> {
    let mut got = collect_until(events, PROMPT, |e| {
        matches!(e.last(), Some(Event::Synced { .. }))
    })
    .await;
    got.pop();
    got
}

/// Ids of the joins in `events`.
pub fn join_ids(events: &[Event]) -> Vec<u16> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Join { server, .. } => Some(server.id),
            _ => None,
        })
        .collect()
}

/// Collects every event that arrives within `window` (used only after the state under test
/// has been awaited, to prove that nothing *else* arrives).
pub async fn drain_for(events: &mut EventStream, window: Duration) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await {
        got.push(e);
    }
    got
}

/// Ids of the servers etcd holds now.
pub async fn truth(etcd: &EtcdCluster, prefix: &str) -> std::collections::BTreeSet<u16> {
    let mut raw = etcd.client().await.expect("raw client");
    let resp = raw
        .get(
            format!("{prefix}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok())
        .collect()
}

/// Compacts etcd at its current revision (physically); returns that revision.
pub async fn compact_now(etcd: &EtcdCluster) -> i64 {
    let mut raw = etcd.client().await.expect("raw client");
    let rev = current_revision(&mut raw).await;
    raw.compact(
        rev,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");
    rev
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `GET path` over a fresh connection: the status code and the whole response.
pub async fn http_get(addr: impl tokio::net::ToSocketAddrs, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// Two fault proxies to member 0 of `etcd`: two endpoints that are one member, so a test can
/// fault the path to it (freeze, slow) while the other path stays healthy.
pub async fn two_paths_to_one_member(etcd: &EtcdCluster) -> (FaultProxy, FaultProxy) {
    (
        FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy"),
        FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy"),
    )
}
