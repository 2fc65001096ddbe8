//! `register` and `watch`: follow the registry's events and print them as JSON lines until a
//! signal, a closed stdout, or (for `register`) a stopped registration.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use darkrift_etcd::admin::Admin;
use darkrift_etcd::config::layers::Layered;
use darkrift_etcd::{Connector, Event, EventStream, Registration};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fail::{Exit, Failure};
use crate::log::{Repeats, SUMMARY_EVERY, TARGET};
use crate::out::{self, EventLines};

/// Why following ended.
#[derive(Debug)]
enum Ended {
    /// SIGINT or SIGTERM.
    Signal,
    /// stdout's reader went away.
    Closed,
    /// The connector's stream ended.
    StreamEnd,
    /// The registration was stopped for good.
    Stopped { id: u16, reason: String },
}

/// Prints events until something ends it. Keeps the per-group member gauge and tells the log
/// filter about state changes.
async fn follow(
    events: &mut EventStream,
    lines: &mut EventLines,
    repeats: &Repeats,
    synced: &AtomicBool,
    stop: &CancellationToken,
) -> Ended {
    let closed = out::closed();
    tokio::pin!(closed);
    let mut summary =
        tokio::time::interval_at(tokio::time::Instant::now() + SUMMARY_EVERY, SUMMARY_EVERY);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return Ended::Signal,
            () = &mut closed => return Ended::Closed,
            _ = summary.tick() => {
                repeats.summarize();
                continue;
            }
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ended::StreamEnd,
            },
        };
        match &event {
            Event::Stale { revision } => {
                repeats.state_changed();
                tracing::warn!(target: TARGET, revision, "etcd cannot be read: the view is stale; retrying");
            }
            Event::Fresh { revision } => {
                repeats.state_changed();
                tracing::info!(target: TARGET, revision, "etcd answers again: the view is fresh");
            }
            Event::LeaseLost { .. } | Event::Reregistered { .. } => repeats.state_changed(),
            Event::Synced { .. } => synced.store(true, Ordering::Relaxed),
            _ => {}
        }
        let group = match &event {
            Event::Join { server, .. } => Some(server.group.clone()),
            Event::Leave { group, .. } => Some(group.clone()),
            _ => None,
        };
        let line = lines.line(&event);
        if let Some(group) = group {
            #[allow(
                clippy::cast_precision_loss,
                reason = "a gauge is f64; member counts are far below 2^52"
            )]
            let n = lines.members_of(&group) as f64;
            metrics::gauge!(darkrift_etcd::metrics::GROUP_MEMBERS, "group" => group).set(n);
        }
        if let Some((name, fields)) = line {
            if out::line(name, fields).is_err() {
                return Ended::Closed;
            }
        }
        if let Event::RegistrationStopped { id, reason, .. } = event {
            return Ended::Stopped { id, reason };
        }
    }
}

/// SIGINT or SIGTERM, from now on: the handlers are installed before this returns, so a signal
/// during start-up (connecting, registering) is heard, not fatal. Cancelled when one arrives.
fn shutdown() -> Result<CancellationToken, Failure> {
    let signal = darkrift_etcd::signal::install_shutdown_signal().map_err(|e| {
        Failure::new(
            Exit::Other,
            format!("installing the SIGINT/SIGTERM handlers failed: {e}"),
        )
    })?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    Ok(token)
}

/// The `registered` and `view_fresh` gauges, set at each scrape from the connector's state.
fn status_gauges(registered: bool, synced: &AtomicBool, connector: &Connector) {
    let fresh = synced.load(Ordering::Relaxed) && !connector.is_stale();
    metrics::gauge!(darkrift_etcd::metrics::REGISTERED).set(f64::from(u8::from(registered)));
    metrics::gauge!(darkrift_etcd::metrics::VIEW_FRESH).set(f64::from(u8::from(fresh)));
}

