//! The mesh's event loop: one task owns the cluster core, the links and the registry's event
//! stream; dialling, handshakes and open connections run on child tasks (in a `JoinSet`, so
//! dropping the loop closes every socket) and report back through one channel.
//!
//! Every child task carries the generation of the link it serves; a report whose generation
//! is not the link's current one comes from a task that was superseded (the peer left, or was
//! redialled) and is ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dial::{dial, DialPolicy};
use super::frame::{Frame, FrameError};
use super::{Link, MeshConfig, MeshError, MeshEvent, MeshState};
use darkrift_etcd::cluster::{ClusterCore, ClusterEvent, Direction};
use darkrift_etcd::connector::{Connector, EventStream, PeerStatus};
use darkrift_etcd::events::Event;
use darkrift_etcd::record::ServerInfo;

/// What child tasks report to the loop.
#[derive(Debug)]
enum Report {
    /// An incoming connection sent an Identify.
    Identified {
        id: u16,
        stream: TcpStream,
        from: SocketAddr,
    },
    /// An incoming connection sent no valid Identify.
    HandshakeFailed { from: SocketAddr, error: FrameError },
    /// A dial round reached the peer.
    Dialed {
        link: Link,
        generation: u64,
        stream: TcpStream,
    },
    /// A dial round spent its budget.
    DialFailed {
        link: Link,
        generation: u64,
        attempts: u32,
        error: String,
        refused: bool,
    },
    /// The registry's verdict on a peer we could not reach.
    Checked {
        link: Link,
        generation: u64,
        status: darkrift_etcd::Result<PeerStatus>,
        attempts: u32,
        error: String,
        refused: bool,
    },
    /// An open connection ended.
    Closed {
        link: Link,
        generation: u64,
        reason: String,
    },
}

/// A link's current task: dialling (upstream) or connected.
#[derive(Debug)]
struct LinkTask {
    generation: u64,
    cancel: CancellationToken,
    connected: bool,
}

/// What [`Runner::start`] hands back.
pub(super) struct Started {
    pub(super) id: u16,
    pub(super) local_addr: SocketAddr,
    pub(super) state: watch::Receiver<MeshState>,
    pub(super) connector: Arc<Connector>,
    pub(super) runner: Runner,
}

/// The loop's state.
pub(super) struct Runner {
    connector: Arc<Connector>,
    events: EventStream,
    core: ClusterCore,
    listener: TcpListener,
    dial: DialPolicy,
    dial_overrides: BTreeMap<String, SocketAddr>,
    identify_timeout: std::time::Duration,
    links: BTreeMap<Link, LinkTask>,
    next_generation: u64,
    tasks: JoinSet<()>,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    state: watch::Sender<MeshState>,
    out: mpsc::UnboundedSender<MeshEvent>,
    stop: CancellationToken,
}

