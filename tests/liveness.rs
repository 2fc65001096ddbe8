//! Health-gated liveness and peer-reported eviction, on real etcd (issue: DarkRift side).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use darkrift_etcd::config::{EvictionConfig, KeyRemovedPolicy};
use darkrift_etcd::health::HealthConfig;
use darkrift_etcd::{ConnectorConfig, Event, PeerStatus, RegistrationStatus};
use darkrift_etcd_testing::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Installs a health probe the test switches through the returned flag (each verdict is also
/// sent on the returned channel), registers, and awaits the peer's join. Returns the flag, the
/// verdicts and the id.
async fn register_gated(
    a: &darkrift_etcd::Connector,
    peer_events: &mut darkrift_etcd::EventStream,
) -> (
    Arc<AtomicBool>,
    tokio::sync::mpsc::UnboundedReceiver<bool>,
    u16,
) {
    let healthy = Arc::new(AtomicBool::new(true));
    let (verdicts_tx, verdicts) = tokio::sync::mpsc::unbounded_channel();
    let probe_state = healthy.clone();
    a.set_health_probe(move || {
        let healthy = probe_state.load(Ordering::SeqCst);
        let _ = verdicts_tx.send(healthy);
        async move { healthy }
    });
    let id = a
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    assert!(
        matches!(next(peer_events, PROMPT).await, Event::Join { ref server, .. } if server.id == id)
    );
    (healthy, verdicts, id)
}

/// The probe fails: peers see the leave within TTL + 1.5 s. It recovers: the join comes back
/// with the same id.
#[tokio::test]
async fn failing_health_probe_lets_the_lease_expire_and_recovery_rejoins_with_the_same_id() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let (a, _a_events) = connect(config(&etcd, &prefix)).await;
    let (healthy, _verdicts, id) = register_gated(&a, &mut peer_events).await;

    healthy.store(false, Ordering::SeqCst);
    let failed_at = tokio::time::Instant::now();
    let ttl = a.config().lease_ttl;
    // The probe polls every second: allow one interval on top of TTL + 1.5 s.
    let bound = ttl + Duration::from_millis(1500) + Duration::from_secs(1);
    match next(&mut peer_events, bound).await {
        Event::Leave { id: left, .. } => assert_eq!(left, id),
        other => panic!("expected a leave, got {other:?}"),
    }
    assert!(failed_at.elapsed() <= bound, "{:?}", failed_at.elapsed());
    assert!(!a.is_registered());

    healthy.store(true, Ordering::SeqCst);
    match next(&mut peer_events, PROMPT).await {
        Event::Join { server, .. } => assert_eq!(server.id, id, "back with the same id"),
        other => panic!("expected a join, got {other:?}"),
    }
    let mut status = a.status().expect("status");
    tokio::time::timeout(PROMPT, status.wait_for(RegistrationStatus::is_registered))
        .await
        .expect("registered again")
        .expect("open");
}

