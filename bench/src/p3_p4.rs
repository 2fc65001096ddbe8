//! P3/P4: join and leave propagation to peers, against raw put→watch and delete→watch.

use std::time::Instant;

use darkrift_etcd::alloc::now_unix_ms;
use darkrift_etcd::{Connector, ConnectorConfig, Event, Registration};
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;

use crate::events::{config, props, wait_event, wait_raw};
use crate::raw::wipe;
use crate::report::Report;
use crate::stats::{percentile, signed_ms};
use crate::{BoxError, Res, LATENCY_SAMPLES, PROMPT};

/// A runtime of its own (one worker thread) for the observing peers, like a peer process.
pub(crate) fn peer_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("peer")
        .enable_all()
        .build()
}

/// Starts, on `peer` (a runtime of its own, as a peer is a process of its own), a connector
/// that forwards its events with the instant each was received.
pub(crate) async fn peer_connector(
    peer: &tokio::runtime::Runtime,
    cfg: ConnectorConfig,
) -> Res<mpsc::UnboundedReceiver<(Event, Instant)>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    peer.spawn(async move {
        let started = async {
            let c = Connector::connect(cfg).await?;
            let events = c.events()?;
            Ok::<_, BoxError>((c, events))
        }
        .await;
        match started {
            Ok((c, mut events)) => {
                let _ = ready_tx.send(Ok(()));
                while let Some(e) = events.recv().await {
                    if tx.send((e, Instant::now())).is_err() {
                        break;
                    }
                }
                drop(c);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    });
    ready_rx.await?.map_err(BoxError::from)?;
    Ok(rx)
}

/// Starts, on `peer`, a raw etcd-client prefix watch (its own connection) that forwards its
/// events with the instant each response was received; returns once etcd confirmed the watch.
pub(crate) async fn peer_raw_watch(
    peer: &tokio::runtime::Runtime,
    endpoints: &[String],
    prefix: &str,
) -> Res<mpsc::UnboundedReceiver<(EventType, Vec<u8>, Instant)>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (endpoints, prefix) = (endpoints.to_vec(), prefix.to_owned());
    peer.spawn(async move {
        let opened = async {
            let mut client = Client::connect(endpoints, None).await?;
            let mut stream = client
                .watch(prefix, Some(WatchOptions::new().with_prefix()))
                .await?;
            // The watch exists once etcd confirms it; only then can no put be missed.
            match stream.message().await? {
                Some(resp) if resp.created() => Ok::<_, BoxError>((client, stream)),
                _ => Err("raw watch not created".into()),
            }
        }
        .await;
        match opened {
            Ok((_client, mut stream)) => {
                let _ = ready_tx.send(Ok(()));
                while let Ok(Some(resp)) = stream.message().await {
                    let now = Instant::now();
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            if tx.send((ev.event_type(), kv.key().to_vec(), now)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e.to_string()));
            }
        }
    });
    ready_rx.await?.map_err(BoxError::from)?;
    Ok(rx)
}

