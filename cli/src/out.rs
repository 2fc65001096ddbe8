//! stdout: the JSON-lines contract (docs/cli.md, "JSON lines") and the tables.
//!
//! Every JSON line carries `"v"` (the schema version) and `"event"`. A closed stdout (the
//! reader went away, e.g. `darkrift-etcd watch | head -1`) is not an error: writes report
//! [`Closed`] and the command ends quietly (a registrant deregisters first).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use darkrift_etcd::admin::Entry;
use darkrift_etcd::{Event, ServerInfo};
use serde_json::{json, Value};

/// The version of the JSON-lines schema; bumped when a field changes meaning or goes away
/// (new fields may be added without a bump).
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// stdout's reader is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Writes one line to stdout and flushes it (a line is useful to a pipe only once it leaves).
pub(crate) fn text(line: &str) -> Result<(), Closed> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Closed),
        Err(e) => {
            // Anything else (a full disk) also means nobody gets our output.
            tracing::warn!(error = %e, "writing to stdout failed");
            Err(Closed)
        }
    }
}

/// One JSON line: the version, `event` and `fields` (keys in alphabetical order).
pub(crate) fn line(event: &str, fields: Value) -> Result<(), Closed> {
    let mut map = serde_json::Map::new();
    map.insert("v".into(), json!(SCHEMA_VERSION));
    map.insert("event".into(), json!(event));
    if let Value::Object(fields) = fields {
        map.extend(fields);
    }
    text(&Value::Object(map).to_string())
}

/// Resolves when stdout's reader has gone away, without writing: poll(2) reports an error
/// (or hang-up) on a pipe whose read end is closed. Never resolves when stdout cannot close
/// under us (a regular file, /dev/null). The poll blocks a thread of its own, which the
/// process's exit ends.
pub(crate) async fn closed() {
    use rustix::event::{poll, PollFd, PollFlags};
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watcher = std::thread::Builder::new()
        .name("stdout-closed".into())
        .spawn(move || {
            let stdout = std::io::stdout();
            let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
            loop {
                match poll(&mut fds, None) {
                    Err(rustix::io::Errno::INTR) => {}
                    Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                        let _ = tx.send(());
                        return;
                    }
                    // An invalid descriptor or a failed poll: nothing to watch.
                    _ => return,
                }
            }
        });
    if watcher.is_err() || rx.await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn server_fields(s: &ServerInfo) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "id": s.id,
        "group": s.group,
        "host": s.host,
        "port": s.port,
        "properties": s.properties,
    }) else {
        return serde_json::Map::new();
    };
    map
}

/// Milliseconds since `unix_ms`, 0 if that is in the future (clock skew between hosts).
pub(crate) fn age(unix_ms: i64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Duration::from_millis(u64::try_from(now.saturating_sub(unix_ms)).unwrap_or(0))
}

/// A registration as the `server` line and the items of `list` carry it.
pub(crate) fn entry_fields(e: &Entry) -> Value {
    let mut map = server_fields(&e.server);
    map.insert("lease".into(), json!(format!("{:x}", e.lease)));
    map.insert("ttl_left_s".into(), json!(e.ttl_left.map(|t| t.as_secs())));
    map.insert("create_revision".into(), json!(e.create_revision));
    map.insert("mod_revision".into(), json!(e.mod_revision));
    map.insert(
        "registered_at_ms".into(),
        json!(e.server.registered_at_unix_ms),
    );
    map.insert(
        "age_s".into(),
        json!(age(e.server.registered_at_unix_ms).as_secs()),
    );
    Value::Object(map)
}

/// Turns the connector's events into JSON lines. Remembers every server it saw join (all
/// groups, whatever the filter), so that a leave can carry the departed server's group, host
/// and port, and `synced` the number of members.
#[derive(Debug, Default)]
pub(crate) struct EventLines {
    members: BTreeMap<u16, ServerInfo>,
    /// The groups shown (`None`: all).
    groups: Option<BTreeSet<String>>,
}