/// Opening a keep-alive stream sends a keep-alive at once: one reopened (after a cut) while
/// the probe fails must not renew the lease. The leave comes when the lease held at the cut
/// expires, not a TTL after the reopen.
#[tokio::test]
async fn a_reopened_keep_alive_stream_does_not_renew_an_unhealthy_lease() {
    let etcd = etcd().await;
    let prefix = prefix();
    let proxy = FaultProxy::start(&etcd.endpoint(0)).await.expect("proxy");
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let mut cfg = ConnectorConfig {
        endpoints: vec![proxy.endpoint()],
        ..config(&etcd, &prefix)
    }
    .with_lease_ttl(Duration::from_secs(9));
    cfg.health = Some(HealthConfig {
        interval: Duration::from_millis(100),
        ..HealthConfig::default()
    });
    let (a, _a_events) = connect(cfg).await;
    let (healthy, mut verdicts, id) = register_gated(&a, &mut peer_events).await;

    // Two failing verdicts: the first has reached the keep-alive's gate.
    healthy.store(false, Ordering::SeqCst);
    let mut failing = 0;
    while failing < 2 {
        let verdict = tokio::time::timeout(PROMPT, verdicts.recv())
            .await
            .expect("a verdict")
            .expect("probe alive");
        if !verdict {
            failing += 1;
        }
    }
    let mut raw = etcd.client().await.expect("raw");
    let lease = raw
        .get(format!("{prefix}/game/{id}"), None)
        .await
        .expect("get")
        .kvs()[0]
        .lease();
    let measured = tokio::time::Instant::now();
    let left = raw
        .lease_time_to_live(lease, None)
        .await
        .expect("ttl")
        .ttl();
    // etcd reports whole seconds: the lease ends within one more.
    let expires_by = measured + Duration::from_secs(u64::try_from(left).expect("live") + 1);

    // Unhealthy for 3 s (no keep-alive sent), then a short cut breaks the keep-alive stream and
    // it reopens well before the local deadline (at least 6 s after the last acknowledgement).
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault injector's pacing
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await; // the cut's duration
    proxy.restore();
    // Until the leave, etcd's count-down of the lease never goes back up (a reopened stream
    // would renew it: etcd-client sends a keep-alive when it opens one).
    let bound = expires_by + Duration::from_millis(1500);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let mut last = left;
    loop {
        tokio::select! {
            event = tokio::time::timeout_at(bound, peer_events.recv()) => match event {
                Ok(Some(Event::Leave { id: gone, .. })) => {
                    assert_eq!(gone, id);
                    break;
                }
                other => panic!("expected the leave by the lease's own expiry, got {other:?}"),
            },
            _ = poll.tick() => { // polling a condition with a bound
                let now_left = raw.lease_time_to_live(lease, None).await.expect("ttl").ttl();
                assert!(
                    now_left <= last,
                    "the lease was renewed while the probe failed: {now_left} s left, {last} s before"
                );
                last = now_left;
            }
        }
    }
}

