//! The cluster core: DarkRift's `RemoteServerManager`, without I/O.
//!
//! Fed by the registry's [`Event`]s, it keeps the servers this server dials (upstream) and the
//! servers that dial it (downstream), following the [`Topology`] rules, and answers each change
//! with a [`ClusterEvent`]. Where DarkRift throws or leaks it is lenient and exact:
//!
//! - its own id is dropped;
//! - a join for an id already tracked is ignored and counted (DarkRift throws);
//! - a leave for an id it does not track is ignored (counted when the group is tracked);
//! - a leave removes the server completely, so whoever owns its connection can close it
//!   (DarkRift keeps reconnecting to a server that left, its issue #121).

use std::collections::BTreeMap;

use super::topology::{Direction, Topology};
use crate::events::Event;
use crate::record::ServerInfo;

/// A change of the upstream or downstream set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A server we dial joined: connect to it.
    UpstreamJoined(ServerInfo),
    /// A server that dials us joined: expect its Identify.
    DownstreamJoined(ServerInfo),
    /// A server we dial left: stop dialling it and close its connection.
    UpstreamLeft(ServerInfo),
    /// A server that dials us left: close its connection.
    DownstreamLeft(ServerInfo),
}

impl ClusterEvent {
    /// The server concerned.
    #[must_use]
    pub fn server(&self) -> &ServerInfo {
        match self {
            ClusterEvent::UpstreamJoined(s)
            | ClusterEvent::DownstreamJoined(s)
            | ClusterEvent::UpstreamLeft(s)
            | ClusterEvent::DownstreamLeft(s) => s,
        }
    }

    /// Its relation to us.
    #[must_use]
    pub fn direction(&self) -> Direction {
        match self {
            ClusterEvent::UpstreamJoined(_) | ClusterEvent::UpstreamLeft(_) => Direction::Upstream,
            ClusterEvent::DownstreamJoined(_) | ClusterEvent::DownstreamLeft(_) => {
                Direction::Downstream
            }
        }
    }

    /// True for a join, false for a leave.
    #[must_use]
    pub fn is_join(&self) -> bool {
        matches!(
            self,
            ClusterEvent::UpstreamJoined(_) | ClusterEvent::DownstreamJoined(_)
        )
    }

    fn joined(direction: Direction, server: ServerInfo) -> Self {
        match direction {
            Direction::Upstream => ClusterEvent::UpstreamJoined(server),
            Direction::Downstream => ClusterEvent::DownstreamJoined(server),
        }
    }

    fn left(direction: Direction, server: ServerInfo) -> Self {
        match direction {
            Direction::Upstream => ClusterEvent::UpstreamLeft(server),
            Direction::Downstream => ClusterEvent::DownstreamLeft(server),
        }
    }
}

/// What the core ignored, for logs and tests. None of these is an error of the core; a
/// non-zero `duplicate_joins` or `unknown_leaves` means the event source broke its contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Joins for an id already tracked.
    pub duplicate_joins: u64,
    /// Leaves for an id of a tracked group that is not tracked.
    pub unknown_leaves: u64,
    /// Joins of servers in groups we do not track.
    pub untracked_joins: u64,
    /// Joins and leaves of our own id.
    pub own_events: u64,
}

/// The upstream and downstream sets of one server. See the module docs.
#[derive(Debug, Clone)]
pub struct ClusterCore {
    topology: Topology,
    own_id: u16,
    peers: BTreeMap<u16, (Direction, ServerInfo)>,
    synced: bool,
    stats: CoreStats,
}

impl ClusterCore {
    /// An empty core for the server `own_id` (the id `register_server` returned) placed by
    /// `topology`. Feed it the connector's events from the start of the stream: events queued
    /// before registration are fine, the own id is known by the time they are applied.
    #[must_use]
    pub fn new(topology: Topology, own_id: u16) -> Self {
        ClusterCore {
            topology,
            own_id,
            peers: BTreeMap::new(),
            synced: false,
            stats: CoreStats::default(),
        }
    }

    /// Applies one registry event; returns the change it makes, if any.
    pub fn apply(&mut self, event: &Event) -> Option<ClusterEvent> {
        match event {
            Event::Join { server, .. } => self.join(server.clone()),
            Event::Leave { id, group, .. } => self.leave(*id, Some(group)),
            Event::Synced { .. } => {
                self.synced = true;
                None
            }
            Event::Reregistered { id, .. } => self.set_own_id(*id),
            _ => None,
        }
    }