impl EventLines {
    pub(crate) fn new(group: Option<String>) -> Self {
        Self::with_groups(group.map(|g| BTreeSet::from([g])))
    }

    /// Lines for the servers of `groups` (`None`: all groups).
    pub(crate) fn with_groups(groups: Option<BTreeSet<String>>) -> Self {
        EventLines {
            members: BTreeMap::new(),
            groups,
        }
    }

    fn wanted(&self, group: &str) -> bool {
        self.groups.as_ref().is_none_or(|g| g.contains(group))
    }

    /// Members this command shows (its group, or all).
    pub(crate) fn shown_members(&self) -> usize {
        self.members
            .values()
            .filter(|s| self.wanted(&s.group))
            .count()
    }

    /// Live members of `group` as far as the events told.
    pub(crate) fn members_of(&self, group: &str) -> usize {
        self.members.values().filter(|s| s.group == group).count()
    }

    /// The line for `event`, if it has one and the group filter keeps it.
    pub(crate) fn line(&mut self, event: &Event) -> Option<(&'static str, Value)> {
        match event {
            Event::Join { server, revision } => {
                self.members.insert(server.id, server.clone());
                if !self.wanted(&server.group) {
                    return None;
                }
                let mut map = server_fields(server);
                map.insert("revision".into(), json!(revision));
                Some(("join", Value::Object(map)))
            }
            Event::Leave {
                id,
                group,
                revision,
                departing,
            } => {
                let known = self.members.remove(id);
                if !self.wanted(group) {
                    return None;
                }
                // The contract guarantees a join before every leave; the fallbacks only keep
                // the line well-formed if that ever broke.
                let (host, port) = known.map_or((String::new(), 0), |s| (s.host, s.port));
                Some((
                    "leave",
                    json!({"id": id, "group": group, "host": host, "port": port,
                           "revision": revision, "departing": departing}),
                ))
            }
            Event::Synced { revision } => Some((
                "synced",
                json!({"revision": revision, "members": self.shown_members()}),
            )),
            Event::LeaseLost { id, reason, .. } => {
                Some(("lease_lost", json!({"id": id, "reason": reason})))
            }
            Event::Reregistered {
                id,
                previous_id,
                create_revision,
                ..
            } => Some((
                "reregistered",
                json!({"id": id, "previous_id": previous_id, "revision": create_revision}),
            )),
            Event::RegistrationStopped { id, reason, .. } => {
                Some(("registration_stopped", json!({"id": id, "reason": reason})))
            }
            Event::Stale { revision } => Some(("stale", json!({"revision": revision}))),
            Event::Fresh { revision } => Some(("fresh", json!({"revision": revision}))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: u16, group: &str) -> ServerInfo {
        ServerInfo {
            id,
            group: group.into(),
            host: "10.0.0.1".into(),
            port: 4000 + id,
            properties: BTreeMap::new(),
            registered_at_unix_ms: 0,
            alloc_position: 0,
            departing: false,
        }
    }

    #[test]
    fn a_leave_carries_what_the_join_said_even_when_filtered() {
        let mut lines = EventLines::new(Some("game".into()));
        let lobby = Event::Join {
            server: server(1, "lobby"),
            revision: 5,
        };
        assert!(lines.line(&lobby).is_none());
        let game = Event::Join {
            server: server(2, "game"),
            revision: 6,
        };
        assert_eq!(lines.line(&game).map(|l| l.0), Some("join"));
        let (event, synced) = lines.line(&Event::Synced { revision: 6 }).unwrap();
        assert_eq!((event, &synced["members"]), ("synced", &json!(1)));
        let (_, leave) = lines
            .line(&Event::Leave {
                id: 2,
                group: "game".into(),
                revision: 7,
                departing: false,
            })
            .unwrap();
        assert_eq!(
            leave,
            json!({"id": 2, "group": "game", "host": "10.0.0.1", "port": 4002, "revision": 7, "departing": false})
        );
    }
}