/// A minimal DarkRift-style health endpoint: `GET /health` → the status the test sets.
async fn health_server(status: Arc<std::sync::atomic::AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let code = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let body = r#"{"listening":true,"type":"Pro"}"#;
                let reason = if code == 200 {
                    "OK"
                } else {
                    "Service Unavailable"
                };
                let resp = format!(
                    "HTTP/1.1 {code} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// The HTTP probe, compatible with DarkRift's health check: 200 = healthy, anything else (or
/// no answer) = unhealthy.
#[tokio::test]
async fn http_health_probe_gates_the_registration() {
    let etcd = etcd().await;
    let prefix = prefix();
    let code = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let port = health_server(code.clone()).await;
    let (_peer, mut peer_events) = synced(config(&etcd, &prefix)).await;
    let mut cfg = config(&etcd, &prefix);
    cfg.health = Some(HealthConfig {
        url: format!("http://127.0.0.1:{port}/health"),
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
    });
    let (_a, id) = registered(cfg, "game", 1).await;
    next(&mut peer_events, PROMPT).await;
    code.store(503, Ordering::SeqCst);
    assert!(matches!(next(&mut peer_events, PROMPT).await, Event::Leave { id: l, .. } if l == id));
    code.store(200, Ordering::SeqCst);
    assert!(
        matches!(next(&mut peer_events, PROMPT).await, Event::Join { ref server, .. } if server.id == id)
    );
}

/// Eviction: a server alive to etcd but unreachable by peers is evicted only after K reports;
/// with the policy off nothing is deleted.
#[tokio::test]
async fn eviction_needs_k_distinct_reporters_and_is_off_by_default() {
    let etcd = etcd().await;
    let prefix = prefix();
    let mut target_cfg = config(&etcd, &prefix);
    target_cfg.on_key_removed = KeyRemovedPolicy::Stop;
    let (target, mut target_events) = connect(target_cfg).await;
    let target_id = target
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");

    let mut reporting = config(&etcd, &prefix);
    reporting.eviction = Some(EvictionConfig {
        min_reporters: 2,
        window: Duration::from_secs(30),
    });
    let mut reporters = Vec::new();
    let mut reporter_ids = Vec::new();
    for port in 2..4 {
        let (c, mut ev) = connect(reporting.clone()).await;
        let id = c
            .register_server("lobby", "127.0.0.1", port, no_props())
            .await
            .expect("register");
        collect_until(&mut ev, PROMPT, |e| join_ids(e).contains(&target_id)).await;
        reporters.push(c);
        reporter_ids.push(id);
    }
    // Policy off: reports change nothing.
    let (off, mut off_events) = connect(config(&etcd, &prefix)).await;
    off.register_server("lobby", "127.0.0.1", 9, no_props())
        .await
        .expect("register");
    collect_until(&mut off_events, PROMPT, |e| {
        join_ids(e).contains(&target_id)
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            off.handle_connection_failure(target_id)
                .await
                .expect("report"),
            PeerStatus::Registered
        );
    }
    // One reporter, even twice, is not enough.
    for _ in 0..2 {
        assert_eq!(
            reporters[0]
                .handle_connection_failure(target_id)
                .await
                .expect("report"),
            PeerStatus::Registered
        );
    }
    let mut raw = etcd.client().await.expect("raw");
    let key = format!("{prefix}/game/{target_id}");
    assert_eq!(
        raw.get(key.clone(), None).await.expect("get").count(),
        1,
        "not evicted by one reporter"
    );
    assert!(target.is_registered());
    // Someone else's lease-less key where the second reporter files its report: left
    // alone, and not counted as a report.
    let target_created = raw
        .get(key.clone(), None)
        .await
        .expect("get")
        .kvs()
        .first()
        .map(etcd_client::KeyValue::create_revision)
        .expect("target key");
    let planted = format!(
        "{prefix}.alloc/reports/{target_id:05}/{target_created}/{:05}",
        reporter_ids[1]
    );
    let fake_time = "99999999999999";
    raw.put(planted.clone(), fake_time, None)
        .await
        .expect("plant");
    assert_eq!(
        reporters[1]
            .handle_connection_failure(target_id)
            .await
            .expect("report"),
        PeerStatus::Registered,
        "a lease-less key is not a report"
    );
    let kept = raw.get(planted.clone(), None).await.expect("get");
    assert_eq!(kept.kvs()[0].value(), fake_time.as_bytes(), "left alone");
    assert_eq!(kept.kvs()[0].lease(), 0);
    raw.delete(planted, None).await.expect("clean up");
    // The second distinct reporter: evicted, guarded by its create revision.
    assert_eq!(
        reporters[1]
            .handle_connection_failure(target_id)
            .await
            .expect("report"),
        PeerStatus::Evicted
    );
    assert_eq!(raw.get(key, None).await.expect("get").count(), 0);
    let got = collect_until(&mut target_events, PROMPT, |e| {
        e.iter()
            .any(|e| matches!(e, Event::RegistrationStopped { .. }))
    })
    .await;
    assert!(got
        .iter()
        .any(|e| matches!(e, Event::RegistrationStopped { id, .. } if *id == target_id)));
    assert!(!target.is_registered());
    let reports = raw
        .get(
            format!("{prefix}.alloc/reports/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert_eq!(reports.count(), 0, "reports are cleared with the eviction");
}

/// With the default key-removed policy an evicted server puts itself back (same id); peers
/// see a leave then a join.
#[tokio::test]
async fn evicted_server_with_restore_policy_comes_back() {
    let etcd = etcd().await;
    let prefix = prefix();
    let (target, _t) = connect(config(&etcd, &prefix)).await;
    let target_id = target
        .register_server("game", "127.0.0.1", 1, no_props())
        .await
        .expect("register");
    let mut reporting = config(&etcd, &prefix);
    reporting.eviction = Some(EvictionConfig {
        min_reporters: 1,
        window: Duration::from_secs(30),
    });
    let (r, mut r_events) = connect(reporting).await;
    r.register_server("lobby", "127.0.0.1", 2, no_props())
        .await
        .expect("register");
    collect_until(&mut r_events, PROMPT, |e| join_ids(e).contains(&target_id)).await;
    assert_eq!(
        r.handle_connection_failure(target_id)
            .await
            .expect("report"),
        PeerStatus::Evicted
    );
    let got = collect_until(&mut r_events, PROMPT, |e| {
        e.iter()
            .filter(|e| matches!(e, Event::Join { server, .. } if server.id == target_id))
            .count()
            == 1
    })
    .await;
    assert!(got
        .iter()
        .any(|e| matches!(e, Event::Leave { id, .. } if *id == target_id)));
    assert!(target.is_registered());
}