    /// Records a server's join: tracked if its group is upstream or downstream of ours.
    pub fn join(&mut self, server: ServerInfo) -> Option<ClusterEvent> {
        if server.id == self.own_id {
            self.stats.own_events += 1;
            return None;
        }
        if self.peers.contains_key(&server.id) {
            self.stats.duplicate_joins += 1;
            tracing::warn!(id = server.id, "duplicate join ignored");
            return None;
        }
        let Some(direction) = self.topology.direction(&server.group) else {
            self.stats.untracked_joins += 1;
            return None;
        };
        self.peers.insert(server.id, (direction, server.clone()));
        Some(ClusterEvent::joined(direction, server))
    }

    /// Records a server's leave. `group`, when known, tells an untracked group's leave (not
    /// counted) from a leave we should have known about (counted as unknown).
    pub fn leave(&mut self, id: u16, group: Option<&str>) -> Option<ClusterEvent> {
        if id == self.own_id {
            self.stats.own_events += 1;
            return None;
        }
        if let Some((direction, server)) = self.peers.remove(&id) {
            return Some(ClusterEvent::left(direction, server));
        }
        if group.is_none_or(|g| self.topology.direction(g).is_some()) {
            self.stats.unknown_leaves += 1;
            tracing::debug!(id, "leave of an unknown server ignored");
        }
        None
    }

    /// Changes our own id (a re-registration got a new one). Were the new id tracked as a peer,
    /// that stale entry is dropped and its leave returned.
    pub fn set_own_id(&mut self, id: u16) -> Option<ClusterEvent> {
        self.own_id = id;
        self.peers
            .remove(&id)
            .map(|(direction, server)| ClusterEvent::left(direction, server))
    }

    /// Our id.
    #[must_use]
    pub fn own_id(&self) -> u16 {
        self.own_id
    }

    /// Our topology.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// True once the registry's initial snapshot has been applied.
    #[must_use]
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// What was ignored so far.
    #[must_use]
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// A tracked server and its direction.
    #[must_use]
    pub fn get(&self, id: u16) -> Option<(Direction, &ServerInfo)> {
        self.peers.get(&id).map(|(d, s)| (*d, s))
    }

    /// The servers we dial, by id.
    pub fn upstream(&self) -> impl Iterator<Item = &ServerInfo> {
        self.in_direction(Direction::Upstream)
    }

    /// The servers that dial us, by id.
    pub fn downstream(&self) -> impl Iterator<Item = &ServerInfo> {
        self.in_direction(Direction::Downstream)
    }

    /// The tracked server `id` if it may dial us: announced by the registry and in a group
    /// that connects to ours. An Identify from anyone else is to be refused.
    #[must_use]
    pub fn accepts_identify(&self, id: u16) -> Option<&ServerInfo> {
        self.peers
            .get(&id)
            .map(|(_, s)| s)
            .filter(|s| self.topology.dials_in(&s.group))
    }

    fn in_direction(&self, want: Direction) -> impl Iterator<Item = &ServerInfo> {
        self.peers
            .values()
            .filter(move |(d, _)| *d == want)
            .map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config::{ClusterConfig, GroupConfig, Visibility};

    fn cluster() -> ClusterConfig {
        let g = |name: &str, to: &[&str]| GroupConfig {
            name: name.to_owned(),
            visibility: Visibility::External,
            connects_to: to.iter().map(|s| (*s).to_owned()).collect(),
        };
        ClusterConfig::new(vec![
            g("lobby", &["game", "chat"]),
            g("game", &[]),
            g("chat", &["lobby"]),
            g("admin", &["lobby"]),
            g("other", &["game"]),
            g("self", &["self"]),
        ])
        .unwrap()
    }

    fn core(group: &str, own: u16) -> ClusterCore {
        ClusterCore::new(cluster().topology(group).unwrap(), own)
    }

    fn server(id: u16, group: &str) -> ServerInfo {
        ServerInfo {
            id,
            group: group.to_owned(),
            host: "127.0.0.1".to_owned(),
            port: 4000 + id,
            properties: BTreeMap::new(),
            registered_at_unix_ms: 0,
            alloc_position: u64::from(id),
            departing: false,
        }
    }

    fn join(id: u16, group: &str) -> Event {
        Event::Join {
            server: server(id, group),
            revision: i64::from(id),
        }
    }

    fn leave(id: u16, group: &str) -> Event {
        Event::Leave {
            id,
            group: group.to_owned(),
            revision: 1000 + i64::from(id),
            departing: false,
        }
    }

    fn ids<'a>(servers: impl Iterator<Item = &'a ServerInfo>) -> Vec<u16> {
        servers.map(|s| s.id).collect()
    }

