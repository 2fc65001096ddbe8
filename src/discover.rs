//! The registry as a [`tower::discover::Discover`] (feature `tower`): a load balancer such as
//! `tower::balance::p2c::Balance` follows the servers of a group as they join and leave.
//!
//! A [`Discovery`] reads a connector's [`EventStream`] and yields
//! `Result<Change<u16, S>, Infallible>`: [`Change::Insert`] with a service built by the caller's
//! constructor (`Fn(&ServerInfo) -> S`, e.g. a tonic `Channel` to `host:port`) for each
//! [`Event::Join`] the [`Filter`] accepts, [`Change::Remove`] for the matching
//! [`Event::Leave`]. The key is the registry id.
//!
//! # Ordering and exactness
//! Changes come in etcd revision order, at most one per event: one `Insert` per accepted
//! join, one `Remove` per leave of an inserted id, never a `Remove` for an id that was not
//! inserted (a leave of a filtered-out server, or of one whose constructor failed, yields
//! nothing). A
//! server that leaves and comes back (re-registration after a lost lease, a record edited in
//! place) is a `Remove` then an `Insert` with a fresh service. The registry hands an id out
//! again only after its round-robin cursor has walked the rest of the id space (see
//! [`crate::alloc`]), so a reused key is rare; it is always preceded by its `Remove`.
//!
//! # Events that are not changes
//! [`Event::Synced`] marks that every server present at connect time has been yielded
//! ([`DiscoveryStats::is_synced`]). [`Event::Stale`] and [`Event::Fresh`] change nothing:
//! while etcd cannot be read the services are kept (the registry never mass-evicts; what was
//! missed arrives as joins and leaves before `Fresh`), and a balancer goes on using them.
//! This server's own lease events ([`Event::LeaseLost`], [`Event::Reregistered`], …) are
//! ignored: its own join and leave, if it is in the filter, come as membership events.
//!
//! # Constructor errors and the end
//! With [`Discovery::try_new`] the constructor may fail for one server (say, a host that is
//! not a valid URI): that server is skipped, logged at warn and counted
//! ([`DiscoveryStats::constructor_failures`]); the stream goes on. It never yields an error
//! and ends only when the event stream ends, i.e. when the [`Connector`] is dropped; it then
//! stays ended. tower's balancer keeps the services it has when discovery ends, so keep the
//! connector alive as long as the balancer.
//!
//! # Its own subscription
//! Build a `Discovery` from a subscription of its own ([`Connector::subscribe`]): the host keeps
//! others for its own lease events or a `ClusterCore`. The consumer sets the pace (a balancer
//! polls discovery only when asked for readiness), but a slow subscription delays nothing: not
//! the watcher, not the connector's view ([`Connector::servers`], the ids a registration
//! avoids), not the other subscriptions. If its queue overflows between polls, it is caught up
//! from the view when polled again (leaves for the services gone, inserts for the new ones; see
//! [`crate::events`]), so the balancer's set still ends equal to the registry's.
//!
//! `Discovery` is `Unpin`, and `Send` whenever its event stream is (an [`EventStream`] is).
//!
//! [`Connector`]: crate::Connector
//! [`Connector::subscribe`]: crate::Connector::subscribe
//! [`Connector::servers`]: crate::Connector::servers

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::Stream;
use tower::discover::Change;

use crate::connector::EventStream;
use crate::events::Event;
use crate::record::ServerInfo;

/// Which servers a [`Discovery`] yields. Evaluated once, on each join.
#[derive(Clone)]
#[non_exhaustive]
pub enum Filter {
    /// Every server of the registry.
    All,
    /// The servers of one group.
    Group(String),
    /// The servers the predicate accepts (e.g. on a property).
    Matching(Arc<dyn Fn(&ServerInfo) -> bool + Send + Sync>),
}

impl Filter {
    /// The servers of `group`.
    pub fn group(group: impl Into<String>) -> Self {
        Filter::Group(group.into())
    }

    /// The servers `predicate` accepts.
    pub fn matching(predicate: impl Fn(&ServerInfo) -> bool + Send + Sync + 'static) -> Self {
        Filter::Matching(Arc::new(predicate))
    }

    fn accepts(&self, server: &ServerInfo) -> bool {
        match self {
            Filter::All => true,
            Filter::Group(group) => server.group == *group,
            Filter::Matching(predicate) => predicate(server),
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::All => f.write_str("All"),
            Filter::Group(group) => f.debug_tuple("Group").field(group).finish(),
            Filter::Matching(_) => f.write_str("Matching(..)"),
        }
    }
}

/// What one event does to the service set.
enum Mapped<S> {
    Change(Change<u16, S>),
    /// The constructor failed; `remove` when the id was inserted (only if the event contract
    /// were broken: a join without a leave between) and its old service must go.
    Failed {
        id: u16,
        error: String,
        remove: bool,
    },
    Nothing,
}