impl Runner {
    /// Binds, connects, registers. The listener is up before the id is announced, so the
    /// first peer to dial finds it.
    pub(super) async fn start(
        config: MeshConfig,
        out: mpsc::UnboundedSender<MeshEvent>,
        stop: CancellationToken,
    ) -> Result<Started, MeshError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| MeshError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| MeshError::Listen {
            addr: config.listen,
            source,
        })?;
        let connector = Connector::connect(config.connector.clone()).await?;
        let events = connector.events()?;
        let group = config.topology.group().to_owned();
        let id = connector
            .register_server(
                &group,
                &config.host,
                config.port,
                std::collections::BTreeMap::default(),
            )
            .await?;
        let _ = out.send(MeshEvent::Registered {
            id,
            group,
            host: config.host.clone(),
            port: config.port,
        });
        let (state, state_rx) = watch::channel(MeshState {
            id,
            ..MeshState::default()
        });
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let connector = Arc::new(connector);
        Ok(Started {
            id,
            local_addr,
            state: state_rx,
            connector: Arc::clone(&connector),
            runner: Runner {
                connector,
                events,
                core: ClusterCore::new(config.topology, id),
                listener,
                dial: config.dial,
                dial_overrides: config.dial_overrides,
                identify_timeout: config.identify_timeout,
                links: BTreeMap::new(),
                next_generation: 0,
                tasks: JoinSet::new(),
                reports_tx,
                reports,
                state,
                out,
                stop,
            },
        })
    }

    /// Runs until stopped (then deregisters) or until the registry gives up on us.
    pub(super) async fn run(mut self) -> Result<(), MeshError> {
        let outcome = loop {
            tokio::select! {
                () = self.stop.cancelled() => break Ok(()),
                event = self.events.recv() => match event {
                    Some(event) => {
                        if let Err(e) = self.on_registry(&event) {
                            break Err(e);
                        }
                    }
                    None => break Err(MeshError::EventsEnded),
                },
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, from)) => self.spawn_handshake(stream, from),
                    Err(e) => tracing::warn!(error = %e, "accept failed"),
                },
                Some(report) = self.reports.recv() => self.on_report(report),
                // Reap finished children so the set does not grow.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
            self.publish();
        };
        let id = self.core.own_id();
        let deregistered = if outcome.is_ok() {
            // DarkRift's order on a clean stop: deregister first, then drop the connections.
            self.connector
                .deregister_server()
                .await
                .map_err(MeshError::from)
        } else {
            Ok(())
        };
        for task in self.links.values() {
            task.cancel.cancel();
        }
        self.tasks.shutdown().await;
        self.links.clear();
        self.publish();
        let reason = match (&outcome, &deregistered) {
            (Err(e), _) | (Ok(()), Err(e)) => e.to_string(),
            (Ok(()), Ok(())) => "shutdown".to_owned(),
        };
        self.emit(MeshEvent::Stopped { id, reason });
        outcome.and(deregistered)
    }

    fn on_registry(&mut self, event: &Event) -> Result<(), MeshError> {
        match event {
            Event::Reregistered {
                id, previous_id, ..
            } => {
                self.emit(MeshEvent::Reregistered {
                    id: *id,
                    previous_id: *previous_id,
                });
                if id != previous_id {
                    // Our upstream links carry the old identity: dial them again as the new one.
                    let upstream: Vec<ServerInfo> = self.core.upstream().cloned().collect();
                    for server in upstream {
                        self.close_link(
                            Link {
                                peer: server.id,
                                direction: Direction::Upstream,
                            },
                            "our id changed",
                        );
                    }
                    if let Some(change) = self.core.apply(event) {
                        self.on_cluster(change);
                    }
                    let upstream: Vec<ServerInfo> = self.core.upstream().cloned().collect();
                    for server in upstream {
                        self.start_dial(server);
                    }
                    return Ok(());
                }
            }
            Event::RegistrationStopped { id, reason, .. } => {
                return Err(MeshError::RegistrationStopped {
                    id: *id,
                    reason: reason.clone(),
                })
            }
            Event::LeaseLost { id, reason, .. } => {
                tracing::warn!(id, reason = %reason, "our lease is lost; the connector re-registers");
            }
            _ => {}
        }
        if let Some(change) = self.core.apply(event) {
            self.on_cluster(change);
        }
        Ok(())
    }

    fn on_cluster(&mut self, change: ClusterEvent) {
        let direction = change.direction();
        let is_join = change.is_join();
        let server = match change {
            ClusterEvent::UpstreamJoined(s)
            | ClusterEvent::DownstreamJoined(s)
            | ClusterEvent::UpstreamLeft(s)
            | ClusterEvent::DownstreamLeft(s) => s,
        };
        if is_join {
            self.emit(MeshEvent::Joined {
                peer: server.id,
                group: server.group.clone(),
                direction,
            });
            if direction == Direction::Upstream {
                self.start_dial(server);
            }
        } else {
            for direction in [Direction::Upstream, Direction::Downstream] {
                self.close_link(
                    Link {
                        peer: server.id,
                        direction,
                    },
                    "left the registry",
                );
            }
            self.emit(MeshEvent::Left {
                peer: server.id,
                direction,
            });
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::Identified { id, stream, from } => self.on_identify(id, stream, from),
            Report::HandshakeFailed { from, error } => {
                tracing::debug!(%from, %error, "incoming connection without Identify");
                self.emit(MeshEvent::Rejected {
                    peer: None,
                    reason: format!("from {from}: {error}"),
                });
            }
            Report::Dialed {
                link,
                generation,
                stream,
            } => {
                if self.is_current(link, generation) {
                    self.connected(link, stream);
                }
            }
            Report::DialFailed {
                link,
                generation,
                attempts,
                error,
                refused,
            } => {
                if self.is_current(link, generation) {
                    self.check_peer(link, generation, attempts, error, refused);
                }
            }
            Report::Checked {
                link,
                generation,
                status,
                attempts,
                error,
                refused,
            } => {
                if !self.is_current(link, generation) {
                    return;
                }
                let verdict = match &status {
                    // `registered`, `gone`, `unknown`, …
                    Ok(s) => format!("{s:?}").to_lowercase(),
                    Err(e) => format!("check failed: {e}"),
                };
                self.emit(MeshEvent::GaveUp {
                    peer: link.peer,
                    attempts,
                    error,
                    status: verdict,
                    refused,
                });
                // A peer the registry still holds is alive to etcd (or not yet reported by
                // enough servers): try another round. A peer gone gets its leave through the
                // stream. After a refused round the next one waits `max_delay`: the round
                // itself had no backoff, and without the pause a peer refusing us would be
                // dialled and reported in a tight loop until its leave arrives.
                let retry = matches!(status, Ok(PeerStatus::Registered) | Err(_));
                match self.core.get(link.peer) {
                    Some((Direction::Upstream, server)) if retry => {
                        let server = server.clone();
                        let pause = if refused {
                            self.dial.max_delay
                        } else {
                            std::time::Duration::ZERO
                        };
                        self.start_dial_after(server, pause);
                    }
                    _ => {
                        self.links.remove(&link);
                    }
                }
            }
            Report::Closed {
                link,
                generation,
                reason,
            } => {
                if !self.is_current(link, generation) {
                    return;
                }
                self.links.remove(&link);
                self.emit(MeshEvent::Disconnected {
                    peer: link.peer,
                    direction: link.direction,
                    reason,
                });
                // Upstream: reconnect at once while the registry still announces it. That
                // first attempt is also the prompt check of a crash: a peer whose process died
                // refuses the connect, which ends the round and asks the registry (and, with
                // eviction on, reports it) right away. Downstream: it dials us again; we cannot
                // tell its crash from a redial, so its leave waits for its upstream peers'
                // reports or its lease.
                if link.direction == Direction::Upstream {
                    if let Some((Direction::Upstream, server)) = self.core.get(link.peer) {
                        let server = server.clone();
                        self.start_dial(server);
                    }
                }
            }
        }
    }

    /// An incoming Identify: accepted only from an announced server of a group that dials us.
    fn on_identify(&mut self, id: u16, mut stream: TcpStream, from: SocketAddr) {
        if self.core.accepts_identify(id).is_none() {
            let reason = if self.core.get(id).is_some() {
                "its group does not connect to ours"
            } else {
                "not announced by the registry"
            };
            tracing::debug!(id, %from, reason, "Identify refused");
            self.emit(MeshEvent::Rejected {
                peer: Some(id),
                reason: reason.to_owned(),
            });
            return; // dropping the stream closes it
        }
        let link = Link {
            peer: id,
            direction: Direction::Downstream,
        };
        // A new connection from the same peer replaces the old one (it reconnected).
        self.close_link(link, "replaced by a new connection");
        let own_id = self.core.own_id();
        let (generation, cancel) = self.new_task(link);
        let reports = self.reports_tx.clone();
        self.tasks.spawn(async move {
            if let Err(e) = Frame::Welcome(own_id).write_to(&mut stream).await {
                let _ = reports.send(Report::Closed {
                    link,
                    generation,
                    reason: format!("sending Welcome: {e}"),
                });
                return;
            }
            hold(stream, link, generation, cancel, reports).await;
        });
        self.mark_connected(link);
    }

    fn spawn_handshake(&mut self, mut stream: TcpStream, from: SocketAddr) {
        let reports = self.reports_tx.clone();
        let bound = self.identify_timeout;
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            let report = tokio::select! {
                () = stop.cancelled() => return,
                frame = Frame::read_from(&mut stream, bound) => match frame {
                    Ok(Frame::Identify(id)) => Report::Identified { id, stream, from },
                    Ok(Frame::Welcome(_)) => Report::HandshakeFailed {
                        from,
                        error: FrameError::UnknownTag(0x02),
                    },
                    Err(error) => Report::HandshakeFailed { from, error },
                },
            };
            let _ = reports.send(report);
        });
    }

    /// Starts a dial round to an upstream server (replacing any task of that link).
    fn start_dial(&mut self, server: ServerInfo) {
        self.start_dial_after(server, std::time::Duration::ZERO);
    }

    /// Starts a dial round to an upstream server after `pause` (replacing any task of that
    /// link; a leave in the meantime cancels it).
    fn start_dial_after(&mut self, mut server: ServerInfo, pause: std::time::Duration) {
        let link = Link {
            peer: server.id,
            direction: Direction::Upstream,
        };
        self.close_link(link, "redialling");
        let (generation, cancel) = self.new_task(link);
        let reports = self.reports_tx.clone();
        let (own_id, policy, bound) = (self.core.own_id(), self.dial, self.identify_timeout);
        if let Some(addr) = self
            .dial_overrides
            .get(&format!("{}:{}", server.host, server.port))
        {
            server.host = addr.ip().to_string();
            server.port = addr.port();
        }
        self.tasks.spawn(async move {
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = async {
                    tokio::time::sleep(pause).await;
                    dial(&server, own_id, policy, bound).await
                } => outcome,
            };
            let report = match outcome {
                Ok(stream) => Report::Dialed {
                    link,
                    generation,
                    stream,
                },
                Err(failure) => Report::DialFailed {
                    link,
                    generation,
                    attempts: failure.attempts,
                    error: failure.last_error,
                    refused: failure.refused,
                },
            };
            let _ = reports.send(report);
        });
    }

    /// A dial round succeeded: hold the connection.
    fn connected(&mut self, link: Link, stream: TcpStream) {
        let Some(task) = self.links.get(&link) else {
            return;
        };
        let (generation, cancel) = (task.generation, task.cancel.clone());
        let reports = self.reports_tx.clone();
        self.tasks
            .spawn(hold(stream, link, generation, cancel, reports));
        self.mark_connected(link);
    }

    /// Asks the registry about a peer we could not reach (DarkRift's
    /// `HandleConnectionFailure`), off the loop: the answer may wait for the peer's leave to
    /// go through the event stream this loop drains.
    fn check_peer(
        &mut self,
        link: Link,
        generation: u64,
        attempts: u32,
        error: String,
        refused: bool,
    ) {
        let connector = Arc::clone(&self.connector);
        let reports = self.reports_tx.clone();
        self.tasks.spawn(async move {
            let status = connector.handle_connection_failure(link.peer).await;
            let _ = reports.send(Report::Checked {
                link,
                generation,
                status,
                attempts,
                error,
                refused,
            });
        });
    }

    fn mark_connected(&mut self, link: Link) {
        if let Some(task) = self.links.get_mut(&link) {
            task.connected = true;
        }
        self.emit(MeshEvent::Connected {
            peer: link.peer,
            direction: link.direction,
        });
    }

    /// Cancels a link's task; reports the disconnection if it was connected.
    fn close_link(&mut self, link: Link, reason: &str) {
        if let Some(task) = self.links.remove(&link) {
            task.cancel.cancel();
            if task.connected {
                self.emit(MeshEvent::Disconnected {
                    peer: link.peer,
                    direction: link.direction,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    fn new_task(&mut self, link: Link) -> (u64, CancellationToken) {
        self.next_generation += 1;
        let cancel = self.stop.child_token();
        self.links.insert(
            link,
            LinkTask {
                generation: self.next_generation,
                cancel: cancel.clone(),
                connected: false,
            },
        );
        (self.next_generation, cancel)
    }

    fn is_current(&self, link: Link, generation: u64) -> bool {
        self.links
            .get(&link)
            .is_some_and(|t| t.generation == generation)
    }

    fn emit(&self, event: MeshEvent) {
        // Nobody listening is fine: the events are informational.
        let _ = self.out.send(event);
    }

    /// Publishes the state if it changed.
    fn publish(&self) {
        let next = MeshState {
            id: self.core.own_id(),
            upstream: self.core.upstream().map(|s| s.id).collect(),
            downstream: self.core.downstream().map(|s| s.id).collect(),
            links: self
                .links
                .iter()
                .filter(|(_, t)| t.connected)
                .map(|(l, _)| *l)
                .collect(),
        };
        self.state.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }
}

/// Holds an identified connection until the peer closes it, it fails, or the link is
/// cancelled. Anything the peer sends after the handshake is read and discarded: the mesh
/// carries no traffic of its own.
async fn hold(
    mut stream: TcpStream,
    link: Link,
    generation: u64,
    cancel: CancellationToken,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut buf = [0u8; 512];
    let reason = loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            read = stream.read(&mut buf) => match read {
                Ok(0) => break "closed by the peer".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("socket error: {e}"),
            },
        }
    };
    let _ = reports.send(Report::Closed {
        link,
        generation,
        reason,
    });
}
