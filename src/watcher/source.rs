//! What the watcher's state machine needs from etcd, as a trait: list a page of one watched
//! range pinned at a revision, open one watch stream over every range, request progress, and
//! the pool's verdicts on members. The real source ([`PoolSource`]) wraps [`Pool`]; the unit
//! tests drive the machine with a scripted fake, so every recovery rule is tested without
//! etcd.
//!
//! Several ranges (a connector's interest: one per watched group) share one gRPC watch stream,
//! one watcher per range. [`LaneStream`] tells which range a response belongs to by its watch
//! id, which is the range's index: each create asks for that id (etcd honours a requested id),
//! and etcd's gRPC proxy, which ignores requested ids, numbers a stream's watches from 0 in the
//! order their creates arrive, which is the same. The order of the `created` answers is not
//! used: the proxy sends each one when its upstream watch is created, in any order. An answer
//! whose events lie outside the range its id names is a broken promise, and the stream is not
//! trusted (`lane` is `None`: the watcher reopens it).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, WatchOptions, WatchStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::classify::WatchAnswer;
use super::list::{Page, ServerRange};
use crate::client::retrying_on;
use crate::error::Result;
use crate::keys::{KeyLayout, KeyRange};
use crate::pool::Pool;

/// The reads and streams the watcher makes.
pub(crate) trait KvSource: Send + Sync + 'static {
    /// An open watch.
    type Feed: WatchFeed;

    /// How many ranges are watched (at least 1).
    fn ranges(&self) -> usize;

    /// Reads range `lane`'s page after `after` pinned at `pinned` (0: the first page of the
    /// first range, which fixes the revision and reads the allocator cursor too); `op` names
    /// it in errors.
    fn page(
        &self,
        lane: usize,
        op: &'static str,
        pinned: i64,
        after: Option<&[u8]>,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Opens one stream watching each range `lane` from revision `from[lane]` (progress
    /// notifications on); returns it and the pool member it is on.
    fn open(&self, from: &[i64]) -> impl Future<Output = Result<(Self::Feed, usize)>> + Send;

    /// Refreshes the auth token of `member` (a watch cancelled for an expired token).
    fn refresh_token(
        &self,
        member: usize,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send;

    /// Suspects `member` (see [`Pool::suspect`]).
    fn suspect(&self, member: usize, why: &str);

    /// Checks in the background, without waiting, that `member` answers a small read within
    /// the attempt timeout; one that does not is suspected, and the suspicion reaches the
    /// watcher through [`KvSource::suspicions`]. For a busy stream, whose member is never
    /// asked for progress because it is never silent.
    fn probe(&self, member: usize);

    /// How long an answer may take before its member is suspected.
    fn attempt_timeout(&self) -> Duration;

    /// How many members there are to move a watch to.
    fn members(&self) -> usize;

    /// Suspicions raised by any request of this connector: `(sequence, member)`.
    fn suspicions(&self) -> watch::Receiver<(u64, usize)>;
}

/// An open watch stream.
pub(crate) trait WatchFeed: Send + 'static {
    /// The next response, its [`WatchAnswer::lane`] set; `Ok(None)` when the stream ended.
    fn message(
        &mut self,
    ) -> impl Future<Output = std::result::Result<Option<WatchAnswer>, String>> + Send;

    /// Asks etcd for a progress notification on this stream.
    fn request_progress(&mut self) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

/// The real source: the pool's members.
#[derive(Debug, Clone)]
pub(crate) struct PoolSource {
    pub(crate) pool: Pool,
    pub(crate) layout: KeyLayout,
    /// The watched ranges, in key order.
    pub(crate) ranges: Vec<KeyRange>,
    pub(crate) page_size: i64,
    pub(crate) request_timeout: Duration,
    /// A probe is in flight (at most one at a time, whatever the progress interval).
    pub(crate) probing: Arc<AtomicBool>,
    /// The watcher's cancellation: a probe in flight ends with the connector.
    pub(crate) cancel: CancellationToken,
}

impl KvSource for PoolSource {
    type Feed = LaneStream;

    fn ranges(&self) -> usize {
        self.ranges.len()
    }

    async fn page(
        &self,
        lane: usize,
        op: &'static str,
        pinned: i64,
        after: Option<&[u8]>,
    ) -> Result<Page> {
        let Some(keys) = self.ranges.get(lane) else {
            return Err(crate::error::Error::InvalidConfig(format!(
                "no watched range {lane}"
            )));
        };
        let range = ServerRange {
            pool: &self.pool,
            layout: &self.layout,
            keys,
            page_size: self.page_size,
            timeout: self.request_timeout,
        };
        range.page(op, pinned, after, lane == 0).await
    }

    async fn open(&self, from: &[i64]) -> Result<(LaneStream, usize)> {
        let options = |lane: usize, keys: &KeyRange, from: i64| {
            WatchOptions::new()
                .with_range(keys.end.clone())
                .with_start_revision(from)
                .with_progress_notify()
                .with_watch_id(i64::try_from(lane).unwrap_or(i64::MAX))
        };
        let (Some(first), Some(&first_from)) = (self.ranges.first(), from.first()) else {
            return Err(crate::error::Error::InvalidConfig(
                "a watcher needs at least one range".into(),
            ));
        };
        let (mut stream, member) =
            retrying_on(&self.pool, "watch", self.request_timeout, |mut client| {
                let (start, options) = (first.start.clone(), options(0, first, first_from));
                async move { client.watch(start, Some(options)).await }
            })
            .await?;
        // The other ranges join the same stream, each under its index as watch id.
        for (lane, (keys, &from)) in self.ranges.iter().zip(from).enumerate().skip(1) {
            stream
                .watch(keys.start.clone(), Some(options(lane, keys, from)))
                .await
                .map_err(|e| crate::error::Error::etcd("watch", e))?;
        }
        Ok((
            LaneStream {
                stream,
                ranges: self.ranges.clone(),
            },
            member,
        ))
    }

    async fn refresh_token(&self, member: usize) -> std::result::Result<(), String> {
        match self.pool.client(member).await {
            Ok(client) => client.refresh_token().await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    fn suspect(&self, member: usize, why: &str) {
        self.pool.suspect(member, why);
    }

    fn probe(&self, member: usize) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, probing) = (self.pool.clone(), self.probing.clone());
        let (key, cancel) = (self.layout.cursor_key(), self.cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = probe_member(&pool, member, key) => {}
            }
            probing.store(false, Ordering::Release);
        });
    }

    fn attempt_timeout(&self) -> Duration {
        self.pool.attempt_timeout()
    }

    fn members(&self) -> usize {
        self.pool.len()
    }

    fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.pool.suspicions()
    }
}