/// The pure part: the filter and the ids inserted so far. The set is what makes a `Remove`
/// exact: a leave maps to one only for an id this mapper inserted.
#[derive(Debug)]
struct Mapper {
    filter: Filter,
    inserted: BTreeSet<u16>,
}

impl Mapper {
    fn map<S>(
        &mut self,
        event: Event,
        make: impl FnOnce(&ServerInfo) -> Result<S, String>,
    ) -> Mapped<S> {
        match event {
            Event::Join { server, .. } => {
                // Joins and leaves alternate per id (the Event contract), so `was` is false;
                // should it not be, the old service is replaced or removed, never kept stale.
                let was = self.inserted.remove(&server.id);
                if !self.filter.accepts(&server) {
                    return if was {
                        Mapped::Change(Change::Remove(server.id))
                    } else {
                        Mapped::Nothing
                    };
                }
                match make(&server) {
                    Ok(service) => {
                        self.inserted.insert(server.id);
                        Mapped::Change(Change::Insert(server.id, service))
                    }
                    Err(error) => Mapped::Failed {
                        id: server.id,
                        error,
                        remove: was,
                    },
                }
            }
            Event::Leave { id, .. } if self.inserted.remove(&id) => {
                Mapped::Change(Change::Remove(id))
            }
            // Not membership changes (see the module doc), or a leave of an id not inserted.
            _ => Mapped::Nothing,
        }
    }
}

/// Counters of a [`Discovery`], still readable once it is moved into a balancer.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStats(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    services: AtomicUsize,
    failures: AtomicU64,
    synced: AtomicBool,
}

impl DiscoveryStats {
    /// Services yielded and not removed since: what a balancer fed by it holds.
    #[must_use]
    pub fn services(&self) -> usize {
        self.0.services.load(Ordering::Relaxed)
    }

    /// Joins skipped because the constructor failed.
    #[must_use]
    pub fn constructor_failures(&self) -> u64 {
        self.0.failures.load(Ordering::Relaxed)
    }

    /// True once [`Event::Synced`] was read: every server of the initial snapshot has been
    /// yielded (or skipped).
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.0.synced.load(Ordering::Relaxed)
    }
}

type Constructor<S> = Box<dyn FnMut(&ServerInfo) -> Result<S, String> + Send>;

/// The registry's joins and leaves as a [`tower::discover::Discover`] of `S` keyed by id.
/// See the [module documentation](self).
pub struct Discovery<S, St = EventStream> {
    /// `None` once the events ended: polled again, the stream stays ended.
    events: Option<St>,
    mapper: Mapper,
    make: Constructor<S>,
    stats: DiscoveryStats,
}

impl<S, St> Discovery<S, St> {
    /// Yields a service built by `make` for each server `filter` accepts.
    pub fn new(
        events: St,
        filter: Filter,
        mut make: impl FnMut(&ServerInfo) -> S + Send + 'static,
    ) -> Self {
        Self::try_new(events, filter, move |server| {
            Ok::<_, Infallible>(make(server))
        })
    }

    /// Like [`Discovery::new`] with a constructor that may fail for a server: that server is
    /// skipped, logged and counted; the stream goes on.
    pub fn try_new<E: fmt::Display>(
        events: St,
        filter: Filter,
        mut make: impl FnMut(&ServerInfo) -> Result<S, E> + Send + 'static,
    ) -> Self {
        Discovery {
            events: Some(events),
            mapper: Mapper {
                filter,
                inserted: BTreeSet::new(),
            },
            make: Box::new(move |server| make(server).map_err(|e| e.to_string())),
            stats: DiscoveryStats::default(),
        }
    }

    /// The counters; take a handle before moving the discovery into a balancer.
    #[must_use]
    pub fn stats(&self) -> DiscoveryStats {
        self.stats.clone()
    }
}