    #[test]
    fn joins_are_classified_by_the_topology() {
        let mut c = core("lobby", 1);
        assert_eq!(
            c.apply(&join(2, "game")),
            Some(ClusterEvent::UpstreamJoined(server(2, "game")))
        );
        // chat: both connect to each other, upstream wins.
        assert_eq!(
            c.apply(&join(3, "chat")),
            Some(ClusterEvent::UpstreamJoined(server(3, "chat")))
        );
        assert_eq!(
            c.apply(&join(4, "admin")),
            Some(ClusterEvent::DownstreamJoined(server(4, "admin")))
        );
        // neither direction; own group not self-listed.
        assert_eq!(c.apply(&join(5, "other")), None);
        assert_eq!(c.apply(&join(6, "lobby")), None);
        assert_eq!(ids(c.upstream()), [2, 3]);
        assert_eq!(ids(c.downstream()), [4]);
        assert_eq!(c.stats().untracked_joins, 2);
        assert_eq!(c.get(4).map(|(d, _)| d), Some(Direction::Downstream));
        assert!(c.get(5).is_none());
    }

    #[test]
    fn the_other_side_sees_the_mirror_image() {
        let mut game = core("game", 2);
        assert_eq!(
            game.apply(&join(1, "lobby")),
            Some(ClusterEvent::DownstreamJoined(server(1, "lobby")))
        );
        assert_eq!(
            game.apply(&join(7, "other")),
            Some(ClusterEvent::DownstreamJoined(server(7, "other")))
        );
        assert_eq!(game.apply(&join(3, "chat")), None);
        assert_eq!(ids(game.downstream()), [1, 7]);
        assert_eq!(game.upstream().count(), 0);
    }

    #[test]
    fn own_id_is_dropped() {
        let mut c = core("lobby", 1);
        assert_eq!(c.apply(&join(1, "lobby")), None);
        assert_eq!(c.apply(&join(1, "game")), None, "even in a tracked group");
        assert_eq!(c.apply(&leave(1, "lobby")), None);
        assert_eq!(c.stats().own_events, 3);
        assert_eq!(c.upstream().count() + c.downstream().count(), 0);
    }

    #[test]
    fn a_duplicate_join_is_ignored_and_counted() {
        let mut c = core("lobby", 1);
        assert!(c.apply(&join(2, "game")).is_some());
        assert_eq!(c.apply(&join(2, "game")), None);
        // Even claiming another group: the first join stands.
        assert_eq!(c.apply(&join(2, "admin")), None);
        assert_eq!(c.stats().duplicate_joins, 2);
        assert_eq!(ids(c.upstream()), [2]);
        assert_eq!(c.downstream().count(), 0);
    }

    #[test]
    fn leaves_remove_and_report_the_server() {
        let mut c = core("lobby", 1);
        c.apply(&join(2, "game"));
        c.apply(&join(4, "admin"));
        assert_eq!(
            c.apply(&leave(2, "game")),
            Some(ClusterEvent::UpstreamLeft(server(2, "game")))
        );
        assert_eq!(
            c.apply(&leave(4, "admin")),
            Some(ClusterEvent::DownstreamLeft(server(4, "admin")))
        );
        assert_eq!(c.upstream().count() + c.downstream().count(), 0);
        // A second leave is unknown now.
        assert_eq!(c.apply(&leave(2, "game")), None);
        assert_eq!(c.stats().unknown_leaves, 1);
    }

    #[test]
    fn unknown_leaves_are_ignored_and_counted_only_for_tracked_groups() {
        let mut c = core("lobby", 1);
        assert_eq!(c.apply(&leave(9, "game")), None);
        assert_eq!(c.apply(&leave(9, "other")), None);
        assert_eq!(c.leave(10, None), None);
        assert_eq!(c.stats().unknown_leaves, 2);
        // An untracked server joins and leaves: neither is reported nor counted as unknown.
        c.apply(&join(5, "other"));
        assert_eq!(c.apply(&leave(5, "other")), None);
        assert_eq!(c.stats().unknown_leaves, 2);
    }