pub(crate) async fn p3_p4(endpoints: &[String], report: &mut Report) -> Res<()> {
    let prefix = "/bench/p3";
    let reg = Connector::connect(config(endpoints, prefix)).await?;
    drop(reg.events()?);
    reg.wait_synced(PROMPT).await?;
    // The observing peers run on their own runtime (own threads), like a peer process, so
    // that what the registrant does after its write (deregister_server still revokes the
    // lease) does not delay the peer's processing on shared worker threads.
    let peer = peer_runtime()?;
    let mut obs_rx = peer_connector(&peer, config(endpoints, prefix)).await?;
    wait_event(&mut obs_rx, "synced", |e| matches!(e, Event::Synced { .. })).await?;

    let raw_prefix = "/bench/raw-p3/";
    let mut writer = Client::connect(endpoints, None).await?;
    let mut raw_rx = peer_raw_watch(&peer, endpoints, raw_prefix).await?;
    // The writer watches too, as every registered server does (the registering connector has
    // its own watcher): etcd fans each event out to two watchers on both sides.
    let mut own = writer
        .watch(raw_prefix, Some(WatchOptions::new().with_prefix()))
        .await?;
    let own_watch = tokio::spawn(async move { while let Ok(Some(_)) = own.message().await {} });
    let value = Registration::new("lat", "127.0.0.1", 9000, props())?.encode(1, 1, now_unix_ms());

    let (mut join, mut leave, mut put, mut del) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One join and one leave of each kind per round, interleaved; the order alternates so
    // that neither side always runs right after the other side's activity.
    for i in 0..LATENCY_SAMPLES {
        let key = format!("{raw_prefix}{i}");
        let ours_first = i.is_multiple_of(2);
        for step in 0..4 {
            match (step, ours_first) {
                (0, true) | (1, false) => {
                    let id = reg
                        .register_server("lat", "127.0.0.1", 9000, props())
                        .await?;
                    let returned = Instant::now();
                    let seen = wait_event(
                        &mut obs_rx,
                        "join",
                        |e| matches!(e, Event::Join { server, .. } if server.id == id),
                    )
                    .await?;
                    join.push(signed_ms(seen, returned));
                }
                (0, false) | (1, true) => {
                    writer.put(key.clone(), value.clone(), None).await?;
                    let returned = Instant::now();
                    let seen = wait_raw(&mut raw_rx, EventType::Put, key.as_bytes()).await?;
                    put.push(signed_ms(seen, returned));
                }
                (2, true) | (3, false) => {
                    let id = reg.registered_id().ok_or("not registered")?;
                    let called = Instant::now();
                    reg.deregister_server().await?;
                    let seen = wait_event(
                        &mut obs_rx,
                        "leave",
                        |e| matches!(e, Event::Leave { id: left, .. } if *left == id),
                    )
                    .await?;
                    leave.push(signed_ms(seen, called));
                }
                _ => {
                    let called = Instant::now();
                    writer.delete(key.clone(), None).await?;
                    let seen = wait_raw(&mut raw_rx, EventType::Delete, key.as_bytes()).await?;
                    del.push(signed_ms(seen, called));
                }
            }
        }
    }
    for (id, what, ours, raw, raw_name) in [
        (
            "P3",
            "join propagation (register_server returned → peer's Join)",
            &join,
            &put,
            "put returned → watch event",
        ),
        (
            "P4",
            "leave propagation (deregister_server called → peer's Leave)",
            &leave,
            &del,
            "delete called → watch event",
        ),
    ] {
        let (o50, o99) = (percentile(ours, 0.5), percentile(ours, 0.99));
        let (r50, r99) = (percentile(raw, 0.5), percentile(raw, 0.99));
        let bound = 1.2 * r99.max(0.0) + 1.0;
        report.row(
            id,
            format!("{what}, p50 / p99, {LATENCY_SAMPLES} samples"),
            format!("{o50:.2} / {o99:.2} ms"),
            format!("{r50:.2} / {r99:.2} ms (raw {raw_name})"),
            format!("p99 ≤ 1.2 × raw + 1 ms = {bound:.2} ms"),
            Some(o99 <= bound),
        );
        // Join is timed from the call's return, so its p50 is about 0 on both sides: not worth
        // a bar.
        if id == "P4" {
            report.bar(
                format!("{id} p50"),
                o50.max(0.0),
                vec![("raw etcd", r50.max(0.0))],
                "ms",
                false,
            );
        }
        report.bar(
            format!("{id} p99"),
            o99.max(0.0),
            vec![("raw etcd", r99.max(0.0))],
            "ms",
            false,
        );
    }
    report.notes.push(format!(
        "**P3/P4** — one registering connector and one observing connector, each with its own \
         etcd connection; the observer's events are timestamped by a task that does nothing else. \
         Both observers run on a runtime of their own (one thread), as a peer is a process \
         of its own. {LATENCY_SAMPLES} rounds, each: register → wait for the observer's Join, \
         deregister → wait for its Leave, and the same with raw etcd-client: put (a value of the \
         record's size) → a second client's prefix watch sees it, delete → it sees the delete; \
         interleaved (join, put, leave, delete), the order of ours and raw alternating by round \
         so that neither always runs right after the other's writes. Join is measured from \
         `register_server` returning (like raw from `put` returning: a negative value means the \
         event arrived first); leave from the `deregister_server` call (it also revokes the lease \
         after the delete, so its return is later than the event), like raw from the `delete` \
         call. The raw writer also holds a prefix watch, as the registering \
         connector does, so that etcd fans every event out to two watchers on both sides."
    ));
    drop(obs_rx);
    drop(raw_rx);
    own_watch.abort();
    peer.shutdown_background();
    wipe(&mut writer, prefix).await?;
    Ok(())
}
