//! Smoke tests of `darkrift_etcd_testing` against a real etcd: the binary named by `ETCD_BIN`,
//! or the first `etcd` on `PATH`. Run with `cargo test`.

use std::path::Path;
use std::time::{Duration, Instant};

use darkrift_etcd_testing::{EtcdCluster, TestingError};
use etcd_client::Client;

/// Upper bound for anything the tests wait for.
const BOUND: Duration = Duration::from_secs(30);

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn get_value(client: &mut Client, key: &str) -> Option<Vec<u8>> {
    let resp = client.get(key, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.value().to_vec())
}

/// Polls until a leader other than `not` is reported, bounded by [`BOUND`].
async fn wait_for_leader(cluster: &EtcdCluster, not: Option<usize>) -> usize {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(i) = cluster.leader_index().await {
            if Some(i) != not {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no new leader within {BOUND:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn single_node_serves_survives_stop_and_is_removed_on_drop() {
    let mut cluster = EtcdCluster::single().await.expect("start single-node etcd");
    eprintln!(
        "single node ({}) healthy after {:?}",
        cluster.binary().display(),
        cluster.startup_elapsed()
    );
    assert_eq!(cluster.len(), 1);
    assert_eq!(cluster.endpoints(), vec![cluster.endpoint(0)]);
    assert_eq!(cluster.leader_index().await, Some(0));

    let mut client = cluster.client().await.expect("client");
    client.put("harness/key", "value", None).await.expect("put");
    assert_eq!(
        get_value(&mut client, "harness/key").await.as_deref(),
        Some(&b"value"[..])
    );

    // Graceful stop and restart on the same data directory keeps the data.
    let first_pid = cluster.pid(0).expect("pid while running");
    cluster.stop(0).expect("stop");
    assert!(!cluster.is_running(0));
    assert_eq!(cluster.pid(0), None);
    assert!(
        !proc_exists(first_pid),
        "stopped etcd {first_pid} still exists"
    );
    let started = Instant::now();
    cluster.restart(0).await.expect("restart");
    eprintln!("single node restarted in {:?}", started.elapsed());
    let mut client = Client::connect([cluster.endpoint(0)], None)
        .await
        .expect("client");
    assert_eq!(
        get_value(&mut client, "harness/key").await.as_deref(),
        Some(&b"value"[..])
    );

    let pid = cluster.pid(0).expect("pid after restart");
    assert!(proc_exists(pid));
    let dir = cluster.dir().to_path_buf();
    assert!(dir.exists());
    drop(client);
    drop(cluster);
    assert!(!proc_exists(pid), "etcd {pid} still exists after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[tokio::test]
async fn three_node_cluster_elects_new_leader_and_restarts_member() {
    let mut cluster = EtcdCluster::three_node()
        .await
        .expect("start three-node etcd");
    eprintln!(
        "three nodes ({}) healthy after {:?}",
        cluster.binary().display(),
        cluster.startup_elapsed()
    );
    assert_eq!(cluster.endpoints().len(), 3);

    let leader = wait_for_leader(&cluster, None).await;
    let mut client = cluster.client().await.expect("client");
    client
        .put("harness/before", "1", None)
        .await
        .expect("put before kill");

    let leader_pid = cluster.pid(leader).expect("leader pid");
    cluster.kill(leader).expect("kill leader");
    assert!(!cluster.is_running(leader));
    assert!(
        !proc_exists(leader_pid),
        "killed etcd {leader_pid} still exists"
    );

    let started = Instant::now();
    let new_leader = wait_for_leader(&cluster, Some(leader)).await;
    eprintln!(
        "m{leader} killed; m{new_leader} leader after {:?}",
        started.elapsed()
    );
    assert_ne!(new_leader, leader);

    // The surviving majority accepts writes.
    let mut survivor = Client::connect([cluster.endpoint(new_leader)], None)
        .await
        .expect("client");
    survivor
        .put("harness/during", "2", None)
        .await
        .expect("put with one member down");

    // The restarted member rejoins and catches up (a linearizable read through it).
    let started = Instant::now();
    cluster
        .restart(leader)
        .await
        .expect("restart killed leader");
    eprintln!(
        "m{leader} restarted and healthy after {:?}",
        started.elapsed()
    );
    assert!(cluster.is_running(leader));
    let mut rejoined = Client::connect([cluster.endpoint(leader)], None)
        .await
        .expect("client");
    assert_eq!(
        get_value(&mut rejoined, "harness/during").await.as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(
        get_value(&mut rejoined, "harness/before").await.as_deref(),
        Some(&b"1"[..])
    );
    cluster
        .wait_healthy(BOUND)
        .await
        .expect("all members healthy");

    let pids: Vec<u32> = (0..3).map(|i| cluster.pid(i).expect("pid")).collect();
    drop(cluster);
    for pid in pids {
        assert!(!proc_exists(pid), "etcd {pid} still exists after drop");
    }
}

#[tokio::test]
async fn extra_args_reach_etcd_and_failures_quote_the_log() {
    let cluster = EtcdCluster::builder()
        .members(1)
        .extra_args(["--auth-token", "simple"])
        .build()
        .await
        .expect("start with extra args");
    drop(cluster);

    let err = EtcdCluster::builder()
        .arg("--no-such-flag")
        .build()
        .await
        .expect_err("etcd rejects an unknown flag");
    assert!(matches!(err, TestingError::MemberExited { .. }), "{err}");
    assert!(
        err.to_string().contains("no-such-flag"),
        "log tail missing: {err}"
    );
}
