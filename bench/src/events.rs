//! Connectors and their events for the figures: settings, timestamped event streams, bounded
//! waits and counts, on our events and on raw etcd watches alike.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use darkrift_etcd::{ConnectorConfig, Event, EventStream};
use etcd_client::EventType;
use tokio::sync::mpsc;

use crate::{BoxError, Res, PROMPT};

pub(crate) fn config(endpoints: &[String], prefix: &str) -> ConnectorConfig {
    let mut cfg = ConnectorConfig::new(endpoints.iter().cloned()).with_prefix(prefix);
    // 1000 registrations at once on 2 cores can keep a request waiting for seconds; the
    // benchmark measures cost, not the request timeout.
    cfg.request_timeout = Duration::from_secs(30);
    cfg
}

pub(crate) fn props() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Forwards a connector's events to a channel with the instant each was received.
pub(crate) fn timestamped(mut events: EventStream) -> mpsc::UnboundedReceiver<(Event, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if tx.send((e, Instant::now())).is_err() {
                break;
            }
        }
    });
    rx
}

pub(crate) async fn wait_event(
    rx: &mut mpsc::UnboundedReceiver<(Event, Instant)>,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Res<Instant> {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((e, at))) if pred(&e) => return Ok(at),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("event stream ended waiting for {what}").into()),
            Err(_) => return Err(format!("no {what} within {PROMPT:?}").into()),
        }
    }
}

pub(crate) async fn wait_raw(
    rx: &mut mpsc::UnboundedReceiver<(EventType, Vec<u8>, Instant)>,
    kind: EventType,
    key: &[u8],
) -> Res<Instant> {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((k, got, at))) if k == kind && got == key => return Ok(at),
            Ok(Some(_)) => {}
            Ok(None) => return Err("raw watch ended".into()),
            Err(_) => return Err(format!("no raw {kind:?} event within {PROMPT:?}").into()),
        }
    }
}

/// Waits for `n` events matching `pred`; returns when the last of them was received.
pub(crate) async fn count_events(
    rx: &mut mpsc::UnboundedReceiver<(Event, Instant)>,
    n: usize,
    pred: impl Fn(&Event) -> bool,
) -> Res<Instant> {
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < n {
        last = wait_event(rx, "burst event", &pred).await?;
        seen += 1;
    }
    Ok(last)
}

/// Waits for `n` raw events of `kind`; returns when the last of them was received.
pub(crate) async fn count_raw(
    rx: &mut mpsc::UnboundedReceiver<(EventType, Vec<u8>, Instant)>,
    n: usize,
    kind: EventType,
) -> Res<Instant> {
    let mut seen = 0;
    let mut last = Instant::now();
    while seen < n {
        match tokio::time::timeout(PROMPT, rx.recv()).await {
            Ok(Some((k, _, at))) if k == kind => {
                seen += 1;
                last = at;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("raw watch ended".into()),
            Err(_) => return Err(format!("only {seen} of {n} raw events within {PROMPT:?}").into()),
        }
    }
    Ok(last)
}

pub(crate) async fn next_event(events: &mut EventStream) -> Res<Event> {
    match tokio::time::timeout(PROMPT, events.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => Err("event stream ended".into()),
        Err(_) => Err(format!("no event within {PROMPT:?}").into()),
    }
}

/// Reads events until `Synced`; returns the number of joins before it. One bound for the
/// whole snapshot, not a timer per event: P6 measures the library's delivery, not the
/// benchmark's timers.
pub(crate) async fn until_synced(events: &mut EventStream) -> Res<usize> {
    let read = async {
        let mut joins = 0;
        loop {
            match events.recv().await {
                Some(Event::Synced { .. }) => return Ok(joins),
                Some(Event::Join { .. }) => joins += 1,
                Some(_) => {}
                None => return Err::<_, BoxError>("event stream ended".into()),
            }
        }
    };
    tokio::time::timeout(PROMPT, read)
        .await
        .map_err(|_| format!("not synced within {PROMPT:?}"))?
}