impl<S, St: fmt::Debug> fmt::Debug for Discovery<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("filter", &self.mapper.filter)
            .field("inserted", &self.mapper.inserted)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S, St: Stream<Item = Event> + Unpin> Stream for Discovery<S, St> {
    type Item = Result<Change<u16, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(events) = this.events.as_mut() else {
                return Poll::Ready(None);
            };
            let Some(event) = ready!(Pin::new(events).poll_next(cx)) else {
                this.events = None;
                return Poll::Ready(None);
            };
            let counts = &this.stats.0;
            if matches!(event, Event::Synced { .. }) {
                counts.synced.store(true, Ordering::Relaxed);
            }
            let change = match this.mapper.map(event, &mut this.make) {
                Mapped::Change(change) => change,
                Mapped::Failed { id, error, remove } => {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, %error, "discovery: no service for this server, skipped");
                    if !remove {
                        continue;
                    }
                    Change::Remove(id)
                }
                Mapped::Nothing => continue,
            };
            let live = this.mapper.inserted.len();
            counts.services.store(live, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(change)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{stream, StreamExt};

    fn server(id: u16, group: &str) -> ServerInfo {
        ServerInfo {
            id,
            group: group.into(),
            host: "127.0.0.1".into(),
            port: 4000 + id,
            properties: std::collections::BTreeMap::default(),
            registered_at_unix_ms: 0,
            alloc_position: u64::from(id),
            departing: false,
        }
    }
    fn join(id: u16, group: &str) -> Event {
        Event::Join {
            server: server(id, group),
            revision: 1,
        }
    }
    fn leave(id: u16, group: &str) -> Event {
        Event::Leave {
            id,
            group: group.into(),
            revision: 2,
            departing: false,
        }
    }
    /// Runs `events` through a discovery whose constructor fails for the group `bad`; the
    /// changes as `+id` / `-id`.
    fn run(filter: Filter, events: Vec<Event>, bad: &'static str) -> (Vec<String>, DiscoveryStats) {
        let make = move |s: &ServerInfo| {
            if s.group == bad {
                Err("bad group")
            } else {
                Ok(s.port)
            }
        };
        let discovery = Discovery::try_new(stream::iter(events), filter, make);
        let stats = discovery.stats();
        let changes = futures::executor::block_on(discovery.collect::<Vec<_>>());
        let changes = changes.into_iter().map(|change| match change {
            Ok(Change::Insert(id, port)) => {
                assert_eq!(port, 4000 + id, "the service was built from its own server");
                format!("+{id}")
            }
            Ok(Change::Remove(id)) => format!("-{id}"),
        });
        (changes.collect(), stats)
    }

    #[test]
    fn group_filter_one_insert_per_join_one_remove_per_leave() {
        let events = vec![
            join(1, "game"),
            join(2, "lobby"),
            Event::Synced { revision: 1 },
            join(3, "game"),
            leave(2, "lobby"),
            leave(1, "game"),
            join(1, "game"),  // a re-join after the leave: Remove, then Insert
            leave(9, "game"), // never inserted: nothing
        ];
        let (changes, stats) = run(Filter::group("game"), events, "");
        assert_eq!(changes, ["+1", "+3", "-1", "+1"]);
        assert_eq!((stats.services(), stats.is_synced()), (2, true));
    }

    #[test]
    fn non_membership_events_keep_the_services() {
        let lost = Event::LeaseLost {
            id: 1,
            reason: "expired".into(),
            revision: 1,
        };
        let events = vec![
            join(1, "g"),
            Event::Stale { revision: 1 },
            lost,
            Event::Fresh { revision: 5 },
        ];
        let (changes, stats) = run(Filter::All, events, "");
        assert_eq!(changes, ["+1"]);
        assert_eq!((stats.services(), stats.is_synced()), (1, false));
    }

    #[test]
    fn a_failed_constructor_skips_one_server_and_its_leave() {
        let events = vec![join(1, "g"), join(2, "bad"), leave(2, "bad"), join(3, "g")];
        let (changes, stats) = run(Filter::All, events, "bad");
        assert_eq!(changes, ["+1", "+3"]);
        assert_eq!((stats.services(), stats.constructor_failures()), (2, 1));
    }

    #[test]
    fn a_predicate_filters_and_a_join_without_leave_never_keeps_an_outdated_service() {
        // Two joins without a leave cannot happen (the Event contract); if they did, the old
        // service would be replaced (tower's Insert), or removed when the new one is not built
        // or not accepted.
        let filter = Filter::matching(|s| s.group != "other");
        let again = |group| join(2, group);
        let events = vec![
            again("g"),
            again("g"),
            again("bad"),
            again("g"),
            again("other"),
        ];
        let (changes, stats) = run(filter, events, "bad");
        assert_eq!(changes, ["+2", "+2", "-2", "+2", "-2"]);
        assert_eq!((stats.services(), stats.constructor_failures()), (0, 1));
    }

    #[test]
    fn ends_with_its_events_and_stays_ended() {
        let mut discovery = Discovery::new(stream::iter(vec![join(1, "g")]), Filter::All, |_| ());
        futures::executor::block_on(async {
            assert!(matches!(
                discovery.next().await,
                Some(Ok(Change::Insert(1, ())))
            ));
            assert!(discovery.next().await.is_none());
            assert!(discovery.next().await.is_none());
        });
    }

    #[test]
    fn is_send_and_unpin_on_the_connector_stream() {
        fn check<T: Send + Unpin>() {}
        check::<Discovery<std::rc::Rc<()>>>(); // not even S must be Send: none is held
    }
}