/// One watch stream carrying a watcher per range; watch id `n` is range `n`.
pub(crate) struct LaneStream {
    stream: WatchStream,
    /// The watched ranges, in watch id order.
    ranges: Vec<KeyRange>,
}

impl WatchFeed for LaneStream {
    async fn message(&mut self) -> std::result::Result<Option<WatchAnswer>, String> {
        let resp = match self.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut answer = WatchAnswer::from(resp);
        answer.lane = lane_of(&self.ranges, &answer);
        if answer.created {
            debug!(watch_id = answer.watch_id, lane = ?answer.lane, "watch created");
        }
        Ok(Some(answer))
    }

    async fn request_progress(&mut self) -> std::result::Result<(), String> {
        self.stream
            .request_progress()
            .await
            .map_err(|e| e.to_string())
    }
}

/// The range an answer belongs to: the one its watch id names, if every change it carries
/// lies in that range. `None` for −1 (the answer to a progress request, which is the whole
/// stream's, or a refused create), for an id that names no range, and for changes outside the
/// named range.
pub(crate) fn lane_of(ranges: &[KeyRange], answer: &WatchAnswer) -> Option<usize> {
    let lane = usize::try_from(answer.watch_id).ok()?;
    let range = ranges.get(lane)?;
    let all_inside = answer
        .changes
        .iter()
        .all(|change| range.contains(change.key()));
    all_inside.then_some(lane)
}

/// One probe of `member` (see [`KvSource::probe`]).
async fn probe_member(pool: &Pool, member: usize, key: String) {
    // The watch was opened through this member, so its client is built and this is instant.
    let Ok(mut client) = pool.client(member).await else {
        return;
    };
    // Serializable: answered by the member itself, not forwarded to the leader, so a slow
    // leader does not move the watches of healthy followers. Count only: nothing to decode.
    let options = GetOptions::new().with_serializable().with_count_only();
    let read = client.get(key, Some(options));
    match tokio::time::timeout(pool.attempt_timeout(), read).await {
        Ok(Ok(_)) => pool.confirm(member),
        // A watch stream is authorised when it is created, so an expired token shows here
        // first: refresh it, outside the bound (authenticating is slow by design), so the next
        // probe can tell lateness again.
        Ok(Err(e)) if crate::client::is_auth_token_error(&e) => {
            if let Err(e) = client.refresh_token().await {
                debug!(member, error = %e, "refreshing the auth token for a probe failed");
            }
        }
        // A refusal is not lateness: a broken connection fails the stream itself.
        Ok(Err(e)) => debug!(member, error = %e, "probing the watch's member failed"),
        // Late. Suspected only if another member is not: with every other member suspected
        // too, the late one may be the only one that works, and moving would only break a
        // watch that delivers.
        Err(_) if pool.another_unsuspected(member) => {
            pool.suspect(member, "the watch's member answered a probe late");
        }
        Err(_) => debug!(
            member,
            "the watch's member answered a probe late; no other member to move to"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{KeyValue, KvChange};

    fn put(key: &str) -> KvChange {
        KvChange::Put(KeyValue {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create_revision: 1,
            mod_revision: 1,
            lease: 1,
        })
    }

    #[test]
    fn an_answer_belongs_to_the_range_its_watch_id_names_if_its_keys_lie_there() {
        let ranges = vec![
            KeyRange::prefix(b"/p/game/".to_vec()),
            KeyRange::prefix(b"/p/lobby/".to_vec()),
        ];
        let answer = |watch_id, changes| WatchAnswer {
            watch_id,
            changes,
            ..WatchAnswer::default()
        };
        assert_eq!(
            lane_of(&ranges, &answer(1, vec![put("/p/lobby/3")])),
            Some(1)
        );
        assert_eq!(
            lane_of(&ranges, &answer(0, Vec::new())),
            Some(0),
            "progress"
        );
        assert_eq!(
            lane_of(&ranges, &answer(-1, Vec::new())),
            None,
            "the stream's"
        );
        assert_eq!(
            lane_of(&ranges, &answer(2, Vec::new())),
            None,
            "no such range"
        );
        // A lobby key under game's id: the stream broke its promise.
        assert_eq!(lane_of(&ranges, &answer(0, vec![put("/p/lobby/3")])), None);
        let delete = KvChange::Delete {
            key: b"/p/game/4".to_vec(),
            revision: 2,
        };
        assert_eq!(lane_of(&ranges, &answer(1, vec![delete])), None);
    }
}