    #[test]
    fn rejoin_after_leave_is_a_new_join() {
        let mut c = core("lobby", 1);
        c.apply(&join(2, "game"));
        c.apply(&leave(2, "game"));
        assert_eq!(
            c.apply(&join(2, "game")),
            Some(ClusterEvent::UpstreamJoined(server(2, "game")))
        );
        assert_eq!(c.stats().duplicate_joins, 0);
    }

    #[test]
    fn same_group_is_tracked_only_when_it_lists_itself() {
        let mut s = core("self", 1);
        assert_eq!(
            s.apply(&join(2, "self")),
            Some(ClusterEvent::UpstreamJoined(server(2, "self")))
        );
        assert!(s.accepts_identify(2).is_some(), "they dial us too");
        let mut g = core("game", 3);
        assert_eq!(g.apply(&join(4, "game")), None);
    }

    #[test]
    fn identify_is_accepted_only_from_announced_dialers() {
        let mut lobby = core("lobby", 1);
        lobby.apply(&join(2, "game"));
        lobby.apply(&join(3, "chat"));
        lobby.apply(&join(4, "admin"));
        lobby.apply(&join(5, "other"));
        assert!(
            lobby.accepts_identify(2).is_none(),
            "game does not dial lobby"
        );
        assert_eq!(
            lobby.accepts_identify(3).map(|s| s.id),
            Some(3),
            "chat does"
        );
        assert_eq!(lobby.accepts_identify(4).map(|s| s.id), Some(4));
        assert!(lobby.accepts_identify(5).is_none(), "untracked");
        assert!(lobby.accepts_identify(6).is_none(), "not announced");
        assert!(lobby.accepts_identify(1).is_none(), "ourselves");
        lobby.apply(&leave(4, "admin"));
        assert!(lobby.accepts_identify(4).is_none(), "gone");
    }

    #[test]
    fn synced_and_other_events_change_no_set() {
        let mut c = core("lobby", 1);
        assert!(!c.is_synced());
        assert_eq!(c.apply(&Event::Synced { revision: 5 }), None);
        assert!(c.is_synced());
        assert_eq!(c.upstream().count() + c.downstream().count(), 0);
    }

    #[test]
    fn a_new_own_id_is_dropped_from_the_peers() {
        let mut c = core("lobby", 1);
        c.apply(&join(2, "game"));
        assert_eq!(
            c.apply(&Event::Reregistered {
                id: 2,
                previous_id: 1,
                create_revision: 9,
                revision: 8,
            }),
            Some(ClusterEvent::UpstreamLeft(server(2, "game")))
        );
        assert_eq!(c.own_id(), 2);
        assert_eq!(c.apply(&join(2, "game")), None);
        // The old id is a stranger now.
        assert_eq!(
            c.apply(&join(1, "game")),
            Some(ClusterEvent::UpstreamJoined(server(1, "game")))
        );
    }

    /// Every interleaving of a small event alphabet keeps the sets equal to a naive model:
    /// tracked = joined and not left since, never ourselves, classified by group.
    #[test]
    fn random_sequences_match_a_model() {
        let groups = ["game", "chat", "admin", "other", "lobby"];
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let topology = cluster().topology("lobby").unwrap();
        for _ in 0..200 {
            let mut c = ClusterCore::new(topology.clone(), 1);
            let mut model: BTreeMap<u16, &str> = BTreeMap::new();
            for _ in 0..200 {
                let id = u16::try_from(next() % 8).unwrap();
                let group = groups[usize::try_from(next() % 5).unwrap()];
                if next().is_multiple_of(2) {
                    let out = c.apply(&join(id, group));
                    let new =
                        id != 1 && !model.contains_key(&id) && topology.direction(group).is_some();
                    assert_eq!(out.is_some(), new);
                    if new {
                        model.insert(id, group);
                    }
                } else {
                    let g = model.get(&id).copied().unwrap_or(group);
                    let out = c.apply(&leave(id, g));
                    assert_eq!(out.is_some(), model.remove(&id).is_some());
                }
                let want_up: Vec<u16> = model
                    .iter()
                    .filter(|(_, g)| topology.direction(g) == Some(Direction::Upstream))
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(ids(c.upstream()), want_up);
                assert_eq!(c.upstream().count() + c.downstream().count(), model.len());
            }
        }
    }
}
