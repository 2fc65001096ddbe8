//! Counted figures of issue 4 that do not depend on the machine's speed: etcd requests per
//! registration, counted by the connector and, independently, by etcd itself (its
//! `grpc_server_handled_total` counters on `/metrics`). No timing assertion here: the timed
//! figures live in `benches/registry.rs`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use common::*;
use darkrift_etcd::Connector;
use darkrift_etcd::ConnectorConfig;
use darkrift_etcd_testing::EtcdCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Test settings with a long TTL: each registered connector checks its keys once per TTL with
/// a transaction of its own, which must not land inside a measured interval.
fn quiet(etcd: &EtcdCluster, prefix: &str) -> ConnectorConfig {
    config(etcd, prefix).with_lease_ttl(std::time::Duration::from_secs(60))
}

/// Unary gRPC requests etcd has answered so far, per method.
async fn etcd_unary_requests(endpoint: &str) -> BTreeMap<String, u64> {
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to etcd's metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("request metrics");
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .await
        .expect("read metrics");
    let mut counts = BTreeMap::new();
    for line in body.lines().filter(|l| {
        l.starts_with("grpc_server_handled_total{") && l.contains("grpc_type=\"unary\"")
    }) {
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a grpc_method label");
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a counter value");
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        *counts.entry(method.to_owned()).or_insert(0) += value;
    }
    assert!(
        !counts.is_empty(),
        "etcd's /metrics has no unary gRPC counters"
    );
    counts
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

fn method(counts: &BTreeMap<String, u64>, name: &str) -> u64 {
    counts.get(name).copied().unwrap_or(0)
}

/// N servers registering one after another on one etcd each cost exactly two requests: the
/// lease grant and one allocation transaction (the floor), by the connector's count and by
/// etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_n_sequential_registrations_costs_exactly_two_requests() {
    const N: u16 = 12;
    let etcd = etcd().await;
    let endpoint = etcd.endpoint(0);
    let prefix = prefix();
    let mut held = Vec::new();
    let mut ids = HashSet::new();
    for i in 0..N {
        // Connected after the previous registration: its snapshot shows every taken id, so
        // the first attempt cannot conflict.
        let c = Connector::connect(quiet(&etcd, &prefix))
            .await
            .expect("connect");
        c.wait_synced(PROMPT).await.expect("synced");
        let before = etcd_unary_requests(&endpoint).await;
        let id = c
            .register_server("game", "127.0.0.1", 5000 + i, no_props())
            .await
            .expect("register");
        let after = etcd_unary_requests(&endpoint).await;
        assert_eq!(
            c.registration_requests(),
            2,
            "registration {i} (id {id}): lease grant + one transaction"
        );
        assert_eq!(
            total(&after) - total(&before),
            2,
            "etcd answered exactly two requests for registration {i}: {before:?} → {after:?}"
        );
        assert_eq!(
            method(&after, "LeaseGrant") - method(&before, "LeaseGrant"),
            1
        );
        assert_eq!(method(&after, "Txn") - method(&before, "Txn"), 1);
        assert!(ids.insert(id), "id {id} handed out twice");
        held.push(c);
    }
    for c in &held {
        c.deregister_server().await.expect("deregister");
    }
}

/// A small burst of simultaneous registrations: distinct ids, each registration one lease
/// grant plus at least one transaction, and the whole burst at most `K` transactions per
/// registration (generous: the spread makes a first-attempt collision rare, and a conflict's
/// failure branch tells the next attempt what it needs). etcd's own transaction count agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_burst_costs_at_most_k_transactions_per_registration() {
    const N: usize = 24;
    const K: u64 = 3;
    let etcd = etcd().await;
    let endpoint = etcd.endpoint(0);
    let prefix = prefix();
    let mut conns = Vec::new();
    for _ in 0..N {
        let c = Connector::connect(quiet(&etcd, &prefix))
            .await
            .expect("connect");
        c.wait_synced(PROMPT).await.expect("synced");
        conns.push(Arc::new(c));
    }
    let before = etcd_unary_requests(&endpoint).await;
    let (go, ready) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        let c = c.clone();
        let mut ready = ready.clone();
        let port = 6000 + u16::try_from(i).expect("small");
        tasks.push(tokio::spawn(async move {
            ready.wait_for(|r| *r).await.expect("go");
            c.register_server("lobby", "127.0.0.1", port, no_props())
                .await
                .expect("register")
        }));
    }
    go.send_replace(true);
    let mut ids = HashSet::new();
    for t in tasks {
        let id = t.await.expect("task");
        assert!(ids.insert(id), "id {id} handed out twice");
    }
    let after = etcd_unary_requests(&endpoint).await;
    let n = u64::try_from(N).expect("small");
    let requests: Vec<u64> = conns.iter().map(|c| c.registration_requests()).collect();
    assert!(
        requests.iter().all(|r| *r >= 2),
        "every registration is a grant plus at least one transaction: {requests:?}"
    );
    let txns: u64 = requests.iter().sum::<u64>() - n;
    assert!(
        txns <= K * n,
        "{txns} transactions for {N} registrations (more than {K} each)"
    );
    assert_eq!(
        method(&after, "Txn") - method(&before, "Txn"),
        txns,
        "etcd counted the same transactions"
    );
    assert_eq!(
        method(&after, "LeaseGrant") - method(&before, "LeaseGrant"),
        n
    );
    for c in &conns {
        c.deregister_server().await.expect("deregister");
    }
}
