//! `replay_holders` on a real etcd: it finds two live holders of one id, and only then.

use std::time::Duration;

use darkrift_etcd_testing::{replay_holders, EtcdCluster};
use etcd_client::PutOptions;

const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn replay_finds_a_double_hold_and_counts_deletes() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let mut client = etcd.client().await.expect("client");
    let lease = client.lease_grant(60, None).await.expect("lease").id();
    let on_lease = || Some(PutOptions::new().with_lease(lease));
    let first = client
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
        + 1;

    // One holder per id, a handover, and a lease-less put (not a hold): no double hold.
    client.put("/r/a/1", "x", on_lease()).await.expect("put");
    client.put("/r/a/2", "x", on_lease()).await.expect("put");
    client.delete("/r/a/1", None).await.expect("delete");
    client.put("/r/b/1", "x", on_lease()).await.expect("put");
    client
        .put("/r/c/2", "x", None)
        .await
        .expect("lease-less put");
    client
        .put("/r/a/notanid", "x", on_lease())
        .await
        .expect("put");
    // Writes elsewhere move the revision on: the replay must still finish.
    client.put("/elsewhere", "x", None).await.expect("put");
    let clean = replay_holders(&mut client, "/r", first, |_| false, BOUND)
        .await
        .expect("replay");
    assert_eq!(clean.double_hold, None, "{clean:?}");
    assert_eq!(clean.holds, 3, "{clean:?}");
    assert_eq!(clean.deletes, 1, "{clean:?}");

    // A second key on id 2 while /r/a/2 still holds it.
    client.put("/r/c/2", "y", on_lease()).await.expect("put");
    let at = client
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    let bad = replay_holders(&mut client, "/r", first, |_| false, BOUND)
        .await
        .expect("replay");
    assert_eq!(
        bad.double_hold,
        Some((at, 2, vec!["/r/a/2".to_owned(), "/r/c/2".to_owned()])),
        "{bad:?}"
    );
    // Skipping the intruder's group hides it.
    let skipped = replay_holders(&mut client, "/r", first, |k| k.starts_with("/r/c/"), BOUND)
        .await
        .expect("replay");
    assert_eq!(skipped.double_hold, None, "{skipped:?}");
}