/// A monitoring endpoint that cannot start: a bad address is a usage error (exit 2).
fn monitor_failure(e: &darkrift_etcd::monitor::MonitorError) -> Failure {
    match e {
        darkrift_etcd::monitor::MonitorError::Listen { .. } => Failure::usage(e.to_string()),
        darkrift_etcd::monitor::MonitorError::Recorder(_) => {
            Failure::new(crate::fail::Exit::Other, e.to_string())
        }
    }
}

/// Checks the settings, binds the metrics listener (before anything else, so a bad address
/// fails at once), connects and takes the event stream.
async fn connect(
    layered: &Layered,
    metrics_addr: Option<SocketAddr>,
) -> Result<
    (
        Arc<Connector>,
        EventStream,
        Option<darkrift_etcd::monitor::Bound>,
    ),
    Failure,
> {
    let cfg = layered.settings.connector.clone();
    cfg.validate()?;
    let listener = match metrics_addr {
        Some(addr) => Some(
            darkrift_etcd::monitor::bind(addr)
                .await
                .map_err(|e| monitor_failure(&e))?,
        ),
        None => None,
    };
    let connector = Arc::new(Connector::connect(cfg).await?);
    let events = connector.events()?;
    Ok((connector, events, listener))
}

/// `register --readiness`: when peers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Readiness {
    /// At once.
    Immediate,
    /// When a TCP connect to the server's host:port succeeds (or after the ready bound).
    Probe,
}

/// When and how `register` announces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) mode: Readiness,
    pub(crate) bound: std::time::Duration,
}

/// `darkrift-etcd register`.
pub(crate) async fn register(
    layered: &Layered,
    repeats: &Repeats,
    metrics_addr: Option<SocketAddr>,
    ready: Ready,
) -> Result<(), Failure> {
    let server = &layered.settings.server;
    let missing =
        |what: &str, var: &str| Failure::usage(format!("register needs --{what} (or {var})"));
    let group = server
        .group
        .as_deref()
        .ok_or_else(|| missing("group", "DARKRIFT_ETCD_GROUP"))?;
    let host = server
        .host
        .as_deref()
        .ok_or_else(|| missing("host", "DARKRIFT_ETCD_HOST"))?;
    let port = server
        .port
        .ok_or_else(|| missing("port", "DARKRIFT_ETCD_PORT"))?;
    let properties = server.properties.clone();
    // Bad input never reaches etcd: the record and the settings are checked first.
    Registration::new(group, host, port, properties.clone()).map_err(darkrift_etcd::Error::from)?;
    // A signal before the registration is complete ends the command with exit 0 and nothing
    // left in etcd (docs/cli.md).
    let stop = shutdown()?;
    let connected = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        connected = connect(layered, metrics_addr) => connected,
    };
    let (connector, mut events, listener) = connected?;
    let synced = Arc::new(AtomicBool::new(false));
    // Peers were told (at once, or when the probe found the port listening): for /readyz.
    let announced = Arc::new(AtomicBool::new(false));
    if let Some(listener) = listener {
        let (c, r, s) = (connector.clone(), connector.clone(), synced.clone());
        let (ready_c, ready_a) = (connector.clone(), announced.clone());
        darkrift_etcd::monitor::serve_with(
            listener,
            darkrift_etcd::monitor::Probes {
                healthy: Arc::new(move || c.is_registered() && !c.is_stale()),
                // Announced and not stopped for good, whatever etcd's state: an outage (the
                // registration recovering, the view stale) must not take every game server out
                // of service at once.
                ready: Arc::new(move || {
                    ready_a.load(Ordering::Relaxed)
                        && ready_c.status().is_some_and(|s| {
                            !matches!(
                                *s.borrow(),
                                darkrift_etcd::RegistrationStatus::Stopped { .. }
                            )
                        })
                }),
                refresh: Arc::new(move || status_gauges(r.is_registered(), &s, &r)),
            },
        );
    }
    let registered = match ready.mode {
        Readiness::Immediate => {
            connector
                .register_server_until(group, host, port, properties.clone(), stop.cancelled())
                .await?
        }
        Readiness::Probe => {
            let registration = Registration::new(group, host, port, properties.clone())
                .map_err(darkrift_etcd::Error::from)?;
            connector
                .reserve_server_until(registration, stop.cancelled())
                .await?
        }
    };
    let Some(id) = registered else {
        // Stopped while registering: whatever was written is gone with its lease.
        return Ok(());
    };
    if ready.mode == Readiness::Probe {
        if out::line(
            "reserved",
            json!({"id": id, "group": group, "host": host, "port": port, "properties": properties}),
        )
        .is_err()
        {
            connector.deregister_server().await?;
            return Ok(());
        }
        let waited = tokio::select! {
            () = stop.cancelled() => None,
            waited = crate::agent::ready::wait_listening(host, port, ready.bound) => Some(waited),
        };
        match waited {
            None => {
                // A signal before the announcement: the reservation is given back.
                connector.deregister_server().await?;
                return Ok(());
            }
            Some(crate::agent::ready::Readiness::GaveUp) => tracing::warn!(
                target: TARGET,
                host,
                port,
                bound = ?ready.bound,
                "nothing accepted a connection within the ready bound: announcing anyway (the id is in use)"
            ),
            Some(crate::agent::ready::Readiness::Listening { .. }) => {}
        }
        connector.announce_server().await?;
    }
    announced.store(true, Ordering::Relaxed);
    // The create revision of our key: etcd's revision of the registration.
    let read_back = async { Admin::from_connector(&connector)?.get(id).await };
    // A signal meanwhile is heard by `follow` at once; the read-back is not waited for.
    let read_back = tokio::select! {
        () = stop.cancelled() => Ok((0, None)),
        read = read_back => read,
    };
    let revision = match read_back {
        Ok((_, Some(entry))) => Some(entry.create_revision),
        Ok((_, None)) => None,
        Err(e) => {
            tracing::warn!(target: TARGET, error = %e, "reading back our registration failed");
            None
        }
    };
    let registered = out::line(
        "registered",
        json!({"id": id, "group": group, "host": host, "port": port,
               "properties": properties, "revision": revision}),
    );
    let ended = if registered.is_err() {
        Ended::Closed
    } else {
        follow(
            &mut events,
            &mut EventLines::new(None),
            repeats,
            &synced,
            &stop,
        )
        .await
    };
    if let Ended::Stopped { id, reason } = ended {
        return Err(Failure::new(
            Exit::Stopped,
            format!("registration of server {id} stopped: {reason}"),
        ));
    }
    connector.deregister_server().await?;
    // Said only to a reader that is still there.
    let _ = out::line("deregistered", json!({"id": id}));
    Ok(())
}

