//! P6 snapshot of 10,000 servers → `Synced` against a raw paginated get; P8 watcher
//! throughput against a raw watch; P9 memory per tracked server.

use std::sync::atomic::Ordering;
use std::time::Instant;

use darkrift_etcd::keys::KeyLayout;
use darkrift_etcd::membership::{KeyValue as ViewKeyValue, Membership};
use darkrift_etcd::{Connector, ConnectorConfig, Event};
use etcd_client::{Client, EventType};

use crate::etcd_stats::settle;
use crate::events::{config, count_events, count_raw, until_synced, wait_event};
use crate::heap::{live_bytes, COUNTING};
use crate::p3_p4::{peer_connector, peer_raw_watch, peer_runtime};
use crate::raw::{bulk_write_servers, raw_paginated_get};
use crate::report::Report;
use crate::stats::{elapsed_tag, median, ms, per};
use crate::{BoxError, Res, SNAPSHOT_RUNS, SNAPSHOT_SERVERS};

pub(crate) async fn p6_p8_p9(
    endpoints: &[String],
    raw: &mut Client,
    report: &mut Report,
    start: Instant,
) -> Res<()> {
    let n = usize::from(SNAPSHOT_SERVERS);
    let prefix = "/bench/p6";
    let layout = KeyLayout::new(prefix)?;
    let servers_prefix = layout.servers_prefix();
    let page_size = ConnectorConfig::default().page_size;

    // P8 observers: a connector and a raw prefix watch, each on the peer runtime (threads of
    // its own, like a peer process), both consuming live.
    let peer = peer_runtime()?;
    let mut obs_rx = peer_connector(&peer, config(endpoints, prefix)).await?;
    wait_event(&mut obs_rx, "synced", |e| matches!(e, Event::Synced { .. })).await?;
    let mut raw_rx = peer_raw_watch(&peer, endpoints, &servers_prefix).await?;

    eprintln!("{} P6/P8: mass join of {n} servers", elapsed_tag(start));
    let burst = Instant::now();
    let leases = bulk_write_servers(raw, &layout, SNAPSHOT_SERVERS, 10, 600).await?;
    let write_time = burst.elapsed();
    let ours_last = count_events(&mut obs_rx, n, |e| matches!(e, Event::Join { .. })).await?;
    let raw_last = count_raw(&mut raw_rx, n, EventType::Put).await?;
    let ours_join_rate = per(u64::try_from(n)?, 1) / (ours_last - burst).as_secs_f64();
    let raw_join_rate = per(u64::try_from(n)?, 1) / (raw_last - burst).as_secs_f64();

    // P6: snapshot → Synced, against a raw paginated get, alternating.
    eprintln!("{} P6: snapshots", elapsed_tag(start));
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..SNAPSHOT_RUNS {
        let t = Instant::now();
        let c = Connector::connect(config(endpoints, prefix)).await?;
        let mut ev = c.events()?;
        let got = until_synced(&mut ev).await?;
        ours.push(ms(t.elapsed()));
        if got != n {
            return Err(format!("snapshot delivered {got} joins, expected {n}").into());
        }
        drop(ev);
        drop(c);
        let t = Instant::now();
        let mut client = Client::connect(endpoints, None).await?;
        let kvs = raw_paginated_get(&mut client, &servers_prefix, page_size).await?;
        base.push(ms(t.elapsed()));
        if kvs.len() != n {
            return Err(format!("raw get returned {} keys, expected {n}", kvs.len()).into());
        }
    }
    let (o, r) = (median(&ours), median(&base));
    report.row(
        "P6",
        format!("snapshot of {n} servers → Synced (median of {SNAPSHOT_RUNS})"),
        format!("{o:.1} ms ({:.2} × raw)", o / r),
        format!("{r:.1} ms (raw paginated get, pages of {page_size})"),
        format!("≤ 1.2 × raw = {:.1} ms", 1.2 * r),
        Some(o <= 1.2 * r),
    );
    report.bar(
        format!("P6 snapshot of {n} → Synced"),
        o,
        vec![("raw get", r)],
        "ms",
        false,
    );

    // P9: memory. (a) the view itself, built from the same records without I/O;
    // (b) a whole connector after its snapshot, minus a connector on an empty prefix.
    eprintln!("{} P9: memory", elapsed_tag(start));
    COUNTING.store(true, Ordering::Relaxed);
    let mut client = Client::connect(endpoints, None).await?;
    let kvs = raw_paginated_get(&mut client, &servers_prefix, page_size).await?;
    let view_kvs: Vec<ViewKeyValue> = kvs
        .iter()
        .map(|kv| ViewKeyValue {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
        .collect();
    let raw_bytes = {
        let before = live_bytes();
        let again = raw_paginated_get(&mut client, &servers_prefix, page_size).await?;
        let after = live_bytes();
        drop(again);
        after - before
    };
    let view_bytes = {
        let before = live_bytes();
        let mut view = Membership::new(layout.clone());
        let events = view.reload(&view_kvs, 1);
        drop(events);
        let after = live_bytes();
        if view.len() != n {
            return Err("view size".into());
        }
        drop(view);
        after - before
    };
    drop(view_kvs);
    drop(kvs);
    let connector_bytes = |prefix: &'static str| async move {
        settle().await;
        let before = live_bytes();
        let c = Connector::connect(config(endpoints, prefix)).await?;
        let mut ev = c.events()?;
        until_synced(&mut ev).await?;
        settle().await;
        let after = live_bytes();
        drop(ev);
        drop(c);
        Ok::<isize, BoxError>(after - before)
    };
    let empty = connector_bytes("/bench/p9-empty").await?;
    let full = connector_bytes(prefix).await?;
    #[allow(clippy::cast_precision_loss)]
    let (view_per, conn_per, raw_per) = (
        view_bytes as f64 / n as f64,
        (full - empty) as f64 / n as f64,
        raw_bytes as f64 / n as f64,
    );
    COUNTING.store(false, Ordering::Relaxed);
    report.row(
        "P9",
        format!("heap bytes per tracked server ({n} servers)"),
        format!("{view_per:.0} B in the view; {conn_per:.0} B for a whole connector"),
        format!("{raw_per:.0} B (the raw get's KeyValues)"),
        "—",
        None,
    );
    report.bar(
        "P9 heap bytes / tracked server",
        view_per,
        vec![("raw KeyValue", raw_per)],
        "B",
        false,
    );

    // P8, leaves: revoking the 10 leases deletes everything in 10 revisions.
    eprintln!("{} P8: mass leave", elapsed_tag(start));
    let burst = Instant::now();
    for lease in &leases {
        raw.lease_revoke(*lease).await?;
    }
    let ours_last = count_events(&mut obs_rx, n, |e| matches!(e, Event::Leave { .. })).await?;
    let raw_last = count_raw(&mut raw_rx, n, EventType::Delete).await?;
    let ours_leave_rate = per(u64::try_from(n)?, 1) / (ours_last - burst).as_secs_f64();
    let raw_leave_rate = per(u64::try_from(n)?, 1) / (raw_last - burst).as_secs_f64();
    for (what, o, r) in [
        ("mass join", ours_join_rate, raw_join_rate),
        ("mass leave", ours_leave_rate, raw_leave_rate),
    ] {
        report.row(
            "P8",
            format!("watcher throughput, {what} of {n} servers"),
            format!("{o:.0} events/s"),
            format!("{r:.0} events/s (raw watch)"),
            "≥ 10,000 events/s",
            Some(o >= 10_000.0),
        );
        report.bar(
            format!("P8 {what} throughput"),
            o,
            vec![("raw watch", r)],
            "ev/s",
            true,
        );
    }
    report.notes.push(format!(
        "**P6/P8/P9** — the {n} servers are written directly as records (server keys only, \
         no allocator slots: they exist for the watchers) in transactions of 128 puts under 10 \
         shared leases, rather than through {n} connectors ({:.2} s, {:.0} records/s). **P8**: \
         an observing connector and a raw prefix watch, each on a runtime of its own (a peer \
         process), consume live while that mass join happens, and later while the 10 leases \
         are revoked (a mass leave in 10 revisions); the rate is {n} events over the time from \
         the first write (or revoke) to the last event received, so both are bounded by how \
         fast etcd writes and sends, and a watcher slower than that shows. **P6**: a new \
         connector from `Connector::connect` until `Synced` has been received (all {n} joins \
         consumed), against a new raw client reading the prefix page by page pinned to one \
         revision (no decoding), alternating, median of {SNAPSHOT_RUNS}. **P9**: live heap \
         bytes from a counting global allocator in the benchmark binary: the view alone (a \
         `Membership` loaded from the same {n} records), and a whole connector after its \
         snapshot minus a connector on an empty prefix (this includes transport buffers); the \
         baseline is the `Vec<KeyValue>` a raw paginated get holds.",
        write_time.as_secs_f64(),
        per(u64::try_from(n)?, 1) / write_time.as_secs_f64()
    ));
    drop(obs_rx);
    drop(raw_rx);
    peer.shutdown_background();
    Ok(())
}
