//! P1: requests per uncontended registration, ours against the naive allocator.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use darkrift_etcd::Connector;
use etcd_client::Client;

use crate::etcd_stats::{etcd_unary_counts, total_delta};
use crate::events::{config, props};
use crate::naive::naive_register;
use crate::report::Report;
use crate::stats::per;
use crate::{Res, PROMPT};

pub(crate) async fn p1(endpoints: &[String], report: &mut Report) -> Res<()> {
    const N: usize = 20;
    let prefix = "/bench/p1";
    let mut held = Vec::new();
    let mut counted = Vec::new();
    let mut at_etcd = Vec::new();
    for i in 0..N {
        let c = Connector::connect(config(endpoints, prefix)).await?;
        drop(c.events()?);
        c.wait_synced(PROMPT).await?;
        let before = etcd_unary_counts(&endpoints[0]).await?;
        let port = 7000 + u16::try_from(i)?;
        c.register_server("p1", "127.0.0.1", port, props()).await?;
        let after = etcd_unary_counts(&endpoints[0]).await?;
        counted.push(c.registration_requests());
        at_etcd.push(total_delta(&before, &after));
        held.push(c);
    }
    for c in &held {
        c.deregister_server().await?;
    }
    // The naive scheme, uncontended, for comparison.
    let mut naive = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..N {
        let client = Client::connect(endpoints, None).await?;
        let out = naive_register(client, "/bench/p1-naive".into(), stop.clone()).await?;
        naive.push(out.requests);
    }
    let mean = per(counted.iter().sum(), N);
    let max = counted.iter().copied().max().unwrap_or(0);
    let etcd_mean = per(at_etcd.iter().sum(), N);
    let naive_mean = per(naive.iter().sum(), N);
    report.row(
        "P1",
        format!("etcd requests per uncontended registration ({N} sequential)"),
        format!("{mean:.2} (max {max}; etcd's own count {etcd_mean:.2})"),
        format!("floor 2; naive CAS {naive_mean:.2}"),
        "= 2",
        Some(counted.iter().all(|c| *c == 2) && at_etcd.iter().all(|c| *c == 2)),
    );
    report.bar(
        "P1 requests / uncontended registration",
        mean,
        vec![("naive CAS", naive_mean)],
        "req",
        false,
    );
    report.notes.push(format!(
        "**P1** — {N} connectors register one after another on one prefix (each connects after the \
         previous one registered). Counted twice: by `Connector::registration_requests()` and by \
         etcd itself (the delta of `grpc_server_handled_total` over unary methods on etcd's \
         `/metrics` around each `register_server` call). The naive CAS allocator needs a lease \
         grant, a counter read, the CAS transaction and the key write."
    ));
    Ok(())
}
