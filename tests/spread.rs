//! Clients spread over the members of a cluster instead of all starting on the first
//! endpoint: N connectors, each registered (one lease keep-alive stream) and watching (one
//! watch stream), on a 3-node cluster. etcd's own `/metrics` on each member count the streams
//! it serves; each member's count is within ±25 % of an even share. A follower stopped then
//! hands over only its own share: the other members' counts do not drop.

mod common;

use std::time::Duration;

use common::*;
use darkrift_etcd::Connector;
use darkrift_etcd_testing::{metric_sum, scrape, EtcdCluster};
use tokio::time::Instant;

/// Connectors in the test: 60 registered watchers (120 streams, 60 leases) is what two shared
/// cores bear alongside a 3-node cluster without slowing the run.
const CONNECTORS: usize = 60;

/// Open streams on member `i` by etcd's own counters, `[watch streams (etcd's gauge), watch
/// streams (gRPC started - handled), lease keep-alive streams (likewise)]`; zeros when it does
/// not answer.
async fn streams(etcd: &EtcdCluster, i: usize) -> [i64; 3] {
    let Ok(text) = scrape(&format!("{}/metrics", etcd.endpoint(i))).await else {
        return [0; 3];
    };
    let open = |service: &str, method: &str| {
        let labels = [("grpc_service", service), ("grpc_method", method)];
        metric_sum(&text, "grpc_server_started_total", &labels)
            - metric_sum(&text, "grpc_server_handled_total", &labels)
    };
    [
        metric_sum(&text, "etcd_debugging_mvcc_watch_stream_total", &[]),
        open("etcdserverpb.Watch", "Watch"),
        open("etcdserverpb.Lease", "LeaseKeepAlive"),
    ]
    .map(whole)
}

/// A counter's value (a whole number, sent as a float).
#[allow(
    clippy::cast_possible_truncation,
    reason = "stream counts are small whole numbers"
)]
fn whole(x: f64) -> i64 {
    x.round() as i64
}

/// The sum of each kind of stream over `got`.
fn sums(got: &[[i64; 3]]) -> [i64; 3] {
    [0, 1, 2].map(|k| got.iter().map(|g| g[k]).sum())
}

/// Every listed member's streams once each kind adds up to `total`, within `bound`.
async fn until_all_counted(
    etcd: &EtcdCluster,
    members: &[usize],
    total: i64,
    bound: Duration,
) -> Vec<[i64; 3]> {
    let deadline = Instant::now() + bound;
    loop {
        let mut got = Vec::new();
        for &i in members {
            got.push(streams(etcd, i).await);
        }
        if sums(&got) == [total; 3] {
            return got;
        }
        assert!(Instant::now() < deadline, "streams per member: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_the_members_and_a_stopped_one_moves_only_its_share() {
    let mut etcd = EtcdCluster::builder()
        .members(3)
        .build()
        .await
        .expect("cluster");
    let prefix = prefix();
    let mut connectors: Vec<(Connector, _)> = Vec::new();
    for port in 0..CONNECTORS {
        let (c, events) = connect(config(&etcd, &prefix)).await;
        c.register_server(
            "game",
            "127.0.0.1",
            u16::try_from(port + 1).expect("port"),
            no_props(),
        )
        .await
        .expect("registers");
        connectors.push((c, events));
    }
    let total = i64::try_from(CONNECTORS).expect("small");
    let all = until_all_counted(&etcd, &[0, 1, 2], total, PROMPT).await;
    eprintln!(
        "{CONNECTORS} connectors; [watch (gauge), watch (gRPC), keep-alive] streams per member: {all:?}"
    );
    // Within ±25 % of an even share: |3n - total| <= total / 4, in whole numbers.
    for (i, counts) in all.iter().enumerate() {
        for n in counts {
            assert!(
                (3 * n - total).abs() * 4 <= total,
                "member {i}: {n} streams, an even share is {total}/3: {all:?}"
            );
        }
    }

    // A follower stops: its streams go to the others, whose own streams stay where they are.
    let leader = etcd.leader_index().await.expect("a leader");
    let stopped = (leader + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|&i| i != stopped).collect();
    let before: Vec<[i64; 3]> = others.iter().map(|&i| all[i]).collect();
    etcd.stop(stopped).expect("stop a follower");
    let after = until_all_counted(&etcd, &others, total, Duration::from_secs(30)).await;
    eprintln!("member {stopped} stopped; streams on members {others:?}: {before:?} -> {after:?}");
    for (k, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a.iter().zip(b).all(|(a, b)| a >= b),
            "member {}: streams dropped from {b:?} to {a:?}",
            others[k]
        );
    }
}
