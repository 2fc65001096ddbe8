//! What the watcher's state machine needs from etcd, as a trait: list a page of one watched
//! range pinned at a revision, open one watch stream over every range, request progress, and
//! the pool's verdicts on members. The real source ([`PoolSource`]) wraps [`Pool`]; the unit
//! tests drive the machine with a scripted fake, so every recovery rule is tested without
//! etcd.
//!
//! Several ranges (a connector's interest: one per watched group) share one gRPC watch stream,
//! one watcher per range. [`LaneStream`] tells which range a response belongs to: etcd answers
//! the create requests of one stream in the order they were sent, so the n-th `created`
//! response names the n-th range's watch id.

use std::future::Future;
use std::time::Duration;

use etcd_client::{WatchOptions, WatchStream};
use tokio::sync::watch;
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
        let options = |keys: &KeyRange, from: i64| {
            WatchOptions::new()
                .with_range(keys.end.clone())
                .with_start_revision(from)
                .with_progress_notify()
        };
        let (Some(first), Some(&first_from)) = (self.ranges.first(), from.first()) else {
            return Err(crate::error::Error::InvalidConfig(
                "a watcher needs at least one range".into(),
            ));
        };
        let (mut stream, member) =
            retrying_on(&self.pool, "watch", self.request_timeout, |mut client| {
                let (start, options) = (first.start.clone(), options(first, first_from));
                async move { client.watch(start, Some(options)).await }
            })
            .await?;
        // The other ranges join the same stream: their creates are answered in this order.
        for (keys, &from) in self.ranges.iter().zip(from).skip(1) {
            stream
                .watch(keys.start.clone(), Some(options(keys, from)))
                .await
                .map_err(|e| crate::error::Error::etcd("watch", e))?;
        }
        Ok((
            LaneStream {
                stream,
                watch_ids: Vec::with_capacity(self.ranges.len()),
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

/// One watch stream carrying a watcher per range, and which watch id is which range.
pub(crate) struct LaneStream {
    stream: WatchStream,
    /// The watch id of each range whose `created` answer came, in range order.
    watch_ids: Vec<i64>,
}

impl WatchFeed for LaneStream {
    async fn message(&mut self) -> std::result::Result<Option<WatchAnswer>, String> {
        let resp = match self.stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut answer = WatchAnswer::from(&resp);
        if answer.created {
            debug!(
                lane = self.watch_ids.len(),
                watch_id = answer.watch_id,
                "watch created"
            );
            self.watch_ids.push(answer.watch_id);
        }
        answer.lane = lane_of(&self.watch_ids, answer.watch_id);
        Ok(Some(answer))
    }

    async fn request_progress(&mut self) -> std::result::Result<(), String> {
        self.stream
            .request_progress()
            .await
            .map_err(|e| e.to_string())
    }
}

/// The range a watch id belongs to; `None` for −1 (the answer to a progress request, which
/// covers the whole stream) and for an id no `created` answer named.
pub(crate) fn lane_of(watch_ids: &[i64], watch_id: i64) -> Option<usize> {
    if watch_id < 0 {
        return None;
    }
    watch_ids.iter().position(|&id| id == watch_id)
}

#[cfg(test)]
mod tests {
    use super::lane_of;

    #[test]
    fn responses_are_matched_to_ranges_by_their_created_order() {
        // etcd numbers a stream's watchers from 0; a proxy may number them otherwise.
        assert_eq!(lane_of(&[0, 1, 2], 2), Some(2));
        assert_eq!(lane_of(&[7, 3], 3), Some(1));
        assert_eq!(
            lane_of(&[0, 1], -1),
            None,
            "a progress answer is the stream's"
        );
        assert_eq!(lane_of(&[0], 5), None, "not created (yet)");
    }
}
