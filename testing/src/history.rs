//! Replays etcd's own history of a server range and checks the one property ids must have:
//! at no revision did two keys hold the same id.
//!
//! The ids a burst of registrations *returned* are not enough to judge uniqueness: a holder
//! that loses its lease mid-burst (etcd overloaded) frees its id, a later registrant gets it,
//! and both calls returned the same id although they never held it at the same time. etcd's
//! history (a watch from the first revision) says exactly who held what when, so the chaos
//! test and the benchmark both judge by it, and count the deletes (lease losses, in a burst
//! where nobody deregisters) as a figure.
//!
//! The rules are the registry's: a key `<server prefix>/<group>/<id>` holds its id from a put
//! bound to a lease until its delete; a put without a lease is not a registration (it could
//! never expire; the owner puts its record back on its lease) and ends the key's hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};

use crate::error::TestingError;

/// How long the history stream may be quiet before the replay asks how far it is.
const QUIET: Duration = Duration::from_millis(500);

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryReplay {
    /// The last revision replayed (the current revision when the replay started).
    pub replayed_to: i64,
    /// Keys that held an id at some point of the replayed history.
    pub holds: u64,
    /// Deletes of a holding key (deregistrations, evictions, lease expiries or revocations).
    pub deletes: u64,
    /// The first revision at which two keys held one id, if any: `(revision, id, keys)`.
    pub double_hold: Option<(i64, u16, Vec<String>)>,
}

/// Replays the history of `server_prefix` (without the trailing `/`) from revision `from`
/// up to the current revision. Keys for which `skip` returns true are ignored (a test's own
/// hostile writes, say); keys whose last segment is not an id are ignored too.
///
/// # Errors
/// [`TestingError::Etcd`] when a read or the watch fails or the history was compacted (a
/// partial replay would check only part of it), [`TestingError::Timeout`] when etcd does not
/// finish the replay within `bound`.
pub async fn replay_holders(
    client: &mut Client,
    server_prefix: &str,
    from: i64,
    skip: impl Fn(&str) -> bool,
    bound: Duration,
) -> Result<HistoryReplay, TestingError> {
    let etcd = |what: &str, e: &dyn std::fmt::Display| TestingError::Etcd(format!("{what}: {e}"));
    let timeout = |what: &'static str| TestingError::Timeout { what, bound };
    let now = tokio::time::timeout(bound, client.get("/", None))
        .await
        .map_err(|_| timeout("history: current revision"))?
        .map_err(|e| etcd("history: current revision", &e))?
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let mut replay = HistoryReplay::default();
    if now < from {
        return Ok(replay);
    }
    let prefix = format!("{server_prefix}/");
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(from.max(1));
    let mut stream = tokio::time::timeout(bound, client.watch(prefix.clone(), Some(options)))
        .await
        .map_err(|_| timeout("history: open watch"))?
        .map_err(|e| etcd("history: open watch", &e))?;
    let mut live: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + bound;
    while replay.replayed_to < now {
        // The last write under the prefix may be older than `now` (writes elsewhere moved the
        // revision on): once the stream has been quiet for a while, a progress request tells
        // how far it has delivered. A quiet stream is a synced one (a watcher still catching
        // up sends events), so the answer is not early even on etcd versions that answer
        // progress requests of unsynced watchers.
        let Ok(next) = tokio::time::timeout(QUIET, stream.message()).await else {
            if tokio::time::Instant::now() >= deadline {
                return Err(timeout("history: replay"));
            }
            stream
                .request_progress()
                .await
                .map_err(|e| etcd("history: progress request", &e))?;
            continue;
        };
        let resp = next
            .map_err(|e| etcd("history: watch", &e))?
            .ok_or_else(|| TestingError::Etcd("history: the watch ended".into()))?;
        if resp.canceled() || resp.compact_revision() > 0 {
            return Err(TestingError::Etcd(format!(
                "history replay stopped at {} before {now} (compacted at {})",
                replay.replayed_to,
                resp.compact_revision()
            )));
        }
        // Events of one revision (one transaction) apply together, then the check runs.
        let mut by_revision: BTreeMap<i64, Vec<&etcd_client::Event>> = BTreeMap::new();
        for event in resp.events() {
            let revision = event.kv().map_or(0, etcd_client::KeyValue::mod_revision);
            by_revision.entry(revision).or_default().push(event);
        }
        for (revision, events) in by_revision {
            for event in events {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                if skip(key) {
                    continue;
                }
                let Some(id) = key.rsplit('/').next().and_then(|s| s.parse::<u16>().ok()) else {
                    continue;
                };
                let holders = live.entry(id).or_default();
                match event.event_type() {
                    EventType::Put if kv.lease() != 0 => {
                        if holders.insert(key.to_owned()) {
                            replay.holds += 1;
                        }
                    }
                    EventType::Put => {
                        holders.remove(key);
                    }
                    EventType::Delete => {
                        if holders.remove(key) {
                            replay.deletes += 1;
                        }
                    }
                }
            }
            if replay.double_hold.is_none() {
                if let Some((id, keys)) = live.iter().find(|(_, keys)| keys.len() > 1) {
                    replay.double_hold = Some((revision, *id, keys.iter().cloned().collect()));
                }
            }
            replay.replayed_to = revision;
        }
        if resp.events().is_empty() && !resp.created() {
            // A progress notification: nothing under the prefix up to its header.
            let header = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            replay.replayed_to = replay.replayed_to.max(header);
        }
    }
    Ok(replay)
}