/// `darkrift-etcd watch`.
pub(crate) async fn watch(
    layered: &Layered,
    group: Option<&str>,
    repeats: &Repeats,
    metrics_addr: Option<SocketAddr>,
) -> Result<(), Failure> {
    if let Some(g) = group {
        darkrift_etcd::record::validate_group(g).map_err(darkrift_etcd::Error::from)?;
    }
    let stop = shutdown()?;
    let connected = tokio::select! {
        () = stop.cancelled() => return Ok(()),
        connected = connect(layered, metrics_addr) => connected,
    };
    let (connector, mut events, listener) = connected?;
    let synced = Arc::new(AtomicBool::new(false));
    if let Some(listener) = listener {
        let (c, s) = (connector.clone(), synced.clone());
        let (r, s2) = (connector.clone(), synced.clone());
        let healthy: darkrift_etcd::monitor::Healthy =
            Arc::new(move || s.load(Ordering::Relaxed) && !c.is_stale());
        darkrift_etcd::monitor::serve_with(
            listener,
            darkrift_etcd::monitor::Probes {
                ready: healthy.clone(),
                healthy,
                refresh: Arc::new(move || status_gauges(false, &s2, &r)),
            },
        );
    }
    let mut lines = EventLines::new(group.map(str::to_owned));
    // Whatever ended it (a signal, a closed stdout, the stream), watching has nothing to
    // undo: the connector's tasks stop when it is dropped.
    follow(&mut events, &mut lines, repeats, &synced, &stop).await;
    Ok(())
}
