//! The blocking facade from plain threads (no `#[tokio::test]`): DarkRift's synchronous
//! `RegisterServer` path, on a real etcd.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use darkrift_etcd::blocking::{self, Events};
use darkrift_etcd::{ConnectorConfig, Event, PeerStatus};
use darkrift_etcd_testing::EtcdCluster;

const PROMPT: Duration = Duration::from_secs(10);

/// etcd is started from a throwaway runtime: the facade must not need the caller's.
fn etcd() -> EtcdCluster {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(EtcdCluster::single())
        .expect("etcd starts")
}

fn config(etcd: &EtcdCluster) -> ConnectorConfig {
    static N: AtomicUsize = AtomicUsize::new(0);
    ConnectorConfig::new(etcd.endpoints())
        .with_prefix(format!(
            "/blocking{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
        .with_lease_ttl(Duration::from_secs(2))
}

/// Receives until `want` matches, bounded; returns the matching event.
fn until(events: &mut Events, mut want: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if want(&e) => return e,
            Ok(_) => {}
            Err(e) => panic!("no matching event within {PROMPT:?}: {e:?}"),
        }
    }
}

#[test]
fn register_watch_check_and_deregister_from_plain_threads() {
    let etcd = etcd();
    let cfg = config(&etcd);
    let a = blocking::Connector::connect(cfg.clone()).expect("connect a");
    let mut a_events = a.events().expect("events");
    a.wait_synced(PROMPT).expect("synced");
    let a_id = a
        .register_server("lobby", "127.0.0.1", 4296, BTreeMap::new())
        .expect("register a");
    assert_eq!(a.registered_id(), Some(a_id));
    let own = until(
        &mut a_events,
        |e| matches!(e, Event::Join { server, .. } if server.id == a_id),
    );
    let Event::Join { server, .. } = own else {
        unreachable!()
    };
    assert_eq!((server.group.as_str(), server.port), ("lobby", 4296));
    // A second subscription, made after the sync, starts with the view: our join, then synced.
    let mut later = a.subscribe();
    until(
        &mut later,
        |e| matches!(e, Event::Join { server, .. } if server.id == a_id),
    );
    until(&mut later, |e| matches!(e, Event::Synced { .. }));

    // A second server registers on another thread; the first sees its join.
    let cfg_b = cfg.clone();
    let b = std::thread::spawn(move || {
        let b = blocking::Connector::connect(cfg_b).expect("connect b");
        let id = b
            .register_server("game", "127.0.0.1", 4297, BTreeMap::new())
            .expect("register b");
        (b, id)
    })
    .join()
    .expect("thread b");
    let (b, b_id) = b;
    assert_ne!(a_id, b_id);
    until(
        &mut a_events,
        |e| matches!(e, Event::Join { server, .. } if server.id == b_id && server.group == "game"),
    );
    assert!(a.servers().iter().any(|s| s.id == b_id));

    // HandleConnectionFailure: a live peer is registered, an unknown id is unknown.
    assert_eq!(
        a.handle_connection_failure(b_id).expect("check b"),
        PeerStatus::Registered
    );
    assert_eq!(
        a.handle_connection_failure(b_id.wrapping_add(1000))
            .expect("check unknown"),
        PeerStatus::Unknown
    );

    // Nothing is pending: recv_timeout times out.
    assert_eq!(
        a_events.recv_timeout(Duration::from_millis(200)),
        Err(RecvTimeoutError::Timeout)
    );

    // The second deregisters: the leave comes through the iterator.
    b.deregister_server().expect("deregister b");
    let leave = a_events
        .by_ref()
        .find(|e| matches!(e, Event::Leave { .. }))
        .expect("a leave");
    assert!(matches!(leave, Event::Leave { id, .. } if id == b_id));
    assert!(b.deregister_server().is_err(), "not registered any more");

    a.deregister_server().expect("deregister a");
    assert_eq!(a.registered_id(), None);
}

#[test]
fn the_stream_ends_when_the_connector_is_dropped() {
    let etcd = etcd();
    let a = blocking::Connector::connect(config(&etcd)).expect("connect");
    let mut events = a.events().expect("events");
    until(&mut events, |e| matches!(e, Event::Synced { .. }));
    drop(a);
    let deadline = Instant::now() + PROMPT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => panic!("the stream did not end within {PROMPT:?}"),
        }
    }
    assert!(events.recv().is_none());
}

#[test]
fn connecting_to_nothing_fails_within_the_connect_timeout() {
    let port = darkrift_etcd_testing::free_port().expect("port");
    let cfg = ConnectorConfig::new([format!("http://127.0.0.1:{port}")])
        .with_connect_timeout(Duration::from_millis(500));
    let err = blocking::Connector::connect(cfg).expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
}
